#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Fog clusters on the in-memory network: nodes form a cluster with no configuration, a
//! task submitted anywhere runs and its result comes back to the submitter, and when the
//! coordinator stops another takes over and the cluster goes on taking tasks; a backward step
//! of the wall clock stops none of it.

mod common;

use std::time::Duration;

use common::eventually;
use fogmesh_consensus::task::{Priority, Requirements, TaskId};
use fogmesh_node::cluster::api as cluster_api;
use fogmesh_node::cluster::service::SubmitTask;
use fogmesh_node::memnet::{MemNet, Topology};

fn workload(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../examples/workloads/{name}.wat",
        env!("CARGO_MANIFEST_DIR")
    );
    fogmesh_node::cluster::exec::assemble(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn checksum_task(input: &[u8]) -> SubmitTask {
    SubmitTask {
        module: workload("checksum"),
        input: Some(input.to_vec()),
        priority: Priority::High,
        requirements: Requirements {
            cpu_millicores: 100,
            memory_mb: 16,
            duration_ms: 2_000,
            gpu: false,
        },
    }
}

async fn submit(net: &MemNet, node: usize, task: SubmitTask) -> TaskId {
    let id = cluster_api::submit(net.handle(node).unwrap(), task)
        .await
        .unwrap()
        .unwrap();
    id.parse().unwrap()
}

async fn wait_done(net: &MemNet, node: usize, id: TaskId, within: Duration) -> Vec<u8> {
    let what = format!("task {id} done on node {node}");
    eventually(&what, within, || async move {
        let result = cluster_api::result(net.handle(node).unwrap(), id).await;
        result.unwrap().ok()
    })
    .await
}

fn cluster_of(net: &MemNet, node: usize) -> (String, Option<String>, usize) {
    let view = cluster_api::view(net.handle(node).unwrap());
    (
        view.cluster
            .clone()
            .filter(|_| view.state == "member")
            .unwrap_or_default(),
        view.coordinator.clone(),
        view.members.len(),
    )
}

fn one_cluster_of(net: &MemNet, nodes: &[usize]) -> bool {
    let first = cluster_of(net, nodes[0]);
    !first.0.is_empty()
        && first.1.is_some()
        && nodes.iter().all(|n| {
            let c = cluster_of(net, *n);
            c.0 == first.0 && c.1 == first.1 && c.2 == nodes.len()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_form_a_cluster_run_tasks_and_survive_their_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = common::memnet(dir.path(), Duration::from_secs(1))
        .nodes(4)
        .topology(Topology::Star)
        .start()
        .await
        .unwrap();
    let all = [0, 1, 2, 3];
    let formed = net
        .wait_for(|n| one_cluster_of(n, &all), Duration::from_secs(60))
        .await
        .unwrap_or_else(|_| panic!("no single cluster: {:?}", all.map(|i| cluster_of(&net, i))));

    eprintln!("one cluster of 4 after {formed:?}");
    // A task submitted on one node runs somewhere and its result comes back to it.
    let input: Vec<u8> = (0..=255u8).collect();
    let expected: u32 = input.iter().map(|b| u32::from(*b)).sum();
    let first = submit(&net, 3, checksum_task(&input)).await;
    let output = wait_done(&net, 3, first, Duration::from_secs(30)).await;
    assert_eq!(output, expected.to_le_bytes());
    // The submitter publishes the result in the replicated store: any node can read it.
    let reader = 1;
    let view = eventually(
        "the result in the store of another node",
        Duration::from_secs(20),
        || async {
            fogmesh_node::kv::api::get_key(
                net.handle(reader).unwrap(),
                "tasks".into(),
                first.to_string(),
            )
            .await
            .unwrap()
            .unwrap()
        },
    )
    .await;
    assert_eq!(
        view.winner.value_hex,
        Some(hex::encode(expected.to_le_bytes()))
    );

    // The coordinator stops; the others elect another and take tasks again.
    let (_, coordinator, _) = cluster_of(&net, 0);
    let coordinator = coordinator.unwrap();
    let stopped = all
        .into_iter()
        .find(|i| net.peer_id(*i).unwrap().to_string() == coordinator)
        .unwrap();
    net.stop(stopped).await.unwrap();
    let rest: Vec<usize> = all.into_iter().filter(|i| *i != stopped).collect();
    net.wait_for(
        |n| {
            rest.iter().all(|i| {
                let (_, c, _) = cluster_of(n, *i);
                c.is_some_and(|c| c != coordinator)
            })
        },
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no new coordinator: {:?}",
            rest.iter()
                .map(|i| cluster_of(&net, *i))
                .collect::<Vec<_>>()
        )
    });
    eprintln!("coordinator {stopped} stopped; the others followed another");
    let submitter = rest[rest.len() - 1];
    let second = submit(&net, submitter, checksum_task(b"abc")).await;
    let output = wait_done(&net, submitter, second, Duration::from_secs(60)).await;
    assert_eq!(output, (97u32 + 98 + 99).to_le_bytes());
    // The first result is still there on its submitter (if it survived).
    if stopped != 3 {
        assert_eq!(
            wait_done(&net, 3, first, Duration::from_secs(5)).await,
            expected.to_le_bytes()
        );
    }
    net.shutdown().await;
}

/// The latest telemetry sequence each node holds from each other node.
fn telemetry_seqs(net: &MemNet, nodes: &[usize]) -> Vec<(usize, usize, u64)> {
    let mut seqs = Vec::new();
    for holder in nodes {
        let latest = fogmesh_node::telemetry::view::latest(net.handle(*holder).unwrap());
        for origin in nodes.iter().filter(|o| *o != holder) {
            let id = net.peer_id(*origin).unwrap().to_string();
            seqs.push((*holder, *origin, latest.get(&id).map_or(0, |t| t.seq)));
        }
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backward_wall_clock_step_of_a_minute_stops_no_timer_telemetry_or_raft() {
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;

    use fogmesh_node::memnet::NodeSpec;
    use fogmesh_node::runtime::clock::system_wall_ms;

    let dir = tempfile::tempdir().unwrap();
    let mut net = common::memnet(dir.path(), Duration::from_millis(500))
        .nodes(0)
        .start()
        .await
        .unwrap();
    // One machine's clock, shared by its three nodes, that NTP will step back.
    let offset = Arc::new(AtomicI64::new(0));
    let wall = {
        let offset = offset.clone();
        Arc::new(move || system_wall_ms().saturating_add_signed(offset.load(Ordering::Relaxed)))
    };
    for i in 0..3 {
        let spec = NodeSpec::new()
            .bootstrap((i > 0).then_some(0))
            .wall_clock(wall.clone());
        net.add_node(spec).await.unwrap();
    }
    let all = [0, 1, 2];
    net.wait_for(
        |n| n.converged() && one_cluster_of(n, &all),
        Duration::from_secs(60),
    )
    .await
    .expect("telemetry converged and one cluster formed");
    let (_, coordinator, _) = cluster_of(&net, 0);

    offset.store(-60_000, Ordering::Relaxed);
    let before = telemetry_seqs(&net, &all);

    // Timers still fire: every node publishes again and every other one takes it.
    net.wait_for(
        |n| {
            telemetry_seqs(n, &all)
                .iter()
                .zip(&before)
                .all(|(now, then)| now.2 > then.2)
        },
        Duration::from_secs(20),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "telemetry stopped: {before:?} → {:?}",
            telemetry_seqs(&net, &all)
        )
    });
    // Raft still ticks and commits: a task submitted after the step runs to its end, under
    // the same coordinator (no election was provoked by the step).
    let id = submit(&net, 2, checksum_task(b"abc")).await;
    let output = wait_done(&net, 2, id, Duration::from_secs(30)).await;
    assert_eq!(output, (97u32 + 98 + 99).to_le_bytes());
    assert_eq!(cluster_of(&net, 0).1, coordinator);
    net.shutdown().await;
}
