//! Which queued task goes where: a pure function of the cluster state and the time.
//!
//! Order: highest effective priority first (the weight plus aging, [`TaskSpec::effective_priority`]),
//! then the longest waiting, then the task id (so every replica computes the same plan).
//! Placement: among the members the task fits on now — GPU if asked, no long task on a
//! battery that is not charging and low, within the member's CPU share, memory and task
//! count as its power policy allows ([`NodeCapacity::fits`]) — the best-scored member, then
//! the one with most CPU left, then the lowest id. Greedy: a task that fits nowhere waits,
//! and the plan goes on with smaller tasks behind it (no head-of-line blocking), so a big
//! task can wait while small ones run; aging does not reserve room for it (a known limit,
//! docs/clusters.md).

use std::collections::BTreeMap;

use crate::capacity::{Load, NodeCapacity};
use crate::state::{ClusterState, NodeId};
use crate::task::{TaskId, TaskSpec};

/// One placement the coordinator should propose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub task: TaskId,
    pub node: NodeId,
}

/// Why a queued task has no place, for `task status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// The cluster has no members.
    NoMembers,
    /// No member could run it even idle (too big, GPU, long task on low batteries).
    NoMemberCouldRun,
    /// Members could run it, but none has room now.
    Busy,
}

impl std::fmt::Display for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Waiting::NoMembers => "the cluster has no members",
            Waiting::NoMemberCouldRun => {
                "no member could run it: its requirements exceed every member's limits"
            }
            Waiting::Busy => "every member that could run it is busy",
        })
    }
}

/// The queued tasks in the order the scheduler considers them.
pub fn ranked(state: &ClusterState, now_ms: u64) -> Vec<&TaskSpec> {
    let mut queued: Vec<&TaskSpec> = state.queued().map(|t| &t.spec).collect();
    queued.sort_by(|a, b| {
        b.effective_priority(now_ms)
            .cmp(&a.effective_priority(now_ms))
            .then(a.submitted_at_ms.cmp(&b.submitted_at_ms))
            .then(a.id.cmp(&b.id))
    });
    queued
}

/// Places as many queued tasks as fit, at most `limit`.
pub fn plan(state: &ClusterState, now_ms: u64, limit: usize) -> Vec<Placement> {
    let mut loads = state.loads();
    let members: Vec<(&NodeId, &NodeCapacity)> = state
        .members()
        .iter()
        .map(|(id, m)| (id, &m.capacity))
        .collect();
    let mut placements = Vec::new();
    for spec in ranked(state, now_ms) {
        if placements.len() >= limit {
            break;
        }
        if let Some(node) = best_member(&members, &loads, spec) {
            if let Some(load) = loads.get_mut(node) {
                load.add(&spec.requirements);
            }
            placements.push(Placement {
                task: spec.id,
                node: node.clone(),
            });
        }
    }
    placements
}

fn best_member<'a>(
    members: &[(&'a NodeId, &NodeCapacity)],
    loads: &BTreeMap<NodeId, Load>,
    spec: &TaskSpec,
) -> Option<&'a NodeId> {
    let idle = Load::default();
    members
        .iter()
        .filter(|(id, cap)| cap.fits(loads.get(*id).unwrap_or(&idle), &spec.requirements))
        .max_by(|(a_id, a), (b_id, b)| {
            let free = |id: &NodeId, cap: &NodeCapacity| {
                let used = loads.get(id).map_or(0, |l| l.cpu_millicores);
                cap.cpu_budget_millicores().saturating_sub(used)
            };
            a.score_milli
                .cmp(&b.score_milli)
                .then(free(a_id, a).cmp(&free(b_id, b)))
                // Lower ids win ties: max_by keeps the last maximum, so compare reversed.
                .then(b_id.cmp(a_id))
        })
        .map(|(id, _)| *id)
}

/// Why a queued task waits; None if it would be placed on an idle member now.
pub fn waiting(state: &ClusterState, spec: &TaskSpec) -> Option<Waiting> {
    if state.members().is_empty() {
        return Some(Waiting::NoMembers);
    }
    if !state
        .members()
        .values()
        .any(|m| m.capacity.could_run(&spec.requirements))
    {
        return Some(Waiting::NoMemberCouldRun);
    }
    let loads = state.loads();
    let idle = Load::default();
    let fits_now = state.members().iter().any(|(id, m)| {
        m.capacity
            .fits(loads.get(id).unwrap_or(&idle), &spec.requirements)
    });
    (!fits_now).then_some(Waiting::Busy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity::Battery;
    use crate::state::Command;
    use crate::task::{Priority, Requirements};

    fn node(n: u8) -> NodeId {
        NodeId(vec![n])
    }

    fn capacity(score_milli: u32, cores: u32, memory_mb: u32) -> NodeCapacity {
        NodeCapacity {
            cores,
            cpu_pct: 100,
            memory_mb,
            max_tasks: 8,
            gpu: false,
            battery: None,
            score_milli,
        }
    }

    fn spec(id: u8, priority: Priority, cpu: u32, at: u64) -> TaskSpec {
        TaskSpec {
            id: TaskId([id; 16]),
            priority,
            requirements: Requirements {
                cpu_millicores: cpu,
                memory_mb: 64,
                duration_ms: 10_000,
                gpu: false,
            },
            module: [0; 32],
            input: None,
            submitter: vec![1],
            submitted_at_ms: at,
        }
    }

    fn cluster(members: &[(u8, NodeCapacity)], tasks: &[TaskSpec]) -> ClusterState {
        let mut state = ClusterState::default();
        for (n, cap) in members {
            state
                .apply(Command::Join {
                    node: node(*n),
                    capacity: *cap,
                    at_ms: 0,
                })
                .unwrap();
        }
        for t in tasks {
            state.apply(Command::Submit { spec: t.clone() }).unwrap();
        }
        state
    }

    #[test]
    fn the_most_urgent_task_goes_first_to_the_best_scored_member() {
        let state = cluster(
            &[(1, capacity(300, 1, 1024)), (2, capacity(900, 1, 1024))],
            &[
                spec(1, Priority::Low, 1000, 0),
                spec(2, Priority::Critical, 1000, 0),
            ],
        );
        let plan = plan(&state, 0, 10);
        assert_eq!(
            plan,
            vec![
                Placement {
                    task: TaskId([2; 16]),
                    node: node(2)
                },
                Placement {
                    task: TaskId([1; 16]),
                    node: node(1)
                },
            ]
        );
    }

    #[test]
    fn a_task_too_big_for_now_does_not_block_smaller_ones() {
        let state = cluster(
            &[(1, capacity(500, 2, 1024))],
            &[
                spec(1, Priority::Critical, 4000, 0),
                spec(2, Priority::Low, 500, 0),
            ],
        );
        let plan = plan(&state, 0, 10);
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].task, TaskId([2; 16]));
        let big = &state.task(&TaskId([1; 16])).unwrap().spec;
        assert_eq!(waiting(&state, big), Some(Waiting::NoMemberCouldRun));
    }

    #[test]
    fn a_long_task_avoids_a_draining_phone() {
        let mut phone = capacity(900, 8, 1024);
        phone.battery = Some(Battery {
            pct: 30,
            charging: false,
        });
        let mut long = spec(1, Priority::High, 500, 0);
        long.requirements.duration_ms = 10 * 60_000;
        let state = cluster(&[(1, phone), (2, capacity(100, 1, 1024))], &[long]);
        assert_eq!(plan(&state, 0, 10)[0].node, node(2));
    }

    #[test]
    fn waiting_says_why() {
        let t = spec(1, Priority::Normal, 500, 0);
        assert_eq!(
            waiting(&cluster(&[], std::slice::from_ref(&t)), &t),
            Some(Waiting::NoMembers)
        );
        let mut one_slot = capacity(500, 1, 1024);
        one_slot.max_tasks = 1;
        let mut state = cluster(
            &[(1, one_slot)],
            &[t.clone(), spec(2, Priority::Low, 500, 0)],
        );
        state
            .apply(Command::Assign {
                task: t.id,
                node: node(1),
                term: 1,
                at_ms: 0,
            })
            .unwrap();
        let other = state.task(&TaskId([2; 16])).unwrap().spec.clone();
        assert_eq!(waiting(&state, &other), Some(Waiting::Busy));
        assert!(plan(&state, 0, 10).is_empty());
    }
}
