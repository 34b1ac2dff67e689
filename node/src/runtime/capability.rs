//! The contract between a capability and the runtime.
//!
//! A capability (telemetry, relay, cluster, kv, ...) is a state machine: the runtime hands
//! it inputs — a gossip message on one of its topics, a request on one of its protocols, the
//! answer to a request it sent, a timer it asked for, the outcome of a write or a job, a
//! change around it — together with the time, and the capability answers by pushing
//! [`Effect`]s into an [`Outbox`]. It never touches a socket, a clock or the disk: reading
//! or writing its tables is a [`Job`] or a [`Batch`] the runtime runs elsewhere and reports
//! back. So every decision is tested by feeding inputs and reading the outbox.
//!
//! Time comes in two forms, both read by the runtime at the edge:
//! - `now_ms`, the argument of every input: the node's **monotonic** clock in milliseconds,
//!   anchored to the wall clock when the node started ([`crate::runtime::clock`]). Timers,
//!   timeouts, "silent for", receive times and freshness use it, so a step of the wall clock
//!   (NTP, a user, a phone's network time) moves no deadline and expires nothing early.
//! - [`Outbox::wall_ms`]: the wall clock as read for this input, for what means something
//!   to others: signed timestamps, hybrid logical clocks, ticket validity.
//!
//! The runtime knows no capability by name: it routes by topic, by protocol, by the
//! capability's index for its timers, writes and jobs, and by type for control calls
//! ([`crate::runtime::handle::NodeHandle::call`]).

use std::any::Any;
use std::sync::Arc;

use fogmesh_store::Batch;
use fogmesh_transports::LinkKind;
pub use fogmesh_wire::framing::ResponseFraming;
use libp2p::gossipsub::{MessageAcceptance, MessageId};
use libp2p::PeerId;

use crate::runtime::events::NodeEvent;
use crate::runtime::lifecycle::Phase;
pub use crate::runtime::paths::PathFact;
use crate::runtime::status::{PeerView, StatusView};

/// Milliseconds of `d`, saturating: the unit capabilities count time in.
pub fn duration_ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The label of counters kept per reason (`reason="bad_signature"`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// One of a capability's timers; each capability numbers its own. One deadline per timer:
/// a new one replaces the old.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(pub u16);

/// Which durable write or job finished; the capability's own numbering.
pub type Token = u64;

/// What a job returns: the capability that asked downcasts it to what its job produced.
pub type JobOutput = Box<dyn Any + Send>;

/// Work that may block (the disk, a sensor, a WebAssembly run), run off the swarm task.
pub type Job = Box<dyn FnOnce() -> JobOutput + Send>;

/// Where a [`Job`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// On the storage task, in order with every write queued before it (reads see them).
    /// `durable`: the answer waits until everything the job wrote is on disk.
    Storage { durable: bool },
    /// On the blocking pool, in parallel with other jobs (a task run, a sensing pass).
    Blocking,
}

/// A request-response protocol a capability speaks, and its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocol {
    pub name: &'static str,
    /// Largest request, and how a response is framed.
    pub max_request: usize,
    pub response: ResponseFraming,
    /// Streams open at once per connection, each way.
    pub max_streams: usize,
    /// An answer not back within this has failed.
    pub timeout: std::time::Duration,
}

/// A gossip message as a capability may answer later: see [`Effect::GossipVerdict`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GossipId {
    pub message: MessageId,
    pub source: PeerId,
}

/// A gossip message on one of a capability's topics, after gossipsub's duplicate filter.
#[derive(Debug, Clone, Copy)]
pub struct GossipIn<'a> {
    pub topic: &'a str,
    /// The peer that forwarded it to us.
    pub propagation_source: PeerId,
    /// The author gossipsub names (not signed by gossipsub: capabilities check their
    /// envelopes).
    pub author: Option<PeerId>,
    pub data: &'a [u8],
    /// For a verdict given later.
    pub id: &'a GossipId,
}

/// A capability's answer to a gossip message, reported to gossipsub: `Accept` forwards it,
/// `Ignore` drops it, `Reject` drops it and penalises the sender. `Later`: the capability
/// reports it with [`Effect::GossipVerdict`] once it knows (gossipsub holds the message
/// meanwhile, up to its cache's age).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Now(MessageAcceptance),
    Later,
}

impl From<MessageAcceptance> for Verdict {
    fn from(acceptance: MessageAcceptance) -> Self {
        Verdict::Now(acceptance)
    }
}

/// Names an inbound request until it is answered ([`Effect::Respond`]). An id never
/// answered is dropped with its stream when the request times out on the asker's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InboundId(pub u64);

/// A request from a neighbour on one of a capability's protocols. The sender is the
/// connection's peer, which the secure channel authenticated.
#[derive(Debug)]
pub struct InboundRequest {
    pub id: InboundId,
    pub peer: PeerId,
    pub protocol: &'static str,
    pub data: Vec<u8>,
}

/// The answer to a request this capability sent with `token` (or why there is none).
#[derive(Debug)]
pub struct Response {
    pub peer: PeerId,
    pub token: Token,
    pub result: Result<Vec<u8>, String>,
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

/// How the node's radio should run, as the power policy says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RadioPolicy {
    /// Fraction of time the radio scans and advertises.
    pub duty: fogmesh_transports::ble::driver::RadioDuty,
    /// Keep radio links only: internet links are dropped.
    pub radio_only: bool,
}

/// What a capability asks the runtime to do.
#[allow(missing_debug_implementations)]
pub enum Effect {
    /// Gossip `data` on `topic`; the outcome comes back through
    /// [`Capability::on_publish_result`].
    Publish { topic: String, data: Vec<u8> },
    /// Subscribe to a gossip topic beyond [`Capability::topics`] (e.g. one per group this
    /// node belongs to); its messages come to this capability. A topic another capability
    /// owns is refused (logged), so routing stays one owner per topic.
    Subscribe(String),
    /// Leave a topic taken with [`Effect::Subscribe`].
    Unsubscribe(String),
    /// The verdict on a gossip message answered [`Verdict::Later`].
    GossipVerdict {
        id: GossipId,
        acceptance: MessageAcceptance,
    },
    /// Send a request on `protocol` to a connected neighbour; its answer comes back to
    /// [`Capability::on_response`] with `token`.
    Send {
        peer: PeerId,
        protocol: &'static str,
        data: Vec<u8>,
        token: Token,
    },
    /// Answer an inbound request.
    Respond { id: InboundId, data: Vec<u8> },
    /// Write through the storage task, buffered (on disk within the store's flush interval).
    Persist(Batch),
    /// Write and flush; [`Capability::on_durable`] is called with `token` once on disk.
    PersistDurable { batch: Batch, token: Token },
    /// Run `job` on `lane`; its output comes back to [`Capability::on_job`] with `token`.
    Job { lane: Lane, job: Job, token: Token },
    /// Wake the capability at `at_ms` (node time) with this timer.
    Timer { at_ms: u64, timer: TimerId },
    /// Tell the live event stream.
    Event(NodeEvent),
    /// Close every connection to these peers (their admission was withdrawn).
    Disconnect {
        peers: Vec<PeerId>,
        reason: &'static str,
    },
    /// Dial a peer by the addresses the node knows for it.
    Dial { peer: PeerId },
    /// Where `peer` says it listens (from a signed record or announcement): offered to any
    /// later dial of it, the DHT's addresses aside.
    LearnAddresses {
        peer: PeerId,
        addrs: Vec<libp2p::Multiaddr>,
    },
    /// Keep links to these peers when the connection budget prunes (replaces this
    /// capability's earlier set).
    KeepLinks(Vec<PeerId>),
    /// Tell every capability (including this one).
    Notice(Notice),
    /// Run the radio this way.
    Radio(RadioPolicy),
    /// Ask `relay` for a slot by listening on `circuit` (`<relay addr>/p2p/<relay>/p2p-circuit`),
    /// so peers reach this node through it; the outcome comes back as [`PathFact`]s.
    Reserve {
        relay: PeerId,
        circuit: libp2p::Multiaddr,
    },
    /// Give up this node's slot on `relay`.
    Unreserve { relay: PeerId },
    /// Relay for others, or stop (existing circuits run to their end).
    RelayService(bool),
    /// Walk the DHT now (this node just became reachable at a new address: peers looking
    /// find it, and it finds them).
    WalkDht,
    /// `addr` is confirmed to reach this node: announce it (identify) and let the relay
    /// service run.
    ConfirmAddress(libp2p::Multiaddr),
    /// What [`Capability::status`] shows changed: refresh the status view after this turn
    /// (it is refreshed every second anyway).
    RefreshStatus,
    /// The store failed: the node goes to safe mode.
    StoreFailed(String),
}

impl std::fmt::Debug for Effect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Effect::Publish { topic, data } => f
                .debug_struct("Publish")
                .field("topic", topic)
                .field("bytes", &data.len())
                .finish(),
            Effect::Subscribe(topic) => f.debug_tuple("Subscribe").field(topic).finish(),
            Effect::Unsubscribe(topic) => f.debug_tuple("Unsubscribe").field(topic).finish(),
            Effect::GossipVerdict { acceptance, .. } => {
                f.debug_tuple("GossipVerdict").field(acceptance).finish()
            }
            Effect::Send {
                peer,
                protocol,
                data,
                token,
            } => f
                .debug_struct("Send")
                .field("peer", peer)
                .field("protocol", protocol)
                .field("bytes", &data.len())
                .field("token", token)
                .finish(),
            Effect::Respond { id, data } => f
                .debug_struct("Respond")
                .field("id", id)
                .field("bytes", &data.len())
                .finish(),
            Effect::Persist(batch) => f.debug_tuple("Persist").field(&batch.len()).finish(),
            Effect::PersistDurable { batch, token } => f
                .debug_struct("PersistDurable")
                .field("ops", &batch.len())
                .field("token", token)
                .finish(),
            Effect::Job { lane, token, .. } => f
                .debug_struct("Job")
                .field("lane", lane)
                .field("token", token)
                .finish(),
            Effect::Timer { at_ms, timer } => f
                .debug_struct("Timer")
                .field("at_ms", at_ms)
                .field("timer", timer)
                .finish(),
            Effect::Event(event) => f.debug_tuple("Event").field(event).finish(),
            Effect::Disconnect { peers, reason } => f
                .debug_struct("Disconnect")
                .field("peers", peers)
                .field("reason", reason)
                .finish(),
            Effect::Dial { peer } => f.debug_struct("Dial").field("peer", peer).finish(),
            Effect::LearnAddresses { peer, addrs } => f
                .debug_struct("LearnAddresses")
                .field("peer", peer)
                .field("addrs", addrs)
                .finish(),
            Effect::KeepLinks(peers) => f.debug_tuple("KeepLinks").field(peers).finish(),
            Effect::Notice(notice) => f.debug_tuple("Notice").field(notice).finish(),
            Effect::Radio(policy) => f.debug_tuple("Radio").field(policy).finish(),
            Effect::Reserve { relay, circuit } => f
                .debug_struct("Reserve")
                .field("relay", relay)
                .field("circuit", circuit)
                .finish(),
            Effect::Unreserve { relay } => {
                f.debug_struct("Unreserve").field("relay", relay).finish()
            }
            Effect::RelayService(on) => f.debug_tuple("RelayService").field(on).finish(),
            Effect::WalkDht => f.write_str("WalkDht"),
            Effect::ConfirmAddress(addr) => f.debug_tuple("ConfirmAddress").field(addr).finish(),
            Effect::RefreshStatus => f.write_str("RefreshStatus"),
            Effect::StoreFailed(error) => f.debug_tuple("StoreFailed").field(error).finish(),
        }
    }
}

/// Something a capability tells the others (a device reading, a finished task's result),
/// as an opaque value the interested ones downcast ([`Notice::shared`]).
pub type Shared = Arc<dyn Any + Send + Sync>;

/// Things that happened around the capabilities, told to all of them.
#[derive(Clone)]
pub enum Notice {
    PeerConnected {
        peer: PeerId,
        link: LinkKind,
    },
    PeerDisconnected(PeerId),
    /// A peer subscribed to a topic we own.
    PeerSubscribed {
        peer: PeerId,
        topic: String,
    },
    /// How many peers are connected and on which addresses we listen.
    Local {
        connected_peers: usize,
        listen_addrs: Vec<String>,
    },
    /// The lifecycle phase changed.
    Phase(Phase),
    /// Something learned about the paths to other nodes (reachability, relays, hole
    /// punches).
    Path(PathFact),
    /// From one capability to the others.
    Shared(Shared),
}

impl Notice {
    /// The shared value, if it is a `T`.
    pub fn shared<T: Any>(&self) -> Option<&T> {
        match self {
            Notice::Shared(value) => value.downcast_ref::<T>(),
            _ => None,
        }
    }

    pub fn share<T: Any + Send + Sync>(value: T) -> Notice {
        Notice::Shared(Arc::new(value))
    }
}

impl std::fmt::Debug for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::PeerConnected { peer, link } => f
                .debug_struct("PeerConnected")
                .field("peer", peer)
                .field("link", link)
                .finish(),
            Notice::PeerDisconnected(peer) => {
                f.debug_tuple("PeerDisconnected").field(peer).finish()
            }
            Notice::PeerSubscribed { peer, topic } => f
                .debug_struct("PeerSubscribed")
                .field("peer", peer)
                .field("topic", topic)
                .finish(),
            Notice::Local {
                connected_peers,
                listen_addrs,
            } => f
                .debug_struct("Local")
                .field("connected_peers", connected_peers)
                .field("listen_addrs", listen_addrs)
                .finish(),
            Notice::Phase(phase) => f.debug_tuple("Phase").field(phase).finish(),
            Notice::Path(fact) => f.debug_tuple("Path").field(fact).finish(),
            Notice::Shared(_) => f.write_str("Shared(..)"),
        }
    }
}

/// Where a capability writes its effects during one input, with the wall clock as read for
/// that input.
#[derive(Debug, Default)]
pub struct Outbox {
    effects: Vec<Effect>,
    wall_ms: u64,
}

impl Outbox {
    /// An outbox for one input read at wall-clock `wall_ms`.
    pub fn at(wall_ms: u64) -> Self {
        Self {
            effects: Vec::new(),
            wall_ms,
        }
    }

    /// The wall clock for this input: for signed timestamps and hybrid clocks only.
    pub fn wall_ms(&self) -> u64 {
        self.wall_ms
    }

    pub fn push(&mut self, effect: Effect) {
        self.effects.push(effect);
    }

    pub fn timer(&mut self, at_ms: u64, timer: TimerId) {
        self.push(Effect::Timer { at_ms, timer });
    }

    pub fn event(&mut self, event: impl Into<NodeEvent>) {
        self.push(Effect::Event(event.into()));
    }

    pub fn respond(&mut self, id: InboundId, data: Vec<u8>) {
        self.push(Effect::Respond { id, data });
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

/// The contract between a capability and the runtime. Every method has a default that
/// does nothing, so a capability implements only the inputs it cares about.
pub trait Capability: Any + Send {
    /// A short name, for logs.
    fn name(&self) -> &'static str;

    /// The gossip topics this capability owns; the runtime subscribes and routes them here.
    fn topics(&self) -> Vec<String> {
        Vec::new()
    }

    /// The request-response protocols this capability speaks; inbound requests on them
    /// come to [`Capability::on_request`].
    fn protocols(&self) -> Vec<Protocol> {
        Vec::new()
    }

    /// Called once when the node runs, before any other input.
    fn on_start(&mut self, _now_ms: u64, _out: &mut Outbox) {}

    /// A message on one of [`Capability::topics`].
    fn on_gossip(&mut self, _now_ms: u64, _msg: GossipIn<'_>, _out: &mut Outbox) -> Verdict {
        Verdict::Now(MessageAcceptance::Ignore)
    }

    /// A request on one of [`Capability::protocols`]; answered with [`Effect::Respond`],
    /// now or later.
    fn on_request(&mut self, _now_ms: u64, _request: InboundRequest, _out: &mut Outbox) {}

    /// The answer to an [`Effect::Send`].
    fn on_response(&mut self, _now_ms: u64, _response: Response, _out: &mut Outbox) {}

    /// A timer this capability asked for is due.
    fn on_timer(&mut self, _now_ms: u64, _timer: TimerId, _out: &mut Outbox) {}

    /// Something happened around the capability.
    fn on_notice(&mut self, _now_ms: u64, _notice: &Notice, _out: &mut Outbox) {}

    /// A publication this capability asked for went out, or did not.
    fn on_publish_result(&mut self, _topic: &str, _outcome: PublishOutcome) {}

    /// A durable write this capability asked for is on disk (`Ok`) or failed.
    fn on_durable(
        &mut self,
        _now_ms: u64,
        _token: Token,
        _result: Result<(), String>,
        _out: &mut Outbox,
    ) {
    }

    /// A job this capability asked for finished (`Err`: it panicked or the store failed).
    fn on_job(
        &mut self,
        _now_ms: u64,
        _token: Token,
        _output: Result<JobOutput, String>,
        _out: &mut Outbox,
    ) {
    }

    /// Fills this capability's part of the status view (every second, and when peers or
    /// the lifecycle change).
    fn status(&self, _now_ms: u64, _status: &mut StatusView) {}

    /// Adds what this capability knows of a peer to its row in the peers view.
    fn peer_view(&self, _peer: &PeerId, _view: &mut PeerView) {}
}
