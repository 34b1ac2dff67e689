//! `/v1/kv`: writes (answered once on disk), reads and listings of the replicated store.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::control::{api_error, call_failed, ApiError};
use crate::kv::service::{KeyView, KvService, KvWrite, KvWriteError, KvWritten};
use crate::runtime::handle::{CallError, NodeHandle};

/// Largest `POST /v1/kv/{namespace}` body.
pub const MAX_KV_BATCH_BODY: usize = 32 * 1024 * 1024;
/// Most keys one `GET /v1/kv/{namespace}` lists.
pub const MAX_KV_LIST: usize = 1000;
/// A write not confirmed within this is answered "not confirmed in time" (it may still be
/// stored).
pub const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

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

pub fn routes() -> Router<NodeHandle> {
    Router::new()
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
}

/// Why a write got no answer from the store.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error(transparent)]
    Refused(#[from] KvWriteError),
    #[error("the write was not confirmed in time; it may or may not be stored")]
    Unconfirmed,
}

/// Writes (signed by this node); answered once they are on disk.
pub async fn write(node: &NodeHandle, writes: Vec<KvWrite>) -> Result<KvWritten, WriteError> {
    let (reply, answer) = oneshot::channel();
    node.call(move |kv: &mut KvService, _, out| kv.write(Some(reply), writes, out))
        .await?;
    match tokio::time::timeout(WRITE_TIMEOUT, answer).await {
        Ok(Ok(result)) => Ok(result?),
        Ok(Err(_)) => Err(CallError::Stopped.into()),
        Err(_) => Err(WriteError::Unconfirmed),
    }
}

/// A key as this node holds it.
pub async fn get_key(
    node: &NodeHandle,
    namespace: String,
    key: String,
) -> Result<Result<Option<KeyView>, String>, CallError> {
    let (reply, answer) = oneshot::channel();
    node.call(move |kv: &mut KvService, _, out| kv.get(reply, namespace, key, out))
        .await?;
    answer.await.map_err(|_| CallError::Stopped)
}

/// Keys of `namespace` starting with `prefix`, after `after`, at most `limit`.
pub async fn list_keys(
    node: &NodeHandle,
    namespace: String,
    query: KvListQuery,
) -> Result<Result<Vec<KeyView>, String>, CallError> {
    let limit = query.limit.unwrap_or(MAX_KV_LIST).min(MAX_KV_LIST);
    let (reply, answer) = oneshot::channel();
    node.call(move |kv: &mut KvService, _, out| {
        kv.list(
            reply,
            namespace,
            query.prefix,
            query.after,
            limit,
            query.deleted,
            out,
        )
    })
    .await?;
    answer.await.map_err(|_| CallError::Stopped)
}

async fn answer_write(
    node: &NodeHandle,
    writes: Vec<KvWrite>,
) -> Result<Json<KvWritten>, ApiError> {
    match write(node, writes).await {
        Ok(written) => Ok(Json(written)),
        Err(WriteError::Refused(error)) => {
            let code = match &error {
                KvWriteError::NotAllowed(_) => StatusCode::FORBIDDEN,
                KvWriteError::Shape(_) | KvWriteError::BatchSize => StatusCode::BAD_REQUEST,
                KvWriteError::Busy | KvWriteError::Sign(_) | KvWriteError::Store(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            };
            Err(api_error(code, error.to_string()))
        }
        Err(WriteError::Call(error)) => Err(call_failed(error)),
        Err(error @ WriteError::Unconfirmed) => Err(api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            error.to_string(),
        )),
    }
}

async fn kv_put(
    State(node): State<NodeHandle>,
    axum::extract::Path((namespace, key)): axum::extract::Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<KvWritten>, ApiError> {
    let write = KvWrite {
        namespace,
        key,
        value: Some(body.to_vec()),
    };
    answer_write(&node, vec![write]).await
}

async fn kv_delete(
    State(node): State<NodeHandle>,
    axum::extract::Path((namespace, key)): axum::extract::Path<(String, String)>,
) -> Result<Json<KvWritten>, ApiError> {
    let write = KvWrite {
        namespace,
        key,
        value: None,
    };
    answer_write(&node, vec![write]).await
}

async fn kv_batch(
    State(node): State<NodeHandle>,
    axum::extract::Path(namespace): axum::extract::Path<String>,
    Json(batch): Json<KvBatch>,
) -> Result<Json<KvWritten>, ApiError> {
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
        writes.push(KvWrite {
            namespace: namespace.clone(),
            key: write.key,
            value,
        });
    }
    answer_write(&node, writes).await
}

async fn kv_get(
    State(node): State<NodeHandle>,
    axum::extract::Path((namespace, key)): axum::extract::Path<(String, String)>,
) -> Result<Json<KeyView>, ApiError> {
    get_key(&node, namespace, key)
        .await
        .map_err(call_failed)?
        .map_err(|reason| api_error(StatusCode::SERVICE_UNAVAILABLE, reason))?
        .map(Json)
        .ok_or_else(|| api_error(StatusCode::NOT_FOUND, "no such key"))
}

async fn kv_list(
    State(node): State<NodeHandle>,
    axum::extract::Path(namespace): axum::extract::Path<String>,
    axum::extract::Query(query): axum::extract::Query<KvListQuery>,
) -> Result<Json<Vec<KeyView>>, ApiError> {
    list_keys(&node, namespace, query)
        .await
        .map_err(call_failed)?
        .map(Json)
        .map_err(|reason| api_error(StatusCode::SERVICE_UNAVAILABLE, reason))
}
