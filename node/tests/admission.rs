//! Closed meshes end to end: nodes without a valid ticket get nothing in, and revocations
//! spread, persist and close existing connections.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{dial_addr, telemetry_from, wait_until};
use fogmesh_node::client::ControlClient;
use fogmesh_node::config::{MeshFiles, Settings};
use fogmesh_node::node::{self, RunningNode};
use fogmesh_node::{identity, mesh};
use libp2p::{Multiaddr, PeerId};

const INTERVAL: Duration = Duration::from_millis(300);

struct TestMesh {
    _dir: tempfile::TempDir,
    root_key: PathBuf,
    description: PathBuf,
}

impl TestMesh {
    fn new(name: &str) -> TestMesh {
        let dir = tempfile::tempdir().unwrap();
        let (_, root_key, description) = mesh::init(dir.path(), name).unwrap();
        TestMesh {
            _dir: dir,
            root_key,
            description,
        }
    }

    /// Gives the node in `data_dir` an identity now and a ticket for it.
    fn admit(&self, data_dir: &Path) -> MeshFiles {
        let peer = identity::load_or_create(data_dir)
            .unwrap()
            .public()
            .to_peer_id();
        let ticket = mesh::issue(
            &self.root_key,
            peer,
            &["worker".into()],
            Duration::from_secs(3600),
        )
        .unwrap();
        let ticket_path = data_dir.join("ticket");
        std::fs::write(&ticket_path, ticket).unwrap();
        MeshFiles {
            mesh: self.description.clone(),
            ticket: ticket_path,
        }
    }
}

fn settings(dir: &Path, bootstrap: Vec<Multiaddr>, mesh: Option<MeshFiles>) -> Settings {
    let mut s = common::settings(dir, bootstrap, INTERVAL);
    s.mesh = mesh;
    s
}

async fn start(s: Settings) -> RunningNode {
    node::start(s).await.expect("node starts")
}

async fn converged(nodes: &[&RunningNode]) -> bool {
    wait_until(Duration::from_secs(60), || async {
        for node in nodes {
            let have = telemetry_from(node).await;
            let others = nodes.iter().filter(|n| n.peer_id != node.peer_id);
            if !others
                .into_iter()
                .all(|n| have.contains(&n.peer_id.to_string()))
            {
                return false;
            }
        }
        true
    })
    .await
}

async fn refused(node: &RunningNode, key: &str) -> u64 {
    let status = ControlClient::new(node.control_addr)
        .status()
        .await
        .unwrap();
    status
        .admission
        .handshakes
        .refused
        .get(key)
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_a_valid_ticket_get_no_gossip_into_a_closed_mesh() {
    let home = TestMesh::new("home");
    let elsewhere = TestMesh::new("elsewhere");
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();

    let a = start(settings(
        dirs[0].path(),
        vec![],
        Some(home.admit(dirs[0].path())),
    ))
    .await;
    let a_addr = dial_addr(&a).await;
    let b = start(settings(
        dirs[1].path(),
        vec![a_addr.clone()],
        Some(home.admit(dirs[1].path())),
    ))
    .await;
    // An open node (no ticket at all) and a member of another mesh both try to join.
    let open = start(settings(dirs[2].path(), vec![a_addr.clone()], None)).await;
    let foreign = start(settings(
        dirs[3].path(),
        vec![a_addr.clone()],
        Some(elsewhere.admit(dirs[3].path())),
    ))
    .await;

    assert!(
        converged(&[&a, &b]).await,
        "members did not exchange telemetry"
    );
    assert!(
        wait_until(Duration::from_secs(30), || async {
            // The open node shows no ticket; the foreign node refuses a's ticket first (the
            // dialer judges the listener's ticket before showing its own) and tells a why.
            refused(&a, "inbound.missing_ticket").await >= 1
                && refused(&a, "inbound.refused_by_remote").await >= 1
        })
        .await,
        "the intruders' attempts were not refused by name"
    );
    // Give gossip every chance to leak.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let intruders = [open.peer_id.to_string(), foreign.peer_id.to_string()];
    for member in [&a, &b] {
        let have = telemetry_from(member).await;
        assert!(
            intruders.iter().all(|i| !have.contains(i)),
            "intruder telemetry got in: {have:?}"
        );
    }
    for intruder in [&open, &foreign] {
        assert!(
            telemetry_from(intruder).await.is_empty(),
            "an intruder received mesh telemetry"
        );
        let status = ControlClient::new(intruder.control_addr)
            .status()
            .await
            .unwrap();
        assert_eq!(status.connected_peers, 0);
    }
    // The foreign member learns why: a's ticket is not of its mesh.
    assert!(refused(&foreign, "outbound.wrong_mesh").await >= 1);
    assert!(refused(&open, "outbound.refused_by_remote").await >= 1);

    for n in [a, b, open, foreign] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_spreads_persists_and_closes_existing_connections() {
    let home = TestMesh::new("home");
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let files: Vec<MeshFiles> = dirs.iter().map(|d| home.admit(d.path())).collect();

    let a = start(settings(dirs[0].path(), vec![], Some(files[0].clone()))).await;
    let a_addr = dial_addr(&a).await;
    let b = start(settings(
        dirs[1].path(),
        vec![a_addr.clone()],
        Some(files[1].clone()),
    ))
    .await;
    let b_addr = dial_addr(&b).await;
    let c = start(settings(
        dirs[2].path(),
        vec![a_addr.clone(), b_addr.clone()],
        Some(files[2].clone()),
    ))
    .await;
    assert!(converged(&[&a, &b, &c]).await, "mesh did not converge");
    let c_id: PeerId = c.peer_id;

    // The root revokes c, and the revocation is handed to a alone.
    let revocation = mesh::revoke(&home.root_key, mesh::RevokeTarget::Peer(c_id)).unwrap();
    let outcome = ControlClient::new(a.control_addr)
        .submit_revocation(revocation.clone())
        .await
        .unwrap();
    assert!(outcome.new);
    // b hears of it by gossip; both drop c, and c cannot come back.
    let c_client = ControlClient::new(c.control_addr);
    assert!(
        wait_until(Duration::from_secs(30), || async {
            let b_status = ControlClient::new(b.control_addr).status().await.unwrap();
            let c_status = c_client.status().await.unwrap();
            b_status.admission.revocations == 1 && c_status.connected_peers == 0
        })
        .await,
        "revocation did not reach b or c stayed connected"
    );
    assert!(
        wait_until(Duration::from_secs(30), || async {
            refused(&c, "outbound.refused_by_remote").await >= 1
        })
        .await,
        "c's reconnection attempts were not refused"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(c_client.status().await.unwrap().connected_peers, 0);
    // Submitting it again changes nothing.
    let again = ControlClient::new(b.control_addr)
        .submit_revocation(revocation)
        .await
        .unwrap();
    assert!(!again.new);
    // A forged revocation is refused with a reason.
    let forged = mesh::revoke(
        &TestMesh::new("x").root_key,
        mesh::RevokeTarget::Peer(b.peer_id),
    )
    .unwrap();
    let err = ControlClient::new(a.control_addr)
        .submit_revocation(forged)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("revocation refused"), "{err}");

    // b keeps the revocation across a restart.
    b.shutdown().await;
    let b = start(settings(
        dirs[1].path(),
        vec![a_addr],
        Some(files[1].clone()),
    ))
    .await;
    let status = ControlClient::new(b.control_addr).status().await.unwrap();
    assert_eq!(status.admission.revocations, 1);
    for n in [a, b, c] {
        n.shutdown().await;
    }
}
