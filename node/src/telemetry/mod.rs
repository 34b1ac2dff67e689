//! Telemetry: every node's signed record of itself (device, power mode, score, load,
//! peers), gossiped on its cadence, the latest per node kept, silent nodes marked stale
//! (docs/telemetry.md).
//!
//! - [`scope`] — which topic a record goes on: the node's cluster's, or mesh-wide;
//! - [`fetch`] — one node's record on demand from whoever holds it;
//! - [`record`] — the record, its validation (signature, origin, freshness window, replays);
//! - [`service`] — the capability — publishing, accepting, expiring, its tables;
//! - [`view`] — what the control API shows.

pub mod fetch;
pub mod record;
pub mod scope;
pub mod service;
pub mod view;

use crate::runtime::behaviour::VERSION;
use crate::runtime::registration::SetupError;
use crate::runtime::registration::{Registered, Setup};
use service::{Tables, TelemetryConfig, TelemetryLimits, TelemetryMetrics, TelemetryService};

/// Registers the telemetry capability, seeded from its tables.
pub fn register(setup: &mut Setup<'_>) -> Result<Registered, SetupError> {
    let tables = Tables::open(setup.store)?;
    let (own_seq, stored) = tables.restore();
    let metrics = TelemetryMetrics::default();
    metrics.register(setup.metrics);
    let view = setup.views.add(view::TelemetrySnapshot::default());
    let settings = setup.settings;
    let mut telemetry = TelemetryService::new(
        setup.keypair.clone(),
        TelemetryConfig {
            base_interval: settings.telemetry_interval,
            radio_budget: setup.radio_only.then_some(service::RADIO_TELEMETRY_BUDGET),
            limits: TelemetryLimits {
                max_origins: settings.telemetry_max_origins,
                expire_after: settings.telemetry_expire_after,
            },
            freshness: record::FreshnessPolicy::default(),
            version: VERSION.into(),
            started_at_ms: setup.clock.now_ms(),
            full_mesh_below: settings.telemetry_full_mesh_below,
        },
        tables,
        view,
        metrics,
    );
    telemetry.restore(own_seq, stored);
    Ok(Registered {
        capability: Box::new(telemetry),
        routes: view::routes(),
    })
}
