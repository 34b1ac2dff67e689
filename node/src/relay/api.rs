//! `/v1/messages`: the inbox and sent messages, and sending one.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::control::{api_error, call_failed, ApiError};
use crate::relay::service::{RelayService, SendRequest};
use crate::relay::MessagesView;
use crate::runtime::handle::{CallError, NodeHandle};

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

pub fn routes() -> Router<NodeHandle> {
    Router::new()
        .route("/v1/messages", get(messages).post(send_message))
        .route("/v1/messages/{id}", get(message))
}

/// Why a message was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("{0}")]
    Refused(String),
}

/// Stores and sends a message (directed when `to` is set, else a broadcast); its id (hex)
/// once it is on disk.
pub async fn send(node: &NodeHandle, request: SendRequest) -> Result<String, SendError> {
    let (reply, answer) = oneshot::channel();
    node.call(move |relay: &mut RelayService, now, out| relay.submit(now, reply, request, out))
        .await?;
    answer
        .await
        .map_err(|_| CallError::Stopped)?
        .map_err(SendError::Refused)
}

/// The inbox and sent messages.
pub fn messages_of(node: &NodeHandle) -> MessagesView {
    node.view::<MessagesView>()
        .map(|cell| cell.get())
        .unwrap_or_default()
}

async fn messages(State(node): State<NodeHandle>) -> Json<MessagesView> {
    Json(messages_of(&node))
}

async fn message(
    State(node): State<NodeHandle>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> impl IntoResponse {
    let view = messages_of(&node);
    match view.sent.into_iter().chain(view.inbox).find(|m| m.id == id) {
        Some(found) => Ok(Json(found)),
        None => Err((StatusCode::NOT_FOUND, "no such message")),
    }
}

async fn send_message(
    State(node): State<NodeHandle>,
    Json(request): Json<SendMessageRequest>,
) -> Result<Json<SentMessage>, ApiError> {
    let to = match request.to.as_deref().map(str::parse::<libp2p::PeerId>) {
        None => None,
        Some(Ok(peer)) => Some(peer),
        Some(Err(e)) => {
            return Err(api_error(
                StatusCode::BAD_REQUEST,
                format!("`to` is not a PeerId: {e}"),
            ))
        }
    };
    if request.text.len() > crate::relay::packet::MAX_APP_DATA {
        return Err(api_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "message of {} bytes; at most {} fit in one",
                request.text.len(),
                crate::relay::packet::MAX_APP_DATA
            ),
        ));
    }
    let request = SendRequest {
        to,
        app: request.app.unwrap_or_else(|| "text".into()),
        data: request.text.into_bytes(),
    };
    match send(&node, request).await {
        Ok(id) => Ok(Json(SentMessage { id })),
        Err(SendError::Refused(reason)) => Err(api_error(StatusCode::BAD_REQUEST, reason)),
        Err(SendError::Call(error)) => Err(call_failed(error)),
    }
}
