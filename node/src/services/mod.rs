//! Services: one pure state machine per concern of the node.
//!
//! A service never touches a socket, a clock, the store or the swarm. The driver
//! ([`crate::driver`]) hands it inputs — a gossip message on one of its topics, a timer it
//! asked for, a change in the network, the outcome of a durable write it requested — together
//! with the time, and the service answers by pushing [`Effect`]s into an [`Outbox`]: publish
//! this, persist that (durably, tell me when it is done), wake me at T, tell the event
//! stream, update this view. The driver executes effects and nothing else, so every decision
//! can be tested by feeding inputs and reading the outbox (see each service's tests).
//!
//! Time is wall-clock milliseconds since the Unix epoch (`now_ms`), the unit telemetry
//! timestamps already use. Timers are deadlines in the same unit; the driver turns them into
//! sleeps relative to its own clock, so a wall-clock step moves no deadline already set.
//!
//! The contract every service follows:
//! - it owns its state and its counters (registered once in the metrics registry; the status
//!   view reads the same counters);
//! - it names the gossip topics it owns ([`Service::topics`]); the driver routes by topic;
//! - it asks for time with [`Effect::Timer`]; one deadline per [`Timer`] kind, a new one
//!   replaces the old;
//! - it never blocks: work that may block (sensing the device) is an effect whose result
//!   comes back as an input.

pub mod cluster;
pub mod device;
pub mod kv;
pub mod relay;
pub mod revocations;
pub mod telemetry;

use libp2p::gossipsub::MessageAcceptance;
use libp2p::PeerId;

use crate::device::DeviceView;
use crate::events::NodeEvent;
use crate::node::{PeerRecord, StoredRevocation};
use crate::telemetry::ReceivedTelemetry;

/// Milliseconds of `d`, saturating: the unit services count time in.
pub fn duration_ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The label of counters kept per reason (`reason="bad_signature"`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Every timer a service can ask for. The driver keeps one deadline per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    TelemetryPublish,
    TelemetryExpire,
    RevocationRepublish,
    DeviceSense,
    RelayForward,
    RelaySweep,
    /// The cluster service's raft tick ([`fogmesh_consensus::group::TICK_MS`]).
    ClusterTick,
    /// The kv service's look at its sync sessions (every second).
    KvTick,
}

/// A write a service wants persisted. Services name what to store; the driver knows where.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreOp {
    PutTelemetry {
        origin: String,
        telemetry: Box<ReceivedTelemetry>,
    },
    RemoveTelemetry {
        origin: String,
    },
    PutOwnSeq(u64),
    PutRevocation {
        ticket_id: String,
        revocation: StoredRevocation,
    },
    PutPeer {
        peer: PeerId,
        record: PeerRecord,
    },
    RemovePeer(PeerId),
    PutHeld {
        id: String,
        record: crate::relay::HeldRecord,
    },
    RemoveHeld {
        id: String,
    },
    PutInbox {
        id: String,
        record: crate::relay::InboxRecord,
    },
    RemoveInbox {
        id: String,
    },
    PutSent {
        id: String,
        record: crate::relay::SentRecord,
    },
    RemoveSent {
        id: String,
    },
    /// Nothing new: make everything already written durable (services that write their
    /// own tables, like the kv store, ask for this to acknowledge their writes).
    Flush,
}

/// Which durable write finished; handed back with its outcome.
pub type DurableToken = u64;

/// A change of what the control API shows, applied by the driver to the shared views.
#[derive(Debug, Clone, PartialEq)]
pub enum ViewUpdate {
    Telemetry {
        origin: String,
        telemetry: Option<Box<ReceivedTelemetry>>,
    },
    OwnTelemetry(Box<ReceivedTelemetry>),
    Receipt {
        origin: String,
        seq: u64,
        published_ms: u64,
        received_ms: u64,
    },
    Device(Box<DeviceView>),
    Messages(Box<crate::relay::MessagesView>),
    Cluster(Box<cluster::ClusterView>),
}

/// What a service asks the driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Gossip `data` on `topic`; the outcome comes back through
    /// [`Service::on_publish_result`].
    Publish { topic: String, data: Vec<u8> },
    /// Write through the storage task, buffered.
    Persist(StoreOp),
    /// Write and flush; [`Service::on_durable`] is called with `token` once it is on disk.
    PersistDurable { op: StoreOp, token: DurableToken },
    /// Wake the service at `at_ms` with this timer.
    Timer { at_ms: u64, timer: Timer },
    /// Tell the live event stream.
    Event(NodeEvent),
    /// Update what the control API shows.
    View(ViewUpdate),
    /// Close every connection to these peers (their admission was withdrawn).
    Disconnect {
        peers: Vec<PeerId>,
        reason: &'static str,
    },
    /// Run one device sensing pass off the swarm task; the result comes back as
    /// [`Notice::DeviceSensed`].
    SenseDevice,
    /// Answer the control request `token` (see [`crate::api::ControlCommand`]).
    Reply { token: u64, reply: Reply },
    /// Send one relay packet to one neighbour; the hop's answer comes back to the relay
    /// service (`RelayService::hop_result`).
    RelaySend {
        peer: PeerId,
        id: crate::relay::packet::MessageId,
        packet: Vec<u8>,
    },
    /// Send a `/fogmesh/cluster/1` request; its answer goes back to the cluster service
    /// with `token` (`ClusterService::on_response`). Token 0 expects nothing back.
    ClusterSend {
        peer: PeerId,
        request: Box<crate::cluster::protocol::ClusterRequest>,
        token: u64,
    },
    /// Send a `/fogmesh/kv/1` sync request; its answer goes back to the kv service with
    /// `token` (`KvService::on_sync_response`).
    KvSync {
        peer: PeerId,
        request: Box<fogmesh_kv::sync::SyncRequest>,
        token: u64,
    },
    /// Dial a peer by the addresses the node knows for it.
    Dial { peer: PeerId },
    /// Run a task's module in the sandbox on the blocking pool; the outcome goes back to
    /// the cluster service (`ClusterService::on_task_run`).
    RunTask {
        task: fogmesh_consensus::task::TaskId,
        term: u64,
        module: Vec<u8>,
        input: Vec<u8>,
        limits: crate::exec::ExecLimits,
    },
    /// Tell every service (including this one) about something.
    Notice(Notice),
    /// The store failed: the node goes to safe mode.
    StoreFailed(String),
}

/// Answers to control requests, by kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Revocation(Result<crate::api::RevocationOutcome, String>),
    /// A message was stored and sent: its id (hex), or why not.
    Message(Result<String, String>),
    /// Writes to the kv store are on disk (or why not).
    KvWrite(Result<kv::KvWritten, kv::KvWriteError>),
}

/// Where a service writes its effects during one input.
#[derive(Debug, Default)]
pub struct Outbox {
    effects: Vec<Effect>,
}

impl Outbox {
    pub fn push(&mut self, effect: Effect) {
        self.effects.push(effect);
    }

    pub fn timer(&mut self, at_ms: u64, timer: Timer) {
        self.push(Effect::Timer { at_ms, timer });
    }

    pub fn event(&mut self, event: NodeEvent) {
        self.push(Effect::Event(event));
    }

    pub fn drain(&mut self) -> std::vec::Drain<'_, Effect> {
        self.effects.drain(..)
    }

    pub fn effects(&self) -> &[Effect] {
        &self.effects
    }

    pub fn is_empty(&self) -> bool {
        self.effects.is_empty()
    }
}

/// A gossip message on one of a service's topics, after gossipsub's duplicate filter.
#[derive(Debug, Clone, Copy)]
pub struct GossipIn<'a> {
    pub topic: &'a str,
    /// The peer that forwarded it to us.
    pub propagation_source: PeerId,
    /// The author gossipsub names (not signed by gossipsub: services check their envelopes).
    pub author: Option<PeerId>,
    pub data: &'a [u8],
}

/// Outcome of an [`Effect::Publish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    Sent,
    /// Nobody subscribed to the topic is connected yet.
    NoSubscribers,
    /// gossipsub refused it (duplicate, too large, ...).
    Failed,
}

/// Things that happened around the services, broadcast to all of them.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    PeerConnected(PeerId),
    PeerDisconnected(PeerId),
    /// A peer subscribed to a topic we know.
    PeerSubscribed {
        peer: PeerId,
        topic: String,
    },
    /// How many peers are connected and on which addresses we listen, for our own telemetry.
    Local {
        connected_peers: usize,
        listen_addrs: Vec<String>,
    },
    /// A device sensing pass finished (see [`Effect::SenseDevice`]).
    DeviceSensed {
        view: Box<DeviceView>,
        rss_bytes: Option<u64>,
    },
    /// The device service settled on a new view: power mode and limits may have changed.
    DeviceChanged(Box<DeviceView>),
    /// The lifecycle phase changed.
    Phase(crate::lifecycle::Phase),
    /// A task this node submitted finished and its result (at most a kv value) is held
    /// here: the kv service publishes it under namespace `tasks`.
    TaskResult {
        task: String,
        result: Vec<u8>,
    },
}

/// The contract between a service and the driver.
pub trait Service {
    /// A short name, for logs and the service table.
    fn name(&self) -> &'static str;

    /// The gossip topics this service owns; the driver subscribes and routes them here.
    fn topics(&self) -> Vec<String> {
        Vec::new()
    }

    /// Called once when the node runs, before any other input.
    fn on_start(&mut self, _now_ms: u64, _out: &mut Outbox) {}

    /// A message on one of [`Service::topics`]. The answer is reported to gossipsub:
    /// `Accept` forwards it, `Ignore` drops it, `Reject` drops it and penalises the sender.
    fn on_gossip(
        &mut self,
        _now_ms: u64,
        _msg: GossipIn<'_>,
        _out: &mut Outbox,
    ) -> MessageAcceptance {
        MessageAcceptance::Ignore
    }

    /// A timer this service asked for is due.
    fn on_timer(&mut self, _now_ms: u64, _timer: Timer, _out: &mut Outbox) {}

    /// Something happened around the service.
    fn on_notice(&mut self, _now_ms: u64, _notice: &Notice, _out: &mut Outbox) {}

    /// A publication this service asked for went out, or did not.
    fn on_publish_result(&mut self, _topic: &str, _outcome: PublishOutcome) {}

    /// A durable write this service asked for is on disk (`Ok`) or failed.
    fn on_durable(
        &mut self,
        _now_ms: u64,
        _token: DurableToken,
        _result: Result<(), String>,
        _out: &mut Outbox,
    ) {
    }
}
