#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Connections through a circuit relay run the secure channel end to end: members of a
//! closed mesh reach each other through a relay and are admitted by their own tickets, and a
//! relay that lets anyone in cannot get a stranger admitted at the far end.

mod relay_harness;

use std::time::Duration;

use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use relay_harness::{
    circuit, drive, listen, relay_config, reserve, swarm, swarm_with, trio, Mesh, Trio,
};

fn is_relayed(endpoint: &ConnectedPoint) -> bool {
    let addr = match endpoint {
        ConnectedPoint::Dialer { address, .. } => address,
        ConnectedPoint::Listener { local_addr, .. } => local_addr,
    };
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

#[tokio::test]
async fn members_reach_each_other_through_a_relay_admitted_end_to_end() {
    let mesh = Mesh::new();
    let Trio {
        mut swarms,
        relay,
        relay_addr,
        b,
        a,
        b_channel,
        a_channel,
    } = trio(&mesh, mesh.member(), mesh.member()).await;
    let b_via_relay = circuit(&relay_addr, relay).with(Protocol::P2p(b));
    // B listens nowhere but through the relay.
    assert!(reserve(&mut swarms, 1, &relay_addr, relay).await);

    let before = b_channel.stats().snapshot();
    swarms[2].dial(b_via_relay).unwrap();
    let (mut a_sees_b, mut b_sees_a) = (false, false);
    assert!(
        drive(&mut swarms, Duration::from_secs(10), |i, e| {
            if let SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } = e
            {
                a_sees_b |= i == 2 && *peer_id == b && is_relayed(endpoint);
                b_sees_a |= i == 1 && *peer_id == a && is_relayed(endpoint);
            }
            a_sees_b && b_sees_a
        })
        .await,
        "A and B connected through the relay"
    );
    // The handshake of the relayed connection ran between A and B themselves: B admitted
    // A inbound, A admitted B outbound, each by the other's ticket.
    let after = b_channel.stats().snapshot();
    assert_eq!(after.admitted_inbound, before.admitted_inbound + 1);
    assert!(
        a_channel.stats().snapshot().admitted_outbound >= 2,
        "the relay, then B"
    );

    // And traffic flows over it.
    let request = swarms[2]
        .behaviour_mut()
        .bulk
        .send_request(&b, vec![7; 100_000]);
    let mut answered = None;
    assert!(
        drive(&mut swarms, Duration::from_secs(10), |_, e| {
            if let SwarmEvent::Behaviour(relay_harness::NodeEvent::Bulk(
                libp2p::request_response::Event::Message {
                    message:
                        libp2p::request_response::Message::Response {
                            request_id,
                            response,
                        },
                    ..
                },
            )) = e
            {
                if *request_id == request {
                    answered = Some(*response);
                    return true;
                }
            }
            false
        })
        .await
    );
    assert_eq!(answered, Some(100_000));
}

/// A relay whose revocation list is behind (the revocation has not reached it yet) lets a
/// revoked node open a circuit; the far end refuses it in its own handshake.
#[tokio::test]
async fn a_relay_cannot_get_a_node_admitted_that_the_far_end_refuses() {
    let mesh = Mesh::new();
    let b_revocations = std::sync::Arc::default();
    let revoked = mesh.member();
    mesh.revoke(revoked.0.public().to_peer_id(), &b_revocations);
    let b = mesh.member_with(std::sync::Arc::clone(&b_revocations));
    let trio = trio(&mesh, b, revoked).await;
    let b_via_relay = trio.b_via_relay();
    let Trio {
        mut swarms,
        relay,
        relay_addr,
        b_channel,
        ..
    } = trio;
    assert!(reserve(&mut swarms, 1, &relay_addr, relay).await);

    let before = b_channel.stats().snapshot();
    swarms[2].dial(b_via_relay).unwrap();
    let mut relay_accepted = false;
    let failed = drive(&mut swarms, Duration::from_secs(10), |i, e| {
        relay_accepted |= i == 0
            && matches!(
                e,
                SwarmEvent::Behaviour(relay_harness::NodeEvent::RelayServer(
                    libp2p::relay::Event::CircuitReqAccepted { .. }
                ))
            );
        i == 2 && matches!(e, SwarmEvent::OutgoingConnectionError { .. })
    })
    .await;
    assert!(failed, "the revoked node's relayed dial fails");
    assert!(relay_accepted, "the relay opened the circuit");
    let after = b_channel.stats().snapshot();
    assert_eq!(
        after.admitted_inbound, before.admitted_inbound,
        "B admitted nobody"
    );
    assert_eq!(
        after.refused.get("inbound.revoked").copied().unwrap_or(0),
        before.refused.get("inbound.revoked").copied().unwrap_or(0) + 1,
        "B refused it as revoked: {:?}",
        after.refused
    );
}

/// A relay asked for more slots than it holds refuses the rest, says why, and its own
/// traffic goes on.
#[tokio::test]
async fn a_reservation_flood_is_refused_at_the_bound_and_the_relay_keeps_working() {
    let mesh = Mesh::new();
    let (relay_key, relay_policy) = mesh.member();
    let relay = relay_key.public().to_peer_id();
    let mut config = relay_config();
    config.max_reservations = 2;
    let (r, _) = swarm_with(relay_key, relay_policy, Some(config));
    let mut swarms = vec![r];
    for _ in 0..5 {
        let (key, policy) = mesh.member();
        swarms.push(swarm(key, policy, false).0);
    }
    let relay_addr = listen(&mut swarms, 0).await;
    for holder in swarms.iter_mut().skip(1) {
        holder.listen_on(circuit(&relay_addr, relay)).unwrap();
    }
    let (mut accepted, mut refused, mut lost) = (0, 0, 0);
    drive(&mut swarms, Duration::from_secs(10), |i, e| {
        match e {
            SwarmEvent::Behaviour(relay_harness::NodeEvent::RelayServer(
                libp2p::relay::Event::ReservationReqAccepted { .. },
            )) => accepted += 1,
            SwarmEvent::Behaviour(relay_harness::NodeEvent::RelayServer(
                libp2p::relay::Event::ReservationReqDenied { status, .. },
            )) => {
                assert!(
                    matches!(status, libp2p::relay::StatusCode::ResourceLimitExceeded),
                    "{status:?}"
                );
                refused += 1;
            }
            SwarmEvent::ListenerClosed { .. } if i > 0 => lost += 1,
            _ => {}
        }
        accepted + refused == 5 && lost == 3
    })
    .await;
    assert_eq!((accepted, refused, lost), (2, 3, 3));
    // The relay still answers its own pings on every connection.
    let mut pongs = std::collections::HashSet::new();
    assert!(
        drive(&mut swarms, Duration::from_secs(5), |i, e| {
            if let SwarmEvent::Behaviour(relay_harness::NodeEvent::Ping(libp2p::ping::Event {
                peer,
                result: Ok(_),
                ..
            })) = e
            {
                if i == 0 {
                    pongs.insert(*peer);
                }
            }
            pongs.len() == 5
        })
        .await
    );
}
