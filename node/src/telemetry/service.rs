//! The telemetry capability: our own publications and everyone else's latest record.
//!
//! It owns the authoritative "latest telemetry per origin" table and its store tables
//! ([`Tables`]); the control API's view ([`TelemetrySnapshot`]) is a copy it keeps current.
//! Freshness counts from when a record was received (node time); the sender's timestamp is
//! only checked against this node's wall clock for the validator's window. Publishing follows
//! the power policy's cadence (base interval × the policy's multiplier), and is brought
//! forward when a new peer subscribes so it hears from us soon.
//!
//! On a node whose only links are Bluetooth LE ([`TelemetryConfig::radio_budget`]), the
//! interval also stretches with the mesh: every node's record crosses every radio link, so
//! telemetry loads a link with about (nodes × record size ÷ interval). Such a node publishes
//! no more often than keeps that under [`RADIO_TELEMETRY_BUDGET`] for the nodes it knows —
//! e.g. 12 nodes with 600-byte records: every 3.6 s; 64: every 19 s. Records carry their
//! interval, so receivers judge staleness by it.
//!
//! Bounds: an open mesh lets anyone mint identities, so origins are capped
//! ([`TelemetryLimits::max_origins`]; a new origin beyond the cap evicts the one heard from
//! longest ago) and expire once silent for [`TelemetryLimits::expire_after`]. Expiry removes
//! an origin from the table, the store, the API view and the validator's replay state — the
//! validator's freshness window (60 s) already refuses anything older, so forgetting a
//! replay counter long after that window reopens nothing.

use std::collections::HashMap;
use std::time::Duration;

use libp2p::gossipsub::MessageAcceptance;
use libp2p::identity::Keypair;
use libp2p::PeerId;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use fogmesh_store::{Batch, Table};
use fogmesh_wire::codec;
use fogmesh_wire::envelope::{self, MessageKind};
use serde::{Deserialize, Serialize};

use crate::device::service::DeviceChanged;
use crate::runtime::capability::{
    duration_ms, Capability, Effect, GossipIn, InboundRequest, Notice, Outbox, Protocol,
    PublishOutcome, ReasonLabel, Response, TimerId, Token, Verdict,
};
use crate::runtime::events::EventKind;
use crate::runtime::handle::ViewCell;
use crate::runtime::lifecycle::Phase;
use crate::runtime::mesh_time::{ClockOffsets, MeshClock};
use crate::runtime::status::{MeshClockStatus, PeerClock, PeerView, StatusView};
use crate::telemetry::fetch::{self, FetchError, FetchRequest, FetchResponse};
use crate::telemetry::scope::{self, Directory, TelemetryScope};

/// A mesh-time offset at least this large is logged as a warning when it changes.
const MESH_CLOCK_WARN_MS: i64 = 5_000;
use crate::telemetry::record::{
    next_seq, FreshnessPolicy, ReceivedTelemetry, Rejection, RejectionCounters, TelemetryRecord,
    TelemetryValidator, TELEMETRY_TOPIC,
};
use crate::telemetry::view::TelemetrySnapshot;
use fogmesh_device::{DeviceReadings, DeviceView};

const PUBLISH: TimerId = TimerId(0);
const EXPIRE: TimerId = TimerId(1);

pub const TABLE_TELEMETRY: &str = "telemetry";
pub const TABLE_META: &str = "meta";
pub const META_TELEMETRY_SEQ: &str = "telemetry_seq";

/// The tables telemetry keeps: the latest record per origin, and its own last sequence.
#[derive(Debug, Clone)]
pub struct Tables {
    pub telemetry: Table<ReceivedTelemetry>,
    pub meta: Table<u64>,
}

impl Tables {
    pub fn open(store: &fogmesh_store::Store) -> Result<Self, fogmesh_store::StoreError> {
        Ok(Tables {
            telemetry: store.table(TABLE_TELEMETRY)?,
            meta: store.table(TABLE_META)?,
        })
    }

    /// Our last sequence number and what others last sent; unreadable rows are skipped with
    /// a warning.
    pub fn restore(&self) -> (u64, Vec<(String, ReceivedTelemetry)>) {
        let mut records = Vec::new();
        for entry in self.telemetry.entries() {
            match entry {
                Ok(row) => records.push(row),
                Err(error) => tracing::warn!(%error, "skipping unreadable stored telemetry"),
            }
        }
        let seq = self.meta.get(META_TELEMETRY_SEQ).unwrap_or_else(|error| {
            tracing::warn!(%error, "own telemetry sequence unreadable; continuing from the clock");
            None
        });
        (seq.unwrap_or(0), records)
    }
}

/// An origin's record arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryReceived {
    pub origin: String,
    /// The telemetry's own sequence number. On the wire it is `telemetry_seq`: a plain
    /// `seq` would collide with the event's `seq` in the flattened object.
    #[serde(rename = "telemetry_seq")]
    pub seq: u64,
    /// From its timestamp to this node's wall clock at arrival.
    pub latency_ms: u64,
}

impl EventKind for TelemetryReceived {
    const KIND: &'static str = "telemetry_received";
}

/// An origin was forgotten after being silent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryExpired {
    pub origin: String,
}

impl EventKind for TelemetryExpired {
    const KIND: &'static str = "telemetry_expired";
}

/// Quickest re-announcement of our telemetry when new subscribers appear.
pub const ANNOUNCE_MIN_GAP: Duration = Duration::from_secs(1);
/// Delay before that re-announcement, so a burst of subscriptions makes one publication.
pub const ANNOUNCE_DELAY: Duration = Duration::from_millis(200);
/// Latest first publication when the first device pass is slow to come.
pub const FIRST_PUBLISH_FALLBACK: Duration = Duration::from_secs(1);
/// How often silent origins are looked for.
pub const EXPIRY_SWEEP_EVERY: Duration = Duration::from_secs(10);

/// How much of the mesh this node remembers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelemetryLimits {
    /// Most origins kept; the one heard from longest ago is evicted for a new one.
    pub max_origins: usize,
    /// An origin silent this long is forgotten.
    pub expire_after: Duration,
}

impl Default for TelemetryLimits {
    fn default() -> Self {
        Self {
            max_origins: TelemetryValidator::MAX_TRACKED_ORIGINS,
            expire_after: Duration::from_secs(30 * 60),
        }
    }
}

/// The service's counters, registered once and read by the status view.
#[derive(Debug, Clone, Default)]
pub struct TelemetryMetrics {
    pub published: Counter,
    pub unsent: Counter,
    pub accepted: Counter,
    pub rejected: Family<ReasonLabel, Counter>,
    pub expired: Counter,
    pub evicted: Counter,
    pub origins: Gauge,
    /// Fetches of one node's record this node asked for, by outcome.
    pub fetches: Family<ReasonLabel, Counter>,
    /// Fetch requests this node answered with a record.
    pub fetch_served: Counter,
    /// The mesh-time estimate: add to this node's wall clock to get mesh time.
    pub mesh_clock_offset_ms: Gauge,
}

impl TelemetryMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("telemetry");
        r.register(
            "published",
            "Own telemetry records gossiped",
            self.published.clone(),
        );
        r.register(
            "mesh_clock_offset_ms",
            "How far this node's wall clock is behind the mesh's (negative: ahead), estimated from peers' signed timestamps",
            self.mesh_clock_offset_ms.clone(),
        );
        r.register(
            "unsent",
            "Own telemetry records not gossiped because no subscribed peer was connected",
            self.unsent.clone(),
        );
        r.register(
            "accepted",
            "Telemetry messages accepted from other nodes",
            self.accepted.clone(),
        );
        r.register(
            "rejected",
            "Telemetry messages refused, by reason",
            self.rejected.clone(),
        );
        r.register(
            "expired",
            "Origins forgotten after being silent for the expiry time",
            self.expired.clone(),
        );
        r.register(
            "evicted",
            "Origins forgotten because the origin cap was reached",
            self.evicted.clone(),
        );
        r.register(
            "fetches",
            "Fetches of one node's record asked by this node, by outcome",
            self.fetches.clone(),
        );
        r.register(
            "fetch_served",
            "Fetch requests answered with a record",
            self.fetch_served.clone(),
        );
        r.register(
            "origins",
            "Origins whose latest telemetry this node holds",
            self.origins.clone(),
        );
    }

    /// The rejection counters in the shape `/v1/status` has always shown.
    pub fn rejections(&self) -> RejectionCounters {
        let get = |reason: &'static str| self.rejected.get_or_create(&ReasonLabel { reason }).get();
        RejectionCounters {
            oversized: get("oversized"),
            malformed: get("malformed"),
            bad_signature: get("bad_signature"),
            sender_mismatch: get("sender_mismatch"),
            stale: get("stale"),
            from_future: get("from_future"),
            replayed: get("replayed"),
        }
    }
}

/// The share of a radio link's rate all the mesh's telemetry may take on a BLE-only node, in
/// bytes per second: about an eighth of the ~15 KB/s BitChat estimates a link carries, so
/// messages, acks and gossip control keep the rest.
pub const RADIO_TELEMETRY_BUDGET: u64 = 2_000;

/// Everything the service needs to know about its node at construction.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    pub base_interval: Duration,
    /// Set (to [`RADIO_TELEMETRY_BUDGET`]) on nodes whose only links are radio ones: the
    /// publication interval then grows with the number of nodes (see the module docs).
    pub radio_budget: Option<u64>,
    pub limits: TelemetryLimits,
    pub freshness: FreshnessPolicy,
    pub version: String,
    pub started_at_ms: u64,
    /// Below this many known nodes, telemetry goes mesh-wide even from cluster members
    /// (`scope`).
    pub full_mesh_below: usize,
}

/// See the module docs.
#[derive(Debug)]
pub struct TelemetryService {
    tables: Tables,
    view: ViewCell<TelemetrySnapshot>,
    keypair: Keypair,
    own_id: String,
    config: TelemetryConfig,
    validator: TelemetryValidator,
    latest: HashMap<String, ReceivedTelemetry>,
    last_seq: u64,
    last_publish_ms: Option<u64>,
    next_publish_ms: u64,
    multiplier: u32,
    /// The size of our last publication on the wire.
    last_record_len: usize,
    readings: Option<DeviceReadings>,
    device: Option<fogmesh_device::DeviceSummary>,
    rss_bytes: Option<u64>,
    connected_peers: usize,
    listen_addrs: Vec<String>,
    /// Peers linked to this node now (whom a fetch can ask without dialling).
    connected: std::collections::HashSet<PeerId>,
    phase: Phase,
    /// Origins over the cap when restored, removed from the store at start.
    dropped_at_restore: Vec<String>,
    /// Peers' clocks from their signed timestamps, and the mesh-time estimate shared with
    /// the other capabilities (see [`crate::runtime::mesh_time`]).
    clock_offsets: ClockOffsets,
    mesh_clock: MeshClock,
    /// Node time when the estimate was last made.
    mesh_clock_at_ms: u64,
    metrics: TelemetryMetrics,
    /// The cluster this node publishes to (`None`: the mesh-wide topic).
    scope: Option<String>,
    /// Each held origin's envelope as it arrived, for fetches ([`fetch`]).
    sealed: HashMap<String, Vec<u8>>,
    /// Our own last publication, sealed.
    own_sealed: Option<Vec<u8>>,
    directory: Directory,
    fetches: HashMap<Token, PendingFetch>,
    next_token: Token,
}

/// A fetch in flight: who is waiting, whom we asked, whom to ask next if that fails.
#[derive(Debug)]
struct PendingFetch {
    origin: PeerId,
    asked: PeerId,
    then: Option<PeerId>,
    reply: FetchReply,
}

/// Where a fetch's outcome goes (the API handler waits on it).
pub type FetchReply = tokio::sync::oneshot::Sender<Result<ReceivedTelemetry, FetchError>>;

impl TelemetryService {
    pub fn new(
        keypair: Keypair,
        config: TelemetryConfig,
        tables: Tables,
        view: ViewCell<TelemetrySnapshot>,
        metrics: TelemetryMetrics,
    ) -> Self {
        let own_id = keypair.public().to_peer_id().to_string();
        Self {
            tables,
            view,
            keypair,
            own_id,
            validator: TelemetryValidator::new(config.freshness),
            config,
            latest: HashMap::new(),
            last_seq: 0,
            last_publish_ms: None,
            next_publish_ms: 0,
            multiplier: 1,
            last_record_len: 0,
            readings: None,
            device: None,
            rss_bytes: None,
            connected_peers: 0,
            listen_addrs: Vec::new(),
            connected: std::collections::HashSet::new(),
            phase: Phase::Booting,
            dropped_at_restore: Vec::new(),
            clock_offsets: ClockOffsets::default(),
            mesh_clock: MeshClock::default(),
            mesh_clock_at_ms: 0,
            metrics,
            scope: None,
            sealed: HashMap::new(),
            own_sealed: None,
            directory: Directory::default(),
            fetches: HashMap::new(),
            next_token: 0,
        }
    }

    /// Seeds state from the store: our last sequence number and what others last sent.
    /// Over the cap, the most recently received records are kept; the others are returned
    /// (and removed from the store at start).
    pub fn restore(
        &mut self,
        own_seq: u64,
        stored: impl IntoIterator<Item = (String, ReceivedTelemetry)>,
    ) -> Vec<String> {
        self.last_seq = own_seq;
        let mut records: Vec<(String, ReceivedTelemetry)> = stored
            .into_iter()
            .filter(|(origin, _)| origin.parse::<PeerId>().is_ok() && *origin != self.own_id)
            .collect();
        records.sort_by_key(|(_, t)| std::cmp::Reverse(t.received_at_ms));
        let dropped: Vec<String> = records
            .split_off(records.len().min(self.config.limits.max_origins))
            .into_iter()
            .map(|(origin, _)| origin)
            .collect();
        for (origin, telemetry) in records {
            if let Ok(peer) = origin.parse::<PeerId>() {
                self.validator
                    .remember(peer, telemetry.seq, telemetry.received_at_ms);
            }
            self.latest.insert(origin, telemetry);
        }
        self.metrics.origins.set(self.latest.len() as i64);
        let latest = self
            .latest
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.view.update(|v| v.latest = latest);
        self.dropped_at_restore = dropped.clone();
        dropped
    }

    fn persist(
        &self,
        out: &mut Outbox,
        build: impl FnOnce(&mut Batch) -> Result<(), fogmesh_store::StoreError>,
    ) {
        if self.phase == Phase::SafeMode {
            return;
        }
        let mut batch = Batch::new();
        match build(&mut batch) {
            Ok(()) => out.push(Effect::Persist(batch)),
            Err(error) => tracing::warn!(%error, "telemetry not stored"),
        }
    }

    /// The latest record per origin (the authoritative table).
    pub fn latest(&self) -> &HashMap<String, ReceivedTelemetry> {
        &self.latest
    }

    pub fn stale_count(&self, now_ms: u64) -> usize {
        self.latest.values().filter(|t| t.is_stale(now_ms)).count()
    }

    pub fn metrics(&self) -> &TelemetryMetrics {
        &self.metrics
    }

    /// The interval the power policy (and, on a BLE-only node, the radio budget) allows now.
    pub fn interval(&self) -> Duration {
        let policy = self.config.base_interval.saturating_mul(self.multiplier);
        match self.config.radio_budget {
            Some(budget) => policy.max(self.radio_floor(budget)),
            None => policy,
        }
    }

    /// The shortest interval that keeps every known node's telemetry within `budget` bytes
    /// per second on a link.
    fn radio_floor(&self, budget: u64) -> Duration {
        let nodes = self.latest.len() as u64 + 1;
        let bytes = nodes.saturating_mul(self.last_record_len as u64);
        Duration::from_millis(bytes.saturating_mul(1000) / budget.max(1))
    }

    fn interval_ms(&self) -> u64 {
        duration_ms(self.interval())
    }

    fn schedule_publish(&mut self, at_ms: u64, out: &mut Outbox) {
        self.next_publish_ms = at_ms;
        out.timer(at_ms, PUBLISH);
    }

    fn publish(&mut self, now_ms: u64, out: &mut Outbox) {
        let interval_ms = self.interval_ms();
        self.schedule_publish(now_ms.saturating_add(interval_ms), out);
        if matches!(self.phase, Phase::SafeMode | Phase::Draining) {
            return;
        }
        // The sequence and the signed timestamp follow the wall clock: they mean something
        // to others (and the sequence survives a restart without its stored value).
        let wall_ms = out.wall_ms();
        let seq = next_seq(self.last_seq, wall_ms);
        let readings = self.readings;
        let record = TelemetryRecord {
            peer_id: self.own_id.clone(),
            version: self.config.version.clone(),
            uptime_s: now_ms.saturating_sub(self.config.started_at_ms) / 1000,
            cpu_load_pct: readings.and_then(|r| r.cpu_load_pct),
            mem_used_bytes: readings
                .and_then(|r| Some(r.mem_total_bytes?.saturating_sub(r.mem_available_bytes?))),
            mem_total_bytes: readings.and_then(|r| r.mem_total_bytes),
            rss_bytes: self.rss_bytes,
            peer_count: u32::try_from(self.connected_peers).unwrap_or(u32::MAX),
            listen_addrs: self.listen_addrs.clone(),
            interval_ms,
            device: self.device.clone(),
        };
        let sealed = codec::encode(&record)
            .map_err(|e| e.to_string())
            .and_then(|body| {
                envelope::seal(&self.keypair, MessageKind::Telemetry, seq, wall_ms, body)
                    .map_err(|e| e.to_string())
            });
        let data = match sealed {
            Ok(data) => data,
            Err(error) => {
                tracing::error!(%error, "cannot seal own telemetry");
                return;
            }
        };
        self.last_seq = seq;
        self.last_publish_ms = Some(now_ms);
        self.last_record_len = data.len();
        self.own_sealed = Some(data.clone());
        let meta = self.tables.meta.clone();
        self.persist(out, |b| b.put(&meta, META_TELEMETRY_SEQ, &seq));
        let own_id = self.own_id.clone();
        self.view.update(|v| {
            let own = ReceivedTelemetry {
                seq,
                timestamp_ms: wall_ms,
                received_at_ms: now_ms,
                record,
            };
            v.record_sample(&own_id, &own);
            v.own = Some(own);
        });
        out.push(Effect::Publish {
            topic: self.topic(),
            data,
        });
    }

    /// The topic this node publishes on now: its cluster's, unless it is in none or the
    /// mesh is small (`scope`).
    pub fn topic(&self) -> String {
        match &self.scope {
            Some(cluster) if !self.mesh_is_small() => scope::cluster_topic(cluster),
            _ => TELEMETRY_TOPIC.to_owned(),
        }
    }

    /// How many nodes this node knows of: those whose records it holds (itself included),
    /// or those the cluster summaries name, whichever is more.
    pub fn known_nodes(&self) -> usize {
        (self.latest.len() + 1).max(self.directory.coordinator_of.len())
    }

    fn mesh_is_small(&self) -> bool {
        scope::is_small(self.known_nodes(), self.config.full_mesh_below)
    }

    /// Moves to another cluster's topic (or the mesh-wide one), and publishes there soon
    /// so the new cluster mates hear from us.
    fn rescope(&mut self, now_ms: u64, scope: &TelemetryScope, out: &mut Outbox) {
        if scope.cluster == self.scope {
            return;
        }
        if let Some(old) = &self.scope {
            out.push(Effect::Unsubscribe(scope::cluster_topic(old)));
        }
        if let Some(new) = &scope.cluster {
            out.push(Effect::Subscribe(scope::cluster_topic(new)));
        }
        tracing::debug!(cluster = ?scope.cluster, "telemetry scope changed");
        self.scope.clone_from(&scope.cluster);
        self.announce(now_ms, out);
    }

    /// Asks the mesh for `origin`'s latest record (see [`fetch`]); the outcome goes to
    /// `reply`. A record held fresh here is answered at once.
    pub fn fetch(&mut self, now_ms: u64, origin: PeerId, reply: FetchReply, out: &mut Outbox) {
        let key = origin.to_string();
        if key == self.own_id {
            let own = self.view.read(|v| v.own.clone());
            let _ = reply.send(own.ok_or(FetchError::NotHeld {
                asked: self.own_id.clone(),
            }));
            return;
        }
        if let Some(held) = self.latest.get(&key).filter(|t| !t.is_stale(now_ms)) {
            let _ = reply.send(Ok(held.clone()));
            return;
        }
        if self.fetches.len() >= fetch::MAX_PENDING_FETCHES {
            self.count_fetch("busy");
            let _ = reply.send(Err(FetchError::Busy));
            return;
        }
        let coordinator = self
            .directory
            .coordinator_of
            .get(&origin)
            .copied()
            .filter(|c| *c != origin);
        // The node itself if we are linked, else its coordinator if we are linked to it,
        // else the node itself (the request dials it), then its coordinator.
        let (first, then) = if self.connected.contains(&origin) {
            (origin, coordinator)
        } else if let Some(c) = coordinator.filter(|c| self.connected.contains(c)) {
            (c, Some(origin))
        } else {
            (origin, coordinator)
        };
        self.ask(origin, first, then, reply, out);
    }

    fn ask(
        &mut self,
        origin: PeerId,
        asked: PeerId,
        then: Option<PeerId>,
        reply: FetchReply,
        out: &mut Outbox,
    ) {
        let data = match FetchRequest::encode(&origin) {
            Ok(data) => data,
            Err(error) => {
                let _ = reply.send(Err(FetchError::Unanswered {
                    asked: asked.to_string(),
                    reason: error.to_string(),
                }));
                return;
            }
        };
        self.next_token = self.next_token.wrapping_add(1);
        let token = self.next_token;
        self.fetches.insert(
            token,
            PendingFetch {
                origin,
                asked,
                then,
                reply,
            },
        );
        out.push(Effect::Send {
            peer: asked,
            protocol: fetch::FETCH_PROTOCOL,
            data,
            token,
        });
    }

    fn count_fetch(&self, outcome: &'static str) {
        self.metrics
            .fetches
            .get_or_create(&ReasonLabel { reason: outcome })
            .inc();
    }

    fn fetch_answered(&mut self, now_ms: u64, response: Response, out: &mut Outbox) {
        let Some(pending) = self.fetches.remove(&response.token) else {
            return;
        };
        let asked = pending.asked.to_string();
        let outcome = match response.result {
            Err(reason) => Err(("unanswered", FetchError::Unanswered { asked, reason })),
            Ok(bytes) => match FetchResponse::decode(&bytes) {
                Err(reason) => Err(("invalid", FetchError::Invalid { asked, reason })),
                Ok(FetchResponse::NotHeld) => Err(("not_held", FetchError::NotHeld { asked })),
                Ok(FetchResponse::Record(sealed)) => fetch::verify_fetched(
                    &pending.origin,
                    &sealed,
                    out.wall_ms(),
                    duration_ms(self.config.freshness.max_clock_skew),
                    now_ms,
                )
                .map_err(|reason| ("invalid", FetchError::Invalid { asked, reason })),
            },
        };
        match outcome {
            Ok(record) => {
                self.count_fetch("record");
                let _ = pending.reply.send(Ok(record));
            }
            Err((label, error)) => {
                self.count_fetch(label);
                match pending.then {
                    Some(next) => self.ask(pending.origin, next, None, pending.reply, out),
                    None => {
                        let _ = pending.reply.send(Err(error));
                    }
                }
            }
        }
    }

    fn answer_fetch(&mut self, request: InboundRequest, out: &mut Outbox) {
        let Some(origin) = FetchRequest::decode(&request.data) else {
            tracing::debug!(peer_id = %request.peer, "fetch request not read");
            self.metrics
                .rejected
                .get_or_create(&ReasonLabel {
                    reason: "fetch_malformed",
                })
                .inc();
            return;
        };
        let key = origin.to_string();
        let sealed = if key == self.own_id {
            self.own_sealed.clone()
        } else {
            self.sealed.get(&key).cloned()
        };
        let answer = match sealed {
            Some(sealed) => {
                self.metrics.fetch_served.inc();
                FetchResponse::Record(serde_bytes::ByteBuf::from(sealed))
            }
            None => FetchResponse::NotHeld,
        };
        match answer.encode() {
            Ok(data) => out.push(Effect::Respond {
                id: request.id,
                data,
            }),
            Err(error) => tracing::warn!(%error, "fetch answer not encodable"),
        }
    }

    /// Brings the next publication forward so new subscribers hear from us soon.
    fn announce(&mut self, now_ms: u64, out: &mut Outbox) {
        let earliest = self
            .last_publish_ms
            .map_or(now_ms, |t| t.saturating_add(duration_ms(ANNOUNCE_MIN_GAP)));
        let at = earliest.max(now_ms.saturating_add(duration_ms(ANNOUNCE_DELAY)));
        if at < self.next_publish_ms {
            self.schedule_publish(at, out);
        }
    }

    fn accept(&mut self, telemetry: ReceivedTelemetry, out: &mut Outbox) {
        self.metrics.accepted.inc();
        // The validator checked that the record names its origin.
        let origin = telemetry.record.peer_id.clone();
        if !self.latest.contains_key(&origin) && self.latest.len() >= self.config.limits.max_origins
        {
            self.evict_oldest(out);
        }
        let latency_ms = out.wall_ms().saturating_sub(telemetry.timestamp_ms);
        out.event(TelemetryReceived {
            origin: origin.clone(),
            seq: telemetry.seq,
            latency_ms,
        });
        let table = self.tables.telemetry.clone();
        self.persist(out, |b| b.put(&table, &origin, &telemetry));
        // The receipt compares the sender's wall clock with ours: both wall times.
        let received_wall_ms = out.wall_ms();
        self.view.update(|v| {
            v.receipts.push(
                &origin,
                telemetry.seq,
                telemetry.timestamp_ms,
                received_wall_ms,
            );
            v.record_sample(&origin, &telemetry);
            v.latest.insert(origin.clone(), telemetry.clone());
        });
        let moved = self
            .latest
            .get(&origin)
            .is_none_or(|held| held.record.listen_addrs != telemetry.record.listen_addrs);
        if moved {
            if let Ok(peer) = origin.parse::<PeerId>() {
                let addrs = crate::runtime::peers::hygiene::dialable(
                    telemetry.record.listen_addrs.iter().map(String::as_str),
                    crate::runtime::peers::manager::MAX_ADDRS_PER_PEER,
                );
                if !addrs.is_empty() {
                    out.push(Effect::LearnAddresses { peer, addrs });
                }
            }
        }
        self.latest.insert(origin, telemetry);
        self.metrics.origins.set(self.latest.len() as i64);
        out.push(Effect::RefreshStatus);
    }

    /// Re-estimates mesh time (at most once a second: it sorts every peer's offset) and
    /// tells the other capabilities when it moved.
    fn share_mesh_clock(&mut self, now_ms: u64, out: &mut Outbox) {
        if now_ms.abs_diff(self.mesh_clock_at_ms) < 1_000 {
            return;
        }
        self.mesh_clock_at_ms = now_ms;
        let (estimate, moved) = self.clock_offsets.update(now_ms);
        if moved {
            let clock = estimate;
            if clock.offset_ms.abs() >= MESH_CLOCK_WARN_MS {
                tracing::warn!(
                    offset_ms = clock.offset_ms,
                    peers = clock.peers,
                    clamped = clock.clamped,
                    "this node's wall clock is far from the mesh's: the store's clocks follow mesh time; fix the system clock (NTP)"
                );
            }
            self.metrics.mesh_clock_offset_ms.set(clock.offset_ms);
            out.push(Effect::Notice(Notice::share(clock)));
        }
        if estimate != self.mesh_clock {
            self.mesh_clock = estimate;
            out.push(Effect::RefreshStatus);
        }
    }

    fn evict_oldest(&mut self, out: &mut Outbox) {
        let oldest = self
            .latest
            .iter()
            .min_by_key(|(_, t)| t.received_at_ms)
            .map(|(origin, _)| origin.clone());
        if let Some(origin) = oldest {
            self.metrics.evicted.inc();
            self.forget(origin, out);
        }
    }

    fn forget(&mut self, origin: String, out: &mut Outbox) {
        self.latest.remove(&origin);
        self.sealed.remove(&origin);
        if let Ok(peer) = origin.parse::<PeerId>() {
            self.validator.forget(&peer);
        }
        let table = self.tables.telemetry.clone();
        self.persist(out, |b| {
            b.remove(&table, &origin);
            Ok(())
        });
        self.view.update(|v| {
            v.latest.remove(&origin);
            v.history.remove(&origin);
        });
        self.metrics.origins.set(self.latest.len() as i64);
        out.push(Effect::RefreshStatus);
    }

    fn expire(&mut self, now_ms: u64, out: &mut Outbox) {
        out.timer(
            now_ms.saturating_add(duration_ms(EXPIRY_SWEEP_EVERY)),
            EXPIRE,
        );
        let cutoff = now_ms.saturating_sub(duration_ms(self.config.limits.expire_after));
        let silent: Vec<String> = self
            .latest
            .iter()
            .filter(|(_, t)| t.received_at_ms < cutoff)
            .map(|(origin, _)| origin.clone())
            .collect();
        for origin in silent {
            tracing::debug!(%origin, "telemetry origin expired");
            self.metrics.expired.inc();
            out.event(TelemetryExpired {
                origin: origin.clone(),
            });
            self.forget(origin, out);
        }
    }

    fn device_changed(&mut self, now_ms: u64, view: &DeviceView, out: &mut Outbox) {
        self.readings = Some(view.readings);
        self.device = Some(view.summary());
        let multiplier = view.decision.limits.telemetry_multiplier.max(1);
        if self.last_publish_ms.is_none() {
            self.multiplier = multiplier;
            self.schedule_publish(now_ms, out);
        } else if multiplier != self.multiplier {
            self.multiplier = multiplier;
            // Re-plan the next publication on the new cadence.
            let base = self.last_publish_ms.unwrap_or(now_ms);
            self.schedule_publish(base.saturating_add(self.interval_ms()), out);
        }
    }
}

impl Capability for TelemetryService {
    fn name(&self) -> &'static str {
        "telemetry"
    }

    fn topics(&self) -> Vec<String> {
        vec![TELEMETRY_TOPIC.into()]
    }

    fn protocols(&self) -> Vec<Protocol> {
        vec![fetch::FETCH_SPEC]
    }

    fn on_request(&mut self, _now_ms: u64, request: InboundRequest, out: &mut Outbox) {
        self.answer_fetch(request, out);
    }

    fn on_response(&mut self, now_ms: u64, response: Response, out: &mut Outbox) {
        self.fetch_answered(now_ms, response, out);
    }

    fn on_start(&mut self, now_ms: u64, out: &mut Outbox) {
        // The first publication waits for the first device pass (started at once), so it
        // carries the device; if sensing is slow, it goes out without after a second.
        self.schedule_publish(
            now_ms.saturating_add(duration_ms(FIRST_PUBLISH_FALLBACK)),
            out,
        );
        out.timer(now_ms, EXPIRE);
        // Origins over the cap at start leave the store too.
        let table = self.tables.telemetry.clone();
        let dropped = std::mem::take(&mut self.dropped_at_restore);
        if !dropped.is_empty() {
            self.persist(out, |b| {
                for origin in &dropped {
                    b.remove(&table, origin);
                }
                Ok(())
            });
        }
    }

    fn on_gossip(&mut self, now_ms: u64, msg: GossipIn<'_>, out: &mut Outbox) -> Verdict {
        // The sender's timestamp is judged against our wall clock (its window); what we
        // remember is when we received it (node time).
        let checked = self.validator.check(out.wall_ms(), msg.author, msg.data);
        if let Some((origin, stamped_ms)) = self.validator.take_stamp() {
            // Only a neighbour's own record: one sample per connection, none replayed.
            if origin == msg.propagation_source {
                self.clock_offsets
                    .sample(origin, stamped_ms, out.wall_ms(), now_ms);
                self.share_mesh_clock(now_ms, out);
            }
        }
        match checked {
            Ok(mut accepted) => {
                accepted.telemetry.received_at_ms = now_ms;
                // The validator checked that the record names its origin: no base58 here.
                self.sealed
                    .insert(accepted.telemetry.record.peer_id.clone(), msg.data.to_vec());
                self.accept(accepted.telemetry, out);
                if scope::passes_on(msg.topic, self.known_nodes(), self.config.full_mesh_below) {
                    Verdict::Now(MessageAcceptance::Accept)
                } else {
                    // Kept, not passed on: see `scope`.
                    Verdict::Now(MessageAcceptance::Ignore)
                }
            }
            Err(rejection) => {
                self.metrics
                    .rejected
                    .get_or_create(&ReasonLabel {
                        reason: rejection.reason(),
                    })
                    .inc();
                tracing::debug!(propagation_source = %msg.propagation_source, reason = %rejection, "telemetry rejected");
                if rejection.is_ignorable() {
                    // Late or reordered copies come from honest relays too: no penalty.
                    Verdict::Now(MessageAcceptance::Ignore)
                } else {
                    Verdict::Now(MessageAcceptance::Reject)
                }
            }
        }
    }

    fn on_timer(&mut self, now_ms: u64, timer: TimerId, out: &mut Outbox) {
        match timer {
            PUBLISH => self.publish(now_ms, out),
            EXPIRE => {
                self.expire(now_ms, out);
                self.share_mesh_clock(now_ms, out);
            }
            _ => {}
        }
    }

    fn on_notice(&mut self, now_ms: u64, notice: &Notice, out: &mut Outbox) {
        match notice {
            Notice::PeerSubscribed { topic, .. } if *topic == self.topic() => {
                self.announce(now_ms, out)
            }
            Notice::PeerConnected { peer, .. } => {
                self.connected.insert(*peer);
            }
            Notice::PeerDisconnected(peer) => {
                self.connected.remove(peer);
            }
            Notice::Local {
                connected_peers,
                listen_addrs,
            } => {
                self.connected_peers = *connected_peers;
                self.listen_addrs.clone_from(listen_addrs);
            }
            Notice::Phase(phase) => self.phase = *phase,
            shared => {
                if let Some(changed) = shared.shared::<DeviceChanged>() {
                    self.rss_bytes = changed.rss_bytes;
                    self.device_changed(now_ms, &changed.view, out);
                } else if let Some(scope) = shared.shared::<TelemetryScope>() {
                    self.rescope(now_ms, scope, out);
                } else if let Some(directory) = shared.shared::<Directory>() {
                    self.directory = directory.clone();
                }
            }
        }
    }

    fn on_publish_result(&mut self, _topic: &str, outcome: PublishOutcome) {
        match outcome {
            PublishOutcome::Sent => self.metrics.published.inc(),
            PublishOutcome::NoSubscribers => self.metrics.unsent.inc(),
            PublishOutcome::Failed => 0,
        };
    }

    fn status(&self, now_ms: u64, s: &mut StatusView) {
        s.mesh_clock = MeshClockStatus {
            offset_ms: self.mesh_clock.offset_ms,
            peers: self.mesh_clock.peers,
            clamped: self.mesh_clock.clamped,
            furthest: self
                .clock_offsets
                .furthest(5, self.mesh_clock_at_ms)
                .into_iter()
                .map(|(peer, offset_ms)| PeerClock {
                    peer_id: peer.to_string(),
                    offset_ms,
                })
                .collect(),
        };
        s.telemetry_nodes = self.latest.len();
        s.stale_nodes = self.stale_count(now_ms);
        s.telemetry_interval_ms = duration_ms(self.interval());
        let m = &self.metrics;
        s.telemetry_published = m.published.get();
        s.telemetry_unsent = m.unsent.get();
        s.telemetry_accepted = m.accepted.get();
        s.telemetry_rejected = m.rejections();
        s.telemetry_expired = m.expired.get() + m.evicted.get();
    }

    fn peer_view(&self, peer: &PeerId, view: &mut PeerView) {
        view.clock_offset_ms = self.clock_offsets.of(peer, self.mesh_clock_at_ms);
        view.device = self
            .latest
            .get(&peer.to_string())
            .and_then(|t| t.record.device.clone());
    }
}

/// A rejection's counter name; kept here so tests read the same label the service writes.
pub fn rejection_label(rejection: &Rejection) -> ReasonLabel {
    ReasonLabel {
        reason: rejection.reason(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    /// Tables in a store of its own, kept for the whole test run.
    fn tables() -> Tables {
        let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
        let store = fogmesh_store::Store::open(dir.path(), &fogmesh_store::StoreOptions::default())
            .unwrap();
        Tables::open(&store).unwrap()
    }

    fn service(limits: TelemetryLimits) -> TelemetryService {
        TelemetryService::new(
            Keypair::generate_ed25519(),
            TelemetryConfig {
                base_interval: Duration::from_secs(1),
                radio_budget: None,
                limits,
                freshness: FreshnessPolicy::default(),
                version: "test".into(),
                started_at_ms: T0,
                full_mesh_below: 32,
            },
            tables(),
            crate::runtime::handle::Views::default().add(TelemetrySnapshot::default()),
            TelemetryMetrics::default(),
        )
    }

    fn device_changed(view: DeviceView) -> Notice {
        Notice::share(DeviceChanged {
            view,
            rss_bytes: None,
        })
    }

    /// Another node's next publication, as bytes on the wire.
    fn publication(from: &mut TelemetryService, now_ms: u64) -> (PeerId, Vec<u8>) {
        let mut out = Outbox::at(now_ms);
        from.publish(now_ms, &mut out);
        let data = out
            .drain()
            .find_map(|e| match e {
                Effect::Publish { data, .. } => Some(data),
                _ => None,
            })
            .unwrap();
        (from.keypair.public().to_peer_id(), data)
    }

    fn deliver(
        to: &mut TelemetryService,
        now_ms: u64,
        author: PeerId,
        data: &[u8],
    ) -> (MessageAcceptance, Outbox) {
        deliver_on(to, TELEMETRY_TOPIC, now_ms, author, data)
    }

    fn deliver_on(
        to: &mut TelemetryService,
        topic: &str,
        now_ms: u64,
        author: PeerId,
        data: &[u8],
    ) -> (MessageAcceptance, Outbox) {
        let mut out = Outbox::at(now_ms);
        let id = crate::runtime::capability::GossipId {
            message: libp2p::gossipsub::MessageId::from(vec![0]),
            source: author,
        };
        let verdict = to.on_gossip(
            now_ms,
            GossipIn {
                topic,
                propagation_source: author,
                author: Some(author),
                data,
                id: &id,
            },
            &mut out,
        );
        let Verdict::Now(verdict) = verdict else {
            panic!("telemetry answers at once")
        };
        (verdict, out)
    }

    fn timers(out: &Outbox) -> Vec<(u64, TimerId)> {
        out.effects()
            .iter()
            .filter_map(|e| match e {
                Effect::Timer { at_ms, timer } => Some((*at_ms, *timer)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn publishes_on_its_cadence_and_persists_its_sequence() {
        let mut s = service(TelemetryLimits::default());
        let mut out = Outbox::at(T0);
        s.on_start(T0, &mut out);
        assert!(timers(&out).contains(&(T0 + 1000, PUBLISH)));
        // The first device pass brings it forward: the first record carries the device.
        let (view, _) =
            fogmesh_device::assess(DeviceReadings::default(), None, Duration::ZERO, None);
        let mut out = Outbox::at(T0);
        s.on_notice(T0 + 3, &device_changed(view), &mut out);
        assert_eq!(timers(&out), vec![(T0 + 3, PUBLISH)]);
        let mut out = Outbox::at(T0);
        s.on_timer(T0, PUBLISH, &mut out);
        assert_eq!(timers(&out), vec![(T0 + 1000, PUBLISH)]);
        assert!(out.effects().iter().any(
            |e| matches!(e, Effect::Persist(b) if b.operations().iter().any(|op| op.is("put", TABLE_META, META_TELEMETRY_SEQ)))
        ));
        let seq = s.view.get().own.unwrap().seq;
        assert!(seq >= T0, "sequence follows the clock");
        assert!(out
            .effects()
            .iter()
            .any(|e| matches!(e, Effect::Publish { topic, .. } if topic == TELEMETRY_TOPIC)));
        s.on_publish_result(TELEMETRY_TOPIC, PublishOutcome::NoSubscribers);
        assert_eq!(s.metrics().unsent.get(), 1);
    }

    #[test]
    fn stays_quiet_in_safe_mode_but_keeps_its_timer() {
        let mut s = service(TelemetryLimits::default());
        s.on_notice(T0, &Notice::Phase(Phase::SafeMode), &mut Outbox::at(T0));
        let mut out = Outbox::at(T0);
        s.on_timer(T0, PUBLISH, &mut out);
        assert_eq!(timers(&out), vec![(T0 + 1000, PUBLISH)]);
        assert!(!out
            .effects()
            .iter()
            .any(|e| matches!(e, Effect::Publish { .. })));
    }

    #[test]
    fn a_new_subscriber_brings_the_next_publication_forward_once() {
        let mut s = service(TelemetryLimits {
            max_origins: 10,
            expire_after: Duration::from_secs(60),
        });
        s.config.base_interval = Duration::from_secs(30);
        let mut out = Outbox::at(T0);
        s.on_timer(T0, PUBLISH, &mut out);
        let subscribed = Notice::PeerSubscribed {
            peer: PeerId::random(),
            topic: TELEMETRY_TOPIC.into(),
        };
        let mut out = Outbox::at(T0);
        s.on_notice(T0 + 100, &subscribed, &mut out);
        // No sooner than a second after the last publication.
        assert_eq!(timers(&out), vec![(T0 + 1000, PUBLISH)]);
        let mut out = Outbox::at(T0);
        s.on_notice(T0 + 200, &subscribed, &mut out);
        assert!(timers(&out).is_empty(), "already planned that early");
    }

    #[test]
    fn accepts_stores_and_shows_others_and_refuses_replays() {
        let mut a = service(TelemetryLimits::default());
        let mut b = service(TelemetryLimits::default());
        let (author, data) = publication(&mut b, T0);
        let (verdict, out) = deliver(&mut a, T0 + 5, author, &data);
        assert_eq!(verdict, MessageAcceptance::Accept);
        assert!(out
            .effects()
            .iter()
            .any(|e| matches!(e, Effect::Persist(b) if b.touches("put", TABLE_TELEMETRY))));
        assert!(out.effects().iter().any(|e| matches!(
            e,
            Effect::Event(ev) if ev.decode::<TelemetryReceived>().is_some_and(|t| t.latency_ms == 5)
        )));
        assert_eq!(a.view.get().latest.len(), 1);
        assert_eq!(a.latest().len(), 1);
        let (verdict, _) = deliver(&mut a, T0 + 6, author, &data);
        assert_eq!(verdict, MessageAcceptance::Ignore);
        assert_eq!(a.metrics().rejections().replayed, 1);
        // Forged: another author claims the record.
        let (verdict, _) = deliver(&mut a, T0 + 7, PeerId::random(), &data);
        assert_eq!(verdict, MessageAcceptance::Reject);
        assert_eq!(a.metrics().rejections().sender_mismatch, 1);
    }

    #[test]
    fn silent_origins_expire_from_table_store_view_and_validator() {
        let expire_after = Duration::from_secs(120);
        let mut a = service(TelemetryLimits {
            max_origins: 100,
            expire_after,
        });
        let mut b = service(TelemetryLimits::default());
        let (author, data) = publication(&mut b, T0);
        deliver(&mut a, T0, author, &data);
        let mut out = Outbox::at(T0);
        a.on_timer(T0 + 119_000, EXPIRE, &mut out);
        assert_eq!(a.latest().len(), 1, "not silent long enough yet");
        assert_eq!(timers(&out), vec![(T0 + 129_000, EXPIRE)]);
        let mut out = Outbox::at(T0);
        a.on_timer(T0 + 121_000, EXPIRE, &mut out);
        assert!(a.latest().is_empty());
        assert!(out
            .effects()
            .iter()
            .any(|e| matches!(e, Effect::Persist(b) if b.touches("remove", TABLE_TELEMETRY))));
        assert!(a.view.get().latest.is_empty());
        assert!(out
            .effects()
            .iter()
            .any(|e| matches!(e, Effect::Event(ev) if ev.is::<TelemetryExpired>())));
        assert_eq!(a.metrics().expired.get(), 1);
        // It comes back when it speaks again.
        let (author, data) = publication(&mut b, T0 + 122_000);
        let (verdict, _) = deliver(&mut a, T0 + 122_000, author, &data);
        assert_eq!(verdict, MessageAcceptance::Accept);
    }

    #[test]
    fn many_minted_identities_stay_within_the_cap() {
        let cap = 50;
        let mut a = service(TelemetryLimits {
            max_origins: cap,
            expire_after: Duration::from_secs(600),
        });
        for i in 0..400u64 {
            let mut minted = service(TelemetryLimits::default());
            let now = T0 + i * 10;
            let (author, data) = publication(&mut minted, now);
            let (verdict, _) = deliver(&mut a, now, author, &data);
            // Kept either way; passed on only while the mesh looks small (`scope`).
            let expected = if a.known_nodes() < 32 {
                MessageAcceptance::Accept
            } else {
                MessageAcceptance::Ignore
            };
            assert_eq!(verdict, expected);
            assert!(a.latest().len() <= cap);
            assert!(a.validator.tracked() <= TelemetryValidator::MAX_TRACKED_ORIGINS);
        }
        assert_eq!(a.latest().len(), cap);
        assert_eq!(a.metrics().evicted.get(), 400 - cap as u64);
        assert_eq!(a.metrics().origins.get(), cap as i64);
        // The newest stay.
        let newest = a.latest().values().map(|t| t.received_at_ms).min().unwrap();
        assert_eq!(newest, T0 + (400 - cap as u64) * 10);
    }

    #[test]
    fn a_stricter_power_mode_slows_publication() {
        let mut s = service(TelemetryLimits::default());
        let mut out = Outbox::at(T0);
        s.on_timer(T0, PUBLISH, &mut out);
        let (mut view, _) =
            fogmesh_device::assess(DeviceReadings::default(), None, Duration::ZERO, None);
        view.decision.limits.telemetry_multiplier = 4;
        let mut out = Outbox::at(T0);
        s.on_notice(T0 + 10, &device_changed(view), &mut out);
        assert_eq!(timers(&out), vec![(T0 + 4000, PUBLISH)]);
        assert_eq!(s.interval(), Duration::from_secs(4));
    }

    #[test]
    fn a_radio_only_node_stretches_its_interval_with_the_mesh() {
        let mut radio = service(TelemetryLimits::default());
        radio.config.radio_budget = Some(RADIO_TELEMETRY_BUDGET);
        let mut wired = service(TelemetryLimits::default());
        for i in 0..40 {
            let mut peer = service(TelemetryLimits::default());
            let (author, data) = publication(&mut peer, T0 + i);
            deliver(&mut radio, T0 + i, author, &data);
            deliver(&mut wired, T0 + i, author, &data);
        }
        let (_, own) = publication(&mut radio, T0 + 100);
        publication(&mut wired, T0 + 100);
        assert_eq!(radio.latest().len(), 40);
        // 41 nodes' records at 2 KB/s, against the 1 s the policy alone allows.
        let want = Duration::from_millis(41 * own.len() as u64 * 1000 / RADIO_TELEMETRY_BUDGET);
        assert!(want > Duration::from_secs(5), "{want:?}");
        assert_eq!(radio.interval(), want);
        assert_eq!(wired.interval(), Duration::from_secs(1));
        // The next publication is planned on it, and the record says so.
        let mut out = Outbox::at(T0);
        radio.on_timer(T0 + 200, PUBLISH, &mut out);
        assert_eq!(timers(&out), vec![(T0 + 200 + duration_ms(want), PUBLISH)]);
    }

    #[test]
    fn restore_keeps_the_newest_within_the_cap() {
        let mut a = service(TelemetryLimits {
            max_origins: 2,
            expire_after: Duration::from_secs(600),
        });
        let mut stored = Vec::new();
        for i in 0..3u64 {
            let mut b = service(TelemetryLimits::default());
            let (author, data) = publication(&mut b, T0 + i);
            let mut probe = service(TelemetryLimits::default());
            deliver(&mut probe, T0 + i, author, &data);
            let (origin, t) = probe.latest().iter().next().unwrap();
            stored.push((origin.clone(), t.clone()));
        }
        let dropped = a.restore(7, stored.clone());
        assert_eq!(dropped, vec![stored[0].0.clone()]);
        assert_eq!(a.latest().len(), 2);
        assert_eq!(a.last_seq, 7);
    }

    #[test]
    fn a_cluster_member_publishes_to_its_cluster_only_and_answers_fetches() {
        let mut a = service(TelemetryLimits::default());
        assert_eq!(a.topic(), TELEMETRY_TOPIC);
        let mut out = Outbox::at(T0);
        // In a small mesh a member still publishes mesh-wide.
        let small = TelemetryScope {
            cluster: Some("c0".into()),
        };
        a.on_notice(T0, &Notice::share(small), &mut out);
        assert_eq!(a.topic(), TELEMETRY_TOPIC);
        // The summaries name 40 nodes: a large mesh.
        let named: std::collections::HashMap<PeerId, PeerId> = (0..40)
            .map(|_| (PeerId::random(), PeerId::random()))
            .collect();
        a.on_notice(
            T0,
            &Notice::share(Directory {
                coordinator_of: std::sync::Arc::new(named),
            }),
            &mut out,
        );
        assert_eq!(a.topic(), scope::cluster_topic("c0"));
        let scope = TelemetryScope {
            cluster: Some("c1".into()),
        };
        a.on_notice(T0, &Notice::share(scope), &mut out);
        let effects: Vec<Effect> = out.drain().collect();
        assert!(effects
            .iter()
            .any(|e| matches!(e, Effect::Subscribe(t) if *t == scope::cluster_topic("c1"))));
        let mut out = Outbox::at(T0 + 5_000);
        a.publish(T0 + 5_000, &mut out);
        let topics: Vec<String> = out
            .drain()
            .filter_map(|e| match e {
                Effect::Publish { topic, .. } => Some(topic),
                _ => None,
            })
            .collect();
        assert_eq!(topics, vec![scope::cluster_topic("c1")]);
        // Moving on: the old topic is left, the new one taken.
        let mut out = Outbox::at(T0 + 6_000);
        let moved = TelemetryScope {
            cluster: Some("c2".into()),
        };
        a.on_notice(T0 + 6_000, &Notice::share(moved), &mut out);
        let effects: Vec<Effect> = out.drain().collect();
        assert!(effects
            .iter()
            .any(|e| matches!(e, Effect::Unsubscribe(t) if *t == scope::cluster_topic("c1"))));
        assert!(effects
            .iter()
            .any(|e| matches!(e, Effect::Subscribe(t) if *t == scope::cluster_topic("c2"))));

        // A cluster mate's record is passed on whatever the mesh's size; a fetch for it is
        // answered with the envelope exactly as it arrived.
        let mut mate = service(TelemetryLimits::default());
        let (author, data) = publication(&mut mate, T0 + 7_000);
        let topic = scope::cluster_topic("c2");
        let (verdict, _) = deliver_on(&mut a, &topic, T0 + 7_000, author, &data);
        assert_eq!(verdict, MessageAcceptance::Accept);
        let mut out = Outbox::at(T0 + 7_500);
        a.on_request(
            T0 + 7_500,
            InboundRequest {
                id: crate::runtime::capability::InboundId(9),
                peer: PeerId::random(),
                protocol: fetch::FETCH_PROTOCOL,
                data: FetchRequest::encode(&author).unwrap(),
            },
            &mut out,
        );
        let answer = out
            .drain()
            .find_map(|e| match e {
                Effect::Respond { data, .. } => Some(data),
                _ => None,
            })
            .expect("answered");
        assert_eq!(
            FetchResponse::decode(&answer).unwrap(),
            FetchResponse::Record(serde_bytes::ByteBuf::from(data))
        );
        assert_eq!(a.metrics().fetch_served.get(), 1);
        // Junk is refused and counted, not answered.
        let mut out = Outbox::at(T0 + 8_000);
        a.on_request(
            T0 + 8_000,
            InboundRequest {
                id: crate::runtime::capability::InboundId(10),
                peer: PeerId::random(),
                protocol: fetch::FETCH_PROTOCOL,
                data: vec![0xff; 40],
            },
            &mut out,
        );
        assert_eq!(out.drain().count(), 0);
        assert_eq!(
            a.metrics()
                .rejected
                .get_or_create(&ReasonLabel {
                    reason: "fetch_malformed"
                })
                .get(),
            1
        );
    }

    #[test]
    fn a_fetch_asks_the_node_then_its_coordinator_and_checks_what_comes_back() {
        let mut a = service(TelemetryLimits::default());
        let mut origin = service(TelemetryLimits::default());
        let coordinator = PeerId::random();
        let (origin_id, sealed) = publication(&mut origin, T0);
        let directory = Directory {
            coordinator_of: std::sync::Arc::new([(origin_id, coordinator)].into()),
        };
        let mut out = Outbox::at(T0);
        a.on_notice(T0, &Notice::share(directory), &mut out);
        a.on_notice(
            T0,
            &Notice::PeerConnected {
                peer: coordinator,
                link: fogmesh_transports::LinkKind::Internet,
            },
            &mut out,
        );
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        let mut out = Outbox::at(T0);
        a.fetch(T0, origin_id, reply, &mut out);
        // Linked to the coordinator, not to the node: the coordinator is asked first.
        let (asked, token) = out
            .drain()
            .find_map(|e| match e {
                Effect::Send { peer, token, .. } => Some((peer, token)),
                _ => None,
            })
            .expect("asked");
        assert_eq!(asked, coordinator);
        // It does not hold it: the node itself is asked next.
        let mut out = Outbox::at(T0);
        a.on_response(
            T0 + 10,
            Response {
                peer: coordinator,
                token,
                result: Ok(FetchResponse::NotHeld.encode().unwrap()),
            },
            &mut out,
        );
        let (asked, token) = out
            .drain()
            .find_map(|e| match e {
                Effect::Send { peer, token, .. } => Some((peer, token)),
                _ => None,
            })
            .expect("asked again");
        assert_eq!(asked, origin_id);
        assert!(answer.try_recv().is_err(), "still waiting");
        let mut out = Outbox::at(T0 + 20);
        a.on_response(
            T0 + 20,
            Response {
                peer: origin_id,
                token,
                result: Ok(FetchResponse::Record(serde_bytes::ByteBuf::from(sealed))
                    .encode()
                    .unwrap()),
            },
            &mut out,
        );
        let record = answer.try_recv().unwrap().unwrap();
        assert_eq!(record.record.peer_id, origin_id.to_string());
        assert_eq!(
            a.metrics()
                .fetches
                .get_or_create(&ReasonLabel { reason: "record" })
                .get(),
            1
        );
        // A forged answer (someone else's key) is refused and reported as invalid.
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        let mut out = Outbox::at(T0 + 30);
        let stranger = PeerId::random();
        a.fetch(T0 + 30, stranger, reply, &mut out);
        let token = out
            .drain()
            .find_map(|e| match e {
                Effect::Send { token, .. } => Some(token),
                _ => None,
            })
            .expect("asked");
        let (_, other) = publication(&mut origin, T0 + 30);
        let mut out = Outbox::at(T0 + 40);
        a.on_response(
            T0 + 40,
            Response {
                peer: stranger,
                token,
                result: Ok(FetchResponse::Record(serde_bytes::ByteBuf::from(other))
                    .encode()
                    .unwrap()),
            },
            &mut out,
        );
        assert!(matches!(
            answer.try_recv().unwrap(),
            Err(FetchError::Invalid { .. })
        ));
    }
}
