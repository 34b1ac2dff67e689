//! Fog clusters as pure state machines (docs/clusters.md): no sockets, clocks or randomness
//! inside; time comes in as milliseconds, and every decision is a function of its inputs.
//!
//! - [`task`]: what a task asks for and how urgent it is;
//! - [`capacity`]: what a member may run now, from its device and its power policy;
//! - [`state`]: the replicated cluster state — members, the task table, assignments fenced
//!   by the coordinator's term — and the commands that change it;
//! - [`scheduler`]: which queued task goes where, highest (aged) priority first;
//! - [`group`]: one member's side of the cluster's Raft group, ordering the commands;
//! - [`formation`]: how nodes group themselves into clusters, and when they change;
//! - [`log`]: the group's log and hard state as stored, and rebuilt after a restart;
//! - [`pace`]: how often a member ticks raft, adapted to the round trips of its links;
//! - [`wire`]: raft messages between members, and who may send them.
//!
//! Cluster formation and the node service build on these (issue 11).

pub mod capacity;
pub mod formation;
pub mod group;
pub mod log;
pub mod pace;
pub mod scheduler;
pub mod state;
pub mod task;
pub mod wire;

/// raft-rs, for callers that build or inspect raft messages (tests, fuzzers).
pub use raft;
