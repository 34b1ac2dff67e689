//! What the control API shows of telemetry: `/v1/telemetry` (every node's latest record,
//! stale ones marked), `/v1/telemetry/{peer}` (one node's, fetched from the mesh when not
//! held here), `/v1/telemetry/{peer}/history` (a node's last
//! [`HISTORY_SAMPLES`] readings, for the dashboard's small graphs) and `/v1/receipts` (when
//! each record arrived, for measuring propagation).

use std::collections::{BTreeMap, VecDeque};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::runtime::handle::NodeHandle;
use crate::telemetry::record::{ReceivedTelemetry, TelemetryRecord};

/// Most telemetry receipts kept for `/v1/receipts` (the oldest are dropped when full).
pub const MAX_RECEIPTS: usize = 8192;

/// The capability's published copy of what it holds.
#[derive(Debug, Clone, Default)]
pub struct TelemetrySnapshot {
    pub latest: BTreeMap<String, ReceivedTelemetry>,
    /// This node's own last publication.
    pub own: Option<ReceivedTelemetry>,
    pub receipts: ReceiptLog,
    /// The last [`HISTORY_SAMPLES`] readings per node (this one included), oldest first;
    /// origins come and go with `latest`.
    pub history: BTreeMap<String, VecDeque<HistorySample>>,
}

/// Readings kept per node for `/v1/telemetry/{peer}/history`: at the default interval a
/// few minutes, enough for a trend. 32 small samples per node keep the whole history
/// near 1.5 MB at a thousand nodes.
pub const HISTORY_SAMPLES: usize = 32;

/// One reading of a node's telemetry, as the dashboard draws it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HistorySample {
    pub timestamp_ms: u64,
    pub battery_pct: Option<f32>,
    pub temperature_c: Option<f32>,
    pub cpu_load_pct: Option<f32>,
    pub score: Option<f64>,
    pub peer_count: u32,
}

impl HistorySample {
    pub fn of(t: &ReceivedTelemetry) -> Self {
        let device = t.record.device.as_ref();
        Self {
            timestamp_ms: t.timestamp_ms,
            battery_pct: device.and_then(|d| d.battery_pct),
            temperature_c: device.and_then(|d| d.temperature_c),
            cpu_load_pct: t.record.cpu_load_pct,
            score: device.map(|d| d.score),
            peer_count: t.record.peer_count,
        }
    }
}

/// `GET /v1/telemetry/{peer}/history`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryResponse {
    pub peer_id: String,
    pub samples: Vec<HistorySample>,
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
    /// The origin's clock minus this node's when the record arrived (its signed timestamp
    /// against the receipt time; transit time included): how far apart the two clocks are.
    #[serde(default)]
    pub clock_offset_ms: Option<i64>,
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
#[derive(Debug, Clone, Default)]
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

impl TelemetrySnapshot {
    /// Adds a reading to `origin`'s history, dropping its oldest beyond
    /// [`HISTORY_SAMPLES`].
    pub fn record_sample(&mut self, origin: &str, t: &ReceivedTelemetry) {
        let samples = self.history.entry(origin.to_owned()).or_default();
        if samples.len() == HISTORY_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(HistorySample::of(t));
    }

    /// `/v1/telemetry` at node time `now`: this node's own record first.
    pub fn response(&self, peer_id: String, now: u64) -> TelemetryResponse {
        let mut nodes: Vec<TelemetryView> = self
            .latest
            .iter()
            .map(|(origin, t)| row(origin.clone(), false, t.clone(), now))
            .collect();
        if let Some(own) = &self.own {
            nodes.insert(0, row(peer_id.clone(), true, own.clone(), now));
        }
        TelemetryResponse {
            peer_id,
            now_ms: now,
            nodes,
        }
    }
}

fn row(peer_id: String, local: bool, t: ReceivedTelemetry, now: u64) -> TelemetryView {
    TelemetryView {
        peer_id,
        local,
        seq: t.seq,
        timestamp_ms: t.timestamp_ms,
        received_at_ms: t.received_at_ms,
        age_ms: now.saturating_sub(t.received_at_ms),
        stale: !local && t.is_stale(now),
        clock_offset_ms: (!local).then(|| {
            i64::try_from(i128::from(t.timestamp_ms) - i128::from(t.received_at_ms)).unwrap_or(0)
        }),
        record: t.record,
    }
}

pub fn routes() -> Router<NodeHandle> {
    Router::new()
        .route("/v1/telemetry", get(telemetry))
        .route("/v1/telemetry/{peer}", get(one))
        .route("/v1/telemetry/{peer}/history", get(history))
        .route("/v1/receipts", get(receipts))
}

/// `GET /v1/telemetry/{peer}`: one node's latest record, from this node's table when held
/// fresh, else fetched from whoever holds it (`telemetry::fetch`) in one round trip.
async fn one(
    State(node): State<NodeHandle>,
    axum::extract::Path(peer): axum::extract::Path<String>,
) -> Result<Json<TelemetryView>, crate::control::ApiError> {
    use crate::telemetry::fetch::FetchError;
    use axum::http::StatusCode;
    let origin: libp2p::PeerId = peer.parse().map_err(|_| {
        crate::control::api_error(StatusCode::BAD_REQUEST, FetchError::BadPeer.to_string())
    })?;
    let local = origin == node.peer_id();
    let (reply, answer) = tokio::sync::oneshot::channel();
    node.call::<crate::telemetry::service::TelemetryService, _>(move |t, now_ms, out| {
        t.fetch(now_ms, origin, reply, out)
    })
    .await
    .map_err(crate::control::call_failed)?;
    let gone =
        || crate::control::api_error(StatusCode::SERVICE_UNAVAILABLE, "the node is stopping");
    match answer.await.map_err(|_| gone())? {
        Ok(record) => Ok(Json(row(peer, local, record, node.clock().now_ms()))),
        Err(error @ FetchError::NotHeld { .. }) => Err(crate::control::api_error(
            StatusCode::NOT_FOUND,
            error.to_string(),
        )),
        Err(error @ FetchError::Busy) => Err(crate::control::api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            error.to_string(),
        )),
        Err(error) => Err(crate::control::api_error(
            StatusCode::BAD_GATEWAY,
            error.to_string(),
        )),
    }
}

async fn history(
    State(node): State<NodeHandle>,
    axum::extract::Path(peer): axum::extract::Path<String>,
) -> Result<Json<HistoryResponse>, crate::control::ApiError> {
    let samples = node
        .view::<TelemetrySnapshot>()
        .and_then(|cell| cell.read(|t| t.history.get(&peer).cloned()));
    match samples {
        Some(samples) => Ok(Json(HistoryResponse {
            peer_id: peer,
            samples: samples.into_iter().collect(),
        })),
        None => Err(crate::control::api_error(
            axum::http::StatusCode::NOT_FOUND,
            format!("no telemetry history for {peer}"),
        )),
    }
}

async fn telemetry(State(node): State<NodeHandle>) -> Json<TelemetryResponse> {
    let now = node.clock().now_ms();
    let peer_id = node.peer_id().to_string();
    Json(
        node.view::<TelemetrySnapshot>()
            .map(|cell| cell.read(|t| t.response(peer_id.clone(), now)))
            .unwrap_or(TelemetryResponse {
                peer_id,
                now_ms: now,
                nodes: Vec::new(),
            }),
    )
}

async fn receipts(State(node): State<NodeHandle>) -> Json<ReceiptsResponse> {
    Json(
        node.view::<TelemetrySnapshot>()
            .map(|cell| cell.read(|t| t.receipts.view()))
            .unwrap_or_default(),
    )
}

/// The latest record per origin a node holds (empty if it runs no telemetry).
pub fn latest(node: &NodeHandle) -> BTreeMap<String, ReceivedTelemetry> {
    node.view::<TelemetrySnapshot>()
        .map(|cell| cell.read(|t| t.latest.clone()))
        .unwrap_or_default()
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
