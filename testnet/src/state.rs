//! The testnet's state file, `<dir>/testnet.json`: which processes `up` started.
//! Written after every spawn (atomically, by rename) so even an interrupted `up` leaves a
//! record `down` can act on.
//!
//! Fields added after the first release carry `serde(default)`, so a state file written by an
//! older `fogmesh` still loads: its testnet can be shown and stopped, only not restarted.

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
    /// The node's full command line, program first: `restart` runs exactly this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// When the recorded process was started, in ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    /// Set by `testnet kill`, cleared by `testnet restart`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub killed: Option<KillMark>,
}

impl NodeEntry {
    /// The binary the node was started with, if recorded.
    pub fn binary(&self) -> Option<&Path> {
        self.command.as_ref().and_then(|c| c.first()).map(Path::new)
    }
}

/// A node stopped on purpose by `testnet kill`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillMark {
    /// `SIGKILL` or `SIGTERM`.
    pub signal: String,
    pub at_ms: u64,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_files_without_command_lines_still_load() {
        let dir = tempfile::tempdir().unwrap();
        // As written before `restart` existed.
        let old = r#"{
  "created_at_ms": 1,
  "nodes": [
    { "index": 0, "pid": 4242, "start_time": 99, "data_dir": "/tn/node-0",
      "log_file": "/tn/node-0/node.log", "p2p_port": 4000, "control_port": 4001 }
  ]
}"#;
        std::fs::write(path(dir.path()), old).unwrap();
        let loaded = load(dir.path()).unwrap().unwrap();
        let node = &loaded.nodes[0];
        assert_eq!((node.pid, node.start_time), (4242, Some(99)));
        assert_eq!(node.command, None);
        assert_eq!(node.binary(), None);
        assert_eq!(node.killed, None);
    }

    #[test]
    fn command_lines_and_kill_marks_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let state = TestnetState {
            created_at_ms: 1,
            nodes: vec![NodeEntry {
                index: 0,
                pid: 1,
                start_time: None,
                data_dir: "/tn/node-0".into(),
                log_file: "/tn/node-0/node.log".into(),
                p2p_port: 4000,
                control_port: 4001,
                command: Some(vec!["/bin/fogmesh".into(), "run".into()]),
                started_at_ms: Some(5),
                killed: Some(KillMark {
                    signal: "SIGKILL".into(),
                    at_ms: 6,
                }),
            }],
        };
        save(dir.path(), &state).unwrap();
        let node = &load(dir.path()).unwrap().unwrap().nodes[0];
        assert_eq!(node.binary(), Some(Path::new("/bin/fogmesh")));
        assert_eq!(node.command, state.nodes[0].command);
        assert_eq!(node.killed, state.nodes[0].killed);
        assert_eq!(node.started_at_ms, Some(5));
    }
}
