//! The replicated store's costs (BENCHMARKS.md, "Replicated store"):
//! - what a node pays per remote entry (shape, clock, signature, merge into sled) and per
//!   local write (clock, signature, merge), in batches of 1,000;
//! - the bytes anti-entropy exchanges to find one differing key among 1,000,000, and to
//!   send 100,000 missing ones (printed before the timings: they are counts, not times).

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use fogmesh_kv::sync::{self as kv_sync, MemReplica, SyncRequest, BATCH_BYTES, LAN_BATCH_BYTES};
use fogmesh_kv::{Entry, Hlc, Version};
use fogmesh_node::kv::core::{AccessPolicy, KvCore, KvMetrics};
use fogmesh_node::kv::view::KvWrite;
use fogmesh_store::{Store, StoreOptions};
use libp2p::identity::Keypair;
use serde_bytes::ByteBuf;

const NOW: u64 = 1_800_000_000_000;

fn signed(author: &Keypair, key: String, wall_ms: u64) -> Entry {
    let mut entry = Entry {
        namespace: "bench".into(),
        key,
        value: Some(ByteBuf::from(vec![b'v'; 100])),
        version: Version {
            hlc: Hlc {
                wall_ms,
                counter: 0,
            },
            author: ByteBuf::from(author.public().to_peer_id().to_bytes()),
        },
        signature: ByteBuf::new(),
    };
    entry.signature = ByteBuf::from(author.sign(&entry.signing_bytes()).unwrap_or_default());
    entry
}

/// An unsigned entry: the sync exchange does not look at signatures.
fn plain(author: u8, key: u64, wall_ms: u64) -> Entry {
    Entry {
        namespace: "bench".into(),
        key: format!("key/{key:08}"),
        value: Some(ByteBuf::from(vec![b'v'; 100])),
        version: Version {
            hlc: Hlc {
                wall_ms,
                counter: 0,
            },
            author: ByteBuf::from(vec![author; 38]),
        },
        signature: ByteBuf::from(vec![author; 64]),
    }
}

fn service() -> (tempfile::TempDir, KvCore) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let store =
        Store::open(dir.path(), &StoreOptions::default()).unwrap_or_else(|e| panic!("store: {e}"));
    let kv = KvCore::open(
        Keypair::generate_ed25519(),
        &store,
        AccessPolicy::open(),
        KvMetrics::default(),
    );
    (dir, kv)
}

fn sync_figures() {
    // One differing key among a million.
    let t = Instant::now();
    let mut a = MemReplica::new();
    for k in 0..1_000_000 {
        a.merge(plain(1, k, NOW));
    }
    let mut b = a.clone();
    b.merge(plain(2, 424_242, NOW + 1));
    let built = t.elapsed();
    let (stats, bytes) = kv_sync::sync_in_memory(&mut a, &mut b, BATCH_BYTES);
    eprintln!(
        "kv sync: 1 differing key among 1,000,000: {bytes} bytes in {} requests (replicas built in {built:?})",
        stats.requests
    );
    drop((a, b));
    // 100,000 keys one side lacks, over a LAN-sized and a BLE-sized budget.
    for budget in [LAN_BATCH_BYTES, BATCH_BYTES] {
        let mut a = MemReplica::new();
        let mut b = MemReplica::new();
        for k in 0..100_000 {
            b.merge(plain(1, k, NOW));
        }
        for k in 100_000..150_000 {
            a.merge(plain(1, k, NOW));
            b.merge(plain(1, k, NOW));
        }
        let differing: u64 = (0..100_000)
            .map(|k| kv_sync::encoded_len(&plain(1, k, NOW)))
            .sum();
        let t = Instant::now();
        let session = kv_sync::SyncSession::pull_only();
        let (stats, bytes) = kv_sync::run_in_memory(session, &mut a, &mut b, budget);
        eprintln!(
            "kv sync: 100,000 missing keys among 150,000, budget {budget} B: {bytes} bytes for {differing} of entries ({:.3}x), {} requests, {:?} in memory",
            bytes as f64 / differing as f64,
            stats.requests,
            t.elapsed()
        );
    }
}

fn benches(c: &mut Criterion) {
    sync_figures();
    let author = Keypair::generate_ed25519();
    let entries: Vec<Entry> = (0..1000)
        .map(|i| signed(&author, format!("remote/{i:05}"), NOW))
        .collect();
    let mut group = c.benchmark_group("kv");
    group.sample_size(20);
    group.bench_function("take_1000_remote_entries", |b| {
        b.iter_batched(
            service,
            |(dir, mut kv)| {
                let push = SyncRequest::Push {
                    entries: entries.clone(),
                    credentials: Vec::new(),
                };
                black_box(kv.answer(NOW, push));
                (dir, kv)
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("write_1000_local", |b| {
        b.iter_batched(
            service,
            |(dir, mut kv)| {
                let writes = (0..1000)
                    .map(|i| KvWrite {
                        namespace: "bench".into(),
                        key: format!("local/{i:05}"),
                        value: Some(vec![b'v'; 100]),
                    })
                    .collect();
                let _ = black_box(kv.write(NOW, writes));
                (dir, kv)
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("verify_one_signature", |b| {
        let entry = &entries[0];
        let key = author.public();
        b.iter(|| key.verify(black_box(&entry.signing_bytes()), &entry.signature))
    });
    group.finish();
}

criterion_group!(kv, benches);
criterion_main!(kv);
