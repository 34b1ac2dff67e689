//! `GET /v1/device`: what the node detected, its power mode and why.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use crate::device::DeviceView;
use crate::runtime::handle::NodeHandle;

pub fn routes() -> Router<NodeHandle> {
    Router::new().route("/v1/device", get(device))
}

async fn device(State(node): State<NodeHandle>) -> impl IntoResponse {
    match node
        .view::<Option<DeviceView>>()
        .and_then(|cell| cell.get())
    {
        Some(view) => Ok(Json(view)),
        None => Err((StatusCode::SERVICE_UNAVAILABLE, "device not sensed yet")),
    }
}
