//! Atomic batches of puts and removes across tables of one store.
//!
//! A [`Batch`] is applied through the store's redo record ([`crate::redo`]), so after a
//! crash either all of it is there or none of it is, without sled transactions. Values are
//! encoded when they are added, so a value that cannot be encoded
//! is reported to the caller at once, and it also poisons the batch: applying a poisoned
//! batch applies nothing, even if the caller ignored the error.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeBounds;
use std::sync::Arc;

use serde::Serialize;
use sled::IVec;

use crate::generation::Generation;
use crate::ordered::{OrderedTable, Scope};
use crate::{codec, redo, CodecError, StoreError, Table};

/// Puts and removes on tables of one store, applied all-or-nothing.
///
/// Build it with the `put*`/`remove*` methods and hand it to
/// [`crate::task::StorageHandle::write`] (or `write_durable`), or apply it directly with
/// [`crate::Store::apply`]. Operations apply in the order they were added: a remove after a
/// put of the same key leaves the key absent.
#[derive(Default)]
pub struct Batch {
    ops: Vec<Op>,
    /// The store the tables belong to (its generation), fixed by the first operation.
    store: Option<Arc<Generation>>,
    /// The first error met while building; the batch then applies nothing.
    poison: Option<StoreError>,
}

enum Op {
    Put {
        tree: sled::Tree,
        key: IVec,
        value: IVec,
    },
    Remove {
        tree: sled::Tree,
        key: IVec,
    },
    /// Inclusive sled key bounds of one scope's index range.
    RemoveRange {
        tree: sled::Tree,
        low: Vec<u8>,
        high: Vec<u8>,
    },
    /// Makes the batch (and the group it is applied in) fail before anything is written.
    FailForTest,
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values can be large and private; their count says enough in logs.
        f.debug_struct("Batch")
            .field("operations", &self.ops.len())
            .field("poisoned", &self.poison.is_some())
            .finish()
    }
}

/// One operation of a batch, as [`Batch::operations`] shows it (for tests and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpSummary {
    pub table: String,
    /// The key as stored (for ordered tables, the scope and index bytes).
    pub key: Vec<u8>,
    /// `put`, `remove` or `remove_range`.
    pub kind: &'static str,
}

impl OpSummary {
    /// Whether this is a `kind` of `key` (as a string key) in `table`.
    pub fn is(&self, kind: &str, table: &str, key: &str) -> bool {
        self.kind == kind && self.table == table && self.key == key.as_bytes()
    }
}

/// What applying a batch did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Applied {
    /// Puts and removes written, including the removes a range resolved to.
    pub(crate) entries: usize,
    /// Entries removed by `remove_range` operations.
    pub(crate) removed_by_ranges: usize,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of operations added (a range removal counts as one).
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True if nothing was added.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// What the batch does, operation by operation.
    pub fn operations(&self) -> Vec<OpSummary> {
        let name = |tree: &sled::Tree| String::from_utf8_lossy(&tree.name()).into_owned();
        self.ops
            .iter()
            .filter_map(|op| match op {
                Op::Put { tree, key, .. } => Some(OpSummary {
                    table: name(tree),
                    key: key.to_vec(),
                    kind: "put",
                }),
                Op::Remove { tree, key } => Some(OpSummary {
                    table: name(tree),
                    key: key.to_vec(),
                    kind: "remove",
                }),
                Op::RemoveRange { tree, low, .. } => Some(OpSummary {
                    table: name(tree),
                    key: low.clone(),
                    kind: "remove_range",
                }),
                Op::FailForTest => None,
            })
            .collect()
    }

    /// Whether any operation is a `kind` (`put`, `remove`) of a key in `table`.
    pub fn touches(&self, kind: &str, table: &str) -> bool {
        self.operations()
            .iter()
            .any(|op| op.kind == kind && op.table == table)
    }

    /// The error that poisoned this batch, if one did: such a batch applies nothing.
    pub fn error(&self) -> Option<&StoreError> {
        self.poison.as_ref()
    }

    /// Puts `value` under `key` in a string-keyed table.
    pub fn put<V: Serialize>(
        &mut self,
        table: &Table<V>,
        key: &str,
        value: &V,
    ) -> Result<(), StoreError> {
        self.same_store(&table.generation, table.name)?;
        let value = self.encode(table.name, || key.to_owned(), value)?;
        self.ops.push(Op::Put {
            tree: table.tree.clone(),
            key: IVec::from(key.as_bytes()),
            value,
        });
        Ok(())
    }

    /// Removes `key` from a string-keyed table.
    pub fn remove<V>(&mut self, table: &Table<V>, key: &str) {
        if self.same_store(&table.generation, table.name).is_ok() {
            self.ops.push(Op::Remove {
                tree: table.tree.clone(),
                key: IVec::from(key.as_bytes()),
            });
        }
    }

    /// Puts `value` at `index` in `scope` of an ordered table.
    pub fn put_ordered<V: Serialize>(
        &mut self,
        table: &OrderedTable<V>,
        scope: &Scope,
        index: u64,
        value: &V,
    ) -> Result<(), StoreError> {
        self.same_store(&table.generation, table.name)?;
        let value = self.encode(table.name, || format!("{scope}/{index}"), value)?;
        self.ops.push(Op::Put {
            tree: table.tree.clone(),
            key: IVec::from(scope.key(index)),
            value,
        });
        Ok(())
    }

    /// Removes `index` from `scope` of an ordered table.
    pub fn remove_ordered<V>(&mut self, table: &OrderedTable<V>, scope: &Scope, index: u64) {
        if self.same_store(&table.generation, table.name).is_ok() {
            self.ops.push(Op::Remove {
                tree: table.tree.clone(),
                key: IVec::from(scope.key(index)),
            });
        }
    }

    /// Removes every entry of `scope` in `range` (log truncation, compaction).
    ///
    /// The range is resolved when the batch is applied, in the store's writer turn, to the
    /// keys stored then plus those put earlier in this batch. A key another thread inserts into the range in between survives; writers that
    /// all go through the storage task never see that, as it is the only one applying.
    pub fn remove_range<V>(
        &mut self,
        table: &OrderedTable<V>,
        scope: &Scope,
        range: impl RangeBounds<u64>,
    ) {
        if self.same_store(&table.generation, table.name).is_err() {
            return;
        }
        if let Some((low, high)) = scope.key_span(&range) {
            self.ops.push(Op::RemoveRange {
                tree: table.tree.clone(),
                low,
                high,
            });
        }
    }

    /// Makes applying this batch fail once its operations were resolved, before anything is
    /// written; a group it is applied in fails the same way. For tests of atomicity.
    #[doc(hidden)]
    pub fn fail_for_test(&mut self) {
        self.ops.push(Op::FailForTest);
    }

    pub(crate) fn store(&self) -> Option<&Arc<Generation>> {
        self.store.as_ref()
    }

    fn same_store(
        &mut self,
        store: &Arc<Generation>,
        table: &'static str,
    ) -> Result<(), StoreError> {
        match &self.store {
            None => {
                self.store = Some(store.clone());
                Ok(())
            }
            Some(first) if Arc::ptr_eq(first, store) => Ok(()),
            Some(_) => Err(self.poisoned(StoreError::ForeignTable { table })),
        }
    }

    fn encode<V: Serialize>(
        &mut self,
        table: &'static str,
        key: impl FnOnce() -> String,
        value: &V,
    ) -> Result<IVec, StoreError> {
        let encoded = codec::encode(value).and_then(|bytes| {
            // A value the codec refuses to decode would be written and then never read back.
            if bytes.len() > codec::MAX_DECODE_LEN {
                Err(CodecError::TooLong {
                    len: bytes.len(),
                    max: codec::MAX_DECODE_LEN,
                })
            } else {
                Ok(bytes)
            }
        });
        match encoded {
            Ok(bytes) => Ok(IVec::from(bytes)),
            Err(source) => Err(self.poisoned(StoreError::Encode {
                table,
                key: key(),
                source,
            })),
        }
    }

    /// Records `error` as the batch's poison (the first one wins) and returns it.
    fn poisoned(&mut self, error: StoreError) -> StoreError {
        if self.poison.is_none() {
            self.poison = Some(error.clone());
        }
        error
    }
}

// Writes of single operations, for what does not go through the storage task (tests,
// tools); they are batches of one, so they live here rather than with the table.
impl<V: Serialize> OrderedTable<V> {
    /// Stores `value` at `index` in `scope`; buffered (durable within the store's flush
    /// interval).
    pub fn put(&self, scope: &Scope, index: u64, value: &V) -> Result<(), StoreError> {
        let mut batch = Batch::new();
        batch.put_ordered(self, scope, index, value)?;
        apply(&batch).map(|_| ())
    }

    /// Removes every entry of `scope` in `range` atomically (log truncation, compaction);
    /// returns how many there were.
    pub fn remove_range(
        &self,
        scope: &Scope,
        range: impl RangeBounds<u64>,
    ) -> Result<usize, StoreError> {
        let mut batch = Batch::new();
        batch.remove_range(self, scope, range);
        apply(&batch).map(|applied| applied.removed_by_ranges)
    }
}

/// Applies `batch` (not flushed: durable within `flush_every`, or at the next durable
/// commit).
pub(crate) fn apply(batch: &Batch) -> Result<Applied, StoreError> {
    apply_all(std::slice::from_ref(batch))
}

/// Applies `batches` in order as one group: after a crash, all of them or none.
///
/// The group's operations are resolved to plain puts and removes (range removals read the
/// keys they cover) and handed to the store's [`crate::redo`] record, all in one writer
/// turn, so no other batch of the store lands between the resolution and the writes.
/// Nothing is written when a batch is poisoned or its test hook fails.
pub(crate) fn apply_all(batches: &[Batch]) -> Result<Applied, StoreError> {
    crate::guard::check("store");
    if let Some(error) = batches.iter().find_map(|b| b.poison.as_ref()) {
        return Err(error.clone());
    }
    let Some(store) = batches.iter().find_map(|b| b.store.clone()) else {
        // No operation on any table: nothing to write.
        return Ok(Applied::default());
    };
    let mut turn = store.redo.lock();
    let mut applied = Applied::default();
    let mut writes: Vec<redo::Write> = Vec::with_capacity(batches.iter().map(Batch::len).sum());
    // Keys already written, and whether they are present after those writes, so a range
    // removal also covers entries put earlier in the same batch (or group).
    let mut overlay = Overlay::new();
    for op in batches.iter().flat_map(|b| &b.ops) {
        match op {
            Op::Put { tree, key, value } => push_write(
                &mut overlay,
                &mut writes,
                tree,
                key.clone(),
                Some(value.clone()),
            ),
            Op::Remove { tree, key } => {
                push_write(&mut overlay, &mut writes, tree, key.clone(), None)
            }
            Op::RemoveRange { tree, low, high } => {
                let name = tree.name();
                let (low, high) = (IVec::from(low.as_slice()), IVec::from(high.as_slice()));
                let mut doomed = BTreeMap::new();
                for key in tree.range(low.clone()..=high.clone()).keys() {
                    let key = key?;
                    let present = overlay
                        .get(&(name.clone(), key.clone()))
                        .copied()
                        .unwrap_or(true);
                    doomed.insert(key, present);
                }
                for ((_, key), present) in overlay.range((name.clone(), low)..=(name.clone(), high))
                {
                    doomed.insert(key.clone(), *present);
                }
                for (key, present) in doomed {
                    applied.removed_by_ranges += usize::from(present);
                    push_write(&mut overlay, &mut writes, tree, key, None);
                }
            }
            Op::FailForTest => {
                return Err(StoreError::Io(
                    "the batch was aborted by its test hook".into(),
                ))
            }
        }
    }
    applied.entries = writes.len();
    turn.apply(&writes)?;
    Ok(applied)
}

/// Keys already written in a group, by tree name, and whether each is present after them.
type Overlay = BTreeMap<(IVec, IVec), bool>;

/// Adds one resolved write to the group and notes its effect in the overlay.
fn push_write(
    overlay: &mut Overlay,
    writes: &mut Vec<redo::Write>,
    tree: &sled::Tree,
    key: IVec,
    value: Option<IVec>,
) {
    overlay.insert((tree.name(), key.clone()), value.is_some());
    writes.push(redo::Write {
        tree: tree.clone(),
        key,
        value,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Store, StoreOptions};
    use serde::Serializer;

    /// A value whose encoding always fails.
    struct Unencodable;

    impl Serialize for Unencodable {
        fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("refuses to be encoded"))
        }
    }

    #[derive(Serialize, serde::Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
    }

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        (dir, store)
    }

    #[test]
    fn a_batch_across_tables_applies_together() {
        let (_dir, store) = open();
        let names = store.table::<String>("names").unwrap();
        let log = store.ordered_table::<String>("log").unwrap();
        let scope = Scope::new("c1").unwrap();
        names.put("stale", &"x".into()).unwrap();
        let mut batch = Batch::new();
        batch.put(&names, "n", &"v".into()).unwrap();
        batch.remove(&names, "stale");
        for i in 0..5 {
            batch
                .put_ordered(&log, &scope, i, &format!("e{i}"))
                .unwrap();
        }
        batch.remove_range(&log, &scope, 0..2);
        batch.remove_ordered(&log, &scope, 4);
        store.apply(batch).unwrap();
        assert_eq!(names.get("n").unwrap().as_deref(), Some("v"));
        assert_eq!(names.get("stale").unwrap(), None);
        // Operations apply in order: the range removal also takes entries put earlier in
        // the same batch.
        let indices: Vec<u64> = log.range(&scope, ..).map(|e| e.unwrap().0).collect();
        assert_eq!(indices, vec![2, 3]);
    }

    #[test]
    fn a_range_removal_applies_to_entries_already_stored() {
        let (_dir, store) = open();
        let log = store.ordered_table::<u64>("log").unwrap();
        let scope = Scope::global();
        for i in 0..10 {
            log.put(&scope, i, &i).unwrap();
        }
        let mut batch = Batch::new();
        batch.remove_range(&log, &scope, ..5);
        batch.put_ordered(&log, &scope, 3, &33).unwrap();
        store.apply(batch).unwrap();
        let left: Vec<(u64, u64)> = log.range(&scope, ..).map(|e| e.unwrap()).collect();
        assert_eq!(left, vec![(3, 33), (5, 5), (6, 6), (7, 7), (8, 8), (9, 9)]);
    }

    #[test]
    fn an_aborted_batch_applies_nothing() {
        let (_dir, store) = open();
        let names = store.table::<String>("names").unwrap();
        let log = store.ordered_table::<u64>("log").unwrap();
        let scope = Scope::global();
        log.put(&scope, 1, &1).unwrap();
        let mut batch = Batch::new();
        batch.put(&names, "a", &"a".into()).unwrap();
        batch.put_ordered(&log, &scope, 2, &2).unwrap();
        batch.remove_range(&log, &scope, ..);
        batch.fail_for_test();
        batch.put(&names, "b", &"b".into()).unwrap();
        assert!(store.apply(batch).is_err());
        assert!(names.is_empty());
        assert_eq!(log.range(&scope, ..).count(), 1);
        assert_eq!(log.get(&scope, 1).unwrap(), Some(1));
        // In a group, one failing batch takes the whole group down with it.
        let mut good = Batch::new();
        good.put(&names, "c", &"c".into()).unwrap();
        let mut bad = Batch::new();
        bad.put(&names, "d", &"d".into()).unwrap();
        bad.fail_for_test();
        assert!(apply_all(&[good, bad]).is_err());
        assert!(names.is_empty());
        assert_eq!(log.get(&scope, 1).unwrap(), Some(1));
    }

    #[test]
    fn an_encoding_failure_poisons_the_batch() {
        let (_dir, store) = open();
        let names = store.table::<String>("names").unwrap();
        let odd = store.table::<Unencodable>("odd").unwrap();
        let mut batch = Batch::new();
        batch.put(&names, "a", &"a".into()).unwrap();
        let err = batch.put(&odd, "x", &Unencodable).unwrap_err();
        assert!(
            matches!(err, StoreError::Encode { table: "odd", .. }),
            "{err}"
        );
        // The caller ignores the error and applies anyway: still nothing is applied.
        batch.put(&names, "b", &"b".into()).unwrap();
        assert!(batch.error().is_some());
        assert!(matches!(store.apply(batch), Err(StoreError::Encode { .. })));
        assert!(names.is_empty());
    }

    #[test]
    fn a_value_too_large_to_read_back_is_refused() {
        let (_dir, store) = open();
        let names = store.table::<Either>("names").unwrap();
        let mut batch = Batch::new();
        let huge = Either::Text("x".repeat(codec::MAX_DECODE_LEN));
        let err = batch.put(&names, "big", &huge).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Encode {
                    source: CodecError::TooLong { .. },
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn tables_of_two_stores_cannot_share_a_batch() {
        let (_d1, one) = open();
        let (_d2, two) = open();
        let a = one.table::<u8>("t").unwrap();
        let b = two.table::<u8>("t").unwrap();
        let mut batch = Batch::new();
        batch.put(&a, "k", &1).unwrap();
        assert!(matches!(
            batch.put(&b, "k", &2),
            Err(StoreError::ForeignTable { table: "t" })
        ));
        assert!(one.apply(batch).is_err());
        assert!(a.is_empty() && b.is_empty());
        // A batch of one store's tables is refused by the other store.
        let mut batch = Batch::new();
        batch.put(&a, "k", &1).unwrap();
        assert!(matches!(
            two.apply(batch),
            Err(StoreError::ForeignBatch { .. })
        ));
    }
}
