//! `fogmesh testnet`: local testnets, their radio, faults and benchmarks.

use std::time::Duration;

use super::kv::sample_entry_bytes;
use super::*;
use anyhow::Context;
use fogmesh_testnet as testnet_lib;

#[derive(Debug, Args)]
pub(crate) struct TestnetDir {
    /// Directory holding the testnet's nodes and its state file.
    #[arg(long, default_value = ".fogmesh-testnet")]
    dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub(crate) enum RadioCommand {
    /// Put a node somewhere else (neighbours are 8 apart, the range is 10).
    Move {
        #[arg(long)]
        node: usize,
        /// x,y
        #[arg(long, value_parser = parse_point, allow_hyphen_values = true)]
        to: (f64, f64),
    },
    /// The given nodes stop hearing every other node.
    Partition {
        /// Node indexes, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<usize>,
    },
    /// Lift every partition.
    Heal,
    /// Loss probability of links opened from now on, 0.0–1.0 (existing links keep theirs).
    Loss { probability: f64 },
}

pub(crate) fn parse_point(text: &str) -> Result<(f64, f64), String> {
    let (x, y) = text
        .split_once(',')
        .ok_or_else(|| format!("{text:?} is not x,y"))?;
    let num = |v: &str| {
        v.trim()
            .parse::<f64>()
            .map_err(|e| format!("{v:?}: {e}"))
            .and_then(|n| {
                n.is_finite()
                    .then_some(n)
                    .ok_or_else(|| format!("{v:?} is not a finite number"))
            })
    };
    Ok((num(x)?, num(y)?))
}

/// A telemetry interval to benchmark: a duration, or the node's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BenchInterval(Option<Duration>);

pub(crate) fn parse_bench_interval(text: &str) -> Result<BenchInterval, String> {
    if text.trim() == "default" {
        return Ok(BenchInterval(None));
    }
    humantime::parse_duration(text.trim())
        .map(|d| BenchInterval(Some(d)))
        .map_err(|e| format!("{text:?}: {e} (a duration such as 1s, or `default`)"))
}

#[derive(Debug, Subcommand)]
pub(crate) enum TestnetCommand {
    /// Start N nodes on 127.0.0.1 and wait until each has every other's telemetry.
    Up {
        #[command(flatten)]
        dir: TestnetDir,
        /// Number of nodes.
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Telemetry interval of every node.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        telemetry_interval: Duration,
        /// Give up waiting for convergence after this long (nodes keep running).
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Device mix: `uniform` (every node senses this machine) or `mixed` (simulated
        /// phones, tablets, laptops, desktops and Pis in various battery and thermal states).
        #[arg(long, value_enum, default_value = "uniform")]
        profile: testnet_lib::Profile,
        /// Run an open mesh (no tickets) instead of creating a mesh for the testnet.
        #[arg(long)]
        open: bool,
        /// Every node in one host process on the in-memory network instead of a process
        /// each (open mesh; docs/testnet.md, "In-memory testnets"): thousands fit on a laptop.
        #[arg(long, conflicts_with_all = ["nat", "radio", "offline", "profile"])]
        in_memory: bool,
        /// BLE-only nodes on a simulated radio shared by the processes (needs --offline),
        /// placed in a line, on a grid or at random; change it while it runs with
        /// `testnet radio`.
        #[arg(long, value_enum, requires = "offline")]
        radio: Option<testnet_lib::radio::Layout>,
        /// No internet transport on any node: Bluetooth LE on the simulated radio only.
        #[arg(long, requires = "radio")]
        offline: bool,
        /// `lab`: the NAT lab instead of the loopback testnet: nodes in network namespaces
        /// behind real kernel NATs (nftables) of several kinds, then a report of who
        /// connected to whom and how (Linux, root; docs/nat-lab.md). It runs until `down`.
        #[arg(long, value_enum, conflicts_with_all = ["nodes", "open", "radio", "offline"])]
        nat: Option<testnet_lib::nat_lab::NatMode>,
        /// The lab's nodes: public ones and NATed ones per kind (port-restricted, full-cone,
        /// symmetric), e.g. `public=1,port-restricted=2,symmetric=1`.
        #[arg(
            long,
            default_value = "public=2,port-restricted=2,full-cone=1,symmetric=2",
            requires = "nat"
        )]
        lab_layout: testnet_lib::nat_lab::Layout,
        /// The longest wait for the lab's NATed nodes to settle (every pair connected, no
        /// relayed pair turning direct for `--settle-quiet`); the report is printed either way.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, requires = "nat")]
        settle: Duration,
        /// How long nothing may change (no pair connecting, no relayed pair turning direct)
        /// before the lab counts as settled.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, requires = "nat")]
        settle_quiet: Duration,
        #[arg(long)]
        json: bool,
    },
    /// The host process of an in-memory testnet (started by `up --in-memory`).
    #[command(hide = true)]
    MemoryHost {
        #[command(flatten)]
        dir: TestnetDir,
        #[arg(long)]
        nodes: usize,
        #[arg(long, value_parser = humantime::parse_duration)]
        telemetry_interval: Duration,
    },
    /// Cut the given nodes off from every other node (in-memory and radio testnets): links
    /// between the two sides close and new ones are refused. Partitions add up.
    Partition {
        #[command(flatten)]
        dir: TestnetDir,
        /// Node indexes, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<usize>,
    },
    /// End every partition (in-memory and radio testnets).
    Heal {
        #[command(flatten)]
        dir: TestnetDir,
    },
    /// Serve one web dashboard for the whole testnet (every node's view merged, radio links
    /// drawn, partitions visible) on 127.0.0.1 until Ctrl-C; prints its address.
    Dashboard {
        #[command(flatten)]
        dir: TestnetDir,
        /// Port to serve on (0: any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Open the page in the default browser too.
        #[arg(long)]
        open: bool,
    },
    /// Print the NAT lab's report again: every pair with a NATed node, connected or not,
    /// direct or relayed, how and how fast (see `testnet up --nat lab`).
    NatReport {
        #[command(flatten)]
        dir: TestnetDir,
        #[arg(long)]
        json: bool,
    },
    /// Change a radio testnet's simulated radio while it runs (every node sees the change
    /// within a quarter of a second).
    Radio {
        #[command(flatten)]
        dir: TestnetDir,
        #[command(subcommand)]
        change: RadioCommand,
    },
    /// Show the running testnet.
    Status {
        #[command(flatten)]
        dir: TestnetDir,
        #[arg(long)]
        json: bool,
    },
    /// Stop exactly the processes `up` started.
    Down {
        #[command(flatten)]
        dir: TestnetDir,
        /// Also delete the testnet directory (node data and logs).
        #[arg(long)]
        clean: bool,
    },
    /// Stop one node for fault tests (default SIGKILL); it stays in the testnet for `restart`.
    Kill {
        #[command(flatten)]
        dir: TestnetDir,
        /// Index of the node (the `#` column of `testnet status`).
        #[arg(long)]
        node: usize,
        /// `kill` (SIGKILL, like a crash) or `term` (SIGTERM, a clean shutdown).
        #[arg(long, value_enum, default_value = "kill")]
        signal: testnet_lib::KillSignal,
        #[arg(long)]
        json: bool,
    },
    /// Start one node again with its recorded command line (stopping it first if it runs).
    Restart {
        #[command(flatten)]
        dir: TestnetDir,
        /// Index of the node (the `#` column of `testnet status`).
        #[arg(long)]
        node: usize,
        /// Give up waiting for the node's control API after this long.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[arg(long)]
        json: bool,
    },
    /// Measure the replicated store: propagation to every node, durable write throughput,
    /// catch-up of a node that was away, and no acknowledged write lost to SIGKILL.
    KvBench {
        #[command(flatten)]
        dir: TestnetDir,
        #[arg(long, default_value_t = 10)]
        nodes: usize,
        #[arg(long, default_value_t = 20)]
        trials: usize,
        /// Keys written while one node is away.
        #[arg(long, default_value_t = 100_000)]
        divergence_keys: usize,
        #[arg(long)]
        json: bool,
    },
    /// Measure cluster failover: SIGKILL the coordinator of the largest cluster, time until
    /// another member coordinates and takes a task; the node is restarted between trials.
    Failover {
        #[command(flatten)]
        dir: TestnetDir,
        #[arg(long, default_value_t = 12)]
        nodes: usize,
        #[arg(long, default_value_t = 20)]
        trials: usize,
        /// How long the clusters get to form.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        form_timeout: Duration,
        #[arg(long)]
        json: bool,
    },
    /// Measure how long each node's driver loop holds its swarm task while clusters run
    /// tasks and writers hammer the replicated store.
    StallBench {
        #[command(flatten)]
        dir: TestnetDir,
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        #[arg(long, default_value_t = 200)]
        tasks: usize,
        #[arg(long, default_value_t = 32)]
        writers: usize,
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long)]
        json: bool,
    },
    /// Measure durable single-key writes through fogmesh's control API side by side with
    /// etcd's HTTP gateway (one etcd member on loopback, started and stopped by the bench).
    PutBench {
        #[command(flatten)]
        dir: TestnetDir,
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// The etcd binary (Debian: `apt-get install etcd-server`); without it, fogmesh alone.
        #[arg(long)]
        etcd: Option<PathBuf>,
        /// Writes per phase.
        #[arg(long, default_value_t = 5_000)]
        puts: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Concurrent writers of each phase.
        #[arg(long, value_delimiter = ',', default_value = "1,32")]
        writers: Vec<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Measure convergence, propagation latency, memory and CPU on testnets.
    Bench {
        #[command(flatten)]
        dir: TestnetDir,
        /// Testnet sizes to measure.
        #[arg(long, value_delimiter = ',', default_value = "10,50")]
        sizes: Vec<usize>,
        /// Measure in-memory networks in this process instead of process testnets: upkeep
        /// per node (bytes/s, CPU, memory, records/s), time to converge, time until the loss
        /// of 10 % of the nodes is reflected everywhere.
        #[arg(long)]
        in_memory: bool,
        /// Telemetry interval of the measured testnets; `default` is the node's own. With
        /// --in-memory, several (comma-separated): every size is measured at each.
        #[arg(long, value_delimiter = ',', default_value = "1s", value_parser = parse_bench_interval)]
        interval: Vec<BenchInterval>,
        /// Wait after convergence before sampling (steady state).
        #[arg(long, default_value = "45s", value_parser = humantime::parse_duration)]
        settle: Duration,
        /// How long to sample propagation, CPU and memory (--in-memory: upkeep).
        #[arg(long, alias = "window", default_value = "10s", value_parser = humantime::parse_duration)]
        sample: Duration,
        /// --in-memory: longest wait for each network to converge.
        #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// --in-memory: longest wait for the loss of 10 % to be reflected (default: six
        /// telemetry intervals, at least a minute).
        #[arg(long, value_parser = humantime::parse_duration)]
        loss_timeout: Option<Duration>,
        /// Nodes in the idle phase (default 30 s telemetry interval).
        #[arg(long, default_value_t = 10)]
        idle_nodes: usize,
        /// How long to measure idle CPU.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        idle_window: Duration,
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn run_testnet(cmd: TestnetCommand) -> Result<()> {
    let binary = std::env::current_exe().context("cannot find the fogmesh binary")?;
    match cmd {
        TestnetCommand::Up {
            dir,
            // clap refuses these beside --nat.
            nodes: _,
            telemetry_interval,
            timeout,
            profile,
            open: _,
            in_memory: _,
            radio: _,
            offline: _,
            nat: Some(testnet_lib::nat_lab::NatMode::Lab),
            lab_layout,
            settle,
            settle_quiet,
            json,
        } => {
            let mut options =
                testnet_lib::nat_lab::LabOptions::new(dir.dir.clone(), binary, lab_layout);
            options.telemetry_interval = telemetry_interval;
            options.profile = profile;
            options.settle_timeout = settle;
            options.quiet = settle_quiet;
            options.answer_timeout = timeout;
            let lab = testnet_lib::nat_lab::up(&options, |line| eprintln!("{line}"));
            // Ctrl-C while the lab is being built or settles: undo all of it. (Once `up` has
            // returned, the lab runs on until `testnet down`.)
            let report = tokio::select! {
                report = lab => report?,
                _ = tokio::signal::ctrl_c() => {
                    eprintln!("interrupted: tearing the lab down");
                    match testnet_lib::down(&dir.dir, false).await {
                        Ok(down) => eprintln!("{down}"),
                        // Interrupted before anything was recorded: nothing was built.
                        Err(testnet_lib::TestnetError::NotFound(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                    anyhow::bail!("interrupted");
                }
            };
            if json {
                print_line(&serde_json::to_string_pretty(&report)?)
            } else {
                print_line(&format!(
                    "{}\nthe lab runs until `fogmesh testnet down --dir {}`; `fogmesh testnet nat-report --dir {}` asks again",
                    testnet_lib::nat_lab::report::render(&report),
                    dir.dir.display(),
                    dir.dir.display()
                ))
            }
        }
        TestnetCommand::Dashboard { dir, port, open } => {
            super::dashboard::testnet_dashboard(&dir.dir, port, open).await
        }
        TestnetCommand::NatReport { dir, json } => {
            let report = testnet_lib::nat_lab::lab_report(&dir.dir).await?;
            print_out(json, &report, || {
                testnet_lib::nat_lab::report::render(&report)
            })
        }
        TestnetCommand::Up {
            dir,
            nodes,
            telemetry_interval,
            timeout,
            in_memory: true,
            json,
            ..
        } => {
            let options = testnet_lib::memory::MemoryUpOptions {
                dir: dir.dir.clone(),
                binary,
                nodes,
                telemetry_interval,
                timeout,
            };
            let report = testnet_lib::memory::up(&options, |elapsed, h| {
                eprintln!(
                    "  {:>5.1}s  {}/{} nodes started, {}/{} complete",
                    elapsed.as_secs_f64(),
                    h.started,
                    h.nodes,
                    h.converged_nodes,
                    h.nodes
                )
            })
            .await?;
            let table = testnet_lib::status(&dir.dir).await?;
            if json {
                print_line(&serde_json::to_string_pretty(&table)?)
            } else {
                print_line(&format!(
                    "{}\n{} in-memory nodes in host process {} (log {}) converged in {:.2}s; stop it with `fogmesh testnet down --dir {}`",
                    testnet_lib::render_status(&table),
                    nodes,
                    report.host_pid,
                    report.log_file.display(),
                    report.converged_after_ms as f64 / 1000.0,
                    dir.dir.display()
                ))
            }
        }
        TestnetCommand::MemoryHost {
            dir,
            nodes,
            telemetry_interval,
        } => super::testnet_memory::memory_host(&dir.dir, nodes, telemetry_interval).await,
        TestnetCommand::Partition { dir, nodes } => {
            partition(&dir.dir, RadioCommand::Partition { nodes }).await
        }
        TestnetCommand::Heal { dir } => partition(&dir.dir, RadioCommand::Heal).await,
        TestnetCommand::Up {
            dir,
            nodes,
            telemetry_interval,
            timeout,
            profile,
            open,
            in_memory: false,
            radio,
            offline: _,
            nat: None,
            lab_layout: _,
            settle: _,
            settle_quiet: _,
            json,
        } => {
            let options = testnet_lib::UpOptions {
                nodes,
                dir: dir.dir,
                binary,
                telemetry_interval: Some(telemetry_interval),
                timeout,
                profile,
                open,
                radio,
            };
            let report = testnet_lib::up(&options, |p| {
                eprintln!(
                    "  {:>5.1}s  {}/{} nodes up, {}/{} have every other node's telemetry",
                    p.elapsed.as_secs_f64(),
                    p.answering,
                    p.total,
                    p.converged,
                    p.total
                )
            })
            .await?;
            let table = testnet_lib::status(&options.dir).await?;
            if json {
                print_line(&serde_json::to_string_pretty(&table)?)
            } else {
                print_line(&format!(
                    "{}\nconverged in {:.2}s; stop it with `fogmesh testnet down --dir {}`",
                    testnet_lib::render_status(&table),
                    report.converged_after.as_secs_f64(),
                    options.dir.display()
                ))
            }
        }
        TestnetCommand::Status { dir, json } => {
            let table = testnet_lib::status(&dir.dir).await?;
            print_out(json, &table, || testnet_lib::render_status(&table))
        }
        TestnetCommand::Down { dir, clean } => {
            let report = testnet_lib::down(&dir.dir, clean).await?;
            print_line(&report.to_string())
        }
        TestnetCommand::Kill {
            dir,
            node,
            signal,
            json,
        } => {
            let report = testnet_lib::kill(&dir.dir, node, signal).await?;
            print_out(json, &report, || report.to_string())
        }
        TestnetCommand::Restart {
            dir,
            node,
            timeout,
            json,
        } => {
            let report = testnet_lib::restart(&dir.dir, node, timeout).await?;
            print_out(json, &report, || report.to_string())
        }
        TestnetCommand::Radio {
            dir,
            change: change @ (RadioCommand::Partition { .. } | RadioCommand::Heal),
        } if is_in_memory(&dir.dir)? => partition(&dir.dir, change).await,
        TestnetCommand::Radio { dir, change } => {
            use testnet_lib::radio::RadioChange;
            let state = testnet_lib::status(&dir.dir).await?;
            let ports: Vec<u16> = state.nodes.iter().map(|n| n.p2p_port).collect();
            let change = match change {
                RadioCommand::Move { node, to } => RadioChange::Move {
                    node,
                    x: to.0,
                    y: to.1,
                },
                RadioCommand::Partition { nodes } => RadioChange::Partition { group: nodes },
                RadioCommand::Heal => RadioChange::Heal,
                RadioCommand::Loss { probability } => RadioChange::Loss(probability),
            };
            testnet_lib::radio::apply(&dir.dir, &ports, &change)?;
            let neighbours = testnet_lib::radio::neighbours(&dir.dir, &ports).unwrap_or_default();
            let lines: Vec<String> = neighbours
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let n: Vec<String> = n.iter().map(|j| j.to_string()).collect();
                    format!(
                        "  node {i} hears {}",
                        if n.is_empty() {
                            "nobody".into()
                        } else {
                            n.join(",")
                        }
                    )
                })
                .collect();
            print_line(&format!("radio changed\n{}", lines.join("\n")))
        }
        TestnetCommand::KvBench {
            dir,
            nodes,
            trials,
            divergence_keys,
            json,
        } => {
            let options = testnet_lib::kv_bench::KvBenchOptions {
                dir: dir.dir,
                binary,
                nodes,
                trials,
                divergence_keys,
                entry_bytes: sample_entry_bytes(),
            };
            let report =
                testnet_lib::kv_bench::kv_bench(&options, |line| eprintln!("{line}")).await?;
            print_out(json, &report, || report.to_markdown())
        }
        TestnetCommand::Failover {
            dir,
            nodes,
            trials,
            form_timeout,
            json,
        } => {
            let options = testnet_lib::failover::FailoverOptions {
                dir: dir.dir,
                binary,
                nodes,
                trials,
                module: crate::cluster::exec::assemble(include_str!(
                    "../../../examples/workloads/empty.wat"
                ))?,
                form_timeout,
            };
            let report =
                testnet_lib::failover::failover(&options, |line| eprintln!("{line}")).await?;
            print_out(json, &report, || report.to_markdown())
        }
        TestnetCommand::StallBench {
            dir,
            nodes,
            tasks,
            writers,
            duration,
            json,
        } => {
            let options = testnet_lib::stall_bench::StallBenchOptions {
                dir: dir.dir,
                binary,
                nodes,
                tasks,
                writers,
                duration,
                module: crate::cluster::exec::assemble(include_str!(
                    "../../../examples/workloads/empty.wat"
                ))?,
            };
            let report =
                testnet_lib::stall_bench::stall_bench(&options, |line| eprintln!("{line}")).await?;
            print_out(json, &report, || report.to_markdown())
        }
        TestnetCommand::PutBench {
            dir,
            nodes,
            etcd,
            puts,
            rounds,
            writers,
            json,
        } => {
            let options = testnet_lib::put_bench::PutBenchOptions {
                dir: dir.dir,
                binary,
                nodes,
                etcd,
                puts,
                rounds,
                writers,
            };
            let report =
                testnet_lib::put_bench::put_bench(&options, |line| eprintln!("{line}")).await?;
            print_out(json, &report, || report.to_markdown())
        }
        TestnetCommand::Bench {
            dir,
            sizes,
            in_memory: true,
            interval,
            settle,
            sample,
            timeout,
            loss_timeout,
            json,
            ..
        } => {
            // The nodes' own logs at warn (RUST_LOG overrides): hundreds of nodes at info
            // would drown the progress lines.
            crate::logging::init("warn", crate::config::LogFormat::Text);
            let options = super::memory_bench::MemoryBenchOptions {
                dir: dir.dir,
                sizes,
                intervals: interval.into_iter().map(|i| i.0).collect(),
                timeout,
                settle,
                window: sample,
                loss_timeout,
            };
            let report = super::memory_bench::bench(&options, |line| eprintln!("{line}")).await?;
            print_out(json, &report, || report.to_markdown())
        }
        TestnetCommand::Bench {
            dir,
            sizes,
            in_memory: false,
            interval,
            settle,
            sample,
            timeout: _,
            loss_timeout: _,
            idle_nodes,
            idle_window,
            json,
        } => {
            let [BenchInterval(interval)] = interval[..] else {
                anyhow::bail!(
                    "a process testnet bench takes one --interval (several need --in-memory)"
                );
            };
            let options = testnet_lib::BenchOptions {
                dir: dir.dir,
                binary,
                sizes,
                busy_interval: interval.unwrap_or_else(super::memory_bench::default_interval),
                settle,
                sample,
                idle_nodes,
                idle_window,
            };
            let report = testnet_lib::bench(&options, |line| eprintln!("{line}")).await?;
            print_out(json, &report, || report.to_markdown())
        }
    }
}

/// Whether the testnet in `dir` runs in memory.
fn is_in_memory(dir: &std::path::Path) -> Result<bool> {
    Ok(testnet_lib::state::load(dir)?.is_some_and(|s| s.host.is_some()))
}

/// `testnet partition` / `heal` (and `radio partition` / `heal` of an in-memory testnet):
/// asks an in-memory testnet's host, or changes a radio testnet's medium.
async fn partition(dir: &std::path::Path, change: RadioCommand) -> Result<()> {
    if !is_in_memory(dir)? {
        let state = testnet_lib::state::load(dir)?
            .ok_or_else(|| testnet_lib::TestnetError::NotFound(dir.to_path_buf()))?;
        if !testnet_lib::radio::medium_path(dir).exists() {
            anyhow::bail!(
                "the testnet in {} runs on real sockets and cannot be partitioned; partitions \
                 need an in-memory testnet (`up --in-memory`) or a radio one (`up --radio`)",
                dir.display()
            );
        }
        let ports: Vec<u16> = state.nodes.iter().map(|n| n.p2p_port).collect();
        let change = match change {
            RadioCommand::Partition { nodes } => {
                testnet_lib::radio::RadioChange::Partition { group: nodes }
            }
            _ => testnet_lib::radio::RadioChange::Heal,
        };
        testnet_lib::radio::apply(dir, &ports, &change)?;
        return print_line("radio changed");
    }
    let (client, _) = testnet_lib::memory::HostClient::for_testnet(dir)?;
    let health = match change {
        RadioCommand::Partition { nodes } => client.partition(&nodes).await?,
        _ => client.heal().await?,
    };
    if health.partitions.is_empty() {
        print_line("no partitions: every node may reach every other")
    } else {
        print_line(&format!(
            "partitioned off from the rest (and from each other): {:?}",
            health.partitions
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Every simulated device a mixed testnet starts must be accepted by `fogmesh run`.
    #[test]
    fn mixed_profile_rows_parse_as_run_flags() {
        for index in 0..10 {
            let mut argv = vec!["fogmesh".to_owned(), "run".to_owned()];
            argv.extend(testnet_lib::mixed_profile_args(index));
            let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            let Some(Command::Run(args)) = cli.command else {
                panic!("not a run command")
            };
            let sim = args.simulate.layer().expect("simulation flags");
            sim.validate().unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        }
    }
}
