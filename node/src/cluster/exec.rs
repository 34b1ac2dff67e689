//! Runs a task's WebAssembly module, sandboxed by wasmi: no imports (a module cannot reach
//! the host), fuel for CPU, a cap on linear memory, a size cap on module and output.
//!
//! The task ABI (docs/clusters.md, "Execution"): the module exports `memory`,
//! `alloc(len: i32) -> i32`, where the host writes the input, and
//! `run(ptr: i32, len: i32) -> i64`, whose result holds the output's pointer in the high 32
//! bits and its length in the low 32. Example modules: `examples/workloads/`.
//!
//! Time: wasmi cannot be interrupted from outside, so the wall-clock limit is enforced by
//! fuel — the duration's worth at [`FUEL_PER_MS`] — and the run happens on a blocking
//! thread ([`run_blocking`]) so it never stalls the node's event loop.

use std::time::{Duration, Instant};

use wasmi::core::TrapCode;
use wasmi::{Config, Engine, Linker, Module, Store, StoreLimits, StoreLimitsBuilder};

/// Fuel per millisecond of a task's estimated duration. Measured: a release build burns
/// about 475,000 a millisecond on a 2-core AMD EPYC VM (BENCHMARKS.md, `--bench exec`), so a
/// CPU-bound task stops near its duration there; on a slower device it may run past it by
/// the ratio, on a faster one stop early. Fuel, not the clock, is what stops a task: the
/// cut-off is the same on every replica and every retry.
pub const FUEL_PER_MS: u64 = 500_000;
/// Largest module accepted (before it is compiled).
pub const MAX_MODULE_BYTES: usize = 4 * 1024 * 1024;
/// Largest input handed to a module.
pub const MAX_INPUT_BYTES: usize = 4 * 1024 * 1024;
/// Largest output taken from a module.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;

/// What one run may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecLimits {
    /// Linear memory, in bytes (the node's policy limit for the task).
    pub memory_bytes: usize,
    /// The task's estimated duration: its fuel budget.
    pub duration: Duration,
}

impl ExecLimits {
    pub fn fuel(&self) -> u64 {
        u64::try_from(self.duration.as_millis())
            .unwrap_or(u64::MAX)
            .saturating_mul(FUEL_PER_MS)
    }
}

/// A finished run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub output: Vec<u8>,
    pub fuel_used: u64,
    pub elapsed: Duration,
}

/// Why a run produced no output; each is a task failure with a reason a person can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    #[error("module too large ({0} bytes; at most {MAX_MODULE_BYTES})")]
    ModuleTooLarge(usize),
    #[error("input too large ({0} bytes; at most {MAX_INPUT_BYTES})")]
    InputTooLarge(usize),
    #[error("not a valid WebAssembly module: {0}")]
    Invalid(String),
    #[error("the module does not follow the task ABI: {0}")]
    Abi(String),
    #[error("ran out of fuel (its estimated duration)")]
    OutOfFuel,
    #[error("tried to use more memory than its limit ({0} bytes)")]
    MemoryLimit(usize),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("returned an output outside its memory or over {MAX_OUTPUT_BYTES} bytes")]
    BadOutput,
}

impl ExecError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ExecError::ModuleTooLarge(_) | ExecError::InputTooLarge(_) => "too_large",
            ExecError::Invalid(_) => "invalid",
            ExecError::Abi(_) => "abi",
            ExecError::OutOfFuel => "out_of_fuel",
            ExecError::MemoryLimit(_) => "memory_limit",
            ExecError::Trap(_) => "trap",
            ExecError::BadOutput => "bad_output",
        }
    }
}

struct Host {
    limits: StoreLimits,
}

fn classify(err: wasmi::Error, memory_bytes: usize) -> ExecError {
    match err.as_trap_code() {
        Some(TrapCode::OutOfFuel) => ExecError::OutOfFuel,
        Some(TrapCode::GrowthOperationLimited) => ExecError::MemoryLimit(memory_bytes),
        _ => ExecError::Trap(err.to_string()),
    }
}

/// Compiles and runs `module` on `input` within `limits`, on this thread.
pub fn run(module: &[u8], input: &[u8], limits: ExecLimits) -> Result<ExecOutput, ExecError> {
    let started = Instant::now();
    if module.len() > MAX_MODULE_BYTES {
        return Err(ExecError::ModuleTooLarge(module.len()));
    }
    if input.len() > MAX_INPUT_BYTES {
        return Err(ExecError::InputTooLarge(input.len()));
    }
    let mut config = Config::default();
    config.consume_fuel(true);
    let engine = Engine::new(&config);
    let module = Module::new(&engine, module).map_err(|e| ExecError::Invalid(e.to_string()))?;
    let mut store = Store::new(
        &engine,
        Host {
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes)
                .memories(1)
                .tables(4)
                .instances(1)
                .trap_on_grow_failure(true)
                .build(),
        },
    );
    store.limiter(|host| &mut host.limits);
    let fuel = limits.fuel();
    store
        .set_fuel(fuel)
        .map_err(|e| ExecError::Invalid(e.to_string()))?;
    // No imports: a module that asks for any fails here.
    let linker: Linker<Host> = Linker::new(&engine);
    let instance = linker
        .instantiate(&mut store, &module)
        .map_err(|e| match e.kind() {
            wasmi::errors::ErrorKind::TrapCode(_) => classify(e, limits.memory_bytes),
            // The module's initial memory is over the cap.
            wasmi::errors::ErrorKind::Memory(_) => ExecError::MemoryLimit(limits.memory_bytes),
            _ => ExecError::Abi(e.to_string()),
        })?
        .start(&mut store)
        .map_err(|e| classify(e, limits.memory_bytes))?;
    let memory = instance
        .get_memory(&store, "memory")
        .ok_or_else(|| ExecError::Abi("no exported memory".into()))?;
    let alloc = instance
        .get_typed_func::<i32, i32>(&store, "alloc")
        .map_err(|e| ExecError::Abi(format!("alloc: {e}")))?;
    let run = instance
        .get_typed_func::<(i32, i32), i64>(&store, "run")
        .map_err(|e| ExecError::Abi(format!("run: {e}")))?;
    let input_len =
        i32::try_from(input.len()).map_err(|_| ExecError::InputTooLarge(input.len()))?;
    let at = alloc
        .call(&mut store, input_len)
        .map_err(|e| classify(e, limits.memory_bytes))?;
    let at = usize::try_from(at)
        .map_err(|_| ExecError::Abi("alloc returned a negative pointer".into()))?;
    memory
        .write(&mut store, at, input)
        .map_err(|_| ExecError::Abi("alloc returned room outside memory".into()))?;
    let packed = run
        .call(&mut store, (at as i32, input_len))
        .map_err(|e| classify(e, limits.memory_bytes))?;
    let packed = packed as u64;
    let (ptr, len) = ((packed >> 32) as usize, (packed & 0xffff_ffff) as usize);
    if len > MAX_OUTPUT_BYTES {
        return Err(ExecError::BadOutput);
    }
    let mut output = vec![0u8; len];
    memory
        .read(&store, ptr, &mut output)
        .map_err(|_| ExecError::BadOutput)?;
    let left = store.get_fuel().unwrap_or(0);
    Ok(ExecOutput {
        output,
        fuel_used: fuel.saturating_sub(left),
        elapsed: started.elapsed(),
    })
}

/// Checks at submission that `module` compiles and exports the task ABI, so a broken
/// module is refused with its reason before it reaches a cluster.
pub fn check_module(module: &[u8]) -> Result<(), ExecError> {
    if module.len() > MAX_MODULE_BYTES {
        return Err(ExecError::ModuleTooLarge(module.len()));
    }
    let engine = Engine::default();
    // wasmi's messages span lines (pretty-printed byte arrays): one line for a person.
    let module = Module::new(&engine, module).map_err(|e| {
        ExecError::Invalid(
            e.to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        )
    })?;
    if module.imports().len() > 0 {
        return Err(ExecError::Abi(
            "the module imports from the host; tasks may not".into(),
        ));
    }
    for name in ["memory", "alloc", "run"] {
        if module.get_export(name).is_none() {
            return Err(ExecError::Abi(format!("no `{name}` export")));
        }
    }
    Ok(())
}

/// [`run`] on tokio's blocking pool, so the event loop goes on while a task computes.
pub async fn run_blocking(
    module: Vec<u8>,
    input: Vec<u8>,
    limits: ExecLimits,
) -> Result<ExecOutput, ExecError> {
    tokio::task::spawn_blocking(move || run(&module, &input, limits))
        .await
        .unwrap_or_else(|e| Err(ExecError::Trap(format!("the runner stopped: {e}"))))
}

/// Assembles WebAssembly text (the example workloads) into a module.
pub fn assemble(wat: &str) -> Result<Vec<u8>, ExecError> {
    wat::parse_str(wat).map_err(|e| ExecError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../examples/workloads/{name}.wat",
            env!("CARGO_MANIFEST_DIR")
        );
        assemble(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn limits() -> ExecLimits {
        ExecLimits {
            memory_bytes: 16 * 1024 * 1024,
            duration: Duration::from_millis(200),
        }
    }

    #[test]
    fn a_workload_computes_its_output() {
        let out = run(&workload("checksum"), &[1, 2, 3, 250], limits()).unwrap();
        assert_eq!(out.output, 256u32.to_le_bytes());
        assert!(out.fuel_used > 0);
        let empty = run(&workload("empty"), b"", limits()).unwrap();
        assert!(empty.output.is_empty());
    }

    #[test]
    fn a_task_that_never_ends_is_stopped_by_fuel() {
        let started = Instant::now();
        let short = ExecLimits {
            duration: Duration::from_millis(10),
            ..limits()
        };
        let err = run(&workload("spin"), b"", short).unwrap_err();
        assert_eq!(err, ExecError::OutOfFuel);
        // 10 ms of fuel; a generous bound for slow machines and debug builds.
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn traps_memory_hogs_and_junk_are_clear_failures() {
        assert!(matches!(
            run(&workload("trap"), b"", limits()),
            Err(ExecError::Trap(_))
        ));
        assert_eq!(
            run(&workload("hog"), b"", limits()),
            Err(ExecError::MemoryLimit(16 * 1024 * 1024))
        );
        assert!(matches!(
            run(b"\0asm junk", b"", limits()),
            Err(ExecError::Invalid(_))
        ));
        assert_eq!(
            run(&vec![0; MAX_MODULE_BYTES + 1], b"", limits()),
            Err(ExecError::ModuleTooLarge(MAX_MODULE_BYTES + 1))
        );
        // A module that imports anything cannot run: the sandbox offers nothing.
        let importer = assemble(r#"(module (import "env" "f" (func)))"#).unwrap();
        assert!(matches!(
            run(&importer, b"", limits()),
            Err(ExecError::Abi(_))
        ));
        // A module without the ABI's exports.
        let bare = assemble("(module)").unwrap();
        assert!(matches!(run(&bare, b"", limits()), Err(ExecError::Abi(_))));
    }

    #[test]
    fn an_output_outside_memory_is_refused() {
        let liar = assemble(
            r#"(module (memory (export "memory") 1)
                 (func (export "alloc") (param i32) (result i32) i32.const 0)
                 (func (export "run") (param i32 i32) (result i64)
                   i64.const 0x0000ffff00000100))"#,
        )
        .unwrap();
        assert_eq!(run(&liar, b"", limits()), Err(ExecError::BadOutput));
    }
}
