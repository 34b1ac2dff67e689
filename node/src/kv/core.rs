//! The replica's side of the store: everything that reads or writes it, run as jobs on the
//! storage task (never on the swarm task).
//!
//! [`KvCore`] owns the replica on sled ([`KvStore`]) with its in-memory digest tree, the
//! hybrid logical clock, the node's signing key, the authors' decoded keys and the state of
//! the anti-entropy sessions this node runs. The capability ([`super::service`]) hands it
//! work as storage jobs ([`crate::runtime::capability::Lane::Storage`]) that lock it, in
//! queue order with every other write; each method here is synchronous and returns what the
//! capability needs to answer, publish and tell (events, deltas, requests), so it is tested
//! without a runtime.
//!
//! - Local writes: checked (a batch is taken whole or not at all), signed, stamped with the
//!   clock, merged; the job that runs them is durable, so its answer means "on disk".
//! - Remote entries (deltas, sync answers, pushes) are verified one by one before they are
//!   merged ([`KvCore::take_remote`]): shape and caps, the clock's skew, the author's
//!   signature, the author's role from its ticket (in a mesh with tickets). A refused entry
//!   is counted by reason and never merged; the rest of its message still is.
//! - Sync: answers to neighbours' requests, and this node's own sessions (their next
//!   requests, and what their answers bring).
//!
//! Access (docs/kv.md, "Access"): in a mesh with tickets, writing takes the role `writer`,
//! and the namespace [`RESERVED_NAMESPACE`] takes `admin`. In an open mesh anyone writes.
//! Entries from a revoked author are refused from the moment this node knows of the
//! revocation; those it merged before stay.

use std::collections::{HashMap, HashSet};

use fogmesh_kv::sync::{answer, check_request, Replica, SyncRequest, SyncResponse, SyncSession};
use fogmesh_kv::{self as kv, Entry, Hlc, Merged, Version};
use fogmesh_store::Store;
use fogmesh_transports::secure::{AdmissionPolicy, HandshakeError};
use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::kv::replica::KvStore;
use crate::kv::verify::{needed_role, public_key_of, verify_signatures};
use crate::kv::view::{
    author_text, changed_event, hlc_text, KeyView, KvConflict, KvWrite, KvWritten,
};
use crate::runtime::capability::ReasonLabel;
use crate::runtime::events::NodeEvent;

/// Only authors whose ticket grants `admin` write here.
pub const RESERVED_NAMESPACE: &str = "mesh";
/// Where a node publishes the results of the tasks it submitted (under the task's id).
pub const TASKS_NAMESPACE: &str = "tasks";
/// Authors whose decoded keys are kept.
const MAX_AUTHOR_KEYS: usize = 4096;
/// Writes of one control request.
pub const MAX_BATCH_WRITES: usize = 10_000;

/// Counters and gauges of the store. Shared by the capability and the core (the counters
/// are atomics): the core counts what it refuses and merges where it happens.
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

    pub(crate) fn refuse(&self, reason: &'static str) {
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

/// What became of a message's entries, and what to tell the event stream.
#[derive(Debug, Default)]
pub struct Taken {
    pub merged: u32,
    pub refused: u32,
    /// Refused for reasons that show bad faith in whoever made them (a forged signature, a
    /// broken shape) rather than this node's own view (its clock, the credentials it knows).
    pub in_bad_faith: u32,
    pub events: Vec<NodeEvent>,
    /// The replica failed: the node goes to safe mode with this reason.
    pub store_failed: Option<String>,
}

/// A local write on disk: what it answers, the deltas to publish, what to tell.
#[derive(Debug)]
pub struct Written {
    pub written: KvWritten,
    /// The entries, to publish as deltas, with their authors' tickets.
    pub entries: Vec<Entry>,
    pub credentials: Vec<ByteBuf>,
    pub events: Vec<NodeEvent>,
}

/// What a session's step produced: entries taken, the next requests, whether it ended.
#[derive(Debug, Default)]
pub struct Step {
    pub taken: Taken,
    pub requests: Vec<(u64, SyncRequest)>,
    /// The session is complete (nothing more to ask).
    pub done: bool,
    /// The answer broke the protocol (the reason counted): the session ends.
    pub malformed: bool,
}

/// See the module docs.
#[derive(Debug)]
pub struct KvCore {
    /// `None` when the store could not be opened: every request is refused with `broken`.
    kv: Option<KvStore>,
    broken: Option<String>,
    keypair: Keypair,
    author: ByteBuf,
    access: AccessPolicy,
    clock: Hlc,
    metrics: KvMetrics,
    /// Authors' decoded public keys (at most [`MAX_AUTHOR_KEYS`]; emptied when full).
    author_keys: HashMap<Vec<u8>, PublicKey>,
    /// The sessions this node runs, by neighbour.
    sessions: HashMap<PeerId, SyncSession>,
    max_skew_ms: u64,
}

impl KvCore {
    /// Opens the replica (at start-up, before the node runs). One that cannot be read
    /// leaves the core refusing everything, with the reason and the store's path.
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
        KvCore {
            kv,
            broken,
            keypair,
            author,
            access,
            clock,
            metrics,
            author_keys: HashMap::new(),
            sessions: HashMap::new(),
            max_skew_ms: kv::DEFAULT_MAX_SKEW_MS,
        }
    }

    /// Why the replica cannot be used, if it cannot.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    pub fn metrics(&self) -> &KvMetrics {
        &self.metrics
    }

    /// Keys this node holds.
    pub fn keys(&self) -> u64 {
        self.kv.as_ref().map_or(0, |kv| kv.keys())
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

    /// Writes `writes`, signed by this node and stamped with its clock at `wall_ms`. The
    /// whole batch is checked first: it is taken whole or not at all.
    pub fn write(&mut self, wall_ms: u64, writes: Vec<KvWrite>) -> Result<Written, KvWriteError> {
        if let Some(reason) = &self.broken {
            return Err(KvWriteError::Store(reason.clone()));
        }
        if writes.is_empty() || writes.len() > MAX_BATCH_WRITES {
            return Err(KvWriteError::BatchSize);
        }
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
        let mut clock = self.clock;
        for write in writes {
            let hlc = Hlc::next(clock, wall_ms).map_err(|e| KvWriteError::Shape(e.to_string()))?;
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
            clock = hlc;
            entries.push(entry);
        }
        self.clock = clock;
        let last = entries.last().map(|e| e.version.hlc).unwrap_or_default();
        let count = entries.len();
        let mut events = Vec::new();
        for entry in &entries {
            self.merge(entry.clone(), "local", &mut events)
                .map_err(KvWriteError::Store)?;
        }
        self.metrics.writes.inc_by(count as u64);
        let ticket = self.access.own_ticket().map(|t| t.to_vec());
        if let (Some(ticket), Some(kv)) = (ticket, self.kv.as_mut()) {
            kv.put_credential(&self.author, &ticket)
                .map_err(|e| KvWriteError::Store(e.to_string()))?;
        }
        let credentials = self.credentials(&entries);
        Ok(Written {
            written: KvWritten {
                written: count,
                hlc: hlc_text(&last),
                author: author_text(&self.author),
            },
            entries,
            credentials,
            events,
        })
    }

    /// The authors' tickets to send along with `entries` (none in an open mesh).
    pub fn credentials(&self, entries: &[Entry]) -> Vec<ByteBuf> {
        self.kv
            .as_ref()
            .map(|kv| kv.credentials(entries))
            .unwrap_or_default()
    }

    /// Merges one entry (local or verified) and tells the event stream.
    fn merge(
        &mut self,
        entry: Entry,
        via: &'static str,
        events: &mut Vec<NodeEvent>,
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
                events.push(changed_event(&event_entry, via).into());
            }
            Merged::Lost if other_author => {
                self.metrics.conflicts.inc();
                events.push(
                    KvConflict {
                        namespace: event_entry.namespace.clone(),
                        key: event_entry.key.clone(),
                        kept: previous_author.map(|a| author_text(&a)).unwrap_or_default(),
                        overwritten: author_text(&event_entry.version.author),
                    }
                    .into(),
                );
            }
            _ => {}
        }
        Ok(merged)
    }

    /// Checks a remote entry before it may be merged, cheapest checks first. `failed`
    /// holds the tickets of this message already found wanting, so a message full of junk
    /// credentials costs one check per credential, not per entry.
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

    /// Verifies and merges remote entries, judged against the wall clock at `wall_ms`.
    pub fn take_remote(
        &mut self,
        wall_ms: u64,
        entries: Vec<Entry>,
        credentials: &[ByteBuf],
        via: &'static str,
    ) -> Taken {
        let mut taken = Taken::default();
        if self.kv.is_none() {
            return taken;
        }
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
            match self.merge(entry, via, &mut taken.events) {
                Ok(_) => {
                    taken.merged += 1;
                    self.metrics
                        .merged
                        .get_or_create(&ReasonLabel { reason: via })
                        .inc();
                }
                Err(error) => {
                    taken.store_failed = Some(format!("kv store: {error}"));
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

    /// A neighbour's sync request, answered from the replica (a push is verified and
    /// merged first). The taken entries, if it was a push, come back too.
    pub fn answer(&mut self, wall_ms: u64, request: SyncRequest) -> (SyncResponse, Taken) {
        if let Err(error) = check_request(&request) {
            self.metrics.refuse(error.reason());
            let refused = SyncResponse::Refused {
                reason: error.reason().into(),
            };
            return (refused, Taken::default());
        }
        match request {
            SyncRequest::Push {
                entries,
                credentials,
            } => {
                let taken = self.take_remote(wall_ms, entries, &credentials, "push");
                let response = SyncResponse::Pushed {
                    accepted: taken.merged,
                    refused: taken.refused,
                };
                (response, taken)
            }
            other => match self.kv.as_ref().map(|kv| answer(kv, &other)) {
                None => (
                    SyncResponse::Refused {
                        reason: "store_unavailable".into(),
                    },
                    Taken::default(),
                ),
                Some(Ok(response)) => (response, Taken::default()),
                Some(Err(error)) => (
                    SyncResponse::Refused {
                        reason: "store_unreadable".into(),
                    },
                    Taken {
                        store_failed: Some(format!("kv store: {error}")),
                        ..Taken::default()
                    },
                ),
            },
        }
    }

    /// Starts a session with `peer` (pushing too, or only pulling) and says what to send.
    pub fn start_session(
        &mut self,
        peer: PeerId,
        push: bool,
        budget: usize,
        in_flight: usize,
    ) -> Step {
        let sync = if push {
            SyncSession::new()
        } else {
            SyncSession::pull_only()
        };
        self.sessions.insert(peer, sync);
        self.next_requests(peer, budget, in_flight)
    }

    /// The answer to request `id` of the session with `peer`: what it brought, and what to
    /// send next.
    pub fn session_answer(
        &mut self,
        wall_ms: u64,
        peer: PeerId,
        id: u64,
        response: SyncResponse,
        budget: usize,
        in_flight: usize,
    ) -> Step {
        let credentials = match &response {
            SyncResponse::Subtree { credentials, .. }
            | SyncResponse::Fetched { credentials, .. } => credentials.clone(),
            _ => Vec::new(),
        };
        let (Some(kv), Some(session)) = (self.kv.as_ref(), self.sessions.get_mut(&peer)) else {
            return Step {
                done: true,
                ..Step::default()
            };
        };
        let entries = match session.on_response(kv, id, response) {
            Ok(entries) => entries,
            Err(error) => {
                self.metrics.refuse(error.reason());
                self.sessions.remove(&peer);
                return Step {
                    malformed: true,
                    ..Step::default()
                };
            }
        };
        let taken = self.take_remote(wall_ms, entries, &credentials, "sync");
        let mut step = self.next_requests(peer, budget, in_flight);
        step.taken = taken;
        step
    }

    fn next_requests(&mut self, peer: PeerId, budget: usize, in_flight: usize) -> Step {
        let (Some(kv), Some(session)) = (self.kv.as_ref(), self.sessions.get_mut(&peer)) else {
            return Step {
                done: true,
                ..Step::default()
            };
        };
        match session.next_requests(kv, budget, in_flight) {
            Ok(requests) => {
                let done = session.is_done();
                if done {
                    self.sessions.remove(&peer);
                }
                Step {
                    requests,
                    done,
                    ..Step::default()
                }
            }
            Err(error) => {
                self.sessions.remove(&peer);
                Step {
                    done: true,
                    taken: Taken {
                        store_failed: Some(format!("kv store: {error}")),
                        ..Taken::default()
                    },
                    ..Step::default()
                }
            }
        }
    }

    /// Forgets the session with `peer` (it ended on this node's side).
    pub fn end_session(&mut self, peer: &PeerId) {
        self.sessions.remove(peer);
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
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
