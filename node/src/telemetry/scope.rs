//! Where a node's telemetry goes, and how far others' telemetry travels (docs/scale.md).
//!
//! A member of a fog cluster publishes its record on its cluster's topic
//! ([`cluster_topic`]), which only its cluster mates subscribe to: a node's telemetry cost
//! is its cluster's size, whatever the mesh's. The rest of the mesh knows the cluster by its
//! coordinator's signed summary (the cluster announcement) and can fetch any one node's
//! record on demand ([`super::fetch`]).
//!
//! A node in no cluster (just started, or its cluster was lost) publishes on the mesh-wide
//! [`TELEMETRY_TOPIC`], which every node keeps. So that a thousand nodes starting together
//! do not flood each other, a node passes such a record on only while the mesh looks small
//! to it (fewer nodes than `telemetry_full_mesh_below`, default 32): in a large mesh an
//! unclustered record reaches its neighbourhood and stops. The receiver still keeps what
//! reaches it.
//!
//! A small mesh is not split at all: while a node knows of fewer nodes than that (by the
//! records it holds and the members the cluster summaries name), it publishes on the
//! mesh-wide topic even when clustered, so every node sees every node's telemetry, as before
//! clusters existed.
//!
//! The cluster capability tells telemetry which cluster this node is in
//! ([`TelemetryScope`]) and who coordinates each known cluster ([`Directory`]) through
//! shared notices: telemetry is registered before clusters, so it owns these types.

use std::collections::HashMap;
use std::sync::Arc;

use libp2p::PeerId;

pub use super::record::TELEMETRY_TOPIC;

/// The topic a cluster's members publish their telemetry on.
pub fn cluster_topic(cluster: &str) -> String {
    format!("{TELEMETRY_TOPIC}/c/{cluster}")
}

/// Shared by the cluster capability whenever this node becomes a member of a cluster
/// (`Some(id)`) or stops being one (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryScope {
    pub cluster: Option<String>,
}

/// Shared by the cluster capability when the clusters it knows change: for every node
/// named in a held cluster summary, that cluster's coordinator (who holds the node's
/// record, being in its cluster).
#[derive(Debug, Clone, Default)]
pub struct Directory {
    pub coordinator_of: Arc<HashMap<PeerId, PeerId>>,
}

/// Whether a mesh of `known_nodes` (as far as this node knows) is small: every node's
/// telemetry then goes mesh-wide.
pub fn is_small(known_nodes: usize, full_mesh_below: usize) -> bool {
    known_nodes < full_mesh_below
}

/// Whether a record received on `topic` is passed on to other subscribers.
pub fn passes_on(topic: &str, known_nodes: usize, full_mesh_below: usize) -> bool {
    topic != TELEMETRY_TOPIC || is_small(known_nodes, full_mesh_below)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_records_always_travel_and_unclustered_ones_only_in_a_small_mesh() {
        let own = cluster_topic("00aa");
        assert!(passes_on(&own, 0, 32));
        assert!(passes_on(&own, 10_000, 32));
        assert!(passes_on(TELEMETRY_TOPIC, 31, 32));
        assert!(!passes_on(TELEMETRY_TOPIC, 32, 32));
        assert_ne!(cluster_topic("a"), cluster_topic("b"));
    }
}
