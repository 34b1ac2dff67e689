//! Node score, used for coordinator election and task placement: how much useful work this
//! node can take on now.
//!
//! ```text
//! score    = capacity x power x thermal
//! capacity = hardware x free
//!   hardware = 0.5 x min(1, cores / 8) + 0.5 x min(1, memory GiB / 16)
//!   free     = 0.5 x (1 - cpu load) + 0.5 x (available memory / total memory)
//! power    = 1.0 on mains; on battery by level:
//!              0 % -> 0 (empty), <= 10 % -> 0.1, <= 20 % -> 0.3, <= 50 % -> 0.6, else 0.9,
//!              unknown level -> 0.5;
//!            x 1.5 when the battery device is charging
//! thermal  = normal or unknown 1.0, warm 0.8, hot 0.4, critical 0.1   (applied once)
//! ```
//!
//! Unknown hardware values count as the small end (1 core, 1 GiB); an unknown load or
//! available memory counts as half free. The bands come from the power policy, so the score
//! shares its hysteresis. Worked examples are in `docs/power-policy.md` and the tests below.

use super::policy::{BatteryBand, PolicyDecision, ThermalBand};
use super::readings::DeviceReadings;

const GIB: f64 = (1u64 << 30) as f64;

pub fn hardware_factor(r: &DeviceReadings) -> f64 {
    let cores = f64::from(r.cores.unwrap_or(1));
    let mem_gib = r.mem_total_bytes.map(|b| b as f64 / GIB).unwrap_or(1.0);
    0.5 * (cores / 8.0).min(1.0) + 0.5 * (mem_gib / 16.0).min(1.0)
}

pub fn free_factor(r: &DeviceReadings) -> f64 {
    let cpu_free = r
        .cpu_load_pct
        .map(|l| 1.0 - f64::from(l) / 100.0)
        .unwrap_or(0.5);
    let mem_free = match (r.mem_available_bytes, r.mem_total_bytes) {
        (Some(a), Some(t)) if t > 0 => a as f64 / t as f64,
        _ => 0.5,
    };
    0.5 * cpu_free.clamp(0.0, 1.0) + 0.5 * mem_free.clamp(0.0, 1.0)
}

pub fn power_factor(r: &DeviceReadings, band: BatteryBand) -> f64 {
    if band == BatteryBand::Mains {
        return 1.0;
    }
    let level = match r.battery_pct {
        None => 0.5,
        Some(p) if p <= 0.0 => 0.0,
        Some(p) if p <= 10.0 => 0.1,
        Some(p) if p <= 20.0 => 0.3,
        Some(p) if p <= 50.0 => 0.6,
        Some(_) => 0.9,
    };
    if r.charging == Some(true) {
        level * 1.5
    } else {
        level
    }
}

pub fn thermal_factor(band: ThermalBand) -> f64 {
    match band {
        ThermalBand::Unknown | ThermalBand::Normal => 1.0,
        ThermalBand::Warm => 0.8,
        ThermalBand::Hot => 0.4,
        ThermalBand::Critical => 0.1,
    }
}

/// The score of a device with these readings under this policy decision.
pub fn score(r: &DeviceReadings, decision: &PolicyDecision) -> f64 {
    hardware_factor(r)
        * free_factor(r)
        * power_factor(r, decision.battery_band)
        * thermal_factor(decision.thermal_band)
}

#[cfg(test)]
mod tests {
    use super::super::policy::evaluate;
    use super::*;

    const G: u64 = 1 << 30;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    fn score_of(r: DeviceReadings) -> f64 {
        score(&r, &evaluate(&r, None))
    }

    // The worked examples of docs/power-policy.md.
    #[test]
    fn worked_examples() {
        // Desktop: 8 cores, 32 GiB, 20 % load, 16 GiB free, 40 C.
        let desktop = DeviceReadings {
            cores: Some(8),
            mem_total_bytes: Some(32 * G),
            mem_available_bytes: Some(16 * G),
            cpu_load_pct: Some(20.0),
            battery_present: Some(false),
            temperature_c: Some(40.0),
            ..DeviceReadings::default()
        };
        // hardware 1.0, free 0.5*0.8 + 0.5*0.5 = 0.65, power 1, thermal 1.
        assert!(close(score_of(desktop), 0.65));

        // Charging phone: 8 cores, 4 GiB (2 free), 10 % load, 60 %, 35 C.
        let phone = DeviceReadings {
            cores: Some(8),
            mem_total_bytes: Some(4 * G),
            mem_available_bytes: Some(2 * G),
            cpu_load_pct: Some(10.0),
            battery_present: Some(true),
            battery_pct: Some(60.0),
            charging: Some(true),
            temperature_c: Some(35.0),
            ..DeviceReadings::default()
        };
        // hardware 0.5 + 0.5*0.25 = 0.625, free 0.45 + 0.25 = 0.7, power 0.9*1.5 = 1.35.
        let charging = score_of(phone);
        assert!(close(charging, 0.625 * 0.7 * 1.35));
        // The same phone unplugged at 15 %: power 0.3.
        let low = DeviceReadings {
            battery_pct: Some(15.0),
            charging: Some(false),
            ..phone
        };
        assert!(close(score_of(low), 0.625 * 0.7 * 0.3));
        // Empty is empty, even while charging.
        let empty = DeviceReadings {
            battery_pct: Some(0.0),
            ..phone
        };
        assert_eq!(score_of(empty), 0.0);

        // Warm Raspberry Pi: 4 cores, 2 GiB (1 free), 50 % load, 50 C: thermal once (0.8).
        let pi = DeviceReadings {
            cores: Some(4),
            mem_total_bytes: Some(2 * G),
            mem_available_bytes: Some(G),
            cpu_load_pct: Some(50.0),
            battery_present: Some(false),
            temperature_c: Some(50.0),
            ..DeviceReadings::default()
        };
        // hardware 0.25 + 0.0625 = 0.3125, free 0.5, power 1, thermal 0.8.
        assert!(close(score_of(pi), 0.3125 * 0.5 * 0.8));
    }

    #[test]
    fn unknowns_are_modest_not_zero_or_full() {
        let nothing = DeviceReadings::default();
        let s = score_of(nothing);
        // 1 core / 1 GiB hardware, half free, mains (no battery known), no thermal penalty.
        assert!(close(s, (0.5 / 8.0 + 0.5 / 16.0) * 0.5));
    }
}
