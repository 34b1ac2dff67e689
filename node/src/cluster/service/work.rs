//! This node's work as a cluster member: assignments to it, fenced by term, their module
//! and input fetched by hash, run in the sandbox off the event loop, and reports sent to the
//! coordinator until the replicated state shows them.
//!
//! Everything here is reconciled against the cluster state rather than driven by single
//! events: after every change and once a second the node compares what the state says it
//! should be running with what it runs, so a restart (which replays the log) or a lost
//! message never leaves a task stranded.
//!
//! A node whose power mode tightens finishes what it runs (tasks are bounded by their
//! duration's fuel) and reports its new capacity, so the coordinator places nothing more
//! beyond it; it does not kill running work (docs/clusters.md, "Power policy").

use std::collections::BTreeMap;
use std::time::Duration;

use fogmesh_consensus::capacity::{Battery, NodeCapacity};
use fogmesh_consensus::state::{Command, FencingGate, TaskState};
use fogmesh_consensus::task::{TaskId, TaskSpec};
use libp2p::PeerId;
use serde_bytes::ByteBuf;

use super::{ClusterService, Pending, Situation};
use crate::cluster::blobs;
use crate::cluster::exec::{ExecError, ExecLimits, ExecOutput};
use crate::cluster::protocol::{ClusterRequest, ClusterResponse};
use crate::runtime::capability::{Outbox, ReasonLabel};
use fogmesh_device::DeviceView;

/// Runs in flight on this node at most, whatever its capacity says.
pub const MAX_RUNS: usize = 64;
/// A report not reflected in the state is sent again after this long.
const REPORT_RETRY_MS: u64 = 1_000;

/// What this node offers a cluster now, from its last device view.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceCapacity {
    pub capacity: NodeCapacity,
}

impl DeviceCapacity {
    pub fn of(view: &DeviceView) -> Self {
        let limits = &view.decision.limits;
        let readings = &view.readings;
        let memory = readings
            .mem_available_bytes
            .map_or(limits.memory_bytes, |free| free.min(limits.memory_bytes));
        let battery = readings.battery_present.unwrap_or(false).then(|| Battery {
            pct: readings.battery_pct.unwrap_or(0.0).clamp(0.0, 100.0) as u8,
            charging: readings.charging.unwrap_or(false),
        });
        DeviceCapacity {
            capacity: NodeCapacity {
                cores: readings.cores.unwrap_or(1).max(1),
                cpu_pct: limits.cpu_pct,
                memory_mb: u32::try_from(memory / (1024 * 1024)).unwrap_or(u32::MAX),
                max_tasks: limits.max_tasks,
                gpu: readings.gpu.unwrap_or(false),
                battery,
                score_milli: (view.score.clamp(0.0, 1000.0) * 1000.0) as u32,
            },
        }
    }
}

/// Why a blob is being fetched.
#[derive(Debug, Clone)]
pub enum FetchFor {
    /// The module or input of a task assigned here.
    Run(TaskId),
    /// The result of a task this node submitted.
    Result(TaskId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Fetching,
    Running,
}

#[derive(Debug, Clone)]
struct Run {
    term: u64,
    phase: Phase,
    /// Peers still to ask for a missing blob.
    sources: Vec<PeerId>,
    /// The assignment was superseded (or the cluster left): the outcome is dropped.
    abandoned: bool,
    /// A fetch for it is outstanding.
    asked: bool,
}

#[derive(Debug, Clone)]
struct Outstanding {
    command: Command,
    result: Option<[u8; 32]>,
    sent_ms: u64,
}

/// Runs and reports in flight.
#[derive(Debug, Default)]
pub struct Work {
    gate: FencingGate,
    runs: BTreeMap<TaskId, Run>,
    reports: BTreeMap<TaskId, Outstanding>,
}

impl Work {
    pub fn running(&self) -> usize {
        self.runs.len()
    }
}

impl ClusterService {
    /// Compares what the cluster state says this node runs with what it runs.
    pub(super) fn reconcile(&mut self, now_ms: u64, out: &mut Outbox) {
        let Situation::Member(m) = &self.situation else {
            return;
        };
        let state = m.group.state();
        let mut to_start = Vec::new();
        let mut lost = Vec::new();
        for (id, task) in state.tasks() {
            match &task.state {
                TaskState::Assigned { node, term, .. }
                    if *node == self.me_node
                        && !self.work.runs.contains_key(id)
                        && !self.work.reports.contains_key(id) =>
                {
                    to_start.push((task.spec.clone(), *term));
                }
                // Running here by the state, but not here in fact: this node restarted.
                TaskState::Running { node, term, .. }
                    if *node == self.me_node
                        && !self.work.runs.contains_key(id)
                        && !self.work.reports.contains_key(id) =>
                {
                    lost.push((*id, *term));
                }
                _ => {}
            }
        }
        // Runs whose assignment moved on (cancelled, placed again elsewhere).
        for (id, run) in &mut self.work.runs {
            let current = state
                .task(id)
                .and_then(|t| t.state.assignment().map(|(n, t)| (n.clone(), t)));
            if current != Some((self.me_node.clone(), run.term)) {
                run.abandoned = true;
            }
        }
        // Those still fetching simply stop.
        self.work
            .runs
            .retain(|_, run| !(run.abandoned && run.phase == Phase::Fetching));
        // Reports the state now shows (or made moot).
        self.work.reports.retain(|id, report| {
            let Some(task) = state.task(id) else {
                return false;
            };
            match (&report.command, &task.state) {
                (_, s) if s.is_terminal() => false,
                (Command::Started { term, .. }, TaskState::Running { term: t, .. }) => t != term,
                (
                    Command::Started { term, .. }
                    | Command::Finished { term, .. }
                    | Command::Failed { term, .. },
                    s,
                ) => s.assignment() == Some((&self.me_node, *term)),
                _ => false,
            }
        });
        for (id, term) in lost {
            self.report(
                now_ms,
                Command::Failed {
                    task: id,
                    node: self.me_node.clone(),
                    term,
                    reason: "its node restarted while running it".into(),
                },
                None,
                out,
            );
        }
        // Oldest terms first, so the gate does not refuse an older valid assignment after
        // admitting a newer one.
        to_start.sort_by_key(|(_, term)| *term);
        for (spec, term) in to_start {
            self.start(now_ms, spec, term, out);
        }
    }

    fn start(&mut self, now_ms: u64, spec: TaskSpec, term: u64, out: &mut Outbox) {
        if let Err(newest) = self.work.gate.admit(term) {
            self.metrics.fenced.inc();
            tracing::warn!(task = %spec.id, term, newest, "assignment from an older term refused");
            let reason = format!("assignment of term {term} refused: this node saw term {newest}");
            out.event(super::TaskChanged {
                id: spec.id.to_string(),
                state: "fenced".into(),
                node: Some(self.me.to_string()),
                cluster: self.cluster_id().map(str::to_owned),
                detail: Some(reason.clone()),
            });
            // Reported, so the coordinator places it again rather than waiting for ever.
            self.report(
                now_ms,
                Command::Failed {
                    task: spec.id,
                    node: self.me_node.clone(),
                    term,
                    reason,
                },
                None,
                out,
            );
            return;
        }
        if self.work.runs.len() >= MAX_RUNS {
            return;
        }
        // Where a missing blob may be: the submitter, the coordinator, every other member.
        let mut sources = Vec::new();
        if let Ok(submitter) = PeerId::from_bytes(&spec.submitter) {
            sources.push(submitter);
        }
        if let Situation::Member(m) = &self.situation {
            if let Some(c) = m.coordinator_peer() {
                sources.push(c);
            }
            sources.extend(m.peers.values().copied());
        }
        sources.retain(|p| *p != self.me);
        let mut seen = std::collections::HashSet::new();
        sources.retain(|p| seen.insert(*p));
        // Asked from the end: the submitter first, then the coordinator, then the others.
        sources.reverse();
        self.work.runs.insert(
            spec.id,
            Run {
                term,
                phase: Phase::Fetching,
                sources,
                abandoned: false,
                asked: false,
            },
        );
        self.report(
            now_ms,
            Command::Started {
                task: spec.id,
                node: self.me_node.clone(),
                term,
                at_ms: now_ms,
            },
            None,
            out,
        );
        self.advance(now_ms, spec.id, out);
    }

    /// Runs the task if its blobs are here, else asks the next source for one.
    fn advance(&mut self, now_ms: u64, id: TaskId, out: &mut Outbox) {
        let Situation::Member(m) = &self.situation else {
            return;
        };
        let Some(task) = m.group.state().task(&id) else {
            self.work.runs.remove(&id);
            return;
        };
        let spec = task.spec.clone();
        let Some(run) = self.work.runs.get_mut(&id) else {
            return;
        };
        if run.phase != Phase::Fetching || run.abandoned {
            return;
        }
        let missing = std::iter::once(spec.module)
            .chain(spec.input)
            .find(|h| !self.blobs.contains(h));
        if let Some(hash) = missing {
            if run.asked {
                return;
            }
            let Some(source) = run.sources.pop() else {
                let term = run.term;
                self.work.runs.remove(&id);
                self.run_outcome(
                    now_ms,
                    id,
                    term,
                    Err("module or input unavailable from every holder".into()),
                    out,
                );
                return;
            };
            let asked = self.ask(
                source,
                ClusterRequest::Fetch { hash },
                Pending::Fetch {
                    hash,
                    purpose: FetchFor::Run(id),
                },
                out,
            );
            if let Some(run) = self.work.runs.get_mut(&id) {
                if asked {
                    run.asked = true;
                } else {
                    // Too many requests outstanding: the same source, next second.
                    run.sources.push(source);
                }
            }
            return;
        }
        let term = run.term;
        // Both here; either may have to be read from disk first (then `resume_work`).
        let module = self.blob(&spec.module, out);
        let input = match spec.input {
            Some(hash) => self.blob(&hash, out),
            None => Some(Vec::new()),
        };
        let (Some(module), Some(input)) = (module, input) else {
            return;
        };
        let Some(run) = self.work.runs.get_mut(&id) else {
            return;
        };
        run.phase = Phase::Running;
        let capacity_mb = self.capacity.map_or(u32::MAX, |c| c.capacity.memory_mb);
        let memory_mb = spec.requirements.memory_mb.min(capacity_mb).max(1);
        out.push(super::run_job(
            id,
            term,
            module,
            input,
            ExecLimits {
                memory_bytes: usize::try_from(u64::from(memory_mb) * 1024 * 1024)
                    .unwrap_or(usize::MAX),
                duration: Duration::from_millis(spec.requirements.duration_ms.max(1)),
            },
        ));
    }

    pub(super) fn on_fetched(
        &mut self,
        now_ms: u64,
        hash: [u8; 32],
        purpose: FetchFor,
        response: Result<ClusterResponse, String>,
        out: &mut Outbox,
    ) {
        if let Ok(ClusterResponse::Blob(bytes)) = response {
            if blobs::hash(&bytes) == hash {
                if let Err(error) = self.put_blob(&bytes, out) {
                    tracing::warn!(%error, "fetched blob not stored");
                }
            } else {
                self.metrics.refuse("blob_hash_mismatch");
            }
        }
        match purpose {
            FetchFor::Run(id) => {
                if let Some(run) = self.work.runs.get_mut(&id) {
                    run.asked = false;
                }
                self.advance(now_ms, id, out)
            }
            FetchFor::Result(id) => self.result_fetched(id, hash, out),
        }
    }

    /// A run finished (or failed) on the blocking pool.
    pub fn on_task_run(
        &mut self,
        now_ms: u64,
        task: TaskId,
        term: u64,
        outcome: Result<ExecOutput, ExecError>,
        out: &mut Outbox,
    ) {
        let Some(run) = self.work.runs.remove(&task) else {
            return;
        };
        let label = match &outcome {
            Ok(_) => "finished",
            Err(e) => e.reason(),
        };
        self.metrics
            .task_runs
            .get_or_create(&ReasonLabel { reason: label })
            .inc();
        if run.abandoned || run.term != term {
            tracing::info!(%task, "run outcome dropped: the assignment moved on");
            return;
        }
        let outcome = outcome.map(|o| o.output).map_err(|e| e.to_string());
        self.run_outcome(now_ms, task, term, outcome, out);
    }

    fn run_outcome(
        &mut self,
        now_ms: u64,
        task: TaskId,
        term: u64,
        outcome: Result<Vec<u8>, String>,
        out: &mut Outbox,
    ) {
        let node = self.me_node.clone();
        match outcome {
            // On this node's disk before it is reported (and the coordinator puts its own
            // copy on disk before it proposes the task done).
            Ok(output) => match self.put_blob_durable(
                &output,
                super::AfterDurable::RunStored {
                    task,
                    term,
                    result: blobs::hash(&output),
                    at_ms: now_ms,
                },
                out,
            ) {
                Ok(_) => {}
                Err(error) => self.report(
                    now_ms,
                    Command::Failed {
                        task,
                        node,
                        term,
                        reason: format!("result not stored: {error}"),
                    },
                    None,
                    out,
                ),
            },
            Err(reason) => self.report(
                now_ms,
                Command::Failed {
                    task,
                    node,
                    term,
                    reason,
                },
                None,
                out,
            ),
        }
    }

    /// A run's output is on disk: its `Finished` goes to the coordinator.
    pub(super) fn report_finished(
        &mut self,
        now_ms: u64,
        task: TaskId,
        term: u64,
        result: [u8; 32],
        at_ms: u64,
        out: &mut Outbox,
    ) {
        let node = self.me_node.clone();
        self.report(
            now_ms,
            Command::Finished {
                task,
                node,
                term,
                result,
                at_ms,
            },
            Some(result),
            out,
        );
    }

    /// Sends a report now and keeps it until the state shows it.
    fn report(
        &mut self,
        now_ms: u64,
        command: Command,
        result: Option<[u8; 32]>,
        out: &mut Outbox,
    ) {
        let task = match &command {
            Command::Started { task, .. }
            | Command::Finished { task, .. }
            | Command::Failed { task, .. } => *task,
            _ => return,
        };
        // A later report replaces an earlier one about the same task (finished after
        // started), never the other way round.
        if matches!(command, Command::Started { .. })
            && self
                .work
                .reports
                .get(&task)
                .is_some_and(|r| !matches!(r.command, Command::Started { .. }))
        {
            return;
        }
        self.work.reports.insert(
            task,
            Outstanding {
                command: command.clone(),
                result,
                sent_ms: now_ms,
            },
        );
        self.send_report(command, result, out);
    }

    fn send_report(&mut self, command: Command, result: Option<[u8; 32]>, out: &mut Outbox) {
        match result {
            None => {
                if let Err(reason) = self.propose(command, out) {
                    tracing::debug!(%reason, "report not sent yet");
                }
            }
            Some(hash) => {
                // Read from disk first if need be (then `resume_work` sends it).
                let Some(bytes) = self.blob(&hash, out) else {
                    return;
                };
                let Situation::Member(m) = &mut self.situation else {
                    return;
                };
                if m.group.is_leader() {
                    if let Err(reason) = self.propose(command, out) {
                        tracing::debug!(%reason, "result not proposed yet");
                    }
                    return;
                }
                let (Some(coordinator), cluster) = (m.coordinator_peer(), m.cluster.clone()) else {
                    return;
                };
                self.ask(
                    coordinator,
                    ClusterRequest::Finished {
                        cluster,
                        command,
                        result: ByteBuf::from(bytes),
                    },
                    Pending::Report,
                    out,
                );
            }
        }
    }

    /// A blob was read from disk: runs waiting to start try again, and a report carrying it
    /// goes.
    pub(super) fn resume_work(&mut self, now_ms: u64, hash: [u8; 32], out: &mut Outbox) {
        self.advance_waiting(now_ms, out);
        self.resend_reports(now_ms, |r| r.result == Some(hash), out);
    }

    /// Runs waiting for a blob and not waiting on a fetch try to start.
    fn advance_waiting(&mut self, now_ms: u64, out: &mut Outbox) {
        let waiting: Vec<TaskId> = self
            .work
            .runs
            .iter()
            .filter(|(_, r)| r.phase == Phase::Fetching && !r.asked)
            .map(|(id, _)| *id)
            .collect();
        for id in waiting {
            self.advance(now_ms, id, out);
        }
    }

    /// Sends again the outstanding reports `which` picks.
    fn resend_reports(
        &mut self,
        now_ms: u64,
        which: impl Fn(&Outstanding) -> bool,
        out: &mut Outbox,
    ) {
        let again: Vec<(Command, Option<[u8; 32]>)> = self
            .work
            .reports
            .values_mut()
            .filter(|r| which(r))
            .map(|r| {
                r.sent_ms = now_ms;
                (r.command.clone(), r.result)
            })
            .collect();
        for (command, result) in again {
            self.send_report(command, result, out);
        }
    }

    /// Once a second: reports not yet in the state go again; runs waiting on a blob ask on.
    pub(super) fn step_work(&mut self, now_ms: u64, out: &mut Outbox) {
        self.reconcile(now_ms, out);
        self.advance_waiting(now_ms, out);
        self.resend_reports(
            now_ms,
            |r| now_ms.saturating_sub(r.sent_ms) >= REPORT_RETRY_MS,
            out,
        );
    }

    /// Tells the cluster this node's capacity while the state holds another (at most once a
    /// second, so a lost report goes again).
    pub(super) fn report_capacity(&mut self, now_ms: u64, out: &mut Outbox) {
        let Some(capacity) = self.capacity.map(|c| c.capacity) else {
            return;
        };
        let me_node = self.me_node.clone();
        let Situation::Member(m) = &mut self.situation else {
            return;
        };
        let held = m
            .group
            .state()
            .members()
            .get(&me_node)
            .map(|member| member.capacity);
        if !m.joined || held == Some(capacity) || now_ms.saturating_sub(m.reported_ms) < 1_000 {
            return;
        }
        m.reported_ms = now_ms;
        let command = Command::Report {
            node: me_node,
            capacity,
        };
        if let Err(reason) = self.propose(command, out) {
            tracing::debug!(%reason, "capacity report not sent");
        }
    }
}
