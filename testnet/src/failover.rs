//! `fogmesh testnet failover`: how long a cluster goes without a coordinator that accepts
//! tasks after its coordinator is SIGKILLed.
//!
//! It starts a testnet, waits until every node is in a cluster (a 12-node testnet forms
//! 2–3), then for each trial SIGKILLs the coordinator of the largest cluster and measures
//! until another member of that cluster coordinates in a newer term *and* has taken a task
//! submitted to it (the task shows in its cluster's state). The killed node is restarted
//! and the clusters allowed to settle before the next trial. Bounded: every wait has a
//! timeout, and the testnet is stopped (its own PIDs only) at the end, whatever happened.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::bench::percentile;
use crate::probe::{ClusterProbe, Prober};
use crate::{kill, restart, state, with_testnet, KillSignal, Profile, TestnetError, UpOptions};

#[derive(Debug, Clone)]
pub struct FailoverOptions {
    pub dir: PathBuf,
    pub binary: PathBuf,
    pub nodes: usize,
    pub trials: usize,
    /// The task submitted to a new coordinator (a WebAssembly module).
    pub module: Vec<u8>,
    /// How long the clusters get to form.
    pub form_timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailoverReport {
    pub machine: String,
    pub nodes: usize,
    /// Seconds from start until every node was in a cluster and the shape held still for
    /// 12 s (included).
    pub formed_after_s: f64,
    /// Members per cluster once formed.
    pub cluster_sizes: Vec<usize>,
    /// Each trial's failover, in milliseconds (SIGKILL to a task taken by a new coordinator).
    pub trials_ms: Vec<u64>,
    /// Of those, until a new coordinator was seen (before it took the task).
    pub elected_ms: Vec<u64>,
    pub failed_trials: usize,
    /// Submit-to-start, in milliseconds: a task submitted on a member of an idle cluster
    /// until that member's replica shows it running (or done).
    pub start_ms: Vec<u64>,
    pub start_p50_ms: Option<u64>,
    pub start_p99_ms: Option<u64>,
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
    pub elected_p50_ms: Option<u64>,
    pub elected_p99_ms: Option<u64>,
}

async fn views(prober: &Prober, ports: &BTreeMap<usize, u16>) -> BTreeMap<usize, ClusterProbe> {
    let mut out = BTreeMap::new();
    for (index, port) in ports {
        if let Some(view) = prober.cluster(*port).await {
            out.insert(*index, view);
        }
    }
    out
}

/// Every node answering is a member, and every cluster has a coordinator that answers.
fn settled(views: &BTreeMap<usize, ClusterProbe>, expected: usize) -> bool {
    views.len() == expected
        && views
            .values()
            .all(|v| v.state == "member" && v.cluster.is_some())
        && views.values().all(|v| {
            views
                .values()
                .any(|w| w.cluster == v.cluster && w.is_coordinator)
        })
}

fn sizes(views: &BTreeMap<usize, ClusterProbe>) -> Vec<usize> {
    let mut by_cluster: BTreeMap<&str, usize> = BTreeMap::new();
    for v in views.values() {
        if let Some(c) = &v.cluster {
            *by_cluster.entry(c).or_default() += 1;
        }
    }
    let mut sizes: Vec<usize> = by_cluster.into_values().collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    sizes
}

/// How long the clusters' shape must hold still to count as formed (small clusters merge
/// once 8 s old).
const STABLE_FOR: Duration = Duration::from_secs(12);

/// Waits until every node is in a cluster with a coordinator and the clusters' sizes have
/// not changed for [`STABLE_FOR`].
async fn wait_settled(
    prober: &Prober,
    ports: &BTreeMap<usize, u16>,
    timeout: Duration,
) -> Option<BTreeMap<usize, ClusterProbe>> {
    let deadline = Instant::now() + timeout;
    let mut shape: Option<(Vec<usize>, Instant)> = None;
    while Instant::now() < deadline {
        let v = views(prober, ports).await;
        if settled(&v, ports.len()) {
            let now_shape = sizes(&v);
            match &shape {
                Some((held, since)) if *held == now_shape => {
                    if since.elapsed() >= STABLE_FOR {
                        return Some(v);
                    }
                }
                _ => shape = Some((now_shape, Instant::now())),
            }
        } else {
            shape = None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

pub async fn failover(
    options: &FailoverOptions,
    mut log: impl FnMut(String),
) -> Result<FailoverReport, TestnetError> {
    let up_options = UpOptions::bench(
        options.dir.clone(),
        options.binary.clone(),
        options.nodes,
        Profile::Mixed,
    );
    let started = Instant::now();
    with_testnet(&up_options, run_trials(options, started, &mut log)).await
}

async fn run_trials(
    options: &FailoverOptions,
    started: Instant,
    log: &mut impl FnMut(String),
) -> Result<FailoverReport, TestnetError> {
    let prober = Prober::for_testnet(&options.dir);
    let ports: BTreeMap<usize, u16> = state::load(&options.dir)?
        .map(|s| s.nodes.iter().map(|n| (n.index, n.control_port)).collect())
        .unwrap_or_default();
    let formed = wait_settled(&prober, &ports, options.form_timeout)
        .await
        .ok_or_else(|| {
            TestnetError::NotSettled(format!(
                "clusters did not form within {:?}",
                options.form_timeout
            ))
        })?;
    let mut report = FailoverReport {
        machine: crate::bench::machine(),
        nodes: options.nodes,
        formed_after_s: started.elapsed().as_secs_f64(),
        cluster_sizes: sizes(&formed),
        trials_ms: Vec::new(),
        elected_ms: Vec::new(),
        failed_trials: 0,
        start_ms: Vec::new(),
        start_p50_ms: None,
        start_p99_ms: None,
        p50_ms: None,
        p99_ms: None,
        elected_p50_ms: None,
        elected_p99_ms: None,
    };
    log(format!(
        "failover: {} nodes formed clusters of {:?} in {:.1}s",
        options.nodes, report.cluster_sizes, report.formed_after_s
    ));
    let body = serde_json::json!({
        "module_hex": hex_encode(&options.module),
        "priority": "high",
        "cpu_millicores": 10,
        "memory_mb": 1,
        "duration_ms": 100,
    });
    // Submit-to-start on an idle cluster, from a member that does not coordinate.
    if let Some((member, port)) = formed
        .iter()
        .filter(|(_, v)| !v.is_coordinator && v.members.len() > 1)
        .find_map(|(i, _)| ports.get(i).map(|p| (*i, *p)))
    {
        for _ in 0..options.trials {
            let t0 = Instant::now();
            let Some(id) = prober.submit_task(port, &body).await else {
                continue;
            };
            while t0.elapsed() < Duration::from_secs(10) {
                let state = prober.task_state(port, &id).await;
                if state.is_some_and(|s| s == "running" || s == "done") {
                    report.start_ms.push(t0.elapsed().as_millis() as u64);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let mut sorted = report.start_ms.clone();
        sorted.sort_unstable();
        report.start_p50_ms = percentile(&sorted, 50.0);
        report.start_p99_ms = percentile(&sorted, 99.0);
        log(format!(
            "failover: submit-to-start on node {member}: p50 {:?} ms, p99 {:?} ms ({} tasks)",
            report.start_p50_ms,
            report.start_p99_ms,
            report.start_ms.len()
        ));
    }
    let mut current = formed;
    for trial in 0..options.trials {
        // The coordinator of the largest cluster.
        let Some((victim, cluster, term)) = current
            .iter()
            .filter(|(_, v)| v.is_coordinator)
            .max_by_key(|(_, v)| v.members.len())
            .map(|(i, v)| (*i, v.cluster.clone(), v.term))
        else {
            break;
        };
        let others: Vec<usize> = current
            .iter()
            .filter(|(i, v)| **i != victim && v.cluster == cluster)
            .map(|(i, _)| *i)
            .collect();
        let t0 = Instant::now();
        kill(&options.dir, victim, KillSignal::Kill).await?;
        let mut elected = None;
        let mut taken = None;
        let mut task: Option<(usize, String)> = None;
        while t0.elapsed() < Duration::from_secs(30) && taken.is_none() {
            for &i in &others {
                let Some(port) = ports.get(&i) else { continue };
                match &task {
                    None => {
                        let Some(v) = prober.cluster(*port).await else {
                            continue;
                        };
                        if v.is_coordinator && v.term > term && v.cluster == cluster {
                            elected.get_or_insert(t0.elapsed());
                            if let Some(id) = prober.submit_task(*port, &body).await {
                                task = Some((i, id));
                            }
                        }
                    }
                    Some((at, id)) if *at == i => {
                        let state = prober.task_state(*port, id).await;
                        if state.is_some_and(|s| s != "submitted") {
                            taken = Some(t0.elapsed());
                        }
                    }
                    Some(_) => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        match (elected, taken) {
            (Some(e), Some(t)) => {
                let (e, t) = (e.as_millis() as u64, t.as_millis() as u64);
                log(format!("failover: trial {trial}: killed node {victim}; new coordinator after {e} ms, task taken after {t} ms"));
                report.elected_ms.push(e);
                report.trials_ms.push(t);
            }
            _ => {
                log(format!("failover: trial {trial}: killed node {victim}; no coordinator took a task within 30 s"));
                report.failed_trials += 1;
            }
        }
        restart(&options.dir, victim, Duration::from_secs(30)).await?;
        match wait_settled(&prober, &ports, Duration::from_secs(60)).await {
            Some(v) => current = v,
            None => {
                log("failover: the clusters did not settle again within 60 s; stopping".into());
                break;
            }
        }
    }
    let mut sorted = report.trials_ms.clone();
    sorted.sort_unstable();
    report.p50_ms = percentile(&sorted, 50.0);
    report.p99_ms = percentile(&sorted, 99.0);
    let mut sorted = report.elected_ms.clone();
    sorted.sort_unstable();
    report.elected_p50_ms = percentile(&sorted, 50.0);
    report.elected_p99_ms = percentile(&sorted, 99.0);
    Ok(report)
}

pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl FailoverReport {
    pub fn to_markdown(&self) -> String {
        let ms = |v: Option<u64>| v.map_or_else(|| "n/a".into(), |v| format!("{v} ms"));
        format!(
            "machine: {}\n{} nodes formed clusters of {:?} in {:.1} s\n\n| | p50 | p99 | trials |\n|---|---|---|---|\n| SIGKILL → new coordinator | {} | {} | {} |\n| SIGKILL → new coordinator took a task | {} | {} | {} ({} failed) |\n| submit → running, idle cluster | {} | {} | {} |\n",
            self.machine,
            self.nodes,
            self.cluster_sizes,
            self.formed_after_s,
            ms(self.elected_p50_ms),
            ms(self.elected_p99_ms),
            self.elected_ms.len(),
            ms(self.p50_ms),
            ms(self.p99_ms),
            self.trials_ms.len(),
            self.failed_trials,
            ms(self.start_p50_ms),
            ms(self.start_p99_ms),
            self.start_ms.len()
        )
    }
}
