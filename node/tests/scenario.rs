#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A scripted scenario on the in-memory transport, watched through the node's own outputs:
//! `/v1/events` must report it in order, and `/metrics` counters must move with it and
//! agree with `/v1/status`.
//!
//! Script, seen from node A of a closed mesh: B (a member) joins; X (no ticket) knocks and
//! is refused; the root revokes B through A, which closes B's connection.

#[path = "common/openmetrics.rs"]
mod openmetrics;

use std::path::Path;
use std::time::Duration;

use fogmesh_node::admission::mesh;
use fogmesh_node::client::ControlClient;
use fogmesh_node::config::{ConfigLayer, MeshFiles, Settings};
use fogmesh_node::identity;
use fogmesh_node::node::{start_on, Network, RunningNode};
use libp2p::Multiaddr;
use serde_json::Value;

fn settings(dir: &Path, bootstrap: Vec<Multiaddr>, mesh: Option<MeshFiles>) -> Settings {
    let mut s = Settings::resolve(ConfigLayer {
        data_dir: Some(dir.to_path_buf()),
        listen: Some(vec!["/memory/0".parse().unwrap()]),
        bootstrap: Some(bootstrap),
        mdns: Some(false),
        quic: Some(false),
        telemetry_interval: Some(Duration::from_millis(300)),
        ..ConfigLayer::default()
    });
    s.mesh = mesh;
    s
}

fn admit(root_key: &Path, description: &Path, dir: &Path) -> MeshFiles {
    let peer = identity::load_or_create(dir).unwrap().public().to_peer_id();
    let ticket = mesh::issue(
        root_key,
        peer,
        &["worker".into()],
        Duration::from_secs(3600),
    )
    .unwrap();
    let path = dir.join("ticket");
    std::fs::write(&path, ticket).unwrap();
    MeshFiles {
        mesh: description.to_path_buf(),
        ticket: path,
    }
}

/// The node's dial address, once it listens: waits on its views, no HTTP.
async fn dial_addr(node: &RunningNode) -> Multiaddr {
    let mut changed = node.handle.changed();
    loop {
        if let Some(addr) = node.handle.status().listen_addrs.first() {
            return format!("{addr}/p2p/{}", node.peer_id).parse().unwrap();
        }
        tokio::time::timeout(Duration::from_secs(10), changed.changed())
            .await
            .expect("node listens")
            .unwrap();
    }
}

/// Reads events until `want` matches one; returns every event read on the way.
async fn until(
    stream: &mut fogmesh_node::client::EventStream,
    seen: &mut Vec<Value>,
    want: impl Fn(&Value) -> bool,
) {
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let data = stream.next_data().await.unwrap().expect("stream open");
            let event: Value = serde_json::from_str(&data).unwrap();
            let hit = want(&event);
            seen.push(event);
            if hit {
                return;
            }
        }
    })
    .await;
    assert!(found.is_ok(), "event not seen; got {seen:#?}");
}

fn is(event: &Value, kind: &str) -> bool {
    event["type"] == kind
}

async fn scrape(node: &RunningNode) -> openmetrics::Exposition {
    let text = reqwest::get(format!("http://{}/metrics", node.control_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    openmetrics::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_metrics_follow_a_scripted_scenario_in_order() {
    let mesh_dir = tempfile::tempdir().unwrap();
    let (_, root_key, description) = mesh::init(mesh_dir.path(), "home").unwrap();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a_files = admit(&root_key, &description, dirs[0].path());
    let b_files = admit(&root_key, &description, dirs[1].path());

    let a = start_on(
        settings(dirs[0].path(), vec![], Some(a_files)),
        Network::Memory,
    )
    .await
    .unwrap();
    let a_addr = dial_addr(&a).await;
    let mut stream = ControlClient::new(a.control_addr).events().await.unwrap();
    let mut seen = Vec::new();

    // B joins: connected, A becomes active, B's telemetry arrives.
    let b = start_on(
        settings(dirs[1].path(), vec![a_addr.clone()], Some(b_files)),
        Network::Memory,
    )
    .await
    .unwrap();
    let b_id = b.peer_id.to_string();
    until(&mut stream, &mut seen, |e| {
        is(e, "peer_connected") && e["peer_id"] == b_id
    })
    .await;
    until(&mut stream, &mut seen, |e| {
        is(e, "telemetry_received") && e["origin"] == b_id
    })
    .await;

    // X has no ticket: A refuses it.
    let x = start_on(
        settings(dirs[2].path(), vec![a_addr], None),
        Network::Memory,
    )
    .await
    .unwrap();
    until(&mut stream, &mut seen, |e| {
        is(e, "admission_refused") && e["direction"] == "inbound"
    })
    .await;

    // The root revokes B through A: applied, then B's connection closes, A goes idle.
    let revocation = mesh::revoke(&root_key, mesh::RevokeTarget::Peer(b.peer_id)).unwrap();
    let outcome = ControlClient::new(a.control_addr)
        .with_token(a.api_token.clone())
        .submit_revocation(revocation)
        .await
        .unwrap();
    assert!(outcome.new);
    assert_eq!(outcome.disconnected, vec![b_id.clone()]);
    until(&mut stream, &mut seen, |e| {
        is(e, "peer_disconnected") && e["peer_id"] == b_id
    })
    .await;
    until(&mut stream, &mut seen, |e| {
        is(e, "lifecycle") && e["to"] == "idle"
    })
    .await;

    // The order of what matters, other events (more telemetry, power mode) in between.
    let position = |pred: &dyn Fn(&Value) -> bool| seen.iter().position(pred).unwrap();
    let connected = position(&|e| is(e, "peer_connected") && e["peer_id"] == b_id);
    let active = position(&|e| is(e, "lifecycle") && e["to"] == "active");
    let telemetry = position(&|e| is(e, "telemetry_received") && e["origin"] == b_id);
    let refused = position(&|e| is(e, "admission_refused"));
    let revoked = position(&|e| is(e, "revocation_applied"));
    let disconnected = position(&|e| is(e, "peer_disconnected") && e["peer_id"] == b_id);
    let idle = position(&|e| is(e, "lifecycle") && e["to"] == "idle");
    assert!(connected < active && active < telemetry, "{seen:#?}");
    assert!(telemetry < refused && refused < revoked, "{seen:#?}");
    assert!(revoked < disconnected && disconnected < idle, "{seen:#?}");
    assert_eq!(seen[revoked]["disconnected"][0], b_id.as_str());
    // Sequence numbers only go up.
    let seqs: Vec<u64> = seen.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // The metrics moved, and the status shows the same numbers.
    let m = scrape(&a).await;
    let status = ControlClient::new(a.control_addr).status().await.unwrap();
    let accepted = m.value("fogmesh_telemetry_accepted_total", &[]).unwrap();
    assert!(accepted >= 1.0);
    assert!(status.telemetry_accepted as f64 >= accepted);
    assert_eq!(m.value("fogmesh_revocations_applied_total", &[]), Some(1.0));
    assert_eq!(m.value("fogmesh_revocations_held", &[]), Some(1.0));
    assert_eq!(status.admission.revocations, 1);
    let refused_inbound: f64 = m
        .family("fogmesh_handshakes_refused")
        .expect("refusals exported")
        .samples
        .iter()
        .filter(|s| s.labels.get("direction").map(String::as_str) == Some("inbound"))
        .map(|s| s.value)
        .sum();
    let status_refused: u64 = status
        .admission
        .handshakes
        .refused
        .iter()
        .filter(|(k, _)| k.starts_with("inbound."))
        .map(|(_, n)| *n)
        .sum();
    assert!(refused_inbound >= 1.0);
    assert!(status_refused as f64 >= refused_inbound);
    assert_eq!(
        m.value("fogmesh_lifecycle_phase", &[("phase", "idle")]),
        Some(1.0)
    );
    assert_eq!(
        m.value("fogmesh_peers_revoked_disconnects_total", &[]),
        Some(1.0)
    );
    assert!(
        m.value("fogmesh_storage_durable_writes_total", &[])
            .unwrap()
            >= 1.0
    );
    assert!(
        m.family("libp2p_swarm_connections_established").is_some(),
        "libp2p's own metrics are in the same registry"
    );

    for node in [a, b, x] {
        node.shutdown().await;
    }
}
