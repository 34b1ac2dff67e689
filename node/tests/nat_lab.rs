//! The NAT lab end to end (docs/nat-lab.md): `fogmesh testnet up --nat lab` builds a small
//! lab — one public node, two behind port-restricted NATs, one behind a symmetric NAT —
//! and its report must show what the NATs allow: every NATed node reaches every other
//! (directly or through a relay), the two port-restricted nodes punch a direct connection,
//! and the symmetric node's connections to NATed peers stay relayed. `testnet down` must
//! leave none of the lab's namespaces behind.
//!
//! Needs root, `ip` and `nft`; otherwise it says so in one line and passes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use fogmesh_testnet::nat_lab::{LabReport, PairVia, PathKind};
use fogmesh_testnet::state::NodeKind;

const LAYOUT: &str = "public=1,port-restricted=2,symmetric=1";

fn fogmesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fogmesh"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("fogmesh runs")
}

/// Runs `fogmesh testnet down` on drop, so a failing assertion leaves no lab behind.
struct LabGuard(String);

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = fogmesh(&["testnet", "down", "--dir", &self.0]);
    }
}

#[test]
fn nat_lab_small() {
    if fogmesh_testnet::netns::preflight().is_err() {
        println!("nat_lab: skipped (needs root, ip and nft)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab").display().to_string();
    let guard = LabGuard(dir.clone());
    // Bounded: 30 s at most for the nodes to settle (every pair connected, then 3 s with no
    // pair's path changing), plus start-up.
    let up = fogmesh(&[
        "testnet",
        "up",
        "--nat",
        "lab",
        "--lab-layout",
        LAYOUT,
        "--settle",
        "30s",
        "--settle-quiet",
        "3s",
        "--timeout",
        "30s",
        "--dir",
        &dir,
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&up.stderr).into_owned();
    assert!(
        up.status.success(),
        "testnet up --nat lab failed:\n{stderr}"
    );
    let report: LabReport = serde_json::from_slice(&up.stdout)
        .unwrap_or_else(|e| panic!("report does not parse: {e}\n{stderr}"));
    println!("{}", fogmesh_testnet::nat_lab::report::render(&report));

    // The lab itself: every node running and answering inside its namespace.
    assert_eq!(report.nodes.len(), 4);
    for node in &report.nodes {
        assert!(
            node.alive && node.answering,
            "node {} ({}) not running or not answering",
            node.index,
            node.kind
        );
    }

    // Tear down before judging the nodes: the lab must go whatever they did.
    let down = fogmesh(&["testnet", "down", "--dir", &dir]);
    assert!(
        down.status.success(),
        "testnet down failed: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    drop(guard);
    let prefix = format!("fmlab-{}-", report.lab_id);
    assert_eq!(
        fogmesh_testnet::netns::with_prefix(&prefix),
        Vec::<String>::new(),
        "namespaces left behind"
    );

    // Every NATed node reached the public node through its NAT.
    let public = 0;
    let nated: Vec<usize> = report
        .nodes
        .iter()
        .filter(|n| n.kind.is_nated())
        .map(|n| n.index)
        .collect();
    for &n in &nated {
        let pair = report.pair(public, n).expect("pair in report");
        assert!(pair.connected, "node {n} never reached node 0: {pair:?}");
        assert_eq!(pair.path, Some(PathKind::Direct), "node {n} to node 0");
    }
    // Every NATed node reaches every other, directly or relayed.
    for (i, &a) in nated.iter().enumerate() {
        for &b in &nated[i + 1..] {
            let pair = report.pair(a, b).expect("pair in report");
            assert!(pair.connected, "nodes {a} and {b} not connected: {pair:?}");
        }
    }
    let of_kind = |kind: NodeKind| -> Vec<usize> {
        report
            .nodes
            .iter()
            .filter(|n| n.kind == kind)
            .map(|n| n.index)
            .collect()
    };
    let restricted = of_kind(NodeKind::PortRestricted);
    let symmetric = of_kind(NodeKind::Symmetric);
    // The two port-restricted nodes punched a direct connection.
    let pair = report.pair(restricted[0], restricted[1]).expect("pair");
    assert_eq!(
        (pair.path, pair.via),
        (Some(PathKind::Direct), Some(PairVia::HolePunched)),
        "port-restricted pair: {pair:?}"
    );
    // A symmetric NAT gives each destination a new port: its NATed peers stay relayed.
    for &r in &restricted {
        let pair = report.pair(r, symmetric[0]).expect("pair");
        assert_eq!(
            pair.path,
            Some(PathKind::Relayed),
            "symmetric to port-restricted: {pair:?}"
        );
    }
}
