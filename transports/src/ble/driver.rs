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
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

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
pub trait BleDriver: Send + Sync + fmt::Debug + 'static {
    /// The identity this device advertises.
    fn local(&self) -> DeviceId;
    /// Starts advertising and accepting links; links peers open arrive on the receiver.
    /// Once per device.
    fn listen(&self) -> Result<mpsc::Receiver<BleLink>, BleError>;
    /// Fogmesh devices in range now (the latest scan).
    fn neighbours(&self) -> Vec<Discovery>;
    /// Opens a link to `device`.
    fn connect(&self, device: DeviceId) -> BoxFuture<'static, Result<BleLink, BleError>>;
    /// Devices in range whose node identity this radio has learned (the shared medium's
    /// file lists them; a real radio reads each device's identity characteristic once), so
    /// the node can dial them: XK needs the responder's key. Empty by default.
    fn identities(&self) -> Vec<(DeviceId, PeerId)> {
        Vec::new()
    }
    /// Sets the scan/advertise duty cycle (the power policy's). Backends that cannot vary
    /// it ignore it.
    fn set_duty_cycle(&self, _duty: RadioDuty) {}
}

/// Links accepted but not yet taken by the listener, per device.
pub const ACCEPT_QUEUE: usize = 16;

/// What every backend's `listen` does with its acceptor slot: a new bounded queue, unless a
/// listener still holds the slot.
pub fn open_acceptor(
    slot: &mut Option<mpsc::Sender<BleLink>>,
) -> Result<mpsc::Receiver<BleLink>, BleError> {
    if slot.as_ref().is_some_and(|a| !a.is_closed()) {
        return Err(BleError::AlreadyListening);
    }
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    *slot = Some(tx);
    Ok(rx)
}

/// A driver shared by the transport and the node's discovery.
pub type SharedDriver = Arc<dyn BleDriver>;

impl BleDriver for SharedDriver {
    fn local(&self) -> DeviceId {
        (**self).local()
    }
    fn listen(&self) -> Result<mpsc::Receiver<BleLink>, BleError> {
        (**self).listen()
    }
    fn neighbours(&self) -> Vec<Discovery> {
        (**self).neighbours()
    }
    fn connect(&self, device: DeviceId) -> BoxFuture<'static, Result<BleLink, BleError>> {
        (**self).connect(device)
    }
    fn identities(&self) -> Vec<(DeviceId, PeerId)> {
        (**self).identities()
    }
    fn set_duty_cycle(&self, duty: RadioDuty) {
        (**self).set_duty_cycle(duty)
    }
}

/// How much of the time a radio scans, and how often it advertises: what the power policy's
/// BLE duty cycle sets. A scan hears the devices in range; between scans, a radio knows only
/// what its last scan heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RadioDuty {
    pub scan_on: Duration,
    pub scan_off: Duration,
    pub advertise_every: Duration,
}

impl RadioDuty {
    /// Always scanning, advertising every 100 ms: what a radio does until told otherwise.
    pub const CONTINUOUS: RadioDuty = RadioDuty {
        scan_on: Duration::from_secs(10),
        scan_off: Duration::ZERO,
        advertise_every: Duration::from_millis(100),
    };

    /// Whether the radio scans `elapsed` after its cycle started.
    pub fn scanning_at(&self, elapsed: Duration) -> bool {
        let period = self.scan_on + self.scan_off;
        if self.scan_off.is_zero() || period.is_zero() {
            return true;
        }
        let into = elapsed.as_millis() % period.as_millis();
        into < self.scan_on.as_millis()
    }
}

/// What a scanning radio has heard: current while it scans, the last scan's picture while it
/// does not. Backends that model the duty cycle (the simulated radios) keep one.
#[derive(Debug, Clone)]
pub struct ScanWindow {
    duty: RadioDuty,
    started: Instant,
    heard: Vec<Discovery>,
}

impl ScanWindow {
    pub fn new(now: Instant) -> Self {
        Self {
            duty: RadioDuty::CONTINUOUS,
            started: now,
            heard: Vec::new(),
        }
    }

    /// A new duty cycle starts a new cycle, with a scan.
    pub fn set_duty(&mut self, duty: RadioDuty, now: Instant) {
        if duty != self.duty {
            self.duty = duty;
            self.started = now;
        }
    }

    pub fn duty(&self) -> RadioDuty {
        self.duty
    }

    /// The devices heard as of `now`: `in_range` is asked only while scanning.
    pub fn heard(
        &mut self,
        now: Instant,
        in_range: impl FnOnce() -> Vec<Discovery>,
    ) -> Vec<Discovery> {
        if self
            .duty
            .scanning_at(now.saturating_duration_since(self.started))
        {
            self.heard = in_range();
        }
        self.heard.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn duty(on: u64, off: u64) -> RadioDuty {
        RadioDuty {
            scan_on: Duration::from_secs(on),
            scan_off: Duration::from_secs(off),
            advertise_every: Duration::from_secs(1),
        }
    }

    fn heard(devices: &[u8]) -> Vec<Discovery> {
        devices
            .iter()
            .map(|&d| Discovery {
                device: DeviceId([d; 8]),
                rssi: -50,
            })
            .collect()
    }

    #[test]
    fn a_duty_cycle_scans_only_in_its_on_window() {
        let d = duty(2, 8);
        let at = |s: u64| d.scanning_at(Duration::from_secs(s));
        assert!(at(0) && at(1) && !at(2) && !at(9) && at(10) && at(11) && !at(12));
        assert!(RadioDuty::CONTINUOUS.scanning_at(Duration::from_secs(12_345)));
    }

    #[test]
    fn between_scans_a_radio_knows_only_what_its_last_scan_heard() {
        let start = Instant::now();
        let mut window = ScanWindow::new(start);
        window.set_duty(duty(2, 8), start);
        let s = |secs: u64| start + Duration::from_secs(secs);
        assert_eq!(window.heard(s(1), || heard(&[1])), heard(&[1]));
        // Device 2 arrives while the radio sleeps: unheard until the next scan.
        assert_eq!(window.heard(s(5), || heard(&[1, 2])), heard(&[1]));
        assert_eq!(window.heard(s(10), || heard(&[1, 2])), heard(&[1, 2]));
        // Back to continuous: heard at once.
        window.set_duty(RadioDuty::CONTINUOUS, s(12));
        assert_eq!(window.heard(s(13), || heard(&[3])), heard(&[3]));
    }
}
