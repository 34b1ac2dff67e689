//! The device service: when to sense the device, and what a new reading changes.
//!
//! Sensing reads files and sysinfo, which can block, so the service only asks for it
//! ([`Effect::SenseDevice`]); the driver runs the pass on a blocking thread and hands the
//! result back ([`Notice::DeviceSensed`]). At most one pass is in flight. The service then
//! publishes the view, tells the other services ([`Notice::DeviceChanged`]: telemetry follows
//! the policy's cadence), reports a power-mode change on the event stream, and plans the next
//! pass — sooner when the battery is low or the device warm.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use super::{Effect, Notice, Outbox, Service, Timer, ViewUpdate};
use crate::device::{self, DeviceView, PowerMode};
use crate::events::NodeEvent;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabel {
    pub mode: String,
}

/// The service's metrics.
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
#[derive(Debug)]
pub struct DeviceService {
    base_interval: Duration,
    view: Option<DeviceView>,
    sensing: bool,
    metrics: DeviceMetrics,
}

impl DeviceService {
    pub fn new(base_interval: Duration, metrics: DeviceMetrics) -> Self {
        Self {
            base_interval,
            view: None,
            sensing: false,
            metrics,
        }
    }

    pub fn view(&self) -> Option<&DeviceView> {
        self.view.as_ref()
    }

    fn sense(&mut self, out: &mut Outbox) {
        if !self.sensing {
            self.sensing = true;
            out.push(Effect::SenseDevice);
        }
    }

    fn sensed(&mut self, now_ms: u64, view: &DeviceView, out: &mut Outbox) {
        self.sensing = false;
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
            out.event(NodeEvent::PowerMode {
                from: previous.map(|m| m.to_string()),
                to: view.decision.mode.to_string(),
                score: view.score,
                reasons: view.decision.reasons.clone(),
            });
        }
        self.metrics.score.set(view.score);
        let next = device::next_sense_interval(self.base_interval, &view.decision);
        out.timer(
            now_ms.saturating_add(super::duration_ms(next)),
            Timer::DeviceSense,
        );
        out.push(Effect::View(ViewUpdate::Device(Box::new(view.clone()))));
        out.push(Effect::Notice(Notice::DeviceChanged(Box::new(
            view.clone(),
        ))));
        self.view = Some(view.clone());
    }
}

impl Service for DeviceService {
    fn name(&self) -> &'static str {
        "device"
    }

    fn on_start(&mut self, _now_ms: u64, out: &mut Outbox) {
        // Sense before the first publication, so the first telemetry carries the device.
        self.sense(out);
    }

    fn on_timer(&mut self, _now_ms: u64, timer: Timer, out: &mut Outbox) {
        if timer == Timer::DeviceSense {
            self.sense(out);
        }
    }

    fn on_notice(&mut self, now_ms: u64, notice: &Notice, out: &mut Outbox) {
        if let Notice::DeviceSensed { view, .. } = notice {
            self.sensed(now_ms, view, out);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::device::DeviceReadings;

    const T0: u64 = 1_700_000_000_000;

    fn view_with(battery_pct: Option<f32>, charging: Option<bool>) -> DeviceView {
        let readings = DeviceReadings {
            battery_pct,
            charging,
            ..DeviceReadings::default()
        };
        device::assess(readings, None, Duration::ZERO, None).0
    }

    fn sensed(view: DeviceView) -> Notice {
        Notice::DeviceSensed {
            view: Box::new(view),
            rss_bytes: Some(1),
        }
    }

    #[test]
    fn senses_at_start_and_never_twice_at_once() {
        let mut s = DeviceService::new(Duration::from_secs(30), DeviceMetrics::default());
        let mut out = Outbox::default();
        s.on_start(T0, &mut out);
        assert_eq!(out.effects(), &[Effect::SenseDevice]);
        let mut out = Outbox::default();
        s.on_timer(T0 + 1, Timer::DeviceSense, &mut out);
        assert!(out.is_empty(), "a pass is already running");
    }

    #[test]
    fn a_result_updates_view_and_telemetry_and_plans_the_next_pass() {
        let mut s = DeviceService::new(Duration::from_secs(30), DeviceMetrics::default());
        s.on_start(T0, &mut Outbox::default());
        let mut out = Outbox::default();
        s.on_notice(T0 + 5, &sensed(view_with(None, None)), &mut out);
        let effects = out.effects();
        assert!(effects.contains(&Effect::Timer {
            at_ms: T0 + 5 + 30_000,
            timer: Timer::DeviceSense
        }));
        assert!(effects
            .iter()
            .any(|e| matches!(e, Effect::View(ViewUpdate::Device(_)))));
        assert!(effects
            .iter()
            .any(|e| matches!(e, Effect::Notice(Notice::DeviceChanged(_)))));
        assert!(effects
            .iter()
            .any(|e| matches!(e, Effect::Event(NodeEvent::PowerMode { from: None, .. }))));
        assert_eq!(s.metrics.passes.get(), 1);
        // The timer may now start another pass.
        let mut out = Outbox::default();
        s.on_timer(T0 + 30_005, Timer::DeviceSense, &mut out);
        assert_eq!(out.effects(), &[Effect::SenseDevice]);
    }

    #[test]
    fn a_low_battery_changes_mode_once_and_senses_sooner() {
        let mut s = DeviceService::new(Duration::from_secs(30), DeviceMetrics::default());
        s.on_notice(
            T0,
            &sensed(view_with(Some(90.0), Some(true))),
            &mut Outbox::default(),
        );
        let mut out = Outbox::default();
        s.on_notice(
            T0 + 10,
            &sensed(view_with(Some(5.0), Some(false))),
            &mut out,
        );
        let changes: Vec<_> = out
            .effects()
            .iter()
            .filter(|e| matches!(e, Effect::Event(NodeEvent::PowerMode { from: Some(_), .. })))
            .collect();
        assert_eq!(changes.len(), 1);
        assert!(out.effects().contains(&Effect::Timer {
            at_ms: T0 + 10 + device::PRESSURED_SENSE_INTERVAL.as_millis() as u64,
            timer: Timer::DeviceSense
        }));
        assert_eq!(s.metrics.mode_changes.get(), 1);
        // The same mode again is no change.
        let mut out = Outbox::default();
        s.on_notice(
            T0 + 20,
            &sensed(view_with(Some(5.0), Some(false))),
            &mut out,
        );
        assert!(!out.effects().iter().any(|e| matches!(e, Effect::Event(_))));
    }
}
