//! What a task asks for, and how urgent it is.

use serde::{Deserialize, Serialize};

/// A task's identity: assigned by the submitter (a hash of its spec and submission), unique
/// within the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskId(pub [u8; 16]);

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for TaskId {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(text).map_err(|e| format!("not a task id: {e}"))?;
        let id: [u8; 16] = bytes
            .try_into()
            .map_err(|_| "not a task id: 32 hex digits expected".to_string())?;
        Ok(TaskId(id))
    }
}

/// How urgent a task is. The weights are the design's: critical 10, high 7, normal 3, low 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    Normal,
    High,
    Critical,
}

impl Priority {
    pub fn weight(self) -> u64 {
        match self {
            Priority::Low => 1,
            Priority::Normal => 3,
            Priority::High => 7,
            Priority::Critical => 10,
        }
    }

    pub fn parse(text: &str) -> Option<Priority> {
        match text {
            "low" => Some(Priority::Low),
            "normal" => Some(Priority::Normal),
            "high" => Some(Priority::High),
            "critical" => Some(Priority::Critical),
            _ => None,
        }
    }
}

/// A waiting task gains one priority point per [`AGING_STEP_MS`] waited, so a low task is
/// never starved: after 4.5 minutes it ranks with a fresh critical one.
pub const AGING_STEP_MS: u64 = 30_000;

/// A task longer than this counts as long: it is not placed on a battery device that is not
/// charging and below [`crate::capacity::LONG_TASK_MIN_BATTERY_PCT`].
pub const LONG_TASK_MS: u64 = 60_000;

/// What a task needs from the node that runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirements {
    /// CPU in thousandths of a core (1000 = one core).
    pub cpu_millicores: u32,
    pub memory_mb: u32,
    /// The submitter's estimate; also the execution's wall-clock limit.
    pub duration_ms: u64,
    pub gpu: bool,
}

impl Requirements {
    pub fn is_long(&self) -> bool {
        self.duration_ms > LONG_TASK_MS
    }
}

/// A task as the cluster keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub id: TaskId,
    pub priority: Priority,
    pub requirements: Requirements,
    /// Content hash of the WebAssembly module.
    pub module: [u8; 32],
    /// Content hash of the input, if any.
    pub input: Option<[u8; 32]>,
    /// PeerId bytes of the submitter.
    pub submitter: Vec<u8>,
    pub submitted_at_ms: u64,
}

impl TaskSpec {
    /// The priority the scheduler ranks by at `now_ms`: the weight plus one per aging step
    /// waited.
    pub fn effective_priority(&self, now_ms: u64) -> u64 {
        let waited = now_ms.saturating_sub(self.submitted_at_ms);
        self.priority.weight() + waited / AGING_STEP_MS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_the_designs() {
        let weights: Vec<u64> = [
            Priority::Critical,
            Priority::High,
            Priority::Normal,
            Priority::Low,
        ]
        .iter()
        .map(|p| p.weight())
        .collect();
        assert_eq!(weights, vec![10, 7, 3, 1]);
        assert_eq!(Priority::parse("high"), Some(Priority::High));
        assert_eq!(Priority::parse("urgent"), None);
    }

    #[test]
    fn a_waiting_low_task_catches_up_with_a_fresh_critical_one() {
        let spec = |priority, submitted_at_ms| TaskSpec {
            id: TaskId([0; 16]),
            priority,
            requirements: Requirements {
                cpu_millicores: 100,
                memory_mb: 1,
                duration_ms: 1000,
                gpu: false,
            },
            module: [0; 32],
            input: None,
            submitter: vec![],
            submitted_at_ms,
        };
        let now = 10 * 60_000;
        let old_low = spec(Priority::Low, now - 9 * AGING_STEP_MS);
        let fresh_critical = spec(Priority::Critical, now);
        assert_eq!(
            old_low.effective_priority(now),
            fresh_critical.effective_priority(now)
        );
        assert!(spec(Priority::Low, now).effective_priority(now) < 10);
    }
}
