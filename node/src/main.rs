//! `fogmesh`: the one binary every device runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use fogmesh_node::client::{self, ControlClient};
use fogmesh_node::config::{self, ConfigLayer, LogFormat, Settings};
use fogmesh_node::device::{DeviceClass, DeviceMonitor, SimulateConfig};
use fogmesh_node::{identity, logging, mesh, node, store_report};
use fogmesh_testnet as testnet;
use libp2p::Multiaddr;

#[derive(Debug, Parser)]
#[command(
    name = "fogmesh",
    version,
    about = "A peer-to-peer fog mesh node",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no subcommand, `fogmesh` runs a node with these flags.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node (the default).
    Run(RunArgs),
    /// Print this node's PeerId (creating its identity if there is none).
    Id(NodeSelect),
    /// Ask the running node for its status.
    Status(QueryArgs),
    /// Ask the running node for its peers.
    Peers(QueryArgs),
    /// Ask the running node for the telemetry it holds.
    Telemetry(QueryArgs),
    /// What the node detected about its device, its power mode, limits and score.
    Device(DeviceArgs),
    /// Follow the running node's events as they happen: peers, telemetry, refused
    /// handshakes, revocations, lifecycle and power-mode changes.
    Watch(WatchArgs),
    /// Send a message through the mesh: to one node (end-to-end encrypted, relayed over up
    /// to 7 hops, kept and delivered later if the node is out of reach), or to everyone.
    Send(SendArgs),
    /// Messages this node received, and those it sent with their delivery status.
    Inbox(QueryArgs),
    /// This node's fog cluster: its coordinator and term and why, the members with their
    /// score, limits and load, and the other clusters heard of.
    Cluster(QueryArgs),
    /// Compute tasks: submit a WebAssembly module to the mesh and follow it.
    #[command(subcommand)]
    Task(TaskCli),
    /// The replicated key-value store: every node holds every key; writes reach reachable
    /// nodes in about a second, others when they reconnect.
    #[command(subcommand)]
    Kv(KvCli),
    /// Configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Local testnets: many nodes on 127.0.0.1.
    #[command(subcommand)]
    Testnet(TestnetCommand),
    /// Mesh roots: the key that admits nodes to a mesh.
    #[command(subcommand)]
    Mesh(MeshCommand),
    /// Admission tickets: issue, explain, revoke.
    #[command(subcommand)]
    Ticket(TicketCommand),
    /// The node's on-disk store: check it, repair a damaged one.
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Debug, Subcommand)]
enum KvCli {
    /// Write a value (the argument, or --file); answers once it is on disk on this node.
    Put {
        key: String,
        value: Option<String>,
        #[arg(long, value_name = "FILE", conflicts_with = "value")]
        file: Option<PathBuf>,
        #[command(flatten)]
        ns: KvNamespace,
        #[command(flatten)]
        query: QueryArgs,
    },
    /// A key's value (raw, to stdout); --conflicts shows what it overwrote and by whom.
    Get {
        key: String,
        #[arg(long)]
        conflicts: bool,
        #[command(flatten)]
        ns: KvNamespace,
        #[command(flatten)]
        query: QueryArgs,
    },
    /// Delete a key (a tombstone that replicates like a write).
    Del {
        key: String,
        #[command(flatten)]
        ns: KvNamespace,
        #[command(flatten)]
        query: QueryArgs,
    },
    /// Keys starting with PREFIX, in order.
    List {
        prefix: Option<String>,
        /// Start after this key (paging).
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Show deleted keys too.
        #[arg(long)]
        deleted: bool,
        #[command(flatten)]
        ns: KvNamespace,
        #[command(flatten)]
        query: QueryArgs,
    },
    /// Follow changes to keys starting with PREFIX, local and replicated, as they happen.
    Watch {
        prefix: Option<String>,
        #[command(flatten)]
        ns: KvNamespace,
        #[command(flatten)]
        query: QueryArgs,
    },
}

#[derive(Debug, Args)]
struct KvNamespace {
    /// The namespace (letters, digits, `.`, `_`, `-`); `mesh` is for the mesh's admins.
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
}

#[derive(Debug, Subcommand)]
enum TaskCli {
    /// Hand a task to the mesh (this node's ticket must grant `submitter`); prints its id.
    Submit(TaskSubmitArgs),
    /// Where a task is: queued (and why it waits), running where, done, failed.
    Status {
        id: String,
        #[command(flatten)]
        query: QueryArgs,
    },
    /// Tasks this node's cluster holds and those this node submitted.
    List(QueryArgs),
    /// A finished task's output (to stdout, or --out FILE).
    Result {
        id: String,
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        #[command(flatten)]
        query: QueryArgs,
    },
    /// Cancel a task this node submitted (a run already under way finishes, its result is
    /// dropped).
    Cancel {
        id: String,
        #[command(flatten)]
        query: QueryArgs,
    },
}

#[derive(Debug, Args)]
struct TaskSubmitArgs {
    /// The WebAssembly module (binary, or WAT text if the file ends in .wat).
    #[arg(long, value_name = "FILE")]
    wasm: PathBuf,
    /// The task's input (at most 4 MiB).
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// critical, high, normal or low.
    #[arg(long, default_value = "normal")]
    priority: String,
    /// CPU the task needs, in cores (0.25 = a quarter of a core).
    #[arg(long, default_value_t = 1.0)]
    cpu: f64,
    /// Memory the task needs, in MB (also its memory cap).
    #[arg(long, default_value_t = 64)]
    memory: u32,
    /// Estimated duration (also its CPU budget), e.g. 30s.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The task needs a GPU.
    #[arg(long)]
    gpu: bool,
    #[command(flatten)]
    query: QueryArgs,
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Check the store (the node must be stopped): every acknowledged write present, every
    /// value readable. Exits 1 if it is damaged.
    Check {
        #[command(flatten)]
        select: NodeSelect,
        /// Repair a damaged store: keep everything readable, move the damaged store aside.
        #[arg(long)]
        repair: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum MeshCommand {
    /// Create a mesh: a root key (guard it) and a public mesh description.
    Init {
        /// Mesh name, used for the file names.
        #[arg(long)]
        name: String,
        /// Where to write `<name>.root.key` and `<name>.mesh.json`.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TicketCommand {
    /// Issue a ticket admitting a peer (signed by the mesh root).
    Issue {
        /// The mesh root key file.
        #[arg(long)]
        mesh_key: PathBuf,
        /// The PeerId admitted.
        #[arg(long)]
        peer: libp2p::PeerId,
        /// Roles, comma-separated (worker, coordinator, submitter, writer, gateway).
        #[arg(long, value_delimiter = ',', default_value = "worker")]
        roles: Vec<String>,
        /// Validity from now, e.g. 30d.
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
        valid: Duration,
        /// Write the ticket here (binary) instead of printing it as hex.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Explain a ticket file (binary or hex).
    Show { file: PathBuf },
    /// Produce a signed revocation of a ticket, or of every ticket a peer holds so far.
    Revoke {
        #[arg(long)]
        mesh_key: PathBuf,
        /// The ticket file to revoke.
        #[arg(long, conflicts_with = "peer", required_unless_present = "peer")]
        ticket: Option<PathBuf>,
        /// The peer whose tickets issued until now are revoked.
        #[arg(long)]
        peer: Option<libp2p::PeerId>,
        /// Write the revocation here (binary) instead of printing it as hex.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also hand it to the running node (see --data-dir), which gossips it to the mesh.
        #[arg(long)]
        submit: bool,
        #[command(flatten)]
        select: NodeSelect,
    },
    /// Hand a revocation file to the running node, which applies, stores and gossips it.
    Publish {
        file: PathBuf,
        #[command(flatten)]
        select: NodeSelect,
    },
}

#[derive(Debug, Args, Default)]
struct NodeSelect {
    /// Config file (default: the platform config dir's fogmesh/config.toml, if it exists).
    #[arg(long, env = "FOGMESH_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (identity, store, control file).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl NodeSelect {
    fn settings(&self, flags: ConfigLayer) -> Result<Settings> {
        let flags = ConfigLayer {
            data_dir: self.data_dir.clone(),
            ..flags
        };
        Ok(Settings::load(
            self.config.as_deref(),
            std::env::vars(),
            flags,
        )?)
    }
}

#[derive(Debug, Args, Default)]
struct RunArgs {
    #[command(flatten)]
    select: NodeSelect,
    /// Listen address (repeatable). Default: TCP and QUIC on 0.0.0.0 port 4747.
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// Peer to join and keep connected (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<Multiaddr>,
    /// Turn off LAN discovery by mDNS.
    #[arg(long)]
    no_mdns: bool,
    /// Turn off QUIC (TCP only).
    #[arg(long)]
    no_quic: bool,
    /// Let handshakes from this machine skip the per-address rate limit and backoff (local
    /// testnets, where every node dials from 127.0.0.1).
    #[arg(long)]
    exempt_loopback: bool,
    /// How often to publish telemetry, e.g. 30s or 1s.
    #[arg(long, value_parser = humantime::parse_duration)]
    telemetry_interval: Option<Duration>,
    /// Control API port on 127.0.0.1 (0 picks a free one).
    #[arg(long)]
    control_port: Option<u16>,
    /// Most simultaneous connections.
    #[arg(long)]
    max_connections: Option<u32>,
    /// Connections kept when more are open.
    #[arg(long)]
    target_peers: Option<u32>,
    /// Log filter, RUST_LOG syntax (RUST_LOG itself wins if set).
    #[arg(long)]
    log: Option<String>,
    /// Log format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// How often to re-sense the device, e.g. 30s.
    #[arg(long, value_parser = humantime::parse_duration)]
    sense_interval: Option<Duration>,
    /// The mesh to join (`<name>.mesh.json` from `fogmesh mesh init`); needs --ticket.
    #[arg(long, value_name = "FILE")]
    mesh: Option<PathBuf>,
    /// This node's ticket for that mesh (from `fogmesh ticket issue`).
    #[arg(long, value_name = "FILE")]
    ticket: Option<PathBuf>,
    /// Bluetooth LE only: no internet transport, no socket but the loopback control API.
    /// Needs a radio: a Bluetooth adapter (builds with the `bluetooth` feature, Linux) or the
    /// simulated one of a radio testnet (--radio-medium).
    #[arg(long)]
    offline: bool,
    /// The simulated radio shared by a testnet's processes (its medium file, see
    /// docs/ble.md); this node is the device its PeerId names.
    #[arg(long, value_name = "FILE", requires = "offline")]
    radio_medium: Option<PathBuf>,
    #[command(flatten)]
    simulate: SimulateArgs,
}

/// Pretend to be another device (overrides the config's `[simulate]` values).
#[derive(Debug, Args, Default, Clone)]
struct SimulateArgs {
    /// Pretend to be this class of device.
    #[arg(long, value_enum)]
    simulate_device: Option<DeviceClass>,
    /// Simulated battery level in percent.
    #[arg(long)]
    battery: Option<f32>,
    /// Simulated charging state.
    #[arg(long)]
    charging: Option<bool>,
    /// Simulated temperature in degrees Celsius.
    #[arg(long, allow_negative_numbers = true)]
    temperature: Option<f32>,
}

impl SimulateArgs {
    fn layer(&self) -> Option<SimulateConfig> {
        let sim = SimulateConfig {
            device: self.simulate_device,
            battery: self.battery,
            charging: self.charging,
            temperature: self.temperature,
            ..SimulateConfig::default()
        };
        (!sim.is_empty()).then_some(sim)
    }
}

impl RunArgs {
    fn layer(&self) -> ConfigLayer {
        ConfigLayer {
            data_dir: None,
            listen: (!self.listen.is_empty()).then(|| self.listen.clone()),
            bootstrap: (!self.bootstrap.is_empty()).then(|| self.bootstrap.clone()),
            mdns: self.no_mdns.then_some(false),
            quic: self.no_quic.then_some(false),
            telemetry_interval: self.telemetry_interval,
            control_port: self.control_port,
            max_connections: self.max_connections,
            target_peers: self.target_peers,
            log: self.log.clone(),
            log_format: self.log_format,
            sense_interval: self.sense_interval,
            schedule_interval: None,
            simulate: self.simulate.layer(),
            mesh: self.mesh.clone(),
            ticket: self.ticket.clone(),
            exempt_loopback: self.exempt_loopback.then_some(true),
            // Config file and FOGMESH_* only: tuning, not something to type per run.
            telemetry_expire_after: None,
            telemetry_max_origins: None,
        }
    }
}

#[derive(Debug, Args)]
struct DeviceArgs {
    #[command(flatten)]
    query: QueryArgs,
    /// Sense this machine here instead of asking a running node.
    #[arg(long)]
    local: bool,
    #[command(flatten)]
    simulate: SimulateArgs,
}

#[derive(Debug, Args)]
struct SendArgs {
    #[command(flatten)]
    query: QueryArgs,
    /// To every node in range of the flood instead of one node (no acknowledgement).
    #[arg(long)]
    broadcast: bool,
    /// Wait for the recipient's acknowledgement, at most this long (default 60s). Exits 1
    /// if it has not come by then; the message stays held and may still be delivered.
    #[arg(long, num_args = 0..=1, default_missing_value = "60s", value_parser = humantime::parse_duration)]
    wait: Option<Duration>,
    /// The recipient's PeerId, then the text (without --broadcast); the text (with it).
    #[arg(required = true, num_args = 1..)]
    words: Vec<String>,
}

#[derive(Debug, Args)]
struct QueryArgs {
    #[command(flatten)]
    select: NodeSelect,
    /// Control API address to ask instead of finding it through the data dir.
    #[arg(long)]
    api: Option<SocketAddr>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl QueryArgs {
    fn client(&self) -> Result<ControlClient> {
        control_client(&self.select, self.api)
    }
}

#[derive(Debug, Args)]
struct WatchArgs {
    #[command(flatten)]
    select: NodeSelect,
    /// Control API address to ask instead of finding it through the data dir.
    #[arg(long)]
    api: Option<SocketAddr>,
    /// Print each event as the node sends it: one JSON object per line.
    #[arg(long)]
    json: bool,
}

/// The node at `api`, or the one running with the selected data dir.
fn control_client(select: &NodeSelect, api: Option<SocketAddr>) -> Result<ControlClient> {
    if let Some(addr) = api {
        return Ok(ControlClient::new(addr));
    }
    let settings = select.settings(ConfigLayer::default())?;
    Ok(ControlClient::for_data_dir(&settings.data_dir)?)
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Write a commented default config file.
    Init {
        /// Where to write it (default: the platform config dir's fogmesh/config.toml).
        #[arg(long)]
        path: Option<PathBuf>,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
struct TestnetDir {
    /// Directory holding the testnet's nodes and its state file.
    #[arg(long, default_value = ".fogmesh-testnet")]
    dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum RadioCommand {
    /// Put a node somewhere else (neighbours are 8 apart, the range is 10).
    Move {
        #[arg(long)]
        node: usize,
        /// x,y
        #[arg(long, value_parser = parse_point, allow_hyphen_values = true)]
        to: (f64, f64),
    },
    /// The given nodes stop hearing every other node.
    Partition {
        /// Node indexes, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<usize>,
    },
    /// Lift every partition.
    Heal,
    /// Loss probability of links opened from now on, 0.0–1.0 (existing links keep theirs).
    Loss { probability: f64 },
}

fn parse_point(text: &str) -> Result<(f64, f64), String> {
    let (x, y) = text
        .split_once(',')
        .ok_or_else(|| format!("{text:?} is not x,y"))?;
    let num = |v: &str| {
        v.trim()
            .parse::<f64>()
            .map_err(|e| format!("{v:?}: {e}"))
            .and_then(|n| {
                n.is_finite()
                    .then_some(n)
                    .ok_or_else(|| format!("{v:?} is not a finite number"))
            })
    };
    Ok((num(x)?, num(y)?))
}

#[derive(Debug, Subcommand)]
enum TestnetCommand {
    /// Start N nodes on 127.0.0.1 and wait until each has every other's telemetry.
    Up {
        #[command(flatten)]
        dir: TestnetDir,
        /// Number of nodes.
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Telemetry interval of every node.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        telemetry_interval: Duration,
        /// Give up waiting for convergence after this long (nodes keep running).
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Device mix: `uniform` (every node senses this machine) or `mixed` (simulated
        /// phones, tablets, laptops, desktops and Pis in various battery and thermal states).
        #[arg(long, value_enum, default_value = "uniform")]
        profile: testnet::Profile,
        /// Run an open mesh (no tickets) instead of creating a mesh for the testnet.
        #[arg(long)]
        open: bool,
        /// BLE-only nodes on a simulated radio shared by the processes (needs --offline),
        /// placed in a line, on a grid or at random; change it while it runs with
        /// `testnet radio`.
        #[arg(long, value_enum, requires = "offline")]
        radio: Option<testnet::radio::Layout>,
        /// No internet transport on any node: Bluetooth LE on the simulated radio only.
        #[arg(long, requires = "radio")]
        offline: bool,
        #[arg(long)]
        json: bool,
    },
    /// Change a radio testnet's simulated radio while it runs (every node sees the change
    /// within a quarter of a second).
    Radio {
        #[command(flatten)]
        dir: TestnetDir,
        #[command(subcommand)]
        change: RadioCommand,
    },
    /// Show the running testnet.
    Status {
        #[command(flatten)]
        dir: TestnetDir,
        #[arg(long)]
        json: bool,
    },
    /// Stop exactly the processes `up` started.
    Down {
        #[command(flatten)]
        dir: TestnetDir,
        /// Also delete the testnet directory (node data and logs).
        #[arg(long)]
        clean: bool,
    },
    /// Stop one node for fault tests (default SIGKILL); it stays in the testnet for `restart`.
    Kill {
        #[command(flatten)]
        dir: TestnetDir,
        /// Index of the node (the `#` column of `testnet status`).
        #[arg(long)]
        node: usize,
        /// `kill` (SIGKILL, like a crash) or `term` (SIGTERM, a clean shutdown).
        #[arg(long, value_enum, default_value = "kill")]
        signal: testnet::KillSignal,
        #[arg(long)]
        json: bool,
    },
    /// Start one node again with its recorded command line (stopping it first if it runs).
    Restart {
        #[command(flatten)]
        dir: TestnetDir,
        /// Index of the node (the `#` column of `testnet status`).
        #[arg(long)]
        node: usize,
        /// Give up waiting for the node's control API after this long.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[arg(long)]
        json: bool,
    },
    /// Measure the replicated store: propagation to every node, durable write throughput,
    /// catch-up of a node that was away, and no acknowledged write lost to SIGKILL.
    KvBench {
        #[command(flatten)]
        dir: TestnetDir,
        #[arg(long, default_value_t = 10)]
        nodes: usize,
        #[arg(long, default_value_t = 20)]
        trials: usize,
        /// Keys written while one node is away.
        #[arg(long, default_value_t = 100_000)]
        divergence_keys: usize,
        #[arg(long)]
        json: bool,
    },
    /// Measure cluster failover: SIGKILL the coordinator of the largest cluster, time until
    /// another member coordinates and takes a task; the node is restarted between trials.
    Failover {
        #[command(flatten)]
        dir: TestnetDir,
        #[arg(long, default_value_t = 12)]
        nodes: usize,
        #[arg(long, default_value_t = 20)]
        trials: usize,
        /// How long the clusters get to form.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        form_timeout: Duration,
        #[arg(long)]
        json: bool,
    },
    /// Measure how long each node's driver loop holds its swarm task while clusters run
    /// tasks and writers hammer the replicated store.
    StallBench {
        #[command(flatten)]
        dir: TestnetDir,
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        #[arg(long, default_value_t = 200)]
        tasks: usize,
        #[arg(long, default_value_t = 32)]
        writers: usize,
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long)]
        json: bool,
    },
    /// Measure convergence, propagation latency, memory and CPU on testnets.
    Bench {
        #[command(flatten)]
        dir: TestnetDir,
        /// Testnet sizes to measure.
        #[arg(long, value_delimiter = ',', default_value = "10,50")]
        sizes: Vec<usize>,
        /// Telemetry interval of the measured testnets.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Wait after convergence before sampling (steady state).
        #[arg(long, default_value = "45s", value_parser = humantime::parse_duration)]
        settle: Duration,
        /// How long to sample propagation, CPU and memory.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        sample: Duration,
        /// Nodes in the idle phase (default 30 s telemetry interval).
        #[arg(long, default_value_t = 10)]
        idle_nodes: usize,
        /// How long to measure idle CPU.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        idle_window: Duration,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        None => run(cli.run).await,
        Some(Command::Run(args)) => run(args).await,
        Some(Command::Id(select)) => {
            let settings = select.settings(ConfigLayer::default())?;
            let key = identity::load_or_create(&settings.data_dir)?;
            print_line(&key.public().to_peer_id().to_string())
        }
        Some(Command::Status(q)) => {
            let s = q.client()?.status().await?;
            print_out(q.json, &s, || client::render_status(&s))
        }
        Some(Command::Peers(q)) => {
            let p = q.client()?.peers().await?;
            print_out(q.json, &p, || client::render_peers(&p))
        }
        Some(Command::Telemetry(q)) => {
            let t = q.client()?.telemetry().await?;
            print_out(q.json, &t, || client::render_telemetry(&t))
        }
        Some(Command::Device(args)) => device_command(args).await,
        Some(Command::Send(args)) => send_command(args).await,
        Some(Command::Cluster(q)) => {
            let view = q.client()?.cluster().await?;
            print_out(q.json, &view, || client::render_cluster(&view))
        }
        Some(Command::Task(command)) => task_command(command).await,
        Some(Command::Kv(command)) => kv_command(command).await,
        Some(Command::Inbox(q)) => {
            let m = q.client()?.messages().await?;
            print_out(q.json, &m, || client::render_messages(&m))
        }
        Some(Command::Watch(args)) => watch(args).await,
        Some(Command::Config(ConfigCommand::Init { path, force })) => {
            let path = path.unwrap_or_else(config::default_config_path);
            config::write_default(&path, force)?;
            print_line(&format!("wrote {}", path.display()))
        }
        Some(Command::Testnet(cmd)) => run_testnet(cmd).await,
        Some(Command::Mesh(MeshCommand::Init { name, dir })) => {
            let (info, key, public) = mesh::init(&dir, &name)?;
            print_line(&format!(
                "mesh {} ({})\n  root key    {}  (secret: whoever holds it admits anyone)\n  public      {}",
                info.name,
                info.mesh_id,
                key.display(),
                public.display()
            ))
        }
        Some(Command::Ticket(TicketCommand::Issue {
            mesh_key,
            peer,
            roles,
            valid,
            out,
        })) => {
            let ticket = mesh::issue(&mesh_key, peer, &roles, valid)?;
            emit(&ticket, out.as_deref(), "ticket")
        }
        Some(Command::Ticket(TicketCommand::Show { file })) => {
            print_line(&mesh::show(&mesh::read_blob(&file)?)?)
        }
        Some(Command::Ticket(TicketCommand::Revoke {
            mesh_key,
            ticket,
            peer,
            out,
            submit,
            select,
        })) => {
            let target = match (ticket, peer) {
                (Some(file), _) => mesh::RevokeTarget::Ticket {
                    bytes: mesh::read_blob(&file)?,
                    path: file,
                },
                (None, Some(peer)) => mesh::RevokeTarget::Peer(peer),
                (None, None) => bail!("give --ticket FILE or --peer PEERID"),
            };
            let revocation = mesh::revoke(&mesh_key, target)?;
            emit(&revocation, out.as_deref(), "revocation")?;
            if submit {
                publish_revocation(&select, revocation).await?;
            }
            Ok(())
        }
        Some(Command::Ticket(TicketCommand::Publish { file, select })) => {
            publish_revocation(&select, mesh::read_blob(&file)?).await
        }
        Some(Command::Store(StoreCommand::Check {
            select,
            repair,
            json,
        })) => store_check(&select, repair, json),
    }
}

fn store_check(select: &NodeSelect, repair: bool, json: bool) -> Result<()> {
    use fogmesh_store::integrity;
    let settings = select.settings(ConfigLayer::default())?;
    let dir = node::store_dir(&settings.data_dir);
    if !repair {
        let report = integrity::check(&dir)?;
        print_out(json, &report, || store_report::render_check(&report))?;
        if !report.healthy() {
            bail!("the store is damaged; `fogmesh store check --repair` keeps what is readable");
        }
        return Ok(());
    }
    match integrity::repair(&dir)? {
        None => {
            let report = integrity::check(&dir)?;
            print_out(json, &report, || {
                format!("{}\nnothing to repair", store_report::render_check(&report))
            })
        }
        Some(report) => print_out(json, &report, || store_report::render_repair(&report)),
    }
}

async fn publish_revocation(select: &NodeSelect, revocation: Vec<u8>) -> Result<()> {
    let settings = select.settings(ConfigLayer::default())?;
    let client = client::ControlClient::for_data_dir(&settings.data_dir)?;
    let outcome = client.submit_revocation(revocation).await?;
    let text = if outcome.new {
        format!(
            "revocation applied and gossiped; {} connection(s) closed",
            outcome.disconnected.len()
        )
    } else {
        "the node already had this revocation".to_owned()
    };
    print_line(&text)
}

/// Writes a ticket or revocation to `out`, or prints it as hex.
fn emit(bytes: &[u8], out: Option<&std::path::Path>, what: &str) -> Result<()> {
    match mesh::emit(bytes, out)? {
        Some(hex) => print_line(&hex),
        None => print_line(&format!(
            "wrote {what} ({} bytes) to {}",
            bytes.len(),
            out.map(|p| p.display().to_string()).unwrap_or_default()
        )),
    }
}

fn print_out<T: serde::Serialize>(
    json: bool,
    value: &T,
    table: impl FnOnce() -> String,
) -> Result<()> {
    let text = if json {
        serde_json::to_string_pretty(value)?
    } else {
        table()
    };
    print_line(&text)
}

/// Prints to stdout; a closed pipe (`fogmesh peers | head`) is not an error.
fn print_line(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// `fogmesh send`.
async fn kv_command(command: KvCli) -> Result<()> {
    match command {
        KvCli::Put {
            key,
            value,
            file,
            ns,
            query,
        } => {
            let value = match (value, file) {
                (Some(text), None) => text.into_bytes(),
                (None, Some(path)) => std::fs::read(&path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
                _ => anyhow::bail!("give the value as an argument or with --file"),
            };
            let written = query
                .client()?
                .kv_write(&ns.namespace, &key, Some(value))
                .await?;
            print_out(query.json, &written, || {
                format!("stored {}/{key} at {}", ns.namespace, written.hlc)
            })
        }
        KvCli::Del { key, ns, query } => {
            let written = query.client()?.kv_write(&ns.namespace, &key, None).await?;
            print_out(query.json, &written, || {
                format!("deleted {}/{key} at {}", ns.namespace, written.hlc)
            })
        }
        KvCli::Get {
            key,
            conflicts,
            ns,
            query,
        } => {
            let Some(view) = query.client()?.kv_get(&ns.namespace, &key).await? else {
                anyhow::bail!("no key {}/{key} on this node", ns.namespace);
            };
            if query.json {
                return print_line(&serde_json::to_string_pretty(&view)?);
            }
            if conflicts {
                return print_line(&client::render_key_versions(&view));
            }
            if view.winner.deleted {
                anyhow::bail!("{}/{key} was deleted ({})", ns.namespace, view.winner.hlc);
            }
            let bytes = view
                .winner
                .value_hex
                .as_deref()
                .map(hex::decode)
                .transpose()?
                .unwrap_or_default();
            write_stdout(&bytes)
        }
        KvCli::List {
            prefix,
            after,
            limit,
            deleted,
            ns,
            query,
        } => {
            let list = fogmesh_node::api::KvListQuery {
                prefix: prefix.unwrap_or_default(),
                after,
                limit: Some(limit),
                deleted,
            };
            let keys = query.client()?.kv_list(&ns.namespace, &list).await?;
            print_out(query.json, &keys, || client::render_keys(&keys))
        }
        KvCli::Watch { prefix, ns, query } => {
            let filter = fogmesh_node::api::EventFilter {
                kind: None,
                namespace: Some(ns.namespace.clone()),
                prefix: Some(prefix.unwrap_or_default()),
            };
            let client = query.client()?;
            let mut stream = client.events_filtered(&filter).await?;
            if !query.json {
                eprintln!(
                    "watching {}/{}* on the node at {}; Ctrl-C stops",
                    ns.namespace,
                    filter.prefix.as_deref().unwrap_or(""),
                    client.addr()
                );
            }
            follow(&mut stream, query.json).await
        }
    }
}

/// What one entry of `kv-bench`'s divergence phase takes encoded: a 100-byte value under
/// `div/NNNNNNN`, signed by an Ed25519 key.
fn sample_entry_bytes() -> usize {
    use fogmesh_kv::{Entry, Hlc, Version};
    let author = libp2p::identity::Keypair::generate_ed25519();
    let entry = Entry {
        namespace: "bench".into(),
        key: "div/0000000".into(),
        value: Some(serde_bytes::ByteBuf::from(vec![b'v'; 100])),
        version: Version {
            hlc: Hlc {
                wall_ms: 1_800_000_000_000,
                counter: 0,
            },
            author: serde_bytes::ByteBuf::from(author.public().to_peer_id().to_bytes()),
        },
        signature: serde_bytes::ByteBuf::from(vec![0; 64]),
    };
    fogmesh_wire::codec::encode(&entry).map_or(0, |b| b.len())
}

/// Writes `bytes` to stdout as they are; a closed pipe is the reader being done.
fn write_stdout(bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(bytes) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn task_command(command: TaskCli) -> Result<()> {
    match command {
        TaskCli::Submit(args) => {
            let read = |path: &PathBuf| {
                std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
            };
            let mut module = read(&args.wasm)?;
            if args.wasm.extension().is_some_and(|e| e == "wat") {
                let text = String::from_utf8(module)
                    .map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", args.wasm.display()))?;
                module = fogmesh_node::exec::assemble(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", args.wasm.display()))?;
            }
            let input = args.input.as_ref().map(read).transpose()?;
            if !(args.cpu > 0.0 && args.cpu <= 1024.0) {
                anyhow::bail!("--cpu {} is outside 0..1024 cores", args.cpu);
            }
            let request = fogmesh_node::api::SubmitTaskRequest {
                module_hex: hex::encode(&module),
                input_hex: input.map(hex::encode),
                priority: Some(args.priority.clone()),
                cpu_millicores: (args.cpu * 1000.0).round() as u32,
                memory_mb: args.memory,
                duration_ms: u64::try_from(args.duration.as_millis()).unwrap_or(u64::MAX),
                gpu: args.gpu,
            };
            let submitted = args.query.client()?.submit_task(&request).await?;
            if args.query.json {
                print_line(&serde_json::to_string_pretty(&submitted)?)
            } else {
                print_line(&submitted.id)
            }
        }
        TaskCli::Status { id, query } => {
            let task = query.client()?.task(&id).await?;
            print_out(query.json, &task, || client::render_task(&task))
        }
        TaskCli::List(q) => {
            let tasks = q.client()?.tasks().await?;
            print_out(q.json, &tasks, || client::render_tasks(&tasks))
        }
        TaskCli::Result { id, out, query } => {
            let bytes = query.client()?.task_result(&id).await?;
            match out {
                Some(path) => std::fs::write(&path, &bytes)
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display())),
                None => write_stdout(&bytes),
            }
        }
        TaskCli::Cancel { id, query } => {
            let answer = query.client()?.cancel_task(&id).await?;
            print_out(query.json, &answer, || {
                answer
                    .get("status")
                    .and_then(|s| s.as_str())
                    .unwrap_or("cancel requested")
                    .to_owned()
            })
        }
    }
}

async fn send_command(args: SendArgs) -> Result<()> {
    let mut words = args.words.into_iter();
    let to = if args.broadcast {
        None
    } else {
        let peer = words.next().unwrap_or_default();
        Some(
            peer.parse::<libp2p::PeerId>()
                .map_err(|e| {
                    anyhow::anyhow!(
                        "{peer:?} is not a PeerId ({e}); to send to everyone, use --broadcast"
                    )
                })?
                .to_string(),
        )
    };
    let text = words.collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        anyhow::bail!("nothing to send: give the text after the PeerId");
    }
    let client = args.query.client()?;
    let sent = client
        .send_message(&fogmesh_node::api::SendMessageRequest {
            to: to.clone(),
            text,
            app: None,
        })
        .await?;
    let Some(wait) = args.wait.filter(|_| to.is_some()) else {
        if args.query.json {
            return print_line(&serde_json::to_string_pretty(&sent)?);
        }
        return print_line(&format!(
            "sent {} ({})",
            sent.id,
            if to.is_some() { "pending" } else { "broadcast" }
        ));
    };
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let view = client.message(&sent.id).await?;
        if view.status == "delivered" || tokio::time::Instant::now() >= deadline {
            if args.query.json {
                print_line(&serde_json::to_string_pretty(&view)?)?;
            } else {
                let after = view
                    .at_ms
                    .map(|at| format!(" after {} ms", at.saturating_sub(view.created_ms)))
                    .unwrap_or_default();
                print_line(&format!("{} {}{after}", view.id, view.status))?;
            }
            if view.status != "delivered" {
                anyhow::bail!(
                    "not acknowledged within {}: the message stays held and is delivered when a path to the recipient appears",
                    humantime::format_duration(wait)
                );
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `fogmesh watch`: one line per event until the node ends the stream.
async fn watch(args: WatchArgs) -> Result<()> {
    let client = control_client(&args.select, args.api)?;
    let mut stream = client.events().await?;
    if !args.json {
        eprintln!(
            "watching the node at {} (times in UTC); Ctrl-C stops",
            client.addr()
        );
    }
    follow(&mut stream, args.json).await
}

/// Prints a stream's events, one per line, until the node ends it.
async fn follow(stream: &mut client::EventStream, json: bool) -> Result<()> {
    use std::io::Write;
    while let Some(data) = stream.next_data().await? {
        let line = if json {
            data
        } else {
            client::render_event(&data)
        };
        // stdout is line-buffered, so every event shows at once, also through a pipe.
        match writeln!(std::io::stdout().lock(), "{line}") {
            Ok(()) => {}
            // `fogmesh watch | head`: the reader is done, and so are we.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    eprintln!("the node ended the stream: it is shutting down");
    Ok(())
}

/// `fogmesh device`: the running node's view, or one local sensing pass.
async fn device_command(args: DeviceArgs) -> Result<()> {
    if !args.local {
        let remote = match args.query.client() {
            Ok(client) => client.device().await.ok(),
            Err(_) => None,
        };
        if let Some(view) = remote {
            return print_out(args.query.json, &view, || client::render_device(&view));
        }
        if !args.query.json {
            eprintln!("no running node answered; sensing this machine locally");
        }
    }
    let settings = args.query.select.settings(ConfigLayer {
        simulate: args.simulate.layer(),
        ..ConfigLayer::default()
    })?;
    let mut monitor = DeviceMonitor::new(&settings.data_dir, settings.simulate.clone());
    let _ = monitor.pass(fogmesh_node::api::now_ms());
    // CPU load is the difference of two readings; give it a moment.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let view = monitor.pass(fogmesh_node::api::now_ms());
    print_out(args.query.json, &view, || client::render_device(&view))
}

async fn run(args: RunArgs) -> Result<()> {
    let settings = args.select.settings(args.layer())?;
    logging::init(&settings.log, settings.log_format);
    if settings
        .listen
        .iter()
        .any(|a| a.to_string().contains("0.0.0.0"))
        && !settings.mdns
    {
        tracing::debug!("mDNS off; peers come from bootstrap addresses only");
    }
    let node = if args.offline {
        start_offline(settings, args.radio_medium.as_deref()).await?
    } else {
        node::start(settings).await?
    };
    // `node started` already named the PeerId and control address.
    tracing::info!("ready; Ctrl-C stops the node");
    let stopped_by_itself = tokio::select! {
        signal = shutdown_signal() => { signal?; false }
        _ = wait_finished(&node) => true,
    };
    if stopped_by_itself {
        bail!("the node's event loop ended unexpectedly");
    }
    tracing::info!("shutting down");
    match tokio::time::timeout(node::SHUTDOWN_BUDGET, node.shutdown()).await {
        Ok(()) => Ok(()),
        Err(_) => bail!(
            "shutdown took longer than {}s",
            node::SHUTDOWN_BUDGET.as_secs()
        ),
    }
}

/// `fogmesh run --offline`: Bluetooth LE only.
async fn start_offline(
    mut settings: fogmesh_node::config::Settings,
    medium: Option<&std::path::Path>,
) -> Result<node::RunningNode> {
    use fogmesh_transports::ble::driver::{DeviceId, SharedDriver};
    use fogmesh_transports::ble::medium::MediumRadio;
    if let Some(addr) = settings
        .bootstrap
        .iter()
        .find(|a| fogmesh_transports::ble::transport::device_of(a).is_none())
    {
        bail!("--offline: bootstrap address {addr} is not a BLE address (/unix/ble-<device>/p2p/<PeerId>)");
    }
    settings.listen = vec!["/unix/ble".parse()?];
    settings.mdns = false;
    settings.quic = false;
    let key = identity::load_or_create(&settings.data_dir)?;
    let peer = key.public().to_peer_id();
    let radio: SharedDriver = match medium {
        Some(medium) => {
            let device = DeviceId::of_peer(&peer);
            Arc::new(MediumRadio::open(medium, device, rand::random()).await?)
        }
        None => bluetooth_adapter(peer).await?,
    };
    Ok(node::start_on(settings, node::Network::Offline(radio)).await?)
}

/// The machine's Bluetooth adapter, through BlueZ.
#[cfg(all(feature = "bluetooth", target_os = "linux"))]
async fn bluetooth_adapter(
    peer: libp2p::PeerId,
) -> Result<fogmesh_transports::ble::driver::SharedDriver> {
    use fogmesh_node::connection_budget::{RADIO_SLACK, RADIO_TARGET};
    let radio = fogmesh_transports::ble::bluez::BluezRadio::open(peer, RADIO_TARGET + RADIO_SLACK)
        .await
        .context(
            "--offline needs a Bluetooth LE adapter (BlueZ's bluetoothd running, an adapter \
             present); on the simulated radio of a testnet, pass --radio-medium FILE",
        )?;
    Ok(Arc::new(radio))
}

#[cfg(not(all(feature = "bluetooth", target_os = "linux")))]
async fn bluetooth_adapter(
    _peer: libp2p::PeerId,
) -> Result<fogmesh_transports::ble::driver::SharedDriver> {
    bail!(
        "--offline needs a Bluetooth LE radio, and this build has no driver for real adapters \
         (build with `--features bluetooth`, Linux); on the simulated radio of a testnet, pass \
         --radio-medium FILE (`fogmesh testnet up --radio line --offline` does; see docs/ble.md)"
    )
}

async fn wait_finished(node: &node::RunningNode) {
    while !node.is_finished() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn shutdown_signal() -> Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot watch SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("cannot watch Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("cannot watch Ctrl-C")?;
    Ok(())
}

async fn run_testnet(cmd: TestnetCommand) -> Result<()> {
    let binary = std::env::current_exe().context("cannot find the fogmesh binary")?;
    match cmd {
        TestnetCommand::Up {
            dir,
            nodes,
            telemetry_interval,
            timeout,
            profile,
            open,
            radio,
            offline: _,
            json,
        } => {
            let options = testnet::UpOptions {
                nodes,
                dir: dir.dir,
                binary,
                telemetry_interval: Some(telemetry_interval),
                timeout,
                profile,
                open,
                radio,
            };
            let report = testnet::up(&options, |p| {
                eprintln!(
                    "  {:>5.1}s  {}/{} nodes up, {}/{} have every other node's telemetry",
                    p.elapsed.as_secs_f64(),
                    p.answering,
                    p.total,
                    p.converged,
                    p.total
                )
            })
            .await?;
            let table = testnet::status(&options.dir).await?;
            if json {
                print_line(&serde_json::to_string_pretty(&table)?)
            } else {
                print_line(&format!(
                    "{}\nconverged in {:.2}s; stop it with `fogmesh testnet down --dir {}`",
                    testnet::render_status(&table),
                    report.converged_after.as_secs_f64(),
                    options.dir.display()
                ))
            }
        }
        TestnetCommand::Status { dir, json } => {
            let table = testnet::status(&dir.dir).await?;
            print_out(json, &table, || testnet::render_status(&table))
        }
        TestnetCommand::Down { dir, clean } => {
            let report = testnet::down(&dir.dir, clean).await?;
            print_line(&report.to_string())
        }
        TestnetCommand::Kill {
            dir,
            node,
            signal,
            json,
        } => {
            let report = testnet::kill(&dir.dir, node, signal).await?;
            print_out(json, &report, || report.to_string())
        }
        TestnetCommand::Restart {
            dir,
            node,
            timeout,
            json,
        } => {
            let report = testnet::restart(&dir.dir, node, timeout).await?;
            print_out(json, &report, || report.to_string())
        }
        TestnetCommand::Radio { dir, change } => {
            use testnet::radio::RadioChange;
            let state = testnet::status(&dir.dir).await?;
            let ports: Vec<u16> = state.nodes.iter().map(|n| n.p2p_port).collect();
            let change = match change {
                RadioCommand::Move { node, to } => RadioChange::Move {
                    node,
                    x: to.0,
                    y: to.1,
                },
                RadioCommand::Partition { nodes } => RadioChange::Partition { group: nodes },
                RadioCommand::Heal => RadioChange::Heal,
                RadioCommand::Loss { probability } => RadioChange::Loss(probability),
            };
            testnet::radio::apply(&dir.dir, &ports, &change)?;
            let neighbours = testnet::radio::neighbours(&dir.dir, &ports).unwrap_or_default();
            let lines: Vec<String> = neighbours
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let n: Vec<String> = n.iter().map(|j| j.to_string()).collect();
                    format!(
                        "  node {i} hears {}",
                        if n.is_empty() {
                            "nobody".into()
                        } else {
                            n.join(",")
                        }
                    )
                })
                .collect();
            print_line(&format!("radio changed\n{}", lines.join("\n")))
        }
        TestnetCommand::KvBench {
            dir,
            nodes,
            trials,
            divergence_keys,
            json,
        } => {
            let options = testnet::kv_bench::KvBenchOptions {
                dir: dir.dir,
                binary,
                nodes,
                trials,
                divergence_keys,
                entry_bytes: sample_entry_bytes(),
            };
            let report = testnet::kv_bench::kv_bench(&options, |line| eprintln!("{line}")).await?;
            print_out(json, &report, || report.to_markdown())
        }
        TestnetCommand::Failover {
            dir,
            nodes,
            trials,
            form_timeout,
            json,
        } => {
            let options = testnet::failover::FailoverOptions {
                dir: dir.dir,
                binary,
                nodes,
                trials,
                module: fogmesh_node::exec::assemble(include_str!(
                    "../../examples/workloads/empty.wat"
                ))?,
                form_timeout,
            };
            let report = testnet::failover::failover(&options, |line| eprintln!("{line}")).await?;
            print_out(json, &report, || report.to_markdown())
        }
        TestnetCommand::StallBench {
            dir,
            nodes,
            tasks,
            writers,
            duration,
            json,
        } => {
            let options = testnet::stall_bench::StallBenchOptions {
                dir: dir.dir,
                binary,
                nodes,
                tasks,
                writers,
                duration,
                module: fogmesh_node::exec::assemble(include_str!(
                    "../../examples/workloads/empty.wat"
                ))?,
            };
            let report =
                testnet::stall_bench::stall_bench(&options, |line| eprintln!("{line}")).await?;
            print_out(json, &report, || report.to_markdown())
        }
        TestnetCommand::Bench {
            dir,
            sizes,
            interval,
            settle,
            sample,
            idle_nodes,
            idle_window,
            json,
        } => {
            let options = testnet::BenchOptions {
                dir: dir.dir,
                binary,
                sizes,
                busy_interval: interval,
                settle,
                sample,
                idle_nodes,
                idle_window,
            };
            let report = testnet::bench(&options, |line| eprintln!("{line}")).await?;
            print_out(json, &report, || report.to_markdown())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Every simulated device a mixed testnet starts must be accepted by `fogmesh run`.
    #[test]
    fn mixed_profile_rows_parse_as_run_flags() {
        for index in 0..10 {
            let mut argv = vec!["fogmesh".to_owned(), "run".to_owned()];
            argv.extend(testnet::mixed_profile_args(index));
            let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            let Some(Command::Run(args)) = cli.command else {
                panic!("not a run command")
            };
            let sim = args.simulate.layer().expect("simulation flags");
            sim.validate().unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        }
    }
}
