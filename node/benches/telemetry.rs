//! Per-message cost of telemetry: sealing on the publisher, and the full receiver check
//! (decode, signature, freshness, replay, body decode).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use fogmesh_node::telemetry::record::{FreshnessPolicy, TelemetryRecord, TelemetryValidator};
use fogmesh_wire::codec;
use fogmesh_wire::envelope::{self, MessageKind};
use libp2p::identity::Keypair;

const NOW: u64 = 1_700_000_000_000;

fn record(key: &Keypair) -> TelemetryRecord {
    TelemetryRecord {
        peer_id: key.public().to_peer_id().to_string(),
        version: "0.1.0".into(),
        uptime_s: 3600,
        cpu_load_pct: Some(12.5),
        mem_used_bytes: Some(1 << 30),
        mem_total_bytes: Some(8 << 30),
        rss_bytes: Some(12 << 20),
        peer_count: 8,
        listen_addrs: vec![
            "/ip4/192.0.2.1/tcp/4747".into(),
            "/ip4/192.0.2.1/udp/4747/quic-v1".into(),
        ],
        interval_ms: 30_000,
        device: None,
    }
}

fn benches(c: &mut Criterion) {
    let key = Keypair::generate_ed25519();
    let body = codec::encode(&record(&key)).unwrap_or_default();
    c.bench_function("telemetry/seal", |b| {
        b.iter(|| {
            envelope::seal(
                &key,
                MessageKind::Telemetry,
                1,
                NOW,
                black_box(body.clone()),
            )
        })
    });
    let sealed =
        envelope::seal(&key, MessageKind::Telemetry, 1, NOW, body.clone()).unwrap_or_default();
    let author = Some(key.public().to_peer_id());
    c.bench_function("telemetry/validate", |b| {
        b.iter_batched(
            || TelemetryValidator::new(FreshnessPolicy::default()),
            |mut v| v.check(NOW, author, black_box(&sealed)),
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("telemetry/reject_garbage", |b| {
        let mut v = TelemetryValidator::new(FreshnessPolicy::default());
        let garbage = vec![0xA5u8; 512];
        b.iter(|| v.check(NOW, author, black_box(&garbage)))
    });
}

criterion_group!(telemetry, benches);
criterion_main!(telemetry);
