//! Sensing the host (edge code): cores, memory, storage, battery, temperature, GPU, CPU load.
//! Every reading is an `Option`; a failing sensor is unknown, never zero. Values are checked
//! by [`DeviceReadings::validated`] before any policy sees them.

use std::path::{Path, PathBuf};

use sysinfo::{Components, Disks, Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use super::readings::DeviceReadings;

/// Sensor labels that say something about how hot the device's compute is.
const RELEVANT_SENSORS: &[&str] = &[
    "cpu", "package", "core", "tctl", "tdie", "soc", "acpitz", "k10temp", "coretemp", "x86_pkg",
    "battery",
];

/// Keeps sysinfo's state between passes (CPU load is the difference of two readings).
#[derive(Debug)]
pub struct DeviceSensor {
    system: System,
    components: Components,
    disks: Disks,
    data_dir: PathBuf,
    pid: Option<Pid>,
}

impl DeviceSensor {
    /// `data_dir` selects the disk whose storage is reported.
    pub fn new(data_dir: &Path) -> Self {
        let mut system = System::new();
        // Baseline for the CPU load of the next pass.
        system.refresh_cpu_usage();
        Self {
            system,
            components: Components::new_with_refreshed_list(),
            disks: Disks::new_with_refreshed_list(),
            data_dir: std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf()),
            pid: sysinfo::get_current_pid().ok(),
        }
    }

    /// One full sensing pass. The first pass after `new` has no CPU load yet.
    pub fn sense(&mut self) -> DeviceReadings {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        self.components.refresh(false);
        self.disks.refresh(false);
        let cores = u32::try_from(self.system.cpus().len())
            .ok()
            .filter(|c| *c > 0);
        let cpu = self.system.global_cpu_usage();
        let total = self.system.total_memory();
        let available = self.system.available_memory();
        let (storage_total, storage_available) = self.storage();
        let (battery_present, battery_pct, charging) = battery();
        DeviceReadings {
            cores,
            mem_total_bytes: (total > 0).then_some(total),
            mem_available_bytes: (total > 0).then_some(available),
            storage_total_bytes: storage_total,
            storage_available_bytes: storage_available,
            battery_present,
            battery_pct,
            charging,
            temperature_c: self.hottest_sensor(),
            gpu: gpu_present(),
            cpu_load_pct: (cores.is_some() && cpu > 0.0).then_some(cpu),
        }
    }

    /// This process's resident memory.
    pub fn rss_bytes(&mut self) -> Option<u64> {
        let pid = self.pid?;
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            false,
            ProcessRefreshKind::nothing().with_memory(),
        );
        self.system
            .process(pid)
            .map(|p| p.memory())
            .filter(|m| *m > 0)
    }

    fn storage(&self) -> (Option<u64>, Option<u64>) {
        let disk = self
            .disks
            .list()
            .iter()
            .filter(|d| self.data_dir.starts_with(d.mount_point()))
            .max_by_key(|d| d.mount_point().as_os_str().len());
        match disk {
            Some(d) if d.total_space() > 0 => (Some(d.total_space()), Some(d.available_space())),
            _ => (None, None),
        }
    }

    fn hottest_sensor(&self) -> Option<f32> {
        let readings: Vec<(String, f32)> = self
            .components
            .list()
            .iter()
            .filter_map(|c| c.temperature().map(|t| (c.label().to_ascii_lowercase(), t)))
            .filter(|(_, t)| t.is_finite())
            .collect();
        let relevant = readings
            .iter()
            .filter(|(label, _)| RELEVANT_SENSORS.iter().any(|k| label.contains(k)))
            .map(|(_, t)| *t)
            .fold(None, |acc: Option<f32>, t| {
                Some(acc.map_or(t, |a| a.max(t)))
            });
        relevant.or_else(|| {
            readings
                .iter()
                .map(|(_, t)| *t)
                .fold(None, |acc: Option<f32>, t| {
                    Some(acc.map_or(t, |a| a.max(t)))
                })
        })
    }
}

/// (present, level %, charging). No battery at all is `Some(false)`; a failing battery API is
/// `None` (unknown).
fn battery() -> (Option<bool>, Option<f32>, Option<bool>) {
    use starship_battery::State;
    let Ok(manager) = starship_battery::Manager::new() else {
        return (None, None, None);
    };
    let Ok(batteries) = manager.batteries() else {
        return (None, None, None);
    };
    let batteries: Vec<_> = batteries.flatten().collect();
    let Some(first) = batteries.first() else {
        return (Some(false), None, None);
    };
    // Several batteries (some laptops): report the mean level; charging if any charges.
    let level = batteries
        .iter()
        .map(|b| b.state_of_charge().value * 100.0)
        .sum::<f32>()
        / batteries.len() as f32;
    let charging = match first.state() {
        // Full and Paused (charge limit reached) mean plugged in.
        State::Charging | State::Full | State::Paused => Some(true),
        State::Discharging | State::Empty => Some(false),
        _ => None,
    };
    let charging = if batteries.iter().any(|b| b.state() == State::Charging) {
        Some(true)
    } else {
        charging
    };
    (Some(true), Some(level), charging)
}

fn gpu_present() -> Option<bool> {
    if cfg!(target_os = "linux") {
        let render_node = std::fs::read_dir("/dev/dri")
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("renderD"))
            })
            .unwrap_or(false);
        let nvidia = Path::new("/proc/driver/nvidia/gpus").exists();
        Some(render_node || nvidia)
    } else {
        None
    }
}
