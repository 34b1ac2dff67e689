//! The Raft group's log and hard state as stored, with no storage engine: what a
//! [`PersistRequest`] becomes on disk, and how a group is
//! rebuilt from what the disk held.
//!
//! - the log: one [`StoredEntry`] per index (the entry as raft-rs encodes it, protobuf), kept
//!   in index order by the caller's table; a request's entries replace whatever suffix they
//!   overwrite (a follower's uncommitted tail overwritten by a new leader);
//! - the hard state: one [`StoredState`] per group: term, vote, commit and the configuration
//!   (voters, learners).
//!
//! [`restore`] rebuilds raft-rs's in-memory storage from both after a restart; an entry
//! that does not decode, names another index or leaves a gap (a damaged store) is an error,
//! not a silently shorter log. The node keeps these in sled tables (its cluster folder).

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState};
use raft::storage::MemStorage;
use serde::{Deserialize, Serialize};

/// What a member must store: one raft `Ready`'s new entries (replacing any suffix they
/// overwrite), its hard state and its configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct PersistRequest {
    /// Reported back with `ClusterNode::on_persisted` once stored.
    pub number: u64,
    pub entries: Vec<Entry>,
    pub hard_state: HardState,
    pub conf_state: ConfState,
    /// Must be on disk (flushed) before it is reported: new entries, term or vote. If not,
    /// only the commit index moved, which Raft does not need on disk; such a request is
    /// reported persisted by the member itself when nothing synced is outstanding.
    pub sync: bool,
}

/// Why a stored log cannot be used. The group must not go on: what it promised may not be
/// stored.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("raft log entry {index} is damaged: {reason}")]
    Damaged { index: u64, reason: String },
    #[error("the raft log cannot be read: {0}")]
    Read(String),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
}

/// One log entry as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEntry(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// A group's hard state and configuration as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredState {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

/// The entries of `request`, ready to store by index.
pub fn stored_entries(request: &PersistRequest) -> Result<Vec<(u64, StoredEntry)>, DiskError> {
    request
        .entries
        .iter()
        .map(|entry| {
            let bytes = entry.write_to_bytes().map_err(|e| DiskError::Damaged {
                index: entry.index,
                reason: e.to_string(),
            })?;
            Ok((entry.index, StoredEntry(bytes)))
        })
        .collect()
}

/// The hard state and configuration of `request`, as stored.
pub fn stored_state(request: &PersistRequest) -> StoredState {
    StoredState {
        term: request.hard_state.term,
        vote: request.hard_state.vote,
        commit: request.hard_state.commit,
        voters: request.conf_state.voters.clone(),
        learners: request.conf_state.learners.clone(),
    }
}

/// raft-rs's storage as the disk left it: `state` (none: a group never stored, which starts
/// with `founding_voters`) and the log, in index order.
pub fn restore(
    state: Option<StoredState>,
    founding_voters: &[u64],
    log: impl IntoIterator<Item = Result<(u64, StoredEntry), String>>,
) -> Result<MemStorage, DiskError> {
    let Some(stored) = state else {
        return Ok(MemStorage::new_with_conf_state(ConfState::from((
            founding_voters.to_vec(),
            vec![],
        ))));
    };
    let storage =
        MemStorage::new_with_conf_state(ConfState::from((stored.voters, stored.learners)));
    let mut entries: Vec<Entry> = Vec::new();
    for item in log {
        let (index, StoredEntry(bytes)) = item.map_err(DiskError::Read)?;
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
        let expected = entries.last().map_or(1, |e| e.index + 1);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8].into(),
            ..Default::default()
        }
    }

    fn request(entries: Vec<Entry>) -> PersistRequest {
        PersistRequest {
            number: 1,
            entries,
            hard_state: HardState {
                term: 2,
                vote: 1,
                commit: 2,
                ..Default::default()
            },
            conf_state: ConfState::from((vec![1, 2], vec![3])),
            sync: true,
        }
    }

    #[test]
    fn what_is_stored_comes_back() {
        let request = request(vec![entry(1, 1), entry(2, 2)]);
        let log = stored_entries(&request).unwrap();
        let storage = restore(Some(stored_state(&request)), &[9], log.into_iter().map(Ok)).unwrap();
        let state = raft::Storage::initial_state(&storage).unwrap();
        assert_eq!(state.hard_state.term, 2);
        assert_eq!(state.hard_state.commit, 2);
        assert_eq!(state.conf_state.voters, vec![1, 2]);
        assert_eq!(state.conf_state.learners, vec![3]);
        assert_eq!(raft::Storage::last_index(&storage).unwrap(), 2);
        // Never stored: the founders' configuration, nothing else.
        let fresh = restore(None, &[9], std::iter::empty()).unwrap();
        let state = raft::Storage::initial_state(&fresh).unwrap();
        assert_eq!(state.conf_state.voters, vec![9]);
    }

    #[test]
    fn a_damaged_entry_a_wrong_index_or_a_gap_is_refused() {
        let request = request(vec![entry(1, 1), entry(2, 1), entry(3, 1)]);
        let state = Some(stored_state(&request));
        let mut log = stored_entries(&request).unwrap();
        let mut damaged = log.clone();
        damaged[2].1 = StoredEntry(vec![0xff; 7]);
        assert!(matches!(
            restore(state.clone(), &[], damaged.into_iter().map(Ok)),
            Err(DiskError::Damaged { index: 3, .. })
        ));
        let mut misplaced = log.clone();
        misplaced[1].0 = 7;
        assert!(matches!(
            restore(state.clone(), &[], misplaced.into_iter().map(Ok)),
            Err(DiskError::Damaged { index: 7, .. })
        ));
        log.remove(1);
        assert!(matches!(
            restore(state.clone(), &[], log.into_iter().map(Ok)),
            Err(DiskError::Damaged { index: 3, .. })
        ));
        assert!(matches!(
            restore(state, &[], [Err("disk gone".to_owned())]),
            Err(DiskError::Read(_))
        ));
    }
}
