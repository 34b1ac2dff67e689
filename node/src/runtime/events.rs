//! The node's live event stream: what happened, as it happens, for `GET /v1/events` and
//! `fogmesh watch`.
//!
//! The node publishes [`NodeEvent`]s on an [`EventBus`]; each open stream holds an
//! [`EventSubscription`]. The bus is a fixed ring (a `tokio::sync::broadcast` channel), so
//! publishing never waits for a consumer and the memory the stream costs is the ring's, however
//! many streams are open and however slowly they read. A stream that falls more than the ring's
//! capacity behind loses the oldest events and is told how many with a [`Lagged`]
//! marker in their place. The number of open streams is capped; a subscription beyond the cap
//! is refused with [`StreamsFull`].

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::runtime::lifecycle::Phase;

/// Events the ring holds for a slow stream before it starts losing the oldest.
pub const DEFAULT_CAPACITY: usize = 1024;
/// Event streams served at once.
pub const DEFAULT_MAX_STREAMS: usize = 8;
/// How long a stream stays silent before it sends a keep-alive comment. Writing is what
/// finds a client that went away without closing its connection.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Largest ring accepted; far beyond any useful backlog, and small enough that tokio's
/// broadcast channel (which rounds up to a power of two) accepts it.
const MAX_CAPACITY: usize = 1 << 20;
/// Consecutive losses folded into one lagged marker at most.
const MAX_LOSSES_FOLDED: usize = 16;
/// Largest stream cap accepted (tokio's semaphore panics far above this).
const MAX_STREAMS_LIMIT: usize = 1 << 16;

/// Something that happened in the node, as the stream carries it: a kind (the JSON `type`)
/// and its fields. Each part of the node defines its own events as plain structs that
/// implement [`EventKind`] (the runtime's are below; a capability's live in its folder), so
/// adding a capability adds no variant here. PeerIds and addresses are strings so the JSON
/// stays plain for any consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeEvent {
    kind: std::borrow::Cow<'static, str>,
    fields: serde_json::Map<String, serde_json::Value>,
}

/// An event's type: its `type` name and its fields (a struct serialized as a map).
pub trait EventKind: Serialize {
    const KIND: &'static str;
}

impl<T: EventKind> From<T> for NodeEvent {
    fn from(event: T) -> Self {
        let fields = match serde_json::to_value(&event) {
            Ok(serde_json::Value::Object(fields)) => fields,
            // Event structs serialize to maps; anything else is a bug, shown rather than lost.
            Ok(other) => {
                let mut fields = serde_json::Map::new();
                fields.insert("value".into(), other);
                fields
            }
            Err(error) => {
                let mut fields = serde_json::Map::new();
                fields.insert("error".into(), error.to_string().into());
                fields
            }
        };
        NodeEvent {
            kind: std::borrow::Cow::Borrowed(T::KIND),
            fields,
        }
    }
}

impl NodeEvent {
    /// The `type` field's value.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// One field, by name.
    pub fn field(&self, name: &str) -> Option<&serde_json::Value> {
        self.fields.get(name)
    }

    /// The event as `T`, if it is one.
    pub fn decode<T: EventKind + serde::de::DeserializeOwned>(&self) -> Option<T> {
        if self.kind != T::KIND {
            return None;
        }
        serde_json::from_value(serde_json::Value::Object(self.fields.clone())).ok()
    }

    pub fn is<T: EventKind>(&self) -> bool {
        self.kind == T::KIND
    }
}

impl Serialize for NodeEvent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.fields.len() + 1))?;
        map.serialize_entry("type", &self.kind)?;
        for (name, value) in &self.fields {
            if name != "type" {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for NodeEvent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut fields = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        let kind = match fields.remove("type") {
            Some(serde_json::Value::String(kind)) => kind,
            _ => return Err(serde::de::Error::missing_field("type")),
        };
        Ok(NodeEvent {
            kind: std::borrow::Cow::Owned(kind),
            fields,
        })
    }
}

/// The first connection to a peer is up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerConnected {
    pub peer_id: String,
    pub addr: String,
    /// `in` or `out`.
    pub direction: String,
}

impl EventKind for PeerConnected {
    const KIND: &'static str = "peer_connected";
}

/// The last connection to a peer closed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerDisconnected {
    pub peer_id: String,
    pub cause: String,
}

impl EventKind for PeerDisconnected {
    const KIND: &'static str = "peer_disconnected";
}

/// The secure channel refused a handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdmissionRefused {
    /// The PeerId once known, else the address.
    pub remote: String,
    pub direction: String,
    pub reason: String,
}

impl EventKind for AdmissionRefused {
    const KIND: &'static str = "admission_refused";
}

/// The node's lifecycle phase changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lifecycle {
    pub from: Phase,
    pub to: Phase,
    pub reason: String,
}

impl EventKind for Lifecycle {
    const KIND: &'static str = "lifecycle";
}

/// Produced by a stream that fell behind, in place of the events it lost; never published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lagged {
    pub missed: u64,
}

impl EventKind for Lagged {
    const KIND: &'static str = "lagged";
}

/// An event as it goes on the wire: `{"seq":N,"at_ms":T,"type":"...",...fields}`.
///
/// `seq` counts published events from 1, so within one stream consecutive events differ by
/// one, and a [`Lagged`] marker carries the `seq` of the last event it stands for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StampedEvent {
    pub seq: u64,
    /// Wall-clock time of publication (for a lagged marker: when the loss was noticed).
    pub at_ms: u64,
    #[serde(flatten)]
    pub event: NodeEvent,
}

/// Sizes of the bus and its streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventBusConfig {
    /// Events held for the slowest stream (rounded up to a power of two).
    pub capacity: usize,
    /// Streams open at once; one more is refused.
    pub max_streams: usize,
    /// Silence after which a stream sends a keep-alive comment.
    pub keep_alive: Duration,
}

impl Default for EventBusConfig {
    fn default() -> Self {
        Self {
            capacity: DEFAULT_CAPACITY,
            max_streams: DEFAULT_MAX_STREAMS,
            keep_alive: DEFAULT_KEEP_ALIVE,
        }
    }
}

/// A subscription refused because the stream cap is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{max_streams} event streams are open, the most this node serves; close one (another `fogmesh watch`?) and try again")]
pub struct StreamsFull {
    pub max_streams: usize,
}

/// Where the node publishes events. Clones share one ring.
#[derive(Debug, Clone)]
pub struct EventBus {
    shared: Arc<BusShared>,
}

#[derive(Debug)]
struct BusShared {
    ring: broadcast::Sender<Arc<StampedEvent>>,
    /// The seq the next event gets. Held while an event is stamped and sent, so the ring's
    /// order is seq order and a new subscriber knows exactly where it starts.
    next_seq: Mutex<u64>,
    stream_slots: Arc<Semaphore>,
    config: EventBusConfig,
    published: Counter,
    lagged: Counter,
    open_streams: Gauge,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(EventBusConfig::default())
    }
}

impl EventBus {
    pub fn new(config: EventBusConfig) -> Self {
        let config = EventBusConfig {
            capacity: config.capacity.clamp(1, MAX_CAPACITY),
            max_streams: config.max_streams.min(MAX_STREAMS_LIMIT),
            keep_alive: config.keep_alive,
        };
        // The bus keeps no receiver of its own: with nobody subscribed, sending is skipped.
        let (ring, _) = broadcast::channel(config.capacity);
        Self {
            shared: Arc::new(BusShared {
                ring,
                next_seq: Mutex::new(1),
                stream_slots: Arc::new(Semaphore::new(config.max_streams)),
                config,
                published: Counter::default(),
                lagged: Counter::default(),
                open_streams: Gauge::default(),
            }),
        }
    }

    pub fn config(&self) -> EventBusConfig {
        self.shared.config
    }

    /// Adds the bus's counters to `registry` (the `fogmesh` sub-registry).
    pub fn register_metrics(&self, registry: &mut Registry) {
        let shared = &self.shared;
        registry.register(
            "events_published",
            "Events the node published on its event stream",
            shared.published.clone(),
        );
        registry.register(
            "events_lagged",
            "Events that slow event streams lost (each stream counts its own losses)",
            shared.lagged.clone(),
        );
        registry.register(
            "event_streams_open",
            "Event streams (GET /v1/events) open now",
            shared.open_streams.clone(),
        );
    }

    /// Publishes `event` to every open stream. Never waits and never fails: a stream that is
    /// full loses its oldest event instead.
    pub fn publish(&self, event: NodeEvent) {
        self.publish_with(|| event);
    }

    /// Like [`EventBus::publish`], but builds the event only if a stream is open, so callers
    /// skip formatting PeerIds and addresses when nobody watches. The seq advances either way.
    pub fn publish_with(&self, make: impl FnOnce() -> NodeEvent) {
        let mut next_seq = lock(&self.shared.next_seq);
        let seq = *next_seq;
        if self.shared.ring.receiver_count() == 0 {
            *next_seq += 1;
            self.shared.published.inc();
            return;
        }
        let event = make();
        if event.is::<Lagged>() {
            // A lagged marker means "this stream lost events"; published, it would tell every
            // stream a lie about its own losses.
            tracing::warn!("a lagged marker was published on the event bus; dropped");
            return;
        }
        *next_seq += 1;
        self.shared.published.inc();
        let stamped = Arc::new(StampedEvent {
            seq,
            at_ms: crate::runtime::clock::system_wall_ms(),
            event,
        });
        // Fails only when the last subscriber left since the count above: nobody to tell.
        let _ = self.shared.ring.send(stamped);
    }

    /// Opens a stream of the events published from now on, unless the cap is reached. The
    /// stream slot is freed when the subscription is dropped.
    pub fn subscribe(&self) -> Result<EventSubscription, StreamsFull> {
        let permit = self
            .shared
            .stream_slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| StreamsFull {
                max_streams: self.shared.config.max_streams,
            })?;
        let next_seq = lock(&self.shared.next_seq);
        let receiver = self.shared.ring.subscribe();
        let last_seq = next_seq.saturating_sub(1);
        drop(next_seq);
        self.shared.open_streams.inc();
        Ok(EventSubscription {
            receiver,
            last_seq,
            after_loss: None,
            _slot: StreamSlot {
                _permit: permit,
                open_streams: self.shared.open_streams.clone(),
            },
            lagged: self.shared.lagged.clone(),
        })
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        usize::try_from(self.shared.open_streams.get()).unwrap_or(0)
    }

    /// Events published since the node started (also the seq of the last one).
    pub fn published(&self) -> u64 {
        self.shared.published.get()
    }

    /// Events lost by slow streams, summed over streams.
    pub fn lagged(&self) -> u64 {
        self.shared.lagged.get()
    }
}

/// A stream's place in the cap, given back when the stream ends.
#[derive(Debug)]
struct StreamSlot {
    _permit: OwnedSemaphorePermit,
    open_streams: Gauge,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.open_streams.dec();
    }
}

/// One consumer's view of the bus. Holds a stream slot until dropped.
#[derive(Debug)]
pub struct EventSubscription {
    receiver: broadcast::Receiver<Arc<StampedEvent>>,
    /// The seq of the last event delivered or accounted for as lost.
    last_seq: u64,
    /// The event that came right after a loss, held back while the marker goes first.
    after_loss: Option<Arc<StampedEvent>>,
    _slot: StreamSlot,
    lagged: Counter,
}

impl EventSubscription {
    /// The next event, or a lagged marker in place of the events this subscription lost;
    /// `None` once the bus is gone.
    pub async fn next(&mut self) -> Option<Arc<StampedEvent>> {
        if let Some(event) = self.after_loss.take() {
            return Some(self.delivered(event));
        }
        match self.receiver.recv().await {
            Ok(event) => Some(self.delivered(event)),
            Err(RecvError::Lagged(missed)) => Some(self.lost(missed)),
            Err(RecvError::Closed) => None,
        }
    }

    /// Like [`EventSubscription::next`], without waiting: `None` when nothing is pending.
    pub fn try_next(&mut self) -> Option<Arc<StampedEvent>> {
        if let Some(event) = self.after_loss.take() {
            return Some(self.delivered(event));
        }
        match self.receiver.try_recv() {
            Ok(event) => Some(self.delivered(event)),
            Err(TryRecvError::Lagged(missed)) => Some(self.lost(missed)),
            Err(TryRecvError::Empty | TryRecvError::Closed) => None,
        }
    }

    fn delivered(&mut self, event: Arc<StampedEvent>) -> Arc<StampedEvent> {
        self.last_seq = event.seq;
        event
    }

    fn lost(&mut self, mut missed: u64) -> Arc<StampedEvent> {
        // A stream lapped again while it catches up says so in one marker, not a run of them.
        // The bound only keeps a publisher faster than this loop from holding it forever.
        for _ in 0..MAX_LOSSES_FOLDED {
            match self.receiver.try_recv() {
                Err(TryRecvError::Lagged(more)) => missed = missed.saturating_add(more),
                Ok(event) => {
                    self.after_loss = Some(event);
                    break;
                }
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        self.lagged.inc_by(missed);
        // Every event published while this receiver existed went into the ring in seq order,
        // so the lost ones are exactly the next `missed` seqs.
        self.last_seq = self.last_seq.saturating_add(missed);
        Arc::new(StampedEvent {
            seq: self.last_seq,
            at_ms: crate::runtime::clock::system_wall_ms(),
            event: Lagged { missed }.into(),
        })
    }
}

/// Locks the seq counter even if a panicking publisher poisoned it: it is a plain number.
fn lock(mutex: &Mutex<u64>) -> MutexGuard<'_, u64> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn connected(n: u64) -> NodeEvent {
        PeerConnected {
            peer_id: format!("peer-{n}"),
            addr: "/ip4/127.0.0.1/tcp/4001".into(),
            direction: "in".into(),
        }
        .into()
    }

    /// An event the way a capability defines one.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Sample {
        origin: String,
        reasons: Vec<String>,
        score: f64,
        from: Option<String>,
    }

    impl EventKind for Sample {
        const KIND: &'static str = "sample";
    }

    fn small_bus(capacity: usize, max_streams: usize) -> EventBus {
        EventBus::new(EventBusConfig {
            capacity,
            max_streams,
            ..EventBusConfig::default()
        })
    }

    fn every_variant() -> Vec<NodeEvent> {
        vec![
            connected(1),
            PeerDisconnected {
                peer_id: "p".into(),
                cause: "connection reset".into(),
            }
            .into(),
            AdmissionRefused {
                remote: "/ip4/10.0.0.1/tcp/5".into(),
                direction: "in".into(),
                reason: "ticket_expired".into(),
            }
            .into(),
            Lifecycle {
                from: Phase::Idle,
                to: Phase::Active,
                reason: "1 peer connected".into(),
            }
            .into(),
            Sample {
                origin: "o".into(),
                reasons: vec!["battery 15 %".into()],
                score: 0.25,
                from: None,
            }
            .into(),
            Lagged { missed: 3 }.into(),
        ]
    }

    #[test]
    fn wire_form_is_one_flat_object() {
        let stamped = StampedEvent {
            seq: 4,
            at_ms: 1000,
            event: connected(1),
        };
        let json = serde_json::to_value(&stamped).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "seq": 4, "at_ms": 1000, "type": "peer_connected",
                "peer_id": "peer-1", "addr": "/ip4/127.0.0.1/tcp/4001", "direction": "in"
            })
        );
        let lifecycle = StampedEvent {
            seq: 5,
            at_ms: 1,
            event: Lifecycle {
                from: Phase::SafeMode,
                to: Phase::Draining,
                reason: "shutdown".into(),
            }
            .into(),
        };
        let json = serde_json::to_value(&lifecycle).unwrap();
        assert_eq!(json["from"], "safe_mode");
        assert_eq!(json["to"], "draining");
    }

    #[test]
    fn a_field_named_like_the_stamp_is_not_doubled() {
        #[derive(Serialize)]
        struct Clash {
            seq: u64,
        }
        impl EventKind for Clash {
            const KIND: &'static str = "clash";
        }
        let stamped = StampedEvent {
            seq: 10,
            at_ms: 1,
            event: Clash { seq: 7 }.into(),
        };
        // serde_json keeps the last of two equal keys: events must not name a field `seq`
        // (telemetry's is `telemetry_seq`); the stamp's comes first and is what readers see.
        let text = serde_json::to_string(&stamped).unwrap();
        assert!(text.starts_with("{\"seq\":10"), "{text}");
    }

    #[test]
    fn a_typed_event_decodes_back() {
        let event: NodeEvent = Lifecycle {
            from: Phase::Booting,
            to: Phase::Idle,
            reason: "listening".into(),
        }
        .into();
        assert_eq!(event.kind(), "lifecycle");
        let back: Lifecycle = event.decode().unwrap();
        assert_eq!(back.to, Phase::Idle);
        assert!(event.decode::<Lagged>().is_none());
    }

    #[test]
    fn every_variant_round_trips_and_names_its_type() {
        for (i, event) in every_variant().into_iter().enumerate() {
            let stamped = StampedEvent {
                seq: i as u64,
                at_ms: 99,
                event,
            };
            let text = serde_json::to_string(&stamped).unwrap();
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(value["type"], stamped.event.kind(), "{text}");
            let back: StampedEvent = serde_json::from_str(&text).unwrap();
            assert_eq!(back, stamped);
        }
    }

    #[tokio::test]
    async fn events_arrive_in_order_with_consecutive_seqs() {
        let bus = EventBus::default();
        bus.publish(connected(0)); // nobody listens: counted, not kept
        let mut sub = bus.subscribe().unwrap();
        for n in 1..=5 {
            bus.publish(connected(n));
        }
        for n in 1..=5u64 {
            let e = sub.next().await.unwrap();
            assert_eq!(e.seq, n + 1);
            assert_eq!(e.event, connected(n));
        }
        assert!(sub.try_next().is_none());
        assert_eq!(bus.published(), 6);
    }

    #[tokio::test]
    async fn a_subscriber_that_never_reads_holds_at_most_the_ring_and_is_told_what_it_lost() {
        let bus = small_bus(64, 8);
        let mut sub = bus.subscribe().unwrap();
        for n in 0..10_000 {
            bus.publish(connected(n));
        }
        let first = sub.try_next().unwrap();
        assert_eq!(
            first.event,
            Lagged {
                missed: 10_000 - 64
            }
            .into()
        );
        assert_eq!(first.seq, 10_000 - 64);
        let mut delivered = Vec::new();
        while let Some(e) = sub.try_next() {
            delivered.push(e.seq);
        }
        let expected: Vec<u64> = (10_000 - 63..=10_000).collect();
        assert_eq!(delivered, expected);
        assert_eq!(bus.lagged(), 10_000 - 64);

        // Caught up, it is live again.
        bus.publish(connected(1));
        assert_eq!(sub.next().await.unwrap().seq, 10_001);
    }

    #[tokio::test]
    async fn the_stream_cap_refuses_and_a_dropped_subscription_frees_its_slot() {
        let bus = small_bus(8, 2);
        let a = bus.subscribe().unwrap();
        let _b = bus.subscribe().unwrap();
        assert_eq!(bus.open_streams(), 2);
        assert_eq!(bus.subscribe().unwrap_err(), StreamsFull { max_streams: 2 });
        drop(a);
        assert_eq!(bus.open_streams(), 1);
        let _c = bus.subscribe().unwrap();
        assert_eq!(bus.open_streams(), 2);
    }

    #[test]
    fn a_published_lagged_marker_is_dropped() {
        let bus = EventBus::default();
        let mut sub = bus.subscribe().unwrap();
        bus.publish(Lagged { missed: 1 }.into());
        assert!(sub.try_next().is_none());
        assert_eq!(bus.published(), 0);
    }

    #[test]
    fn nothing_is_built_when_nobody_listens() {
        let bus = EventBus::default();
        bus.publish_with(|| panic!("built an event nobody reads"));
        assert_eq!(bus.published(), 1);
    }

    #[test]
    fn the_bus_ending_ends_its_subscriptions() {
        let bus = EventBus::default();
        let mut sub = bus.subscribe().unwrap();
        drop(bus);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(rt.block_on(sub.next()).is_none());
    }

    #[test]
    fn silly_sizes_are_clamped_instead_of_panicking() {
        let bus = small_bus(0, usize::MAX);
        assert_eq!(bus.config().capacity, 1);
        assert_eq!(bus.config().max_streams, MAX_STREAMS_LIMIT);
        let _sub = bus.subscribe().unwrap();
    }
}
