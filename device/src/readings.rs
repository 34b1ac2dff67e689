//! What a node knows about the device it runs on. Every reading is an `Option`: a sensor that
//! fails or reports something impossible is *unknown*, never a made-up zero.

use serde::{Deserialize, Serialize};

const GIB: u64 = 1 << 30;

/// One sensing pass, after validation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceReadings {
    /// Logical CPU cores.
    pub cores: Option<u32>,
    pub mem_total_bytes: Option<u64>,
    pub mem_available_bytes: Option<u64>,
    /// Disk holding the data dir.
    pub storage_total_bytes: Option<u64>,
    pub storage_available_bytes: Option<u64>,
    /// Whether the device has a battery at all.
    pub battery_present: Option<bool>,
    /// Charge in percent, 0 to 100. 0 means empty, not unknown.
    pub battery_pct: Option<f32>,
    pub charging: Option<bool>,
    /// Hottest relevant temperature sensor, in degrees Celsius.
    pub temperature_c: Option<f32>,
    pub gpu: Option<bool>,
    /// Whole-system CPU load, 0 to 100.
    pub cpu_load_pct: Option<f32>,
}

/// A reading that was refused as impossible.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedReading {
    pub sensor: &'static str,
    pub value: String,
}

impl DeviceReadings {
    /// Drops impossible values (battery outside 0-100 %, temperatures outside -50..150 C,
    /// zero cores or memory, available above total) and reports each one.
    pub fn validated(mut self) -> (Self, Vec<RejectedReading>) {
        let mut rejected = Vec::new();
        let mut reject =
            |sensor: &'static str, value: String| rejected.push(RejectedReading { sensor, value });
        if let Some(b) = self.battery_pct {
            if !(b.is_finite() && (0.0..=100.0).contains(&b)) {
                reject("battery_pct", b.to_string());
                self.battery_pct = None;
            }
        }
        if let Some(t) = self.temperature_c {
            if !(t.is_finite() && (-50.0..=150.0).contains(&t)) {
                reject("temperature_c", t.to_string());
                self.temperature_c = None;
            }
        }
        if let Some(l) = self.cpu_load_pct {
            if !(l.is_finite() && (0.0..=100.0).contains(&l)) {
                reject("cpu_load_pct", l.to_string());
                self.cpu_load_pct = None;
            }
        }
        if self.cores == Some(0) {
            reject("cores", "0".into());
            self.cores = None;
        }
        if self.mem_total_bytes == Some(0) {
            reject("mem_total_bytes", "0".into());
            self.mem_total_bytes = None;
        }
        if let (Some(avail), Some(total)) = (self.mem_available_bytes, self.mem_total_bytes) {
            if avail > total {
                reject("mem_available_bytes", avail.to_string());
                self.mem_available_bytes = None;
            }
        }
        if let (Some(avail), Some(total)) = (self.storage_available_bytes, self.storage_total_bytes)
        {
            if avail > total {
                reject("storage_available_bytes", avail.to_string());
                self.storage_available_bytes = None;
            }
        }
        if self.battery_present == Some(false) {
            // No battery: a charge reading is noise.
            self.battery_pct = None;
            self.charging = None;
        }
        (self, rejected)
    }

    /// Runs on battery power right now: has a battery and is known not to be charging.
    /// A battery device whose charging state is unknown counts as discharging (the careful
    /// assumption).
    pub fn on_battery_power(&self) -> bool {
        self.battery_present == Some(true) && self.charging != Some(true)
    }

    pub fn mem_total_gib(&self) -> Option<f64> {
        self.mem_total_bytes.map(|b| b as f64 / GIB as f64)
    }
}
