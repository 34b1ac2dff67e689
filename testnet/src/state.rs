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
    /// NAT lab nodes: the network namespace the node runs in (its control API is on that
    /// namespace's 127.0.0.1, not this one's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// In-memory testnets: the node is one of many in the host process (`pid` is the host's),
    /// not a process of its own; the host (see [`TestnetState::host`]) stops and starts it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_memory: bool,
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
    /// Set when the testnet is a NAT lab (`testnet up --nat lab`): what `down` must undo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lab: Option<LabRecord>,
    /// Set when the testnet runs in memory (`testnet up --in-memory`): the one process that
    /// hosts every node, and its fault API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostRecord>,
}

/// The host process of an in-memory testnet (docs/testnet.md, "In-memory testnets").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub pid: u32,
    /// Start time in clock ticks since boot, to tell the host from a recycled PID.
    pub start_time: Option<u64>,
    /// The host's fault API on 127.0.0.1 (it wants the testnet's token).
    pub control_port: u16,
    /// The host's standard output and error.
    pub log_file: PathBuf,
    /// Nodes the host was asked to run.
    pub nodes: usize,
    pub telemetry_interval_ms: u64,
}

/// Where a NAT lab node sits: on the lab's internet, or behind a router of some NAT kind
/// (docs/nat-lab.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeKind {
    /// A public address on the lab's internet, no NAT.
    Public,
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering (a home router).
    PortRestricted,
    /// Address-and-port-dependent mapping and filtering (a carrier-grade NAT).
    Symmetric,
}

impl NodeKind {
    pub const ALL: [NodeKind; 4] = [
        NodeKind::Public,
        NodeKind::FullCone,
        NodeKind::PortRestricted,
        NodeKind::Symmetric,
    ];

    /// The name used in layouts, reports and JSON.
    pub fn name(self) -> &'static str {
        match self {
            NodeKind::Public => "public",
            NodeKind::FullCone => "full-cone",
            NodeKind::PortRestricted => "port-restricted",
            NodeKind::Symmetric => "symmetric",
        }
    }

    pub fn from_name(name: &str) -> Option<NodeKind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    pub fn is_nated(self) -> bool {
        self != NodeKind::Public
    }
}

impl std::fmt::Display for NodeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One node of a NAT lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabNodeRecord {
    pub index: usize,
    pub kind: NodeKind,
    /// The namespace the node runs in (a public node's own, or the host behind a router).
    pub namespace: String,
    /// The router's namespace, for NATed nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<String>,
    /// The node's own address: public, or private behind its router.
    pub addr: std::net::Ipv4Addr,
    /// The address the lab's internet sees it as: its own, or its router's outside address.
    pub external: std::net::Ipv4Addr,
    pub peer_id: String,
}

/// What a NAT lab made, so `down` removes exactly that.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabRecord {
    /// The lab's id: every namespace it made is named `fmlab-<id>-...`.
    pub id: String,
    /// Every network namespace the lab created, in creation order. Recorded *before* each
    /// is created, so an interrupted `up` leaves none that `down` does not know about.
    pub namespaces: Vec<String>,
    /// `ip` as found when the lab was built (`down` runs the same one).
    pub ip: PathBuf,
    /// The `fogmesh` binary, to ask nodes in their namespaces.
    pub binary: PathBuf,
    pub nodes: Vec<LabNodeRecord>,
    /// The layout the lab was built from, as given to `--lab-layout`.
    pub layout: String,
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
        assert!(!node.in_memory);
        assert_eq!(loaded.host, None);
    }

    #[test]
    fn in_memory_records_round_trip_and_stay_out_of_process_testnets() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRecord {
            pid: 77,
            start_time: Some(3),
            control_port: 4100,
            log_file: "/tn/memory-host.log".into(),
            nodes: 1,
            telemetry_interval_ms: 1000,
        };
        let entry = NodeEntry {
            index: 0,
            pid: 77,
            start_time: Some(3),
            data_dir: "/tn/node-0".into(),
            log_file: "/tn/memory-host.log".into(),
            p2p_port: 0,
            control_port: 4101,
            command: None,
            started_at_ms: None,
            killed: None,
            namespace: None,
            in_memory: true,
        };
        let state = TestnetState {
            created_at_ms: 1,
            nodes: vec![entry.clone()],
            lab: None,
            host: Some(host.clone()),
        };
        save(dir.path(), &state).unwrap();
        let loaded = load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.host, Some(host));
        assert!(loaded.nodes[0].in_memory);
        // A process testnet's file carries neither field, as before they existed.
        let process = TestnetState {
            nodes: vec![NodeEntry {
                in_memory: false,
                ..entry
            }],
            host: None,
            ..state
        };
        save(dir.path(), &process).unwrap();
        let text = std::fs::read_to_string(path(dir.path())).unwrap();
        assert!(
            !text.contains("\"in_memory\"") && !text.contains("\"host\""),
            "{text}"
        );
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
                namespace: Some("fmlab-ab12-nat0".into()),
                in_memory: false,
            }],
            lab: Some(LabRecord {
                id: "ab12".into(),
                namespaces: vec!["fmlab-ab12-inet".into(), "fmlab-ab12-nat0".into()],
                ip: "/sbin/ip".into(),
                binary: "/bin/fogmesh".into(),
                nodes: vec![LabNodeRecord {
                    index: 0,
                    kind: NodeKind::Symmetric,
                    namespace: "fmlab-ab12-nat0".into(),
                    router: Some("fmlab-ab12-rtr0".into()),
                    addr: std::net::Ipv4Addr::new(10, 1, 0, 2),
                    external: std::net::Ipv4Addr::new(198, 18, 0, 100),
                    peer_id: "12D3KooW".into(),
                }],
                layout: "public=0,symmetric=1".into(),
            }),
            host: None,
        };
        save(dir.path(), &state).unwrap();
        let loaded = load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.lab, state.lab);
        let text = std::fs::read_to_string(path(dir.path())).unwrap();
        assert!(text.contains("\"kind\": \"symmetric\""), "{text}");
        let node = &loaded.nodes[0];
        assert_eq!(node.namespace.as_deref(), Some("fmlab-ab12-nat0"));
        assert_eq!(node.binary(), Some(Path::new("/bin/fogmesh")));
        assert_eq!(node.command, state.nodes[0].command);
        assert_eq!(node.killed, state.nodes[0].killed);
        assert_eq!(node.started_at_ms, Some(5));
    }
}
