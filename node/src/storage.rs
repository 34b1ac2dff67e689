//! The node's side of the store: where each [`StoreOp`] goes, and how completions come back.
//!
//! Services say what to persist; this module knows the tables and turns each op into a
//! [`Batch`] for the storage task ([`fogmesh_store::task`]), which does all sled writing on
//! its own thread, off the swarm task. Durable writes report back through a channel
//! ([`StorageReport`]) that the driver reads like any other input, so a service is told "it
//! is on disk" only once the task's group commit has flushed it (see `docs/storage.md` for
//! what that guarantees).

use std::collections::VecDeque;
use std::sync::Arc;

use fogmesh_store::task::{StorageError, StorageHandle, StorageStats, TryWriteError};
use fogmesh_store::{Batch, Store, StoreError, Table};
use libp2p::PeerId;
use tokio::sync::{mpsc, Semaphore};

use crate::driver::ServiceId;
use crate::node::{PeerRecord, StoredRevocation};
use crate::relay::{HeldRecord, InboxRecord, SentRecord};
use crate::services::{DurableToken, StoreOp};
use crate::telemetry::ReceivedTelemetry;

pub const TABLE_PEERS: &str = "peers";
pub const TABLE_TELEMETRY: &str = "telemetry";
pub const TABLE_META: &str = "meta";
pub const TABLE_REVOCATIONS: &str = "revocations";
pub const TABLE_RELAY_HELD: &str = "relay_held";
pub const TABLE_RELAY_INBOX: &str = "relay_inbox";
pub const TABLE_RELAY_SENT: &str = "relay_sent";
pub const META_TELEMETRY_SEQ: &str = "telemetry_seq";
/// Completions waiting for the driver. Each durable write yields one; the driver reads them
/// before remote work, so the queue stays short.
const REPORT_QUEUE: usize = 1024;

/// The node's tables.
#[derive(Debug, Clone)]
pub struct Tables {
    pub peers: Table<PeerRecord>,
    pub telemetry: Table<ReceivedTelemetry>,
    pub meta: Table<u64>,
    pub revocations: Table<StoredRevocation>,
    pub relay_held: Table<HeldRecord>,
    pub relay_inbox: Table<InboxRecord>,
    pub relay_sent: Table<SentRecord>,
}

impl Tables {
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        Ok(Tables {
            peers: store.table(TABLE_PEERS)?,
            telemetry: store.table(TABLE_TELEMETRY)?,
            meta: store.table(TABLE_META)?,
            revocations: store.table(TABLE_REVOCATIONS)?,
            relay_held: store.table(TABLE_RELAY_HELD)?,
            relay_inbox: store.table(TABLE_RELAY_INBOX)?,
            relay_sent: store.table(TABLE_RELAY_SENT)?,
        })
    }
}

/// What the storage side tells the driver.
#[derive(Debug)]
pub enum StorageReport {
    /// A durable write asked for by `service` is on disk, or failed.
    Durable {
        service: ServiceId,
        token: DurableToken,
        result: Result<(), String>,
    },
    /// A buffered write failed.
    Failed(String),
}

/// Durable writes in flight at once; each waits in a small task of its own for its ack.
/// Only root-signed revocations (bounded by `MAX_REVOCATIONS`) write durably today.
const MAX_DURABLE_IN_FLIGHT: usize = 256;

/// See the module docs.
///
/// Backpressure: buffered writes go to the storage task with `try_write`. When its queue is
/// full, the batch waits here, in order, and the driver stops taking remote input until the
/// task has taken the backlog ([`NodeStorage::backlogged`], [`NodeStorage::drain_backlog`]):
/// the service that writes is slowed down through its inputs; nothing is dropped. Each
/// such stall is counted (`fogmesh_storage_backpressure_waits_total`).
#[derive(Debug)]
pub struct NodeStorage {
    handle: StorageHandle,
    tables: Tables,
    reports: mpsc::Sender<StorageReport>,
    backlog: VecDeque<Batch>,
    durable_slots: Arc<Semaphore>,
}

impl NodeStorage {
    pub fn new(handle: StorageHandle, tables: Tables) -> (Self, mpsc::Receiver<StorageReport>) {
        let (reports, rx) = mpsc::channel(REPORT_QUEUE);
        (
            Self {
                handle,
                tables,
                reports,
                backlog: VecDeque::new(),
                durable_slots: Arc::new(Semaphore::new(MAX_DURABLE_IN_FLIGHT)),
            },
            rx,
        )
    }

    pub fn stats(&self) -> StorageStats {
        self.handle.stats()
    }

    fn batch(&self, op: &StoreOp) -> Result<Batch, StoreError> {
        let mut batch = Batch::new();
        match op {
            StoreOp::PutTelemetry { origin, telemetry } => {
                batch.put(&self.tables.telemetry, origin, telemetry)?
            }
            StoreOp::RemoveTelemetry { origin } => batch.remove(&self.tables.telemetry, origin),
            StoreOp::PutOwnSeq(seq) => batch.put(&self.tables.meta, META_TELEMETRY_SEQ, seq)?,
            StoreOp::PutRevocation {
                ticket_id,
                revocation,
            } => batch.put(&self.tables.revocations, ticket_id, revocation)?,
            StoreOp::PutPeer { peer, record } => {
                batch.put(&self.tables.peers, &peer.to_string(), record)?
            }
            StoreOp::RemovePeer(peer) => batch.remove(&self.tables.peers, &peer.to_string()),
            StoreOp::PutHeld { id, record } => batch.put(&self.tables.relay_held, id, record)?,
            StoreOp::RemoveHeld { id } => batch.remove(&self.tables.relay_held, id),
            StoreOp::PutInbox { id, record } => batch.put(&self.tables.relay_inbox, id, record)?,
            StoreOp::RemoveInbox { id } => batch.remove(&self.tables.relay_inbox, id),
            StoreOp::PutSent { id, record } => batch.put(&self.tables.relay_sent, id, record)?,
            StoreOp::RemoveSent { id } => batch.remove(&self.tables.relay_sent, id),
            StoreOp::Flush => {}
        }
        Ok(batch)
    }

    fn failed(&self, error: String) {
        tracing::error!(%error, "store write failed");
        let _ = self.reports.try_send(StorageReport::Failed(error));
    }

    /// A buffered write: on disk within the store's flush interval.
    pub fn persist(&mut self, op: StoreOp) {
        let batch = match self.batch(&op) {
            Ok(batch) => batch,
            Err(error) => return self.failed(error.to_string()),
        };
        if !self.backlog.is_empty() {
            // Keep the order: nothing overtakes what already waits.
            self.backlog.push_back(batch);
            return;
        }
        match self.handle.try_write(batch) {
            Ok(()) => {}
            Err(TryWriteError::Full(batch)) => self.backlog.push_back(batch),
            Err(error) => self.failed(error.to_string()),
        }
    }

    /// Whether buffered writes wait for room in the storage task's queue.
    pub fn backlogged(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Hands the backlog to the storage task, waiting for room (the backpressure).
    pub async fn drain_backlog(&mut self) {
        while let Some(batch) = self.backlog.pop_front() {
            if let Err(error) = self.handle.write(batch).await {
                self.failed(error.to_string());
            }
        }
    }

    /// A durable write: `service` hears of it with `token` once it is on disk.
    pub fn persist_durable(&mut self, op: StoreOp, service: ServiceId, token: DurableToken) {
        let reports = self.reports.clone();
        let batch = self.batch(&op);
        let handle = self.handle.clone();
        let slots = self.durable_slots.clone();
        tokio::spawn(async move {
            let _slot = slots.acquire_owned().await;
            let result = match batch {
                Ok(batch) => handle
                    .write_durable(batch)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
                Err(error) => Err(error.to_string()),
            };
            // The driver reads reports before remote work; if it is gone, so is the node.
            let _ = reports
                .send(StorageReport::Durable {
                    service,
                    token,
                    result,
                })
                .await;
        });
    }

    /// Writes what waits, flushes everything and stops the storage task.
    pub async fn close(&mut self) -> Result<(), StorageError> {
        self.drain_backlog().await;
        self.handle.close().await
    }
}

/// What the store remembers, read once at start.
#[derive(Debug, Default)]
pub struct Restored {
    pub peers: Vec<(PeerId, PeerRecord)>,
    pub telemetry: Vec<(String, ReceivedTelemetry)>,
    pub own_seq: u64,
    pub revocations: Vec<StoredRevocation>,
    pub relay_held: Vec<(String, HeldRecord)>,
    pub relay_inbox: Vec<InboxRecord>,
    pub relay_sent: Vec<SentRecord>,
    /// Rows that could not be read (counted and logged, never silently dropped).
    pub unreadable: usize,
}

/// Reads the node's tables. Unreadable rows are skipped with a warning and counted.
pub fn restore(tables: &Tables) -> Restored {
    let mut restored = Restored::default();
    for entry in tables.peers.entries() {
        match entry.map(|(key, record)| (key.parse::<PeerId>(), record)) {
            Ok((Ok(peer), record)) => restored.peers.push((peer, record)),
            Ok((Err(_), _)) => {
                restored.unreadable += 1;
                tracing::warn!("skipping a stored peer whose key is not a PeerId");
            }
            Err(error) => {
                restored.unreadable += 1;
                tracing::warn!(%error, "skipping unreadable stored peer");
            }
        }
    }
    for entry in tables.telemetry.entries() {
        match entry {
            Ok(row) => restored.telemetry.push(row),
            Err(error) => {
                restored.unreadable += 1;
                tracing::warn!(%error, "skipping unreadable stored telemetry");
            }
        }
    }
    for entry in tables.revocations.entries() {
        match entry {
            Ok((_, revocation)) => restored.revocations.push(revocation),
            Err(error) => {
                restored.unreadable += 1;
                tracing::warn!(%error, "skipping unreadable stored revocation");
            }
        }
    }
    restored.relay_held = read_rows(
        &tables.relay_held,
        "held relay packet",
        &mut restored.unreadable,
    );
    restored.relay_inbox = read_rows(
        &tables.relay_inbox,
        "inbox message",
        &mut restored.unreadable,
    )
    .into_iter()
    .map(|(_, r)| r)
    .collect();
    restored.relay_sent = read_rows(&tables.relay_sent, "sent message", &mut restored.unreadable)
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    match tables.meta.get(META_TELEMETRY_SEQ) {
        Ok(seq) => restored.own_seq = seq.unwrap_or(0),
        Err(error) => {
            restored.unreadable += 1;
            tracing::warn!(%error, "own telemetry sequence unreadable; continuing from the clock")
        }
    }
    tracing::info!(
        known_peers = restored.peers.len(),
        telemetry_nodes = restored.telemetry.len(),
        revocations = restored.revocations.len(),
        unreadable = restored.unreadable,
        "restored from store"
    );
    restored
}

fn read_rows<V: serde::Serialize + serde::de::DeserializeOwned>(
    table: &Table<V>,
    what: &str,
    unreadable: &mut usize,
) -> Vec<(String, V)> {
    let mut rows = Vec::new();
    for entry in table.entries() {
        match entry {
            Ok(row) => rows.push(row),
            Err(error) => {
                *unreadable += 1;
                tracing::warn!(%error, what, "skipping an unreadable stored row");
            }
        }
    }
    rows
}
