//! `fogmesh testnet up --in-memory`: the host process that runs every node of an in-memory
//! testnet ([`crate::memnet`]) and its fault API (docs/testnet.md, "In-memory testnets").
//!
//! `up` (in `fogmesh_testnet::memory`) starts `fogmesh testnet memory-host` detached. The
//! host binds its fault API, records itself in the state file at once (so `down` can stop it
//! even while it is still starting nodes), starts the nodes one by one under the testnet dir
//! with the testnet's token, records them, and then serves until SIGTERM. One task owns the
//! network: API calls reach it through a bounded queue (a full queue is a 503, not a wait),
//! and it publishes a [`HostHealth`] that the API hands out without touching the network.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use fogmesh_testnet::memory::{
    HostHealth, KillAnswer, KillRequest, PartitionRequest, RestartAnswer, HOST_LOG,
};
use fogmesh_testnet::state::{self, HostRecord, NodeEntry, TestnetState};
use tokio::sync::{mpsc, oneshot, watch};

use crate::control::access::ApiToken;
use crate::control::{api_error, ApiError};
use crate::memnet::{MemNet, NodeSpec, Topology};

/// Calls waiting for the network task; more are refused (503) rather than queued.
const CALL_QUEUE: usize = 16;
/// Longest a host API request may take: stopping a node flushes its store.
const HOST_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the host gives its nodes to stop on SIGTERM before it exits anyway (`down`
/// SIGKILLs it after its own grace period in any case).
const STOP_BUDGET: Duration = Duration::from_secs(30);
/// Links each node dials at start (to earlier nodes, picked by a fixed seed): connected,
/// with short paths and no hub, as [`Topology::Random`] says.
pub(crate) const LINKS: usize = 2;
pub(crate) const SEED: u64 = 1;

/// What an in-memory testnet's (and the in-memory bench's) nodes run differently from a
/// `MemNet`'s defaults: no Kademlia. Their bootstrap links already connect the graph, and a
/// node reaches one it never met at the addresses in its signed record or announcement;
/// a thousand nodes each walking the DHT at start spent most of the machine on handshakes
/// (docs/testnet.md). Tests keep the DHT, as real nodes do.
pub(crate) fn testnet_settings(_index: usize, settings: &mut crate::config::Settings) {
    settings.dht = false;
}

/// What the API asks of the network task.
enum HostCall {
    Kill {
        index: usize,
        abrupt: bool,
        reply: oneshot::Sender<Result<KillAnswer, String>>,
    },
    Restart {
        index: usize,
        reply: oneshot::Sender<Result<RestartAnswer, String>>,
    },
    Partition {
        nodes: Vec<usize>,
        reply: oneshot::Sender<Result<HostHealth, String>>,
    },
    Heal {
        reply: oneshot::Sender<Result<HostHealth, String>>,
    },
}

#[derive(Clone)]
struct Shared {
    token: ApiToken,
    health: watch::Receiver<HostHealth>,
    calls: mpsc::Sender<HostCall>,
}

/// Runs the host of an in-memory testnet of `nodes` nodes in `dir` until SIGTERM or Ctrl-C.
pub(crate) async fn memory_host(
    dir: &Path,
    nodes: usize,
    telemetry_interval: Duration,
) -> anyhow::Result<()> {
    // Its own log only: hundreds of nodes logging at info would fill the disk.
    crate::logging::init(
        "warn,fogmesh_node::cli=info,fogmesh_testnet=info",
        crate::config::LogFormat::Text,
    );
    let dir = std::path::absolute(dir).with_context(|| format!("{}", dir.display()))?;
    let token = ApiToken::parse(&fogmesh_testnet::access::token(&dir)?)
        .context("the testnet's api-token is damaged")?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .context("cannot bind the host's API on 127.0.0.1")?;
    let control_port = listener.local_addr()?.port();
    let pid = std::process::id();
    let host = HostRecord {
        pid,
        start_time: fogmesh_testnet::procs::start_time(pid),
        control_port,
        log_file: dir.join(HOST_LOG),
        nodes,
        telemetry_interval_ms: telemetry_interval.as_millis() as u64,
    };
    let mut record = TestnetState {
        created_at_ms: now_ms(),
        nodes: Vec::with_capacity(nodes),
        lab: None,
        host: Some(host.clone()),
    };
    state::save(&dir, &record)?;
    tracing::info!(pid, control_port, nodes, "in-memory testnet host up");

    let (health_tx, health_rx) = watch::channel(HostHealth {
        nodes,
        ..HostHealth::default()
    });
    let (calls_tx, mut calls) = mpsc::channel(CALL_QUEUE);
    let (api_stop, api_stopped) = oneshot::channel();
    let api = tokio::spawn(crate::control::server::serve_with(
        listener,
        router(Shared {
            token,
            health: health_rx,
            calls: calls_tx,
        }),
        Arc::default(),
        api_stopped,
        crate::control::server::ServerBounds {
            request_timeout: HOST_REQUEST_TIMEOUT,
            ..Default::default()
        },
    ));
    let mut stop = stop_signal()?;

    let started = Instant::now();
    let mut net = MemNet::builder(&dir)
        .telemetry_interval(telemetry_interval)
        .settings(testnet_settings)
        .start()
        .await?;
    let topology = Topology::Random {
        links: LINKS,
        seed: SEED,
    };
    let mut failed = None;
    for index in 0..nodes {
        if stop.has_changed().unwrap_or(true) {
            break;
        }
        // The node's own token is the testnet's, so the tools and the dashboard use one.
        let node_dir = dir.join(format!("node-{index}"));
        let given = std::fs::create_dir_all(&node_dir)
            .map_err(anyhow::Error::from)
            .and_then(|()| Ok(fogmesh_testnet::access::give(&dir, &node_dir)?));
        let added = match given {
            Ok(()) => net
                .add_node(NodeSpec::new().bootstrap(topology.bootstrap_of(index)))
                .await
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        if let Err(e) = added {
            tracing::error!(index, error = %e, "in-memory node did not start");
            failed = Some(format!("node {index} did not start: {e:#}"));
            break;
        }
        health_tx.send_modify(|h| {
            h.started = index + 1;
            h.running = index + 1;
        });
    }
    if let Some(error) = failed {
        health_tx.send_modify(|h| h.error = Some(error));
    } else if net.len() == nodes {
        record.nodes = (0..nodes).filter_map(|i| entry(&net, &host, i)).collect();
        state::save(&dir, &record)?;
        tracing::info!(
            nodes,
            took_ms = started.elapsed().as_millis() as u64,
            "every in-memory node started"
        );
    }

    // Checking convergence reads every pair of nodes: spaced out on big networks.
    let every = Duration::from_millis(500).max(Duration::from_millis(2) * nodes as u32);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut partitions: Vec<Vec<usize>> = Vec::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(call) = calls.recv() => {
                handle(&mut net, call, &mut partitions, &health_tx).await;
            }
            _ = tick.tick() => {
                refresh(&net, &health_tx, started, &partitions);
            }
        }
    }

    tracing::info!("stopping the in-memory testnet");
    let _ = api_stop.send(());
    net.heal();
    if tokio::time::timeout(STOP_BUDGET, net.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            budget_s = STOP_BUDGET.as_secs(),
            "nodes still stopping; exiting anyway"
        );
    }
    let _ = api.await;
    Ok(())
}

/// The state file's entry of node `index` (a running node's).
fn entry(net: &MemNet, host: &HostRecord, index: usize) -> Option<NodeEntry> {
    let node = net.node(index)?;
    Some(NodeEntry {
        index,
        pid: host.pid,
        start_time: host.start_time,
        data_dir: net.dir(index)?.to_path_buf(),
        log_file: host.log_file.clone(),
        p2p_port: 0,
        control_port: node.control_addr.port(),
        command: None,
        started_at_ms: Some(now_ms()),
        killed: None,
        namespace: None,
        in_memory: true,
    })
}

/// Fires on SIGTERM (what `testnet down` sends) or Ctrl-C.
fn stop_signal() -> anyhow::Result<watch::Receiver<()>> {
    let (tx, rx) = watch::channel(());
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    tokio::spawn(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        let _ = tx.send(());
    });
    Ok(rx)
}

fn refresh(
    net: &MemNet,
    health: &watch::Sender<HostHealth>,
    started: Instant,
    partitions: &[Vec<usize>],
) {
    let running = net.running().len();
    let converged = running > 0 && net.converged();
    let converged_nodes = if converged {
        running
    } else {
        net.converged_nodes()
    };
    health.send_modify(|h| {
        h.running = running;
        h.converged = converged;
        h.converged_nodes = converged_nodes;
        if converged && h.converged_after_ms.is_none() && h.started == h.nodes {
            h.converged_after_ms = Some(started.elapsed().as_millis() as u64);
            tracing::info!(
                nodes = running,
                after_ms = started.elapsed().as_millis() as u64,
                "in-memory testnet converged"
            );
        }
        h.partitions = partitions.to_vec();
    });
}

async fn handle(
    net: &mut MemNet,
    call: HostCall,
    partitions: &mut Vec<Vec<usize>>,
    health: &watch::Sender<HostHealth>,
) {
    let exists = |net: &MemNet, index: usize| {
        (index < net.len())
            .then_some(())
            .ok_or_else(|| format!("there is no node {index} (the testnet has {})", net.len()))
    };
    match call {
        HostCall::Kill {
            index,
            abrupt,
            reply,
        } => {
            let result = async {
                exists(net, index)?;
                let was_running = net.is_running(index);
                if was_running {
                    let stopped = if abrupt {
                        net.kill(index).await
                    } else {
                        net.stop(index).await
                    };
                    stopped.map_err(|e| e.to_string())?;
                }
                tracing::info!(index, abrupt, was_running, "in-memory node stopped");
                Ok(KillAnswer { was_running })
            }
            .await;
            let _ = reply.send(result);
        }
        HostCall::Restart { index, reply } => {
            let result = async {
                exists(net, index)?;
                let was_running = net.is_running(index);
                net.restart(index).await.map_err(|e| e.to_string())?;
                let control_port = net
                    .node(index)
                    .map(|n| n.control_addr.port())
                    .ok_or("the node stopped again at once")?;
                tracing::info!(index, was_running, control_port, "in-memory node restarted");
                Ok(RestartAnswer {
                    was_running,
                    control_port,
                })
            }
            .await;
            let _ = reply.send(result);
        }
        HostCall::Partition { nodes, reply } => {
            let result = (|| {
                if nodes.is_empty() {
                    return Err("name the nodes to cut off".to_owned());
                }
                for index in &nodes {
                    exists(net, *index)?;
                }
                net.partition(&nodes).map_err(|e| e.to_string())?;
                tracing::info!(?nodes, "in-memory testnet partitioned");
                partitions.push(nodes);
                Ok(())
            })();
            health.send_modify(|h| h.partitions = partitions.clone());
            let _ = reply.send(result.map(|()| health.borrow().clone()));
        }
        HostCall::Heal { reply } => {
            net.heal();
            partitions.clear();
            tracing::info!("in-memory testnet healed");
            health.send_modify(|h| h.partitions.clear());
            let _ = reply.send(Ok(health.borrow().clone()));
        }
    }
    health.send_modify(|h| h.running = net.running().len());
}

fn router(shared: Shared) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/nodes/{index}/kill", post(kill))
        .route("/v1/nodes/{index}/restart", post(restart))
        .route("/v1/partition", post(partition))
        .route("/v1/heal", post(heal))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            require_token,
        ))
        .with_state(shared)
}

/// Every route wants the testnet's token: the API stops nodes.
async fn require_token(
    State(shared): State<Shared>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if !shared.token.is_presented_in(request.headers()) {
        return Err(api_error(
            StatusCode::UNAUTHORIZED,
            "the host's API wants the testnet's token (<testnet dir>/api-token)",
        ));
    }
    Ok(next.run(request).await)
}

async fn health(State(shared): State<Shared>) -> Json<HostHealth> {
    Json(shared.health.borrow().clone())
}

/// Hands a call to the network task and waits for its answer.
async fn ask<T>(
    shared: &Shared,
    call: impl FnOnce(oneshot::Sender<Result<T, String>>) -> HostCall,
) -> Result<Json<T>, ApiError> {
    {
        let health = shared.health.borrow();
        if health.started < health.nodes || health.error.is_some() {
            return Err(api_error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the host is still starting nodes ({}/{})",
                    health.started, health.nodes
                ),
            ));
        }
    }
    let (reply, answer) = oneshot::channel();
    shared.calls.try_send(call(reply)).map_err(|_| {
        api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the host is busy with other calls; try again",
        )
    })?;
    match answer.await {
        Ok(Ok(value)) => Ok(Json(value)),
        Ok(Err(why)) => Err(api_error(StatusCode::BAD_REQUEST, why)),
        Err(_) => Err(api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the host is stopping",
        )),
    }
}

async fn kill(
    State(shared): State<Shared>,
    UrlPath(index): UrlPath<usize>,
    Json(request): Json<KillRequest>,
) -> Result<Json<KillAnswer>, ApiError> {
    ask(&shared, |reply| HostCall::Kill {
        index,
        abrupt: request.abrupt,
        reply,
    })
    .await
}

async fn restart(
    State(shared): State<Shared>,
    UrlPath(index): UrlPath<usize>,
) -> Result<Json<RestartAnswer>, ApiError> {
    ask(&shared, |reply| HostCall::Restart { index, reply }).await
}

async fn partition(
    State(shared): State<Shared>,
    Json(request): Json<PartitionRequest>,
) -> Result<Json<HostHealth>, ApiError> {
    ask(&shared, |reply| HostCall::Partition {
        nodes: request.nodes,
        reply,
    })
    .await
}

async fn heal(State(shared): State<Shared>) -> Result<Json<HostHealth>, ApiError> {
    ask(&shared, |reply| HostCall::Heal { reply }).await
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
