//! The runtime: what runs capabilities without knowing any of them by name.
//!
//! - [`capability`] — the contract — inputs with the time, effects out;
//! - [`driver`] — the one task that owns the swarm and executes effects;
//! - [`rpc`] — every capability's request-response protocols in one behaviour, carrying the
//!   caller's token;
//! - [`storage`] — writes and storage jobs to the storage task, outcomes back;
//! - [`handle`] — the typed handle the control API and tests use, and the views;
//! - [`behaviour`] — the swarm's composed behaviours;
//! - [`mesh_time`] — how far this node's clock is from the mesh's;
//! - [`clock`], [`events`], [`lifecycle`], [`metrics`]: time, the event stream, the node's
//!   phase, the metrics registry.
//!
//! `docs/architecture.md` draws the picture.

pub mod behaviour;
pub mod capability;
pub mod clock;
pub mod driver;
pub mod events;
pub mod handle;
pub mod lifecycle;
pub mod mesh_time;
pub mod metrics;
pub mod paths;
pub mod peers;
pub mod registration;
pub mod rpc;
pub mod status;
pub mod storage;
#[cfg(test)]
pub mod testing;

/// The innermost error's text: "Connection refused" rather than "Failed to negotiate
/// transport", the cause rather than reqwest's "error decoding response body".
pub fn root_cause(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text = inner.to_string();
        source = inner.source();
    }
    text
}
