//! Reading the host: CPU load and memory for telemetry. Edge code; every reading is an
//! `Option` because a sensor that fails is unknown, never a made-up zero.

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// One reading of the host.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HostSample {
    pub cpu_load_pct: Option<f32>,
    pub mem_used_bytes: Option<u64>,
    pub mem_total_bytes: Option<u64>,
    pub rss_bytes: Option<u64>,
}

/// Keeps sysinfo's state between readings (CPU load is a difference of two readings).
#[derive(Debug)]
pub struct HostSampler {
    system: System,
    pid: Option<Pid>,
}

impl Default for HostSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl HostSampler {
    pub fn new() -> Self {
        let mut system = System::new();
        // Prime the CPU counters so the first real sample has a baseline.
        system.refresh_cpu_usage();
        Self {
            system,
            pid: sysinfo::get_current_pid().ok(),
        }
    }

    pub fn sample(&mut self) -> HostSample {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        let cpu = self.system.global_cpu_usage();
        let total = self.system.total_memory();
        let used = self.system.used_memory();
        let rss = self.pid.and_then(|pid| {
            self.system.refresh_processes_specifics(
                ProcessesToUpdate::Some(&[pid]),
                false,
                ProcessRefreshKind::nothing().with_memory(),
            );
            self.system.process(pid).map(|p| p.memory())
        });
        HostSample {
            cpu_load_pct: (cpu.is_finite() && (0.0..=100.0).contains(&cpu)).then_some(cpu),
            mem_used_bytes: (total > 0).then_some(used),
            mem_total_bytes: (total > 0).then_some(total),
            rss_bytes: rss.filter(|r| *r > 0),
        }
    }
}
