//! `status`: the recorded nodes found running (or not) and what each one answers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use serde::{Deserialize, Serialize};

use crate::probe::{self, Prober};
use crate::procs::{self, FoundBy, NodeClues, NodeProcess};
use crate::state::{self, KillMark, LabRecord, NodeEntry};
use crate::*;

/// The live process of `node`, if one can be tied to it: the recorded one, or the one its
/// data dir's control file names with a matching command line.
///
/// An in-memory node has no process of its own: it is live while its host lives and its
/// data dir's control file names the host (a node removes its control file when it stops).
pub fn locate(node: &NodeEntry) -> Option<NodeProcess> {
    let control = read_control(&node.data_dir);
    if node.in_memory {
        let host = procs::is_ours_and_alive(node.pid, node.start_time);
        return (host && control?.pid == node.pid).then_some(NodeProcess {
            pid: node.pid,
            start_time: node.start_time,
            found_by: FoundBy::RecordedPid,
        });
    }
    procs::choose(
        &NodeClues {
            recorded_pid: node.pid,
            recorded_start: node.start_time,
            control_pid: control.map(|c| c.pid),
            data_dir: &node.data_dir,
            binary: node.binary(),
        },
        procs::proc_info,
    )
}

/// The control port of a node's live process (`None` when the node is not running): the
/// recorded one, or for a node started again by hand, the one its control file names.
pub fn live_control_port(node: &NodeEntry) -> Option<u16> {
    let live = locate(node)?;
    Some(control_port_of(node, Some(&live)))
}

fn control_port_of(node: &NodeEntry, live: Option<&NodeProcess>) -> u16 {
    if node.in_memory {
        // Each run of an in-memory node binds a port of its own; its control file has it.
        return read_control(&node.data_dir)
            .filter(|_| live.is_some())
            .map(|c| c.addr.port())
            .unwrap_or(node.control_port);
    }
    match live.map(|p| p.found_by) {
        Some(FoundBy::ControlFile) => read_control(&node.data_dir)
            .map(|c| c.addr.port())
            .unwrap_or(node.control_port),
        _ => node.control_port,
    }
}

/// Asks a node for its status: on this machine's loopback, or, for a NAT lab node, inside
/// its network namespace (where its control API listens).
pub(crate) async fn probe_status(
    prober: &Prober,
    lab: Option<&LabRecord>,
    node: &NodeEntry,
    control_port: u16,
) -> Option<probe::StatusProbe> {
    match (&node.namespace, lab) {
        (Some(ns), Some(lab)) => {
            crate::netns::query(&lab.ip, &lab.binary, ns, control_port, "status").await
        }
        _ => prober.status(control_port).await,
    }
}

/// The fields of a node's `control.json` the testnet uses.
#[derive(Debug, Clone, Copy, Deserialize)]
pub(crate) struct ControlInfo {
    pid: u32,
    addr: SocketAddr,
}

pub(crate) fn read_control(data_dir: &Path) -> Option<ControlInfo> {
    let bytes = std::fs::read(data_dir.join(CONTROL_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The node's control file, written by every running node into its data dir.
pub(crate) const CONTROL_FILE: &str = "control.json";

/// One node of `testnet status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRow {
    pub index: usize,
    /// The live process if one was found, else the recorded one.
    pub pid: u32,
    pub alive: bool,
    /// How the live process was found (`None` when there is none).
    pub found_by: Option<FoundBy>,
    /// Set when `testnet kill` stopped the node.
    pub killed: Option<KillMark>,
    pub p2p_port: u16,
    pub control_port: u16,
    pub rss_bytes: Option<u64>,
    pub status: Option<probe::StatusProbe>,
    /// Radio testnets: the nodes this one hears, per the medium file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub radio_neighbours: Option<Vec<usize>>,
    /// NAT lab nodes: the network namespace the node runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// In-memory nodes: one of many in the host process (`pid` is the host's; no p2p port,
    /// no RSS of its own).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_memory: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestnetStatus {
    pub dir: PathBuf,
    pub nodes: Vec<NodeRow>,
    /// An in-memory testnet's host: its process and what it reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostStatus>,
}

/// The host of an in-memory testnet, as `testnet status` finds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostStatus {
    pub pid: u32,
    pub alive: bool,
    pub control_port: u16,
    pub rss_bytes: Option<u64>,
    pub log_file: PathBuf,
    /// `None` when the host did not answer.
    pub health: Option<crate::memory::HostHealth>,
}

/// The state of the testnet in `dir`, asked of every node.
pub async fn status(dir: &Path) -> Result<TestnetStatus, TestnetError> {
    let record = state::load(dir)?.ok_or_else(|| TestnetError::NotFound(dir.to_path_buf()))?;
    let prober = Prober::new();
    let ports: Vec<u16> = record.nodes.iter().map(|n| n.p2p_port).collect();
    let mut radio_neighbours = radio::neighbours(dir, &ports);
    let mut rows = Vec::with_capacity(record.nodes.len());
    for node in &record.nodes {
        let live = locate(node);
        let control_port = control_port_of(node, live.as_ref());
        let status = match live {
            Some(_) => probe_status(&prober, record.lab.as_ref(), node, control_port).await,
            None => None,
        };
        rows.push(NodeRow {
            index: node.index,
            pid: live.map(|p| p.pid).unwrap_or(node.pid),
            alive: live.is_some(),
            found_by: live.map(|p| p.found_by),
            killed: if live.is_some() {
                None
            } else {
                node.killed.clone()
            },
            p2p_port: node.p2p_port,
            control_port,
            rss_bytes: live
                .filter(|_| !node.in_memory)
                .and_then(|p| procs::rss_bytes(p.pid)),
            status,
            radio_neighbours: radio_neighbours
                .as_mut()
                .and_then(|n| n.get_mut(node.index).map(std::mem::take)),
            namespace: node.namespace.clone(),
            in_memory: node.in_memory,
        });
    }
    let host = match &record.host {
        Some(host) => Some(host_status(dir, host).await),
        None => None,
    };
    Ok(TestnetStatus {
        dir: dir.to_path_buf(),
        nodes: rows,
        host,
    })
}

async fn host_status(dir: &Path, host: &state::HostRecord) -> HostStatus {
    let alive = crate::memory::host_process(host).is_some();
    let health = match (alive, crate::memory::HostClient::new(dir, host)) {
        (true, Ok(client)) => client.health().await.ok(),
        _ => None,
    };
    HostStatus {
        pid: host.pid,
        alive,
        control_port: host.control_port,
        rss_bytes: alive.then(|| procs::rss_bytes(host.pid)).flatten(),
        log_file: host.log_file.clone(),
        health,
    }
}

pub fn render_status(s: &TestnetStatus) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    let lab = s.nodes.iter().any(|n| n.namespace.is_some());
    let mut header = vec![
        "#",
        "pid",
        "peer",
        "phase",
        "peers",
        "telemetry",
        "stale",
        "p2p port",
        "api port",
        "rss",
        "radio neighbours",
    ];
    if lab {
        header.push("namespace");
    }
    t.set_header(header);
    for n in &s.nodes {
        let (peer, phase, peers, tele, stale) = match &n.status {
            Some(st) => (
                short(&st.peer_id),
                st.phase.clone(),
                st.connected_peers.to_string(),
                st.telemetry_nodes.to_string(),
                st.stale_nodes.to_string(),
            ),
            None => (
                "?".into(),
                match (&n.killed, n.alive) {
                    (_, true) => "not answering".into(),
                    (Some(mark), false) => format!("killed ({})", mark.signal),
                    (None, false) => "stopped".into(),
                },
                String::new(),
                String::new(),
                String::new(),
            ),
        };
        let pid = match n.found_by {
            Some(FoundBy::ControlFile) => format!("{}*", n.pid),
            _ => n.pid.to_string(),
        };
        let mut row = vec![
            n.index.to_string(),
            pid,
            peer,
            phase,
            peers,
            tele,
            stale,
            if n.in_memory {
                "memory".to_owned()
            } else {
                n.p2p_port.to_string()
            },
            n.control_port.to_string(),
            n.rss_bytes
                .map(|b| format!("{:.1} MiB", b as f64 / 1048576.0))
                .unwrap_or_default(),
            n.radio_neighbours
                .as_ref()
                .map(|ns| {
                    ns.iter()
                        .map(|i| i.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default(),
        ];
        if lab {
            row.push(n.namespace.clone().unwrap_or_default());
        }
        t.add_row(row);
    }
    let mut out = t.to_string();
    if let Some(host) = &s.host {
        out.push_str(&format!(
            "\nin-memory host PID {} ({}), RSS {}, fault API on 127.0.0.1:{}, log {}",
            host.pid,
            if host.alive { "running" } else { "GONE" },
            host.rss_bytes
                .map(|b| format!("{:.0} MiB", b as f64 / 1048576.0))
                .unwrap_or_else(|| "?".into()),
            host.control_port,
            host.log_file.display()
        ));
        if let Some(h) = &host.health {
            out.push_str(&format!(
                "\n  {}/{} nodes running, {} converged{}",
                h.running,
                h.nodes,
                h.converged_nodes,
                if h.partitions.is_empty() {
                    String::new()
                } else {
                    format!("; partitioned off: {:?}", h.partitions)
                }
            ));
        }
    }
    if s.nodes
        .iter()
        .any(|n| n.found_by == Some(FoundBy::ControlFile))
    {
        out.push_str("\n* not the recorded process: found through the node's control.json");
    }
    out
}

pub(crate) fn short(id: &str) -> String {
    if id.len() > 14 {
        format!("{}…{}", &id[..6], &id[id.len() - 6..])
    } else {
        id.to_owned()
    }
}
