//! `fogmesh testnet stall-bench`: how long the driver loop of each node holds its swarm task
//! while the node is busy with clusters and the replicated store.
//!
//! It starts a testnet, waits until every node is in a cluster, then at once submits
//! `tasks` tasks (spread over the nodes) and runs `writers` concurrent kv writers (spread
//! over the nodes) for `duration`. It then reads every node's `fogmesh_driver_turn_seconds`
//! histogram and `fogmesh_driver_turn_max_seconds` gauge from `/metrics`: the time one turn
//! of the loop held the task, which is what every other input (gossip, relay, raft) waited
//! behind. Bounded: every phase has a timeout, and the testnet is stopped (its own PIDs
//! only) at the end, whatever happened.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::probe::{ClusterProbe, Prober};
use crate::{state, with_testnet, Profile, TestnetError, UpOptions};

#[derive(Debug, Clone)]
pub struct StallBenchOptions {
    pub dir: PathBuf,
    pub binary: PathBuf,
    pub nodes: usize,
    pub tasks: usize,
    pub writers: usize,
    pub duration: Duration,
    /// The task submitted (a WebAssembly module).
    pub module: Vec<u8>,
}

/// One node's loop turns, from its histogram: quantiles are bucket upper bounds (buckets
/// grow by 1.5x, so a quantile is within 1.5x of the true value).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeStall {
    pub node: usize,
    pub turns: u64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p999_us: Option<f64>,
    pub max_us: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StallBenchReport {
    pub machine: String,
    pub nodes: usize,
    pub tasks_submitted: usize,
    pub tasks_done: usize,
    pub writers: usize,
    pub puts_acked: u64,
    pub puts_refused: u64,
    pub seconds: f64,
    pub per_node: Vec<NodeStall>,
    /// The worst node's p99 and the worst max, in microseconds.
    pub worst_p99_us: Option<f64>,
    pub worst_max_us: Option<f64>,
}

pub async fn stall_bench(
    options: &StallBenchOptions,
    mut log: impl FnMut(String),
) -> Result<StallBenchReport, TestnetError> {
    let up_options = UpOptions::bench(
        options.dir.clone(),
        options.binary.clone(),
        options.nodes,
        Profile::Mixed,
    );
    with_testnet(&up_options, run(options, &mut log)).await
}

async fn clustered(prober: &Prober, ports: &BTreeMap<usize, u16>) -> bool {
    let mut all = true;
    for port in ports.values() {
        let view: Option<ClusterProbe> = prober.cluster(*port).await;
        all &= view.is_some_and(|v| v.cluster.is_some() && v.members.len() > 1);
    }
    all
}

async fn run(
    options: &StallBenchOptions,
    log: &mut impl FnMut(String),
) -> Result<StallBenchReport, TestnetError> {
    let prober = Prober::new();
    let ports: BTreeMap<usize, u16> = state::load(&options.dir)?
        .map(|s| s.nodes.iter().map(|n| (n.index, n.control_port)).collect())
        .unwrap_or_default();
    let t0 = Instant::now();
    while !clustered(&prober, &ports).await {
        if t0.elapsed() > Duration::from_secs(90) {
            return Err(TestnetError::NotSettled(
                "the nodes did not form clusters within 90 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    log(format!(
        "stall-bench: clusters formed after {:.1}s",
        t0.elapsed().as_secs_f64()
    ));
    let port_list: Vec<u16> = ports.values().copied().collect();
    let started = Instant::now();
    let deadline = started + options.duration;
    let acked = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..options.writers {
        let port = port_list[w % port_list.len()];
        let (acked, refused) = (acked.clone(), refused.clone());
        let http = crate::kv_bench::client(&options.dir);
        writers.push(tokio::spawn(async move {
            let value = vec![b'x'; 100];
            let mut i = 0u64;
            while Instant::now() < deadline {
                if crate::kv_bench::put(&http, port, &format!("stall/{w}/{i}"), &value).await {
                    acked.fetch_add(1, Ordering::Relaxed);
                } else {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    let body = serde_json::json!({
        "module_hex": crate::failover::hex_encode(&options.module),
        "priority": "normal",
        "cpu_millicores": 10,
        "memory_mb": 1,
        "duration_ms": 100,
    });
    let mut ids = Vec::new();
    for t in 0..options.tasks {
        let port = port_list[t % port_list.len()];
        if let Some(id) = prober.submit_task(port, &body).await {
            ids.push((port, id));
        }
    }
    log(format!(
        "stall-bench: {} of {} tasks submitted; {} writers running",
        ids.len(),
        options.tasks,
        options.writers
    ));
    for writer in writers {
        let _ = writer.await;
    }
    // Tasks get until the writers' end plus 30 s to finish.
    let mut done = 0;
    let tasks_deadline = Instant::now() + Duration::from_secs(30);
    for (port, id) in &ids {
        loop {
            let state = prober.task_state(*port, id).await;
            if state.as_deref() == Some("done") {
                done += 1;
                break;
            }
            if Instant::now() > tasks_deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let http = crate::kv_bench::client(&options.dir);
    let mut per_node = Vec::new();
    for (index, port) in &ports {
        let Some(text) = crate::kv_bench::metrics_text(&http, *port).await else {
            continue;
        };
        per_node.push(node_stall(*index, &text));
    }
    let worst = |f: fn(&NodeStall) -> Option<f64>| {
        per_node
            .iter()
            .filter_map(f)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
    };
    let report = StallBenchReport {
        machine: crate::bench::machine(),
        nodes: options.nodes,
        tasks_submitted: ids.len(),
        tasks_done: done,
        writers: options.writers,
        puts_acked: acked.load(Ordering::Relaxed),
        puts_refused: refused.load(Ordering::Relaxed),
        seconds,
        worst_p99_us: worst(|n| n.p99_us),
        worst_max_us: worst(|n| n.max_us),
        per_node,
    };
    Ok(report)
}

/// Reads one node's turn histogram and maximum from its metrics text.
fn node_stall(node: usize, text: &str) -> NodeStall {
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    let mut max = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if let Some(rest) = series.strip_prefix("fogmesh_driver_turn_seconds_bucket{le=\"") {
            let le = rest.trim_end_matches("\"}");
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            if let Ok(count) = value.parse::<f64>() {
                buckets.push((le, count as u64));
            }
        } else if series == "fogmesh_driver_turn_max_seconds" {
            max = value.parse::<f64>().ok().map(|s| s * 1e6);
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let turns = buckets.last().map_or(0, |b| b.1);
    let quantile = |q: f64| -> Option<f64> {
        if turns == 0 {
            return None;
        }
        let rank = (q * turns as f64).ceil() as u64;
        buckets
            .iter()
            .find(|(_, count)| *count >= rank)
            .map(|(le, _)| le * 1e6)
    };
    NodeStall {
        node,
        turns,
        p50_us: quantile(0.50),
        p99_us: quantile(0.99),
        p999_us: quantile(0.999),
        max_us: max,
    }
}

impl StallBenchReport {
    pub fn to_markdown(&self) -> String {
        let us = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
        let mut text = format!(
            "machine: {}\n{} nodes, {} writers for {:.0} s: {} puts acknowledged, {} refused; {} of {} tasks done\n\n| node | turns | p50 µs | p99 µs | p99.9 µs | max µs |\n|---|---|---|---|---|---|\n",
            self.machine,
            self.nodes,
            self.writers,
            self.seconds,
            self.puts_acked,
            self.puts_refused,
            self.tasks_done,
            self.tasks_submitted
        );
        for n in &self.per_node {
            text.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                n.node,
                n.turns,
                us(n.p50_us),
                us(n.p99_us),
                us(n.p999_us),
                us(n.max_us)
            ));
        }
        text.push_str(&format!(
            "\nworst p99 {} µs, worst max {} µs\n",
            us(self.worst_p99_us),
            us(self.worst_max_us)
        ));
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_quantiles_from_the_histogram() {
        let text = "# HELP x\nfogmesh_driver_turn_seconds_bucket{le=\"0.00001\"} 50\nfogmesh_driver_turn_seconds_bucket{le=\"0.001\"} 99\nfogmesh_driver_turn_seconds_bucket{le=\"+Inf\"} 100\nfogmesh_driver_turn_max_seconds 0.5\n";
        let stall = node_stall(3, text);
        assert_eq!(stall.turns, 100);
        assert_eq!(stall.p50_us, Some(10.0));
        assert_eq!(stall.p99_us, Some(1000.0));
        assert_eq!(stall.p999_us, Some(f64::INFINITY));
        assert_eq!(stall.max_us, Some(500_000.0));
    }
}
