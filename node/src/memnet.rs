//! The in-memory network: many real nodes in one process, talking over the memory transport.
//!
//! Every node is a full node ([`crate::node::start_on`] with [`Network::Memory`]): its own
//! data dir, identity, store, capabilities and driver, and the real secure channel and yamux over
//! `/memory/<port>` links. Only the sockets are missing, so tests that need "several nodes
//! talking" run in one process without ports, processes or HTTP, and a few hundred nodes fit
//! on a laptop.
//!
//! Tests wait for conditions instead of polling: [`MemNet::wait_for`] re-checks a condition
//! whenever any node's views change ([`NodeHandle::changed`]), under one
//! overall timeout.
//!
//! Data dirs: the caller gives a base dir (a temp dir in tests) and each node lives in
//! `<base>/node-<index>`; the library itself creates and deletes nothing else, so it needs
//! no temp-dir dependency and a caller can keep the dirs to look at after a failure.
//!
//! Addresses: each node listens on a memory port the network picks before the node starts,
//! and its identity is created before it starts too, so every dial address
//! (`/memory/<port>/p2p/<peer id>`) is known up front: bootstrap lists need no waiting, and
//! a restarted node comes back at the same address.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use rand::rngs::StdRng;
use rand::seq::index;
use rand::SeedableRng;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::admission::mesh::{self, MeshError};
use crate::capabilities::Register;
use crate::cluster::service::ClusterView;
use crate::config::{ConfigLayer, MeshFiles, Settings};
use crate::identity::{self, IdentityError};
use crate::node::{self, Network, RunningNode, StartError};
use crate::runtime::clock::{Clock, WallClock};
use crate::runtime::handle::NodeHandle;
use crate::runtime::status::{PeerView, StatusView};
use crate::telemetry::view::TelemetrySnapshot;
use fogmesh_device::{DeviceClass, SimulateConfig};

/// Telemetry interval of nodes unless the builder says otherwise: fast enough that a small
/// network converges in a second or two, slow enough that a few dozen nodes on one core do
/// not spend their time on each other's telemetry.
pub const DEFAULT_TELEMETRY_INTERVAL: Duration = Duration::from_millis(500);
/// Most often [`MemNet::wait_for`] re-checks its condition. Views change thousands of times
/// a second in a big network, and a condition over every pair of nodes costs O(N²), so
/// checks are spaced out rather than run on every change.
pub const CHECK_GAP: Duration = Duration::from_millis(10);
/// How long a ticket issued by [`MeshRoot::admit`] is valid: longer than any test.
pub const TICKET_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// Why the network (or one of its nodes) could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MemNetError {
    #[error("node {index} did not start: {source}")]
    Start {
        index: usize,
        #[source]
        source: StartError,
    },
    #[error("cannot prepare {path}: {reason}")]
    Prepare { path: PathBuf, reason: String },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Mesh(#[from] MeshError),
    #[error("there is no node {0}")]
    NoSuchNode(usize),
}

/// A condition that did not hold in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("condition not met within {waited:?}")]
pub struct TimedOut {
    pub waited: Duration,
}

/// Who a node dials at start (its bootstrap list), by index of earlier nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// Every node dials node 0. Past ~100 nodes node 0's connection budget (target 24 peers)
    /// prunes most of them, so use [`Topology::Random`] for large networks.
    Star,
    /// Node i dials node i-1: the longest paths, for propagation over many hops.
    Line,
    /// Node i dials `links` distinct earlier nodes, picked by an RNG seeded with `seed`, so
    /// the same seed gives the same graph. Connected, with short paths and no hub.
    Random { links: usize, seed: u64 },
    /// Nobody dials anybody; tests connect nodes themselves (e.g. with [`NodeSpec`]).
    Isolated,
}

impl Topology {
    /// The bootstrap targets of node `index` (all earlier than `index`).
    pub fn bootstrap_of(&self, index: usize) -> Vec<usize> {
        match self {
            Topology::Isolated => Vec::new(),
            _ if index == 0 => Vec::new(),
            Topology::Star => vec![0],
            Topology::Line => vec![index - 1],
            Topology::Random { links, seed } => {
                // One RNG per node (seed and index), so node i's links do not depend on how
                // many nodes were started before it with another topology.
                let mut rng = StdRng::seed_from_u64(
                    seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                );
                let mut picked = index::sample(&mut rng, index, (*links).min(index)).into_vec();
                picked.sort_unstable();
                picked
            }
        }
    }
}

/// A mesh root for closed-mesh networks: its key, public description, and tickets for nodes.
#[derive(Debug)]
pub struct MeshRoot {
    root_key: PathBuf,
    description: PathBuf,
}

impl MeshRoot {
    /// Creates a mesh root named `name` in `dir` (`<name>.root.key`, `<name>.mesh.json`).
    pub fn create(dir: &Path, name: &str) -> Result<MeshRoot, MemNetError> {
        ensure_dir(dir)?;
        let (_, root_key, description) = mesh::init(dir, name)?;
        Ok(MeshRoot {
            root_key,
            description,
        })
    }

    /// The root key file, as `fogmesh ticket issue|revoke` take it.
    pub fn root_key(&self) -> &Path {
        &self.root_key
    }

    /// Gives the node in `data_dir` its identity now and writes a ticket for it (role
    /// `worker`) to `<data_dir>/ticket`.
    pub fn admit(&self, data_dir: &Path) -> Result<MeshFiles, MemNetError> {
        self.admit_as(data_dir, &["worker".to_owned()], TICKET_VALIDITY)
    }

    /// Like [`MeshRoot::admit`], with the roles and validity given.
    pub fn admit_as(
        &self,
        data_dir: &Path,
        roles: &[String],
        valid: Duration,
    ) -> Result<MeshFiles, MemNetError> {
        ensure_dir(data_dir)?;
        let peer = identity::load_or_create(data_dir)?.public().to_peer_id();
        let ticket = mesh::issue(&self.root_key, peer, roles, valid)?;
        let ticket_path = data_dir.join("ticket");
        std::fs::write(&ticket_path, ticket).map_err(|e| MemNetError::Prepare {
            path: ticket_path.clone(),
            reason: e.to_string(),
        })?;
        Ok(MeshFiles {
            mesh: self.description.clone(),
            ticket: ticket_path,
        })
    }

    /// A root-signed revocation of every ticket `peer` holds.
    pub fn revoke(&self, peer: PeerId) -> Result<Vec<u8>, MemNetError> {
        Ok(mesh::revoke(
            &self.root_key,
            mesh::RevokeTarget::Peer(peer),
        )?)
    }
}

/// Which mesh a node joins.
#[derive(Debug, Clone, Default)]
pub enum Admission {
    /// No mesh: anyone connects.
    #[default]
    Open,
    /// A closed mesh: the node gets a ticket from this root.
    Member(Arc<MeshRoot>),
}

type Tweak = Box<dyn FnOnce(&mut Settings) + Send>;
type EveryNode = Arc<dyn Fn(usize, &mut Settings) + Send + Sync>;

/// A node added to a running network with [`MemNet::add_node`].
#[derive(Default)]
pub struct NodeSpec {
    bootstrap: Vec<usize>,
    admission: Option<Admission>,
    tweak: Option<Tweak>,
    wall: Option<WallClock>,
    extra: Vec<Register>,
}

impl std::fmt::Debug for NodeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSpec")
            .field("bootstrap", &self.bootstrap)
            .field("admission", &self.admission)
            .finish_non_exhaustive()
    }
}

impl NodeSpec {
    pub fn new() -> NodeSpec {
        NodeSpec::default()
    }

    /// Nodes (by index) this one dials at start.
    pub fn bootstrap(mut self, to: impl IntoIterator<Item = usize>) -> NodeSpec {
        self.bootstrap = to.into_iter().collect();
        self
    }

    /// Joins another mesh than the network's (or none), e.g. to play an intruder.
    pub fn admission(mut self, admission: Admission) -> NodeSpec {
        self.admission = Some(admission);
        self
    }

    /// Reads wall time from `wall` instead of the system clock (to step or skew it); kept
    /// across restarts.
    pub fn wall_clock(mut self, wall: WallClock) -> NodeSpec {
        self.wall = Some(wall);
        self
    }

    /// Runs `register`'s capability too, after the registration list's (kept across
    /// restarts).
    pub fn capability(mut self, register: Register) -> NodeSpec {
        self.extra.push(register);
        self
    }

    /// Changes the node's settings last, after the network's own.
    pub fn settings(mut self, tweak: impl FnOnce(&mut Settings) + Send + 'static) -> NodeSpec {
        self.tweak = Some(Box::new(tweak));
        self
    }
}

/// Builds a [`MemNet`]; see [`MemNet::builder`].
pub struct MemNetBuilder {
    base_dir: PathBuf,
    nodes: usize,
    topology: Topology,
    telemetry_interval: Duration,
    admission: Admission,
    every_node: Option<EveryNode>,
}

impl std::fmt::Debug for MemNetBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemNetBuilder")
            .field("base_dir", &self.base_dir)
            .field("nodes", &self.nodes)
            .field("topology", &self.topology)
            .field("telemetry_interval", &self.telemetry_interval)
            .field("admission", &self.admission)
            .finish_non_exhaustive()
    }
}

impl MemNetBuilder {
    /// How many nodes start with the network (more can be added later).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    pub fn topology(mut self, topology: Topology) -> Self {
        self.topology = topology;
        self
    }

    pub fn telemetry_interval(mut self, interval: Duration) -> Self {
        self.telemetry_interval = interval;
        self
    }

    /// The mesh every node joins unless its [`NodeSpec`] says otherwise.
    pub fn admission(mut self, admission: Admission) -> Self {
        self.admission = admission;
        self
    }

    /// Creates a closed mesh named `name` under the base dir and admits every node to it.
    pub fn closed_mesh(self, name: &str) -> Result<Self, MemNetError> {
        let root = MeshRoot::create(&self.base_dir.join("mesh"), name)?;
        Ok(self.admission(Admission::Member(Arc::new(root))))
    }

    /// Changes each node's settings (given its index) after the network's defaults.
    pub fn settings(mut self, f: impl Fn(usize, &mut Settings) + Send + Sync + 'static) -> Self {
        self.every_node = Some(Arc::new(f));
        self
    }

    /// Starts the nodes, in index order, each dialling its topology's earlier nodes.
    pub async fn start(self) -> Result<MemNet, MemNetError> {
        ensure_dir(&self.base_dir)?;
        let mut net = MemNet {
            base_dir: self.base_dir,
            telemetry_interval: self.telemetry_interval,
            admission: self.admission,
            every_node: self.every_node,
            slots: Vec::with_capacity(self.nodes),
            changed: Arc::new(Notify::new()),
        };
        for index in 0..self.nodes {
            let spec = NodeSpec::new().bootstrap(self.topology.bootstrap_of(index));
            if let Err(error) = net.add_node(spec).await {
                // The caller gets no network to stop, so the nodes already up stop here.
                net.shutdown().await;
                return Err(error);
            }
        }
        Ok(net)
    }
}

/// One node of the network, running or stopped.
#[derive(Debug)]
struct Slot {
    dir: PathBuf,
    peer_id: PeerId,
    /// The peer id as the views key it.
    id: String,
    port: u64,
    settings: Settings,
    /// The clock of its first run (`None`: the system's).
    clock: Option<Clock>,
    /// Capabilities it runs beyond the registration list.
    extra: Vec<Register>,
    running: Option<RunningNode>,
    /// The handle of the current (or last) run; kept after a stop, so tests can read its
    /// views.
    handle: NodeHandle,
    watcher: Option<JoinHandle<()>>,
}

/// A node's clocks for a new run: the system's, or those of its first run anchored anew.
fn clock_of(clock: &Option<Clock>) -> Clock {
    clock.as_ref().map_or_else(Clock::default, Clock::anew)
}

impl Slot {
    fn dial_addr(&self) -> Multiaddr {
        memory_addr(self.port).with(Protocol::P2p(self.peer_id))
    }
}

/// Counters summed over a network ([`MemNet::traffic`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Traffic {
    /// Bytes through every node's connections, in plus out.
    pub bytes: f64,
    /// Connections established (each counted by both ends).
    pub connections: u64,
    /// Telemetry records accepted.
    pub accepted: u64,
}

/// See the module docs. Dropping it without [`MemNet::shutdown`] leaves the nodes running
/// until the runtime ends.
pub struct MemNet {
    base_dir: PathBuf,
    telemetry_interval: Duration,
    admission: Admission,
    every_node: Option<EveryNode>,
    slots: Vec<Slot>,
    /// Woken whenever any node's views change.
    changed: Arc<Notify>,
}

impl std::fmt::Debug for MemNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemNet")
            .field("base_dir", &self.base_dir)
            .field("telemetry_interval", &self.telemetry_interval)
            .field("admission", &self.admission)
            .field("slots", &self.slots)
            .finish_non_exhaustive()
    }
}

impl MemNet {
    /// A network whose nodes live under `base_dir`: open mesh, [`Topology::Random`] with two
    /// links per node, [`DEFAULT_TELEMETRY_INTERVAL`], no nodes until [`MemNetBuilder::nodes`].
    pub fn builder(base_dir: &Path) -> MemNetBuilder {
        MemNetBuilder {
            base_dir: base_dir.to_path_buf(),
            nodes: 0,
            topology: Topology::Random { links: 2, seed: 1 },
            telemetry_interval: DEFAULT_TELEMETRY_INTERVAL,
            admission: Admission::Open,
            every_node: None,
        }
    }

    /// Starts one more node; returns its index.
    pub async fn add_node(&mut self, spec: NodeSpec) -> Result<usize, MemNetError> {
        let index = self.slots.len();
        let dir = self.base_dir.join(format!("node-{index}"));
        ensure_dir(&dir)?;
        let peer_id = identity::load_or_create(&dir)?.public().to_peer_id();
        let port = next_port();
        let mut bootstrap = Vec::with_capacity(spec.bootstrap.len());
        for to in &spec.bootstrap {
            bootstrap.push(self.slot(*to)?.dial_addr());
        }
        let mut settings = Settings::resolve(ConfigLayer {
            data_dir: Some(dir.clone()),
            listen: Some(vec![memory_addr(port)]),
            bootstrap: Some(bootstrap),
            mdns: Some(false),
            quic: Some(false),
            // In-process nodes all reach each other; a test that wants reachability checks,
            // relays and hole punching turns them on with a tweak.
            nat_traversal: Some(false),
            relay_service: Some(false),
            telemetry_interval: Some(self.telemetry_interval),
            // The host's own battery and temperature would make the power mode (and with it
            // the telemetry cadence) differ from machine to machine; a mains-powered desktop
            // at a comfortable temperature keeps every node in the same mode everywhere.
            simulate: Some(SimulateConfig {
                device: Some(DeviceClass::Desktop),
                temperature: Some(40.0),
                ..SimulateConfig::default()
            }),
            ..ConfigLayer::default()
        });
        settings.mesh = match spec.admission.as_ref().unwrap_or(&self.admission) {
            Admission::Open => None,
            Admission::Member(root) => Some(root.admit(&dir)?),
        };
        if let Some(every) = &self.every_node {
            every(index, &mut settings);
        }
        if let Some(tweak) = spec.tweak {
            tweak(&mut settings);
        }
        let clock = spec.wall.map(Clock::with_wall);
        let extra = spec.extra;
        let running = node::start_with_capabilities(
            settings.clone(),
            Network::Memory,
            clock_of(&clock),
            &extra,
        )
        .await
        .map_err(|source| MemNetError::Start { index, source })?;
        tracing::debug!(index, %peer_id, port, "in-memory node started");
        let handle = running.handle.clone();
        self.slots.push(Slot {
            dir,
            id: peer_id.to_string(),
            peer_id,
            port,
            settings,
            clock,
            extra,
            watcher: Some(self.watch(&handle)),
            running: Some(running),
            handle,
        });
        Ok(index)
    }

    /// Forwards one node's view changes to the network's wake-up.
    fn watch(&self, handle: &NodeHandle) -> JoinHandle<()> {
        let mut views = handle.changed();
        let changed = self.changed.clone();
        tokio::spawn(async move {
            while views.changed().await.is_ok() {
                changed.notify_waiters();
            }
        })
    }

    fn slot(&self, index: usize) -> Result<&Slot, MemNetError> {
        self.slots.get(index).ok_or(MemNetError::NoSuchNode(index))
    }

    /// Nodes ever started (running or stopped).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Indexes of the nodes running now.
    pub fn running(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|i| self.slots[*i].running.is_some())
            .collect()
    }

    pub fn is_running(&self, index: usize) -> bool {
        self.slots.get(index).is_some_and(|s| s.running.is_some())
    }

    /// The running node at `index`.
    pub fn node(&self, index: usize) -> Option<&RunningNode> {
        self.slots.get(index)?.running.as_ref()
    }

    /// The handle of the node at `index`: of its current run, or of its last one if
    /// stopped (its views stay readable).
    pub fn handle(&self, index: usize) -> Option<&NodeHandle> {
        self.slots.get(index).map(|s| &s.handle)
    }

    pub fn peer_id(&self, index: usize) -> Option<PeerId> {
        self.slots.get(index).map(|s| s.peer_id)
    }

    /// The node's data dir.
    pub fn dir(&self, index: usize) -> Option<&Path> {
        self.slots.get(index).map(|s| s.dir.as_path())
    }

    /// The settings the node was (last) started with.
    pub fn settings(&self, index: usize) -> Option<&Settings> {
        self.slots.get(index).map(|s| &s.settings)
    }

    /// `/memory/<port>/p2p/<peer id>`: where others dial the node.
    pub fn dial_addr(&self, index: usize) -> Option<Multiaddr> {
        self.slots.get(index).map(Slot::dial_addr)
    }

    /// The node's status view (as `/v1/status` would show it, uptime aside).
    pub fn status(&self, index: usize) -> Option<StatusView> {
        self.slots.get(index).map(|s| s.handle.status())
    }

    /// The node's peers view (as `/v1/peers` would show it).
    pub fn peers(&self, index: usize) -> Vec<PeerView> {
        self.slots
            .get(index)
            .map(|s| s.handle.peers())
            .unwrap_or_default()
    }

    /// Whether node `from` has a live connection to node `to`, by `from`'s views.
    pub fn connected(&self, from: usize, to: usize) -> bool {
        let (Some(a), Some(b)) = (self.slots.get(from), self.slots.get(to)) else {
            return false;
        };
        a.running.is_some()
            && a.handle
                .peers()
                .iter()
                .any(|p| p.connected && p.peer_id == b.id)
    }

    /// Whether node `holder` holds fresh (not stale) telemetry from node `origin`.
    pub fn has_fresh_telemetry(&self, holder: usize, origin: usize) -> bool {
        let (Some(h), Some(o)) = (self.slots.get(holder), self.slots.get(origin)) else {
            return false;
        };
        let now = h.handle.clock().now_ms();
        telemetry(&h.handle, |t| {
            t.get(&o.id).is_some_and(|r| !r.is_stale(now))
        })
    }

    /// Peer ids whose fresh telemetry node `holder` holds (its own excluded).
    pub fn fresh_telemetry(&self, holder: usize) -> Vec<String> {
        let Some(h) = self.slots.get(holder) else {
            return Vec::new();
        };
        let now = h.handle.clock().now_ms();
        telemetry(&h.handle, |t| {
            t.iter()
                .filter(|(_, r)| !r.is_stale(now))
                .map(|(id, _)| id.clone())
                .collect()
        })
    }

    /// Running nodes that know the mesh as they should (docs/scale.md): fresh telemetry
    /// from every other running node (a small mesh, or before clusters form), or, once
    /// clustered, fresh telemetry from every running member of their own cluster and a
    /// summary of every cluster, those summaries naming every running node.
    pub fn converged_nodes(&self) -> usize {
        let running: Vec<&Slot> = self.slots.iter().filter(|s| s.running.is_some()).collect();
        let all_fresh = |holder: &Slot| {
            let now = holder.handle.clock().now_ms();
            telemetry(&holder.handle, |t| {
                // Cheap first: a node missing records cannot have them all fresh.
                t.len() + 1 >= running.len()
                    && running.iter().all(|o| {
                        o.id == holder.id || t.get(&o.id).is_some_and(|r| !r.is_stale(now))
                    })
            })
        };
        let census = Census::of(&running);
        running
            .iter()
            .enumerate()
            .filter(|(i, holder)| census.knows_all(*i, holder) || all_fresh(holder))
            .count()
    }

    /// Every node's bytes through its connections so far (in + out, the
    /// `libp2p_bandwidth_bytes_total` counters), connections established and telemetry
    /// records accepted, summed over the network: what upkeep benchmarks difference over a
    /// window.
    pub fn traffic(&self) -> Traffic {
        let mut traffic = Traffic::default();
        let sum = |text: &str, prefix: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum()
        };
        for slot in &self.slots {
            let text = slot.handle.metrics().encode();
            traffic.bytes += sum(&text, "libp2p_bandwidth_bytes_total{");
            traffic.connections += sum(&text, "libp2p_swarm_connections_established_total{") as u64;
            traffic.accepted += slot.handle.status().telemetry_accepted;
        }
        traffic
    }

    /// How far cluster formation got, for progress lines: running nodes in a cluster, the
    /// clusters they form, and how many cluster summaries a node holds on average.
    pub fn formation(&self) -> Formation {
        let running: Vec<&Slot> = self.slots.iter().filter(|s| s.running.is_some()).collect();
        let census = Census::of(&running);
        let known: usize = running
            .iter()
            .map(|s| cluster_view(&s.handle, |v| v.known_clusters.len()))
            .sum();
        let mut sizes: std::collections::HashMap<&String, usize> = std::collections::HashMap::new();
        for cluster in census.cluster_of.iter().flatten() {
            *sizes.entry(cluster).or_default() += 1;
        }
        let mut by_size = [0usize; 6];
        for size in sizes.values() {
            by_size[(*size).min(5)] += 1;
        }
        Formation {
            running: running.len(),
            clustered: census.cluster_of.iter().flatten().count(),
            clusters: census.clusters.len(),
            clusters_by_size: by_size,
            summaries_held_mean: known as f64 / running.len().max(1) as f64,
        }
    }

    /// Whether no running node still counts any of `gone` as alive: none holds a fresh
    /// record of it, and no cluster summary held anywhere lists it as a member its
    /// coordinator still hears.
    pub fn forgotten_everywhere(&self, gone: &[PeerId]) -> bool {
        let gone: std::collections::HashSet<String> = gone.iter().map(|p| p.to_string()).collect();
        self.slots
            .iter()
            .filter(|s| s.running.is_some())
            .all(|holder| {
                let now = holder.handle.clock().now_ms();
                let no_fresh = telemetry(&holder.handle, |t| {
                    gone.iter()
                        .all(|g| t.get(g).is_none_or(|r| r.is_stale(now)))
                });
                no_fresh
                    && cluster_view(&holder.handle, |v| {
                        v.known_clusters.iter().all(|k| {
                            k.nodes
                                .iter()
                                .all(|n| n.silent || !gone.contains(&n.peer_id))
                        })
                    })
            })
    }

    /// Pairs (holder, origin) of distinct running nodes where the holder has the origin's
    /// fresh telemetry; full convergence is n·(n−1) pairs.
    pub fn fresh_pairs(&self) -> usize {
        let running: Vec<&Slot> = self.slots.iter().filter(|s| s.running.is_some()).collect();
        running
            .iter()
            .map(|holder| {
                let now = holder.handle.clock().now_ms();
                telemetry(&holder.handle, |t| {
                    running
                        .iter()
                        .filter(|o| {
                            o.id != holder.id && t.get(&o.id).is_some_and(|r| !r.is_stale(now))
                        })
                        .count()
                })
            })
            .sum()
    }

    /// Pairs (holder, origin) of distinct running nodes where the holder lacks the origin's
    /// fresh telemetry: what stands between the network and convergence.
    pub fn missing_pairs(&self) -> Vec<(usize, usize)> {
        let running = self.running();
        let mut missing = Vec::new();
        for &h in &running {
            let now = self.slots[h].handle.clock().now_ms();
            telemetry(&self.slots[h].handle, |t| {
                for &o in &running {
                    let fresh = t.get(&self.slots[o].id).is_some_and(|r| !r.is_stale(now));
                    if h != o && !fresh {
                        missing.push((h, o));
                    }
                }
            });
        }
        missing
    }

    /// Every running node knows the mesh as it should ([`MemNet::converged_nodes`]).
    pub fn converged(&self) -> bool {
        self.converged_nodes() == self.slots.iter().filter(|s| s.running.is_some()).count()
    }

    /// Waits until `condition` holds, re-checking it whenever a node's views change (and at
    /// most every [`CHECK_GAP`]). Returns how long it took.
    ///
    /// The driver refreshes every node's views at least once a second, so conditions that
    /// turn true with time alone (staleness) are seen within about a second too.
    pub async fn wait_for(
        &self,
        mut condition: impl FnMut(&MemNet) -> bool,
        timeout: Duration,
    ) -> Result<Duration, TimedOut> {
        let started = Instant::now();
        let deadline = started + timeout;
        loop {
            // Registered before the check, so a change during the check is not missed.
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let checking = Instant::now();
            if condition(self) {
                return Ok(started.elapsed());
            }
            // A check over a thousand nodes takes milliseconds: space them so checking
            // takes at most a fifth of the time.
            let gap = CHECK_GAP.max(checking.elapsed() * 4);
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(TimedOut {
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(gap).await;
        }
    }

    /// Waits for full telemetry convergence ([`MemNet::converged`]).
    pub async fn wait_converged(&self, timeout: Duration) -> Result<Duration, TimedOut> {
        self.wait_for(MemNet::converged, timeout).await
    }

    /// Stops node `index` cleanly (its store flushed); its dir, identity and port are kept
    /// for [`MemNet::restart`]. Stopping a stopped node does nothing.
    pub async fn stop(&mut self, index: usize) -> Result<(), MemNetError> {
        let slot = self
            .slots
            .get_mut(index)
            .ok_or(MemNetError::NoSuchNode(index))?;
        if let Some(running) = slot.running.take() {
            running.shutdown().await;
        }
        if let Some(watcher) = slot.watcher.take() {
            watcher.abort();
        }
        // Waiters may be waiting for this node to be gone.
        self.changed.notify_waiters();
        Ok(())
    }

    /// Starts node `index` again with its dir, identity, address and settings (stopping it
    /// first if it runs).
    pub async fn restart(&mut self, index: usize) -> Result<(), MemNetError> {
        self.restart_with(index, |_| {}).await
    }

    /// Like [`MemNet::restart`], with its settings changed by `tweak` first (kept for later
    /// restarts).
    pub async fn restart_with(
        &mut self,
        index: usize,
        tweak: impl FnOnce(&mut Settings),
    ) -> Result<(), MemNetError> {
        self.stop(index).await?;
        let slot = self
            .slots
            .get_mut(index)
            .ok_or(MemNetError::NoSuchNode(index))?;
        tweak(&mut slot.settings);
        let running = node::start_with_capabilities(
            slot.settings.clone(),
            Network::Memory,
            clock_of(&slot.clock),
            &slot.extra,
        )
        .await
        .map_err(|source| MemNetError::Start { index, source })?;
        let handle = running.handle.clone();
        tracing::debug!(index, peer_id = %slot.peer_id, "in-memory node restarted");
        slot.running = Some(running);
        slot.handle = handle.clone();
        let watcher = self.watch(&handle);
        if let Some(slot) = self.slots.get_mut(index) {
            slot.watcher = Some(watcher);
        }
        self.changed.notify_waiters();
        Ok(())
    }

    /// Stops every node, all at once.
    pub async fn shutdown(mut self) {
        let stopping: Vec<_> = self
            .slots
            .iter_mut()
            .filter_map(|s| s.running.take())
            .map(RunningNode::shutdown)
            .collect();
        futures::future::join_all(stopping).await;
    }
}

impl Drop for MemNet {
    fn drop(&mut self) {
        for slot in &mut self.slots {
            if let Some(watcher) = slot.watcher.take() {
                watcher.abort();
            }
        }
    }
}

fn memory_addr(port: u64) -> Multiaddr {
    Multiaddr::empty().with(Protocol::Memory(port))
}

/// A memory port no other network in this process uses.
///
/// Memory ports are process-wide, and test binaries run tests in parallel: ports count up
/// from a random base far above where tests that pick their own ports (small numbers) live,
/// so two networks in one process never meet by accident.
fn next_port() -> u64 {
    static BASE: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = *BASE.get_or_init(|| (1 << 40) + (rand::random::<u64>() >> 24));
    base + NEXT.fetch_add(1, Ordering::Relaxed)
}

fn ensure_dir(dir: &Path) -> Result<(), MemNetError> {
    std::fs::create_dir_all(dir).map_err(|e| MemNetError::Prepare {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })
}

/// See [`MemNet::formation`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Formation {
    pub running: usize,
    pub clustered: usize,
    pub clusters: usize,
    /// Clusters with 1, 2, ... 5 running members (index 0 unused).
    pub clusters_by_size: [usize; 6],
    pub summaries_held_mean: f64,
}

impl std::fmt::Display for Formation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} nodes in {} clusters (by size 1-5: {:?}); {:.1} summaries held a node",
            self.clustered,
            self.running,
            self.clusters,
            &self.clusters_by_size[1..],
            self.summaries_held_mean
        )
    }
}

/// The clusters of the running nodes, as their own views say, for judging what every node
/// should know.
struct Census {
    /// Whether each running node (by index into the running list) is a cluster member,
    /// and of which cluster.
    cluster_of: Vec<Option<String>>,
    clusters: std::collections::HashSet<String>,
    running: std::collections::HashSet<String>,
}

impl Census {
    fn of(running: &[&Slot]) -> Census {
        let cluster_of: Vec<Option<String>> = running
            .iter()
            .map(|s| {
                cluster_view(&s.handle, |v| {
                    (v.state == "member").then(|| v.cluster.clone()).flatten()
                })
            })
            .collect();
        Census {
            clusters: cluster_of.iter().flatten().cloned().collect(),
            cluster_of,
            running: running.iter().map(|s| s.id.clone()).collect(),
        }
    }

    /// Node `i` (`holder`) is clustered, holds fresh telemetry of its running cluster
    /// mates, and holds every cluster's summary; the summaries name at least as many nodes
    /// as are clustered.
    fn knows_all(&self, i: usize, holder: &Slot) -> bool {
        if self.cluster_of.get(i).is_none_or(Option::is_none) {
            return false;
        }
        let clustered = self.cluster_of.iter().flatten().count();
        let now = holder.handle.clock().now_ms();
        let mates = cluster_view(&holder.handle, |v| {
            let known: std::collections::HashSet<&str> = v
                .known_clusters
                .iter()
                .map(|k| k.cluster.as_str())
                .collect();
            let named: usize = v.known_clusters.iter().map(|k| k.members).sum();
            (self.clusters.iter().all(|c| known.contains(c.as_str())) && named >= clustered).then(
                || {
                    v.members
                        .iter()
                        .map(|m| m.peer_id.clone())
                        .filter(|p| *p != holder.id && self.running.contains(p))
                        .collect::<Vec<String>>()
                },
            )
        });
        let Some(mates) = mates else {
            return false;
        };
        telemetry(&holder.handle, |t| {
            mates
                .iter()
                .all(|m| t.get(m).is_some_and(|r| !r.is_stale(now)))
        })
    }
}

/// Reads a node's cluster view (the default one if it runs no cluster capability).
fn cluster_view<R>(handle: &NodeHandle, f: impl FnOnce(&ClusterView) -> R) -> R {
    match handle.view::<ClusterView>() {
        Some(cell) => cell.read(f),
        None => f(&ClusterView::default()),
    }
}

/// Reads a node's latest telemetry per origin (empty if it runs no telemetry).
fn telemetry<R>(
    handle: &NodeHandle,
    f: impl FnOnce(
        &std::collections::BTreeMap<String, crate::telemetry::record::ReceivedTelemetry>,
    ) -> R,
) -> R {
    match handle.view::<TelemetrySnapshot>() {
        Some(cell) => cell.read(|t| f(&t.latest)),
        None => f(&std::collections::BTreeMap::new()),
    }
}

/// Faults beyond a clean stop: partitions and abrupt stops, through the memory transport's
/// gate ([`crate::memgate`]).
impl MemNet {
    /// Cuts the nodes `group` (by index) off from every other node: links between the two
    /// sides close and new ones are refused. Partitions add up; [`MemNet::heal`] ends them.
    pub fn partition(&self, group: &[usize]) -> Result<(), MemNetError> {
        let peers = group
            .iter()
            .map(|i| self.peer_id(*i).ok_or(MemNetError::NoSuchNode(*i)))
            .collect::<Result<Vec<_>, _>>()?;
        crate::memgate::partition(peers);
        Ok(())
    }

    /// Ends every partition among this network's nodes.
    pub fn heal(&self) {
        crate::memgate::heal(self.slots.iter().map(|s| s.peer_id));
    }

    /// Stops node `index` as abruptly as one process allows: first cut off from every peer,
    /// so they see its links die without a goodbye (as after a crash), then stopped; unlike
    /// a crash, its store is still flushed. Its dir, identity and port are kept for
    /// [`MemNet::restart`].
    pub async fn kill(&mut self, index: usize) -> Result<(), MemNetError> {
        let peer = self.peer_id(index).ok_or(MemNetError::NoSuchNode(index))?;
        crate::memgate::isolate(peer, true);
        let stopped = self.stop(index).await;
        crate::memgate::isolate(peer, false);
        stopped
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn random_topology_is_reproducible_and_links_only_earlier_nodes() {
        let t = Topology::Random { links: 3, seed: 42 };
        for i in 0..200 {
            let links = t.bootstrap_of(i);
            assert_eq!(links, t.bootstrap_of(i), "same seed, same links");
            assert_eq!(links.len(), 3.min(i));
            assert!(links.iter().all(|l| *l < i));
            assert!(links.windows(2).all(|w| w[0] < w[1]), "distinct: {links:?}");
        }
        let other = Topology::Random { links: 3, seed: 43 };
        assert!((10..50).any(|i| other.bootstrap_of(i) != t.bootstrap_of(i)));
    }

    #[test]
    fn star_line_and_isolated_link_as_named() {
        assert_eq!(Topology::Star.bootstrap_of(0), Vec::<usize>::new());
        assert_eq!(Topology::Star.bootstrap_of(7), vec![0]);
        assert_eq!(Topology::Line.bootstrap_of(7), vec![6]);
        assert!(Topology::Isolated.bootstrap_of(7).is_empty());
    }

    #[test]
    fn ports_are_never_handed_out_twice() {
        let ports: std::collections::HashSet<u64> = (0..1000).map(|_| next_port()).collect();
        assert_eq!(ports.len(), 1000);
    }
}
