//! `fogmesh testnet bench`: convergence time, propagation latency, memory and CPU of
//! testnets on loopback. Every phase is bounded in time and stops its nodes itself.
//!
//! Latency: each node keeps a bounded log of receipts (origin, seq, publish timestamp,
//! receive time). All nodes share this machine's clock, so `received - published` is the
//! publish-to-receipt latency with millisecond resolution. A message's *all-receipt* latency
//! is the largest over the receivers, counted only for messages every other node received.

use std::collections::HashMap;

/// fogmesh's default `telemetry_full_mesh_below`: from this size on, a record is meant to
/// reach its origin's cluster, not every node.
const FULL_MESH_BELOW: usize = 32;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::probe::Prober;
use crate::{down, now_ms, procs, state, up, TestnetError, UpOptions};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub dir: PathBuf,
    pub binary: PathBuf,
    pub sizes: Vec<usize>,
    pub busy_interval: Duration,
    /// Wait this long after convergence before sampling, so start-up work (Kademlia walks,
    /// connection pruning) is over and the sample shows the steady state.
    pub settle: Duration,
    pub sample: Duration,
    pub idle_nodes: usize,
    pub idle_window: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct ResourceFigures {
    pub rss_mean_mib: f64,
    pub rss_max_mib: f64,
    pub cpu_mean_pct: f64,
    pub cpu_max_pct: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SizeResult {
    pub nodes: usize,
    pub telemetry_interval_ms: u64,
    pub converge_s: f64,
    pub receipts: usize,
    pub receipt_p50_ms: Option<u64>,
    pub receipt_p99_ms: Option<u64>,
    pub messages_seen_by_all: usize,
    pub all_receipt_p50_ms: Option<u64>,
    pub all_receipt_p99_ms: Option<u64>,
    pub busy: ResourceFigures,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleResult {
    pub nodes: usize,
    pub window_s: f64,
    pub converge_s: f64,
    pub idle: ResourceFigures,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub machine: String,
    pub sizes: Vec<SizeResult>,
    pub idle: Option<IdleResult>,
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[u64], pct: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

pub(crate) fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|kib| kib / 1048576.0)
        .unwrap_or(0.0);
    format!("{cores} cores ({cpu}), {mem_gib:.0} GiB")
}

/// CPU and RSS of the given PIDs over `window`.
pub(crate) async fn measure(pids: &[u32], window: Duration) -> ResourceFigures {
    let before: Vec<Option<u64>> = pids.iter().map(|p| procs::cpu_ticks(*p)).collect();
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let elapsed = started.elapsed().as_secs_f64().max(0.001);
    let after: Vec<Option<u64>> = pids.iter().map(|p| procs::cpu_ticks(*p)).collect();
    let tps = procs::ticks_per_second() as f64;
    let cpu: Vec<f64> = before
        .iter()
        .zip(&after)
        .filter_map(|(b, a)| {
            Some((a.as_ref()?.saturating_sub(*b.as_ref()?)) as f64 / tps / elapsed * 100.0)
        })
        .collect();
    let rss: Vec<f64> = pids
        .iter()
        .filter_map(|p| procs::rss_bytes(*p))
        .map(|b| b as f64 / 1048576.0)
        .collect();
    let mean = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    ResourceFigures {
        rss_mean_mib: mean(&rss),
        rss_max_mib: max(&rss),
        cpu_mean_pct: mean(&cpu),
        cpu_max_pct: max(&cpu),
    }
}

fn pids_of(dir: &std::path::Path) -> Result<Vec<u32>, TestnetError> {
    Ok(state::load(dir)?
        .map(|s| s.nodes.iter().map(|n| n.pid).collect())
        .unwrap_or_default())
}

/// Runs the whole benchmark; `log` receives progress lines.
pub async fn bench(
    options: &BenchOptions,
    mut log: impl FnMut(String),
) -> Result<BenchReport, TestnetError> {
    let mut report = BenchReport {
        machine: machine(),
        sizes: Vec::new(),
        idle: None,
    };
    let prober = Prober::new();
    for &nodes in &options.sizes {
        let dir = options.dir.join(format!("bench-{nodes}"));
        log(format!(
            "bench: starting {nodes} nodes ({}ms telemetry)",
            options.busy_interval.as_millis()
        ));
        let up_options = UpOptions {
            radio: None,
            nodes,
            dir: dir.clone(),
            binary: options.binary.clone(),
            telemetry_interval: Some(options.busy_interval),
            timeout: Duration::from_secs(60 + nodes as u64 * 2),
            profile: crate::Profile::Uniform,
            open: false,
        };
        let result = async {
            let mut up_report = up(&up_options, |_| {}).await?;
            log(format!(
                "bench: {nodes} nodes converged in {:.2}s; settling {:?}, then sampling {:?}",
                up_report.converged_after.as_secs_f64(),
                options.settle,
                options.sample
            ));
            tokio::time::sleep(options.settle).await;
            let sample_from = now_ms();
            let pids = pids_of(&dir)?;
            let busy = measure(&pids, options.sample).await;
            let ports: Vec<u16> = state::load(&dir)?
                .map(|s| s.nodes.iter().map(|n| n.control_port).collect())
                .unwrap_or_default();
            let mut latencies = Vec::new();
            // (origin, seq) -> (receivers, worst latency)
            let mut per_message: HashMap<(String, u64), (usize, u64)> = HashMap::new();
            for port in ports {
                let Some(r) = prober.receipts(port).await else {
                    continue;
                };
                for receipt in r.receipts.iter().filter(|r| r.published_ms >= sample_from) {
                    let latency = receipt.received_ms.saturating_sub(receipt.published_ms);
                    latencies.push(latency);
                    let origin = r
                        .origins
                        .get(receipt.origin_index as usize)
                        .cloned()
                        .unwrap_or_default();
                    let entry = per_message.entry((origin, receipt.seq)).or_insert((0, 0));
                    entry.0 += 1;
                    entry.1 = entry.1.max(latency);
                }
            }
            latencies.sort_unstable();
            // Whom a record should reach: every node in a small mesh, its origin's cluster
            // in a large one (docs/scale.md).
            let mut reach: HashMap<String, usize> = HashMap::new();
            if nodes >= FULL_MESH_BELOW {
                let ports: Vec<u16> = state::load(&dir)?
                    .map(|s| s.nodes.iter().map(|n| n.control_port).collect())
                    .unwrap_or_default();
                for port in ports {
                    if let Some(c) = prober.cluster(port).await {
                        for m in &c.members {
                            reach.insert(m.peer_id.clone(), c.members.len());
                        }
                    }
                }
            }
            let mut all: Vec<u64> = per_message
                .iter()
                .filter(|((origin, _), (receivers, _))| {
                    *receivers + 1 >= reach.get(origin).copied().unwrap_or(nodes)
                })
                .map(|(_, (_, worst))| *worst)
                .collect();
            all.sort_unstable();
            for child in &mut up_report.children {
                let _ = child.try_wait();
            }
            Ok::<_, TestnetError>((
                up_report,
                SizeResult {
                    nodes,
                    telemetry_interval_ms: options.busy_interval.as_millis() as u64,
                    converge_s: 0.0,
                    receipts: latencies.len(),
                    receipt_p50_ms: percentile(&latencies, 50.0),
                    receipt_p99_ms: percentile(&latencies, 99.0),
                    messages_seen_by_all: all.len(),
                    all_receipt_p50_ms: percentile(&all, 50.0),
                    all_receipt_p99_ms: percentile(&all, 99.0),
                    busy,
                },
            ))
        }
        .await;
        let stopped = down(&dir, true).await;
        let (mut up_report, mut size_result) = result?;
        stopped?;
        for child in &mut up_report.children {
            let _ = child.wait();
        }
        size_result.converge_s = up_report.converged_after.as_secs_f64();
        report.sizes.push(size_result);
    }
    if options.idle_nodes > 0 {
        let dir = options.dir.join("bench-idle");
        log(format!(
            "bench: idle phase, {} nodes with the default telemetry interval",
            options.idle_nodes
        ));
        let up_options = UpOptions {
            radio: None,
            nodes: options.idle_nodes,
            dir: dir.clone(),
            binary: options.binary.clone(),
            telemetry_interval: None,
            timeout: Duration::from_secs(120),
            profile: crate::Profile::Uniform,
            open: false,
        };
        let result = async {
            let up_report = up(&up_options, |_| {}).await?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            let pids = pids_of(&dir)?;
            log(format!(
                "bench: measuring idle CPU for {:?}",
                options.idle_window
            ));
            let idle = measure(&pids, options.idle_window).await;
            Ok::<_, TestnetError>((up_report, idle))
        }
        .await;
        let stopped = down(&dir, true).await;
        let (mut up_report, idle) = result?;
        stopped?;
        for child in &mut up_report.children {
            let _ = child.wait();
        }
        report.idle = Some(IdleResult {
            nodes: options.idle_nodes,
            window_s: options.idle_window.as_secs_f64(),
            converge_s: up_report.converged_after.as_secs_f64(),
            idle,
        });
    }
    Ok(report)
}

impl BenchReport {
    pub fn to_markdown(&self) -> String {
        let ms = |v: Option<u64>| v.map(|v| format!("{v} ms")).unwrap_or_else(|| "n/a".into());
        let mut out = format!("Machine: {}\n\n", self.machine);
        out.push_str("| nodes | interval | converge | receipt p50 | receipt p99 | all-receipt p50 | all-receipt p99 | msgs seen by all | RSS mean / max | CPU mean / max |\n");
        out.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
        for s in &self.sizes {
            out.push_str(&format!(
                "| {} | {} ms | {:.2} s | {} | {} | {} | {} | {} | {:.1} / {:.1} MiB | {:.1} / {:.1} % |\n",
                s.nodes, s.telemetry_interval_ms, s.converge_s,
                ms(s.receipt_p50_ms), ms(s.receipt_p99_ms), ms(s.all_receipt_p50_ms), ms(s.all_receipt_p99_ms),
                s.messages_seen_by_all, s.busy.rss_mean_mib, s.busy.rss_max_mib, s.busy.cpu_mean_pct, s.busy.cpu_max_pct
            ));
        }
        if let Some(idle) = &self.idle {
            out.push_str(&format!(
                "\nIdle ({} nodes, default 30 s telemetry, {:.0} s window, converged in {:.2} s): RSS mean {:.1} MiB, max {:.1} MiB; CPU mean {:.2} %, max {:.2} %\n",
                idle.nodes, idle.window_s, idle.converge_s, idle.idle.rss_mean_mib, idle.idle.rss_max_mib, idle.idle.cpu_mean_pct, idle.idle.cpu_max_pct
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
