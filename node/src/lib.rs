//! The fogmesh node library: everything the `fogmesh` binary runs, usable from tests.
//!
//! The node is a runtime ([`runtime`]) running capabilities, one folder each, registered in
//! [`capabilities`]: [`device`], [`telemetry`], [`revocations`], [`relay`], [`cluster`],
//! [`kv`]. Around them: start-up ([`node`]), admission ([`admission`]), peer management
//! (`runtime::peers`), the control API ([`control`]) and its client ([`client`]), configuration
//! and identity. `docs/architecture.md` draws the picture.

pub mod admission;
pub mod capabilities;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod control;
pub mod dashboard;
pub mod device;
pub mod identity;
pub mod kv;
pub mod logging;
pub mod memgate;
pub mod memnet;
pub mod node;
pub mod reach;
pub mod relay;
pub mod revocations;
pub mod runtime;
pub mod store_report;
pub mod telemetry;
