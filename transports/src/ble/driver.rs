//! The contract every BLE backend meets: the simulated radio ([`super::sim`]) today, and a
//! btleplug/bluer backend for real hardware.
//!
//! A backend advertises the node's [`DeviceId`], lists the fogmesh devices in range, opens
//! links to them and accepts links from them. A link ([`BleLink`]) carries datagrams of at
//! most `max_datagram` bytes each way — on real hardware a GATT write without response one
//! way and a notification the other, `max_datagram` being the negotiated ATT MTU minus 3 —
//! and may lose them. Everything reliable is built above the link ([`super::arq`]).
//!
//! Contract (checked for every backend that can run here by `tests/ble_contract.rs`):
//! - `connect` to a device in range yields a link whose datagrams (up to `max_datagram`)
//!   reach the other side's accepted link, in order, minus losses;
//! - at most one link per pair of devices: a second `connect` either way fails with
//!   [`BleError::AlreadyLinked`], so duplicate links from both roles cannot arise;
//! - a device at its link limit refuses more links ([`BleError::LinkLimit`]);
//! - when a link breaks (out of range, either side dropped it) both sides see their
//!   receiver end, and sends fail;
//! - the sender of a link is bounded: a full link makes `send` wait (backpressure).

use std::fmt;

use futures::future::BoxFuture;
use libp2p::PeerId;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

/// What a device advertises: 8 bytes of the SHA-256 of its PeerId (BitChat's sender ID is 8
/// bytes too). Short enough for an advertisement; a dialer learns the full PeerId from the
/// secure channel, which checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub [u8; 8]);

impl DeviceId {
    pub fn of_peer(peer: &PeerId) -> Self {
        let digest = Sha256::digest(peer.to_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        DeviceId(id)
    }

    /// Parses 16 hex digits.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = hex::decode(text).ok()?;
        Some(DeviceId(bytes.try_into().ok()?))
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A device seen by a scan.
/// The signal strength a simulated radio reports at `distance`: free-space path loss,
/// roughly, from −40 dBm at 1 m.
pub fn simulated_rssi(distance: f64) -> i16 {
    (-40.0 - 20.0 * distance.max(1.0).log10()) as i16
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Discovery {
    pub device: DeviceId,
    /// Signal strength in dBm, as the radio reports it.
    pub rssi: i16,
}

/// One open link to a neighbour.
#[derive(Debug)]
pub struct BleLink {
    pub peer: DeviceId,
    /// Largest datagram either way (ATT MTU − 3).
    pub max_datagram: usize,
    /// True on the side that connected (the central).
    pub outbound: bool,
    /// Datagrams to the peer; bounded, so a busy link makes the sender wait.
    pub tx: mpsc::Sender<Vec<u8>>,
    /// Datagrams from the peer; ends when the link breaks.
    pub rx: mpsc::Receiver<Vec<u8>>,
}

/// Why a BLE operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BleError {
    #[error("device {0} is not in range")]
    NotInRange(DeviceId),
    #[error("there is already a link to device {0}")]
    AlreadyLinked(DeviceId),
    #[error("device {0} has no free link slot")]
    LinkLimit(DeviceId),
    #[error("this device is already listening")]
    AlreadyListening,
    #[error("the radio is gone")]
    RadioGone,
    #[error("the link broke")]
    LinkBroken,
    #[error("Bluetooth adapter: {0}")]
    Adapter(String),
}

/// A BLE backend.
pub trait BleDriver: Send + Sync + 'static {
    /// The identity this device advertises.
    fn local(&self) -> DeviceId;
    /// Starts advertising and accepting links; links peers open arrive on the receiver.
    /// Once per device.
    fn listen(&self) -> Result<mpsc::Receiver<BleLink>, BleError>;
    /// Fogmesh devices in range now (the latest scan).
    fn neighbours(&self) -> Vec<Discovery>;
    /// Opens a link to `device`.
    fn connect(&self, device: DeviceId) -> BoxFuture<'static, Result<BleLink, BleError>>;
}
