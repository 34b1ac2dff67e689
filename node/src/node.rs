//! The running node: swarm composition and the event loop that drives it.
//!
//! Start-up does everything that can fail for a person to see (data dir, identity, store,
//! transports, binding every listen address and the control API) before it returns, so a
//! port in use or an unreadable data dir is an error at the prompt, not a log line later.
//! The event loop then owns the swarm and all protocol state; the control API only reads
//! views the loop publishes into [`SharedState`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use fogmesh_store::{codec, Store, StoreError, StoreOptions, Table};
use fogmesh_transports::secure::{AdmissionPolicy, SecureChannel, SecureChannelConfig};
use fogmesh_transports::ticket::{self, RevocationSet};
use fogmesh_transports::{build_transport, quic_enabled, TransportBuildError, TransportConfig};
use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::core::ConnectedPoint;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, PublishError};
use libp2p::identity::Keypair;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    connection_limits, identify, kad, mdns, ping, Multiaddr, PeerId, StreamProtocol, Swarm,
};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::api::{
    self, now_ms, BootstrapView, ControlCommand, ControlFile, PeerView, RevocationOutcome,
    SharedState, StatusView,
};
use crate::bootstrap::BootstrapDialer;
use crate::config::{self, Settings};
use crate::connection_budget::{self, Candidate};
use crate::device::{self, DeviceMonitor, DeviceView};
use crate::envelope::{self, MessageKind};
use crate::identity::{self, IdentityError};
use crate::lifecycle::{Lifecycle, LifecycleInput, Phase};
use crate::membership::{self, AdmissionView, Membership, MembershipError};
use crate::telemetry::{
    next_seq, FreshnessPolicy, ReceivedTelemetry, Rejection, RejectionCounters, TelemetryRecord,
    TelemetryValidator, TELEMETRY_TOPIC,
};

/// The version every node reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Protocol name for identify and kad.
pub const PROTOCOL_VERSION: &str = "/fogmesh/1.0.0";
const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/fogmesh/kad/1.0.0");

/// Peers remembered in the registry; the least recently seen is forgotten beyond this.
pub const MAX_KNOWN_PEERS: usize = 1024;
/// Addresses remembered per peer.
const MAX_ADDRS_PER_PEER: usize = 8;
/// Known peers redialled at start-up, most recently seen first.
const REDIAL_ON_START: usize = 16;
/// Most time a clean shutdown may take before the process gives up waiting.
pub const SHUTDOWN_BUDGET: Duration = Duration::from_secs(5);
const KAD_BOOTSTRAP_EVERY: Duration = Duration::from_secs(300);
/// First Kademlia walk after start, plus up to the same again in jitter. Bootstrap peers
/// already make the mesh connected; waiting keeps a fleet of nodes starting together from
/// dialling each other all at once.
const KAD_FIRST_BOOTSTRAP: Duration = Duration::from_secs(20);
/// Quickest re-announcement of our telemetry when new subscribers appear.
const ANNOUNCE_MIN_GAP: Duration = Duration::from_secs(1);
const ANNOUNCE_DELAY: Duration = Duration::from_millis(200);

const TABLE_PEERS: &str = "peers";
const TABLE_TELEMETRY: &str = "telemetry";
const TABLE_META: &str = "meta";
const TABLE_REVOCATIONS: &str = "revocations";
const META_TELEMETRY_SEQ: &str = "telemetry_seq";
/// How often a node re-gossips the revocations it holds, so nodes that were away catch up.
const REVOCATION_REPUBLISH_EVERY: Duration = Duration::from_secs(300);
/// Most stored revocations re-gossiped per round (the newest).
const REVOCATION_REPUBLISH_MAX: usize = 256;

/// Where a node's store lives inside its data dir.
pub fn store_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("store")
}

/// A revocation as stored: the signed bytes, exactly as received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRevocation {
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
    pub received_at_ms: u64,
}

/// What the registry keeps about a peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerRecord {
    pub addrs: Vec<String>,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    #[serde(default)]
    pub agent: Option<String>,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    gossipsub: gossipsub::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    mdns: Toggle<mdns::tokio::Behaviour>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot use data dir {path}: {reason}")]
    DataDir { path: PathBuf, reason: String },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    // The store's errors name the store and say what to do; a prefix would only repeat them.
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot build transports: {0}")]
    Transport(#[from] TransportBuildError),
    #[error(transparent)]
    Membership(#[from] MembershipError),
    #[error("cannot set up {what}: {reason}")]
    Setup { what: &'static str, reason: String },
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("cannot bind the control API on {addr}: {reason}")]
    ControlApi { addr: SocketAddr, reason: String },
}

/// A started node. Dropping it without [`RunningNode::shutdown`] aborts nothing: the task
/// keeps running until the runtime ends.
#[derive(Debug)]
pub struct RunningNode {
    pub peer_id: PeerId,
    pub control_addr: SocketAddr,
    pub state: Arc<SharedState>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl RunningNode {
    /// Drains the node: stops listening, flushes the store, stops the control API.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Waits until the node stops by itself (it does not, short of a panic) or is shut down.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Starts a node with `settings` on the current tokio runtime.
pub async fn start(settings: Settings) -> Result<RunningNode, StartError> {
    let data_dir = settings.data_dir.clone();
    if data_dir.is_file() {
        return Err(StartError::DataDir {
            path: data_dir,
            reason: "it is a file, not a directory".into(),
        });
    }
    std::fs::create_dir_all(&data_dir).map_err(|e| StartError::DataDir {
        path: data_dir.clone(),
        reason: e.to_string(),
    })?;
    let keypair = identity::load_or_create(&data_dir)?;
    let peer_id = keypair.public().to_peer_id();
    let store = Store::open(&store_dir(&data_dir), &StoreOptions::default())?;
    let tables = Tables {
        peers: store.table(TABLE_PEERS)?,
        telemetry: store.table(TABLE_TELEMETRY)?,
        meta: store.table(TABLE_META)?,
        revocations: store.table(TABLE_REVOCATIONS)?,
    };

    let (membership, policy) = match &settings.mesh {
        Some(files) => {
            let (membership, revocations) = membership::load(
                files,
                peer_id,
                |root| stored_revocations(&tables.revocations, root),
                crate::mesh::now_s(),
            )?;
            let policy = AdmissionPolicy::closed(
                membership.root.clone(),
                membership.ticket.clone(),
                Arc::new(RwLock::new(revocations)),
            );
            tracing::info!(
                mesh = %membership.name,
                mesh_id = %membership.mesh_id,
                roles = %membership.admission.roles.join(","),
                "joining a closed mesh: only peers with valid tickets connect"
            );
            (Some(membership), policy)
        }
        None => {
            tracing::warn!(
                "OPEN MESH: no mesh configured, so ANY node can connect, gossip and read this \
                 node's telemetry. For anything but development, configure `mesh` and `ticket` \
                 (see docs/admission.md)"
            );
            (None, AdmissionPolicy::open())
        }
    };
    let mut channel_config = SecureChannelConfig::new(policy);
    channel_config.guard.exempt_loopback = settings.exempt_loopback;
    let channel = SecureChannel::new(&keypair, channel_config).map_err(|e| StartError::Setup {
        what: "secure channel",
        reason: e.to_string(),
    })?;
    let transport_config = TransportConfig {
        quic: settings.quic,
        ..TransportConfig::default()
    };
    let quic = quic_enabled(&transport_config, &channel);
    if settings.quic && !quic {
        tracing::info!(
            "QUIC is off: its handshake cannot carry tickets, so a closed mesh runs TCP only"
        );
    }
    let transport = build_transport(&keypair, &channel, &transport_config)?;
    let behaviour = build_behaviour(&keypair, &settings)?;
    let mut swarm = Swarm::new(
        transport,
        behaviour,
        peer_id,
        libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(Duration::from_secs(600)),
    );
    let topic = IdentTopic::new(TELEMETRY_TOPIC);
    let revocation_topic = membership
        .as_ref()
        .map(|m| IdentTopic::new(membership::revocation_topic(&m.mesh_id)));
    for t in std::iter::once(&topic).chain(revocation_topic.as_ref()) {
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(t)
            .map_err(|e| StartError::Setup {
                what: "gossipsub",
                reason: e.to_string(),
            })?;
    }

    let mut listeners = HashSet::new();
    for addr in settings
        .listen
        .iter()
        .filter(|a| quic || !config::is_quic(a))
    {
        ensure_port_free(addr).map_err(|reason| StartError::Listen {
            addr: addr.clone(),
            reason,
        })?;
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| StartError::Listen {
                addr: addr.clone(),
                reason: transport_error_text(&e),
            })?;
        listeners.insert(id);
    }

    let control_bind = SocketAddr::from((Ipv4Addr::LOCALHOST, settings.control_port));
    let control_listener = tokio::net::TcpListener::bind(control_bind)
        .await
        .map_err(|e| StartError::ControlApi {
            addr: control_bind,
            reason: e.to_string(),
        })?;
    let control_addr = control_listener
        .local_addr()
        .map_err(|e| StartError::ControlApi {
            addr: control_bind,
            reason: e.to_string(),
        })?;

    let started_at_ms = now_ms();
    let lifecycle = Lifecycle::new(started_at_ms);
    let (commands_tx, commands) = mpsc::channel(api::COMMAND_QUEUE);
    let mut status = initial_status(&settings, peer_id, &lifecycle, started_at_ms);
    status.admission = AdmissionView {
        open: membership.is_none(),
        mesh_name: membership.as_ref().map(|m| m.name.clone()),
        mesh_id: membership.as_ref().map(|m| m.mesh_id.to_string()),
        roles: membership
            .as_ref()
            .map(|m| m.admission.roles.clone())
            .unwrap_or_default(),
        ticket_expires_s: membership.as_ref().map(|m| m.admission.not_after),
        quic,
        ..AdmissionView::default()
    };
    let mut metrics = crate::metrics::MetricsRegistry::new();
    let events = crate::events::EventBus::default();
    events.register_metrics(metrics.fogmesh());
    let shared = Arc::new(SharedState {
        status: RwLock::new(status),
        peers: RwLock::new(Vec::new()),
        telemetry: RwLock::new(BTreeMap::new()),
        own_telemetry: RwLock::new(None),
        receipts: Mutex::new(api::ReceiptLog::default()),
        device: RwLock::new(None),
        commands: commands_tx,
        api_limits: Arc::default(),
        events,
        metrics: metrics.freeze(),
    });

    let control_file = api::control_file_path(&data_dir);
    let contents = ControlFile {
        addr: control_addr,
        pid: std::process::id(),
        peer_id: peer_id.to_string(),
    };
    let json = serde_json::to_vec_pretty(&contents).map_err(|e| StartError::Setup {
        what: "control file",
        reason: e.to_string(),
    })?;
    std::fs::write(&control_file, json).map_err(|e| StartError::DataDir {
        path: control_file.clone(),
        reason: e.to_string(),
    })?;

    let (api_stop_tx, api_stop_rx) = oneshot::channel::<()>();
    let router = api::router(shared.clone());
    let api_task = tokio::spawn(crate::api_server::serve(
        control_listener,
        router,
        shared.api_limits.clone(),
        api_stop_rx,
    ));

    let mut event_loop = EventLoop::new(EventLoopParts {
        swarm,
        keypair,
        settings,
        store,
        tables,
        shared: shared.clone(),
        lifecycle,
        listeners,
        topic,
        started_at_ms,
        control_file,
        channel,
        membership,
        revocation_topic,
        commands,
    });
    event_loop.restore();
    tracing::info!(%peer_id, %control_addr, "node started");

    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        event_loop.run(shutdown_rx).await;
        let _ = api_stop_tx.send(());
        let _ = api_task.await;
    });
    Ok(RunningNode {
        peer_id,
        control_addr,
        state: shared,
        shutdown: Some(shutdown_tx),
        task,
    })
}

/// The stored revocations that verify against `root`; others (another mesh's, corrupt) are
/// skipped with a warning.
fn stored_revocations(
    table: &Table<StoredRevocation>,
    root: &libp2p::identity::PublicKey,
) -> RevocationSet {
    let mut set = RevocationSet::default();
    let mut skipped = 0usize;
    for entry in table.entries() {
        match entry.map(|(_, r)| set.add(&r.bytes, root)) {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                skipped += 1;
                tracing::warn!(%error, "skipping a stored revocation that does not verify");
            }
            Err(error) => {
                skipped += 1;
                tracing::warn!(%error, "skipping an unreadable stored revocation");
            }
        }
    }
    tracing::info!(revocations = set.len(), skipped, "revocations loaded");
    set
}

/// Says at info why a bootstrap peer is unreachable, ever more rarely while it stays away
/// (see [`crate::bootstrap::FailedDial::worth_logging`]).
fn log_bootstrap_failure(failed: &crate::bootstrap::FailedDial, error: &dyn std::error::Error) {
    if failed.worth_logging() {
        tracing::info!(
            addr = %failed.addr,
            failures = failed.failures,
            retry_in_s = failed.retry_in.as_secs_f32(),
            error = %root_cause(error),
            "bootstrap peer unreachable"
        );
    }
}

/// The innermost error: "Connection refused" rather than "Failed to negotiate transport".
fn root_cause(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text = s.to_string();
        source = s.source();
    }
    text
}

/// Refuses a listen address whose port another socket holds.
///
/// libp2p-tcp (and QUIC's UDP socket) set SO_REUSEPORT on listeners, so a second node on the
/// same port would bind happily and the kernel would split inbound connections between the
/// two. A probe bound *without* SO_REUSEPORT fails with "Address already in use" when anyone
/// holds the port, which turns that into a start-up error. Port 0 (any free port) needs no
/// probe. Another process could still take the port between probe and listen; that window
/// is microseconds at start-up, and the listener itself then still works.
fn ensure_port_free(addr: &Multiaddr) -> Result<(), String> {
    use libp2p::multiaddr::Protocol;
    let mut ip = None;
    let mut socket = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(v4) => ip = Some(std::net::IpAddr::V4(v4)),
            Protocol::Ip6(v6) => ip = Some(std::net::IpAddr::V6(v6)),
            Protocol::Tcp(port) => socket = Some((false, port)),
            Protocol::Udp(port) => socket = Some((true, port)),
            _ => {}
        }
    }
    let (Some(ip), Some((udp, port))) = (ip, socket) else {
        return Ok(());
    };
    if port == 0 {
        return Ok(());
    }
    let at = SocketAddr::new(ip, port);
    let probe = if udp {
        std::net::UdpSocket::bind(at).map(drop)
    } else {
        std::net::TcpListener::bind(at).map(drop)
    };
    probe.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "port {port} is already in use (is another fogmesh node running? give it another port with --listen)"
        ),
        _ => e.to_string(),
    })
}

fn transport_error_text<E: std::error::Error>(e: &libp2p::TransportError<E>) -> String {
    match e {
        libp2p::TransportError::MultiaddrNotSupported(addr) => {
            format!("no transport supports {addr}")
        }
        // "Address already in use" is what a person needs.
        libp2p::TransportError::Other(inner) => root_cause(inner),
    }
}

fn build_behaviour(keypair: &Keypair, settings: &Settings) -> Result<Behaviour, StartError> {
    let peer_id = keypair.public().to_peer_id();
    let setup = |what: &'static str| move |e: String| StartError::Setup { what, reason: e };
    // Every message we publish is an envelope signed by its origin, and receivers check that
    // signature once per unique message, after gossipsub's duplicate filter. gossipsub's own
    // signature would be checked in its codec for every copy received (measured: ~30 % of a
    // node's CPU in a 50-node mesh), so gossipsub only names the author (`from`), and the
    // envelope check requires author == origin. Message ids hash the content, so nobody can
    // pre-empt an honest message by sending junk under the same (author, seqno) id.
    let gossip_config = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(Duration::from_secs(1))
        .validation_mode(gossipsub::ValidationMode::Permissive)
        .validate_messages()
        .message_id_fn(|message: &gossipsub::Message| {
            // Topic and author too, not only the data: see `envelope::message_id`.
            let id = envelope::message_id(
                message.topic.as_str(),
                message.source.as_ref(),
                &message.data,
            );
            gossipsub::MessageId::from(id.to_vec())
        })
        .flood_publish(false)
        .max_transmit_size(envelope::MAX_ENVELOPE_LEN + 1024)
        .build()
        .map_err(|e| setup("gossipsub")(e.to_string()))?;
    let gossipsub = gossipsub::Behaviour::new(
        gossipsub::MessageAuthenticity::Author(peer_id),
        gossip_config,
    )
    .map_err(|e| setup("gossipsub")(e.to_string()))?;
    let mut kad_config = kad::Config::new(KAD_PROTOCOL);
    // kad's own periodic walk fires at once, before any peer is known, and warns "No known
    // peers" at every start; the event loop runs its own walks once it has peers.
    kad_config.set_periodic_bootstrap_interval(None);
    let mut kad =
        kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
    kad.set_mode(Some(kad::Mode::Server));
    let mdns = if settings.mdns {
        Some(
            mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)
                .map_err(|e| setup("mDNS")(e.to_string()))?,
        )
    } else {
        None
    };
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(settings.max_connections))
        .with_max_established_per_peer(Some(2))
        .with_max_pending_incoming(Some(64))
        .with_max_pending_outgoing(Some(64));
    Ok(Behaviour {
        limits: connection_limits::Behaviour::new(limits),
        gossipsub,
        kad,
        mdns: Toggle::from(mdns),
        identify: identify::Behaviour::new(
            identify::Config::new(PROTOCOL_VERSION.into(), keypair.public())
                .with_agent_version(format!("fogmesh/{VERSION}")),
        ),
        ping: ping::Behaviour::new(ping::Config::new()),
    })
}

fn initial_status(
    settings: &Settings,
    peer_id: PeerId,
    lifecycle: &Lifecycle,
    started_at_ms: u64,
) -> StatusView {
    StatusView {
        peer_id: peer_id.to_string(),
        version: VERSION.into(),
        phase: lifecycle.phase(),
        phase_since_ms: lifecycle.since_ms(),
        phase_reason: lifecycle.reason().into(),
        transitions: Vec::new(),
        started_at_ms,
        uptime_s: 0,
        data_dir: settings.data_dir.clone(),
        listen_addrs: Vec::new(),
        connected_peers: 0,
        known_peers: 0,
        telemetry_nodes: 0,
        stale_nodes: 0,
        telemetry_interval_ms: settings.telemetry_interval.as_millis() as u64,
        telemetry_published: 0,
        telemetry_unsent: 0,
        telemetry_accepted: 0,
        telemetry_rejected: RejectionCounters::default(),
        store_errors: 0,
        mdns: settings.mdns,
        bootstrap: BootstrapView {
            configured: settings.bootstrap.len(),
            connected: 0,
        },
        device: None,
        admission: AdmissionView::default(),
        control_api_refused: 0,
    }
}

struct Tables {
    peers: Table<PeerRecord>,
    telemetry: Table<ReceivedTelemetry>,
    meta: Table<u64>,
    revocations: Table<StoredRevocation>,
}

struct EventLoopParts {
    swarm: Swarm<Behaviour>,
    keypair: Keypair,
    settings: Settings,
    store: Store,
    tables: Tables,
    shared: Arc<SharedState>,
    lifecycle: Lifecycle,
    listeners: HashSet<ListenerId>,
    topic: IdentTopic,
    started_at_ms: u64,
    control_file: PathBuf,
    channel: SecureChannel,
    membership: Option<Membership>,
    revocation_topic: Option<IdentTopic>,
    commands: mpsc::Receiver<ControlCommand>,
}

/// What we know of a connected peer.
#[derive(Debug, Clone)]
struct LivePeer {
    addr: Multiaddr,
    dialer: bool,
    rtt: Option<Duration>,
    since: Instant,
}

struct EventLoop {
    swarm: Swarm<Behaviour>,
    keypair: Keypair,
    peer_id: PeerId,
    settings: Settings,
    store: Store,
    tables: Tables,
    shared: Arc<SharedState>,
    lifecycle: Lifecycle,
    listeners: HashSet<ListenerId>,
    listen_addrs: Vec<Multiaddr>,
    topic: IdentTopic,
    started_at_ms: u64,
    started: Instant,
    control_file: PathBuf,
    validator: TelemetryValidator,
    bootstrap: BootstrapDialer,
    registry: HashMap<PeerId, PeerRecord>,
    live: HashMap<PeerId, LivePeer>,
    mdns_known: HashSet<PeerId>,
    last_seq: u64,
    published: u64,
    /// Publications with nobody subscribed to send them to.
    unsent: u64,
    accepted: u64,
    rejected: RejectionCounters,
    store_errors: u64,
    device: DeviceMonitor,
    device_view: Option<DeviceView>,
    next_sense_at: tokio::time::Instant,
    rng: StdRng,
    next_publish_at: tokio::time::Instant,
    last_publish: Option<tokio::time::Instant>,
    next_kad_bootstrap: Instant,
    channel: SecureChannel,
    membership: Option<Membership>,
    revocation_topic: Option<IdentTopic>,
    commands: mpsc::Receiver<ControlCommand>,
    revocations_rejected: BTreeMap<String, u64>,
    next_revocation_republish: Instant,
}

impl EventLoop {
    fn new(p: EventLoopParts) -> Self {
        let now = now_ms();
        let mut rng = StdRng::from_entropy();
        let kad_jitter = KAD_FIRST_BOOTSTRAP.mul_f64(rng.gen::<f64>());
        let peer_id = *p.swarm.local_peer_id();
        let device = DeviceMonitor::new(&p.settings.data_dir, p.settings.simulate.clone());
        Self {
            peer_id,
            keypair: p.keypair,
            bootstrap: BootstrapDialer::new(p.settings.bootstrap.clone(), now),
            settings: p.settings,
            swarm: p.swarm,
            store: p.store,
            tables: p.tables,
            shared: p.shared,
            lifecycle: p.lifecycle,
            listeners: p.listeners,
            listen_addrs: Vec::new(),
            topic: p.topic,
            started_at_ms: p.started_at_ms,
            started: Instant::now(),
            control_file: p.control_file,
            validator: TelemetryValidator::new(FreshnessPolicy::default()),
            registry: HashMap::new(),
            live: HashMap::new(),
            mdns_known: HashSet::new(),
            last_seq: 0,
            published: 0,
            unsent: 0,
            accepted: 0,
            rejected: RejectionCounters::default(),
            store_errors: 0,
            device,
            device_view: None,
            next_sense_at: tokio::time::Instant::now(),
            rng,
            next_publish_at: tokio::time::Instant::now(),
            last_publish: None,
            next_kad_bootstrap: Instant::now() + KAD_FIRST_BOOTSTRAP + kad_jitter,
            channel: p.channel,
            membership: p.membership,
            revocation_topic: p.revocation_topic,
            commands: p.commands,
            revocations_rejected: BTreeMap::new(),
            next_revocation_republish: Instant::now() + REVOCATION_REPUBLISH_EVERY,
        }
    }

    /// Loads what the store remembers: peers (redialled), telemetry (replay state and views)
    /// and our own last sequence number.
    fn restore(&mut self) {
        let mut corrupt = 0usize;
        for entry in self.tables.peers.entries() {
            match entry {
                Ok((key, record)) => match key.parse::<PeerId>() {
                    Ok(peer) => {
                        self.registry.insert(peer, record);
                    }
                    Err(_) => corrupt += 1,
                },
                Err(error) => {
                    corrupt += 1;
                    tracing::warn!(%error, "skipping unreadable stored peer");
                }
            }
        }
        let mut restored = BTreeMap::new();
        for entry in self.tables.telemetry.entries() {
            match entry {
                Ok((key, telemetry)) => match key.parse::<PeerId>() {
                    Ok(peer) => {
                        self.validator
                            .remember(peer, telemetry.seq, telemetry.received_at_ms);
                        restored.insert(key, telemetry);
                    }
                    Err(_) => corrupt += 1,
                },
                Err(error) => {
                    corrupt += 1;
                    tracing::warn!(%error, "skipping unreadable stored telemetry");
                }
            }
        }
        match self.tables.meta.get(META_TELEMETRY_SEQ) {
            Ok(seq) => self.last_seq = seq.unwrap_or(0),
            Err(error) => {
                tracing::warn!(%error, "own telemetry sequence unreadable; continuing from the clock")
            }
        }
        tracing::info!(
            known_peers = self.registry.len(),
            telemetry_nodes = restored.len(),
            corrupt,
            "restored from store"
        );
        api::write(&self.shared.telemetry, |t| *t = restored);

        let mut recent: Vec<(PeerId, PeerRecord)> = self
            .registry
            .iter()
            .filter(|(_, r)| !r.addrs.is_empty())
            .map(|(p, r)| (*p, r.clone()))
            .collect();
        recent.sort_by_key(|(_, r)| std::cmp::Reverse(r.last_seen_ms));
        for (peer, record) in recent.into_iter().take(REDIAL_ON_START) {
            let addrs: Vec<Multiaddr> =
                record.addrs.iter().filter_map(|a| a.parse().ok()).collect();
            for addr in &addrs {
                self.swarm
                    .behaviour_mut()
                    .kad
                    .add_address(&peer, addr.clone());
            }
            let opts = DialOpts::peer_id(peer)
                .addresses(addrs)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            if let Err(error) = self.swarm.dial(opts) {
                tracing::debug!(%peer, %error, "redial of known peer not started");
            }
        }
        self.publish_views();
    }

    async fn run(&mut self, mut shutdown: oneshot::Receiver<()>) {
        // Sense before the first publication, so the first telemetry carries the device.
        self.sense_device();
        let mut maintenance = tokio::time::interval(Duration::from_secs(1));
        maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Local work (timers) before remote work (swarm events).
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = maintenance.tick() => self.maintain(),
                _ = tokio::time::sleep_until(self.next_sense_at) => self.sense_device(),
                _ = tokio::time::sleep_until(self.next_publish_at) => self.publish_telemetry(),
                Some(command) = self.commands.recv() => self.on_command(command),
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
            }
        }
        self.drain();
    }

    /// The telemetry interval the power policy allows now.
    fn telemetry_interval(&self) -> Duration {
        let multiplier = self
            .device_view
            .as_ref()
            .map_or(1, |v| v.decision.limits.telemetry_multiplier);
        self.settings.telemetry_interval.saturating_mul(multiplier)
    }

    fn sense_device(&mut self) {
        let view = self.device.pass(now_ms());
        let previous_mode = self.device_view.as_ref().map(|v| v.decision.mode);
        if previous_mode != Some(view.decision.mode) {
            tracing::info!(
                mode = %view.decision.mode,
                class = %view.class,
                score = %format_args!("{:.3}", view.score),
                reasons = %view.decision.reasons.join("; "),
                simulated = view.simulated,
                "power mode"
            );
        }
        let base = self.settings.sense_interval;
        self.next_sense_at =
            tokio::time::Instant::now() + device::next_sense_interval(base, &view.decision);
        let old_interval = self.telemetry_interval();
        api::write(&self.shared.device, |d| *d = Some(view.clone()));
        self.device_view = Some(view);
        let new_interval = self.telemetry_interval();
        if new_interval != old_interval {
            // Re-plan the next publication on the new cadence.
            let base_instant = self.last_publish.unwrap_or_else(tokio::time::Instant::now);
            self.next_publish_at = base_instant + new_interval;
        }
    }

    fn drain(&mut self) {
        self.apply_lifecycle(LifecycleInput::ShutdownRequested);
        for id in self.listeners.drain() {
            self.swarm.remove_listener(id);
        }
        self.persist_registry_snapshot();
        if let Err(error) = self.store.flush() {
            tracing::error!(%error, "final store flush failed");
        }
        let _ = std::fs::remove_file(&self.control_file);
        self.publish_views();
        tracing::info!(peer_id = %self.peer_id, "node stopped");
    }

    fn maintain(&mut self) {
        let now = now_ms();
        for due in self.bootstrap.due(now) {
            let opts = match due.peer {
                Some(peer) => DialOpts::peer_id(peer)
                    .addresses(vec![due.addr.clone()])
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build(),
                None => DialOpts::unknown_peer_id()
                    .address(due.addr.clone())
                    .build(),
            };
            let connection = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => {
                    tracing::debug!(addr = %due.addr, "dialling bootstrap peer");
                    self.bootstrap.dial_started(due.index, connection);
                }
                Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => {
                    // Already connected or dialling: nothing to do until it is lost.
                    if let Some(peer) = due.peer {
                        if self.swarm.is_connected(&peer) {
                            self.bootstrap.connected(connection, peer);
                            continue;
                        }
                    }
                    let jitter = self.rng.gen();
                    self.bootstrap.dial_failed(due.index, now, jitter);
                }
                Err(error) => {
                    let jitter = self.rng.gen();
                    if let Some(failed) = self.bootstrap.dial_failed(due.index, now, jitter) {
                        log_bootstrap_failure(&failed, &error);
                    }
                }
            }
        }
        self.keep_connection_budget();
        if Instant::now() >= self.next_revocation_republish {
            self.next_revocation_republish = Instant::now() + REVOCATION_REPUBLISH_EVERY;
            self.republish_revocations();
        }
        if Instant::now() >= self.next_kad_bootstrap && !self.live.is_empty() {
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
            self.next_kad_bootstrap = Instant::now() + KAD_BOOTSTRAP_EVERY;
        }
        self.publish_views();
    }

    /// Disconnects surplus peers above `target_peers` (see `connection_budget`).
    fn keep_connection_budget(&mut self) {
        let target = self.settings.target_peers as usize;
        if self.live.len() <= target + connection_budget::SLACK {
            return;
        }
        let mesh: HashSet<PeerId> = self
            .swarm
            .behaviour()
            .gossipsub
            .all_mesh_peers()
            .copied()
            .collect();
        let candidates: Vec<Candidate> = self
            .live
            .iter()
            .map(|(peer, live)| Candidate {
                peer: *peer,
                connected_for: live.since.elapsed(),
                protected: mesh.contains(peer) || self.bootstrap.is_bootstrap_peer(peer),
            })
            .collect();
        for peer in connection_budget::choose_prunes(&candidates, target) {
            tracing::debug!(%peer, connected = self.live.len(), target, "pruning surplus connection");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    fn publish_telemetry(&mut self) {
        if matches!(self.lifecycle.phase(), Phase::SafeMode | Phase::Draining) {
            return;
        }
        let interval = self.telemetry_interval();
        self.next_publish_at = tokio::time::Instant::now() + interval;
        let now = now_ms();
        let seq = next_seq(self.last_seq, now);
        let readings = self.device_view.as_ref().map(|v| v.readings);
        let record = TelemetryRecord {
            peer_id: self.peer_id.to_string(),
            version: VERSION.into(),
            uptime_s: self.started.elapsed().as_secs(),
            cpu_load_pct: readings.and_then(|r| r.cpu_load_pct),
            mem_used_bytes: readings
                .and_then(|r| Some(r.mem_total_bytes?.saturating_sub(r.mem_available_bytes?))),
            mem_total_bytes: readings.and_then(|r| r.mem_total_bytes),
            rss_bytes: self.device.rss_bytes(),
            peer_count: self.live.len() as u32,
            listen_addrs: self.listen_addrs.iter().map(|a| a.to_string()).collect(),
            interval_ms: interval.as_millis() as u64,
            device: self.device_view.as_ref().map(DeviceView::summary),
        };
        let sealed = codec::encode(&record)
            .map_err(|e| e.to_string())
            .and_then(|body| {
                envelope::seal(&self.keypair, MessageKind::Telemetry, seq, now, body)
                    .map_err(|e| e.to_string())
            });
        let bytes = match sealed {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(%error, "cannot seal own telemetry");
                return;
            }
        };
        self.last_seq = seq;
        self.last_publish = Some(tokio::time::Instant::now());
        if let Err(error) = self.tables.meta.put(META_TELEMETRY_SEQ, &seq) {
            self.store_failed(error);
        }
        api::write(&self.shared.own_telemetry, |own| {
            *own = Some(ReceivedTelemetry {
                seq,
                timestamp_ms: now,
                received_at_ms: now,
                record,
            })
        });
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.topic.clone(), bytes)
        {
            Ok(_) => {
                self.published += 1;
                tracing::debug!(seq, "telemetry published");
            }
            Err(PublishError::NoPeersSubscribedToTopic) => {
                self.unsent += 1;
                tracing::debug!(seq, "telemetry not published: no subscribed peers yet");
            }
            Err(error) => tracing::warn!(%error, seq, "telemetry publish failed"),
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                if !self.listen_addrs.contains(&address) {
                    self.listen_addrs.push(address);
                }
                self.apply_lifecycle(LifecycleInput::Listening);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                tracing::info!(%address, "no longer listening");
                self.listen_addrs.retain(|a| a != &address);
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
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(%error, "listener error");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                let (addr, dialer) = match &endpoint {
                    ConnectedPoint::Dialer { address, .. } => (address.clone(), true),
                    ConnectedPoint::Listener { send_back_addr, .. } => {
                        (send_back_addr.clone(), false)
                    }
                };
                if num_established.get() == 1 {
                    tracing::info!(%peer_id, %addr, dialer, "peer connected");
                }
                self.live.entry(peer_id).or_insert(LivePeer {
                    addr: addr.clone(),
                    dialer,
                    rtt: None,
                    since: Instant::now(),
                });
                // Only an address we dialled is known to reach the peer; the far end of an
                // inbound connection is usually an ephemeral port.
                let learned = if dialer { vec![addr] } else { Vec::new() };
                self.note_peer(peer_id, learned, None);
                self.bootstrap.connected(connection_id, peer_id);
                self.apply_lifecycle(LifecycleInput::PeerCount(self.live.len()));
                self.publish_views();
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                cause,
                ..
            } => {
                let cause = cause
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "closed".into());
                tracing::info!(%peer_id, %cause, "peer disconnected");
                self.live.remove(&peer_id);
                self.channel.forget(&peer_id);
                self.note_peer(peer_id, Vec::new(), None);
                let jitter = self.rng.gen();
                self.bootstrap.disconnected(peer_id, now_ms(), jitter);
                self.apply_lifecycle(LifecycleInput::PeerCount(self.live.len()));
                self.publish_views();
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                let jitter = self.rng.gen();
                match self
                    .bootstrap
                    .connection_failed(connection_id, now_ms(), jitter)
                {
                    Some(failed) => log_bootstrap_failure(&failed, &error),
                    None => {
                        tracing::debug!(peer_id = ?peer_id, %error, "outgoing connection failed")
                    }
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                tracing::debug!(%send_back_addr, %error, "incoming connection failed");
            }
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                let acceptance = self.on_gossip_message(propagation_source, message);
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, topic }) => {
                if topic == self.topic.hash() {
                    tracing::debug!(%peer_id, "peer subscribed to telemetry");
                    self.schedule_announce();
                }
            }
            BehaviourEvent::Gossipsub(_) => {}
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (peer, addr) in found {
                    by_peer.entry(peer).or_default().push(addr);
                }
                for (peer, addrs) in by_peer {
                    if self.mdns_known.len() < MAX_KNOWN_PEERS && self.mdns_known.insert(peer) {
                        tracing::info!(peer_id = %peer, "peer found via mDNS");
                    }
                    for addr in &addrs {
                        self.swarm
                            .behaviour_mut()
                            .kad
                            .add_address(&peer, addr.clone());
                    }
                    if !self.swarm.is_connected(&peer) {
                        let opts = DialOpts::peer_id(peer)
                            .addresses(addrs)
                            .condition(PeerCondition::DisconnectedAndNotDialing)
                            .build();
                        let _ = self.swarm.dial(opts);
                    }
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(lost)) => {
                for (peer, _) in lost {
                    if self.mdns_known.remove(&peer) {
                        tracing::info!(peer_id = %peer, "peer lost from mDNS");
                    }
                }
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                for addr in &info.listen_addrs {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, addr.clone());
                }
                self.note_peer(peer_id, info.listen_addrs, Some(info.agent_version));
            }
            BehaviourEvent::Identify(_) => {}
            BehaviourEvent::Ping(ping::Event { peer, result, .. }) => {
                if let (Ok(rtt), Some(live)) = (result, self.live.get_mut(&peer)) {
                    live.rtt = Some(rtt);
                }
            }
            BehaviourEvent::Kad(_) => {}
            BehaviourEvent::Limits(never) => match never {},
        }
    }

    fn on_gossip_message(
        &mut self,
        propagation_source: PeerId,
        message: gossipsub::Message,
    ) -> MessageAcceptance {
        let now = now_ms();
        if let Some(revocations) = &self.revocation_topic {
            if message.topic == revocations.hash() {
                return self.on_gossiped_revocation(propagation_source, &message.data);
            }
        }
        if message.topic != self.topic.hash() {
            self.rejected
                .count(&Rejection::Malformed("unexpected topic".into()));
            return MessageAcceptance::Reject;
        }
        match self.validator.check(now, message.source, &message.data) {
            Ok(accepted) => {
                self.accepted += 1;
                let telemetry = accepted.telemetry;
                // The validator checked that the record names its origin, so this string is
                // the origin's PeerId without encoding it again.
                let origin = telemetry.record.peer_id.clone();
                if let Ok(mut log) = self.shared.receipts.lock() {
                    log.push(&origin, telemetry.seq, telemetry.timestamp_ms, now);
                }
                if self.lifecycle.phase() != Phase::SafeMode {
                    if let Err(error) = self.tables.telemetry.put(&origin, &telemetry) {
                        self.store_failed(error);
                    }
                }
                tracing::trace!(origin = %origin, seq = telemetry.seq, "telemetry accepted");
                let mut nodes = 0;
                api::write(&self.shared.telemetry, |t| {
                    t.insert(origin, telemetry);
                    nodes = t.len();
                });
                api::write(&self.shared.status, |s| {
                    s.telemetry_nodes = nodes;
                    s.telemetry_accepted = self.accepted;
                });
                MessageAcceptance::Accept
            }
            Err(rejection) => {
                self.rejected.count(&rejection);
                api::write(&self.shared.status, |s| {
                    s.telemetry_rejected = self.rejected.clone()
                });
                tracing::debug!(%propagation_source, reason = %rejection, "telemetry rejected");
                match rejection {
                    // Late or reordered copies can come from honest relays: drop without penalty.
                    Rejection::Replayed { .. } | Rejection::Stale { .. } => {
                        MessageAcceptance::Ignore
                    }
                    _ => MessageAcceptance::Reject,
                }
            }
        }
    }

    fn on_command(&mut self, command: ControlCommand) {
        match command {
            ControlCommand::Revoke { revocation, reply } => {
                let outcome = self
                    .apply_revocation(&revocation)
                    .map_err(|e| e.to_string());
                if let (Ok(outcome), Some(topic)) = (&outcome, &self.revocation_topic) {
                    if outcome.new {
                        let published = self
                            .swarm
                            .behaviour_mut()
                            .gossipsub
                            .publish(topic.clone(), revocation);
                        if let Err(error) = published {
                            tracing::warn!(%error, "revocation applied here but not gossiped yet; it is re-gossiped every 5 minutes");
                        }
                    }
                }
                let _ = reply.send(outcome);
                self.publish_views();
            }
        }
    }

    fn on_gossiped_revocation(&mut self, source: PeerId, bytes: &[u8]) -> MessageAcceptance {
        match self.apply_revocation(bytes) {
            Ok(outcome) if outcome.new => MessageAcceptance::Accept,
            // Known already: do not forward it again.
            Ok(_) => MessageAcceptance::Ignore,
            Err(error) => {
                tracing::debug!(%source, %error, "revocation rejected");
                MessageAcceptance::Reject
            }
        }
    }

    /// Verifies a revocation against the mesh root, stores it, and closes connections whose
    /// admission it withdraws.
    fn apply_revocation(&mut self, bytes: &[u8]) -> Result<RevocationOutcome, String> {
        let Some((root, own)) = self
            .membership
            .as_ref()
            .map(|m| (m.root.clone(), m.admission.clone()))
        else {
            return Err("this node runs an open mesh; revocations need a mesh root".into());
        };
        let added = {
            let mut set = self
                .channel
                .policy()
                .revocations()
                .write()
                .unwrap_or_else(|p| p.into_inner());
            set.add(bytes, &root)
        };
        let added = match added {
            Ok(added) => added,
            Err(error) => {
                *self
                    .revocations_rejected
                    .entry(error.reason().to_owned())
                    .or_default() += 1;
                return Err(format!("revocation refused: {error}"));
            }
        };
        if !added {
            return Ok(RevocationOutcome {
                new: false,
                disconnected: Vec::new(),
            });
        }
        let key = hex::encode(ticket::ticket_id(bytes));
        let stored = StoredRevocation {
            bytes: bytes.to_vec(),
            received_at_ms: now_ms(),
        };
        if let Err(error) = self.tables.revocations.put_durable(&key, &stored) {
            self.store_failed(error);
        }
        if !self.channel.policy().still_admitted(&own) {
            tracing::error!("this node's own ticket has been revoked: peers will refuse new connections from it");
        }
        let revoked = self.channel.revoked_among(self.live.keys());
        for peer in &revoked {
            tracing::warn!(%peer, "closing connections: ticket revoked");
            let _ = self.swarm.disconnect_peer_id(*peer);
        }
        tracing::info!(disconnected = revoked.len(), "revocation applied");
        Ok(RevocationOutcome {
            new: true,
            disconnected: revoked.iter().map(|p| p.to_string()).collect(),
        })
    }

    fn republish_revocations(&mut self) {
        let Some(topic) = self.revocation_topic.clone() else {
            return;
        };
        let mut stored: Vec<StoredRevocation> = self
            .tables
            .revocations
            .entries()
            .filter_map(|e| e.ok().map(|(_, r)| r))
            .collect();
        stored.sort_by_key(|r| std::cmp::Reverse(r.received_at_ms));
        for revocation in stored.into_iter().take(REVOCATION_REPUBLISH_MAX) {
            // Duplicates of what gossipsub sent recently are refused by it; that is fine.
            let _ = self
                .swarm
                .behaviour_mut()
                .gossipsub
                .publish(topic.clone(), revocation.bytes);
        }
    }

    /// Brings the next publication forward so new subscribers hear from us soon.
    fn schedule_announce(&mut self) {
        let now = tokio::time::Instant::now();
        let earliest = self
            .last_publish
            .map(|t| t + ANNOUNCE_MIN_GAP)
            .unwrap_or(now);
        let at = earliest.max(now + ANNOUNCE_DELAY);
        if at < self.next_publish_at {
            self.next_publish_at = at;
        }
    }

    /// Records that `peer` was seen now, with newly learned addresses and agent.
    fn note_peer(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, agent: Option<String>) {
        let now = now_ms();
        if !self.registry.contains_key(&peer) && self.registry.len() >= MAX_KNOWN_PEERS {
            self.forget_oldest_peer();
        }
        let record = self.registry.entry(peer).or_insert_with(|| PeerRecord {
            addrs: Vec::new(),
            first_seen_ms: now,
            last_seen_ms: now,
            agent: None,
        });
        record.last_seen_ms = now;
        for addr in addrs.into_iter().rev() {
            let text = addr.to_string();
            record.addrs.retain(|a| a != &text);
            record.addrs.insert(0, text);
        }
        record.addrs.truncate(MAX_ADDRS_PER_PEER);
        if agent.is_some() {
            record.agent = agent;
        }
        let record = record.clone();
        if self.lifecycle.phase() != Phase::SafeMode {
            if let Err(error) = self.tables.peers.put(&peer.to_string(), &record) {
                self.store_failed(error);
            }
        }
    }

    fn forget_oldest_peer(&mut self) {
        let oldest = self
            .registry
            .iter()
            .filter(|(p, _)| !self.live.contains_key(p))
            .min_by_key(|(_, r)| r.last_seen_ms)
            .map(|(p, _)| *p);
        if let Some(peer) = oldest {
            self.registry.remove(&peer);
            if let Err(error) = self.tables.peers.remove(&peer.to_string()) {
                self.store_failed(error);
            }
        }
    }

    /// Stamps every connected peer as seen now, so a restart knows who was there last.
    fn persist_registry_snapshot(&mut self) {
        let connected: Vec<PeerId> = self.live.keys().copied().collect();
        for peer in connected {
            self.note_peer(peer, Vec::new(), None);
        }
    }

    fn store_failed(&mut self, error: StoreError) {
        self.store_errors += 1;
        tracing::error!(%error, "store write failed; entering safe mode");
        self.apply_lifecycle(LifecycleInput::StoreFailed(error.to_string()));
    }

    fn apply_lifecycle(&mut self, input: LifecycleInput) {
        if let Some(t) = self.lifecycle.apply(now_ms(), input) {
            tracing::info!(from = %t.from, to = %t.to, reason = %t.reason, "lifecycle transition");
            self.publish_views();
        }
    }

    fn publish_views(&self) {
        let now = now_ms();
        // Read the telemetry map in place: it can hold thousands of records.
        let (telemetry_nodes, stale, mut peers) =
            api::inspect(&self.shared.telemetry, |telemetry| {
                let stale = telemetry.values().filter(|t| t.is_stale(now)).count();
                (telemetry.len(), stale, self.peer_views(telemetry, now))
            });
        api::write(&self.shared.status, |s| {
            s.phase = self.lifecycle.phase();
            s.phase_since_ms = self.lifecycle.since_ms();
            s.phase_reason = self.lifecycle.reason().to_owned();
            s.transitions = self.lifecycle.history().cloned().collect();
            s.uptime_s = now.saturating_sub(self.started_at_ms) / 1000;
            s.listen_addrs = self.listen_addrs.iter().map(|a| a.to_string()).collect();
            s.connected_peers = self.live.len();
            s.known_peers = self.registry.len();
            s.telemetry_nodes = telemetry_nodes;
            s.stale_nodes = stale;
            s.telemetry_published = self.published;
            s.telemetry_unsent = self.unsent;
            s.telemetry_accepted = self.accepted;
            s.telemetry_rejected = self.rejected.clone();
            s.store_errors = self.store_errors;
            s.bootstrap.connected = self.bootstrap.connected_count();
            s.device = self.device_view.as_ref().map(DeviceView::summary);
            s.admission.revocations = self
                .channel
                .policy()
                .revocations()
                .read()
                .map(|r| r.len())
                .unwrap_or_default();
            s.admission.revocations_rejected = self.revocations_rejected.clone();
            s.admission.handshakes = self.channel.stats().snapshot();
            s.control_api_refused = self
                .shared
                .api_limits
                .refused_connections
                .load(std::sync::atomic::Ordering::Relaxed);
        });
        peers.sort_by(|a, b| {
            b.connected
                .cmp(&a.connected)
                .then(b.last_seen_ms.cmp(&a.last_seen_ms))
                .then(a.peer_id.cmp(&b.peer_id))
        });
        api::write(&self.shared.peers, |p| *p = peers);
    }

    fn peer_views(
        &self,
        telemetry: &BTreeMap<String, ReceivedTelemetry>,
        now: u64,
    ) -> Vec<PeerView> {
        self.registry
            .iter()
            .map(|(peer, record)| {
                let live = self.live.get(peer);
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
}
