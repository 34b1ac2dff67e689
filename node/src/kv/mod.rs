//! The replicated key-value store on the node (docs/kv.md): every node holds every key,
//! writes answer once durable and travel as gossip deltas, anti-entropy catches up nodes
//! that were away. The pure core (model, digest tree, sync protocol) is the `fogmesh_kv`
//! crate; this folder runs it.
//!
//! - [`service`] — the capability: routing and scheduling on the swarm task;
//! - [`core`] — everything that reads or writes the replica (signing, verifying, merging,
//!   answering, sessions), run as jobs on the storage task;
//! - [`replica`] — the replica on sled (the tables it owns);
//! - [`verify`], [`view`] — stateless checks on remote entries; what the API shows;
//! - [`protocol`] — gossip deltas and `/fogmesh/kv/1`;
//! - [`api`] — `/v1/kv`.

pub mod api;
pub mod core;
pub mod protocol;
pub mod replica;
pub mod service;
pub mod verify;
pub mod view;

use crate::runtime::registration::SetupError;
use crate::runtime::registration::{Registered, Setup};
use core::KvCore;
use service::{AccessPolicy, KvMetrics, KvService};

/// Registers the kv capability. A store that cannot be read leaves it refusing everything
/// and the node in safe mode (it says so at start), rather than serving part of it.
pub fn register(setup: &mut Setup<'_>) -> Result<Registered, SetupError> {
    let metrics = KvMetrics::default();
    metrics.register(setup.metrics);
    let core = KvCore::open(
        setup.keypair.clone(),
        setup.store,
        AccessPolicy {
            admission: setup.membership.map(|_| setup.channel.policy().clone()),
        },
        metrics,
    );
    let kv = KvService::new(core);
    Ok(Registered {
        capability: Box::new(kv),
        routes: api::routes(),
    })
}
