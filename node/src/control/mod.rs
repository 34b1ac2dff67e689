//! The control API: HTTP + JSON on 127.0.0.1 only. The CLI subcommands are its clients.
//!
//! Handlers never touch the swarm: they read views ([`crate::runtime::handle::ViewCell`])
//! and call capabilities through the node's [`NodeHandle`]; `/v1/events` reads the event
//! bus and `/metrics` the frozen registry, neither of which the driver ever waits on. This
//! module serves what the runtime itself knows (health, status, peers, events, metrics);
//! each capability adds its own routes from its folder (`<capability>/api.rs`), merged here
//! through the registration list. The port is written to `<data_dir>/control.json` so
//! `fogmesh status` finds a node from its data dir alone; writes need the token in
//! `<data_dir>/api-token`, and no other web page may drive the API ([`access`]).

pub mod access;
pub mod events;
pub mod server;
pub mod signin;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::runtime::handle::{CallError, NodeHandle};
use crate::runtime::lifecycle::Phase;
use crate::runtime::status::{PeersResponse, StatusView};

pub const CONTROL_FILE: &str = "control.json";

/// The routes every node serves, with the capabilities' `routes` merged in, every one
/// behind the host, origin and token checks of [`access`].
pub fn router(
    handle: NodeHandle,
    capability_routes: Vec<Router<NodeHandle>>,
    access: access::Access,
) -> Router {
    let mut router = Router::new()
        .route("/health", get(health))
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
        .route("/v1/events", get(events::events))
        .route("/metrics", get(metrics));
    for routes in capability_routes {
        router = router.merge(routes);
    }
    router = router.merge(signin::routes(signin::SignIn {
        token: access.token.clone(),
        codes: std::sync::Arc::default(),
    }));
    router
        .with_state(handle)
        .layer(axum::middleware::from_fn_with_state(access, access::guard))
}

/// An error answer: `{"error": text}` with a status code.
pub type ApiError = (StatusCode, Json<serde_json::Value>);

pub fn api_error(code: StatusCode, text: impl Into<String>) -> ApiError {
    (code, Json(serde_json::json!({ "error": text.into() })))
}

/// A call that got no answer: the node is stopping or overloaded.
pub fn call_failed(error: CallError) -> ApiError {
    api_error(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
}

async fn health(State(node): State<NodeHandle>) -> impl IntoResponse {
    let phase = node.status().phase;
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

async fn status(State(node): State<NodeHandle>) -> Json<StatusView> {
    let mut view = node.status();
    view.uptime_s = node.clock().now_ms().saturating_sub(view.started_at_ms) / 1000;
    view.control_api_refused = node
        .api_limits()
        .refused_connections
        .load(std::sync::atomic::Ordering::Relaxed);
    Json(view)
}

async fn peers(State(node): State<NodeHandle>) -> Json<PeersResponse> {
    Json(PeersResponse {
        peers: node.peers(),
    })
}

async fn metrics(State(node): State<NodeHandle>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::runtime::metrics::CONTENT_TYPE)],
        node.metrics().encode(),
    )
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
