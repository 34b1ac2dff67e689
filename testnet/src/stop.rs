//! `down`, `kill` and `restart`: stopping exactly the processes `up` recorded (SIGTERM, then
//! SIGKILL after a grace period), one node killed for fault tests, and started again from
//! its recorded command line.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::probe::Prober;
use crate::procs::{self, NodeProcess};
use crate::state::{self, KillMark, TestnetState};
use crate::*;

/// Which of the given processes stopped on SIGTERM and which had to be SIGKILLed.
#[derive(Debug, Default)]
pub(crate) struct Stopped {
    cleanly: Vec<NodeProcess>,
    killed: Vec<NodeProcess>,
    /// Still there after SIGKILL (e.g. stuck in uninterruptible sleep).
    survivors: Vec<NodeProcess>,
}

/// SIGTERM to every process, SIGKILL to those still there after `grace`.
pub(crate) async fn terminate(processes: Vec<NodeProcess>, grace: Duration) -> Stopped {
    let mut out = Stopped::default();
    let mut signalled = Vec::new();
    for p in processes {
        match procs::signal(p.pid, Signal::SIGTERM) {
            Ok(()) => signalled.push(p),
            // Gone between finding and signalling it.
            Err(_) => out.cleanly.push(p),
        }
    }
    wait_gone(&signalled, grace).await;
    let mut killed = Vec::new();
    for p in signalled {
        if p.is_alive() {
            let _ = procs::signal(p.pid, Signal::SIGKILL);
            killed.push(p);
        } else {
            out.cleanly.push(p);
        }
    }
    wait_gone(&killed, KILL_WAIT).await;
    for p in killed {
        if p.is_alive() {
            out.survivors.push(p);
        } else {
            out.killed.push(p);
        }
    }
    out
}

/// Waits until none of `processes` is alive, or `within` has passed.
pub(crate) async fn wait_gone(processes: &[NodeProcess], within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline && processes.iter().any(NodeProcess::is_alive) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What `down` did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DownReport {
    pub stopped: usize,
    pub killed: usize,
    pub already_gone: usize,
    /// PIDs that now belong to another process and were left alone.
    pub not_ours: Vec<u32>,
    /// PIDs still running after SIGKILL.
    #[serde(default)]
    pub survivors: Vec<u32>,
    pub removed_dir: bool,
    /// NAT lab: network namespaces deleted.
    #[serde(default)]
    pub namespaces_deleted: usize,
    /// NAT lab: namespaces that could not be deleted, with why.
    #[serde(default)]
    pub namespaces_left: Vec<(String, String)>,
    /// In-memory testnet: nodes the stopped host process held.
    #[serde(default)]
    pub in_memory_nodes: usize,
}

impl fmt::Display for DownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "testnet down: {} stopped cleanly, {} killed after {}s, {} already gone",
            self.stopped,
            self.killed,
            TERM_GRACE.as_secs(),
            self.already_gone
        )?;
        if self.in_memory_nodes > 0 {
            write!(
                f,
                " (one host process of {} in-memory nodes)",
                self.in_memory_nodes
            )?;
        }
        if !self.not_ours.is_empty() {
            write!(
                f,
                "; left alone (PID reused by another process): {:?}",
                self.not_ours
            )?;
        }
        if !self.survivors.is_empty() {
            write!(f, "; still running after SIGKILL: {:?}", self.survivors)?;
        }
        if self.namespaces_deleted > 0 {
            write!(
                f,
                "; {} lab network namespaces deleted",
                self.namespaces_deleted
            )?;
        }
        for (name, why) in &self.namespaces_left {
            write!(
                f,
                "; namespace {name} NOT deleted ({why}): `ip netns del {name}`"
            )?;
        }
        if self.removed_dir {
            write!(f, "; testnet directory removed")?;
        }
        Ok(())
    }
}

/// Stops every node of the testnet in `dir`: the recorded processes, and processes found
/// through a node's control file (see [`locate`]). Nothing else is signalled. An in-memory
/// testnet is its host process: signalled once, however many nodes name it.
pub async fn down(dir: &Path, clean: bool) -> Result<DownReport, TestnetError> {
    let record = state::load(dir)?.ok_or_else(|| TestnetError::NotFound(dir.to_path_buf()))?;
    let mut report = DownReport::default();
    let mut live = Vec::new();
    if let Some(host) = &record.host {
        report.in_memory_nodes = record.nodes.iter().filter(|n| n.in_memory).count();
        match crate::memory::host_process(host) {
            Some(p) => live.push(p),
            None => report.already_gone += 1,
        }
    }
    for node in record.nodes.iter().filter(|n| !n.in_memory) {
        if let Some(p) = locate(node) {
            live.push(p);
            continue;
        }
        let current = procs::start_time(node.pid);
        if current.is_some() && node.start_time.is_some() && current != node.start_time {
            report.not_ours.push(node.pid);
        } else {
            report.already_gone += 1;
        }
    }
    let stopped = terminate(live, TERM_GRACE).await;
    report.stopped = stopped.cleanly.len();
    report.killed = stopped.killed.len();
    report.survivors = stopped.survivors.iter().map(|p| p.pid).collect();
    if let Some(lab) = &record.lab {
        // After the processes: a namespace lives on while a process runs inside it.
        let present = lab
            .namespaces
            .iter()
            .filter(|n| crate::netns::exists(n))
            .count();
        report.namespaces_left = crate::netns::delete(&lab.ip, &lab.namespaces).await;
        report.namespaces_deleted = present.saturating_sub(report.namespaces_left.len());
        tracing::info!(
            lab = %lab.id,
            deleted = report.namespaces_deleted,
            left = report.namespaces_left.len(),
            "lab namespaces deleted"
        );
    }
    state::remove(dir)?;
    if clean {
        std::fs::remove_dir_all(dir).map_err(io_err(dir))?;
        report.removed_dir = true;
    }
    Ok(report)
}

/// The signal `testnet kill` sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KillSignal {
    /// SIGKILL: the node gets no chance to flush or say goodbye (a crash, a power cut).
    #[default]
    Kill,
    /// SIGTERM: the node shuts down cleanly.
    Term,
}

impl KillSignal {
    fn signal(self) -> Signal {
        match self {
            Self::Kill => Signal::SIGKILL,
            Self::Term => Signal::SIGTERM,
        }
    }
}

/// What `kill` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KillReport {
    pub index: usize,
    pub pid: u32,
    pub signal: String,
    /// False if the process was still there when `kill` stopped waiting.
    pub exited: bool,
}

impl fmt::Display for KillReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.signal == crate::memory::CUT_OFF || self.signal == crate::memory::STOPPED {
            let how = if self.signal == crate::memory::CUT_OFF {
                "cut off from its peers and stopped"
            } else {
                "stopped cleanly"
            };
            return write!(
                f,
                "in-memory node {} (host PID {}): {how}",
                self.index, self.pid
            );
        }
        write!(
            f,
            "node {} (PID {}): sent {}",
            self.index, self.pid, self.signal
        )?;
        if self.exited {
            write!(f, ", it exited")
        } else {
            write!(f, ", it is still running")
        }
    }
}

pub(crate) fn load_node(dir: &Path, index: usize) -> Result<(TestnetState, usize), TestnetError> {
    let record = state::load(dir)?.ok_or_else(|| TestnetError::NotFound(dir.to_path_buf()))?;
    let at = record
        .nodes
        .iter()
        .position(|n| n.index == index)
        .ok_or_else(|| TestnetError::NoSuchNode {
            dir: dir.to_path_buf(),
            index,
            count: record.nodes.len(),
        })?;
    Ok((record, at))
}

/// Sends `signal` to node `index` of the testnet in `dir` and waits (briefly for SIGKILL, up
/// to the SIGTERM grace period otherwise) for it to exit. The node stays in the state file,
/// marked as killed, for `restart`.
pub async fn kill(
    dir: &Path,
    index: usize,
    signal: KillSignal,
) -> Result<KillReport, TestnetError> {
    let (mut record, at) = load_node(dir, index)?;
    if record.nodes[at].in_memory {
        return crate::memory::kill(dir, index, signal).await;
    }
    let node = &mut record.nodes[at];
    let live = locate(node).ok_or(TestnetError::NotRunning { index })?;
    let signal = signal.signal();
    procs::signal(live.pid, signal).map_err(|_| TestnetError::NotRunning { index })?;
    let wait = if signal == Signal::SIGKILL {
        KILL_WAIT
    } else {
        TERM_GRACE
    };
    wait_gone(&[live], wait).await;
    node.killed = Some(KillMark {
        signal: signal.as_str().to_owned(),
        at_ms: now_ms(),
    });
    state::save(dir, &record)?;
    Ok(KillReport {
        index,
        pid: live.pid,
        signal: signal.as_str().to_owned(),
        exited: !live.is_alive(),
    })
}

/// What `restart` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestartReport {
    pub index: usize,
    /// The process stopped first, if the node was running.
    pub stopped_pid: Option<u32>,
    pub pid: u32,
    /// From the spawn until the control API answered.
    pub answered_after_ms: u64,
    pub log_file: PathBuf,
}

impl fmt::Display for RestartReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} ", self.index)?;
        if let Some(old) = self.stopped_pid {
            write!(f, "stopped (PID {old}) and ")?;
        }
        write!(
            f,
            "restarted as PID {}; its control API answered after {:.2}s; log {}",
            self.pid,
            self.answered_after_ms as f64 / 1000.0,
            self.log_file.display()
        )
    }
}

/// Starts node `index` again with its recorded command line and environment policy, appending
/// to its log; a running node is stopped first (SIGTERM, then SIGKILL after the grace period).
/// Records the new process and waits up to `timeout` until its control API answers.
pub async fn restart(
    dir: &Path,
    index: usize,
    timeout: Duration,
) -> Result<RestartReport, TestnetError> {
    let (mut record, at) = load_node(dir, index)?;
    if record.nodes[at].in_memory {
        return crate::memory::restart(dir, index, timeout).await;
    }
    let command = record.nodes[at]
        .command
        .clone()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| TestnetError::NoCommand {
            index,
            state: state::path(dir),
        })?;
    let stopped_pid = match locate(&record.nodes[at]) {
        Some(live) => {
            let stopped = terminate(vec![live], TERM_GRACE).await;
            if !stopped.survivors.is_empty() {
                return Err(TestnetError::Unkillable {
                    index,
                    pid: live.pid,
                });
            }
            Some(live.pid)
        }
        None => None,
    };
    let node = &mut record.nodes[at];
    let mut child = start_node(index, &command, &node.log_file, true)?;
    let started = Instant::now();
    node.pid = child.id();
    node.start_time = procs::start_time(node.pid);
    node.started_at_ms = Some(now_ms());
    node.killed = None;
    let (pid, log_file) = (node.pid, node.log_file.clone());
    let node = node.clone();
    state::save(dir, &record)?;
    tracing::info!(index, pid, "testnet node restarted");

    let prober = Prober::new();
    loop {
        if probe_status(&prober, record.lab.as_ref(), &node, node.control_port)
            .await
            .is_some()
        {
            return Ok(RestartReport {
                index,
                stopped_pid,
                pid,
                answered_after_ms: started.elapsed().as_millis() as u64,
                log_file,
            });
        }
        if !matches!(child.try_wait(), Ok(None)) {
            return Err(TestnetError::NodeDied {
                index,
                log: log_file,
            });
        }
        if started.elapsed() > timeout {
            return Err(TestnetError::NotAnswering {
                index,
                timeout,
                log: log_file,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
