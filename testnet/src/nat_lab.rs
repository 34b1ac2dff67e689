//! The NAT lab (docs/nat-lab.md): fogmesh nodes behind real kernel NATs, built from network
//! namespaces, veth pairs and nftables, so testers can see who connects to whom and how.
//!
//! `up` builds the network ([`topology`]), gives every node an identity and a ticket in a
//! mesh of the lab's own (as the loopback testnet does), starts each node inside its
//! namespace with `ip netns exec` (which execs: the recorded PID is the node's), waits until
//! the NATed nodes have settled and returns the [`report`]. Everything it makes is written
//! to the testnet's state file before it is made, so `fogmesh testnet down` stops exactly
//! the lab's processes and deletes exactly its namespaces, also after an interrupted `up`;
//! `up` itself tears the lab down on every error.

pub mod report;
pub mod topology;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::netns::{self, Tools};
use crate::state::{self, LabNodeRecord, LabRecord, NodeEntry, TestnetState};
use crate::*;

pub use report::{LabReport, PairVia, PathKind, Via};
pub use topology::Layout;

/// `testnet up --nat <mode>`: the one kind of NAT testnet there is today.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NatMode {
    /// Nodes in network namespaces behind nftables NATs of several kinds (Linux, root).
    Lab,
}

/// Every node listens here, each in its own namespace (so they can all use the same port,
/// and a port-preserving NAT maps it to the same port outside).
pub const P2P_PORT: u16 = 4747;
/// Every node's control API: 127.0.0.1 of the node's own namespace.
pub const CONTROL_PORT: u16 = 7474;
/// How often the lab asks its nodes while it waits.
pub const POLL_EVERY: Duration = Duration::from_millis(500);
/// The nodes' log filter: info, and the NAT traversal protocols' own logs in detail, so a
/// node's log tells how each connection came about.
pub const LOG_FILTER: &str =
    "info,libp2p_autonat=debug,libp2p_relay=debug,libp2p_dcutr=debug,libp2p_identify=debug";

#[derive(Debug, Clone)]
pub struct LabOptions {
    pub dir: PathBuf,
    /// The `fogmesh` binary to start.
    pub binary: PathBuf,
    pub layout: Layout,
    pub telemetry_interval: Duration,
    pub profile: Profile,
    /// How long every node gets to answer its control API.
    pub answer_timeout: Duration,
    /// The longest wait for the NATed nodes to settle; the report is printed either way.
    pub settle_timeout: Duration,
    /// Settled: every pair connected, and no pair's path changed for this long.
    pub quiet: Duration,
}

impl LabOptions {
    pub fn new(dir: PathBuf, binary: PathBuf, layout: Layout) -> Self {
        LabOptions {
            dir,
            binary,
            layout,
            telemetry_interval: Duration::from_secs(1),
            profile: Profile::Uniform,
            answer_timeout: Duration::from_secs(30),
            settle_timeout: Duration::from_secs(60),
            quiet: Duration::from_secs(10),
        }
    }
}

/// Builds the lab, starts its nodes and waits (bounded) until they settle; returns the
/// report. The lab keeps running until `down`. On any error everything made is undone.
pub async fn up(
    options: &LabOptions,
    mut progress: impl FnMut(&str),
) -> Result<LabReport, TestnetError> {
    let tools = netns::preflight()?;
    std::fs::create_dir_all(&options.dir).map_err(io_err(&options.dir))?;
    // Recorded command lines must not depend on the directory `restart` is run from.
    let dir = std::path::absolute(&options.dir).map_err(io_err(&options.dir))?;
    let binary = std::path::absolute(&options.binary).map_err(io_err(&options.binary))?;
    if let Some(old) = state::load(&dir)? {
        if old.nodes.iter().any(|n| locate(n).is_some()) || crate::memory::host_alive(&old) {
            return Err(TestnetError::AlreadyRunning(dir));
        }
        // What an earlier lab in this dir left behind: namespaces it recorded as its own.
        if let Some(lab) = &old.lab {
            netns::delete(&lab.ip, &lab.namespaces).await;
        }
        for node in &old.nodes {
            let _ = std::fs::remove_dir_all(&node.data_dir);
        }
        state::remove(&dir)?;
    }
    let up_options = UpOptions {
        nodes: options.layout.kinds().len(),
        dir: dir.clone(),
        binary: binary.clone(),
        telemetry_interval: Some(options.telemetry_interval),
        timeout: options.answer_timeout,
        profile: options.profile,
        open: false,
        radio: None,
    };
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        "# Lab nodes read this (empty) file instead of the user's own config.\n",
    )
    .map_err(io_err(&config))?;
    progress("creating the lab's mesh and a ticket per node");
    let mesh = create_mesh(&up_options, &config).await?;
    let peer_ids = prepare_nodes(&up_options, &config, Some(&mesh), up_options.nodes).await?;

    let id = topology::new_lab_id()?;
    let plan = topology::Plan::new(&id, &options.layout);
    let mut record = TestnetState {
        created_at_ms: now_ms(),
        nodes: Vec::new(),
        lab: Some(LabRecord {
            id: id.clone(),
            namespaces: Vec::new(),
            ip: tools.ip.clone(),
            binary: binary.clone(),
            nodes: plan
                .nodes
                .iter()
                .zip(&peer_ids)
                .map(|(p, peer)| LabNodeRecord {
                    index: p.index,
                    kind: p.kind,
                    namespace: p.namespace.clone(),
                    router: p.router.as_ref().map(|(r, _)| r.clone()),
                    addr: p.addr,
                    external: p.external,
                    peer_id: peer.clone(),
                })
                .collect(),
            layout: options.layout.to_string(),
        }),
        host: None,
    };
    state::save(&dir, &record)?;
    let built = run_lab(
        options,
        &tools,
        &dir,
        &config,
        &mesh,
        &plan,
        &mut record,
        &mut progress,
    )
    .await;
    match built {
        Ok(report) => Ok(report),
        Err(e) => {
            progress(&format!("{e}; tearing the lab down"));
            if let Err(down_error) = down(&dir, false).await {
                tracing::warn!(error = %down_error, "tearing down the failed lab");
            }
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_lab(
    options: &LabOptions,
    tools: &Tools,
    dir: &Path,
    config: &Path,
    mesh: &TestnetMesh,
    plan: &topology::Plan,
    record: &mut TestnetState,
    progress: &mut impl FnMut(&str),
) -> Result<LabReport, TestnetError> {
    let rules_dir = dir.join("lab");
    std::fs::create_dir_all(&rules_dir).map_err(io_err(&rules_dir))?;
    progress(&format!(
        "building lab {id}: {} namespaces (fmlab-{id}-*), NAT rules in {}",
        plan.steps(tools, &rules_dir)
            .iter()
            .filter(|s| matches!(s, topology::Step::AddNamespace(_)))
            .count(),
        rules_dir.display(),
        id = plan.id,
    ));
    let steps = plan.steps(tools, &rules_dir);
    topology::build(tools, &steps, |name| {
        if let Some(lab) = record.lab.as_mut() {
            lab.namespaces.push(name.to_owned());
        }
        state::save(dir, record)
    })
    .await?;

    let lab = record.lab.clone().unwrap_or_default();
    let bootstrap = format!(
        "/ip4/{}/tcp/{P2P_PORT}/p2p/{}",
        plan.nodes[0].external, lab.nodes[0].peer_id
    );
    let started = Instant::now();
    for node in &lab.nodes {
        let data_dir = node_dir(dir, node.index);
        crate::access::give(dir, &data_dir)?;
        let log_file = data_dir.join("node.log");
        let mut command: Vec<String> = vec![
            path_arg(&tools.ip),
            "netns".into(),
            "exec".into(),
            node.namespace.clone(),
            path_arg(&lab.binary),
            "run".into(),
            "--config".into(),
            path_arg(config),
            "--data-dir".into(),
            path_arg(&data_dir),
            "--control-port".into(),
            CONTROL_PORT.to_string(),
            "--listen".into(),
            format!("/ip4/0.0.0.0/tcp/{P2P_PORT}"),
            "--no-mdns".into(),
            // TCP only: the lab's NATs treat UDP alike, but one transport keeps the report
            // about NAT behaviour rather than transport choice.
            "--no-quic".into(),
            "--log".into(),
            LOG_FILTER.into(),
            "--telemetry-interval".into(),
            humantime::format_duration(options.telemetry_interval).to_string(),
            "--mesh".into(),
            path_arg(&mesh.description),
            "--ticket".into(),
            path_arg(&data_dir.join(TICKET_FILE)),
        ];
        if node.index != 0 {
            command.extend(["--bootstrap".to_owned(), bootstrap.clone()]);
        }
        if options.profile == Profile::Mixed {
            command.extend(mixed_profile_args(node.index));
        }
        let child = start_node(node.index, &command, &log_file, false)?;
        let pid = child.id();
        // The lab is left running after `up` returns: nothing waits on the child, so it
        // is not kept; `down` finds the process by PID and start time.
        drop(child);
        record.nodes.push(NodeEntry {
            index: node.index,
            pid,
            start_time: procs::start_time(pid),
            data_dir,
            log_file,
            p2p_port: P2P_PORT,
            control_port: CONTROL_PORT,
            command: Some(command),
            started_at_ms: Some(now_ms()),
            killed: None,
            namespace: Some(node.namespace.clone()),
            in_memory: false,
        });
        state::save(dir, record)?;
        tracing::info!(index = node.index, pid, namespace = %node.namespace, kind = %node.kind, "lab node started");
    }
    progress(&format!(
        "{} nodes started; waiting for their control APIs",
        lab.nodes.len()
    ));

    // Every node answers.
    loop {
        let answers = ask_all(&lab, &record.nodes).await;
        check_alive(&record.nodes, &answers)?;
        let answering = answers.iter().filter(|a| a.status.is_some()).count();
        if answering == lab.nodes.len() {
            break;
        }
        if started.elapsed() > options.answer_timeout {
            let silent = answers.iter().position(|a| a.status.is_none()).unwrap_or(0);
            return Err(TestnetError::NotAnswering {
                index: silent,
                timeout: options.answer_timeout,
                log: record.nodes[silent].log_file.clone(),
            });
        }
        tokio::time::sleep(POLL_EVERY).await;
    }

    // Settling: until every pair is connected and no path changed for `quiet` (or nothing
    // is left that could change: no pair relayed), bounded by `settle_timeout`.
    let settle_started = Instant::now();
    let mut last_signature = Vec::new();
    let mut last_change = Instant::now();
    let mut last_progress = Instant::now() - Duration::from_secs(10);
    loop {
        let answers = ask_all(&lab, &record.nodes).await;
        check_alive(&record.nodes, &answers)?;
        let (pairs, kinds) = report::assemble(&lab, &answers);
        let signature: Vec<(bool, Option<PathKind>)> =
            pairs.iter().map(|p| (p.connected, p.path)).collect();
        if signature != last_signature {
            last_signature = signature;
            last_change = Instant::now();
        }
        let all_connected = pairs.iter().all(|p| p.connected);
        let any_relayed = pairs.iter().any(|p| p.path == Some(PathKind::Relayed));
        let settled = all_connected && (!any_relayed || last_change.elapsed() >= options.quiet);
        let timed_out = settle_started.elapsed() >= options.settle_timeout;
        let connected = pairs.iter().filter(|p| p.connected).count();
        let direct = pairs
            .iter()
            .filter(|p| p.path == Some(PathKind::Direct))
            .count();
        if settled || timed_out || last_progress.elapsed() >= Duration::from_secs(2) {
            progress(&format!(
                "  {:>5.1}s  {connected}/{} pairs connected, {direct} direct, {} relayed",
                started.elapsed().as_secs_f64(),
                pairs.len(),
                pairs
                    .iter()
                    .filter(|p| p.path == Some(PathKind::Relayed))
                    .count()
            ));
            last_progress = Instant::now();
        }
        if settled || timed_out {
            if !settled {
                progress(&format!(
                    "not settled within {:?}: reporting the lab as it is",
                    options.settle_timeout
                ));
            }
            return Ok(LabReport {
                dir: dir.to_path_buf(),
                lab_id: lab.id.clone(),
                layout: lab.layout.clone(),
                at_ms: now_ms(),
                settle: Some(report::SettleOutcome {
                    settled,
                    after_ms: started.elapsed().as_millis() as u64,
                    bound_ms: options.settle_timeout.as_millis() as u64,
                }),
                nodes: report::node_reports(&lab, &answers),
                pairs,
                kinds,
            });
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// A node that died is an error: the lab is not what it claims to be any more.
fn check_alive(nodes: &[NodeEntry], answers: &[report::NodeAnswers]) -> Result<(), TestnetError> {
    for (node, answer) in nodes.iter().zip(answers) {
        if !answer.alive {
            return Err(TestnetError::NodeDied {
                index: node.index,
                log: node.log_file.clone(),
            });
        }
    }
    Ok(())
}

/// Asks every node (status and peers, through its namespace) at once.
async fn ask_all(lab: &LabRecord, nodes: &[NodeEntry]) -> Vec<report::NodeAnswers> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, node) in nodes.iter().enumerate() {
        let live = locate(node);
        let (ip, binary, port) = (lab.ip.clone(), lab.binary.clone(), node.control_port);
        let ns = node.namespace.clone();
        tasks.spawn(async move {
            let mut answers = report::NodeAnswers {
                pid: live.map(|p| p.pid),
                alive: live.is_some(),
                ..Default::default()
            };
            if let (Some(ns), true) = (ns, answers.alive) {
                let (status, peers) = tokio::join!(
                    netns::query(&ip, &binary, &ns, port, "status"),
                    netns::query(&ip, &binary, &ns, port, "peers"),
                );
                answers.status = status;
                answers.peers = peers;
            }
            (i, answers)
        });
    }
    let mut out = vec![report::NodeAnswers::default(); nodes.len()];
    while let Some(joined) = tasks.join_next().await {
        if let Ok((i, answers)) = joined {
            out[i] = answers;
        }
    }
    out
}

/// The report of the lab running in `dir`, asked of its nodes now.
pub async fn lab_report(dir: &Path) -> Result<LabReport, TestnetError> {
    let record = state::load(dir)?.ok_or_else(|| TestnetError::NotFound(dir.to_path_buf()))?;
    let lab = record
        .lab
        .clone()
        .ok_or_else(|| NatLabError::NotALab(dir.to_path_buf()))?;
    let answers = ask_all(&lab, &record.nodes).await;
    let (pairs, kinds) = report::assemble(&lab, &answers);
    Ok(LabReport {
        dir: dir.to_path_buf(),
        lab_id: lab.id.clone(),
        layout: lab.layout.clone(),
        at_ms: now_ms(),
        settle: None,
        nodes: report::node_reports(&lab, &answers),
        pairs,
        kinds,
    })
}
