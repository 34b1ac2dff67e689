//! Start-up: composes a node from its settings and hands it to the driver.
//!
//! Start-up does everything that can fail for a person to see (data dir, identity, store,
//! transports, binding every listen address and the control API) before it returns, so a
//! port in use or an unreadable data dir is an error at the prompt, not a log line later.
//! The [`crate::driver`] then owns the swarm and runs the services; the control API only
//! reads views the driver publishes into [`SharedState`]. `docs/architecture.md` explains
//! how the parts fit.

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use fogmesh_store::task::{StorageConfig, StorageHandle};
use fogmesh_store::{Store, StoreError, StoreOptions, Table};
use fogmesh_transports::ble::arq::ArqConfig;
use fogmesh_transports::ble::driver::SharedDriver;
use fogmesh_transports::ble::sim::SimDevice;
use fogmesh_transports::ble::transport::BleTransport;
use fogmesh_transports::secure::{AdmissionPolicy, SecureChannel, SecureChannelConfig};
use fogmesh_transports::ticket::RevocationSet;
use fogmesh_transports::{
    build_memory_transport, build_transport, quic_enabled, secure_transport, BoxedTransport,
    TransportBuildError, TransportConfig,
};
use libp2p::core::Transport as _;
use libp2p::gossipsub;
use libp2p::identity::Keypair;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    connection_limits, identify, kad, mdns, ping, Multiaddr, PeerId, StreamProtocol, Swarm,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::api::{self, now_ms, BootstrapView, ControlFile, SharedState, StatusView};
use crate::config::{self, Settings};
use crate::device::DeviceMonitor;
use crate::driver::{Driver, DriverParts, Services};
use crate::events::EventBus;
use crate::identity::{self, IdentityError};
use crate::lifecycle::Lifecycle;
use crate::membership::{self, AdmissionView, MembershipError};
use crate::peer_manager::{PeerManager, PeerManagerConfig, PeerMetrics};
use crate::services::cluster::{ClusterConfig, ClusterMetrics, ClusterService, OwnRoles};
use crate::services::device::{DeviceMetrics, DeviceService};
use crate::services::kv::{AccessPolicy, KvMetrics, KvService};
use crate::services::relay::{RelayConfig, RelayMetrics, RelayService};
use crate::services::revocations::{MeshAuthority, RevocationMetrics, RevocationService};
use crate::services::telemetry::{
    TelemetryConfig, TelemetryLimits, TelemetryMetrics, TelemetryService,
};
use crate::storage::{self, NodeStorage, Tables};
use crate::telemetry::FreshnessPolicy;
use fogmesh_wire::envelope;

/// The version every node reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Protocol name for identify and kad.
pub const PROTOCOL_VERSION: &str = "/fogmesh/1.0.0";
const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/fogmesh/kad/1.0.0");

/// Peers remembered in the registry; the least recently seen is forgotten beyond this.
pub const MAX_KNOWN_PEERS: usize = 1024;
/// Known peers redialled at start-up, most recently seen first.
const REDIAL_ON_START: usize = 16;
/// Most time a clean shutdown may take before the process gives up waiting.
pub const SHUTDOWN_BUDGET: Duration = Duration::from_secs(5);

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

/// The swarm's behaviours: the peer manager beside the protocols.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) peers: PeerManager,
    pub(crate) gossipsub: gossipsub::Behaviour,
    pub(crate) kad: kad::Behaviour<kad::store::MemoryStore>,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) relay: crate::relay::protocol::Behaviour,
    pub(crate) cluster: crate::cluster::protocol::Behaviour,
    pub(crate) cluster_bulk: crate::cluster::protocol::Behaviour,
    pub(crate) kv: crate::kv::Behaviour,
}

/// Which transports a node runs on.
#[derive(Debug, Clone, Default)]
pub enum Network {
    /// TCP with the secure channel (and QUIC in open meshes): what a real node runs.
    #[default]
    Internet,
    /// The in-process memory transport (`/memory/<port>` addresses) with the same secure
    /// channel and yamux on top: for tests and simulations with many nodes in one process.
    Memory,
    /// Bluetooth LE only (`/unix/ble-<device>` addresses), on a device of the simulated
    /// radio, with the same secure channel and yamux: offline mode as tests run it. No
    /// internet socket is opened and mDNS stays off whatever the settings say.
    Radio(SimDevice),
    /// Bluetooth LE only, on a radio that learns its neighbours' identities: the simulated
    /// radio shared across processes (a radio testnet: `fogmesh run --offline
    /// --radio-medium FILE`) or a real adapter (`fogmesh run --offline`, feature
    /// `bluetooth`). Neighbours are dialled as they come into range.
    Offline(SharedDriver),
    /// The memory transport and a device of the simulated radio together: a gateway as
    /// tests run it, bridging a radio island and the (in-process) internet mesh.
    MemoryAndRadio(SimDevice),
}

impl Network {
    fn build(
        &self,
        keypair: &Keypair,
        channel: &SecureChannel,
        config: &TransportConfig,
    ) -> Result<BoxedTransport, TransportBuildError> {
        match self {
            Network::Internet => build_transport(keypair, channel, config),
            Network::Memory => build_memory_transport(keypair, channel, config),
            Network::Radio(device) => {
                secure_transport(keypair, channel, ble(device), config.upgrade_timeout)
            }
            Network::Offline(device) => {
                secure_transport(keypair, channel, ble(device), config.upgrade_timeout)
            }
            Network::MemoryAndRadio(device) => secure_transport(
                keypair,
                channel,
                libp2p::core::transport::MemoryTransport::default().or_transport(ble(device)),
                config.upgrade_timeout,
            ),
        }
    }

    /// Whether every link the node can have is a radio one.
    fn is_radio_only(&self) -> bool {
        matches!(self, Network::Radio(_) | Network::Offline(_))
    }

    fn is_internet(&self) -> bool {
        matches!(self, Network::Internet)
    }

    /// The radio the driver tunes to the power policy (and, offline, discovers with).
    fn radio(&self) -> Option<crate::driver::Radio> {
        let (driver, discovers): (SharedDriver, bool) = match self {
            Network::Internet | Network::Memory => return None,
            Network::Radio(device) | Network::MemoryAndRadio(device) => {
                (Arc::new(device.clone()), false)
            }
            Network::Offline(driver) => (driver.clone(), true),
        };
        Some(crate::driver::Radio { driver, discovers })
    }

    /// Whether mDNS may run: only beside real internet transports.
    fn allows_mdns(&self) -> bool {
        matches!(self, Network::Internet)
    }
}

/// The BLE transport on a radio device, with the link settings every node uses.
fn ble<D: fogmesh_transports::ble::driver::BleDriver + Clone>(device: &D) -> BleTransport<D> {
    BleTransport::new(device.clone(), ArqConfig::default())
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

/// Starts a node with `settings` on the current tokio runtime, on the internet transports.
pub async fn start(settings: Settings) -> Result<RunningNode, StartError> {
    start_on(settings, Network::Internet).await
}

/// Starts a node on the given transports.
pub async fn start_on(mut settings: Settings, network: Network) -> Result<RunningNode, StartError> {
    if !network.allows_mdns() {
        // mDNS is a UDP socket on every interface: not for a node that is offline, nor for
        // in-process networks.
        settings.mdns = false;
    }
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
    let tables = Tables::open(&store)?;

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
        quic: settings.quic && network.is_internet(),
        ..TransportConfig::default()
    };
    let quic = quic_enabled(&transport_config, &channel);
    if settings.quic && !quic && network.is_internet() {
        tracing::info!(
            "QUIC is off: its handshake cannot carry tickets, so a closed mesh runs TCP only"
        );
    }
    let transport = network.build(&keypair, &channel, &transport_config)?;

    let mut metrics = crate::metrics::MetricsRegistry::new();
    let libp2p_metrics = metrics.libp2p();
    let ours = metrics.fogmesh();
    let peer_metrics = PeerMetrics::default();
    peer_metrics.register(ours);
    // Made before the swarm: the kv protocol's codec counts its bytes in them.
    let kv_metrics = KvMetrics::default();
    let behaviour = build_behaviour(
        &keypair,
        &settings,
        peer_metrics,
        kv_metrics.sync_bytes.clone(),
    )?;
    let swarm = Swarm::new(
        transport,
        behaviour,
        peer_id,
        libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(Duration::from_secs(600)),
    );
    let mut swarm = swarm;

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

    // Services, seeded from the store.
    let restored = storage::restore(&tables);
    let telemetry_metrics = TelemetryMetrics::default();
    telemetry_metrics.register(ours);
    let mut telemetry = TelemetryService::new(
        keypair.clone(),
        TelemetryConfig {
            base_interval: settings.telemetry_interval,
            radio_budget: network
                .is_radio_only()
                .then_some(crate::services::telemetry::RADIO_TELEMETRY_BUDGET),
            limits: TelemetryLimits {
                max_origins: settings.telemetry_max_origins,
                expire_after: settings.telemetry_expire_after,
            },
            freshness: FreshnessPolicy::default(),
            version: VERSION.into(),
            started_at_ms,
        },
        telemetry_metrics,
    );
    let over_cap = telemetry.restore(restored.own_seq, restored.telemetry);
    let revocation_metrics = RevocationMetrics::default();
    revocation_metrics.register(ours);
    let mut revocations = RevocationService::new(
        membership.as_ref().map(|m| MeshAuthority {
            root: m.root.clone(),
            own_admission: m.admission.clone(),
            topic: membership::revocation_topic(&m.mesh_id),
        }),
        channel.clone(),
        revocation_metrics,
    );
    revocations.restore(restored.revocations);
    let device_metrics = DeviceMetrics::default();
    device_metrics.register(ours);
    let device = DeviceService::new(settings.sense_interval, device_metrics);
    let relay_metrics = RelayMetrics::default();
    relay_metrics.register(ours);
    let mut relay = RelayService::new(
        keypair.clone(),
        RelayConfig {
            // In a closed mesh the ticket says who bridges radio and internet; an open mesh
            // has nobody to say it, so any node with both links does.
            gateway: membership
                .as_ref()
                .is_none_or(|m| m.admission.roles.iter().any(|r| r == "gateway")),
            ..RelayConfig::default()
        },
        rand::SeedableRng::from_entropy(),
        relay_metrics,
    )
    .map_err(|reason| StartError::Setup {
        what: "relay",
        reason,
    })?;
    let relay_cleanup = relay.restore(
        started_at_ms,
        restored.relay_held,
        restored.relay_inbox,
        restored.relay_sent,
    );
    swarm.behaviour_mut().peers.restore(restored.peers);
    let cluster_metrics = ClusterMetrics::default();
    cluster_metrics.register(ours);
    let cluster = ClusterService::open(
        keypair.clone(),
        store.clone(),
        ClusterConfig {
            // Over Bluetooth a relay hop costs ~200 ms: slower elections and formation.
            formation: if network.is_radio_only() {
                fogmesh_consensus::formation::RADIO
            } else {
                fogmesh_consensus::formation::LAN
            },
            raft: if network.is_radio_only() {
                fogmesh_consensus::group::RADIO_TIMING
            } else {
                fogmesh_consensus::group::LAN_TIMING
            },
            schedule_every_ms: crate::services::duration_ms(settings.schedule_interval),
            roles: membership
                .as_ref()
                .map_or(OwnRoles::ALL, |m| OwnRoles::from_ticket(&m.admission.roles)),
        },
        started_at_ms,
        cluster_metrics,
    )
    .map_err(|e| StartError::Setup {
        what: "cluster",
        reason: e.to_string(),
    })?;
    kv_metrics.register(ours);
    // A store that cannot be read leaves the service refusing everything and the node in
    // safe mode (the service says so at start), rather than serving part of it.
    let kv = KvService::open(
        keypair.clone(),
        &store,
        AccessPolicy {
            admission: membership.as_ref().map(|_| channel.policy().clone()),
        },
        kv_metrics,
    );
    let storage_task = StorageHandle::spawn(store, StorageConfig::default())?;
    storage_task.register_metrics(ours);
    let (storage, storage_reports) = NodeStorage::new(storage_task, tables);
    let driver_metrics = crate::driver::DriverMetrics::default();
    driver_metrics.register(ours);
    ours.register_collector(Box::new(crate::handshake_metrics::HandshakeCollector::new(
        channel.stats().clone(),
    )));
    let events = EventBus::default();
    events.register_metrics(ours);

    let shared = Arc::new(SharedState {
        status: RwLock::new(status),
        peers: RwLock::new(Vec::new()),
        telemetry: RwLock::new(
            telemetry
                .latest()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
        ),
        own_telemetry: RwLock::new(None),
        receipts: Mutex::new(api::ReceiptLog::default()),
        device: RwLock::new(None),
        messages: RwLock::new(relay.view()),
        cluster: RwLock::new(cluster.view(started_at_ms)),
        commands: commands_tx,
        api_limits: Arc::default(),
        views: tokio::sync::watch::channel(0).0,
        events: events.clone(),
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

    let mut driver = Driver::new(DriverParts {
        radio: network.radio(),
        swarm,
        services: Services {
            telemetry,
            revocations,
            device,
            relay,
            cluster,
            kv,
        },
        storage,
        storage_reports,
        shared: shared.clone(),
        events,
        lifecycle,
        listeners,
        control_file,
        channel,
        open_mesh: membership.is_none(),
        commands,
        device_monitor: DeviceMonitor::new(&settings.data_dir, settings.simulate.clone()),
        started_at_ms,
        metrics: driver_metrics,
        libp2p_metrics,
    })
    .map_err(|e| StartError::Setup {
        what: "gossipsub",
        reason: e.to_string(),
    })?;
    for origin in over_cap {
        driver.forget_stored_telemetry(origin);
    }
    for op in relay_cleanup {
        driver.persist(op);
    }
    tracing::info!(%peer_id, %control_addr, "node started");

    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        driver.run(shutdown_rx).await;
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

/// The innermost error: "Connection refused" rather than "Failed to negotiate transport".
pub(crate) fn root_cause(error: &dyn std::error::Error) -> String {
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

fn build_behaviour(
    keypair: &Keypair,
    settings: &Settings,
    peer_metrics: PeerMetrics,
    kv_sync_bytes: fogmesh_wire::framing::WireBytes,
) -> Result<Behaviour, StartError> {
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
    // peers" at every start; the driver runs its own walks once it has peers.
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
    let peers = PeerManager::new(
        PeerManagerConfig {
            bootstrap: settings.bootstrap.clone(),
            target_peers: settings.target_peers as usize,
            max_known_peers: MAX_KNOWN_PEERS,
            redial_on_start: REDIAL_ON_START,
        },
        peer_metrics,
    );
    Ok(Behaviour {
        limits: connection_limits::Behaviour::new(limits),
        peers,
        gossipsub,
        kad,
        mdns: Toggle::from(mdns),
        identify: identify::Behaviour::new(
            identify::Config::new(PROTOCOL_VERSION.into(), keypair.public())
                .with_agent_version(format!("fogmesh/{VERSION}")),
        ),
        ping: ping::Behaviour::new(ping::Config::new()),
        relay: crate::relay::protocol::behaviour(),
        cluster: crate::cluster::protocol::behaviour(),
        cluster_bulk: crate::cluster::protocol::bulk_behaviour(),
        kv: crate::kv::behaviour(kv_sync_bytes),
    })
}

fn initial_status(
    settings: &Settings,
    peer_id: PeerId,
    lifecycle: &Lifecycle,
    started_at_ms: u64,
) -> StatusView {
    StatusView {
        version: VERSION.into(),
        phase: lifecycle.phase(),
        phase_since_ms: lifecycle.since_ms(),
        phase_reason: lifecycle.reason().into(),
        telemetry_interval_ms: settings.telemetry_interval.as_millis() as u64,
        mdns: settings.mdns,
        bootstrap: BootstrapView {
            configured: settings.bootstrap.len(),
            connected: 0,
        },
        ..StatusView::starting(
            peer_id.to_string(),
            settings.data_dir.clone(),
            started_at_ms,
        )
    }
}
