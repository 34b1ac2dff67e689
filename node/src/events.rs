//! Placeholder for the event stream's types (replaced by the events-metrics branch).

use serde::{Deserialize, Serialize};

/// Something that happened in the node, as the live event stream reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NodeEvent {
    PeerConnected {
        peer_id: String,
        addr: String,
        direction: String,
    },
    PeerDisconnected {
        peer_id: String,
        cause: String,
    },
    TelemetryReceived {
        origin: String,
        seq: u64,
        latency_ms: u64,
    },
    TelemetryExpired {
        origin: String,
    },
    AdmissionRefused {
        remote: String,
        direction: String,
        reason: String,
    },
    RevocationApplied {
        ticket_id: String,
        disconnected: Vec<String>,
    },
    Lifecycle {
        from: crate::lifecycle::Phase,
        to: crate::lifecycle::Phase,
        reason: String,
    },
    PowerMode {
        from: Option<String>,
        to: String,
        score: f64,
        reasons: Vec<String>,
    },
    Lagged {
        missed: u64,
    },
}

/// Where events go (replaced by the events-metrics branch).
#[derive(Debug, Clone, Default)]
pub struct EventBus;

impl EventBus {
    pub fn publish(&self, _event: NodeEvent) {}
}
