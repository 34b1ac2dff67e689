//! Arbitrary bytes as relay packets, first through the decoder alone (never a panic; what
//! decodes re-encodes to an equal packet), then as a stream of packets from one neighbour
//! into a relay service (never a panic, the node's tables stay within their bounds).
#![no_main]

use fogmesh_node::relay::packet;
use fogmesh_node::services::relay::{LinkKind, RelayConfig, RelayMetrics, RelayService};
use fogmesh_node::services::Outbox;
use libfuzzer_sys::fuzz_target;
use libp2p::identity::Keypair;
use rand::SeedableRng;

const NOW: u64 = 1_700_000_000_000;

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
    let Ok(mut relay) = RelayService::new(
        key,
        config,
        rand::rngs::StdRng::seed_from_u64(1),
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
    assert!(relay.view().held <= 8);
});
