//! Checking a store and repairing a damaged one (`fogmesh store check [--repair]`).
//!
//! A check opens sled directly (not through [`crate::Store::open`], which refuses damage),
//! compares its durable generation with the marker and reads every value of every table.
//! A repair keeps everything readable: it copies each well-formed value into a fresh store,
//! moves the damaged directory aside (never deletes it) and puts the fresh one in its place.
//! What a repair cannot recover are the writes sled lost; it says how many durable commits
//! that was, and which tables it could not read from at all.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::generation::{self, TREE as GENERATION_TREE};
use crate::{codec, open_sled, StoreError, StoreOptions};

/// What one table holds.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub name: String,
    /// Entries whose value is a well-formed CBOR value.
    pub readable: u64,
    /// Entries whose value is not (they are dropped by a repair).
    pub unreadable: u64,
}

/// The outcome of a check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub path: PathBuf,
    /// Why sled could not open the store at all, if it could not.
    pub open_error: Option<String>,
    /// The generation the marker file records (None: no marker, or an unreadable one).
    pub recorded_generation: Option<u64>,
    /// Why the marker file could not be read, if it could not.
    pub marker_error: Option<String>,
    /// The generation sled holds.
    pub found_generation: Option<u64>,
    pub tables: Vec<TableReport>,
}

impl CheckReport {
    /// Durable commits acknowledged but missing from sled.
    pub fn lost_commits(&self) -> u64 {
        match (self.recorded_generation, self.found_generation) {
            (Some(recorded), Some(found)) => recorded.saturating_sub(found),
            _ => 0,
        }
    }

    /// True when the store opens, holds every acknowledged commit and every value reads.
    pub fn healthy(&self) -> bool {
        self.open_error.is_none()
            && self.marker_error.is_none()
            && self.found_generation.is_some()
            && self.lost_commits() == 0
            && self.tables.iter().all(|t| t.unreadable == 0)
    }
}

/// The outcome of a repair.
#[derive(Debug, Clone, Serialize)]
pub struct RepairReport {
    /// The check that found the damage.
    pub before: CheckReport,
    /// Where the damaged store was moved (kept for forensics; safe to delete).
    pub damaged_copy: PathBuf,
    /// What the repaired store holds.
    pub after: CheckReport,
}

/// Checks the store in `dir` without changing it (beyond what opening sled does).
pub fn check(dir: &Path) -> Result<CheckReport, StoreError> {
    if !dir.is_dir() {
        return Err(StoreError::Open {
            path: dir.to_path_buf(),
            reason: "no store there".into(),
        });
    }
    let (recorded_generation, marker_error) = match generation::read_marker(dir) {
        Ok(recorded) => (recorded, None),
        Err(error) => (None, Some(error.to_string())),
    };
    let db = match open_sled(dir, &StoreOptions::default()) {
        Ok(db) => db,
        Err(StoreError::Open { reason, .. }) if reason.contains("in use") => {
            return Err(StoreError::Open {
                path: dir.to_path_buf(),
                reason,
            })
        }
        Err(error) => {
            return Ok(CheckReport {
                path: dir.to_path_buf(),
                open_error: Some(error.to_string()),
                recorded_generation,
                marker_error,
                found_generation: None,
                tables: Vec::new(),
            })
        }
    };
    let found_generation = generation::read_from_db(&db.open_tree(GENERATION_TREE)?, dir).ok();
    let mut tables = Vec::new();
    for name in user_tables(&db) {
        let tree = db.open_tree(&name)?;
        let mut report = TableReport {
            name,
            readable: 0,
            unreadable: 0,
        };
        for item in tree.iter() {
            match item {
                Ok((_, value)) if codec::check_well_formed(&value).is_ok() => report.readable += 1,
                // A value sled cannot even return is as lost as one that does not decode.
                _ => report.unreadable += 1,
            }
        }
        tables.push(report);
    }
    Ok(CheckReport {
        path: dir.to_path_buf(),
        open_error: None,
        recorded_generation,
        marker_error,
        found_generation,
        tables,
    })
}

/// Repairs the store in `dir` if it is damaged: keeps every readable value, moves the damaged
/// store aside and leaves a healthy store in its place. `None` when the store was healthy
/// and nothing was changed.
pub fn repair(dir: &Path) -> Result<Option<RepairReport>, StoreError> {
    let before = check(dir)?;
    if before.healthy() {
        return Ok(None);
    }
    let fresh_dir = sibling(dir, "repair");
    remove_dir_if_present(&fresh_dir)?;
    {
        let fresh = open_sled(&fresh_dir, &StoreOptions::default())?;
        if before.open_error.is_none() {
            let damaged = open_sled(dir, &StoreOptions::default())?;
            for name in user_tables(&damaged) {
                let from = damaged.open_tree(&name)?;
                let to = fresh.open_tree(&name)?;
                for (key, value) in from.iter().flatten() {
                    if codec::check_well_formed(&value).is_ok() {
                        to.insert(key, value)?;
                    }
                }
            }
        }
        // Start above anything either side ever recorded, so the old marker can never again
        // make the repaired store look damaged.
        let generation = before
            .recorded_generation
            .unwrap_or(0)
            .max(before.found_generation.unwrap_or(0))
            + 1;
        fresh
            .open_tree(GENERATION_TREE)?
            .insert(b"generation", &generation.to_be_bytes())?;
        fresh.flush()?;
        generation::write_marker(&fresh_dir, generation)?;
    }
    let damaged_copy = sibling(dir, &format!("damaged-{}", unix_now()));
    rename(dir, &damaged_copy)?;
    rename(&fresh_dir, dir)?;
    let after = check(dir)?;
    Ok(Some(RepairReport {
        before,
        damaged_copy,
        after,
    }))
}

/// Every tree but sled's default one and our own generation tree.
fn user_tables(db: &sled::Db) -> Vec<String> {
    db.tree_names()
        .into_iter()
        .map(|n| String::from_utf8_lossy(&n).into_owned())
        .filter(|n| n != "__sled__default" && n != GENERATION_TREE)
        .collect()
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "store".into());
    dir.with_file_name(format!("{name}.{suffix}"))
}

fn remove_dir_if_present(dir: &Path) -> Result<(), StoreError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::Io(format!(
            "cannot remove {}: {e}",
            dir.display()
        ))),
    }
}

fn rename(from: &Path, to: &Path) -> Result<(), StoreError> {
    std::fs::rename(from, to).map_err(|e| {
        StoreError::Io(format!(
            "cannot move {} to {}: {e}",
            from.display(),
            to.display()
        ))
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
