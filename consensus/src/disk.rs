//! The Raft group's disk: its log and hard state in sled, through the store's tables.
//!
//! - log: ordered table `raft_log`, scope = the cluster's id, index = the entry's index,
//!   value = the entry as raft-rs encodes it (protobuf);
//! - hard state: table `raft_state`, key = the cluster's id, value = term, vote, commit and
//!   the configuration (voters, learners).
//!
//! [`RaftDisk::persist`] writes one `Ready`'s new entries (first removing any suffix they
//! replace: a follower's uncommitted tail overwritten by a new leader) and hard state in one
//! durable batch, and returns once it is on disk — Raft's rule that nothing is promised to
//! others before it is stored. [`RaftDisk::load`] rebuilds raft-rs's in-memory storage from
//! what is on disk after a restart; an entry that does not decode (a damaged store) is an
//! error, not a silently shorter log.

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState};
use raft::storage::MemStorage;
use serde::{Deserialize, Serialize};

use fogmesh_store::{Batch, OrderedTable, Scope, Store, StoreError, Table};

/// Why the disk failed. The group must not go on: what it promised may not be stored.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("raft log entry {index} is damaged: {reason}")]
    Damaged { index: u64, reason: String },
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredEntry(#[serde(with = "serde_bytes")] Vec<u8>);

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct StoredState {
    term: u64,
    vote: u64,
    commit: u64,
    voters: Vec<u64>,
    learners: Vec<u64>,
}

/// One cluster's Raft log and hard state in a store.
pub struct RaftDisk {
    store: Store,
    log: OrderedTable<StoredEntry>,
    state: Table<StoredState>,
    scope: Scope,
    key: String,
}

impl std::fmt::Debug for RaftDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftDisk")
            .field("cluster", &self.key)
            .finish()
    }
}

impl RaftDisk {
    /// The disk of cluster `cluster` (at most 255 bytes of id) in `store`.
    pub fn open(store: &Store, cluster: &str) -> Result<Self, DiskError> {
        Ok(Self {
            store: store.clone(),
            log: store.ordered_table("raft_log")?,
            state: store.table("raft_state")?,
            scope: Scope::new(cluster.as_bytes())?,
            key: cluster.to_owned(),
        })
    }

    /// raft-rs's storage as the disk left it; a group never stored starts with
    /// `founding_voters` as its configuration.
    pub fn load(&self, founding_voters: &[u64]) -> Result<MemStorage, DiskError> {
        let Some(stored) = self.state.get(&self.key)? else {
            let storage = MemStorage::new_with_conf_state(ConfState::from((
                founding_voters.to_vec(),
                vec![],
            )));
            self.persist(&[], Some(&HardState::default()), &storage, true)?;
            return Ok(storage);
        };
        let storage =
            MemStorage::new_with_conf_state(ConfState::from((stored.voters, stored.learners)));
        let mut entries = Vec::new();
        for item in self.log.range(&self.scope, ..) {
            let (index, StoredEntry(bytes)) = item?;
            let entry = Entry::parse_from_bytes(&bytes).map_err(|e| DiskError::Damaged {
                index,
                reason: e.to_string(),
            })?;
            if entry.index != index {
                return Err(DiskError::Damaged {
                    index,
                    reason: format!("holds entry {}", entry.index),
                });
            }
            // The log starts at 1 (nothing compacts yet) and has no gaps.
            let expected = entries.last().map_or(1, |e: &Entry| e.index + 1);
            if index != expected {
                return Err(DiskError::Damaged {
                    index,
                    reason: format!("the log skips from {} to {index}", expected - 1),
                });
            }
            entries.push(entry);
        }
        let mut core = storage.wl();
        core.append(&entries)?;
        core.set_hardstate(HardState {
            term: stored.term,
            vote: stored.vote,
            commit: stored.commit.min(entries.last().map_or(0, |e| e.index)),
            ..Default::default()
        });
        drop(core);
        Ok(storage)
    }

    /// Removes this group's log and state (the member left the cluster for good).
    pub fn destroy(&self) -> Result<(), DiskError> {
        let mut batch = Batch::new();
        batch.remove_range(&self.log, &self.scope, 0..);
        batch.remove(&self.state, &self.key);
        self.store.apply_durable(batch)?;
        Ok(())
    }

    /// Stores `entries` (replacing whatever they overwrite), the hard state and the
    /// configuration `storage` holds; durably when `sync` (raft-rs's `must_sync`: new
    /// entries, term or vote), otherwise buffered (only the commit index changed, which Raft
    /// does not need on disk).
    pub fn persist(
        &self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
        storage: &MemStorage,
        sync: bool,
    ) -> Result<(), DiskError> {
        let mut batch = Batch::new();
        if let Some(first) = entries.first() {
            batch.remove_range(&self.log, &self.scope, first.index..);
            for entry in entries {
                let bytes = entry.write_to_bytes().map_err(|e| DiskError::Damaged {
                    index: entry.index,
                    reason: e.to_string(),
                })?;
                batch.put_ordered(&self.log, &self.scope, entry.index, &StoredEntry(bytes))?;
            }
        }
        let stored = raft::Storage::initial_state(storage)?;
        let hs = hard_state.cloned().unwrap_or(stored.hard_state);
        let state = StoredState {
            term: hs.term,
            vote: hs.vote,
            commit: hs.commit,
            voters: stored.conf_state.voters,
            learners: stored.conf_state.learners,
        };
        batch.put(&self.state, &self.key, &state)?;
        if sync {
            self.store.apply_durable(batch)?;
        } else {
            self.store.apply(batch)?;
        }
        Ok(())
    }
}
