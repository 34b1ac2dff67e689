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

pub mod bench;
pub mod probe;
pub mod procs;
pub mod state;

use std::collections::HashSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

pub use bench::{bench, BenchOptions, BenchReport};
use probe::Prober;
use state::{NodeEntry, TestnetState};

/// Largest testnet `up` starts.
pub const MAX_NODES: usize = 200;
/// How long `down` waits for SIGTERM to work before SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(8);
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
    #[error("testnet did not converge within {timeout:?}: {converged}/{total} nodes complete; nodes are still running (see `fogmesh testnet status --dir {dir}`)")]
    Timeout {
        timeout: Duration,
        converged: usize,
        total: usize,
        dir: PathBuf,
    },
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

/// Starts a testnet and waits for it to converge. `progress` is called about once a second.
pub async fn up(
    options: &UpOptions,
    mut progress: impl FnMut(Progress),
) -> Result<UpReport, TestnetError> {
    if options.nodes == 0 || options.nodes > MAX_NODES {
        return Err(TestnetError::BadSize(options.nodes));
    }
    let dir = &options.dir;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    if let Some(old) = state::load(dir)? {
        if old
            .nodes
            .iter()
            .any(|n| procs::is_ours_and_alive(n.pid, n.start_time))
        {
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
        Some(create_mesh(options, &config)?)
    };
    let mut peer_ids = Vec::with_capacity(options.nodes);
    for index in 0..options.nodes {
        let data_dir = node_dir(dir, index);
        std::fs::create_dir_all(&data_dir).map_err(io_err(&data_dir))?;
        let peer = run_tool(
            options,
            &config,
            &["id", "--data-dir", &path_arg(&data_dir)],
        )?;
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
            )?;
        }
        peer_ids.push(peer);
    }

    let ports = allocate_ports(options.nodes)?;
    let mut record = TestnetState {
        created_at_ms: now_ms(),
        nodes: Vec::with_capacity(options.nodes),
    };
    let mut children = Vec::with_capacity(options.nodes);
    let started = Instant::now();
    for (index, (p2p_port, control_port)) in ports.iter().copied().enumerate() {
        let bootstrap: Vec<String> = [0, index.saturating_sub(1)]
            .into_iter()
            .filter(|&i| i < index)
            .collect::<HashSet<_>>()
            .into_iter()
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
                let _ = down(dir, false);
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

fn create_mesh(options: &UpOptions, config: &Path) -> Result<TestnetMesh, TestnetError> {
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
    )?;
    Ok(mesh)
}

/// Runs the fogmesh binary for a one-shot command, with the testnet's scrubbed environment;
/// returns its trimmed standard output.
fn run_tool(options: &UpOptions, config: &Path, args: &[&str]) -> Result<String, TestnetError> {
    let mut cmd = Command::new(&options.binary);
    cmd.args(args);
    scrub_env(&mut cmd);
    cmd.env("FOGMESH_CONFIG", config).stdin(Stdio::null());
    let failed = |reason: String| TestnetError::Tool {
        binary: options.binary.clone(),
        args: args.join(" "),
        reason,
    };
    let out = cmd.output().map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn scrub_env(cmd: &mut Command) {
    for (key, _) in std::env::vars() {
        if key.starts_with("FOGMESH_") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
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
    let log = std::fs::File::create(&log_file).map_err(io_err(&log_file))?;
    let log_err = log.try_clone().map_err(io_err(&log_file))?;
    let mut cmd = Command::new(&options.binary);
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--listen", &format!("/ip4/127.0.0.1/tcp/{p2p_port}")])
        .args([
            "--listen",
            &format!("/ip4/127.0.0.1/udp/{p2p_port}/quic-v1"),
        ])
        .args(["--control-port", &control_port.to_string()])
        .args(["--no-mdns", "--exempt-loopback", "--log", "info"]);
    if let Some(interval) = options.telemetry_interval {
        cmd.args([
            "--telemetry-interval",
            &humantime::format_duration(interval).to_string(),
        ]);
    }
    for addr in bootstrap {
        cmd.args(["--bootstrap", addr]);
    }
    if let Some(mesh) = mesh {
        cmd.arg("--mesh")
            .arg(&mesh.description)
            .arg("--ticket")
            .arg(data_dir.join(TICKET_FILE));
    }
    if options.profile == Profile::Mixed {
        cmd.args(mixed_profile_args(index));
    }
    scrub_env(&mut cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err));
    #[cfg(unix)]
    {
        // Own process group: Ctrl-C in the shell that ran `up` does not reach the nodes.
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let child = cmd.spawn().map_err(|e| TestnetError::Spawn {
        index,
        binary: options.binary.clone(),
        reason: e.to_string(),
    })?;
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
        },
        child,
    ))
}

/// One node of `testnet status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRow {
    pub index: usize,
    pub pid: u32,
    pub alive: bool,
    pub p2p_port: u16,
    pub control_port: u16,
    pub rss_bytes: Option<u64>,
    pub status: Option<probe::StatusProbe>,
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
    let mut rows = Vec::with_capacity(record.nodes.len());
    for node in &record.nodes {
        let alive = procs::is_ours_and_alive(node.pid, node.start_time);
        let status = if alive {
            prober.status(node.control_port).await
        } else {
            None
        };
        rows.push(NodeRow {
            index: node.index,
            pid: node.pid,
            alive,
            p2p_port: node.p2p_port,
            control_port: node.control_port,
            rss_bytes: if alive {
                procs::rss_bytes(node.pid)
            } else {
                None
            },
            status,
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
                if n.alive { "not answering" } else { "stopped" }.into(),
                String::new(),
                String::new(),
                String::new(),
            ),
        };
        t.add_row(vec![
            n.index.to_string(),
            n.pid.to_string(),
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
        ]);
    }
    t.to_string()
}

fn short(id: &str) -> String {
    if id.len() > 14 {
        format!("{}…{}", &id[..6], &id[id.len() - 6..])
    } else {
        id.to_owned()
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
        if self.removed_dir {
            write!(f, "; testnet directory removed")?;
        }
        Ok(())
    }
}

/// Stops exactly the processes recorded in `dir`'s state file.
pub fn down(dir: &Path, clean: bool) -> Result<DownReport, TestnetError> {
    let record = state::load(dir)?.ok_or_else(|| TestnetError::NotFound(dir.to_path_buf()))?;
    let mut report = DownReport::default();
    let mut signalled = Vec::new();
    for node in &record.nodes {
        if !procs::is_ours_and_alive(node.pid, node.start_time) {
            let current = procs::start_time(node.pid);
            if current.is_some() && node.start_time.is_some() && current != node.start_time {
                report.not_ours.push(node.pid);
            } else {
                report.already_gone += 1;
            }
            continue;
        }
        match procs::signal(node.pid, Signal::SIGTERM) {
            Ok(()) => signalled.push(node),
            Err(_) => report.already_gone += 1,
        }
    }
    let deadline = Instant::now() + TERM_GRACE;
    while Instant::now() < deadline
        && signalled
            .iter()
            .any(|n| procs::is_ours_and_alive(n.pid, n.start_time))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut killed = Vec::new();
    for node in signalled {
        if procs::is_ours_and_alive(node.pid, node.start_time) {
            let _ = procs::signal(node.pid, Signal::SIGKILL);
            killed.push(node);
        } else {
            report.stopped += 1;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline
        && killed
            .iter()
            .any(|n| procs::is_ours_and_alive(n.pid, n.start_time))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    report.killed = killed.len();
    state::remove(dir)?;
    if clean {
        std::fs::remove_dir_all(dir).map_err(io_err(dir))?;
        report.removed_dir = true;
    }
    Ok(report)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
