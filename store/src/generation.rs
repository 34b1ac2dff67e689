//! The durable generation: how a damaged store is told apart from an empty one.
//!
//! sled 0.34 recovers a damaged log by keeping the longest valid prefix and starting from
//! it, silently: a truncated or overwritten `db` file opens as an older (often empty)
//! database. So every durable commit bumps a counter in two places — inside sled (written,
//! then flushed, after the data it covers) and in a small marker file beside it, updated
//! after the flush. The marker only moves after sled is durable, so a healthy
//! store always has `sled generation >= marker generation`; fewer means sled lost
//! acknowledged writes, and opening refuses to pretend otherwise.
//!
//! Because sled's log is written in order, losing any acknowledged write also loses the
//! generation bump that followed it, so the check catches loss anywhere in the log, not
//! just at its end.
//!
//! The marker is a fixed 40-byte file: a magic header and two 16-byte slots (generation,
//! check). A commit overwrites the slot of its parity in place and `fdatasync`s it: one
//! flush, no rename, no directory fsync (replacing the file cost ~0.9 ms a commit, most of
//! a durable write). A torn slot fails its check and the other slot, an older generation,
//! is read instead: the marker may lag, never lead. A marker of the first layout (the
//! number as text) is read and rewritten in this one when the store opens.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::redo::Redo;
use crate::StoreError;

/// The sled tree holding the generation; never a user table.
pub(crate) const TREE: &str = "__fogmesh_generation";
const KEY: &[u8] = b"generation";
/// The marker file in the store directory.
pub const MARKER_FILE: &str = "fogmesh.generation";
/// sled 0.34's log, configuration file and blob directory inside the store directory.
const LOG_FILE: &str = "db";
const CONF_FILE: &str = "conf";
const BLOB_DIR: &str = "blobs";

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

const MAGIC: &[u8; 8] = b"fmgen\0\0\x02";
const SLOT_LEN: usize = 16;
const MARKER_LEN: usize = MAGIC.len() + 2 * SLOT_LEN;

/// What a slot holds beside its generation, so a torn or stale write reads as invalid.
fn check_of(generation: u64) -> u64 {
    generation.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15
}

fn slot(generation: u64) -> [u8; SLOT_LEN] {
    let mut bytes = [0u8; SLOT_LEN];
    bytes[..8].copy_from_slice(&generation.to_le_bytes());
    bytes[8..].copy_from_slice(&check_of(generation).to_le_bytes());
    bytes
}

fn slot_offset(generation: u64) -> u64 {
    (MAGIC.len() as u64) + (SLOT_LEN as u64) * (generation % 2)
}

/// The generation a marker's bytes record, in either layout.
fn parse_marker(bytes: &[u8]) -> Result<u64, String> {
    if bytes.len() == MARKER_LEN && bytes.starts_with(MAGIC) {
        return bytes[MAGIC.len()..]
            .chunks_exact(SLOT_LEN)
            .filter_map(|s| {
                let generation = u64::from_le_bytes(s[..8].try_into().ok()?);
                let check = u64::from_le_bytes(s[8..].try_into().ok()?);
                (check == check_of(generation)).then_some(generation)
            })
            .max()
            .ok_or_else(|| "both of its slots are damaged".to_string());
    }
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .ok_or_else(|| "it does not hold a generation number".to_string())
}

/// The generation the marker records; `None` when there is no marker (a new store, or one
/// written before markers existed).
pub fn read_marker(store: &Path) -> Result<Option<u64>, StoreError> {
    let path = marker_path(store);
    match fs::read(&path) {
        Ok(bytes) => parse_marker(&bytes)
            .map(Some)
            .map_err(|reason| StoreError::Marker { path, reason }),
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
        let mut bytes = Vec::with_capacity(MARKER_LEN);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&slot(generation));
        bytes.extend_from_slice(&slot(generation));
        file.write_all(&bytes).map_err(err)?;
        file.sync_all().map_err(err)?;
    }
    fs::rename(&tmp, &path).map_err(err)?;
    // The rename is durable only once the directory entry is.
    File::open(store).and_then(|d| d.sync_all()).map_err(err)
}

/// Advances and records the generation; makes sled's files durable on the way.
///
/// A commit has three steps: [`advance`](Self::advance) writes the next generation into
/// sled after the data it covers, a sled flush makes both stable, and
/// [`seal`](Self::seal) fsyncs sled's files and replaces the marker. The steps are split so
/// the storage task can flush between them without holding a lock; the two
/// mutexes keep generations unique and the marker monotonic when commits overlap.
#[derive(Debug)]
pub(crate) struct Generation {
    db: sled::Db,
    tree: sled::Tree,
    dir: PathBuf,
    /// The latest generation written into sled (durable or not).
    written: Mutex<u64>,
    /// What the marker records, and the file handles used to fsync sled's files.
    sealed: Mutex<Sealed>,
    /// How batches of this store are applied. It lives here because every table and batch
    /// already holds the store's `Generation` as the store's identity.
    pub(crate) redo: Redo,
}

#[derive(Debug)]
struct Sealed {
    marked: u64,
    /// sled's log. sled itself only calls `sync_file_range` on it, which neither persists
    /// the file's metadata (its size as the log grows) nor flushes the disk's write cache;
    /// an fsync through our own descriptor does both (flock locks are per descriptor, so
    /// holding a second one does not disturb sled's lock).
    log: File,
    /// The marker, updated in place.
    marker: File,
    /// Blob files already fsynced, pruned to the ones still present.
    synced_blobs: BTreeSet<OsString>,
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
        // Ahead of the marker means a crash between sled's flush and the marker's update.
        // Rewritten whole (atomically) at every open: this also moves a marker of the first
        // layout to the current one.
        write_marker(dir, found)?;
        let marker = OpenOptions::new()
            .write(true)
            .open(marker_path(dir))
            .map_err(|e| StoreError::Marker {
                path: marker_path(dir),
                reason: e.to_string(),
            })?;
        let log = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(LOG_FILE))
            .map_err(|e| StoreError::Open {
                path: dir.to_path_buf(),
                reason: format!("cannot open sled's log file to fsync it: {e}"),
            })?;
        // sled writes its `conf` once, without fsync; make it durable before the first
        // acknowledgement can depend on it.
        if let Ok(conf) = File::open(dir.join(CONF_FILE)) {
            conf.sync_all().map_err(StoreError::from_io)?;
        }
        Ok(Self {
            db: db.clone(),
            tree,
            dir: dir.to_path_buf(),
            written: Mutex::new(found),
            sealed: Mutex::new(Sealed {
                marked: found,
                log,
                marker,
                synced_blobs: BTreeSet::new(),
            }),
            redo: Redo::open(db)?,
        })
    }

    /// Makes everything written so far durable and records it; returns the new generation.
    pub(crate) fn commit(&self) -> Result<u64, StoreError> {
        let next = self.advance()?;
        self.db.flush()?;
        self.seal(next)?;
        Ok(next)
    }

    /// Writes the next generation into sled, after everything already written; returns it.
    /// Not durable until a sled flush completes and [`seal`](Self::seal) has run.
    pub(crate) fn advance(&self) -> Result<u64, StoreError> {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        let next = *written + 1;
        self.tree.insert(KEY, &next.to_be_bytes())?;
        *written = next;
        Ok(next)
    }

    /// After a sled flush that started once `generation` was advanced: fsyncs sled's files
    /// and moves the marker to `generation` (never backwards).
    pub(crate) fn seal(&self, generation: u64) -> Result<(), StoreError> {
        let mut sealed = self.sealed.lock().unwrap_or_else(|p| p.into_inner());
        // A later generation already sealed came from a flush that started after ours was
        // advanced, so that flush and its fsync covered our data too.
        if sealed.marked >= generation {
            return Ok(());
        }
        sealed.log.sync_data().map_err(StoreError::from_io)?;
        sync_new_blobs(&self.dir, &mut sealed.synced_blobs)?;
        let path = marker_path(&self.dir);
        let marker_error = |e: std::io::Error| StoreError::Marker {
            path: path.clone(),
            reason: e.to_string(),
        };
        sealed
            .marker
            .write_all_at(&slot(generation), slot_offset(generation))
            .map_err(marker_error)?;
        sealed.marker.sync_data().map_err(marker_error)?;
        sealed.marked = generation;
        Ok(())
    }

    /// The generation the marker records: every write applied before it is durable.
    pub(crate) fn sealed(&self) -> u64 {
        self.sealed.lock().unwrap_or_else(|p| p.into_inner()).marked
    }
}

/// sled writes values too large for its log (nodes over about 128 KiB) to files in
/// `blobs/`, with no fsync at all; fsyncs the ones not yet synced, then the directory.
fn sync_new_blobs(dir: &Path, synced: &mut BTreeSet<OsString>) -> Result<(), StoreError> {
    let blobs = dir.join(BLOB_DIR);
    let entries = match fs::read_dir(&blobs) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::from_io(e)),
    };
    let mut present = BTreeSet::new();
    let mut added = false;
    for entry in entries {
        let name = entry.map_err(StoreError::from_io)?.file_name();
        if !synced.contains(&name) {
            match File::open(blobs.join(&name)).and_then(|f| f.sync_data()) {
                Ok(()) => added = true,
                // sled removes blobs it no longer needs; one gone now needs no fsync.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::from_io(e)),
            }
        }
        present.insert(name);
    }
    *synced = present;
    if added {
        File::open(&blobs)
            .and_then(|d| d.sync_all())
            .map_err(StoreError::from_io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn marker_bytes(slots: [u64; 2]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&slot(slots[0]));
        bytes.extend_from_slice(&slot(slots[1]));
        bytes
    }

    #[test]
    fn the_newest_valid_slot_counts_and_a_torn_one_falls_back_to_the_other() {
        assert_eq!(parse_marker(&marker_bytes([8, 7])), Ok(8));
        let mut torn = marker_bytes([8, 7]);
        torn[MAGIC.len() + 3] ^= 0xff;
        assert_eq!(parse_marker(&torn), Ok(7));
        let mut both = torn.clone();
        both[MAGIC.len() + SLOT_LEN + 9] ^= 0xff;
        assert!(parse_marker(&both).is_err());
        // The first layout: the number as text.
        assert_eq!(parse_marker(b"322\n"), Ok(322));
        assert!(parse_marker(b"not a number").is_err());
    }

    #[test]
    fn a_marker_is_written_whole_then_updated_in_its_slot_of_parity() {
        let dir = tempfile::tempdir().unwrap();
        write_marker(dir.path(), 5).unwrap();
        assert_eq!(read_marker(dir.path()).unwrap(), Some(5));
        let file = OpenOptions::new()
            .write(true)
            .open(marker_path(dir.path()))
            .unwrap();
        file.write_all_at(&slot(6), slot_offset(6)).unwrap();
        assert_eq!(read_marker(dir.path()).unwrap(), Some(6));
        // 7 goes where 5 was; 6 stays readable beside it.
        file.write_all_at(&slot(7)[..5], slot_offset(7)).unwrap();
        assert_eq!(read_marker(dir.path()).unwrap(), Some(6));
    }
}
