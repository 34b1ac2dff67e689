//! Serving the control API with bounds, so a local client cannot hold the node's memory.
//!
//! `axum::serve` sets no timer, so hyper's header timeout never fires and a client that
//! sends half a request keeps its connection (and buffers) forever. Here every connection
//! gets [`HEADER_READ_TIMEOUT`] to deliver its request head (also between keep-alive
//! requests: hyper restarts the timer whenever it waits for a head), every request
//! [`REQUEST_TIMEOUT`] to be read and answered, and at most [`MAX_CONNECTIONS`] connections
//! are served at once. A connection beyond the cap is accepted and closed at once: refusing
//! is cheaper than queueing, and the CLI's retry is a person pressing enter again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};

/// Most control API connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a connection has to send a complete request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a request has to be read (body included) and answered.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head or buffered body chunk.
const MAX_BUF: usize = 64 * 1024;
/// How long a stopping node waits for in-flight requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Counters of what the bounds turned away.
#[derive(Debug, Default)]
pub struct ApiLimits {
    /// Connections closed at accept because [`MAX_CONNECTIONS`] were open.
    pub refused_connections: AtomicU64,
}

/// Serves `router` on `listener` until `stop` fires (or its sender is dropped).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Arc<ApiLimits>,
    mut stop: oneshot::Receiver<()>,
) {
    let router = router.layer(middleware::from_fn(request_deadline));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BUF);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "control API accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            limits.refused_connections.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // Errors here are a client's timeouts and resets: nothing the node must act on.
            let _ = connection.await;
            drop(permit);
        });
    }
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
}

async fn request_deadline(request: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (StatusCode::REQUEST_TIMEOUT, "request took too long").into_response(),
    }
}
