//! `fogmesh testnet bench --in-memory`: what a node spends to keep the mesh up, measured on
//! in-memory networks ([`crate::memnet`]) of several sizes, in this process.
//!
//! For each size and telemetry interval, one after another (each network shut down before
//! the next): start the nodes and time until [`MemNet::wait_converged`] holds (or the
//! time-out, with how many nodes were complete); let the network settle; then over a window
//! measure per node the bytes through its connections (in + out, the
//! `libp2p_bandwidth_bytes_total` counter), CPU (this process's user + system time, divided
//! by nodes and window: a share of one core), memory (this process's RSS divided by nodes)
//! and telemetry records accepted per second; finally stop 10 % of the nodes and time until
//! no remaining node counts them as alive ([`loss_reflected`]). Every wait is bounded; a
//! size that does not converge is reported as such.
//!
//! Everything here is the whole process divided by nodes: in one process the nodes share
//! the runtime, the allocator and the store's threads, so per-node CPU and memory are what a
//! node costs in an in-memory network, not what a node process would cost alone
//! (`testnet bench` without `--in-memory` measures processes).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use rand::rngs::StdRng;
use rand::seq::index;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigLayer, Settings};
use crate::memnet::{MemNet, MemNetError, Topology};

/// Why the benchmark could not run (a size that does not converge is a result, not this).
#[derive(Debug, thiserror::Error)]
pub enum MemoryBenchError {
    #[error(transparent)]
    MemNet(#[from] MemNetError),
    #[error("cannot use {path}: {reason}")]
    Dir { path: PathBuf, reason: String },
    #[error("nothing to measure: {0}")]
    Nothing(&'static str),
}

#[derive(Debug, Clone)]
pub struct MemoryBenchOptions {
    /// The networks' nodes live under `<dir>/memory-bench/` while measured, and are deleted.
    pub dir: PathBuf,
    pub sizes: Vec<usize>,
    /// Telemetry intervals to measure each size at; `None` is the node's default.
    pub intervals: Vec<Option<Duration>>,
    /// Longest wait for convergence, per network.
    pub timeout: Duration,
    /// Wait after convergence (or its time-out) before measuring: start-up publishes more
    /// than the steady state.
    pub settle: Duration,
    /// How long upkeep is measured.
    pub window: Duration,
    /// Longest wait for the loss of 10 % to be reflected; `None`: six telemetry intervals
    /// and at least a minute (a silent node is dropped after three).
    pub loss_timeout: Option<Duration>,
}

/// One network measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryRun {
    pub nodes: usize,
    pub telemetry_interval_ms: u64,
    /// Starting every node (they start one after another).
    pub started_in_ms: u64,
    /// From the first node's start until converged; `None` if it did not within the
    /// time-out.
    pub converged_after_ms: Option<u64>,
    /// Nodes complete when the wait ended (all of them if converged).
    pub converged_nodes: usize,
    pub upkeep: Upkeep,
    pub loss: Loss,
}

/// Per-node upkeep of an idle mesh over the window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Upkeep {
    pub window_ms: u64,
    /// Bytes through the node's connections, in plus out.
    pub bytes_per_s: f64,
    /// Percent of one core (this process's CPU time over the window, per node).
    pub cpu_percent: Option<f64>,
    /// This process's resident memory divided by the nodes.
    pub rss_bytes: Option<u64>,
    /// What the process's resident memory grew by since before this network, per node.
    pub rss_added_bytes: Option<u64>,
    pub telemetry_accepted_per_s: f64,
    /// Connections established a minute (each end counts one): an idle mesh should open
    /// next to none, every one costs a Noise handshake.
    #[serde(default)]
    pub connections_per_min: f64,
}

/// Stopping 10 % of the nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Loss {
    pub removed: usize,
    /// Until no remaining node counted any of them as alive; `None` if not within
    /// `waited_ms`.
    pub reflected_after_ms: Option<u64>,
    pub waited_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryBenchReport {
    /// Cores this machine has (CPU is a share of one).
    pub cores: usize,
    pub runs: Vec<MemoryRun>,
}

/// Whether the loss of `gone` is reflected: no running node counts any of them as alive
/// ([`MemNet::forgotten_everywhere`]).
pub fn loss_reflected(net: &MemNet, gone: &[PeerId]) -> bool {
    net.forgotten_everywhere(gone)
}

/// The node's default telemetry interval (what `None` in the options means).
pub fn default_interval() -> Duration {
    Settings::resolve(ConfigLayer::default()).telemetry_interval
}

/// Runs every size at every interval; `progress` gets a line now and then.
pub async fn bench(
    options: &MemoryBenchOptions,
    mut progress: impl FnMut(&str),
) -> Result<MemoryBenchReport, MemoryBenchError> {
    if options.sizes.is_empty() || options.intervals.is_empty() {
        return Err(MemoryBenchError::Nothing("give --sizes and --interval"));
    }
    if options.sizes.iter().any(|n| *n < 2) {
        return Err(MemoryBenchError::Nothing(
            "every size needs at least 2 nodes",
        ));
    }
    let mut runs = Vec::new();
    for &interval in &options.intervals {
        let interval = interval.unwrap_or_else(default_interval);
        for &nodes in &options.sizes {
            runs.push(run(options, nodes, interval, &mut progress).await?);
        }
    }
    Ok(MemoryBenchReport {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        runs,
    })
}

async fn run(
    options: &MemoryBenchOptions,
    nodes: usize,
    interval: Duration,
    progress: &mut impl FnMut(&str),
) -> Result<MemoryRun, MemoryBenchError> {
    let dir = options
        .dir
        .join("memory-bench")
        .join(format!("{nodes}-nodes-{}ms", interval.as_millis()));
    let dir_err = |e: std::io::Error| MemoryBenchError::Dir {
        path: dir.clone(),
        reason: e.to_string(),
    };
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(dir_err(e)),
        _ => {}
    }
    let me = std::process::id();
    let rss_before = fogmesh_testnet::procs::rss_bytes(me);
    progress(&format!(
        "{nodes} nodes, telemetry every {}: starting",
        humantime::format_duration(interval)
    ));
    let started = Instant::now();
    let mut net = MemNet::builder(&dir)
        .nodes(nodes)
        .telemetry_interval(interval)
        .topology(Topology::Random {
            links: super::testnet_memory::LINKS,
            seed: super::testnet_memory::SEED,
        })
        .settings(super::testnet_memory::testnet_settings)
        .start()
        .await?;
    let started_in = started.elapsed();
    progress(&format!(
        "  started in {:.1}s; waiting for convergence (up to {})",
        started_in.as_secs_f64(),
        humantime::format_duration(options.timeout)
    ));
    // In slices, so a slow network shows how far it is.
    const SLICE: Duration = Duration::from_secs(10);
    let converged_after = loop {
        let left = options.timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            break None;
        }
        match net.wait_converged(left.min(SLICE)).await {
            Ok(_) => break Some(started.elapsed()),
            Err(_) => progress(&format!(
                "  {:.0}s: {}/{nodes} nodes complete; {}",
                started.elapsed().as_secs_f64(),
                net.converged_nodes(),
                net.formation()
            )),
        }
    };
    let converged_nodes = if converged_after.is_some() {
        nodes
    } else {
        net.converged_nodes()
    };
    match converged_after {
        Some(t) => progress(&format!("  converged after {:.1}s", t.as_secs_f64())),
        None => progress(&format!(
            "  NOT converged within {}: {converged_nodes}/{nodes} nodes complete",
            humantime::format_duration(options.timeout)
        )),
    }

    tokio::time::sleep(options.settle).await;
    progress(&format!(
        "  measuring upkeep over {}",
        humantime::format_duration(options.window)
    ));
    let upkeep = upkeep(&net, options.window, rss_before).await;

    let loss = lose_a_tenth(&mut net, nodes, interval, options, progress).await?;

    let stopping = tokio::time::timeout(Duration::from_secs(120), net.shutdown()).await;
    if stopping.is_err() {
        progress("  the nodes took over 2 minutes to stop; going on");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(MemoryRun {
        nodes,
        telemetry_interval_ms: interval.as_millis() as u64,
        started_in_ms: started_in.as_millis() as u64,
        converged_after_ms: converged_after.map(|t| t.as_millis() as u64),
        converged_nodes,
        upkeep,
        loss,
    })
}

/// This process's CPU time (user + system) so far.
fn cpu_time() -> Option<Duration> {
    let ticks = fogmesh_testnet::procs::cpu_ticks(std::process::id())?;
    let per_second = fogmesh_testnet::procs::ticks_per_second();
    Some(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

async fn upkeep(net: &MemNet, window: Duration, rss_before: Option<u64>) -> Upkeep {
    let before = net.traffic();
    let cpu_0 = cpu_time();
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let seconds = t0.elapsed().as_secs_f64().max(1e-3);
    let cpu_1 = cpu_time();
    let after = net.traffic();
    let nodes = net.running().len().max(1);
    let rss = fogmesh_testnet::procs::rss_bytes(std::process::id());
    Upkeep {
        window_ms: (seconds * 1000.0) as u64,
        bytes_per_s: (after.bytes - before.bytes).max(0.0) / seconds / nodes as f64,
        connections_per_min: after.connections.saturating_sub(before.connections) as f64 * 60.0
            / seconds
            / nodes as f64,
        cpu_percent: cpu_0
            .zip(cpu_1)
            .map(|(a, b)| 100.0 * b.saturating_sub(a).as_secs_f64() / seconds / nodes as f64),
        rss_bytes: rss.map(|r| r / nodes as u64),
        rss_added_bytes: rss
            .zip(rss_before)
            .map(|(r, b)| r.saturating_sub(b) / nodes as u64),
        telemetry_accepted_per_s: after.accepted.saturating_sub(before.accepted) as f64
            / seconds
            / nodes as f64,
    }
}

/// Stops a tenth of the nodes (at least one; picked by a fixed seed) and waits until the
/// others no longer count them.
async fn lose_a_tenth(
    net: &mut MemNet,
    nodes: usize,
    interval: Duration,
    options: &MemoryBenchOptions,
    progress: &mut impl FnMut(&str),
) -> Result<Loss, MemoryBenchError> {
    let count = nodes.div_ceil(10).min(nodes - 1);
    let mut rng = StdRng::seed_from_u64(7);
    let victims = index::sample(&mut rng, nodes, count).into_vec();
    let gone: Vec<PeerId> = victims.iter().filter_map(|i| net.peer_id(*i)).collect();
    let timeout = options
        .loss_timeout
        .unwrap_or_else(|| (interval * 6).max(Duration::from_secs(60)));
    progress(&format!(
        "  stopping {count} nodes; waiting up to {} for every other node to drop them",
        humantime::format_duration(timeout)
    ));
    let t0 = Instant::now();
    for i in &victims {
        net.stop(*i).await?;
    }
    // Polled rather than woken on every view change: on a big network the check reads
    // every remaining node, and the views change thousands of times a second.
    let gap = Duration::from_millis(100).max(Duration::from_micros(500) * nodes as u32);
    let reflected = loop {
        if loss_reflected(net, &gone) {
            break Some(t0.elapsed());
        }
        if t0.elapsed() >= timeout {
            break None;
        }
        tokio::time::sleep(gap).await;
    };
    match reflected {
        Some(t) => progress(&format!("  loss reflected after {:.1}s", t.as_secs_f64())),
        None => progress("  loss NOT reflected everywhere in time"),
    }
    Ok(Loss {
        removed: count,
        reflected_after_ms: reflected.map(|t| t.as_millis() as u64),
        waited_ms: t0.elapsed().as_millis() as u64,
    })
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("?".into(), |b| format!("{:.1}", b as f64 / 1048576.0))
}

impl MemoryBenchReport {
    /// A table for people: one row per network.
    pub fn to_markdown(&self) -> String {
        let secs = |ms: Option<u64>| {
            ms.map_or("—".to_owned(), |ms| format!("{:.1}", ms as f64 / 1000.0))
        };
        let mut out = String::from(
            "| nodes | interval | converged (s) | bytes/s a node | CPU % of a core a node | RSS a node (MiB): process / added | records/s a node | connections opened/min a node | 10 % lost: reflected (s) |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in &self.runs {
            let u = &r.upkeep;
            let converged = match r.converged_after_ms {
                Some(_) => secs(r.converged_after_ms),
                None => format!("no ({}/{})", r.converged_nodes, r.nodes),
            };
            let reflected = match r.loss.reflected_after_ms {
                Some(_) => format!(
                    "{} ({} nodes)",
                    secs(r.loss.reflected_after_ms),
                    r.loss.removed
                ),
                None => format!(
                    "no, > {} ({} nodes)",
                    secs(Some(r.loss.waited_ms)),
                    r.loss.removed
                ),
            };
            out.push_str(&format!(
                "| {} | {} | {} | {:.0} | {} | {} / {} | {:.2} | {:.1} | {} |\n",
                r.nodes,
                humantime::format_duration(Duration::from_millis(r.telemetry_interval_ms)),
                converged,
                u.bytes_per_s,
                u.cpu_percent.map_or("?".into(), |c| format!("{c:.2}")),
                mib(u.rss_bytes),
                mib(u.rss_added_bytes),
                u.telemetry_accepted_per_s,
                u.connections_per_min,
                reflected,
            ));
        }
        out.push_str(&format!(
            "\nIn one process on {} cores: CPU and RSS are the process's divided by nodes; the process keeps memory freed by earlier networks, so \"added\" (growth since before this network) is the fairer figure; bytes are in + out through each node's connections; upkeep measured over {:.0}s of an idle mesh.",
            self.cores,
            self.runs.first().map_or(0.0, |r| r.upkeep.window_ms as f64 / 1000.0)
        ));
        out
    }
}
