//! Arbitrary bytes as relay packets, first through the decoder alone (never a panic; what
//! decodes re-encodes to an equal packet), then as a stream of packets from one neighbour
//! into a relay service (never a panic, the node's tables stay within their bounds).
#![no_main]

use std::sync::OnceLock;

use fogmesh_node::relay::packet;
use fogmesh_node::relay::service::{LinkKind, RelayConfig, RelayMetrics, RelayService};
use fogmesh_node::relay::tables::RelayTables;
use fogmesh_node::relay::MessagesView;
use fogmesh_node::runtime::capability::Outbox;
use fogmesh_node::runtime::handle::Views;
use fogmesh_store::{Store, StoreOptions};
use libfuzzer_sys::fuzz_target;
use libp2p::identity::Keypair;
use rand::SeedableRng;

const NOW: u64 = 1_700_000_000_000;

/// One store for the whole run: the relay only builds batches for it (nothing runs them
/// here), so it stays empty.
fn tables() -> Option<RelayTables> {
    static STORE: OnceLock<Option<Store>> = OnceLock::new();
    let store = STORE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("fogmesh-fuzz-relay-{}", std::process::id()));
        Store::open(&dir, &StoreOptions::default()).ok()
    });
    RelayTables::open(store.as_ref()?).ok()
}

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = packet::decode(data) {
        let again = packet::decode(&packet::encode(p.ttl, &p.envelope).unwrap()).unwrap();
        assert_eq!(again, p);
    }
    let Ok(key) = Keypair::ed25519_from_bytes([7u8; 32]) else {
        return;
    };
    let config = RelayConfig {
        held_total: 8,
        held_per_recipient: 2,
        ..RelayConfig::default()
    };
    let Some(tables) = tables() else {
        return;
    };
    let Ok(mut relay) = RelayService::new(
        key,
        config,
        rand::rngs::StdRng::seed_from_u64(1),
        tables,
        Views::default().add(MessagesView::default()),
        RelayMetrics::default(),
    ) else {
        return;
    };
    let neighbour = Keypair::ed25519_from_bytes([9u8; 32])
        .map(|k| k.public().to_peer_id())
        .unwrap();
    let mut out = Outbox::default();
    relay.link_up(NOW, neighbour, LinkKind::Radio, &mut out);
    // Packets are length-prefixed by one byte (times 4) in the input.
    let mut rest = data;
    let mut now = NOW;
    while let Some((&len, tail)) = rest.split_first() {
        let len = (usize::from(len) * 4).min(tail.len());
        let (packet, tail) = tail.split_at(len);
        now += 10;
        let mut out = Outbox::default();
        relay.on_packet(now, neighbour, packet, &mut out);
        rest = tail;
    }
    assert!(relay.messages().held <= 8);
});
