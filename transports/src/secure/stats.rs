//! Counters for handshakes and rekeys, shared by every connection of a node.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Which side of a connection we were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(&self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

#[derive(Debug, Default)]
pub struct SecurityStats {
    admitted_inbound: AtomicU64,
    admitted_outbound: AtomicU64,
    noise_inbound: AtomicU64,
    noise_outbound: AtomicU64,
    rekeys_sent: AtomicU64,
    rekeys_received: AtomicU64,
    /// "inbound.expired" -> count. Keys are stable reason names, so the map stays small.
    refused: Mutex<BTreeMap<String, u64>>,
    /// Admitted connections ended by a bad transport frame: reason -> count.
    stream_errors: Mutex<BTreeMap<&'static str, u64>>,
}

/// A point-in-time copy, as served by the control API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecuritySnapshot {
    pub admitted_inbound: u64,
    pub admitted_outbound: u64,
    /// Of the admissions above, those that ran libp2p's `/noise` (open meshes) instead of
    /// `/fogmesh/xk/1`. Absent in the JSON of older nodes.
    #[serde(default)]
    pub admitted_noise_inbound: u64,
    #[serde(default)]
    pub admitted_noise_outbound: u64,
    pub rekeys_sent: u64,
    pub rekeys_received: u64,
    pub refused: BTreeMap<String, u64>,
    /// Connections closed after admission because a transport frame was too short
    /// (`bad_frame`), did not decrypt (`decrypt_failed`) or was cut off (`truncated`).
    #[serde(default)]
    pub stream_errors: BTreeMap<String, u64>,
}

impl SecurityStats {
    pub fn count_admitted(&self, direction: Direction) {
        let counter = match direction {
            Direction::Inbound => &self.admitted_inbound,
            Direction::Outbound => &self.admitted_outbound,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks one admission (counted with [`Self::count_admitted`]) as made over `/noise`.
    pub fn count_admitted_via_noise(&self, direction: Direction) {
        let counter = match direction {
            Direction::Inbound => &self.noise_inbound,
            Direction::Outbound => &self.noise_outbound,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_refused(&self, direction: Direction, reason: &'static str) {
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        *refused
            .entry(format!("{}.{reason}", direction.as_str()))
            .or_default() += 1;
    }

    pub fn count_stream_error(&self, reason: &'static str) {
        let mut errors = self.stream_errors.lock().unwrap_or_else(|p| p.into_inner());
        *errors.entry(reason).or_default() += 1;
    }

    pub fn count_rekey_sent(&self) {
        self.rekeys_sent.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_rekey_received(&self) {
        self.rekeys_received.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> SecuritySnapshot {
        SecuritySnapshot {
            admitted_inbound: self.admitted_inbound.load(Ordering::Relaxed),
            admitted_outbound: self.admitted_outbound.load(Ordering::Relaxed),
            admitted_noise_inbound: self.noise_inbound.load(Ordering::Relaxed),
            admitted_noise_outbound: self.noise_outbound.load(Ordering::Relaxed),
            rekeys_sent: self.rekeys_sent.load(Ordering::Relaxed),
            rekeys_received: self.rekeys_received.load(Ordering::Relaxed),
            refused: self
                .refused
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            stream_errors: self
                .stream_errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(reason, n)| ((*reason).to_owned(), *n))
                .collect(),
        }
    }
}
