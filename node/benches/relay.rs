//! Per-packet cost of the relay: what a relay pays for each packet it handles (decode and
//! signature check, then the duplicate filter and forwarding), what the recipient pays to
//! open a sealed message, and what a sender pays to seal and sign one.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use fogmesh_node::relay::packet::{self, AppPayload};
use fogmesh_node::relay::sealed;
use fogmesh_node::relay::service::{LinkKind, RelayConfig, RelayMetrics, RelayService};
use fogmesh_node::relay::tables::RelayTables;
use fogmesh_node::relay::MessagesView;
use fogmesh_node::runtime::capability::Outbox;
use fogmesh_node::runtime::handle::Views;
use fogmesh_transports::secure::keys::LocalKeys;
use libp2p::identity::Keypair;
use rand::SeedableRng;
use zeroize::Zeroizing;

const NOW: u64 = 1_700_000_000_000;

fn benches(c: &mut Criterion) {
    let sender = Keypair::generate_ed25519();
    let recipient = Keypair::generate_ed25519();
    let to = recipient.public().to_peer_id();
    let from = sender.public().to_peer_id();
    let text = AppPayload {
        app: "text".into(),
        data: vec![b'x'; 200],
    };
    let plaintext = packet::seal_payload(&text).unwrap_or_default();
    c.bench_function("relay/seal_and_sign_200B", |b| {
        b.iter(|| {
            let sealed = sealed::seal(&from, &to, Zeroizing::new([7u8; 32]), black_box(&plaintext));
            packet::direct(&sender, 1, NOW, &to, sealed.unwrap_or_default())
        })
    });
    let sealed_bytes =
        sealed::seal(&from, &to, Zeroizing::new([7u8; 32]), &plaintext).unwrap_or_default();
    let envelope = packet::direct(&sender, 1, NOW, &to, sealed_bytes.clone()).unwrap_or_default();
    let frame = packet::encode(5, &envelope).unwrap_or_default();
    c.bench_function("relay/decode_and_verify", |b| {
        b.iter(|| packet::decode(black_box(&frame)))
    });
    let Ok(keys) = LocalKeys::from_identity(&recipient) else {
        return;
    };
    c.bench_function("relay/open_200B", |b| {
        b.iter(|| sealed::open(&keys, &from, black_box(&sealed_bytes)))
    });
    // A relay with four neighbours handling a packet seen before: the common case in a
    // flood (every copy but the first).
    let relay_key = Keypair::generate_ed25519();
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let Ok(tables) = fogmesh_store::Store::open(dir.path(), &Default::default())
        .map_err(|e| e.to_string())
        .and_then(|store| RelayTables::open(&store).map_err(|e| e.to_string()))
    else {
        return;
    };
    let Ok(mut relay) = RelayService::new(
        relay_key,
        RelayConfig::default(),
        rand::rngs::StdRng::seed_from_u64(1),
        tables,
        Views::default().add(MessagesView::default()),
        RelayMetrics::default(),
    ) else {
        return;
    };
    let neighbour = Keypair::generate_ed25519().public().to_peer_id();
    let mut out = Outbox::at(NOW);
    relay.link_up(NOW, neighbour, LinkKind::Radio, &mut out);
    for _ in 0..3 {
        let other = Keypair::generate_ed25519().public().to_peer_id();
        relay.link_up(NOW, other, LinkKind::Radio, &mut out);
    }
    relay.on_packet(NOW, neighbour, &frame, &mut out);
    let mut now = NOW;
    c.bench_function("relay/on_packet_duplicate", |b| {
        b.iter(|| {
            // Time moves so the neighbour's rate bucket refills.
            now += 100;
            let mut out = Outbox::at(NOW);
            relay.on_packet(now, neighbour, black_box(&frame), &mut out)
        })
    });
}

criterion_group!(relay, benches);
criterion_main!(relay);
