//! The driver: the one task that owns the swarm, and only executes.
//!
//! It turns swarm events, timer expiries, control requests and finished background work
//! into inputs for the services ([`crate::services`]) and the peer manager
//! ([`crate::peer_manager`]), and their outputs into effects: publish on gossipsub, report a
//! validation verdict, close connections, write to the store, arm a timer, tell the event
//! stream, update a view. It makes no protocol decision of its own. Gossip is routed by a
//! topic → service table built from each service's [`Service::topics`].
//!
//! Local work comes before remote work: the `select!` is biased towards shutdown, timers,
//! finished background work and control requests, and only then polls the swarm.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fogmesh_transports::ble::driver::{BleDriver as _, SharedDriver};
use fogmesh_transports::secure::{Refusal, SecureChannel};
use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, PublishError, TopicHash};
use libp2p::metrics::Recorder;
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, mdns, ping, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::api::{self, now_ms, ControlCommand, PeerView, RevocationOutcome, SharedState};
use crate::cluster::protocol as cluster_protocol;
use crate::device::{DeviceMonitor, DeviceView};
use crate::events::{EventBus, NodeEvent};
use crate::exec::{ExecError, ExecOutput};
use crate::lifecycle::{Lifecycle, LifecycleInput, Phase};
use crate::node::{Behaviour, BehaviourEvent};
use crate::peer_manager::PeerManagerEvent;
use crate::relay::packet::MessageId;
use crate::relay::protocol::{self as relay_protocol, HOP_ACCEPTED, HOP_REFUSED};
use crate::services::cluster::{ClusterService, PeerRoles};
use crate::services::device::DeviceService;
use crate::services::kv::KvService;
use crate::services::relay::{HopOutcome, LinkKind, RelayService, SendRequest};
use crate::services::revocations::RevocationService;
use crate::services::telemetry::TelemetryService;
use crate::services::{
    Effect, GossipIn, Notice, Outbox, PublishOutcome, Reply, Service, Timer, ViewUpdate,
};
use crate::storage::{NodeStorage, StorageReport};

/// How often views are refreshed and the gossip mesh handed to the peer manager.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(1);
/// Kademlia walk cadence once peers are known, and the delay of the first one (plus up to
/// the same again in jitter, so a fleet started together does not walk at once).
const KAD_WALK_EVERY: Duration = Duration::from_secs(300);
const KAD_FIRST_WALK: Duration = Duration::from_secs(20);
/// Refused handshakes waiting to be reported on the event stream.
pub const REFUSAL_QUEUE: usize = 256;

/// Which service a topic, timer or durable write belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceId {
    Telemetry,
    Revocations,
    Device,
    Relay,
    Cluster,
    Kv,
}

impl ServiceId {
    pub const ALL: [ServiceId; 6] = [
        ServiceId::Telemetry,
        ServiceId::Revocations,
        ServiceId::Device,
        ServiceId::Relay,
        ServiceId::Cluster,
        ServiceId::Kv,
    ];

    fn owning(timer: Timer) -> ServiceId {
        match timer {
            Timer::TelemetryPublish | Timer::TelemetryExpire => ServiceId::Telemetry,
            Timer::RevocationRepublish => ServiceId::Revocations,
            Timer::DeviceSense => ServiceId::Device,
            Timer::RelayForward | Timer::RelaySweep => ServiceId::Relay,
            Timer::ClusterTick => ServiceId::Cluster,
            Timer::KvTick => ServiceId::Kv,
        }
    }
}

/// The node's services. A new concern is one more field here and one more [`ServiceId`].
#[derive(Debug)]
pub struct Services {
    pub telemetry: TelemetryService,
    pub revocations: RevocationService,
    pub device: DeviceService,
    pub relay: RelayService,
    pub cluster: ClusterService,
    pub kv: KvService,
}

impl Services {
    fn get(&mut self, id: ServiceId) -> &mut dyn Service {
        match id {
            ServiceId::Telemetry => &mut self.telemetry,
            ServiceId::Revocations => &mut self.revocations,
            ServiceId::Device => &mut self.device,
            ServiceId::Relay => &mut self.relay,
            ServiceId::Cluster => &mut self.cluster,
            ServiceId::Kv => &mut self.kv,
        }
    }
}

/// The node's Bluetooth radio, as the driver sees it: the power policy sets its duty cycle,
/// and (when `discovers`) the devices it hears are dialled.
pub(crate) struct Radio {
    pub driver: SharedDriver,
    /// Dial the devices in range whose identity the radio learned (offline nodes). Tests on
    /// the in-process radio dial explicitly instead.
    pub discovers: bool,
}

impl Radio {
    /// Neighbours to dial: those whose identity is known, by the side with the lower device
    /// id (so two neighbours make one link, not two).
    fn to_dial(&self) -> Vec<(PeerId, libp2p::Multiaddr)> {
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

/// Everything the driver is built from.
pub(crate) struct DriverParts {
    /// The node's Bluetooth radio, if it has one (the power policy may then restrict the
    /// node to it).
    pub radio: Option<Radio>,
    pub swarm: Swarm<Behaviour>,
    pub services: Services,
    pub storage: NodeStorage,
    pub storage_reports: mpsc::Receiver<StorageReport>,
    pub shared: Arc<SharedState>,
    pub events: EventBus,
    pub lifecycle: Lifecycle,
    pub listeners: HashSet<ListenerId>,
    pub control_file: PathBuf,
    pub channel: SecureChannel,
    /// No mesh configured: every peer has every role.
    pub open_mesh: bool,
    pub commands: mpsc::Receiver<ControlCommand>,
    pub device_monitor: DeviceMonitor,
    pub started_at_ms: u64,
    pub metrics: DriverMetrics,
    pub libp2p_metrics: libp2p::metrics::Metrics,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

/// The driver's own counters: routing failures, the lifecycle phase, and how long each turn
/// of its loop held the swarm task (the stall every other input waits behind).
#[derive(Debug, Clone)]
pub struct DriverMetrics {
    pub gossip_unrouted: prometheus_client::metrics::counter::Counter,
    /// Seconds one turn of the loop took: 5 µs to ~1 s in steps of 1.5x.
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
            "Gossip messages on a topic no service owns (rejected)",
            self.gossip_unrouted.clone(),
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

type SensePass = JoinHandle<(DeviceMonitor, DeviceView, Option<u64>)>;
type TaskRun = JoinHandle<(
    fogmesh_consensus::task::TaskId,
    u64,
    Result<ExecOutput, ExecError>,
)>;

/// See the module docs.
pub struct Driver {
    swarm: Swarm<Behaviour>,
    services: Services,
    radio: Option<Radio>,
    topics: HashMap<TopicHash, ServiceId>,
    timers: BTreeMap<Timer, u64>,
    storage: NodeStorage,
    durable_done: mpsc::Receiver<StorageReport>,
    shared: Arc<SharedState>,
    events: EventBus,
    lifecycle: Lifecycle,
    listeners: HashSet<ListenerId>,
    listen_addrs: Vec<libp2p::Multiaddr>,
    control_file: PathBuf,
    channel: SecureChannel,
    open_mesh: bool,
    refusals: Option<mpsc::Receiver<Refusal>>,
    commands: mpsc::Receiver<ControlCommand>,
    replies: HashMap<u64, PendingReply>,
    /// Relay packets sent and not answered yet: which neighbour, which message.
    relay_hops: HashMap<libp2p::request_response::OutboundRequestId, (PeerId, MessageId)>,
    /// Cluster requests whose answer the cluster service waits for, by its token.
    cluster_requests: HashMap<libp2p::request_response::OutboundRequestId, (PeerId, u64)>,
    /// Kv sync requests, by the kv service's token.
    kv_requests: HashMap<libp2p::request_response::OutboundRequestId, u64>,
    /// Task runs on the blocking pool.
    task_runs: futures::stream::FuturesUnordered<TaskRun>,
    next_request: u64,
    device_monitor: Option<DeviceMonitor>,
    sensing: Option<SensePass>,
    work: VecDeque<(ServiceId, Effect)>,
    next_kad_walk: tokio::time::Instant,
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
        let mut services = p.services;
        let mut topics = HashMap::new();
        for id in ServiceId::ALL {
            for topic in services.get(id).topics() {
                let topic = IdentTopic::new(topic);
                swarm.behaviour_mut().gossipsub.subscribe(&topic)?;
                topics.insert(topic.hash(), id);
            }
        }
        let jitter = KAD_FIRST_WALK.mul_f64(rand::random::<f64>());
        p.metrics.set_phase(None, p.lifecycle.phase());
        Ok(Self {
            refusals: p.channel.watch_refusals(REFUSAL_QUEUE),
            radio: p.radio,
            swarm,
            services,
            topics,
            timers: BTreeMap::new(),
            storage: p.storage,
            durable_done: p.storage_reports,
            shared: p.shared,
            events: p.events,
            lifecycle: p.lifecycle,
            listeners: p.listeners,
            listen_addrs: Vec::new(),
            control_file: p.control_file,
            channel: p.channel,
            open_mesh: p.open_mesh,
            commands: p.commands,
            replies: HashMap::new(),
            relay_hops: HashMap::new(),
            cluster_requests: HashMap::new(),
            kv_requests: HashMap::new(),
            task_runs: futures::stream::FuturesUnordered::new(),
            next_request: 0,
            device_monitor: Some(p.device_monitor),
            sensing: None,
            work: VecDeque::new(),
            next_kad_walk: tokio::time::Instant::now() + KAD_FIRST_WALK + jitter,
            started_at_ms: p.started_at_ms,
            metrics: p.metrics,
            libp2p_metrics: p.libp2p_metrics,
        })
    }

    pub async fn run(mut self, mut shutdown: oneshot::Receiver<()>) {
        let now = now_ms();
        for id in ServiceId::ALL {
            self.with_service(id, |s, out| s.on_start(now, out));
        }
        self.publish_views();
        let mut maintenance = tokio::time::interval(MAINTENANCE_EVERY);
        maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_timer = self.next_timer_instant();
            if self.storage.backlogged() {
                // The storage task's queue is full: hand it the backlog before taking any
                // more input that could write (backpressure, see `NodeStorage`). Awaited
                // here rather than raced in the select, so no batch is ever dropped half-way.
                self.storage.drain_backlog().await;
                continue;
            }
            let turn = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = sleep_until_opt(next_timer) => { let t = std::time::Instant::now(); self.fire_due_timers(); t }
                Some(pass) = poll_opt(&mut self.sensing) => { let t = std::time::Instant::now(); self.on_sensed(pass); t }
                Some(run) = self.task_runs.next(), if !self.task_runs.is_empty() => { let t = std::time::Instant::now(); self.on_task_run(run); t }
                Some(report) = self.durable_done.recv() => { let t = std::time::Instant::now(); self.on_storage_report(report); t }
                _ = maintenance.tick() => { let t = std::time::Instant::now(); self.maintain(); t }
                Some(command) = self.commands.recv() => { let t = std::time::Instant::now(); self.on_command(command); t }
                Some(refusal) = recv_opt(&mut self.refusals) => { let t = std::time::Instant::now(); self.on_refusal(refusal); t }
                event = self.swarm.select_next_some() => { let t = std::time::Instant::now(); self.on_swarm_event(event); t }
            };
            self.metrics.observe_turn(turn.elapsed());
        }
        self.drain().await;
    }

    // ---- running services ----

    /// Runs one input through a service and executes what it asks for.
    fn with_service<R>(
        &mut self,
        id: ServiceId,
        input: impl FnOnce(&mut dyn Service, &mut Outbox) -> R,
    ) -> R {
        let mut out = Outbox::default();
        let result = input(self.services.get(id), &mut out);
        self.work.extend(out.drain().map(|e| (id, e)));
        self.execute_all();
        result
    }

    /// The same through a service's typed entry points (requests, answers, runs, control
    /// requests) rather than the [`Service`] trait.
    fn with_typed<S, R>(
        &mut self,
        id: ServiceId,
        pick: impl FnOnce(&mut Services) -> &mut S,
        input: impl FnOnce(&mut S, &mut Outbox) -> R,
    ) -> R {
        let mut out = Outbox::default();
        let result = input(pick(&mut self.services), &mut out);
        self.work.extend(out.drain().map(|e| (id, e)));
        self.execute_all();
        result
    }

    fn with_cluster<R>(&mut self, input: impl FnOnce(&mut ClusterService, &mut Outbox) -> R) -> R {
        self.with_typed(ServiceId::Cluster, |s| &mut s.cluster, input)
    }

    fn with_relay<R>(&mut self, input: impl FnOnce(&mut RelayService, &mut Outbox) -> R) -> R {
        self.with_typed(ServiceId::Relay, |s| &mut s.relay, input)
    }

    fn with_kv<R>(&mut self, input: impl FnOnce(&mut KvService, &mut Outbox) -> R) -> R {
        self.with_typed(ServiceId::Kv, |s| &mut s.kv, input)
    }

    fn notify_all(&mut self, notice: &Notice) {
        let now = now_ms();
        for id in ServiceId::ALL {
            let mut out = Outbox::default();
            self.services.get(id).on_notice(now, notice, &mut out);
            self.work.extend(out.drain().map(|e| (id, e)));
        }
        self.execute_all();
    }

    fn execute_all(&mut self) {
        while let Some((id, effect)) = self.work.pop_front() {
            self.execute(id, effect);
        }
    }

    fn execute(&mut self, id: ServiceId, effect: Effect) {
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
                        tracing::warn!(%error, %topic, service = self.services.get(id).name(), "publish failed");
                        PublishOutcome::Failed
                    }
                };
                self.services.get(id).on_publish_result(&topic, outcome);
            }
            Effect::Persist(op) => {
                if self.lifecycle.phase() != Phase::SafeMode {
                    self.storage.persist(op);
                }
            }
            Effect::PersistDurable { op, token } => self.storage.persist_durable(op, id, token),
            Effect::Timer { at_ms, timer } => {
                self.timers.insert(timer, at_ms);
            }
            Effect::Event(event) => self.events.publish(event),
            Effect::View(update) => self.apply_view(update),
            Effect::Disconnect { peers, reason } => {
                self.swarm.behaviour_mut().peers.disconnect(&peers, reason)
            }
            Effect::SenseDevice => self.start_sensing(),
            Effect::Reply { token, reply } => match (self.replies.remove(&token), reply) {
                (Some(PendingReply::Revocation(tx)), Reply::Revocation(outcome)) => {
                    let _ = tx.send(outcome);
                }
                (Some(PendingReply::Message(tx)), Reply::Message(outcome)) => {
                    let _ = tx.send(outcome);
                }
                (Some(PendingReply::KvWrite(tx)), Reply::KvWrite(outcome)) => {
                    let _ = tx.send(outcome);
                }
                (pending, reply) => {
                    tracing::error!(
                        ?reply,
                        waiting = pending.is_some(),
                        "reply of the wrong kind"
                    );
                }
            },
            Effect::RelaySend { peer, id, packet } => {
                let request = self.swarm.behaviour_mut().relay.send_request(&peer, packet);
                self.relay_hops.insert(request, (peer, id));
            }
            Effect::Notice(notice) => {
                if let Notice::DeviceChanged(view) = &notice {
                    self.follow_power_policy(view);
                }
                let now = now_ms();
                for other in ServiceId::ALL {
                    let mut out = Outbox::default();
                    self.services.get(other).on_notice(now, &notice, &mut out);
                    self.work.extend(out.drain().map(|e| (other, e)));
                }
            }
            Effect::StoreFailed(error) => self.store_failed(error),
            Effect::ClusterSend {
                peer,
                request,
                token,
            } => {
                let behaviour = self.swarm.behaviour_mut();
                let request_id = if request.is_bulk() {
                    behaviour.cluster_bulk.send_request(&peer, *request)
                } else {
                    behaviour.cluster.send_request(&peer, *request)
                };
                if token != 0 {
                    self.cluster_requests.insert(request_id, (peer, token));
                }
            }
            Effect::KvSync {
                peer,
                request,
                token,
            } => {
                let request_id = self.swarm.behaviour_mut().kv.send_request(&peer, *request);
                self.kv_requests.insert(request_id, token);
            }
            Effect::Dial { peer } => {
                use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
                let opts = DialOpts::peer_id(peer)
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build();
                if let Err(error) = self.swarm.dial(opts) {
                    tracing::debug!(peer_id = %peer, %error, "cluster peer not dialled");
                }
            }
            Effect::RunTask {
                task,
                term,
                module,
                input,
                limits,
            } => {
                self.task_runs.push(tokio::task::spawn_blocking(move || {
                    // A panic inside the interpreter is that task's failure, not a lost run.
                    let outcome =
                        std::panic::catch_unwind(|| crate::exec::run(&module, &input, limits))
                            .unwrap_or_else(|_| {
                                Err(ExecError::Trap("the interpreter panicked".into()))
                            });
                    (task, term, outcome)
                }));
            }
        }
    }

    fn on_task_run(
        &mut self,
        run: Result<
            (
                fogmesh_consensus::task::TaskId,
                u64,
                Result<ExecOutput, ExecError>,
            ),
            tokio::task::JoinError,
        >,
    ) {
        match run {
            Ok((task, term, outcome)) => {
                let now = now_ms();
                self.with_cluster(|c, out| c.on_task_run(now, task, term, outcome, out));
            }
            Err(error) => tracing::error!(%error, "a task run stopped abnormally"),
        }
    }

    fn roles_of(&self, peer: &PeerId) -> PeerRoles {
        if self.open_mesh {
            PeerRoles(None)
        } else {
            PeerRoles(Some(
                self.channel
                    .admission_of(peer)
                    .map(|a| a.roles)
                    .unwrap_or_default(),
            ))
        }
    }

    fn on_cluster_event(&mut self, event: cluster_protocol::Event, bulk: bool) {
        use libp2p::request_response::{Event, Message};
        let now = now_ms();
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let roles = self.roles_of(&peer);
                let answer =
                    self.with_cluster(|c, out| c.on_request(now, peer, &roles, request, out));
                // The peer may have gone meanwhile: nothing to answer then.
                let behaviour = self.swarm.behaviour_mut();
                let _ = if bulk {
                    behaviour.cluster_bulk.send_response(channel, answer)
                } else {
                    behaviour.cluster.send_response(channel, answer)
                };
            }
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some((_, token)) = self.cluster_requests.remove(&request_id) {
                    self.with_cluster(|c, out| c.on_response(now, peer, token, Ok(response), out));
                }
            }
            Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            } => {
                if let Some((_, token)) = self.cluster_requests.remove(&request_id) {
                    let error = error.to_string();
                    self.with_cluster(|c, out| c.on_response(now, peer, token, Err(error), out));
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(peer_id = %peer, %error, "cluster request not read");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    fn on_kv_event(&mut self, event: crate::kv::Event) {
        use libp2p::request_response::{Event, Message};
        let now = now_ms();
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let answer = self.with_kv(|kv, out| kv.on_sync_request(now, peer, request, out));
                // The peer may have gone meanwhile: nothing to answer then.
                let _ = self.swarm.behaviour_mut().kv.send_response(channel, answer);
            }
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(token) = self.kv_requests.remove(&request_id) {
                    self.with_kv(|kv, out| {
                        kv.on_sync_response(now, peer, token, Ok(response), out)
                    });
                }
            }
            Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            } => {
                if let Some(token) = self.kv_requests.remove(&request_id) {
                    let error = error.to_string();
                    self.with_kv(|kv, out| kv.on_sync_response(now, peer, token, Err(error), out));
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(peer_id = %peer, %error, "kv sync request not read");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    fn next_timer_instant(&self) -> Option<tokio::time::Instant> {
        let earliest = *self.timers.values().min()?;
        let wait = earliest.saturating_sub(now_ms());
        Some(tokio::time::Instant::now() + Duration::from_millis(wait))
    }

    fn fire_due_timers(&mut self) {
        let now = now_ms();
        let due: Vec<Timer> = self
            .timers
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(t, _)| *t)
            .collect();
        for timer in due {
            self.timers.remove(&timer);
            self.with_service(ServiceId::owning(timer), |s, out| {
                s.on_timer(now, timer, out)
            });
        }
    }

    // ---- background work coming back ----

    fn start_sensing(&mut self) {
        let Some(mut monitor) = self.device_monitor.take() else {
            return;
        };
        self.sensing = Some(tokio::task::spawn_blocking(move || {
            let view = monitor.pass(now_ms());
            let rss = monitor.rss_bytes();
            (monitor, view, rss)
        }));
    }

    fn on_sensed(
        &mut self,
        pass: Result<(DeviceMonitor, DeviceView, Option<u64>), tokio::task::JoinError>,
    ) {
        self.sensing = None;
        match pass {
            Ok((monitor, view, rss_bytes)) => {
                self.device_monitor = Some(monitor);
                self.notify_all(&Notice::DeviceSensed {
                    view: Box::new(view),
                    rss_bytes,
                });
            }
            // The sensor panicked: sensing stops; the node goes on without device readings.
            Err(error) => tracing::error!(%error, "device sensing failed; no more device readings"),
        }
    }

    fn on_storage_report(&mut self, report: StorageReport) {
        match report {
            StorageReport::Durable {
                service,
                token,
                result,
            } => {
                if let Err(error) = &result {
                    self.store_failed(error.clone());
                }
                let now = now_ms();
                self.with_service(service, |s, out| s.on_durable(now, token, result, out));
            }
            StorageReport::Failed(error) => self.store_failed(error),
        }
    }

    fn on_refusal(&mut self, refusal: Refusal) {
        self.events.publish(NodeEvent::AdmissionRefused {
            remote: refusal.remote,
            direction: refusal.direction.as_str().into(),
            reason: refusal.reason.into(),
        });
    }

    fn on_command(&mut self, command: ControlCommand) {
        match command {
            ControlCommand::SendMessage {
                to,
                app,
                data,
                reply,
            } => {
                self.next_request += 1;
                let request = self.next_request;
                self.replies.insert(request, PendingReply::Message(reply));
                let now = now_ms();
                self.with_relay(|relay, out| {
                    relay.submit(now, request, SendRequest { to, app, data }, out)
                });
            }
            ControlCommand::Task(command) => self.on_task_command(command),
            ControlCommand::Kv(command) => self.on_kv_command(command),
            ControlCommand::Revoke { revocation, reply } => {
                self.next_request += 1;
                let request = self.next_request;
                self.replies
                    .insert(request, PendingReply::Revocation(reply));
                let now = now_ms();
                // A typed entry point: the control API speaks to this service by name.
                let mut out = Outbox::default();
                self.services
                    .revocations
                    .submit(now, request, revocation, &mut out);
                self.work
                    .extend(out.drain().map(|e| (ServiceId::Revocations, e)));
                self.execute_all();
            }
        }
    }

    fn on_kv_command(&mut self, command: api::KvCommand) {
        use api::KvCommand;
        match command {
            KvCommand::Write { writes, reply } => {
                self.next_request += 1;
                let request = self.next_request;
                let now = now_ms();
                match self.with_kv(|kv, out| kv.write(now, request, writes, out)) {
                    // The flush reports back through the storage channel, read only after
                    // this returns: the reply is registered before its answer can come.
                    Ok(()) => {
                        self.replies.insert(request, PendingReply::KvWrite(reply));
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            KvCommand::Get {
                namespace,
                key,
                reply,
            } => {
                let _ = reply.send(self.services.kv.get(&namespace, &key));
            }
            KvCommand::List {
                namespace,
                prefix,
                after,
                limit,
                deleted,
                reply,
            } => {
                let _ = reply.send(self.services.kv.list(
                    &namespace,
                    &prefix,
                    after.as_deref(),
                    limit,
                    deleted,
                ));
            }
        }
    }

    fn on_task_command(&mut self, command: api::TaskCommand) {
        use api::TaskCommand;
        let now = now_ms();
        match command {
            TaskCommand::Submit { task, reply } => {
                let outcome = self.with_cluster(|c, out| {
                    let outcome = c.submit(now, task, out);
                    c.publish_view(now, out);
                    outcome
                });
                let _ = reply.send(outcome.map(|id| id.to_string()).map_err(|e| e.to_string()));
            }
            TaskCommand::Status { id, reply } => {
                let _ = reply.send(self.services.cluster.task_view(&id));
            }
            TaskCommand::Cancel { id, reply } => {
                let outcome = self.with_cluster(|c, out| c.cancel(&id, out));
                let _ = reply.send(outcome);
            }
            TaskCommand::Result { id, reply } => {
                let _ = reply.send(self.services.cluster.result(&id));
            }
        }
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
                ..
            } => {
                self.listeners.remove(&listener_id);
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
            }) => {
                let acceptance = match self.topics.get(&message.topic).copied() {
                    Some(id) => {
                        let now = now_ms();
                        let msg = GossipIn {
                            topic: message.topic.as_str(),
                            propagation_source,
                            author: message.source,
                            data: &message.data,
                        };
                        let mut out = Outbox::default();
                        let verdict = self.services.get(id).on_gossip(now, msg, &mut out);
                        self.work.extend(out.drain().map(|e| (id, e)));
                        self.execute_all();
                        verdict
                    }
                    None => {
                        self.metrics.gossip_unrouted.inc();
                        MessageAcceptance::Reject
                    }
                };
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
            }
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
                for (peer, addr) in &found {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(peer, addr.clone());
                }
                self.swarm.behaviour_mut().peers.on_mdns_discovered(found);
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(lost)) => {
                self.swarm
                    .behaviour_mut()
                    .peers
                    .on_mdns_expired(lost.into_iter().map(|(p, _)| p));
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                for addr in &info.listen_addrs {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, addr.clone());
                }
                self.swarm.behaviour_mut().peers.on_identified(
                    peer_id,
                    info.listen_addrs,
                    info.agent_version,
                );
            }
            BehaviourEvent::Identify(_) => {}
            BehaviourEvent::Ping(ping::Event { peer, result, .. }) => {
                if let Ok(rtt) = result {
                    self.swarm.behaviour_mut().peers.on_rtt(peer, rtt);
                }
            }
            BehaviourEvent::Kad(_) => {}
            BehaviourEvent::Relay(event) => self.on_relay_event(event),
            BehaviourEvent::Cluster(event) => self.on_cluster_event(event, false),
            BehaviourEvent::ClusterBulk(event) => self.on_cluster_event(event, true),
            BehaviourEvent::Kv(event) => self.on_kv_event(event),
            BehaviourEvent::Limits(never) => match never {},
        }
    }

    fn on_relay_event(&mut self, event: relay_protocol::Event) {
        use libp2p::request_response::{Event, Message};
        let now = now_ms();
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let accepted =
                    self.with_relay(|relay, out| relay.on_packet(now, peer, &request, out));
                let answer = if accepted { HOP_ACCEPTED } else { HOP_REFUSED };
                // The neighbour may have gone meanwhile: nothing to answer then.
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .relay
                    .send_response(channel, answer);
            }
            Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some((peer, id)) = self.relay_hops.remove(&request_id) {
                    let outcome = if response == HOP_ACCEPTED {
                        HopOutcome::Accepted
                    } else {
                        HopOutcome::Failed
                    };
                    self.with_relay(|relay, out| relay.hop_result(&peer, &id, outcome, out));
                }
            }
            Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some((peer, id)) = self.relay_hops.remove(&request_id) {
                    tracing::debug!(peer_id = %peer, %error, "relay hop failed");
                    self.with_relay(|relay, out| {
                        relay.hop_result(&peer, &id, HopOutcome::Failed, out)
                    });
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(peer_id = %peer, %error, "relay packet not read");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    fn on_peer_event(&mut self, event: PeerManagerEvent) {
        match event {
            PeerManagerEvent::Connected { peer, addr, dialer } => {
                tracing::info!(peer_id = %peer, %addr, dialer, "peer connected");
                let kind = if crate::peer_manager::transport_of(&addr) == "ble" {
                    LinkKind::Radio
                } else {
                    LinkKind::Internet
                };
                self.with_relay(|relay, out| relay.link_up(now_ms(), peer, kind, out));
                self.services.kv.link_up(peer, kind == LinkKind::Radio);
                self.events.publish(NodeEvent::PeerConnected {
                    peer_id: peer.to_string(),
                    addr: addr.to_string(),
                    direction: if dialer { "out" } else { "in" }.into(),
                });
                self.notify_all(&Notice::PeerConnected(peer));
                self.peers_changed();
            }
            PeerManagerEvent::Disconnected { peer, cause } => {
                tracing::info!(peer_id = %peer, %cause, "peer disconnected");
                self.channel.forget(&peer);
                self.events.publish(NodeEvent::PeerDisconnected {
                    peer_id: peer.to_string(),
                    cause,
                });
                self.notify_all(&Notice::PeerDisconnected(peer));
                self.peers_changed();
            }
            PeerManagerEvent::RecordChanged { peer, record } => {
                if self.lifecycle.phase() != Phase::SafeMode {
                    self.storage
                        .persist(crate::services::StoreOp::PutPeer { peer, record });
                }
            }
            PeerManagerEvent::Forgotten(peer) => {
                if self.lifecycle.phase() != Phase::SafeMode {
                    self.storage
                        .persist(crate::services::StoreOp::RemovePeer(peer));
                }
            }
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
        let mut mesh: Vec<PeerId> = self
            .swarm
            .behaviour()
            .gossipsub
            .all_mesh_peers()
            .copied()
            .collect();
        // Links between cluster members carry raft: the budget spares them too.
        mesh.extend(self.services.cluster.member_peers());
        self.swarm.behaviour_mut().peers.set_protected(mesh);
        self.dial_radio_neighbours();
        if tokio::time::Instant::now() >= self.next_kad_walk
            && self.swarm.behaviour().peers.connected_count() > 0
        {
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
            self.next_kad_walk = tokio::time::Instant::now() + KAD_WALK_EVERY;
        }
        self.publish_views();
    }

    /// Transport choice follows the power policy (docs/ble.md): at `bitchat_only` a node
    /// with a radio drops its internet links; at `bitchat_preferred` its own relay packets
    /// go over the radio when it has radio neighbours. The radio scans and advertises at
    /// the policy's duty cycle.
    fn follow_power_policy(&mut self, view: &DeviceView) {
        use crate::device::policy::TransportPreference;
        let limits = &view.decision.limits;
        let preference = limits.transport;
        if let Some(radio) = &self.radio {
            radio.driver.set_duty_cycle(limits.ble_duty.radio_duty());
        }
        self.swarm
            .behaviour_mut()
            .peers
            .set_radio_only(self.radio.is_some() && preference == TransportPreference::BitchatOnly);
        self.services
            .relay
            .set_prefer_radio(preference >= TransportPreference::BitchatPreferred);
    }

    fn dial_radio_neighbours(&mut self) {
        use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
        let Some(radio) = &self.radio else {
            return;
        };
        // At the radio budget, new neighbours would only be pruned again.
        if self.swarm.behaviour().peers.radio_count() >= crate::connection_budget::RADIO_TARGET {
            return;
        }
        for (peer, addr) in radio.to_dial() {
            if self.swarm.is_connected(&peer) {
                continue;
            }
            let opts = DialOpts::peer_id(peer)
                .addresses(vec![addr])
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            if let Err(error) = self.swarm.dial(opts) {
                tracing::debug!(peer_id = %peer, %error, "radio neighbour not dialled");
            }
        }
    }

    fn store_failed(&mut self, error: String) {
        tracing::error!(%error, "store write failed; entering safe mode");
        self.apply_lifecycle(LifecycleInput::StoreFailed(error));
    }

    fn apply_lifecycle(&mut self, input: LifecycleInput) {
        if let Some(t) = self.lifecycle.apply(now_ms(), input) {
            tracing::info!(from = %t.from, to = %t.to, reason = %t.reason, "lifecycle transition");
            self.metrics.set_phase(Some(t.from), t.to);
            self.events.publish(NodeEvent::Lifecycle {
                from: t.from,
                to: t.to,
                reason: t.reason.clone(),
            });
            self.notify_all(&Notice::Phase(t.to));
            self.publish_views();
        }
    }

    async fn drain(&mut self) {
        self.apply_lifecycle(LifecycleInput::ShutdownRequested);
        for id in self.listeners.drain() {
            self.swarm.remove_listener(id);
        }
        for (peer, record) in self.swarm.behaviour_mut().peers.snapshot() {
            self.storage
                .persist(crate::services::StoreOp::PutPeer { peer, record });
        }
        if let Err(error) = self.storage.close().await {
            tracing::error!(%error, "final store flush failed");
        }
        let _ = std::fs::remove_file(&self.control_file);
        self.publish_views();
        tracing::info!(peer_id = %self.swarm.local_peer_id(), "node stopped");
    }

    /// A write decided at start-up, before the driver runs.
    pub fn persist(&mut self, op: crate::services::StoreOp) {
        self.storage.persist(op);
    }

    /// Removes a stored origin the telemetry service did not keep (over its cap at start).
    pub fn forget_stored_telemetry(&mut self, origin: String) {
        self.storage
            .persist(crate::services::StoreOp::RemoveTelemetry { origin });
    }

    // ---- views ----

    fn apply_view(&mut self, update: ViewUpdate) {
        match update {
            ViewUpdate::Telemetry { origin, telemetry } => {
                let mut nodes = 0;
                api::write(&self.shared.telemetry, |t| {
                    match telemetry {
                        Some(record) => {
                            t.insert(origin, *record);
                        }
                        None => {
                            t.remove(&origin);
                        }
                    }
                    nodes = t.len();
                });
                // The status counts follow at once; the rest of the status every second.
                let accepted = self.services.telemetry.metrics().accepted.get();
                api::write(&self.shared.status, |s| {
                    s.telemetry_nodes = nodes;
                    s.telemetry_accepted = accepted;
                });
                self.shared.views_changed();
            }
            ViewUpdate::OwnTelemetry(own) => {
                api::write(&self.shared.own_telemetry, |o| *o = Some(*own))
            }
            ViewUpdate::Receipt {
                origin,
                seq,
                published_ms,
                received_ms,
            } => {
                if let Ok(mut log) = self.shared.receipts.lock() {
                    log.push(&origin, seq, published_ms, received_ms);
                }
            }
            ViewUpdate::Device(view) => api::write(&self.shared.device, |d| *d = Some(*view)),
            ViewUpdate::Messages(view) => {
                api::write(&self.shared.messages, |m| *m = *view);
                self.shared.views_changed();
            }
            ViewUpdate::Cluster(view) => {
                api::write(&self.shared.cluster, |c| *c = *view);
                self.shared.views_changed();
            }
        }
    }

    fn publish_views(&self) {
        let now = now_ms();
        let telemetry = &self.services.telemetry;
        let peers_behaviour = &self.swarm.behaviour().peers;
        let storage = self.storage.stats();
        api::write(&self.shared.status, |s| {
            s.phase = self.lifecycle.phase();
            s.phase_since_ms = self.lifecycle.since_ms();
            s.phase_reason = self.lifecycle.reason().to_owned();
            s.transitions = self.lifecycle.history().cloned().collect();
            s.uptime_s = now.saturating_sub(self.started_at_ms) / 1000;
            s.listen_addrs = self.listen_addrs.iter().map(|a| a.to_string()).collect();
            s.connected_peers = peers_behaviour.connected_count();
            s.known_peers = peers_behaviour.registry().len();
            s.telemetry_nodes = telemetry.latest().len();
            s.stale_nodes = telemetry.stale_count(now);
            s.telemetry_interval_ms =
                u64::try_from(telemetry.interval().as_millis()).unwrap_or(u64::MAX);
            let m = telemetry.metrics();
            s.telemetry_published = m.published.get();
            s.telemetry_unsent = m.unsent.get();
            s.telemetry_accepted = m.accepted.get();
            s.telemetry_rejected = m.rejections();
            s.telemetry_expired = m.expired.get() + m.evicted.get();
            s.store_errors = storage.errors;
            s.bootstrap.connected = peers_behaviour.bootstrap_connected();
            s.device = self.services.device.view().map(DeviceView::summary);
            s.admission.revocations =
                usize::try_from(self.services.revocations.metrics().held.get()).unwrap_or(0);
            s.admission.revocations_rejected = self.services.revocations.rejected_by_reason();
            s.admission.handshakes = self.channel.stats().snapshot();
            s.control_api_refused = self
                .shared
                .api_limits
                .refused_connections
                .load(std::sync::atomic::Ordering::Relaxed);
        });
        let mut peers = api::inspect(&self.shared.telemetry, |t| {
            peer_views(peers_behaviour, t, now)
        });
        peers.sort_by(|a, b| {
            b.connected
                .cmp(&a.connected)
                .then(b.last_seen_ms.cmp(&a.last_seen_ms))
                .then(a.peer_id.cmp(&b.peer_id))
        });
        api::write(&self.shared.peers, |p| *p = peers);
        self.shared.views_changed();
    }
}

fn peer_views(
    pm: &crate::peer_manager::PeerManager,
    telemetry: &BTreeMap<String, crate::telemetry::ReceivedTelemetry>,
    now: u64,
) -> Vec<PeerView> {
    pm.registry()
        .iter()
        .map(|(peer, record)| {
            let live = pm.live().get(peer);
            let peer_id = peer.to_string();
            let device = telemetry
                .get(&peer_id)
                .and_then(|t| t.record.device.clone());
            PeerView {
                device,
                peer_id,
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
            }
        })
        .collect()
}

/// A control request waiting for its service's answer.
#[derive(Debug)]
enum PendingReply {
    Revocation(oneshot::Sender<Result<RevocationOutcome, String>>),
    Message(oneshot::Sender<Result<String, String>>),
    KvWrite(
        oneshot::Sender<Result<crate::services::kv::KvWritten, crate::services::kv::KvWriteError>>,
    ),
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => futures::future::pending().await,
    }
}

async fn poll_opt<T>(
    handle: &mut Option<JoinHandle<T>>,
) -> Option<Result<T, tokio::task::JoinError>> {
    match handle {
        Some(h) => Some(h.await),
        None => futures::future::pending().await,
    }
}

async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => futures::future::pending().await,
    }
}
