//! `up`: the nodes started with their own dirs, ports, mesh and tickets, and the wait until
//! every node holds fresh telemetry from every other.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::probe::{self, Prober};
use crate::procs::{self};
use crate::state::{self, NodeEntry, TestnetState};
use crate::*;

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
    std::fs::create_dir_all(&options.dir).map_err(io_err(&options.dir))?;
    // Recorded command lines must not depend on the directory `restart` is run from.
    let options = &UpOptions {
        dir: std::path::absolute(&options.dir).map_err(io_err(&options.dir))?,
        ..options.clone()
    };
    let dir = &options.dir;
    if let Some(old) = state::load(dir)? {
        if old.nodes.iter().any(|n| locate(n).is_some())
            || old
                .host
                .as_ref()
                .is_some_and(|h| procs::is_ours_and_alive(h.pid, h.start_time))
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
        Some(create_mesh(options, &config).await?)
    };
    let peer_ids = prepare_nodes(options, &config, mesh.as_ref(), options.nodes).await?;

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
        lab: None,
        host: None,
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
                peer_ids: probes
                    .into_iter()
                    .flatten()
                    .map(|(p, _)| p.peer_id)
                    .collect(),
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

/// What one node answered: its telemetry, and its cluster view (asked only while the
/// telemetry alone does not show it knows everyone).
pub(crate) type NodeProbe = (probe::TelemetryProbe, Option<probe::ClusterProbe>);

pub(crate) async fn probe_all(prober: &Prober, nodes: &[NodeEntry]) -> Vec<Option<NodeProbe>> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, node) in nodes.iter().enumerate() {
        let prober = prober.clone();
        let port = node.control_port;
        tasks.spawn(async move { (i, prober.telemetry(port).await) });
    }
    let mut out: Vec<Option<NodeProbe>> = vec![None; nodes.len()];
    while let Some(joined) = tasks.join_next().await {
        if let Ok((i, Some(probe))) = joined {
            out[i] = Some((probe, None));
        }
    }
    if out.iter().all(Option::is_some) && count_converged(&out) < nodes.len() {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, node) in nodes.iter().enumerate() {
            let prober = prober.clone();
            let port = node.control_port;
            tasks.spawn(async move { (i, prober.cluster(port).await) });
        }
        while let Some(joined) = tasks.join_next().await {
            if let Ok((i, cluster)) = joined {
                if let Some((_, slot)) = out[i].as_mut() {
                    *slot = cluster;
                }
            }
        }
    }
    out
}

/// Nodes that know the testnet as they should (docs/scale.md): fresh telemetry from every
/// other node, or, in a mesh large enough to keep telemetry within clusters, membership of
/// a cluster, fresh telemetry from every cluster mate, and a summary of every cluster, the
/// summaries naming at least every clustered node.
pub(crate) fn count_converged(probes: &[Option<NodeProbe>]) -> usize {
    if probes.iter().any(Option::is_none) {
        return 0;
    }
    let all: Vec<&str> = probes
        .iter()
        .flatten()
        .map(|(p, _)| p.peer_id.as_str())
        .collect();
    let clusters: HashSet<&str> = probes
        .iter()
        .flatten()
        .filter_map(|(_, c)| c.as_ref())
        .filter(|c| c.state == "member")
        .filter_map(|c| c.cluster.as_deref())
        .collect();
    let clustered = probes
        .iter()
        .flatten()
        .filter(|(_, c)| c.as_ref().is_some_and(|c| c.state == "member"))
        .count();
    probes
        .iter()
        .flatten()
        .filter(|(p, cluster)| {
            let have: HashSet<&str> = p
                .nodes
                .iter()
                .filter(|n| !n.local && !n.stale)
                .map(|n| n.peer_id.as_str())
                .collect();
            let everyone = all.iter().all(|id| *id == p.peer_id || have.contains(id));
            let scoped = cluster.as_ref().is_some_and(|c| {
                let known: HashSet<&str> = c
                    .known_clusters
                    .iter()
                    .map(|k| k.cluster.as_str())
                    .collect();
                let named: usize = c.known_clusters.iter().map(|k| k.members).sum();
                c.state == "member"
                    && clusters.iter().all(|id| known.contains(id))
                    && named >= clustered
                    && c.members
                        .iter()
                        .all(|m| m.peer_id == p.peer_id || have.contains(m.peer_id.as_str()))
            });
            everyone || scoped
        })
        .count()
}

/// One p2p port (free for TCP and UDP) and one control port per node. The sockets are held
/// until all ports are chosen, so no two nodes get the same one.
pub(crate) fn allocate_ports(n: usize) -> Result<Vec<(u16, u16)>, TestnetError> {
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
pub(crate) const TICKET_FILE: &str = "ticket";

pub(crate) fn node_dir(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("node-{index}"))
}

pub(crate) fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

/// Gives nodes `0..count` their data dir and identity ahead of time and, in a closed mesh, a
/// ticket for it (node 0 also administers the store's `mesh` namespace); their PeerIds.
pub(crate) async fn prepare_nodes(
    options: &UpOptions,
    config: &Path,
    mesh: Option<&TestnetMesh>,
    count: usize,
) -> Result<Vec<String>, TestnetError> {
    let mut peer_ids = Vec::with_capacity(count);
    for index in 0..count {
        let data_dir = node_dir(&options.dir, index);
        std::fs::create_dir_all(&data_dir).map_err(io_err(&data_dir))?;
        let peer = run_tool(options, config, &["id", "--data-dir", &path_arg(&data_dir)]).await?;
        if let Some(mesh) = mesh {
            run_tool(
                options,
                config,
                &[
                    "ticket",
                    "issue",
                    "--mesh-key",
                    &path_arg(&mesh.root_key),
                    "--peer",
                    &peer,
                    "--roles",
                    // Node 0 also administers the store's `mesh` namespace (docs/admission.md).
                    if index == 0 {
                        "worker,coordinator,submitter,writer,admin"
                    } else {
                        "worker,coordinator,submitter,writer"
                    },
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
    Ok(peer_ids)
}

/// The testnet's own mesh.
#[derive(Debug, Clone)]
pub(crate) struct TestnetMesh {
    pub(crate) root_key: PathBuf,
    pub(crate) description: PathBuf,
}

pub(crate) async fn create_mesh(
    options: &UpOptions,
    config: &Path,
) -> Result<TestnetMesh, TestnetError> {
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
pub(crate) async fn run_tool(
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
pub(crate) fn scrubbed_env() -> impl Iterator<Item = String> {
    std::env::vars_os()
        .filter_map(|(key, _)| key.into_string().ok())
        .filter(|key| key.starts_with("FOGMESH_") || key == "RUST_LOG")
}

pub(crate) fn spawn_node(
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
    crate::access::give(&options.dir, &data_dir)?;
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
            namespace: None,
            in_memory: false,
        },
        child,
    ))
}

/// Starts a node process from its full command line, logging to `log_file`; `append` keeps
/// the log of earlier runs (restarts) instead of starting it afresh.
pub(crate) fn start_node(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{
        ClusterProbe, KnownClusterProbe, MemberProbe, TelemetryProbe, TelemetryRow,
    };

    fn telemetry(me: &str, fresh: &[&str]) -> TelemetryProbe {
        TelemetryProbe {
            peer_id: me.into(),
            nodes: fresh
                .iter()
                .map(|p| TelemetryRow {
                    peer_id: (*p).into(),
                    local: false,
                    stale: false,
                })
                .collect(),
        }
    }

    fn member(cluster: &str, mates: &[&str], known: &[(&str, usize)]) -> ClusterProbe {
        ClusterProbe {
            state: "member".into(),
            cluster: Some(cluster.into()),
            members: mates
                .iter()
                .map(|p| MemberProbe {
                    peer_id: (*p).into(),
                })
                .collect(),
            known_clusters: known
                .iter()
                .map(|(c, n)| KnownClusterProbe {
                    cluster: (*c).into(),
                    members: *n,
                })
                .collect(),
            ..ClusterProbe::default()
        }
    }

    #[test]
    fn a_node_knows_the_mesh_by_everyones_telemetry_or_by_its_cluster_and_every_summary() {
        // Small mesh: everyone's telemetry.
        let small = vec![
            Some((telemetry("a", &["b"]), None)),
            Some((telemetry("b", &["a"]), None)),
        ];
        assert_eq!(count_converged(&small), 2);
        // Large mesh: a and b in c1, c in c2; everyone holds both summaries.
        let both = [("c1", 2), ("c2", 1)];
        let large = vec![
            Some((
                telemetry("a", &["b"]),
                Some(member("c1", &["a", "b"], &both)),
            )),
            Some((
                telemetry("b", &["a"]),
                Some(member("c1", &["a", "b"], &both)),
            )),
            Some((telemetry("c", &[]), Some(member("c2", &["c"], &both)))),
        ];
        assert_eq!(count_converged(&large), 3);
        // c has not heard of c1 yet; b lacks a's telemetry.
        let partial = vec![
            Some((
                telemetry("a", &["b"]),
                Some(member("c1", &["a", "b"], &both)),
            )),
            Some((telemetry("b", &[]), Some(member("c1", &["a", "b"], &both)))),
            Some((
                telemetry("c", &[]),
                Some(member("c2", &["c"], &[("c2", 1)])),
            )),
        ];
        assert_eq!(count_converged(&partial), 1);
        // A node that does not answer: nothing counts yet.
        let silent = vec![Some((telemetry("a", &[]), None)), None];
        assert_eq!(count_converged(&silent), 0);
    }
}
