//! Placements per second by one coordinator: `plan` over a queue of 1,000 tasks on a
//! cluster of 5 members (the target cluster size) with room for all of them, the cost of
//! applying the resulting assignments to the replicated state, and the whole path through a
//! five-member Raft group on sled disks (plan, propose, replicate, commit, apply).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use fogmesh_consensus::capacity::NodeCapacity;
use fogmesh_consensus::disk::RaftDisk;
use fogmesh_consensus::group::{raft_logger, ClusterNode, LAN_TIMING};
use fogmesh_consensus::raft::eraftpb::Message;
use fogmesh_consensus::scheduler;
use fogmesh_consensus::state::{ClusterState, Command, NodeId};
use fogmesh_consensus::task::{Priority, Requirements, TaskId, TaskSpec};
use fogmesh_store::{Store, StoreOptions};

const TASKS: u32 = 1_000;

fn cluster() -> ClusterState {
    let mut state = ClusterState::default();
    for n in 0..5u8 {
        state
            .apply(Command::Join {
                node: NodeId(vec![n; 38]),
                capacity: NodeCapacity {
                    cores: 64,
                    cpu_pct: 100,
                    memory_mb: 1 << 20,
                    max_tasks: TASKS,
                    gpu: false,
                    battery: None,
                    score_milli: 500 + u32::from(n),
                },
                at_ms: 0,
            })
            .unwrap();
    }
    for i in 0..TASKS {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.to_be_bytes());
        state
            .apply(Command::Submit {
                spec: TaskSpec {
                    id: TaskId(id),
                    priority: [Priority::Low, Priority::Normal, Priority::High][i as usize % 3],
                    requirements: Requirements {
                        cpu_millicores: 100,
                        memory_mb: 64,
                        duration_ms: 10_000,
                        gpu: false,
                    },
                    module: [0; 32],
                    input: None,
                    submitter: vec![0; 38],
                    submitted_at_ms: u64::from(i),
                },
            })
            .unwrap();
    }
    state
}

fn bench(c: &mut Criterion) {
    let state = cluster();
    let mut group = c.benchmark_group("scheduler");
    group.throughput(Throughput::Elements(u64::from(TASKS)));
    group.bench_function("plan 1000 tasks on 5 members", |b| {
        b.iter(|| {
            let plan = scheduler::plan(&state, 60_000, usize::MAX);
            assert_eq!(plan.len(), TASKS as usize);
            plan
        })
    });
    let plan = scheduler::plan(&state, 60_000, usize::MAX);
    group.bench_function("apply 1000 assignments", |b| {
        b.iter_batched(
            || state.clone(),
            |mut state| {
                for p in &plan {
                    state
                        .apply(Command::Assign {
                            task: p.task,
                            node: p.node.clone(),
                            term: 1,
                            at_ms: 60_000,
                        })
                        .unwrap();
                }
                state
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// A five-member group on sled disks in temporary directories, every member holding the
/// cluster above (members joined, 1,000 tasks queued), its leader elected.
struct Group {
    _dirs: Vec<tempfile::TempDir>,
    nodes: BTreeMap<u64, ClusterNode>,
    leader: u64,
}

fn deliver(nodes: &mut BTreeMap<u64, ClusterNode>, mut wire: VecDeque<Message>) {
    while let Some(message) = wire.pop_front() {
        if let Some(node) = nodes.get_mut(&message.to) {
            if let Ok(out) = node.step(message) {
                wire.extend(out.messages);
            }
        }
    }
}

fn round(nodes: &mut BTreeMap<u64, ClusterNode>) {
    let mut wire = VecDeque::new();
    for node in nodes.values_mut() {
        wire.extend(node.tick().messages);
    }
    deliver(nodes, wire);
}

fn group_on_disks() -> Group {
    let voters = [1, 2, 3, 4, 5];
    let mut dirs = Vec::new();
    let mut nodes = BTreeMap::new();
    for id in voters {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let disk = RaftDisk::open(&store, "bench").unwrap();
        nodes.insert(
            id,
            ClusterNode::open(id, disk, &voters, LAN_TIMING, &raft_logger()).unwrap(),
        );
        dirs.push(dir);
    }
    let leader = loop {
        round(&mut nodes);
        if let Some(n) = nodes.values().find(|n| n.is_leader()) {
            break n.id();
        }
    };
    // The queue: the members and tasks of `cluster()`, proposed in one batch.
    let mut commands = Vec::new();
    let state = cluster();
    for (node, member) in state.members() {
        commands.push(Command::Join {
            node: node.clone(),
            capacity: member.capacity,
            at_ms: 0,
        });
    }
    for task in state.tasks().values() {
        commands.push(Command::Submit {
            spec: task.spec.clone(),
        });
    }
    for chunk in commands.chunks(256) {
        let out = nodes.get_mut(&leader).unwrap().propose_all(chunk).unwrap();
        deliver(&mut nodes, out.messages.into());
    }
    for _ in 0..3 {
        round(&mut nodes);
    }
    assert_eq!(nodes[&leader].state().queued().count(), TASKS as usize);
    Group {
        _dirs: dirs,
        nodes,
        leader,
    }
}

/// Placements per second through the coordinator: plan, propose in batches of 256 (one
/// flush each), replicate to four followers on their own disks, commit, apply everywhere.
fn committed(c: &mut Criterion) {
    let mut group = c.benchmark_group("coordinator");
    group.sample_size(10);
    group.throughput(Throughput::Elements(u64::from(TASKS)));
    group.bench_function("commit 1000 placements, 5 members on sled", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut g = group_on_disks();
                let started = Instant::now();
                loop {
                    let plan = g.nodes[&g.leader].plan(60_000, 1024);
                    if plan.is_empty() {
                        break;
                    }
                    let out = g
                        .nodes
                        .get_mut(&g.leader)
                        .unwrap()
                        .propose_all(&plan)
                        .unwrap();
                    deliver(&mut g.nodes, out.messages.into());
                    // Heartbeats carry the commit index to the followers.
                    round(&mut g.nodes);
                }
                round(&mut g.nodes);
                total += started.elapsed();
                for node in g.nodes.values() {
                    assert_eq!(node.state().queued().count(), 0);
                }
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, bench, committed);
criterion_main!(benches);
