//! The device capability: when to sense the device, and what a new reading changes.
//!
//! Sensing reads files and sysinfo, which can block, so a pass is a job on the blocking pool
//! ([`Lane::Blocking`]); the sensor travels with the job and comes back with its result, so
//! at most one pass runs. The capability then publishes the view, tells the other
//! capabilities ([`DeviceChanged`]: telemetry follows the policy's cadence, clusters its
//! limits, the relay its transport preference), sets the radio's duty cycle and "radio only"
//! ([`Effect::Radio`]), reports a power-mode change on the event stream, and plans the next
//! pass — sooner when the battery is low or the device warm.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use std::sync::atomic::AtomicU64;

use crate::device::policy::TransportPreference;
use crate::device::{self, DeviceMonitor, DeviceView, PowerMode};
use crate::runtime::capability::{
    duration_ms, Capability, Effect, JobOutput, Lane, Notice, Outbox, RadioPolicy, TimerId, Token,
};
use crate::runtime::events::EventKind;
use crate::runtime::handle::ViewCell;
use crate::runtime::status::StatusView;

const SENSE: TimerId = TimerId(0);
const PASS: Token = 1;

/// A device sensing pass, off the swarm task: the view and the process's resident memory.
pub trait Sensor: Send {
    fn pass(&mut self, now_ms: u64) -> (DeviceView, Option<u64>);
}

impl Sensor for DeviceMonitor {
    fn pass(&mut self, now_ms: u64) -> (DeviceView, Option<u64>) {
        let view = DeviceMonitor::pass(self, now_ms);
        let rss = self.rss_bytes();
        (view, rss)
    }
}

/// What a pass's job hands back: the sensor, and what it saw.
struct Sensed {
    sensor: Box<dyn Sensor>,
    view: DeviceView,
    rss_bytes: Option<u64>,
}

/// Told to every capability after each pass.
#[derive(Debug, Clone)]
pub struct DeviceChanged {
    pub view: DeviceView,
    pub rss_bytes: Option<u64>,
}

/// The event when the power mode changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PowerModeChanged {
    pub from: Option<String>,
    pub to: String,
    pub score: f64,
    pub reasons: Vec<String>,
}

impl EventKind for PowerModeChanged {
    const KIND: &'static str = "power_mode";
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabel {
    pub mode: String,
}

/// The capability's metrics.
#[derive(Debug, Clone, Default)]
pub struct DeviceMetrics {
    pub passes: Counter,
    /// 1 for the current power mode, 0 for the others seen.
    pub mode: Family<ModeLabel, Gauge>,
    pub score: Gauge<f64, AtomicU64>,
    pub mode_changes: Counter,
}

impl DeviceMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("device");
        r.register(
            "sense_passes",
            "Device sensing passes run",
            self.passes.clone(),
        );
        r.register(
            "power_mode",
            "The power mode the policy chose (1 for the current one)",
            self.mode.clone(),
        );
        r.register(
            "score",
            "The device's capability score (0 to 1)",
            self.score.clone(),
        );
        r.register(
            "power_mode_changes",
            "Changes of power mode",
            self.mode_changes.clone(),
        );
    }
}

/// See the module docs.
pub struct DeviceService {
    base_interval: Duration,
    /// `None` while a pass runs (the sensor is out with its job).
    sensor: Option<Box<dyn Sensor>>,
    view: Option<DeviceView>,
    cell: ViewCell<Option<DeviceView>>,
    metrics: DeviceMetrics,
}

impl std::fmt::Debug for DeviceService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceService")
            .field("sensing", &self.sensor.is_none())
            .field("mode", &self.view.as_ref().map(|v| v.decision.mode))
            .finish_non_exhaustive()
    }
}

impl DeviceService {
    pub fn new(
        base_interval: Duration,
        sensor: Box<dyn Sensor>,
        cell: ViewCell<Option<DeviceView>>,
        metrics: DeviceMetrics,
    ) -> Self {
        Self {
            base_interval,
            sensor: Some(sensor),
            view: None,
            cell,
            metrics,
        }
    }

    pub fn view(&self) -> Option<&DeviceView> {
        self.view.as_ref()
    }

    fn sense(&mut self, now_ms: u64, out: &mut Outbox) {
        let Some(mut sensor) = self.sensor.take() else {
            return;
        };
        out.push(Effect::Job {
            lane: Lane::Blocking,
            token: PASS,
            job: Box::new(move || {
                let (view, rss_bytes) = sensor.pass(now_ms);
                Box::new(Sensed {
                    sensor,
                    view,
                    rss_bytes,
                }) as JobOutput
            }),
        });
    }

    fn sensed(&mut self, now_ms: u64, view: DeviceView, rss_bytes: Option<u64>, out: &mut Outbox) {
        self.metrics.passes.inc();
        let previous: Option<PowerMode> = self.view.as_ref().map(|v| v.decision.mode);
        if previous != Some(view.decision.mode) {
            tracing::info!(
                mode = %view.decision.mode,
                class = %view.class,
                score = %format_args!("{:.3}", view.score),
                reasons = %view.decision.reasons.join("; "),
                simulated = view.simulated,
                "power mode"
            );
            if let Some(previous) = previous {
                self.metrics.mode_changes.inc();
                self.metrics
                    .mode
                    .get_or_create(&ModeLabel {
                        mode: previous.to_string(),
                    })
                    .set(0);
            }
            self.metrics
                .mode
                .get_or_create(&ModeLabel {
                    mode: view.decision.mode.to_string(),
                })
                .set(1);
            out.event(PowerModeChanged {
                from: previous.map(|m| m.to_string()),
                to: view.decision.mode.to_string(),
                score: view.score,
                reasons: view.decision.reasons.clone(),
            });
        }
        self.metrics.score.set(view.score);
        let next = device::next_sense_interval(self.base_interval, &view.decision);
        out.timer(now_ms.saturating_add(duration_ms(next)), SENSE);
        let limits = &view.decision.limits;
        out.push(Effect::Radio(RadioPolicy {
            duty: crate::device::radio_duty(limits.ble_duty),
            radio_only: limits.transport == TransportPreference::BitchatOnly,
        }));
        self.cell.set(Some(view.clone()));
        out.push(Effect::Notice(Notice::share(DeviceChanged {
            view: view.clone(),
            rss_bytes,
        })));
        self.view = Some(view);
    }
}

impl Capability for DeviceService {
    fn name(&self) -> &'static str {
        "device"
    }

    fn on_start(&mut self, now_ms: u64, out: &mut Outbox) {
        // Sense before the first publication, so the first telemetry carries the device.
        self.sense(now_ms, out);
    }

    fn on_timer(&mut self, now_ms: u64, timer: TimerId, out: &mut Outbox) {
        if timer == SENSE {
            self.sense(now_ms, out);
        }
    }

    fn on_job(
        &mut self,
        now_ms: u64,
        _token: Token,
        output: Result<JobOutput, String>,
        out: &mut Outbox,
    ) {
        match output.map(|o| o.downcast::<Sensed>()) {
            Ok(Ok(sensed)) => {
                let Sensed {
                    sensor,
                    view,
                    rss_bytes,
                } = *sensed;
                self.sensor = Some(sensor);
                self.sensed(now_ms, view, rss_bytes, out);
            }
            // The sensor panicked and went with its job: sensing stops; the node goes on
            // without device readings.
            _ => tracing::error!("device sensing failed; no more device readings"),
        }
    }

    fn status(&self, _now_ms: u64, status: &mut StatusView) {
        status.device = self.view.as_ref().map(DeviceView::summary);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::device::DeviceReadings;
    use crate::runtime::handle::Views;

    const T0: u64 = 1_700_000_000_000;

    fn view_with(battery_pct: Option<f32>, charging: Option<bool>) -> DeviceView {
        let readings = DeviceReadings {
            battery_pct,
            charging,
            ..DeviceReadings::default()
        };
        device::assess(readings, None, Duration::ZERO, None).0
    }

    /// A sensor that reports what the test sets.
    struct Fake(std::sync::Arc<std::sync::Mutex<DeviceView>>);

    impl Sensor for Fake {
        fn pass(&mut self, _now_ms: u64) -> (DeviceView, Option<u64>) {
            (self.0.lock().unwrap().clone(), Some(1))
        }
    }

    fn service() -> (DeviceService, std::sync::Arc<std::sync::Mutex<DeviceView>>) {
        let reading = std::sync::Arc::new(std::sync::Mutex::new(view_with(None, None)));
        let cell = Views::default().add(None);
        let s = DeviceService::new(
            Duration::from_secs(30),
            Box::new(Fake(reading.clone())),
            cell,
            DeviceMetrics::default(),
        );
        (s, reading)
    }

    /// Runs the pass the outbox asks for, as the runtime would, and feeds its result back.
    fn run_pass(s: &mut DeviceService, now: u64, out: &mut Outbox) -> Outbox {
        let job = out
            .drain()
            .find_map(|e| match e {
                Effect::Job { job, .. } => Some(job),
                _ => None,
            })
            .expect("a sensing job");
        let mut next = Outbox::default();
        s.on_job(now, PASS, Ok(job()), &mut next);
        next
    }

    #[test]
    fn senses_at_start_and_never_twice_at_once() {
        let (mut s, _) = service();
        let mut out = Outbox::default();
        s.on_start(T0, &mut out);
        assert!(matches!(
            out.effects(),
            [Effect::Job {
                lane: Lane::Blocking,
                ..
            }]
        ));
        let mut again = Outbox::default();
        s.on_timer(T0 + 1, SENSE, &mut again);
        assert!(again.is_empty(), "a pass is already running");
    }

    #[test]
    fn a_result_updates_view_and_telemetry_and_plans_the_next_pass() {
        let (mut s, _) = service();
        let mut out = Outbox::default();
        s.on_start(T0, &mut out);
        let out = run_pass(&mut s, T0 + 5, &mut out);
        let effects = out.effects();
        assert!(effects.iter().any(|e| matches!(
            e,
            Effect::Timer { at_ms, timer } if *at_ms == T0 + 5 + 30_000 && *timer == SENSE
        )));
        assert!(s.cell.get().is_some());
        assert!(effects
            .iter()
            .any(|e| matches!(e, Effect::Notice(n) if n.shared::<DeviceChanged>().is_some())));
        assert!(effects.iter().any(|e| matches!(e, Effect::Radio(_))));
        assert!(effects.iter().any(|e| matches!(e, Effect::Event(ev)
            if ev.decode::<PowerModeChanged>().is_some_and(|p| p.from.is_none()))));
        assert_eq!(s.metrics.passes.get(), 1);
        // The timer may now start another pass.
        let mut out = Outbox::default();
        s.on_timer(T0 + 30_005, SENSE, &mut out);
        assert!(matches!(out.effects(), [Effect::Job { .. }]));
    }

    #[test]
    fn a_low_battery_changes_mode_once_and_senses_sooner() {
        let (mut s, reading) = service();
        *reading.lock().unwrap() = view_with(Some(90.0), Some(true));
        let mut out = Outbox::default();
        s.on_start(T0, &mut out);
        run_pass(&mut s, T0, &mut out);
        *reading.lock().unwrap() = view_with(Some(5.0), Some(false));
        let mut out = Outbox::default();
        s.on_timer(T0 + 10, SENSE, &mut out);
        let out = run_pass(&mut s, T0 + 10, &mut out);
        let changes = out
            .effects()
            .iter()
            .filter(|e| {
                matches!(e, Effect::Event(ev)
                if ev.decode::<PowerModeChanged>().is_some_and(|p| p.from.is_some()))
            })
            .count();
        assert_eq!(changes, 1);
        assert!(out.effects().iter().any(|e| matches!(
            e,
            Effect::Timer { at_ms, .. }
                if *at_ms == T0 + 10 + device::PRESSURED_SENSE_INTERVAL.as_millis() as u64
        )));
        assert!(out.effects().iter().any(|e| matches!(
            e,
            Effect::Radio(RadioPolicy {
                radio_only: true,
                ..
            })
        )));
        assert_eq!(s.metrics.mode_changes.get(), 1);
        // The same mode again is no change.
        let mut out = Outbox::default();
        s.on_timer(T0 + 20, SENSE, &mut out);
        let out = run_pass(&mut s, T0 + 20, &mut out);
        assert!(!out.effects().iter().any(|e| matches!(e, Effect::Event(_))));
    }
}
