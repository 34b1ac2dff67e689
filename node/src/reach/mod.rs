//! Internet reach: whether this node can be dialled from the internet, and what it does when
//! it cannot (docs/nat.md).
//!
//! The swarm runs libp2p's AutoNAT v2 (client and server), circuit relay v2 (client and a
//! bounded server) and DCUtR (`runtime/behaviour.rs`); the runtime reports what they learn as
//! [`crate::runtime::paths::PathFact`]s. This capability decides what to do about them:
//! - its reachability, per address, from the dial-back tests (`public`, `private`, `unknown`);
//! - while it is not public, a slot on up to two relays that offer one, so peers reach it
//!   through them (and, where both NATs allow, DCUtR then punches a direct path);
//! - the relay service's counters, the hole punches' outcomes;
//! - the `reach` part of `/v1/status` and the metrics.
//!
//! - [`service`] — the capability (pure: facts and time in, effects out).

pub mod service;

use crate::runtime::registration::Setup;
use crate::runtime::registration::{Registered, SetupError};
use service::{Reach, ReachMetrics};

/// Registers the reach capability.
pub fn register(setup: &mut Setup<'_>) -> Result<Registered, SetupError> {
    let metrics = ReachMetrics::default();
    metrics.register(setup.metrics);
    let reach = Reach::new(
        setup.keypair.public().to_peer_id(),
        setup.settings.nat_traversal && !setup.radio_only,
        setup.settings.relay_service && !setup.radio_only,
        metrics,
    );
    Ok(Registered {
        capability: Box::new(reach),
        routes: axum::Router::new(),
    })
}
