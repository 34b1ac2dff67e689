#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The in-memory network itself: many real nodes in one process converge, telemetry crosses
//! a line of relays, and its waits end when the condition holds or the timeout passes.

mod common;

use std::time::{Duration, Instant};

use fogmesh_node::memnet::{MemNet, Topology};
use fogmesh_node::runtime::lifecycle::Phase;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_four_nodes_reach_full_telemetry_convergence() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    // Records count as fresh for three intervals: 2 s gives a loaded machine 6 s to deliver
    // each one. Convergence itself does not wait for intervals (new subscribers bring the
    // next publication forward), so a longer interval does not slow the test down.
    let net = common::memnet(dir.path(), Duration::from_secs(2))
        .nodes(24)
        .topology(Topology::Random { links: 2, seed: 24 })
        .start()
        .await
        .unwrap();
    let took = net
        .wait_converged(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}: {} of 24 nodes converged, {} of {} pairs fresh",
                net.converged_nodes(),
                net.fresh_pairs(),
                24 * 23
            )
        });
    eprintln!(
        "24 nodes: started in {:?}, converged {took:?} later",
        started.elapsed() - took
    );

    // The status view is rebuilt after the driver's turn that updated the telemetry view
    // convergence was judged by: give a loaded machine a moment to catch up.
    net.wait_for(
        |net| (0..net.len()).all(|i| net.status(i).unwrap().telemetry_accepted >= 23),
        Duration::from_secs(10),
    )
    .await
    .expect("every node's status counts what its telemetry holds");
    for i in 0..net.len() {
        let status = net.status(i).unwrap();
        assert_eq!(status.phase, Phase::Active, "node {i}");
        // Under load a relay can deliver an older message after a newer one (counted as
        // replayed and ignored without penalty); nothing an honest mesh sends is refused
        // for what it is.
        let r = &status.telemetry_rejected;
        assert_eq!(
            r.total() - r.replayed - r.stale,
            0,
            "an honest mesh sends nothing malformed, forged or from the future (node {i}: {r:?})"
        );
        assert!(status.telemetry_accepted >= 23, "node {i}");
        assert_eq!(net.fresh_telemetry(i).len(), 23, "node {i}");
    }
    tokio::time::timeout(Duration::from_secs(10), net.shutdown())
        .await
        .expect("24 nodes shut down within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_of_eight_converges() {
    let dir = tempfile::tempdir().unwrap();
    // Each node knows only the one before it: the ends first hear of each other through six
    // relays (kad may add shortcuts later, so the test does not insist on the line).
    let net = common::memnet(dir.path(), Duration::from_secs(1))
        .nodes(8)
        .topology(Topology::Line)
        .start()
        .await
        .unwrap();
    net.wait_converged(Duration::from_secs(60))
        .await
        .expect("both ends of an 8-node line hear each other");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_end_at_their_timeout_and_stopped_nodes_leave_the_convergence() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = common::memnet(dir.path(), Duration::from_millis(500))
        .nodes(3)
        .topology(Topology::Star)
        .start()
        .await
        .unwrap();
    let waited = net
        .wait_for(|_| false, Duration::from_millis(300))
        .await
        .unwrap_err()
        .waited;
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    net.wait_converged(Duration::from_secs(30)).await.unwrap();

    // Node 2 stops. Its telemetry goes stale at the others after three intervals of silence,
    // and the network still counts as converged: convergence is about the nodes running.
    let gone = net.peer_id(2).unwrap().to_string();
    net.stop(2).await.unwrap();
    assert_eq!(net.running(), vec![0, 1]);
    net.wait_for(
        |n| !n.fresh_telemetry(0).contains(&gone),
        Duration::from_secs(30),
    )
    .await
    .expect("a stopped node's telemetry goes stale");
    net.wait_converged(Duration::from_secs(30))
        .await
        .expect("the two nodes left converge without the stopped one");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builder_reports_a_node_that_cannot_start() {
    let dir = tempfile::tempdir().unwrap();
    // A file where node 1's data dir would be.
    std::fs::write(dir.path().join("node-1"), b"not a directory").unwrap();
    let err = MemNet::builder(dir.path())
        .nodes(2)
        .start()
        .await
        .map(drop)
        .unwrap_err();
    assert!(err.to_string().contains("node-1"), "{err}");
}
