//! Fog clusters as pure state machines (docs/clusters.md): no sockets, clocks or randomness
//! inside; time comes in as milliseconds, and every decision is a function of its inputs.
//!
//! - [`task`]: what a task asks for and how urgent it is;
//! - [`capacity`]: what a member may run now, from its device and its power policy;
//! - [`state`]: the replicated cluster state — members, the task table, assignments fenced
//!   by the coordinator's term — and the commands that change it;
//! - [`scheduler`]: which queued task goes where, highest (aged) priority first.
//!
//! The Raft group that orders the commands, and the cluster formation around it, build on
//! these (issue 11).

pub mod capacity;
pub mod scheduler;
pub mod state;
pub mod task;
