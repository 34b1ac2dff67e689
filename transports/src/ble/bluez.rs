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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use btleplug::api::{
    Central as _, CentralEvent, Characteristic, Manager as _, Peripheral as _, ScanFilter,
    ValueNotification, WriteType,
};
use btleplug::platform::{Adapter, Manager, Peripheral, PeripheralId};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

use super::driver::{BleDriver, BleError, BleLink, DeviceId, Discovery, RadioDuty, ACCEPT_QUEUE};
use super::gatt::{self, Answer};

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

/// Registers the GATT service and the advertisement.
async fn serve(
    local: DeviceId,
    peer: &PeerId,
) -> Result<(PeripheralHandles, ServerInputs), BleError> {
    use bluer::gatt::local::{
        Application, Characteristic as LocalCharacteristic, CharacteristicNotify,
        CharacteristicNotifyMethod, CharacteristicRead, CharacteristicWrite,
        CharacteristicWriteMethod, Service,
    };
    let session = bluer::Session::new()
        .await
        .map_err(|e| adapter_error("cannot reach BlueZ (is bluetoothd running?)", e))?;
    let adapter = session
        .default_adapter()
        .await
        .map_err(|e| adapter_error("no Bluetooth adapter found", e))?;
    adapter
        .set_powered(true)
        .await
        .map_err(|e| adapter_error("cannot power the adapter on", e))?;

    let identity = gatt::identity(peer);
    let (writes_tx, writes) = mpsc::channel(WRITE_QUEUE);
    let (notifiers_tx, notifiers) = mpsc::channel(4);
    let app = Application {
        services: vec![Service {
            uuid: Uuid::from_u128(gatt::SERVICE_UUID),
            primary: true,
            characteristics: vec![
                LocalCharacteristic {
                    uuid: Uuid::from_u128(gatt::RX_UUID),
                    write: Some(CharacteristicWrite {
                        write_without_response: true,
                        method: CharacteristicWriteMethod::Fun(Box::new(move |value, request| {
                            // A full queue drops the datagram: the link may lose some.
                            let _ =
                                writes_tx.try_send((request.device_address, request.mtu, value));
                            async { Ok(()) }.boxed()
                        })),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                LocalCharacteristic {
                    uuid: Uuid::from_u128(gatt::TX_UUID),
                    notify: Some(CharacteristicNotify {
                        notify: true,
                        method: CharacteristicNotifyMethod::Fun(Box::new(move |notifier| {
                            let notifiers_tx = notifiers_tx.clone();
                            async move {
                                let _ = notifiers_tx.send(notifier).await;
                            }
                            .boxed()
                        })),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                LocalCharacteristic {
                    uuid: Uuid::from_u128(gatt::IDENTITY_UUID),
                    read: Some(CharacteristicRead {
                        read: true,
                        fun: Box::new(move |request| {
                            // A long read comes in pieces, each from an offset.
                            let piece = identity
                                .get(usize::from(request.offset)..)
                                .map(<[u8]>::to_vec)
                                .unwrap_or_default();
                            async move { Ok(piece) }.boxed()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }],
        ..Default::default()
    };
    let app = adapter
        .serve_gatt_application(app)
        .await
        .map_err(|e| adapter_error("cannot register the GATT service", e))?;
    let advert = bluer::adv::Advertisement {
        advertisement_type: bluer::adv::Type::Peripheral,
        service_data: BTreeMap::from([(Uuid::from_u128(gatt::SERVICE_UUID), gatt::advert(local))]),
        service_uuids: BTreeSet::new(),
        discoverable: Some(true),
        ..Default::default()
    };
    let advert = adapter
        .advertise(advert)
        .await
        .map_err(|e| adapter_error("cannot advertise", e))?;
    Ok((
        PeripheralHandles {
            adapter,
            _session: session,
            _app: app,
            _advert: advert,
        },
        ServerInputs { writes, notifiers },
    ))
}

/// Follows BlueZ's advertisement events, applies the scan duty cycle, refreshes signal
/// strengths and starts identity reads. Ends with the radio.
async fn scan(inner: Weak<Inner>, mut events: BoxStream<'static, CentralEvent>) {
    let mut tick = tokio::time::interval(TICK);
    let mut cycle_start = Instant::now();
    let mut scanning = true;
    let mut last_duty = RadioDuty::CONTINUOUS;
    loop {
        let event = tokio::select! {
            event = events.next() => match event {
                Some(event) => Some(event),
                None => return,
            },
            _ = tick.tick() => None,
        };
        let Some(radio) = inner.upgrade() else {
            return;
        };
        if let Some(event) = event {
            heard_event(&radio, event).await;
            continue;
        }
        let duty = radio.lock().duty;
        if duty != last_duty {
            last_duty = duty;
            cycle_start = Instant::now();
        }
        let want = duty.scanning_at(cycle_start.elapsed());
        if want != scanning {
            let switched = if want {
                radio.central.start_scan(ScanFilter::default()).await
            } else {
                radio.central.stop_scan().await
            };
            match switched {
                Ok(()) => scanning = want,
                Err(err) => tracing::warn!(%err, scanning = want, "cannot switch BLE scanning"),
            }
        }
        if scanning {
            refresh_rssi(&radio).await;
        }
        radio.lock().prune();
        if let Some((device, peripheral)) = next_unidentified(&radio) {
            radio.lock().identifying = true;
            tokio::spawn(identify(Arc::downgrade(&radio), device, peripheral));
        }
    }
}

/// One advertisement (or signal-strength update) BlueZ reported.
async fn heard_event(radio: &Inner, event: CentralEvent) {
    let service = Uuid::from_u128(gatt::SERVICE_UUID);
    match event {
        CentralEvent::ServiceDataAdvertisement { id, service_data } => {
            if let Some(device) = service_data
                .get(&service)
                .and_then(|d| gatt::parse_advert(d))
            {
                radio.lock().saw(id, device, None);
            }
        }
        CentralEvent::DeviceDiscovered(id) | CentralEvent::DeviceUpdated(id) => {
            let known = {
                let state = radio.lock();
                if state.not_ours.contains(&id) {
                    return;
                }
                state.device_of.get(&id).copied()
            };
            match known {
                Some(device) => radio.lock().saw(id, device, None),
                None => {
                    // A device not seen before: one look at its advertisement data.
                    let properties = match radio.central.peripheral(&id).await {
                        Ok(p) => p.properties().await.ok().flatten(),
                        Err(_) => None,
                    };
                    let device = properties.as_ref().and_then(|p| {
                        p.service_data
                            .get(&service)
                            .and_then(|d| gatt::parse_advert(d))
                    });
                    let mut state = radio.lock();
                    match device {
                        Some(device) => state.saw(id, device, properties.and_then(|p| p.rssi)),
                        None => {
                            state.not_ours.insert(id);
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

async fn refresh_rssi(radio: &Inner) {
    let heard: Vec<(DeviceId, PeripheralId)> = radio
        .lock()
        .heard_now()
        .map(|(d, h)| (*d, h.peripheral.clone()))
        .collect();
    for (device, id) in heard {
        let Ok(peripheral) = radio.central.peripheral(&id).await else {
            continue;
        };
        if let Ok(Some(rssi)) = peripheral
            .properties()
            .await
            .map(|p| p.and_then(|p| p.rssi))
        {
            if let Some(h) = radio.lock().heard.get_mut(&device) {
                h.rssi = rssi;
            }
        }
    }
}

fn next_unidentified(radio: &Inner) -> Option<(DeviceId, PeripheralId)> {
    let state = radio.lock();
    if state.identifying {
        return None;
    }
    let next = state
        .heard_now()
        .filter(|(device, h)| {
            h.identity.is_none()
                && !state.linked.contains(device)
                && h.identity_failed_at
                    .is_none_or(|at| at.elapsed() >= IDENTITY_RETRY)
        })
        .map(|(device, h)| (*device, h.peripheral.clone()))
        .next();
    next
}

/// Reads a device's identity, one device at a time.
async fn identify(inner: Weak<Inner>, device: DeviceId, id: PeripheralId) {
    let Some(radio) = inner.upgrade() else {
        return;
    };
    let identity = read_identity(&radio, &id, device).await;
    let mut state = radio.lock();
    state.identifying = false;
    if let Some(heard) = state.heard.get_mut(&device) {
        match identity {
            Ok(peer) => heard.identity = Some(peer),
            Err(err) => {
                tracing::debug!(%device, %err, "cannot read a device's identity");
                heard.identity_failed_at = Some(Instant::now());
            }
        }
    }
}

async fn read_identity(
    radio: &Inner,
    id: &PeripheralId,
    device: DeviceId,
) -> Result<PeerId, BleError> {
    let peripheral = radio
        .central
        .peripheral(id)
        .await
        .map_err(|e| adapter_error("device gone", e))?;
    let was_connected = peripheral.is_connected().await.unwrap_or(false);
    let read = async {
        connect_gatt(&peripheral).await?;
        let characteristic = find(&peripheral, gatt::IDENTITY_UUID)?;
        let value = peripheral
            .read(&characteristic)
            .await
            .map_err(|e| adapter_error("read identity", e))?;
        gatt::parse_identity(&value, device)
            .ok_or_else(|| BleError::Adapter("identity does not match the advertised id".into()))
    };
    let result = tokio::time::timeout(OPEN_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| Err(BleError::Adapter("identity read timed out".into())));
    // Disconnecting drops the whole Bluetooth connection, so not if a link to the device
    // opened meanwhile, or the connection was there before.
    if !was_connected && !radio.lock().linked.contains(&device) {
        let _ = peripheral.disconnect().await;
    }
    result
}

/// Connects to a device and learns its GATT services (what both a link and an identity read
/// start with).
async fn connect_gatt(peripheral: &Peripheral) -> Result<(), BleError> {
    peripheral
        .connect()
        .await
        .map_err(|e| adapter_error("connect", e))?;
    peripheral
        .discover_services()
        .await
        .map_err(|e| adapter_error("service discovery", e))
}

fn find(peripheral: &Peripheral, uuid: u128) -> Result<Characteristic, BleError> {
    let uuid = Uuid::from_u128(uuid);
    peripheral
        .characteristics()
        .into_iter()
        .find(|c| c.uuid == uuid)
        .ok_or_else(|| BleError::Adapter(format!("the device has no characteristic {uuid}")))
}

/// A link a central opened to us, as the peripheral task routes it.
struct Inbound {
    tag: u8,
    /// Datagrams to the link's reader; dropping it ends the link for its owner.
    deliver: mpsc::Sender<Vec<u8>>,
    /// Dropping it stops the link's pump.
    _stop: oneshot::Sender<()>,
    /// Held here, not by the pump, so a central's new hello finds its slot free at once.
    _reservation: Reservation,
}

/// Peripheral side: routes every central's writes to its link, opens links on hellos, and
/// sends all links' notifications through the one notification session.
async fn serve_links(inner: Weak<Inner>, inputs: ServerInputs) {
    let ServerInputs {
        mut writes,
        notifiers,
    } = inputs;
    let (air_tx, air_rx) = mpsc::channel::<Vec<u8>>(AIR_QUEUE);
    tokio::spawn(notify(air_rx, notifiers));
    let (ended_tx, mut ended_rx) = mpsc::channel::<(bluer::Address, u8)>(ACCEPT_QUEUE);
    let mut links: HashMap<bluer::Address, Inbound> = HashMap::new();
    let mut next_tag: u8 = 0;
    loop {
        tokio::select! {
            write = writes.recv() => {
                let Some((address, att_mtu, value)) = write else { return };
                let hello = gatt::parse_hello(&value);
                match (hello, links.get(&address)) {
                    (None, Some(link)) => {
                        // Full: dropped, as the air would.
                        let _ = link.deliver.try_send(value);
                    }
                    (Some(central), _) => {
                        // A central saying hello again starts over.
                        links.remove(&address);
                        let Some(radio) = inner.upgrade() else { return };
                        // Link tags skip the control tag, which answers use.
                        let tag = loop {
                            next_tag = next_tag.wrapping_add(1);
                            if next_tag != gatt::CONTROL_TAG
                                && links.values().all(|l| l.tag != next_tag)
                            {
                                break next_tag;
                            }
                        };
                        let hello = Hello { address, central, att_mtu, tag };
                        if let Some(link) = open_inbound(&radio, hello, &air_tx, &ended_tx).await {
                            links.insert(address, link);
                        }
                    }
                    (None, None) => {} // not a link (yet): ignored
                }
            }
            ended = ended_rx.recv() => {
                let Some((address, tag)) = ended else { return };
                if links.get(&address).is_some_and(|l| l.tag == tag) {
                    links.remove(&address);
                }
            }
        }
    }
}

/// A central's hello, as the peripheral task received it.
struct Hello {
    address: bluer::Address,
    central: DeviceId,
    att_mtu: u16,
    tag: u8,
}

/// Answers a hello, and opens the link if it is accepted. The answer goes out before the
/// link's first datagram can.
async fn open_inbound(
    radio: &Arc<Inner>,
    hello: Hello,
    air: &mpsc::Sender<Vec<u8>>,
    ended: &mpsc::Sender<(bluer::Address, u8)>,
) -> Option<Inbound> {
    let Hello {
        address,
        central,
        att_mtu,
        tag,
    } = hello;
    let answer = |answer: Answer| gatt::tagged(gatt::CONTROL_TAG, &answer.encode(central));
    let accepted = accept_inbound(radio, central, att_mtu);
    let (reservation, permit) = match accepted {
        Ok(accepted) => accepted,
        Err(refusal) => {
            let _ = air.send(answer(refusal)).await;
            return None;
        }
    };
    if air
        .send(answer(Answer::Accepted { att_mtu, tag }))
        .await
        .is_err()
    {
        return None;
    }
    let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>(LINK_QUEUE);
    let (deliver, in_rx) = mpsc::channel(LINK_QUEUE);
    let link = BleLink {
        peer: central,
        max_datagram: gatt::max_datagram(att_mtu.into()),
        outbound: false,
        tx: out_tx,
        rx: in_rx,
    };
    permit.send(link);
    let (stop, stopped) = oneshot::channel();
    tokio::spawn(run_inbound_link(
        Arc::downgrade(radio),
        address,
        tag,
        out_rx,
        air.clone(),
        stopped,
        ended.clone(),
    ));
    Some(Inbound {
        tag,
        deliver,
        _stop: stop,
        _reservation: reservation,
    })
}

/// Whether a hello can be accepted: a slot for the link, and room for it at the acceptor.
fn accept_inbound(
    radio: &Arc<Inner>,
    central: DeviceId,
    att_mtu: u16,
) -> Result<(Reservation, mpsc::OwnedPermit<BleLink>), Answer> {
    let acceptor = radio.lock().acceptor.clone().filter(|a| !a.is_closed());
    let acceptor = acceptor.ok_or(Answer::NotListening)?;
    if att_mtu < gatt::MIN_LINK_ATT_MTU {
        return Err(Answer::MtuTooSmall);
    }
    let reservation = radio.reserve(central)?;
    let permit = acceptor
        .try_reserve_owned()
        .map_err(|_| Answer::LinkLimit)?;
    Ok((reservation, permit))
}

/// Peripheral side of an open link: its datagrams go out tagged; it ends when its owner
/// drops it (and then disconnects the central), when the central goes, or when the
/// peripheral task stops it (the central said hello again).
async fn run_inbound_link(
    inner: Weak<Inner>,
    address: bluer::Address,
    tag: u8,
    mut out_rx: mpsc::Receiver<Vec<u8>>,
    air: mpsc::Sender<Vec<u8>>,
    mut stopped: oneshot::Receiver<()>,
    ended: mpsc::Sender<(bluer::Address, u8)>,
) {
    let mut liveness = tokio::time::interval(LIVENESS_POLL);
    let mut dropped_by_owner = false;
    loop {
        tokio::select! {
            next = out_rx.recv() => match next {
                Some(datagram) => {
                    if air.send(gatt::tagged(tag, &datagram)).await.is_err() {
                        break;
                    }
                }
                None => {
                    dropped_by_owner = true;
                    break;
                }
            },
            _ = &mut stopped => break,
            _ = liveness.tick() => {
                let Some(radio) = inner.upgrade() else { break };
                if !radio.central_connected(address).await {
                    break;
                }
            }
        }
    }
    let _ = ended.send((address, tag)).await;
    if dropped_by_owner {
        if let Some(radio) = inner.upgrade() {
            radio.disconnect_central(address).await;
        }
    }
}

/// The one notification session: sends tagged datagrams while a central listens.
async fn notify(
    mut air: mpsc::Receiver<Vec<u8>>,
    mut notifiers: mpsc::Receiver<bluer::gatt::local::CharacteristicNotifier>,
) {
    let mut session: Option<bluer::gatt::local::CharacteristicNotifier> = None;
    loop {
        tokio::select! {
            // A new session first: BlueZ starts one per subscribing central, each replacing
            // the last (bluer handles D-Bus calls concurrently, so one may come late and
            // already stopped: keep the live one).
            biased;
            notifier = notifiers.recv() => match notifier {
                Some(notifier) if !notifier.is_stopped() => session = Some(notifier),
                Some(_) => {}
                None => return,
            },
            value = air.recv() => {
                let Some(value) = value else { return };
                // No session: nobody listens, and the datagram is lost like on the air.
                if let Some(notifier) = &mut session {
                    if notifier.notify(value).await.is_err() {
                        session = None;
                    }
                }
            }
        }
    }
}

impl BluezRadio {
    async fn open_link(
        inner: Arc<Inner>,
        device: DeviceId,
        reservation: Reservation,
    ) -> Result<BleLink, BleError> {
        let id = inner
            .lock()
            .heard
            .get(&device)
            .map(|h| h.peripheral.clone())
            .ok_or(BleError::NotInRange(device))?;
        let peripheral = inner
            .central
            .peripheral(&id)
            .await
            .map_err(|_| BleError::NotInRange(device))?;
        let local = inner.local;
        let opening = async {
            connect_gatt(&peripheral).await?;
            let rx = find(&peripheral, gatt::RX_UUID)?;
            let tx = find(&peripheral, gatt::TX_UUID)?;
            // Asked for before subscribing, so the answer cannot slip past.
            let mut notifications = peripheral
                .notifications()
                .await
                .map_err(|e| adapter_error("notifications", e))?;
            // BlueZ may still hold our subscription from an earlier connection to the device.
            if let Err(err) = peripheral.subscribe(&tx).await {
                let text = err.to_string();
                if !(text.contains("lready") || text.contains("InProgress")) {
                    return Err(adapter_error("subscribe", err));
                }
            }
            peripheral
                .write(&rx, &gatt::hello(local), WriteType::WithoutResponse)
                .await
                .map_err(|e| adapter_error("hello", e))?;
            let tx_uuid = Uuid::from_u128(gatt::TX_UUID);
            // Other links' notifications reach us too; wait for the answer addressed to us.
            let answer = loop {
                let Some(note) = notifications.next().await else {
                    return Err(BleError::LinkBroken);
                };
                if note.uuid != tx_uuid {
                    continue;
                }
                let addressed =
                    gatt::untag(gatt::CONTROL_TAG, &note.value).and_then(Answer::decode);
                if let Some((to, answer)) = addressed {
                    if to == local {
                        break answer;
                    }
                }
            };
            match answer {
                Answer::Accepted { att_mtu, tag } => Ok((rx, notifications, att_mtu, tag)),
                Answer::AlreadyLinked => Err(BleError::AlreadyLinked(device)),
                Answer::LinkLimit => Err(BleError::LinkLimit(device)),
                Answer::NotListening | Answer::MtuTooSmall => Err(BleError::Adapter(format!(
                    "the device refused the link ({answer:?})"
                ))),
            }
        };
        let (rx, notifications, att_mtu, tag) =
            match tokio::time::timeout(OPEN_TIMEOUT, opening).await {
                Ok(Ok(opened)) => opened,
                Ok(Err(err)) => {
                    hang_up(&peripheral).await;
                    return Err(err);
                }
                Err(_) => {
                    hang_up(&peripheral).await;
                    return Err(BleError::Adapter("opening the link timed out".into()));
                }
            };
        let (out_tx, out_rx) = mpsc::channel(LINK_QUEUE);
        let (deliver, in_rx) = mpsc::channel(LINK_QUEUE);
        tokio::spawn(run_outbound_link(
            peripheral,
            rx,
            tag,
            notifications,
            out_rx,
            deliver,
            reservation,
        ));
        Ok(BleLink {
            peer: device,
            max_datagram: gatt::max_datagram(att_mtu.into()),
            outbound: true,
            tx: out_tx,
            rx: in_rx,
        })
    }
}

/// Central side of an open link: writes go out without response, this link's notifications
/// come in (others' are skipped), and the connection is checked every [`LIVENESS_POLL`]
/// (btleplug's notification stream does not end when the device goes).
async fn run_outbound_link(
    peripheral: Peripheral,
    rx: Characteristic,
    tag: u8,
    mut notifications: std::pin::Pin<Box<dyn futures::Stream<Item = ValueNotification> + Send>>,
    mut out_rx: mpsc::Receiver<Vec<u8>>,
    deliver: mpsc::Sender<Vec<u8>>,
    _reservation: Reservation,
) {
    let tx_uuid = Uuid::from_u128(gatt::TX_UUID);
    let mut liveness = tokio::time::interval(LIVENESS_POLL);
    loop {
        tokio::select! {
            note = notifications.next() => match note {
                Some(note) if note.uuid == tx_uuid => {
                    if let Some(datagram) = gatt::untag(tag, &note.value) {
                        // Full: dropped, as the air would; never blocks the stream.
                        if let Err(mpsc::error::TrySendError::Closed(_)) =
                            deliver.try_send(datagram.to_vec())
                        {
                            break;
                        }
                    }
                }
                Some(_) => {}
                None => break,
            },
            next = out_rx.recv() => match next {
                Some(datagram) => {
                    if peripheral.write(&rx, &datagram, WriteType::WithoutResponse).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            _ = liveness.tick() => {
                if !peripheral.is_connected().await.unwrap_or(false) {
                    break;
                }
            }
        }
    }
    hang_up(&peripheral).await;
}

/// Ends a central's connection, unsubscribing first so BlueZ does not carry the
/// subscription into the next connection to the device.
async fn hang_up(peripheral: &Peripheral) {
    if let Ok(tx) = find(peripheral, gatt::TX_UUID) {
        let _ = peripheral.unsubscribe(&tx).await;
    }
    let _ = peripheral.disconnect().await;
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
