//! The Raft group on real disks (sled in temporary directories): a cluster whose members all
//! stop and start again from their disks comes back with the same state and goes on; a
//! damaged log entry is an error at load, not a shorter log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, VecDeque};

use fogmesh_consensus::capacity::NodeCapacity;
use fogmesh_consensus::disk::{DiskError, RaftDisk};
use fogmesh_consensus::group::{raft_logger, ClusterNode, GroupError, LAN_TIMING};
use fogmesh_consensus::state::{ClusterState, Command, NodeId};
use fogmesh_store::{Store, StoreOptions};
use raft::eraftpb::Message;

const VOTERS: [u64; 3] = [1, 2, 3];
const CLUSTER: &str = "cluster-a";

fn open(id: u64, dir: &std::path::Path) -> ClusterNode {
    let store = Store::open(dir, &StoreOptions::default()).unwrap();
    let disk = RaftDisk::open(&store, CLUSTER).unwrap();
    ClusterNode::open(id, disk, &VOTERS, LAN_TIMING, &raft_logger()).unwrap()
}

/// Delivers every message at once, in order, until nothing is left.
fn settle(nodes: &mut BTreeMap<u64, ClusterNode>, mut wire: VecDeque<Message>) {
    while let Some(message) = wire.pop_front() {
        if let Some(node) = nodes.get_mut(&message.to) {
            if let Ok(out) = node.step(message) {
                wire.extend(out.messages);
            }
        }
    }
}

/// Ticks everyone until a leader emerges (at most 100 ticks).
fn elect(nodes: &mut BTreeMap<u64, ClusterNode>) -> u64 {
    for _ in 0..100 {
        let mut wire = VecDeque::new();
        for node in nodes.values_mut() {
            wire.extend(node.tick().messages);
        }
        settle(nodes, wire);
        if let Some(leader) = nodes.values().find(|n| n.is_leader()) {
            return leader.id();
        }
    }
    panic!("no leader after 100 ticks");
}

fn propose(nodes: &mut BTreeMap<u64, ClusterNode>, leader: u64, command: Command) {
    let out = nodes.get_mut(&leader).unwrap().propose(&command).unwrap();
    settle(nodes, out.messages.into());
    // One more round of heartbeats carries the new commit index to the followers.
    for _ in 0..2 {
        let mut wire = VecDeque::new();
        for node in nodes.values_mut() {
            wire.extend(node.tick().messages);
        }
        settle(nodes, wire);
    }
}

fn join(n: u8) -> Command {
    Command::Join {
        node: NodeId(vec![n]),
        capacity: NodeCapacity {
            cores: 2,
            cpu_pct: 100,
            memory_mb: 512,
            max_tasks: 1,
            gpu: false,
            battery: None,
            score_milli: 100,
        },
        at_ms: u64::from(n),
    }
}

#[test]
fn a_cluster_restarted_from_its_disks_has_its_state_back_and_goes_on() {
    let dirs: Vec<tempfile::TempDir> = VOTERS
        .iter()
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let mut nodes: BTreeMap<u64, ClusterNode> = VOTERS
        .iter()
        .zip(&dirs)
        .map(|(id, dir)| (*id, open(*id, dir.path())))
        .collect();
    let leader = elect(&mut nodes);
    for n in 1..=3 {
        propose(&mut nodes, leader, join(n));
    }
    let before: ClusterState = nodes[&leader].state().clone();
    assert_eq!(before.members().len(), 3);
    for node in nodes.values() {
        assert_eq!(node.state(), &before, "member {} caught up", node.id());
    }
    let term_before = nodes[&leader].term();

    // Everyone stops (the stores close with the nodes) and starts again from disk.
    drop(nodes);
    let mut nodes: BTreeMap<u64, ClusterNode> = VOTERS
        .iter()
        .zip(&dirs)
        .map(|(id, dir)| (*id, open(*id, dir.path())))
        .collect();
    assert!(
        nodes.values().all(|n| n.term() >= term_before),
        "terms kept"
    );
    let leader = elect(&mut nodes);
    propose(&mut nodes, leader, join(4));
    for node in nodes.values() {
        let state = node.state();
        assert_eq!(state.members().len(), 4, "member {}", node.id());
        for member in before.members().keys() {
            assert!(
                state.members().contains_key(member),
                "member {} lost a join",
                node.id()
            );
        }
    }
}

#[test]
fn a_damaged_log_entry_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut nodes: BTreeMap<u64, ClusterNode> = BTreeMap::new();
        nodes.insert(1, {
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            let disk = RaftDisk::open(&store, CLUSTER).unwrap();
            ClusterNode::open(1, disk, &[1], LAN_TIMING, &raft_logger()).unwrap()
        });
        let leader = elect(&mut nodes);
        propose(&mut nodes, leader, join(1));
    }
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let log = store
        .ordered_table::<serde_bytes::ByteBuf>("raft_log")
        .unwrap();
    let scope = fogmesh_store::Scope::new(CLUSTER).unwrap();
    let (last, _) = log.last(&scope).unwrap().unwrap();
    log.put(&scope, last, &serde_bytes::ByteBuf::from(vec![0xff; 7]))
        .unwrap();
    let disk = RaftDisk::open(&store, CLUSTER).unwrap();
    match ClusterNode::open(1, disk, &[1], LAN_TIMING, &raft_logger()) {
        Err(GroupError::Load(DiskError::Damaged { index, .. })) => assert_eq!(index, last),
        other => panic!("expected a damaged-entry error, got {other:?}"),
    }
}
