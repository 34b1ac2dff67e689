//! Modules, inputs and results by content hash (SHA-256), in the store: each blob in
//! pieces of at most [`CHUNK_BYTES`] (ordered table `blob_chunks`, scope = the hash, index
//! = the piece's number, so no stored value passes the store's 1 MiB bound on values
//! while a module or an input may take 4 MiB), and its size under its hash in table
//! `blob_sizes`, in the same batch. Blobs of the one-value layout an earlier version wrote
//! (table `blobs`) are moved into this one at start-up.
//!
//! The capability never touches the disk for them: it knows which blobs exist and their
//! sizes (an index read once at start-up), holds recently used ones in a cache bounded by
//! bytes ([`CACHE_BYTES`]), writes new ones into the batches it hands the storage task, and
//! reads one that is not cached with a storage job ([`Blobs::load`]) whose answer comes
//! back later ([`Blobs::on_loaded`]). A blob put is cached until it is written, so what was
//! just put is always readable.
//!
//! Durability follows from the storage task's order: a blob is put in the same batch as,
//! or a batch before, whatever depends on it (a submission's record, a raft entry that
//! names a result), and the task writes in order and flushes everything written before a
//! durable write. So a result is on the coordinator's disk before the raft entry calling
//! the task done is, and a submission's blobs before its record.
//!
//! Bounded: at most [`MAX_BLOBS`] blobs and [`MAX_BLOB_BYTES`] in all; a put beyond is
//! refused (the submitter is told, a worker fails the attempt, which goes elsewhere).
//! Nothing is collected yet (docs/clusters.md, "Known limits").

use std::collections::{BTreeMap, HashMap, HashSet};

use fogmesh_store::{Batch, OrderedTable, Scope, Store, StoreError, Table};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

use crate::runtime::capability::{Job, JobOutput};

pub const MAX_BLOBS: usize = 4096;
pub const MAX_BLOB_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Bytes of blobs held in memory at most (the least recently used go first). A blob larger
/// than this is still held, alone, until the next one comes.
pub const CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// Reads from disk in flight at most; beyond, a read waits for a later attempt.
pub const MAX_LOADING: usize = 64;
/// The largest piece of a blob stored as one value.
pub const CHUNK_BYTES: usize = 512 * 1024;

pub type Hash = [u8; 32];

pub fn hash(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("the blob store is full ({0})")]
    Full(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A blob read from disk by a [`Blobs::load`] job.
#[derive(Debug)]
pub struct Loaded {
    pub hash: Hash,
    /// `None`: not on disk after all (or unreadable).
    pub bytes: Option<Vec<u8>>,
}

/// See the module docs.
pub struct Blobs {
    chunks: OrderedTable<ByteBuf>,
    sizes_table: Table<u64>,
    /// Every blob stored or on its way to the disk, with its size.
    sizes: HashMap<Hash, u64>,
    bytes: u64,
    cache: HashMap<Hash, (u64, Vec<u8>)>,
    /// Cached blobs by last use.
    recency: BTreeMap<u64, Hash>,
    cached_bytes: u64,
    cache_budget: u64,
    uses: u64,
    loading: HashSet<Hash>,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blobs")
            .field("count", &self.sizes.len())
            .field("bytes", &self.bytes)
            .field("cached", &self.cache.len())
            .finish()
    }
}

impl Blobs {
    /// The index of what `store` holds. Start-up only: it reads the disk (and moves blobs
    /// of the old layout into this one).
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        let chunks: OrderedTable<ByteBuf> = store.ordered_table("blob_chunks")?;
        let sizes_table: Table<u64> = store.table("blob_sizes")?;
        migrate(store, &chunks, &sizes_table)?;
        let mut sizes = HashMap::new();
        let mut bytes = 0;
        for item in sizes_table.entries() {
            let (key, size) = match item {
                Ok(entry) => entry,
                Err(error) => {
                    tracing::warn!(%error, "unreadable blob size skipped; the blob is missing");
                    continue;
                }
            };
            let Some(hash) = parse_hash(&key) else {
                tracing::warn!(%key, "blob with an unreadable key skipped");
                continue;
            };
            sizes.insert(hash, size);
            bytes += size;
        }
        Ok(Self {
            chunks,
            sizes_table,
            sizes,
            bytes,
            cache: HashMap::new(),
            recency: BTreeMap::new(),
            cached_bytes: 0,
            cache_budget: CACHE_BYTES,
            uses: 0,
            loading: HashSet::new(),
        })
    }

    pub fn contains(&self, hash: &Hash) -> bool {
        self.sizes.contains_key(hash)
    }

    /// The blob, if it is in memory (see [`Blobs::load`] for one that is not).
    pub fn cached(&mut self, hash: &Hash) -> Option<Vec<u8>> {
        self.uses += 1;
        let uses = self.uses;
        let (used, bytes) = self.cache.get_mut(hash)?;
        self.recency.remove(used);
        self.recency.insert(uses, *hash);
        *used = uses;
        Some(bytes.clone())
    }

    /// Adds `bytes` to `batch` under their hash, which is returned; held in memory until
    /// written (and after, while recently used).
    pub fn put(&mut self, bytes: &[u8], batch: &mut Batch) -> Result<Hash, BlobError> {
        let id = hash(bytes);
        if self.contains(&id) {
            if !self.cache.contains_key(&id) {
                self.remember(id, bytes.to_vec());
            }
            return Ok(id);
        }
        if self.sizes.len() >= MAX_BLOBS {
            return Err(BlobError::Full("count"));
        }
        if self.bytes + bytes.len() as u64 > MAX_BLOB_BYTES {
            return Err(BlobError::Full("bytes"));
        }
        add_to(batch, &self.chunks, &self.sizes_table, &id, bytes)?;
        self.sizes.insert(id, bytes.len() as u64);
        self.bytes += bytes.len() as u64;
        self.remember(id, bytes.to_vec());
        Ok(id)
    }

    /// Whether `blobs` would all fit, those not held yet counted (so a caller can refuse
    /// before it puts any of them).
    pub fn room_for(&self, blobs: &[&[u8]]) -> Result<(), BlobError> {
        let new: Vec<&&[u8]> = blobs.iter().filter(|b| !self.contains(&hash(b))).collect();
        if self.sizes.len() + new.len() > MAX_BLOBS {
            return Err(BlobError::Full("count"));
        }
        let bytes: u64 = new.iter().map(|b| b.len() as u64).sum();
        if self.bytes + bytes > MAX_BLOB_BYTES {
            return Err(BlobError::Full("bytes"));
        }
        Ok(())
    }

    /// A storage job reading `hash` from disk, unless it is unknown, cached, already being
    /// read, or too many reads are in flight. Its output is a [`Loaded`].
    pub fn load(&mut self, hash: Hash) -> Option<Job> {
        if !self.contains(&hash)
            || self.cache.contains_key(&hash)
            || self.loading.len() >= MAX_LOADING
            || !self.loading.insert(hash)
        {
            return None;
        }
        let chunks = self.chunks.clone();
        Some(Box::new(move || {
            let bytes = match read(&chunks, &hash) {
                Ok(bytes) => bytes,
                Err(error) => {
                    tracing::warn!(%error, "blob unreadable; treated as missing");
                    None
                }
            };
            Box::new(Loaded { hash, bytes }) as JobOutput
        }))
    }

    /// A read came back: the blob is cached, or known missing after all.
    pub fn on_loaded(&mut self, loaded: Loaded) {
        self.loading.remove(&loaded.hash);
        match loaded.bytes {
            Some(bytes) if hash(&bytes) == loaded.hash => self.remember(loaded.hash, bytes),
            _ => {
                if let Some(size) = self.sizes.remove(&loaded.hash) {
                    self.bytes -= size;
                }
            }
        }
    }

    /// Whether a read of `hash` is in flight.
    pub fn is_loading(&self, hash: &Hash) -> bool {
        self.loading.contains(hash)
    }

    /// Reads failed (the store did): each may be asked again.
    pub fn forget_loads(&mut self) {
        self.loading.clear();
    }

    pub fn count(&self) -> usize {
        self.sizes.len()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn remember(&mut self, id: Hash, bytes: Vec<u8>) {
        self.uses += 1;
        let size = bytes.len() as u64;
        if let Some((used, old)) = self.cache.insert(id, (self.uses, bytes)) {
            self.recency.remove(&used);
            self.cached_bytes -= old.len() as u64;
        }
        self.recency.insert(self.uses, id);
        self.cached_bytes += size;
        while self.cached_bytes > self.cache_budget && self.cache.len() > 1 {
            let Some((_, oldest)) = self.recency.pop_first() else {
                break;
            };
            if let Some((_, old)) = self.cache.remove(&oldest) {
                self.cached_bytes -= old.len() as u64;
            }
        }
    }
}

fn parse_hash(key: &str) -> Option<Hash> {
    hex::decode(key).ok().and_then(|b| <Hash>::try_from(b).ok())
}

/// Adds the pieces of blob `id` and its size to `batch`.
fn add_to(
    batch: &mut Batch,
    chunks: &OrderedTable<ByteBuf>,
    sizes: &Table<u64>,
    id: &Hash,
    bytes: &[u8],
) -> Result<(), StoreError> {
    let scope = Scope::new(id)?;
    for (index, piece) in bytes.chunks(CHUNK_BYTES).enumerate() {
        batch.put_ordered(chunks, &scope, index as u64, &ByteBuf::from(piece.to_vec()))?;
    }
    batch.put(sizes, &hex::encode(id), &(bytes.len() as u64))
}

/// Blob `id` put together from its pieces (`None`: it has none).
fn read(chunks: &OrderedTable<ByteBuf>, id: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
    let mut bytes = Vec::new();
    let mut pieces = 0u64;
    for item in chunks.range(&Scope::new(id)?, ..) {
        let (index, piece) = item?;
        if index != pieces {
            // A missing piece: the blob is not whole (its hash check would fail anyway).
            return Ok(None);
        }
        pieces += 1;
        bytes.extend_from_slice(&piece);
    }
    Ok((pieces > 0).then_some(bytes))
}

/// Moves blobs of the one-value layout (table `blobs`) into pieces, one batch each; one too
/// large for the store's bound on values was never readable and is dropped, with a warning.
fn migrate(
    store: &Store,
    chunks: &OrderedTable<ByteBuf>,
    sizes: &Table<u64>,
) -> Result<(), StoreError> {
    let old: Table<ByteBuf> = store.table("blobs")?;
    if old.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = old
        .stored_sizes()
        .filter_map(Result::ok)
        .map(|(key, _)| key)
        .collect();
    for key in keys {
        let mut batch = Batch::new();
        match (old.get(&key), parse_hash(&key)) {
            (Ok(Some(bytes)), Some(id)) if hash(&bytes) == id => {
                add_to(&mut batch, chunks, sizes, &id, &bytes)?;
            }
            (outcome, _) => {
                tracing::warn!(%key, readable = outcome.is_ok(), "unreadable blob dropped in the move to pieces");
            }
        }
        batch.remove(&old, &key);
        store.apply(batch)?;
    }
    store.flush()?;
    tracing::info!("blobs moved to the piecewise layout");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use fogmesh_store::StoreOptions;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        (dir, store)
    }

    fn run(job: Job) -> Loaded {
        *job().downcast::<Loaded>().unwrap()
    }

    #[test]
    fn a_put_is_readable_at_once_and_from_disk_after_a_restart() {
        let (_dir, store) = store();
        let mut blobs = Blobs::open(&store).unwrap();
        let mut batch = Batch::new();
        let id = blobs.put(b"module", &mut batch).unwrap();
        assert_eq!(blobs.cached(&id).unwrap(), b"module");
        // Nothing to read: it is in memory.
        assert!(blobs.load(id).is_none());
        store.apply_durable(batch).unwrap();

        let mut again = Blobs::open(&store).unwrap();
        assert!(again.contains(&id));
        assert_eq!(again.count(), 1);
        assert!(again.cached(&id).is_none());
        let job = again.load(id).unwrap();
        // One read at a time per blob.
        assert!(again.load(id).is_none());
        again.on_loaded(run(job));
        assert_eq!(again.cached(&id).unwrap(), b"module");
        // Unknown blobs are not read.
        assert!(again.load([7; 32]).is_none());
    }

    #[test]
    fn a_blob_beyond_the_stores_value_bound_is_kept_in_pieces() {
        let (_dir, store) = store();
        let mut blobs = Blobs::open(&store).unwrap();
        let big: Vec<u8> = (0..(CHUNK_BYTES * 4 + 17)).map(|i| i as u8).collect();
        let mut batch = Batch::new();
        let id = blobs.put(&big, &mut batch).unwrap();
        store.apply_durable(batch).unwrap();
        let mut again = Blobs::open(&store).unwrap();
        assert_eq!(again.bytes(), big.len() as u64);
        let job = again.load(id).unwrap();
        again.on_loaded(run(job));
        assert_eq!(again.cached(&id).unwrap(), big);
    }

    #[test]
    fn blobs_of_the_old_layout_are_moved_at_start_up() {
        let (_dir, store) = store();
        let old: Table<ByteBuf> = store.table("blobs").unwrap();
        old.put(&hex::encode(hash(b"old")), &ByteBuf::from(b"old".to_vec()))
            .unwrap();
        old.put_raw_for_test(&hex::encode(hash(b"junk")), b"\xff")
            .unwrap();
        let mut blobs = Blobs::open(&store).unwrap();
        assert!(old.is_empty());
        assert_eq!(blobs.count(), 1);
        let job = blobs.load(hash(b"old")).unwrap();
        blobs.on_loaded(run(job));
        assert_eq!(blobs.cached(&hash(b"old")).unwrap(), b"old");
    }

    #[test]
    fn a_blob_gone_from_disk_is_forgotten() {
        let (_dir, store) = store();
        let mut blobs = Blobs::open(&store).unwrap();
        let mut batch = Batch::new();
        let id = blobs.put(b"never written", &mut batch).unwrap();
        drop(batch);
        blobs.cache.clear();
        blobs.recency.clear();
        let job = blobs.load(id).unwrap();
        blobs.on_loaded(run(job));
        assert!(!blobs.contains(&id));
        assert_eq!(blobs.bytes(), 0);
    }

    #[test]
    fn the_cache_keeps_to_its_budget_and_drops_the_least_recently_used() {
        let (_dir, store) = store();
        let mut blobs = Blobs::open(&store).unwrap();
        blobs.cache_budget = 4096;
        let mut batch = Batch::new();
        let size = 1024;
        let ids: Vec<Hash> = (0..6u8)
            .map(|i| {
                if i == 4 {
                    // The first is used again before the fifth comes: it stays.
                    assert!(blobs.cached(&hash(&vec![0; size])).is_some());
                }
                blobs.put(&vec![i; size], &mut batch).unwrap()
            })
            .collect();
        assert!(blobs.cached_bytes <= 4096);
        assert!(blobs.cached(&ids[0]).is_some());
        assert!(blobs.cached(&ids[1]).is_none());
        assert!(blobs.cached(&ids[5]).is_some());
        // Every one is still known and on its way to the disk.
        assert_eq!(blobs.count(), 6);
    }

    #[test]
    fn the_store_refuses_beyond_its_bounds() {
        let (_dir, store) = store();
        let mut blobs = Blobs::open(&store).unwrap();
        let mut batch = Batch::new();
        blobs.bytes = MAX_BLOB_BYTES - 2;
        assert!(matches!(
            blobs.put(b"abc", &mut batch),
            Err(BlobError::Full("bytes"))
        ));
        blobs.bytes = 0;
        for i in 0..MAX_BLOBS {
            blobs.sizes.insert(hash(&i.to_be_bytes()), 1);
        }
        assert!(matches!(
            blobs.put(b"abc", &mut batch),
            Err(BlobError::Full("count"))
        ));
    }
}
