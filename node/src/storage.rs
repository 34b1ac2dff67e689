//! The node's side of the store: where each [`StoreOp`] goes, and how completions come back.
//!
//! Services say what to persist; this module knows the tables. Durable writes report back
//! through a channel ([`StorageReport`]) that the driver reads like any other input, so a
//! service is told "it is on disk" only once it is.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fogmesh_store::{Store, StoreError, Table};
use libp2p::PeerId;
use tokio::sync::mpsc;

use crate::driver::ServiceId;
use crate::node::{PeerRecord, StoredRevocation};
use crate::services::{DurableToken, StoreOp};
use crate::telemetry::ReceivedTelemetry;

pub const TABLE_PEERS: &str = "peers";
pub const TABLE_TELEMETRY: &str = "telemetry";
pub const TABLE_META: &str = "meta";
pub const TABLE_REVOCATIONS: &str = "revocations";
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
}

impl Tables {
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        Ok(Tables {
            peers: store.table(TABLE_PEERS)?,
            telemetry: store.table(TABLE_TELEMETRY)?,
            meta: store.table(TABLE_META)?,
            revocations: store.table(TABLE_REVOCATIONS)?,
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

/// Storage counters, read by the status view.
#[derive(Debug, Clone, Copy, Default)]
pub struct StorageStats {
    pub errors: u64,
}

/// See the module docs.
#[derive(Debug)]
pub struct NodeStorage {
    store: Store,
    tables: Tables,
    reports: mpsc::Sender<StorageReport>,
    errors: Arc<AtomicU64>,
}

impl NodeStorage {
    pub fn new(store: Store, tables: Tables) -> (Self, mpsc::Receiver<StorageReport>) {
        let (reports, rx) = mpsc::channel(REPORT_QUEUE);
        (
            Self {
                store,
                tables,
                reports,
                errors: Arc::default(),
            },
            rx,
        )
    }

    pub fn stats(&self) -> StorageStats {
        StorageStats {
            errors: self.errors.load(Ordering::Relaxed),
        }
    }

    fn write(&self, op: &StoreOp, durable: bool) -> Result<(), StoreError> {
        fn put<V: serde::Serialize + serde::de::DeserializeOwned>(
            table: &Table<V>,
            key: &str,
            value: &V,
            durable: bool,
        ) -> Result<(), StoreError> {
            if durable {
                table.put_durable(key, value)
            } else {
                table.put(key, value)
            }
        }
        match op {
            StoreOp::PutTelemetry { origin, telemetry } => {
                put(&self.tables.telemetry, origin, telemetry, durable)
            }
            StoreOp::RemoveTelemetry { origin } => self.tables.telemetry.remove(origin).map(drop),
            StoreOp::PutOwnSeq(seq) => {
                put(&self.tables.meta, META_TELEMETRY_SEQ, seq, durable)
            }
            StoreOp::PutRevocation {
                ticket_id,
                revocation,
            } => put(&self.tables.revocations, ticket_id, revocation, durable),
            StoreOp::PutPeer { peer, record } => {
                put(&self.tables.peers, &peer.to_string(), record, durable)
            }
            StoreOp::RemovePeer(peer) => self.tables.peers.remove(&peer.to_string()).map(drop),
        }
    }

    fn failed(&self, error: &StoreError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(%error, "store write failed");
    }

    /// A buffered write: on disk within the store's flush interval.
    pub fn persist(&mut self, op: StoreOp) {
        if let Err(error) = self.write(&op, false) {
            self.failed(&error);
            let _ = self.reports.try_send(StorageReport::Failed(error.to_string()));
        }
    }

    /// A durable write: `service` hears of it with `token` once it is on disk.
    pub fn persist_durable(&mut self, op: StoreOp, service: ServiceId, token: DurableToken) {
        let result = self.write(&op, true).map_err(|error| {
            self.failed(&error);
            error.to_string()
        });
        let _ = self.reports.try_send(StorageReport::Durable {
            service,
            token,
            result,
        });
    }

    /// Flushes everything and stops.
    pub async fn close(&mut self) -> Result<(), StoreError> {
        self.store.flush()
    }
}

/// What the store remembers, read once at start.
#[derive(Debug, Default)]
pub struct Restored {
    pub peers: Vec<(PeerId, PeerRecord)>,
    pub telemetry: Vec<(String, ReceivedTelemetry)>,
    pub own_seq: u64,
    pub revocations: Vec<StoredRevocation>,
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
