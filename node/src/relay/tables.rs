//! What the relay stores: packets held for recipients not reached yet, the inbox, and the
//! messages this node sent (with whether they were delivered).

use fogmesh_store::{Batch, Store, StoreError, Table};

use crate::relay::{HeldRecord, InboxRecord, SentRecord};
use crate::runtime::capability::{Effect, Token};

pub const TABLE_RELAY_HELD: &str = "relay_held";
pub const TABLE_RELAY_INBOX: &str = "relay_inbox";
pub const TABLE_RELAY_SENT: &str = "relay_sent";

/// One change of the relay's tables, keyed by message id (hex).
#[derive(Debug, Clone, PartialEq)]
pub enum RelayOp {
    PutHeld { id: String, record: HeldRecord },
    RemoveHeld { id: String },
    PutInbox { id: String, record: InboxRecord },
    RemoveInbox { id: String },
    PutSent { id: String, record: SentRecord },
    RemoveSent { id: String },
}

/// The relay's tables.
#[derive(Debug, Clone)]
pub struct RelayTables {
    pub held: Table<HeldRecord>,
    pub inbox: Table<InboxRecord>,
    pub sent: Table<SentRecord>,
}

/// What the tables held at start.
#[derive(Debug, Default)]
pub struct Restored {
    pub held: Vec<(String, HeldRecord)>,
    pub inbox: Vec<InboxRecord>,
    pub sent: Vec<SentRecord>,
}

impl RelayTables {
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        Ok(Self {
            held: store.table(TABLE_RELAY_HELD)?,
            inbox: store.table(TABLE_RELAY_INBOX)?,
            sent: store.table(TABLE_RELAY_SENT)?,
        })
    }

    /// Reads every table; unreadable rows are skipped with a warning.
    pub fn restore(&self) -> Restored {
        Restored {
            held: rows(&self.held, "held relay packet"),
            inbox: rows(&self.inbox, "inbox message")
                .into_iter()
                .map(|(_, r)| r)
                .collect(),
            sent: rows(&self.sent, "sent message")
                .into_iter()
                .map(|(_, r)| r)
                .collect(),
        }
    }

    /// `op` as a batch.
    pub fn batch(&self, op: &RelayOp) -> Result<Batch, StoreError> {
        let mut batch = Batch::new();
        self.fill(&mut batch, op)?;
        Ok(batch)
    }

    /// Adds `op` to `batch` (which is poisoned if `op` cannot be encoded).
    fn fill(&self, batch: &mut Batch, op: &RelayOp) -> Result<(), StoreError> {
        match op {
            RelayOp::PutHeld { id, record } => batch.put(&self.held, id, record)?,
            RelayOp::RemoveHeld { id } => batch.remove(&self.held, id),
            RelayOp::PutInbox { id, record } => batch.put(&self.inbox, id, record)?,
            RelayOp::RemoveInbox { id } => batch.remove(&self.inbox, id),
            RelayOp::PutSent { id, record } => batch.put(&self.sent, id, record)?,
            RelayOp::RemoveSent { id } => batch.remove(&self.sent, id),
        }
        Ok(())
    }

    /// A buffered write of `op` (nothing, with a warning, if it cannot be encoded).
    pub fn persist(&self, op: RelayOp) -> Option<Effect> {
        match self.batch(&op) {
            Ok(batch) => Some(Effect::Persist(batch)),
            Err(error) => {
                tracing::warn!(%error, "relay record not stored");
                None
            }
        }
    }

    /// A durable write of `op`, reported with `token`. One that cannot be encoded goes as a
    /// poisoned batch, which the storage task refuses: its report says it failed.
    pub fn persist_durable(&self, op: RelayOp, token: Token) -> Effect {
        let mut batch = Batch::new();
        let _ = self.fill(&mut batch, &op);
        Effect::PersistDurable { batch, token }
    }
}

fn rows<V: serde::Serialize + serde::de::DeserializeOwned>(
    table: &Table<V>,
    what: &str,
) -> Vec<(String, V)> {
    let mut rows = Vec::new();
    for entry in table.entries() {
        match entry {
            Ok(row) => rows.push(row),
            Err(error) => tracing::warn!(%error, what, "skipping an unreadable stored row"),
        }
    }
    rows
}
