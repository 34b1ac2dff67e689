//! What a member may run now: its device, within its power policy's current limits.

use serde::{Deserialize, Serialize};

use crate::task::Requirements;

/// A battery device that is not charging takes no long task below this charge.
pub const LONG_TASK_MIN_BATTERY_PCT: u8 = 50;

/// A member's battery, as its telemetry reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Battery {
    pub pct: u8,
    pub charging: bool,
}

/// What a member offers, as it last reported (its device profile and the power policy's
/// limits of the moment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCapacity {
    pub cores: u32,
    /// The policy's CPU limit, in percent of all cores.
    pub cpu_pct: u8,
    /// Memory tasks may use (the policy's limit, or less if the device has less free).
    pub memory_mb: u32,
    /// The policy's limit on concurrent tasks.
    pub max_tasks: u32,
    pub gpu: bool,
    /// None: mains powered.
    pub battery: Option<Battery>,
    /// The node score (capacity × power × thermal), in thousandths.
    pub score_milli: u32,
}

impl NodeCapacity {
    /// CPU tasks may use, in thousandths of a core.
    pub fn cpu_budget_millicores(&self) -> u32 {
        let all = u64::from(self.cores) * 1000 * u64::from(self.cpu_pct.min(100)) / 100;
        u32::try_from(all).unwrap_or(u32::MAX)
    }

    /// Whether the device may take a task longer than [`crate::task::LONG_TASK_MS`].
    pub fn takes_long_tasks(&self) -> bool {
        match self.battery {
            None => true,
            Some(b) => b.charging || b.pct >= LONG_TASK_MIN_BATTERY_PCT,
        }
    }

    /// Whether a task needing `req` could ever run here (on an idle node).
    pub fn could_run(&self, req: &Requirements) -> bool {
        self.fits(&Load::default(), req)
    }

    /// Whether a task needing `req` fits beside `load`.
    pub fn fits(&self, load: &Load, req: &Requirements) -> bool {
        (!req.gpu || self.gpu)
            && (!req.is_long() || self.takes_long_tasks())
            && load.tasks < self.max_tasks
            && load.cpu_millicores.saturating_add(req.cpu_millicores)
                <= self.cpu_budget_millicores()
            && load.memory_mb.saturating_add(req.memory_mb) <= self.memory_mb
    }

    /// Whether `load` is within the limits (a tightened policy can leave a node above them
    /// until it sheds work).
    pub fn within(&self, load: &Load) -> bool {
        load.tasks <= self.max_tasks
            && load.cpu_millicores <= self.cpu_budget_millicores()
            && load.memory_mb <= self.memory_mb
    }
}

/// What a member's assigned tasks use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    pub cpu_millicores: u32,
    pub memory_mb: u32,
    pub tasks: u32,
}

impl Load {
    pub fn add(&mut self, req: &Requirements) {
        self.cpu_millicores = self.cpu_millicores.saturating_add(req.cpu_millicores);
        self.memory_mb = self.memory_mb.saturating_add(req.memory_mb);
        self.tasks = self.tasks.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phone(pct: u8, charging: bool) -> NodeCapacity {
        NodeCapacity {
            cores: 8,
            cpu_pct: 35,
            memory_mb: 512,
            max_tasks: 2,
            gpu: false,
            battery: Some(Battery { pct, charging }),
            score_milli: 400,
        }
    }

    fn req(cpu_millicores: u32, memory_mb: u32, duration_ms: u64, gpu: bool) -> Requirements {
        Requirements {
            cpu_millicores,
            memory_mb,
            duration_ms,
            gpu,
        }
    }

    #[test]
    fn cpu_budget_is_the_policy_share_of_all_cores() {
        assert_eq!(phone(80, false).cpu_budget_millicores(), 2800);
    }

    #[test]
    fn limits_gpu_and_battery_decide_what_fits() {
        let p = phone(80, false);
        let mut load = Load::default();
        assert!(p.fits(&load, &req(2000, 256, 10_000, false)));
        assert!(
            !p.fits(&load, &req(3000, 256, 10_000, false)),
            "over the CPU share"
        );
        assert!(
            !p.fits(&load, &req(100, 1024, 10_000, false)),
            "over memory"
        );
        assert!(!p.fits(&load, &req(100, 1, 10_000, true)), "no GPU");
        load.add(&req(100, 1, 1, false));
        load.add(&req(100, 1, 1, false));
        assert!(!p.fits(&load, &req(100, 1, 1, false)), "at max tasks");
        // Long tasks: not on a drained battery that is not charging.
        let long = req(100, 1, 10 * 60_000, false);
        assert!(p.could_run(&long));
        assert!(!phone(30, false).could_run(&long));
        assert!(phone(30, true).could_run(&long));
        assert!(phone(30, false).could_run(&req(100, 1, 30_000, false)));
    }
}
