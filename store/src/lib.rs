//! Everything a fogmesh node persists, on one sled database, behind a typed API.
//!
//! No sled type leaves this crate: callers see [`Store`], typed [`Table`]s keyed by string,
//! [`OrderedTable`]s keyed by `(scope, u64)` in numeric order (a Raft log, per-origin
//! sequences), and [`Batch`]es that change several tables atomically. Values go through the
//! one [`codec`]. The node writes through the storage task ([`task`]): sled work off the
//! swarm task, behind a bounded queue, with durable writes acknowledged only once on disk.
//!
//! Durability (the full statement, measured, is in `docs/storage.md`): sled 0.34's own
//! flush only calls `sync_file_range` on its log, which survives kill -9 but neither
//! persists the log file's metadata nor flushes the disk's write cache. A durable commit
//! here ([`Table::put_durable`], [`Store::apply_durable`], [`Store::flush`],
//! [`StorageHandle::write_durable`]) therefore also fdatasyncs the log and fsyncs sled's
//! blob files before it is acknowledged. Buffered writes reach the disk within
//! `flush_every` (sled's flusher fsyncs); kill -9 loses at most the newest of them.
//!
//! Damage: sled silently opens a damaged log as an older or empty database. Every durable
//! commit therefore advances a [`generation`] recorded both in sled and in a marker file, and
//! [`Store::open`] refuses a store that holds less than was acknowledged
//! ([`StoreError::Damaged`]). [`integrity`] checks a store and repairs one by keeping what
//! is readable (`fogmesh store check --repair`).

pub mod batch;
pub mod generation;
pub mod guard;
pub mod integrity;
pub mod ordered;
mod redo;
pub mod task;

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};

pub use batch::{Batch, OpSummary};
use fogmesh_wire::codec;
pub use fogmesh_wire::CodecError;
pub use ordered::{OrderedIter, OrderedTable, Scope};
pub use task::{
    DurableAck, JobOutput, Pending, Request, StorageConfig, StorageError, StorageHandle,
    StorageStats, StoreJob, TryRequestError, TryWriteError,
};

/// What went wrong in the store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("the store at {path} is damaged: {reason}; run `fogmesh store check --repair` (see docs/operations.md, \"Store damage\")")]
    Damaged { path: PathBuf, reason: String },
    #[error("the store's generation marker {path} is unusable: {reason}; run `fogmesh store check --repair`")]
    Marker { path: PathBuf, reason: String },
    #[error("store I/O failed: {0}")]
    Io(String),
    #[error("stored value for key {key:?} in table {table} is unreadable: {source}")]
    Corrupt {
        table: &'static str,
        key: String,
        source: CodecError,
    },
    #[error("value for key {key:?} in table {table} cannot be encoded: {source}")]
    Encode {
        table: &'static str,
        key: String,
        source: CodecError,
    },
    #[error("a scope of {len} bytes is longer than the {max} bytes an ordered key can hold")]
    ScopeTooLong { len: usize, max: usize },
    #[error("table {table} belongs to another store than the rest of the batch")]
    ForeignTable { table: &'static str },
    #[error("the batch holds tables of another store than {path}")]
    ForeignBatch { path: PathBuf },
}

impl StoreError {
    pub(crate) fn from_io(e: std::io::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}

/// Options for opening a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How often buffered writes reach the disk at the latest.
    pub flush_every: Duration,
    /// Size of sled's page cache in bytes. Small by default: nodes run on phones and Pis.
    pub cache_capacity_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            flush_every: Duration::from_millis(1000),
            cache_capacity_bytes: 8 * 1024 * 1024,
        }
    }
}

/// One sled database in a directory.
#[derive(Clone, Debug)]
pub struct Store {
    db: sled::Db,
    path: PathBuf,
    generation: Arc<generation::Generation>,
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    ///
    /// A store that holds fewer durable commits than its marker records is refused with
    /// [`StoreError::Damaged`] rather than opened as if it were new.
    pub fn open(dir: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        let db = open_sled(dir, options)?;
        redo::recover(&db, dir)?;
        let generation = generation::Generation::open(&db, dir)?;
        Ok(Self {
            db,
            path: dir.to_path_buf(),
            generation: Arc::new(generation),
        })
    }

    /// The directory this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A typed table. `name` must be a `'static` identifier, one per value type.
    pub fn table<V>(&self, name: &'static str) -> Result<Table<V>, StoreError> {
        Ok(Table {
            tree: self.db.open_tree(name)?,
            name,
            generation: self.generation.clone(),
            _value: PhantomData,
        })
    }

    /// A table of `V` values keyed by `(scope, u64)` in numeric order. `name` must be a
    /// `'static` identifier, one per value type, and never also used for a [`Table`].
    pub fn ordered_table<V>(&self, name: &'static str) -> Result<OrderedTable<V>, StoreError> {
        Ok(OrderedTable::new(
            self.db.open_tree(name)?,
            name,
            self.generation.clone(),
        ))
    }

    /// Writes every buffered change to disk; returns when it is durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        guard::check("store");
        self.generation.commit()?;
        Ok(())
    }

    /// Applies `batch` all-or-nothing; buffered like [`Table::put`]. Blocks on sled: from
    /// async code, write through a [`StorageHandle`] instead.
    pub fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        guard::check("store");
        self.check_owner(&batch)?;
        batch::apply(&batch).map(|_| ())
    }

    /// Applies `batch` all-or-nothing and returns once it is on disk, with the durable
    /// generation that covers it.
    pub fn apply_durable(&self, batch: Batch) -> Result<u64, StoreError> {
        guard::check("store");
        self.check_owner(&batch)?;
        batch::apply(&batch)?;
        self.generation.commit()
    }

    /// The latest durable generation: every write applied before it was acknowledged is on
    /// disk. It only grows, by one per durable commit.
    pub fn durable_generation(&self) -> u64 {
        self.generation.sealed()
    }

    /// Refuses a batch built from another store's tables: applying it would write there
    /// while this store's generation claimed it durable.
    pub(crate) fn check_owner(&self, batch: &Batch) -> Result<(), StoreError> {
        match batch.store() {
            Some(owner) if !Arc::ptr_eq(owner, &self.generation) => Err(StoreError::ForeignBatch {
                path: self.path.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// sled itself, for the storage task.
    pub(crate) fn db(&self) -> &sled::Db {
        &self.db
    }

    pub(crate) fn generation(&self) -> &Arc<generation::Generation> {
        &self.generation
    }
}

/// Opens sled itself, with the error naming the directory and, for a held lock, the likely
/// cause.
pub(crate) fn open_sled(dir: &Path, options: &StoreOptions) -> Result<sled::Db, StoreError> {
    let flush_ms = u64::try_from(options.flush_every.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let config = sled::Config::new()
        .path(dir)
        .cache_capacity(options.cache_capacity_bytes)
        .flush_every_ms(Some(flush_ms));
    // sled releases its file lock when its background flusher has stopped, a moment after
    // the last handle is dropped: a store closed and reopened in one process (check, then
    // repair; a restart in tests) can find it still held. Such a lock goes within a second;
    // one held by another process stays, and is reported after that second.
    let mut attempts = 0;
    loop {
        match config.open() {
            Ok(db) => return Ok(db),
            Err(e) if is_lock_error(&e) && attempts < LOCK_RETRIES => {
                attempts += 1;
                std::thread::sleep(LOCK_RETRY_PAUSE);
            }
            Err(e) => {
                return Err(StoreError::Open {
                    path: dir.to_path_buf(),
                    reason: open_error_text(&e),
                })
            }
        }
    }
}

const LOCK_RETRIES: u32 = 20;
const LOCK_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

fn open_error_text(e: &sled::Error) -> String {
    match e {
        e if is_lock_error(e) => {
            "it is in use by another process (is a node running with this data dir?)".into()
        }
        sled::Error::Io(io) => io.to_string(),
        sled::Error::Corruption { .. } => "sled reports corruption in its log".into(),
        other => other.to_string(),
    }
}

/// A named table of `V` values keyed by string.
#[derive(Debug)]
pub struct Table<V> {
    tree: sled::Tree,
    name: &'static str,
    generation: Arc<generation::Generation>,
    _value: PhantomData<fn() -> V>,
}

impl<V> Clone for Table<V> {
    fn clone(&self) -> Self {
        Self {
            tree: self.tree.clone(),
            name: self.name,
            generation: self.generation.clone(),
            _value: PhantomData,
        }
    }
}

impl<V> Table<V> {
    /// The tree, for an access that must not happen on the swarm task ([`guard`]).
    fn tree(&self) -> &sled::Tree {
        guard::check(self.name);
        &self.tree
    }
}

impl<V: Serialize + DeserializeOwned> Table<V> {
    /// The table's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Stores `value` under `key`; durable within the store's flush interval.
    pub fn put(&self, key: &str, value: &V) -> Result<(), StoreError> {
        let bytes = codec::encode(value).map_err(|source| StoreError::Encode {
            table: self.name,
            key: key.to_owned(),
            source,
        })?;
        self.tree().insert(key.as_bytes(), bytes)?;
        Ok(())
    }

    /// Stores `value` under `key` and returns once it is on disk.
    pub fn put_durable(&self, key: &str, value: &V) -> Result<(), StoreError> {
        self.put(key, value)?;
        self.generation.commit()?;
        Ok(())
    }

    /// The value under `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<V>, StoreError> {
        match self.tree().get(key.as_bytes())? {
            None => Ok(None),
            Some(bytes) => codec::decode(&bytes)
                .map(Some)
                .map_err(|source| StoreError::Corrupt {
                    table: self.name,
                    key: key.to_owned(),
                    source,
                }),
        }
    }

    /// Whether a value is stored under `key`, without reading or decoding it.
    pub fn contains_key(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.tree().contains_key(key.as_bytes())?)
    }

    /// Every key with the bytes its value takes as stored (encoded), without decoding any
    /// value; a key that is not UTF-8 (not written through a table) is skipped.
    pub fn stored_sizes(&self) -> impl Iterator<Item = Result<(String, u64), StoreError>> + '_ {
        self.tree().iter().filter_map(|item| match item {
            Ok((key, value)) => String::from_utf8(key.to_vec())
                .ok()
                .map(|key| Ok((key, value.len() as u64))),
            Err(error) => Some(Err(error.into())),
        })
    }

    /// Removes the value under `key`; true if there was one.
    pub fn remove(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.tree().remove(key.as_bytes())?.is_some())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.tree().len()
    }

    /// True if the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.tree().is_empty()
    }

    /// Every entry in key order. An entry that cannot be decoded is returned as an
    /// `Err(StoreError::Corrupt)` in its place, so one bad value never hides the others.
    pub fn entries(&self) -> impl Iterator<Item = Result<(String, V), StoreError>> + '_ {
        self.tree().iter().map(move |item| self.decode_row(item))
    }

    fn decode_row(
        &self,
        item: Result<(sled::IVec, sled::IVec), sled::Error>,
    ) -> Result<(String, V), StoreError> {
        let (key, bytes) = item?;
        let key = String::from_utf8_lossy(&key).into_owned();
        match codec::decode(&bytes) {
            Ok(value) => Ok((key, value)),
            Err(source) => Err(StoreError::Corrupt {
                table: self.name,
                key,
                source,
            }),
        }
    }

    /// Entries whose key starts with `prefix`, in key order, beginning after `after` if
    /// given. Undecodable values come back as errors in place, like [`Table::entries`].
    pub fn scan_prefix<'a>(
        &'a self,
        prefix: &str,
        after: Option<&str>,
    ) -> impl Iterator<Item = Result<(String, V), StoreError>> + 'a {
        let iter = match after {
            Some(after) => {
                let mut start = after.as_bytes().to_vec();
                start.push(0);
                // Never before the prefix itself.
                start = start.max(prefix.as_bytes().to_vec());
                let mut end = prefix.as_bytes().to_vec();
                let bounded = increment(&mut end);
                if bounded {
                    // A cursor past the prefix's range: nothing (and no inverted range).
                    let end = end.max(start.clone());
                    self.tree().range(start..end)
                } else {
                    self.tree().range(start..)
                }
            }
            None => self.tree().scan_prefix(prefix.as_bytes()),
        };
        iter.map(move |item| self.decode_row(item))
    }

    /// Stores raw bytes under `key` without encoding; for tests of corrupt-data handling.
    #[doc(hidden)]
    pub fn put_raw_for_test(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.tree().insert(key.as_bytes(), bytes)?;
        Ok(())
    }
}

/// The smallest byte string greater than every string starting with `bytes`; false when
/// there is none (all 0xff, or empty).
fn increment(bytes: &mut Vec<u8>) -> bool {
    while let Some(last) = bytes.pop() {
        if last < 0xff {
            bytes.push(last + 1);
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Entry {
        addr: String,
        last_seen_ms: u64,
    }

    fn open(dir: &Path) -> Store {
        Store::open(dir, &StoreOptions::default()).unwrap()
    }

    #[test]
    fn durable_put_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            let table = store.table::<Entry>("peers").unwrap();
            let e = Entry {
                addr: "/ip4/127.0.0.1/tcp/1".into(),
                last_seen_ms: 42,
            };
            table.put_durable("a", &e).unwrap();
        }
        let store = open(dir.path());
        let table = store.table::<Entry>("peers").unwrap();
        assert_eq!(table.get("a").unwrap().unwrap().last_seen_ms, 42);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn corrupt_entry_is_reported_and_others_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let table = store.table::<Entry>("peers").unwrap();
        table
            .put(
                "good",
                &Entry {
                    addr: "x".into(),
                    last_seen_ms: 1,
                },
            )
            .unwrap();
        table.put_raw_for_test("bad", &[0xff, 0x00, 0x13]).unwrap();
        assert!(matches!(
            table.get("bad"),
            Err(StoreError::Corrupt { key, .. }) if key == "bad"
        ));
        let results: Vec<_> = table.entries().collect();
        assert_eq!(results.len(), 2);
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    }

    #[test]
    fn opening_a_file_as_store_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"hello").unwrap();
        let err = Store::open(&file, &StoreOptions::default()).unwrap_err();
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }
}
