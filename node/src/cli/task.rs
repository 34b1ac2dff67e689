//! `fogmesh task`: submit a WebAssembly task to the mesh and follow it.

use std::time::Duration;

use super::*;

#[derive(Debug, Subcommand)]
pub(crate) enum TaskCli {
    /// Hand a task to the mesh (this node's ticket must grant `submitter`); prints its id.
    Submit(TaskSubmitArgs),
    /// Where a task is: queued (and why it waits), running where, done, failed.
    Status {
        id: String,
        #[command(flatten)]
        query: QueryArgs,
    },
    /// Tasks this node's cluster holds and those this node submitted.
    List(QueryArgs),
    /// A finished task's output (to stdout, or --out FILE).
    Result {
        id: String,
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        #[command(flatten)]
        query: QueryArgs,
    },
    /// Cancel a task this node submitted (a run already under way finishes, its result is
    /// dropped).
    Cancel {
        id: String,
        #[command(flatten)]
        query: QueryArgs,
    },
}

#[derive(Debug, Args)]
pub(crate) struct TaskSubmitArgs {
    /// The WebAssembly module (binary, or WAT text if the file ends in .wat).
    #[arg(long, value_name = "FILE")]
    wasm: PathBuf,
    /// The task's input (at most 4 MiB).
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// critical, high, normal or low.
    #[arg(long, default_value = "normal")]
    priority: String,
    /// CPU the task needs, in cores (0.25 = a quarter of a core).
    #[arg(long, default_value_t = 1.0)]
    cpu: f64,
    /// Memory the task needs, in MB (also its memory cap).
    #[arg(long, default_value_t = 64)]
    memory: u32,
    /// Estimated duration (also its CPU budget), e.g. 30s.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The task needs a GPU.
    #[arg(long)]
    gpu: bool,
    #[command(flatten)]
    query: QueryArgs,
}

pub(crate) async fn task_command(command: TaskCli) -> Result<()> {
    match command {
        TaskCli::Submit(args) => {
            let read = |path: &PathBuf| {
                std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
            };
            let mut module = read(&args.wasm)?;
            if args.wasm.extension().is_some_and(|e| e == "wat") {
                let text = String::from_utf8(module)
                    .map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", args.wasm.display()))?;
                module = crate::cluster::exec::assemble(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", args.wasm.display()))?;
            }
            let input = args.input.as_ref().map(read).transpose()?;
            if !(args.cpu > 0.0 && args.cpu <= 1024.0) {
                anyhow::bail!("--cpu {} is outside 0..1024 cores", args.cpu);
            }
            let request = crate::cluster::api::SubmitTaskRequest {
                module_hex: hex::encode(&module),
                module_wat: None,
                input_hex: input.map(hex::encode),
                priority: Some(args.priority.clone()),
                cpu_millicores: (args.cpu * 1000.0).round() as u32,
                memory_mb: args.memory,
                duration_ms: u64::try_from(args.duration.as_millis()).unwrap_or(u64::MAX),
                gpu: args.gpu,
            };
            let submitted = args.query.client()?.submit_task(&request).await?;
            if args.query.json {
                print_line(&serde_json::to_string_pretty(&submitted)?)
            } else {
                print_line(&submitted.id)
            }
        }
        TaskCli::Status { id, query } => {
            let task = query.client()?.task(&id).await?;
            print_out(query.json, &task, || {
                crate::client::render::render_task(&task)
            })
        }
        TaskCli::List(q) => {
            let tasks = q.client()?.tasks().await?;
            print_out(q.json, &tasks, || {
                crate::client::render::render_tasks(&tasks)
            })
        }
        TaskCli::Result { id, out, query } => {
            let bytes = query.client()?.task_result(&id).await?;
            match out {
                Some(path) => std::fs::write(&path, &bytes)
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display())),
                None => write_stdout(&bytes),
            }
        }
        TaskCli::Cancel { id, query } => {
            let answer = query.client()?.cancel_task(&id).await?;
            print_out(query.json, &answer, || {
                answer
                    .get("status")
                    .and_then(|s| s.as_str())
                    .unwrap_or("cancel requested")
                    .to_owned()
            })
        }
    }
}
