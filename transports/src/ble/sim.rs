//! The simulated radio: BLE devices in one process, for tests, the in-memory network and
//! benchmarks.
//!
//! Devices sit at positions on a plane and hear each other within `range`; links can also
//! be added or cut by hand ([`SimRadio::connect_pair`], [`SimRadio::cut`]), so both
//! "topology from positions" and "an explicit adjacency list" work, and either can change
//! while links are open: a link whose ends leave each other's range breaks at once, both
//! sides see it end. Every link has a rate (bits per second: a datagram occupies the link
//! for `8 × len / rate`), a latency, a jitter (never reordering: BLE does not reorder on a
//! link), a loss probability, and an MTU; defaults are in [`LinkParams`], per-pair overrides
//! in [`SimRadio::set_params`]. Each device has a link limit (phones manage 6–8).
//!
//! Randomness (loss, jitter) comes from one generator seeded by [`SimConfig::seed`]; each
//! link direction gets its own generator seeded from it when the link opens, so a run with
//! the same seed and the same order of events repeats. Time is tokio's, so tests can pause
//! it and run a simulated minute in milliseconds.
//!
//! Bounded: each link direction holds at most [`SimConfig::queue`] datagrams between the
//! writer and the air and 64 between the air and the reader; a full queue makes the writer
//! wait (a reader that does not read stalls its link, as a real peripheral's would).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::driver::{BleDriver, BleError, BleLink, DeviceId, Discovery, RadioDuty, ScanWindow};

/// Datagrams waiting between the air and a link's reader.
const READER_QUEUE: usize = 64;
/// The resolution of tokio's timers.
const TIMER_TICK: Duration = Duration::from_millis(1);

/// How one link behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkParams {
    pub rate_bps: u64,
    pub latency: Duration,
    /// Extra delay, uniform in `0..=jitter`, per datagram.
    pub jitter: Duration,
    /// Probability that a datagram is lost, 0.0–1.0.
    pub loss: f64,
    /// ATT MTU, 23–517; datagrams carry `mtu − 3` bytes.
    pub mtu: usize,
}

impl Default for LinkParams {
    fn default() -> Self {
        Self {
            rate_bps: 1_000_000,
            latency: Duration::from_millis(30),
            jitter: Duration::ZERO,
            loss: 0.0,
            mtu: 185,
        }
    }
}

/// The radio's settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub link: LinkParams,
    /// Devices closer than this hear each other (same unit as positions).
    pub range: f64,
    /// Links one device holds at most.
    pub max_links: usize,
    /// Datagrams a writer may queue on one link direction before it waits.
    pub queue: usize,
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            link: LinkParams::default(),
            range: 10.0,
            max_links: 7,
            queue: 8,
            seed: 0,
        }
    }
}

type Pair = (DeviceId, DeviceId);

fn pair(a: DeviceId, b: DeviceId) -> Pair {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

struct Device {
    position: (f64, f64),
    acceptor: Option<mpsc::Sender<BleLink>>,
    scan: ScanWindow,
}

struct OpenLink {
    serial: u64,
    broken: watch::Sender<bool>,
}

struct Medium {
    config: SimConfig,
    rng: StdRng,
    devices: BTreeMap<DeviceId, Device>,
    joined: BTreeSet<Pair>,
    cut: BTreeSet<Pair>,
    params: HashMap<Pair, LinkParams>,
    links: BTreeMap<Pair, OpenLink>,
    next_serial: u64,
}

impl Medium {
    fn in_range(&self, a: DeviceId, b: DeviceId) -> bool {
        if a == b {
            return false;
        }
        let (Some(da), Some(db)) = (self.devices.get(&a), self.devices.get(&b)) else {
            return false;
        };
        let key = pair(a, b);
        if self.cut.contains(&key) {
            return false;
        }
        self.joined.contains(&key) || distance(da.position, db.position) <= self.config.range
    }

    fn links_of(&self, device: DeviceId) -> usize {
        self.links
            .keys()
            .filter(|(a, b)| *a == device || *b == device)
            .count()
    }

    fn params(&self, a: DeviceId, b: DeviceId) -> LinkParams {
        self.params
            .get(&pair(a, b))
            .copied()
            .unwrap_or(self.config.link)
    }

    /// Breaks every open link whose ends no longer hear each other.
    fn break_links_out_of_range(&mut self) {
        let gone: Vec<Pair> = self
            .links
            .keys()
            .copied()
            .filter(|&(a, b)| !self.in_range(a, b))
            .collect();
        for key in gone {
            if let Some(link) = self.links.remove(&key) {
                let _ = link.broken.send(true);
            }
        }
    }
}

fn distance(a: (f64, f64), b: (f64, f64)) -> f64 {
    ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt()
}

/// The shared medium; cheap to clone.
#[derive(Clone)]
pub struct SimRadio {
    medium: Arc<Mutex<Medium>>,
}

impl std::fmt::Debug for SimRadio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let medium = self.lock();
        f.debug_struct("SimRadio")
            .field("devices", &medium.devices.len())
            .field("links", &medium.links.len())
            .finish()
    }
}

impl SimRadio {
    pub fn new(config: SimConfig) -> Self {
        let rng = StdRng::seed_from_u64(config.seed);
        Self {
            medium: Arc::new(Mutex::new(Medium {
                config,
                rng,
                devices: BTreeMap::new(),
                joined: BTreeSet::new(),
                cut: BTreeSet::new(),
                params: HashMap::new(),
                links: BTreeMap::new(),
                next_serial: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Medium> {
        // The medium's state stays consistent between statements; a panic elsewhere does
        // not make it unusable.
        self.medium.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts a device on the radio at `position` (or moves it there).
    pub fn add_device(&self, id: DeviceId, position: (f64, f64)) -> SimDevice {
        let mut medium = self.lock();
        medium
            .devices
            .entry(id)
            .and_modify(|d| d.position = position)
            .or_insert(Device {
                position,
                acceptor: None,
                scan: ScanWindow::new(Instant::now()),
            });
        medium.break_links_out_of_range();
        SimDevice {
            id,
            radio: self.clone(),
        }
    }

    /// The duty cycle a device's driver was last set to.
    pub fn duty_of(&self, id: DeviceId) -> Option<RadioDuty> {
        self.lock().devices.get(&id).map(|d| d.scan.duty())
    }

    /// Takes a device off the radio: its links break, it is heard no more.
    pub fn remove_device(&self, id: DeviceId) {
        let mut medium = self.lock();
        medium.devices.remove(&id);
        medium.break_links_out_of_range();
    }

    /// Moves a device; links that fall out of range break.
    pub fn move_device(&self, id: DeviceId, position: (f64, f64)) {
        let mut medium = self.lock();
        if let Some(device) = medium.devices.get_mut(&id) {
            device.position = position;
        }
        medium.break_links_out_of_range();
    }

    /// Makes `a` and `b` hear each other whatever their positions (and lifts a cut).
    pub fn connect_pair(&self, a: DeviceId, b: DeviceId) {
        let mut medium = self.lock();
        medium.cut.remove(&pair(a, b));
        medium.joined.insert(pair(a, b));
    }

    /// Makes `a` and `b` deaf to each other; their link, if any, breaks.
    pub fn cut(&self, a: DeviceId, b: DeviceId) {
        let mut medium = self.lock();
        medium.joined.remove(&pair(a, b));
        medium.cut.insert(pair(a, b));
        medium.break_links_out_of_range();
    }

    /// Cuts every pair across the two groups.
    pub fn partition(&self, left: &[DeviceId], right: &[DeviceId]) {
        let mut medium = self.lock();
        for &a in left {
            for &b in right {
                medium.cut.insert(pair(a, b));
            }
        }
        medium.break_links_out_of_range();
    }

    /// Lifts every cut (links made by hand stay).
    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    /// Link behaviour between `a` and `b` for links opened from now on.
    pub fn set_params(&self, a: DeviceId, b: DeviceId, params: LinkParams) {
        self.lock().params.insert(pair(a, b), params);
    }

    /// The devices `id` hears now.
    pub fn neighbours_of(&self, id: DeviceId) -> Vec<DeviceId> {
        let medium = self.lock();
        medium
            .devices
            .keys()
            .copied()
            .filter(|&other| medium.in_range(id, other))
            .collect()
    }

    /// Open links, as pairs of devices.
    pub fn links(&self) -> Vec<(DeviceId, DeviceId)> {
        self.lock().links.keys().copied().collect()
    }

    fn open_link(&self, from: DeviceId, to: DeviceId) -> Result<BleLink, BleError> {
        let mut medium = self.lock();
        if !medium.devices.contains_key(&from) {
            return Err(BleError::RadioGone);
        }
        if !medium.in_range(from, to) {
            return Err(BleError::NotInRange(to));
        }
        let key = pair(from, to);
        if medium.links.contains_key(&key) {
            return Err(BleError::AlreadyLinked(to));
        }
        let max = medium.config.max_links;
        if medium.links_of(from) >= max {
            return Err(BleError::LinkLimit(from));
        }
        if medium.links_of(to) >= max {
            return Err(BleError::LinkLimit(to));
        }
        let Some(acceptor) = medium.devices.get(&to).and_then(|d| d.acceptor.clone()) else {
            return Err(BleError::NotInRange(to));
        };
        let params = medium.params(from, to);
        let max_datagram = params.mtu.clamp(23, 517) - 3;
        let queue = medium.config.queue.max(1);
        let serial = medium.next_serial;
        medium.next_serial += 1;
        let (broken, broken_rx) = watch::channel(false);
        let (out_tx, out_air) = mpsc::channel(queue);
        let (out_deliver, in_rx) = mpsc::channel(READER_QUEUE);
        let (in_tx, in_air) = mpsc::channel(queue);
        let (in_deliver, out_rx) = mpsc::channel(READER_QUEUE);
        let inbound = BleLink {
            peer: from,
            max_datagram,
            outbound: false,
            tx: in_tx,
            rx: in_rx,
        };
        acceptor
            .try_send(inbound)
            .map_err(|_| BleError::LinkLimit(to))?;
        let seeds: [u64; 2] = [medium.rng.gen(), medium.rng.gen()];
        medium.links.insert(key, OpenLink { serial, broken });
        drop(medium);
        for (seed, air, deliver) in [
            (seeds[0], out_air, out_deliver),
            (seeds[1], in_air, in_deliver),
        ] {
            tokio::spawn(carry(
                self.clone(),
                key,
                serial,
                params,
                StdRng::seed_from_u64(seed),
                air,
                deliver,
                broken_rx.clone(),
            ));
        }
        Ok(BleLink {
            peer: to,
            max_datagram,
            outbound: true,
            tx: out_tx,
            rx: out_rx,
        })
    }

    fn link_ended(&self, key: Pair, serial: u64) {
        let mut medium = self.lock();
        if medium.links.get(&key).is_some_and(|l| l.serial == serial) {
            if let Some(link) = medium.links.remove(&key) {
                let _ = link.broken.send(true);
            }
        }
    }
}

/// One direction of a link: takes datagrams from the writer when the air is free, holds
/// each for its time on air, latency and jitter, drops the lost ones, hands the rest to the
/// reader in order. Ends when the link breaks or either side drops its end, and then ends
/// the whole link.
#[allow(clippy::too_many_arguments)]
async fn carry(
    radio: SimRadio,
    key: Pair,
    serial: u64,
    params: LinkParams,
    mut rng: StdRng,
    mut air: mpsc::Receiver<Vec<u8>>,
    deliver: mpsc::Sender<Vec<u8>>,
    mut broken: watch::Receiver<bool>,
) {
    let mut in_flight: std::collections::VecDeque<(Instant, Vec<u8>)> = Default::default();
    let mut air_free_at = Instant::now();
    let mut last_arrival = Instant::now();
    let mut writer_done = false;
    loop {
        if *broken.borrow() {
            break;
        }
        if writer_done && in_flight.is_empty() {
            break;
        }
        let head = in_flight.front().map(|(at, _)| *at);
        // tokio's timers tick in whole milliseconds, so the air's schedule may run up to one
        // tick ahead of the clock; arrivals are computed from the schedule, not the clock, so
        // the link's rate holds on average (sleeping per datagram would round each one up).
        let air_free = air_free_at <= Instant::now() + TIMER_TICK;
        tokio::select! {
            biased;
            _ = broken.changed() => break,
            _ = super::sleep_until(head), if head.is_some() => {
                if let Some((_, datagram)) = in_flight.pop_front() {
                    tokio::select! {
                        sent = deliver.send(datagram) => if sent.is_err() { break },
                        _ = broken.changed() => break,
                    }
                }
            }
            _ = tokio::time::sleep_until(air_free_at - TIMER_TICK), if !air_free && !writer_done => {}
            next = air.recv(), if air_free && !writer_done => match next {
                None => writer_done = true,
                Some(datagram) => {
                    let now = Instant::now();
                    let on_air = Duration::from_nanos(
                        (datagram.len() as u64 * 8).saturating_mul(1_000_000_000)
                            / params.rate_bps.max(1),
                    );
                    air_free_at = now.max(air_free_at) + on_air;
                    if rng.gen::<f64>() < params.loss {
                        continue;
                    }
                    let jitter = if params.jitter.is_zero() {
                        Duration::ZERO
                    } else {
                        params.jitter.mul_f64(rng.gen::<f64>())
                    };
                    let arrival = (air_free_at + params.latency + jitter).max(last_arrival);
                    last_arrival = arrival;
                    in_flight.push_back((arrival, datagram));
                }
            },
        }
    }
    radio.link_ended(key, serial);
}

/// One device on a [`SimRadio`]: its [`BleDriver`].
#[derive(Clone, Debug)]
pub struct SimDevice {
    id: DeviceId,
    radio: SimRadio,
}

impl SimDevice {
    pub fn radio(&self) -> &SimRadio {
        &self.radio
    }
}

impl BleDriver for SimDevice {
    fn local(&self) -> DeviceId {
        self.id
    }

    fn listen(&self) -> Result<mpsc::Receiver<BleLink>, BleError> {
        let mut medium = self.radio.lock();
        let device = medium
            .devices
            .get_mut(&self.id)
            .ok_or(BleError::RadioGone)?;
        super::driver::open_acceptor(&mut device.acceptor)
    }

    fn neighbours(&self) -> Vec<Discovery> {
        let mut medium = self.radio.lock();
        let Some(me) = medium.devices.get(&self.id) else {
            return Vec::new();
        };
        let in_range: Vec<Discovery> = medium
            .devices
            .iter()
            .filter(|(&id, _)| medium.in_range(self.id, id))
            .map(|(&device, d)| Discovery {
                device,
                rssi: super::driver::simulated_rssi(distance(me.position, d.position)),
            })
            .collect();
        match medium.devices.get_mut(&self.id) {
            Some(me) => me.scan.heard(Instant::now(), || in_range),
            None => Vec::new(),
        }
    }

    fn set_duty_cycle(&self, duty: RadioDuty) {
        if let Some(me) = self.radio.lock().devices.get_mut(&self.id) {
            me.scan.set_duty(duty, Instant::now());
        }
    }

    fn connect(&self, device: DeviceId) -> BoxFuture<'static, Result<BleLink, BleError>> {
        let radio = self.radio.clone();
        let from = self.id;
        async move {
            // A connection takes a few connection intervals on real radios.
            let latency = radio.lock().params(from, device).latency;
            tokio::time::sleep(latency * 2).await;
            radio.open_link(from, device)
        }
        .boxed()
    }
}
