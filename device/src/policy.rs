//! Power policy: a pure function from device readings and the previous decision to a mode
//! and the limits that mode imposes. No clocks, no sensors: `evaluate(readings, previous)`.
//!
//! Two causes are judged separately and the stricter one wins, limit by limit:
//!
//! * **battery**, by band with hysteresis: critical at <= 10 %, low at <= 20 %; a device
//!   leaves critical only above 13 % and low only above 23 %. Charging softens a band by one
//!   step (a charging phone at 15 % is not rationed like a discharging one).
//! * **temperature**, by band with hysteresis: warm at >= 45 C, hot at >= 55 C, critical at
//!   >= 65 C; each is left only 3 C below its threshold.
//!
//! Taking the element-wise minimum of two monotone tables keeps the result monotone: a worse
//! battery or a hotter device never gets higher limits (property-tested below). Unknown
//! readings: a battery device whose level is unknown is treated like a discharging battery at
//! a normal level (Balanced); an unknown temperature restricts nothing (VMs and many desktops
//! expose no sensor, and penalising them would push work onto phones). The full table is in
//! `docs/power-policy.md`.

use serde::{Deserialize, Serialize};

use super::readings::DeviceReadings;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

pub const BATTERY_CRITICAL_PCT: f32 = 10.0;
pub const BATTERY_LOW_PCT: f32 = 20.0;
/// How far above a battery threshold a device must climb to leave its band.
pub const BATTERY_HYSTERESIS_PCT: f32 = 3.0;
pub const TEMP_WARM_C: f32 = 45.0;
pub const TEMP_HOT_C: f32 = 55.0;
pub const TEMP_CRITICAL_C: f32 = 65.0;
/// How far below a temperature threshold a device must cool to leave its band.
pub const TEMP_HYSTERESIS_C: f32 = 3.0;

/// Modes, from least to most restricted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerMode {
    Performance,
    Balanced,
    PowerSave,
    Critical,
}

impl std::fmt::Display for PowerMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PowerMode::Performance => "performance",
            PowerMode::Balanced => "balanced",
            PowerMode::PowerSave => "power_save",
            PowerMode::Critical => "critical",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatteryBand {
    /// No battery: mains powered.
    Mains,
    Normal,
    /// A battery whose level could not be read.
    Unknown,
    Low,
    Critical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThermalBand {
    Unknown,
    Normal,
    Warm,
    Hot,
    Critical,
}

/// Which transport a node prefers, from most internet-leaning to most BLE-leaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportPreference {
    BetanetPreferred,
    Balanced,
    BitchatPreferred,
    BitchatOnly,
}

/// BLE scanning and advertising, from most to least active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DutyCycle {
    Continuous,
    Balanced,
    Low,
    UltraLow,
}

impl std::fmt::Display for TransportPreference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportPreference::BetanetPreferred => "betanet_preferred",
            TransportPreference::Balanced => "balanced",
            TransportPreference::BitchatPreferred => "bitchat_preferred",
            TransportPreference::BitchatOnly => "bitchat_only",
        })
    }
}

impl std::fmt::Display for DutyCycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DutyCycle::Continuous => "continuous",
            DutyCycle::Balanced => "balanced",
            DutyCycle::Low => "low",
            DutyCycle::UltraLow => "ultra_low",
        })
    }
}

impl DutyCycle {
    /// (scan on ms, scan off ms, advertising interval ms).
    pub fn timings(self) -> (u32, u32, u32) {
        match self {
            DutyCycle::Continuous => (10_000, 0, 100),
            DutyCycle::Balanced => (8_000, 2_000, 250),
            DutyCycle::Low => (2_000, 8_000, 1_000),
            DutyCycle::UltraLow => (1_000, 29_000, 2_000),
        }
    }
}

/// What a mode allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub cpu_pct: u8,
    pub memory_bytes: u64,
    pub max_tasks: u32,
    pub chunk_bytes: u32,
    pub transport: TransportPreference,
    /// Telemetry is published every `interval x telemetry_multiplier`.
    pub telemetry_multiplier: u32,
    pub ble_duty: DutyCycle,
}

impl Limits {
    /// Element-wise strictest of two.
    fn strictest(self, other: Limits) -> Limits {
        Limits {
            cpu_pct: self.cpu_pct.min(other.cpu_pct),
            memory_bytes: self.memory_bytes.min(other.memory_bytes),
            max_tasks: self.max_tasks.min(other.max_tasks),
            chunk_bytes: self.chunk_bytes.min(other.chunk_bytes),
            transport: self.transport.max(other.transport),
            telemetry_multiplier: self.telemetry_multiplier.max(other.telemetry_multiplier),
            ble_duty: self.ble_duty.max(other.ble_duty),
        }
    }

    /// True if no limit of `self` is looser than `other`'s.
    pub fn no_looser_than(&self, other: &Limits) -> bool {
        self.cpu_pct <= other.cpu_pct
            && self.memory_bytes <= other.memory_bytes
            && self.max_tasks <= other.max_tasks
            && self.chunk_bytes <= other.chunk_bytes
            && self.transport >= other.transport
            && self.telemetry_multiplier >= other.telemetry_multiplier
            && self.ble_duty >= other.ble_duty
    }
}

/// The policy's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyDecision {
    pub mode: PowerMode,
    pub battery_band: BatteryBand,
    pub thermal_band: ThermalBand,
    pub limits: Limits,
    /// Why, for a person: one line per cause that restricted something.
    pub reasons: Vec<String>,
}

/// The bands and mode the previous evaluation ended in; hysteresis depends on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyState {
    pub battery_band: BatteryBand,
    pub thermal_band: ThermalBand,
}

impl PolicyDecision {
    pub fn state(&self) -> PolicyState {
        PolicyState {
            battery_band: self.battery_band,
            thermal_band: self.thermal_band,
        }
    }
}

/// The battery band, with hysteresis against `previous`.
pub fn battery_band(r: &DeviceReadings, previous: Option<BatteryBand>) -> BatteryBand {
    let has_battery =
        r.battery_present == Some(true) || (r.battery_present.is_none() && r.battery_pct.is_some());
    if !has_battery {
        return BatteryBand::Mains;
    }
    let Some(pct) = r.battery_pct else {
        return BatteryBand::Unknown;
    };
    let raw = if pct <= BATTERY_CRITICAL_PCT {
        BatteryBand::Critical
    } else if pct <= BATTERY_LOW_PCT {
        BatteryBand::Low
    } else {
        BatteryBand::Normal
    };
    match previous {
        Some(BatteryBand::Critical) if pct <= BATTERY_CRITICAL_PCT + BATTERY_HYSTERESIS_PCT => {
            BatteryBand::Critical
        }
        Some(BatteryBand::Low | BatteryBand::Critical)
            if pct <= BATTERY_LOW_PCT + BATTERY_HYSTERESIS_PCT =>
        {
            raw.max(BatteryBand::Low)
        }
        _ => raw,
    }
}

/// The thermal band, with hysteresis against `previous`.
pub fn thermal_band(r: &DeviceReadings, previous: Option<ThermalBand>) -> ThermalBand {
    let Some(t) = r.temperature_c else {
        return ThermalBand::Unknown;
    };
    let raw = if t >= TEMP_CRITICAL_C {
        ThermalBand::Critical
    } else if t >= TEMP_HOT_C {
        ThermalBand::Hot
    } else if t >= TEMP_WARM_C {
        ThermalBand::Warm
    } else {
        ThermalBand::Normal
    };
    let held = |threshold: f32| t >= threshold - TEMP_HYSTERESIS_C;
    let floor = match previous {
        Some(ThermalBand::Critical) if held(TEMP_CRITICAL_C) => ThermalBand::Critical,
        Some(ThermalBand::Critical | ThermalBand::Hot) if held(TEMP_HOT_C) => ThermalBand::Hot,
        Some(ThermalBand::Critical | ThermalBand::Hot | ThermalBand::Warm) if held(TEMP_WARM_C) => {
            ThermalBand::Warm
        }
        _ => ThermalBand::Unknown,
    };
    raw.max(floor)
}

struct Hardware {
    mem_total: u64,
    cores: u32,
}

fn hardware(r: &DeviceReadings) -> Hardware {
    Hardware {
        // Unknown memory: plan for a small device.
        mem_total: r.mem_total_bytes.unwrap_or(GIB),
        cores: r.cores.unwrap_or(1),
    }
}

/// `pct` percent of `total`, rounded down.
fn fraction(total: u64, pct: u64) -> u64 {
    (u128::from(total) * u128::from(pct) / 100) as u64
}

/// Limits from the battery alone, and the mode they amount to.
fn battery_limits(band: BatteryBand, charging: bool, hw: &Hardware) -> (PowerMode, Limits) {
    // Charging softens a band by one step.
    let effective = match (band, charging) {
        (BatteryBand::Critical, true) => BatteryBand::Low,
        (BatteryBand::Low, true) => BatteryBand::Unknown,
        (BatteryBand::Normal | BatteryBand::Unknown, true) => BatteryBand::Mains,
        (b, _) => b,
    };
    match effective {
        BatteryBand::Mains => (
            PowerMode::Performance,
            Limits {
                cpu_pct: 90,
                memory_bytes: fraction(hw.mem_total, 75),
                max_tasks: hw.cores,
                chunk_bytes: 2048,
                transport: TransportPreference::BetanetPreferred,
                telemetry_multiplier: 1,
                ble_duty: DutyCycle::Continuous,
            },
        ),
        BatteryBand::Normal | BatteryBand::Unknown => (
            PowerMode::Balanced,
            Limits {
                cpu_pct: 60,
                memory_bytes: fraction(hw.mem_total, 50),
                max_tasks: (hw.cores / 2).max(1),
                chunk_bytes: 1024,
                transport: TransportPreference::Balanced,
                telemetry_multiplier: 1,
                ble_duty: DutyCycle::Balanced,
            },
        ),
        BatteryBand::Low => (
            PowerMode::PowerSave,
            Limits {
                cpu_pct: 35,
                memory_bytes: fraction(hw.mem_total, 30),
                max_tasks: 1,
                chunk_bytes: 512,
                transport: TransportPreference::BitchatPreferred,
                telemetry_multiplier: 2,
                ble_duty: DutyCycle::Low,
            },
        ),
        BatteryBand::Critical => (
            PowerMode::Critical,
            Limits {
                cpu_pct: 20,
                memory_bytes: fraction(hw.mem_total, 30).min(256 * MIB),
                max_tasks: 1,
                chunk_bytes: 128,
                transport: TransportPreference::BitchatOnly,
                telemetry_multiplier: 4,
                ble_duty: DutyCycle::UltraLow,
            },
        ),
    }
}

/// Limits from temperature alone, and the mode they amount to.
fn thermal_limits(band: ThermalBand, hw: &Hardware) -> (PowerMode, Limits) {
    let unlimited = Limits {
        cpu_pct: 100,
        memory_bytes: hw.mem_total,
        max_tasks: u32::MAX,
        chunk_bytes: 2048,
        transport: TransportPreference::BetanetPreferred,
        telemetry_multiplier: 1,
        ble_duty: DutyCycle::Continuous,
    };
    match band {
        ThermalBand::Unknown | ThermalBand::Normal => (PowerMode::Performance, unlimited),
        ThermalBand::Warm => (
            PowerMode::Balanced,
            Limits {
                cpu_pct: 60,
                max_tasks: (hw.cores / 2).max(1),
                ..unlimited
            },
        ),
        ThermalBand::Hot => (
            PowerMode::PowerSave,
            Limits {
                cpu_pct: 30,
                memory_bytes: fraction(hw.mem_total, 60),
                max_tasks: 1,
                chunk_bytes: 1024,
                transport: TransportPreference::Balanced,
                telemetry_multiplier: 2,
                ble_duty: DutyCycle::Balanced,
            },
        ),
        ThermalBand::Critical => (
            PowerMode::Critical,
            Limits {
                cpu_pct: 15,
                memory_bytes: fraction(hw.mem_total, 60).min(256 * MIB),
                // Shed all work until the device cools down.
                max_tasks: 0,
                chunk_bytes: 64,
                transport: TransportPreference::BitchatPreferred,
                telemetry_multiplier: 4,
                ble_duty: DutyCycle::Low,
            },
        ),
    }
}

/// Little free memory shrinks chunks and concurrency whatever the mode.
fn memory_pressure_limits(r: &DeviceReadings, base: Limits) -> Option<(Limits, String)> {
    let avail = r.mem_available_bytes?;
    let (chunk, tasks) = if avail < 256 * MIB {
        (64, 1)
    } else if avail < 512 * MIB {
        (256, 1)
    } else {
        return None;
    };
    Some((
        Limits {
            chunk_bytes: chunk,
            max_tasks: tasks,
            ..base
        },
        format!("only {} MiB of memory available", avail / MIB),
    ))
}

/// Evaluates the policy. `previous` is the last decision's state (None at start).
pub fn evaluate(r: &DeviceReadings, previous: Option<PolicyState>) -> PolicyDecision {
    let hw = hardware(r);
    let battery = battery_band(r, previous.map(|p| p.battery_band));
    let thermal = thermal_band(r, previous.map(|p| p.thermal_band));
    let charging = r.charging == Some(true);
    let (battery_mode, battery_limit) = battery_limits(battery, charging, &hw);
    let (thermal_mode, thermal_limit) = thermal_limits(thermal, &hw);
    let mut limits = battery_limit.strictest(thermal_limit);
    let mut reasons = Vec::new();
    match (battery, r.battery_pct) {
        (BatteryBand::Mains, _) => reasons.push("mains powered".to_owned()),
        (BatteryBand::Unknown, _) => reasons.push("battery level unknown".to_owned()),
        (band, Some(pct)) => reasons.push(format!(
            "battery {pct:.0} % ({}, {})",
            match band {
                BatteryBand::Critical => "critical",
                BatteryBand::Low => "low",
                _ => "normal",
            },
            if charging { "charging" } else { "discharging" }
        )),
        (_, None) => {}
    }
    match (thermal, r.temperature_c) {
        (ThermalBand::Unknown, _) => reasons.push("temperature unknown".to_owned()),
        (band, Some(t)) => reasons.push(format!(
            "temperature {t:.1} C ({})",
            match band {
                ThermalBand::Critical => "critical",
                ThermalBand::Hot => "hot",
                ThermalBand::Warm => "warm",
                _ => "normal",
            }
        )),
        (_, None) => {}
    }
    if let Some((pressured, why)) = memory_pressure_limits(r, limits) {
        limits = limits.strictest(pressured);
        reasons.push(why);
    }
    PolicyDecision {
        mode: battery_mode.max(thermal_mode),
        battery_band: battery,
        thermal_band: thermal,
        limits,
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn phone(battery: f32, charging: bool, temp: Option<f32>) -> DeviceReadings {
        DeviceReadings {
            cores: Some(8),
            mem_total_bytes: Some(4 * GIB),
            mem_available_bytes: Some(2 * GIB),
            battery_present: Some(true),
            battery_pct: Some(battery),
            charging: Some(charging),
            temperature_c: temp,
            ..DeviceReadings::default()
        }
    }

    fn desktop(temp: Option<f32>) -> DeviceReadings {
        DeviceReadings {
            cores: Some(8),
            mem_total_bytes: Some(32 * GIB),
            mem_available_bytes: Some(16 * GIB),
            battery_present: Some(false),
            temperature_c: temp,
            ..DeviceReadings::default()
        }
    }

    /// One row per line of the table in docs/power-policy.md.
    #[test]
    fn documented_table_rows() {
        use DutyCycle as D;
        use PowerMode as M;
        use TransportPreference as T;
        // name, readings, mode, cpu %, memory, tasks, chunk, transport, telemetry x, duty
        type Row = (
            &'static str,
            DeviceReadings,
            M,
            u8,
            u64,
            u32,
            u32,
            T,
            u32,
            D,
        );
        let rows: Vec<Row> = vec![
            (
                "desktop, cool",
                desktop(Some(40.0)),
                M::Performance,
                90,
                24 * GIB,
                8,
                2048,
                T::BetanetPreferred,
                1,
                D::Continuous,
            ),
            (
                "desktop, no sensor",
                desktop(None),
                M::Performance,
                90,
                24 * GIB,
                8,
                2048,
                T::BetanetPreferred,
                1,
                D::Continuous,
            ),
            (
                "phone 80 % charging",
                phone(80.0, true, Some(30.0)),
                M::Performance,
                90,
                3 * GIB,
                8,
                2048,
                T::BetanetPreferred,
                1,
                D::Continuous,
            ),
            (
                "phone 80 %",
                phone(80.0, false, Some(30.0)),
                M::Balanced,
                60,
                2 * GIB,
                4,
                1024,
                T::Balanced,
                1,
                D::Balanced,
            ),
            (
                "phone 15 % charging",
                phone(15.0, true, Some(30.0)),
                M::Balanced,
                60,
                2 * GIB,
                4,
                1024,
                T::Balanced,
                1,
                D::Balanced,
            ),
            (
                "phone 15 %",
                phone(15.0, false, Some(30.0)),
                M::PowerSave,
                35,
                1_288_490_188,
                1,
                512,
                T::BitchatPreferred,
                2,
                D::Low,
            ),
            (
                "phone 8 % charging",
                phone(8.0, true, Some(30.0)),
                M::PowerSave,
                35,
                1_288_490_188,
                1,
                512,
                T::BitchatPreferred,
                2,
                D::Low,
            ),
            (
                "phone 8 %",
                phone(8.0, false, Some(30.0)),
                M::Critical,
                20,
                256 * MIB,
                1,
                128,
                T::BitchatOnly,
                4,
                D::UltraLow,
            ),
            (
                "desktop 50 C",
                desktop(Some(50.0)),
                M::Balanced,
                60,
                24 * GIB,
                4,
                2048,
                T::BetanetPreferred,
                1,
                D::Continuous,
            ),
            (
                "desktop 58 C",
                desktop(Some(58.0)),
                M::PowerSave,
                30,
                20_615_843_020,
                1,
                1024,
                T::Balanced,
                2,
                D::Balanced,
            ),
            (
                "desktop 70 C",
                desktop(Some(70.0)),
                M::Critical,
                15,
                256 * MIB,
                0,
                64,
                T::BitchatPreferred,
                4,
                D::Low,
            ),
            (
                "phone 15 % at 58 C",
                phone(15.0, false, Some(58.0)),
                M::PowerSave,
                30,
                1_288_490_188,
                1,
                512,
                T::BitchatPreferred,
                2,
                D::Low,
            ),
        ];
        for (name, r, mode, cpu, mem, tasks, chunk, transport, tele, duty) in rows {
            let d = evaluate(&r, None);
            assert_eq!(d.mode, mode, "{name}");
            let want = Limits {
                cpu_pct: cpu,
                memory_bytes: mem,
                max_tasks: tasks,
                chunk_bytes: chunk,
                transport,
                telemetry_multiplier: tele,
                ble_duty: duty,
            };
            assert_eq!(d.limits, want, "{name}");
        }
    }

    #[test]
    fn memory_pressure_reaches_the_smallest_chunks() {
        let mut r = desktop(Some(30.0));
        r.mem_available_bytes = Some(100 * MIB);
        let d = evaluate(&r, None);
        assert_eq!(d.limits.chunk_bytes, 64);
        assert_eq!(d.limits.max_tasks, 1);
        assert!(d.reasons.iter().any(|w| w.contains("memory")));
    }

    #[test]
    fn zero_battery_is_critical_not_unknown() {
        assert_eq!(
            evaluate(&phone(0.0, false, None), None).mode,
            PowerMode::Critical
        );
        let mut unknown = phone(0.0, false, None);
        unknown.battery_pct = None;
        assert_eq!(evaluate(&unknown, None).battery_band, BatteryBand::Unknown);
    }

    #[test]
    fn hysteresis_edges() {
        // Enter low at 20, stay low up to 23, leave at 23.1.
        let s = evaluate(&phone(20.0, false, None), None).state();
        assert_eq!(s.battery_band, BatteryBand::Low);
        let s2 = evaluate(&phone(23.0, false, None), Some(s)).state();
        assert_eq!(s2.battery_band, BatteryBand::Low);
        assert_eq!(
            evaluate(&phone(23.1, false, None), Some(s2)).battery_band,
            BatteryBand::Normal
        );
        // Hot at 55, still hot at 52, warm at 51.9.
        let h = evaluate(&desktop(Some(55.0)), None).state();
        assert_eq!(h.thermal_band, ThermalBand::Hot);
        assert_eq!(
            evaluate(&desktop(Some(52.0)), Some(h)).thermal_band,
            ThermalBand::Hot
        );
        assert_eq!(
            evaluate(&desktop(Some(51.9)), Some(h)).thermal_band,
            ThermalBand::Warm
        );
        // Critical leaves only below 62.
        let c = evaluate(&desktop(Some(65.0)), None).state();
        assert_eq!(
            evaluate(&desktop(Some(62.0)), Some(c)).thermal_band,
            ThermalBand::Critical
        );
        assert_eq!(
            evaluate(&desktop(Some(61.9)), Some(c)).thermal_band,
            ThermalBand::Hot
        );
    }

    fn band_state() -> impl Strategy<Value = Option<PolicyState>> {
        let b = prop_oneof![
            Just(BatteryBand::Mains),
            Just(BatteryBand::Normal),
            Just(BatteryBand::Unknown),
            Just(BatteryBand::Low),
            Just(BatteryBand::Critical)
        ];
        let t = prop_oneof![
            Just(ThermalBand::Unknown),
            Just(ThermalBand::Normal),
            Just(ThermalBand::Warm),
            Just(ThermalBand::Hot),
            Just(ThermalBand::Critical)
        ];
        proptest::option::of((b, t).prop_map(|(battery_band, thermal_band)| PolicyState {
            battery_band,
            thermal_band,
        }))
    }

    proptest! {
        // A worse battery never gets higher limits (same temperature, charging and history).
        #[test]
        fn limits_are_monotone_in_battery(a in 0.0f32..=100.0, b in 0.0f32..=100.0,
                                          charging in any::<bool>(), temp in proptest::option::of(0.0f32..90.0),
                                          prev in band_state()) {
            let (low, high) = if a <= b { (a, b) } else { (b, a) };
            let worse = evaluate(&phone(low, charging, temp), prev);
            let better = evaluate(&phone(high, charging, temp), prev);
            prop_assert!(worse.limits.no_looser_than(&better.limits), "{worse:?} vs {better:?}");
            prop_assert!(worse.mode >= better.mode);
        }

        // A hotter device never gets higher limits.
        #[test]
        fn limits_are_monotone_in_temperature(a in -20.0f32..100.0, b in -20.0f32..100.0,
                                              battery in 0.0f32..=100.0, prev in band_state()) {
            let (cool, hot) = if a <= b { (a, b) } else { (b, a) };
            let hotter = evaluate(&phone(battery, false, Some(hot)), prev);
            let cooler = evaluate(&phone(battery, false, Some(cool)), prev);
            prop_assert!(hotter.limits.no_looser_than(&cooler.limits));
            prop_assert!(hotter.mode >= cooler.mode);
        }

        // Readings that oscillate inside a hysteresis band after entering it never change mode.
        #[test]
        fn no_flapping_inside_battery_band(threshold in prop_oneof![Just(10.0f32), Just(20.0f32)],
                                           wiggle in proptest::collection::vec(0.0f32..=3.0, 1..50)) {
            let first = evaluate(&phone(threshold, false, None), None);
            let mut state = first.state();
            for w in wiggle {
                let d = evaluate(&phone(threshold + w, false, None), Some(state));
                prop_assert_eq!(d.mode, first.mode);
                state = d.state();
            }
        }

        #[test]
        fn no_flapping_inside_thermal_band(threshold in prop_oneof![Just(45.0f32), Just(55.0f32), Just(65.0f32)],
                                           wiggle in proptest::collection::vec(-3.0f32..=0.9, 1..50)) {
            let first = evaluate(&desktop(Some(threshold)), None);
            let mut state = first.state();
            for w in wiggle {
                let d = evaluate(&desktop(Some(threshold + w)), Some(state));
                prop_assert_eq!(d.mode, first.mode);
                state = d.state();
            }
        }

        // Every chunk size the policy yields lies in 64..=2048.
        #[test]
        fn chunks_stay_in_range(battery in 0.0f32..=100.0, temp in -20.0f32..100.0,
                                avail in 0u64..(64 * GIB), charging in any::<bool>()) {
            let mut r = phone(battery, charging, Some(temp));
            r.mem_total_bytes = Some(64 * GIB);
            r.mem_available_bytes = Some(avail);
            let c = evaluate(&r, None).limits.chunk_bytes;
            prop_assert!((64..=2048).contains(&c));
        }
    }
}
