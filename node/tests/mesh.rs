//! Several nodes in one process on loopback: telemetry reaches everyone, restarts keep
//! identity and stored data.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{dial_addr, start, telemetry_from, wait_until};
use fogmesh_node::client::ControlClient;
use fogmesh_node::lifecycle::Phase;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_each_receive_telemetry_from_all_others() {
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let interval = Duration::from_millis(500);
    let first = start(dirs[0].path(), vec![], interval).await;
    let first_addr = dial_addr(&first).await;
    let mut nodes = vec![first];
    for dir in &dirs[1..] {
        nodes.push(start(dir.path(), vec![first_addr.clone()], interval).await);
    }
    let ids: Vec<String> = nodes.iter().map(|n| n.peer_id.to_string()).collect();

    let converged = wait_until(Duration::from_secs(60), || {
        let nodes = &nodes;
        let ids = &ids;
        async move {
            for (i, node) in nodes.iter().enumerate() {
                let have = telemetry_from(node).await;
                let others = ids.iter().enumerate().filter(|(j, _)| *j != i);
                if !others.into_iter().all(|(_, id)| have.contains(id)) {
                    return false;
                }
            }
            true
        }
    })
    .await;
    assert!(converged, "not every node got telemetry from all 4 others");

    for node in &nodes {
        let status = ControlClient::new(node.control_addr)
            .status()
            .await
            .unwrap();
        assert_eq!(status.phase, Phase::Active);
        assert_eq!(
            status.telemetry_rejected.total(),
            0,
            "honest mesh rejects nothing"
        );
        assert!(status.telemetry_accepted >= 4);
    }
    for node in nodes {
        tokio::time::timeout(Duration::from_secs(5), node.shutdown())
            .await
            .expect("shutdown within 5 s");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_identity_peers_and_telemetry() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let interval = Duration::from_millis(300);
    let a = start(dir_a.path(), vec![], interval).await;
    let a_addr = dial_addr(&a).await;
    let b = start(dir_b.path(), vec![a_addr], interval).await;
    let a_id = a.peer_id.to_string();
    let b_id = b.peer_id;
    assert!(
        wait_until(Duration::from_secs(30), || {
            let b = &b;
            let a_id = &a_id;
            async move { telemetry_from(b).await.contains(a_id) }
        })
        .await
    );
    b.shutdown().await;

    // Restart B with no bootstrap at all: what it knows must come from its store.
    let b2 = start(dir_b.path(), vec![], interval).await;
    assert_eq!(b2.peer_id, b_id, "identity survives a restart");
    let client = ControlClient::new(b2.control_addr);
    let telemetry = client.telemetry().await.unwrap();
    assert!(
        telemetry
            .nodes
            .iter()
            .any(|n| n.peer_id == a_id && !n.local),
        "stored telemetry of A is back"
    );
    let peers = client.peers().await.unwrap();
    assert!(
        peers.peers.iter().any(|p| p.peer_id == a_id),
        "A is a known peer"
    );
    // And B redials A from its registry.
    assert!(
        wait_until(Duration::from_secs(30), || {
            let client = client.clone();
            async move {
                client
                    .peers()
                    .await
                    .map(|p| p.peers.iter().any(|p| p.connected))
                    .unwrap_or(false)
            }
        })
        .await,
        "restarted node reconnects to a stored peer"
    );
    b2.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_bootstrap_peer_is_redialled() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    // A fixed port for A, so it can come back at the same address.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let a_settings = || {
        let mut s = common::settings(dir_a.path(), vec![], Duration::from_millis(300));
        s.listen = vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()];
        s
    };
    let a = fogmesh_node::node::start(a_settings()).await.unwrap();
    let a_addr = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{}", a.peer_id)
        .parse()
        .unwrap();
    let b = start(dir_b.path(), vec![a_addr], Duration::from_millis(300)).await;
    let client = ControlClient::new(b.control_addr);
    let connected = |want: usize| {
        let client = client.clone();
        move || {
            let client = client.clone();
            async move {
                client
                    .status()
                    .await
                    .map(|s| s.bootstrap.connected == want && s.connected_peers == want)
                    .unwrap_or(false)
            }
        }
    };
    assert!(wait_until(Duration::from_secs(30), connected(1)).await);
    a.shutdown().await;
    assert!(wait_until(Duration::from_secs(30), connected(0)).await);
    // A returns; B's backoff (1 s, 2 s, 4 s, ... capped at 60 s) brings it back.
    let a2 = fogmesh_node::node::start(a_settings()).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(60), connected(1)).await,
        "bootstrap peer was not redialled"
    );
    b.shutdown().await;
    a2.shutdown().await;
}
