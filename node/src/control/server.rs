//! Serving the control API with bounds, so a local client cannot hold the node's memory.
//!
//! `axum::serve` sets no timer, so hyper's header timeout never fires and a client that
//! sends half a request keeps its connection (and buffers) forever. Here every connection
//! gets [`HEADER_READ_TIMEOUT`] to deliver its request head (also between keep-alive
//! requests: hyper restarts the timer whenever it waits for a head), every request
//! [`REQUEST_TIMEOUT`] to be read and answered, and at most [`MAX_CONNECTIONS`] connections
//! are served at once. A connection beyond the cap is accepted and closed at once: refusing
//! is cheaper than queueing, and the CLI's retry is a person pressing enter again.
//!
//! Long-lived responses (the event stream) are not cut by these bounds: the request deadline
//! ends when the handler returns the response head, and hyper waits for no request head while
//! it writes a response body. They are bounded instead by hyper's write buffer
//! ([`MAX_BUF`]: the body is polled only when there is room) and by the event stream's own
//! cap. When the server stops, it tells such streams through [`ServerStopping`] so they end
//! and the connections close, instead of holding shutdown for the whole grace period.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Semaphore};

/// Most control API connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a connection has to send a complete request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a request has to be read (body included) and answered.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head, and most response bytes buffered per connection.
pub const MAX_BUF: usize = 64 * 1024;
/// How long a stopping node waits for in-flight requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

pub use crate::runtime::handle::ApiLimits;

/// The server's time and connection bounds; tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerBounds {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
}

impl Default for ServerBounds {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            header_read_timeout: HEADER_READ_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
        }
    }
}

/// Handed to every request as an extension: fires when the server starts to stop, so
/// responses that would otherwise never end (the event stream) can end.
#[derive(Debug, Clone)]
pub struct ServerStopping(watch::Receiver<bool>);

impl ServerStopping {
    /// Resolves once the server is stopping.
    pub async fn stopped(&mut self) {
        // An error means the server is gone altogether: stopped too.
        let _ = self.0.wait_for(|stopping| *stopping).await;
    }
}

/// Serves `router` on `listener` until `stop` fires (or its sender is dropped).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Arc<ApiLimits>,
    stop: oneshot::Receiver<()>,
) {
    serve_with(listener, router, limits, stop, ServerBounds::default()).await
}

/// [`serve`] with other bounds.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    limits: Arc<ApiLimits>,
    mut stop: oneshot::Receiver<()>,
    bounds: ServerBounds,
) {
    let (stopping, stopping_signal) = watch::channel(false);
    let router = router
        .layer(middleware::from_fn_with_state(
            bounds.request_timeout,
            request_deadline,
        ))
        .layer(Extension(ServerStopping(stopping_signal)));
    let slots = Arc::new(Semaphore::new(bounds.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(bounds.header_read_timeout)
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
    let _ = stopping.send(true);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
}

/// Bounds the time to the response head; a streamed body goes on after it.
async fn request_deadline(
    State(timeout): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (StatusCode::REQUEST_TIMEOUT, "request took too long").into_response(),
    }
}
