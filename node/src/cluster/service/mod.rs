//! The cluster capability: this node's part in a fog cluster (docs/clusters.md).
//!
//! It runs the pure pieces of `fogmesh_consensus` over the mesh:
//! - formation ([`fogmesh_consensus::formation`]): coordinators announce their cluster on
//!   [`ANNOUNCE_TOPIC`]; an unclustered node joins the fullest one with room or, if it may
//!   coordinate and none is in reach, founds one; coordinators remove silent members, hand
//!   leadership to a clearly better-scored voter, and merge small clusters;
//! - the cluster's Raft group ([`fogmesh_consensus::group`], `raft.rs`), ticked every
//!   [`group::TICK_MS`], its messages carried by `/fogmesh/cluster/1`
//!   ([`crate::cluster::protocol`]) and admitted only from members
//!   ([`fogmesh_consensus::wire::admit`]);
//! - blobs (`blob_io.rs`): from the cache, or read from disk with their waiters resumed;
//! - the coordinator's scheduling (on every change, and every `schedule_every_ms`);
//!   formation and the coordinator's round live in `coordination.rs`, what other nodes ask
//!   and the answers to what this node asked in `requests.rs`;
//! - this node's work (`work.rs`): assignments to it are fenced by term, their module and
//!   input fetched by hash, run in the sandbox off the event loop, and reported until the
//!   cluster state shows the report;
//! - submissions (`submit.rs`): kept durably until a cluster has taken them, forwarded when
//!   the node's cluster dissolves or is lost, followed until done, results fetched back.
//!
//! Nothing here touches the disk: what the group must store comes out of it as
//! [`PersistRequest`]s, written as batches through the storage task ([`RaftTables`]);
//! raft's messages that depend on a request are held inside the group until the task
//! reports it on disk ([`Capability::on_durable`]). Blobs, submissions and the membership
//! record are batches too, in an order that makes what depends on them durable no earlier
//! than they are (`crate::cluster::blobs`); a blob not in memory is read by a storage job.
//! Only start-up reads the tables ([`ClusterService::open`]).
//!
//! Roles (docs/clusters.md, "Roles"): only a node whose ticket grants `coordinator` votes or
//! coordinates (others join as raft learners); joining takes `worker` or `coordinator`;
//! submitting takes `submitter`. In an open mesh (no tickets) every node has every role.

use std::collections::{BTreeMap, HashMap, HashSet};

use fogmesh_consensus::formation::{self, Announcement, LeadershipHysteresis};
use fogmesh_consensus::group::{self, ClusterNode, GroupError, Output, PersistRequest};
use fogmesh_consensus::pace::RaftPace;
use fogmesh_consensus::state::{Applied, Command, NodeId, Refusal};
use fogmesh_consensus::wire;
use fogmesh_store::{Batch, Store, Table};
use libp2p::identity::Keypair;
use libp2p::PeerId;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::admission::Admissions;
use crate::cluster::blobs::{self, Blobs};
use crate::cluster::protocol::{self, ClusterRequest, ClusterResponse};
use crate::cluster::raft_log::RaftTables;
use crate::device::service::DeviceChanged;
use crate::runtime::capability::{
    Capability, Effect, GossipIn, InboundId, InboundRequest, JobOutput, Lane, Notice, Outbox,
    Protocol, ReasonLabel, Response, TimerId, Token, Verdict,
};
use crate::runtime::events::EventKind;
use crate::runtime::handle::ViewCell;

mod blob_io;
mod coordination;
mod raft;
mod requests;
mod submit;
mod view;
mod work;

use blob_io::BlobWaiter;

pub use submit::{SubmitError, SubmitTask, SubmittedRecord};
pub use view::{ClusterView, KnownCluster, MemberView, TaskView};
pub use work::DeviceCapacity;

const TICK: TimerId = TimerId(0);

/// This node's cluster changed: joined, left, a new coordinator or term, members.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterChanged {
    /// `unclustered`, `joining` or `member`.
    pub state: String,
    pub cluster: Option<String>,
    pub term: u64,
    pub coordinator: Option<String>,
    pub members: usize,
    pub reason: String,
}

impl EventKind for ClusterChanged {
    const KIND: &'static str = "cluster";
}

/// A task in this node's cluster (or one it submitted) changed state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskChanged {
    pub id: String,
    /// `queued`, `assigned`, `running`, `done`, `failed`, `cancelled`, `refused`.
    pub state: String,
    pub node: Option<String>,
    pub cluster: Option<String>,
    pub detail: Option<String>,
}

impl EventKind for TaskChanged {
    const KIND: &'static str = "task";
}

/// A task this node submitted finished and its result is held here (told to the other
/// capabilities: the store publishes it).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskResult {
    pub task: String,
    pub result: Vec<u8>,
}

/// A task run's outcome, back from the blocking pool.
struct TaskRun {
    task: fogmesh_consensus::task::TaskId,
    term: u64,
    outcome: Result<crate::cluster::exec::ExecOutput, crate::cluster::exec::ExecError>,
}

/// Where coordinators announce their clusters.
pub const ANNOUNCE_TOPIC: &str = "fogmesh/clusters/1";
/// Largest announcement accepted.
pub const MAX_ANNOUNCEMENT_BYTES: usize = 8 * 1024;
/// Requests this node waits on at most (joins, submissions, fetches, status queries);
/// beyond, no new one is sent until some answer (raft messages are not counted: they
/// expect nothing back).
pub const MAX_PENDING: usize = 1024;
/// Placements proposed per scheduling pass, in one batch with one flush: the coordinator is
/// bound by flushes, not decisions (BENCHMARKS.md: 1,300 placements/s in batches of 256,
/// 4,500/s in one batch of 1,000). At ~150 bytes an assignment, a batch stays well within
/// raft's 256 KiB per message.
const PLACEMENTS_PER_PASS: usize = 1024;
/// Formation, reports and submissions are looked at every this many ticks (1 s).
const STEP_TICKS: u64 = 10;

/// What this node may do, from its own ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnRoles {
    pub coordinator: bool,
    pub worker: bool,
    pub submitter: bool,
}

impl OwnRoles {
    pub const ALL: OwnRoles = OwnRoles {
        coordinator: true,
        worker: true,
        submitter: true,
    };

    pub fn from_ticket(roles: &[String]) -> Self {
        let has = |r: &str| roles.iter().any(|x| x == r);
        OwnRoles {
            coordinator: has("coordinator"),
            worker: has("worker"),
            submitter: has("submitter"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ClusterConfig {
    pub formation: formation::Timing,
    pub raft: group::Timing,
    /// The coordinator places tasks on every change and at least this often.
    pub schedule_every_ms: u64,
    pub roles: OwnRoles,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            formation: formation::LAN,
            raft: group::LAN_TIMING,
            schedule_every_ms: 5_000,
            roles: OwnRoles::ALL,
        }
    }
}

/// Counters and gauges of the cluster service.
#[derive(Debug, Clone, Default)]
pub struct ClusterMetrics {
    pub members: Gauge,
    pub term: Gauge,
    pub coordinator: Gauge,
    pub clusters_known: Gauge,
    /// Inbound messages and requests refused, by reason.
    pub refused: Family<ReasonLabel, Counter>,
    /// Membership changes this node went through or made, by kind.
    pub changes: Family<ReasonLabel, Counter>,
    pub tasks_submitted: Counter,
    /// Runs on this node, by outcome (`finished` or the failure's reason).
    pub task_runs: Family<ReasonLabel, Counter>,
    /// Assignments refused for an older term than one already seen.
    pub fenced: Counter,
    pub placements: Counter,
    pub raft_messages_in: Counter,
    pub raft_messages_out: Counter,
    /// The cluster's raft pace: ms per raft tick (100 on good links; see `consensus::pace`).
    pub raft_tick_ms: Gauge,
    pub blobs: Gauge,
}

impl ClusterMetrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "cluster_members",
            "Members of this node's cluster",
            self.members.clone(),
        );
        registry.register(
            "cluster_term",
            "Raft term of this node's cluster",
            self.term.clone(),
        );
        registry.register(
            "cluster_coordinator",
            "1 while this node coordinates its cluster",
            self.coordinator.clone(),
        );
        registry.register(
            "cluster_known",
            "Clusters whose announcements this node holds",
            self.clusters_known.clone(),
        );
        registry.register(
            "cluster_refused",
            "Cluster messages and requests refused, by reason",
            self.refused.clone(),
        );
        registry.register(
            "cluster_changes",
            "Cluster membership changes, by kind",
            self.changes.clone(),
        );
        registry.register(
            "tasks_submitted",
            "Tasks accepted from this node's control API",
            self.tasks_submitted.clone(),
        );
        registry.register(
            "task_runs",
            "Task runs on this node, by outcome",
            self.task_runs.clone(),
        );
        registry.register(
            "tasks_fenced",
            "Assignments refused as coming from an older coordinator term",
            self.fenced.clone(),
        );
        registry.register(
            "task_placements",
            "Assignments proposed by this node as coordinator",
            self.placements.clone(),
        );
        registry.register(
            "cluster_raft_messages_in",
            "Raft messages admitted",
            self.raft_messages_in.clone(),
        );
        registry.register(
            "cluster_raft_messages_out",
            "Raft messages sent",
            self.raft_messages_out.clone(),
        );
        registry.register(
            "cluster_raft_tick_ms",
            "Milliseconds per raft tick: 100 on good links, slower where round trips are long or lossy",
            self.raft_tick_ms.clone(),
        );
        registry.register(
            "task_blobs",
            "Modules, inputs and results held",
            self.blobs.clone(),
        );
    }

    fn refuse(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabel { reason }).inc();
    }

    fn change(&self, reason: &'static str) {
        self.changes.get_or_create(&ReasonLabel { reason }).inc();
    }
}

/// The cluster this node is in, as the store remembers it across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct MembershipRecord {
    cluster: String,
    /// The raft configuration the group started from: `[self]` for a founder, empty for a
    /// joiner (it learns the configuration from the log).
    founders: Vec<u64>,
    /// The coordinator a joiner asked (admitted before the log names the members).
    via: Option<ByteBuf>,
}

const MEMBERSHIP_KEY: &str = "current";

/// This node in its cluster.
struct Membership {
    cluster: String,
    /// Told apart from an earlier membership of the same cluster: reports of writes for
    /// that one are not this group's.
    epoch: u64,
    group: ClusterNode,
    /// False until the log applied our own `Join`.
    joined: bool,
    since_ms: u64,
    /// When we last heard from the coordinator (or were it).
    contact_ms: u64,
    /// Members by raft id: when each was last heard (the coordinator removes the silent).
    heard: BTreeMap<u64, u64>,
    /// Learners this coordinator added that may vote, and when: promoted to voters once
    /// heard after that.
    to_promote: BTreeMap<u64, u64>,
    hysteresis: LeadershipHysteresis,
    via: Option<PeerId>,
    /// Raft ids of members, to their PeerIds.
    peers: BTreeMap<u64, PeerId>,
    last_announce_ms: u64,
    /// What the last summary said that is announced at once when it changes: term,
    /// members, silent flags.
    announced: Option<SummaryKey>,
    last_schedule_ms: u64,
    schedule_soon: bool,
    /// When this node last proposed its capacity.
    reported_ms: u64,
    /// Whether it coordinated at its last tick (to notice gaining leadership).
    was_leader: bool,
    /// How often raft ticks, adapted to the round trips of the cluster's links.
    pace: RaftPace,
}

impl Membership {
    fn coordinator_peer(&self) -> Option<PeerId> {
        let leader = self.group.leader()?;
        self.peers.get(&leader).copied().or_else(|| {
            // A joiner's first coordinator is the one it asked.
            self.via
                .filter(|v| wire::member_id(&v.to_bytes()) == leader)
        })
    }

    fn refresh_peers(&mut self) {
        self.peers = self
            .group
            .state()
            .members()
            .keys()
            .filter_map(|node| PeerId::from_bytes(&node.0).ok())
            .map(|peer| (wire::member_id(&peer.to_bytes()), peer))
            .collect();
    }

    fn allowed_senders(&self) -> Vec<u64> {
        let mut ids = self.group.member_ids();
        if let Some(via) = self.via {
            ids.push(wire::member_id(&via.to_bytes()));
        }
        ids
    }
}

enum Situation {
    Unclustered {
        /// Since when no cluster with room was in reach.
        quiet_since_ms: u64,
        /// A join asked and not answered or not completed.
        asked: Option<(String, u64)>,
    },
    Member(Box<Membership>),
}

/// See the module docs.
pub struct ClusterService {
    keypair: Keypair,
    me: PeerId,
    me_id: u64,
    me_node: NodeId,
    config: ClusterConfig,
    blobs: Blobs,
    membership_table: Table<MembershipRecord>,
    raft_tables: RaftTables,
    /// Durable writes in flight, by token: what to do once each is on disk. Bounded by the
    /// group's readies in flight and the API's call queue.
    durable: HashMap<Token, AfterDurable>,
    next_durable: Token,
    /// Raft messages awaiting their acknowledgement, by token: to whom and when each was sent
    /// (for the pace's round trips). At most [`MAX_RAFT_IN_FLIGHT`] in all and
    /// [`MAX_RAFT_IN_FLIGHT_PER_PEER`] to one peer; beyond, new ones are dropped (raft sends
    /// again), so a stalled link does not pile up streams that would all land at once when it
    /// recovers.
    raft_in_flight: HashMap<Token, (PeerId, u64)>,
    next_raft_token: Token,
    epochs: u64,
    /// Fetches and result queries waiting for blobs read from disk, answered when the read
    /// comes back (at most [`MAX_BLOB_WAITERS`]; beyond, one is answered at once as if the
    /// blob were missing: a fetch is then asked elsewhere, a query again).
    blob_waiters: BTreeMap<blobs::Hash, Vec<BlobWaiter>>,
    situation: Situation,
    jitter_ms: u64,
    /// Clusters heard of, by id: the coordinator's PeerId and what it said.
    announcements: BTreeMap<String, (PeerId, Announcement)>,
    /// Clusters not to ask again before the time given (they refused, or a join timed out).
    avoid: BTreeMap<String, u64>,
    /// The cluster to join first (the one ours merged into).
    prefer: Option<String>,
    /// Coordinators of clusters with room being dialled, since when (at most one per
    /// announcement held).
    dialing: BTreeMap<PeerId, u64>,
    connected: HashSet<PeerId>,
    /// Where this node listens, for its announcements.
    listen_addrs: Vec<String>,
    /// While an inbound raft frame is stepped: its sender, and the raft frames for it that
    /// go back in the acknowledgement ([`ClusterResponse::Raft`]).
    reply_to: Option<(PeerId, Vec<ByteBuf>)>,
    capacity: Option<DeviceCapacity>,
    work: work::Work,
    submissions: submit::Submissions,
    pending: BTreeMap<u64, Pending>,
    next_token: u64,
    ticks: u64,
    /// Set while placing, so placements applied meanwhile do not place again re-entrantly.
    scheduling: bool,
    announce_seq: u64,
    last_event: Option<EventKey>,
    admissions: Admissions,
    view_cell: ViewCell<ClusterView>,
    /// The time of the input being handled (node time), for the few deep helpers that
    /// stamp what they propose.
    now_ms: u64,
    /// The member links last asked to be kept.
    kept_links: Vec<PeerId>,
    /// The size of our last summary on the wire (its period is budgeted by it).
    last_summary_len: usize,
    /// The held summaries as the view shows them, rebuilt only when one changes (a
    /// thousand-node mesh holds ~200, and the view is published every second).
    known_clusters: std::sync::Arc<Vec<view::KnownCluster>>,
    known_dirty: bool,
    /// The coordinators' directory changed since it was last told to telemetry.
    directory_dirty: bool,
    /// The cluster telemetry was last told this node publishes in (`None`: never told).
    told_scope: Option<Option<String>>,
    metrics: ClusterMetrics,
}

impl std::fmt::Debug for ClusterService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterService")
            .field("me", &self.me)
            .field("cluster", &self.cluster_id())
            .finish_non_exhaustive()
    }
}

/// What to do once a durable write is on disk.
#[derive(Debug)]
enum AfterDurable {
    /// The group's request `number` (and every one before it) is stored.
    Raft { epoch: u64, number: u64 },
    /// A worker's result is on this coordinator's disk: propose `Finished`, answer the worker.
    ResultStored {
        command: Box<Command>,
        cluster: String,
        answer: InboundId,
    },
    /// This node's run output is on its disk: report `Finished`.
    RunStored {
        task: fogmesh_consensus::task::TaskId,
        term: u64,
        result: blobs::Hash,
        at_ms: u64,
    },
    /// A submission from the API is stored: answer its id and hand it on.
    Submitted {
        record: Box<submit::SubmittedRecord>,
        reply: submit::SubmitReply,
    },
}

/// What the last cluster event said: state, cluster, term, coordinator, members.
type EventKey = (String, Option<String>, u64, Option<u64>, usize);

/// The part of a summary whose change is announced at once: term, members, silent flags.
type SummaryKey = (u64, Vec<ByteBuf>, Vec<bool>);

/// What an outstanding request was for.
#[derive(Debug, Clone)]
enum Pending {
    Join {
        cluster: String,
    },
    Submit {
        task: fogmesh_consensus::task::TaskId,
    },
    Report,
    Fetch {
        hash: [u8; 32],
        purpose: work::FetchFor,
    },
    Status {
        task: fogmesh_consensus::task::TaskId,
        cluster: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterSetupError {
    #[error("cluster store: {0}")]
    Store(#[from] fogmesh_store::StoreError),
    #[error("raft disk of cluster {cluster}: {reason}")]
    Group { cluster: String, reason: String },
}

impl ClusterService {
    /// The service, with the cluster this node was in before a restart restored from its
    /// raft log. Reads the store: start-up only.
    pub fn open(
        keypair: Keypair,
        store: &Store,
        config: ClusterConfig,
        admissions: Admissions,
        view_cell: ViewCell<ClusterView>,
        now_ms: u64,
        metrics: ClusterMetrics,
    ) -> Result<Self, ClusterSetupError> {
        let me = keypair.public().to_peer_id();
        let me_bytes = me.to_bytes();
        let blobs = Blobs::open(store)?;
        metrics.blobs.set(blobs.count() as i64);
        let membership_table = store.table("cluster_membership")?;
        let raft_tables = RaftTables::open(store)?;
        let submissions = submit::Submissions::open(store)?;
        let mut service = ClusterService {
            me_id: wire::member_id(&me_bytes),
            me_node: NodeId(me_bytes.clone()),
            jitter_ms: formation::founding_jitter_ms(&me_bytes, &config.formation),
            keypair,
            me,
            config,
            blobs,
            membership_table,
            raft_tables,
            durable: HashMap::new(),
            next_durable: 1,
            raft_in_flight: HashMap::new(),
            next_raft_token: 0,
            epochs: 0,
            blob_waiters: BTreeMap::new(),
            situation: Situation::Unclustered {
                quiet_since_ms: now_ms,
                asked: None,
            },
            announcements: BTreeMap::new(),
            avoid: BTreeMap::new(),
            prefer: None,
            dialing: BTreeMap::new(),
            connected: HashSet::new(),
            listen_addrs: Vec::new(),
            reply_to: None,
            capacity: None,
            work: work::Work::default(),
            submissions,
            pending: BTreeMap::new(),
            next_token: 1,
            ticks: 0,
            scheduling: false,
            announce_seq: 0,
            last_event: None,
            admissions,
            view_cell,
            now_ms,
            kept_links: Vec::new(),
            last_summary_len: 0,
            known_clusters: std::sync::Arc::default(),
            known_dirty: false,
            directory_dirty: false,
            told_scope: None,
            metrics,
        };
        if let Some(record) = service.membership_table.get(MEMBERSHIP_KEY)? {
            let via = record.via.as_ref().and_then(|b| PeerId::from_bytes(b).ok());
            let err = |reason: String| ClusterSetupError::Group {
                cluster: record.cluster.clone(),
                reason,
            };
            let storage = service
                .raft_tables
                .load(&record.cluster, &record.founders)
                .map_err(|e| err(e.to_string()))?;
            let group = service.new_group(storage).map_err(|e| err(e.to_string()))?;
            let mut membership = service.new_membership(record.cluster, group, now_ms, via);
            membership.joined = membership
                .group
                .state()
                .members()
                .contains_key(&service.me_node);
            tracing::info!(cluster = %membership.cluster, joined = membership.joined, "cluster membership restored");
            service.situation = Situation::Member(Box::new(membership));
        }
        Ok(service)
    }

    fn new_membership(
        &mut self,
        cluster: String,
        group: ClusterNode,
        now_ms: u64,
        via: Option<PeerId>,
    ) -> Membership {
        self.epochs += 1;
        let mut membership = Membership {
            cluster,
            epoch: self.epochs,
            group,
            joined: false,
            since_ms: now_ms,
            contact_ms: now_ms,
            heard: BTreeMap::new(),
            to_promote: BTreeMap::new(),
            hysteresis: LeadershipHysteresis::default(),
            via,
            peers: BTreeMap::new(),
            last_announce_ms: 0,
            announced: None,
            last_schedule_ms: 0,
            schedule_soon: true,
            reported_ms: 0,
            was_leader: false,
            pace: RaftPace::new(self.config.raft),
        };
        membership.refresh_peers();
        if let Some(capacity) = self.capacity {
            membership
                .group
                .set_priority(i64::from(capacity.capacity.score_milli));
        }
        membership
    }

    pub fn metrics(&self) -> &ClusterMetrics {
        &self.metrics
    }

    pub fn cluster_id(&self) -> Option<&str> {
        match &self.situation {
            Situation::Member(m) => Some(&m.cluster),
            Situation::Unclustered { .. } => None,
        }
    }

    /// Peers the node keeps links to for the cluster's sake (the connection budget spares
    /// them).
    pub fn member_peers(&self) -> Vec<PeerId> {
        match &self.situation {
            Situation::Member(m) => m
                .peers
                .values()
                .filter(|p| **p != self.me)
                .copied()
                .collect(),
            Situation::Unclustered { .. } => Vec::new(),
        }
    }

    fn token(&mut self, pending: Pending) -> Option<u64> {
        if self.pending.len() >= MAX_PENDING {
            return None;
        }
        let token = self.next_token;
        self.next_token += 1;
        self.pending.insert(token, pending);
        Some(token)
    }

    /// Sends a request whose answer matters; false when too many are outstanding.
    fn ask(
        &mut self,
        peer: PeerId,
        request: ClusterRequest,
        pending: Pending,
        out: &mut Outbox,
    ) -> bool {
        match self.token(pending) {
            Some(token) => {
                send(peer, &request, token, out);
                true
            }
            None => false,
        }
    }
}

/// Answers an inbound request.
fn respond(id: InboundId, answer: &ClusterResponse, out: &mut Outbox) {
    match answer.encode() {
        Ok(data) => out.respond(id, data),
        Err(error) => tracing::warn!(%error, "cluster answer not encodable"),
    }
}

/// The token of a request whose answer nobody waits for.
const NO_ANSWER: Token = 0;
/// Set in the token of a raft message, whose acknowledgement times a round trip.
const RAFT_TOKEN: Token = 1 << 63;
/// Raft messages timed at once at most.
const MAX_RAFT_IN_FLIGHT: usize = 1024;
/// Raft messages to one peer awaiting acknowledgement at most: under the protocol's stream
/// limit ([`crate::cluster::protocol::MAX_STREAMS`]), leaving room for joins, submissions and
/// fetches.
const MAX_RAFT_IN_FLIGHT_PER_PEER: usize = 24;
/// The token of a task run's job (a blob read's is [`BLOB_LOAD`]).
const TASK_RUN: Token = 0;
const BLOB_LOAD: Token = 1;

/// Sends `request` on its protocol.
fn send(peer: PeerId, request: &ClusterRequest, token: Token, out: &mut Outbox) {
    match request.encode() {
        Ok((protocol, data)) => out.push(Effect::Send {
            peer,
            protocol,
            data,
            token,
        }),
        Err(error) => {
            tracing::warn!(%error, kind = request.kind(), "cluster request not encodable")
        }
    }
}

impl Capability for ClusterService {
    fn name(&self) -> &'static str {
        "cluster"
    }

    fn topics(&self) -> Vec<String> {
        vec![ANNOUNCE_TOPIC.into()]
    }

    fn protocols(&self) -> Vec<Protocol> {
        vec![protocol::SPEC, protocol::BULK_SPEC]
    }

    fn on_start(&mut self, now_ms: u64, out: &mut Outbox) {
        self.now_ms = now_ms;
        out.timer(now_ms + group::TICK_MS, TICK);
        self.cluster_event("started", out);
    }

    fn on_gossip(&mut self, now_ms: u64, msg: GossipIn<'_>, out: &mut Outbox) -> Verdict {
        self.now_ms = now_ms;
        Verdict::Now(self.on_announcement(now_ms, msg.data, out))
    }

    fn on_request(&mut self, now_ms: u64, request: InboundRequest, out: &mut Outbox) {
        self.now_ms = now_ms;
        let decoded = match ClusterRequest::decode(request.protocol, &request.data) {
            Ok(decoded) => decoded,
            Err(error) => {
                tracing::debug!(peer_id = %request.peer, %error, "cluster request not read");
                self.metrics.refuse("malformed");
                return;
            }
        };
        let roles = self.admissions.roles_of(&request.peer);
        if let Some(answer) =
            self.handle_request(now_ms, request.peer, &roles, decoded, request.id, out)
        {
            respond(request.id, &answer, out);
        }
    }

    fn on_response(&mut self, now_ms: u64, response: Response, out: &mut Outbox) {
        self.now_ms = now_ms;
        if response.token == NO_ANSWER {
            return;
        }
        if response.token & RAFT_TOKEN != 0 {
            // A timeout is a round trip too long to measure; other failures (a closed
            // connection, a full stream table) say nothing about the link's round trips.
            let timed = match &response.result {
                Ok(_) => Some(true),
                Err(error) if error.contains("Timeout") => Some(false),
                Err(_) => None,
            };
            self.raft_acknowledged(now_ms, response.token, timed);
            if let Ok(bytes) = &response.result {
                if let Ok(ClusterResponse::Raft { frames }) = ClusterResponse::decode(bytes) {
                    for frame in frames.iter().take(protocol::MAX_REPLY_FRAMES) {
                        self.on_raft(now_ms, response.peer, frame, out);
                    }
                }
            }
            return;
        }
        let answer = response.result.and_then(|bytes| {
            ClusterResponse::decode(&bytes).map_err(|e| format!("unreadable answer: {e}"))
        });
        self.handle_response(now_ms, response.peer, response.token, answer, out);
    }

    fn on_job(
        &mut self,
        now_ms: u64,
        token: Token,
        output: Result<JobOutput, String>,
        out: &mut Outbox,
    ) {
        self.now_ms = now_ms;
        let output = match output {
            Ok(output) => output,
            Err(error) => {
                if token == TASK_RUN {
                    tracing::error!(%error, "a task run stopped abnormally");
                } else {
                    // A blob read on a failed store: the node is going to safe mode.
                    self.loads_failed(out);
                }
                return;
            }
        };
        let output = match output.downcast::<TaskRun>() {
            Ok(run) => return self.on_task_run(now_ms, run.task, run.term, run.outcome, out),
            Err(other) => other,
        };
        if let Ok(loaded) = output.downcast::<blobs::Loaded>() {
            self.on_blob_loaded(now_ms, *loaded, out);
        }
    }

    fn on_durable(
        &mut self,
        now_ms: u64,
        token: Token,
        result: Result<(), String>,
        out: &mut Outbox,
    ) {
        self.now_ms = now_ms;
        match self.durable.remove(&token) {
            Some(AfterDurable::Raft { epoch, number }) => {
                self.on_group_persisted(now_ms, epoch, number, result, out)
            }
            Some(AfterDurable::ResultStored {
                command,
                cluster,
                answer,
            }) => self.on_result_stored(*command, cluster, answer, result, out),
            // Not stored (the store failed): the node is in safe mode, nothing to report.
            Some(AfterDurable::RunStored {
                task,
                term,
                result: hash,
                at_ms,
            }) if result.is_ok() => self.report_finished(now_ms, task, term, hash, at_ms, out),
            Some(AfterDurable::Submitted { record, reply }) => {
                self.on_submission_stored(now_ms, *record, reply, result, out)
            }
            Some(AfterDurable::RunStored { .. }) | None => {}
        }
    }

    fn on_timer(&mut self, now_ms: u64, timer: TimerId, out: &mut Outbox) {
        self.now_ms = now_ms;
        if timer == TICK {
            self.tick(now_ms, out);
            out.timer(now_ms + group::TICK_MS, TICK);
        }
    }

    fn on_notice(&mut self, now_ms: u64, notice: &Notice, out: &mut Outbox) {
        self.now_ms = now_ms;
        match notice {
            Notice::PeerConnected { peer, .. } => {
                self.connected.insert(*peer);
            }
            Notice::PeerDisconnected(peer) => {
                self.connected.remove(peer);
            }
            Notice::Local { listen_addrs, .. } => {
                // Announced as where to reach the coordinator (formation::Announcement::addrs).
                self.listen_addrs = listen_addrs
                    .iter()
                    .filter(|a| a.len() <= formation::MAX_ANNOUNCED_ADDR_LEN)
                    .take(formation::MAX_ANNOUNCED_ADDRS)
                    .cloned()
                    .collect();
            }
            shared => {
                if let Some(changed) = shared.shared::<DeviceChanged>() {
                    self.capacity = Some(DeviceCapacity::of(&changed.view));
                    if let (Situation::Member(m), Some(c)) = (&mut self.situation, self.capacity) {
                        m.group.set_priority(i64::from(c.capacity.score_milli));
                    }
                    self.report_capacity(now_ms, out);
                }
            }
        }
    }
}

/// A task run as a job on the blocking pool: the module in the sandbox, a panic inside the
/// interpreter that task's failure.
pub(super) fn run_job(
    task: fogmesh_consensus::task::TaskId,
    term: u64,
    module: Vec<u8>,
    input: Vec<u8>,
    limits: crate::cluster::exec::ExecLimits,
) -> Effect {
    Effect::Job {
        lane: Lane::Blocking,
        token: TASK_RUN,
        job: Box::new(move || {
            let outcome =
                std::panic::catch_unwind(|| crate::cluster::exec::run(&module, &input, limits))
                    .unwrap_or_else(|_| {
                        Err(crate::cluster::exec::ExecError::Trap(
                            "the interpreter panicked".into(),
                        ))
                    });
            Box::new(TaskRun {
                task,
                term,
                outcome,
            }) as JobOutput
        }),
    }
}

#[cfg(test)]
mod tests;
