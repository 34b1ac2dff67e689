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
    /// Whether the node is reachable from the internet, its relay slots, and what it relays
    /// for others (docs/nat.md).
    #[serde(default)]
    pub reach: ReachStatus,
}

/// Internet reach: filled by the reach capability.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReachStatus {
    /// `public`, `private` or `unknown`: public once any address is confirmed reachable,
    /// private once every tested address failed, unknown before any test ended.
    pub reachability: String,
    /// Each address tested, with its verdict and the evidence.
    pub addresses: Vec<AddressReach>,
    /// Relays this node holds a slot on (it is reachable through them).
    pub reservations: Vec<RelaySlot>,
    /// This node relays for others (it is publicly reachable and the service is on).
    pub relay_service: bool,
    /// Slots this node holds for others, and circuits it relays now.
    pub relaying_reservations: u64,
    pub relaying_circuits: u64,
    /// Hole punches that ended in a direct connection, and those that did not.
    pub hole_punches_ok: u64,
    pub hole_punches_failed: u64,
}

/// One address's reachability.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddressReach {
    pub addr: String,
    /// `public` (a server dialled it back) or `private` (a server could not).
    pub verdict: String,
    /// Which peer said so (the dial-back server, or the last peer that dialled in), how
    /// long ago, and its error if any.
    pub server: String,
    /// `dial-back` (AutoNAT v2) or `dialled in by N peers`.
    #[serde(default)]
    pub evidence: String,
    pub age_ms: u64,
    pub error: Option<String>,
}

/// A relay slot this node holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelaySlot {
    pub relay: String,
    /// The address peers reach this node at through the relay.
    pub addr: String,
    /// `pending` until the relay accepted, then `active`.
    pub state: String,
    pub renewals: u64,
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
            reach: ReachStatus::default(),
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
    /// `direct` or `relayed` (through a circuit relay), if connected.
    #[serde(default)]
    pub path: Option<String>,
    /// How the connection in use came about: `dialled`, `accepted`, `hole-punched`, or
    /// `relay` for a relayed one.
    #[serde(default)]
    pub via: Option<String>,
    /// From the first connection with the peer (this time it was connected) to the first
    /// direct one, in ms: 0 when the first was direct.
    #[serde(default)]
    pub direct_after_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeersResponse {
    pub peers: Vec<PeerView>,
}
