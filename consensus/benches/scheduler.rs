//! Placements per second by one coordinator: `plan` over a queue of 1,000 tasks on a
//! cluster of 5 members (the target cluster size) with room for all of them, the cost of
//! applying the resulting assignments to the replicated state, and the whole path through a
//! five-member Raft group (plan, propose, replicate, commit, apply), each member's writes
//! acknowledged at once: the cost of Raft and the state, without the disk (the node's
//! storage task does the writes, off the path measured here).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use fogmesh_consensus::capacity::NodeCapacity;
use fogmesh_consensus::group::{founding_storage, raft_logger, ClusterNode, Output, LAN_TIMING};
use fogmesh_consensus::raft::eraftpb::Message;
use fogmesh_consensus::scheduler;
use fogmesh_consensus::state::{ClusterState, Command, NodeId};
use fogmesh_consensus::task::{Priority, Requirements, TaskId, TaskSpec};

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

/// A five-member group, every member holding the cluster above (members joined, 1,000
/// tasks queued), its leader elected.
struct Group {
    nodes: BTreeMap<u64, ClusterNode>,
    leader: u64,
}

/// A member's output: its writes acknowledged at once (and what that releases).
fn settled(node: &mut ClusterNode, mut out: Output) -> Vec<Message> {
    let mut messages = std::mem::take(&mut out.messages);
    while let Some(last) = out.persist.last().map(|p| p.number) {
        out = node.on_persisted(last);
        messages.append(&mut out.messages);
    }
    messages
}

fn deliver(nodes: &mut BTreeMap<u64, ClusterNode>, mut wire: VecDeque<Message>) {
    while let Some(message) = wire.pop_front() {
        if let Some(node) = nodes.get_mut(&message.to) {
            if let Ok(out) = node.step(message) {
                wire.extend(settled(node, out));
            }
        }
    }
}

fn round(nodes: &mut BTreeMap<u64, ClusterNode>) {
    let mut wire = VecDeque::new();
    for node in nodes.values_mut() {
        let out = node.tick();
        wire.extend(settled(node, out));
    }
    deliver(nodes, wire);
}

fn elected_group() -> Group {
    let voters = [1, 2, 3, 4, 5];
    let mut nodes = BTreeMap::new();
    for id in voters {
        nodes.insert(
            id,
            ClusterNode::new(id, founding_storage(&voters), LAN_TIMING, &raft_logger()).unwrap(),
        );
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
        let node = nodes.get_mut(&leader).unwrap();
        let out = node.propose_all(chunk).unwrap();
        let messages = settled(node, out);
        deliver(&mut nodes, messages.into());
    }
    for _ in 0..3 {
        round(&mut nodes);
    }
    assert_eq!(nodes[&leader].state().queued().count(), TASKS as usize);
    Group { nodes, leader }
}

/// Placements per second through the coordinator: plan, propose, replicate to four
/// followers, commit, apply everywhere (writes acknowledged at once).
fn committed(c: &mut Criterion) {
    let mut group = c.benchmark_group("coordinator");
    group.sample_size(10);
    group.throughput(Throughput::Elements(u64::from(TASKS)));
    group.bench_function("commit 1000 placements, 5 members", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut g = elected_group();
                let started = Instant::now();
                loop {
                    let plan = g.nodes[&g.leader].plan(60_000, 1024);
                    if plan.is_empty() {
                        break;
                    }
                    let leader = g.nodes.get_mut(&g.leader).unwrap();
                    let out = leader.propose_all(&plan).unwrap();
                    let messages = settled(leader, out);
                    deliver(&mut g.nodes, messages.into());
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
