//! The replicated key-value store on the node (docs/kv.md): every node holds every key,
//! writes answer once durable and travel as gossip deltas, anti-entropy catches up nodes
//! that were away. The pure core (model, digest tree, sync protocol) is the `fogmesh_kv`
//! crate; this folder runs it.
//!
//! - [`service`] — the capability — signing, verifying, merging, sessions;
//! - [`replica`] — the replica on sled (the tables it owns);
//! - [`protocol`] — gossip deltas and `/fogmesh/kv/1`;
//! - [`api`] — `/v1/kv`.

pub mod api;
pub mod protocol;
pub mod replica;
pub mod service;

use crate::capabilities::{Registered, Setup};
use crate::node::StartError;
use service::{AccessPolicy, KvMetrics, KvService};

/// Registers the kv capability. A store that cannot be read leaves it refusing everything
/// and the node in safe mode (it says so at start), rather than serving part of it.
pub fn register(setup: &mut Setup<'_>) -> Result<Registered, StartError> {
    let metrics = KvMetrics::default();
    metrics.register(setup.metrics);
    let kv = KvService::open(
        setup.keypair.clone(),
        setup.store,
        AccessPolicy {
            admission: setup.membership.map(|_| setup.channel.policy().clone()),
        },
        metrics,
    );
    Ok(Registered {
        capability: Box::new(kv),
        routes: api::routes(),
    })
}
