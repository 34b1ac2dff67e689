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

/// A founder alone, then members joining one by one from empty disks (a voter and a
/// learner), then a removal: raft's configuration and the cluster's member table move
/// together, and a restarted joiner comes back with both.
#[test]
fn members_join_from_empty_disks_and_leave_with_the_member_table() {
    use fogmesh_consensus::group::MemberChange;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let open_as = |id: u64, dir: &std::path::Path, founders: &[u64]| {
        let store = Store::open(dir, &StoreOptions::default()).unwrap();
        let disk = RaftDisk::open(&store, CLUSTER).unwrap();
        ClusterNode::open(id, disk, founders, LAN_TIMING, &raft_logger()).unwrap()
    };
    let mut nodes = BTreeMap::new();
    nodes.insert(1, open_as(1, dirs[0].path(), &[1]));
    assert_eq!(elect(&mut nodes), 1);
    // The founder records itself as a change too: joiners learn the whole configuration
    // from the log, since they never saw the founding one.
    let out = nodes
        .get_mut(&1)
        .unwrap()
        .propose_change(MemberChange::AddVoter, 1, &join(1))
        .unwrap();
    settle(&mut nodes, out.messages.into());
    for (id, change) in [(2, MemberChange::AddVoter), (3, MemberChange::AddLearner)] {
        nodes.insert(id, open_as(id, dirs[id as usize - 1].path(), &[]));
        let out = nodes
            .get_mut(&1)
            .unwrap()
            .propose_change(change, id, &join(id as u8))
            .unwrap();
        settle(&mut nodes, out.messages.into());
        for _ in 0..3 {
            let mut wire = VecDeque::new();
            for node in nodes.values_mut() {
                wire.extend(node.tick().messages);
            }
            settle(&mut nodes, wire);
        }
        assert!(!nodes[&1].change_pending());
    }
    for node in nodes.values() {
        let conf = node.configuration();
        assert_eq!(conf.voters, vec![1, 2], "member {}", node.id());
        assert_eq!(conf.learners, vec![3], "member {}", node.id());
        assert_eq!(node.state().members().len(), 3, "member {}", node.id());
    }
    // The learner restarts from its disk and still knows the group.
    drop(nodes.remove(&3));
    let back = open_as(3, dirs[2].path(), &[]);
    let mut ids = back.member_ids();
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2, 3]);
    nodes.insert(3, back);
    let settle_all = |nodes: &mut BTreeMap<u64, ClusterNode>, out: Vec<Message>| {
        settle(nodes, out.into());
        for _ in 0..3 {
            let mut wire = VecDeque::new();
            for node in nodes.values_mut() {
                wire.extend(node.tick().messages);
            }
            settle(nodes, wire);
        }
    };
    // The learner 3 leaves; until voter 2 acknowledges, no second change may start.
    let out = nodes
        .get_mut(&1)
        .unwrap()
        .propose_change(
            MemberChange::Remove,
            3,
            &Command::Leave {
                node: NodeId(vec![3]),
            },
        )
        .unwrap();
    let leader = nodes.get_mut(&1).unwrap();
    assert!(leader.change_pending());
    assert!(matches!(
        leader.propose_change(MemberChange::AddVoter, 9, &join(9)),
        Err(GroupError::ChangePending)
    ));
    settle_all(&mut nodes, out.messages);
    // Then the voter 2: gone from raft and from the member table everywhere.
    let out = nodes
        .get_mut(&1)
        .unwrap()
        .propose_change(
            MemberChange::Remove,
            2,
            &Command::Leave {
                node: NodeId(vec![2]),
            },
        )
        .unwrap();
    settle_all(&mut nodes, out.messages);
    let conf = nodes[&1].configuration();
    assert_eq!((conf.voters, conf.learners), (vec![1], vec![]));
    assert_eq!(nodes[&1].state().members().len(), 1);
}
