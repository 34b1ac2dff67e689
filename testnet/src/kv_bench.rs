//! `fogmesh testnet kv-bench`: the replicated store on a testnet of node processes on
//! loopback. Phases, each bounded in time:
//! 1. propagation: one write at a time on a rotating node; the time until every other node
//!    has it (each node's `kv_changed` event stream, so no polling delay);
//! 2. local write throughput on one node, through its control API, acknowledged only once
//!    durable: one write per request (one after another, then 32 writers at once), and
//!    batches of 1,000 writes per request;
//! 3. catch-up: one node is stopped, the others write `divergence_keys` keys of 100 bytes,
//!    the node is started again; time until it holds them all, and the sync bytes it sent
//!    and received (its `kv_sync_bytes_*` counters) against the size of what it lacked;
//! 4. durability: 16 writers hammer one node, which is SIGKILLed mid-burst and restarted;
//!    every write it acknowledged must be there.
//!
//! The testnet is stopped (its own PIDs only) at the end, whatever happened.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::bench::percentile;
use crate::{kill, restart, state, with_testnet, KillSignal, Profile, TestnetError, UpOptions};

#[derive(Debug, Clone)]
pub struct KvBenchOptions {
    pub dir: PathBuf,
    pub binary: PathBuf,
    pub nodes: usize,
    pub trials: usize,
    pub divergence_keys: usize,
    /// What one of the divergence phase's entries takes encoded (signature, author, clock
    /// and framing included), to set the sync bytes against.
    pub entry_bytes: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KvBenchReport {
    pub machine: String,
    pub nodes: usize,
    /// Write to every other node holding it, per trial, in ms.
    pub propagation_ms: Vec<u64>,
    pub propagation_p50_ms: Option<u64>,
    pub propagation_p99_ms: Option<u64>,
    pub propagation_failed: usize,
    pub single_puts_per_s: f64,
    pub single_p50_ms: Option<u64>,
    pub single_p99_ms: Option<u64>,
    pub concurrent_puts_per_s: f64,
    pub batched_puts_per_s: f64,
    pub divergence_keys: usize,
    pub catch_up_s: Option<f64>,
    pub catch_up_bytes: u64,
    pub differing_entry_bytes: u64,
    pub differing_value_bytes: u64,
    pub acked_before_kill: usize,
    pub lost_after_kill: usize,
}

const NS: &str = "bench";

fn base(port: u16) -> String {
    format!("http://{}", SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

/// A client for the testnet in `dir`, with its token.
pub(crate) fn client(dir: &std::path::Path) -> reqwest::Client {
    crate::access::authorized(reqwest::Client::builder(), dir)
        .timeout(Duration::from_secs(20))
        .no_proxy()
        .build()
        .unwrap_or_default()
}

pub(crate) async fn put(http: &reqwest::Client, port: u16, key: &str, value: &[u8]) -> bool {
    http.put(format!("{}/v1/kv/{NS}/{key}", base(port)))
        .body(value.to_vec())
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

async fn batch(http: &reqwest::Client, port: u16, keys: &[String], value: &str) -> bool {
    let writes: Vec<serde_json::Value> = keys
        .iter()
        .map(|k| serde_json::json!({ "key": k, "value": value }))
        .collect();
    http.post(format!("{}/v1/kv/{NS}", base(port)))
        .json(&serde_json::json!({ "writes": writes }))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

async fn has(http: &reqwest::Client, port: u16, key: &str) -> bool {
    http.get(format!("{}/v1/kv/{NS}/{key}", base(port)))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// A node's `/metrics` text.
pub(crate) async fn metrics_text(http: &reqwest::Client, port: u16) -> Option<String> {
    http.get(format!("{}/metrics", base(port)))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// A counter or gauge from a node's `/metrics` (summed over labels).
async fn metric(http: &reqwest::Client, port: u16, name: &str) -> Option<f64> {
    let text = metrics_text(http, port).await?;
    let mut total = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ')?;
        let bare = series.split('{').next().unwrap_or(series);
        if bare == name {
            *total.get_or_insert(0.0) += value.parse::<f64>().ok()?;
        }
    }
    total
}

/// Follows one node's kv events, noting when each key first showed up.
fn follow(port: u16, seen: Arc<Mutex<HashMap<String, Instant>>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap_or_default();
        let url = format!(
            "{}/v1/events?type=kv_changed&namespace={NS}&prefix=prop/",
            base(port)
        );
        let Ok(mut response) = http.get(url).send().await else {
            return;
        };
        let mut buffer = String::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            let at = Instant::now();
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find('\n') {
                let line: String = buffer.drain(..=end).collect();
                let Some(json) = line.trim().strip_prefix("data:") else {
                    continue;
                };
                let Ok(event) = serde_json::from_str::<serde_json::Value>(json.trim()) else {
                    continue;
                };
                if let Some(key) = event.get("key").and_then(|k| k.as_str()) {
                    if let Ok(mut seen) = seen.lock() {
                        seen.entry(key.to_owned()).or_insert(at);
                    }
                }
            }
        }
    })
}

pub async fn kv_bench(
    options: &KvBenchOptions,
    mut log: impl FnMut(String),
) -> Result<KvBenchReport, TestnetError> {
    let up_options = UpOptions {
        // 100,000 keys of catch-up after a restart: more time to settle.
        timeout: Duration::from_secs(180),
        ..UpOptions::bench(
            options.dir.clone(),
            options.binary.clone(),
            options.nodes,
            Profile::Uniform,
        )
    };
    with_testnet(&up_options, run(options, &mut log)).await
}

async fn run(
    options: &KvBenchOptions,
    log: &mut impl FnMut(String),
) -> Result<KvBenchReport, TestnetError> {
    let http = client(&options.dir);
    let ports: Vec<u16> = state::load(&options.dir)?
        .map(|s| s.nodes.iter().map(|n| n.control_port).collect())
        .unwrap_or_default();
    let mut report = KvBenchReport {
        machine: crate::bench::machine(),
        nodes: ports.len(),
        divergence_keys: options.divergence_keys,
        ..KvBenchReport::default()
    };
    // The gossip mesh needs a few heartbeats after the connections are up.
    tokio::time::sleep(Duration::from_secs(5)).await;

    // 1. Propagation.
    let seen: Vec<Arc<Mutex<HashMap<String, Instant>>>> =
        ports.iter().map(|_| Arc::default()).collect();
    let followers: Vec<_> = ports
        .iter()
        .zip(&seen)
        .map(|(port, seen)| follow(*port, seen.clone()))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for trial in 0..options.trials {
        let writer = trial % ports.len();
        let key = format!("prop/{trial}");
        let t0 = Instant::now();
        if !put(&http, ports[writer], &key, b"x").await {
            report.propagation_failed += 1;
            continue;
        }
        let mut arrived = None;
        while t0.elapsed() < Duration::from_secs(10) {
            let times: Vec<Option<Instant>> = seen
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != writer)
                .map(|(_, s)| s.lock().ok().and_then(|s| s.get(&key).copied()))
                .collect();
            if times.iter().all(Option::is_some) {
                arrived = times.into_iter().flatten().max();
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        match arrived {
            Some(at) => report
                .propagation_ms
                .push(at.saturating_duration_since(t0).as_millis() as u64),
            None => report.propagation_failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for follower in followers {
        follower.abort();
    }
    let mut sorted = report.propagation_ms.clone();
    sorted.sort_unstable();
    report.propagation_p50_ms = percentile(&sorted, 50.0);
    report.propagation_p99_ms = percentile(&sorted, 99.0);
    log(format!(
        "kv-bench: propagation over {} nodes: p50 {:?} ms, p99 {:?} ms, {} failed",
        ports.len(),
        report.propagation_p50_ms,
        report.propagation_p99_ms,
        report.propagation_failed
    ));

    // 2. Throughput on node 0.
    let port = ports[0];
    let value = vec![b'v'; 100];
    let mut latencies = Vec::new();
    let t0 = Instant::now();
    for i in 0..300 {
        let t = Instant::now();
        if put(&http, port, &format!("single/{i}"), &value).await {
            latencies.push(t.elapsed().as_millis() as u64);
        }
    }
    report.single_puts_per_s = latencies.len() as f64 / t0.elapsed().as_secs_f64();
    latencies.sort_unstable();
    report.single_p50_ms = percentile(&latencies, 50.0);
    report.single_p99_ms = percentile(&latencies, 99.0);
    let t0 = Instant::now();
    let writers: Vec<_> = (0..32)
        .map(|w| {
            let http = http.clone();
            let value = value.clone();
            tokio::spawn(async move {
                let mut done = 0usize;
                for i in 0..40 {
                    if put(&http, port, &format!("concurrent/{w}/{i}"), &value).await {
                        done += 1;
                    }
                }
                done
            })
        })
        .collect();
    let mut done = 0;
    for writer in writers {
        done += writer.await.unwrap_or(0);
    }
    report.concurrent_puts_per_s = done as f64 / t0.elapsed().as_secs_f64();
    let text = "v".repeat(100);
    let t0 = Instant::now();
    let mut done = 0;
    for b in 0..20 {
        let keys: Vec<String> = (0..1000).map(|i| format!("batched/{b}/{i}")).collect();
        if batch(&http, port, &keys, &text).await {
            done += keys.len();
        }
    }
    report.batched_puts_per_s = done as f64 / t0.elapsed().as_secs_f64();
    log(format!(
        "kv-bench: durable puts on one node: {:.0}/s one at a time (p50 {:?} ms), {:.0}/s from 32 writers, {:.0}/s in batches of 1,000",
        report.single_puts_per_s, report.single_p50_ms, report.concurrent_puts_per_s, report.batched_puts_per_s
    ));

    // 3. Catch-up after divergence.
    let away = ports.len() - 1;
    kill(&options.dir, away, KillSignal::Term).await?;
    let mut written = 0;
    let chunk = 5_000;
    while written < options.divergence_keys {
        let n = chunk.min(options.divergence_keys - written);
        let keys: Vec<String> = (written..written + n)
            .map(|i| format!("div/{i:07}"))
            .collect();
        if !batch(&http, port, &keys, &text).await {
            log("kv-bench: a divergence batch was refused; stopping the phase".into());
            break;
        }
        written += n;
    }
    let expected = metric(&http, port, "fogmesh_kv_keys").await.unwrap_or(0.0);
    restart(&options.dir, away, Duration::from_secs(30)).await?;
    let t0 = Instant::now();
    let away_port = ports[away];
    while t0.elapsed() < Duration::from_secs(120) {
        let held = metric(&http, away_port, "fogmesh_kv_keys")
            .await
            .unwrap_or(0.0);
        if held >= expected && expected > 0.0 {
            report.catch_up_s = Some(t0.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the sessions with the other neighbours (now in sync) finish, then count.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = metric(&http, away_port, "fogmesh_kv_sync_bytes_sent_total")
        .await
        .unwrap_or(0.0);
    let received = metric(&http, away_port, "fogmesh_kv_sync_bytes_received_total")
        .await
        .unwrap_or(0.0);
    report.catch_up_bytes = (sent + received) as u64;
    if let Ok(response) = http
        .get(format!("{}/metrics", base(away_port)))
        .send()
        .await
    {
        let text = response.text().await.unwrap_or_default();
        for line in text
            .lines()
            .filter(|l| l.starts_with("fogmesh_kv_sync_sessions"))
        {
            log(format!("kv-bench: node {away}: {line}"));
        }
    }
    report.differing_entry_bytes = (written * options.entry_bytes) as u64;
    report.differing_value_bytes = (written * (100 + "div/0000000".len())) as u64;
    log(format!(
        "kv-bench: {written} keys missed while away: caught up in {:?} s with {} sync bytes ({:.2}x the entries, {:.2}x keys and values)",
        report.catch_up_s,
        report.catch_up_bytes,
        report.catch_up_bytes as f64 / report.differing_entry_bytes.max(1) as f64,
        report.catch_up_bytes as f64 / report.differing_value_bytes.max(1) as f64,
    ));

    // 4. Durability under SIGKILL.
    let victim = 1.min(ports.len() - 1);
    let victim_port = ports[victim];
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let http = http.clone();
            let acked = acked.clone();
            tokio::spawn(async move {
                for i in 0..100_000 {
                    let key = format!("dur/{w}/{i}");
                    if !put(&http, victim_port, &key, b"durable").await {
                        return;
                    }
                    if let Ok(mut acked) = acked.lock() {
                        acked.insert(key);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    kill(&options.dir, victim, KillSignal::Kill).await?;
    for writer in writers {
        let _ = tokio::time::timeout(Duration::from_secs(25), writer).await;
    }
    restart(&options.dir, victim, Duration::from_secs(30)).await?;
    let acked: Vec<String> = acked
        .lock()
        .map(|a| a.iter().cloned().collect())
        .unwrap_or_default();
    report.acked_before_kill = acked.len();
    for key in &acked {
        if !has(&http, victim_port, key).await {
            report.lost_after_kill += 1;
        }
    }
    log(format!(
        "kv-bench: SIGKILL during a burst: {} writes acknowledged, {} missing after restart",
        report.acked_before_kill, report.lost_after_kill
    ));
    Ok(report)
}

impl KvBenchReport {
    pub fn to_markdown(&self) -> String {
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        format!(
            "| figure | value |\n|---|---|\n\
             | nodes | {} |\n\
             | propagation to every node, p50 / p99 (ms, {} writes, {} failed) | {} / {} |\n\
             | durable puts, one per request, one writer | {:.0}/s (p50 {} ms, p99 {} ms) |\n\
             | durable puts, one per request, 32 writers | {:.0}/s |\n\
             | durable puts, batches of 1,000 | {:.0}/s |\n\
             | catch-up of {} missed keys | {} s |\n\
             | sync bytes for it (sent + received) | {} ({:.2}x the entries, {:.2}x keys and values) |\n\
             | SIGKILL mid-burst: acknowledged / missing after restart | {} / {} |\n\
             \nmachine: {}\n",
            self.nodes,
            self.propagation_ms.len(),
            self.propagation_failed,
            opt(self.propagation_p50_ms),
            opt(self.propagation_p99_ms),
            self.single_puts_per_s,
            opt(self.single_p50_ms),
            opt(self.single_p99_ms),
            self.concurrent_puts_per_s,
            self.batched_puts_per_s,
            self.divergence_keys,
            self.catch_up_s.map_or("-".into(), |s| format!("{s:.2}")),
            self.catch_up_bytes,
            self.catch_up_bytes as f64 / self.differing_entry_bytes.max(1) as f64,
            self.catch_up_bytes as f64 / self.differing_value_bytes.max(1) as f64,
            self.acked_before_kill,
            self.lost_after_kill,
            self.machine
        )
    }
}
