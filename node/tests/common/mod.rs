//! Helpers shared by the node's integration tests.
//!
//! Tests of several nodes talking run on the in-memory network
//! ([`fogmesh_node::memnet::MemNet`]) and wait on views; the loopback TCP helpers below are
//! for the tests that are about real sockets (ports, the control API, processes).
#![allow(dead_code)]

pub mod vectors;

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use fogmesh_node::config::{ConfigLayer, Settings};
use fogmesh_node::memnet::{MemNet, MemNetBuilder};
use fogmesh_node::node::{self, RunningNode};
use libp2p::Multiaddr;

/// An in-memory network under `dir` with telemetry every `interval` (no nodes yet: say
/// `.nodes(n)`).
pub fn memnet(dir: &Path, interval: Duration) -> MemNetBuilder {
    MemNet::builder(dir).telemetry_interval(interval)
}

/// The value of a handshake refusal counter (`inbound.missing_ticket`, ...) of a node.
pub fn refused(net: &MemNet, node: usize, key: &str) -> u64 {
    net.status(node)
        .and_then(|s| s.admission.handshakes.refused.get(key).copied())
        .unwrap_or(0)
}

/// Settings for a loopback test node: TCP on a free port, no mDNS, fast telemetry.
pub fn settings(dir: &Path, bootstrap: Vec<Multiaddr>, interval: Duration) -> Settings {
    Settings::resolve(ConfigLayer {
        data_dir: Some(dir.to_path_buf()),
        listen: Some(vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()]),
        bootstrap: Some(bootstrap),
        mdns: Some(false),
        quic: Some(false),
        telemetry_interval: Some(interval),
        // Every test node dials from 127.0.0.1, like a testnet's.
        exempt_loopback: Some(true),
        ..ConfigLayer::default()
    })
}

pub async fn start(dir: &Path, bootstrap: Vec<Multiaddr>, interval: Duration) -> RunningNode {
    node::start(settings(dir, bootstrap, interval))
        .await
        .expect("node starts")
}

/// The tests' one wait: polls `check` every 50 ms until it yields a value, which is
/// returned; fails the test naming `what` (and the last value `describe` gives, if any)
/// once `within` has passed. Tests on the in-memory network wait on views with
/// `MemNet::wait_for` instead, which wakes on every change.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`eventually`] for a condition.
pub async fn wait_until<F, Fut>(what: &str, within: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    eventually(what, within, || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await;
    started.elapsed()
}

/// The inet sockets process `pid` holds, as (protocol, local address in /proc/net's hex).
pub fn inet_sockets_of(pid: u32) -> Vec<(String, String)> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|t| {
            let t = t.to_string_lossy().into_owned();
            t.strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect();
    let mut found = Vec::new();
    for proto in ["tcp", "tcp6", "udp", "udp6"] {
        let table = std::fs::read_to_string(format!("/proc/{pid}/net/{proto}")).unwrap_or_default();
        for line in table.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && inodes.contains(cols[9]) {
                found.push((proto.to_owned(), cols[1].to_owned()));
            }
        }
    }
    found
}
