//! The peer manager: who we know, who we are connected to, whom to dial and whom to drop.
//!
//! A [`NetworkBehaviour`] composed into the swarm beside the protocols (it opens no streams:
//! its connection handler is the dummy one). It sees every connection open and close from
//! the swarm itself, so no other code keeps a second list of connected peers. It owns:
//!
//! - the address book (registry): every peer seen, its last addresses and agent, bounded by
//!   [`PeerManagerConfig::max_known_peers`] (the least recently seen peer that is not
//!   connected is forgotten for a new one); changes are reported as events for the driver
//!   to persist;
//! - bootstrap redials with backoff (the pure [`super::bootstrap`] core);
//! - the connection budget (the pure [`super::budget`] core), checked every second;
//! - dials to peers found by mDNS, and redials of known peers at start;
//! - closing connections on request (peers whose admission a revocation withdrew);
//! - which links the budget spares: the gossip mesh (handed in every second) and the links
//!   capabilities ask to keep (cluster members, [`PeerManager::keep_links`]);
//! - when to walk the DHT (first after [`DHT_FIRST_WALK`] plus jitter, then every
//!   [`DHT_WALK_EVERY`], only once a peer is connected; [`PeerManagerEvent::WalkDht`]);
//! - the radio, when the node has one: its duty cycle and "radio only" from the power
//!   policy ([`PeerManager::set_radio_policy`]), and dialling the neighbours it hears.
//!
//! Time (the node's monotonic clock) and jitter are read here, at the edge; the decisions
//! are in the cores.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use libp2p::core::transport::PortUse;
use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{
    dummy, CloseConnection, ConnectionDenied, ConnectionId, DialError, FromSwarm, NetworkBehaviour,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rand::{rngs::StdRng, Rng, SeedableRng};

use fogmesh_transports::ble::driver::{BleDriver as _, SharedDriver};
use fogmesh_transports::secure::SecureChannel;
use fogmesh_transports::LinkKind;
use serde::{Deserialize, Serialize};

use crate::runtime::capability::{duration_ms, RadioPolicy};
use crate::runtime::clock::Clock;
use crate::runtime::peers::bootstrap::{BootstrapDialer, FailedDial};
use crate::runtime::peers::budget::{self as connection_budget, Candidate};
use crate::runtime::peers::hygiene::is_relayed;
use crate::runtime::peers::recovery::{self, Recovery};

/// What the address book keeps about a peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerRecord {
    pub addrs: Vec<String>,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    #[serde(default)]
    pub agent: Option<String>,
}

/// DHT walk cadence once peers are known, and the delay of the first one (plus up to the
/// same again in jitter, so a fleet started together does not walk at once).
pub const DHT_WALK_EVERY: Duration = Duration::from_secs(300);
pub const DHT_FIRST_WALK: Duration = Duration::from_secs(20);

/// The node's Bluetooth radio, as the peer manager sees it: the power policy sets its duty
/// cycle, and (when `discovers`) the devices it hears are dialled.
pub struct Radio {
    pub driver: SharedDriver,
    /// Dial the devices in range whose identity the radio learned (offline nodes). Tests on
    /// the in-process radio dial explicitly instead.
    pub discovers: bool,
}

impl std::fmt::Debug for Radio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Radio")
            .field("discovers", &self.discovers)
            .finish_non_exhaustive()
    }
}

impl Radio {
    /// Neighbours to dial: those whose identity is known, by the side with the lower device
    /// id (so two neighbours make one link, not two).
    fn to_dial(&self) -> Vec<(PeerId, Multiaddr)> {
        if !self.discovers {
            return Vec::new();
        }
        let local = self.driver.local();
        self.driver
            .identities()
            .into_iter()
            .filter(|(device, _)| local < *device)
            .map(|(device, peer)| {
                let addr = fogmesh_transports::ble::transport::device_addr(device)
                    .with(libp2p::multiaddr::Protocol::P2p(peer));
                (peer, addr)
            })
            .collect()
    }
}

fn is_radio(addr: &Multiaddr) -> bool {
    LinkKind::of(addr) == LinkKind::Radio
}

/// Addresses remembered per peer.
pub const MAX_ADDRS_PER_PEER: usize = 8;
/// How often bootstrap redials and the connection budget are looked at.
pub const TICK: Duration = Duration::from_secs(1);
/// Most events waiting for the driver; beyond it the oldest record change is dropped (the
/// next change of that peer, or the snapshot at shutdown, writes it again).
const MAX_QUEUED: usize = 4096;

#[derive(Debug, Clone)]
pub struct PeerManagerConfig {
    /// This node: which of two relayed connections to one peer is kept depends on it.
    pub local: PeerId,
    pub bootstrap: Vec<Multiaddr>,
    pub target_peers: usize,
    pub max_known_peers: usize,
    /// Known peers redialled at start, most recently seen first.
    pub redial_on_start: usize,
}

/// What the peer manager tells the driver.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerManagerEvent {
    /// The first connection to `peer` is up.
    Connected {
        peer: PeerId,
        addr: Multiaddr,
        dialer: bool,
    },
    /// The last connection to `peer` closed.
    Disconnected {
        peer: PeerId,
        cause: String,
        /// When its newest connection was established (see [`SecureChannel::forget`]).
        newest_established: Instant,
    },
    /// Persist this record.
    RecordChanged { peer: PeerId, record: PeerRecord },
    /// Forget this peer in the store too.
    Forgotten(PeerId),
    /// Time to walk the DHT.
    WalkDht,
}

/// The peer manager's counters.
#[derive(Debug, Clone, Default)]
pub struct PeerMetrics {
    pub connected: Gauge,
    pub known: Gauge,
    pub connections_opened: Counter,
    pub connections_closed: Counter,
    pub pruned: Counter,
    pub revoked_disconnects: Counter,
    /// Connections refused as they were established: the peer's admission was withdrawn
    /// after its handshake.
    pub revoked_refused: Counter,
    /// Connections closed because their pings went unanswered (a stalled link).
    pub stalled_closed: Counter,
    /// Internet connections closed / refused because the power policy said Bluetooth only.
    pub policy_disconnects: Counter,
    pub policy_refused: Counter,
    pub bootstrap_dial_failures: Counter,
    pub mdns_discovered: Counter,
    /// Peers reached only through a relay dialled at an address of their own.
    pub direct_upgrade_dials: Counter,
    pub connections: Family<TransportLabel, Gauge>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    pub transport: &'static str,
}

/// The transport a connection runs on, from its address.
pub fn transport_of(addr: &Multiaddr) -> &'static str {
    use libp2p::multiaddr::Protocol;
    let mut transport = "other";
    for p in addr.iter() {
        transport = match p {
            Protocol::Tcp(_) => "tcp",
            Protocol::QuicV1 | Protocol::Quic => "quic",
            Protocol::Memory(_) => "memory",
            Protocol::Unix(name) if name.starts_with("ble-") => "ble",
            _ => continue,
        };
    }
    transport
}

impl PeerMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("peers");
        r.register(
            "connected",
            "Peers with at least one connection",
            self.connected.clone(),
        );
        r.register("known", "Peers in the address book", self.known.clone());
        r.register(
            "connections_opened",
            "Connections established (any transport)",
            self.connections_opened.clone(),
        );
        r.register(
            "policy_disconnects",
            "Internet connections closed because the power policy said Bluetooth only",
            self.policy_disconnects.clone(),
        );
        r.register(
            "policy_refused",
            "Internet connections refused because the power policy said Bluetooth only",
            self.policy_refused.clone(),
        );
        r.register(
            "connections_closed",
            "Connections closed",
            self.connections_closed.clone(),
        );
        r.register(
            "pruned",
            "Peers disconnected to keep the connection budget",
            self.pruned.clone(),
        );
        r.register(
            "revoked_disconnects",
            "Peers disconnected because their admission was withdrawn",
            self.revoked_disconnects.clone(),
        );
        r.register(
            "stalled_closed",
            "Connections closed because their pings went unanswered (a stalled link: its peer is dialled again every 2 s)",
            self.stalled_closed.clone(),
        );
        r.register(
            "direct_upgrade_dials",
            "Peers reached only through a relay, dialled once at an address they report (a direct connection replaces the relayed one)",
            self.direct_upgrade_dials.clone(),
        );
        r.register(
            "revoked_refused",
            "Connections refused as they were established: admission withdrawn after the handshake",
            self.revoked_refused.clone(),
        );
        r.register(
            "bootstrap_dial_failures",
            "Failed dials of bootstrap peers",
            self.bootstrap_dial_failures.clone(),
        );
        r.register(
            "connections",
            "Open connections, by transport",
            self.connections.clone(),
        );
        r.register(
            "mdns_discovered",
            "Peers found on the local network by mDNS",
            self.mdns_discovered.clone(),
        );
    }
}

/// What we know of a connected peer.
#[derive(Debug, Clone)]
pub struct LivePeer {
    /// The address of the connection in use (a direct one if there is one).
    pub addr: Multiaddr,
    pub dialer: bool,
    pub rtt: Option<Duration>,
    pub since: Instant,
    /// When its newest connection was established.
    newest: Instant,
    /// Its open connections.
    links: Vec<Link>,
    /// From `since` to its first direct connection.
    pub direct_after: Option<Duration>,
    /// A relayed peer's own address was dialled once (see [`PeerManager::on_identified`]).
    direct_tried: bool,
}

impl LivePeer {
    /// Whether any of its connections is direct (not through a relay).
    pub fn has_direct(&self) -> bool {
        self.links.iter().any(|l| !l.relayed)
    }

    /// `direct` when any connection is direct, else `relayed`.
    pub fn path(&self) -> &'static str {
        if self.has_direct() {
            "direct"
        } else {
            "relayed"
        }
    }

    /// How the connection in use came about.
    pub fn via(&self) -> Via {
        self.links
            .iter()
            .find(|l| !l.relayed)
            .or(self.links.first())
            .map_or(Via::Dialled, |l| l.via)
    }
}

/// One open connection of a live peer.
#[derive(Debug, Clone)]
struct Link {
    id: ConnectionId,
    addr: Multiaddr,
    dialer: bool,
    relayed: bool,
    via: Via,
}

/// How a connection came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Dialled,
    Accepted,
    /// Both ends dialled at once, coordinated over a relayed connection (DCUtR).
    HolePunched,
    /// Through a circuit relay.
    Relay,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Dialled => "dialled",
            Via::Accepted => "accepted",
            Via::HolePunched => "hole-punched",
            Via::Relay => "relay",
        }
    }
}

/// Why an internet connection was refused: the power policy wants Bluetooth only.
#[derive(Debug, thiserror::Error)]
#[error("the power policy allows Bluetooth LE links only (critical battery)")]
pub struct PolicyRefusal;

/// Why a connection was refused as it was established: a revocation withdrew the peer's
/// admission after its handshake ended.
#[derive(Debug, thiserror::Error)]
#[error("the peer's admission was revoked after its handshake")]
pub struct RevokedRefusal;

/// See the module docs.
#[derive(Debug)]
pub struct PeerManager {
    config: PeerManagerConfig,
    registry: HashMap<PeerId, PeerRecord>,
    live: HashMap<PeerId, LivePeer>,
    mdns_known: HashSet<PeerId>,
    bootstrap: BootstrapDialer,
    /// The gossip mesh, refreshed by the driver every second: the budget spares it.
    gossip_mesh: HashSet<PeerId>,
    /// Links capabilities asked to keep, by capability.
    kept: HashMap<usize, HashSet<PeerId>>,
    next_walk: Instant,
    radio: Option<Radio>,
    clock: Clock,
    queue: VecDeque<ToSwarm<PeerManagerEvent, Infallible>>,
    /// Made on the first poll: a tokio timer needs the runtime, construction may not have it.
    tick: Option<tokio::time::Interval>,
    rng: StdRng,
    metrics: PeerMetrics,
    /// The power policy says Bluetooth only, and the node has a radio: internet connections
    /// are closed and refused (see [`PeerManager::set_radio_only`]).
    radio_only: bool,
    /// Where admissions are re-checked as connections are established (closed meshes).
    admissions: Option<SecureChannel>,
    /// Peers whose link stalled, dialled again quickly.
    recovery: Recovery,
    /// Each watched connection's peer and when it last answered a ping, in node time: the
    /// stall detector's input. A connection is watched from its first answered ping (a peer
    /// that does not speak ping is never judged by it); radio links never (the radio's duty
    /// cycle pauses them on purpose).
    answered: HashMap<ConnectionId, (PeerId, u64)>,
    /// Internet connections, which may be watched.
    watchable: HashSet<ConnectionId>,
    /// When the stall check last ran (node time).
    last_stall_check: u64,
    /// Where peers we never met say they listen, from what capabilities heard (signed
    /// telemetry records, cluster announcements): offered to any dial of that peer, so a
    /// node reaches a coordinator or a cluster mate without a DHT walk. At most
    /// `max_known_peers`, the oldest forgotten first; not stored.
    hints: HashMap<PeerId, Vec<Multiaddr>>,
    hint_order: VecDeque<PeerId>,
}

impl PeerManager {
    pub fn new(config: PeerManagerConfig, metrics: PeerMetrics, clock: Clock) -> Self {
        let started_ms = clock.now_ms();
        let mut rng = StdRng::from_entropy();
        let jitter = DHT_FIRST_WALK.mul_f64(rng.gen::<f64>());
        Self {
            bootstrap: BootstrapDialer::new(config.bootstrap.clone(), clock.now_ms()),
            config,
            registry: HashMap::new(),
            live: HashMap::new(),
            mdns_known: HashSet::new(),
            gossip_mesh: HashSet::new(),
            kept: HashMap::new(),
            next_walk: Instant::now() + DHT_FIRST_WALK + jitter,
            radio: None,
            clock,
            queue: VecDeque::new(),
            tick: None,
            rng,
            metrics,
            admissions: None,
            recovery: Recovery::default(),
            answered: HashMap::new(),
            watchable: HashSet::new(),
            last_stall_check: started_ms,
            hints: HashMap::new(),
            hint_order: VecDeque::new(),
            radio_only: false,
        }
    }

    /// The node's radio: its duty cycle follows the power policy, and the neighbours it hears
    /// are dialled when it discovers.
    pub fn set_radio(&mut self, radio: Radio) {
        self.radio = Some(radio);
    }

    /// What the power policy says of the radio: its duty cycle, and whether to keep radio
    /// links only (ignored without a radio: see [`PeerManager::set_radio_only`]).
    pub fn set_radio_policy(&mut self, policy: RadioPolicy) {
        let Some(radio) = &self.radio else {
            return;
        };
        radio.driver.set_duty_cycle(policy.duty);
        self.set_radio_only(policy.radio_only);
    }

    /// Bluetooth only (the power policy's `bitchat_only`, at critical battery, on a node
    /// that has a radio): closes every connection that is not over BLE and refuses new ones
    /// until it is lifted. A node without a radio is never told this: cutting it off from
    /// every peer would save power by leaving the mesh.
    pub fn set_radio_only(&mut self, on: bool) {
        if on == self.radio_only {
            return;
        }
        self.radio_only = on;
        tracing::info!(radio_only = on, "transport choice follows the power policy");
        if !on {
            return;
        }
        let internet: Vec<PeerId> = self
            .live
            .iter()
            .filter(|(_, l)| !is_radio(&l.addr))
            .map(|(p, _)| *p)
            .collect();
        for peer in internet {
            self.metrics.policy_disconnects.inc();
            self.recovery.forget(&peer);
            self.queue.push_back(ToSwarm::CloseConnection {
                peer_id: peer,
                connection: CloseConnection::All,
            });
        }
    }

    /// Re-checks each connection's admission against the revocations in force as it is
    /// established: a revocation that lands between a peer's handshake and its multiplexer
    /// coming up finds no live connection to close, so the connection is refused here
    /// instead, before any protocol can open a stream on it.
    pub fn check_admissions(&mut self, channel: SecureChannel) {
        self.admissions = Some(channel);
    }

    fn admit(&self, peer: PeerId, addr: &Multiaddr) -> Result<(), ConnectionDenied> {
        if self.radio_only && !is_radio(addr) {
            self.metrics.policy_refused.inc();
            return Err(ConnectionDenied::new(PolicyRefusal));
        }
        if let Some(channel) = &self.admissions {
            if !channel.revoked_among([&peer]).is_empty() {
                tracing::info!(%peer, "connection refused: ticket revoked after its handshake");
                self.metrics.revoked_refused.inc();
                return Err(ConnectionDenied::new(RevokedRefusal));
            }
        }
        Ok(())
    }

    /// Loads the stored address book and redials the most recently seen peers.
    pub fn restore(&mut self, stored: impl IntoIterator<Item = (PeerId, PeerRecord)>) {
        let mut records: Vec<(PeerId, PeerRecord)> = stored.into_iter().collect();
        records.sort_by_key(|(_, r)| std::cmp::Reverse(r.last_seen_ms));
        records.truncate(self.config.max_known_peers);
        for (peer, record) in records.iter().take(self.config.redial_on_start) {
            let addrs: Vec<Multiaddr> =
                record.addrs.iter().filter_map(|a| a.parse().ok()).collect();
            if addrs.is_empty() {
                continue;
            }
            self.queue.push_back(ToSwarm::Dial {
                opts: DialOpts::peer_id(*peer)
                    .addresses(addrs)
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build(),
            });
        }
        self.registry = records.into_iter().collect();
        self.metrics.known.set(self.registry.len() as i64);
    }

    /// Remembers where `peer` says it listens (see `hints`): at most
    /// [`MAX_ADDRS_PER_PEER`] addresses, the latest word replacing the earlier.
    pub fn learn_addresses(&mut self, peer: PeerId, mut addrs: Vec<Multiaddr>) {
        if peer == self.config.local {
            return;
        }
        addrs.truncate(MAX_ADDRS_PER_PEER);
        if addrs.is_empty() {
            return;
        }
        if self.hints.insert(peer, addrs).is_none() {
            self.hint_order.push_back(peer);
            while self.hint_order.len() > self.config.max_known_peers.max(1) {
                if let Some(oldest) = self.hint_order.pop_front() {
                    self.hints.remove(&oldest);
                }
            }
        }
    }

    pub fn registry(&self) -> &HashMap<PeerId, PeerRecord> {
        &self.registry
    }

    pub fn live(&self) -> &HashMap<PeerId, LivePeer> {
        &self.live
    }

    pub fn connected_count(&self) -> usize {
        self.live.len()
    }

    pub fn bootstrap_connected(&self) -> usize {
        self.bootstrap.connected_count()
    }

    pub fn metrics(&self) -> &PeerMetrics {
        &self.metrics
    }

    /// The gossip mesh peers, which the budget must not prune.
    pub fn set_gossip_mesh(&mut self, peers: impl IntoIterator<Item = PeerId>) {
        self.gossip_mesh = peers.into_iter().collect();
    }

    /// The links capability `owner` wants kept (replaces what it asked before).
    pub fn keep_links(&mut self, owner: usize, peers: impl IntoIterator<Item = PeerId>) {
        self.kept.insert(owner, peers.into_iter().collect());
    }

    fn is_protected(&self, peer: &PeerId) -> bool {
        self.gossip_mesh.contains(peer)
            || self.kept.values().any(|kept| kept.contains(peer))
            || self.bootstrap.is_bootstrap_peer(peer)
    }

    /// Closes every connection to `peers` (e.g. a revocation withdrew their admission).
    pub fn disconnect(&mut self, peers: &[PeerId], reason: &'static str) {
        for peer in peers {
            tracing::info!(%peer, reason, "closing connections");
            if reason == "ticket revoked" {
                self.metrics.revoked_disconnects.inc();
            }
            // Closed on purpose: not to be dialled back.
            self.recovery.forget(peer);
            self.queue.push_back(ToSwarm::CloseConnection {
                peer_id: *peer,
                connection: CloseConnection::All,
            });
        }
    }

    /// The remote address of one of `peer`'s connections.
    pub fn connection_addr(&self, peer: &PeerId, connection: ConnectionId) -> Option<&Multiaddr> {
        self.live
            .get(peer)?
            .links
            .iter()
            .find(|l| l.id == connection)
            .map(|l| &l.addr)
    }

    /// Whether `connection` of `peer` is a direct one the peer dialled.
    pub fn dialled_in(&self, peer: &PeerId, connection: ConnectionId) -> bool {
        self.live.get(peer).is_some_and(|l| {
            l.links
                .iter()
                .any(|k| k.id == connection && !k.dialer && !k.relayed)
        })
    }

    /// DCUtR made `connection` by hole punching.
    pub fn on_hole_punched(&mut self, peer: PeerId, connection: ConnectionId) {
        if let Some(link) = self
            .live
            .get_mut(&peer)
            .and_then(|l| l.links.iter_mut().find(|l| l.id == connection))
        {
            link.via = Via::HolePunched;
        }
    }

    /// Identify told us a peer's listen addresses and agent.
    ///
    /// A peer reached only through a relay that reports an address of its own (it is
    /// publicly reachable, or behind a NAT that lets dials in) is dialled there once: a
    /// direct connection then replaces the relayed one. Hole punching would find no such
    /// path when this node's NAT is symmetric, since it starts from this node's candidates.
    pub fn on_identified(&mut self, peer: PeerId, listen_addrs: Vec<Multiaddr>, agent: String) {
        if let Some(live) = self.live.get_mut(&peer) {
            let direct: Vec<Multiaddr> = listen_addrs
                .iter()
                .filter(|a| !is_relayed(a) && !is_radio(a))
                .cloned()
                .collect();
            if !live.has_direct() && !live.direct_tried && !direct.is_empty() {
                live.direct_tried = true;
                self.metrics.direct_upgrade_dials.inc();
                self.queue.push_back(ToSwarm::Dial {
                    opts: DialOpts::peer_id(peer)
                        .addresses(direct)
                        .condition(PeerCondition::Always)
                        .build(),
                });
            }
        }
        self.note_peer(peer, listen_addrs, Some(agent));
    }

    /// A ping on `connection` was answered.
    pub fn on_pong(&mut self, peer: PeerId, connection: ConnectionId) {
        if self.watchable.contains(&connection) {
            self.answered
                .insert(connection, (peer, self.clock.now_ms()));
        }
    }

    /// Closes the connections that answered no ping for [`recovery::STALL_AFTER_MS`]. After
    /// a pause of this node itself (CPU starvation, a frozen container: ticks came late), the
    /// silence was ours, and every connection's clock starts again.
    fn close_stalled(&mut self) {
        let now = self.clock.now_ms();
        let last = std::mem::replace(&mut self.last_stall_check, now);
        if now.saturating_sub(last) > 3 * duration_ms(TICK) {
            for (_, at) in self.answered.values_mut() {
                *at = now;
            }
            return;
        }
        let mut stalled: HashMap<PeerId, Vec<ConnectionId>> = HashMap::new();
        for (connection, (peer, at)) in &self.answered {
            if now.saturating_sub(*at) > recovery::STALL_AFTER_MS {
                stalled.entry(*peer).or_default().push(*connection);
            }
        }
        for (peer, connections) in stalled {
            for connection in &connections {
                self.answered.remove(connection);
            }
            self.on_stalled(peer, connections);
        }
    }

    /// `connections` of `peer` are stalled (a partition, a dead route). They are closed, since
    /// TCP would only deliver again after its doubled retransmission timeouts, and unless the
    /// peer keeps another connection that still answers, it is dialled again every 2 s with
    /// fresh connections ([`super::recovery`]).
    fn on_stalled(&mut self, peer: PeerId, connections: Vec<ConnectionId>) {
        let Some(live) = self.live.get(&peer) else {
            return;
        };
        // A peer keeping another, answering connection is not lost: that one carries on.
        let lost = connections.len() >= live.links.len();
        let now = self.clock.now_ms();
        let mut addrs: Vec<Multiaddr> = self
            .registry
            .get(&peer)
            .map(|r| r.addrs.iter().filter_map(|a| a.parse().ok()).collect())
            .unwrap_or_default();
        if let Some(live) = self.live.get(&peer).filter(|l| l.dialer) {
            if !addrs.contains(&live.addr) {
                addrs.push(live.addr.clone());
            }
        }
        tracing::info!(%peer, connections = connections.len(), "closing stalled connections: their pings went unanswered");
        if lost {
            self.recovery.lost(peer, addrs, now);
        }
        for connection in connections {
            self.metrics.stalled_closed.inc();
            self.queue.push_back(ToSwarm::CloseConnection {
                peer_id: peer,
                connection: CloseConnection::One(connection),
            });
        }
    }

    pub fn on_rtt(&mut self, peer: PeerId, rtt: Duration) {
        if let Some(live) = self.live.get_mut(&peer) {
            live.rtt = Some(rtt);
        }
    }

    /// mDNS found peers on the local network: dial those we are not connected to.
    pub fn on_mdns_discovered(&mut self, found: impl IntoIterator<Item = (PeerId, Multiaddr)>) {
        let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
        for (peer, addr) in found {
            by_peer.entry(peer).or_default().push(addr);
        }
        for (peer, addrs) in by_peer {
            if self.mdns_known.len() < self.config.max_known_peers && self.mdns_known.insert(peer) {
                self.metrics.mdns_discovered.inc();
                tracing::info!(peer_id = %peer, "peer found via mDNS");
            }
            if !self.live.contains_key(&peer) {
                self.queue.push_back(ToSwarm::Dial {
                    opts: DialOpts::peer_id(peer)
                        .addresses(addrs)
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build(),
                });
            }
        }
    }

    pub fn on_mdns_expired(&mut self, lost: impl IntoIterator<Item = PeerId>) {
        for peer in lost {
            if self.mdns_known.remove(&peer) {
                tracing::info!(peer_id = %peer, "peer lost from mDNS");
            }
        }
    }

    /// Stamps every connected peer as seen now, so a restart knows who was there last.
    pub fn snapshot(&mut self) -> Vec<(PeerId, PeerRecord)> {
        let connected: Vec<PeerId> = self.live.keys().copied().collect();
        for peer in &connected {
            self.note_peer(*peer, Vec::new(), None);
        }
        connected
            .into_iter()
            .filter_map(|p| self.registry.get(&p).map(|r| (p, r.clone())))
            .collect()
    }

    fn emit(&mut self, event: PeerManagerEvent) {
        if self.queue.len() >= MAX_QUEUED {
            if let Some(i) = self.queue.iter().position(|e| {
                matches!(
                    e,
                    ToSwarm::GenerateEvent(PeerManagerEvent::RecordChanged { .. })
                )
            }) {
                self.queue.remove(i);
            }
        }
        self.queue.push_back(ToSwarm::GenerateEvent(event));
    }

    /// Records that `peer` was seen now, with newly learned addresses and agent.
    fn note_peer(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, agent: Option<String>) {
        let now = self.clock.now_ms();
        if !self.registry.contains_key(&peer) && self.registry.len() >= self.config.max_known_peers
        {
            self.forget_oldest();
        }
        let record = self.registry.entry(peer).or_insert_with(|| PeerRecord {
            addrs: Vec::new(),
            first_seen_ms: now,
            last_seen_ms: now,
            agent: None,
        });
        record.last_seen_ms = now;
        for addr in addrs.into_iter().rev() {
            let text = addr.to_string();
            record.addrs.retain(|a| a != &text);
            record.addrs.insert(0, text);
        }
        record.addrs.truncate(MAX_ADDRS_PER_PEER);
        if agent.is_some() {
            record.agent = agent;
        }
        let record = record.clone();
        self.metrics.known.set(self.registry.len() as i64);
        self.emit(PeerManagerEvent::RecordChanged { peer, record });
    }

    fn forget_oldest(&mut self) {
        let oldest = self
            .registry
            .iter()
            .filter(|(p, _)| !self.live.contains_key(p))
            .min_by_key(|(_, r)| r.last_seen_ms)
            .map(|(p, _)| *p);
        if let Some(peer) = oldest {
            self.registry.remove(&peer);
            self.emit(PeerManagerEvent::Forgotten(peer));
        }
    }

    fn on_tick(&mut self) {
        let now = self.clock.now_ms();
        if Instant::now() >= self.next_walk && !self.live.is_empty() {
            self.next_walk = Instant::now() + DHT_WALK_EVERY;
            self.emit(PeerManagerEvent::WalkDht);
        }
        self.dial_radio_neighbours();
        self.close_stalled();
        let live = &self.live;
        for (peer, addrs) in self.recovery.due(now, |p| live.contains_key(p)) {
            // Not "and not dialling": an earlier dial may sit in TCP's SYN retries.
            let opts = DialOpts::peer_id(peer)
                .addresses(addrs)
                .condition(PeerCondition::Disconnected)
                .build();
            self.recovery.dialling(&peer, opts.connection_id());
            self.queue.push_back(ToSwarm::Dial { opts });
        }
        for due in self.bootstrap.due(now) {
            let opts = match due.peer {
                Some(peer) => DialOpts::peer_id(peer)
                    .addresses(vec![due.addr.clone()])
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build(),
                None => DialOpts::unknown_peer_id()
                    .address(due.addr.clone())
                    .build(),
            };
            tracing::debug!(addr = %due.addr, "dialling bootstrap peer");
            self.bootstrap.dial_started(due.index, opts.connection_id());
            self.queue.push_back(ToSwarm::Dial { opts });
        }
        self.keep_budget();
    }

    /// How many peers are connected over BLE.
    pub fn radio_count(&self) -> usize {
        self.live.values().filter(|l| is_radio(&l.addr)).count()
    }

    fn dial_radio_neighbours(&mut self) {
        let Some(radio) = &self.radio else {
            return;
        };
        // At the radio budget, new neighbours would only be pruned again.
        if self.radio_count() >= connection_budget::RADIO_TARGET {
            return;
        }
        for (peer, addr) in radio.to_dial() {
            if self.live.contains_key(&peer) {
                continue;
            }
            self.queue.push_back(ToSwarm::Dial {
                opts: DialOpts::peer_id(peer)
                    .addresses(vec![addr])
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build(),
            });
        }
    }

    /// Disconnects surplus peers above the target (see `connection_budget`): internet links
    /// against `target_peers`, radio links against their own lower target.
    fn keep_budget(&mut self) {
        let candidates = |radio: bool| -> Vec<Candidate> {
            self.live
                .iter()
                .filter(|(_, live)| is_radio(&live.addr) == radio)
                .map(|(peer, live)| Candidate {
                    peer: *peer,
                    connected_for: live.since.elapsed(),
                    protected: self.is_protected(peer),
                })
                .collect()
        };
        let internet =
            connection_budget::choose_prunes(&candidates(false), self.config.target_peers);
        let radio = connection_budget::choose_prunes_with(
            &candidates(true),
            connection_budget::RADIO_TARGET,
            connection_budget::RADIO_SLACK,
        );
        for peer in internet.into_iter().chain(radio) {
            tracing::debug!(%peer, connected = self.live.len(), "pruning surplus connection");
            self.metrics.pruned.inc();
            self.recovery.forget(&peer);
            self.queue.push_back(ToSwarm::CloseConnection {
                peer_id: peer,
                connection: CloseConnection::All,
            });
        }
    }

    fn on_established(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        endpoint: &ConnectedPoint,
    ) {
        self.metrics.connections_opened.inc();
        self.metrics
            .connections
            .get_or_create(&TransportLabel {
                transport: transport_of(endpoint.get_remote_address()),
            })
            .inc();
        let (addr, dialer, relayed) = match endpoint {
            ConnectedPoint::Dialer { address, .. } => (address.clone(), true, is_relayed(address)),
            ConnectedPoint::Listener {
                send_back_addr,
                local_addr,
            } => (send_back_addr.clone(), false, is_relayed(local_addr)),
        };
        let via = match (relayed, dialer) {
            (true, _) => Via::Relay,
            (false, true) => Via::Dialled,
            (false, false) => Via::Accepted,
        };
        let link = Link {
            id: connection,
            addr: addr.clone(),
            dialer,
            relayed,
            via,
        };
        self.bootstrap.connected(connection, peer);
        self.recovery.forget(&peer);
        if !is_radio(endpoint.get_remote_address()) {
            self.watchable.insert(connection);
        }
        let now = Instant::now();
        if let Some(live) = self.live.get_mut(&peer) {
            live.newest = now;
            if relayed {
                // Two nodes that found each other's circuit at once dial each other through
                // relays: two relayed connections, each starting a hole punch from the same
                // ports, and both punches fail. Both ends keep the one dialled by the smaller
                // PeerId, so they agree without a word.
                // Both of one side's own dials through relays can succeed too (a redial
                // while the first was slow): then only that side closes, the newer one.
                let keep_ours = self.config.local < peer;
                let duplicate = live
                    .links
                    .iter()
                    .find(|l| l.relayed)
                    .map(|old| (old.id, old.dialer));
                let close = match duplicate {
                    // A direct link is up already: the relayed one is not needed.
                    _ if live.has_direct() => Some(connection),
                    Some((_, old_dialer)) if old_dialer == dialer => dialer.then_some(connection),
                    Some((old, old_dialer)) => Some(if old_dialer == keep_ours {
                        connection
                    } else {
                        old
                    }),
                    None => None,
                };
                if let Some(close) = close {
                    self.queue.push_back(ToSwarm::CloseConnection {
                        peer_id: peer,
                        connection: CloseConnection::One(close),
                    });
                }
            }
            if !relayed && !live.has_direct() {
                // The first direct connection: it becomes the one in use, and the relayed
                // ones are closed (a relay's circuits are bounded; nothing needs them now).
                live.direct_after.get_or_insert(now - live.since);
                live.addr = addr;
                live.dialer = dialer;
                for old in live.links.iter().filter(|l| l.relayed) {
                    self.queue.push_back(ToSwarm::CloseConnection {
                        peer_id: peer,
                        connection: CloseConnection::One(old.id),
                    });
                }
            }
            live.links.push(link);
            return;
        }
        self.live.insert(
            peer,
            LivePeer {
                addr: addr.clone(),
                dialer,
                rtt: None,
                since: now,
                newest: now,
                links: vec![link],
                direct_after: (!relayed).then_some(Duration::ZERO),
                direct_tried: false,
            },
        );
        self.metrics.connected.set(self.live.len() as i64);
        // Only an address we dialled is known to reach the peer; the far end of an inbound
        // connection is usually an ephemeral port.
        let learned = if dialer {
            vec![addr.clone()]
        } else {
            Vec::new()
        };
        self.note_peer(peer, learned, None);
        self.emit(PeerManagerEvent::Connected { peer, addr, dialer });
    }

    fn on_closed(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        endpoint: &ConnectedPoint,
        remaining: usize,
        cause: Option<String>,
    ) {
        self.metrics.connections_closed.inc();
        self.answered.remove(&connection);
        self.watchable.remove(&connection);
        self.metrics
            .connections
            .get_or_create(&TransportLabel {
                transport: transport_of(endpoint.get_remote_address()),
            })
            .dec();
        if remaining > 0 {
            if let Some(live) = self.live.get_mut(&peer) {
                live.links.retain(|l| l.id != connection);
                let in_use = live
                    .links
                    .iter()
                    .find(|l| !l.relayed)
                    .or(live.links.first())
                    .map(|l| (l.addr.clone(), l.dialer));
                if let Some((addr, dialer)) = in_use {
                    live.addr = addr;
                    live.dialer = dialer;
                }
            }
            return;
        }
        let Some(gone) = self.live.remove(&peer) else {
            return;
        };
        self.metrics.connected.set(self.live.len() as i64);
        self.note_peer(peer, Vec::new(), None);
        let jitter = self.rng.gen();
        self.bootstrap
            .disconnected(peer, self.clock.now_ms(), jitter);
        self.emit(PeerManagerEvent::Disconnected {
            peer,
            cause: cause.unwrap_or_else(|| "closed".into()),
            newest_established: gone.newest,
        });
    }

    fn on_dial_failure(
        &mut self,
        peer: Option<PeerId>,
        connection: ConnectionId,
        error: &DialError,
    ) {
        self.recovery.dial_failed(connection);
        if let (DialError::DialPeerConditionFalse(_), Some(peer)) = (error, peer) {
            if self.live.contains_key(&peer) {
                // Already connected: nothing to do until it is lost.
                self.bootstrap.connected(connection, peer);
                return;
            }
        }
        let jitter = self.rng.gen();
        match self
            .bootstrap
            .connection_failed(connection, self.clock.now_ms(), jitter)
        {
            Some(failed) => {
                self.metrics.bootstrap_dial_failures.inc();
                if !matches!(error, DialError::DialPeerConditionFalse(_)) {
                    log_bootstrap_failure(&failed, error);
                }
            }
            None => tracing::debug!(peer_id = ?peer, %error, "outgoing connection failed"),
        }
    }
}

/// Says at info why a bootstrap peer is unreachable, ever more rarely while it stays away
/// (see [`FailedDial::worth_logging`]).
fn log_bootstrap_failure(failed: &FailedDial, error: &dyn std::error::Error) {
    if failed.worth_logging() {
        tracing::info!(
            addr = %failed.addr,
            failures = failed.failures,
            retry_in_s = failed.retry_in.as_secs_f32(),
            error = %crate::runtime::root_cause(error),
            "bootstrap peer unreachable"
        );
    }
}

impl NetworkBehaviour for PeerManager {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = PeerManagerEvent;

    fn handle_pending_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        _effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        let Some(peer) = maybe_peer else {
            return Ok(Vec::new());
        };
        let known = self
            .registry
            .get(&peer)
            .into_iter()
            .flat_map(|r| r.addrs.iter().filter_map(|a| a.parse::<Multiaddr>().ok()));
        let hinted = self.hints.get(&peer).into_iter().flatten().cloned();
        let mut extra: Vec<Multiaddr> = Vec::new();
        for addr in known.chain(hinted) {
            if !addresses.contains(&addr) && !extra.contains(&addr) {
                extra.push(addr);
            }
        }
        Ok(extra)
    }

    fn handle_established_inbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        peer: PeerId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admit(peer, remote_addr)?;
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admit(peer, addr)?;
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                self.on_established(e.peer_id, e.connection_id, e.endpoint)
            }
            FromSwarm::ConnectionClosed(e) => self.on_closed(
                e.connection_id,
                e.peer_id,
                e.endpoint,
                e.remaining_established,
                e.cause.map(|c| c.to_string()),
            ),
            FromSwarm::DialFailure(e) => self.on_dial_failure(e.peer_id, e.connection_id, e.error),
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer_id: PeerId,
        _connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if let Some(next) = self.queue.pop_front() {
            return Poll::Ready(next.map_in(|never: Infallible| match never {}));
        }
        let tick = self.tick.get_or_insert_with(|| {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        });
        if tick.poll_tick(cx).is_ready() {
            self.on_tick();
            // Poll once more so the interval registers for the next tick.
            if let Some(tick) = &mut self.tick {
                while tick.poll_tick(cx).is_ready() {}
            }
        }
        match self.queue.pop_front() {
            Some(next) => Poll::Ready(next.map_in(|never: Infallible| match never {})),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use futures::StreamExt;
    use libp2p::core::transport::MemoryTransport;
    use libp2p::core::upgrade::Version;
    use libp2p::identity::Keypair;
    use libp2p::swarm::{Swarm, SwarmEvent};
    use libp2p::{noise, yamux, Transport};

    fn config(bootstrap: Vec<Multiaddr>, target: usize, known: usize) -> PeerManagerConfig {
        PeerManagerConfig {
            local: PeerId::random(),
            bootstrap,
            target_peers: target,
            max_known_peers: known,
            redial_on_start: 16,
        }
    }

    /// An in-process swarm with only a peer manager, on the memory transport.
    fn swarm(config: PeerManagerConfig) -> Swarm<PeerManager> {
        let key = Keypair::generate_ed25519();
        let peer = key.public().to_peer_id();
        let transport = MemoryTransport::default()
            .upgrade(Version::V1)
            .authenticate(noise::Config::new(&key).unwrap())
            .multiplex(yamux::Config::default())
            .boxed();
        Swarm::new(
            transport,
            PeerManager::new(config, PeerMetrics::default(), Clock::default()),
            peer,
            libp2p::swarm::Config::with_tokio_executor()
                .with_idle_connection_timeout(Duration::from_secs(60)),
        )
    }

    async fn listen(s: &mut Swarm<PeerManager>) -> Multiaddr {
        s.listen_on("/memory/0".parse().unwrap()).unwrap();
        loop {
            if let SwarmEvent::NewListenAddr { address, .. } = s.select_next_some().await {
                return address.with(libp2p::multiaddr::Protocol::P2p(*s.local_peer_id()));
            }
        }
    }

    /// Drives all swarms until `done` holds or 10 s pass.
    async fn drive(
        swarms: &mut [Swarm<PeerManager>],
        mut done: impl FnMut(&[Swarm<PeerManager>]) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            if done(swarms) {
                return true;
            }
            let polls = swarms.iter_mut().map(|s| Box::pin(s.select_next_some()));
            let _ = tokio::time::timeout(
                Duration::from_millis(50),
                futures::future::select_all(polls),
            )
            .await;
        }
        done(swarms)
    }

    #[tokio::test]
    async fn a_peer_is_dialled_by_id_at_the_addresses_learned_for_it() {
        let mut a = swarm(config(Vec::new(), 8, 16));
        let addr = listen(&mut a).await;
        let mut b = swarm(config(Vec::new(), 8, 16));
        let pa = *a.local_peer_id();
        // Unknown: a dial by id has nowhere to go.
        assert!(b.dial(pa).is_err());
        b.behaviour_mut().learn_addresses(pa, vec![addr]);
        b.dial(pa).unwrap();
        let mut swarms = [a, b];
        assert!(drive(&mut swarms, |s| s[1].is_connected(&pa)).await);
    }

    #[test]
    fn learned_addresses_are_bounded_by_peer_and_in_all() {
        let mut manager = PeerManager::new(
            config(Vec::new(), 8, 4),
            PeerMetrics::default(),
            Clock::default(),
        );
        let many: Vec<Multiaddr> = (0..20u64)
            .map(|i| format!("/memory/{}", i + 1).parse().unwrap())
            .collect();
        let peers: Vec<PeerId> = (0..6).map(|_| PeerId::random()).collect();
        for peer in &peers {
            manager.learn_addresses(*peer, many.clone());
        }
        assert_eq!(manager.hints.len(), 4);
        assert!(manager
            .hints
            .values()
            .all(|a| a.len() == MAX_ADDRS_PER_PEER));
        assert!(
            !manager.hints.contains_key(&peers[0]),
            "the oldest forgotten first"
        );
        let local = manager.config.local;
        manager.learn_addresses(local, many);
        assert!(
            !manager.hints.contains_key(&local),
            "nothing learned about oneself"
        );
    }

    #[tokio::test]
    async fn dials_its_bootstrap_peer_and_both_register_each_other() {
        let mut a = swarm(config(Vec::new(), 8, 16));
        let addr = listen(&mut a).await;
        let b = swarm(config(vec![addr], 8, 16));
        let (pa, pb) = (*a.local_peer_id(), *b.local_peer_id());
        let mut swarms = [a, b];
        assert!(
            drive(&mut swarms, |s| s[0].behaviour().live().contains_key(&pb)
                && s[1].behaviour().live().contains_key(&pa))
            .await
        );
        let b = &swarms[1].behaviour();
        assert_eq!(b.bootstrap_connected(), 1);
        assert!(b.live()[&pa].dialer);
        assert_eq!(b.metrics().connected.get(), 1);
        assert!(swarms[0].behaviour().registry().contains_key(&pb));
    }

    /// A revocation that lands between a peer's handshake and its multiplexer coming up
    /// finds no connection to close: the connection is refused as it is established.
    #[tokio::test]
    async fn refuses_a_connection_whose_admission_was_revoked_after_its_handshake() {
        let pair = crate::runtime::testing::AdmittedPair::new().await.unwrap();
        let mut pm = PeerManager::new(
            config(Vec::new(), 8, 16),
            PeerMetrics::default(),
            Clock::default(),
        );
        pm.check_admissions(pair.listener.clone());
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let id = ConnectionId::new_unchecked;
        assert!(pm
            .handle_established_inbound_connection(id(1), pair.dialer, &addr, &addr)
            .is_ok());
        let revocation = pair.revoke_dialer().unwrap();
        pair.revocations
            .write()
            .unwrap()
            .add(&revocation, &pair.root.public())
            .unwrap();
        assert!(pm
            .handle_established_inbound_connection(id(2), pair.dialer, &addr, &addr)
            .is_err());
        assert!(pm
            .handle_established_outbound_connection(
                id(3),
                pair.dialer,
                &addr,
                Endpoint::Dialer,
                PortUse::New
            )
            .is_err());
        assert_eq!(pm.metrics().revoked_refused.get(), 2);
    }

    /// A connection that stops answering pings (a silent partition) is closed after
    /// `STALL_AFTER_MS`, and its peer is dialled again every 2 s until it is back.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_connection_is_closed_and_its_peer_dialled_again() {
        use libp2p::swarm::behaviour::{ConnectionClosed, ConnectionEstablished};

        let mut pm = PeerManager::new(
            config(Vec::new(), 8, 16),
            PeerMetrics::default(),
            Clock::default(),
        );
        let peer = PeerId::random();
        let addr: Multiaddr = "/ip4/10.0.0.2/tcp/4747".parse().unwrap();
        let endpoint = ConnectedPoint::Dialer {
            address: addr.clone(),
            role_override: Endpoint::Dialer,
            port_use: PortUse::New,
        };
        // Two connections to the peer (a simultaneous dial), both silenced by the partition.
        let connections = [
            ConnectionId::new_unchecked(7),
            ConnectionId::new_unchecked(8),
        ];
        for (i, connection) in connections.iter().enumerate() {
            pm.on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id: peer,
                connection_id: *connection,
                endpoint: &endpoint,
                failed_addresses: &[],
                other_established: i,
            }));
        }
        let closes = |pm: &mut PeerManager| {
            pm.queue
                .drain(..)
                .filter(|e| {
                    matches!(e, ToSwarm::CloseConnection { connection: CloseConnection::One(c), .. } if connections.contains(c))
                })
                .count()
        };
        // The node itself paused (no tick for 20 s): the silence was its own, nothing closes.
        for connection in connections {
            pm.on_pong(peer, connection);
        }
        pm.on_tick();
        tokio::time::advance(Duration::from_secs(20)).await;
        pm.on_tick();
        assert_eq!(closes(&mut pm), 0);
        // Ticking every second: kept while within the bound...
        for _ in 0..recovery::STALL_AFTER_MS / 1_000 {
            tokio::time::advance(Duration::from_secs(1)).await;
            pm.on_tick();
        }
        assert_eq!(closes(&mut pm), 0);
        // ...and closed, once each, past it.
        tokio::time::advance(Duration::from_secs(1)).await;
        pm.on_tick();
        assert_eq!(closes(&mut pm), 2);
        pm.on_tick();
        assert_eq!(closes(&mut pm), 0);
        assert_eq!(pm.metrics().stalled_closed.get(), 2);
        for (remaining, connection) in connections.iter().enumerate() {
            pm.on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id: peer,
                connection_id: *connection,
                endpoint: &endpoint,
                cause: None,
                remaining_established: 1 - remaining,
            }));
        }
        // Dialled again at once and every 2 s.
        let mut dials = 0;
        for _ in 0..4 {
            pm.on_tick();
            dials += pm
                .queue
                .drain(..)
                .filter(|e| matches!(e, ToSwarm::Dial { opts } if opts.get_peer_id() == Some(peer)))
                .count();
            tokio::time::advance(Duration::from_millis(1_000)).await;
        }
        assert_eq!(dials, 2);
    }

    #[tokio::test]
    async fn disconnects_on_request_and_reports_it() {
        let mut a = swarm(config(Vec::new(), 8, 16));
        let addr = listen(&mut a).await;
        let b = swarm(config(vec![addr], 8, 16));
        let pb = *b.local_peer_id();
        let mut swarms = [a, b];
        assert!(drive(&mut swarms, |s| s[0].behaviour().live().contains_key(&pb)).await);
        swarms[0]
            .behaviour_mut()
            .disconnect(&[pb], "ticket revoked");
        assert!(drive(&mut swarms, |s| s[0].behaviour().live().is_empty()).await);
        assert_eq!(swarms[0].behaviour().metrics().revoked_disconnects.get(), 1);
        // The record stays in the address book.
        assert!(swarms[0].behaviour().registry().contains_key(&pb));
    }

    #[tokio::test]
    async fn keeps_the_connection_budget_and_spares_protected_peers() {
        // A hub with target 1 and many spokes: above target + slack it prunes down, but never
        // a protected peer. The grace period makes this wait at least 10 s.
        let mut hub = swarm(config(Vec::new(), 1, 64));
        let addr = listen(&mut hub).await;
        let spokes: Vec<_> = (0..7)
            .map(|_| swarm(config(vec![addr.clone()], 8, 16)))
            .collect();
        let keep = *spokes[0].local_peer_id();
        hub.behaviour_mut().keep_links(0, [keep]);
        let mut swarms = vec![hub];
        swarms.extend(spokes);
        assert!(drive(&mut swarms, |s| s[0].behaviour().connected_count() == 7).await);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut pruned = false;
        while tokio::time::Instant::now() < deadline && !pruned {
            pruned = drive(&mut swarms, |s| {
                s[0].behaviour().metrics().pruned.get() >= 6
            })
            .await;
        }
        assert!(pruned, "surplus peers were pruned");
        let hub = swarms[0].behaviour();
        assert_eq!(
            hub.metrics().pruned.get(),
            6,
            "all six unprotected, in one round"
        );
        assert!(
            hub.live().contains_key(&keep),
            "the protected peer is never pruned"
        );
    }

    #[test]
    fn the_address_book_is_bounded_and_forgets_the_least_recent() {
        let mut pm = PeerManager::new(
            config(Vec::new(), 8, 3),
            PeerMetrics::default(),
            Clock::default(),
        );
        let peers: Vec<PeerId> = (0..5).map(|_| PeerId::random()).collect();
        for p in &peers {
            pm.note_peer(*p, vec!["/memory/1".parse().unwrap()], None);
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(pm.registry().len(), 3);
        assert!(!pm.registry().contains_key(&peers[0]));
        assert!(pm.registry().contains_key(&peers[4]));
        let forgotten = pm
            .queue
            .iter()
            .filter(|e| matches!(e, ToSwarm::GenerateEvent(PeerManagerEvent::Forgotten(_))))
            .count();
        assert_eq!(forgotten, 2);
    }

    #[test]
    fn restore_keeps_the_most_recent_and_redials_them() {
        let mut pm = PeerManager::new(
            config(Vec::new(), 8, 2),
            PeerMetrics::default(),
            Clock::default(),
        );
        let stored: Vec<(PeerId, PeerRecord)> = (0..4u64)
            .map(|i| {
                (
                    PeerId::random(),
                    PeerRecord {
                        addrs: vec![format!("/memory/{}", i + 1)],
                        first_seen_ms: i,
                        last_seen_ms: i,
                        agent: None,
                    },
                )
            })
            .collect();
        pm.restore(stored.clone());
        assert_eq!(pm.registry().len(), 2);
        assert!(pm.registry().contains_key(&stored[3].0));
        let dials = pm
            .queue
            .iter()
            .filter(|e| matches!(e, ToSwarm::Dial { .. }))
            .count();
        assert_eq!(dials, 2);
    }
}
