#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Real nodes with Bluetooth LE only, on the simulated radio: telemetry crosses hops from
//! node to node with no internet transport at all.

use std::path::Path;
use std::time::Duration;

use fogmesh_node::api::{self, now_ms};
use fogmesh_node::config::{ConfigLayer, Settings};
use fogmesh_node::identity;
use fogmesh_node::node::{self, Network, RunningNode};
use fogmesh_transports::ble::driver::DeviceId;
use fogmesh_transports::ble::sim::{SimConfig, SimRadio};
use fogmesh_transports::ble::transport::device_addr;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

fn ble_addr(peer: PeerId) -> Multiaddr {
    device_addr(DeviceId::of_peer(&peer)).with(Protocol::P2p(peer))
}

async fn offline_node(
    radio: &SimRadio,
    dir: &Path,
    x: f64,
    bootstrap: Vec<Multiaddr>,
) -> RunningNode {
    let peer = identity::load_or_create(dir).unwrap().public().to_peer_id();
    let device = radio.add_device(DeviceId::of_peer(&peer), (x, 0.0));
    let settings = Settings::resolve(ConfigLayer {
        data_dir: Some(dir.to_path_buf()),
        listen: Some(vec!["/unix/ble".parse().unwrap()]),
        bootstrap: Some(bootstrap),
        // Asked for, and still not run: an offline node opens no mDNS socket.
        mdns: Some(true),
        quic: Some(false),
        // Fresh for three intervals: room for a loaded machine.
        telemetry_interval: Some(Duration::from_secs(1)),
        ..ConfigLayer::default()
    });
    node::start_on(settings, Network::Radio(device))
        .await
        .unwrap()
}

fn has_fresh_telemetry_from(node: &RunningNode, origin: PeerId) -> bool {
    let now = now_ms();
    api::inspect(&node.state.telemetry, |t| {
        t.get(&origin.to_string()).is_some_and(|r| !r.is_stale(now))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_crosses_two_radio_hops_with_no_internet() {
    // Three devices in a line, 8 apart with a range of 10: the ends cannot hear each other.
    let radio = SimRadio::new(SimConfig {
        range: 10.0,
        seed: 3,
        ..SimConfig::default()
    });
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes: Vec<RunningNode> = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let bootstrap = nodes
            .last()
            .map(|prev| vec![ble_addr(prev.peer_id)])
            .unwrap_or_default();
        nodes.push(offline_node(&radio, dir.path(), 8.0 * i as f64, bootstrap).await);
    }
    let (first, last) = (nodes[0].peer_id, nodes[2].peer_id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !(has_fresh_telemetry_from(&nodes[0], last) && has_fresh_telemetry_from(&nodes[2], first))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ends did not hear each other; radio links: {:?}",
            radio.links()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The ends heard each other through the middle node, not directly.
    let ends = (DeviceId::of_peer(&first), DeviceId::of_peer(&last));
    assert!(!radio
        .links()
        .iter()
        .any(|&(a, b)| (a, b) == ends || (b, a) == ends));
    let mdns = api::inspect(&nodes[1].state.status, |s| s.mdns);
    assert!(!mdns, "an offline node runs no mDNS");
    for node in nodes {
        node.shutdown().await;
    }
}
