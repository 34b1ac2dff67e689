//! Nodes on the in-memory network: restarts keep identity and stored data, and a lost
//! bootstrap peer is dialled again when it comes back. (Convergence of many nodes is in
//! `memnet.rs`; the same over real processes and TCP is in `cli.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use fogmesh_node::memnet::Topology;

const INTERVAL: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_identity_peers_and_telemetry() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = common::memnet(dir.path(), INTERVAL)
        .nodes(2)
        .topology(Topology::Star)
        .start()
        .await
        .unwrap();
    let (a, b) = (0, 1);
    let a_id = net.peer_id(a).unwrap().to_string();
    let b_id = net.peer_id(b).unwrap();
    net.wait_for(|n| n.has_fresh_telemetry(b, a), Duration::from_secs(30))
        .await
        .expect("b hears a");

    // Restart B with no bootstrap at all: what it knows must come from its store.
    net.restart_with(b, |s| s.bootstrap.clear()).await.unwrap();
    assert_eq!(
        net.node(b).unwrap().peer_id,
        b_id,
        "identity survives a restart"
    );
    let handle = net.handle(b).unwrap().clone();
    // Restored before the node runs, so there is nothing to wait for.
    assert!(
        fogmesh_node::telemetry::view::latest(&handle).contains_key(&a_id),
        "stored telemetry of A is back"
    );
    net.wait_for(
        |n| n.peers(b).iter().any(|p| p.peer_id == a_id),
        Duration::from_secs(10),
    )
    .await
    .expect("A is a known peer");
    // And B redials A from its registry.
    net.wait_for(|n| n.connected(b, a), Duration::from_secs(30))
        .await
        .expect("restarted node reconnects to a stored peer");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_bootstrap_peer_is_redialled() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = common::memnet(dir.path(), INTERVAL)
        .nodes(2)
        .topology(Topology::Star)
        .start()
        .await
        .unwrap();
    let (a, b) = (0, 1);
    let bootstrap_connected = |want: usize| {
        move |n: &fogmesh_node::memnet::MemNet| {
            n.status(b)
                .is_some_and(|s| s.bootstrap.connected == want && s.connected_peers == want)
        }
    };
    net.wait_for(bootstrap_connected(1), Duration::from_secs(30))
        .await
        .expect("b reaches its bootstrap peer");
    net.stop(a).await.unwrap();
    net.wait_for(bootstrap_connected(0), Duration::from_secs(30))
        .await
        .expect("b notices a is gone");
    // A returns at the same address; B's backoff (1 s, 2 s, 4 s, ... capped at 60 s) brings
    // it back.
    net.restart(a).await.unwrap();
    net.wait_for(bootstrap_connected(1), Duration::from_secs(60))
        .await
        .expect("bootstrap peer was not redialled");
    net.shutdown().await;
}
