//! Closed meshes end to end, on the in-memory network (the real secure channel over memory
//! links): nodes without a valid ticket get nothing in, and revocations spread, persist and
//! close existing connections.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::refused;
use fogmesh_node::client::ControlClient;
use fogmesh_node::memnet::{Admission, MemNet, MeshRoot, NodeSpec, Topology};

const INTERVAL: Duration = Duration::from_millis(300);

/// Nodes `among` all hold fresh telemetry from each other.
fn exchanged(net: &MemNet, among: &[usize]) -> bool {
    among.iter().all(|h| {
        among
            .iter()
            .all(|o| h == o || net.has_fresh_telemetry(*h, *o))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_a_valid_ticket_get_no_gossip_into_a_closed_mesh() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = common::memnet(dir.path(), INTERVAL)
        .closed_mesh("home")
        .unwrap()
        .nodes(2)
        .topology(Topology::Star)
        .start()
        .await
        .unwrap();
    let elsewhere = Arc::new(MeshRoot::create(&dir.path().join("elsewhere"), "elsewhere").unwrap());
    let (a, b) = (0, 1);
    // An open node (no ticket at all) and a member of another mesh both try to join.
    let open = net
        .add_node(NodeSpec::new().bootstrap([a]).admission(Admission::Open))
        .await
        .unwrap();
    let foreign = net
        .add_node(
            NodeSpec::new()
                .bootstrap([a])
                .admission(Admission::Member(elsewhere)),
        )
        .await
        .unwrap();

    net.wait_for(|n| exchanged(n, &[a, b]), Duration::from_secs(60))
        .await
        .expect("members did not exchange telemetry");
    net.wait_for(
        // The open node shows no ticket; the foreign node refuses a's ticket first (the
        // dialer judges the listener's ticket before showing its own) and tells a why.
        |n| {
            refused(n, a, "inbound.missing_ticket") >= 1
                && refused(n, a, "inbound.refused_by_remote") >= 1
        },
        Duration::from_secs(30),
    )
    .await
    .expect("the intruders' attempts were not refused by name");
    // Gossip goes on after the refusals: a newer record from each member reaches the other,
    // so anything that could leak to an intruder had its chance.
    let seq = |n: &MemNet, holder: usize, origin: usize| {
        let id = n.peer_id(origin).unwrap().to_string();
        fogmesh_node::telemetry::view::latest(n.handle(holder).unwrap())
            .get(&id)
            .map_or(0, |t| t.seq)
    };
    let (ab, ba) = (seq(&net, a, b), seq(&net, b, a));
    net.wait_for(
        |n| seq(n, a, b) > ab && seq(n, b, a) > ba,
        Duration::from_secs(30),
    )
    .await
    .expect("members kept exchanging telemetry");
    let intruders = [
        net.peer_id(open).unwrap().to_string(),
        net.peer_id(foreign).unwrap().to_string(),
    ];
    for member in [a, b] {
        let have = net.fresh_telemetry(member);
        assert!(
            intruders.iter().all(|i| !have.contains(i)),
            "intruder telemetry got in: {have:?}"
        );
    }
    for intruder in [open, foreign] {
        assert!(
            fogmesh_node::telemetry::view::latest(net.handle(intruder).unwrap()).is_empty(),
            "an intruder received mesh telemetry"
        );
        assert_eq!(net.status(intruder).unwrap().connected_peers, 0);
    }
    // The foreign member learns why (a's ticket is not of its mesh), the open one that it
    // was refused.
    net.wait_for(
        |n| {
            refused(n, foreign, "outbound.wrong_mesh") >= 1
                && refused(n, open, "outbound.refused_by_remote") >= 1
        },
        Duration::from_secs(30),
    )
    .await
    .expect("the intruders were told why");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_spreads_persists_and_closes_existing_connections() {
    let dir = tempfile::tempdir().unwrap();
    let root = Arc::new(MeshRoot::create(&dir.path().join("mesh"), "home").unwrap());
    let mut net = common::memnet(dir.path(), INTERVAL)
        .admission(Admission::Member(root.clone()))
        .nodes(2)
        .topology(Topology::Line)
        .start()
        .await
        .unwrap();
    let (a, b) = (0, 1);
    let c = net
        .add_node(NodeSpec::new().bootstrap([a, b]))
        .await
        .unwrap();
    net.wait_converged(Duration::from_secs(60))
        .await
        .expect("mesh did not converge");
    let c_id = net.peer_id(c).unwrap();

    // The root revokes c, and the revocation is handed to a alone, through its control API.
    let revocation = root.revoke(c_id).unwrap();
    let api_of = |i: usize| {
        let node = net.node(i).unwrap();
        ControlClient::new(node.control_addr).with_token(node.api_token.clone())
    };
    let outcome = api_of(a)
        .submit_revocation(revocation.clone())
        .await
        .unwrap();
    assert!(outcome.new);
    // b hears of it by gossip; both drop c, and c cannot come back.
    net.wait_for(
        |n| {
            n.status(b).unwrap().admission.revocations == 1
                && n.status(c).unwrap().connected_peers == 0
        },
        Duration::from_secs(30),
    )
    .await
    .expect("revocation did not reach b or c stayed connected");
    net.wait_for(
        |n| refused(n, c, "outbound.refused_by_remote") >= 1,
        Duration::from_secs(30),
    )
    .await
    .expect("c's reconnection attempts were not refused");
    // Its attempt to come back was refused (the counter above): it is still out.
    assert_eq!(net.status(c).unwrap().connected_peers, 0);
    // Submitting it again changes nothing.
    let again = api_of(b).submit_revocation(revocation).await.unwrap();
    assert!(!again.new);
    // A forged revocation is refused with a reason.
    let forger = MeshRoot::create(&dir.path().join("forger"), "x").unwrap();
    let forged = forger.revoke(net.peer_id(b).unwrap()).unwrap();
    let err = api_of(a).submit_revocation(forged).await.unwrap_err();
    assert!(err.to_string().contains("revocation refused"), "{err}");

    // b keeps the revocation across a restart. With a and c stopped nobody can tell it
    // again, so it can only come from b's store.
    net.stop(a).await.unwrap();
    net.stop(c).await.unwrap();
    net.restart(b).await.unwrap();
    net.wait_for(
        |n| n.status(b).unwrap().admission.revocations == 1,
        Duration::from_secs(10),
    )
    .await
    .expect("b lost the revocation in the restart");
    net.shutdown().await;
}
