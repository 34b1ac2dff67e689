//! Device profile, power policy and node score: what the node runs on and how it behaves.
//!
//! Sensing ([`sense`]) is edge code; everything after it is pure: simulation overrides
//! ([`simulate`]), validation ([`readings`]), classification ([`classify`]), the power
//! policy ([`policy`]) and the score ([`score`]). [`assess`] chains the pure steps;
//! [`DeviceMonitor`] adds the sensor and remembers the previous decision for hysteresis.

pub mod api;
pub mod classify;
pub mod policy;
pub mod readings;
pub mod score;
pub mod sense;
pub mod service;
pub mod simulate;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use classify::{classify, DeviceClass};
pub use policy::{evaluate, PolicyDecision, PolicyState, PowerMode, TransportPreference};
pub use readings::DeviceReadings;
pub use simulate::SimulateConfig;

/// Registers the device capability (see [`service`]).
pub fn register(
    setup: &mut crate::capabilities::Setup<'_>,
) -> Result<crate::capabilities::Registered, crate::node::StartError> {
    let metrics = service::DeviceMetrics::default();
    metrics.register(setup.metrics);
    let monitor = DeviceMonitor::new(setup.data_dir, setup.settings.simulate.clone());
    let cell = setup.views.add::<Option<DeviceView>>(None);
    Ok(crate::capabilities::Registered {
        capability: Box::new(service::DeviceService::new(
            setup.settings.sense_interval,
            Box::new(monitor),
            cell,
            metrics,
        )),
        routes: api::routes(),
    })
}

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

/// Sensor plus policy memory.
#[derive(Debug)]
pub struct DeviceMonitor {
    sensor: sense::DeviceSensor,
    simulate: Option<SimulateConfig>,
    started: Instant,
    previous: Option<PolicyState>,
    warned: HashSet<&'static str>,
}

impl DeviceMonitor {
    pub fn new(data_dir: &Path, simulate: Option<SimulateConfig>) -> Self {
        Self {
            sensor: sense::DeviceSensor::new(data_dir),
            simulate: simulate.filter(|s| !s.is_empty()),
            started: Instant::now(),
            previous: None,
            warned: HashSet::new(),
        }
    }

    /// One pass: sense, assess, remember the decision.
    pub fn pass(&mut self, now_ms: u64) -> DeviceView {
        let t0 = Instant::now();
        let sensed = self.sensor.sense();
        let sense_micros = t0.elapsed().as_micros() as u64;
        let (mut view, rejected) = assess(
            sensed,
            self.simulate.as_ref(),
            self.started.elapsed(),
            self.previous,
        );
        for r in rejected {
            if self.warned.insert(r.sensor) {
                tracing::warn!(sensor = r.sensor, value = %r.value, "impossible sensor reading ignored (treated as unknown)");
            }
        }
        view.sensed_at_ms = now_ms;
        view.sense_micros = sense_micros;
        self.previous = Some(view.decision.state());
        view
    }

    pub fn rss_bytes(&mut self) -> Option<u64> {
        self.sensor.rss_bytes()
    }
}
