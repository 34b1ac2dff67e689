//! Pretending to be another device, for testers and testnets.
//!
//! A `[simulate]` config section (or the `--simulate-device`, `--battery`, `--charging`,
//! `--temperature` flags) replaces sensed values. Values can be fixed or follow curves over
//! the node's uptime: a battery that drains (and charges during windows), a temperature that
//! rises or falls linearly to a limit. Evaluating a curve is a pure function of elapsed time.
//!
//! ```toml
//! [simulate]
//! device = "smartphone"
//! battery_curve = { start = 80, drain_per_minute = 2, charge_per_minute = 5, charging_windows = [{ from = "10m", to = "20m" }] }
//! temperature_curve = { start = 35, change_per_minute = 1.5, limit = 60 }
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::classify::DeviceClass;
use super::readings::DeviceReadings;

const GIB: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    #[serde(with = "humantime_serde")]
    pub from: Duration,
    #[serde(with = "humantime_serde")]
    pub to: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatteryCurve {
    /// Level at start, in percent.
    pub start: f32,
    /// Percentage points lost per minute when not charging.
    pub drain_per_minute: f32,
    /// Percentage points gained per minute inside a charging window.
    #[serde(default = "default_charge_rate")]
    pub charge_per_minute: f32,
    /// Spans of uptime during which the device is plugged in.
    #[serde(default)]
    pub charging_windows: Vec<Window>,
}

fn default_charge_rate() -> f32 {
    2.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemperatureCurve {
    pub start: f32,
    /// Degrees per minute; negative cools.
    pub change_per_minute: f32,
    /// The temperature stops changing here.
    pub limit: f32,
}

/// The `[simulate]` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulateConfig {
    /// Pretend to be this class (hardware numbers of a typical device of the class).
    pub device: Option<DeviceClass>,
    /// Fixed battery level in percent.
    pub battery: Option<f32>,
    pub charging: Option<bool>,
    /// Fixed temperature in degrees Celsius.
    pub temperature: Option<f32>,
    pub battery_curve: Option<BatteryCurve>,
    pub temperature_curve: Option<TemperatureCurve>,
}

/// A simulation setting that makes no sense, naming its key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("simulate.{key}: {reason}")]
pub struct SimulateError {
    pub key: &'static str,
    pub reason: String,
}

fn has_battery(class: DeviceClass) -> bool {
    matches!(
        class,
        DeviceClass::Smartphone | DeviceClass::Tablet | DeviceClass::Laptop
    )
}

impl SimulateConfig {
    pub fn is_empty(&self) -> bool {
        *self == SimulateConfig::default()
    }

    /// `other`'s values win where it has them.
    pub fn overlay(mut self, other: SimulateConfig) -> SimulateConfig {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(
            device,
            battery,
            charging,
            temperature,
            battery_curve,
            temperature_curve
        );
        self
    }

    pub fn validate(&self) -> Result<(), SimulateError> {
        let err = |key, reason: String| Err(SimulateError { key, reason });
        let pct_ok = |v: f32| v.is_finite() && (0.0..=100.0).contains(&v);
        let temp_ok = |v: f32| v.is_finite() && (-50.0..=150.0).contains(&v);
        if let Some(b) = self.battery {
            if !pct_ok(b) {
                return err("battery", format!("{b} is not a percentage (0-100)"));
            }
        }
        if let Some(t) = self.temperature {
            if !temp_ok(t) {
                return err("temperature", format!("{t} C is outside -50..150"));
            }
        }
        if self.battery.is_some() && self.battery_curve.is_some() {
            return err(
                "battery_curve",
                "give either battery or battery_curve, not both".into(),
            );
        }
        if self.temperature.is_some() && self.temperature_curve.is_some() {
            return err(
                "temperature_curve",
                "give either temperature or temperature_curve, not both".into(),
            );
        }
        if let Some(c) = &self.battery_curve {
            if !pct_ok(c.start) {
                return err(
                    "battery_curve",
                    format!("start {} is not a percentage", c.start),
                );
            }
            if !(c.drain_per_minute.is_finite() && c.drain_per_minute >= 0.0) {
                return err("battery_curve", "drain_per_minute must be 0 or more".into());
            }
            if !(c.charge_per_minute.is_finite() && c.charge_per_minute >= 0.0) {
                return err(
                    "battery_curve",
                    "charge_per_minute must be 0 or more".into(),
                );
            }
            for w in &c.charging_windows {
                if w.from >= w.to {
                    return err(
                        "battery_curve",
                        "a charging window must end after it starts".into(),
                    );
                }
            }
        }
        if let Some(c) = &self.temperature_curve {
            if !temp_ok(c.start) || !temp_ok(c.limit) || !c.change_per_minute.is_finite() {
                return err(
                    "temperature_curve",
                    "start and limit must lie in -50..150 C".into(),
                );
            }
        }
        if let Some(class) = self.device {
            let battery_given =
                self.battery.is_some() || self.battery_curve.is_some() || self.charging.is_some();
            if !has_battery(class) && battery_given {
                return err("battery", format!("a {class} has no battery"));
            }
        }
        Ok(())
    }

    /// Replaces sensed values in `sensed` with simulated ones at `uptime`.
    pub fn apply(&self, mut sensed: DeviceReadings, uptime: Duration) -> DeviceReadings {
        if let Some(class) = self.device {
            let (cores, mem_gib) = reference_hardware(class);
            sensed.cores = Some(cores);
            sensed.mem_total_bytes = Some(mem_gib * GIB);
            sensed.mem_available_bytes = Some(mem_gib * GIB / 2);
            sensed.battery_present = Some(has_battery(class));
            if has_battery(class) {
                sensed.battery_pct = sensed.battery_pct.or(Some(80.0));
                sensed.charging = sensed.charging.or(Some(false));
            } else {
                sensed.battery_pct = None;
                sensed.charging = None;
            }
        }
        if let Some(b) = self.battery {
            sensed.battery_present = Some(true);
            sensed.battery_pct = Some(b);
        }
        if let Some(curve) = &self.battery_curve {
            sensed.battery_present = Some(true);
            sensed.battery_pct = Some(curve.level_at(uptime));
            sensed.charging = Some(curve.charging_at(uptime));
        }
        if let Some(c) = self.charging {
            sensed.charging = Some(c);
        }
        if let Some(t) = self.temperature {
            sensed.temperature_c = Some(t);
        }
        if let Some(curve) = &self.temperature_curve {
            sensed.temperature_c = Some(curve.at(uptime));
        }
        sensed
    }
}

/// Cores and GiB of a typical device of each class; each classifies back to its class.
pub fn reference_hardware(class: DeviceClass) -> (u32, u64) {
    match class {
        DeviceClass::Smartphone => (8, 3),
        DeviceClass::Tablet => (8, 4),
        DeviceClass::Laptop => (8, 16),
        DeviceClass::Desktop => (8, 32),
        DeviceClass::RaspberryPi => (4, 2),
    }
}

impl BatteryCurve {
    pub fn charging_at(&self, t: Duration) -> bool {
        self.charging_windows
            .iter()
            .any(|w| w.from <= t && t < w.to)
    }

    /// Level at `t`: drains outside charging windows, charges inside them, within 0..=100.
    pub fn level_at(&self, t: Duration) -> f32 {
        let mut windows: Vec<&Window> = self.charging_windows.iter().collect();
        windows.sort_by_key(|w| w.from);
        let mut level = self.start.clamp(0.0, 100.0);
        let mut at = Duration::ZERO;
        let minutes = |d: Duration| d.as_secs_f32() / 60.0;
        for w in windows {
            if at >= t {
                break;
            }
            let from = w.from.max(at).min(t);
            level = (level - self.drain_per_minute * minutes(from - at)).clamp(0.0, 100.0);
            let to = w.to.max(from).min(t);
            level = (level + self.charge_per_minute * minutes(to - from)).clamp(0.0, 100.0);
            at = to;
        }
        if at < t {
            level = (level - self.drain_per_minute * minutes(t - at)).clamp(0.0, 100.0);
        }
        level
    }
}

impl TemperatureCurve {
    pub fn at(&self, t: Duration) -> f32 {
        let moved = self.start + self.change_per_minute * t.as_secs_f32() / 60.0;
        if self.change_per_minute >= 0.0 {
            moved.min(self.limit)
        } else {
            moved.max(self.limit)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::classify::classify;
    use super::*;

    fn mins(m: u64) -> Duration {
        Duration::from_secs(m * 60)
    }

    #[test]
    fn reference_hardware_classifies_back() {
        for class in DeviceClass::ALL {
            let sim = SimulateConfig {
                device: Some(class),
                ..SimulateConfig::default()
            };
            let r = sim.apply(DeviceReadings::default(), Duration::ZERO);
            assert_eq!(classify(&r), class);
        }
    }

    #[test]
    fn battery_curve_drains_and_charges() {
        let curve = BatteryCurve {
            start: 50.0,
            drain_per_minute: 2.0,
            charge_per_minute: 5.0,
            charging_windows: vec![Window {
                from: mins(10),
                to: mins(14),
            }],
        };
        assert_eq!(curve.level_at(Duration::ZERO), 50.0);
        assert_eq!(curve.level_at(mins(10)), 30.0);
        assert!(curve.charging_at(mins(12)));
        assert_eq!(curve.level_at(mins(14)), 50.0);
        assert!(!curve.charging_at(mins(14)));
        assert_eq!(curve.level_at(mins(24)), 30.0);
        assert_eq!(curve.level_at(mins(1000)), 0.0, "never below empty");
    }

    #[test]
    fn temperature_curve_stops_at_its_limit() {
        let rising = TemperatureCurve {
            start: 40.0,
            change_per_minute: 5.0,
            limit: 60.0,
        };
        assert_eq!(rising.at(mins(2)), 50.0);
        assert_eq!(rising.at(mins(10)), 60.0);
        let cooling = TemperatureCurve {
            start: 70.0,
            change_per_minute: -10.0,
            limit: 40.0,
        };
        assert_eq!(cooling.at(mins(5)), 40.0);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                SimulateConfig {
                    battery: Some(140.0),
                    ..Default::default()
                },
                "simulate.battery",
            ),
            (
                SimulateConfig {
                    temperature: Some(-300.0),
                    ..Default::default()
                },
                "simulate.temperature",
            ),
            (
                SimulateConfig {
                    device: Some(DeviceClass::Desktop),
                    battery: Some(50.0),
                    ..Default::default()
                },
                "simulate.battery",
            ),
            (
                SimulateConfig {
                    battery_curve: Some(BatteryCurve {
                        start: 50.0,
                        drain_per_minute: -1.0,
                        charge_per_minute: 1.0,
                        charging_windows: vec![],
                    }),
                    ..Default::default()
                },
                "simulate.battery_curve",
            ),
        ];
        for (config, key) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.starts_with(key), "{err}");
        }
    }
}
