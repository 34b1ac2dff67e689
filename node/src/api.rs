//! The control API: HTTP + JSON on 127.0.0.1 only. The CLI subcommands are its clients.
//!
//! Handlers never touch the swarm: the event loop publishes views into [`SharedState`] and
//! handlers read them under short, non-async locks; `/v1/events` reads the event bus and
//! `/metrics` the frozen registry, neither of which the event loop ever waits on. The port is
//! written to `<data_dir>/control.json` so `fogmesh status` finds a node from its data dir
//! alone.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures::Stream;
use serde::{Deserialize, Serialize};

use crate::api_server::ServerStopping;
use crate::device::{DeviceSummary, DeviceView};
use crate::events::{EventBus, EventSubscription, StampedEvent};
use crate::lifecycle::{Phase, Transition};
use crate::membership::AdmissionView;
use crate::metrics::FrozenMetrics;
use crate::telemetry::{ReceivedTelemetry, RejectionCounters, TelemetryRecord};

pub const CONTROL_FILE: &str = "control.json";

/// Most telemetry receipts kept for `/v1/receipts` (the oldest are dropped when full).
pub const MAX_RECEIPTS: usize = 8192;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BootstrapView {
    pub configured: usize,
    pub connected: usize,
}

/// `/v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    pub peer_id: String,
    pub version: String,
    pub phase: Phase,
    pub phase_since_ms: u64,
    pub phase_reason: String,
    pub transitions: Vec<Transition>,
    pub started_at_ms: u64,
    pub uptime_s: u64,
    pub data_dir: PathBuf,
    pub listen_addrs: Vec<String>,
    pub connected_peers: usize,
    pub known_peers: usize,
    pub telemetry_nodes: usize,
    pub stale_nodes: usize,
    pub telemetry_interval_ms: u64,
    pub telemetry_published: u64,
    /// Publications that found no subscribed peer to send to.
    #[serde(default)]
    pub telemetry_unsent: u64,
    pub telemetry_accepted: u64,
    pub telemetry_rejected: RejectionCounters,
    /// Origins forgotten: silent past the expiry time, or evicted at the origin cap.
    #[serde(default)]
    pub telemetry_expired: u64,
    pub store_errors: u64,
    pub mdns: bool,
    pub bootstrap: BootstrapView,
    /// The device as the last sensing pass saw it.
    pub device: Option<DeviceSummary>,
    /// Mesh membership, handshake and revocation counters.
    pub admission: AdmissionView,
    /// Control API connections closed at once because the connection cap was reached.
    #[serde(default)]
    pub control_api_refused: u64,
}

impl StatusView {
    /// The status of a node that has just started: nothing counted yet.
    pub fn starting(peer_id: String, data_dir: PathBuf, started_at_ms: u64) -> Self {
        StatusView {
            peer_id,
            version: String::new(),
            phase: Phase::Booting,
            phase_since_ms: started_at_ms,
            phase_reason: String::new(),
            transitions: Vec::new(),
            started_at_ms,
            uptime_s: 0,
            data_dir,
            listen_addrs: Vec::new(),
            connected_peers: 0,
            known_peers: 0,
            telemetry_nodes: 0,
            stale_nodes: 0,
            telemetry_interval_ms: 0,
            telemetry_published: 0,
            telemetry_unsent: 0,
            telemetry_accepted: 0,
            telemetry_rejected: RejectionCounters::default(),
            telemetry_expired: 0,
            store_errors: 0,
            mdns: false,
            bootstrap: BootstrapView::default(),
            device: None,
            admission: AdmissionView::default(),
            control_api_refused: 0,
        }
    }
}

/// One row of `/v1/peers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerView {
    pub peer_id: String,
    pub connected: bool,
    /// The address of the live connection, if connected.
    pub connection_addr: Option<String>,
    pub direction: Option<String>,
    pub rtt_ms: Option<f64>,
    pub agent: Option<String>,
    pub known_addrs: Vec<String>,
    pub last_seen_ms: u64,
    /// Device class, power mode and score from the peer's latest telemetry.
    pub device: Option<DeviceSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeersResponse {
    pub peers: Vec<PeerView>,
}

/// One row of `/v1/telemetry`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TelemetryView {
    pub peer_id: String,
    /// True for this node's own last published record.
    pub local: bool,
    pub seq: u64,
    pub timestamp_ms: u64,
    pub received_at_ms: u64,
    pub age_ms: u64,
    pub stale: bool,
    pub record: TelemetryRecord,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TelemetryResponse {
    pub peer_id: String,
    pub now_ms: u64,
    pub nodes: Vec<TelemetryView>,
}

/// One accepted telemetry message, for measuring propagation.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Receipt {
    pub origin_index: u32,
    pub seq: u64,
    pub published_ms: u64,
    pub received_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReceiptsResponse {
    /// Origins by index, so receipts stay small.
    pub origins: Vec<String>,
    pub receipts: Vec<Receipt>,
}

/// Receipts kept compactly: origins interned once.
#[derive(Debug, Default)]
pub struct ReceiptLog {
    origins: Vec<String>,
    index: BTreeMap<String, u32>,
    receipts: VecDeque<Receipt>,
}

/// Most distinct origins the receipt log names before it drops those no kept receipt uses.
/// Twice the receipts, so a compaction frees at least half and its cost is amortised.
pub const MAX_RECEIPT_ORIGINS: usize = 2 * MAX_RECEIPTS;

impl ReceiptLog {
    pub fn push(&mut self, origin: &str, seq: u64, published_ms: u64, received_ms: u64) {
        if self.receipts.len() == MAX_RECEIPTS {
            self.receipts.pop_front();
        }
        if !self.index.contains_key(origin) && self.origins.len() >= MAX_RECEIPT_ORIGINS {
            self.compact();
        }
        let origin_index = match self.index.get(origin) {
            Some(i) => *i,
            None => {
                let i = self.origins.len() as u32;
                self.origins.push(origin.to_owned());
                self.index.insert(origin.to_owned(), i);
                i
            }
        };
        self.receipts.push_back(Receipt {
            origin_index,
            seq,
            published_ms,
            received_ms,
        });
    }

    /// Keeps only the origins that receipts still held refer to, renumbered. Receipts are
    /// bounded, so this bounds the origins too (an open mesh lets anyone mint identities).
    fn compact(&mut self) {
        let mut origins = Vec::new();
        let mut index = BTreeMap::new();
        for receipt in &mut self.receipts {
            let name = &self.origins[receipt.origin_index as usize];
            let new_index = *index.entry(name.clone()).or_insert_with(|| {
                origins.push(name.clone());
                (origins.len() - 1) as u32
            });
            receipt.origin_index = new_index;
        }
        self.origins = origins;
        self.index = index;
    }

    pub fn origin_count(&self) -> usize {
        self.origins.len()
    }

    pub fn view(&self) -> ReceiptsResponse {
        ReceiptsResponse {
            origins: self.origins.clone(),
            receipts: self.receipts.iter().copied().collect(),
        }
    }
}

/// What the event loop shares with the API.
#[derive(Debug)]
pub struct SharedState {
    pub status: RwLock<StatusView>,
    pub peers: RwLock<Vec<PeerView>>,
    pub telemetry: RwLock<BTreeMap<String, ReceivedTelemetry>>,
    pub own_telemetry: RwLock<Option<ReceivedTelemetry>>,
    pub receipts: Mutex<ReceiptLog>,
    pub device: RwLock<Option<DeviceView>>,
    /// Inbox and sent messages of the relay service.
    pub messages: RwLock<crate::relay::MessagesView>,
    /// This node's cluster and the tasks it knows.
    pub cluster: RwLock<crate::services::cluster::ClusterView>,
    /// Requests for the event loop (bounded; a full queue answers 503).
    pub commands: tokio::sync::mpsc::Sender<ControlCommand>,
    /// What the API server's bounds turned away.
    pub api_limits: Arc<crate::api_server::ApiLimits>,
    /// Bumped whenever the driver refreshes the views, so in-process watchers (tests, the
    /// in-memory network) wait for a change instead of polling.
    pub views: tokio::sync::watch::Sender<u64>,
    /// The live event stream behind `GET /v1/events`.
    pub events: EventBus,
    /// The registry behind `GET /metrics`.
    pub metrics: Arc<FrozenMetrics>,
}

/// Most control commands queued for the event loop.
pub const COMMAND_QUEUE: usize = 16;

/// A request the event loop answers.
#[derive(Debug)]
pub enum ControlCommand {
    /// Store and send a message (directed when `to` is set, else a broadcast); answered
    /// with its id once it is on disk.
    SendMessage {
        to: Option<libp2p::PeerId>,
        app: String,
        data: Vec<u8>,
        reply: tokio::sync::oneshot::Sender<Result<String, String>>,
    },
    /// A task request for the cluster service.
    Task(TaskCommand),
    /// A request for the kv store.
    Kv(KvCommand),
    /// Apply, persist and gossip a root-signed revocation.
    Revoke {
        revocation: Vec<u8>,
        reply: tokio::sync::oneshot::Sender<Result<RevocationOutcome, String>>,
    },
}

/// Kv store requests. Writes are answered once on disk; reads at once.
#[derive(Debug)]
pub enum KvCommand {
    Write {
        writes: Vec<crate::services::kv::KvWrite>,
        reply: tokio::sync::oneshot::Sender<
            Result<crate::services::kv::KvWritten, crate::services::kv::KvWriteError>,
        >,
    },
    Get {
        namespace: String,
        key: String,
        reply: tokio::sync::oneshot::Sender<Result<Option<crate::services::kv::KeyView>, String>>,
    },
    List {
        namespace: String,
        prefix: String,
        after: Option<String>,
        limit: usize,
        /// Deleted keys too.
        deleted: bool,
        reply: tokio::sync::oneshot::Sender<Result<Vec<crate::services::kv::KeyView>, String>>,
    },
}

/// Largest `POST /v1/kv/{namespace}` body.
pub const MAX_KV_BATCH_BODY: usize = 32 * 1024 * 1024;
/// Most keys one `GET /v1/kv/{namespace}` lists.
pub const MAX_KV_LIST: usize = 1000;

/// One write of `POST /v1/kv/{namespace}`: `value` (text) or `value_hex`, or `delete`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KvBatchWrite {
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub value_hex: Option<String>,
    #[serde(default)]
    pub delete: bool,
}

/// `POST /v1/kv/{namespace}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KvBatch {
    pub writes: Vec<KvBatchWrite>,
}

/// `GET /v1/kv/{namespace}` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KvListQuery {
    #[serde(default)]
    pub prefix: String,
    pub after: Option<String>,
    pub limit: Option<usize>,
    /// List deleted keys too.
    #[serde(default)]
    pub deleted: bool,
}

/// Task requests, answered by the cluster service at once.
#[derive(Debug)]
pub enum TaskCommand {
    /// Store and hand on a task; answered with its id once it is on disk.
    Submit {
        task: crate::services::cluster::SubmitTask,
        reply: tokio::sync::oneshot::Sender<Result<String, String>>,
    },
    Status {
        id: fogmesh_consensus::task::TaskId,
        reply: tokio::sync::oneshot::Sender<Option<crate::services::cluster::TaskView>>,
    },
    Cancel {
        id: fogmesh_consensus::task::TaskId,
        reply: tokio::sync::oneshot::Sender<Result<String, String>>,
    },
    Result {
        id: fogmesh_consensus::task::TaskId,
        reply: tokio::sync::oneshot::Sender<Result<Vec<u8>, String>>,
    },
}

/// `POST /v1/tasks`: the module and input in hex, the requirements in plain units.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitTaskRequest {
    pub module_hex: String,
    #[serde(default)]
    pub input_hex: Option<String>,
    /// `critical`, `high`, `normal` (default) or `low`.
    #[serde(default)]
    pub priority: Option<String>,
    /// CPU in thousandths of a core.
    pub cpu_millicores: u32,
    pub memory_mb: u32,
    pub duration_ms: u64,
    #[serde(default)]
    pub gpu: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmittedTask {
    pub id: String,
}

/// Largest `POST /v1/tasks` body: a module and an input at their caps, in hex.
pub const MAX_TASK_BODY: usize =
    2 * (crate::exec::MAX_MODULE_BYTES + crate::exec::MAX_INPUT_BYTES) + 64 * 1024;

/// `POST /v1/revocations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationOutcome {
    /// False when the node already had it.
    pub new: bool,
    /// Connections closed because of it.
    pub disconnected: Vec<String>,
}

#[cfg(test)]
mod receipt_tests {
    use super::*;

    #[test]
    fn the_receipt_log_stays_bounded_under_many_origins() {
        let mut log = ReceiptLog::default();
        for i in 0..(3 * MAX_RECEIPTS) {
            log.push(&format!("origin-{i}"), i as u64, 1, 2);
            assert!(log.origin_count() <= MAX_RECEIPT_ORIGINS);
        }
        let view = log.view();
        assert_eq!(view.receipts.len(), MAX_RECEIPTS);
        // Every receipt still names its own origin after compaction.
        for r in &view.receipts {
            assert_eq!(
                view.origins[r.origin_index as usize],
                format!("origin-{}", r.seq)
            );
        }
    }
}

/// Reads a lock even if a panicking writer poisoned it: views are plain data.
pub fn read<T: Clone>(lock: &RwLock<T>) -> T {
    match lock.read() {
        Ok(g) => g.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// Runs `f` on the value under a read lock, without cloning it.
pub fn inspect<T, R>(lock: &RwLock<T>, f: impl FnOnce(&T) -> R) -> R {
    match lock.read() {
        Ok(g) => f(&g),
        Err(poisoned) => f(&poisoned.into_inner()),
    }
}

pub fn write<T>(lock: &RwLock<T>, f: impl FnOnce(&mut T)) {
    match lock.write() {
        Ok(mut g) => f(&mut g),
        Err(poisoned) => f(&mut poisoned.into_inner()),
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl SharedState {
    /// Tells in-process watchers that the views changed.
    pub fn views_changed(&self) {
        self.views.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// A state with placeholder views and no event loop behind it (revocations answer 503),
    /// for serving the router in tests.
    #[doc(hidden)]
    pub fn for_tests(events: EventBus, metrics: Arc<FrozenMetrics>) -> Arc<Self> {
        let (commands, _) = tokio::sync::mpsc::channel(1);
        let status = StatusView::starting(String::new(), PathBuf::new(), now_ms());
        Arc::new(Self {
            status: RwLock::new(status),
            peers: RwLock::default(),
            telemetry: RwLock::default(),
            own_telemetry: RwLock::default(),
            receipts: Mutex::default(),
            device: RwLock::default(),
            messages: RwLock::default(),
            cluster: RwLock::default(),
            commands,
            api_limits: Arc::default(),
            views: tokio::sync::watch::channel(0).0,
            events,
            metrics,
        })
    }

    pub fn telemetry_view(&self, now: u64) -> TelemetryResponse {
        let status = read(&self.status);
        let mut nodes: Vec<TelemetryView> = read(&self.telemetry)
            .into_iter()
            .map(|(peer_id, t)| view_of(peer_id, false, t, now))
            .collect();
        if let Some(own) = read(&self.own_telemetry) {
            nodes.insert(0, view_of(status.peer_id.clone(), true, own, now));
        }
        TelemetryResponse {
            peer_id: status.peer_id,
            now_ms: now,
            nodes,
        }
    }
}

fn view_of(peer_id: String, local: bool, t: ReceivedTelemetry, now: u64) -> TelemetryView {
    TelemetryView {
        peer_id,
        local,
        seq: t.seq,
        timestamp_ms: t.timestamp_ms,
        received_at_ms: t.received_at_ms,
        age_ms: now.saturating_sub(t.received_at_ms),
        stale: !local && t.is_stale(now),
        record: t.record,
    }
}

pub fn router(state: Arc<SharedState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
        .route("/v1/telemetry", get(telemetry))
        .route("/v1/receipts", get(receipts))
        .route("/v1/device", get(device))
        .route("/v1/revocations", post(submit_revocation))
        .route("/v1/messages", get(messages).post(send_message))
        .route("/v1/messages/{id}", get(message))
        .route("/v1/cluster", get(cluster))
        .route(
            "/v1/tasks",
            get(tasks)
                .post(submit_task)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_TASK_BODY)),
        )
        .route("/v1/tasks/{id}", get(task_status).delete(cancel_task))
        .route("/v1/tasks/{id}/result", get(task_result))
        .route(
            "/v1/kv/{namespace}",
            get(kv_list)
                .post(kv_batch)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_KV_BATCH_BODY)),
        )
        .route(
            "/v1/kv/{namespace}/{*key}",
            get(kv_get).put(kv_put).delete(kv_delete),
        )
        .route("/v1/events", get(events))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn health(State(state): State<Arc<SharedState>>) -> impl IntoResponse {
    let phase = read(&state.status).phase;
    let healthy = matches!(phase, Phase::Idle | Phase::Active | Phase::Booting);
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(
            serde_json::json!({ "status": if healthy { "ok" } else { "degraded" }, "phase": phase }),
        ),
    )
}

async fn status(State(state): State<Arc<SharedState>>) -> Json<StatusView> {
    let mut view = read(&state.status);
    view.uptime_s = now_ms().saturating_sub(view.started_at_ms) / 1000;
    Json(view)
}

async fn peers(State(state): State<Arc<SharedState>>) -> Json<PeersResponse> {
    Json(PeersResponse {
        peers: read(&state.peers),
    })
}

async fn telemetry(State(state): State<Arc<SharedState>>) -> Json<TelemetryResponse> {
    Json(state.telemetry_view(now_ms()))
}

async fn device(State(state): State<Arc<SharedState>>) -> impl IntoResponse {
    match read(&state.device) {
        Some(view) => Ok(Json(view)),
        None => Err((StatusCode::SERVICE_UNAVAILABLE, "device not sensed yet")),
    }
}

/// `POST /v1/messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendMessageRequest {
    /// The recipient's PeerId; absent for a broadcast.
    #[serde(default)]
    pub to: Option<String>,
    pub text: String,
    /// The application the message is for; `text` when absent.
    #[serde(default)]
    pub app: Option<String>,
}

/// The answer to `POST /v1/messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentMessage {
    pub id: String,
}

async fn cluster(
    State(state): State<Arc<SharedState>>,
) -> Json<crate::services::cluster::ClusterView> {
    let mut view = read(&state.cluster);
    view.tasks.clear();
    Json(view)
}

async fn tasks(
    State(state): State<Arc<SharedState>>,
) -> Json<Vec<crate::services::cluster::TaskView>> {
    Json(read(&state.cluster).tasks)
}

type ApiError = (StatusCode, Json<serde_json::Value>);

fn api_error(code: StatusCode, text: impl Into<String>) -> ApiError {
    (code, Json(serde_json::json!({ "error": text.into() })))
}

/// Hands a task command to the event loop and waits (5 s at most) for its answer.
async fn ask_tasks<T>(
    state: &SharedState,
    make: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> TaskCommand,
) -> Result<T, ApiError> {
    ask(state, |reply| ControlCommand::Task(make(reply))).await
}

/// Hands a command to the event loop and waits (5 s at most) for its answer.
async fn ask<T>(
    state: &SharedState,
    make: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> ControlCommand,
) -> Result<T, ApiError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    if state.commands.try_send(make(reply)).is_err() {
        return Err(api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "node busy; try again",
        ));
    }
    match tokio::time::timeout(std::time::Duration::from_secs(5), answer).await {
        Ok(Ok(value)) => Ok(value),
        _ => Err(api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the node did not answer in time",
        )),
    }
}

fn task_id(text: &str) -> Result<fogmesh_consensus::task::TaskId, ApiError> {
    text.parse()
        .map_err(|e: String| api_error(StatusCode::BAD_REQUEST, e))
}

async fn submit_task(
    State(state): State<Arc<SharedState>>,
    Json(request): Json<SubmitTaskRequest>,
) -> Result<Json<SubmittedTask>, ApiError> {
    use fogmesh_consensus::task::{Priority, Requirements};
    let bad = |text: String| api_error(StatusCode::BAD_REQUEST, text);
    let module = hex::decode(&request.module_hex).map_err(|e| bad(format!("module_hex: {e}")))?;
    let input = request
        .input_hex
        .as_deref()
        .map(hex::decode)
        .transpose()
        .map_err(|e| bad(format!("input_hex: {e}")))?;
    let priority = match request.priority.as_deref() {
        None => Priority::Normal,
        Some(text) => Priority::parse(text).ok_or_else(|| {
            bad(format!(
                "priority {text:?}: expected critical, high, normal or low"
            ))
        })?,
    };
    let task = crate::services::cluster::SubmitTask {
        module,
        input,
        priority,
        requirements: Requirements {
            cpu_millicores: request.cpu_millicores,
            memory_mb: request.memory_mb,
            duration_ms: request.duration_ms,
            gpu: request.gpu,
        },
    };
    match ask_tasks(&state, |reply| TaskCommand::Submit { task, reply }).await? {
        Ok(id) => Ok(Json(SubmittedTask { id })),
        Err(reason) => Err(bad(reason)),
    }
}

async fn kv_write(
    state: &SharedState,
    writes: Vec<crate::services::kv::KvWrite>,
) -> Result<Json<crate::services::kv::KvWritten>, ApiError> {
    // A write waits for its flush, which may queue behind others: longer than a read.
    let (reply, answer) = tokio::sync::oneshot::channel();
    if state
        .commands
        .try_send(ControlCommand::Kv(KvCommand::Write { writes, reply }))
        .is_err()
    {
        return Err(api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "node busy; try again",
        ));
    }
    match tokio::time::timeout(std::time::Duration::from_secs(9), answer).await {
        Ok(Ok(Ok(written))) => Ok(Json(written)),
        Ok(Ok(Err(error))) => {
            use crate::services::kv::KvWriteError;
            let code = match &error {
                KvWriteError::NotAllowed(_) => StatusCode::FORBIDDEN,
                KvWriteError::Shape(_) | KvWriteError::BatchSize => StatusCode::BAD_REQUEST,
                KvWriteError::Busy | KvWriteError::Sign(_) | KvWriteError::Store(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            };
            Err(api_error(code, error.to_string()))
        }
        _ => Err(api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the write was not confirmed in time; it may or may not be stored",
        )),
    }
}

async fn kv_put(
    State(state): State<Arc<SharedState>>,
    axum::extract::Path((namespace, key)): axum::extract::Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<crate::services::kv::KvWritten>, ApiError> {
    let write = crate::services::kv::KvWrite {
        namespace,
        key,
        value: Some(body.to_vec()),
    };
    kv_write(&state, vec![write]).await
}

async fn kv_delete(
    State(state): State<Arc<SharedState>>,
    axum::extract::Path((namespace, key)): axum::extract::Path<(String, String)>,
) -> Result<Json<crate::services::kv::KvWritten>, ApiError> {
    let write = crate::services::kv::KvWrite {
        namespace,
        key,
        value: None,
    };
    kv_write(&state, vec![write]).await
}

async fn kv_batch(
    State(state): State<Arc<SharedState>>,
    axum::extract::Path(namespace): axum::extract::Path<String>,
    Json(batch): Json<KvBatch>,
) -> Result<Json<crate::services::kv::KvWritten>, ApiError> {
    let mut writes = Vec::with_capacity(batch.writes.len());
    for write in batch.writes {
        let value = match (write.delete, write.value, write.value_hex) {
            (true, None, None) => None,
            (false, Some(text), None) => Some(text.into_bytes()),
            (false, None, Some(hex_text)) => Some(hex::decode(&hex_text).map_err(|e| {
                api_error(
                    StatusCode::BAD_REQUEST,
                    format!("{}: value_hex: {e}", write.key),
                )
            })?),
            _ => {
                return Err(api_error(
                    StatusCode::BAD_REQUEST,
                    format!("{}: give one of value, value_hex or delete", write.key),
                ))
            }
        };
        writes.push(crate::services::kv::KvWrite {
            namespace: namespace.clone(),
            key: write.key,
            value,
        });
    }
    kv_write(&state, writes).await
}

async fn kv_get(
    State(state): State<Arc<SharedState>>,
    axum::extract::Path((namespace, key)): axum::extract::Path<(String, String)>,
) -> Result<Json<crate::services::kv::KeyView>, ApiError> {
    ask(&state, |reply| {
        ControlCommand::Kv(KvCommand::Get {
            namespace,
            key,
            reply,
        })
    })
    .await?
    .map_err(|reason| api_error(StatusCode::SERVICE_UNAVAILABLE, reason))?
    .map(Json)
    .ok_or_else(|| api_error(StatusCode::NOT_FOUND, "no such key"))
}

async fn kv_list(
    State(state): State<Arc<SharedState>>,
    axum::extract::Path(namespace): axum::extract::Path<String>,
    axum::extract::Query(query): axum::extract::Query<KvListQuery>,
) -> Result<Json<Vec<crate::services::kv::KeyView>>, ApiError> {
    let limit = query.limit.unwrap_or(MAX_KV_LIST).min(MAX_KV_LIST);
    ask(&state, |reply| {
        ControlCommand::Kv(KvCommand::List {
            namespace,
            prefix: query.prefix,
            after: query.after,
            limit,
            deleted: query.deleted,
            reply,
        })
    })
    .await?
    .map(Json)
    .map_err(|reason| api_error(StatusCode::SERVICE_UNAVAILABLE, reason))
}

async fn task_status(
    State(state): State<Arc<SharedState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<crate::services::cluster::TaskView>, ApiError> {
    let id = task_id(&id)?;
    ask_tasks(&state, |reply| TaskCommand::Status { id, reply })
        .await?
        .map(Json)
        .ok_or_else(|| api_error(StatusCode::NOT_FOUND, "no such task known here"))
}

async fn cancel_task(
    State(state): State<Arc<SharedState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = task_id(&id)?;
    match ask_tasks(&state, |reply| TaskCommand::Cancel { id, reply }).await? {
        Ok(text) => Ok(Json(serde_json::json!({ "status": text }))),
        Err(reason) => Err(api_error(StatusCode::CONFLICT, reason)),
    }
}

async fn task_result(
    State(state): State<Arc<SharedState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Vec<u8>, ApiError> {
    let id = task_id(&id)?;
    ask_tasks(&state, |reply| TaskCommand::Result { id, reply })
        .await?
        .map_err(|reason| api_error(StatusCode::CONFLICT, reason))
}

async fn messages(State(state): State<Arc<SharedState>>) -> Json<crate::relay::MessagesView> {
    Json(read(&state.messages))
}

async fn message(
    State(state): State<Arc<SharedState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> impl IntoResponse {
    let view = read(&state.messages);
    match view.sent.into_iter().chain(view.inbox).find(|m| m.id == id) {
        Some(found) => Ok(Json(found)),
        None => Err((StatusCode::NOT_FOUND, "no such message")),
    }
}

async fn send_message(
    State(state): State<Arc<SharedState>>,
    Json(request): Json<SendMessageRequest>,
) -> impl IntoResponse {
    let error = |code: StatusCode, text: String| (code, Json(serde_json::json!({ "error": text })));
    let to = match request.to.as_deref().map(str::parse::<libp2p::PeerId>) {
        None => None,
        Some(Ok(peer)) => Some(peer),
        Some(Err(e)) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("`to` is not a PeerId: {e}"),
            ))
        }
    };
    if request.text.len() > crate::relay::packet::MAX_APP_DATA {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "message of {} bytes; at most {} fit in one",
                request.text.len(),
                crate::relay::packet::MAX_APP_DATA
            ),
        ));
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    let command = ControlCommand::SendMessage {
        to,
        app: request.app.unwrap_or_else(|| "text".into()),
        data: request.text.into_bytes(),
        reply,
    };
    if state.commands.try_send(command).is_err() {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "node busy; try again".into(),
        ));
    }
    match tokio::time::timeout(std::time::Duration::from_secs(5), answer).await {
        Ok(Ok(Ok(id))) => Ok(Json(SentMessage { id })),
        Ok(Ok(Err(reason))) => Err(error(StatusCode::BAD_REQUEST, reason)),
        _ => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "node did not answer".into(),
        )),
    }
}

async fn submit_revocation(
    State(state): State<Arc<SharedState>>,
    body: Bytes,
) -> impl IntoResponse {
    let error = |code: StatusCode, text: String| (code, Json(serde_json::json!({ "error": text })));
    if body.len() > fogmesh_transports::ticket::MAX_TICKET_LEN {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "revocation too large".into(),
        ));
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    let command = ControlCommand::Revoke {
        revocation: body.to_vec(),
        reply,
    };
    if state.commands.try_send(command).is_err() {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "node busy; try again".into(),
        ));
    }
    match tokio::time::timeout(std::time::Duration::from_secs(5), answer).await {
        Ok(Ok(Ok(outcome))) => Ok(Json(outcome)),
        Ok(Ok(Err(reason))) => Err(error(StatusCode::BAD_REQUEST, reason)),
        _ => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "node did not answer".into(),
        )),
    }
}

async fn receipts(State(state): State<Arc<SharedState>>) -> Json<ReceiptsResponse> {
    let view = match state.receipts.lock() {
        Ok(g) => g.view(),
        Err(poisoned) => poisoned.into_inner().view(),
    };
    Json(view)
}

async fn metrics(State(state): State<Arc<SharedState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        state.metrics.encode(),
    )
}

/// `GET /v1/events`: server-sent events, one JSON object per `data:` line.
async fn events(
    State(state): State<Arc<SharedState>>,
    stopping: Option<Extension<ServerStopping>>,
    axum::extract::Query(filter): axum::extract::Query<EventFilter>,
) -> Response {
    let subscription = match state.events.subscribe() {
        Ok(subscription) => subscription,
        Err(full) => {
            tracing::debug!(max_streams = full.max_streams, "event stream refused");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({ "error": full.to_string() })),
            )
                .into_response();
        }
    };
    let keep_alive = KeepAlive::new()
        .interval(state.events.config().keep_alive)
        .text("keep-alive");
    let capacity = state.events.config().capacity;
    let stopping = stopping.map(|Extension(signal)| signal);
    Sse::new(sse_events(subscription, stopping, capacity, filter))
        .keep_alive(keep_alive)
        .into_response()
}

/// `GET /v1/events` query: only events of one `type`, and for kv events only one
/// `namespace` and keys starting with `prefix` (what `kv watch` asks for). Lagged markers
/// always pass: a watcher must know it missed changes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EventFilter {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub prefix: Option<String>,
}

impl EventFilter {
    pub fn matches(&self, stamped: &StampedEvent) -> bool {
        use crate::events::NodeEvent;
        let event = &stamped.event;
        if matches!(event, NodeEvent::Lagged { .. }) {
            return true;
        }
        if self.kind.as_deref().is_some_and(|k| k != event.kind()) {
            return false;
        }
        let (namespace, key) = match event {
            NodeEvent::KvChanged { namespace, key, .. }
            | NodeEvent::KvConflict { namespace, key, .. } => (namespace, key),
            _ => return self.namespace.is_none() && self.prefix.is_none(),
        };
        self.namespace.as_ref().is_none_or(|n| n == namespace)
            && self
                .prefix
                .as_ref()
                .is_none_or(|p| key.starts_with(p.as_str()))
    }
}

/// Where an event stream is in its life.
#[derive(Debug)]
enum StreamPhase {
    Live,
    /// The server is stopping: deliver at most this many more pending events, then end.
    Draining(usize),
}

/// The subscription as SSE events. hyper polls it only when it has room to write, so a client
/// that stops reading leaves events in the bus's fixed ring, where it loses the oldest.
fn sse_events(
    subscription: EventSubscription,
    stopping: Option<ServerStopping>,
    capacity: usize,
    filter: EventFilter,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let start = (subscription, stopping, StreamPhase::Live);
    futures::stream::unfold(start, move |(mut subscription, mut stopping, phase)| {
        let filter = filter.clone();
        async move {
            let mut phase = phase;
            loop {
                let (next, after) = match phase {
                    StreamPhase::Live => {
                        tokio::select! {
                            event = subscription.next() => (event, StreamPhase::Live),
                            () = server_stopped(&mut stopping) => {
                                (subscription.try_next(), StreamPhase::Draining(capacity))
                            }
                        }
                    }
                    // A bus that keeps publishing cannot hold the shutdown open: the budget
                    // ends it.
                    StreamPhase::Draining(0) => (None, StreamPhase::Draining(0)),
                    StreamPhase::Draining(left) => {
                        (subscription.try_next(), StreamPhase::Draining(left - 1))
                    }
                };
                phase = after;
                let next = next?;
                if filter.matches(&next) {
                    let event = sse_event(next.as_ref());
                    return Some((Ok(event), (subscription, stopping, phase)));
                }
            }
        }
    })
}

async fn server_stopped(stopping: &mut Option<ServerStopping>) {
    match stopping {
        Some(signal) => signal.stopped().await,
        // Served without the bounded server (some tests): nothing to wait for.
        None => std::future::pending().await,
    }
}

fn sse_event(event: &StampedEvent) -> Event {
    match serde_json::to_string(event) {
        Ok(json) => Event::default().data(json),
        Err(error) => {
            // Our own types always encode; should one not, the stream says so and goes on.
            tracing::warn!(%error, seq = event.seq, "event not encodable");
            Event::default().comment(format!("event {} not encodable", event.seq))
        }
    }
}

/// Contents of `<data_dir>/control.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlFile {
    pub addr: SocketAddr,
    pub pid: u32,
    pub peer_id: String,
}

pub fn control_file_path(data_dir: &Path) -> PathBuf {
    data_dir.join(CONTROL_FILE)
}
