//! `/v1/cluster` and `/v1/tasks`: this node's cluster, the tasks it knows, submitting,
//! following, cancelling and fetching results.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use fogmesh_consensus::task::{Priority, Requirements, TaskId};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::cluster::service::{ClusterService, ClusterView, SubmitTask, TaskView};
use crate::control::{api_error, call_failed, ApiError};
use crate::runtime::handle::{CallError, NodeHandle};

/// `POST /v1/tasks`: the module (binary in hex, or WAT text) and input in hex, the
/// requirements in plain units.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitTaskRequest {
    /// The module's bytes in hex; empty when `module_wat` carries it.
    #[serde(default)]
    pub module_hex: String,
    /// The module as WAT text, assembled by the node (the dashboard has no assembler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_wat: Option<String>,
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
pub const MAX_TASK_BODY: usize = 2
    * (crate::cluster::exec::MAX_MODULE_BYTES + crate::cluster::exec::MAX_INPUT_BYTES)
    + 64 * 1024;

pub fn routes() -> Router<NodeHandle> {
    Router::new()
        .route("/v1/cluster", get(cluster))
        .route(
            "/v1/tasks",
            get(tasks)
                .post(submit_task)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_TASK_BODY)),
        )
        .route("/v1/tasks/{id}", get(task_status).delete(cancel_task))
        .route("/v1/tasks/{id}/result", get(task_result))
}

/// This node's cluster and the tasks it knows.
pub fn view(node: &NodeHandle) -> ClusterView {
    node.view::<ClusterView>()
        .map(|cell| cell.get())
        .unwrap_or_default()
}

/// Stores and hands on a task; its id once it is on disk.
pub async fn submit(
    node: &NodeHandle,
    task: SubmitTask,
) -> Result<Result<String, String>, CallError> {
    let (reply, answer) = oneshot::channel();
    node.call(move |c: &mut ClusterService, now, out| c.submit(now, task, reply, out))
        .await?;
    let outcome = answer.await.map_err(|_| CallError::Stopped)?;
    Ok(outcome.map(|id| id.to_string()).map_err(|e| e.to_string()))
}

/// Where a task is, as this node knows it.
pub async fn status(node: &NodeHandle, id: TaskId) -> Result<Option<TaskView>, CallError> {
    node.call(move |c: &mut ClusterService, _, _| c.task_view(&id))
        .await
}

pub async fn cancel(node: &NodeHandle, id: TaskId) -> Result<Result<String, String>, CallError> {
    node.call(move |c: &mut ClusterService, _, out| c.cancel(&id, out))
        .await
}

pub async fn result(node: &NodeHandle, id: TaskId) -> Result<Result<Vec<u8>, String>, CallError> {
    let (reply, answer) = oneshot::channel();
    node.call(move |c: &mut ClusterService, _, out| c.result(&id, reply, out))
        .await?;
    answer.await.map_err(|_| CallError::Stopped)
}

async fn cluster(State(node): State<NodeHandle>) -> Json<ClusterView> {
    let mut view = view(&node);
    view.tasks.clear();
    let now = node.clock().now_ms();
    for known in std::sync::Arc::make_mut(&mut view.known_clusters) {
        known.age_ms = now.saturating_sub(known.heard_at_ms);
    }
    Json(view)
}

async fn tasks(State(node): State<NodeHandle>) -> Json<Vec<TaskView>> {
    Json(view(&node).tasks)
}

fn task_id(text: &str) -> Result<TaskId, ApiError> {
    text.parse()
        .map_err(|e: String| api_error(StatusCode::BAD_REQUEST, e))
}

async fn submit_task(
    State(node): State<NodeHandle>,
    Json(request): Json<SubmitTaskRequest>,
) -> Result<Json<SubmittedTask>, ApiError> {
    let bad = |text: String| api_error(StatusCode::BAD_REQUEST, text);
    let module = match request.module_wat {
        Some(text) if request.module_hex.is_empty() => {
            // Assembling is CPU work: off the request threads.
            tokio::task::spawn_blocking(move || wat::parse_str(&text).map_err(|e| e.to_string()))
                .await
                .map_err(|e| bad(format!("module_wat: {e}")))?
                .map_err(|e| bad(format!("module_wat: {e}")))?
        }
        Some(_) => return Err(bad("give module_hex or module_wat, not both".into())),
        None => hex::decode(&request.module_hex).map_err(|e| bad(format!("module_hex: {e}")))?,
    };
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
    let task = SubmitTask {
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
    match submit(&node, task).await.map_err(call_failed)? {
        Ok(id) => Ok(Json(SubmittedTask { id })),
        Err(reason) => Err(bad(reason)),
    }
}

async fn task_status(
    State(node): State<NodeHandle>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    let id = task_id(&id)?;
    status(&node, id)
        .await
        .map_err(call_failed)?
        .map(Json)
        .ok_or_else(|| api_error(StatusCode::NOT_FOUND, "no such task known here"))
}

async fn cancel_task(
    State(node): State<NodeHandle>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = task_id(&id)?;
    match cancel(&node, id).await.map_err(call_failed)? {
        Ok(text) => Ok(Json(serde_json::json!({ "status": text }))),
        Err(reason) => Err(api_error(StatusCode::CONFLICT, reason)),
    }
}

async fn task_result(
    State(node): State<NodeHandle>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Vec<u8>, ApiError> {
    let id = task_id(&id)?;
    result(&node, id)
        .await
        .map_err(call_failed)?
        .map_err(|reason| api_error(StatusCode::CONFLICT, reason))
}
