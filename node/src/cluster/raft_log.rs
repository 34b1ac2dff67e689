//! The cluster's Raft log and hard state in the store (`fogmesh_consensus::log` says what is
//! stored; this says where):
//!
//! - ordered table `raft_log`: scope = the cluster's id, index = the entry's index;
//! - table `raft_state`: key = the cluster's id, value = term, vote, commit, configuration.
//!
//! The capability turns each of the group's [`PersistRequest`]s into a [`Batch`]
//! ([`RaftTables::write`]) that the storage task writes (durably when raft must have it on
//! disk before the messages that depend on it leave); only [`RaftTables::load`] reads, once,
//! at start-up.

use fogmesh_consensus::group::PersistRequest;
use fogmesh_consensus::log::{self, DiskError, StoredEntry, StoredState};
use fogmesh_consensus::raft::storage::MemStorage;
use fogmesh_store::{Batch, OrderedTable, Scope, Store, StoreError, Table};

/// See the module docs.
#[derive(Clone)]
pub struct RaftTables {
    log: OrderedTable<StoredEntry>,
    state: Table<StoredState>,
}

impl std::fmt::Debug for RaftTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftTables").finish_non_exhaustive()
    }
}

impl RaftTables {
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        Ok(Self {
            log: store.ordered_table("raft_log")?,
            state: store.table("raft_state")?,
        })
    }

    /// Adds `request` to `batch`: its entries (replacing whatever suffix they overwrite),
    /// the hard state and the configuration.
    pub fn write(
        &self,
        cluster: &str,
        request: &PersistRequest,
        batch: &mut Batch,
    ) -> Result<(), DiskError> {
        let scope = scope(cluster)?;
        let entries = log::stored_entries(request)?;
        if let Some((first, _)) = entries.first() {
            batch.remove_range(&self.log, &scope, *first..);
        }
        for (index, entry) in &entries {
            batch
                .put_ordered(&self.log, &scope, *index, entry)
                .map_err(store_error)?;
        }
        batch
            .put(&self.state, cluster, &log::stored_state(request))
            .map_err(store_error)
    }

    /// Adds removing the cluster's log and state to `batch` (the member left for good).
    pub fn destroy(&self, cluster: &str, batch: &mut Batch) {
        if let Ok(scope) = scope(cluster) {
            batch.remove_range(&self.log, &scope, 0..);
        }
        batch.remove(&self.state, cluster);
    }

    /// The group's storage as the disk left it (start-up only: it reads the disk). A group
    /// never stored starts with `founding_voters`.
    pub fn load(&self, cluster: &str, founding_voters: &[u64]) -> Result<MemStorage, DiskError> {
        let scope = scope(cluster)?;
        let state = self.state.get(cluster).map_err(store_error)?;
        let log = self
            .log
            .range(&scope, ..)
            .map(|item| item.map_err(|e| e.to_string()));
        log::restore(state, founding_voters, log)
    }
}

fn scope(cluster: &str) -> Result<Scope, DiskError> {
    Scope::new(cluster.as_bytes()).map_err(store_error)
}

fn store_error(error: StoreError) -> DiskError {
    DiskError::Read(error.to_string())
}

#[cfg(test)]
mod tests {
    //! The group on real disks (sled in temporary directories), every write going through
    //! the tables as the capability does it.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::{BTreeMap, VecDeque};

    use fogmesh_consensus::capacity::NodeCapacity;
    use fogmesh_consensus::group::{raft_logger, ClusterNode, GroupError, Output, LAN_TIMING};
    use fogmesh_consensus::raft::eraftpb::Message;
    use fogmesh_consensus::state::{ClusterState, Command, NodeId};
    use fogmesh_store::StoreOptions;

    use super::*;

    const VOTERS: [u64; 3] = [1, 2, 3];
    const CLUSTER: &str = "cluster-a";

    struct Member {
        node: ClusterNode,
        store: Store,
        tables: RaftTables,
    }

    impl Member {
        fn open(id: u64, dir: &std::path::Path, voters: &[u64]) -> Result<Self, GroupError> {
            let store = Store::open(dir, &StoreOptions::default()).unwrap();
            let tables = RaftTables::open(&store).unwrap();
            let storage = tables.load(CLUSTER, voters)?;
            let node = ClusterNode::new(id, storage, LAN_TIMING, &raft_logger())?;
            let member = Member {
                node,
                store,
                tables,
            };
            let initial = member.node.initial_request();
            member.store(&initial);
            Ok(member)
        }

        fn store(&self, request: &PersistRequest) {
            let mut batch = Batch::new();
            self.tables.write(CLUSTER, request, &mut batch).unwrap();
            self.store.apply_durable(batch).unwrap();
        }

        /// Writes what the output asks (synchronously, as the storage task would) until
        /// nothing more is asked; the messages released on the way.
        fn settle(&mut self, mut output: Output) -> Vec<Message> {
            let mut messages = Vec::new();
            loop {
                messages.append(&mut output.messages);
                let Some(last) = output.persist.last().map(|r| r.number) else {
                    return messages;
                };
                for request in &output.persist {
                    self.store(request);
                }
                output = self.node.on_persisted(last);
            }
        }
    }

    fn deliver(nodes: &mut BTreeMap<u64, Member>, mut wire: VecDeque<Message>) {
        while let Some(message) = wire.pop_front() {
            if let Some(member) = nodes.get_mut(&message.to) {
                if let Ok(out) = member.node.step(message) {
                    wire.extend(member.settle(out));
                }
            }
        }
    }

    fn tick_all(nodes: &mut BTreeMap<u64, Member>) {
        let mut wire = VecDeque::new();
        for member in nodes.values_mut() {
            let out = member.node.tick();
            wire.extend(member.settle(out));
        }
        deliver(nodes, wire);
    }

    fn elect(nodes: &mut BTreeMap<u64, Member>) -> u64 {
        for _ in 0..100 {
            tick_all(nodes);
            if let Some(leader) = nodes.values().find(|m| m.node.is_leader()) {
                return leader.node.id();
            }
        }
        panic!("no leader after 100 ticks");
    }

    fn propose(nodes: &mut BTreeMap<u64, Member>, leader: u64, command: Command) {
        let member = nodes.get_mut(&leader).unwrap();
        let out = member.node.propose(&command).unwrap();
        let wire = member.settle(out);
        deliver(nodes, wire.into());
        // Heartbeats carry the new commit index to the followers.
        for _ in 0..2 {
            tick_all(nodes);
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

    fn open_all(dirs: &[tempfile::TempDir]) -> BTreeMap<u64, Member> {
        VOTERS
            .iter()
            .zip(dirs)
            .map(|(id, dir)| (*id, Member::open(*id, dir.path(), &VOTERS).unwrap()))
            .collect()
    }

    #[test]
    fn a_cluster_restarted_from_its_disks_has_its_state_back_and_goes_on() {
        let dirs: Vec<tempfile::TempDir> = VOTERS
            .iter()
            .map(|_| tempfile::tempdir().unwrap())
            .collect();
        let mut nodes = open_all(&dirs);
        let leader = elect(&mut nodes);
        for n in 1..=3 {
            propose(&mut nodes, leader, join(n));
        }
        let before: ClusterState = nodes[&leader].node.state().clone();
        assert_eq!(before.members().len(), 3);
        for member in nodes.values() {
            assert_eq!(member.node.state(), &before, "member {}", member.node.id());
        }
        let term_before = nodes[&leader].node.term();

        drop(nodes);
        let mut nodes = open_all(&dirs);
        assert!(nodes.values().all(|m| m.node.term() >= term_before));
        let leader = elect(&mut nodes);
        propose(&mut nodes, leader, join(4));
        for member in nodes.values() {
            let state = member.node.state();
            assert_eq!(state.members().len(), 4, "member {}", member.node.id());
            for node in before.members().keys() {
                assert!(state.members().contains_key(node));
            }
        }
    }

    fn propose_change(
        nodes: &mut BTreeMap<u64, Member>,
        change: fogmesh_consensus::group::MemberChange,
        id: u64,
        command: &Command,
    ) {
        let leader = nodes.get_mut(&1).unwrap();
        let out = leader.node.propose_change(change, id, command).unwrap();
        let wire = leader.settle(out);
        deliver(nodes, wire.into());
        for _ in 0..3 {
            tick_all(nodes);
        }
    }

    /// A founder alone, then members joining one by one from empty disks (a voter and a
    /// learner), then removals: raft's configuration and the cluster's member table move
    /// together, and a restarted joiner comes back with both.
    #[test]
    fn members_join_from_empty_disks_and_leave_with_the_member_table() {
        use fogmesh_consensus::group::MemberChange;
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut nodes = BTreeMap::new();
        nodes.insert(1, Member::open(1, dirs[0].path(), &[1]).unwrap());
        assert_eq!(elect(&mut nodes), 1);
        // The founder records itself as a change too: joiners learn the whole
        // configuration from the log, since they never saw the founding one.
        propose_change(&mut nodes, MemberChange::AddVoter, 1, &join(1));
        for (id, change) in [(2, MemberChange::AddVoter), (3, MemberChange::AddLearner)] {
            let member = Member::open(id, dirs[id as usize - 1].path(), &[]).unwrap();
            nodes.insert(id, member);
            propose_change(&mut nodes, change, id, &join(id as u8));
            assert!(!nodes[&1].node.change_pending());
        }
        for member in nodes.values() {
            let conf = member.node.configuration();
            assert_eq!(conf.voters, vec![1, 2], "member {}", member.node.id());
            assert_eq!(conf.learners, vec![3], "member {}", member.node.id());
            assert_eq!(member.node.state().members().len(), 3);
        }
        // The learner restarts from its disk and still knows the group.
        drop(nodes.remove(&3));
        let back = Member::open(3, dirs[2].path(), &[]).unwrap();
        let mut ids = back.node.member_ids();
        ids.sort_unstable();
        assert_eq!(ids, vec![1, 2, 3]);
        nodes.insert(3, back);
        // The learner leaves; until the voter acknowledges, no second change may start.
        let leave = |n: u8| Command::Leave {
            node: NodeId(vec![n]),
        };
        let leader = nodes.get_mut(&1).unwrap();
        let out = leader
            .node
            .propose_change(MemberChange::Remove, 3, &leave(3))
            .unwrap();
        assert!(leader.node.change_pending());
        assert!(matches!(
            leader
                .node
                .propose_change(MemberChange::AddVoter, 9, &join(9)),
            Err(GroupError::ChangePending)
        ));
        let wire = leader.settle(out);
        deliver(&mut nodes, wire.into());
        for _ in 0..3 {
            tick_all(&mut nodes);
        }
        // Then the voter: gone from raft and from the member table.
        propose_change(&mut nodes, MemberChange::Remove, 2, &leave(2));
        let conf = nodes[&1].node.configuration();
        assert_eq!((conf.voters, conf.learners), (vec![1], vec![]));
        assert_eq!(nodes[&1].node.state().members().len(), 1);
    }

    #[test]
    fn a_damaged_log_entry_is_refused_at_load_and_a_destroyed_group_starts_fresh() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut nodes = BTreeMap::new();
            nodes.insert(1, Member::open(1, dir.path(), &[1]).unwrap());
            let leader = elect(&mut nodes);
            propose(&mut nodes, leader, join(1));
        }
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let raw = store
            .ordered_table::<serde_bytes::ByteBuf>("raft_log")
            .unwrap();
        let scope = Scope::new(CLUSTER).unwrap();
        let (last, _) = raw.last(&scope).unwrap().unwrap();
        raw.put(&scope, last, &serde_bytes::ByteBuf::from(vec![0xff; 7]))
            .unwrap();
        let tables = RaftTables::open(&store).unwrap();
        match tables.load(CLUSTER, &[1]) {
            Err(DiskError::Damaged { index, .. }) => assert_eq!(index, last),
            other => panic!("expected a damaged entry, got {:?}", other.map(|_| ())),
        }
        let mut batch = Batch::new();
        tables.destroy(CLUSTER, &mut batch);
        store.apply_durable(batch).unwrap();
        let fresh = tables.load(CLUSTER, &[5]).unwrap();
        let node = ClusterNode::new(5, fresh, LAN_TIMING, &raft_logger()).unwrap();
        assert_eq!(node.configuration().voters, vec![5]);
        assert_eq!(node.term(), 0);
        assert!(node.state().members().is_empty());
    }
}
