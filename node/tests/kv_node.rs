#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The replicated store on the in-memory network: six nodes in two halves that cannot
//! reach each other write on both sides (the same keys too), then the halves are joined and
//! every node converges on the same keys and values, the later write winning, with what it
//! overwrote kept for `--conflicts`.

mod common;

use std::time::Duration;

use common::wait_until;

use fogmesh_node::kv::api::KvListQuery;
use fogmesh_node::kv::service::{KeyView, KvWrite, KvWritten};
use fogmesh_node::memnet::{MemNet, NodeSpec, Topology};

const NS: &str = "app";

async fn write(net: &MemNet, node: usize, writes: Vec<(String, Option<&str>)>) -> KvWritten {
    let writes = writes
        .into_iter()
        .map(|(key, value)| KvWrite {
            namespace: NS.into(),
            key,
            value: value.map(|v| v.as_bytes().to_vec()),
        })
        .collect();
    fogmesh_node::kv::api::write(net.handle(node).unwrap(), writes)
        .await
        .unwrap()
}

async fn list(net: &MemNet, node: usize) -> Vec<KeyView> {
    let query = KvListQuery {
        prefix: String::new(),
        after: None,
        limit: Some(1000),
        deleted: true,
    };
    fogmesh_node::kv::api::list_keys(net.handle(node).unwrap(), NS.into(), query)
        .await
        .unwrap()
        .unwrap()
}

/// What a node holds, as (key, value or None if deleted, author).
async fn contents(net: &MemNet, node: usize) -> Vec<(String, Option<String>, String)> {
    list(net, node)
        .await
        .into_iter()
        .map(|k| {
            let value = (!k.winner.deleted).then(|| k.winner.value.clone().unwrap_or_default());
            (k.key, value, k.winner.author)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_halves_written_apart_converge_once_joined() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = common::memnet(dir.path(), Duration::from_secs(1))
        .nodes(0)
        .topology(Topology::Isolated)
        .start()
        .await
        .unwrap();
    // Two halves, {0, 1, 2} and {3, 4, 5}, each a star; nothing joins them yet.
    for bootstrap in [vec![], vec![0], vec![0], vec![], vec![3], vec![3]] {
        net.add_node(NodeSpec::new().bootstrap(bootstrap))
            .await
            .unwrap();
    }
    net.wait_for(
        |n| n.connected(1, 0) && n.connected(2, 0) && n.connected(4, 3) && n.connected(5, 3),
        Duration::from_secs(20),
    )
    .await
    .unwrap();

    // Side A writes its keys and `shared`; side B its keys, a delete, and `shared` later.
    let side_a: Vec<(String, Option<&str>)> = (0..20)
        .map(|i| (format!("a/{i:02}"), Some("from A")))
        .chain([
            ("shared".to_string(), Some("A's")),
            ("gone".to_string(), Some("here")),
        ])
        .collect();
    write(&net, 1, side_a).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let side_b: Vec<(String, Option<&str>)> = (0..20)
        .map(|i| (format!("b/{i:02}"), Some("from B")))
        .chain([("shared".to_string(), Some("B's"))])
        .collect();
    write(&net, 4, side_b).await;
    write(&net, 5, vec![("gone".to_string(), None)]).await;

    // Within a side, writes travel by gossip.
    wait_until(
        "side A sees its writes",
        Duration::from_secs(20),
        || async { contents(&net, 2).await.len() == 22 },
    )
    .await;
    assert!(
        contents(&net, 0)
            .await
            .iter()
            .all(|(k, _, _)| !k.starts_with("b/")),
        "the halves are apart"
    );

    // Join the halves: node 3 restarts dialling node 0 (its store kept).
    let addr = net.dial_addr(0).unwrap();
    net.restart_with(3, move |s| s.bootstrap = vec![addr])
        .await
        .unwrap();
    let joined = wait_until("all six nodes agree", Duration::from_secs(60), || async {
        let first = contents(&net, 0).await;
        // 20 keys from each side, `shared`, and `gone` (deleted).
        if first.len() != 42 {
            return false;
        }
        for node in 1..6 {
            if contents(&net, node).await != first {
                return false;
            }
        }
        true
    })
    .await;
    eprintln!("converged {joined:?} after the join");

    let all = contents(&net, 2).await;
    let value = |key: &str| all.iter().find(|(k, _, _)| k == key).unwrap().1.clone();
    let writer_b = net.peer_id(4).unwrap().to_string();
    let writer_a = net.peer_id(1).unwrap().to_string();
    // The later write wins everywhere; the delete too (it came after `here`).
    assert_eq!(value("shared").as_deref(), Some("B's"));
    assert_eq!(value("gone"), None);
    assert_eq!(value("a/07").as_deref(), Some("from A"));
    assert_eq!(value("b/13").as_deref(), Some("from B"));
    // What `shared` overwrote is kept where both versions met, with its author.
    let shared = list(&net, 4)
        .await
        .into_iter()
        .chain(list(&net, 1).await)
        .find(|k| k.key == "shared" && !k.overwritten.is_empty())
        .expect("a node that saw both versions of `shared`");
    assert_eq!(shared.winner.author, writer_b);
    assert_eq!(shared.overwritten[0].author, writer_a);
    assert_eq!(shared.overwritten[0].value.as_deref(), Some("A's"));
    net.shutdown().await;
}

/// Four nodes, one 90 s ahead and one 90 s behind: each learns how far it is from the mesh
/// from its peers' signed timestamps, stamps and judges hybrid clocks in mesh time, and so a
/// later write wins whoever made it, and nobody refuses anybody's entries as "from the
/// future".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clocks_ninety_seconds_apart_agree_and_the_later_write_wins() {
    use fogmesh_node::runtime::clock::system_wall_ms;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let mut net = common::memnet(dir.path(), Duration::from_millis(500))
        .nodes(0)
        .start()
        .await
        .unwrap();
    const SKEW: [i64; 4] = [0, 0, 90_000, -90_000];
    for (i, skew) in SKEW.into_iter().enumerate() {
        let spec = NodeSpec::new()
            .bootstrap((i > 0).then_some(0))
            .wall_clock(Arc::new(move || {
                system_wall_ms().saturating_add_signed(skew)
            }));
        net.add_node(spec).await.unwrap();
    }
    let offsets = |net: &MemNet| -> Vec<i64> {
        (0..4)
            .map(|i| net.status(i).unwrap().mesh_clock.offset_ms)
            .collect()
    };
    // Each node's correction undoes its skew (within the transit time of a telemetry record).
    wait_until(
        "every node knows its offset",
        Duration::from_secs(60),
        || {
            let offsets = offsets(&net);
            async move {
                offsets
                    .iter()
                    .zip(SKEW)
                    .all(|(offset, skew)| (offset + skew).abs() < 2_000)
            }
        },
    )
    .await;

    // The fast node writes first, a correct node after: the correct node's write wins.
    // Then the slow node writes after the correct one: the slow node's write wins.
    write(&net, 2, vec![("k".into(), Some("fast, first"))]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    write(&net, 0, vec![("k".into(), Some("correct, second"))]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    write(&net, 3, vec![("k".into(), Some("slow, third"))]).await;

    let writer = net.peer_id(3).unwrap().to_string();
    wait_until(
        "all four hold the slow node's write",
        Duration::from_secs(30),
        || async {
            let mut all = Vec::new();
            for node in 0..4 {
                all.push(contents(&net, node).await);
            }
            all.iter().all(|c| {
                c == &vec![(
                    "k".to_string(),
                    Some("slow, third".to_string()),
                    writer.clone(),
                )]
            })
        },
    )
    .await;
    for node in 0..4 {
        let status = net.status(node).unwrap();
        assert!(
            !status.mesh_clock.furthest.is_empty(),
            "node {node} shows its peers' clocks"
        );
    }
    net.shutdown().await;
}
