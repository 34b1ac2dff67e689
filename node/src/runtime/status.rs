//! What `/v1/status` and `/v1/peers` show. The runtime fills what it knows (phase, peers,
//! addresses, the store's errors, the clock's offset); each capability fills its part
//! ([`crate::runtime::capability::Capability::status`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use fogmesh_device::DeviceSummary;

use crate::admission::AdmissionView;
use crate::runtime::lifecycle::{Phase, Transition};

/// Per-reason counters of refused telemetry, shown by `fogmesh status` (counted by the
/// telemetry capability's validator).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectionCounters {
    pub oversized: u64,
    pub malformed: u64,
    pub bad_signature: u64,
    pub sender_mismatch: u64,
    pub stale: u64,
    pub from_future: u64,
    pub replayed: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BootstrapView {
    pub configured: usize,
    pub connected: usize,
}

/// `/v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    pub peer_id: String,
    pub version: String,
    pub phase: Phase,
    pub phase_since_ms: u64,
    pub phase_reason: String,
    pub transitions: Vec<Transition>,
    pub started_at_ms: u64,
    pub uptime_s: u64,
    pub data_dir: PathBuf,
    pub listen_addrs: Vec<String>,
    pub connected_peers: usize,
    pub known_peers: usize,
    pub telemetry_nodes: usize,
    pub stale_nodes: usize,
    pub telemetry_interval_ms: u64,
    pub telemetry_published: u64,
    /// Publications that found no subscribed peer to send to.
    #[serde(default)]
    pub telemetry_unsent: u64,
    pub telemetry_accepted: u64,
    pub telemetry_rejected: RejectionCounters,
    /// Origins forgotten: silent past the expiry time, or evicted at the origin cap.
    #[serde(default)]
    pub telemetry_expired: u64,
    pub store_errors: u64,
    pub mdns: bool,
    pub bootstrap: BootstrapView,
    /// The device as the last sensing pass saw it.
    pub device: Option<DeviceSummary>,
    /// Mesh membership, handshake and revocation counters.
    pub admission: AdmissionView,
    /// Control API connections closed at once because the connection cap was reached.
    #[serde(default)]
    pub control_api_refused: u64,
    /// How far the wall clock is from the node's monotonic clock (positive: ahead), in ms:
    /// non-zero after the wall clock was stepped while the node ran.
    #[serde(default)]
    pub clock_offset_ms: i64,
    /// How far this node's wall clock is from the mesh's (docs/kv.md, "Clocks").
    #[serde(default)]
    pub mesh_clock: MeshClockStatus,
}

/// The mesh-time estimate and the peers whose clocks are furthest from this node's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MeshClockStatus {
    /// Added to this node's wall clock to get mesh time (negative: this node runs ahead).
    pub offset_ms: i64,
    /// Peers the estimate is drawn from.
    pub peers: usize,
    /// The estimate was beyond the largest correction followed (10 min) and was clamped.
    pub clamped: bool,
    /// At most 5 peers, furthest first: their wall clock minus this node's.
    pub furthest: Vec<PeerClock>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerClock {
    pub peer_id: String,
    pub offset_ms: i64,
}

impl StatusView {
    /// The status of a node that has just started: nothing counted yet.
    pub fn starting(peer_id: String, data_dir: PathBuf, started_at_ms: u64) -> Self {
        StatusView {
            peer_id,
            version: String::new(),
            phase: Phase::Booting,
            phase_since_ms: started_at_ms,
            phase_reason: String::new(),
            transitions: Vec::new(),
            started_at_ms,
            uptime_s: 0,
            data_dir,
            listen_addrs: Vec::new(),
            connected_peers: 0,
            known_peers: 0,
            telemetry_nodes: 0,
            stale_nodes: 0,
            telemetry_interval_ms: 0,
            telemetry_published: 0,
            telemetry_unsent: 0,
            telemetry_accepted: 0,
            telemetry_rejected: RejectionCounters::default(),
            telemetry_expired: 0,
            store_errors: 0,
            mdns: false,
            bootstrap: BootstrapView::default(),
            device: None,
            admission: AdmissionView::default(),
            control_api_refused: 0,
            clock_offset_ms: 0,
            mesh_clock: MeshClockStatus::default(),
        }
    }
}

/// One row of `/v1/peers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerView {
    pub peer_id: String,
    pub connected: bool,
    /// The address of the live connection, if connected.
    pub connection_addr: Option<String>,
    pub direction: Option<String>,
    pub rtt_ms: Option<f64>,
    pub agent: Option<String>,
    pub known_addrs: Vec<String>,
    pub last_seen_ms: u64,
    /// Device class, power mode and score from the peer's latest telemetry.
    pub device: Option<DeviceSummary>,
    /// The peer's wall clock minus this node's, from its latest signed timestamp.
    #[serde(default)]
    pub clock_offset_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeersResponse {
    pub peers: Vec<PeerView>,
}
