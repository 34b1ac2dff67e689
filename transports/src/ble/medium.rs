//! The simulated radio across processes: what a BLE testnet runs on.
//!
//! Every node process is one device. The *medium file* (JSON, written by the testnet tool
//! and edited while the testnet runs) says where each device is, on which loopback UDP
//! address its process receives radio datagrams, which pairs are cut or joined by hand, the
//! range and the link behaviour. Each process re-reads the file when it changes (checked
//! every [`RELOAD_EVERY`]), so `fogmesh testnet radio move|partition|heal|loss` takes effect
//! within that time: links whose ends no longer hear each other break on both sides.
//!
//! A link is a pair of link ids over UDP: the dialer sends `connect`, the listener answers
//! `accept` (or `refuse`: out of range, no free link slot, not listening), then both send
//! `data`, and `close` when done. The *sender* applies the link's behaviour (time on air at
//! the link rate, latency, loss) before a datagram leaves, so loopback UDP only moves bytes
//! between processes. Loopback UDP does not lose or reorder in practice; if the receiver's
//! queue is full a datagram is dropped and the ARQ above retransmits it, as over a real
//! radio.
//!
//! There is no central process: the file is the shared picture of the room, and each device
//! decides from it alone. All sockets are bound to 127.0.0.0/8; the file refuses others.
//!
//! Datagram: `kind (1) | from device (8) | link id (8) | payload`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::FutureExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::driver::{BleDriver, BleError, BleLink, DeviceId, Discovery, RadioDuty, ScanWindow};

/// How often the medium file is checked for changes.
pub const RELOAD_EVERY: Duration = Duration::from_millis(250);
/// Datagrams waiting between the socket and a link's reader; beyond it they are dropped.
const READER_QUEUE: usize = 256;
/// Datagrams a writer may queue on a link before it waits.
const WRITER_QUEUE: usize = 16;
/// How long a dialer waits for `accept`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const HEADER: usize = 17;
/// Largest datagram on the socket: MTU 517 − 3 plus the header.
const MAX_UDP: usize = 514 + HEADER;

const CONNECT: u8 = 1;
const ACCEPT: u8 = 2;
const REFUSE: u8 = 3;
const DATA: u8 = 4;
const CLOSE: u8 = 5;

/// How every link on the medium behaves (the file's `link`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MediumLink {
    pub rate_bps: u64,
    pub latency_ms: u64,
    pub loss: f64,
    pub mtu: usize,
}

impl Default for MediumLink {
    fn default() -> Self {
        Self {
            rate_bps: 1_000_000,
            latency_ms: 30,
            loss: 0.0,
            mtu: 185,
        }
    }
}

/// One device in the medium file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceEntry {
    /// Where its process receives radio datagrams (loopback only).
    pub addr: SocketAddr,
    pub x: f64,
    pub y: f64,
    /// The identity it advertises (a BLE advertisement carries it; discovery reads it).
    #[serde(default)]
    pub peer_id: Option<String>,
}

/// The medium file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediumFile {
    pub range: f64,
    #[serde(default = "default_max_links")]
    pub max_links: usize,
    #[serde(default)]
    pub link: MediumLink,
    /// Devices by id (16 hex digits).
    pub devices: BTreeMap<String, DeviceEntry>,
    /// Pairs that cannot hear each other whatever their distance.
    #[serde(default)]
    pub cuts: Vec<(String, String)>,
    /// Pairs that hear each other whatever their distance.
    #[serde(default)]
    pub joined: Vec<(String, String)>,
}

fn default_max_links() -> usize {
    7
}

#[derive(Debug, thiserror::Error)]
pub enum MediumError {
    #[error("cannot read the radio medium file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("cannot write the radio medium file {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("device {0} is not in the radio medium file")]
    UnknownDevice(DeviceId),
    #[error("radio medium addresses must be loopback, not {0}")]
    NotLoopback(SocketAddr),
    #[error("cannot bind the radio medium socket {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
}

impl MediumFile {
    pub fn load(path: &Path) -> Result<MediumFile, MediumError> {
        let read = |reason: String| MediumError::Read {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| read(e.to_string()))?;
        let file: MediumFile = serde_json::from_slice(&bytes).map_err(|e| read(e.to_string()))?;
        if let Some(bad) = file.devices.values().find(|d| !d.addr.ip().is_loopback()) {
            return Err(MediumError::NotLoopback(bad.addr));
        }
        Ok(file)
    }

    /// Writes the file whole (a temporary file renamed over it), so a reader never sees half.
    pub fn save(&self, path: &Path) -> Result<(), MediumError> {
        let write = |reason: String| MediumError::Write {
            path: path.to_path_buf(),
            reason,
        };
        let json = serde_json::to_vec_pretty(self).map_err(|e| write(e.to_string()))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json).map_err(|e| write(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| write(e.to_string()))
    }

    fn device(&self, id: DeviceId) -> Option<&DeviceEntry> {
        self.devices.get(&id.to_string())
    }

    fn listed(pairs: &[(String, String)], a: DeviceId, b: DeviceId) -> bool {
        let (a, b) = (a.to_string(), b.to_string());
        pairs
            .iter()
            .any(|(x, y)| (*x == a && *y == b) || (*x == b && *y == a))
    }

    /// Whether `a` and `b` hear each other.
    pub fn in_range(&self, a: DeviceId, b: DeviceId) -> bool {
        if a == b {
            return false;
        }
        let (Some(da), Some(db)) = (self.device(a), self.device(b)) else {
            return false;
        };
        if Self::listed(&self.cuts, a, b) {
            return false;
        }
        Self::listed(&self.joined, a, b) || distance(da, db) <= self.range
    }

    /// The devices `id` hears.
    pub fn neighbours_of(&self, id: DeviceId) -> Vec<DeviceId> {
        self.devices
            .keys()
            .filter_map(|k| DeviceId::parse(k))
            .filter(|other| self.in_range(id, *other))
            .collect()
    }
}

fn distance(a: &DeviceEntry, b: &DeviceEntry) -> f64 {
    ((a.x - b.x).powi(2) + (a.y - b.y).powi(2)).sqrt()
}

struct LinkEntry {
    peer: DeviceId,
    deliver: mpsc::Sender<Vec<u8>>,
    /// Dropping it stops the link's sending task.
    _stop: oneshot::Sender<()>,
}

struct State {
    file: MediumFile,
    modified: Option<SystemTime>,
    acceptor: Option<mpsc::Sender<BleLink>>,
    links: HashMap<u64, LinkEntry>,
    connecting: HashMap<u64, oneshot::Sender<bool>>,
    rng: StdRng,
    scan: ScanWindow,
}

struct Shared {
    local: DeviceId,
    path: PathBuf,
    socket: UdpSocket,
    sender: std::net::UdpSocket,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn send_raw(&self, to: SocketAddr, kind: u8, link: u64, payload: &[u8]) {
        let mut datagram = Vec::with_capacity(HEADER + payload.len());
        datagram.push(kind);
        datagram.extend_from_slice(&self.local.0);
        datagram.extend_from_slice(&link.to_be_bytes());
        datagram.extend_from_slice(payload);
        // Loopback UDP: a full socket buffer drops it, which the ARQ above recovers from.
        let _ = self.sender.send_to(&datagram, to);
    }

    fn addr_of(&self, device: DeviceId) -> Option<SocketAddr> {
        self.lock().file.device(device).map(|d| d.addr)
    }
}

/// One device on the cross-process medium: its [`BleDriver`]. Cheap to clone.
#[derive(Clone)]
pub struct MediumRadio {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MediumRadio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediumRadio")
            .field("local", &self.shared.local)
            .field("path", &self.shared.path)
            .finish()
    }
}

impl MediumRadio {
    /// Joins the medium described by `path` as `local`: binds the device's UDP address and
    /// starts the receive and reload tasks (on the current tokio runtime).
    pub async fn open(path: &Path, local: DeviceId, seed: u64) -> Result<Self, MediumError> {
        let file = MediumFile::load(path)?;
        let addr = file
            .device(local)
            .ok_or(MediumError::UnknownDevice(local))?
            .addr;
        let bind = |e: std::io::Error| MediumError::Bind {
            addr,
            reason: e.to_string(),
        };
        let std_socket = std::net::UdpSocket::bind(addr).map_err(bind)?;
        std_socket.set_nonblocking(true).map_err(bind)?;
        // Sends go through a plain clone of the socket: tokio's `try_send_to` refuses until
        // the socket has been polled writable, and a send never needs to wait here.
        let sender = std_socket.try_clone().map_err(bind)?;
        let socket = UdpSocket::from_std(std_socket).map_err(bind)?;
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let shared = Arc::new(Shared {
            local,
            path: path.to_path_buf(),
            socket,
            sender,
            state: Mutex::new(State {
                file,
                modified,
                acceptor: None,
                links: HashMap::new(),
                connecting: HashMap::new(),
                rng: StdRng::seed_from_u64(seed),
                scan: ScanWindow::new(Instant::now()),
            }),
        });
        tokio::spawn(receive(Arc::downgrade(&shared)));
        tokio::spawn(reload(Arc::downgrade(&shared)));
        Ok(Self { shared })
    }

    fn new_link(&self, peer: DeviceId, link: u64, outbound: bool) -> Option<BleLink> {
        let (to, params, mtu, seed) = {
            let mut state = self.shared.lock();
            let to = state.file.device(peer)?.addr;
            let params = state.file.link;
            let seed: u64 = state.rng.gen();
            (to, params, params.mtu.clamp(23, 517), seed)
        };
        let (out_tx, out_rx) = mpsc::channel(WRITER_QUEUE);
        let (deliver, in_rx) = mpsc::channel(READER_QUEUE);
        let (stop, stopped) = oneshot::channel();
        {
            // Checked again under the lock: both sides may have dialled each other at once,
            // or the slots filled while the dial waited for its answer.
            let mut state = self.shared.lock();
            if state.links.contains_key(&link)
                || state.links.values().any(|l| l.peer == peer)
                || state.links.len() >= state.file.max_links
            {
                return None;
            }
            state.links.insert(
                link,
                LinkEntry {
                    peer,
                    deliver,
                    _stop: stop,
                },
            );
        }
        tokio::spawn(transmit(
            Arc::downgrade(&self.shared),
            link,
            to,
            params,
            StdRng::seed_from_u64(seed),
            out_rx,
            stopped,
        ));
        Some(BleLink {
            peer,
            max_datagram: mtu - 3,
            outbound,
            tx: out_tx,
            rx: in_rx,
        })
    }
}

impl BleDriver for MediumRadio {
    fn local(&self) -> DeviceId {
        self.shared.local
    }

    fn listen(&self) -> Result<mpsc::Receiver<BleLink>, BleError> {
        super::driver::open_acceptor(&mut self.shared.lock().acceptor)
    }

    fn neighbours(&self) -> Vec<Discovery> {
        let mut state = self.shared.lock();
        let Some(me) = state.file.device(self.shared.local) else {
            return Vec::new();
        };
        let in_range: Vec<Discovery> = state
            .file
            .neighbours_of(self.shared.local)
            .into_iter()
            .filter_map(|d| {
                let other = state.file.device(d)?;
                Some(Discovery {
                    device: d,
                    rssi: super::driver::simulated_rssi(distance(me, other)),
                })
            })
            .collect();
        state.scan.heard(Instant::now(), || in_range)
    }

    /// The PeerIds the file says the devices this radio heard advertise.
    fn identities(&self) -> Vec<(DeviceId, libp2p::PeerId)> {
        let heard = self.neighbours();
        let state = self.shared.lock();
        heard
            .into_iter()
            .filter_map(|d| {
                let peer = state
                    .file
                    .device(d.device)?
                    .peer_id
                    .as_ref()?
                    .parse()
                    .ok()?;
                Some((d.device, peer))
            })
            .collect()
    }

    fn set_duty_cycle(&self, duty: RadioDuty) {
        self.shared.lock().scan.set_duty(duty, Instant::now());
    }

    fn connect(&self, device: DeviceId) -> BoxFuture<'static, Result<BleLink, BleError>> {
        let this = self.clone();
        async move {
            let (to, link, answer) = {
                let mut state = this.shared.lock();
                if !state.file.in_range(this.shared.local, device) {
                    return Err(BleError::NotInRange(device));
                }
                if state.links.values().any(|l| l.peer == device) {
                    return Err(BleError::AlreadyLinked(device));
                }
                if state.links.len() >= state.file.max_links {
                    return Err(BleError::LinkLimit(this.shared.local));
                }
                let to = state
                    .file
                    .device(device)
                    .map(|d| d.addr)
                    .ok_or(BleError::NotInRange(device))?;
                let link: u64 = state.rng.gen();
                let (tx, rx) = oneshot::channel();
                state.connecting.insert(link, tx);
                (to, link, rx)
            };
            // Removes the pending dial however this future ends (answered, timed out, or
            // dropped by a caller that gave up).
            struct Pending(Arc<Shared>, u64);
            impl Drop for Pending {
                fn drop(&mut self) {
                    self.0.lock().connecting.remove(&self.1);
                }
            }
            let _pending = Pending(this.shared.clone(), link);
            this.shared.send_raw(to, CONNECT, link, &[]);
            let accepted = tokio::time::timeout(CONNECT_TIMEOUT, answer).await;
            match accepted {
                Ok(Ok(true)) => match this.new_link(device, link, true) {
                    Some(ble) => Ok(ble),
                    None => {
                        // The other side made a link for it: take it down there too.
                        this.shared.send_raw(to, CLOSE, link, &[]);
                        Err(BleError::AlreadyLinked(device))
                    }
                },
                Ok(Ok(false)) => Err(BleError::LinkLimit(device)),
                _ => Err(BleError::NotInRange(device)),
            }
        }
        .boxed()
    }
}

/// One link's sending side: each datagram occupies the air for its time at the link rate
/// (the writer waits meanwhile: backpressure), is lost with the link's probability, and
/// leaves for the other process once the latency has passed, in order. Ends (and closes the
/// link on both sides) when the writer drops its end or the link is closed.
async fn transmit(
    shared: std::sync::Weak<Shared>,
    link: u64,
    to: SocketAddr,
    params: MediumLink,
    mut rng: StdRng,
    mut from_writer: mpsc::Receiver<Vec<u8>>,
    mut stopped: oneshot::Receiver<()>,
) {
    let latency = Duration::from_millis(params.latency_ms);
    let mut air_free_at = Instant::now();
    let mut in_flight: std::collections::VecDeque<(Instant, Vec<u8>)> = Default::default();
    let mut writer_done = false;
    while !(writer_done && in_flight.is_empty()) {
        let head = in_flight.front().map(|(at, _)| *at);
        let air_free = air_free_at <= Instant::now();
        tokio::select! {
            biased;
            _ = &mut stopped => return,
            _ = super::sleep_until(head), if head.is_some() => {
                if let (Some((_, datagram)), Some(shared)) = (in_flight.pop_front(), shared.upgrade()) {
                    shared.send_raw(to, DATA, link, &datagram);
                }
            }
            _ = tokio::time::sleep_until(air_free_at), if !air_free && !writer_done => {}
            next = from_writer.recv(), if air_free && !writer_done => match next {
                None => writer_done = true,
                Some(datagram) => {
                    let on_air = Duration::from_nanos(
                        (datagram.len() as u64 * 8).saturating_mul(1_000_000_000)
                            / params.rate_bps.max(1),
                    );
                    air_free_at = Instant::now().max(air_free_at) + on_air;
                    if rng.gen::<f64>() >= params.loss {
                        in_flight.push_back((air_free_at + latency, datagram));
                    }
                }
            },
        }
    }
    if let Some(shared) = shared.upgrade() {
        shared.send_raw(to, CLOSE, link, &[]);
        shared.lock().links.remove(&link);
    }
}

async fn receive(shared: std::sync::Weak<Shared>) {
    let mut buf = vec![0u8; MAX_UDP + 1];
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        // Hold the socket only while waiting, so dropping every device handle ends the task
        // within one datagram or reload period.
        let received = tokio::time::timeout(RELOAD_EVERY, strong.socket.recv_from(&mut buf)).await;
        let Ok(Ok((len, _))) = received else {
            continue;
        };
        if !(HEADER..=MAX_UDP).contains(&len) {
            continue;
        }
        let kind = buf[0];
        let mut from = [0u8; 8];
        from.copy_from_slice(&buf[1..9]);
        let from = DeviceId(from);
        let mut link = [0u8; 8];
        link.copy_from_slice(&buf[9..17]);
        let link = u64::from_be_bytes(link);
        let payload = &buf[HEADER..len];
        let device = MediumRadio {
            shared: strong.clone(),
        };
        handle(&device, kind, from, link, payload);
    }
}

fn handle(device: &MediumRadio, kind: u8, from: DeviceId, link: u64, payload: &[u8]) {
    let shared = &device.shared;
    match kind {
        CONNECT => {
            if shared.lock().links.contains_key(&link) {
                // A repeated or forged connect for a live link: the link stays as it is.
                return;
            }
            let (ok, acceptor) = {
                let state = shared.lock();
                let ok = state.file.in_range(shared.local, from)
                    && state.links.len() < state.file.max_links
                    && !state.links.values().any(|l| l.peer == from);
                (ok, state.acceptor.clone())
            };
            let Some(to) = shared.addr_of(from) else {
                return;
            };
            let accepted = match (ok, acceptor) {
                (true, Some(acceptor)) => match device.new_link(from, link, false) {
                    Some(ble) => acceptor.try_send(ble).is_ok(),
                    None => false,
                },
                _ => false,
            };
            if !accepted {
                shared.lock().links.remove(&link);
            }
            shared.send_raw(to, if accepted { ACCEPT } else { REFUSE }, link, &[]);
        }
        ACCEPT | REFUSE => {
            if let Some(answer) = shared.lock().connecting.remove(&link) {
                let _ = answer.send(kind == ACCEPT);
            }
        }
        DATA => {
            let state = shared.lock();
            if let Some(entry) = state.links.get(&link).filter(|l| l.peer == from) {
                // A full reader queue drops the datagram: the ARQ above retransmits it.
                let _ = entry.deliver.try_send(payload.to_vec());
            }
        }
        CLOSE => {
            let mut state = shared.lock();
            if state.links.get(&link).is_some_and(|l| l.peer == from) {
                state.links.remove(&link);
            }
        }
        _ => {}
    }
}

/// Re-reads the medium file when it changes, and breaks the links it no longer allows.
async fn reload(shared: std::sync::Weak<Shared>) {
    loop {
        tokio::time::sleep(RELOAD_EVERY).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let modified = std::fs::metadata(&shared.path)
            .and_then(|m| m.modified())
            .ok();
        if modified == shared.lock().modified {
            continue;
        }
        match MediumFile::load(&shared.path) {
            Ok(file) => {
                let mut closing = Vec::new();
                let mut state = shared.lock();
                state.modified = modified;
                state.file = file;
                let local = shared.local;
                let gone: Vec<u64> = state
                    .links
                    .iter()
                    .filter(|(_, l)| !state.file.in_range(local, l.peer))
                    .map(|(id, _)| *id)
                    .collect();
                for id in gone {
                    if let Some(entry) = state.links.remove(&id) {
                        if let Some(d) = state.file.device(entry.peer) {
                            closing.push((d.addr, id));
                        }
                    }
                }
                drop(state);
                for (addr, id) in closing {
                    shared.send_raw(addr, CLOSE, id, &[]);
                }
            }
            // Half-written or broken: keep the last good picture and try again.
            Err(error) => {
                tracing::warn!(%error, "radio medium file unreadable; keeping the last one")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_cuts_and_joins() {
        let dev = |x: f64, port: u16| DeviceEntry {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            x,
            y: 0.0,
            peer_id: None,
        };
        let (a, b, c) = (DeviceId([1; 8]), DeviceId([2; 8]), DeviceId([3; 8]));
        let mut file = MediumFile {
            range: 10.0,
            max_links: 7,
            link: MediumLink::default(),
            devices: [(a, dev(0.0, 1)), (b, dev(8.0, 2)), (c, dev(16.0, 3))]
                .into_iter()
                .map(|(id, d)| (id.to_string(), d))
                .collect(),
            cuts: vec![],
            joined: vec![],
        };
        assert!(file.in_range(a, b) && file.in_range(b, c) && !file.in_range(a, c));
        file.cuts.push((b.to_string(), a.to_string()));
        file.joined.push((a.to_string(), c.to_string()));
        assert!(!file.in_range(a, b) && file.in_range(c, a));
        assert_eq!(file.neighbours_of(a), vec![c]);
    }
}
