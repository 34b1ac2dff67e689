#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::capacity::Battery;
use crate::scheduler;
use crate::task::{Priority, Requirements};

fn node(n: u8) -> NodeId {
    NodeId(vec![n])
}

fn capacity(cores: u32, memory_mb: u32, max_tasks: u32) -> NodeCapacity {
    NodeCapacity {
        cores,
        cpu_pct: 100,
        memory_mb,
        max_tasks,
        gpu: false,
        battery: None,
        score_milli: 500,
    }
}

fn spec(id: u8) -> TaskSpec {
    TaskSpec {
        id: TaskId([id; 16]),
        priority: Priority::Normal,
        requirements: Requirements {
            cpu_millicores: 500,
            memory_mb: 64,
            duration_ms: 10_000,
            gpu: false,
        },
        module: [0; 32],
        input: None,
        submitter: vec![9],
        submitted_at_ms: 0,
    }
}

fn with_member_and_task() -> ClusterState {
    let mut state = ClusterState::default();
    for n in [1, 2] {
        state
            .apply(Command::Join {
                node: node(n),
                capacity: capacity(4, 1024, 4),
                at_ms: 0,
            })
            .unwrap();
    }
    state.apply(Command::Submit { spec: spec(1) }).unwrap();
    state
}

fn assign(state: &mut ClusterState, n: u8, term: u64) -> Result<Applied, Refusal> {
    state.apply(Command::Assign {
        task: TaskId([1; 16]),
        node: node(n),
        term,
        at_ms: 0,
    })
}

#[test]
fn a_report_about_a_superseded_assignment_is_refused() {
    let mut state = with_member_and_task();
    assign(&mut state, 1, 3).unwrap();
    // Node 1 is lost; the task goes back to the queue and a later coordinator places it on 2.
    let left = state.apply(Command::Leave { node: node(1) }).unwrap();
    assert_eq!(
        left,
        Applied::MemberLeft {
            requeued: vec![TaskId([1; 16])]
        }
    );
    assign(&mut state, 2, 4).unwrap();
    // Node 1's late report, under its old term, changes nothing.
    let late = state.apply(Command::Finished {
        task: TaskId([1; 16]),
        node: node(1),
        term: 3,
        result: [7; 32],
        at_ms: 5,
    });
    assert_eq!(late, Err(Refusal::StaleAssignment));
    // And an assignment from the old coordinator's term is refused too.
    state.apply(Command::Submit { spec: spec(2) }).unwrap();
    let stale = state.apply(Command::Assign {
        task: TaskId([2; 16]),
        node: node(2),
        term: 3,
        at_ms: 0,
    });
    assert_eq!(stale, Err(Refusal::StaleTerm));
}

#[test]
fn failures_retry_up_to_the_limit_then_fail_for_good() {
    let mut state = with_member_and_task();
    for attempt in 1..=MAX_ATTEMPTS {
        assign(&mut state, 1, 1).unwrap();
        let failed = state
            .apply(Command::Failed {
                task: TaskId([1; 16]),
                node: node(1),
                term: 1,
                reason: "trapped".into(),
            })
            .unwrap();
        assert_eq!(
            failed,
            Applied::Failed {
                retry: attempt < MAX_ATTEMPTS
            }
        );
    }
    assert!(matches!(
        state.task(&TaskId([1; 16])).unwrap().state,
        TaskState::Failed { .. }
    ));
}

#[test]
fn a_result_once_reported_stays() {
    let mut state = with_member_and_task();
    assign(&mut state, 1, 1).unwrap();
    let finished = |result| Command::Finished {
        task: TaskId([1; 16]),
        node: node(1),
        term: 1,
        result,
        at_ms: 9,
    };
    assert_eq!(state.apply(finished([5; 32])), Ok(Applied::Finished));
    assert_eq!(state.apply(finished([5; 32])), Ok(Applied::Unchanged));
    assert_eq!(state.apply(finished([6; 32])), Err(Refusal::AlreadyEnded));
    assert_eq!(
        state.apply(Command::Cancel {
            task: TaskId([1; 16])
        }),
        Err(Refusal::AlreadyEnded)
    );
    state.apply(Command::Leave { node: node(1) }).unwrap();
    assert!(matches!(
        state.task(&TaskId([1; 16])).unwrap().state,
        TaskState::Done { result, .. } if result == [5; 32]
    ));
}

#[test]
fn duplicates_and_strangers_are_refused() {
    let mut state = with_member_and_task();
    assert_eq!(
        state.apply(Command::Submit { spec: spec(1) }),
        Err(Refusal::DuplicateTask)
    );
    assert_eq!(assign(&mut state, 7, 1), Err(Refusal::NotMember));
    assert_eq!(
        state.apply(Command::Report {
            node: node(7),
            capacity: capacity(1, 1, 1)
        }),
        Err(Refusal::NotMember)
    );
}

#[test]
fn a_worker_refuses_work_from_an_older_term() {
    let mut gate = FencingGate::default();
    assert_eq!(gate.admit(2), Ok(()));
    assert_eq!(gate.admit(5), Ok(()));
    assert_eq!(gate.admit(5), Ok(()));
    assert_eq!(gate.admit(4), Err(5));
    assert_eq!(gate.newest(), 5);
}

/// A random member: sometimes a phone on battery, sometimes with a GPU.
fn random_capacity(rng: &mut StdRng) -> NodeCapacity {
    NodeCapacity {
        cores: rng.gen_range(1..=8),
        cpu_pct: [15, 20, 30, 35, 100][rng.gen_range(0..5)],
        memory_mb: rng.gen_range(128..=4096),
        max_tasks: rng.gen_range(1..=4),
        gpu: rng.gen_bool(0.2),
        battery: rng.gen_bool(0.5).then(|| Battery {
            pct: rng.gen_range(0..=100),
            charging: rng.gen_bool(0.5),
        }),
        score_milli: rng.gen_range(0..=2000),
    }
}

fn random_spec(rng: &mut StdRng, id: u32, now: u64) -> TaskSpec {
    let mut bytes = [0u8; 16];
    bytes[..4].copy_from_slice(&id.to_be_bytes());
    TaskSpec {
        id: TaskId(bytes),
        priority: [
            Priority::Low,
            Priority::Normal,
            Priority::High,
            Priority::Critical,
        ][rng.gen_range(0..4)],
        requirements: Requirements {
            cpu_millicores: rng.gen_range(100..=3000),
            memory_mb: rng.gen_range(16..=2048),
            duration_ms: rng.gen_range(1_000..=600_000),
            gpu: rng.gen_bool(0.1),
        },
        module: [0; 32],
        input: None,
        submitter: vec![0],
        submitted_at_ms: now,
    }
}

/// Checks the plan against the state it was made from: nobody pushed over its limits, and
/// no priority inversion (a waiting task ranked above a placed one would not have fit on
/// that node even without it).
fn check_plan(state: &ClusterState, plan: &[scheduler::Placement], now: u64, seed: u64) {
    let mut loads = state.loads();
    for p in plan {
        let task = state.task(&p.task).unwrap();
        let cap = state.members()[&p.node].capacity;
        let load = loads.get_mut(&p.node).unwrap();
        assert!(
            cap.fits(load, &task.spec.requirements),
            "seed {seed}: placement over limits"
        );
        load.add(&task.spec.requirements);
    }
    // The order the design asks for, computed here independently of the scheduler.
    let mut ranked: Vec<&TaskSpec> = state.queued().map(|t| &t.spec).collect();
    ranked.sort_by_key(|t| {
        (
            std::cmp::Reverse(t.effective_priority(now)),
            t.submitted_at_ms,
            t.id,
        )
    });
    let placed: std::collections::BTreeMap<TaskId, &NodeId> =
        plan.iter().map(|p| (p.task, &p.node)).collect();
    for (i, waiting) in ranked.iter().enumerate() {
        if placed.contains_key(&waiting.id) {
            continue;
        }
        for lower in &ranked[i + 1..] {
            let Some(node) = placed.get(&lower.id) else {
                continue;
            };
            let mut without = loads[*node];
            without.cpu_millicores -= lower.requirements.cpu_millicores;
            without.memory_mb -= lower.requirements.memory_mb;
            without.tasks -= 1;
            assert!(
                !state.members()[*node]
                    .capacity
                    .fits(&without, &waiting.requirements),
                "seed {seed}: a lower-ranked task took the place of a higher one"
            );
        }
    }
}

/// Many seeded runs of a cluster's life: members join, leave and change their limits; tasks
/// are submitted, placed by the scheduler under a coordinator whose term grows at each
/// failover, started, finished, failed, cancelled; workers send late reports under old
/// terms. After every command: no accepted task is gone, a result once reported stays,
/// every assignment is on a member, and nothing the scheduler places overloads a member.
#[test]
fn random_cluster_lives_keep_the_invariants() {
    // What the runs did, so a generator that stopped exercising something fails the test.
    let (mut placed, mut finished, mut stale, mut requeued) = (0, 0, 0, 0);
    for seed in 0..1500u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut state = ClusterState::default();
        let mut term = 1u64;
        let mut now = 0u64;
        let mut submitted: Vec<TaskId> = Vec::new();
        let mut results: std::collections::BTreeMap<TaskId, [u8; 32]> = Default::default();
        let mut next_id = 0u32;
        // Assignments as workers saw them, including superseded ones (for late reports).
        let mut seen: Vec<(TaskId, NodeId, u64)> = Vec::new();
        for _ in 0..120 {
            now += rng.gen_range(0..5_000);
            let command = match rng.gen_range(0..100) {
                0..=9 => Command::Join {
                    node: node(rng.gen_range(0..8)),
                    capacity: random_capacity(&mut rng),
                    at_ms: now,
                },
                10..=13 => Command::Leave {
                    node: node(rng.gen_range(0..8)),
                },
                14..=19 => Command::Report {
                    node: node(rng.gen_range(0..8)),
                    capacity: random_capacity(&mut rng),
                },
                20..=39 => {
                    next_id += 1;
                    Command::Submit {
                        spec: random_spec(&mut rng, next_id, now),
                    }
                }
                40..=44 => {
                    term += 1; // a failover
                    continue;
                }
                45..=59 => {
                    let plan = scheduler::plan(&state, now, 8);
                    check_plan(&state, &plan, now, seed);
                    for p in plan {
                        let applied = state.apply(Command::Assign {
                            task: p.task,
                            node: p.node.clone(),
                            term,
                            at_ms: now,
                        });
                        assert_eq!(applied, Ok(Applied::Assigned), "seed {seed}");
                        seen.push((p.task, p.node, term));
                        placed += 1;
                    }
                    continue;
                }
                60..=79 if !seen.is_empty() => {
                    let (task, node, t) = seen[rng.gen_range(0..seen.len())].clone();
                    match rng.gen_range(0..3) {
                        0 => Command::Started {
                            task,
                            node,
                            term: t,
                            at_ms: now,
                        },
                        1 => Command::Finished {
                            task,
                            node,
                            term: t,
                            result: [rng.gen_range(0..3); 32],
                            at_ms: now,
                        },
                        _ => Command::Failed {
                            task,
                            node,
                            term: t,
                            reason: "trap".into(),
                        },
                    }
                }
                80..=82 if !submitted.is_empty() => Command::Cancel {
                    task: submitted[rng.gen_range(0..submitted.len())],
                },
                _ => continue,
            };
            let before = state.clone();
            let applied = state.apply(command.clone());
            if applied.is_err() {
                assert_eq!(
                    state, before,
                    "seed {seed}: a refused command changed the state"
                );
            }
            match &applied {
                Ok(Applied::Finished) => finished += 1,
                Ok(Applied::MemberLeft { requeued: r }) => requeued += r.len(),
                Err(Refusal::StaleAssignment) => stale += 1,
                _ => {}
            }
            if let (Ok(Applied::Submitted), Command::Submit { spec }) = (&applied, &command) {
                submitted.push(spec.id);
            }
            for id in &submitted {
                let task = state
                    .task(id)
                    .unwrap_or_else(|| panic!("seed {seed}: task lost"));
                if let TaskState::Done { result, .. } = task.state {
                    let kept = *results.entry(*id).or_insert(result);
                    assert_eq!(kept, result, "seed {seed}: a result changed");
                } else {
                    assert!(
                        !results.contains_key(id),
                        "seed {seed}: a reported result was lost"
                    );
                }
                if let Some((n, t)) = task.state.assignment() {
                    assert!(
                        state.members().contains_key(n),
                        "seed {seed}: task on a non-member"
                    );
                    assert!(t <= state.term(), "seed {seed}");
                }
            }
        }
    }
    assert!(
        placed > 10_000 && finished > 1_000 && stale > 1_000 && requeued > 100,
        "placed {placed}, finished {finished}, stale {stale}, requeued {requeued}"
    );
}

#[test]
fn an_assignment_beyond_a_members_room_is_refused() {
    let mut state = ClusterState::default();
    state
        .apply(Command::Join {
            node: node(1),
            capacity: capacity(4, 1024, 1),
            at_ms: 0,
        })
        .unwrap();
    state.apply(Command::Submit { spec: spec(1) }).unwrap();
    state.apply(Command::Submit { spec: spec(2) }).unwrap();
    assign(&mut state, 1, 1).unwrap();
    let second = state.apply(Command::Assign {
        task: TaskId([2; 16]),
        node: node(1),
        term: 1,
        at_ms: 0,
    });
    assert_eq!(second, Err(Refusal::NoRoom));
}

#[test]
fn a_task_whose_nodes_keep_leaving_fails_for_good() {
    let mut state = with_member_and_task();
    for round in 1..=MAX_ATTEMPTS {
        assign(&mut state, 1, 1).unwrap();
        state.apply(Command::Leave { node: node(1) }).unwrap();
        state
            .apply(Command::Join {
                node: node(1),
                capacity: capacity(4, 1024, 4),
                at_ms: 0,
            })
            .unwrap();
        let queued = matches!(
            state.task(&TaskId([1; 16])).unwrap().state,
            TaskState::Queued { .. }
        );
        assert_eq!(queued, round < MAX_ATTEMPTS, "round {round}");
    }
    assert!(matches!(
        state.task(&TaskId([1; 16])).unwrap().state,
        TaskState::Failed { .. }
    ));
}
