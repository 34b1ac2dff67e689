//! The reach capability: reachability from dial-back tests, relay slots while not publicly
//! reachable, and the relay service's and hole punches' counters.
//!
//! Bounds: at most [`MAX_TESTED`] addresses remembered (the oldest verdict makes room), at
//! most [`MAX_OFFERS`] relays on offer (later offers wait until one goes), at most
//! [`MAX_SLOTS`] slots held. A relay whose slot ended is asked again only after
//! [`RETRY_AFTER_MS`], so a relay that keeps refusing costs one request per 30 s.

use std::collections::{BTreeMap, BTreeSet};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::runtime::capability::{Capability, Effect, Notice, Outbox, ReasonLabel, TimerId};
use crate::runtime::paths::{PathFact, Served};
use crate::runtime::peers::hygiene::{ip_of, is_global, is_relayed, relay_circuit};
use crate::runtime::status::{AddressReach, ReachStatus, RelaySlot, StatusView};

/// Slots a relay ended or refused in a row before it is no longer asked (until it offers
/// again on a new connection).
pub const FAILURES_TO_DROP_RELAY: u32 = 3;
/// Addresses whose latest verdict is remembered.
pub const MAX_TESTED: usize = 16;
/// Relays on offer remembered.
pub const MAX_OFFERS: usize = 32;
/// Relay slots held at once: two, so losing one relay leaves the node reachable.
pub const MAX_SLOTS: usize = 2;
/// A relay whose slot ended (or was refused) is asked again after this.
pub const RETRY_AFTER_MS: u64 = 30_000;
/// Without any verdict this long after start, slots are taken anyway: better reachable
/// through a relay than not at all. A verdict normally comes within about 10 s (the first
/// probe after 5 s; a dial-back that a NAT drops silently fails at the 5 s connect
/// timeout); a public node that took a slot gives it up at its first confirmed address.
pub const UNKNOWN_GRACE_MS: u64 = 15_000;
/// Distinct peers that must have dialled this node at one public address before it counts
/// as reachable there without a dial-back test. AutoNAT v2 tests only through peers this
/// node dialled, so a seed node that only ever accepts connections would otherwise never
/// learn it is public (and never relay).
pub const DIALLED_IN_QUORUM: usize = 2;
/// Distinct servers that must fail to dial back a confirmed address before it counts as
/// private again. One failure proves little: the server may have been at its connection
/// limit, or its own network may have failed.
pub const FAILURES_TO_OVERTURN: usize = 3;
/// How often the slots are reviewed besides on every fact.
const REVIEW_EVERY_MS: u64 = 2_000;
const REVIEW: TimerId = TimerId(0);
const WALK: TimerId = TimerId(1);
/// The DHT walk after the first slot waits up to this long, spread by PeerId: nodes behind
/// NATs that started together get their slots together, and walking at the same moment
/// they would dial each other through relays at once; of two crossing relayed connections
/// one is closed, and a hole punch started on it fails.
pub const WALK_SPREAD_MS: u64 = 3_000;

/// The label of a test's verdict.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabel {
    pub verdict: &'static str,
}

/// The reach metrics (docs/operations.md lists them).
#[derive(Debug, Clone, Default)]
pub struct ReachMetrics {
    pub address_tests: Family<VerdictLabel, Counter>,
    pub slots_held: Gauge,
    pub slots_lost: Counter,
    pub hole_punches: Family<VerdictLabel, Counter>,
    pub served_reservations: Gauge,
    pub served_circuits: Gauge,
    pub served_circuits_total: Counter,
    pub refused_reservations: Family<ReasonLabel, Counter>,
    pub refused_circuits: Family<ReasonLabel, Counter>,
}

impl ReachMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "reach_address_tests",
            "Dial-back tests of this node's addresses, by verdict (public, private)",
            self.address_tests.clone(),
        );
        registry.register(
            "reach_relay_slots",
            "Relay slots this node holds",
            self.slots_held.clone(),
        );
        registry.register(
            "reach_relay_slots_lost",
            "Relay slots that ended or were refused",
            self.slots_lost.clone(),
        );
        registry.register(
            "reach_hole_punches",
            "Hole punches, by outcome (direct, failed)",
            self.hole_punches.clone(),
        );
        registry.register(
            "relay_service_reservations",
            "Slots this node holds for other nodes",
            self.served_reservations.clone(),
        );
        registry.register(
            "relay_service_circuits",
            "Circuits this node relays now",
            self.served_circuits.clone(),
        );
        registry.register(
            "relay_service_circuits_accepted",
            "Circuits this node has relayed",
            self.served_circuits_total.clone(),
        );
        registry.register(
            "relay_service_reservations_refused",
            "Slot requests this node's relay service refused, by reason",
            self.refused_reservations.clone(),
        );
        registry.register(
            "relay_service_circuits_refused",
            "Circuit requests this node's relay service refused, by reason",
            self.refused_circuits.clone(),
        );
    }
}

#[derive(Debug, Clone)]
struct Tested {
    /// Public until [`FAILURES_TO_OVERTURN`] distinct servers failed to reach it since.
    reachable: bool,
    /// Servers that failed to dial back a public address since it was last confirmed.
    failed_since: BTreeSet<PeerId>,
    server: PeerId,
    at_ms: u64,
    error: Option<String>,
    evidence: String,
}

#[derive(Debug, Clone)]
struct Slot {
    addr: Multiaddr,
    active: bool,
    renewals: u64,
}

/// See the module docs.
#[derive(Debug)]
pub struct Reach {
    local: PeerId,
    enabled: bool,
    /// The relay service may run (the setting).
    relay_service: bool,
    started_ms: Option<u64>,
    tested: BTreeMap<Multiaddr, Tested>,
    /// Public addresses peers dialled this node at, and from which source addresses (up to
    /// the quorum).
    dialled_in: BTreeMap<Multiaddr, BTreeSet<std::net::IpAddr>>,
    /// The TCP/UDP ports this node listens on.
    listen_ports: BTreeSet<u16>,
    offers: BTreeMap<PeerId, Multiaddr>,
    slots: BTreeMap<PeerId, Slot>,
    retry_at: BTreeMap<PeerId, u64>,
    /// Slots each relay on offer ended or refused in a row.
    relay_failures: BTreeMap<PeerId, u32>,
    serving: bool,
    served_reservations: u64,
    served_circuits: u64,
    punched: u64,
    punch_failed: u64,
    metrics: ReachMetrics,
}

/// The node's reachability as its tests say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reachability {
    /// Some address was dialled back.
    Public,
    /// Addresses were tested and none was dialled back.
    Private,
    /// No test has ended yet.
    Unknown,
}

impl Reachability {
    pub fn as_str(self) -> &'static str {
        match self {
            Reachability::Public => "public",
            Reachability::Private => "private",
            Reachability::Unknown => "unknown",
        }
    }
}

impl Reach {
    pub fn new(local: PeerId, enabled: bool, relay_service: bool, metrics: ReachMetrics) -> Self {
        Self {
            local,
            enabled,
            relay_service,
            started_ms: None,
            tested: BTreeMap::new(),
            dialled_in: BTreeMap::new(),
            listen_ports: BTreeSet::new(),
            offers: BTreeMap::new(),
            slots: BTreeMap::new(),
            retry_at: BTreeMap::new(),
            relay_failures: BTreeMap::new(),
            serving: false,
            served_reservations: 0,
            served_circuits: 0,
            punched: 0,
            punch_failed: 0,
            metrics,
        }
    }

    pub fn reachability(&self) -> Reachability {
        if self.tested.values().any(|t| t.reachable) {
            Reachability::Public
        } else if self.tested.is_empty() {
            Reachability::Unknown
        } else {
            Reachability::Private
        }
    }

    /// This node's share of [`WALK_SPREAD_MS`]: from its PeerId, so no randomness is needed
    /// and nodes spread evenly.
    fn walk_delay_ms(&self) -> u64 {
        let bytes = self.local.to_bytes();
        let tail: [u8; 8] = bytes[bytes.len() - 8..].try_into().unwrap_or_default();
        u64::from_le_bytes(tail) % WALK_SPREAD_MS
    }

    /// Confirmed reachable at a global address: what relaying for others needs. A node
    /// reachable on loopback or a LAN only (a local testnet) is `public` there, and relays
    /// for nobody.
    fn publicly_reachable(&self) -> bool {
        self.tested
            .iter()
            .any(|(addr, t)| t.reachable && is_global(addr))
    }

    /// Whether this node should hold relay slots now.
    fn wants_slots(&self, now_ms: u64) -> bool {
        if !self.enabled {
            return false;
        }
        // Reachable on a LAN only (a neighbour found by mDNS dialled it back) is still
        // unreachable from the internet: slots are given up only at a global address.
        if self.publicly_reachable() {
            return false;
        }
        match self.reachability() {
            Reachability::Public | Reachability::Private => true,
            Reachability::Unknown => {
                now_ms.saturating_sub(self.started_ms.unwrap_or(now_ms)) >= UNKNOWN_GRACE_MS
            }
        }
    }

    /// Takes slots up to [`MAX_SLOTS`] while wanted, gives them all up when not; runs the
    /// relay service while this node is public.
    fn review(&mut self, now_ms: u64, out: &mut Outbox) {
        let serve = self.relay_service && self.publicly_reachable();
        if serve != self.serving {
            self.serving = serve;
            out.push(Effect::RelayService(serve));
            out.push(Effect::RefreshStatus);
        }
        if !self.wants_slots(now_ms) {
            for (relay, _) in std::mem::take(&mut self.slots) {
                tracing::info!(%relay, "giving up relay slot: this node is publicly reachable");
                out.push(Effect::Unreserve { relay });
            }
            self.metrics.slots_held.set(0);
            return;
        }
        self.retry_at.retain(|_, at| *at > now_ms);
        let candidates: Vec<(PeerId, Multiaddr)> = self
            .offers
            .iter()
            .filter(|(relay, _)| {
                !self.slots.contains_key(relay) && !self.retry_at.contains_key(relay)
            })
            .map(|(relay, addr)| (*relay, addr.clone()))
            .collect();
        for (relay, relay_addr) in candidates {
            if self.slots.len() >= MAX_SLOTS {
                break;
            }
            let circuit = relay_circuit(&relay_addr, relay);
            self.slots.insert(
                relay,
                Slot {
                    addr: circuit.clone().with(Protocol::P2p(self.local)),
                    active: false,
                    renewals: 0,
                },
            );
            out.push(Effect::Reserve { relay, circuit });
        }
        self.metrics.slots_held.set(self.slots.len() as i64);
    }

    fn on_fact(&mut self, now_ms: u64, fact: &PathFact, out: &mut Outbox) {
        match fact {
            PathFact::AddressTested {
                addr,
                server,
                reachable,
                error,
            } => {
                // Candidates from relayed connections (a circuit, a bare `/p2p/..`) say
                // nothing about this node's own addresses.
                if ip_of(addr).is_none() || is_relayed(addr) {
                    return;
                }
                let verdict = if *reachable { "public" } else { "private" };
                self.metrics
                    .address_tests
                    .get_or_create(&VerdictLabel { verdict })
                    .inc();
                self.record(
                    now_ms,
                    addr.clone(),
                    Tested {
                        reachable: *reachable,
                        server: *server,
                        at_ms: now_ms,
                        error: error.clone(),
                        evidence: "dial-back".into(),
                        failed_since: BTreeSet::new(),
                    },
                    out,
                );
            }
            PathFact::DialledIn {
                peer,
                from,
                observed,
            } => self.on_dialled_in(now_ms, *peer, *from, observed, out),
            PathFact::RelayOffered { relay, addrs } => {
                // A relay on this machine or a LAN reaches nobody who could not dial this
                // node directly: only a relay at a global address is worth a slot.
                let Some(first) = addrs.iter().find(|a| is_global(a)) else {
                    return;
                };
                if self.offers.contains_key(relay) || self.offers.len() < MAX_OFFERS {
                    self.offers.insert(*relay, first.clone());
                }
            }
            PathFact::ReservationAccepted { relay, renewal } => {
                self.relay_failures.remove(relay);
                let walk_at = now_ms + self.walk_delay_ms();
                if let Some(slot) = self.slots.get_mut(relay) {
                    if !slot.active {
                        // Reachable at a new address: walk the DHT, so peers that look for
                        // this node find the circuit, and it finds those already reachable.
                        out.timer(walk_at, WALK);
                    }
                    slot.active = true;
                    if *renewal {
                        slot.renewals += 1;
                    }
                }
                out.push(Effect::RefreshStatus);
            }
            PathFact::ReservationEnded { relay, reason } => {
                if self.slots.remove(relay).is_some() {
                    tracing::info!(%relay, %reason, "relay slot lost");
                    self.metrics.slots_lost.inc();
                }
                self.retry_at.insert(*relay, now_ms + RETRY_AFTER_MS);
                if self.offers.contains_key(relay) {
                    let failures = self.relay_failures.entry(*relay).or_default();
                    *failures += 1;
                    if *failures >= FAILURES_TO_DROP_RELAY {
                        // A relay that keeps refusing (or a peer that only pretends to
                        // relay) stops holding a place among the offers.
                        self.forget_relay(relay);
                    }
                }
                out.push(Effect::RefreshStatus);
            }
            PathFact::RelayWithdrawn { relay } => self.forget_relay(relay),
            PathFact::RelayServed(served) => self.on_served(*served),
            PathFact::HolePunch { ok, .. } => {
                let verdict = if *ok {
                    self.punched += 1;
                    "direct"
                } else {
                    self.punch_failed += 1;
                    "failed"
                };
                self.metrics
                    .hole_punches
                    .get_or_create(&VerdictLabel { verdict })
                    .inc();
            }
        }
        self.review(now_ms, out);
    }

    /// Keeps `tested` as the latest verdict for `addr`. Beyond the bound the oldest
    /// `private` verdict goes (a confirmed address is worth more than any failed one), and
    /// only when every verdict is `public` the oldest of those.
    fn record(&mut self, now_ms: u64, addr: Multiaddr, mut tested: Tested, out: &mut Outbox) {
        if let Some(held) = self.tested.get_mut(&addr).filter(|t| t.reachable) {
            if !tested.reachable {
                held.failed_since.insert(tested.server);
                if held.failed_since.len() < FAILURES_TO_OVERTURN {
                    return;
                }
            } else {
                tested.failed_since.clear();
            }
        }
        if !self.tested.contains_key(&addr) && self.tested.len() >= MAX_TESTED {
            if let Some(oldest) = self
                .tested
                .iter()
                .min_by_key(|(_, t)| (t.reachable, t.at_ms))
                .map(|(a, _)| a.clone())
            {
                self.tested.remove(&oldest);
            }
        }
        let before = self.reachability();
        let server = tested.server;
        self.tested.insert(addr.clone(), tested);
        let after = self.reachability();
        if before != after {
            tracing::info!(reachability = after.as_str(), %addr, %server, at_ms = now_ms, "reachability changed");
        }
        out.push(Effect::RefreshStatus);
    }

    /// A peer dialled us from `from` and saw us at `observed`. Once peers from
    /// [`DIALLED_IN_QUORUM`] distinct source addresses did so at one public address on a
    /// port we listen on, that address is confirmed. Counting source addresses, not
    /// PeerIds, keeps identities minted on one machine from confirming an address that
    /// does not reach us.
    fn on_dialled_in(
        &mut self,
        now_ms: u64,
        peer: PeerId,
        from: std::net::IpAddr,
        observed: &Multiaddr,
        out: &mut Outbox,
    ) {
        let public = is_global(observed);
        let on_our_port = port_of(observed).is_some_and(|p| self.listen_ports.contains(&p));
        if !self.enabled || !public || !on_our_port {
            return;
        }
        if self.tested.get(observed).is_some_and(|t| t.reachable) {
            return;
        }
        if !self.dialled_in.contains_key(observed) && self.dialled_in.len() >= MAX_TESTED {
            // Full of claims nobody else backed: drop one, so claims cannot lock it.
            if let Some(lone) = self.dialled_in.keys().next().cloned() {
                self.dialled_in.remove(&lone);
            }
        }
        let sources = self.dialled_in.entry(observed.clone()).or_default();
        sources.insert(from);
        if sources.len() < DIALLED_IN_QUORUM {
            return;
        }
        let count = sources.len();
        self.dialled_in.remove(observed);
        self.record(
            now_ms,
            observed.clone(),
            Tested {
                reachable: true,
                server: peer,
                at_ms: now_ms,
                error: None,
                evidence: format!("dialled in from {count} addresses"),
                failed_since: BTreeSet::new(),
            },
            out,
        );
        out.push(Effect::ConfirmAddress(observed.clone()));
    }

    fn forget_relay(&mut self, relay: &PeerId) {
        self.offers.remove(relay);
        self.relay_failures.remove(relay);
        self.retry_at.remove(relay);
    }

    fn on_served(&mut self, served: Served) {
        match served {
            Served::ReservationAccepted { renewal: false } => self.served_reservations += 1,
            Served::ReservationAccepted { renewal: true } => {}
            Served::ReservationRefused { reason } => {
                self.metrics
                    .refused_reservations
                    .get_or_create(&ReasonLabel { reason })
                    .inc();
            }
            Served::ReservationEnded => {
                self.served_reservations = self.served_reservations.saturating_sub(1)
            }
            Served::CircuitAccepted => {
                self.served_circuits += 1;
                self.metrics.served_circuits_total.inc();
            }
            Served::CircuitRefused { reason } => {
                self.metrics
                    .refused_circuits
                    .get_or_create(&ReasonLabel { reason })
                    .inc();
            }
            Served::CircuitEnded => self.served_circuits = self.served_circuits.saturating_sub(1),
        }
        self.metrics
            .served_reservations
            .set(self.served_reservations as i64);
        self.metrics
            .served_circuits
            .set(self.served_circuits as i64);
    }
}

/// The TCP or UDP port of `addr`.
fn port_of(addr: &Multiaddr) -> Option<u16> {
    addr.iter().find_map(|p| match p {
        Protocol::Tcp(port) | Protocol::Udp(port) => Some(port),
        _ => None,
    })
}

impl Capability for Reach {
    fn name(&self) -> &'static str {
        "reach"
    }

    fn on_start(&mut self, now_ms: u64, out: &mut Outbox) {
        self.started_ms = Some(now_ms);
        if self.enabled {
            out.timer(now_ms + REVIEW_EVERY_MS, REVIEW);
        }
    }

    fn on_timer(&mut self, now_ms: u64, timer: TimerId, out: &mut Outbox) {
        if timer == WALK {
            out.push(Effect::WalkDht);
            return;
        }
        self.review(now_ms, out);
        out.timer(now_ms + REVIEW_EVERY_MS, REVIEW);
    }

    fn on_notice(&mut self, now_ms: u64, notice: &Notice, out: &mut Outbox) {
        match notice {
            Notice::Path(fact) => self.on_fact(now_ms, fact, out),
            Notice::PeerDisconnected(peer) => self.forget_relay(peer),
            Notice::Local { listen_addrs, .. } => {
                self.listen_ports = listen_addrs
                    .iter()
                    .filter_map(|a| a.parse::<Multiaddr>().ok())
                    .filter(|a| !is_relayed(a))
                    .filter_map(|a| port_of(&a))
                    .collect();
            }
            _ => {}
        }
    }

    fn status(&self, now_ms: u64, status: &mut StatusView) {
        status.reach = ReachStatus {
            reachability: if self.enabled {
                self.reachability().as_str().to_owned()
            } else {
                "off".to_owned()
            },
            addresses: self
                .tested
                .iter()
                .map(|(addr, t)| AddressReach {
                    addr: addr.to_string(),
                    verdict: if t.reachable { "public" } else { "private" }.to_owned(),
                    server: t.server.to_string(),
                    age_ms: now_ms.saturating_sub(t.at_ms),
                    error: t.error.clone(),
                    evidence: t.evidence.clone(),
                })
                .collect(),
            reservations: self
                .slots
                .iter()
                .map(|(relay, slot)| RelaySlot {
                    relay: relay.to_string(),
                    addr: slot.addr.to_string(),
                    state: if slot.active { "active" } else { "pending" }.to_owned(),
                    renewals: slot.renewals,
                })
                .collect(),
            relay_service: self.serving,
            relaying_reservations: self.served_reservations,
            relaying_circuits: self.served_circuits,
            hole_punches_ok: self.punched,
            hole_punches_failed: self.punch_failed,
        };
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn peer() -> PeerId {
        PeerId::random()
    }

    fn addr(text: &str) -> Multiaddr {
        text.parse().unwrap()
    }

    fn reach() -> (Reach, Outbox) {
        let mut reach = Reach::new(peer(), true, true, ReachMetrics::default());
        let mut out = Outbox::default();
        reach.on_start(0, &mut out);
        (reach, Outbox::default())
    }

    fn reserves(out: &mut Outbox) -> Vec<PeerId> {
        out.drain()
            .filter_map(|e| match e {
                Effect::Reserve { relay, .. } => Some(relay),
                _ => None,
            })
            .collect()
    }

    fn tested(reach: &mut Reach, now: u64, reachable: bool, out: &mut Outbox) {
        tested_at(reach, now, "/ip4/198.18.0.101/tcp/4747", reachable, out);
    }

    fn tested_at(reach: &mut Reach, now: u64, at: &str, reachable: bool, out: &mut Outbox) {
        reach.on_notice(
            now,
            &Notice::Path(PathFact::AddressTested {
                addr: addr(at),
                server: peer(),
                reachable,
                error: (!reachable).then(|| "dial back failed".into()),
            }),
            out,
        );
    }

    fn offer(reach: &mut Reach, now: u64, relay: PeerId, out: &mut Outbox) {
        reach.on_notice(
            now,
            &Notice::Path(PathFact::RelayOffered {
                relay,
                addrs: vec![addr("/ip4/198.18.0.10/tcp/4747")],
            }),
            out,
        );
    }

    #[test]
    fn a_private_node_takes_two_slots_and_a_public_one_gives_them_up() {
        let (mut reach, mut out) = reach();
        let relays = [peer(), peer(), peer()];
        for relay in relays {
            offer(&mut reach, 100, relay, &mut out);
        }
        assert!(reserves(&mut out).is_empty(), "no verdict yet: no slot");
        tested(&mut reach, 200, false, &mut out);
        assert_eq!(reach.reachability(), Reachability::Private);
        assert_eq!(reserves(&mut out).len(), MAX_SLOTS);
        tested(&mut reach, 300, true, &mut out);
        assert_eq!(reach.reachability(), Reachability::Public);
        let unreserved = out
            .drain()
            .filter(|e| matches!(e, Effect::Unreserve { .. }))
            .count();
        assert_eq!(unreserved, MAX_SLOTS);
    }

    #[test]
    fn without_any_verdict_slots_are_taken_after_the_grace() {
        let (mut reach, mut out) = reach();
        offer(&mut reach, 100, peer(), &mut out);
        reach.on_timer(UNKNOWN_GRACE_MS - 1, REVIEW, &mut out);
        assert!(reserves(&mut out).is_empty());
        reach.on_timer(UNKNOWN_GRACE_MS, REVIEW, &mut out);
        assert_eq!(reserves(&mut out).len(), 1);
    }

    #[test]
    fn a_lost_slot_is_asked_again_only_after_the_retry_time() {
        let (mut reach, mut out) = reach();
        let relay = peer();
        offer(&mut reach, 0, relay, &mut out);
        tested(&mut reach, 0, false, &mut out);
        assert_eq!(reserves(&mut out), vec![relay]);
        reach.on_notice(
            1_000,
            &Notice::Path(PathFact::ReservationEnded {
                relay,
                reason: "refused".into(),
            }),
            &mut out,
        );
        assert!(reserves(&mut out).is_empty());
        reach.on_timer(1_000 + RETRY_AFTER_MS - 1, REVIEW, &mut out);
        assert!(reserves(&mut out).is_empty());
        reach.on_timer(1_000 + RETRY_AFTER_MS + 1, REVIEW, &mut out);
        assert_eq!(reserves(&mut out), vec![relay]);
    }

    #[test]
    fn a_departed_relay_is_not_asked_and_offers_are_bounded() {
        let (mut reach, mut out) = reach();
        for _ in 0..(MAX_OFFERS + 10) {
            offer(&mut reach, 0, peer(), &mut out);
        }
        assert_eq!(reach.offers.len(), MAX_OFFERS);
        let first = *reach.offers.keys().next().unwrap();
        reach.on_notice(1, &Notice::PeerDisconnected(first), &mut out);
        assert!(!reach.offers.contains_key(&first));
    }

    #[test]
    fn tested_addresses_are_bounded_and_the_oldest_goes() {
        let (mut reach, mut out) = reach();
        for i in 0..(MAX_TESTED as u16 + 4) {
            let at = format!("/ip4/198.18.0.101/tcp/{}", 1000 + i);
            tested_at(&mut reach, u64::from(i), &at, false, &mut out);
        }
        assert_eq!(reach.tested.len(), MAX_TESTED);
        assert!(!reach
            .tested
            .contains_key(&addr("/ip4/198.18.0.101/tcp/1000")));
    }

    #[test]
    fn a_confirmed_address_outlives_any_number_of_failed_ones() {
        let (mut reach, mut out) = reach();
        tested(&mut reach, 0, true, &mut out);
        for i in 0..(MAX_TESTED as u16 * 3) {
            let at = format!("/ip4/198.18.0.101/tcp/{}", 1000 + i);
            tested_at(&mut reach, 1 + u64::from(i), &at, false, &mut out);
        }
        assert_eq!(reach.reachability(), Reachability::Public);
    }

    #[test]
    fn one_failed_dial_back_does_not_overturn_a_confirmed_address() {
        let (mut reach, mut out) = reach();
        tested(&mut reach, 0, true, &mut out);
        for n in 1..FAILURES_TO_OVERTURN {
            tested(&mut reach, n as u64, false, &mut out);
            assert_eq!(reach.reachability(), Reachability::Public, "after {n}");
        }
        tested(&mut reach, 10, false, &mut out);
        assert_eq!(reach.reachability(), Reachability::Private);
    }

    #[test]
    fn the_relay_service_counts_what_it_holds_and_refuses() {
        let (mut reach, mut out) = reach();
        let serve = |reach: &mut Reach, out: &mut Outbox, s: Served| {
            reach.on_notice(0, &Notice::Path(PathFact::RelayServed(s)), out)
        };
        serve(
            &mut reach,
            &mut out,
            Served::ReservationAccepted { renewal: false },
        );
        serve(
            &mut reach,
            &mut out,
            Served::ReservationAccepted { renewal: true },
        );
        serve(&mut reach, &mut out, Served::CircuitAccepted);
        serve(&mut reach, &mut out, Served::CircuitAccepted);
        serve(&mut reach, &mut out, Served::CircuitEnded);
        serve(
            &mut reach,
            &mut out,
            Served::ReservationRefused {
                reason: "resource_limit",
            },
        );
        let mut status = StatusView::starting(String::new(), Default::default(), 0);
        reach.status(0, &mut status);
        assert_eq!(status.reach.relaying_reservations, 1);
        assert_eq!(status.reach.relaying_circuits, 1);
        assert_eq!(
            reach
                .metrics
                .refused_reservations
                .get_or_create(&ReasonLabel {
                    reason: "resource_limit"
                })
                .get(),
            1
        );
    }

    fn local(reach: &mut Reach, out: &mut Outbox) {
        reach.on_notice(
            0,
            &Notice::Local {
                connected_peers: 1,
                listen_addrs: vec!["/ip4/0.0.0.0/tcp/4747".into()],
            },
            out,
        );
    }

    fn dialled_in(reach: &mut Reach, from: [u8; 4], observed: &str, out: &mut Outbox) {
        reach.on_notice(
            10,
            &Notice::Path(PathFact::DialledIn {
                peer: peer(),
                from: std::net::IpAddr::from(from),
                observed: addr(observed),
            }),
            out,
        );
    }

    #[test]
    fn peers_from_two_addresses_dialling_in_at_a_public_address_confirm_it() {
        let (mut reach, mut out) = reach();
        local(&mut reach, &mut out);
        let one = [198, 18, 0, 100];
        dialled_in(&mut reach, one, "/ip4/198.18.0.10/tcp/4747", &mut out);
        dialled_in(&mut reach, one, "/ip4/198.18.0.10/tcp/4747", &mut out);
        assert_eq!(
            reach.reachability(),
            Reachability::Unknown,
            "two identities from one address are one witness"
        );
        // Not our listening port, or not a public address: no evidence.
        dialled_in(
            &mut reach,
            [198, 18, 0, 101],
            "/ip4/198.18.0.10/tcp/5000",
            &mut out,
        );
        dialled_in(
            &mut reach,
            [198, 18, 0, 102],
            "/ip4/10.0.0.5/tcp/4747",
            &mut out,
        );
        assert_eq!(reach.reachability(), Reachability::Unknown);
        out.drain().for_each(drop);
        dialled_in(
            &mut reach,
            [198, 18, 0, 103],
            "/ip4/198.18.0.10/tcp/4747",
            &mut out,
        );
        assert_eq!(reach.reachability(), Reachability::Public);
        let effects: Vec<String> = out.drain().map(|e| format!("{e:?}")).collect();
        assert!(
            effects.iter().any(|e| e.starts_with("ConfirmAddress")),
            "{effects:?}"
        );
        assert!(
            effects.iter().any(|e| e == "RelayService(true)"),
            "{effects:?}"
        );
    }

    #[test]
    fn the_relay_service_stays_off_while_private_and_when_turned_off() {
        let (mut reach, mut out) = reach();
        tested(&mut reach, 0, false, &mut out);
        assert!(!out.drain().any(|e| matches!(e, Effect::RelayService(true))));
        let mut off = Reach::new(peer(), true, false, ReachMetrics::default());
        off.on_start(0, &mut out);
        tested(&mut off, 0, true, &mut out);
        assert_eq!(off.reachability(), Reachability::Public);
        assert!(!out.drain().any(|e| matches!(e, Effect::RelayService(true))));
    }

    #[test]
    fn tests_of_relayed_candidates_are_not_verdicts_on_this_node() {
        let (mut reach, mut out) = reach();
        for junk in [
            "/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
            "/ip4/198.18.0.10/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit",
        ] {
            reach.on_notice(
                0,
                &Notice::Path(PathFact::AddressTested {
                    addr: addr(junk),
                    server: peer(),
                    reachable: false,
                    error: None,
                }),
                &mut out,
            );
        }
        assert_eq!(reach.reachability(), Reachability::Unknown);
    }

    #[test]
    fn on_a_local_testnet_nobody_takes_slots_or_relays() {
        let (mut reach, mut out) = reach();
        reach.on_notice(
            0,
            &Notice::Path(PathFact::RelayOffered {
                relay: peer(),
                addrs: vec![
                    addr("/ip4/127.0.0.1/tcp/4001"),
                    addr("/ip4/10.0.0.7/tcp/4001"),
                ],
            }),
            &mut out,
        );
        tested_at(&mut reach, 0, "/ip4/10.0.0.9/tcp/4747", false, &mut out);
        assert!(
            reserves(&mut out).is_empty(),
            "no slot on a relay at a local address"
        );
        tested_at(&mut reach, 1, "/ip4/127.0.0.1/tcp/4747", true, &mut out);
        assert_eq!(reach.reachability(), Reachability::Public);
        assert!(!out.drain().any(|e| matches!(e, Effect::RelayService(true))));
    }

    #[test]
    fn reachable_on_the_lan_only_still_holds_its_relay_slots() {
        let (mut reach, mut out) = reach();
        offer(&mut reach, 0, peer(), &mut out);
        tested(&mut reach, 0, false, &mut out);
        assert_eq!(reserves(&mut out).len(), 1);
        tested_at(&mut reach, 1, "/ip4/192.168.1.20/tcp/4747", true, &mut out);
        assert!(!out.drain().any(|e| matches!(e, Effect::Unreserve { .. })));
    }

    #[test]
    fn a_relay_that_keeps_refusing_or_stops_offering_is_forgotten() {
        let (mut reach, mut out) = reach();
        let (refuser, quitter) = (peer(), peer());
        offer(&mut reach, 0, refuser, &mut out);
        offer(&mut reach, 0, quitter, &mut out);
        for n in 0..FAILURES_TO_DROP_RELAY {
            reach.on_notice(
                u64::from(n),
                &Notice::Path(PathFact::ReservationEnded {
                    relay: refuser,
                    reason: "refused".into(),
                }),
                &mut out,
            );
        }
        assert!(!reach.offers.contains_key(&refuser));
        reach.on_notice(
            10,
            &Notice::Path(PathFact::RelayWithdrawn { relay: quitter }),
            &mut out,
        );
        assert!(reach.offers.is_empty());
        assert!(reach.relay_failures.is_empty() && reach.retry_at.is_empty());
    }

    #[test]
    fn a_node_without_nat_traversal_never_reserves() {
        let mut reach = Reach::new(peer(), false, false, ReachMetrics::default());
        let mut out = Outbox::default();
        reach.on_start(0, &mut out);
        offer(&mut reach, 0, peer(), &mut out);
        tested(&mut reach, 0, false, &mut out);
        reach.on_timer(UNKNOWN_GRACE_MS * 2, REVIEW, &mut out);
        assert!(reserves(&mut out).is_empty());
    }
}
