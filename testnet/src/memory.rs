//! In-memory testnets (`fogmesh testnet up --in-memory`): every node in one host process, on
//! the in-process network (docs/testnet.md, "In-memory testnets").
//!
//! The host is `fogmesh testnet memory-host`, started detached by [`up`]; it records itself
//! in the state file ([`crate::state::HostRecord`]) and one [`crate::state::NodeEntry`] per
//! node (`in_memory`, with the host's PID). Each node keeps its own control API, as any
//! node does, so `status`, the dashboard and every `fogmesh ... --data-dir` command work
//! unchanged. What only the host can do (stop or start one of its nodes, cut the network in
//! two) goes through the host's small fault API on 127.0.0.1, which wants the testnet's
//! token like the nodes do. This module is that API's wire format and its client; the host
//! itself lives in the node crate, which runs the nodes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::probe::Prober;
use crate::procs::{self, NodeProcess};
use crate::state::{self, HostRecord, KillMark, TestnetState};
use crate::*;

/// The host's standard output and error, in the testnet dir.
pub const HOST_LOG: &str = "memory-host.log";
/// Largest in-memory testnet `up` starts: far past what a laptop holds, only a guard
/// against a typo.
pub const MAX_MEMORY_NODES: usize = 5000;
/// How long one fault call may take: stopping a node flushes its store, and a busy host
/// answers late.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// `GET /v1/health`: how far the host is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostHealth {
    /// Nodes the host was asked to run.
    pub nodes: usize,
    /// Nodes started so far (all of them once start-up is over).
    pub started: usize,
    /// Nodes running now.
    pub running: usize,
    /// Every running node counts as converged ([`HostHealth::converged_nodes`]).
    pub converged: bool,
    pub converged_nodes: usize,
    /// From the first node's start until the network was first seen converged.
    pub converged_after_ms: Option<u64>,
    /// Groups cut off from the rest by `testnet partition`, by node index.
    #[serde(default)]
    pub partitions: Vec<Vec<usize>>,
    /// Why start-up failed; the host stays up to say so until `testnet down`.
    #[serde(default)]
    pub error: Option<String>,
}

/// `POST /v1/nodes/{index}/kill`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillRequest {
    /// Cut the node off the network first, so its peers see its links die with no goodbye
    /// (as after a crash); otherwise a clean stop.
    pub abrupt: bool,
}

/// The answer to a kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillAnswer {
    pub was_running: bool,
}

/// The answer to `POST /v1/nodes/{index}/restart`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartAnswer {
    pub was_running: bool,
    /// The control port of the node's new run (a restarted node binds a new one).
    pub control_port: u16,
}

/// `POST /v1/partition`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRequest {
    pub nodes: Vec<usize>,
}

/// Any refusal of the host's API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostRefusal {
    pub error: String,
}

/// Whether the recorded host process of `state` is alive (and is still the host, not a
/// process that inherited its PID).
pub fn host_alive(state: &TestnetState) -> bool {
    state
        .host
        .as_ref()
        .is_some_and(|h| procs::is_ours_and_alive(h.pid, h.start_time))
}

/// The host as a process, if it is alive.
pub(crate) fn host_process(host: &HostRecord) -> Option<NodeProcess> {
    procs::is_ours_and_alive(host.pid, host.start_time).then_some(NodeProcess {
        pid: host.pid,
        start_time: host.start_time,
        found_by: procs::FoundBy::RecordedPid,
    })
}

/// A client of the host's fault API.
#[derive(Debug, Clone)]
pub struct HostClient {
    http: reqwest::Client,
    base: String,
}

fn host_err(what: impl std::fmt::Display) -> TestnetError {
    TestnetError::Host(what.to_string())
}

impl HostClient {
    /// A client for the host of the testnet in `dir`, with the testnet's token.
    pub fn new(dir: &Path, host: &HostRecord) -> Result<HostClient, TestnetError> {
        let http = crate::access::authorized(reqwest::Client::builder(), dir)
            .timeout(CALL_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(host_err)?;
        Ok(HostClient {
            http,
            base: format!("http://127.0.0.1:{}", host.control_port),
        })
    }

    /// The host of the running in-memory testnet in `dir`.
    pub fn for_testnet(dir: &Path) -> Result<(HostClient, TestnetState), TestnetError> {
        let record = state::load(dir)?.ok_or_else(|| TestnetError::NotFound(dir.to_path_buf()))?;
        let host = record.host.as_ref().ok_or_else(|| {
            host_err(format!(
                "the testnet in {} does not run in memory",
                dir.display()
            ))
        })?;
        if !host_alive(&record) {
            return Err(host_err(format!(
                "the host process (PID {}) is gone; its log is {}",
                host.pid,
                host.log_file.display()
            )));
        }
        Ok((HostClient::new(dir, host)?, record))
    }

    async fn answer<T: serde::de::DeserializeOwned>(
        response: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<T, TestnetError> {
        let response = response.map_err(|e| host_err(format!("no answer: {e}")))?;
        let status = response.status();
        if status.is_success() {
            return response.json().await.map_err(host_err);
        }
        let why = match response.json::<HostRefusal>().await {
            Ok(refusal) => refusal.error,
            Err(_) => status.to_string(),
        };
        Err(host_err(why))
    }

    pub async fn health(&self) -> Result<HostHealth, TestnetError> {
        let response = self
            .http
            .get(format!("{}/v1/health", self.base))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        Self::answer(response).await
    }

    async fn post<B: Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, TestnetError> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await;
        Self::answer(response).await
    }

    pub async fn kill(&self, index: usize, abrupt: bool) -> Result<KillAnswer, TestnetError> {
        self.post(&format!("/v1/nodes/{index}/kill"), &KillRequest { abrupt })
            .await
    }

    pub async fn restart(&self, index: usize) -> Result<RestartAnswer, TestnetError> {
        self.post(&format!("/v1/nodes/{index}/restart"), &()).await
    }

    pub async fn partition(&self, nodes: &[usize]) -> Result<HostHealth, TestnetError> {
        self.post(
            "/v1/partition",
            &PartitionRequest {
                nodes: nodes.to_vec(),
            },
        )
        .await
    }

    pub async fn heal(&self) -> Result<HostHealth, TestnetError> {
        self.post("/v1/heal", &()).await
    }
}

#[derive(Debug, Clone)]
pub struct MemoryUpOptions {
    pub dir: PathBuf,
    /// The `fogmesh` binary; the host is its hidden `testnet memory-host` subcommand.
    pub binary: PathBuf,
    pub nodes: usize,
    pub telemetry_interval: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryUpReport {
    pub host_pid: u32,
    pub log_file: PathBuf,
    /// As the host measured it: from its first node's start until converged.
    pub converged_after_ms: u64,
}

/// Starts the host of an in-memory testnet and waits until its nodes converge. On time-out
/// the host keeps running ([`TestnetError::Timeout`] says how far it got), as the nodes of a
/// process testnet do.
pub async fn up(
    options: &MemoryUpOptions,
    mut progress: impl FnMut(Duration, &HostHealth),
) -> Result<MemoryUpReport, TestnetError> {
    if options.nodes == 0 || options.nodes > MAX_MEMORY_NODES {
        return Err(TestnetError::BadSize(options.nodes));
    }
    std::fs::create_dir_all(&options.dir).map_err(io_err(&options.dir))?;
    let dir = std::path::absolute(&options.dir).map_err(io_err(&options.dir))?;
    if let Some(old) = state::load(&dir)? {
        if old.nodes.iter().any(|n| locate(n).is_some()) || host_alive(&old) {
            return Err(TestnetError::AlreadyRunning(dir));
        }
        // A previous testnet that is gone: start from clean node directories.
        for node in &old.nodes {
            let _ = std::fs::remove_dir_all(&node.data_dir);
        }
        state::remove(&dir)?;
    }
    // Made here, before the host, so every node the host starts gets the same token.
    crate::access::token(&dir)?;
    let log_file = dir.join(HOST_LOG);
    let command = vec![
        crate::up::path_arg(&options.binary),
        "testnet".into(),
        "memory-host".into(),
        "--dir".into(),
        crate::up::path_arg(&dir),
        "--nodes".into(),
        options.nodes.to_string(),
        "--telemetry-interval".into(),
        humantime::format_duration(options.telemetry_interval).to_string(),
    ];
    let mut child = spawn_host(&command, &log_file)?;
    let pid = child.id();
    tracing::info!(pid, nodes = options.nodes, "in-memory testnet host started");

    let started = Instant::now();
    let mut last_report: Option<Instant> = None;
    let mut client: Option<HostClient> = None;
    loop {
        if let Ok(Some(exit)) = child.try_wait() {
            return Err(host_err(format!(
                "the host exited during start-up ({exit}); its log is {}",
                log_file.display()
            )));
        }
        if client.is_none() {
            // The host records itself once its API listens.
            if let Some(host) = state::load(&dir)?.and_then(|s| s.host) {
                if host.pid == pid {
                    client = Some(HostClient::new(&dir, &host)?);
                }
            }
        }
        let health = match &client {
            Some(client) => client.health().await.ok(),
            None => None,
        };
        if let Some(health) = &health {
            if let Some(error) = &health.error {
                return Err(host_err(format!(
                    "{error}; the host still runs, stop it with `fogmesh testnet down --dir {}`",
                    dir.display()
                )));
            }
            let done = health.started == health.nodes && health.converged;
            if done || last_report.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                progress(started.elapsed(), health);
                last_report = Some(Instant::now());
            }
            if done {
                return Ok(MemoryUpReport {
                    host_pid: pid,
                    log_file,
                    converged_after_ms: health
                        .converged_after_ms
                        .unwrap_or(started.elapsed().as_millis() as u64),
                });
            }
        }
        if started.elapsed() > options.timeout {
            return Err(TestnetError::Timeout {
                timeout: options.timeout,
                converged: health.as_ref().map_or(0, |h| h.converged_nodes),
                total: options.nodes,
                dir,
            });
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Starts the host detached, as `up` starts a node: its own process group (Ctrl-C in the
/// shell that ran `up` does not reach it), output to its log, the caller's `FOGMESH_*`
/// environment removed.
fn spawn_host(command: &[String], log_file: &Path) -> Result<std::process::Child, TestnetError> {
    crate::up::start_node(0, command, log_file, false)
}

/// How `testnet kill` names what happened to an in-memory node.
pub const CUT_OFF: &str = "cut-off";
pub const STOPPED: &str = "stopped";

/// `testnet kill` of an in-memory node: the host stops it (cut off first unless `term`).
pub(crate) async fn kill(
    dir: &Path,
    index: usize,
    signal: KillSignal,
) -> Result<KillReport, TestnetError> {
    let (client, mut record) = HostClient::for_testnet(dir)?;
    let abrupt = signal == KillSignal::Kill;
    let answer = client.kill(index, abrupt).await?;
    if !answer.was_running {
        return Err(TestnetError::NotRunning { index });
    }
    let name = if abrupt { CUT_OFF } else { STOPPED };
    let pid = record.host.as_ref().map_or(0, |h| h.pid);
    if let Some(node) = record.nodes.iter_mut().find(|n| n.index == index) {
        node.killed = Some(KillMark {
            signal: name.to_owned(),
            at_ms: now_ms(),
        });
    }
    state::save(dir, &record)?;
    Ok(KillReport {
        index,
        pid,
        signal: name.to_owned(),
        exited: true,
    })
}

/// `testnet restart` of an in-memory node: the host starts it again (same dir, identity
/// and memory address); waits until its control API answers.
pub(crate) async fn restart(
    dir: &Path,
    index: usize,
    timeout: Duration,
) -> Result<RestartReport, TestnetError> {
    let (client, mut record) = HostClient::for_testnet(dir)?;
    let started = Instant::now();
    let answer = client.restart(index).await?;
    let (pid, log_file) = record
        .host
        .as_ref()
        .map(|h| (h.pid, h.log_file.clone()))
        .unwrap_or_default();
    if let Some(node) = record.nodes.iter_mut().find(|n| n.index == index) {
        node.killed = None;
        node.control_port = answer.control_port;
        node.started_at_ms = Some(now_ms());
    }
    state::save(dir, &record)?;
    let prober = Prober::new();
    while prober.status(answer.control_port).await.is_none() {
        if started.elapsed() > timeout {
            return Err(TestnetError::NotAnswering {
                index,
                timeout,
                log: log_file,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(RestartReport {
        index,
        stopped_pid: answer.was_running.then_some(pid),
        pid,
        answered_after_ms: started.elapsed().as_millis() as u64,
        log_file,
    })
}
