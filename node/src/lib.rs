//! The fogmesh node library: everything the `fogmesh` binary runs, usable from tests.

pub mod api;
pub mod api_server;
pub mod bootstrap;
pub mod client;
pub mod cluster;
pub mod config;
pub mod connection_budget;
pub mod device;
pub mod driver;
pub mod events;
pub mod exec;
pub mod handshake_metrics;
pub mod identity;
pub mod kv;
pub mod lifecycle;
pub mod logging;
pub mod membership;
pub mod memnet;
pub mod mesh;
pub mod metrics;
pub mod node;
pub mod peer_manager;
pub mod relay;
pub mod services;
pub mod storage;
pub mod store_report;
pub mod telemetry;
pub mod kv_tmp {
    pub mod replica;
}
