//! Crash-atomic groups of writes without sled transactions.
//!
//! Why not sled's transactions: the first transaction (or `apply_batch`) in a process
//! switches sled 0.34 to a process-wide reader-writer lock (`concurrency_control.rs`) that
//! every later read, insert and flush of every database in the process takes. A flush holds
//! it shared while it waits for its log buffers to reach the disk, a transaction waiting for
//! it exclusively blocks every new reader, and with several stores in one process (the
//! in-memory test network runs dozens) that deadlocked: flushes waited on I/O work that
//! could not start, transactions waited on the flushes, everything else on the
//! transactions. Without transactions the lock is never switched on and reads never wait
//! for a writer.
//!
//! How a group stays atomic instead: before a group of more than one write is applied, the
//! whole group goes into one value of the redo tree (one insert is atomic in sled); then
//! the writes are applied as plain inserts and removes; then the record is removed. sled
//! recovers its log up to the first record it cannot read, so what survives a crash is a
//! prefix of the writes in log order (the generation check in [`crate::generation`] relies
//! on the same): either the record is missing, and then so is every write that followed
//! it, or it is present, and [`recover`] applies it again when the store is opened. Replay
//! is idempotent: a record lists resolved puts and removes (range removals were resolved
//! to keys before it was written), and nothing written after the record's removal can have
//! survived without the removal.
//!
//! Isolation: one writer per store at a time ([`Redo::lock`]), so groups never interleave.
//! A group whose writes failed part-way (an I/O error) is finished before the next one
//! starts, so its record is never replaced while it is needed.
//! Readers on other threads do not take that lock and can see a group part-way for the
//! microseconds it takes to apply; nothing fogmesh reads depends on seeing a batch whole
//! while it is being written, and after a crash it is whole or absent.

use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use sled::IVec;

use crate::{codec, StoreError};

/// The sled tree holding the record of the group being applied; never a user table.
pub(crate) const TREE: &str = "__fogmesh_redo";
/// One store applies one group at a time, so one key is enough.
const KEY: &[u8] = b"pending";

/// One write of a group: a tree, a key, and the new value or none (a removal).
#[derive(Debug, Clone)]
pub(crate) struct Write {
    pub(crate) tree: sled::Tree,
    pub(crate) key: IVec,
    pub(crate) value: Option<IVec>,
}

/// A write as the record stores it: the tree by name.
#[derive(Serialize, Deserialize)]
struct RecordedWrite {
    #[serde(with = "serde_bytes")]
    tree: Vec<u8>,
    #[serde(with = "serde_bytes")]
    key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    value: Option<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
struct Record {
    writes: Vec<RecordedWrite>,
}

impl Record {
    fn of(writes: &[Write]) -> Self {
        Record {
            writes: writes
                .iter()
                .map(|w| RecordedWrite {
                    tree: w.tree.name().to_vec(),
                    key: w.key.to_vec(),
                    value: w.value.as_ref().map(|v| v.to_vec()),
                })
                .collect(),
        }
    }
}

/// The redo record of one store and the lock that makes its writers take turns.
#[derive(Debug)]
pub(crate) struct Redo {
    tree: sled::Tree,
    /// A group whose writes failed part-way (sled I/O error): its record is still stored,
    /// and it is finished before any other group may replace the record.
    unfinished: Mutex<Option<Vec<Write>>>,
}

/// One writer's turn on a store: held while a group is resolved and applied.
pub(crate) struct Turn<'a> {
    redo: &'a Redo,
    unfinished: MutexGuard<'a, Option<Vec<Write>>>,
}

impl Redo {
    pub(crate) fn open(db: &sled::Db) -> Result<Self, StoreError> {
        Ok(Self {
            tree: db.open_tree(TREE)?,
            unfinished: Mutex::new(None),
        })
    }

    /// Waits for this store's writer turn.
    pub(crate) fn lock(&self) -> Turn<'_> {
        Turn {
            redo: self,
            // A writer that panicked mid-group left `unfinished` unset but its record
            // stored; the record is finished when the store is next opened, and only a
            // group that applied in full ever replaces it.
            unfinished: self.unfinished.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    fn write(&self, write: &Write) -> Result<(), StoreError> {
        match &write.value {
            Some(value) => write.tree.insert(write.key.clone(), value.clone())?,
            None => write.tree.remove(&write.key)?,
        };
        Ok(())
    }

    fn write_all(&self, writes: &[Write]) -> Result<(), StoreError> {
        for write in writes {
            self.write(write)?;
        }
        self.tree.remove(KEY)?;
        Ok(())
    }
}

impl Turn<'_> {
    /// Applies `writes` in order, all or nothing across a crash.
    ///
    /// An error means sled failed (I/O). If it failed after the record was stored, the
    /// group is not lost: the next group first finishes it, and so does the next open.
    pub(crate) fn apply(&mut self, writes: &[Write]) -> Result<(), StoreError> {
        if let Some(earlier) = self.unfinished.take() {
            if let Err(error) = self.redo.write_all(&earlier) {
                *self.unfinished = Some(earlier);
                return Err(error);
            }
        }
        match writes {
            [] => Ok(()),
            // One insert or removal is atomic by itself.
            [write] => self.redo.write(write),
            _ => {
                let record = codec::encode(&Record::of(writes))
                    .map_err(|e| StoreError::Io(format!("cannot encode a redo record: {e}")))?;
                self.redo.tree.insert(KEY, record)?;
                self.redo.write_all(writes).inspect_err(|_| {
                    *self.unfinished = Some(writes.to_vec());
                })
            }
        }
    }
}

/// Finishes the group a crash interrupted, if there is one; returns how many writes it
/// applied again. Called when a store is opened, before anything reads it.
pub(crate) fn recover(db: &sled::Db, dir: &std::path::Path) -> Result<usize, StoreError> {
    let redo = Redo::open(db)?;
    let Some(bytes) = redo.tree.get(KEY)? else {
        return Ok(0);
    };
    // Written by us and bounded by the group size, not by the per-value limit.
    let record: Record =
        codec::decode_bounded(&bytes, usize::MAX).map_err(|e| StoreError::Damaged {
            path: dir.to_path_buf(),
            reason: format!("the record of an interrupted batch is unreadable ({e})"),
        })?;
    let writes = record
        .writes
        .into_iter()
        .map(|w| {
            Ok(Write {
                tree: db.open_tree(&w.tree)?,
                key: IVec::from(w.key),
                value: w.value.map(IVec::from),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    redo.write_all(&writes)?;
    tracing::info!(
        writes = writes.len(),
        "store: finished a batch a crash interrupted"
    );
    Ok(writes.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Batch, Store, StoreOptions};

    fn write(tree: &str, key: &str, value: Option<&str>) -> RecordedWrite {
        RecordedWrite {
            tree: tree.as_bytes().to_vec(),
            key: key.as_bytes().to_vec(),
            value: value.map(|v| codec::encode(&v.to_owned()).unwrap()),
        }
    }

    #[test]
    fn an_interrupted_group_is_finished_when_the_store_opens() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            let names = store.table::<String>("names").unwrap();
            names.put("gone", &"old".into()).unwrap();
            names.put("a", &"old".into()).unwrap();
            // What a crash right after the record, before any of its writes, leaves.
            let record = codec::encode(&Record {
                writes: vec![
                    write("names", "a", Some("new")),
                    write("names", "gone", None),
                    write("other", "b", Some("b")),
                ],
            })
            .unwrap();
            store
                .db()
                .open_tree(TREE)
                .unwrap()
                .insert(KEY, record)
                .unwrap();
            store.flush().unwrap();
        }
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let names = store.table::<String>("names").unwrap();
        let other = store.table::<String>("other").unwrap();
        assert_eq!(names.get("a").unwrap().as_deref(), Some("new"));
        assert_eq!(names.get("gone").unwrap(), None);
        assert_eq!(other.get("b").unwrap().as_deref(), Some("b"));
        assert!(store.db().open_tree(TREE).unwrap().is_empty());
    }

    #[test]
    fn an_unreadable_record_is_damage_not_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            let tree = store.db().open_tree(TREE).unwrap();
            tree.insert(KEY, &b"\xff\x00 not cbor"[..]).unwrap();
            store.flush().unwrap();
        }
        let err = Store::open(dir.path(), &StoreOptions::default()).unwrap_err();
        assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
    }

    #[test]
    fn a_batch_applies_in_full_and_leaves_no_record_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let names = store.table::<String>("names").unwrap();
        let mut batch = Batch::new();
        for i in 0..10 {
            batch.put(&names, &format!("k{i}"), &"v".into()).unwrap();
        }
        store.apply(batch).unwrap();
        assert_eq!(names.len(), 10);
        assert!(store.db().open_tree(TREE).unwrap().is_empty());
    }
}
