#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Real nodes with Bluetooth LE only, on the simulated radio: telemetry crosses hops from
//! node to node with no internet transport at all.

mod common;

use std::future::ready;
use std::path::Path;
use std::time::Duration;

use common::{eventually, wait_until};
use fogmesh_node::client::ControlClient;
use fogmesh_node::config::{ConfigLayer, Settings};
use fogmesh_node::device::policy::DutyCycle;
use fogmesh_node::device::simulate::SimulateConfig;
use fogmesh_node::identity;
use fogmesh_node::node::{self, Network, RunningNode};
use fogmesh_node::relay::api::SendMessageRequest;
use fogmesh_node::relay::MessagesView;
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
    let now = node.handle.clock().now_ms();
    fogmesh_node::telemetry::view::latest(&node.handle)
        .get(&origin.to_string())
        .is_some_and(|r| !r.is_stale(now))
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
    wait_until("the ends hear each other", Duration::from_secs(30), || {
        ready(
            has_fresh_telemetry_from(&nodes[0], last) && has_fresh_telemetry_from(&nodes[2], first),
        )
    })
    .await;
    // The ends heard each other through the middle node, not directly.
    let ends = (DeviceId::of_peer(&first), DeviceId::of_peer(&last));
    assert!(!radio
        .links()
        .iter()
        .any(|&(a, b)| (a, b) == ends || (b, a) == ends));
    let mdns = nodes[1].handle.status().mdns;
    assert!(!mdns, "an offline node runs no mDNS");
    for node in nodes {
        node.shutdown().await;
    }
}

/// Starts offline nodes in a line on `radio`, `spacing` apart (range 10: neighbours only),
/// each bootstrapping to the one before.
async fn offline_line(radio: &SimRadio, dirs: &[tempfile::TempDir]) -> Vec<RunningNode> {
    let mut nodes: Vec<RunningNode> = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let bootstrap = nodes
            .last()
            .map(|prev| vec![ble_addr(prev.peer_id)])
            .unwrap_or_default();
        nodes.push(offline_node(radio, dir.path(), 8.0 * i as f64, bootstrap).await);
    }
    nodes
}

fn line_radio(seed: u64) -> SimRadio {
    SimRadio::new(SimConfig {
        range: 10.0,
        seed,
        ..SimConfig::default()
    })
}

async fn send(from: &RunningNode, to: PeerId, text: &str) -> String {
    ControlClient::new(from.control_addr)
        .with_token(from.api_token.clone())
        .send_message(&SendMessageRequest {
            to: Some(to.to_string()),
            text: text.into(),
            app: None,
        })
        .await
        .unwrap()
        .id
}

/// Waits until `check` holds on a node's messages view, or fails after `within`.
async fn wait_messages(
    node: &RunningNode,
    within: Duration,
    what: &str,
    check: impl Fn(&MessagesView) -> bool,
) -> MessagesView {
    eventually(what, within, || {
        let view = fogmesh_node::relay::api::messages_of(&node.handle);
        ready(check(&view).then_some(view))
    })
    .await
}

fn status_of(view: &MessagesView, id: &str) -> String {
    view.sent
        .iter()
        .find(|m| m.id == id)
        .map(|m| m.status.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_crosses_seven_radio_hops_and_its_ack_comes_back() {
    let radio = line_radio(5);
    let dirs: Vec<_> = (0..8).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = offline_line(&radio, &dirs).await;
    let (first, last) = (&nodes[0], &nodes[7]);
    let id = send(first, last.peer_id, "seven hops, no internet").await;
    let inbox = wait_messages(last, Duration::from_secs(60), "delivery", |m| {
        m.inbox.iter().any(|r| r.id == id)
    })
    .await;
    let got = inbox.inbox.iter().find(|r| r.id == id).unwrap();
    assert_eq!(got.text, "seven hops, no internet");
    assert_eq!(
        got.peer.as_deref(),
        Some(first.peer_id.to_string().as_str())
    );
    assert_eq!(got.hops, Some(7), "one TTL step per hop");
    wait_messages(first, Duration::from_secs(60), "the ack", |m| {
        status_of(m, &id) == "delivered"
    })
    .await;
    // Nobody in between can read it.
    for middle in &nodes[1..7] {
        let view = fogmesh_node::relay::api::messages_of(&middle.handle);
        assert!(view.inbox.is_empty());
    }
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_holds_a_message_and_the_heal_delivers_it() {
    let radio = line_radio(6);
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = offline_line(&radio, &dirs).await;
    let devices: Vec<DeviceId> = nodes
        .iter()
        .map(|n| DeviceId::of_peer(&n.peer_id))
        .collect();
    // Wait for the line to form, then split it in the middle.
    wait_until("the line forms", Duration::from_secs(30), || {
        ready(radio.links().len() >= 3)
    })
    .await;
    radio.partition(&devices[..2], &devices[2..]);
    wait_until("the partition cuts", Duration::from_secs(30), || {
        ready(nodes[1].handle.status().connected_peers <= 1)
    })
    .await;
    let id = send(&nodes[0], nodes[3].peer_id, "after the heal").await;
    // Held on this side, not delivered.
    wait_messages(
        &nodes[1],
        Duration::from_secs(30),
        "held by the relay",
        |m| m.held >= 1,
    )
    .await;
    // A message sent later on the far side arrives; the held one still has not.
    let later = send(&nodes[2], nodes[3].peer_id, "on this side").await;
    let view = wait_messages(
        &nodes[3],
        Duration::from_secs(30),
        "a later message on the far side",
        |m| m.inbox.iter().any(|r| r.id == later),
    )
    .await;
    assert!(
        view.inbox.iter().all(|r| r.id != id),
        "delivered across a partition?"
    );
    assert_eq!(
        status_of(
            &fogmesh_node::relay::api::messages_of(&nodes[0].handle),
            &id
        ),
        "pending"
    );
    radio.heal();
    wait_messages(
        &nodes[3],
        Duration::from_secs(90),
        "delivery after the heal",
        |m| m.inbox.iter().any(|r| r.id == id),
    )
    .await;
    wait_messages(
        &nodes[0],
        Duration::from_secs(60),
        "the ack after the heal",
        |m| status_of(m, &id) == "delivered",
    )
    .await;
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_bridge_two_radio_islands_through_the_internet_mesh() {
    // Two islands far apart on one medium: nobody on one hears anybody on the other.
    let radio = line_radio(7);
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let port_a: u64 = 40_000 + u64::from(rand::random::<u16>());
    let gateway_a = gateway_node(&radio, dirs[0].path(), 0.0, port_a, vec![]).await;
    let gateway_b = gateway_node(
        &radio,
        dirs[1].path(),
        1000.0,
        port_a + 1,
        vec![format!("/memory/{port_a}/p2p/{}", gateway_a.peer_id)
            .parse()
            .unwrap()],
    )
    .await;
    let island_a = offline_node(
        &radio,
        dirs[2].path(),
        8.0,
        vec![ble_addr(gateway_a.peer_id)],
    )
    .await;
    let island_b = offline_node(
        &radio,
        dirs[3].path(),
        1008.0,
        vec![ble_addr(gateway_b.peer_id)],
    )
    .await;
    let id = send(&island_a, island_b.peer_id, "over the bridge").await;
    let view = wait_messages(
        &island_b,
        Duration::from_secs(60),
        "bridged delivery",
        |m| m.inbox.iter().any(|r| r.id == id),
    )
    .await;
    assert_eq!(view.inbox[0].hops, Some(3), "radio, internet, radio");
    wait_messages(&island_a, Duration::from_secs(60), "the bridged ack", |m| {
        status_of(m, &id) == "delivered"
    })
    .await;
    // The islands never shared a radio link.
    let (a, b) = (
        DeviceId::of_peer(&island_a.peer_id),
        DeviceId::of_peer(&island_b.peer_id),
    );
    assert!(radio.neighbours_of(a).iter().all(|d| *d != b));
    for node in [island_a, island_b, gateway_a, gateway_b] {
        node.shutdown().await;
    }
}

async fn gateway_node(
    radio: &SimRadio,
    dir: &Path,
    x: f64,
    memory_port: u64,
    bootstrap: Vec<Multiaddr>,
) -> RunningNode {
    gateway_node_with(radio, dir, x, memory_port, bootstrap, None).await
}

async fn gateway_node_with(
    radio: &SimRadio,
    dir: &Path,
    x: f64,
    memory_port: u64,
    bootstrap: Vec<Multiaddr>,
    simulate: Option<SimulateConfig>,
) -> RunningNode {
    let peer = identity::load_or_create(dir).unwrap().public().to_peer_id();
    let device = radio.add_device(DeviceId::of_peer(&peer), (x, 0.0));
    let settings = Settings::resolve(ConfigLayer {
        data_dir: Some(dir.to_path_buf()),
        listen: Some(vec![
            "/unix/ble".parse().unwrap(),
            format!("/memory/{memory_port}").parse().unwrap(),
        ]),
        bootstrap: Some(bootstrap),
        quic: Some(false),
        telemetry_interval: Some(Duration::from_secs(1)),
        simulate,
        ..ConfigLayer::default()
    });
    node::start_on(settings, Network::MemoryAndRadio(device))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_node_opens_no_socket_but_its_loopback_control_api() {
    // Every node this test binary starts is offline or on the memory transport, so any inet
    // socket of the process must be a loopback one (control APIs and their clients).
    let radio = line_radio(8);
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = offline_line(&radio, &dirs).await;
    let id = send(&nodes[0], nodes[1].peer_id, "over the radio only").await;
    wait_messages(&nodes[1], Duration::from_secs(30), "delivery", |m| {
        m.inbox.iter().any(|r| r.id == id)
    })
    .await;
    let sockets = common::inet_sockets_of(std::process::id());
    assert!(!sockets.is_empty(), "the control API listens on a socket");
    // 0100007F is 127.0.0.1 as /proc/net/tcp writes it; no UDP socket at all (mDNS, QUIC).
    for (proto, local) in &sockets {
        assert!(
            proto == "tcp" && local.starts_with("0100007F:"),
            "{proto} {local}"
        );
    }
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_critical_battery_a_node_with_a_radio_keeps_only_its_radio_links() {
    let radio = line_radio(9);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let port: u64 = 50_000 + u64::from(rand::random::<u16>());
    // A phone at 2 % battery: the power policy says Bluetooth only.
    let phone = gateway_node_with(
        &radio,
        dirs[0].path(),
        0.0,
        port,
        vec![],
        Some(SimulateConfig {
            battery: Some(2.0),
            charging: Some(false),
            ..SimulateConfig::default()
        }),
    )
    .await;
    let internet_peer = gateway_node(
        &radio,
        dirs[1].path(),
        1000.0,
        port + 1,
        vec![format!("/memory/{port}/p2p/{}", phone.peer_id)
            .parse()
            .unwrap()],
    )
    .await;
    let radio_peer = offline_node(&radio, dirs[2].path(), 5.0, vec![ble_addr(phone.peer_id)]).await;
    // The radio neighbour connects and stays; the internet peer is refused (it keeps
    // redialling its bootstrap address, and each attempt is turned away).
    let refused = eventually(
        "radio link up and internet refused",
        Duration::from_secs(30),
        || async {
            let refused = counter(&phone, "fogmesh_peers_policy_refused_total");
            let radio_up = radio_peer.handle.status().connected_peers == 1;
            (radio_up && refused > 0.0).then_some(refused)
        },
    )
    .await;
    // The internet peer tries again and is refused again: the policy holds, not a lull.
    wait_until(
        "another internet attempt refused",
        Duration::from_secs(30),
        || async { counter(&phone, "fogmesh_peers_policy_refused_total") > refused },
    )
    .await;
    let peers = phone.handle.peers();
    let connected: Vec<String> = peers
        .iter()
        .filter(|p| p.connected)
        .map(|p| p.connection_addr.clone().unwrap_or_default())
        .collect();
    assert!(
        !connected.is_empty() && connected.iter().all(|a| a.contains("/unix/ble-")),
        "only radio links at critical battery: {connected:?}"
    );
    // And its radio scans a thirtieth of the time: the policy's ultra-low duty cycle.
    assert_eq!(
        radio.duty_of(DeviceId::of_peer(&phone.peer_id)),
        Some(fogmesh_node::device::radio_duty(DutyCycle::UltraLow))
    );
    for node in [phone, internet_peer, radio_peer] {
        node.shutdown().await;
    }
}

/// A counter's value from the node's OpenMetrics text.
fn counter(node: &RunningNode, name: &str) -> f64 {
    node.handle
        .metrics()
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}
