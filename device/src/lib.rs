//! A device as fogmesh sees it, as pure functions (docs/power-policy.md): its readings
//! ([`readings`]), its class ([`classify`]), the power policy's decision ([`policy`]), its
//! score for the coordinator ([`score`]), and simulated devices for tests and testnets
//! ([`simulate`]). No sensor is read here: the node's device capability senses and hands
//! the readings in.

pub mod classify;
pub mod policy;
pub mod readings;
pub mod score;
pub mod simulate;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use classify::{classify, DeviceClass};
pub use policy::{evaluate, PolicyDecision, PolicyState, PowerMode, TransportPreference};
pub use readings::DeviceReadings;
pub use simulate::SimulateConfig;

use policy::{BatteryBand, ThermalBand};

/// Re-sensing interval when the device is under pressure.
pub const PRESSURED_SENSE_INTERVAL: Duration = Duration::from_secs(5);

/// Everything one assessment concluded; served by `/v1/device` and `fogmesh device`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceView {
    pub class: DeviceClass,
    pub readings: DeviceReadings,
    pub decision: PolicyDecision,
    pub score: f64,
    pub simulated: bool,
    /// Readings refused as impossible in this pass, as `sensor=value`.
    pub rejected_readings: Vec<String>,
    pub sensed_at_ms: u64,
    /// How long the sensing pass took.
    pub sense_micros: u64,
}

/// What telemetry carries about the device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceSummary {
    pub class: DeviceClass,
    pub mode: PowerMode,
    pub score: f64,
    pub battery_pct: Option<f32>,
    pub charging: Option<bool>,
    pub temperature_c: Option<f32>,
    pub transport: TransportPreference,
}

impl DeviceView {
    pub fn summary(&self) -> DeviceSummary {
        DeviceSummary {
            class: self.class,
            mode: self.decision.mode,
            score: self.score,
            battery_pct: self.readings.battery_pct,
            charging: self.readings.charging,
            temperature_c: self.readings.temperature_c,
            transport: self.decision.limits.transport,
        }
    }
}

/// The pure part of a pass: simulate, validate, classify, evaluate, score.
pub fn assess(
    sensed: DeviceReadings,
    simulate: Option<&SimulateConfig>,
    uptime: Duration,
    previous: Option<PolicyState>,
) -> (DeviceView, Vec<readings::RejectedReading>) {
    let readings = match simulate {
        Some(sim) => sim.apply(sensed, uptime),
        None => sensed,
    };
    let (readings, rejected) = readings.validated();
    let class = classify(&readings);
    let decision = evaluate(&readings, previous);
    let score = score::score(&readings, &decision);
    let view = DeviceView {
        class,
        readings,
        decision,
        score,
        simulated: simulate.is_some(),
        rejected_readings: rejected
            .iter()
            .map(|r| format!("{}={}", r.sensor, r.value))
            .collect(),
        sensed_at_ms: 0,
        sense_micros: 0,
    };
    (view, rejected)
}

/// How long until the next pass: `base`, or [`PRESSURED_SENSE_INTERVAL`] when the battery is
/// low or the device warm, whichever is shorter.
pub fn next_sense_interval(base: Duration, decision: &PolicyDecision) -> Duration {
    let pressured = matches!(
        decision.battery_band,
        BatteryBand::Low | BatteryBand::Critical
    ) || decision.thermal_band >= ThermalBand::Warm;
    if pressured {
        base.min(PRESSURED_SENSE_INTERVAL)
    } else {
        base
    }
}
