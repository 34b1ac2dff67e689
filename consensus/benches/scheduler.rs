//! Placements per second by one coordinator: `plan` over a queue of 1,000 tasks on a
//! cluster of 5 members (the target cluster size) with room for all of them, and the cost of
//! applying the resulting assignments to the replicated state.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use fogmesh_consensus::capacity::NodeCapacity;
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

criterion_group!(benches, bench);
criterion_main!(benches);
