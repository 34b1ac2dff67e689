//! The overhead of running a task: compile, instantiate and call an empty module (target:
//! under 5 ms), and a checksum over 1 MiB of input, through `exec::run`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fogmesh_node::cluster::exec::{self, ExecLimits};

fn workload(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../examples/workloads/{name}.wat",
        env!("CARGO_MANIFEST_DIR")
    );
    exec::assemble(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn bench(c: &mut Criterion) {
    let limits = ExecLimits {
        memory_bytes: 64 * 1024 * 1024,
        duration: Duration::from_secs(10),
    };
    let empty = workload("empty");
    c.bench_function("exec/empty task", |b| {
        b.iter(|| exec::run(&empty, b"", limits).unwrap())
    });
    let checksum = workload("checksum");
    let input = vec![7u8; 1024 * 1024];
    let once = exec::run(&checksum, &input, limits).unwrap();
    eprintln!(
        "checksum of 1 MiB: {} fuel in {:?} ({:.0} fuel per ms)",
        once.fuel_used,
        once.elapsed,
        once.fuel_used as f64 / once.elapsed.as_secs_f64() / 1000.0
    );
    let mut group = c.benchmark_group("exec");
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.bench_function("checksum of 1 MiB", |b| {
        b.iter(|| exec::run(&checksum, &input, limits).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
