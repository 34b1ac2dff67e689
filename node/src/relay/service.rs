//! The relay capability: directed and broadcast messages across several links, with
//! store-and-forward. A pure state machine; `docs/relay.md` describes the protocol.
//!
//! Inputs: a packet from a neighbour on `/fogmesh/relay/1` ([`RelayService::on_packet`],
//! answered with the hop byte), a neighbour's link coming up or going down, the answer of a
//! hop ([`RelayService::hop_result`]), a send request from the control API, timers.
//! Outputs: packets to neighbours ([`Effect::Send`]), writes, replies, events, the view.
//!
//! Routing is a flood bounded by TTL (BitChat's scheme), with these rules:
//! - a packet is handled once per node (the [`SeenCache`]); later copies are dropped;
//! - a node forwards after a random delay (`jitter_ms`), so neighbours that heard the same
//!   packet do not all transmit at once on a shared radio;
//! - with more than `full_fanout_upto` (8) candidate neighbours, only
//!   `full_fanout_upto + (n - full_fanout_upto) / 2` of them (random) get a copy: a hub
//!   thins its fanout, trusting the dense mesh around it; a leaf hanging off such a hub may
//!   miss a broadcast (directed packets are held and offered again, so they do not);
//! - a directed packet whose recipient is a neighbour goes to it alone;
//! - a node without the gateway role forwards only between links of the same kind (radio to
//!   radio, internet to internet); a gateway bridges them;
//! - directed packets are also *held* (persisted, bounded, expiring: [`HeldStore`]) and
//!   offered to every neighbour that connects later, until the recipient's signed ack is
//!   seen or they expire. That is the store-and-forward: a partition heals, a phone walks
//!   into range, and the held copies flow on.
//!
//! The recipient stores the message durably and only then floods its ack, so an ack means
//! "on the recipient's disk". Acks clear held copies on every node they cross.

use std::collections::{BTreeMap, HashMap};

use fogmesh_transports::secure::keys::LocalKeys;
use libp2p::identity::Keypair;
use libp2p::PeerId;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use zeroize::Zeroizing;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::device::service::DeviceChanged;
use crate::relay::held::{HeldLimits, HeldStore};
use crate::relay::packet::{self, AppPayload, Content, MessageId, RelayPacket, MAX_TTL};
use crate::relay::protocol::{self, HOP_ACCEPTED, HOP_REFUSED};
use crate::relay::seen::SeenCache;
use crate::relay::tables::{RelayOp, RelayTables};
use crate::relay::{sealed, HeldRecord, InboxRecord, MessagesView, SentRecord};
use crate::runtime::capability::{
    Capability, Effect, InboundRequest, Notice, Outbox, Protocol, ReasonLabel, Response, TimerId,
    Token,
};
use crate::runtime::events::EventKind;
use crate::runtime::handle::ViewCell;
use fogmesh_device::policy::TransportPreference;
pub use fogmesh_transports::LinkKind;

const FORWARD: TimerId = TimerId(0);
const SWEEP: TimerId = TimerId(1);

/// The answer to a send request: the message's id (hex), or why not.
pub type Reply = oneshot::Sender<Result<String, String>>;

/// A message for this node (or a broadcast) arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageReceived {
    pub id: String,
    pub from: String,
    pub app: String,
    pub hops: u8,
    pub broadcast: bool,
}

impl EventKind for MessageReceived {
    const KIND: &'static str = "message_received";
}

/// A message this node sent was acknowledged by its recipient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageDelivered {
    pub id: String,
    pub to: String,
    pub after_ms: u64,
}

impl EventKind for MessageDelivered {
    const KIND: &'static str = "message_delivered";
}

/// How often held packets and the duplicate filter are swept for age.
const SWEEP_EVERY_MS: u64 = 60_000;
/// A delivered message is acknowledged again at most this often when copies keep coming.
const REACK_AFTER_MS: u64 = 30_000;
/// Packets in flight to one neighbour (sent, hop not answered); more wait for the next
/// offer (held packets) or are dropped and counted (floods).
const MAX_IN_FLIGHT_PER_PEER: usize = 32;

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Forwarding delay, uniform in `[min, max]` ms (BitChat: 10–220 ms per hop).
    pub jitter_ms: (u64, u64),
    pub full_fanout_upto: usize,
    pub seen_capacity: usize,
    pub seen_ttl_ms: u64,
    /// Packets older than this (by the origin's clock) are refused, and held ones dropped.
    pub max_age_ms: u64,
    /// Packets dated further ahead than this are refused (clock skew allowance).
    pub max_future_ms: u64,
    pub held_per_recipient: usize,
    pub held_total: usize,
    pub inbox_capacity: usize,
    pub sent_capacity: usize,
    /// Forwards waiting for their jitter to pass; beyond it new floods are dropped (counted).
    pub forward_queue: usize,
    /// Per neighbour: a bucket of `burst` packets refilled at `per_second`.
    pub neighbour_burst: f64,
    pub neighbour_per_second: f64,
    /// Refused packets from one neighbour within `strike_window_ms` before it is dropped.
    pub strikes_to_disconnect: u32,
    pub strike_window_ms: u64,
    /// Bridges radio and internet links.
    pub gateway: bool,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            jitter_ms: (10, 220),
            // Above a phone's link limit (7): on the radio every neighbour gets a copy; only
            // well-connected nodes (internet hubs) thin their fanout.
            full_fanout_upto: 8,
            seen_capacity: 16_384,
            // As long as a packet may live: a copy replayed later is still recognised.
            seen_ttl_ms: 24 * 3_600_000,
            max_age_ms: 24 * 3_600_000,
            max_future_ms: 5 * 60_000,
            held_per_recipient: 32,
            held_total: 1024,
            inbox_capacity: 1000,
            sent_capacity: 1000,
            forward_queue: 4096,
            neighbour_burst: 200.0,
            neighbour_per_second: 50.0,
            strikes_to_disconnect: 16,
            strike_window_ms: 10 * 60_000,
            gateway: false,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct RelayMetrics {
    pub received: Counter,
    pub duplicates: Counter,
    pub rejected: Family<ReasonLabel, Counter>,
    pub forwarded: Counter,
    pub forward_dropped: Family<ReasonLabel, Counter>,
    pub delivered: Counter,
    pub acks_received: Counter,
    pub held: Gauge,
    pub held_evicted: Counter,
    pub held_expired: Counter,
    pub neighbours_dropped: Counter,
    pub hop_failures: Counter,
}

impl RelayMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("relay");
        r.register(
            "received",
            "Relay packets received from neighbours",
            self.received.clone(),
        );
        r.register(
            "duplicates",
            "Relay packets seen before (dropped)",
            self.duplicates.clone(),
        );
        r.register(
            "rejected",
            "Relay packets refused, by reason",
            self.rejected.clone(),
        );
        r.register(
            "forwarded",
            "Relay packets sent on to a neighbour",
            self.forwarded.clone(),
        );
        r.register(
            "forward_dropped",
            "Forwards not made, by reason",
            self.forward_dropped.clone(),
        );
        r.register(
            "delivered",
            "Messages delivered to this node",
            self.delivered.clone(),
        );
        r.register(
            "acks_received",
            "Delivery acks for this node's messages",
            self.acks_received.clone(),
        );
        r.register(
            "held",
            "Packets held for store-and-forward",
            self.held.clone(),
        );
        r.register(
            "held_evicted",
            "Held packets pushed out by the bounds",
            self.held_evicted.clone(),
        );
        r.register(
            "held_expired",
            "Held packets past their age",
            self.held_expired.clone(),
        );
        r.register(
            "neighbours_dropped",
            "Neighbours disconnected for sending too many bad packets",
            self.neighbours_dropped.clone(),
        );
        r.register(
            "hop_failures",
            "Packets a neighbour did not take",
            self.hop_failures.clone(),
        );
    }

    fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabel { reason }).inc();
    }

    fn drop_forward(&self, reason: &'static str) {
        self.forward_dropped
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}

/// A send request from the control API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRequest {
    /// `None`: a broadcast.
    pub to: Option<PeerId>,
    pub app: String,
    pub data: Vec<u8>,
}

/// What the hop answer tells a sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HopOutcome {
    Accepted,
    /// The neighbour refused it, or the link failed before it answered.
    Failed,
}

#[derive(Debug)]
struct Neighbour {
    kind: LinkKind,
    tokens: f64,
    refilled_ms: u64,
    strikes: u32,
    strikes_since_ms: u64,
    in_flight: usize,
}

#[derive(Debug)]
struct Forward {
    id: MessageId,
    frame: Vec<u8>,
    targets: Vec<PeerId>,
}

#[derive(Debug)]
enum Durable {
    /// The message is on disk: put it in the inbox and ack it.
    Delivered {
        to: PeerId,
        message: MessageId,
        record: Box<InboxRecord>,
    },
    /// Our own message is on disk: answer the request, then send.
    Sent { reply: Reply, id: MessageId },
}

/// See the module docs.
#[derive(Debug)]
pub struct RelayService {
    keypair: Keypair,
    local: LocalKeys,
    local_id: PeerId,
    config: RelayConfig,
    rng: StdRng,
    seq: u64,
    neighbours: HashMap<PeerId, Neighbour>,
    seen: SeenCache,
    held: HeldStore,
    forwards: BTreeMap<(u64, u64), Forward>,
    next_forward: u64,
    inbox: BTreeMap<(u64, String), InboxRecord>,
    /// Inbox message id (hex) → its origin, for acking copies that keep coming.
    inbox_from: HashMap<String, PeerId>,
    sent: BTreeMap<(u64, String), SentRecord>,
    sent_index: HashMap<String, (u64, String)>,
    last_ack_ms: HashMap<MessageId, u64>,
    durable: HashMap<Token, Durable>,
    /// Our broadcasts waiting for their sent record to reach the disk (bounded by the
    /// durable writes in flight).
    pending_broadcasts: HashMap<MessageId, Vec<u8>>,
    next_token: Token,
    /// Packets sent and not answered yet, by request token (bounded by
    /// `MAX_IN_FLIGHT_PER_PEER` per neighbour).
    hops: HashMap<Token, (PeerId, MessageId)>,
    next_hop: Token,
    /// The power policy prefers Bluetooth: own packets go over radio links when there are any.
    prefer_radio: bool,
    tables: RelayTables,
    /// Removals decided while restoring, written at start.
    restore_removals: Vec<RelayOp>,
    view: ViewCell<MessagesView>,
    metrics: RelayMetrics,
}

/// Hex of a message id.
pub fn hex_id(id: &MessageId) -> String {
    hex::encode(id)
}

impl RelayService {
    pub fn new(
        keypair: Keypair,
        config: RelayConfig,
        rng: StdRng,
        tables: RelayTables,
        view: ViewCell<MessagesView>,
        metrics: RelayMetrics,
    ) -> Result<Self, String> {
        let local = LocalKeys::from_identity(&keypair).map_err(|e| e.to_string())?;
        Ok(Self {
            local_id: keypair.public().to_peer_id(),
            local,
            seen: SeenCache::new(config.seen_capacity, config.seen_ttl_ms),
            held: HeldStore::new(HeldLimits {
                per_recipient: config.held_per_recipient,
                total: config.held_total,
                max_age_ms: config.max_age_ms,
            }),
            keypair,
            config,
            rng,
            seq: 0,
            neighbours: HashMap::new(),
            forwards: BTreeMap::new(),
            next_forward: 0,
            inbox: BTreeMap::new(),
            inbox_from: HashMap::new(),
            sent: BTreeMap::new(),
            sent_index: HashMap::new(),
            last_ack_ms: HashMap::new(),
            durable: HashMap::new(),
            pending_broadcasts: HashMap::new(),
            next_token: 0,
            hops: HashMap::new(),
            next_hop: 0,
            prefer_radio: false,
            tables,
            restore_removals: Vec::new(),
            view,
            metrics,
        })
    }

    fn persist(&self, op: RelayOp, out: &mut Outbox) {
        if let Some(effect) = self.tables.persist(op) {
            out.push(effect);
        }
    }

    /// The power policy prefers Bluetooth (low battery): this node's own packets go to its
    /// radio neighbours only, when it has any. Relayed packets follow the usual rules.
    pub fn set_prefer_radio(&mut self, on: bool) {
        self.prefer_radio = on;
    }

    /// Whether this node's own packets stay on radio links now (the preference is set and
    /// there is a radio neighbour to take them).
    fn own_packets_radio_only(&self) -> bool {
        self.prefer_radio && self.neighbours.values().any(|n| n.kind == LinkKind::Radio)
    }

    pub fn metrics(&self) -> &RelayMetrics {
        &self.metrics
    }

    /// Seeds the service from the store. Held packets that no longer decode or are past
    /// their age, and what is over capacity, are removed from the store at start.
    pub fn restore(
        &mut self,
        now_ms: u64,
        held: Vec<(String, HeldRecord)>,
        inbox: Vec<InboxRecord>,
        sent: Vec<SentRecord>,
    ) {
        let mut removals = Vec::new();
        for (key, record) in held {
            let decoded = packet::encode(record.ttl.max(1), &record.envelope)
                .and_then(|frame| packet::decode(&frame));
            match decoded {
                Ok(p) if hex_id(&p.id) == key => {
                    let Some(recipient) = p.content.addressee().copied() else {
                        removals.push(RelayOp::RemoveHeld { id: key });
                        continue;
                    };
                    if now_ms.saturating_sub(p.created_ms) >= self.config.max_age_ms {
                        removals.push(RelayOp::RemoveHeld { id: key });
                        continue;
                    }
                    self.seen.first_time(now_ms, &p.id);
                    let added = self.held.add(p.id, recipient, p.created_ms, record);
                    removals.extend(
                        added
                            .evicted
                            .iter()
                            .map(|id| RelayOp::RemoveHeld { id: hex_id(id) }),
                    );
                }
                _ => removals.push(RelayOp::RemoveHeld { id: key }),
            }
        }
        for record in inbox {
            self.insert_inbox(record);
        }
        while let Some(old) = self.pop_inbox_over_capacity() {
            removals.push(RelayOp::RemoveInbox { id: old.id });
        }
        for record in sent {
            self.insert_sent(record);
        }
        while self.sent.len() > self.config.sent_capacity {
            if let Some(old) = self.pop_oldest_sent() {
                removals.push(RelayOp::RemoveSent { id: old.id });
            }
        }
        self.metrics.held.set(self.held.len() as i64);
        self.restore_removals = removals;
        self.view.set(self.messages());
    }

    fn insert_inbox(&mut self, record: InboxRecord) {
        if let Ok(from) = record.from.parse::<PeerId>() {
            self.inbox_from.insert(record.id.clone(), from);
        }
        self.inbox
            .insert((record.received_ms, record.id.clone()), record);
    }

    fn pop_inbox_over_capacity(&mut self) -> Option<InboxRecord> {
        if self.inbox.len() <= self.config.inbox_capacity {
            return None;
        }
        let (_, old) = self.inbox.pop_first()?;
        self.inbox_from.remove(&old.id);
        Some(old)
    }

    fn insert_sent(&mut self, record: SentRecord) {
        let key = (record.created_ms, record.id.clone());
        self.sent_index.insert(record.id.clone(), key.clone());
        self.sent.insert(key, record);
    }

    fn pop_oldest_sent(&mut self) -> Option<SentRecord> {
        let (_, old) = self.sent.pop_first()?;
        self.sent_index.remove(&old.id);
        Some(old)
    }

    /// What `GET /v1/messages` shows.
    pub fn messages(&self) -> MessagesView {
        MessagesView {
            inbox: self.inbox.values().rev().map(InboxRecord::view).collect(),
            sent: self.sent.values().rev().map(SentRecord::view).collect(),
            held: self.held.len(),
        }
    }

    fn publish_view(&self, _out: &mut Outbox) {
        self.metrics.held.set(self.held.len() as i64);
        self.view.set(self.messages());
    }

    fn next_seq(&mut self, now_ms: u64) -> u64 {
        self.seq = (self.seq + 1).max(now_ms);
        self.seq
    }

    // ---- neighbours ----

    /// A link to `peer` is up.
    pub fn link_up(&mut self, now_ms: u64, peer: PeerId, kind: LinkKind, out: &mut Outbox) {
        let config = &self.config;
        self.neighbours.entry(peer).or_insert(Neighbour {
            kind,
            tokens: config.neighbour_burst,
            refilled_ms: now_ms,
            strikes: 0,
            strikes_since_ms: now_ms,
            in_flight: 0,
        });
        self.offer_held(peer, out);
    }

    /// Store-and-forward: offers `peer` the held packets it may carry on and has not taken
    /// yet, oldest first, as many as its in-flight budget allows. Called when the link comes
    /// up and again whenever a hop answers, so a long backlog drains at the link's pace.
    fn offer_held(&mut self, peer: PeerId, out: &mut Outbox) {
        let Some(n) = self.neighbours.get(&peer) else {
            return;
        };
        let (kind, room) = (n.kind, MAX_IN_FLIGHT_PER_PEER.saturating_sub(n.in_flight));
        let prefer_radio_only = self.own_packets_radio_only();
        if room == 0 {
            return;
        }
        let offers: Vec<(MessageId, Vec<u8>)> = self
            .held
            .iter_oldest_first()
            .filter(|(_, h)| !h.sent_to.contains(&peer) && !h.sent_to_full())
            .filter(|(_, h)| h.record.local || self.crosses(h.record.from_radio, kind))
            .filter(|(_, h)| !(h.record.local && prefer_radio_only && kind != LinkKind::Radio))
            .filter(|(_, h)| h.recipient == peer || h.record.ttl > 0)
            .take(room)
            .filter_map(|(id, h)| {
                packet::encode(h.record.ttl.max(1), &h.record.envelope)
                    .ok()
                    .map(|frame| (*id, frame))
            })
            .collect();
        for (id, frame) in offers {
            self.send_to(peer, id, frame, out);
        }
    }

    /// The last link to `peer` went down.
    pub fn link_down(&mut self, peer: &PeerId) {
        self.neighbours.remove(peer);
        self.held.forget_peer(peer);
    }

    /// Whether a packet that came in over the radio (or not) may go out on a `kind` link.
    fn crosses(&self, from_radio: bool, kind: LinkKind) -> bool {
        self.config.gateway || from_radio == (kind == LinkKind::Radio)
    }

    fn send_to(&mut self, peer: PeerId, id: MessageId, frame: Vec<u8>, out: &mut Outbox) -> bool {
        let Some(n) = self.neighbours.get_mut(&peer) else {
            return false;
        };
        if n.in_flight >= MAX_IN_FLIGHT_PER_PEER {
            self.metrics.drop_forward("neighbour_busy");
            return false;
        }
        n.in_flight += 1;
        self.held.mark_sent(&id, peer);
        self.metrics.forwarded.inc();
        self.next_hop += 1;
        self.hops.insert(self.next_hop, (peer, id));
        out.push(Effect::Send {
            peer,
            protocol: protocol::PROTOCOL,
            data: frame,
            token: self.next_hop,
        });
        true
    }

    /// A neighbour answered a packet (or the link failed first).
    pub fn hop_result(
        &mut self,
        peer: &PeerId,
        id: &MessageId,
        outcome: HopOutcome,
        out: &mut Outbox,
    ) {
        if let Some(n) = self.neighbours.get_mut(peer) {
            n.in_flight = n.in_flight.saturating_sub(1);
        }
        match outcome {
            HopOutcome::Failed => {
                self.metrics.hop_failures.inc();
                // Offered again when the neighbour next connects.
                if let Some(sent_to) = self.held.sent_to_mut(id) {
                    sent_to.remove(peer);
                }
            }
            HopOutcome::Accepted => self.offer_held(*peer, out),
        }
    }

    /// Counts a refusal against a neighbour; true if it crossed the line.
    fn strike(&mut self, now_ms: u64, peer: &PeerId) -> bool {
        let Some(n) = self.neighbours.get_mut(peer) else {
            return false;
        };
        if now_ms.saturating_sub(n.strikes_since_ms) > self.config.strike_window_ms {
            n.strikes = 0;
            n.strikes_since_ms = now_ms;
        }
        n.strikes += 1;
        if n.strikes >= self.config.strikes_to_disconnect {
            n.strikes = 0;
            return true;
        }
        false
    }

    fn take_token(&mut self, now_ms: u64, peer: &PeerId) -> bool {
        let Some(n) = self.neighbours.get_mut(peer) else {
            // A packet from a peer whose link the driver has not reported: allow it.
            return true;
        };
        let elapsed_s = now_ms.saturating_sub(n.refilled_ms) as f64 / 1000.0;
        n.tokens = (n.tokens + elapsed_s * self.config.neighbour_per_second)
            .min(self.config.neighbour_burst);
        n.refilled_ms = now_ms;
        if n.tokens < 1.0 {
            return false;
        }
        n.tokens -= 1.0;
        true
    }

    // ---- packets from neighbours ----

    /// A packet from neighbour `from`. Returns whether it was accepted (the hop answer).
    pub fn on_packet(&mut self, now_ms: u64, from: PeerId, bytes: &[u8], out: &mut Outbox) -> bool {
        self.metrics.received.inc();
        // Most packets in a flood are copies of one already handled: recognise them by
        // their id before paying for a signature check.
        let checked = packet::peek(bytes).and_then(|(_, id)| {
            if self.seen.contains(&id) {
                Ok(Err(id))
            } else {
                packet::decode(bytes).map(Ok)
            }
        });
        // Copies cost a hash and are not charged. A neighbour over its rate is answered
        // "refused" and retries later; it is not struck: a store-and-forward backlog after a
        // partition legitimately arrives as fast as the link allows.
        if matches!(checked, Ok(Ok(_))) && !self.take_token(now_ms, &from) {
            self.refuse(now_ms, from, "flood", false, out);
            return false;
        }
        let packet = match checked {
            Ok(Ok(p)) => p,
            Ok(Err(copy_of)) => {
                self.on_copy(now_ms, copy_of, out);
                return true;
            }
            Err(error) => {
                tracing::debug!(peer_id = %from, %error, "relay packet refused");
                self.refuse(now_ms, from, error.reason(), true, out);
                return false;
            }
        };
        if packet.ttl == 0 {
            self.refuse(now_ms, from, "ttl_exhausted", true, out);
            return false;
        }
        // The origin's timestamp is judged against our wall clock.
        let wall_ms = out.wall_ms();
        if wall_ms.saturating_sub(packet.created_ms) >= self.config.max_age_ms {
            // Old, not necessarily hostile (a long-held packet): no strike.
            self.refuse(now_ms, from, "expired", false, out);
            return false;
        }
        if packet.created_ms > wall_ms + self.config.max_future_ms {
            self.refuse(now_ms, from, "from_future", false, out);
            return false;
        }
        if packet.origin == self.local_id {
            // Our own packet coming back around: nothing to do.
            self.seen.first_time(now_ms, &packet.id);
            self.metrics.duplicates.inc();
            return true;
        }
        // New by construction: copies were recognised above.
        self.seen.first_time(now_ms, &packet.id);
        if packet.content.addressee() == Some(&self.local_id) {
            self.handle_mine(now_ms, &packet, out);
            return true;
        }
        if let Content::Broadcast(payload) = &packet.content {
            self.deliver(now_ms, &packet, payload.clone(), true, out);
        }
        if let Content::Ack { message, .. } = &packet.content {
            // The recipient has it: copies held for it can go.
            if self
                .held
                .get(message)
                .is_some_and(|h| h.recipient == packet.origin)
            {
                self.drop_held(message, out);
                self.publish_view(out);
            }
        }
        let from_radio = self
            .neighbours
            .get(&from)
            .is_some_and(|n| n.kind == LinkKind::Radio);
        let remaining = packet.ttl - 1;
        // Directed packets and acks are held for store-and-forward: an ack lost to a
        // partition would otherwise leave its message pending at the origin for good
        // (relays drop the origin's later copies as duplicates).
        if let Some(addressee) = packet.content.addressee() {
            self.hold(
                now_ms, &packet, *addressee, remaining, from_radio, from, out,
            );
        }
        if remaining > 0 {
            self.schedule_forward(now_ms, &packet, remaining, from, from_radio, out);
        }
        true
    }

    fn refuse(
        &mut self,
        now_ms: u64,
        from: PeerId,
        reason: &'static str,
        hostile: bool,
        out: &mut Outbox,
    ) {
        self.metrics.reject(reason);
        if hostile && self.strike(now_ms, &from) {
            tracing::warn!(peer_id = %from, reason, "relay: too many bad packets; disconnecting");
            self.metrics.neighbours_dropped.inc();
            out.push(Effect::Disconnect {
                peers: vec![from],
                reason: "relay_abuse",
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn hold(
        &mut self,
        now_ms: u64,
        packet: &RelayPacket,
        recipient: PeerId,
        remaining: u8,
        from_radio: bool,
        from: PeerId,
        out: &mut Outbox,
    ) {
        let record = HeldRecord {
            envelope: packet.envelope.clone(),
            ttl: remaining,
            own: false,
            local: false,
            from_radio,
            held_since_ms: now_ms,
        };
        if self.keep_held(packet.id, recipient, packet.created_ms, record, out) {
            // The neighbour it came from has it.
            self.held.mark_sent(&packet.id, from);
            self.publish_view(out);
        } else {
            self.metrics.drop_forward("held_full");
        }
    }

    /// Adds a packet to the held store and the table, removing what it pushed out; false if
    /// the bounds left no room for it.
    fn keep_held(
        &mut self,
        id: MessageId,
        recipient: PeerId,
        created_ms: u64,
        record: HeldRecord,
        out: &mut Outbox,
    ) -> bool {
        let added = self.held.add(id, recipient, created_ms, record.clone());
        for old in &added.evicted {
            self.metrics.held_evicted.inc();
            self.persist(RelayOp::RemoveHeld { id: hex_id(old) }, out);
        }
        if added.added {
            self.persist(
                RelayOp::PutHeld {
                    id: hex_id(&id),
                    record,
                },
                out,
            );
        }
        added.added
    }

    /// Removes a held packet from the store and the table, if held.
    fn drop_held(&mut self, id: &MessageId, out: &mut Outbox) {
        if self.held.remove(id).is_some() {
            self.persist(RelayOp::RemoveHeld { id: hex_id(id) }, out);
        }
    }

    fn schedule_forward(
        &mut self,
        now_ms: u64,
        packet: &RelayPacket,
        remaining: u8,
        from: PeerId,
        from_radio: bool,
        out: &mut Outbox,
    ) {
        let mut candidates: Vec<PeerId> = self
            .neighbours
            .iter()
            .filter(|(p, _)| **p != from && **p != packet.origin)
            .filter(|(_, n)| self.crosses(from_radio, n.kind))
            .map(|(p, _)| *p)
            .collect();
        candidates.sort();
        if let Some(addressee) = packet.content.addressee() {
            if candidates.contains(addressee) {
                candidates = vec![*addressee];
            }
        }
        let limit = self.fanout(candidates.len());
        if candidates.len() > limit {
            candidates.shuffle(&mut self.rng);
            candidates.truncate(limit);
        }
        if candidates.is_empty() {
            return;
        }
        if self.forwards.len() >= self.config.forward_queue {
            self.metrics.drop_forward("queue_full");
            return;
        }
        let frame = match packet::encode(remaining, &packet.envelope) {
            Ok(f) => f,
            Err(_) => return,
        };
        let (lo, hi) = self.config.jitter_ms;
        let delay = if hi > lo {
            self.rng.gen_range(lo..=hi)
        } else {
            lo
        };
        self.next_forward += 1;
        self.forwards.insert(
            (now_ms + delay, self.next_forward),
            Forward {
                id: packet.id,
                frame,
                targets: candidates,
            },
        );
        self.arm_forward_timer(out);
    }

    fn fanout(&self, candidates: usize) -> usize {
        let full = self.config.full_fanout_upto;
        if candidates <= full {
            candidates
        } else {
            full + (candidates - full) / 2
        }
    }

    fn arm_forward_timer(&self, out: &mut Outbox) {
        if let Some(((due, _), _)) = self.forwards.first_key_value() {
            out.timer(*due, FORWARD);
        }
    }

    fn run_due_forwards(&mut self, now_ms: u64, out: &mut Outbox) {
        while let Some(entry) = self.forwards.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            let forward = entry.remove();
            // Acked meanwhile (its held copy went): a directed packet need not go on.
            for peer in forward.targets {
                if self
                    .held
                    .get(&forward.id)
                    .is_some_and(|h| h.sent_to.contains(&peer))
                {
                    continue;
                }
                self.send_to(peer, forward.id, forward.frame.clone(), out);
            }
        }
        self.arm_forward_timer(out);
    }

    // ---- delivery to this node ----

    /// A copy of a packet already handled. If it is a message we hold in our inbox, its
    /// origin may have missed our ack: ack again (at most every [`REACK_AFTER_MS`]).
    fn on_copy(&mut self, now_ms: u64, id: MessageId, out: &mut Outbox) {
        self.metrics.duplicates.inc();
        let Some(origin) = self.inbox_from.get(&hex_id(&id)).copied() else {
            return;
        };
        let due = self
            .last_ack_ms
            .get(&id)
            .is_none_or(|at| now_ms.saturating_sub(*at) >= REACK_AFTER_MS);
        if due {
            self.send_ack(now_ms, origin, id, out);
        }
    }

    fn handle_mine(&mut self, now_ms: u64, packet: &RelayPacket, out: &mut Outbox) {
        match &packet.content {
            Content::Direct { sealed, .. } => {
                if self.inbox_from.contains_key(&hex_id(&packet.id)) {
                    self.on_copy(now_ms, packet.id, out);
                    return;
                }
                if self.durable.values().any(
                    |d| matches!(d, Durable::Delivered { message, .. } if *message == packet.id),
                ) {
                    self.metrics.duplicates.inc();
                    return;
                }
                let payload = sealed::open(&self.local, &packet.origin, sealed)
                    .map_err(|e| e.to_string())
                    .and_then(|plain| packet::decode_payload(&plain).map_err(|e| e.to_string()));
                match payload {
                    Ok(payload) => self.deliver(now_ms, packet, payload, false, out),
                    Err(error) => {
                        tracing::debug!(origin = %packet.origin, %error, "undecryptable message");
                        self.metrics.reject("undecryptable");
                    }
                }
            }
            Content::Ack { message, .. } => self.on_ack(now_ms, packet.origin, message, out),
            Content::Broadcast(_) => {}
        }
    }

    fn deliver(
        &mut self,
        now_ms: u64,
        packet: &RelayPacket,
        payload: AppPayload,
        broadcast: bool,
        out: &mut Outbox,
    ) {
        let record = InboxRecord {
            id: hex_id(&packet.id),
            from: packet.origin.to_string(),
            app: payload.app,
            data: payload.data,
            broadcast,
            hops: MAX_TTL + 1 - packet.ttl,
            created_ms: packet.created_ms,
            received_ms: now_ms,
        };
        self.metrics.delivered.inc();
        tracing::info!(
            origin = %packet.origin,
            id = %record.id,
            app = %record.app,
            hops = record.hops,
            broadcast,
            "message received"
        );
        out.event(MessageReceived {
            id: record.id.clone(),
            from: record.from.clone(),
            app: record.app.clone(),
            hops: record.hops,
            broadcast,
        });
        let op = RelayOp::PutInbox {
            id: record.id.clone(),
            record: record.clone(),
        };
        if broadcast {
            self.persist(op, out);
            self.add_to_inbox(record, out);
        } else {
            // In the inbox, and acked, only once on disk: until then copies are dropped and
            // not acked, and a failed write forgets the message so the next copy is taken.
            self.next_token += 1;
            self.durable.insert(
                self.next_token,
                Durable::Delivered {
                    to: packet.origin,
                    message: packet.id,
                    record: Box::new(record),
                },
            );
            out.push(self.tables.persist_durable(op, self.next_token));
        }
    }

    fn add_to_inbox(&mut self, record: InboxRecord, out: &mut Outbox) {
        self.insert_inbox(record);
        while let Some(old) = self.pop_inbox_over_capacity() {
            self.persist(RelayOp::RemoveInbox { id: old.id }, out);
        }
        self.publish_view(out);
    }

    fn send_ack(&mut self, now_ms: u64, to: PeerId, message: MessageId, out: &mut Outbox) {
        // Sequence and timestamp are the origin's wall clock: they mean something to others.
        let wall_ms = out.wall_ms();
        let seq = self.next_seq(wall_ms);
        let envelope = match packet::ack(&self.keypair, seq, wall_ms, &to, &message) {
            Ok(e) => e,
            Err(error) => {
                tracing::error!(%error, "cannot sign an ack");
                return;
            }
        };
        let id = packet::message_id(&envelope);
        let record = HeldRecord {
            envelope: envelope.clone(),
            ttl: MAX_TTL,
            own: false,
            local: true,
            from_radio: false,
            held_since_ms: now_ms,
        };
        self.keep_held(id, to, now_ms, record, out);
        self.seen.first_time(now_ms, &id);
        self.last_ack_ms.insert(message, now_ms);
        if self.last_ack_ms.len() > self.config.inbox_capacity * 2 {
            let horizon = now_ms.saturating_sub(REACK_AFTER_MS);
            self.last_ack_ms.retain(|_, at| *at >= horizon);
        }
        self.flood_own(now_ms, &envelope, Some(to), out);
    }

    fn on_ack(&mut self, now_ms: u64, acker: PeerId, message: &MessageId, out: &mut Outbox) {
        let id = hex_id(message);
        let Some(key) = self.sent_index.get(&id).cloned() else {
            return;
        };
        let Some(record) = self.sent.get_mut(&key) else {
            return;
        };
        if record.to.as_deref() != Some(acker.to_string().as_str()) || record.delivered_ms.is_some()
        {
            return;
        }
        record.delivered_ms = Some(now_ms);
        let record = record.clone();
        self.metrics.acks_received.inc();
        tracing::info!(id = %id, to = %acker, after_ms = now_ms.saturating_sub(record.created_ms), "message delivered");
        out.event(MessageDelivered {
            id: id.clone(),
            to: acker.to_string(),
            after_ms: now_ms.saturating_sub(record.created_ms),
        });
        self.persist(
            RelayOp::PutSent {
                id: id.clone(),
                record,
            },
            out,
        );
        self.drop_held(message, out);
        self.publish_view(out);
    }

    // ---- sending ----

    /// A send request from the control API; answered on `reply` once the message is on
    /// disk (then it goes out).
    pub fn submit(&mut self, now_ms: u64, reply: Reply, send: SendRequest, out: &mut Outbox) {
        let result = self.prepare(now_ms, out.wall_ms(), send);
        match result {
            Ok((id, held, sent)) => {
                let key = hex_id(&id);
                if let Some((recipient, record)) = held {
                    if !self.keep_held(id, recipient, now_ms, record, out) {
                        let _ = reply.send(Err(format!(
                            "outbox full: {} messages to that node already wait for delivery",
                            self.config.held_per_recipient
                        )));
                        return;
                    }
                }
                self.seen.first_time(now_ms, &id);
                self.insert_sent(sent.clone());
                while self.sent.len() > self.config.sent_capacity {
                    if let Some(old) = self.pop_oldest_sent() {
                        self.persist(RelayOp::RemoveSent { id: old.id }, out);
                    }
                }
                self.next_token += 1;
                self.durable
                    .insert(self.next_token, Durable::Sent { reply, id });
                out.push(self.tables.persist_durable(
                    RelayOp::PutSent {
                        id: key,
                        record: sent,
                    },
                    self.next_token,
                ));
                self.publish_view(out);
            }
            Err(reason) => {
                let _ = reply.send(Err(reason));
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn prepare(
        &mut self,
        now_ms: u64,
        wall_ms: u64,
        send: SendRequest,
    ) -> Result<(MessageId, Option<(PeerId, HeldRecord)>, SentRecord), String> {
        let payload = AppPayload {
            app: send.app,
            data: send.data,
        };
        let seq = self.next_seq(wall_ms);
        let envelope = match send.to {
            Some(to) if to == self.local_id => return Err("that is this node".into()),
            Some(to) => {
                let plaintext = packet::seal_payload(&payload).map_err(|e| e.to_string())?;
                let mut ephemeral = Zeroizing::new([0u8; 32]);
                self.rng.fill(&mut ephemeral[..]);
                let sealed = sealed::seal(&self.local_id, &to, ephemeral, &plaintext)
                    .map_err(|e| e.to_string())?;
                packet::direct(&self.keypair, seq, wall_ms, &to, sealed)
                    .map_err(|e| e.to_string())?
            }
            None => packet::broadcast(&self.keypair, seq, wall_ms, &payload)
                .map_err(|e| e.to_string())?,
        };
        // Refuse what could not travel, before promising anything.
        packet::encode(MAX_TTL, &envelope).map_err(|e| e.to_string())?;
        let id = packet::message_id(&envelope);
        let held = send.to.map(|to| {
            (
                to,
                HeldRecord {
                    envelope: envelope.clone(),
                    ttl: MAX_TTL,
                    own: true,
                    local: true,
                    from_radio: false,
                    held_since_ms: now_ms,
                },
            )
        });
        let sent = SentRecord {
            id: hex_id(&id),
            to: send.to.map(|p| p.to_string()),
            app: payload.app,
            data: payload.data,
            created_ms: now_ms,
            delivered_ms: None,
        };
        if held.is_none() {
            // A broadcast is not held: keep its envelope for the send after the write.
            self.pending_broadcasts.insert(id, envelope);
        }
        Ok((id, held, sent))
    }

    /// Sends one of our own packets to every neighbour (or only to the addressee when it is
    /// one), at once: jitter is for relays.
    fn flood_own(&mut self, _now_ms: u64, envelope: &[u8], to: Option<PeerId>, out: &mut Outbox) {
        let Ok(frame) = packet::encode(MAX_TTL, envelope) else {
            return;
        };
        let id = packet::message_id(envelope);
        let radio_only = self.own_packets_radio_only();
        let mut targets: Vec<PeerId> = self
            .neighbours
            .iter()
            .filter(|(_, n)| !radio_only || n.kind == LinkKind::Radio)
            .map(|(p, _)| *p)
            .collect();
        targets.sort();
        if let Some(to) = to {
            if targets.contains(&to) {
                targets = vec![to];
            }
        }
        for peer in targets {
            self.send_to(peer, id, frame.clone(), out);
        }
    }
}

impl Capability for RelayService {
    fn name(&self) -> &'static str {
        "relay"
    }

    fn protocols(&self) -> Vec<Protocol> {
        vec![protocol::SPEC]
    }

    fn on_start(&mut self, now_ms: u64, out: &mut Outbox) {
        out.timer(now_ms + SWEEP_EVERY_MS, SWEEP);
        for op in std::mem::take(&mut self.restore_removals) {
            self.persist(op, out);
        }
        self.publish_view(out);
    }

    fn on_request(&mut self, now_ms: u64, request: InboundRequest, out: &mut Outbox) {
        let accepted = self.on_packet(now_ms, request.peer, &request.data, out);
        let answer = if accepted { HOP_ACCEPTED } else { HOP_REFUSED };
        out.respond(request.id, vec![answer]);
    }

    fn on_response(&mut self, _now_ms: u64, response: Response, out: &mut Outbox) {
        let Some((peer, id)) = self.hops.remove(&response.token) else {
            return;
        };
        let outcome = match response.result {
            Ok(answer) if answer == [HOP_ACCEPTED] => HopOutcome::Accepted,
            Ok(_) => HopOutcome::Failed,
            Err(error) => {
                tracing::debug!(peer_id = %peer, %error, "relay hop failed");
                HopOutcome::Failed
            }
        };
        self.hop_result(&peer, &id, outcome, out);
    }

    fn on_timer(&mut self, now_ms: u64, timer: TimerId, out: &mut Outbox) {
        match timer {
            FORWARD => self.run_due_forwards(now_ms, out),
            SWEEP => {
                self.seen.expire(now_ms);
                // Packets whose hop failed on a link that stayed up are offered again.
                let neighbours: Vec<PeerId> = self.neighbours.keys().copied().collect();
                for peer in neighbours {
                    self.offer_held(peer, out);
                }
                let expired = self.held.expire(now_ms);
                for id in &expired {
                    self.metrics.held_expired.inc();
                    self.persist(RelayOp::RemoveHeld { id: hex_id(id) }, out);
                }
                if !expired.is_empty() {
                    self.publish_view(out);
                }
                out.timer(now_ms + SWEEP_EVERY_MS, SWEEP);
            }
            _ => {}
        }
    }

    fn on_notice(&mut self, now_ms: u64, notice: &Notice, out: &mut Outbox) {
        match notice {
            Notice::PeerConnected { peer, link } => self.link_up(now_ms, *peer, *link, out),
            Notice::PeerDisconnected(peer) => self.link_down(peer),
            shared => {
                if let Some(changed) = shared.shared::<DeviceChanged>() {
                    let preference = changed.view.decision.limits.transport;
                    self.set_prefer_radio(preference >= TransportPreference::BitchatPreferred);
                }
            }
        }
    }

    fn on_durable(
        &mut self,
        now_ms: u64,
        token: Token,
        result: Result<(), String>,
        out: &mut Outbox,
    ) {
        let Some(done) = self.durable.remove(&token) else {
            return;
        };
        match (done, result) {
            (
                Durable::Delivered {
                    to,
                    message,
                    record,
                },
                Ok(()),
            ) => {
                self.add_to_inbox(*record, out);
                self.send_ack(now_ms, to, message, out);
            }
            // Not on disk, so not acked, and forgotten: the origin keeps it and offers it
            // again, and that copy is taken as new.
            (Durable::Delivered { message, .. }, Err(_)) => self.seen.forget(&message),
            (Durable::Sent { reply, id }, Ok(())) => {
                let _ = reply.send(Ok(hex_id(&id)));
                let held = self
                    .held
                    .get(&id)
                    .map(|h| (h.record.envelope.clone(), h.recipient));
                match held {
                    Some((envelope, to)) => self.flood_own(now_ms, &envelope, Some(to), out),
                    None => {
                        if let Some(envelope) = self.pending_broadcasts.remove(&id) {
                            self.flood_own(now_ms, &envelope, None, out);
                        }
                    }
                }
            }
            (Durable::Sent { reply, id }, Err(error)) => {
                self.pending_broadcasts.remove(&id);
                let _ = reply.send(Err(format!("could not store the message: {error}")));
            }
        }
    }
}

#[cfg(test)]
#[path = "sim_tests.rs"]
mod tests;
