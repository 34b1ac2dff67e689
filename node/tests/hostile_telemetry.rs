//! A hostile peer publishes malformed, oversized, forged, stale, future and replayed
//! telemetry to a live node. Each is rejected and counted by reason; the node goes on and
//! still accepts honest telemetry afterwards. The node runs on the in-memory network and the
//! attacker dials it over a memory link with the node's own secure channel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use fogmesh_node::runtime::clock::system_wall_ms as now_ms;
use fogmesh_node::telemetry::record::{TelemetryRecord, TELEMETRY_TOPIC};
use fogmesh_transports::secure::{AdmissionPolicy, SecureChannel, SecureChannelConfig};
use fogmesh_transports::{build_memory_transport, TransportConfig};
use fogmesh_wire::codec;
use fogmesh_wire::envelope::{self, MessageKind, MAX_ENVELOPE_LEN};
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic};
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::Swarm;

fn record(key: &Keypair) -> Vec<u8> {
    record_with_uptime(key, 1)
}

fn record_with_uptime(key: &Keypair, uptime_s: u64) -> Vec<u8> {
    codec::encode(&TelemetryRecord {
        peer_id: key.public().to_peer_id().to_string(),
        version: "attacker".into(),
        uptime_s,
        cpu_load_pct: None,
        mem_used_bytes: None,
        mem_total_bytes: None,
        rss_bytes: None,
        peer_count: 1,
        listen_addrs: vec![],
        interval_ms: 1000,
        device: None,
    })
    .unwrap()
}

fn attacker(key: &Keypair) -> Swarm<gossipsub::Behaviour> {
    libp2p::SwarmBuilder::with_existing_identity(key.clone())
        .with_tokio()
        .with_other_transport(|k| {
            // The node's own secure channel, open policy: a hostile peer that got past
            // admission (or an open mesh) is exactly what this test is about.
            let channel = SecureChannel::new(k, SecureChannelConfig::new(AdmissionPolicy::open()))?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(build_memory_transport(
                k,
                &channel,
                &TransportConfig::default(),
                None,
            )?)
        })
        .unwrap()
        .with_behaviour(|k| {
            let config = gossipsub::ConfigBuilder::default()
                .max_transmit_size(MAX_ENVELOPE_LEN + 8 * 1024)
                .build()
                .unwrap();
            gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(k.clone()), config)
                .unwrap()
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// Drives the swarm for `d`.
async fn drive(swarm: &mut Swarm<gossipsub::Behaviour>, d: Duration) {
    let _ = tokio::time::timeout(d, async {
        loop {
            swarm.select_next_some().await;
        }
    })
    .await;
}

/// Drives the swarm until `done` finishes: the attacker must keep its connection serviced
/// while the node processes what it sent.
async fn drive_until<T>(
    swarm: &mut Swarm<gossipsub::Behaviour>,
    done: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(done);
    loop {
        tokio::select! {
            out = &mut done => return out,
            _ = swarm.select_next_some() => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_telemetry_is_rejected_counted_and_survived() {
    let dir = tempfile::tempdir().unwrap();
    let net = common::memnet(dir.path(), Duration::from_secs(1))
        .nodes(1)
        .start()
        .await
        .unwrap();
    let node_id = net.peer_id(0).unwrap();
    let addr = net.dial_addr(0).unwrap();

    let key = Keypair::generate_ed25519();
    let mut swarm = attacker(&key);
    let topic = IdentTopic::new(TELEMETRY_TOPIC);
    swarm.behaviour_mut().subscribe(&topic).unwrap();
    swarm.dial(addr).unwrap();
    // Wait until the node's subscription is known, so publishes reach it.
    let subscribed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let SwarmEvent::Behaviour(gossipsub::Event::Subscribed { peer_id, .. }) =
                swarm.select_next_some().await
            {
                if peer_id == node_id {
                    break;
                }
            }
        }
    })
    .await;
    assert!(subscribed.is_ok(), "node never subscribed to telemetry");

    let other = Keypair::generate_ed25519();
    let now = now_ms();
    let valid = envelope::seal(&key, MessageKind::Telemetry, 100, now, record(&key)).unwrap();
    let mut forged: envelope::Envelope = codec::decode(&valid).unwrap();
    forged.seq = 101;
    let messages: Vec<(&str, Vec<u8>)> = vec![
        ("malformed", b"this is not an envelope".to_vec()),
        ("oversized", vec![0xA5; MAX_ENVELOPE_LEN + 100]),
        (
            "sender mismatch",
            envelope::seal(&other, MessageKind::Telemetry, 1, now, record(&other)).unwrap(),
        ),
        ("bad signature", codec::encode(&forged).unwrap()),
        (
            "stale",
            envelope::seal(
                &key,
                MessageKind::Telemetry,
                50,
                now - 120_000,
                record(&key),
            )
            .unwrap(),
        ),
        (
            "future",
            envelope::seal(
                &key,
                MessageKind::Telemetry,
                51,
                now + 120_000,
                record(&key),
            )
            .unwrap(),
        ),
        ("valid", valid.clone()),
        // Byte-identical copy: gossipsub's duplicate filter drops it (content-addressed ids).
        ("identical replay", valid),
        // Same sequence number, new content, correctly signed: the validator's replay check.
        (
            "replayed seq",
            envelope::seal(
                &key,
                MessageKind::Telemetry,
                100,
                now,
                record_with_uptime(&key, 2),
            )
            .unwrap(),
        ),
    ];
    for (what, data) in messages {
        swarm
            .behaviour_mut()
            .publish(topic.clone(), data)
            .unwrap_or_else(|e| panic!("publishing {what}: {e}"));
        drive(&mut swarm, Duration::from_millis(150)).await;
    }

    let counted = net.wait_for(
        |n| {
            let s = n.status(0).unwrap();
            let r = s.telemetry_rejected;
            r.malformed >= 1
                && r.oversized >= 1
                && r.sender_mismatch >= 1
                && r.bad_signature >= 1
                && r.stale >= 1
                && r.from_future >= 1
                && r.replayed >= 1
                && s.telemetry_accepted == 1
        },
        Duration::from_secs(20),
    );
    let counted = drive_until(&mut swarm, counted).await;
    let status = net.status(0).unwrap();
    assert!(
        counted.is_ok(),
        "rejections not counted as expected: {:?}",
        status.telemetry_rejected
    );
    assert_eq!(status.telemetry_rejected.total(), 7);

    // The node goes on: an honest next message is still accepted.
    let next = envelope::seal(&key, MessageKind::Telemetry, 102, now_ms(), record(&key)).unwrap();
    swarm.behaviour_mut().publish(topic.clone(), next).unwrap();
    let accepted_again = net.wait_for(
        |n| n.status(0).unwrap().telemetry_accepted == 2,
        Duration::from_secs(10),
    );
    let accepted_again = drive_until(&mut swarm, accepted_again).await;
    assert!(
        accepted_again.is_ok(),
        "node stopped accepting honest telemetry"
    );
    net.shutdown().await;
}
