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
//! `up --in-memory` ([`memory`]) runs every node in one host process instead, on the
//! in-process network; the same state file, `status`, `kill`, `restart` and `down` serve it.
//!
//! `kill` and `restart` act on one node for fault tests. The state file records each node's full
//! command line, so `restart` needs nothing but the testnet dir. A node restarted by other means
//! is still found through its data dir's `control.json` (see [`procs::choose`]).

pub mod access;
pub mod bench;
pub mod failover;
pub mod kv_bench;
pub mod memory;
pub mod nat_lab;
pub mod netns;
pub mod probe;
pub mod procs;
pub mod put_bench;
pub mod radio;
pub mod stall_bench;
pub mod state;
mod status;
mod stop;
mod up;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use bench::{bench, BenchOptions, BenchReport};
pub use status::*;
pub use stop::*;
pub use up::*;

/// Largest testnet `up` starts.
pub const MAX_NODES: usize = 200;
/// How long `down` waits for SIGTERM to work before SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(8);
/// How long to wait for a SIGKILLed process to disappear.
pub(crate) const KILL_WAIT: Duration = Duration::from_secs(2);
pub(crate) const POLL_EVERY: Duration = Duration::from_millis(250);

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
    /// A benchmark could not run (its peer did not start, a port was not free).
    #[error("{0}")]
    Bench(String),
    #[error(transparent)]
    NatLab(#[from] NatLabError),
    /// The host of an in-memory testnet refused, failed or is gone.
    #[error("in-memory testnet host: {0}")]
    Host(String),
}

/// Why the NAT lab (docs/nat-lab.md) cannot be built or asked.
#[derive(Debug, thiserror::Error)]
pub enum NatLabError {
    #[error("the NAT lab needs Linux (network namespaces, nftables)")]
    NotLinux,
    #[error("the NAT lab needs root (it creates network namespaces and nftables rules); run it with sudo")]
    NotRoot,
    #[error("the NAT lab needs `{tool}`, which is not on PATH (Debian/Ubuntu: apt-get install -y {package})")]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error("bad lab layout {layout:?}: {reason}")]
    BadLayout { layout: String, reason: String },
    #[error("`{command}` failed: {reason}")]
    Command { command: String, reason: String },
    #[error("cannot find an unused lab id (namespaces fmlab-<id>-*) after {0} tries")]
    NoLabId(usize),
    #[error("the testnet in {0} is not a NAT lab (start one with `fogmesh testnet up --nat lab`)")]
    NotALab(PathBuf),
}

pub(crate) fn io_err(path: &Path) -> impl Fn(std::io::Error) -> TestnetError + '_ {
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

impl UpOptions {
    /// A closed-mesh testnet of `nodes` with the nodes' default telemetry interval, as the
    /// benchmarks start it.
    pub fn bench(dir: PathBuf, binary: PathBuf, nodes: usize, profile: Profile) -> Self {
        UpOptions {
            radio: None,
            nodes,
            dir,
            binary,
            telemetry_interval: None,
            timeout: Duration::from_secs(120),
            profile,
            open: false,
        }
    }
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
