#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Telemetry over a line of BLE-only nodes on the simulated radio: latency by hop count and
//! delivery across the whole line. Stops by itself.
//!
//! ```text
//! cargo run --release -p fogmesh --example ble_line -- [nodes=8] [loss=0.0] [seconds=20]
//! ```
//!
//! Nodes sit 8 apart with a radio range of 10, so each hears only its neighbours; links run
//! at 1 Mbit/s with 30 ms latency (MTU 185). Every node publishes telemetry each second and
//! gossipsub relays it. After convergence, for `seconds` the example samples every node's
//! latest telemetry from every other: latency is `received_at − timestamp` (one process, one
//! clock), grouped by hop count; delivery counts the messages node N−1 received from node 0
//! against those node 0 published in the window. Then node 0 sends 20 directed messages
//! to node N−1 through the relay (one every 250 ms) and the example reports how many
//! arrived, how long they took, and how long until node 0 held each ack.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use fogmesh_node::client::ControlClient;
use fogmesh_node::config::{ConfigLayer, Settings};
use fogmesh_node::identity;
use fogmesh_node::node::{self, Network, RunningNode};
use fogmesh_node::relay::api::SendMessageRequest;
use fogmesh_node::runtime::clock::system_wall_ms as now_ms;
use fogmesh_node::telemetry::record::ReceivedTelemetry;
use fogmesh_transports::ble::driver::DeviceId;
use fogmesh_transports::ble::sim::{LinkParams, SimConfig, SimRadio};
use fogmesh_transports::ble::transport::device_addr;
use libp2p::multiaddr::Protocol;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(8);
    let loss: f64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(0.0);
    let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20);
    let radio = SimRadio::new(SimConfig {
        link: LinkParams {
            loss,
            ..LinkParams::default()
        },
        range: 10.0,
        seed: 11,
        ..SimConfig::default()
    });
    let base = tempfile::tempdir().unwrap();
    let mut nodes: Vec<RunningNode> = Vec::new();
    for i in 0..n {
        let dir = base.path().join(format!("node-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let peer = identity::load_or_create(&dir)
            .unwrap()
            .public()
            .to_peer_id();
        let device = radio.add_device(DeviceId::of_peer(&peer), (8.0 * i as f64, 0.0));
        let bootstrap =
            nodes
                .last()
                .map(|prev| {
                    vec![device_addr(DeviceId::of_peer(&prev.peer_id))
                        .with(Protocol::P2p(prev.peer_id))]
                })
                .unwrap_or_default();
        let settings = Settings::resolve(ConfigLayer {
            data_dir: Some(dir),
            listen: Some(vec!["/unix/ble".parse().unwrap()]),
            bootstrap: Some(bootstrap),
            mdns: Some(false),
            quic: Some(false),
            telemetry_interval: Some(Duration::from_secs(1)),
            ..ConfigLayer::default()
        });
        nodes.push(
            node::start_on(settings, Network::Radio(device))
                .await
                .unwrap(),
        );
    }
    let ids: Vec<String> = nodes.iter().map(|n| n.peer_id.to_string()).collect();
    let started = tokio::time::Instant::now();
    let converged = |nodes: &[RunningNode]| {
        let now = now_ms();
        nodes.iter().enumerate().all(|(i, node)| {
            inspect(node, |t| {
                ids.iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .all(|(_, id)| t.get(id).is_some_and(|r| !r.is_stale(now)))
            })
        })
    };
    while !converged(&nodes) {
        if started.elapsed() > Duration::from_secs(60) {
            println!("NOT CONVERGED within 60 s; links {:?}", radio.links().len());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{n} nodes in a line, loss {:.0} %: converged {:.1} s after start",
        loss * 100.0,
        started.elapsed().as_secs_f64()
    );
    // (hops) -> latencies in ms, one per (holder, origin, seq).
    let mut by_hops: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    let mut seen: BTreeSet<(usize, usize, u64)> = BTreeSet::new();
    let first_seq = |i: usize, origin: &str| inspect(&nodes[i], |t| t.get(origin).map(|r| r.seq));
    let far = n - 1;
    let seq_from = first_seq(far, &ids[0]).unwrap_or(0);
    let published = |nodes: &[RunningNode]| nodes[0].handle.status().telemetry_published;
    let published_before = published(&nodes);
    let window = tokio::time::Instant::now();
    let (window_from_ms, mut window_to_ms) = (now_ms(), u64::MAX);
    let mut expected = 0;
    // After the window, two more seconds of sampling let messages still on their way arrive.
    let grace = Duration::from_secs(2);
    let mut far_from_first: BTreeMap<u64, u64> = BTreeMap::new();
    while window.elapsed() < Duration::from_secs(seconds) + grace {
        if window_to_ms == u64::MAX && window.elapsed() >= Duration::from_secs(seconds) {
            window_to_ms = now_ms();
            expected = published(&nodes).saturating_sub(published_before);
        }
        inspect(&nodes[far], |t| {
            if let Some(r) = t.get(&ids[0]) {
                far_from_first.insert(r.seq, r.timestamp_ms);
            }
        });
        for (i, node) in nodes.iter().enumerate() {
            inspect(node, |t| {
                for (j, id) in ids.iter().enumerate() {
                    if let Some(r) = t.get(id) {
                        if seen.insert((i, j, r.seq)) {
                            by_hops
                                .entry(i.abs_diff(j))
                                .or_default()
                                .push(r.received_at_ms.saturating_sub(r.timestamp_ms));
                        }
                    }
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Node 0's messages published in the window, and those of them node N−1 received.
    let received = far_from_first
        .iter()
        .filter(|(seq, ts)| **seq > seq_from && (window_from_ms..window_to_ms).contains(*ts))
        .count();
    println!("| hops | samples | latency p50 | p90 | max |");
    println!("|---|---|---|---|---|");
    for (hops, mut lat) in by_hops {
        if hops == 0 {
            continue;
        }
        lat.sort_unstable();
        let at = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
        println!(
            "| {hops} | {} | {} ms | {} ms | {} ms |",
            lat.len(),
            at(0.5),
            at(0.9),
            at(1.0)
        );
    }
    println!(
        "delivery across {far} hops (node {far} from node 0): {received} of {expected} telemetry messages published in {seconds} s"
    );
    relay_messages(&nodes, 20).await;
    for node in nodes {
        node.shutdown().await;
    }
}

/// Directed messages from node 0 to the last node through the relay (jitter 10–220 ms per
/// hop), each end-to-end encrypted and acknowledged: delivery ratio, one-way time and the
/// time until the sender holds the ack.
async fn relay_messages(nodes: &[RunningNode], count: usize) {
    let (first, last) = (&nodes[0], &nodes[nodes.len() - 1]);
    let client = ControlClient::new(first.control_addr).with_token(first.api_token.clone());
    let mut ids = Vec::new();
    for i in 0..count {
        let sent = client
            .send_message(&SendMessageRequest {
                to: Some(last.peer_id.to_string()),
                text: format!("message {i}"),
                app: None,
            })
            .await
            .unwrap();
        ids.push(sent.id);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (one_way, acked) = loop {
        let inbox = fogmesh_node::relay::api::messages_of(&last.handle).inbox;
        let sent = fogmesh_node::relay::api::messages_of(&first.handle).sent;
        let one_way = inbox
            .iter()
            .filter(|m| ids.contains(&m.id))
            .map(|m| m.at_ms.unwrap_or(0).saturating_sub(m.created_ms))
            .collect::<Vec<u64>>();
        let acked = sent
            .iter()
            .filter(|m| ids.contains(&m.id))
            .filter_map(|m| m.at_ms.map(|at| at.saturating_sub(m.created_ms)))
            .collect::<Vec<u64>>();
        if acked.len() == count || tokio::time::Instant::now() > deadline {
            break (one_way, acked);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let summary = |mut v: Vec<u64>| {
        v.sort_unstable();
        if v.is_empty() {
            return "none".to_owned();
        }
        let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
        format!("p50 {} ms, p90 {} ms, max {} ms", at(0.5), at(0.9), at(1.0))
    };
    println!(
        "relay across {} hops: {} of {count} delivered ({}), {} acked ({})",
        nodes.len() - 1,
        one_way.len(),
        summary(one_way.clone()),
        acked.len(),
        summary(acked.clone())
    );
}

/// Runs `f` on the latest telemetry per origin `node` holds.
fn inspect<R>(node: &RunningNode, f: impl FnOnce(&BTreeMap<String, ReceivedTelemetry>) -> R) -> R {
    f(&fogmesh_node::telemetry::view::latest(&node.handle))
}
