//! The durable generation: how a damaged store is told apart from an empty one.
//!
//! sled 0.34 recovers a damaged log by keeping the longest valid prefix and starting from
//! it, silently: a truncated or overwritten `db` file opens as an older (often empty)
//! database. So every durable commit bumps a counter in two places — inside sled (written,
//! then flushed, after the data it covers) and in a small marker file beside it, replaced
//! atomically after the flush. The marker only moves after sled is durable, so a healthy
//! store always has `sled generation >= marker generation`; fewer means sled lost
//! acknowledged writes, and opening refuses to pretend otherwise.
//!
//! Because sled's log is written in order, losing any acknowledged write also loses the
//! generation bump that followed it, so the check catches loss anywhere in the log, not
//! just at its end.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::StoreError;

/// The sled tree holding the generation; never a user table.
pub(crate) const TREE: &str = "__fogmesh_generation";
const KEY: &[u8] = b"generation";
/// The marker file in the store directory.
pub const MARKER_FILE: &str = "fogmesh.generation";

/// The generation as sled holds it (0 for a store that never committed durably).
pub(crate) fn read_from_db(tree: &sled::Tree, store: &Path) -> Result<u64, StoreError> {
    match tree.get(KEY)? {
        None => Ok(0),
        Some(bytes) => <[u8; 8]>::try_from(bytes.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Damaged {
                path: store.to_path_buf(),
                reason: format!(
                    "its generation counter is {} bytes long, not 8",
                    bytes.len()
                ),
            }),
    }
}

pub(crate) fn marker_path(store: &Path) -> PathBuf {
    store.join(MARKER_FILE)
}

/// The generation the marker records; `None` when there is no marker (a new store, or one
/// written before markers existed).
pub(crate) fn read_marker(store: &Path) -> Result<Option<u64>, StoreError> {
    let path = marker_path(store);
    match fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| StoreError::Marker {
                path,
                reason: "it does not hold a generation number".into(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Marker {
            path,
            reason: e.to_string(),
        }),
    }
}

/// Replaces the marker atomically and durably (temp file, fsync, rename, fsync of the dir).
pub(crate) fn write_marker(store: &Path, generation: u64) -> Result<(), StoreError> {
    let path = marker_path(store);
    let err = |e: std::io::Error| StoreError::Marker {
        path: path.clone(),
        reason: e.to_string(),
    };
    let tmp = store.join(format!("{MARKER_FILE}.tmp"));
    {
        let mut file = File::create(&tmp).map_err(err)?;
        writeln!(file, "{generation}").map_err(err)?;
        file.sync_all().map_err(err)?;
    }
    fs::rename(&tmp, &path).map_err(err)?;
    // The rename is durable only once the directory entry is.
    File::open(store).and_then(|d| d.sync_all()).map_err(err)
}

/// Bumps and records the generation for one durable commit at a time.
#[derive(Debug)]
pub(crate) struct Generation {
    db: sled::Db,
    tree: sled::Tree,
    dir: PathBuf,
    current: Mutex<u64>,
}

impl Generation {
    /// Checks sled's generation against the marker; a store behind its marker is damaged.
    pub(crate) fn open(db: &sled::Db, dir: &Path) -> Result<Self, StoreError> {
        let tree = db.open_tree(TREE)?;
        let found = read_from_db(&tree, dir)?;
        let recorded = read_marker(dir)?;
        if let Some(recorded) = recorded {
            if found < recorded {
                return Err(StoreError::Damaged {
                    path: dir.to_path_buf(),
                    reason: format!(
                        "it holds durable generation {found} but generation {recorded} was \
                         acknowledged, so acknowledged writes are missing"
                    ),
                });
            }
        }
        // Ahead of the marker means a crash between sled's flush and the marker's rename.
        if recorded != Some(found) {
            write_marker(dir, found)?;
        }
        Ok(Self {
            db: db.clone(),
            tree,
            dir: dir.to_path_buf(),
            current: Mutex::new(found),
        })
    }

    /// Makes everything written so far durable and records it; returns the new generation.
    pub(crate) fn commit(&self) -> Result<u64, StoreError> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let next = *current + 1;
        self.tree.insert(KEY, &next.to_be_bytes())?;
        self.db.flush()?;
        write_marker(&self.dir, next)?;
        *current = next;
        Ok(next)
    }
}
