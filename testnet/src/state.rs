//! The testnet's state file, `<dir>/testnet.json`: which processes `up` started.
//! Written after every spawn (atomically, by rename) so even an interrupted `up` leaves a
//! record `down` can act on.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::TestnetError;

pub const STATE_FILE: &str = "testnet.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeEntry {
    pub index: usize,
    pub pid: u32,
    /// Start time in clock ticks since boot, to tell our process from a recycled PID.
    pub start_time: Option<u64>,
    pub data_dir: PathBuf,
    pub log_file: PathBuf,
    pub p2p_port: u16,
    pub control_port: u16,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TestnetState {
    pub created_at_ms: u64,
    pub nodes: Vec<NodeEntry>,
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

pub fn load(dir: &Path) -> Result<Option<TestnetState>, TestnetError> {
    let path = path(dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| TestnetError::State {
                path,
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TestnetError::State {
            path,
            reason: e.to_string(),
        }),
    }
}

pub fn save(dir: &Path, state: &TestnetState) -> Result<(), TestnetError> {
    let path = path(dir);
    let err = |e: String| TestnetError::State {
        path: path.clone(),
        reason: e,
    };
    let json = serde_json::to_vec_pretty(state).map_err(|e| err(e.to_string()))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, json).map_err(|e| err(e.to_string()))?;
    std::fs::rename(&tmp, &path).map_err(|e| err(e.to_string()))
}

pub fn remove(dir: &Path) -> Result<(), TestnetError> {
    match std::fs::remove_file(path(dir)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(TestnetError::State {
            path: path(dir),
            reason: e.to_string(),
        }),
    }
}
