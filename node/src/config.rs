//! Configuration: a TOML file, `FOGMESH_*` environment variables and command-line flags, in
//! that order of precedence (flags win). Each source is read into a [`ConfigLayer`]; unknown
//! keys and bad values are errors that name the key and the source. [`Settings`] is the
//! resolved, validated result the node runs with.

use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

use fogmesh_device::SimulateConfig;

/// Default TCP and UDP (QUIC) port of a node.
pub const DEFAULT_PORT: u16 = 4747;
const MIN_TELEMETRY_INTERVAL: Duration = Duration::from_millis(100);
const MAX_TELEMETRY_INTERVAL: Duration = Duration::from_secs(3600);
const MIN_EXPIRE_AFTER: Duration = Duration::from_secs(60);
const MAX_EXPIRE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default `telemetry_full_mesh_below`: a mesh smaller than this sees every node's
/// telemetry everywhere (docs/scale.md).
pub const DEFAULT_TELEMETRY_FULL_MESH_BELOW: usize = 32;
/// Highest accepted `telemetry_max_origins`.
pub const MAX_TELEMETRY_ORIGINS: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// One source's settings; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigLayer {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<Vec<Multiaddr>>,
    pub bootstrap: Option<Vec<Multiaddr>>,
    pub mdns: Option<bool>,
    pub dht: Option<bool>,
    pub quic: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    pub telemetry_interval: Option<Duration>,
    pub control_port: Option<u16>,
    pub max_connections: Option<u32>,
    /// Connections kept when more are open (surplus non-mesh peers are pruned).
    pub target_peers: Option<u32>,
    pub log: Option<String>,
    pub log_format: Option<LogFormat>,
    /// How often the device is re-sensed (faster under battery or thermal pressure).
    #[serde(default, with = "humantime_serde")]
    pub sense_interval: Option<Duration>,
    /// How often a coordinator places queued tasks besides on every change (docs/clusters.md).
    #[serde(default, with = "humantime_serde")]
    pub schedule_interval: Option<Duration>,
    /// Pretend to be another device (testers, testnets).
    pub simulate: Option<SimulateConfig>,
    /// The mesh to join: its public description (`<name>.mesh.json`). Without it the node
    /// runs an open mesh.
    pub mesh: Option<PathBuf>,
    /// This node's ticket for that mesh.
    pub ticket: Option<PathBuf>,
    /// Exempt handshakes from 127.0.0.0/8 and ::1 from the per-address rate limit and
    /// backoff. For local testnets, where every node dials from 127.0.0.1.
    pub exempt_loopback: Option<bool>,
    /// Forget a node's telemetry once it has been silent this long.
    #[serde(default, with = "humantime_serde")]
    pub telemetry_expire_after: Option<Duration>,
    /// Most nodes whose telemetry is kept (the one heard from longest ago makes room).
    pub telemetry_max_origins: Option<usize>,
    /// While the mesh has fewer nodes than this, every node's telemetry goes to every node;
    /// from this size on, in full only within a node's cluster (docs/scale.md).
    pub telemetry_full_mesh_below: Option<usize>,
    /// Find out whether this node is reachable (AutoNAT), reserve a slot on a relay when it
    /// is not, and upgrade relayed connections to direct ones by hole punching (docs/nat.md).
    pub nat_traversal: Option<bool>,
    /// Relay for other nodes once this node is confirmed publicly reachable.
    pub relay_service: Option<bool>,
    /// Relay slots held for other nodes at once.
    pub relay_max_reservations: Option<u32>,
    /// Circuits relayed at once.
    pub relay_max_circuits: Option<u32>,
}

impl ConfigLayer {
    /// `other`'s values win where it has them.
    pub fn overlay(mut self, other: ConfigLayer) -> ConfigLayer {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(
            data_dir,
            listen,
            bootstrap,
            mdns,
            dht,
            quic,
            telemetry_interval,
            control_port,
            max_connections,
            target_peers,
            log,
            log_format,
            sense_interval,
            schedule_interval,
            mesh,
            ticket,
            exempt_loopback,
            telemetry_expire_after,
            telemetry_max_origins,
            telemetry_full_mesh_below,
            nat_traversal,
            relay_service,
            relay_max_reservations,
            relay_max_circuits
        );
        self.simulate = match (self.simulate, other.simulate) {
            (Some(mine), Some(theirs)) => Some(mine.overlay(theirs)),
            (mine, theirs) => theirs.or(mine),
        };
        self
    }
}

/// A configuration problem, naming the key and where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("config file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("environment variable {var}: {reason}")]
    Env { var: String, reason: String },
    #[error("{key} (from {source_name}): {reason}")]
    Value {
        key: &'static str,
        source_name: String,
        reason: String,
    },
    #[error("config file {0} already exists; pass --force to overwrite it")]
    Exists(PathBuf),
    #[error("cannot write config file {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// Reads a TOML config file.
pub fn load_file(path: &Path) -> Result<ConfigLayer, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let layer: ConfigLayer = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
        path: path.to_path_buf(),
        // toml's message carries the offending line with a caret under the spot: keep it.
        reason: format!("\n{}", e.to_string().trim_end()),
    })?;
    validate(&layer, &format!("config file {}", path.display()))?;
    Ok(layer)
}

/// Environment variables this node reads, besides `FOGMESH_CONFIG` (the config file path).
pub const ENV_VARS: &[&str] = &[
    "FOGMESH_DATA_DIR",
    "FOGMESH_LISTEN",
    "FOGMESH_BOOTSTRAP",
    "FOGMESH_MDNS",
    "FOGMESH_DHT",
    "FOGMESH_QUIC",
    "FOGMESH_TELEMETRY_INTERVAL",
    "FOGMESH_CONTROL_PORT",
    "FOGMESH_MAX_CONNECTIONS",
    "FOGMESH_TARGET_PEERS",
    "FOGMESH_LOG",
    "FOGMESH_LOG_FORMAT",
    "FOGMESH_SENSE_INTERVAL",
    "FOGMESH_MESH",
    "FOGMESH_TICKET",
    "FOGMESH_EXEMPT_LOOPBACK",
    "FOGMESH_TELEMETRY_EXPIRE_AFTER",
    "FOGMESH_TELEMETRY_MAX_ORIGINS",
    "FOGMESH_NAT_TRAVERSAL",
    "FOGMESH_RELAY_SERVICE",
    "FOGMESH_RELAY_MAX_RESERVATIONS",
    "FOGMESH_RELAY_MAX_CIRCUITS",
    // Read by the CLI and the dashboard, not the node's settings.
    "FOGMESH_API_TOKEN",
    "FOGMESH_DASHBOARD_DIR",
];

/// The `FOGMESH_*` variables in `vars` this node does not know (a typo, a script's own
/// `FOGMESH_BIN`, a variable of a newer version): ignored by [`load_env`], and worth a
/// warning naming the known ones ([`ENV_VARS`]).
pub fn unknown_env_vars(vars: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    vars.into_iter()
        .map(|(var, _)| var)
        .filter(|var| {
            var.starts_with("FOGMESH_")
                && var != "FOGMESH_CONFIG"
                && !ENV_VARS.contains(&var.as_str())
        })
        .collect()
}

/// Reads `FOGMESH_*` variables from `vars`. Lists are comma-separated. A known variable
/// with a bad value is an error naming it; an unknown one is skipped (see
/// [`unknown_env_vars`]), so a variable meant for something else never stops the node.
pub fn load_env(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<ConfigLayer, ConfigError> {
    let mut layer = ConfigLayer::default();
    for (var, value) in vars {
        if !var.starts_with("FOGMESH_") || var == "FOGMESH_CONFIG" {
            continue;
        }
        let err = |reason: String| ConfigError::Env {
            var: var.clone(),
            reason,
        };
        match var.as_str() {
            "FOGMESH_DATA_DIR" => layer.data_dir = Some(PathBuf::from(&value)),
            "FOGMESH_LISTEN" => layer.listen = Some(parse_addrs(&value).map_err(err)?),
            "FOGMESH_BOOTSTRAP" => layer.bootstrap = Some(parse_addrs(&value).map_err(err)?),
            "FOGMESH_MDNS" => layer.mdns = Some(parse_bool(&value).map_err(err)?),
            "FOGMESH_DHT" => layer.dht = Some(parse_bool(&value).map_err(err)?),
            "FOGMESH_QUIC" => layer.quic = Some(parse_bool(&value).map_err(err)?),
            "FOGMESH_TELEMETRY_INTERVAL" => {
                layer.telemetry_interval =
                    Some(humantime::parse_duration(&value).map_err(|e| err(e.to_string()))?)
            }
            "FOGMESH_CONTROL_PORT" => {
                layer.control_port = Some(value.parse().map_err(|e| err(format!("{e}")))?)
            }
            "FOGMESH_MAX_CONNECTIONS" => {
                layer.max_connections = Some(value.parse().map_err(|e| err(format!("{e}")))?)
            }
            "FOGMESH_TARGET_PEERS" => {
                layer.target_peers = Some(value.parse().map_err(|e| err(format!("{e}")))?)
            }
            "FOGMESH_LOG" => layer.log = Some(value.clone()),
            "FOGMESH_MESH" => layer.mesh = Some(PathBuf::from(&value)),
            "FOGMESH_TICKET" => layer.ticket = Some(PathBuf::from(&value)),
            "FOGMESH_NAT_TRAVERSAL" => layer.nat_traversal = Some(parse_bool(&value).map_err(err)?),
            "FOGMESH_RELAY_SERVICE" => layer.relay_service = Some(parse_bool(&value).map_err(err)?),
            "FOGMESH_RELAY_MAX_RESERVATIONS" => {
                layer.relay_max_reservations = Some(value.parse().map_err(|e| err(format!("{e}")))?)
            }
            "FOGMESH_RELAY_MAX_CIRCUITS" => {
                layer.relay_max_circuits = Some(value.parse().map_err(|e| err(format!("{e}")))?)
            }
            "FOGMESH_EXEMPT_LOOPBACK" => {
                layer.exempt_loopback = Some(parse_bool(&value).map_err(err)?)
            }
            "FOGMESH_TELEMETRY_EXPIRE_AFTER" => {
                layer.telemetry_expire_after =
                    Some(humantime::parse_duration(&value).map_err(|e| err(e.to_string()))?)
            }
            "FOGMESH_TELEMETRY_MAX_ORIGINS" => {
                layer.telemetry_max_origins = Some(value.parse().map_err(|e| err(format!("{e}")))?)
            }
            "FOGMESH_TELEMETRY_FULL_MESH_BELOW" => {
                layer.telemetry_full_mesh_below =
                    Some(value.parse().map_err(|e| err(format!("{e}")))?)
            }
            "FOGMESH_SENSE_INTERVAL" => {
                layer.sense_interval =
                    Some(humantime::parse_duration(&value).map_err(|e| err(e.to_string()))?)
            }
            "FOGMESH_LOG_FORMAT" => {
                layer.log_format = Some(match value.as_str() {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    other => return Err(err(format!("expected text or json, got {other:?}"))),
                })
            }
            _ => {}
        }
    }
    validate(&layer, "environment")?;
    Ok(layer)
}

fn parse_addrs(value: &str) -> Result<Vec<Multiaddr>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|e| format!("bad multiaddr {s:?}: {e}")))
        .collect()
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => Err(format!("expected true or false, got {other:?}")),
    }
}

/// Range checks serde cannot express.
pub fn validate(layer: &ConfigLayer, source_name: &str) -> Result<(), ConfigError> {
    let bad = |key: &'static str, reason: String| ConfigError::Value {
        key,
        source_name: source_name.to_owned(),
        reason,
    };
    if let Some(interval) = layer.telemetry_interval {
        if !(MIN_TELEMETRY_INTERVAL..=MAX_TELEMETRY_INTERVAL).contains(&interval) {
            return Err(bad(
                "telemetry_interval",
                format!(
                    "{} is outside 100ms..1h",
                    humantime::format_duration(interval)
                ),
            ));
        }
    }
    if let Some(interval) = layer.sense_interval {
        if !(MIN_TELEMETRY_INTERVAL..=MAX_TELEMETRY_INTERVAL).contains(&interval) {
            return Err(bad(
                "sense_interval",
                format!(
                    "{} is outside 100ms..1h",
                    humantime::format_duration(interval)
                ),
            ));
        }
    }
    if let Some(interval) = layer.schedule_interval {
        if !(MIN_TELEMETRY_INTERVAL..=MAX_TELEMETRY_INTERVAL).contains(&interval) {
            return Err(bad(
                "schedule_interval",
                format!(
                    "{} is outside 100ms..1h",
                    humantime::format_duration(interval)
                ),
            ));
        }
    }
    if let Some(simulate) = &layer.simulate {
        simulate.validate().map_err(|e| ConfigError::Value {
            key: e.key,
            source_name: source_name.to_owned(),
            reason: e.to_string(),
        })?;
    }
    if let Some(after) = layer.telemetry_expire_after {
        if !(MIN_EXPIRE_AFTER..=MAX_EXPIRE_AFTER).contains(&after) {
            return Err(bad(
                "telemetry_expire_after",
                format!("{} is outside 1m..7d", humantime::format_duration(after)),
            ));
        }
    }
    if let Some(max) = layer.telemetry_max_origins {
        if !(1..=MAX_TELEMETRY_ORIGINS).contains(&max) {
            return Err(bad(
                "telemetry_max_origins",
                format!("{max} is outside 1..{MAX_TELEMETRY_ORIGINS}"),
            ));
        }
    }
    if layer.max_connections == Some(0) {
        return Err(bad("max_connections", "must be at least 1".into()));
    }
    if layer.target_peers == Some(0) {
        return Err(bad("target_peers", "must be at least 1".into()));
    }
    if let Some(listen) = &layer.listen {
        if listen.is_empty() {
            return Err(bad("listen", "needs at least one address".into()));
        }
    }
    if let Some(bootstrap) = &layer.bootstrap {
        // Noise XK needs the responder's key before the first byte, and the key is the PeerId.
        if let Some(addr) = bootstrap
            .iter()
            .find(|a| !matches!(a.iter().last(), Some(libp2p::multiaddr::Protocol::P2p(_))))
        {
            return Err(bad(
                "bootstrap",
                format!(
                    "{addr} does not end in /p2p/<PeerId>; the secure channel must know whom it \
                     dials (`fogmesh id` on that node prints its PeerId)"
                ),
            ));
        }
    }
    if let Some(filter) = &layer.log {
        tracing_subscriber::EnvFilter::try_new(filter)
            .map_err(|e| bad("log", format!("bad filter {filter:?}: {e}")))?;
    }
    Ok(())
}

/// The settings a node runs with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    /// Run Kademlia: find peers beyond the bootstrap ones by walking the DHT, and answer
    /// others' walks (docs/operations.md, "Discovery").
    pub dht: bool,
    pub quic: bool,
    #[serde(with = "humantime_serde")]
    pub telemetry_interval: Duration,
    pub control_port: u16,
    pub max_connections: u32,
    pub target_peers: u32,
    pub log: String,
    pub log_format: LogFormat,
    #[serde(with = "humantime_serde")]
    pub sense_interval: Duration,
    pub schedule_interval: Duration,
    pub simulate: Option<SimulateConfig>,
    /// Mesh description and own ticket, or None for an open mesh.
    pub mesh: Option<MeshFiles>,
    /// Loopback handshakes skip the per-address rate limit and backoff (testnets only).
    pub exempt_loopback: bool,
    pub telemetry_expire_after: Duration,
    pub telemetry_max_origins: usize,
    pub telemetry_full_mesh_below: usize,
    pub nat_traversal: bool,
    pub relay_service: bool,
    pub relay_max_reservations: u32,
    pub relay_max_circuits: u32,
}

/// Where a node finds its mesh's public description and its own ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MeshFiles {
    pub mesh: PathBuf,
    pub ticket: PathBuf,
}

/// The platform's data directory for fogmesh (`~/.local/share/fogmesh` on Linux).
pub fn default_data_dir() -> PathBuf {
    directories::ProjectDirs::from("", "", "fogmesh")
        .map(|d| d.data_dir().to_path_buf())
        .unwrap_or_else(|| PathBuf::from("fogmesh-data"))
}

/// The platform's default config file path (`~/.config/fogmesh/config.toml` on Linux).
pub fn default_config_path() -> PathBuf {
    directories::ProjectDirs::from("", "", "fogmesh")
        .map(|d| d.config_dir().join("config.toml"))
        .unwrap_or_else(|| PathBuf::from("fogmesh.toml"))
}

fn default_listen() -> Vec<Multiaddr> {
    let tcp = Multiaddr::empty()
        .with(std::net::Ipv4Addr::UNSPECIFIED.into())
        .with(libp2p::multiaddr::Protocol::Tcp(DEFAULT_PORT));
    let quic = Multiaddr::empty()
        .with(std::net::Ipv4Addr::UNSPECIFIED.into())
        .with(libp2p::multiaddr::Protocol::Udp(DEFAULT_PORT))
        .with(libp2p::multiaddr::Protocol::QuicV1);
    vec![tcp, quic]
}

/// Whether `addr` is a QUIC address.
pub fn is_quic(addr: &Multiaddr) -> bool {
    addr.iter()
        .any(|p| matches!(p, libp2p::multiaddr::Protocol::QuicV1))
}

impl Settings {
    /// Resolves a merged layer against the defaults.
    pub fn resolve(layer: ConfigLayer) -> Settings {
        let quic = layer.quic.unwrap_or(true);
        let mut listen = layer.listen.unwrap_or_else(default_listen);
        if !quic {
            listen.retain(|a| !is_quic(a));
        }
        Settings {
            data_dir: layer.data_dir.unwrap_or_else(default_data_dir),
            listen,
            bootstrap: layer.bootstrap.unwrap_or_default(),
            mdns: layer.mdns.unwrap_or(true),
            dht: layer.dht.unwrap_or(true),
            quic,
            telemetry_interval: layer.telemetry_interval.unwrap_or(Duration::from_secs(30)),
            control_port: layer.control_port.unwrap_or(0),
            max_connections: layer.max_connections.unwrap_or(128),
            target_peers: layer.target_peers.unwrap_or(24),
            log: layer.log.unwrap_or_else(|| "info".into()),
            log_format: layer.log_format.unwrap_or_default(),
            sense_interval: layer.sense_interval.unwrap_or(Duration::from_secs(30)),
            schedule_interval: layer.schedule_interval.unwrap_or(Duration::from_secs(5)),
            simulate: layer.simulate.filter(|s| !s.is_empty()),
            mesh: match (layer.mesh, layer.ticket) {
                (Some(mesh), Some(ticket)) => Some(MeshFiles { mesh, ticket }),
                _ => None,
            },
            exempt_loopback: layer.exempt_loopback.unwrap_or(false),
            telemetry_expire_after: layer
                .telemetry_expire_after
                .unwrap_or(Duration::from_secs(30 * 60)),
            telemetry_max_origins: layer.telemetry_max_origins.unwrap_or(4096),
            telemetry_full_mesh_below: layer
                .telemetry_full_mesh_below
                .unwrap_or(DEFAULT_TELEMETRY_FULL_MESH_BELOW),
            nat_traversal: layer.nat_traversal.unwrap_or(true),
            relay_service: layer.relay_service.unwrap_or(true),
            relay_max_reservations: layer.relay_max_reservations.unwrap_or(64),
            relay_max_circuits: layer.relay_max_circuits.unwrap_or(32),
        }
    }

    /// Loads file (if any), then environment, then `flags`, and resolves.
    ///
    /// The file is `config_path` if given, else the default path if it exists.
    pub fn load(
        config_path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: ConfigLayer,
    ) -> Result<Settings, ConfigError> {
        let file = match config_path {
            Some(path) => load_file(path)?,
            None => {
                let default = default_config_path();
                if default.is_file() {
                    load_file(&default)?
                } else {
                    ConfigLayer::default()
                }
            }
        };
        let env = load_env(env)?;
        validate(&flags, "command line")?;
        let merged = file.overlay(env).overlay(flags);
        if merged.mesh.is_some() != merged.ticket.is_some() {
            let (key, missing) = if merged.mesh.is_some() {
                ("mesh", "ticket")
            } else {
                ("ticket", "mesh")
            };
            return Err(ConfigError::Value {
                key,
                source_name: "the merged configuration".into(),
                reason: format!("is set but {missing} is not; a mesh member needs both"),
            });
        }
        Ok(Settings::resolve(merged))
    }
}

/// The commented default config file `fogmesh config init` writes.
pub const DEFAULT_CONFIG_TOML: &str = r#"# fogmesh node configuration.
# Precedence: this file < FOGMESH_* environment variables < command-line flags.
# Every key is optional; the values shown (commented out) are the defaults.

# Where the node keeps its identity key and its store.
# data_dir = "~/.local/share/fogmesh"     # the platform's data directory

# Addresses to listen on (TCP and QUIC on all interfaces, port 4747).
# listen = ["/ip4/0.0.0.0/tcp/4747", "/ip4/0.0.0.0/udp/4747/quic-v1"]

# Peers to join at start and to keep redialling (with backoff) when lost. Each must end in
# /p2p/<PeerId>: the secure channel (Noise XK) needs the peer's key before it says a word.
# bootstrap = ["/ip4/192.0.2.10/tcp/4747/p2p/12D3KooW..."]

# The mesh to join: its public description (from `fogmesh mesh init`) and this node's ticket
# (from `fogmesh ticket issue`). Without both, the node runs an OPEN mesh: anyone may connect.
# A node in a mesh accepts and makes only connections whose peer shows a valid ticket, and
# runs TCP only (QUIC's handshake cannot carry tickets).
# mesh = "home.mesh.json"
# ticket = "node.ticket"

# Discover peers on the local network with mDNS.
# mdns = true

# Find peers beyond the bootstrap ones through the Kademlia DHT (and answer others' walks).
# dht = true

# Run QUIC besides TCP.
# quic = true

# How often the node publishes its signed telemetry.
# telemetry_interval = "30s"

# Port of the local control API on 127.0.0.1 (0 picks a free one; the CLI finds it either way).
# control_port = 0

# Most simultaneous connections (incoming plus outgoing).
# max_connections = 128

# Let handshakes from this machine (127.0.0.0/8, ::1) skip the per-address rate limit and
# backoff. Only for local testnets, where every node dials from 127.0.0.1: with it on, a local
# process can flood the node's handshake slots (it still gets at most a quarter of them).
# exempt_loopback = false

# Connections kept when more are open: above target + 4, surplus peers outside the gossip
# mesh (and not bootstrap peers) are disconnected, youngest first.
# target_peers = 24

# Log filter (RUST_LOG syntax) and format ("text" or "json").
# log = "info"
# log_format = "text"

# Forget a node's telemetry once it has been silent this long (1m..7d), and keep at most this
# many nodes' telemetry (an open mesh lets anyone mint identities; the node heard from longest
# ago makes room for a new one).
# telemetry_expire_after = "30m"
# telemetry_max_origins = 4096

# Below this many nodes every node's telemetry reaches every node; from it on, telemetry goes
# in full only to a node's own cluster, and other clusters are known by their coordinators'
# summaries (docs/scale.md).
# telemetry_full_mesh_below = 32

# Internet reach (docs/nat.md): find out whether this node is reachable from the internet
# (AutoNAT v2), reserve a slot on a relay when it is not, and turn relayed connections into
# direct ones by hole punching where both NATs allow it.
# nat_traversal = true
# Relay for other nodes, once this node is confirmed publicly reachable; bounded by these
# (per peer: 2 slots and 4 circuits; a circuit lasts at most 30 min and carries at most 32 MiB).
# relay_service = true
# relay_max_reservations = 64
# relay_max_circuits = 32

# How often the device (battery, temperature, load) is re-sensed; every 5 s at most while the
# battery is low or the device is warm.
# sense_interval = "30s"

# A coordinator places queued tasks on every change (submitted, finished, a member joined or
# left, limits changed) and at least this often.
# schedule_interval = "5s"

# Pretend to be another device (for testing). Fixed values or curves over the node's uptime.
# [simulate]
# device = "smartphone"            # smartphone, tablet, laptop, desktop, raspberry_pi
# battery = 15                     # percent; or a curve:
# battery_curve = { start = 80, drain_per_minute = 2, charge_per_minute = 5, charging_windows = [{ from = "10m", to = "20m" }] }
# charging = false
# temperature = 50                 # degrees C; or a curve:
# temperature_curve = { start = 35, change_per_minute = 1.5, limit = 60 }
"#;

/// Writes the commented default config to `path`.
pub fn write_default(path: &Path, force: bool) -> Result<(), ConfigError> {
    if path.exists() && !force {
        return Err(ConfigError::Exists(path.to_path_buf()));
    }
    let write_err = |e: std::io::Error| ConfigError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent).map_err(write_err)?;
        }
    }
    std::fs::write(path, DEFAULT_CONFIG_TOML).map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("fogmesh.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn flags_beat_env_beat_file_beat_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "telemetry_interval = \"5s\"\ncontrol_port = 1111\nmax_connections = 7\n",
        );
        let flags = ConfigLayer {
            control_port: Some(3333),
            ..ConfigLayer::default()
        };
        let s = Settings::load(
            Some(&path),
            env(&[
                ("FOGMESH_CONTROL_PORT", "2222"),
                ("FOGMESH_MAX_CONNECTIONS", "9"),
            ]),
            flags,
        )
        .unwrap();
        assert_eq!(s.control_port, 3333, "flag wins");
        assert_eq!(s.max_connections, 9, "env beats file");
        assert_eq!(
            s.telemetry_interval,
            Duration::from_secs(5),
            "file beats default"
        );
        assert!(s.mdns, "default");
    }

    #[test]
    fn unknown_file_key_names_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "telemetry_intervall = \"5s\"\n");
        let err = Settings::load(Some(&path), env(&[]), ConfigLayer::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("telemetry_intervall"), "{err}");
        assert!(err.contains("fogmesh.toml"), "{err}");
    }

    #[test]
    fn bad_file_values_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        for (text, key) in [
            ("bootstrap = [\"not-a-multiaddr\"]\n", "bootstrap"),
            ("telemetry_interval = \"10ms\"\n", "telemetry_interval"),
            ("mdns = \"maybe\"\n", "mdns"),
            ("max_connections = 0\n", "max_connections"),
        ] {
            let path = write(dir.path(), text);
            let err = Settings::load(Some(&path), env(&[]), ConfigLayer::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn simulate_section_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "[simulate]\ndevice = \"smartphone\"\nbattery_curve = { start = 50, drain_per_minute = 2 }\n",
        );
        let s = Settings::load(Some(&path), env(&[]), ConfigLayer::default()).unwrap();
        let sim = s.simulate.unwrap();
        assert_eq!(sim.device, Some(fogmesh_device::DeviceClass::Smartphone));
        assert_eq!(sim.battery_curve.unwrap().start, 50.0);
        for (text, key) in [
            ("[simulate]\nbattery = 140\n", "simulate.battery"),
            ("[simulate]\ntemperature = -300\n", "simulate.temperature"),
            ("[simulate]\ndevice = \"toaster\"\n", "device"),
            ("[simulate]\nbatery = 3\n", "batery"),
        ] {
            let path = write(dir.path(), text);
            let err = Settings::load(Some(&path), env(&[]), ConfigLayer::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn simulate_flags_overlay_the_file_field_by_field() {
        let file = ConfigLayer {
            simulate: Some(SimulateConfig {
                device: Some(fogmesh_device::DeviceClass::Tablet),
                temperature: Some(40.0),
                ..SimulateConfig::default()
            }),
            ..ConfigLayer::default()
        };
        let flags = ConfigLayer {
            simulate: Some(SimulateConfig {
                battery: Some(15.0),
                ..SimulateConfig::default()
            }),
            ..ConfigLayer::default()
        };
        let sim = file.overlay(flags).simulate.unwrap();
        assert_eq!(sim.device, Some(fogmesh_device::DeviceClass::Tablet));
        assert_eq!(sim.temperature, Some(40.0));
        assert_eq!(sim.battery, Some(15.0));
    }

    #[test]
    fn env_errors_name_the_variable() {
        for (var, value) in [
            ("FOGMESH_BOOTSTRAP", "/ip4/1.2.3.4/tcp/x"),
            ("FOGMESH_MDNS", "perhaps"),
            ("FOGMESH_LOG_FORMAT", "xml"),
        ] {
            let err = load_env(env(&[(var, value)])).unwrap_err().to_string();
            assert!(err.contains(var), "{err}");
        }
    }

    #[test]
    fn unknown_env_vars_are_skipped_and_named_for_a_warning() {
        let vars = env(&[
            ("FOGMESH_TELEMETRY_INTERVL", "1s"),
            ("FOGMESH_BIN", "/usr/bin/fogmesh"),
            ("FOGMESH_MDNS", "false"),
            ("FOGMESH_CONFIG", "x.toml"),
            ("HOME", "/root"),
        ]);
        let layer = load_env(vars.clone()).unwrap();
        assert_eq!(layer.mdns, Some(false));
        assert_eq!(
            unknown_env_vars(vars),
            vec!["FOGMESH_TELEMETRY_INTERVL", "FOGMESH_BIN"]
        );
    }

    #[test]
    fn env_lists_are_comma_separated() {
        let (p1, p2) = (libp2p::PeerId::random(), libp2p::PeerId::random());
        let value = format!("/ip4/127.0.0.1/tcp/1/p2p/{p1}, /ip4/127.0.0.1/tcp/2/p2p/{p2}");
        let layer = load_env(env(&[("FOGMESH_BOOTSTRAP", &value)])).unwrap();
        assert_eq!(layer.bootstrap.unwrap().len(), 2);
    }

    #[test]
    fn bootstrap_addresses_must_name_their_peer() {
        let err = load_env(env(&[("FOGMESH_BOOTSTRAP", "/ip4/127.0.0.1/tcp/1")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/p2p/<PeerId>"), "{err}");
    }

    #[test]
    fn mesh_and_ticket_come_together() {
        let flags = ConfigLayer {
            mesh: Some("home.mesh.json".into()),
            ..ConfigLayer::default()
        };
        let err = Settings::load(None, Vec::new(), flags)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ticket"), "{err}");
    }

    #[test]
    fn default_config_parses_and_equals_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.toml");
        write_default(&path, false).unwrap();
        assert!(matches!(
            write_default(&path, false),
            Err(ConfigError::Exists(_))
        ));
        let layer = load_file(&path).unwrap();
        assert_eq!(layer, ConfigLayer::default());
    }

    #[test]
    fn disabling_quic_drops_quic_listen_addresses() {
        let s = Settings::resolve(ConfigLayer {
            quic: Some(false),
            ..ConfigLayer::default()
        });
        assert_eq!(s.listen.len(), 1);
    }
}
