//! The replicated key-value store as a capability (docs/kv.md).
//!
//! This is the swarm task's side of the store, and it never touches the replica: every
//! read and write of it is a job on the storage task ([`Lane::Storage`]) that locks the
//! [`KvCore`] and runs there, in queue order with every other write; its output comes back
//! through [`Capability::on_job`], and only then does the capability answer, publish or
//! tell. What stays here is routing and scheduling:
//!
//! - Local writes: a durable job signs, stamps and merges them, so its answer means "on
//!   disk"; then the write is answered and published as gossip [`Delta`]s. At most
//!   [`MAX_PENDING_ACKS`] writes wait for their job at once; beyond, a write is refused as
//!   busy (the control API queues callers before that: see `runtime::handle`).
//! - Remote entries: a delta is decoded and bounded here, then verified and merged by a job
//!   ([`KvCore::take_remote`]), and its gossip verdict given once that is done
//!   ([`Verdict::Later`]): rejected only for forgeries, ignored when refused for this
//!   node's own view.
//! - Anti-entropy with every direct neighbour: on connect and every [`SYNC_EVERY_MS`], at
//!   most [`MAX_SESSIONS`] sessions at once, each with [`SESSION_IN_FLIGHT`] requests out
//!   ([`fogmesh_kv::sync`]); the sessions' state lives in the core, their schedule here. A
//!   session that fails or stalls for [`SESSION_TIMEOUT_MS`] is dropped and started again
//!   at the next round. Neighbours' requests are answered by a job.
//! - Watchers are the event stream's subscribers: every change of a key's winner is a
//!   `kv_changed` event, in merge order (so in order per key).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use fogmesh_kv::sync::{self as kv_sync, SyncRequest, SyncResponse, BATCH_BYTES, LAN_BATCH_BYTES};
use fogmesh_kv::Entry;
use fogmesh_transports::LinkKind;
use libp2p::gossipsub::MessageAcceptance;
use libp2p::PeerId;
use serde_bytes::ByteBuf;
use tokio::sync::oneshot;

use crate::cluster::service::TaskResult;
use crate::kv::core::{KvCore, Step, Taken, Written};
use crate::kv::protocol::{self, Delta, DELTA_BYTES, TOPIC};
use crate::runtime::capability::{
    Capability, Effect, GossipId, GossipIn, InboundId, InboundRequest, JobOutput, Lane, Notice,
    Outbox, Protocol, ReasonLabel, Response, TimerId, Token, Verdict,
};
use crate::runtime::mesh_time::MeshClock;

pub use crate::kv::core::{
    AccessPolicy, KvMetrics, KvWriteError, MAX_BATCH_WRITES, RESERVED_NAMESPACE, TASKS_NAMESPACE,
};
pub use crate::kv::view::{KeyView, KvChanged, KvConflict, KvWrite, KvWritten, VersionView};

const TICK: TimerId = TimerId(0);

/// Anti-entropy with each neighbour at least this often.
pub const SYNC_EVERY_MS: u64 = 30_000;
/// Sessions this node runs at once (as the asking side). One: what this node lacks it
/// would otherwise fetch from several neighbours at the same time; a session with a
/// neighbour that holds nothing new costs one round trip, so waiting for one is short.
pub const MAX_SESSIONS: usize = 1;
/// Requests one session keeps out.
pub const SESSION_IN_FLIGHT: usize = 4;
/// A session with no answer for this long is dropped (one session runs at a time, so a
/// stalled one must not hold the others up for long).
pub const SESSION_TIMEOUT_MS: u64 = 10_000;
/// How often the capability looks at its sessions.
const TICK_MS: u64 = 1_000;
/// After learning something by sync, the other neighbours are synced this soon.
const NUDGE_MS: u64 = 200;
/// Writes waiting for their job; beyond, writes are refused as busy.
pub const MAX_PENDING_ACKS: usize = 1_024;

/// The answer to a write: once on disk, or why not.
pub type KvReply = oneshot::Sender<Result<KvWritten, KvWriteError>>;

/// Bytes one sync frame takes on the wire: its body and the 4-byte length prefix.
fn frame_bytes(body: usize) -> u64 {
    body as u64 + 4
}

/// What a job's output is for.
#[derive(Debug)]
enum Pending {
    /// A local write (answered if someone waits).
    Write(Option<KvReply>),
    /// A gossip delta waiting for its verdict.
    Delta(GossipId),
    /// A neighbour's sync request waiting for its answer.
    Answer {
        id: InboundId,
        peer: PeerId,
    },
    /// A step of this node's session with a neighbour.
    Session(PeerId),
    Get(oneshot::Sender<Result<Option<KeyView>, String>>),
    List(oneshot::Sender<Result<Vec<KeyView>, String>>),
    /// Nothing waits (a session's state dropped).
    Nothing,
}

/// What a job did, by kind.
enum Done {
    Written(Result<Written, KvWriteError>),
    Taken(Taken),
    Answered(SyncResponse, Taken),
    Step(Step),
    Got(Result<Option<KeyView>, String>),
    Listed(Result<Vec<KeyView>, String>),
    Nothing,
}

/// One anti-entropy session this node runs, as scheduled here.
#[derive(Debug)]
struct Session {
    last_progress_ms: u64,
    /// Request token → the session's request id.
    requests: HashMap<Token, u64>,
}

/// See the module docs.
pub struct KvService {
    /// Locked only inside storage jobs.
    core: Arc<Mutex<KvCore>>,
    /// The replica could not be opened: the node goes to safe mode at start.
    broken: Option<String>,
    metrics: KvMetrics,
    next_token: Token,
    jobs: HashMap<Token, Pending>,
    /// Writes waiting for their job.
    pending_writes: usize,
    neighbours: HashSet<PeerId>,
    /// Neighbours over Bluetooth: sync messages to them stay within [`BATCH_BYTES`].
    radio_links: HashSet<PeerId>,
    /// When each neighbour is next due for a session.
    due: HashMap<PeerId, u64>,
    /// Neighbours whose next session also pushes (this node learned something they may
    /// lack); other sessions only pull.
    nudged: HashSet<PeerId>,
    sessions: HashMap<PeerId, Session>,
    /// How far this node's wall clock is from the mesh's: hybrid clocks are stamped and
    /// judged in mesh time (docs/kv.md, "Clocks").
    mesh_clock: MeshClock,
}

impl std::fmt::Debug for KvService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvService")
            .field("broken", &self.broken)
            .field("jobs", &self.jobs.len())
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

fn lock(core: &Mutex<KvCore>) -> MutexGuard<'_, KvCore> {
    // A job that panicked left the core as it was between two entries: still usable.
    core.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl KvService {
    /// The capability over `core` (opened at start-up).
    pub fn new(core: KvCore) -> Self {
        let broken = core.broken().map(str::to_owned);
        let metrics = core.metrics().clone();
        KvService {
            core: Arc::new(Mutex::new(core)),
            broken,
            metrics,
            next_token: 0,
            jobs: HashMap::new(),
            pending_writes: 0,
            neighbours: HashSet::new(),
            radio_links: HashSet::new(),
            due: HashMap::new(),
            nudged: HashSet::new(),
            sessions: HashMap::new(),
            mesh_clock: MeshClock::default(),
        }
    }

    pub fn metrics(&self) -> &KvMetrics {
        &self.metrics
    }

    /// Runs `work` on the core as a storage job; its output goes to `pending`.
    fn job(
        &mut self,
        durable: bool,
        pending: Pending,
        work: impl FnOnce(&mut KvCore) -> Done + Send + 'static,
        out: &mut Outbox,
    ) {
        self.next_token += 1;
        let token = self.next_token;
        self.jobs.insert(token, pending);
        let core = Arc::clone(&self.core);
        out.push(Effect::Job {
            lane: Lane::Storage { durable },
            token,
            job: Box::new(move || Box::new(work(&mut lock(&core))) as JobOutput),
        });
    }

    /// Writes `writes` (signed by this node); answers `reply` once they are on disk, or at
    /// once with why not.
    pub fn write(&mut self, reply: Option<KvReply>, writes: Vec<KvWrite>, out: &mut Outbox) {
        if let Some(reason) = &self.broken {
            if let Some(reply) = reply {
                let _ = reply.send(Err(KvWriteError::Store(reason.clone())));
            }
            return;
        }
        if self.pending_writes >= MAX_PENDING_ACKS {
            if let Some(reply) = reply {
                let _ = reply.send(Err(KvWriteError::Busy));
            }
            return;
        }
        self.pending_writes += 1;
        let wall_ms = self.mesh_ms(out);
        self.job(
            true,
            Pending::Write(reply),
            move |core| Done::Written(core.write(wall_ms, writes)),
            out,
        );
    }

    /// A key as this node holds it, answered on `reply`.
    pub fn get(
        &mut self,
        reply: oneshot::Sender<Result<Option<KeyView>, String>>,
        namespace: String,
        key: String,
        out: &mut Outbox,
    ) {
        self.job(
            false,
            Pending::Get(reply),
            move |core| Done::Got(core.get(&namespace, &key)),
            out,
        );
    }

    /// Keys of `namespace` starting with `prefix`, after `after`, at most `limit`; deleted
    /// ones only if `deleted`; answered on `reply`.
    #[allow(clippy::too_many_arguments)]
    pub fn list(
        &mut self,
        reply: oneshot::Sender<Result<Vec<KeyView>, String>>,
        namespace: String,
        prefix: String,
        after: Option<String>,
        limit: usize,
        deleted: bool,
        out: &mut Outbox,
    ) {
        self.job(
            false,
            Pending::List(reply),
            move |core| {
                Done::Listed(core.list(&namespace, &prefix, after.as_deref(), limit, deleted))
            },
            out,
        );
    }

    /// Publishes entries as deltas of at most [`DELTA_BYTES`]; an entry too large for a
    /// delta starts anti-entropy with every neighbour instead.
    fn publish(&mut self, entries: Vec<Entry>, credentials: &[ByteBuf], out: &mut Outbox) {
        let mut batch = Vec::new();
        let mut used = 0;
        let mut too_large = false;
        for entry in entries {
            let size = kv_sync::entry_size(&entry);
            if size > DELTA_BYTES {
                too_large = true;
                continue;
            }
            if used + size > DELTA_BYTES {
                publish_delta(std::mem::take(&mut batch), credentials, out);
                used = 0;
            }
            used += size;
            batch.push(entry);
        }
        if !batch.is_empty() {
            publish_delta(batch, credentials, out);
        }
        if too_large {
            for peer in self.neighbours.clone() {
                self.due.insert(peer, 0);
            }
        }
    }

    /// What a job's entries did: events out, safe mode if the replica failed, the other
    /// neighbours nudged when something was learned from `from`.
    fn taken(&mut self, now_ms: u64, taken: &mut Taken, from: Option<PeerId>, out: &mut Outbox) {
        for event in taken.events.drain(..) {
            out.event(event);
        }
        if let Some(reason) = taken.store_failed.take() {
            out.push(Effect::StoreFailed(reason));
        }
        if let (Some(from), true) = (from, taken.merged > 0) {
            self.nudge_neighbours(now_ms, from);
        }
    }

    /// Neighbours other than `from` sync soon: this node just learned something they may
    /// lack (sync entries are not re-gossiped, so this is how they travel on, hop by hop).
    fn nudge_neighbours(&mut self, now_ms: u64, from: PeerId) {
        for peer in &self.neighbours {
            if *peer != from {
                let at = self.due.entry(*peer).or_insert(now_ms + NUDGE_MS);
                *at = (*at).min(now_ms + NUDGE_MS);
                self.nudged.insert(*peer);
            }
        }
    }

    /// Mesh time now: the wall clock corrected by the mesh-time estimate.
    fn mesh_ms(&self, out: &Outbox) -> u64 {
        self.mesh_clock.mesh_ms(out.wall_ms())
    }

    fn budget(&self, peer: &PeerId) -> usize {
        if self.radio_links.contains(peer) {
            BATCH_BYTES
        } else {
            LAN_BATCH_BYTES
        }
    }

    /// A session's step came back: send its requests, end it if it is over.
    fn on_step(&mut self, now_ms: u64, peer: PeerId, mut step: Step, out: &mut Outbox) {
        self.taken(now_ms, &mut step.taken, Some(peer), out);
        if !self.sessions.contains_key(&peer) {
            // Ended meanwhile (timed out, disconnected): what it brought is taken, no more.
            return;
        }
        if step.malformed {
            return self.end_session(now_ms, peer, "malformed", out);
        }
        for (id, request) in step.requests {
            let data = match fogmesh_wire::codec::encode(&request) {
                Ok(data) => data,
                Err(error) => {
                    tracing::warn!(%error, "kv sync request not encodable");
                    continue;
                }
            };
            self.next_token += 1;
            let token = self.next_token;
            if let Some(session) = self.sessions.get_mut(&peer) {
                session.requests.insert(token, id);
            }
            self.metrics.sync_bytes_sent.inc_by(frame_bytes(data.len()));
            out.push(Effect::Send {
                peer,
                protocol: protocol::PROTOCOL,
                data,
                token,
            });
        }
        if step.done {
            self.end_session(now_ms, peer, "completed", out);
        }
    }

    fn end_session(&mut self, now_ms: u64, peer: PeerId, outcome: &'static str, out: &mut Outbox) {
        if self.sessions.remove(&peer).is_none() {
            return;
        }
        self.metrics
            .sync_sessions
            .get_or_create(&ReasonLabel { reason: outcome })
            .inc();
        if outcome != "completed" && outcome != "malformed" {
            // The core still holds the session's state: drop it there.
            self.job(
                false,
                Pending::Nothing,
                move |core| {
                    core.end_session(&peer);
                    Done::Nothing
                },
                out,
            );
        }
        if self.neighbours.contains(&peer) {
            let next = if outcome == "completed" {
                now_ms + SYNC_EVERY_MS
            } else {
                // Resumed at the next round: what was exchanged now compares equal.
                now_ms + SYNC_EVERY_MS / 6
            };
            // A nudge during the session may have asked for an earlier one.
            let at = self.due.entry(peer).or_insert(next);
            *at = (*at).min(next);
        }
        self.start_due(now_ms, out);
    }

    /// Starts sessions with neighbours that are due, up to [`MAX_SESSIONS`].
    fn start_due(&mut self, now_ms: u64, out: &mut Outbox) {
        let mut due: Vec<(u64, PeerId)> = self
            .due
            .iter()
            .filter(|(p, at)| **at <= now_ms && !self.sessions.contains_key(p))
            .map(|(p, at)| (*at, *p))
            .collect();
        due.sort();
        for (_, peer) in due {
            if self.sessions.len() >= MAX_SESSIONS {
                break;
            }
            self.due.remove(&peer);
            let push = self.nudged.remove(&peer);
            self.sessions.insert(
                peer,
                Session {
                    last_progress_ms: now_ms,
                    requests: HashMap::new(),
                },
            );
            let budget = self.budget(&peer);
            self.job(
                false,
                Pending::Session(peer),
                move |core| Done::Step(core.start_session(peer, push, budget, SESSION_IN_FLIGHT)),
                out,
            );
        }
    }

    /// A new neighbour: sync with it at once (it may have been away). Over Bluetooth, sync
    /// messages to it stay within [`BATCH_BYTES`].
    fn on_connected(&mut self, now_ms: u64, peer: PeerId, link: LinkKind, out: &mut Outbox) {
        if link == LinkKind::Radio {
            self.radio_links.insert(peer);
        } else {
            self.radio_links.remove(&peer);
        }
        if self.broken.is_none() && self.neighbours.insert(peer) {
            self.due.insert(peer, now_ms);
            self.start_due(now_ms, out);
        }
    }

    /// The answer to a sync request this node sent (or why there is none).
    fn on_sync_response(
        &mut self,
        now_ms: u64,
        peer: PeerId,
        token: Token,
        response: Result<SyncResponse, String>,
        out: &mut Outbox,
    ) {
        let Some(session) = self.sessions.get_mut(&peer) else {
            return;
        };
        let Some(id) = session.requests.remove(&token) else {
            return;
        };
        session.last_progress_ms = now_ms;
        let response = match response {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!(peer_id = %peer, %error, "kv sync request failed");
                return self.end_session(now_ms, peer, "failed", out);
            }
        };
        let (wall_ms, budget) = (self.mesh_ms(out), self.budget(&peer));
        self.job(
            false,
            Pending::Session(peer),
            move |core| {
                Done::Step(core.session_answer(
                    wall_ms,
                    peer,
                    id,
                    response,
                    budget,
                    SESSION_IN_FLIGHT,
                ))
            },
            out,
        );
    }

    fn on_delta(&mut self, data: &[u8], id: &GossipId, out: &mut Outbox) -> Verdict {
        if self.broken.is_some() {
            return Verdict::Now(MessageAcceptance::Ignore);
        }
        let delta: Delta = match fogmesh_wire::codec::decode_bounded(
            data,
            fogmesh_wire::envelope::MAX_ENVELOPE_LEN,
        ) {
            Ok(delta) => delta,
            Err(_) => {
                self.metrics.refuse("malformed_delta");
                return Verdict::Now(MessageAcceptance::Reject);
            }
        };
        if delta.entries.len() > kv_sync::MAX_ENTRIES_PER_MESSAGE
            || delta.credentials.len() > kv_sync::MAX_CREDENTIALS
        {
            self.metrics.refuse("malformed_delta");
            return Verdict::Now(MessageAcceptance::Reject);
        }
        let wall_ms = self.mesh_ms(out);
        self.job(
            false,
            Pending::Delta(id.clone()),
            move |core| {
                Done::Taken(core.take_remote(wall_ms, delta.entries, &delta.credentials, "gossip"))
            },
            out,
        );
        Verdict::Later
    }

    fn tick(&mut self, now_ms: u64, out: &mut Outbox) {
        let stalled: Vec<PeerId> = self
            .sessions
            .iter()
            .filter(|(_, s)| now_ms.saturating_sub(s.last_progress_ms) > SESSION_TIMEOUT_MS)
            .map(|(p, _)| *p)
            .collect();
        for peer in stalled {
            self.end_session(now_ms, peer, "timed_out", out);
        }
        self.start_due(now_ms, out);
        out.timer(now_ms + TICK_MS, TICK);
    }
}

fn publish_delta(entries: Vec<Entry>, credentials: &[ByteBuf], out: &mut Outbox) {
    let delta = Delta {
        entries,
        credentials: credentials.to_vec(),
    };
    match fogmesh_wire::codec::encode(&delta) {
        Ok(data) => out.push(Effect::Publish {
            topic: TOPIC.into(),
            data,
        }),
        Err(error) => tracing::warn!(%error, "kv delta not encodable"),
    }
}

/// A gossip verdict from what became of a delta's entries.
pub(crate) fn verdict_of(taken: &Taken) -> MessageAcceptance {
    if taken.in_bad_faith > 0 {
        // Forged or broken: whoever spreads it is penalised.
        MessageAcceptance::Reject
    } else if taken.refused > 0 && taken.merged == 0 {
        // Refused for what this node knows (its clock, its credentials): not spread from
        // here, and nobody penalised.
        MessageAcceptance::Ignore
    } else {
        MessageAcceptance::Accept
    }
}

impl Capability for KvService {
    fn name(&self) -> &'static str {
        "kv"
    }

    fn topics(&self) -> Vec<String> {
        vec![TOPIC.into()]
    }

    fn protocols(&self) -> Vec<Protocol> {
        vec![protocol::SPEC]
    }

    fn on_start(&mut self, now_ms: u64, out: &mut Outbox) {
        if let Some(reason) = &self.broken {
            out.push(Effect::StoreFailed(reason.clone()));
            return;
        }
        out.timer(now_ms + TICK_MS, TICK);
    }

    fn on_request(&mut self, _now_ms: u64, request: InboundRequest, out: &mut Outbox) {
        self.metrics
            .sync_bytes_received
            .inc_by(frame_bytes(request.data.len()));
        let sync = match fogmesh_wire::codec::decode_bounded::<SyncRequest>(
            &request.data,
            kv_sync::MAX_MESSAGE_BYTES,
        ) {
            Ok(sync) => sync,
            Err(_) => {
                self.metrics.refuse("malformed_request");
                let refused = SyncResponse::Refused {
                    reason: "malformed_request".into(),
                };
                return respond(&self.metrics, request.id, &refused, out);
            }
        };
        let wall_ms = self.mesh_ms(out);
        self.job(
            false,
            Pending::Answer {
                id: request.id,
                peer: request.peer,
            },
            move |core| {
                let (response, taken) = core.answer(wall_ms, sync);
                Done::Answered(response, taken)
            },
            out,
        );
    }

    fn on_response(&mut self, now_ms: u64, response: Response, out: &mut Outbox) {
        let answer = response.result.and_then(|bytes| {
            self.metrics
                .sync_bytes_received
                .inc_by(frame_bytes(bytes.len()));
            fogmesh_wire::codec::decode_bounded::<SyncResponse>(&bytes, kv_sync::MAX_MESSAGE_BYTES)
                .map_err(|e| format!("unreadable answer: {e}"))
        });
        self.on_sync_response(now_ms, response.peer, response.token, answer, out);
    }

    fn on_gossip(&mut self, _now_ms: u64, msg: GossipIn<'_>, out: &mut Outbox) -> Verdict {
        self.on_delta(msg.data, msg.id, out)
    }

    fn on_job(
        &mut self,
        now_ms: u64,
        token: Token,
        output: Result<JobOutput, String>,
        out: &mut Outbox,
    ) {
        let Some(pending) = self.jobs.remove(&token) else {
            return;
        };
        let done = match output.map(|o| o.downcast::<Done>()) {
            Ok(Ok(done)) => *done,
            Ok(Err(_)) => Done::Nothing,
            Err(error) => {
                // The storage task failed the job (it panicked, or a durable commit
                // failed): the node goes to safe mode; a waiting write is told.
                out.push(Effect::StoreFailed(format!("kv: {error}")));
                if let Pending::Write(reply) = pending {
                    self.pending_writes = self.pending_writes.saturating_sub(1);
                    if let Some(reply) = reply {
                        let _ =
                            reply.send(Err(KvWriteError::Store(format!("not stored: {error}"))));
                    }
                }
                return;
            }
        };
        match (pending, done) {
            (Pending::Write(reply), Done::Written(written)) => {
                self.pending_writes = self.pending_writes.saturating_sub(1);
                let answer = written.map(|mut written| {
                    for event in written.events.drain(..) {
                        out.event(event);
                    }
                    // Published once on disk: no other node holds a write this one may lose.
                    self.publish(written.entries, &written.credentials, out);
                    written.written
                });
                if let Err(KvWriteError::Store(reason)) = &answer {
                    out.push(Effect::StoreFailed(format!("kv store: {reason}")));
                }
                if let Some(reply) = reply {
                    let _ = reply.send(answer);
                }
            }
            (Pending::Delta(id), Done::Taken(mut taken)) => {
                let acceptance = verdict_of(&taken);
                self.taken(now_ms, &mut taken, None, out);
                out.push(Effect::GossipVerdict { id, acceptance });
            }
            (Pending::Answer { id, peer }, Done::Answered(response, mut taken)) => {
                self.taken(now_ms, &mut taken, Some(peer), out);
                respond(&self.metrics, id, &response, out);
            }
            (Pending::Session(peer), Done::Step(step)) => self.on_step(now_ms, peer, step, out),
            (Pending::Get(reply), Done::Got(result)) => {
                let _ = reply.send(result);
            }
            (Pending::List(reply), Done::Listed(result)) => {
                let _ = reply.send(result);
            }
            _ => {}
        }
    }

    fn on_timer(&mut self, now_ms: u64, timer: TimerId, out: &mut Outbox) {
        if timer == TICK {
            self.tick(now_ms, out);
        }
    }

    fn on_notice(&mut self, now_ms: u64, notice: &Notice, out: &mut Outbox) {
        match notice {
            Notice::PeerConnected { peer, link } => self.on_connected(now_ms, *peer, *link, out),
            Notice::PeerDisconnected(peer) => {
                self.neighbours.remove(peer);
                self.due.remove(peer);
                self.nudged.remove(peer);
                self.radio_links.remove(peer);
                self.end_session(now_ms, *peer, "disconnected", out);
            }
            shared => {
                if let Some(clock) = shared.shared::<MeshClock>() {
                    self.mesh_clock = *clock;
                }
                if let Some(done) = shared.shared::<TaskResult>() {
                    // Nobody waits for this write; without `writer` it is simply not made.
                    let write = KvWrite {
                        namespace: TASKS_NAMESPACE.into(),
                        key: done.task.clone(),
                        value: Some(done.result.clone()),
                    };
                    self.write(None, vec![write], out);
                }
            }
        }
    }
}

/// Answers a neighbour's sync request.
fn respond(metrics: &KvMetrics, id: InboundId, response: &SyncResponse, out: &mut Outbox) {
    match fogmesh_wire::codec::encode(response) {
        Ok(data) => {
            metrics.sync_bytes_sent.inc_by(frame_bytes(data.len()));
            out.respond(id, data);
        }
        Err(error) => tracing::warn!(%error, "kv sync answer not encodable"),
    }
}

#[cfg(test)]
mod tests;
