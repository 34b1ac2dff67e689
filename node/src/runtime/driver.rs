//! The driver: the one task that owns the swarm, and only executes.
//!
//! It turns swarm events, timer expiries, control calls and finished background work into
//! inputs for the capabilities ([`crate::runtime::capability`]) and the peer manager, and
//! their outputs into effects: publish on gossipsub, report a validation verdict, send or
//! answer a request, close connections, queue a write or a job on the storage task, run a
//! job on the blocking pool, arm a timer, tell the event stream. It knows capabilities only
//! by their index in the registration list ([`crate::capabilities`]): gossip is routed by
//! topic, requests by protocol, timers, writes and jobs by index, calls by type. It makes
//! no protocol decision of its own, touches no disk (the storage task does) and reads the
//! clock only to hand the time to its inputs.
//!
//! Local work comes before remote work: the `select!` is biased towards shutdown, timers,
//! finished background work and control calls, and only then polls the swarm. Every turn's
//! length is measured (`fogmesh_driver_turn_seconds`): what every other input waited.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fogmesh_store::{Batch, Table};
use fogmesh_transports::secure::{Refusal, SecureChannel};
use fogmesh_transports::LinkKind;
use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, PublishError, TopicHash};
use libp2p::metrics::Recorder;
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, mdns, ping, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::runtime::behaviour::{Behaviour, BehaviourEvent};
use crate::runtime::capability::{
    duration_ms, Capability, Effect, GossipId, GossipIn, JobOutput, Lane, Notice, Outbox, PathFact,
    PublishOutcome, TimerId, Token, Verdict,
};
use crate::runtime::clock::Clock;
use crate::runtime::events::{self, EventBus};
use crate::runtime::handle::{Call, CallTarget, ViewCell};
use crate::runtime::lifecycle::{Lifecycle, LifecycleInput, Phase};
use crate::runtime::peers::manager::{PeerManagerEvent, PeerRecord};
use crate::runtime::rpc::RpcEvent;
use crate::runtime::status::{PeerView, StatusView};
use crate::runtime::storage::{NodeStorage, StorageReport};

/// How often views are refreshed and the gossip mesh handed to the peer manager.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(1);
/// Least time between two rebuilds of the peers view. Rebuilding it names every known peer
/// (a base58 PeerId each); done on every connection event it took a fifth of all CPU of a
/// 100-node in-memory mesh (perf, BENCHMARKS "Mesh-wide scale"). A view at most this old
/// (or one maintenance tick, when nothing else happens) is as good for its readers.
const PEERS_VIEW_GAP: Duration = Duration::from_millis(250);
/// Least time between two rebuilds of a peers view nobody read since the last one: an idle
/// node's pings alone change it every second, and a thousand in-memory nodes rebuilding
/// theirs four times a second is work nobody asked for. A first read after a quiet spell
/// sees a view at most this old (one maintenance tick); a reader that keeps reading gets one
/// at most [`PEERS_VIEW_GAP`] old.
const UNREAD_PEERS_VIEW_GAP: Duration = Duration::from_secs(1);
/// Refused handshakes waiting to be reported on the event stream.
pub const REFUSAL_QUEUE: usize = 256;

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

/// The driver's own counters: routing failures, the lifecycle phase, and how long each turn
/// of its loop held the swarm task (the stall every other input waits behind).
#[derive(Debug, Clone)]
pub struct DriverMetrics {
    pub gossip_unrouted: prometheus_client::metrics::counter::Counter,
    /// Peer addresses dropped as implausible for the link they were heard on.
    pub addrs_dropped: prometheus_client::metrics::counter::Counter,
    /// Seconds one turn of the loop took: 5 µs to ~0.64 s in steps of 1.5x (longer turns
    /// land in the overflow bucket).
    pub turn: prometheus_client::metrics::histogram::Histogram,
    /// The longest turn since start, in seconds.
    pub turn_max: prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
    /// 1 for the current phase, 0 for the others.
    pub phase: prometheus_client::metrics::family::Family<
        PhaseLabel,
        prometheus_client::metrics::gauge::Gauge,
    >,
}

impl Default for DriverMetrics {
    fn default() -> Self {
        Self {
            gossip_unrouted: Default::default(),
            addrs_dropped: Default::default(),
            turn: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.000_005, 1.5, 30),
            ),
            turn_max: Default::default(),
            phase: Default::default(),
        }
    }
}

impl DriverMetrics {
    fn observe_turn(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        self.turn.observe(seconds);
        if seconds > self.turn_max.get() {
            self.turn_max.set(seconds);
        }
    }

    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_with_unit(
            "driver_turn",
            "Time one turn of the driver loop held the swarm task",
            prometheus_client::registry::Unit::Seconds,
            self.turn.clone(),
        );
        registry.register_with_unit(
            "driver_turn_max",
            "The longest turn of the driver loop since start",
            prometheus_client::registry::Unit::Seconds,
            self.turn_max.clone(),
        );
        registry.register(
            "gossip_unrouted",
            "Gossip messages on a topic no capability owns (rejected)",
            self.gossip_unrouted.clone(),
        );
        registry.register(
            "peer_addrs_dropped",
            "Addresses peers reported that are not kept: loopback or private addresses heard over a wider link, or undialable ones",
            self.addrs_dropped.clone(),
        );
        registry.register(
            "lifecycle_phase",
            "The node's lifecycle phase (1 for the current one)",
            self.phase.clone(),
        );
    }

    fn set_phase(&self, from: Option<Phase>, to: Phase) {
        if let Some(from) = from {
            self.phase
                .get_or_create(&PhaseLabel {
                    phase: from.to_string(),
                })
                .set(0);
        }
        self.phase
            .get_or_create(&PhaseLabel {
                phase: to.to_string(),
            })
            .set(1);
    }
}

/// Everything the driver is built from.
pub(crate) struct DriverParts {
    pub swarm: Swarm<Behaviour>,
    pub capabilities: Vec<Box<dyn Capability>>,
    pub storage: NodeStorage,
    pub storage_reports: mpsc::Receiver<StorageReport>,
    /// The runtime's own table: the address book.
    pub peers_table: Table<PeerRecord>,
    pub status: ViewCell<StatusView>,
    pub peers_view: ViewCell<Vec<PeerView>>,
    pub events: EventBus,
    pub lifecycle: Lifecycle,
    pub listeners: HashSet<ListenerId>,
    pub control_file: PathBuf,
    pub channel: SecureChannel,
    pub calls: mpsc::Receiver<Call>,
    pub clock: Clock,
    pub metrics: DriverMetrics,
    pub libp2p_metrics: libp2p::metrics::Metrics,
}

type BlockingJob = JoinHandle<(usize, Token, Result<JobOutput, String>)>;

/// See the module docs.
pub(crate) struct Driver {
    swarm: Swarm<Behaviour>,
    capabilities: Vec<Box<dyn Capability>>,
    by_type: HashMap<TypeId, usize>,
    topics: HashMap<TopicHash, usize>,
    /// One deadline (node time) per capability and timer.
    timers: BTreeMap<(usize, TimerId), u64>,
    storage: NodeStorage,
    storage_reports: mpsc::Receiver<StorageReport>,
    peers_table: Table<PeerRecord>,
    status: ViewCell<StatusView>,
    peers_view: ViewCell<Vec<PeerView>>,
    events: EventBus,
    lifecycle: Lifecycle,
    listeners: HashSet<ListenerId>,
    /// Listeners on relay circuits (a slot on each relay), apart from `listeners`: losing
    /// them all is not losing the node's own listening.
    circuits: HashMap<ListenerId, PeerId>,
    listen_addrs: Vec<libp2p::Multiaddr>,
    control_file: PathBuf,
    channel: SecureChannel,
    refusals: Option<mpsc::Receiver<Refusal>>,
    calls: mpsc::Receiver<Call>,
    jobs: futures::stream::FuturesUnordered<BlockingJob>,
    work: VecDeque<(usize, Effect)>,
    /// A capability's status changed during this turn.
    status_dirty: bool,
    /// The peers view is out of date, and when it was last rebuilt (see [`PEERS_VIEW_GAP`]).
    peers_dirty: bool,
    peers_published: std::time::Instant,
    clock: Clock,
    started_at_ms: u64,
    metrics: DriverMetrics,
    libp2p_metrics: libp2p::metrics::Metrics,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("peer_id", self.swarm.local_peer_id())
            .field("timers", &self.timers)
            .finish_non_exhaustive()
    }
}

impl Driver {
    pub(crate) fn new(p: DriverParts) -> Result<Self, gossipsub::SubscriptionError> {
        let mut swarm = p.swarm;
        let mut topics = HashMap::new();
        let mut by_type = HashMap::new();
        for (index, capability) in p.capabilities.iter().enumerate() {
            let any: &dyn Any = capability.as_ref();
            by_type.insert(any.type_id(), index);
            for topic in capability.topics() {
                let topic = IdentTopic::new(topic);
                swarm.behaviour_mut().gossipsub.subscribe(&topic)?;
                topics.insert(topic.hash(), index);
            }
        }
        p.metrics.set_phase(None, p.lifecycle.phase());
        let started_at_ms = p.clock.now_ms();
        Ok(Self {
            refusals: p.channel.watch_refusals(REFUSAL_QUEUE),
            swarm,
            capabilities: p.capabilities,
            by_type,
            topics,
            timers: BTreeMap::new(),
            storage: p.storage,
            storage_reports: p.storage_reports,
            peers_table: p.peers_table,
            status: p.status,
            peers_view: p.peers_view,
            events: p.events,
            lifecycle: p.lifecycle,
            listeners: p.listeners,
            circuits: HashMap::new(),
            listen_addrs: Vec::new(),
            control_file: p.control_file,
            channel: p.channel,
            calls: p.calls,
            jobs: futures::stream::FuturesUnordered::new(),
            work: VecDeque::new(),
            status_dirty: false,
            peers_dirty: false,
            peers_published: std::time::Instant::now(),
            clock: p.clock,
            started_at_ms,
            metrics: p.metrics,
            libp2p_metrics: p.libp2p_metrics,
        })
    }

    pub(crate) async fn run(mut self, mut shutdown: oneshot::Receiver<()>) {
        {
            let _no_disk = fogmesh_store::guard::forbid();
            for index in 0..self.capabilities.len() {
                self.with_capability(index, |c, now, out| c.on_start(now, out));
            }
            self.publish_views_now();
        }
        let mut maintenance = tokio::time::interval(MAINTENANCE_EVERY);
        maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.storage.backlogged() {
                // The storage task's queue is full: hand it the backlog before taking any
                // more input that could write (backpressure, see `NodeStorage`). Awaited
                // here rather than raced in the select, so nothing is dropped half-way.
                self.storage.drain_backlog().await;
                continue;
            }
            let next_timer = self
                .timers
                .values()
                .min()
                .map(|at| self.clock.deadline(*at));
            let started = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = sleep_until_opt(next_timer) => { let t = turn(); self.fire_due_timers(); t }
                Some(job) = self.jobs.next(), if !self.jobs.is_empty() => { let t = turn(); self.on_blocking_job(job); t }
                Some(report) = self.storage_reports.recv() => { let t = turn(); self.on_storage_report(report); t }
                _ = maintenance.tick() => { let t = turn(); self.maintain(); t }
                Some(call) = self.calls.recv() => { let t = turn(); call(&mut self); t }
                Some(refusal) = recv_opt(&mut self.refusals) => { let t = turn(); self.on_refusal(refusal); t }
                event = self.swarm.select_next_some() => { let t = turn(); self.on_swarm_event(event); t }
            };
            if std::mem::take(&mut self.status_dirty) {
                self.publish_status();
            }
            let gap = if self.peers_view.read_since_set() {
                PEERS_VIEW_GAP
            } else {
                UNREAD_PEERS_VIEW_GAP
            };
            if self.peers_dirty && self.peers_published.elapsed() >= gap {
                self.publish_peers();
            }
            self.metrics.observe_turn(started.0.elapsed());
        }
        self.drain().await;
    }

    // ---- running capabilities ----

    /// Runs one input through a capability and executes what it asks for.
    fn with_capability<R>(
        &mut self,
        index: usize,
        input: impl FnOnce(&mut dyn Capability, u64, &mut Outbox) -> R,
    ) -> R {
        let mut out = Outbox::at(self.clock.wall_ms());
        let now = self.clock.now_ms();
        let result = input(self.capabilities[index].as_mut(), now, &mut out);
        self.work.extend(out.drain().map(|e| (index, e)));
        self.execute_all();
        result
    }

    fn notify_all(&mut self, notice: &Notice) {
        let now = self.clock.now_ms();
        let wall = self.clock.wall_ms();
        for index in 0..self.capabilities.len() {
            let mut out = Outbox::at(wall);
            self.capabilities[index].on_notice(now, notice, &mut out);
            self.work.extend(out.drain().map(|e| (index, e)));
        }
        self.execute_all();
    }

    fn execute_all(&mut self) {
        while let Some((owner, effect)) = self.work.pop_front() {
            self.execute(owner, effect);
        }
    }

    fn subscribe(&mut self, owner: usize, topic: &str) {
        let topic = IdentTopic::new(topic);
        match self.topics.get(&topic.hash()) {
            Some(held) if *held == owner => {}
            Some(held) => tracing::warn!(
                %topic,
                capability = self.capabilities[owner].name(),
                owner = self.capabilities[*held].name(),
                "topic already owned by another capability; not subscribed"
            ),
            None => match self.swarm.behaviour_mut().gossipsub.subscribe(&topic) {
                Ok(_) => {
                    self.topics.insert(topic.hash(), owner);
                }
                Err(error) => tracing::warn!(%error, %topic, "not subscribed"),
            },
        }
    }

    fn execute(&mut self, owner: usize, effect: Effect) {
        match effect {
            Effect::Publish { topic, data } => {
                let outcome = match self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(IdentTopic::new(topic.clone()), data)
                {
                    Ok(_) => PublishOutcome::Sent,
                    Err(PublishError::NoPeersSubscribedToTopic) => PublishOutcome::NoSubscribers,
                    // Re-gossip of something sent recently: expected, not worth a line.
                    Err(PublishError::Duplicate) => PublishOutcome::Failed,
                    Err(error) => {
                        tracing::warn!(%error, %topic, capability = self.capabilities[owner].name(), "publish failed");
                        PublishOutcome::Failed
                    }
                };
                self.capabilities[owner].on_publish_result(&topic, outcome);
            }
            Effect::Subscribe(topic) => self.subscribe(owner, &topic),
            Effect::Unsubscribe(topic) => {
                let topic = IdentTopic::new(topic);
                if self.topics.get(&topic.hash()) == Some(&owner) {
                    self.topics.remove(&topic.hash());
                    self.swarm.behaviour_mut().gossipsub.unsubscribe(&topic);
                }
            }
            Effect::GossipVerdict { id, acceptance } => {
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&id.message, &id.source, acceptance);
            }
            Effect::Send {
                peer,
                protocol,
                data,
                token,
            } => self
                .swarm
                .behaviour_mut()
                .rpc
                .send(protocol, peer, data, owner, token),
            Effect::Respond { id, data } => {
                // The asker may have gone meanwhile: nothing to answer then.
                let _ = self.swarm.behaviour_mut().rpc.respond(id, data);
            }
            Effect::Persist(batch) => self.persist(batch),
            Effect::PersistDurable { batch, token } => {
                self.storage.persist_durable(batch, owner, token)
            }
            Effect::Job { lane, job, token } => match lane {
                Lane::Storage { durable } => self.storage.job(job, durable, owner, token),
                Lane::Blocking => self.jobs.push(tokio::task::spawn_blocking(move || {
                    // A panic inside a job is that job's failure, not the node's.
                    let output = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))
                        .map_err(|_| "the job panicked".to_owned());
                    (owner, token, output)
                })),
            },
            Effect::Timer { at_ms, timer } => {
                self.timers.insert((owner, timer), at_ms);
            }
            Effect::Event(event) => self.events.publish(event),
            Effect::Disconnect { peers, reason } => {
                self.swarm.behaviour_mut().peers.disconnect(&peers, reason)
            }
            Effect::Dial { peer } => {
                use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
                let opts = DialOpts::peer_id(peer)
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build();
                if let Err(error) = self.swarm.dial(opts) {
                    tracing::debug!(peer_id = %peer, %error, "peer not dialled");
                }
            }
            Effect::LearnAddresses { peer, addrs } => self
                .swarm
                .behaviour_mut()
                .peers
                .learn_addresses(peer, addrs),
            Effect::KeepLinks(peers) => self.swarm.behaviour_mut().peers.keep_links(owner, peers),
            Effect::Notice(notice) => {
                let now = self.clock.now_ms();
                let wall = self.clock.wall_ms();
                for other in 0..self.capabilities.len() {
                    let mut out = Outbox::at(wall);
                    self.capabilities[other].on_notice(now, &notice, &mut out);
                    self.work.extend(out.drain().map(|e| (other, e)));
                }
            }
            Effect::Radio(policy) => self.swarm.behaviour_mut().peers.set_radio_policy(policy),
            Effect::Reserve { relay, circuit } => self.reserve(relay, circuit),
            Effect::RelayService(on) => {
                use libp2p::relay::Status;
                if let Some(server) = self.swarm.behaviour_mut().relay_server.as_mut() {
                    tracing::info!(serving = on, "relay service");
                    server.set_status(Some(if on { Status::Enable } else { Status::Disable }));
                }
            }
            Effect::WalkDht => self.walk_dht(),
            Effect::ConfirmAddress(addr) => {
                tracing::info!(%addr, "external address confirmed");
                self.swarm.add_external_address(addr);
            }
            Effect::Unreserve { relay } => {
                let ids: Vec<ListenerId> = self
                    .circuits
                    .iter()
                    .filter(|(_, r)| **r == relay)
                    .map(|(id, _)| *id)
                    .collect();
                for id in ids {
                    self.swarm.remove_listener(id);
                }
            }
            Effect::RefreshStatus => self.status_dirty = true,
            Effect::StoreFailed(error) => self.store_failed(error),
        }
    }

    /// Listens on `circuit` through `relay`: the relay client asks it for a slot on the
    /// connection we have to it. The outcome comes back as path facts.
    fn reserve(&mut self, relay: PeerId, circuit: libp2p::Multiaddr) {
        match self.swarm.listen_on(circuit) {
            Ok(id) => {
                self.circuits.insert(id, relay);
            }
            Err(error) => self.notify_all(&Notice::Path(PathFact::ReservationEnded {
                relay,
                reason: error.to_string(),
            })),
        }
    }

    fn persist(&mut self, batch: Batch) {
        self.storage.persist(batch);
    }

    fn fire_due_timers(&mut self) {
        let now = self.clock.now_ms();
        let due: Vec<(usize, TimerId)> = self
            .timers
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(key, _)| *key)
            .collect();
        for (owner, timer) in due {
            self.timers.remove(&(owner, timer));
            self.with_capability(owner, |c, now, out| c.on_timer(now, timer, out));
        }
    }

    // ---- background work coming back ----

    fn on_blocking_job(
        &mut self,
        job: Result<(usize, Token, Result<JobOutput, String>), tokio::task::JoinError>,
    ) {
        match job {
            Ok((owner, token, output)) => {
                self.with_capability(owner, |c, now, out| c.on_job(now, token, output, out))
            }
            // Only a cancelled runtime ends a job this way (panics are caught in the job).
            Err(error) => tracing::error!(%error, "a job stopped abnormally"),
        }
    }

    fn on_storage_report(&mut self, report: StorageReport) {
        match report {
            StorageReport::Durable {
                owner,
                token,
                result,
            } => {
                if let Err(error) = &result {
                    self.store_failed(error.clone());
                }
                self.with_capability(owner, |c, now, out| c.on_durable(now, token, result, out));
            }
            StorageReport::Job {
                owner,
                token,
                output,
            } => {
                self.with_capability(owner, |c, now, out| c.on_job(now, token, output, out));
            }
            StorageReport::Failed(error) => self.store_failed(error),
        }
    }

    fn on_refusal(&mut self, refusal: Refusal) {
        self.events.publish(
            events::AdmissionRefused {
                remote: refusal.remote,
                direction: refusal.direction.as_str().into(),
                reason: refusal.reason.into(),
            }
            .into(),
        );
    }

    // ---- the swarm ----

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.libp2p_metrics.record(&event);
        match event {
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                if !self.listen_addrs.contains(&address) {
                    self.listen_addrs.push(address);
                }
                self.local_changed();
                self.apply_lifecycle(LifecycleInput::Listening);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                tracing::info!(%address, "no longer listening");
                self.listen_addrs.retain(|a| a != &address);
                self.local_changed();
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                addresses,
            } => {
                for address in &addresses {
                    self.listen_addrs.retain(|a| a != address);
                }
                if let Some(relay) = self.circuits.remove(&listener_id) {
                    let reason = match reason {
                        Ok(()) => "closed".to_owned(),
                        Err(error) => error.to_string(),
                    };
                    tracing::info!(relay = %relay, %reason, "relay slot ended");
                    self.local_changed();
                    self.notify_all(&Notice::Path(PathFact::ReservationEnded { relay, reason }));
                    return;
                }
                self.listeners.remove(&listener_id);
                if !addresses.is_empty() {
                    self.local_changed();
                }
                if let Err(error) = reason {
                    tracing::error!(%error, "listener closed");
                    if self.listeners.is_empty() {
                        self.apply_lifecycle(LifecycleInput::ListenFailed(error.to_string()));
                    }
                }
            }
            SwarmEvent::ListenerError { error, .. } => tracing::warn!(%error, "listener error"),
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => tracing::debug!(%send_back_addr, %error, "incoming connection failed"),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match &event {
            BehaviourEvent::Gossipsub(e) => self.libp2p_metrics.record(e),
            BehaviourEvent::Kad(e) => self.libp2p_metrics.record(e),
            BehaviourEvent::Identify(e) => self.libp2p_metrics.record(e),
            BehaviourEvent::Ping(e) => self.libp2p_metrics.record(e),
            _ => {}
        }
        match event {
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => self.on_gossip(propagation_source, message_id, message),
            BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, topic }) => {
                if self.topics.contains_key(&topic) {
                    tracing::debug!(%peer_id, %topic, "peer subscribed");
                    self.notify_all(&Notice::PeerSubscribed {
                        peer: peer_id,
                        topic: topic.into_string(),
                    });
                }
            }
            BehaviourEvent::Gossipsub(_) => {}
            BehaviourEvent::Peers(event) => self.on_peer_event(event),
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
                    for (peer, addr) in &found {
                        kad.add_address(peer, addr.clone());
                    }
                }
                self.swarm.behaviour_mut().peers.on_mdns_discovered(found);
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(lost)) => {
                self.swarm
                    .behaviour_mut()
                    .peers
                    .on_mdns_expired(lost.into_iter().map(|(p, _)| p));
            }
            BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                connection_id,
            }) => self.on_identified(peer_id, connection_id, info),
            BehaviourEvent::Identify(_) => {}
            BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result,
            }) => {
                // Failures are not acted on: the peer manager closes a connection that has
                // answered no ping for a while (libp2p-ping keeps the first failure quiet,
                // and a peer that does not speak ping never answers).
                if let Ok(rtt) = result {
                    let peers = &mut self.swarm.behaviour_mut().peers;
                    peers.on_rtt(peer, rtt);
                    peers.on_pong(peer, connection);
                }
            }
            BehaviourEvent::Kad(_) => {}
            BehaviourEvent::Autonat(event) => {
                let (reachable, error) = match event.result {
                    Ok(()) => (true, None),
                    Err(error) => (false, Some(error.to_string())),
                };
                tracing::debug!(addr = %event.tested_addr, server = %event.server, reachable, "address tested");
                self.notify_all(&Notice::Path(PathFact::AddressTested {
                    addr: event.tested_addr,
                    server: event.server,
                    reachable,
                    error,
                }));
            }
            BehaviourEvent::AutonatServer(event) => {
                tracing::debug!(client = %event.client, addr = %event.tested_addr, ok = event.result.is_ok(), "dialled a peer back");
            }
            BehaviourEvent::RelayClient(event) => {
                if let libp2p::relay::client::Event::ReservationReqAccepted {
                    relay_peer_id,
                    renewal,
                    ..
                } = event
                {
                    if !renewal {
                        tracing::info!(relay = %relay_peer_id, "relay slot reserved");
                    }
                    self.notify_all(&Notice::Path(PathFact::ReservationAccepted {
                        relay: relay_peer_id,
                        renewal,
                    }));
                }
            }
            BehaviourEvent::RelayServer(event) => {
                if let Some(fact) = crate::runtime::paths::served(&event) {
                    self.notify_all(&Notice::Path(fact));
                }
            }
            BehaviourEvent::Dcutr(libp2p::dcutr::Event {
                remote_peer_id,
                result,
            }) => {
                let (ok, error) = match result {
                    Ok(connection) => {
                        self.swarm
                            .behaviour_mut()
                            .peers
                            .on_hole_punched(remote_peer_id, connection);
                        (true, None)
                    }
                    Err(error) => (false, Some(error.to_string())),
                };
                tracing::info!(peer_id = %remote_peer_id, ok, error, "hole punch ended");
                self.notify_all(&Notice::Path(PathFact::HolePunch {
                    peer: remote_peer_id,
                    ok,
                    error,
                }));
                self.publish_views();
            }
            BehaviourEvent::Rpc(RpcEvent::Request { owner, request }) => {
                self.with_capability(owner, |c, now, out| c.on_request(now, request, out));
            }
            BehaviourEvent::Rpc(RpcEvent::Response { owner, response }) => {
                self.with_capability(owner, |c, now, out| c.on_response(now, response, out));
            }
            BehaviourEvent::Limits(never) => match never {},
        }
    }

    /// A peer told us its addresses and protocols. Only its addresses plausible for the
    /// connection we heard them on are kept and passed to the DHT (`peers::hygiene`); one
    /// that offers to relay is announced as such.
    fn on_identified(
        &mut self,
        peer: PeerId,
        connection: libp2p::swarm::ConnectionId,
        info: identify::Info,
    ) {
        use crate::runtime::peers::hygiene;
        let peers = &self.swarm.behaviour().peers;
        let Some(via) = peers.connection_addr(&peer, connection).cloned() else {
            return;
        };
        let dialled_in = peers.dialled_in(&peer, connection);
        let reported = info.listen_addrs.len();
        let addrs = hygiene::keep_plausible(info.listen_addrs, &via);
        if addrs.len() < reported {
            self.metrics
                .addrs_dropped
                .inc_by((reported - addrs.len()) as u64);
        }
        if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
            for addr in &addrs {
                kad.add_address(&peer, addr.clone());
            }
        }
        let offers_relay = info.protocols.contains(&libp2p::relay::HOP_PROTOCOL_NAME);
        if offers_relay {
            // The address we reached it at first (when we dialled it), then what it reports.
            let mut relay_addrs: Vec<_> = addrs
                .iter()
                .filter(|a| !hygiene::is_relayed(a))
                .cloned()
                .collect();
            // `via` is the connection identify came over: put it first only if it is a
            // direct one we dialled (a relay's address, known to work).
            if !hygiene::is_relayed(&via) && !dialled_in {
                relay_addrs.insert(0, via.clone());
            }
            if !relay_addrs.is_empty() {
                self.notify_all(&Notice::Path(PathFact::RelayOffered {
                    relay: peer,
                    addrs: relay_addrs,
                }));
            }
        } else {
            self.notify_all(&Notice::Path(PathFact::RelayWithdrawn { relay: peer }));
        }
        self.swarm
            .behaviour_mut()
            .peers
            .on_identified(peer, addrs, info.agent_version);
        if let (true, Some(from)) = (dialled_in, hygiene::ip_of(&via)) {
            self.notify_all(&Notice::Path(PathFact::DialledIn {
                peer,
                from,
                observed: info.observed_addr,
            }));
        }
    }

    fn on_gossip(
        &mut self,
        propagation_source: PeerId,
        message_id: gossipsub::MessageId,
        message: gossipsub::Message,
    ) {
        let Some(owner) = self.topics.get(&message.topic).copied() else {
            self.metrics.gossip_unrouted.inc();
            self.swarm
                .behaviour_mut()
                .gossipsub
                .report_message_validation_result(
                    &message_id,
                    &propagation_source,
                    MessageAcceptance::Reject,
                );
            return;
        };
        let id = GossipId {
            message: message_id,
            source: propagation_source,
        };
        let verdict = self.with_capability(owner, |c, now, out| {
            let msg = GossipIn {
                topic: message.topic.as_str(),
                propagation_source,
                author: message.source,
                data: &message.data,
                id: &id,
            };
            c.on_gossip(now, msg, out)
        });
        if let Verdict::Now(acceptance) = verdict {
            self.swarm
                .behaviour_mut()
                .gossipsub
                .report_message_validation_result(&id.message, &id.source, acceptance);
        }
    }

    fn on_peer_event(&mut self, event: PeerManagerEvent) {
        match event {
            PeerManagerEvent::Connected { peer, addr, dialer } => {
                tracing::info!(peer_id = %peer, %addr, dialer, "peer connected");
                self.events.publish(
                    events::PeerConnected {
                        peer_id: peer.to_string(),
                        addr: addr.to_string(),
                        direction: if dialer { "out" } else { "in" }.into(),
                    }
                    .into(),
                );
                self.notify_all(&Notice::PeerConnected {
                    peer,
                    link: LinkKind::of(&addr),
                });
                self.peers_changed();
            }
            PeerManagerEvent::Disconnected {
                peer,
                cause,
                newest_established,
            } => {
                tracing::info!(peer_id = %peer, %cause, "peer disconnected");
                self.channel.forget(&peer, newest_established);
                self.events.publish(
                    events::PeerDisconnected {
                        peer_id: peer.to_string(),
                        cause,
                    }
                    .into(),
                );
                self.notify_all(&Notice::PeerDisconnected(peer));
                self.peers_changed();
            }
            PeerManagerEvent::RecordChanged { peer, record } => {
                let mut batch = Batch::new();
                match batch.put(&self.peers_table, &peer.to_string(), &record) {
                    Ok(()) => self.persist(batch),
                    Err(error) => tracing::warn!(%error, "peer record not stored"),
                }
            }
            PeerManagerEvent::Forgotten(peer) => {
                let mut batch = Batch::new();
                batch.remove(&self.peers_table, &peer.to_string());
                self.persist(batch);
            }
            PeerManagerEvent::WalkDht => self.walk_dht(),
        }
    }

    /// Walks the DHT, if the node runs one. Fails only without known peers: then there is
    /// nobody to find anyway.
    fn walk_dht(&mut self) {
        if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
            let _ = kad.bootstrap();
        }
    }

    fn peers_changed(&mut self) {
        let connected = self.swarm.behaviour().peers.connected_count();
        self.local_changed();
        self.apply_lifecycle(LifecycleInput::PeerCount(connected));
        self.publish_views();
    }

    fn local_changed(&mut self) {
        let notice = Notice::Local {
            connected_peers: self.swarm.behaviour().peers.connected_count(),
            listen_addrs: self.listen_addrs.iter().map(|a| a.to_string()).collect(),
        };
        self.notify_all(&notice);
    }

    fn maintain(&mut self) {
        let mesh: Vec<PeerId> = self
            .swarm
            .behaviour()
            .gossipsub
            .all_mesh_peers()
            .copied()
            .collect();
        self.swarm.behaviour_mut().peers.set_gossip_mesh(mesh);
        self.publish_views();
    }

    fn store_failed(&mut self, error: String) {
        tracing::error!(%error, "store write failed; entering safe mode");
        // Nothing is written after a failure, buffered or durable alike: what a capability
        // wrote in order (a blob, then the raft entry naming it) stays in order.
        self.storage.stop_writing(&error);
        self.apply_lifecycle(LifecycleInput::StoreFailed(error));
    }

    fn apply_lifecycle(&mut self, input: LifecycleInput) {
        if let Some(t) = self.lifecycle.apply(self.clock.now_ms(), input) {
            tracing::info!(from = %t.from, to = %t.to, reason = %t.reason, "lifecycle transition");
            self.metrics.set_phase(Some(t.from), t.to);
            self.events.publish(
                events::Lifecycle {
                    from: t.from,
                    to: t.to,
                    reason: t.reason.clone(),
                }
                .into(),
            );
            self.notify_all(&Notice::Phase(t.to));
            self.publish_views();
        }
    }

    async fn drain(&mut self) {
        self.apply_lifecycle(LifecycleInput::ShutdownRequested);
        for id in self
            .listeners
            .drain()
            .chain(self.circuits.drain().map(|(id, _)| id))
        {
            self.swarm.remove_listener(id);
        }
        let mut batch = Batch::new();
        for (peer, record) in self.swarm.behaviour_mut().peers.snapshot() {
            if let Err(error) = batch.put(&self.peers_table, &peer.to_string(), &record) {
                tracing::warn!(%error, "peer record not stored");
            }
        }
        self.persist(batch);
        if let Err(error) = self.storage.close().await {
            tracing::error!(%error, "final store flush failed");
        }
        let _ = std::fs::remove_file(&self.control_file);
        self.publish_views_now();
        tracing::info!(peer_id = %self.swarm.local_peer_id(), "node stopped");
    }

    // ---- views ----

    /// The status now; the peers view at the end of a turn, at most every
    /// [`PEERS_VIEW_GAP`].
    fn publish_views(&mut self) {
        self.publish_status();
        self.peers_dirty = true;
    }

    /// Both views now (start and stop).
    fn publish_views_now(&mut self) {
        self.publish_status();
        self.publish_peers();
    }

    fn publish_status(&self) {
        let now = self.clock.now_ms();
        let peers_behaviour = &self.swarm.behaviour().peers;
        let storage = self.storage.stats();
        let mut status = self.status.get();
        status.phase = self.lifecycle.phase();
        status.phase_since_ms = self.lifecycle.since_ms();
        status.phase_reason = self.lifecycle.reason().to_owned();
        status.transitions = self.lifecycle.history().cloned().collect();
        status.uptime_s = now.saturating_sub(self.started_at_ms) / 1000;
        status.listen_addrs = self.listen_addrs.iter().map(|a| a.to_string()).collect();
        status.connected_peers = peers_behaviour.connected_count();
        status.known_peers = peers_behaviour.registry().len();
        status.store_errors = storage.errors;
        status.bootstrap.connected = peers_behaviour.bootstrap_connected();
        status.admission.handshakes = self.channel.stats().snapshot();
        status.clock_offset_ms = self.clock.wall_offset_ms();
        for capability in &self.capabilities {
            capability.status(now, &mut status);
        }
        self.status.set(status);
    }

    fn publish_peers(&mut self) {
        self.peers_dirty = false;
        self.peers_published = std::time::Instant::now();
        let now = self.clock.now_ms();
        let peers_behaviour = &self.swarm.behaviour().peers;
        let mut peers: Vec<PeerView> = peers_behaviour
            .registry()
            .iter()
            .map(|(peer, record)| {
                let live = peers_behaviour.live().get(peer);
                let mut view = PeerView {
                    device: None,
                    clock_offset_ms: None,
                    path: live.map(|l| l.path().to_owned()),
                    via: live.map(|l| l.via().as_str().to_owned()),
                    direct_after_ms: live.and_then(|l| l.direct_after).map(duration_ms),
                    peer_id: peer.to_string(),
                    connected: live.is_some(),
                    connection_addr: live.map(|l| l.addr.to_string()),
                    direction: live.map(|l| if l.dialer { "out" } else { "in" }.to_owned()),
                    rtt_ms: live.and_then(|l| l.rtt).map(|d| d.as_secs_f64() * 1000.0),
                    agent: record.agent.clone(),
                    known_addrs: record.addrs.clone(),
                    last_seen_ms: if live.is_some() {
                        now
                    } else {
                        record.last_seen_ms
                    },
                };
                for capability in &self.capabilities {
                    capability.peer_view(peer, &mut view);
                }
                view
            })
            .collect();
        peers.sort_by(|a, b| {
            b.connected
                .cmp(&a.connected)
                .then(b.last_seen_ms.cmp(&a.last_seen_ms))
                .then(a.peer_id.cmp(&b.peer_id))
        });
        self.peers_view.set(peers);
    }
}

impl CallTarget for Driver {
    fn call_on(
        &mut self,
        capability: TypeId,
        run: &mut dyn FnMut(&mut dyn Any, u64, &mut Outbox),
    ) -> bool {
        let Some(&index) = self.by_type.get(&capability) else {
            return false;
        };
        self.with_capability(index, |c, now, out| {
            let any: &mut dyn Any = c;
            run(any, now, out)
        });
        true
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => futures::future::pending().await,
    }
}

/// The start of one turn of the loop, and the guard that keeps the disk out of it
/// (`fogmesh_store::guard`): it lives until the turn ends, never across an await.
fn turn() -> (Instant, fogmesh_store::guard::Forbidden) {
    (Instant::now(), fogmesh_store::guard::forbid())
}

async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => futures::future::pending().await,
    }
}

/// Reads the address book the runtime keeps. Unreadable rows are skipped with a warning.
pub(crate) fn restore_peers(table: &Table<PeerRecord>) -> Vec<(PeerId, PeerRecord)> {
    let mut peers = Vec::new();
    for entry in table.entries() {
        match entry.map(|(key, record)| (key.parse::<PeerId>(), record)) {
            Ok((Ok(peer), record)) => peers.push((peer, record)),
            Ok((Err(_), _)) => tracing::warn!("skipping a stored peer whose key is not a PeerId"),
            Err(error) => tracing::warn!(%error, "skipping unreadable stored peer"),
        }
    }
    peers
}
