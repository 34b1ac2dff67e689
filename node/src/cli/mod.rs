//! The `fogmesh` command line: one module per subcommand (`run`, the queries, `send`,
//! `kv`, `task`, the mesh and store tools, `testnet`), and what they share here: finding
//! the node to ask, printing for a person or as JSON. Every command that talks to a running
//! node goes through the control API's client ([`crate::client`]).

mod admin;
mod dashboard;
mod kv;
mod memory_bench;
mod query;
mod run;
mod send;
mod task;
mod testnet;
mod testnet_memory;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};

use crate::admission::mesh;
use crate::client::ControlClient;
use crate::config::{self, ConfigLayer, Settings};
use crate::identity;

use admin::{publish_revocation, store_check};
use admin::{ConfigCommand, MeshCommand, StoreCommand, TicketCommand};
use dashboard::{dashboard, DashboardArgs};
use kv::{kv_command, KvCli};
use query::{device_command, watch, DeviceArgs, WatchArgs};
use run::RunArgs;
use send::{send_command, SendArgs};
use task::{task_command, TaskCli};
use testnet::{run_testnet, TestnetCommand};

#[derive(Debug, Parser)]
#[command(
    name = "fogmesh",
    version,
    about = "A peer-to-peer fog mesh node",
    args_conflicts_with_subcommands = true
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no subcommand, `fogmesh` runs a node with these flags.
    #[command(flatten)]
    run: RunArgs,
}

impl Cli {
    /// Whether this command runs an in-memory network in this process.
    fn runs_many_nodes(&self) -> bool {
        matches!(
            &self.command,
            Some(Command::Testnet(
                TestnetCommand::MemoryHost { .. }
                    | TestnetCommand::Bench {
                        in_memory: true,
                        ..
                    }
            ))
        )
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a node (the default).
    Run(RunArgs),
    /// Print this node's PeerId (creating its identity if there is none).
    Id(NodeSelect),
    /// Ask the running node for its status.
    Status(QueryArgs),
    /// Ask the running node for its peers.
    Peers(QueryArgs),
    /// Ask the running node for the telemetry it holds, or with --peer for one node's
    /// latest record (fetched from whoever holds it when this node does not).
    Telemetry(TelemetryArgs),
    /// Print the address of the node's web dashboard (served by the node on 127.0.0.1,
    /// with the token it needs to change anything), and with --open open it.
    Dashboard(DashboardArgs),
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

#[derive(Debug, Args, Default)]
pub(crate) struct NodeSelect {
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
        let unknown = crate::config::unknown_env_vars(std::env::vars());
        if !unknown.is_empty() {
            // Logging is not set up yet: straight to stderr, once per command.
            eprintln!(
                "warning: ignoring unknown environment variable(s) {}; fogmesh reads FOGMESH_CONFIG, {}",
                unknown.join(", "),
                crate::config::ENV_VARS.join(", ")
            );
        }
        Ok(Settings::load(
            self.config.as_deref(),
            std::env::vars(),
            flags,
        )?)
    }
}

/// `fogmesh telemetry`.
#[derive(Debug, Args)]
pub(crate) struct TelemetryArgs {
    #[command(flatten)]
    query: QueryArgs,
    /// One node's latest record, by PeerId.
    #[arg(long)]
    peer: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct QueryArgs {
    #[command(flatten)]
    select: NodeSelect,
    /// Control API address to ask instead of finding it through the data dir.
    #[arg(long)]
    api: Option<SocketAddr>,
    /// The node's control API token (its `<data_dir>/api-token`), for commands that change
    /// the node when it is found with `--api` rather than through its data dir.
    #[arg(long, env = "FOGMESH_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl QueryArgs {
    fn client(&self) -> Result<ControlClient> {
        control_client(&self.select, self.api, self.api_token.as_deref())
    }
}

/// The node at `api` (with `token`, if given), or the one running with the selected data
/// dir (with the token its data dir holds; `token` is then ignored, so a token meant for
/// another node is never sent to this one).
pub(crate) fn control_client(
    select: &NodeSelect,
    api: Option<SocketAddr>,
    token: Option<&str>,
) -> Result<ControlClient> {
    let Some(addr) = api else {
        if token.is_some() {
            eprintln!("note: --api-token (FOGMESH_API_TOKEN) is used only with --api; the data dir's token is used");
        }
        let settings = select.settings(ConfigLayer::default())?;
        return Ok(ControlClient::for_data_dir(&settings.data_dir)?);
    };
    let client = ControlClient::new(addr);
    Ok(match token {
        Some(text) => client.with_token(crate::control::access::ApiToken::parse(text).ok_or_else(
            || anyhow::anyhow!("--api-token (FOGMESH_API_TOKEN) must be the 64 hex digits of a node's api-token file"),
        )?),
        None => client,
    })
}

/// Runs the command line; what `fogmesh`'s `main` does.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Two workers serve a node or a client; a process that runs a whole in-memory network
    // uses every core.
    let workers = if cli.runs_many_nodes() {
        std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
    } else {
        2
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
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

pub(crate) async fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        None => run::run(cli.run).await,
        Some(Command::Run(args)) => run::run(args).await,
        Some(Command::Id(select)) => {
            let settings = select.settings(ConfigLayer::default())?;
            let key = identity::load_or_create(&settings.data_dir)?;
            print_line(&key.public().to_peer_id().to_string())
        }
        Some(Command::Status(q)) => {
            let s = q.client()?.status().await?;
            print_out(q.json, &s, || crate::client::render::render_status(&s))
        }
        Some(Command::Peers(q)) => {
            let p = q.client()?.peers().await?;
            print_out(q.json, &p, || crate::client::render::render_peers(&p))
        }
        Some(Command::Telemetry(TelemetryArgs { query: q, peer })) => {
            let client = q.client()?;
            let t = match peer {
                Some(peer) => {
                    let one = client.telemetry_of(&peer).await?;
                    if q.json {
                        return print_out(true, &one, String::new);
                    }
                    crate::telemetry::view::TelemetryResponse {
                        peer_id: client.status().await?.peer_id,
                        now_ms: 0,
                        nodes: vec![one],
                    }
                }
                None => client.telemetry().await?,
            };
            print_out(q.json, &t, || crate::client::render::render_telemetry(&t))
        }
        Some(Command::Device(args)) => device_command(args).await,
        Some(Command::Send(args)) => send_command(args).await,
        Some(Command::Cluster(q)) => {
            let view = q.client()?.cluster().await?;
            print_out(q.json, &view, || {
                crate::client::render::render_cluster(&view)
            })
        }
        Some(Command::Task(command)) => task_command(command).await,
        Some(Command::Kv(command)) => kv_command(command).await,
        Some(Command::Inbox(q)) => {
            let m = q.client()?.messages().await?;
            print_out(q.json, &m, || crate::client::render::render_messages(&m))
        }
        Some(Command::Watch(args)) => watch(args).await,
        Some(Command::Dashboard(args)) => dashboard(args).await,
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

/// Writes a ticket or revocation to `out`, or prints it as hex.
pub(crate) fn emit(bytes: &[u8], out: Option<&std::path::Path>, what: &str) -> Result<()> {
    match mesh::emit(bytes, out)? {
        Some(hex) => print_line(&hex),
        None => print_line(&format!(
            "wrote {what} ({} bytes) to {}",
            bytes.len(),
            out.map(|p| p.display().to_string()).unwrap_or_default()
        )),
    }
}

pub(crate) fn print_out<T: serde::Serialize>(
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
pub(crate) fn print_line(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Writes `bytes` to stdout as they are; a closed pipe is the reader being done.
pub(crate) fn write_stdout(bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(bytes) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(e.into()),
    }
}
