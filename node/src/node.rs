//! Start-up: composes a node from its settings and hands it to the driver.
//!
//! Start-up does everything that can fail for a person to see (data dir, identity, store,
//! admission, transports, capabilities, binding every listen address and the control API)
//! before it returns, so a port in use or an unreadable data dir is an error at the prompt,
//! not a log line later. It runs in named steps ([`start_with`]); the [`crate::runtime`]
//! driver then owns the swarm and runs the capabilities of [`crate::capabilities::ALL`].
//! `docs/architecture.md` explains how the parts fit.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fogmesh_store::task::{StorageConfig, StorageHandle};
use fogmesh_store::{Store, StoreError, StoreOptions, Table};
use fogmesh_transports::ble::arq::ArqConfig;
use fogmesh_transports::ble::driver::SharedDriver;
use fogmesh_transports::ble::sim::SimDevice;
use fogmesh_transports::ble::transport::BleTransport;
use fogmesh_transports::secure::{AdmissionPolicy, SecureChannel, SecureChannelConfig};
use fogmesh_transports::{
    build_memory_transport, build_transport, quic_enabled, secure_transport, BoxedTransport,
    TransportBuildError, TransportConfig,
};
use libp2p::core::transport::ListenerId;
use libp2p::core::Transport as _;
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::admission::{self, AdmissionView, Admissions, Membership, MembershipError};
use crate::capabilities::{self, Register, Registered, Setup, SetupError};
use crate::config::{self, Settings};
use crate::control::{self, ControlFile};
use crate::identity::{self, IdentityError};
use crate::runtime::behaviour::{self, VERSION};
use crate::runtime::clock::Clock;
use crate::runtime::driver::{self, Driver, DriverMetrics, DriverParts};
use crate::runtime::events::EventBus;
use crate::runtime::handle::{HandleParts, NodeHandle, Views, CALL_QUEUE};
use crate::runtime::lifecycle::Lifecycle;
use crate::runtime::metrics::MetricsRegistry;
use crate::runtime::peers::manager::{PeerMetrics, PeerRecord, Radio};
use crate::runtime::rpc::Rpc;
use crate::runtime::status::{BootstrapView, StatusView};
use crate::runtime::storage::NodeStorage;

pub use crate::runtime::behaviour::PROTOCOL_VERSION;

/// Most time a clean shutdown may take before the process gives up waiting.
pub const SHUTDOWN_BUDGET: Duration = Duration::from_secs(5);
/// The runtime's own table: the address book.
pub const TABLE_PEERS: &str = "peers";

/// Where a node's store lives inside its data dir.
pub fn store_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("store")
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
        relay: Option<libp2p::relay::client::Transport>,
    ) -> Result<BoxedTransport, TransportBuildError> {
        match self {
            Network::Internet => build_transport(keypair, channel, config, relay),
            // Gated so that in-memory networks can be partitioned (crate::memgate).
            Network::Memory => build_memory_transport(keypair, channel, config, relay)
                .map(|t| crate::memgate::gate(t, keypair.public().to_peer_id())),
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

    /// The radio the peer manager tunes to the power policy (and, offline, discovers with).
    fn radio(&self) -> Option<Radio> {
        let (driver, discovers): (SharedDriver, bool) = match self {
            Network::Internet | Network::Memory => return None,
            Network::Radio(device) | Network::MemoryAndRadio(device) => {
                (Arc::new(device.clone()), false)
            }
            Network::Offline(driver) => (driver.clone(), true),
        };
        Some(Radio { driver, discovers })
    }

    /// Whether circuits through relays (and so NAT traversal) can run: over internet
    /// transports, real or in-process, not on a radio.
    fn allows_relays(&self) -> bool {
        matches!(self, Network::Internet | Network::Memory)
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

impl From<SetupError> for StartError {
    fn from(error: SetupError) -> Self {
        match error {
            SetupError::Store(error) => StartError::Store(error),
            SetupError::Failed { what, reason } => StartError::Setup { what, reason },
        }
    }
}

/// A started node. Dropping it without [`RunningNode::shutdown`] aborts nothing: the task
/// keeps running until the runtime ends.
#[derive(Debug)]
pub struct RunningNode {
    pub peer_id: PeerId,
    pub control_addr: SocketAddr,
    /// The secret write requests to the control API carry (`<data_dir>/api-token`).
    pub api_token: control::access::ApiToken,
    /// The typed handle to the node: calls, views, events, metrics.
    pub handle: NodeHandle,
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

    /// Whether the node has stopped: shut down, or by itself (it does not, short of a panic).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Starts a node with `settings` on the current tokio runtime, on the internet transports.
pub async fn start(settings: Settings) -> Result<RunningNode, StartError> {
    start_on(settings, Network::Internet).await
}

/// Starts a node on the given transports.
pub async fn start_on(settings: Settings, network: Network) -> Result<RunningNode, StartError> {
    start_with(settings, network, Clock::default()).await
}

/// Starts a node on the given transports and clock (tests step or skew the wall clock).
pub async fn start_with(
    settings: Settings,
    network: Network,
    clock: Clock,
) -> Result<RunningNode, StartError> {
    start_with_capabilities(settings, network, clock, &[]).await
}

/// Starts a node that runs `extra` capabilities after those of the registration list
/// ([`capabilities::ALL`]): an embedder's own, or a test's.
pub async fn start_with_capabilities(
    mut settings: Settings,
    network: Network,
    clock: Clock,
    extra: &[Register],
) -> Result<RunningNode, StartError> {
    if !network.allows_mdns() {
        // mDNS is a UDP socket on every interface: not for a node that is offline, nor for
        // in-process networks.
        settings.mdns = false;
    }
    if !network.allows_relays() {
        settings.nat_traversal = false;
        settings.relay_service = false;
    }
    let data_dir = settings.data_dir.clone();
    prepare_data_dir(&data_dir)?;
    let keypair = identity::load_or_create(&data_dir)?;
    let peer_id = keypair.public().to_peer_id();
    let store = Store::open(&store_dir(&data_dir), &StoreOptions::default())?;

    let (membership, channel) = admit(&settings, &store, peer_id, &keypair)?;
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
    let (relay_transport, relay_client) = if settings.nat_traversal {
        let (transport, behaviour) = libp2p::relay::client::new(peer_id);
        (Some(transport), Some(behaviour))
    } else {
        (None, None)
    };
    let mut metrics = MetricsRegistry::new();
    let transport = metrics.count_bandwidth(network.build(
        &keypair,
        &channel,
        &transport_config,
        relay_transport,
    )?);
    let libp2p_metrics = metrics.libp2p();
    let views = Arc::new(Views::default());
    let registered = register_capabilities(
        extra,
        &mut Setup {
            keypair: &keypair,
            settings: &settings,
            data_dir: &data_dir,
            radio_only: network.is_radio_only(),
            store: &store,
            metrics: metrics.fogmesh(),
            views: &views,
            membership: membership.as_ref(),
            channel: &channel,
            admissions: Admissions::new(channel.clone(), membership.is_none()),
            clock: &clock,
        },
    )?;
    let (capabilities, capability_routes): (Vec<_>, Vec<_>) = registered
        .into_iter()
        .map(|r| (r.capability, r.routes))
        .unzip();
    let rpc = Rpc::new(
        capabilities
            .iter()
            .enumerate()
            .flat_map(|(index, c)| c.protocols().into_iter().map(move |p| (index, p))),
    );

    let peer_metrics = PeerMetrics::default();
    peer_metrics.register(metrics.fogmesh());
    let mut swarm = Swarm::new(
        transport,
        behaviour::build(
            &keypair,
            &settings,
            peer_metrics,
            clock.clone(),
            rpc,
            relay_client,
        )?,
        peer_id,
        libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(Duration::from_secs(600)),
    );
    let peers_table: Table<PeerRecord> = store.table(TABLE_PEERS)?;
    swarm
        .behaviour_mut()
        .peers
        .restore(driver::restore_peers(&peers_table));
    if let Some(radio) = network.radio() {
        swarm.behaviour_mut().peers.set_radio(radio);
    }
    swarm
        .behaviour_mut()
        .peers
        .check_admissions(channel.clone());
    let listeners = listen(&mut swarm, &settings, quic)?;
    let (control_listener, control_addr) = bind_control(&settings).await?;

    let lifecycle = Lifecycle::new(clock.now_ms());
    let mut status = initial_status(&settings, peer_id, &lifecycle, clock.now_ms());
    status.admission = admission_view(membership.as_ref(), quic);
    let status = views.add(status);
    let peers_view = views.add(Vec::new());
    let (calls_tx, calls) = mpsc::channel(CALL_QUEUE);
    let events = EventBus::default();
    events.register_metrics(metrics.fogmesh());
    let storage_task = StorageHandle::spawn(store, StorageConfig::default())?;
    storage_task.register_metrics(metrics.fogmesh());
    let (storage, storage_reports) = NodeStorage::new(storage_task);
    let driver_metrics = DriverMetrics::default();
    driver_metrics.register(metrics.fogmesh());
    metrics.fogmesh().register_collector(Box::new(
        crate::admission::metrics::HandshakeCollector::new(channel.stats().clone()),
    ));
    let api_token = control::access::load_or_create(&data_dir).map_err(|e| StartError::Setup {
        what: "control API token",
        reason: e.to_string(),
    })?;
    let access = control::access::Access::new(api_token.clone(), metrics.fogmesh());
    let api_limits = Arc::default();
    let handle = NodeHandle::new(HandleParts {
        peer_id,
        calls: calls_tx,
        views: views.clone(),
        status: status.clone(),
        peers: peers_view.clone(),
        events: events.clone(),
        metrics: metrics.freeze(),
        clock: clock.clone(),
        api_limits: Arc::clone(&api_limits),
    });

    let control_file = write_control_file(&data_dir, control_addr, peer_id)?;
    let (api_stop_tx, api_stop_rx) = oneshot::channel::<()>();
    let router = control::router(handle.clone(), capability_routes, access);
    let api_task = tokio::spawn(control::server::serve(
        control_listener,
        router,
        api_limits,
        api_stop_rx,
    ));

    let driver = Driver::new(DriverParts {
        swarm,
        capabilities,
        storage,
        storage_reports,
        peers_table,
        status,
        peers_view,
        events,
        lifecycle,
        listeners,
        control_file,
        channel,
        calls,
        clock,
        metrics: driver_metrics,
        libp2p_metrics,
    })
    .map_err(|e| StartError::Setup {
        what: "gossipsub",
        reason: e.to_string(),
    })?;
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
        api_token,
        handle,
        shutdown: Some(shutdown_tx),
        task,
    })
}

fn prepare_data_dir(data_dir: &std::path::Path) -> Result<(), StartError> {
    if data_dir.is_file() {
        return Err(StartError::DataDir {
            path: data_dir.to_path_buf(),
            reason: "it is a file, not a directory".into(),
        });
    }
    std::fs::create_dir_all(data_dir).map_err(|e| StartError::DataDir {
        path: data_dir.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The mesh this node is in (checking its own ticket against the stored revocations) and
/// the secure channel that admits peers by it; an open mesh says so loudly.
fn admit(
    settings: &Settings,
    store: &Store,
    peer_id: PeerId,
    keypair: &Keypair,
) -> Result<(Option<Membership>, SecureChannel), StartError> {
    let (membership, policy) = match &settings.mesh {
        Some(files) => {
            let table = store.table(crate::revocations::TABLE_REVOCATIONS)?;
            let (membership, revocations) = admission::load(
                files,
                peer_id,
                |root| crate::revocations::load_set(&table, root),
                crate::admission::mesh::now_s(),
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
    let channel = SecureChannel::new(keypair, channel_config).map_err(|e| StartError::Setup {
        what: "secure channel",
        reason: e.to_string(),
    })?;
    Ok((membership, channel))
}

/// Every capability of the registration list, in order, then `extra`.
fn register_capabilities(
    extra: &[Register],
    setup: &mut Setup<'_>,
) -> Result<Vec<Registered>, StartError> {
    capabilities::ALL
        .iter()
        .chain(extra)
        .map(|register| register(setup).map_err(StartError::from))
        .collect()
}

fn listen(
    swarm: &mut Swarm<behaviour::Behaviour>,
    settings: &Settings,
    quic: bool,
) -> Result<HashSet<ListenerId>, StartError> {
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
    Ok(listeners)
}

async fn bind_control(
    settings: &Settings,
) -> Result<(tokio::net::TcpListener, SocketAddr), StartError> {
    let control_bind = SocketAddr::from((Ipv4Addr::LOCALHOST, settings.control_port));
    let error = |e: std::io::Error| StartError::ControlApi {
        addr: control_bind,
        reason: e.to_string(),
    };
    let listener = tokio::net::TcpListener::bind(control_bind)
        .await
        .map_err(error)?;
    let addr = listener.local_addr().map_err(error)?;
    Ok((listener, addr))
}

fn write_control_file(
    data_dir: &std::path::Path,
    addr: SocketAddr,
    peer_id: PeerId,
) -> Result<PathBuf, StartError> {
    let path = control::control_file_path(data_dir);
    let contents = ControlFile {
        addr,
        pid: std::process::id(),
        peer_id: peer_id.to_string(),
    };
    let json = serde_json::to_vec_pretty(&contents).map_err(|e| StartError::Setup {
        what: "control file",
        reason: e.to_string(),
    })?;
    std::fs::write(&path, json).map_err(|e| StartError::DataDir {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    Ok(path)
}

fn admission_view(membership: Option<&Membership>, quic: bool) -> AdmissionView {
    AdmissionView {
        open: membership.is_none(),
        mesh_name: membership.map(|m| m.name.clone()),
        mesh_id: membership.map(|m| m.mesh_id.to_string()),
        roles: membership
            .map(|m| m.admission.roles.clone())
            .unwrap_or_default(),
        ticket_expires_s: membership.map(|m| m.admission.not_after),
        quic,
        ..AdmissionView::default()
    }
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
        libp2p::TransportError::Other(inner) => crate::runtime::root_cause(inner),
    }
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
