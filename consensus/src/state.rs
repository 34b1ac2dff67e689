//! The cluster state every member replicates: who is in the cluster and what each offers,
//! and the task table. It changes only by [`Command`]s applied in the order the cluster's
//! log commits them, so every replica holds the same state.
//!
//! Fencing: every assignment carries the coordinator's term, and every report about a task
//! (started, finished, failed) names the assignment it is about by node and term. A report
//! about an assignment that is no longer current — the task was placed again after its node
//! was lost, by a later coordinator — is refused, so a task never runs under two terms at
//! once as far as the cluster is concerned, and a worker learns to stop it. Workers keep a
//! [`FencingGate`] and refuse assignments from terms older than the newest they have seen.
//!
//! Nothing accepted is dropped: a task leaves the table only by finishing, failing for good
//! (after [`MAX_ATTEMPTS`]) or being cancelled, and a finished task keeps its result hash.
//! A task on a member that leaves goes back to the queue.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::capacity::{Load, NodeCapacity};
use crate::task::{TaskId, TaskSpec};

/// Attempts a task gets before it fails for good.
pub const MAX_ATTEMPTS: u32 = 3;
/// Tasks waiting at most; a submission beyond is refused (the submitter keeps it and retries).
pub const MAX_QUEUED: usize = 10_000;

/// A member, by its PeerId bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub Vec<u8>);

/// Where a task is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    /// Waiting for a place (again, after `last_error`, if an attempt failed or was lost).
    Queued {
        last_error: Option<String>,
    },
    /// Placed on `node` by the coordinator of `term`; not yet started.
    Assigned {
        node: NodeId,
        term: u64,
        at_ms: u64,
    },
    Running {
        node: NodeId,
        term: u64,
        started_ms: u64,
    },
    /// Finished; the result is stored by its content hash.
    Done {
        node: NodeId,
        result: [u8; 32],
        finished_ms: u64,
    },
    /// Failed [`MAX_ATTEMPTS`] times.
    Failed {
        reason: String,
    },
    Cancelled,
}

impl TaskState {
    /// The node and term of the current assignment, if the task has one.
    pub fn assignment(&self) -> Option<(&NodeId, u64)> {
        match self {
            TaskState::Assigned { node, term, .. } | TaskState::Running { node, term, .. } => {
                Some((node, *term))
            }
            _ => None,
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            TaskState::Done { .. } | TaskState::Failed { .. } | TaskState::Cancelled
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub spec: TaskSpec,
    pub state: TaskState,
    /// Attempts that failed or were lost with their node.
    pub attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub capacity: NodeCapacity,
    pub joined_ms: u64,
}

/// A change to the cluster state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Join {
        node: NodeId,
        capacity: NodeCapacity,
        at_ms: u64,
    },
    /// Removed (left, or silent too long): its tasks go back to the queue.
    Leave {
        node: NodeId,
    },
    /// A member's capacity changed (its power policy tightened or loosened).
    Report {
        node: NodeId,
        capacity: NodeCapacity,
    },
    Submit {
        spec: TaskSpec,
    },
    Assign {
        task: TaskId,
        node: NodeId,
        term: u64,
        at_ms: u64,
    },
    Started {
        task: TaskId,
        node: NodeId,
        term: u64,
        at_ms: u64,
    },
    Finished {
        task: TaskId,
        node: NodeId,
        term: u64,
        result: [u8; 32],
        at_ms: u64,
    },
    Failed {
        task: TaskId,
        node: NodeId,
        term: u64,
        reason: String,
    },
    Cancel {
        task: TaskId,
    },
    /// The cluster merges into `into` (formation.rs): every member forwards the unfinished
    /// tasks it holds there and leaves; nothing else applies afterwards.
    Dissolve {
        into: String,
    },
}

/// Why a command changed nothing. Every replica refuses the same commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unknown task")]
    UnknownTask,
    #[error("a task with this id was already submitted")]
    DuplicateTask,
    #[error("the queue is full")]
    QueueFull,
    #[error("not a member of the cluster")]
    NotMember,
    #[error("the task is not waiting for a place")]
    NotQueued,
    #[error("the report is about an assignment that is no longer current (stale term or node)")]
    StaleAssignment,
    #[error("the assignment's term is older than the cluster's")]
    StaleTerm,
    #[error("the task already ended")]
    AlreadyEnded,
    #[error("the member has no room for the task")]
    NoRoom,
    #[error("the cluster was dissolved into another one")]
    Dissolved,
}

/// What a command did, for events and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    MemberJoined,
    MemberLeft {
        requeued: Vec<TaskId>,
    },
    CapacityChanged,
    Submitted,
    Assigned,
    Started,
    Finished,
    /// Failed, and queued again (`retry`) or failed for good.
    Failed {
        retry: bool,
    },
    Cancelled,
    Dissolved,
    /// A repeated report the state already reflects.
    Unchanged,
}

/// The replicated cluster state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    members: BTreeMap<NodeId, Member>,
    tasks: BTreeMap<TaskId, Task>,
    /// The newest coordinator term an assignment carried.
    term: u64,
    /// Set once the cluster merged into another.
    dissolved_into: Option<String>,
}

impl ClusterState {
    pub fn members(&self) -> &BTreeMap<NodeId, Member> {
        &self.members
    }

    pub fn tasks(&self) -> &BTreeMap<TaskId, Task> {
        &self.tasks
    }

    pub fn task(&self, id: &TaskId) -> Option<&Task> {
        self.tasks.get(id)
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    /// The cluster this one merged into, once it did.
    pub fn dissolved_into(&self) -> Option<&str> {
        self.dissolved_into.as_deref()
    }

    /// Tasks not yet ended: what a member forwards when the cluster dissolves or is lost.
    pub fn unfinished(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values().filter(|t| !t.state.is_terminal())
    }

    pub fn queued(&self) -> impl Iterator<Item = &Task> {
        self.tasks
            .values()
            .filter(|t| matches!(t.state, TaskState::Queued { .. }))
    }

    /// What one member's current assignments use.
    pub fn load_of(&self, node: &NodeId) -> Load {
        let mut load = Load::default();
        for task in self.tasks.values() {
            if task.state.assignment().is_some_and(|(n, _)| n == node) {
                load.add(&task.spec.requirements);
            }
        }
        load
    }

    /// What each member's current assignments use.
    pub fn loads(&self) -> BTreeMap<NodeId, Load> {
        let mut loads: BTreeMap<NodeId, Load> = self
            .members
            .keys()
            .map(|n| (n.clone(), Load::default()))
            .collect();
        for task in self.tasks.values() {
            if let Some((node, _)) = task.state.assignment() {
                if let Some(load) = loads.get_mut(node) {
                    load.add(&task.spec.requirements);
                }
            }
        }
        loads
    }

    /// Applies one committed command. Deterministic: the same commands in the same order
    /// give the same state on every replica.
    pub fn apply(&mut self, command: Command) -> Result<Applied, Refusal> {
        if self.dissolved_into.is_some() {
            return Err(Refusal::Dissolved);
        }
        match command {
            Command::Dissolve { into } => {
                self.dissolved_into = Some(into);
                Ok(Applied::Dissolved)
            }
            Command::Join {
                node,
                capacity,
                at_ms,
            } => {
                self.members.entry(node).or_insert(Member {
                    capacity,
                    joined_ms: at_ms,
                });
                Ok(Applied::MemberJoined)
            }
            Command::Leave { node } => {
                if self.members.remove(&node).is_none() {
                    return Err(Refusal::NotMember);
                }
                let mut requeued = Vec::new();
                for (id, task) in &mut self.tasks {
                    if task.state.assignment().is_some_and(|(n, _)| *n == node) {
                        task.attempts += 1;
                        let reason = "its node left the cluster".to_string();
                        // A task whose nodes keep leaving under it fails for good, like one
                        // that keeps failing.
                        task.state = if task.attempts < MAX_ATTEMPTS {
                            requeued.push(*id);
                            TaskState::Queued {
                                last_error: Some(reason),
                            }
                        } else {
                            TaskState::Failed { reason }
                        };
                    }
                }
                Ok(Applied::MemberLeft { requeued })
            }
            Command::Report { node, capacity } => {
                let member = self.members.get_mut(&node).ok_or(Refusal::NotMember)?;
                member.capacity = capacity;
                Ok(Applied::CapacityChanged)
            }
            Command::Submit { spec } => {
                if self.tasks.contains_key(&spec.id) {
                    return Err(Refusal::DuplicateTask);
                }
                if self.queued().count() >= MAX_QUEUED {
                    return Err(Refusal::QueueFull);
                }
                self.tasks.insert(
                    spec.id,
                    Task {
                        spec,
                        state: TaskState::Queued { last_error: None },
                        attempts: 0,
                    },
                );
                Ok(Applied::Submitted)
            }
            Command::Assign {
                task,
                node,
                term,
                at_ms,
            } => {
                if term < self.term {
                    return Err(Refusal::StaleTerm);
                }
                let capacity = self
                    .members
                    .get(&node)
                    .map(|m| m.capacity)
                    .ok_or(Refusal::NotMember)?;
                let load = self.load_of(&node);
                let entry = self.tasks.get_mut(&task).ok_or(Refusal::UnknownTask)?;
                if !matches!(entry.state, TaskState::Queued { .. }) {
                    return Err(Refusal::NotQueued);
                }
                // Placements proposed before this one committed may have filled the member.
                if !capacity.fits(&load, &entry.spec.requirements) {
                    return Err(Refusal::NoRoom);
                }
                self.term = term;
                entry.state = TaskState::Assigned { node, term, at_ms };
                Ok(Applied::Assigned)
            }
            Command::Started {
                task,
                node,
                term,
                at_ms,
            } => {
                let entry = self.current(&task, &node, term)?;
                if matches!(entry.state, TaskState::Running { .. }) {
                    return Ok(Applied::Unchanged);
                }
                entry.state = TaskState::Running {
                    node,
                    term,
                    started_ms: at_ms,
                };
                Ok(Applied::Started)
            }
            Command::Finished {
                task,
                node,
                term,
                result,
                at_ms,
            } => {
                // A result reported twice (a retried report) is the same result.
                if let Some(Task {
                    state: TaskState::Done { result: kept, .. },
                    ..
                }) = self.tasks.get(&task)
                {
                    return if *kept == result {
                        Ok(Applied::Unchanged)
                    } else {
                        Err(Refusal::AlreadyEnded)
                    };
                }
                let entry = self.current(&task, &node, term)?;
                entry.state = TaskState::Done {
                    node,
                    result,
                    finished_ms: at_ms,
                };
                Ok(Applied::Finished)
            }
            Command::Failed {
                task,
                node,
                term,
                reason,
            } => {
                let entry = self.current(&task, &node, term)?;
                entry.attempts += 1;
                let retry = entry.attempts < MAX_ATTEMPTS;
                entry.state = if retry {
                    TaskState::Queued {
                        last_error: Some(reason),
                    }
                } else {
                    TaskState::Failed { reason }
                };
                Ok(Applied::Failed { retry })
            }
            Command::Cancel { task } => {
                let entry = self.tasks.get_mut(&task).ok_or(Refusal::UnknownTask)?;
                if entry.state.is_terminal() {
                    return Err(Refusal::AlreadyEnded);
                }
                entry.state = TaskState::Cancelled;
                Ok(Applied::Cancelled)
            }
        }
    }

    /// The task, if `node` under `term` holds its current assignment.
    fn current(&mut self, task: &TaskId, node: &NodeId, term: u64) -> Result<&mut Task, Refusal> {
        let entry = self.tasks.get_mut(task).ok_or(Refusal::UnknownTask)?;
        if entry.state.is_terminal() {
            return Err(Refusal::AlreadyEnded);
        }
        match entry.state.assignment() {
            Some((n, t)) if n == node && t == term => Ok(entry),
            _ => Err(Refusal::StaleAssignment),
        }
    }
}

/// A worker's guard against stale coordinators: it refuses an assignment from a term older
/// than the newest it has seen, and says so.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FencingGate {
    newest: u64,
}

impl FencingGate {
    /// Admits work stamped with `term`, or refuses it with the newest term seen.
    pub fn admit(&mut self, term: u64) -> Result<(), u64> {
        if term < self.newest {
            return Err(self.newest);
        }
        self.newest = term;
        Ok(())
    }

    pub fn newest(&self) -> u64 {
        self.newest
    }
}

#[cfg(test)]
mod tests;
