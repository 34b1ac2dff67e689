//! Modules, inputs and results by content hash (SHA-256), in the store's `blobs` table.
//!
//! Bounded: at most [`MAX_BLOBS`] blobs and [`MAX_BLOB_BYTES`] in all; a put beyond is
//! refused (the submitter is told, a worker fails the attempt, which goes elsewhere).
//! Writes are durable before they return: a result is on disk before the coordinator
//! proposes `Finished`, so a finished task's result is never lost with its holder's power.
//! Nothing is collected yet (docs/clusters.md, "Known limits").

use fogmesh_store::{Store, StoreError, Table};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

pub const MAX_BLOBS: usize = 4096;
pub const MAX_BLOB_BYTES: u64 = 2 * 1024 * 1024 * 1024;

pub fn hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("the blob store is full ({0})")]
    Full(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone)]
pub struct BlobStore {
    table: Table<ByteBuf>,
    count: usize,
    bytes: u64,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("count", &self.count)
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl BlobStore {
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        let table: Table<ByteBuf> = store.table("blobs")?;
        // Counted as stored, without decoding (up to 2 GiB) at start-up.
        Ok(Self {
            count: table.len(),
            bytes: table.stored_bytes()?,
            table,
        })
    }

    pub fn get(&self, hash: &[u8; 32]) -> Option<Vec<u8>> {
        match self.table.get(&hex::encode(hash)) {
            Ok(found) => found.map(ByteBuf::into_vec),
            Err(error) => {
                tracing::warn!(%error, "blob unreadable; treated as missing");
                None
            }
        }
    }

    pub fn contains(&self, hash: &[u8; 32]) -> bool {
        self.table.contains_key(&hex::encode(hash)).unwrap_or(false)
    }

    /// Stores `bytes` durably under their hash, which is returned.
    pub fn put(&mut self, bytes: &[u8]) -> Result<[u8; 32], BlobError> {
        let id = hash(bytes);
        if self.contains(&id) {
            return Ok(id);
        }
        if self.count >= MAX_BLOBS {
            return Err(BlobError::Full("count"));
        }
        if self.bytes + bytes.len() as u64 > MAX_BLOB_BYTES {
            return Err(BlobError::Full("bytes"));
        }
        self.table
            .put_durable(&hex::encode(id), &ByteBuf::from(bytes.to_vec()))?;
        self.count += 1;
        self.bytes += bytes.len() as u64;
        Ok(id)
    }

    pub fn count(&self) -> usize {
        self.count
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}
