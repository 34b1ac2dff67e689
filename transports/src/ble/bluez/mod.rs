//! The real Bluetooth LE backend on Linux (feature `bluetooth`): btleplug as the central
//! (scan, connect, write without response, notifications) and bluer as the peripheral (the
//! GATT server and the advertisement), both speaking to BlueZ over D-Bus. libdbus is built
//! from source (`libdbus-sys/vendored`), so the build needs nothing installed; running needs
//! `bluetoothd` and an adapter.
//!
//! **Untested on hardware**: the machines this project is built on have no radio. The code
//! keeps to the same contract the simulated radios pass (`driver.rs`), with the GATT layout
//! and link opening of [`super::gatt`] (tested on every build), and fails with a clear
//! [`BleError::Adapter`] where there is no Bluetooth (tested in `tests/ble_bluez.rs`).
//!
//! BlueZ shapes the peripheral side: it keeps one write socket and one notification session
//! per *characteristic*, not per central. So writes are taken one by one (each names the
//! device that wrote it) and routed to that device's link, and notifications go to every
//! subscribed central, tagged with the link they belong to ([`gatt::tagged`]); a central
//! keeps its own. A peripheral with k centrals thus spends k times the air time on each
//! notification — BlueZ's limit, which the radio budget's small link count keeps small.
//!
//! How it meets the contract:
//! - one link per pair of devices: a device id is taken (dialling or accepted) before a link
//!   opens, and the peripheral refuses a hello from a device it already has a link with. Two
//!   devices dialling each other at the same moment may both be refused and try again; the
//!   node's discovery avoids that (only the lower device id dials);
//! - the link limit counts both roles;
//! - a link ends when the Bluetooth connection drops (both sides poll it every
//!   [`LIVENESS_POLL`]) or either side drops its link, which disconnects the device;
//! - a link's sender is a bounded channel drained by one GATT operation at a time; received
//!   datagrams that find the link's queue full are dropped (the link may lose datagrams; the
//!   ARQ above recovers them).
//!
//! Where it departs from the contract: datagrams from a central may reach the peripheral out
//! of order, because bluer handles each D-Bus call in a task of its own; the ARQ puts them
//! back in order. And it needs a BlueZ that passes the `mtu` option with GATT reads and
//! writes (bluer requires it; BlueZ 5.58 does not send it, newer releases do): on an older
//! one, hellos and identity reads are silently lost and no link opens.
//!
//! Discovery: scanning runs continuously, except that the policy's scan-off time is applied
//! by stopping and restarting the scan (BlueZ offers clients no duty cycle). A device is in
//! range while BlueZ reports its advertisements (service data or RSSI updates) within
//! [`HEARD_FOR`] plus the scan-off time. Each fogmesh device heard is asked for its identity
//! once, in the background (a short connection reading the identity characteristic), checked
//! against the id it advertises and remembered for the process.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use btleplug::api::{Central as _, Manager as _, ScanFilter};
use btleplug::platform::{Adapter, Manager, PeripheralId};
use futures::future::BoxFuture;
use futures::FutureExt;
use libp2p::PeerId;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::driver::{BleDriver, BleError, BleLink, DeviceId, Discovery, RadioDuty};
use super::gatt::Answer;

mod central;
mod discovery;
mod peripheral;

use discovery::*;
use peripheral::*;

/// How often scanning is switched and signal strengths refreshed.
const TICK: Duration = Duration::from_secs(1);
/// A device not heard for this long (plus the scan-off time) is out of range.
pub const HEARD_FOR: Duration = Duration::from_secs(10);
/// Connecting, discovering services, subscribing and the hello exchange, together.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often each side of a link checks that its Bluetooth connection still stands.
pub const LIVENESS_POLL: Duration = Duration::from_secs(2);
/// A failed identity read is retried after this long.
const IDENTITY_RETRY: Duration = Duration::from_secs(30);
/// Devices heard, fogmesh or not, remembered at most (the oldest are forgotten).
const MAX_HEARD: usize = 1024;
/// Datagrams queued per link and direction.
const LINK_QUEUE: usize = 32;
/// Writes from all centrals waiting to be routed; beyond it they are dropped.
const WRITE_QUEUE: usize = 256;
/// Tagged notifications waiting for the air, all links together.
const AIR_QUEUE: usize = 64;

fn adapter_error(what: &str, err: impl std::fmt::Display) -> BleError {
    BleError::Adapter(format!("{what}: {err}"))
}

struct Heard {
    peripheral: PeripheralId,
    rssi: i16,
    at: Instant,
    identity: Option<PeerId>,
    identity_failed_at: Option<Instant>,
}

struct State {
    heard: HashMap<DeviceId, Heard>,
    /// Which fogmesh device a BlueZ device is, once its service data was seen.
    device_of: HashMap<PeripheralId, DeviceId>,
    /// BlueZ devices seen without fogmesh service data (not asked again until it shows).
    not_ours: HashSet<PeripheralId>,
    /// Devices with a link open or opening, either role.
    linked: HashSet<DeviceId>,
    acceptor: Option<mpsc::Sender<BleLink>>,
    duty: RadioDuty,
    identifying: bool,
}

impl State {
    fn in_range_for(&self) -> Duration {
        HEARD_FOR + self.duty.scan_off
    }

    fn heard_now(&self) -> impl Iterator<Item = (&DeviceId, &Heard)> {
        let limit = self.in_range_for();
        self.heard
            .iter()
            .filter(move |(_, h)| h.at.elapsed() < limit)
    }

    fn saw(&mut self, peripheral: PeripheralId, device: DeviceId, rssi: Option<i16>) {
        self.not_ours.remove(&peripheral);
        self.device_of.insert(peripheral.clone(), device);
        let heard = self.heard.entry(device).or_insert(Heard {
            peripheral: peripheral.clone(),
            rssi: rssi.unwrap_or(-100),
            at: Instant::now(),
            identity: None,
            identity_failed_at: None,
        });
        heard.peripheral = peripheral;
        heard.at = Instant::now();
        if let Some(rssi) = rssi {
            heard.rssi = rssi;
        }
    }

    /// Keeps the maps bounded: devices gone for long are forgotten.
    fn prune(&mut self) {
        let keep = self.in_range_for() * 6;
        let linked = &self.linked;
        self.heard
            .retain(|d, h| linked.contains(d) || h.at.elapsed() < keep);
        let heard = &self.heard;
        self.device_of.retain(|_, d| heard.contains_key(d));
        if self.not_ours.len() > MAX_HEARD {
            self.not_ours.clear();
        }
        if self.heard.len() > MAX_HEARD {
            let mut by_age: Vec<(DeviceId, Instant)> =
                self.heard.iter().map(|(d, h)| (*d, h.at)).collect();
            by_age.sort_by_key(|(_, at)| *at);
            for (device, _) in by_age.into_iter().take(self.heard.len() - MAX_HEARD) {
                if !self.linked.contains(&device) {
                    self.heard.remove(&device);
                }
            }
        }
    }
}

struct Inner {
    local: DeviceId,
    max_links: usize,
    central: Adapter,
    peripheral: PeripheralHandles,
    state: Mutex<State>,
}

/// The bluer side: kept so the GATT application and the advertisement stay registered, and
/// used to check on and disconnect centrals.
struct PeripheralHandles {
    adapter: bluer::Adapter,
    _session: bluer::Session,
    _app: bluer::gatt::local::ApplicationHandle,
    _advert: bluer::adv::AdvertisementHandle,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a slot for a link to `device`, or says why not.
    fn reserve(self: &Arc<Self>, device: DeviceId) -> Result<Reservation, Answer> {
        let mut state = self.lock();
        if state.linked.contains(&device) {
            return Err(Answer::AlreadyLinked);
        }
        if state.linked.len() >= self.max_links {
            return Err(Answer::LinkLimit);
        }
        state.linked.insert(device);
        Ok(Reservation {
            inner: Arc::downgrade(self),
            device,
        })
    }

    /// Whether a central is still connected to us.
    async fn central_connected(&self, address: bluer::Address) -> bool {
        match self.peripheral.adapter.device(address) {
            Ok(device) => device.is_connected().await.unwrap_or(false),
            Err(_) => false,
        }
    }

    async fn disconnect_central(&self, address: bluer::Address) {
        if let Ok(device) = self.peripheral.adapter.device(address) {
            let _ = device.disconnect().await;
        }
    }
}

/// A link slot; freed when dropped (the link ended or never opened).
struct Reservation {
    inner: Weak<Inner>,
    device: DeviceId,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.lock().linked.remove(&self.device);
        }
    }
}

/// The BlueZ radio; cheap to clone.
#[derive(Clone)]
pub struct BluezRadio {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BluezRadio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BluezRadio")
            .field("local", &self.inner.local)
            .finish()
    }
}

/// What the GATT server hands to the peripheral task.
struct ServerInputs {
    /// (writer, its ATT MTU, the value) for every write to RX.
    writes: mpsc::Receiver<(bluer::Address, u16, Vec<u8>)>,
    /// A new notification session on TX.
    notifiers: mpsc::Receiver<bluer::gatt::local::CharacteristicNotifier>,
}

impl BluezRadio {
    /// Opens the default adapter: powers it on, serves the fogmesh GATT service, advertises
    /// `peer`'s device id and starts scanning. Fails with [`BleError::Adapter`] when there
    /// is no D-Bus system bus, no `bluetoothd` or no adapter.
    pub async fn open(peer: PeerId, max_links: usize) -> Result<Self, BleError> {
        let local = DeviceId::of_peer(&peer);
        let manager = Manager::new()
            .await
            .map_err(|e| adapter_error("cannot reach BlueZ (is bluetoothd running?)", e))?;
        let central = manager
            .adapters()
            .await
            .map_err(|e| adapter_error("cannot list Bluetooth adapters", e))?
            .into_iter()
            .next()
            .ok_or_else(|| BleError::Adapter("no Bluetooth adapter found".into()))?;
        let (peripheral, inputs) = serve(local, &peer).await?;
        let events = central
            .events()
            .await
            .map_err(|e| adapter_error("cannot follow BlueZ events", e))?;
        central
            .start_scan(ScanFilter::default())
            .await
            .map_err(|e| adapter_error("cannot start scanning", e))?;

        let inner = Arc::new(Inner {
            local,
            max_links,
            central,
            peripheral,
            state: Mutex::new(State {
                heard: HashMap::new(),
                device_of: HashMap::new(),
                not_ours: HashSet::new(),
                linked: HashSet::new(),
                acceptor: None,
                duty: RadioDuty::CONTINUOUS,
                identifying: false,
            }),
        });
        tokio::spawn(scan(Arc::downgrade(&inner), events));
        // Links arriving before `listen` are refused (not listening).
        tokio::spawn(serve_links(Arc::downgrade(&inner), inputs));
        Ok(Self { inner })
    }
}

impl BleDriver for BluezRadio {
    fn local(&self) -> DeviceId {
        self.inner.local
    }

    fn listen(&self) -> Result<mpsc::Receiver<BleLink>, BleError> {
        super::driver::open_acceptor(&mut self.inner.lock().acceptor)
    }

    fn neighbours(&self) -> Vec<Discovery> {
        self.inner
            .lock()
            .heard_now()
            .map(|(device, h)| Discovery {
                device: *device,
                rssi: h.rssi,
            })
            .collect()
    }

    fn connect(&self, device: DeviceId) -> BoxFuture<'static, Result<BleLink, BleError>> {
        let inner = self.inner.clone();
        async move {
            let reservation = inner.reserve(device).map_err(|refusal| match refusal {
                Answer::AlreadyLinked => BleError::AlreadyLinked(device),
                _ => BleError::LinkLimit(inner.local),
            })?;
            Self::open_link(inner, device, reservation).await
        }
        .boxed()
    }

    fn identities(&self) -> Vec<(DeviceId, PeerId)> {
        self.inner
            .lock()
            .heard_now()
            .filter_map(|(device, h)| Some((*device, h.identity?)))
            .collect()
    }

    fn set_duty_cycle(&self, duty: RadioDuty) {
        self.inner.lock().duty = duty;
    }
}
