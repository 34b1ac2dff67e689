//! Local fogmesh testnets: N node processes on 127.0.0.1, their lifecycle and reports.
//!
//! `up` starts every node with its own data dir and ports, mDNS off (a testnet never leaks
//! onto the real LAN), bootstrapped from node 0 and its predecessor, and waits until every
//! node holds fresh telemetry from every other node. Each node reads an empty config file of
//! the testnet's own and runs with the `FOGMESH_*` environment removed, so a developer's own
//! configuration cannot point a testnet node at a real mesh.
//!
//! Unless asked for an open mesh, `up` also creates a mesh of its own (`testnet.root.key`,
//! `testnet.mesh.json` in the testnet dir), gives every node its identity ahead of time and a
//! ticket for it, and bootstraps by `/p2p/<PeerId>` addresses — all through the same
//! `fogmesh` binary, so the testnet exercises exactly what a user runs. `down` stops exactly the
//! processes `up` recorded, by PID and start time, first with SIGTERM and then, after a grace
//! period, SIGKILL.
//!
//! `kill` and `restart` act on one node for fault tests. The state file records each node's full
//! command line, so `restart` needs nothing but the testnet dir. A node restarted by other means
//! is still found through its data dir's `control.json` (see [`procs::choose`]).

pub mod bench;
pub mod failover;
pub mod kv_bench;
pub mod probe;
pub mod procs;
pub mod radio;
pub mod stall_bench;
pub mod state;

use std::collections::HashSet;
use std::fmt;
use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

pub use bench::{bench, BenchOptions, BenchReport};
use probe::Prober;
use procs::{FoundBy, NodeClues, NodeProcess};
use state::{KillMark, NodeEntry, TestnetState};

/// Largest testnet `up` starts.
pub const MAX_NODES: usize = 200;
/// How long `down` waits for SIGTERM to work before SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(8);
/// How long to wait for a SIGKILLed process to disappear.
const KILL_WAIT: Duration = Duration::from_secs(2);
const POLL_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum TestnetError {
    #[error("a testnet needs 1 to {MAX_NODES} nodes, not {0}")]
    BadSize(usize),
    #[error("a testnet is already running in {0}; stop it with `fogmesh testnet down --dir {0}`")]
    AlreadyRunning(PathBuf),
    #[error("no testnet in {0} (no state file)")]
    NotFound(PathBuf),
    #[error("testnet state file {path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("cannot prepare {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("cannot find free ports on 127.0.0.1: {0}")]
    Ports(String),
    #[error("cannot start node {index} ({binary}): {reason}")]
    Spawn {
        index: usize,
        binary: PathBuf,
        reason: String,
    },
    #[error("`{binary} {args}` failed: {reason}")]
    Tool {
        binary: PathBuf,
        args: String,
        reason: String,
    },
    #[error("node {index} exited during start-up; its log is {log}")]
    NodeDied { index: usize, log: PathBuf },
    #[error("the testnet in {dir} has no node {index} (it has {count})")]
    NoSuchNode {
        dir: PathBuf,
        index: usize,
        count: usize,
    },
    #[error("node {index} is not running")]
    NotRunning { index: usize },
    #[error("node {index} has no recorded command line ({state} was written by an older fogmesh); restart the whole testnet with `testnet down` and `testnet up`")]
    NoCommand { index: usize, state: PathBuf },
    #[error(
        "node {index} (PID {pid}) survived SIGKILL; not starting a second process on its data dir"
    )]
    Unkillable { index: usize, pid: u32 },
    #[error("node {index} did not answer its control API within {timeout:?}; it is still running, its log is {log}")]
    NotAnswering {
        index: usize,
        timeout: Duration,
        log: PathBuf,
    },
    #[error("testnet did not converge within {timeout:?}: {converged}/{total} nodes complete; nodes are still running (see `fogmesh testnet status --dir {dir}`)")]
    Timeout {
        timeout: Duration,
        converged: usize,
        total: usize,
        dir: PathBuf,
    },
    #[error("{0}")]
    NotSettled(String),
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> TestnetError + '_ {
    move |e| TestnetError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

#[derive(Debug, Clone)]
pub struct UpOptions {
    pub nodes: usize,
    pub dir: PathBuf,
    /// The `fogmesh` binary to start.
    pub binary: PathBuf,
    /// Telemetry interval of every node; `None` keeps the node default.
    pub telemetry_interval: Option<Duration>,
    pub timeout: Duration,
    pub profile: Profile,
    /// Run without a mesh (no tickets; anyone may connect).
    pub open: bool,
    /// BLE-only nodes on a simulated radio shared by the processes, placed by this layout.
    pub radio: Option<radio::Layout>,
}

/// Name of the mesh a testnet creates.
pub const MESH_NAME: &str = "testnet";

/// Which devices the testnet's nodes pretend to be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Every node senses the machine it runs on.
    #[default]
    Uniform,
    /// A realistic mix of simulated phones, tablets, laptops, desktops and Pis, charged and
    /// drained, cool and hot.
    Mixed,
}

/// The simulated device of node `index` in a mixed testnet, as `fogmesh run` flags.
/// Ten rows cycle; every power mode and device class appears within any ten nodes.
pub fn mixed_profile_args(index: usize) -> Vec<String> {
    const MIX: [(&str, Option<f32>, Option<bool>, f32); 10] = [
        ("desktop", None, None, 40.0),
        ("laptop", Some(70.0), Some(true), 42.0),
        ("smartphone", Some(55.0), Some(false), 38.0),
        ("tablet", Some(18.0), Some(false), 33.0),
        ("raspberry_pi", None, None, 52.0),
        ("smartphone", Some(8.0), Some(false), 36.0),
        ("laptop", Some(35.0), Some(false), 47.0),
        ("desktop", None, None, 58.0),
        ("smartphone", Some(90.0), Some(true), 31.0),
        ("tablet", Some(60.0), Some(false), 67.0),
    ];
    let (class, battery, charging, temperature) = MIX[index % MIX.len()];
    let mut args = vec![
        "--simulate-device".to_owned(),
        class.to_owned(),
        "--temperature".to_owned(),
        temperature.to_string(),
    ];
    if let Some(b) = battery {
        args.extend(["--battery".to_owned(), b.to_string()]);
    }
    if let Some(c) = charging {
        args.extend(["--charging".to_owned(), c.to_string()]);
    }
    args
}

/// Progress while waiting for convergence.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub elapsed: Duration,
    pub answering: usize,
    pub converged: usize,
    pub total: usize,
}

#[derive(Debug)]
pub struct UpReport {
    /// From the first spawn until every node had every other node's telemetry.
    pub converged_after: Duration,
    pub peer_ids: Vec<String>,
    /// The started processes, for callers that stay alive and want to reap them.
    pub children: Vec<Child>,
}

/// Starts a testnet, runs `work` on it (a future, so it starts only once the testnet is
/// up), and stops the testnet's own processes whatever `work` returned.
pub async fn with_testnet<T>(
    options: &UpOptions,
    work: impl std::future::Future<Output = Result<T, TestnetError>>,
) -> Result<T, TestnetError> {
    let mut up_report = up(options, |_| {}).await?;
    let result = work.await;
    let stopped = down(&options.dir, true).await;
    for child in &mut up_report.children {
        let _ = child.try_wait();
    }
    stopped?;
    result
}

/// Starts a testnet and waits for it to converge. `progress` is called about once a second.
pub async fn up(
    options: &UpOptions,
    mut progress: impl FnMut(Progress),
) -> Result<UpReport, TestnetError> {
    if options.nodes == 0 || options.nodes > MAX_NODES {
        return Err(TestnetError::BadSize(options.nodes));
    }
    std::fs::create_dir_all(&options.dir).map_err(io_err(&options.dir))?;
    // Recorded command lines must not depend on the directory `restart` is run from.
    let options = &UpOptions {
        dir: std::path::absolute(&options.dir).map_err(io_err(&options.dir))?,
        ..options.clone()
    };
    let dir = &options.dir;
    if let Some(old) = state::load(dir)? {
        if old.nodes.iter().any(|n| locate(n).is_some()) {
            return Err(TestnetError::AlreadyRunning(dir.clone()));
        }
        // A previous testnet that is gone: start from clean node directories.
        for node in &old.nodes {
            let _ = std::fs::remove_dir_all(&node.data_dir);
        }
        state::remove(dir)?;
    }
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        "# Testnet nodes read this (empty) file instead of the user's own config.\n",
    )
    .map_err(io_err(&config))?;

    let mesh = if options.open {
        None
    } else {
        Some(create_mesh(options, &config).await?)
    };
    let mut peer_ids = Vec::with_capacity(options.nodes);
    for index in 0..options.nodes {
        let data_dir = node_dir(dir, index);
        std::fs::create_dir_all(&data_dir).map_err(io_err(&data_dir))?;
        let peer = run_tool(
            options,
            &config,
            &["id", "--data-dir", &path_arg(&data_dir)],
        )
        .await?;
        if let Some(mesh) = &mesh {
            run_tool(
                options,
                &config,
                &[
                    "ticket",
                    "issue",
                    "--mesh-key",
                    &path_arg(&mesh.root_key),
                    "--peer",
                    &peer,
                    "--roles",
                    "worker,coordinator,submitter,writer",
                    "--valid",
                    "30d",
                    "--out",
                    &path_arg(&data_dir.join(TICKET_FILE)),
                ],
            )
            .await?;
        }
        peer_ids.push(peer);
    }

    let ports = allocate_ports(options.nodes)?;
    let medium = match options.radio {
        Some(layout) => {
            let udp: Vec<u16> = ports.iter().map(|(p2p, _)| *p2p).collect();
            let path = radio::medium_path(dir);
            radio::medium_for(layout, &peer_ids, &udp, 11)
                .save(&path)
                .map_err(|e| TestnetError::Io {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            Some(path)
        }
        None => None,
    };
    let mut record = TestnetState {
        created_at_ms: now_ms(),
        nodes: Vec::with_capacity(options.nodes),
    };
    let mut children = Vec::with_capacity(options.nodes);
    let started = Instant::now();
    for (index, (p2p_port, control_port)) in ports.iter().copied().enumerate() {
        // Radio nodes find their neighbours by discovery; internet ones bootstrap.
        let bootstrap: Vec<String> = [0, index.saturating_sub(1)]
            .into_iter()
            .filter(|&i| i < index)
            .collect::<HashSet<_>>()
            .into_iter()
            .filter(|_| medium.is_none())
            .map(|i| format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", ports[i].0, peer_ids[i]))
            .collect();
        let spawned = spawn_node(
            options,
            &config,
            mesh.as_ref(),
            index,
            p2p_port,
            control_port,
            &bootstrap,
        );
        match spawned {
            Ok((entry, child)) => {
                record.nodes.push(entry);
                children.push(child);
                state::save(dir, &record)?;
            }
            Err(e) => {
                state::save(dir, &record)?;
                let _ = down(dir, false).await;
                return Err(e);
            }
        }
    }

    let prober = Prober::new();
    let total = options.nodes;
    let mut last_report = Instant::now() - Duration::from_secs(10);
    loop {
        let probes = probe_all(&prober, &record.nodes).await;
        for (node, probe) in record.nodes.iter().zip(&probes) {
            if probe.is_none() && !procs::is_ours_and_alive(node.pid, node.start_time) {
                return Err(TestnetError::NodeDied {
                    index: node.index,
                    log: node.log_file.clone(),
                });
            }
        }
        let answering = probes.iter().filter(|p| p.is_some()).count();
        let converged = count_converged(&probes);
        let done = converged == total;
        if done || last_report.elapsed() >= Duration::from_secs(1) {
            progress(Progress {
                elapsed: started.elapsed(),
                answering,
                converged,
                total,
            });
            last_report = Instant::now();
        }
        if done {
            return Ok(UpReport {
                converged_after: started.elapsed(),
                peer_ids: probes.into_iter().flatten().map(|p| p.peer_id).collect(),
                children,
            });
        }
        if started.elapsed() > options.timeout {
            return Err(TestnetError::Timeout {
                timeout: options.timeout,
                converged,
                total,
                dir: dir.clone(),
            });
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

async fn probe_all(prober: &Prober, nodes: &[NodeEntry]) -> Vec<Option<probe::TelemetryProbe>> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, node) in nodes.iter().enumerate() {
        let prober = prober.clone();
        let port = node.control_port;
        tasks.spawn(async move { (i, prober.telemetry(port).await) });
    }
    let mut out = vec![None; nodes.len()];
    while let Some(joined) = tasks.join_next().await {
        if let Ok((i, probe)) = joined {
            out[i] = probe;
        }
    }
    out
}

/// Nodes holding fresh telemetry from every other node of the testnet.
fn count_converged(probes: &[Option<probe::TelemetryProbe>]) -> usize {
    if probes.iter().any(Option::is_none) {
        return 0;
    }
    let all: Vec<&str> = probes
        .iter()
        .flatten()
        .map(|p| p.peer_id.as_str())
        .collect();
    probes
        .iter()
        .flatten()
        .filter(|p| {
            let have: HashSet<&str> = p
                .nodes
                .iter()
                .filter(|n| !n.local && !n.stale)
                .map(|n| n.peer_id.as_str())
                .collect();
            all.iter().all(|id| *id == p.peer_id || have.contains(id))
        })
        .count()
}

/// One p2p port (free for TCP and UDP) and one control port per node. The sockets are held
/// until all ports are chosen, so no two nodes get the same one.
fn allocate_ports(n: usize) -> Result<Vec<(u16, u16)>, TestnetError> {
    let mut held_tcp = Vec::new();
    let mut held_udp = Vec::new();
    let mut out = Vec::new();
    let bind_tcp = || TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    while out.len() < n {
        if held_tcp.len() > n * 8 + 64 {
            return Err(TestnetError::Ports("too many ports in use".into()));
        }
        let p2p = bind_tcp().map_err(|e| TestnetError::Ports(e.to_string()))?;
        let port = p2p
            .local_addr()
            .map_err(|e| TestnetError::Ports(e.to_string()))?
            .port();
        let udp = UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        held_tcp.push(p2p);
        let Ok(udp) = udp else { continue };
        held_udp.push(udp);
        let control = bind_tcp().map_err(|e| TestnetError::Ports(e.to_string()))?;
        let control_port = control
            .local_addr()
            .map_err(|e| TestnetError::Ports(e.to_string()))?
            .port();
        held_tcp.push(control);
        out.push((port, control_port));
    }
    Ok(out)
}

/// A node's ticket file inside its data dir.
const TICKET_FILE: &str = "ticket";

fn node_dir(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("node-{index}"))
}

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

/// The testnet's own mesh.
#[derive(Debug, Clone)]
struct TestnetMesh {
    root_key: PathBuf,
    description: PathBuf,
}

async fn create_mesh(options: &UpOptions, config: &Path) -> Result<TestnetMesh, TestnetError> {
    let mesh = TestnetMesh {
        root_key: options.dir.join(format!("{MESH_NAME}.root.key")),
        description: options.dir.join(format!("{MESH_NAME}.mesh.json")),
    };
    // A testnet's mesh lives and dies with it: a new `up` makes a new one.
    for old in [&mesh.root_key, &mesh.description] {
        match std::fs::remove_file(old) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(old)(e)),
            _ => {}
        }
    }
    run_tool(
        options,
        config,
        &[
            "mesh",
            "init",
            "--name",
            MESH_NAME,
            "--dir",
            &path_arg(&options.dir),
        ],
    )
    .await?;
    Ok(mesh)
}

/// Runs the fogmesh binary for a one-shot command, with the testnet's scrubbed environment;
/// returns its trimmed standard output.
async fn run_tool(
    options: &UpOptions,
    config: &Path,
    args: &[&str],
) -> Result<String, TestnetError> {
    let mut cmd = tokio::process::Command::new(&options.binary);
    cmd.args(args);
    for key in scrubbed_env() {
        cmd.env_remove(key);
    }
    cmd.env("FOGMESH_CONFIG", config).stdin(Stdio::null());
    let failed = |reason: String| TestnetError::Tool {
        binary: options.binary.clone(),
        args: args.join(" "),
        reason,
    };
    let out = cmd.output().await.map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The caller's variables a testnet process must not see: its own config must not leak in.
fn scrubbed_env() -> impl Iterator<Item = String> {
    std::env::vars_os()
        .filter_map(|(key, _)| key.into_string().ok())
        .filter(|key| key.starts_with("FOGMESH_") || key == "RUST_LOG")
}

fn spawn_node(
    options: &UpOptions,
    config: &Path,
    mesh: Option<&TestnetMesh>,
    index: usize,
    p2p_port: u16,
    control_port: u16,
    bootstrap: &[String],
) -> Result<(NodeEntry, Child), TestnetError> {
    let data_dir = node_dir(&options.dir, index);
    std::fs::create_dir_all(&data_dir).map_err(io_err(&data_dir))?;
    let log_file = data_dir.join("node.log");
    let mut command: Vec<String> = vec![
        path_arg(&options.binary),
        "run".into(),
        "--config".into(),
        path_arg(config),
        "--data-dir".into(),
        path_arg(&data_dir),
        "--control-port".into(),
        control_port.to_string(),
        "--no-mdns".into(),
        // Every testnet node dials from 127.0.0.1: per-address limits would throttle the mesh.
        "--exempt-loopback".into(),
        "--log".into(),
        "info".into(),
    ];
    match options.radio {
        // The device receives radio datagrams on the p2p port (UDP), per the medium file.
        Some(_) => command.extend([
            "--offline".to_owned(),
            "--radio-medium".to_owned(),
            path_arg(&radio::medium_path(&options.dir)),
        ]),
        None => command.extend([
            "--listen".to_owned(),
            format!("/ip4/127.0.0.1/tcp/{p2p_port}"),
            "--listen".to_owned(),
            format!("/ip4/127.0.0.1/udp/{p2p_port}/quic-v1"),
        ]),
    }
    if let Some(interval) = options.telemetry_interval {
        command.extend([
            "--telemetry-interval".to_owned(),
            humantime::format_duration(interval).to_string(),
        ]);
    }
    for addr in bootstrap {
        command.extend(["--bootstrap".to_owned(), addr.clone()]);
    }
    if let Some(mesh) = mesh {
        command.extend([
            "--mesh".to_owned(),
            path_arg(&mesh.description),
            "--ticket".to_owned(),
            path_arg(&data_dir.join(TICKET_FILE)),
        ]);
    }
    if options.profile == Profile::Mixed {
        command.extend(mixed_profile_args(index));
    }
    let child = start_node(index, &command, &log_file, false)?;
    let pid = child.id();
    Ok((
        NodeEntry {
            index,
            pid,
            start_time: procs::start_time(pid),
            data_dir,
            log_file,
            p2p_port,
            control_port,
            command: Some(command),
            started_at_ms: Some(now_ms()),
            killed: None,
        },
        child,
    ))
}

/// Starts a node process from its full command line, logging to `log_file`; `append` keeps
/// the log of earlier runs (restarts) instead of starting it afresh.
fn start_node(
    index: usize,
    command: &[String],
    log_file: &Path,
    append: bool,
) -> Result<Child, TestnetError> {
    let Some((program, args)) = command.split_first() else {
        return Err(TestnetError::Spawn {
            index,
            binary: PathBuf::new(),
            reason: "empty command line".into(),
        });
    };
    let log = OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(log_file)
        .map_err(io_err(log_file))?;
    let log_err = log.try_clone().map_err(io_err(log_file))?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    for key in scrubbed_env() {
        cmd.env_remove(key);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err));
    #[cfg(unix)]
    {
        // Own process group: Ctrl-C in the shell that ran `up` does not reach the nodes.
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    cmd.spawn().map_err(|e| TestnetError::Spawn {
        index,
        binary: PathBuf::from(program),
        reason: e.to_string(),
    })
}

/// The live process of `node`, if one can be tied to it: the recorded one, or the one its
/// data dir's control file names with a matching command line.
pub fn locate(node: &NodeEntry) -> Option<NodeProcess> {
    let control = read_control(&node.data_dir);
    procs::choose(
        &NodeClues {
            recorded_pid: node.pid,
            recorded_start: node.start_time,
            control_pid: control.map(|c| c.pid),
            data_dir: &node.data_dir,
            binary: node.binary(),
        },
        procs::proc_info,
    )
}

/// The fields of a node's `control.json` the testnet uses.
#[derive(Debug, Clone, Copy, Deserialize)]
struct ControlInfo {
    pid: u32,
    addr: SocketAddr,
}

fn read_control(data_dir: &Path) -> Option<ControlInfo> {
    let bytes = std::fs::read(data_dir.join(CONTROL_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The node's control file, written by every running node into its data dir.
const CONTROL_FILE: &str = "control.json";

/// One node of `testnet status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRow {
    pub index: usize,
    /// The live process if one was found, else the recorded one.
    pub pid: u32,
    pub alive: bool,
    /// How the live process was found (`None` when there is none).
    pub found_by: Option<FoundBy>,
    /// Set when `testnet kill` stopped the node.
    pub killed: Option<KillMark>,
    pub p2p_port: u16,
    pub control_port: u16,
    pub rss_bytes: Option<u64>,
    pub status: Option<probe::StatusProbe>,
    /// Radio testnets: the nodes this one hears, per the medium file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub radio_neighbours: Option<Vec<usize>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestnetStatus {
    pub dir: PathBuf,
    pub nodes: Vec<NodeRow>,
}

/// The state of the testnet in `dir`, asked of every node.
pub async fn status(dir: &Path) -> Result<TestnetStatus, TestnetError> {
    let record = state::load(dir)?.ok_or_else(|| TestnetError::NotFound(dir.to_path_buf()))?;
    let prober = Prober::new();
    let ports: Vec<u16> = record.nodes.iter().map(|n| n.p2p_port).collect();
    let mut radio_neighbours = radio::neighbours(dir, &ports);
    let mut rows = Vec::with_capacity(record.nodes.len());
    for node in &record.nodes {
        let live = locate(node);
        // A node started by hand may have been given another control port.
        let control_port = match live.map(|p| p.found_by) {
            Some(FoundBy::ControlFile) => read_control(&node.data_dir)
                .map(|c| c.addr.port())
                .unwrap_or(node.control_port),
            _ => node.control_port,
        };
        let status = match live {
            Some(_) => prober.status(control_port).await,
            None => None,
        };
        rows.push(NodeRow {
            index: node.index,
            pid: live.map(|p| p.pid).unwrap_or(node.pid),
            alive: live.is_some(),
            found_by: live.map(|p| p.found_by),
            killed: if live.is_some() {
                None
            } else {
                node.killed.clone()
            },
            p2p_port: node.p2p_port,
            control_port,
            rss_bytes: live.and_then(|p| procs::rss_bytes(p.pid)),
            status,
            radio_neighbours: radio_neighbours
                .as_mut()
                .and_then(|n| n.get_mut(node.index).map(std::mem::take)),
        });
    }
    Ok(TestnetStatus {
        dir: dir.to_path_buf(),
        nodes: rows,
    })
}

pub fn render_status(s: &TestnetStatus) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(vec![
        "#",
        "pid",
        "peer",
        "phase",
        "peers",
        "telemetry",
        "stale",
        "p2p port",
        "api port",
        "rss",
        "radio neighbours",
    ]);
    for n in &s.nodes {
        let (peer, phase, peers, tele, stale) = match &n.status {
            Some(st) => (
                short(&st.peer_id),
                st.phase.clone(),
                st.connected_peers.to_string(),
                st.telemetry_nodes.to_string(),
                st.stale_nodes.to_string(),
            ),
            None => (
                "?".into(),
                match (&n.killed, n.alive) {
                    (_, true) => "not answering".into(),
                    (Some(mark), false) => format!("killed ({})", mark.signal),
                    (None, false) => "stopped".into(),
                },
                String::new(),
                String::new(),
                String::new(),
            ),
        };
        let pid = match n.found_by {
            Some(FoundBy::ControlFile) => format!("{}*", n.pid),
            _ => n.pid.to_string(),
        };
        t.add_row(vec![
            n.index.to_string(),
            pid,
            peer,
            phase,
            peers,
            tele,
            stale,
            n.p2p_port.to_string(),
            n.control_port.to_string(),
            n.rss_bytes
                .map(|b| format!("{:.1} MiB", b as f64 / 1048576.0))
                .unwrap_or_default(),
            n.radio_neighbours
                .as_ref()
                .map(|ns| {
                    ns.iter()
                        .map(|i| i.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default(),
        ]);
    }
    let mut out = t.to_string();
    if s.nodes
        .iter()
        .any(|n| n.found_by == Some(FoundBy::ControlFile))
    {
        out.push_str("\n* not the recorded process: found through the node's control.json");
    }
    out
}

fn short(id: &str) -> String {
    if id.len() > 14 {
        format!("{}…{}", &id[..6], &id[id.len() - 6..])
    } else {
        id.to_owned()
    }
}

/// Which of the given processes stopped on SIGTERM and which had to be SIGKILLed.
#[derive(Debug, Default)]
struct Stopped {
    cleanly: Vec<NodeProcess>,
    killed: Vec<NodeProcess>,
    /// Still there after SIGKILL (e.g. stuck in uninterruptible sleep).
    survivors: Vec<NodeProcess>,
}

/// SIGTERM to every process, SIGKILL to those still there after `grace`.
async fn terminate(processes: Vec<NodeProcess>, grace: Duration) -> Stopped {
    let mut out = Stopped::default();
    let mut signalled = Vec::new();
    for p in processes {
        match procs::signal(p.pid, Signal::SIGTERM) {
            Ok(()) => signalled.push(p),
            // Gone between finding and signalling it.
            Err(_) => out.cleanly.push(p),
        }
    }
    wait_gone(&signalled, grace).await;
    let mut killed = Vec::new();
    for p in signalled {
        if p.is_alive() {
            let _ = procs::signal(p.pid, Signal::SIGKILL);
            killed.push(p);
        } else {
            out.cleanly.push(p);
        }
    }
    wait_gone(&killed, KILL_WAIT).await;
    for p in killed {
        if p.is_alive() {
            out.survivors.push(p);
        } else {
            out.killed.push(p);
        }
    }
    out
}

/// Waits until none of `processes` is alive, or `within` has passed.
async fn wait_gone(processes: &[NodeProcess], within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline && processes.iter().any(NodeProcess::is_alive) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What `down` did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DownReport {
    pub stopped: usize,
    pub killed: usize,
    pub already_gone: usize,
    /// PIDs that now belong to another process and were left alone.
    pub not_ours: Vec<u32>,
    /// PIDs still running after SIGKILL.
    #[serde(default)]
    pub survivors: Vec<u32>,
    pub removed_dir: bool,
}

impl fmt::Display for DownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "testnet down: {} stopped cleanly, {} killed after {}s, {} already gone",
            self.stopped,
            self.killed,
            TERM_GRACE.as_secs(),
            self.already_gone
        )?;
        if !self.not_ours.is_empty() {
            write!(
                f,
                "; left alone (PID reused by another process): {:?}",
                self.not_ours
            )?;
        }
        if !self.survivors.is_empty() {
            write!(f, "; still running after SIGKILL: {:?}", self.survivors)?;
        }
        if self.removed_dir {
            write!(f, "; testnet directory removed")?;
        }
        Ok(())
    }
}

/// Stops every node of the testnet in `dir`: the recorded processes, and processes found
/// through a node's control file (see [`locate`]). Nothing else is signalled.
pub async fn down(dir: &Path, clean: bool) -> Result<DownReport, TestnetError> {
    let record = state::load(dir)?.ok_or_else(|| TestnetError::NotFound(dir.to_path_buf()))?;
    let mut report = DownReport::default();
    let mut live = Vec::new();
    for node in &record.nodes {
        if let Some(p) = locate(node) {
            live.push(p);
            continue;
        }
        let current = procs::start_time(node.pid);
        if current.is_some() && node.start_time.is_some() && current != node.start_time {
            report.not_ours.push(node.pid);
        } else {
            report.already_gone += 1;
        }
    }
    let stopped = terminate(live, TERM_GRACE).await;
    report.stopped = stopped.cleanly.len();
    report.killed = stopped.killed.len();
    report.survivors = stopped.survivors.iter().map(|p| p.pid).collect();
    state::remove(dir)?;
    if clean {
        std::fs::remove_dir_all(dir).map_err(io_err(dir))?;
        report.removed_dir = true;
    }
    Ok(report)
}

/// The signal `testnet kill` sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KillSignal {
    /// SIGKILL: the node gets no chance to flush or say goodbye (a crash, a power cut).
    #[default]
    Kill,
    /// SIGTERM: the node shuts down cleanly.
    Term,
}

impl KillSignal {
    fn signal(self) -> Signal {
        match self {
            Self::Kill => Signal::SIGKILL,
            Self::Term => Signal::SIGTERM,
        }
    }
}

/// What `kill` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KillReport {
    pub index: usize,
    pub pid: u32,
    pub signal: String,
    /// False if the process was still there when `kill` stopped waiting.
    pub exited: bool,
}

impl fmt::Display for KillReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "node {} (PID {}): sent {}",
            self.index, self.pid, self.signal
        )?;
        if self.exited {
            write!(f, ", it exited")
        } else {
            write!(f, ", it is still running")
        }
    }
}

fn load_node(dir: &Path, index: usize) -> Result<(TestnetState, usize), TestnetError> {
    let record = state::load(dir)?.ok_or_else(|| TestnetError::NotFound(dir.to_path_buf()))?;
    let at = record
        .nodes
        .iter()
        .position(|n| n.index == index)
        .ok_or_else(|| TestnetError::NoSuchNode {
            dir: dir.to_path_buf(),
            index,
            count: record.nodes.len(),
        })?;
    Ok((record, at))
}

/// Sends `signal` to node `index` of the testnet in `dir` and waits (briefly for SIGKILL, up
/// to the SIGTERM grace period otherwise) for it to exit. The node stays in the state file,
/// marked as killed, for `restart`.
pub async fn kill(
    dir: &Path,
    index: usize,
    signal: KillSignal,
) -> Result<KillReport, TestnetError> {
    let (mut record, at) = load_node(dir, index)?;
    let node = &mut record.nodes[at];
    let live = locate(node).ok_or(TestnetError::NotRunning { index })?;
    let signal = signal.signal();
    procs::signal(live.pid, signal).map_err(|_| TestnetError::NotRunning { index })?;
    let wait = if signal == Signal::SIGKILL {
        KILL_WAIT
    } else {
        TERM_GRACE
    };
    wait_gone(&[live], wait).await;
    node.killed = Some(KillMark {
        signal: signal.as_str().to_owned(),
        at_ms: now_ms(),
    });
    state::save(dir, &record)?;
    Ok(KillReport {
        index,
        pid: live.pid,
        signal: signal.as_str().to_owned(),
        exited: !live.is_alive(),
    })
}

/// What `restart` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestartReport {
    pub index: usize,
    /// The process stopped first, if the node was running.
    pub stopped_pid: Option<u32>,
    pub pid: u32,
    /// From the spawn until the control API answered.
    pub answered_after_ms: u64,
    pub log_file: PathBuf,
}

impl fmt::Display for RestartReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} ", self.index)?;
        if let Some(old) = self.stopped_pid {
            write!(f, "stopped (PID {old}) and ")?;
        }
        write!(
            f,
            "restarted as PID {}; its control API answered after {:.2}s; log {}",
            self.pid,
            self.answered_after_ms as f64 / 1000.0,
            self.log_file.display()
        )
    }
}

/// Starts node `index` again with its recorded command line and environment policy, appending
/// to its log; a running node is stopped first (SIGTERM, then SIGKILL after the grace period).
/// Records the new process and waits up to `timeout` until its control API answers.
pub async fn restart(
    dir: &Path,
    index: usize,
    timeout: Duration,
) -> Result<RestartReport, TestnetError> {
    let (mut record, at) = load_node(dir, index)?;
    let command = record.nodes[at]
        .command
        .clone()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| TestnetError::NoCommand {
            index,
            state: state::path(dir),
        })?;
    let stopped_pid = match locate(&record.nodes[at]) {
        Some(live) => {
            let stopped = terminate(vec![live], TERM_GRACE).await;
            if !stopped.survivors.is_empty() {
                return Err(TestnetError::Unkillable {
                    index,
                    pid: live.pid,
                });
            }
            Some(live.pid)
        }
        None => None,
    };
    let node = &mut record.nodes[at];
    let mut child = start_node(index, &command, &node.log_file, true)?;
    let started = Instant::now();
    node.pid = child.id();
    node.start_time = procs::start_time(node.pid);
    node.started_at_ms = Some(now_ms());
    node.killed = None;
    let (pid, control_port, log_file) = (node.pid, node.control_port, node.log_file.clone());
    state::save(dir, &record)?;
    tracing::info!(index, pid, "testnet node restarted");

    let prober = Prober::new();
    loop {
        if prober.status(control_port).await.is_some() {
            return Ok(RestartReport {
                index,
                stopped_pid,
                pid,
                answered_after_ms: started.elapsed().as_millis() as u64,
                log_file,
            });
        }
        if !matches!(child.try_wait(), Ok(None)) {
            return Err(TestnetError::NodeDied {
                index,
                log: log_file,
            });
        }
        if started.elapsed() > timeout {
            return Err(TestnetError::NotAnswering {
                index,
                timeout,
                log: log_file,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
