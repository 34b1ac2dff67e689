//! `GET /v1/events`: the node's event stream as server-sent events, one JSON object per
//! `data:` line, optionally filtered.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::Stream;
use serde::{Deserialize, Serialize};

use crate::control::server::ServerStopping;
use crate::runtime::events::{EventSubscription, Lagged, StampedEvent};
use crate::runtime::handle::NodeHandle;

/// `GET /v1/events`.
pub async fn events(
    State(node): State<NodeHandle>,
    stopping: Option<Extension<ServerStopping>>,
    axum::extract::Query(filter): axum::extract::Query<EventFilter>,
) -> Response {
    let bus = node.events();
    let subscription = match bus.subscribe() {
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
        .interval(bus.config().keep_alive)
        .text("keep-alive");
    let capacity = bus.config().capacity;
    let stopping = stopping.map(|Extension(signal)| signal);
    Sse::new(sse_events(subscription, stopping, capacity, filter))
        .keep_alive(keep_alive)
        .into_response()
}

/// `GET /v1/events` query: only events of one `type`; and for events about a key (those
/// with `namespace` and `key` fields, like the store's) only one `namespace` and keys
/// starting with `prefix` (what `kv watch` asks for). Lagged markers always pass: a watcher
/// must know it missed changes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EventFilter {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub prefix: Option<String>,
}

impl EventFilter {
    pub fn matches(&self, stamped: &StampedEvent) -> bool {
        let event = &stamped.event;
        if event.is::<Lagged>() {
            return true;
        }
        if self.kind.as_deref().is_some_and(|k| k != event.kind()) {
            return false;
        }
        let text = |name: &str| event.field(name).and_then(|v| v.as_str());
        let (Some(namespace), Some(key)) = (text("namespace"), text("key")) else {
            return self.namespace.is_none() && self.prefix.is_none();
        };
        self.namespace.as_deref().is_none_or(|n| n == namespace)
            && self.prefix.as_deref().is_none_or(|p| key.starts_with(p))
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
