//! `fogmesh testnet put-bench`: durable single-key writes through fogmesh's control API,
//! side by side with etcd's, in one run on one machine.
//!
//! etcd (when its binary is given) runs as one member on loopback, in the bench's directory,
//! and is written through its HTTP gateway (`POST /v3/kv/put`): an answer means the write is
//! committed by its (one-member) Raft group and in its fsynced WAL. fogmesh runs as a testnet
//! of `nodes` processes, written on node 0 (`PUT /v1/kv/bench/<key>`): an answer means the
//! write is on the node's disk. Every phase writes `puts` keys of 100-byte values, one at a
//! time or from `writers` concurrent writers sharing a connection pool; a refused write (any
//! answer but success, 503 among them) is counted and not retried. Rounds alternate the two
//! systems so drift on the machine hits both; the report gives each round and the medians.
//!
//! Bounded: each write has the client's 20 s timeout, each phase a fixed count; etcd is
//! stopped by its own PID and the testnet by its recorded PIDs at the end, whatever happened.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::bench::percentile;
use crate::{state, with_testnet, Profile, TestnetError, UpOptions};

const VALUE_BYTES: usize = 100;

#[derive(Debug, Clone)]
pub struct PutBenchOptions {
    pub dir: PathBuf,
    pub binary: PathBuf,
    pub nodes: usize,
    /// The `etcd` binary; none: fogmesh alone.
    pub etcd: Option<PathBuf>,
    pub puts: usize,
    pub rounds: usize,
    /// Concurrent writers of each phase (1: one write after another).
    pub writers: Vec<usize>,
}

/// One phase of one round.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PutRound {
    pub puts_per_s: f64,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub acknowledged: usize,
    pub refused: usize,
    /// Of the refused, those answered 503.
    pub refused_503: usize,
}

/// One system at one concurrency, over the rounds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PutFigures {
    pub system: String,
    pub writers: usize,
    pub rounds: Vec<PutRound>,
    pub median_puts_per_s: f64,
    pub median_p50_us: Option<u64>,
    pub refused: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PutBenchReport {
    pub machine: String,
    pub nodes: usize,
    pub puts: usize,
    pub etcd_version: Option<String>,
    pub figures: Vec<PutFigures>,
}

impl PutBenchReport {
    pub fn to_markdown(&self) -> String {
        let mut text = format!(
            "machine: {}\nfogmesh: {}-node testnet, writes on node 0; etcd: {}\n{} puts of {VALUE_BYTES} bytes per phase, medians of {} rounds\n\n| system | writers | puts/s | p50 ms | refused | rounds (puts/s) |\n|---|---|---|---|---|---|\n",
            self.machine,
            self.nodes,
            self.etcd_version.as_deref().unwrap_or("not run"),
            self.puts,
            self.figures.first().map_or(0, |f| f.rounds.len()),
        );
        for f in &self.figures {
            let rounds: Vec<String> = f
                .rounds
                .iter()
                .map(|r| format!("{:.0}", r.puts_per_s))
                .collect();
            text.push_str(&format!(
                "| {} | {} | {:.0} | {} | {} | {} |\n",
                f.system,
                f.writers,
                f.median_puts_per_s,
                f.median_p50_us
                    .map_or("-".into(), |us| format!("{:.2}", us as f64 / 1000.0)),
                f.refused,
                rounds.join(", "),
            ));
        }
        text
    }
}

/// A system under test: where and how a write goes.
#[derive(Debug, Clone)]
enum Target {
    Fogmesh { port: u16 },
    Etcd { port: u16 },
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Target::Fogmesh { .. } => "fogmesh",
            Target::Etcd { .. } => "etcd",
        }
    }

    /// One durable write; its HTTP status if refused.
    async fn put(&self, http: &reqwest::Client, key: &str, value: &[u8]) -> Result<(), u16> {
        let request = match self {
            Target::Fogmesh { port } => http
                .put(format!("http://127.0.0.1:{port}/v1/kv/bench/{key}"))
                .body(value.to_vec()),
            Target::Etcd { port } => {
                let b64 = base64::engine::general_purpose::STANDARD;
                http.post(format!("http://127.0.0.1:{port}/v3/kv/put"))
                    .json(&serde_json::json!({
                        "key": b64.encode(key),
                        "value": b64.encode(value),
                    }))
            }
        };
        match request.send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(response.status().as_u16()),
            Err(_) => Err(0),
        }
    }
}

pub async fn put_bench(
    options: &PutBenchOptions,
    mut log: impl FnMut(String),
) -> Result<PutBenchReport, TestnetError> {
    std::fs::create_dir_all(&options.dir).map_err(|e| TestnetError::Io {
        path: options.dir.clone(),
        reason: e.to_string(),
    })?;
    let mut etcd = match &options.etcd {
        Some(binary) => Some(Etcd::start(binary, &options.dir.join("etcd")).await?),
        None => None,
    };
    let up_options = UpOptions::bench(
        options.dir.join("testnet"),
        options.binary.clone(),
        options.nodes,
        Profile::Uniform,
    );
    let etcd_target = etcd
        .as_ref()
        .map(|e| (Target::Etcd { port: e.port }, e.version.clone()));
    let result = with_testnet(
        &up_options,
        run(options, &up_options, etcd_target, &mut log),
    )
    .await;
    if let Some(etcd) = &mut etcd {
        etcd.stop();
    }
    result
}

async fn run(
    options: &PutBenchOptions,
    up: &UpOptions,
    etcd: Option<(Target, Option<String>)>,
    log: &mut impl FnMut(String),
) -> Result<PutBenchReport, TestnetError> {
    let port = state::load(&up.dir)?
        .and_then(|s| s.nodes.first().map(|n| n.control_port))
        .ok_or_else(|| TestnetError::Bench("the testnet has no node".into()))?;
    let mut targets = Vec::new();
    let mut report = PutBenchReport {
        machine: crate::bench::machine(),
        nodes: options.nodes,
        puts: options.puts,
        ..PutBenchReport::default()
    };
    if let Some((target, version)) = etcd {
        targets.push(target);
        report.etcd_version = version;
    }
    targets.push(Target::Fogmesh { port });
    for target in &targets {
        for writers in &options.writers {
            report.figures.push(PutFigures {
                system: target.name().into(),
                writers: *writers,
                ..PutFigures::default()
            });
        }
    }
    let http = crate::kv_bench::client(&up.dir);
    let value = vec![b'v'; VALUE_BYTES];
    for round in 0..options.rounds {
        for (t, target) in targets.iter().enumerate() {
            for (w, writers) in options.writers.iter().enumerate() {
                let prefix = format!("r{round}/w{writers}");
                let phase = phase(&http, target, &prefix, options.puts, *writers, &value).await;
                log(format!(
                    "put-bench round {}: {} with {writers} writer(s): {:.0} puts/s, p50 {:?} µs, {} refused",
                    round + 1,
                    target.name(),
                    phase.puts_per_s,
                    phase.p50_us,
                    phase.refused
                ));
                report.figures[t * options.writers.len() + w]
                    .rounds
                    .push(phase);
            }
        }
    }
    for figures in &mut report.figures {
        let mut rates: Vec<f64> = figures.rounds.iter().map(|r| r.puts_per_s).collect();
        rates.sort_by(f64::total_cmp);
        figures.median_puts_per_s = rates.get(rates.len() / 2).copied().unwrap_or(0.0);
        let mut p50s: Vec<u64> = figures.rounds.iter().filter_map(|r| r.p50_us).collect();
        p50s.sort_unstable();
        figures.median_p50_us = p50s.get(p50s.len() / 2).copied();
        figures.refused = figures.rounds.iter().map(|r| r.refused).sum();
    }
    Ok(report)
}

/// `puts` writes split over `writers` concurrent writers.
async fn phase(
    http: &reqwest::Client,
    target: &Target,
    prefix: &str,
    puts: usize,
    writers: usize,
    value: &[u8],
) -> PutRound {
    let writers = writers.max(1);
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (http, target, value) = (http.clone(), target.clone(), value.to_vec());
            let keys: Vec<String> = (w..puts)
                .step_by(writers)
                .map(|i| format!("{prefix}/{i:06}"))
                .collect();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(keys.len());
                let mut refused = Vec::new();
                for key in keys {
                    let t = Instant::now();
                    match target.put(&http, &key, &value).await {
                        Ok(()) => latencies.push(t.elapsed().as_micros() as u64),
                        Err(status) => refused.push(status),
                    }
                }
                (latencies, refused)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(puts);
    let mut refused = Vec::new();
    for task in tasks {
        if let Ok((l, r)) = task.await {
            latencies.extend(l);
            refused.extend(r);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    PutRound {
        puts_per_s: latencies.len() as f64 / seconds,
        p50_us: percentile(&latencies, 50.0),
        p99_us: percentile(&latencies, 99.0),
        acknowledged: latencies.len(),
        refused: refused.len(),
        refused_503: refused.iter().filter(|s| **s == 503).count(),
    }
}

/// One etcd member on loopback, stopped by its PID.
struct Etcd {
    child: Child,
    port: u16,
    version: Option<String>,
}

fn free_port() -> Result<u16, TestnetError> {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| TestnetError::Bench(format!("no free port: {e}")))
}

impl Etcd {
    async fn start(binary: &PathBuf, dir: &PathBuf) -> Result<Self, TestnetError> {
        let version = Command::new(binary)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|v| v.lines().next().map(str::to_owned));
        let (client, peer) = (free_port()?, free_port()?);
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| TestnetError::Io {
            path: dir.clone(),
            reason: e.to_string(),
        })?;
        let log = std::fs::File::create(dir.join("etcd.log")).map_err(|e| TestnetError::Io {
            path: dir.join("etcd.log"),
            reason: e.to_string(),
        })?;
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new(binary)
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("bench={peer_url}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| TestnetError::Bench(format!("etcd did not start: {e}")))?;
        let mut etcd = Etcd {
            child,
            port: client,
            version,
        };
        let http = crate::kv_bench::client(dir);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let healthy = http
                .get(format!("{client_url}/health"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if healthy {
                return Ok(etcd);
            }
            if Instant::now() > deadline || etcd.child.try_wait().ok().flatten().is_some() {
                etcd.stop();
                return Err(TestnetError::Bench(format!(
                    "etcd not healthy within 30 s (see {})",
                    dir.join("etcd.log").display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
