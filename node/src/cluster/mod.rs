//! Fog clusters on the node (docs/clusters.md): the pure core is the `fogmesh_consensus`
//! crate; this folder runs it over the mesh.
//!
//! - [`service`] — the capability — formation, the Raft group, scheduling, this node's work,
//!   submissions;
//! - [`protocol`] — `/fogmesh/cluster/1` and `/fogmesh/cluster-bulk/1`;
//! - [`blobs`] — the content-addressed store of modules, inputs and results;
//! - [`raft_log`] — where the Raft group's log and hard state are stored;
//! - [`exec`] — the WebAssembly sandbox tasks run in;
//! - [`api`] — `/v1/cluster` and `/v1/tasks`.

pub mod api;
pub mod blobs;
pub mod exec;
pub mod protocol;
pub mod raft_log;
pub mod service;

use crate::runtime::registration::SetupError;
use crate::runtime::registration::{Registered, Setup};
use service::{ClusterConfig, ClusterMetrics, ClusterService, ClusterView, OwnRoles};

/// Registers the cluster capability, with the cluster this node was in before a restart.
pub fn register(setup: &mut Setup<'_>) -> Result<Registered, SetupError> {
    let metrics = ClusterMetrics::default();
    metrics.register(setup.metrics);
    let view = setup.views.add(ClusterView::default());
    let radio = setup.radio_only;
    let cluster = ClusterService::open(
        setup.keypair.clone(),
        setup.store,
        ClusterConfig {
            // Over Bluetooth a relay hop costs ~200 ms: slower elections and formation.
            formation: if radio {
                fogmesh_consensus::formation::RADIO
            } else {
                fogmesh_consensus::formation::LAN
            },
            raft: if radio {
                fogmesh_consensus::group::RADIO_TIMING
            } else {
                fogmesh_consensus::group::LAN_TIMING
            },
            schedule_every_ms: crate::runtime::capability::duration_ms(
                setup.settings.schedule_interval,
            ),
            roles: setup
                .membership
                .map_or(OwnRoles::ALL, |m| OwnRoles::from_ticket(&m.admission.roles)),
        },
        setup.admissions.clone(),
        view,
        setup.clock.now_ms(),
        metrics,
    )
    .map_err(|e| SetupError::Failed {
        what: "cluster",
        reason: e.to_string(),
    })?;
    Ok(Registered {
        capability: Box::new(cluster),
        routes: api::routes(),
    })
}
