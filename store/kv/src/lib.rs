//! The replicated key-value store's pure core (docs/kv.md), with no storage engine and no
//! clock of its own:
//! - [`model`] — signed entries stamped with hybrid logical clocks, last-writer-wins merge;
//! - [`tree`] — the digest tree over 65,536 buckets that anti-entropy descends;
//! - [`sync`] — the anti-entropy protocol, a stateless answering side and a session state
//!   machine, over any [`sync::Replica`] (an in-memory one here for tests; the node's is on
//!   sled).

pub mod model;
pub mod sync;
pub mod tree;

pub use model::*;

/// A replica could not be read (its storage failed); the message says how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the replica cannot be read: {0}")]
pub struct ReplicaError(pub String);
