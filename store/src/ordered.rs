//! Tables keyed by `(scope, u64)`, in numeric order: a Raft log, per-origin sequences.
//!
//! Key layout in the sled tree: one byte holding the scope's length, the scope's bytes, then
//! the index as 8 big-endian bytes. Big-endian makes sled's byte order the numeric order
//! (255 before 256); the length byte keeps scopes apart even when one is a prefix of
//! another ("a" and "ab"), so a scan of one scope can never walk into a neighbour's keys.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};

use crate::generation::Generation;
use crate::{codec, CodecError, StoreError};

/// The part of an ordered key before the index: a cluster id, an origin's PeerId bytes, or
/// nothing ([`Scope::global`]) for a table with one sequence.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    /// The length byte followed by the scope's bytes: exactly the key prefix in sled.
    prefix: Vec<u8>,
}

impl Scope {
    /// The longest scope a key can carry (its length is stored in one byte).
    pub const MAX_LEN: usize = 255;

    /// A scope of these bytes, at most [`Scope::MAX_LEN`] long.
    pub fn new(bytes: impl AsRef<[u8]>) -> Result<Self, StoreError> {
        let bytes = bytes.as_ref();
        let len = u8::try_from(bytes.len()).map_err(|_| StoreError::ScopeTooLong {
            len: bytes.len(),
            max: Self::MAX_LEN,
        })?;
        let mut prefix = Vec::with_capacity(1 + bytes.len());
        prefix.push(len);
        prefix.extend_from_slice(bytes);
        Ok(Self { prefix })
    }

    /// The empty scope, for tables that hold a single sequence.
    pub fn global() -> Self {
        Self { prefix: vec![0] }
    }

    /// The scope's bytes as given to [`Scope::new`].
    pub fn as_bytes(&self) -> &[u8] {
        &self.prefix[1..]
    }

    pub(crate) fn key(&self, index: u64) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.prefix.len() + 8);
        key.extend_from_slice(&self.prefix);
        key.extend_from_slice(&index.to_be_bytes());
        key
    }

    /// The sled keys of the first and last index `range` covers, or `None` when it covers
    /// none (an empty or reversed range is empty, not a panic).
    pub(crate) fn key_span(&self, range: &impl RangeBounds<u64>) -> Option<(Vec<u8>, Vec<u8>)> {
        let (low, high) = index_span(range)?;
        Some((self.key(low), self.key(high)))
    }

    /// The index of a key of this scope.
    fn index_of(&self, key: &[u8]) -> Option<u64> {
        let rest = key.strip_prefix(self.prefix.as_slice())?;
        <[u8; 8]>::try_from(rest).ok().map(u64::from_be_bytes)
    }
}

/// Printable scopes as text, anything else as hex, so errors and logs stay readable.
impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.as_bytes();
        if !bytes.is_empty() && bytes.iter().all(|b| b.is_ascii_graphic()) {
            f.write_str(&String::from_utf8_lossy(bytes))
        } else {
            f.write_str("0x")?;
            bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
        }
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scope({self})")
    }
}

/// The inclusive index bounds of `range`, `None` when it is empty.
fn index_span(range: &impl RangeBounds<u64>) -> Option<(u64, u64)> {
    let low = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let high = match range.end_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.checked_sub(1)?,
        Bound::Unbounded => u64::MAX,
    };
    (low <= high).then_some((low, high))
}

/// A named table of `V` values keyed by `(scope, index)`, ordered by index within a scope.
///
/// Reads are safe from any thread. Writes here are direct sled calls that block; services
/// write through the storage task ([`crate::task::StorageHandle`]) with a [`crate::Batch`] instead,
/// which is also the only way to write atomically or durably. A table name is one kind of
/// table: do not open the same name as both a [`crate::Table`] and an `OrderedTable`.
#[derive(Debug)]
pub struct OrderedTable<V> {
    pub(crate) tree: sled::Tree,
    pub(crate) name: &'static str,
    pub(crate) generation: Arc<Generation>,
    _value: PhantomData<fn() -> V>,
}

impl<V> Clone for OrderedTable<V> {
    fn clone(&self) -> Self {
        Self {
            tree: self.tree.clone(),
            name: self.name,
            generation: self.generation.clone(),
            _value: PhantomData,
        }
    }
}

impl<V> OrderedTable<V> {
    pub(crate) fn new(tree: sled::Tree, name: &'static str, generation: Arc<Generation>) -> Self {
        Self {
            tree,
            name,
            generation,
            _value: PhantomData,
        }
    }

    /// The tree, for an access that must not happen on the swarm task
    /// ([`crate::guard`]).
    fn tree(&self) -> &sled::Tree {
        crate::guard::check(self.name);
        &self.tree
    }
}

impl<V: Serialize + DeserializeOwned> OrderedTable<V> {
    /// The table's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The value at `index` in `scope`, if any.
    pub fn get(&self, scope: &Scope, index: u64) -> Result<Option<V>, StoreError> {
        match self.tree().get(scope.key(index))? {
            None => Ok(None),
            Some(bytes) => self.decode(scope, index, &bytes).map(Some),
        }
    }

    /// Removes the value at `index` in `scope`; true if there was one.
    pub fn remove(&self, scope: &Scope, index: u64) -> Result<bool, StoreError> {
        Ok(self.tree().remove(scope.key(index))?.is_some())
    }

    /// The entries of `scope` in `range`, in index order; `.rev()` walks it backwards.
    /// An entry whose value cannot be decoded comes as an `Err(StoreError::Corrupt)` in
    /// its place. The scan reads lazily: bound it (`.take(n)`) on latency-sensitive tasks.
    pub fn range(&self, scope: &Scope, range: impl RangeBounds<u64>) -> OrderedIter<V> {
        let inner = scope
            .key_span(&range)
            .map(|(low, high)| self.tree().range(low..=high));
        OrderedIter {
            inner,
            scope: scope.clone(),
            table: self.name,
            _value: PhantomData,
        }
    }

    /// The entry with the lowest index in `scope`.
    pub fn first(&self, scope: &Scope) -> Result<Option<(u64, V)>, StoreError> {
        self.range(scope, ..).next().transpose()
    }

    /// The entry with the highest index in `scope`.
    pub fn last(&self, scope: &Scope) -> Result<Option<(u64, V)>, StoreError> {
        self.range(scope, ..).next_back().transpose()
    }

    /// How many entries `scope` holds in `range`. Walks the keys (sled keeps no counts), so
    /// it costs as much as a scan without decoding.
    pub fn count(&self, scope: &Scope, range: impl RangeBounds<u64>) -> Result<usize, StoreError> {
        let Some((low, high)) = scope.key_span(&range) else {
            return Ok(0);
        };
        let mut count = 0;
        for item in self.tree().range(low..=high) {
            item?;
            count += 1;
        }
        Ok(count)
    }

    /// Number of entries in every scope.
    pub fn len(&self) -> usize {
        self.tree().len()
    }

    /// True if no scope has any entry.
    pub fn is_empty(&self) -> bool {
        self.tree().is_empty()
    }

    /// Stores raw bytes without encoding; for tests of corrupt-data handling.
    #[doc(hidden)]
    pub fn put_raw_for_test(
        &self,
        scope: &Scope,
        index: u64,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        self.tree().insert(scope.key(index), bytes)?;
        Ok(())
    }

    fn decode(&self, scope: &Scope, index: u64, bytes: &[u8]) -> Result<V, StoreError> {
        codec::decode(bytes).map_err(|source| StoreError::Corrupt {
            table: self.name,
            key: format!("{scope}/{index}"),
            source,
        })
    }
}

/// The entries of one scope in an index range; see [`OrderedTable::range`].
pub struct OrderedIter<V> {
    /// `None` for a range that covers no index.
    inner: Option<sled::Iter>,
    scope: Scope,
    table: &'static str,
    _value: PhantomData<fn() -> V>,
}

impl<V> fmt::Debug for OrderedIter<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrderedIter")
            .field("table", &self.table)
            .field("scope", &self.scope)
            .field("empty", &self.inner.is_none())
            .finish()
    }
}

impl<V: DeserializeOwned> OrderedIter<V> {
    fn entry(&self, item: sled::Result<(sled::IVec, sled::IVec)>) -> Result<(u64, V), StoreError> {
        let (key, bytes) = item?;
        let Some(index) = self.scope.index_of(&key) else {
            // Only a foreign writer or damage puts a key of another shape in this span.
            return Err(StoreError::Corrupt {
                table: self.table,
                key: format!("{}/<{} key bytes>", self.scope, key.len()),
                source: CodecError::Malformed("not a (scope, u64) key".into()),
            });
        };
        codec::decode(&bytes)
            .map(|value| (index, value))
            .map_err(|source| StoreError::Corrupt {
                table: self.table,
                key: format!("{}/{index}", self.scope),
                source,
            })
    }
}

impl<V: DeserializeOwned> Iterator for OrderedIter<V> {
    type Item = Result<(u64, V), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.inner.as_mut()?.next()?;
        Some(self.entry(item))
    }
}

impl<V: DeserializeOwned> DoubleEndedIterator for OrderedIter<V> {
    fn next_back(&mut self) -> Option<Self::Item> {
        let item = self.inner.as_mut()?.next_back()?;
        Some(self.entry(item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_of_empty_and_reversed_ranges_are_none() {
        assert_eq!(index_span(&(5..5)), None);
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = 6..=5;
        assert_eq!(index_span(&reversed), None);
        assert_eq!(index_span(&(..0)), None);
        assert_eq!(
            index_span(&(Bound::Excluded(u64::MAX), Bound::Unbounded)),
            None
        );
        assert_eq!(index_span(&(..)), Some((0, u64::MAX)));
        assert_eq!(index_span(&(3..=3)), Some((3, 3)));
    }

    #[test]
    fn a_scope_that_prefixes_another_keeps_its_own_keys() {
        let a = Scope::new("a").unwrap();
        let ab = Scope::new("ab").unwrap();
        let (low, high) = a.key_span(&(..)).unwrap();
        let foreign = ab.key(0);
        assert!(!(low.as_slice()..=high.as_slice()).contains(&foreign.as_slice()));
        assert_eq!(a.index_of(&foreign), None);
        assert_eq!(ab.index_of(&ab.key(258)), Some(258));
    }

    #[test]
    fn scopes_longer_than_a_length_byte_are_refused() {
        assert!(Scope::new(vec![1u8; 255]).is_ok());
        assert!(matches!(
            Scope::new(vec![1u8; 256]),
            Err(StoreError::ScopeTooLong { len: 256, max: 255 })
        ));
    }

    #[test]
    fn scopes_display_as_text_or_hex() {
        assert_eq!(Scope::new("cluster-1").unwrap().to_string(), "cluster-1");
        assert_eq!(Scope::new([0u8, 0xff]).unwrap().to_string(), "0x00ff");
        assert_eq!(Scope::global().to_string(), "0x");
    }
}
