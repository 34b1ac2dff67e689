//! The replicated store under clock skew (BENCHMARKS.md, "Clock skew"): four nodes on the
//! in-memory network, two with correct clocks, one 90 s ahead and one 90 s behind. Each
//! writes the same 40 keys in rounds, all four at once; then the keys' winners are compared
//! with when each write began and was acknowledged.
//!
//! Printed: how long the nodes took to learn their offsets, how many keys each node won,
//! how many acknowledged writes lost to a write acknowledged before they began (and by how
//! much at most), refusals as "from the future", and how long after the last write all four
//! agreed. `SKEW_MS=0` runs the same with correct clocks, for comparison.
//!
//! Run: `cargo bench -p fogmesh --bench skew` (about half a minute).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fogmesh_node::kv::api::{self, KvListQuery};
use fogmesh_node::kv::service::KvWrite;
use fogmesh_node::memnet::{MemNet, NodeSpec};
use fogmesh_node::runtime::clock::system_wall_ms;
use fogmesh_node::runtime::handle::NodeHandle;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const NS: &str = "skew";
const KEYS: usize = 40;
const ROUNDS: usize = 5;

/// One acknowledged write.
#[derive(Debug, Clone)]
struct Done {
    node: usize,
    value: String,
    began: Instant,
    acked: Instant,
}

async fn writer(node: usize, handle: NodeHandle, seed: u64) -> Vec<(String, Done)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut done = Vec::new();
    for round in 0..ROUNDS {
        let mut keys: Vec<usize> = (0..KEYS).collect();
        keys.shuffle(&mut rng);
        for key in keys {
            let key = format!("k{key:02}");
            let value = format!("n{node}-r{round}");
            let write = KvWrite {
                namespace: NS.into(),
                key: key.clone(),
                value: Some(value.clone().into_bytes()),
            };
            let began = Instant::now();
            if api::write(&handle, vec![write]).await.is_ok() {
                done.push((
                    key,
                    Done {
                        node,
                        value,
                        began,
                        acked: Instant::now(),
                    },
                ));
            }
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..20))).await;
        }
    }
    done
}

async fn winners(handle: &NodeHandle) -> Vec<(String, String)> {
    let query = KvListQuery {
        prefix: String::new(),
        after: None,
        limit: Some(1000),
        deleted: true,
    };
    api::list_keys(handle, NS.into(), query)
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default()
        .into_iter()
        .map(|k| (k.key, k.winner.value.unwrap_or_default()))
        .collect()
}

async fn run(skew_ms: i64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut net = MemNet::builder(dir.path())
        .telemetry_interval(Duration::from_millis(500))
        .nodes(0)
        .start()
        .await?;
    let skews = [0, 0, skew_ms, -skew_ms];
    for (i, skew) in skews.into_iter().enumerate() {
        let spec = NodeSpec::new()
            .bootstrap((i > 0).then_some(0))
            .wall_clock(Arc::new(move || {
                system_wall_ms().saturating_add_signed(skew)
            }));
        net.add_node(spec).await?;
    }
    let started = Instant::now();
    let learned = loop {
        let known = (0..4).all(|i| {
            net.status(i).is_some_and(|s| {
                s.mesh_clock.peers >= 3 && (s.mesh_clock.offset_ms + skews[i]).abs() < 2_000
            })
        });
        if known {
            break Some(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(30) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let handles: Vec<NodeHandle> = (0..4).filter_map(|i| net.handle(i).cloned()).collect();
    let tasks: Vec<_> = handles
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, h)| tokio::spawn(writer(i, h, 7 + i as u64)))
        .collect();
    let mut writes: HashMap<String, Vec<Done>> = HashMap::new();
    let mut acked = 0;
    for task in tasks {
        for (key, done) in task.await? {
            acked += 1;
            writes.entry(key).or_default().push(done);
        }
    }
    let last_ack = writes
        .values()
        .flatten()
        .map(|d| d.acked)
        .max()
        .unwrap_or_else(Instant::now);

    let agreed = loop {
        let first = winners(&handles[0]).await;
        let mut same = first.len() == KEYS;
        for h in &handles[1..] {
            same &= winners(h).await == first;
        }
        if same {
            break Some((last_ack.elapsed(), first));
        }
        if last_ack.elapsed() > Duration::from_secs(150) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    println!("skew: node 2 {skew_ms:+} ms, node 3 {:+} ms", -skew_ms);
    match learned {
        Some(t) => println!(
            "offsets learned by all four: {:.1} s after start",
            t.as_secs_f64()
        ),
        None => println!(
            "offsets not learned within 30 s: {:?}",
            (0..4)
                .filter_map(|i| net.status(i))
                .map(|s| (s.mesh_clock.offset_ms, s.mesh_clock.peers))
                .collect::<Vec<_>>()
        ),
    }
    println!("acknowledged writes: {acked}");
    let Some((after, final_winners)) = agreed else {
        println!("the four did not agree within 150 s of the last write");
        net.shutdown().await;
        return Ok(());
    };
    println!(
        "all four agreed {} ms after the last acknowledgement",
        after.as_millis()
    );
    let mut won = [0usize; 4];
    let mut lost_to_earlier = 0;
    let mut worst_ms = 0u128;
    for (key, value) in &final_winners {
        let Some(all) = writes.get(key) else { continue };
        let Some(winner) = all.iter().find(|d| &d.value == value) else {
            continue;
        };
        won[winner.node] += 1;
        for loser in all.iter().filter(|d| d.began > winner.acked) {
            lost_to_earlier += 1;
            worst_ms = worst_ms.max((loser.began - winner.acked).as_millis());
        }
    }
    println!("keys won by node 0..3: {won:?}");
    println!(
        "acknowledged writes lost to a write acknowledged before they began: {lost_to_earlier} (at most {worst_ms} ms before)"
    );
    // Entries refused as "from the future", summed over the four, from their metrics.
    let future: u64 = handles
        .iter()
        .flat_map(|h| {
            h.metrics()
                .encode()
                .lines()
                .filter(|l| l.starts_with("fogmesh_kv_refused") && l.contains("from_the_future"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum();
    println!("entries refused as from the future: {future}");
    net.shutdown().await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else is read.
    let skew_ms: i64 = std::env::var("SKEW_MS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(90_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(skew_ms))
}
