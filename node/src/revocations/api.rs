//! `POST /v1/revocations`: apply, store and gossip a root-signed revocation.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use tokio::sync::oneshot;

use crate::control::{api_error, call_failed, ApiError};
use crate::revocations::service::RevocationService;
use crate::revocations::RevocationOutcome;
use crate::runtime::handle::{CallError, NodeHandle};

pub fn routes() -> Router<NodeHandle> {
    Router::new().route("/v1/revocations", post(submit))
}

/// Why a revocation was not applied.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("{0}")]
    Refused(String),
}

/// Hands a revocation to the node; answered once it is on disk (if it was new).
pub async fn revoke(node: &NodeHandle, bytes: Vec<u8>) -> Result<RevocationOutcome, RevokeError> {
    let (reply, answer) = oneshot::channel();
    node.call(move |r: &mut RevocationService, now, out| r.submit(now, reply, bytes, out))
        .await?;
    answer
        .await
        .map_err(|_| CallError::Stopped)?
        .map_err(RevokeError::Refused)
}

async fn submit(
    State(node): State<NodeHandle>,
    body: Bytes,
) -> Result<Json<RevocationOutcome>, ApiError> {
    if body.len() > fogmesh_transports::ticket::MAX_TICKET_LEN {
        return Err(api_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "revocation too large",
        ));
    }
    match revoke(&node, body.to_vec()).await {
        Ok(outcome) => Ok(Json(outcome)),
        Err(RevokeError::Refused(reason)) => Err(api_error(StatusCode::BAD_REQUEST, reason)),
        Err(RevokeError::Call(error)) => Err(call_failed(error)),
    }
}
