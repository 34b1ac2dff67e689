//! Revocations: root-signed withdrawals of tickets, applied to the secure channel's set,
//! stored, gossiped, re-gossiped, and the connections they withdraw closed
//! (docs/admission.md).
//!
//! - [`service`] — the capability;
//! - [`api`] — `POST /v1/revocations`.

pub mod api;
pub mod service;

use fogmesh_store::Table;
use fogmesh_transports::ticket::RevocationSet;
use serde::{Deserialize, Serialize};

use crate::runtime::registration::SetupError;
use crate::runtime::registration::{Registered, Setup};
use service::{MeshAuthority, RevocationMetrics, RevocationService};

pub const TABLE_REVOCATIONS: &str = "revocations";

/// A revocation as stored: the signed bytes, exactly as received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRevocation {
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
    pub received_at_ms: u64,
}

/// The answer to `POST /v1/revocations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationOutcome {
    /// False if the node already held it.
    pub new: bool,
    /// Connections closed because of it.
    pub disconnected: Vec<String>,
}

/// Every stored revocation that can be read; unreadable ones are skipped with a warning.
pub fn stored(table: &Table<StoredRevocation>) -> Vec<StoredRevocation> {
    let mut all = Vec::new();
    for entry in table.entries() {
        match entry {
            Ok((_, revocation)) => all.push(revocation),
            Err(error) => tracing::warn!(%error, "skipping unreadable stored revocation"),
        }
    }
    all
}

/// The stored revocations that verify against `root`; others (another mesh's, corrupt) are
/// skipped with a warning. Read at start-up, before the secure channel exists.
pub fn load_set(
    table: &Table<StoredRevocation>,
    root: &libp2p::identity::PublicKey,
) -> RevocationSet {
    let mut set = RevocationSet::default();
    let mut skipped = 0usize;
    for revocation in stored(table) {
        if let Err(error) = set.add(&revocation.bytes, root) {
            skipped += 1;
            tracing::warn!(%error, "skipping a stored revocation that does not verify");
        }
    }
    tracing::info!(revocations = set.len(), skipped, "revocations loaded");
    set
}

/// Registers the revocations capability.
pub fn register(setup: &mut Setup<'_>) -> Result<Registered, SetupError> {
    let table: Table<StoredRevocation> = setup.store.table(TABLE_REVOCATIONS)?;
    let metrics = RevocationMetrics::default();
    metrics.register(setup.metrics);
    let mut revocations = RevocationService::new(
        setup.membership.map(|m| MeshAuthority {
            root: m.root.clone(),
            own_admission: m.admission.clone(),
            topic: crate::admission::revocation_topic(&m.mesh_id),
        }),
        setup.channel.clone(),
        table.clone(),
        metrics,
    );
    revocations.restore(stored(&table));
    Ok(Registered {
        capability: Box::new(revocations),
        routes: api::routes(),
    })
}
