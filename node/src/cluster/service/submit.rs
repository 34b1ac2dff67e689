//! Submissions: tasks this node handed to the mesh, and tasks it forwards for a cluster
//! that dissolved or was lost.
//!
//! A submission is on disk (its record, module and input) before the submitter gets its id,
//! and stays until a cluster has it: every 2 s an unconfirmed one goes to the node's own
//! coordinator, or else to the coordinator of a reachable cluster, and counts as taken only
//! once a member's state shows it (a `Status` answer). A task outside any reachable cluster
//! therefore waits on disk, with `task status` saying why, and is never dropped. The
//! submitter then follows its tasks and fetches each result when done.
//!
//! Bounded: [`MAX_SUBMISSIONS`] records; at the bound, the oldest ended one is forgotten, and
//! if none has ended a new submission is refused.

use std::collections::BTreeMap;

use fogmesh_consensus::formation;
use fogmesh_consensus::state::{Command, TaskState};
use fogmesh_consensus::task::{Priority, Requirements, TaskId, TaskSpec};
use fogmesh_store::{Batch, Store, StoreError, Table};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

use super::{ClusterService, Pending, Situation};
use crate::cluster::exec::{self, MAX_INPUT_BYTES};
use crate::cluster::protocol::{ClusterRequest, ClusterResponse, TaskReport};
use crate::runtime::capability::{Effect, Notice, Outbox};
use tokio::sync::oneshot;

/// Where a submission's id (or why it was refused) goes, once it is on disk.
pub type SubmitReply = oneshot::Sender<Result<TaskId, SubmitError>>;
/// Where a task's result (or why there is none) goes.
pub type ResultReply = oneshot::Sender<Result<Vec<u8>, String>>;

pub const MAX_SUBMISSIONS: usize = 10_000;
/// Status questions a node asks per second at most.
const MAX_STATUS_POLLS: usize = 64;
/// Longest estimated duration a task may give (its fuel; a run cannot be interrupted).
pub const MAX_DURATION_MS: u64 = 3_600_000;
/// An unconfirmed submission is sent again after this long; a followed one asked about.
const RESEND_MS: u64 = 2_000;

/// A task as its submitter asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitTask {
    pub module: Vec<u8>,
    pub input: Option<Vec<u8>>,
    pub priority: Priority,
    pub requirements: Requirements,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("this node's ticket does not grant the submitter role")]
    NoRole,
    #[error("the module is refused: {0}")]
    BadModule(String),
    #[error("input of {0} bytes; at most {MAX_INPUT_BYTES}")]
    InputTooLarge(usize),
    #[error("impossible requirements: {0}")]
    BadRequirements(String),
    #[error("this node holds {MAX_SUBMISSIONS} unfinished submissions; wait for some to end")]
    Full,
    #[error("cannot store the task: {0}")]
    Store(String),
}

/// A submission as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmittedRecord {
    pub spec: TaskSpec,
    /// The cluster that took it (or was last asked).
    pub cluster: Option<String>,
    /// A member's state showed the task.
    pub confirmed: bool,
    /// Forwarded for a dissolved or lost cluster, not submitted here.
    pub forwarded: bool,
    /// The latest status heard.
    pub last: Option<TaskReport>,
    pub result_held: bool,
    /// Why it waits, for `task status`.
    pub note: String,
    #[serde(default)]
    pub sent_ms: u64,
    /// When its cluster last answered about it.
    #[serde(default)]
    pub heard_ms: u64,
    /// Deliveries that failed in a row (no answer, not connected), and since when: what
    /// `task status` tells a submitter cut off from the task's cluster.
    #[serde(default)]
    pub failed_tries: u32,
    #[serde(default)]
    pub failing_since_ms: u64,
}

#[derive(Debug)]
pub struct Submissions {
    table: Table<SubmittedRecord>,
    records: BTreeMap<TaskId, SubmittedRecord>,
    counter: u64,
    fetch_turn: u64,
}

impl Submissions {
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        let table: Table<SubmittedRecord> = store.table("tasks_submitted")?;
        let mut records = BTreeMap::new();
        for entry in table.entries() {
            match entry {
                Ok((_, record)) => {
                    records.insert(record.spec.id, record);
                }
                Err(error) => tracing::warn!(%error, "unreadable submission skipped"),
            }
        }
        Ok(Submissions {
            table,
            records,
            counter: 0,
            fetch_turn: 0,
        })
    }

    /// Adds `record` to `batch`.
    fn save_into(&self, record: &SubmittedRecord, batch: &mut Batch) {
        if let Err(error) = batch.put(&self.table, &record.spec.id.to_string(), record) {
            tracing::warn!(%error, task = %record.spec.id, "submission not stored");
        }
    }

    /// Writes `record` (buffered: a record only says how far its task got, which the next
    /// status answer says again).
    fn save(&self, record: &SubmittedRecord, out: &mut Outbox) {
        let mut batch = Batch::new();
        self.save_into(record, &mut batch);
        out.push(Effect::Persist(batch));
    }

    fn forget(&mut self, id: &TaskId, out: &mut Outbox) {
        if self.records.remove(id).is_some() {
            let mut batch = Batch::new();
            batch.remove(&self.table, &id.to_string());
            out.push(Effect::Persist(batch));
        }
    }

    /// Makes room for one more, if an ended record can go (its removal added to `batch`).
    fn make_room(&mut self, batch: &mut Batch) -> bool {
        if self.records.len() < MAX_SUBMISSIONS {
            return true;
        }
        let ended = self
            .records
            .iter()
            .filter(|(_, r)| r.last.as_ref().is_some_and(|l| l.state.is_terminal()))
            .min_by_key(|(_, r)| r.spec.submitted_at_ms)
            .map(|(id, _)| *id);
        match ended {
            Some(id) => {
                self.records.remove(&id);
                batch.remove(&self.table, &id.to_string());
                true
            }
            None => false,
        }
    }

    /// Keeps a task of a dissolved or lost cluster to hand to the next one (its record
    /// added to `batch`).
    pub fn forward(&mut self, spec: TaskSpec, me: &PeerId, batch: &mut Batch) {
        if let Some(record) = self.records.get_mut(&spec.id) {
            record.cluster = None;
            record.confirmed = false;
            record.note = "its cluster is gone; forwarding it".into();
            let record = record.clone();
            self.save_into(&record, batch);
            return;
        }
        if !self.make_room(batch) {
            tracing::warn!(task = %spec.id, "no room to forward a task");
            return;
        }
        let record = SubmittedRecord {
            forwarded: spec.submitter != me.to_bytes(),
            spec,
            cluster: None,
            confirmed: false,
            last: None,
            result_held: false,
            note: "its cluster is gone; forwarding it".into(),
            sent_ms: 0,
            heard_ms: 0,
            failed_tries: 0,
            failing_since_ms: 0,
        };
        self.save_into(&record, batch);
        self.records.insert(record.spec.id, record);
    }

    pub fn get(&self, id: &TaskId) -> Option<&SubmittedRecord> {
        self.records.get(id)
    }

    pub fn own(&self) -> impl Iterator<Item = &SubmittedRecord> {
        self.records.values().filter(|r| !r.forwarded)
    }
}

impl ClusterService {
    /// A task from this node's control API: checked and stored; once it is on disk its id
    /// goes to `reply` and it is handed on.
    pub fn submit(&mut self, now_ms: u64, task: SubmitTask, reply: SubmitReply, out: &mut Outbox) {
        if let Err(error) = self.store_submission(now_ms, task, reply, out) {
            // The reply was given back with the error.
            let (error, reply) = *error;
            let _ = reply.send(Err(error));
        }
    }

    fn store_submission(
        &mut self,
        now_ms: u64,
        task: SubmitTask,
        reply: SubmitReply,
        out: &mut Outbox,
    ) -> Result<(), Box<(SubmitError, SubmitReply)>> {
        let refuse = |error: SubmitError, reply: SubmitReply| Err(Box::new((error, reply)));
        if !self.config.roles.submitter {
            self.metrics.refuse("submit_without_role");
            return refuse(SubmitError::NoRole, reply);
        }
        if let Err(error) = exec::check_module(&task.module) {
            return refuse(SubmitError::BadModule(error.to_string()), reply);
        }
        if let Some(input) = &task.input {
            if input.len() > MAX_INPUT_BYTES {
                return refuse(SubmitError::InputTooLarge(input.len()), reply);
            }
        }
        if let Err(reason) = check_requirements(&task.requirements) {
            return refuse(SubmitError::BadRequirements(reason), reply);
        }
        // The blobs, the record and any record dropped for room: one batch, durable. Every
        // refusal comes before anything is put.
        let blobs: Vec<&[u8]> = std::iter::once(task.module.as_slice())
            .chain(task.input.as_deref())
            .collect();
        if let Err(error) = self.blobs.room_for(&blobs) {
            return refuse(SubmitError::Store(error.to_string()), reply);
        }
        let mut batch = Batch::new();
        if !self.submissions.make_room(&mut batch) {
            return refuse(SubmitError::Full, reply);
        }
        let module = match self.blobs.put(&task.module, &mut batch) {
            Ok(hash) => hash,
            Err(error) => return refuse(SubmitError::Store(error.to_string()), reply),
        };
        let input = match task.input.as_deref().map(|i| self.blobs.put(i, &mut batch)) {
            None => None,
            Some(Ok(hash)) => Some(hash),
            Some(Err(error)) => return refuse(SubmitError::Store(error.to_string()), reply),
        };
        self.metrics.blobs.set(self.blobs.count() as i64);
        self.submissions.counter += 1;
        let mut hasher = Sha256::new();
        hasher.update(self.me.to_bytes());
        hasher.update(now_ms.to_be_bytes());
        hasher.update(self.submissions.counter.to_be_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&hasher.finalize()[..16]);
        let spec = TaskSpec {
            id: TaskId(id),
            priority: task.priority,
            requirements: task.requirements,
            module,
            input,
            submitter: self.me.to_bytes(),
            submitted_at_ms: now_ms,
        };
        let record = SubmittedRecord {
            spec: spec.clone(),
            cluster: None,
            confirmed: false,
            forwarded: false,
            last: None,
            result_held: false,
            note: "accepted here; looking for a cluster".into(),
            sent_ms: 0,
            heard_ms: 0,
            failed_tries: 0,
            failing_since_ms: 0,
        };
        self.submissions.save_into(&record, &mut batch);
        if let Some(error) = batch.error() {
            return refuse(SubmitError::Store(error.to_string()), reply);
        }
        let token = self.next_durable;
        self.next_durable += 1;
        self.durable.insert(
            token,
            super::AfterDurable::Submitted {
                record: Box::new(record),
                reply,
            },
        );
        out.push(Effect::PersistDurable { batch, token });
        Ok(())
    }

    /// A submission from the API is on disk (or could not be stored).
    pub(super) fn on_submission_stored(
        &mut self,
        now_ms: u64,
        record: SubmittedRecord,
        reply: SubmitReply,
        result: Result<(), String>,
        out: &mut Outbox,
    ) {
        if let Err(error) = result {
            // The node goes to safe mode; the record may or may not have been written.
            let _ = reply.send(Err(SubmitError::Store(error)));
            return;
        }
        let id = record.spec.id;
        self.submissions.records.insert(id, record);
        self.metrics.tasks_submitted.inc();
        out.event(super::TaskChanged {
            id: id.to_string(),
            state: "submitted".into(),
            node: None,
            cluster: None,
            detail: None,
        });
        self.hand_on(now_ms, id, out);
        // The view shows it before its id is known.
        self.publish_view(now_ms, out);
        let _ = reply.send(Ok(id));
    }

    /// Sends one unconfirmed submission to a cluster, if one is in reach.
    fn hand_on(&mut self, now_ms: u64, id: TaskId, out: &mut Outbox) {
        let Some(record) = self.submissions.records.get(&id).cloned() else {
            return;
        };
        // Our own coordinator first.
        if let Situation::Member(m) = &self.situation {
            if m.joined && m.group.state().dissolved_into().is_none() {
                if m.group.is_leader() {
                    let cluster = m.cluster.clone();
                    let outcome = self.take_submission(now_ms, record.spec.clone(), out);
                    self.note(
                        id,
                        Some(cluster),
                        outcome
                            .err()
                            .unwrap_or_else(|| "proposed to this node's cluster".into()),
                        now_ms,
                    );
                    return;
                }
                if let Some(coordinator) = m.coordinator_peer() {
                    let cluster = m.cluster.clone();
                    self.send_submission(now_ms, coordinator, cluster, record, out);
                    return;
                }
            }
        }
        // Else the cluster asked before, or the reachable one whose summary shows the most
        // room for it (`formation::place_across`).
        let timing = self.config.formation;
        let target = record
            .cluster
            .as_ref()
            .and_then(|c| self.announcements.get(c))
            .filter(|(peer, _)| self.connected.contains(peer))
            .or_else(|| {
                let best = formation::place_across(
                    now_ms,
                    &timing,
                    self.announcements.values().map(|(_, a)| a),
                    &record.spec.requirements,
                    |coordinator| {
                        PeerId::from_bytes(coordinator)
                            .is_ok_and(|peer| self.connected.contains(&peer))
                    },
                )?;
                self.announcements.get(&best.cluster)
            })
            .map(|(peer, a)| (*peer, a.cluster.clone()));
        match target {
            Some((coordinator, cluster)) => {
                self.send_submission(now_ms, coordinator, cluster, record, out)
            }
            None => self.note(
                id,
                record.cluster.clone(),
                "no cluster in reach; kept on disk and handed on when one is".into(),
                now_ms,
            ),
        }
    }

    fn send_submission(
        &mut self,
        now_ms: u64,
        coordinator: PeerId,
        cluster: String,
        record: SubmittedRecord,
        out: &mut Outbox,
    ) {
        let spec = record.spec.clone();
        // The blobs go along (a forwarded task's submitter may be out of reach); one being
        // read from disk first makes this a try for the next round.
        let module = self.blob(&spec.module, out);
        let input = match spec.input {
            Some(hash) => self.blob(&hash, out),
            None => Some(Vec::new()),
        };
        let (Some(module), Some(input)) = (module, input) else {
            self.note(
                spec.id,
                Some(cluster),
                "its module or input is being read from disk; sent next round".into(),
                now_ms,
            );
            return;
        };
        let input = spec.input.map(|_| ByteBuf::from(input));
        let module = Some(ByteBuf::from(module));
        let sent = self.ask(
            coordinator,
            ClusterRequest::Submit {
                spec: spec.clone(),
                module,
                input,
                forwarded: record.forwarded,
            },
            Pending::Submit { task: spec.id },
            out,
        );
        let note = if sent {
            format!("sent to cluster {cluster}; waiting for it to confirm")
        } else {
            "too many requests outstanding; sent again soon".into()
        };
        self.note(spec.id, Some(cluster), note, now_ms);
    }

    fn note(&mut self, id: TaskId, cluster: Option<String>, note: String, now_ms: u64) {
        if let Some(record) = self.submissions.records.get_mut(&id) {
            record.cluster = cluster;
            record.note = note;
            record.sent_ms = now_ms;
        }
    }

    /// The coordinator's side of a submission: store what came along, stamp the time,
    /// propose.
    pub(super) fn on_submit(
        &mut self,
        now_ms: u64,
        spec: TaskSpec,
        module: Option<ByteBuf>,
        input: Option<ByteBuf>,
        out: &mut Outbox,
    ) -> ClusterResponse {
        let Situation::Member(m) = &self.situation else {
            self.metrics.refuse("submit_not_member");
            return ClusterResponse::Refused {
                reason: "not in a cluster".into(),
            };
        };
        if !m.group.is_leader() {
            return self.not_coordinator();
        }
        let cluster = m.cluster.clone();
        // The same checks as a local submission: a peer's numbers and module are not trusted.
        if let Err(reason) = check_requirements(&spec.requirements) {
            self.metrics.refuse("submit_bad_requirements");
            return ClusterResponse::Refused { reason };
        }
        if let Some(module) = &module {
            if let Err(error) = exec::check_module(module) {
                self.metrics.refuse("submit_bad_module");
                return ClusterResponse::Refused {
                    reason: error.to_string(),
                };
            }
        }
        if input.as_ref().is_some_and(|i| i.len() > MAX_INPUT_BYTES) {
            self.metrics.refuse("submit_bad_input");
            return ClusterResponse::Refused {
                reason: "input too large".into(),
            };
        }
        for (bytes, hash) in [(module, Some(spec.module)), (input, spec.input)] {
            let (Some(bytes), Some(hash)) = (bytes, hash) else {
                continue;
            };
            if crate::cluster::blobs::hash(&bytes) != hash {
                self.metrics.refuse("submit_hash_mismatch");
                return ClusterResponse::Refused {
                    reason: "a blob does not match its hash".into(),
                };
            }
            // Ahead of the raft entry that names it.
            if let Err(error) = self.put_blob(&bytes, out) {
                return ClusterResponse::Refused {
                    reason: format!("cannot store the module or input: {error}"),
                };
            }
        }
        match self.take_submission(now_ms, spec, out) {
            Ok(()) => ClusterResponse::Proposed { cluster },
            Err(reason) => ClusterResponse::Refused { reason },
        }
    }

    /// Proposes a submission as coordinator. The coordinator stamps the time it was taken,
    /// so no submitter can age its task by claiming an old submission time.
    fn take_submission(
        &mut self,
        now_ms: u64,
        mut spec: TaskSpec,
        out: &mut Outbox,
    ) -> Result<(), String> {
        let Situation::Member(m) = &self.situation else {
            return Err("not in a cluster".into());
        };
        if m.group.state().task(&spec.id).is_some() {
            return Ok(());
        }
        spec.submitted_at_ms = now_ms;
        self.propose(Command::Submit { spec }, out)
    }

    pub(super) fn on_submit_answer(
        &mut self,
        now_ms: u64,
        id: TaskId,
        response: Result<ClusterResponse, String>,
    ) {
        let note = match response {
            Ok(ClusterResponse::Proposed { cluster }) => {
                self.note(
                    id,
                    Some(cluster.clone()),
                    format!("proposed to cluster {cluster}; waiting for it to confirm"),
                    now_ms,
                );
                return;
            }
            Ok(ClusterResponse::Refused { reason }) => format!("refused: {reason}; trying again"),
            Ok(ClusterResponse::NotCoordinator { .. }) => {
                "the cluster's coordinator changed; trying again".into()
            }
            Ok(other) => format!("unexpected answer {other:?}"),
            Err(error) => {
                let Some(record) = self.submissions.records.get_mut(&id) else {
                    return;
                };
                let since = failing(record, now_ms);
                let to = record
                    .cluster
                    .as_deref()
                    .map_or("a coordinator".to_owned(), |c| {
                        format!("the coordinator of cluster {c}")
                    });
                format!(
                    "not in a cluster yet: {to} {} ({} in a row, for {}); trying again every {} s",
                    plain_failure(&error),
                    tries_text(record.failed_tries),
                    age_text(since),
                    RESEND_MS / 1000
                )
            }
        };
        let cluster = self
            .submissions
            .records
            .get(&id)
            .and_then(|r| r.cluster.clone());
        self.note(id, cluster, note, now_ms);
    }

    /// A member's answer about a task we follow.
    pub(super) fn on_status_answer(
        &mut self,
        now_ms: u64,
        id: TaskId,
        asked: &str,
        response: Result<ClusterResponse, String>,
        out: &mut Outbox,
    ) {
        match response {
            // Only the cluster asked speaks for the task.
            Ok(ClusterResponse::Status(Some(report))) if report.cluster == asked => {
                self.follow(now_ms, id, report, out)
            }
            Ok(ClusterResponse::Status(None)) => {
                let Some(record) = self.submissions.records.get_mut(&id) else {
                    return;
                };
                if record.confirmed && record.cluster.as_deref() == Some(asked) {
                    // The cluster that had it no longer does (it dissolved or was lost and
                    // came back without it): hand it on again (at least once).
                    record.confirmed = false;
                    record.note = format!("cluster {asked} no longer has it; handing it on");
                    let record = record.clone();
                    self.submissions.save(&record, out);
                }
            }
            Err(error) => {
                let Some(record) = self.submissions.records.get_mut(&id) else {
                    return;
                };
                let since = failing(record, now_ms);
                let heard = now_ms.saturating_sub(record.heard_ms);
                record.note = format!(
                    "cluster {asked} {} when asked about it ({} in a row, for {}); what is shown was heard {} ago; asking again every {} s",
                    plain_failure(&error),
                    tries_text(record.failed_tries),
                    age_text(since),
                    age_text(heard),
                    RESEND_MS / 1000
                );
            }
            _ => {}
        }
    }

    fn follow(&mut self, now_ms: u64, id: TaskId, report: TaskReport, out: &mut Outbox) {
        let Some(record) = self.submissions.records.get_mut(&id) else {
            return;
        };
        let changed = record.last.as_ref() != Some(&report) || !record.confirmed;
        record.confirmed = true;
        record.heard_ms = now_ms;
        record.cluster = Some(report.cluster.clone());
        record.note = String::new();
        record.failed_tries = 0;
        record.failing_since_ms = 0;
        if record.forwarded {
            // A forwarder's part ends once the next cluster has the task.
            self.submissions.forget(&id, out);
            return;
        }
        record.last = Some(report.clone());
        if changed {
            let record = record.clone();
            self.submissions.save(&record, out);
        }
        if let TaskState::Done { result, node, .. } = &report.state {
            let held = self.submissions.get(&id).is_some_and(|r| r.result_held);
            if !held {
                if self.blobs.contains(result) {
                    self.result_fetched(id, *result, out);
                } else {
                    self.fetch_result(id, *result, node, &report.cluster, out);
                }
            }
        }
    }

    fn fetch_result(
        &mut self,
        id: TaskId,
        result: [u8; 32],
        worker: &fogmesh_consensus::state::NodeId,
        cluster: &str,
        out: &mut Outbox,
    ) {
        let mut sources: Vec<PeerId> = Vec::new();
        if let Some((coordinator, _)) = self.announcements.get(cluster) {
            sources.push(*coordinator);
        }
        if let Ok(worker) = PeerId::from_bytes(&worker.0) {
            sources.push(worker);
        }
        if let Situation::Member(m) = &self.situation {
            sources.extend(m.coordinator_peer());
            sources.extend(m.peers.values().copied());
        }
        sources.retain(|p| self.connected.contains(p) && *p != self.me);
        if sources.is_empty() {
            return;
        }
        // A different holder each time: a new coordinator may not have it.
        self.submissions.fetch_turn += 1;
        let source = sources[(self.submissions.fetch_turn as usize) % sources.len()];
        self.ask(
            source,
            ClusterRequest::Fetch { hash: result },
            Pending::Fetch {
                hash: result,
                purpose: super::work::FetchFor::Result(id),
            },
            out,
        );
    }

    /// The result of a task submitted here is held here: remembered, and published in the
    /// replicated store (namespace `tasks`, under the task's id) when it fits a value, so
    /// any node can read it (docs/kv.md, "Shared registries").
    pub(super) fn result_fetched(&mut self, id: TaskId, hash: [u8; 32], out: &mut Outbox) {
        if !self.blobs.contains(&hash)
            || self
                .submissions
                .records
                .get(&id)
                .is_none_or(|r| r.result_held)
        {
            return;
        }
        // Read from disk first if need be (this is called again once it was).
        let Some(result) = self.blob(&hash, out) else {
            return;
        };
        if let Some(record) = self.submissions.records.get_mut(&id) {
            record.result_held = true;
            let record = record.clone();
            self.submissions.save(&record, out);
        }
        if result.len() <= fogmesh_kv::MAX_VALUE_BYTES {
            out.push(Effect::Notice(Notice::share(super::TaskResult {
                task: id.to_string(),
                result,
            })));
        }
    }

    /// Results this node submitted for, waiting for `hash` to be read: held now.
    pub(super) fn resume_results(&mut self, hash: [u8; 32], out: &mut Outbox) {
        let waiting: Vec<TaskId> = self
            .submissions
            .own()
            .filter(|r| !r.result_held)
            .filter(|r| {
                matches!(&r.last, Some(TaskReport { state: TaskState::Done { result, .. }, .. }) if *result == hash)
            })
            .map(|r| r.spec.id)
            .collect();
        for id in waiting {
            self.result_fetched(id, hash, out);
        }
    }

    /// Once a second: hand on what no cluster has confirmed; follow what is under way.
    pub(super) fn step_submissions(&mut self, now_ms: u64, out: &mut Outbox) {
        let ids: Vec<TaskId> = self
            .submissions
            .records
            .values()
            .filter(|r| now_ms.saturating_sub(r.sent_ms) >= RESEND_MS)
            .filter(|r| {
                !(r.result_held
                    || r.last.as_ref().is_some_and(|l| {
                        l.state.is_terminal() && !matches!(l.state, TaskState::Done { .. })
                    }))
            })
            .map(|r| r.spec.id)
            .collect();
        let mut asked = 0;
        let silent_after = self.config.formation.reform_after_ms;
        for id in ids {
            // A member of the task's cluster reads its own replica.
            if let Some(report) = self.task_report(&id) {
                self.follow(now_ms, id, report, out);
                if let Some(record) = self.submissions.records.get_mut(&id) {
                    record.sent_ms = now_ms;
                }
                continue;
            }
            let Some(record) = self.submissions.records.get(&id).cloned() else {
                continue;
            };
            if let Some(cluster) = record.cluster.clone() {
                // A confirmed task whose cluster has not answered for as long as it takes to
                // call a cluster lost is handed on again (at least once).
                if record.confirmed && now_ms.saturating_sub(record.heard_ms) > silent_after {
                    if let Some(r) = self.submissions.records.get_mut(&id) {
                        r.confirmed = false;
                        r.note = format!("cluster {cluster} is silent; handing it on");
                    }
                    self.hand_on(now_ms, id, out);
                    continue;
                }
                // Ask the cluster it went to whether it has it (a bounded number per round,
                // so polls never crowd out joins, reports and fetches).
                if let Some((coordinator, _)) = self.announcements.get(&cluster) {
                    let coordinator = *coordinator;
                    if self.connected.contains(&coordinator) && asked < MAX_STATUS_POLLS {
                        asked += 1;
                        self.ask(
                            coordinator,
                            ClusterRequest::Status { task: id },
                            Pending::Status {
                                task: id,
                                cluster: cluster.clone(),
                            },
                            out,
                        );
                    }
                }
                if record.confirmed {
                    if let Some(r) = self.submissions.records.get_mut(&id) {
                        r.sent_ms = now_ms;
                    }
                    continue;
                }
            }
            self.hand_on(now_ms, id, out);
        }
    }

    /// Where a task is, as this node's replica knows it.
    pub(super) fn task_report(&self, id: &TaskId) -> Option<TaskReport> {
        let Situation::Member(m) = &self.situation else {
            return None;
        };
        let task = m.group.state().task(id)?;
        let waiting = matches!(task.state, TaskState::Queued { .. })
            .then(|| fogmesh_consensus::scheduler::waiting(m.group.state(), &task.spec))
            .flatten()
            .map(|w| w.to_string());
        Some(TaskReport {
            cluster: m.cluster.clone(),
            state: task.state.clone(),
            attempts: task.attempts,
            waiting,
        })
    }

    /// `task cancel`: the submitter asks its task's cluster to cancel it.
    pub fn cancel(&mut self, id: &TaskId, out: &mut Outbox) -> Result<String, String> {
        let command = Command::Cancel { task: *id };
        if let Some(report) = self.task_report(id) {
            if report.state.is_terminal() {
                return Err("the task already ended".into());
            }
            let Situation::Member(m) = &self.situation else {
                return Err("not in a cluster".into());
            };
            let is_submitter = m
                .group
                .state()
                .task(id)
                .is_some_and(|t| t.spec.submitter == self.me.to_bytes());
            if !is_submitter {
                return Err("only the task's submitter may cancel it".into());
            }
            self.propose(command, out)?;
            return Ok("cancel proposed".into());
        }
        let record = self
            .submissions
            .records
            .get(id)
            .cloned()
            .ok_or_else(|| "no such task here".to_string())?;
        let cluster = record.cluster.ok_or_else(|| {
            "no cluster has the task yet; it cannot be cancelled there".to_string()
        })?;
        let (coordinator, _) = self
            .announcements
            .get(&cluster)
            .ok_or_else(|| format!("cluster {cluster} is not in reach"))?;
        let coordinator = *coordinator;
        if self.ask(
            coordinator,
            ClusterRequest::Propose {
                cluster: cluster.clone(),
                command,
            },
            Pending::Report,
            out,
        ) {
            Ok(format!("cancel sent to cluster {cluster}"))
        } else {
            Err("too many requests outstanding; try again".into())
        }
    }

    /// `task result`: the output of a finished task to `reply`, if this node holds it (read
    /// from disk first if need be).
    pub fn result(&mut self, id: &TaskId, reply: ResultReply, out: &mut Outbox) {
        let hash = match self.result_hash(id) {
            Ok(hash) => hash,
            Err(reason) => {
                let _ = reply.send(Err(reason));
                return;
            }
        };
        match self.blob(&hash, out) {
            Some(bytes) => {
                let _ = reply.send(Ok(bytes));
            }
            None => self.wait_for_blob(hash, super::blob_io::BlobWaiter::Result(reply), out),
        }
    }

    fn result_hash(&self, id: &TaskId) -> Result<[u8; 32], String> {
        let state = self
            .task_report(id)
            .map(|r| r.state)
            .or_else(|| {
                self.submissions
                    .get(id)
                    .and_then(|r| r.last.as_ref().map(|l| l.state.clone()))
            })
            .ok_or_else(|| "no such task here".to_string())?;
        match state {
            TaskState::Done { result, .. } if self.blobs.contains(&result) => Ok(result),
            TaskState::Done { .. } => {
                Err("the task is done; its result is being fetched, try again shortly".into())
            }
            TaskState::Failed { reason } => Err(format!("the task failed: {reason}")),
            TaskState::Cancelled => Err("the task was cancelled".into()),
            _ => Err("the task has not finished yet".into()),
        }
    }
}

/// What a submission's numbers must be, wherever it comes from.
fn check_requirements(r: &fogmesh_consensus::task::Requirements) -> Result<(), String> {
    if r.cpu_millicores == 0 || r.memory_mb == 0 || r.duration_ms == 0 {
        return Err("cpu, memory and duration must be above zero".into());
    }
    if r.duration_ms > MAX_DURATION_MS {
        return Err(format!(
            "a duration of {} ms; at most {MAX_DURATION_MS} (one hour)",
            r.duration_ms
        ));
    }
    Ok(())
}

/// Counts one more failed delivery of `record`; returns for how long deliveries have failed.
fn failing(record: &mut SubmittedRecord, now_ms: u64) -> u64 {
    record.failed_tries = record.failed_tries.saturating_add(1);
    if record.failing_since_ms == 0 {
        record.failing_since_ms = now_ms;
    }
    now_ms.saturating_sub(record.failing_since_ms)
}

/// A failed request in words a submitter can act on.
fn plain_failure(error: &str) -> String {
    if error.contains("Timeout") {
        format!(
            "gave no answer within {} s (cut off, or too busy)",
            crate::cluster::protocol::REQUEST_TIMEOUT.as_secs()
        )
    } else if error.contains("Dial") || error.contains("onnection") {
        format!("could not be reached ({error})")
    } else {
        format!("failed ({error})")
    }
}

fn tries_text(n: u32) -> String {
    if n == 1 {
        "1 try".into()
    } else {
        format!("{n} tries")
    }
}

/// "12 s", "3 min".
fn age_text(ms: u64) -> String {
    if ms >= 120_000 {
        format!("{} min", ms / 60_000)
    } else {
        format!("{} s", ms / 1000)
    }
}
