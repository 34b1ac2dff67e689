//! The replicated key-value store as a capability (docs/kv.md).
//!
//! - Local writes: signed with the node's key, stamped with its hybrid logical clock,
//!   merged into the replica ([`KvStore`]), acknowledged once the storage task has flushed
//!   them ([`Effect::PersistDurable`] of an empty batch; writes waiting together share one
//!   flush), and published at once as a gossip [`Delta`].
//! - Remote entries (deltas, sync answers, pushes) are verified one by one before they are
//!   merged ([`KvService::admit`]): shape and caps, the author's signature, the author's
//!   role from its ticket (in a mesh with tickets), and the clock's skew. A refused entry
//!   is counted by reason and never merged; the rest of its message still is.
//! - Anti-entropy with every direct neighbour: on connect and every [`SYNC_EVERY_MS`], at
//!   most [`MAX_SESSIONS`] sessions at once, each with [`SESSION_IN_FLIGHT`] requests out
//!   ([`fogmesh_kv::sync`]). A session that fails or stalls for
//!   [`SESSION_TIMEOUT_MS`] is dropped and started again at the next round.
//! - Watchers are the event stream's subscribers: every change of a key's winner is a
//!   `kv_changed` event, in merge order (so in order per key); the stream is bounded and
//!   tells a slow reader what it lost with a `lagged` marker.
//!
//! Like the cluster service, this service reads and writes its sled tables directly (the
//! store is its state; sled reads and buffered writes take microseconds); only the flush
//! that makes writes durable goes through the storage task.
//!
//! Access (docs/kv.md, "Access"): in a mesh with tickets, writing takes the role `writer`,
//! and the namespace [`RESERVED_NAMESPACE`] takes `admin`. In an open mesh anyone writes.
//! Entries from a revoked author are refused from the moment this node knows of the
//! revocation; those it merged before stay.

use std::collections::{HashMap, HashSet};

use crate::kv::replica::KvStore;
use fogmesh_kv::sync::{
    self as kv_sync, answer, check_request, Replica, SyncRequest, SyncResponse, SyncSession,
    BATCH_BYTES, LAN_BATCH_BYTES,
};
use fogmesh_kv::{self as kv, Entry, Hlc, Merged, Version};
use fogmesh_store::Store;
use fogmesh_transports::secure::AdmissionPolicy;
use fogmesh_transports::secure::HandshakeError;
use libp2p::gossipsub::MessageAcceptance;
use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::cluster::service::TaskResult;
use crate::kv::protocol::{self, Delta, DELTA_BYTES, TOPIC};
use crate::runtime::capability::{
    Capability, Effect, GossipIn, InboundRequest, Notice, Outbox, Protocol, ReasonLabel, Response,
    TimerId, Token, Verdict,
};
use fogmesh_store::Batch;
use fogmesh_transports::LinkKind;
use tokio::sync::oneshot;

mod verify;
mod view;

use verify::{needed_role, public_key_of, verify_signatures};
use view::{author_text, changed_event, hlc_text};
pub use view::{KeyView, KvChanged, KvConflict, KvWrite, KvWritten, VersionView};

const TICK: TimerId = TimerId(0);

/// The answer to a write: once on disk, or why not.
pub type KvReply = oneshot::Sender<Result<KvWritten, KvWriteError>>;

/// Bytes one sync frame takes on the wire: its body and the 4-byte length prefix.
fn frame_bytes(body: usize) -> u64 {
    body as u64 + 4
}

/// Only authors whose ticket grants `admin` write here.
pub const RESERVED_NAMESPACE: &str = "mesh";
/// Where a node publishes the results of the tasks it submitted (under the task's id).
pub const TASKS_NAMESPACE: &str = "tasks";
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
/// How often the service looks at its sessions.
const TICK_MS: u64 = 1_000;
/// Authors whose decoded keys are kept.
const MAX_AUTHOR_KEYS: usize = 4096;
/// After learning something by sync, the other neighbours are synced this soon.
const NUDGE_MS: u64 = 200;
/// Writes of one control request.
pub const MAX_BATCH_WRITES: usize = 10_000;
/// Control requests waiting for their flush; beyond, writes are refused as busy.
pub const MAX_PENDING_ACKS: usize = 1_024;

/// Counters and gauges of the store.
#[derive(Debug, Clone, Default)]
pub struct KvMetrics {
    pub keys: Gauge,
    pub value_bytes: Gauge,
    pub writes: Counter,
    /// Remote entries merged, by how they came (`gossip`, `sync`, `push`).
    pub merged: Family<ReasonLabel, Counter>,
    pub conflicts: Counter,
    /// Remote entries and sync messages refused, by reason.
    pub refused: Family<ReasonLabel, Counter>,
    pub sync_sessions: Family<ReasonLabel, Counter>,
    /// Sync frames' bytes (length prefixes included), both roles.
    pub sync_bytes_sent: Counter,
    pub sync_bytes_received: Counter,
}

impl KvMetrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "kv_keys",
            "Keys held (deleted ones included)",
            self.keys.clone(),
        );
        registry.register(
            "kv_value_bytes",
            "Bytes of live values held",
            self.value_bytes.clone(),
        );
        registry.register("kv_writes", "Local writes", self.writes.clone());
        registry.register(
            "kv_merged",
            "Remote entries merged, by path",
            self.merged.clone(),
        );
        registry.register(
            "kv_conflicts",
            "Merges where versions by two authors met",
            self.conflicts.clone(),
        );
        registry.register(
            "kv_refused",
            "Remote entries and sync messages refused, by reason",
            self.refused.clone(),
        );
        registry.register(
            "kv_sync_sessions",
            "Anti-entropy sessions, by outcome",
            self.sync_sessions.clone(),
        );
        registry.register(
            "kv_sync_bytes_sent",
            "Bytes of sync messages sent",
            self.sync_bytes_sent.clone(),
        );
        registry.register(
            "kv_sync_bytes_received",
            "Bytes of sync messages received",
            self.sync_bytes_received.clone(),
        );
    }

    fn refuse(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabel { reason }).inc();
    }
}

/// Why a local write is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum KvWriteError {
    #[error("{0}")]
    Shape(String),
    #[error("this node's ticket does not grant `{0}`")]
    NotAllowed(&'static str),
    #[error("no writes given, or more than {MAX_BATCH_WRITES}")]
    BatchSize,
    #[error("too many writes are waiting to be flushed; try again")]
    Busy,
    #[error("cannot sign: {0}")]
    Sign(String),
    #[error("store: {0}")]
    Store(String),
}

/// What a remote entry needs to be checked.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    /// `None`: an open mesh, no tickets.
    pub admission: Option<AdmissionPolicy>,
}

impl AccessPolicy {
    pub fn open() -> Self {
        AccessPolicy { admission: None }
    }

    fn own_ticket(&self) -> Option<&[u8]> {
        self.admission.as_ref()?.own_ticket()
    }
}

/// A ticket offered with a message, and the subject it claims (unverified).
type Offered = (Option<Vec<u8>>, ByteBuf);

/// What became of a message's entries.
#[derive(Debug, Clone, Copy, Default)]
struct Taken {
    merged: u32,
    refused: u32,
    in_bad_faith: u32,
}

/// One anti-entropy session this node runs.
#[derive(Debug)]
struct Session {
    sync: SyncSession,
    last_progress_ms: u64,
    /// Request token → the session's request id.
    requests: HashMap<u64, u64>,
}

/// See the module docs.
#[derive(Debug)]
pub struct KvService {
    /// `None` when the store could not be opened: the node is in safe mode and every
    /// request is refused with `broken`.
    kv: Option<KvStore>,
    broken: Option<String>,
    keypair: Keypair,
    author: ByteBuf,
    access: AccessPolicy,
    clock: Hlc,
    metrics: KvMetrics,
    /// Flush token → the control request waiting for it (if any), what it answers, and the
    /// entries to publish once they are on disk.
    acks: HashMap<Token, (Option<KvReply>, KvWritten, Vec<Entry>)>,
    next_token: u64,
    neighbours: HashSet<PeerId>,
    /// Neighbours over Bluetooth: sync messages to them stay within [`BATCH_BYTES`].
    radio_links: HashSet<PeerId>,
    /// Authors' decoded public keys (at most [`MAX_AUTHOR_KEYS`]; emptied when full).
    author_keys: HashMap<Vec<u8>, PublicKey>,
    /// When each neighbour is next due for a session.
    due: HashMap<PeerId, u64>,
    /// Neighbours whose next session also pushes (this node learned something they may
    /// lack); other sessions only pull.
    nudged: HashSet<PeerId>,
    sessions: HashMap<PeerId, Session>,
    max_skew_ms: u64,
}

impl KvService {
    /// Opens the replica. One that cannot be read leaves the service refusing everything;
    /// at start it sends the node to safe mode with the reason and the store's path.
    pub fn open(keypair: Keypair, store: &Store, access: AccessPolicy, metrics: KvMetrics) -> Self {
        let (kv, broken) = match KvStore::open(store) {
            Ok(kv) => {
                metrics.keys.set(kv.keys() as i64);
                metrics.value_bytes.set(kv.value_bytes() as i64);
                (Some(kv), None)
            }
            Err(error) => {
                let reason = format!(
                    "the kv store in {} cannot be read ({error}); run `fogmesh store check --repair`",
                    store.path().display()
                );
                tracing::error!(%reason, "kv store unavailable");
                (None, Some(reason))
            }
        };
        let author = ByteBuf::from(keypair.public().to_peer_id().to_bytes());
        // After a restart the clock starts past every winner held, so a write is never
        // stamped older than what it overwrites (the wall clock may have stepped back, or
        // an entry may have come from a node whose clock runs ahead).
        let clock = kv
            .as_ref()
            .map(|kv| kv.max_hlc_at_open())
            .unwrap_or_default();
        KvService {
            kv,
            broken,
            keypair,
            author,
            access,
            clock,
            metrics,
            acks: HashMap::new(),
            next_token: 0,
            neighbours: HashSet::new(),
            radio_links: HashSet::new(),
            author_keys: HashMap::new(),
            due: HashMap::new(),
            nudged: HashSet::new(),
            sessions: HashMap::new(),
            max_skew_ms: kv::DEFAULT_MAX_SKEW_MS,
        }
    }

    pub fn metrics(&self) -> &KvMetrics {
        &self.metrics
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// The roles this node's own ticket grants at `wall_ms`; `None` when no ticket applies
    /// (an open mesh), where anything may be written.
    fn own_roles(&self, wall_ms: u64) -> Option<Vec<String>> {
        let policy = self.access.admission.as_ref()?;
        let ticket = policy.own_ticket()?;
        let me = self.keypair.public().to_peer_id();
        Some(
            policy
                .check(Some(ticket), &me, wall_ms / 1000)
                .ok()
                .flatten()
                .map(|a| a.roles)
                .unwrap_or_default(),
        )
    }

    /// Writes `writes` (signed by this node), answers `reply` once they are on disk (or at
    /// once with why not), and publishes them.
    pub fn write(&mut self, reply: Option<KvReply>, writes: Vec<KvWrite>, out: &mut Outbox) {
        match self.try_write(writes, out) {
            Ok((token, written, entries)) => {
                self.acks.insert(token, (reply, written, entries));
            }
            Err(error) => {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(error));
                }
            }
        }
    }

    fn try_write(
        &mut self,
        writes: Vec<KvWrite>,
        out: &mut Outbox,
    ) -> Result<(Token, KvWritten, Vec<Entry>), KvWriteError> {
        if let Some(reason) = &self.broken {
            return Err(KvWriteError::Store(reason.clone()));
        }
        if writes.is_empty() || writes.len() > MAX_BATCH_WRITES {
            return Err(KvWriteError::BatchSize);
        }
        if self.acks.len() >= MAX_PENDING_ACKS {
            return Err(KvWriteError::Busy);
        }
        // Check everything first: a batch is taken whole or not at all.
        // Clocks and tickets are wall-clock matters: they mean something to other nodes.
        let wall_ms = out.wall_ms();
        let roles = self.own_roles(wall_ms);
        for write in &writes {
            if !kv::namespace_is_valid(&write.namespace) {
                return Err(KvWriteError::Shape(kv::KvError::BadNamespace.to_string()));
            }
            let needed = needed_role(&write.namespace);
            if roles
                .as_ref()
                .is_some_and(|r| !r.iter().any(|r| r == needed))
            {
                return Err(KvWriteError::NotAllowed(needed));
            }
        }
        let mut entries = Vec::with_capacity(writes.len());
        for write in writes {
            let hlc =
                Hlc::next(self.clock, wall_ms).map_err(|e| KvWriteError::Shape(e.to_string()))?;
            let mut entry = Entry {
                namespace: write.namespace,
                key: write.key,
                value: write.value.map(ByteBuf::from),
                version: Version {
                    hlc,
                    author: self.author.clone(),
                },
                signature: ByteBuf::new(),
            };
            entry
                .check_shape()
                .map_err(|e| KvWriteError::Shape(e.to_string()))?;
            entry.signature = ByteBuf::from(
                self.keypair
                    .sign(&entry.signing_bytes())
                    .map_err(|e| KvWriteError::Sign(e.to_string()))?,
            );
            self.clock = hlc;
            entries.push(entry);
        }
        let last = entries.last().map(|e| e.version.hlc).unwrap_or_default();
        let count = entries.len();
        for entry in &entries {
            self.merge(entry.clone(), "local", out)
                .map_err(KvWriteError::Store)?;
        }
        self.metrics.writes.inc_by(count as u64);
        let ticket = self.access.own_ticket().map(|t| t.to_vec());
        if let (Some(ticket), Some(kv)) = (ticket, self.kv.as_mut()) {
            kv.put_credential(&self.author, &ticket)
                .map_err(|e| KvWriteError::Store(e.to_string()))?;
        }
        let token = self.token();
        out.push(Effect::PersistDurable {
            batch: Batch::new(),
            token,
        });
        Ok((
            token,
            KvWritten {
                written: count,
                hlc: hlc_text(&last),
                author: author_text(&self.author),
            },
            entries,
        ))
    }

    /// Publishes entries as deltas of at most [`DELTA_BYTES`]; an entry too large for a
    /// delta starts anti-entropy with every neighbour instead.
    fn publish(&mut self, entries: Vec<Entry>, out: &mut Outbox) {
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
                self.publish_delta(std::mem::take(&mut batch), out);
                used = 0;
            }
            used += size;
            batch.push(entry);
        }
        if !batch.is_empty() {
            self.publish_delta(batch, out);
        }
        if too_large {
            for peer in self.neighbours.clone() {
                self.due.insert(peer, 0);
            }
        }
    }

    fn publish_delta(&self, entries: Vec<Entry>, out: &mut Outbox) {
        let credentials = self
            .kv
            .as_ref()
            .map(|kv| kv.credentials(&entries))
            .unwrap_or_default();
        let delta = Delta {
            entries,
            credentials,
        };
        match fogmesh_wire::codec::encode(&delta) {
            Ok(data) => out.push(Effect::Publish {
                topic: TOPIC.into(),
                data,
            }),
            Err(error) => tracing::warn!(%error, "kv delta not encodable"),
        }
    }

    /// Merges one entry (local or verified) and tells the event stream.
    fn merge(
        &mut self,
        entry: Entry,
        via: &'static str,
        out: &mut Outbox,
    ) -> Result<Merged, String> {
        let Some(kv) = self.kv.as_mut() else {
            return Err(self.broken.clone().unwrap_or_default());
        };
        let event_entry = entry.clone();
        let outcome = kv.merge(entry).map_err(|e| e.to_string())?;
        let (merged, previous_author) = (outcome.merged, outcome.previous);
        self.metrics.keys.set(kv.keys() as i64);
        self.metrics.value_bytes.set(kv.value_bytes() as i64);
        let other_author = previous_author
            .as_ref()
            .is_some_and(|a| *a != event_entry.version.author);
        match merged {
            Merged::Won => {
                if other_author && via != "local" {
                    self.metrics.conflicts.inc();
                }
                out.event(changed_event(&event_entry, via));
            }
            Merged::Lost if other_author => {
                self.metrics.conflicts.inc();
                out.event(KvConflict {
                    namespace: event_entry.namespace.clone(),
                    key: event_entry.key.clone(),
                    kept: previous_author.map(|a| author_text(&a)).unwrap_or_default(),
                    overwritten: author_text(&event_entry.version.author),
                });
            }
            _ => {}
        }
        Ok(merged)
    }

    /// Checks a remote entry before it may be merged, cheapest checks first. See the
    /// module docs. `failed` holds the tickets of this message already found wanting, so
    /// a message full of junk credentials costs one check per credential, not per entry.
    fn admit(
        &mut self,
        wall_ms: u64,
        entry: &Entry,
        signature_ok: bool,
        credentials: &[Offered],
        failed: &mut HashSet<[u8; 32]>,
    ) -> Result<(), &'static str> {
        entry.check_shape().map_err(|e| e.reason())?;
        let clock = Hlc::observe(self.clock, entry.version.hlc, wall_ms, self.max_skew_ms)
            .map_err(|e| e.reason())?;
        let author = PeerId::from_bytes(&entry.version.author).map_err(|_| "bad_author")?;
        public_key_of(&author).ok_or("unverifiable_author")?;
        if !signature_ok {
            return Err("bad_signature");
        }
        if let Some(policy) = self.access.admission.clone() {
            if policy.requires_tickets() {
                self.check_author(&policy, wall_ms, &author, entry, credentials, failed)?;
            }
        }
        self.clock = clock;
        Ok(())
    }

    /// The author must hold a ticket that grants the role the namespace needs and is valid
    /// now or was valid at the entry's clock (so entries written under a ticket since
    /// renewed still replicate), and is not revoked. Tickets come from earlier messages
    /// (one kept per author) or with this one; only those naming the author are checked.
    fn check_author(
        &mut self,
        policy: &AdmissionPolicy,
        wall_ms: u64,
        author: &PeerId,
        entry: &Entry,
        credentials: &[Offered],
        failed: &mut HashSet<[u8; 32]>,
    ) -> Result<(), &'static str> {
        let known = self
            .kv
            .as_ref()
            .and_then(|kv| kv.credential(&entry.version.author))
            .cloned();
        let author_bytes = entry.version.author.as_slice();
        let candidates = known.iter().chain(
            credentials
                .iter()
                .filter(|(subject, _)| subject.as_deref() == Some(author_bytes))
                .map(|(_, ticket)| ticket),
        );
        let needed = needed_role(&entry.namespace);
        let mut reason = "no_credential";
        for ticket in candidates {
            let id = fogmesh_transports::ticket::ticket_id(ticket);
            if failed.contains(&id) {
                reason = "bad_credential";
                continue;
            }
            let checked = policy
                .check(Some(ticket), author, wall_ms / 1000)
                .or_else(|_| policy.check(Some(ticket), author, entry.version.hlc.wall_ms / 1000));
            match checked {
                Ok(None) => return Ok(()),
                Ok(Some(admission)) if admission.roles.iter().any(|r| r == needed) => {
                    if known.as_ref() != Some(ticket) {
                        // Remembered to vouch for this author in later syncs; a failure to
                        // store it only means it is not remembered.
                        if let Some(kv) = self.kv.as_mut() {
                            let _ = kv.put_credential(author_bytes, ticket);
                        }
                    }
                    return Ok(());
                }
                Ok(Some(_)) => {
                    reason = if needed == "admin" {
                        "not_admin"
                    } else {
                        "not_writer"
                    };
                }
                Err(error) => {
                    failed.insert(id);
                    reason = match error {
                        HandshakeError::Ticket(e) if e.reason() == "revoked" => "revoked",
                        _ => "bad_credential",
                    };
                }
            }
        }
        Err(reason)
    }

    /// Verifies and merges remote entries: how many were taken, refused, and refused for
    /// reasons that show bad faith in whoever made them (a forged signature, a broken
    /// shape) rather than this node's own view (its clock, the credentials it knows).
    fn take_remote(
        &mut self,
        entries: Vec<Entry>,
        credentials: &[ByteBuf],
        via: &'static str,
        out: &mut Outbox,
    ) -> Taken {
        // Entries' clocks and authors' tickets are judged against the wall clock.
        let wall_ms = out.wall_ms();
        let mut taken = Taken::default();
        let mut failed = HashSet::new();
        // Whom each offered ticket names, read once per message (no verification yet).
        let credentials: Vec<Offered> = credentials
            .iter()
            .map(|ticket| {
                (
                    fogmesh_transports::ticket::claimed_subject(ticket),
                    ticket.clone(),
                )
            })
            .collect();
        // Already held: nothing to verify or merge (gossip echoes, repeated syncs).
        let fresh: Vec<Entry> = entries
            .into_iter()
            .filter(|entry| {
                !self
                    .kv
                    .as_ref()
                    .and_then(|kv| kv.winner(&entry.key_id()).ok().flatten())
                    .is_some_and(|w| w == *entry)
            })
            .collect();
        let keys: Vec<Option<PublicKey>> = fresh
            .iter()
            .map(|e| self.author_key(&e.version.author))
            .collect();
        let signatures = verify_signatures(&fresh, &keys);
        for (entry, signature_ok) in fresh.into_iter().zip(signatures) {
            if let Err(reason) =
                self.admit(wall_ms, &entry, signature_ok, &credentials, &mut failed)
            {
                tracing::debug!(reason, namespace = %entry.namespace, "kv entry refused");
                self.metrics.refuse(reason);
                taken.refused += 1;
                if !matches!(
                    reason,
                    "from_the_future" | "no_credential" | "bad_credential" | "revoked"
                ) {
                    taken.in_bad_faith += 1;
                }
                continue;
            }
            match self.merge(entry, via, out) {
                Ok(_) => {
                    taken.merged += 1;
                    self.metrics
                        .merged
                        .get_or_create(&ReasonLabel { reason: via })
                        .inc();
                }
                Err(error) => {
                    out.push(Effect::StoreFailed(format!("kv store: {error}")));
                    break;
                }
            }
        }
        taken
    }

    fn store(&self) -> Result<&KvStore, String> {
        self.kv
            .as_ref()
            .ok_or_else(|| self.broken.clone().unwrap_or_default())
    }

    pub fn get(&self, namespace: &str, key: &str) -> Result<Option<KeyView>, String> {
        self.store()?
            .get(namespace, key)
            .map(|s| s.as_ref().map(KeyView::of))
            .map_err(|e| e.to_string())
    }

    /// Keys of `namespace` starting with `prefix`, after `after`, at most `limit`;
    /// deleted ones only if `deleted`.
    pub fn list(
        &self,
        namespace: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        deleted: bool,
    ) -> Result<Vec<KeyView>, String> {
        let kv = self.store()?;
        let mut out = Vec::new();
        let mut cursor = after.map(str::to_owned);
        // Pages of the store until `limit` live keys (tombstones skipped on request).
        loop {
            let page = kv
                .list(namespace, prefix, cursor.as_deref(), limit.max(1))
                .map_err(|e| e.to_string())?;
            let last = page.last().map(|s| s.winner.key.clone());
            for slot in &page {
                if out.len() < limit && (deleted || !slot.winner.is_tombstone()) {
                    out.push(KeyView::of(slot));
                }
            }
            if out.len() >= limit || page.len() < limit.max(1) || last.is_none() {
                return Ok(out);
            }
            cursor = last;
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

    /// A sync request from a neighbour.
    pub fn on_sync_request(
        &mut self,
        now_ms: u64,
        peer: PeerId,
        request: SyncRequest,
        out: &mut Outbox,
    ) -> SyncResponse {
        if let Err(error) = check_request(&request) {
            self.metrics.refuse(error.reason());
            return SyncResponse::Refused {
                reason: error.reason().into(),
            };
        }
        let response = match request {
            SyncRequest::Push {
                entries,
                credentials,
            } => {
                let taken = self.take_remote(entries, &credentials, "push", out);
                if taken.merged > 0 {
                    self.nudge_neighbours(now_ms, peer);
                }
                SyncResponse::Pushed {
                    accepted: taken.merged,
                    refused: taken.refused,
                }
            }
            other => match self.kv.as_ref().map(|kv| answer(kv, &other)) {
                None => SyncResponse::Refused {
                    reason: "store_unavailable".into(),
                },
                Some(Ok(response)) => response,
                Some(Err(error)) => {
                    out.push(Effect::StoreFailed(format!("kv store: {error}")));
                    SyncResponse::Refused {
                        reason: "store_unreadable".into(),
                    }
                }
            },
        };
        response
    }

    /// The answer to a sync request this node sent (or why there is none).
    pub fn on_sync_response(
        &mut self,
        now_ms: u64,
        peer: PeerId,
        token: u64,
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
        let credentials = match &response {
            SyncResponse::Subtree { credentials, .. }
            | SyncResponse::Fetched { credentials, .. } => credentials.clone(),
            _ => Vec::new(),
        };
        let Some(kv) = self.kv.as_ref() else {
            return;
        };
        let entries = match session.sync.on_response(kv, id, response) {
            Ok(entries) => entries,
            Err(error) => {
                self.metrics.refuse(error.reason());
                return self.end_session(now_ms, peer, "malformed", out);
            }
        };
        let taken = self.take_remote(entries, &credentials, "sync", out);
        if taken.merged > 0 {
            self.nudge_neighbours(now_ms, peer);
        }
        self.drive(now_ms, peer, out);
    }

    /// Sends what a session can send; ends it when it is done.
    fn drive(&mut self, now_ms: u64, peer: PeerId, out: &mut Outbox) {
        let Some(mut session) = self.sessions.remove(&peer) else {
            return;
        };
        let Some(kv) = self.kv.as_ref() else {
            return;
        };
        let budget = if self.radio_links.contains(&peer) {
            BATCH_BYTES
        } else {
            LAN_BATCH_BYTES
        };
        let requests = match session.sync.next_requests(kv, budget, SESSION_IN_FLIGHT) {
            Ok(requests) => requests,
            Err(error) => {
                out.push(Effect::StoreFailed(format!("kv store: {error}")));
                return self.end_session(now_ms, peer, "failed", out);
            }
        };
        for (id, request) in requests {
            let data = match fogmesh_wire::codec::encode(&request) {
                Ok(data) => data,
                Err(error) => {
                    tracing::warn!(%error, "kv sync request not encodable");
                    continue;
                }
            };
            let token = self.token();
            session.requests.insert(token, id);
            self.metrics.sync_bytes_sent.inc_by(frame_bytes(data.len()));
            out.push(Effect::Send {
                peer,
                protocol: protocol::PROTOCOL,
                data,
                token,
            });
        }
        if session.sync.is_done() {
            self.sessions.insert(peer, session);
            return self.end_session(now_ms, peer, "completed", out);
        }
        self.sessions.insert(peer, session);
    }

    fn end_session(&mut self, now_ms: u64, peer: PeerId, outcome: &'static str, out: &mut Outbox) {
        self.sessions.remove(&peer);
        self.metrics
            .sync_sessions
            .get_or_create(&ReasonLabel { reason: outcome })
            .inc();
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
            let sync = if self.nudged.remove(&peer) {
                SyncSession::new()
            } else {
                SyncSession::pull_only()
            };
            self.sessions.insert(
                peer,
                Session {
                    sync,
                    last_progress_ms: now_ms,
                    requests: HashMap::new(),
                },
            );
            self.drive(now_ms, peer, out);
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
        if self.kv.is_some() && self.neighbours.insert(peer) {
            self.due.insert(peer, now_ms);
            self.start_due(now_ms, out);
        }
    }

    /// An author's public key, decoded once: decoding (a point decompression) costs a
    /// third of a signature check.
    fn author_key(&mut self, author: &[u8]) -> Option<PublicKey> {
        if let Some(key) = self.author_keys.get(author) {
            return Some(key.clone());
        }
        let key = PeerId::from_bytes(author)
            .ok()
            .and_then(|peer| public_key_of(&peer))?;
        if self.author_keys.len() >= MAX_AUTHOR_KEYS {
            self.author_keys.clear();
        }
        self.author_keys.insert(author.to_vec(), key.clone());
        Some(key)
    }

    /// Keys this node holds.
    pub fn keys(&self) -> u64 {
        self.kv.as_ref().map_or(0, |kv| kv.keys())
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

    fn on_request(&mut self, now_ms: u64, request: InboundRequest, out: &mut Outbox) {
        self.metrics
            .sync_bytes_received
            .inc_by(frame_bytes(request.data.len()));
        let answer = match fogmesh_wire::codec::decode_bounded::<SyncRequest>(
            &request.data,
            kv_sync::MAX_MESSAGE_BYTES,
        ) {
            Ok(sync) => self.on_sync_request(now_ms, request.peer, sync, out),
            Err(_) => {
                self.metrics.refuse("malformed_request");
                SyncResponse::Refused {
                    reason: "malformed_request".into(),
                }
            }
        };
        match fogmesh_wire::codec::encode(&answer) {
            Ok(data) => {
                self.metrics.sync_bytes_sent.inc_by(frame_bytes(data.len()));
                out.respond(request.id, data);
            }
            Err(error) => tracing::warn!(%error, "kv sync answer not encodable"),
        }
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
        Verdict::Now(self.on_delta(msg.data, out))
    }

    fn on_timer(&mut self, now_ms: u64, timer: TimerId, out: &mut Outbox) {
        if timer != TICK {
            return;
        }
        self.tick(now_ms, out);
    }

    fn on_notice(&mut self, now_ms: u64, notice: &Notice, out: &mut Outbox) {
        match notice {
            Notice::PeerConnected { peer, link } => self.on_connected(now_ms, *peer, *link, out),
            Notice::PeerDisconnected(peer) => {
                self.neighbours.remove(peer);
                self.due.remove(peer);
                self.nudged.remove(peer);
                self.radio_links.remove(peer);
                if self.sessions.contains_key(peer) {
                    self.end_session(now_ms, *peer, "disconnected", out);
                }
            }
            shared => {
                if let Some(done) = shared.shared::<TaskResult>() {
                    let write = KvWrite {
                        namespace: TASKS_NAMESPACE.into(),
                        key: done.task.clone(),
                        value: Some(done.result.clone()),
                    };
                    // Nobody waits for this write; without `writer` it is simply not made.
                    if let Err(error) =
                        self.try_write(vec![write], out)
                            .map(|(token, written, entries)| {
                                self.acks.insert(token, (None, written, entries));
                            })
                    {
                        tracing::debug!(%error, task = %done.task, "task result not published in the store");
                    }
                }
            }
        }
    }

    fn on_durable(
        &mut self,
        _now_ms: u64,
        token: Token,
        result: Result<(), String>,
        out: &mut Outbox,
    ) {
        let Some((reply, written, entries)) = self.acks.remove(&token) else {
            return;
        };
        let answer = match result {
            Ok(()) => {
                // Published once on disk: no other node holds a write this one may lose.
                self.publish(entries, out);
                Ok(written)
            }
            Err(error) => {
                out.push(Effect::StoreFailed(format!("kv flush: {error}")));
                Err(KvWriteError::Store(format!("not stored: {error}")))
            }
        };
        if let Some(reply) = reply {
            let _ = reply.send(answer);
        }
    }
}

impl KvService {
    fn on_delta(&mut self, data: &[u8], out: &mut Outbox) -> MessageAcceptance {
        if self.kv.is_none() {
            return MessageAcceptance::Ignore;
        }
        let delta: Delta = match fogmesh_wire::codec::decode_bounded(
            data,
            fogmesh_wire::envelope::MAX_ENVELOPE_LEN,
        ) {
            Ok(delta) => delta,
            Err(_) => {
                self.metrics.refuse("malformed_delta");
                return MessageAcceptance::Reject;
            }
        };
        if delta.entries.len() > kv_sync::MAX_ENTRIES_PER_MESSAGE
            || delta.credentials.len() > kv_sync::MAX_CREDENTIALS
        {
            self.metrics.refuse("malformed_delta");
            return MessageAcceptance::Reject;
        }
        let taken = self.take_remote(delta.entries, &delta.credentials, "gossip", out);
        if taken.in_bad_faith > 0 {
            // Forged or broken: whoever spreads it is penalised.
            MessageAcceptance::Reject
        } else if taken.refused > 0 && taken.merged == 0 {
            // Refused for what this node knows (its clock, its credentials): not spread
            // from here, and nobody penalised.
            MessageAcceptance::Ignore
        } else {
            MessageAcceptance::Accept
        }
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

#[cfg(test)]
mod tests;
