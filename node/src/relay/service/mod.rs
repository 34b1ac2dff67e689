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
//!
//! The state and its inputs are here; the work is split by job: `links.rs` (neighbours,
//! hops, strikes and rate tokens), `forwarding.rs` (packets from neighbours: checked, held,
//! forwarded), `delivery.rs` (messages for this node and acks), `sending.rs` (messages from
//! the control API).

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

mod delivery;
mod forwarding;
mod links;
mod sending;

#[cfg(test)]
mod tests;
