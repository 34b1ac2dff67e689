#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Mesh-wide scale (docs/scale.md) on a small in-memory mesh told to behave as a large one
//! (`telemetry_full_mesh_below = 4`): each node holds its own cluster's telemetry in full,
//! every cluster by its coordinator's summary, and any other node's record on demand; a
//! lost node is reflected everywhere.

mod common;
#[path = "common/openmetrics.rs"]
mod openmetrics;

use std::time::{Duration, Instant};

use fogmesh_node::client::ControlClient;
use fogmesh_node::memnet::{MemNet, Topology};

fn cluster_of(net: &MemNet, i: usize) -> Option<String> {
    let view = net
        .node(i)?
        .handle
        .view::<fogmesh_node::cluster::service::ClusterView>()?;
    view.read(|v| (v.state == "member").then(|| v.cluster.clone()).flatten())
}

fn known_clusters(net: &MemNet, i: usize) -> std::collections::HashSet<String> {
    net.node(i)
        .and_then(|n| {
            n.handle
                .view::<fogmesh_node::cluster::service::ClusterView>()
        })
        .map(|v| v.read(|v| v.known_clusters.iter().map(|k| k.cluster.clone()).collect()))
        .unwrap_or_default()
}

fn fetched(net: &MemNet, i: usize) -> f64 {
    let text = net.node(i).unwrap().handle.metrics().encode();
    openmetrics::parse(&text)
        .unwrap()
        .value("fogmesh_telemetry_fetches_total", &[("reason", "record")])
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_keep_telemetry_to_themselves_and_the_rest_is_a_summary_or_a_fetch_away() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = common::memnet(dir.path(), Duration::from_secs(1))
        .nodes(9)
        .topology(Topology::Random { links: 2, seed: 9 })
        .settings(|_, s| s.telemetry_full_mesh_below = 4)
        .start()
        .await
        .unwrap();
    // Every node in a cluster, at least two clusters, and every node holding every
    // cluster's summary.
    net.wait_for(
        |net| {
            let mine: Vec<Option<String>> = (0..net.len()).map(|i| cluster_of(net, i)).collect();
            let clusters: std::collections::HashSet<&String> = mine.iter().flatten().collect();
            clusters.len() >= 2
                && mine.iter().all(Option::is_some)
                && (0..net.len()).all(|i| {
                    let known: std::collections::HashSet<String> = known_clusters(net, i);
                    clusters.iter().all(|c| known.contains(*c))
                })
                && net.converged()
        },
        Duration::from_secs(90),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: {} of 9 nodes know the mesh", net.converged_nodes()));

    // Two nodes of different clusters: each knows the other's cluster by its summary.
    let (h, o) = (0..9)
        .flat_map(|h| (0..9).map(move |o| (h, o)))
        .find(|(h, o)| cluster_of(&net, *h) != cluster_of(&net, *o))
        .expect("two clusters");
    let o_id = net.peer_id(o).unwrap().to_string();
    let o_cluster = cluster_of(&net, o).unwrap();
    let summary_at_h = |net: &MemNet| {
        net.node(h)
            .and_then(|n| {
                n.handle
                    .view::<fogmesh_node::cluster::service::ClusterView>()
            })
            .and_then(|v| {
                v.read(|v| {
                    v.known_clusters
                        .iter()
                        .find(|k| k.cluster == o_cluster)
                        .cloned()
                })
            })
    };
    // A member just added may be flagged silent until its first answers reach its
    // coordinator on a loaded machine: wait for o to show as heard.
    net.wait_for(
        |net| {
            summary_at_h(net).is_some_and(|s| {
                s.nodes.iter().any(|n| n.peer_id == o_id && !n.silent)
                    && s.capacity.live_members as usize == s.members
            })
        },
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: h's summary of o's cluster: {:?}", summary_at_h(&net)));

    // o's telemetry does not reach h any more: within a few intervals h holds it no more
    // (records of other clusters go stale once clusters formed).
    net.wait_for(
        |net| !net.has_fresh_telemetry(h, o),
        Duration::from_secs(30),
    )
    .await
    .expect("another cluster's telemetry stops arriving");

    // Asked for it, h fetches it in one round trip, signed by o.
    let client = ControlClient::new(net.node(h).unwrap().control_addr);
    let asked = Instant::now();
    let record = client.telemetry_of(&o_id).await.expect("fetched");
    let took = asked.elapsed();
    assert_eq!(record.peer_id, o_id);
    assert_eq!(record.record.peer_id, o_id);
    assert!(!record.stale, "the holder's copy is fresh: {record:?}");
    assert_eq!(
        fetched(&net, h),
        1.0,
        "it came over the mesh, not from h's table"
    );
    eprintln!("fetch of another cluster's node took {took:?}");
    // A node nobody knows: a clear not-found or unanswered, not a hang.
    let nobody = libp2p::PeerId::random().to_string();
    let started = Instant::now();
    assert!(client.telemetry_of(&nobody).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(15));

    // A member that is not h is lost: every node stops counting it as alive.
    let lost = (0..9)
        .find(|i| {
            *i != h && {
                let view = net
                    .node(*i)
                    .unwrap()
                    .handle
                    .view::<fogmesh_node::cluster::service::ClusterView>()
                    .unwrap();
                view.read(|v| !v.is_coordinator)
            }
        })
        .unwrap();
    let lost_id = net.peer_id(lost).unwrap();
    net.stop(lost).await.unwrap();
    let reflected = net
        .wait_for(
            |net| net.forgotten_everywhere(&[lost_id]),
            Duration::from_secs(30),
        )
        .await
        .expect("the loss is reflected mesh-wide");
    eprintln!("a lost node was reflected everywhere in {reflected:?}");
    net.shutdown().await;
}
