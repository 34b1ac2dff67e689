//! The device capability: what the node runs on and how it behaves. The pure model
//! (readings, class, power policy, score, simulation) is the `fogmesh_device` crate,
//! re-exported here; this folder senses the machine ([`sense`], edge code), runs a pass on
//! the blocking pool and acts on the policy's decision ([`service`]), and serves
//! `/v1/device` ([`api`]). [`DeviceMonitor`] adds the sensor to `fogmesh_device::assess`
//! and remembers the previous decision for hysteresis.

pub mod api;
pub mod sense;
pub mod service;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

pub use fogmesh_device::*;

pub fn register(
    setup: &mut crate::runtime::registration::Setup<'_>,
) -> Result<crate::runtime::registration::Registered, crate::runtime::registration::SetupError> {
    let metrics = service::DeviceMetrics::default();
    metrics.register(setup.metrics);
    let monitor = DeviceMonitor::new(setup.data_dir, setup.settings.simulate.clone());
    let cell = setup.views.add::<Option<DeviceView>>(None);
    Ok(crate::runtime::registration::Registered {
        capability: Box::new(service::DeviceService::new(
            setup.settings.sense_interval,
            Box::new(monitor),
            cell,
            metrics,
        )),
        routes: api::routes(),
    })
}

/// A duty cycle's timings as the radio driver takes them.
pub fn radio_duty(cycle: policy::DutyCycle) -> fogmesh_transports::ble::driver::RadioDuty {
    let (on, off, advertise) = cycle.timings();
    fogmesh_transports::ble::driver::RadioDuty {
        scan_on: Duration::from_millis(on.into()),
        scan_off: Duration::from_millis(off.into()),
        advertise_every: Duration::from_millis(advertise.into()),
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
