//! Asking testnet nodes how they are, through their control API.
//!
//! Only the fields the testnet needs are declared; the node's API carries more.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusProbe {
    pub peer_id: String,
    pub phase: String,
    pub connected_peers: usize,
    pub telemetry_nodes: usize,
    pub stale_nodes: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TelemetryRow {
    pub peer_id: String,
    pub local: bool,
    pub stale: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TelemetryProbe {
    pub peer_id: String,
    pub nodes: Vec<TelemetryRow>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Receipt {
    pub origin_index: u32,
    pub seq: u64,
    pub published_ms: u64,
    pub received_ms: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ReceiptsProbe {
    pub origins: Vec<String>,
    pub receipts: Vec<Receipt>,
}

/// The part of `GET /v1/cluster` the testnet tools read.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ClusterProbe {
    pub state: String,
    pub cluster: Option<String>,
    pub term: u64,
    pub is_coordinator: bool,
    pub members: Vec<MemberProbe>,
    /// Every cluster the node holds a summary of.
    #[serde(default)]
    pub known_clusters: Vec<KnownClusterProbe>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct KnownClusterProbe {
    pub cluster: String,
    pub members: usize,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct MemberProbe {
    pub peer_id: String,
}

#[derive(Debug, Clone)]
pub struct Prober {
    http: reqwest::Client,
}

impl Default for Prober {
    fn default() -> Self {
        Self::new()
    }
}

impl Prober {
    pub fn new() -> Self {
        Self::with_builder(reqwest::Client::builder())
    }

    /// A prober that may also write (submit tasks) to the testnet in `dir`: it sends the
    /// testnet's token.
    pub fn for_testnet(dir: &std::path::Path) -> Self {
        Self::with_builder(crate::access::authorized(reqwest::Client::builder(), dir))
    }

    fn with_builder(builder: reqwest::ClientBuilder) -> Self {
        Self {
            http: builder
                .timeout(Duration::from_secs(3))
                .no_proxy()
                .build()
                .unwrap_or_default(),
        }
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, port: u16, path: &str) -> Option<T> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let response = self
            .http
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    pub async fn status(&self, port: u16) -> Option<StatusProbe> {
        self.get(port, "/v1/status").await
    }

    pub async fn telemetry(&self, port: u16) -> Option<TelemetryProbe> {
        self.get(port, "/v1/telemetry").await
    }

    pub async fn receipts(&self, port: u16) -> Option<ReceiptsProbe> {
        self.get(port, "/v1/receipts").await
    }

    pub async fn cluster(&self, port: u16) -> Option<ClusterProbe> {
        self.get(port, "/v1/cluster").await
    }

    /// Submits a task (`POST /v1/tasks` body); its id.
    pub async fn submit_task(&self, port: u16, body: &serde_json::Value) -> Option<String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let response = self
            .http
            .post(format!("http://{addr}/v1/tasks"))
            .json(body)
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        let answer: serde_json::Value = response.json().await.ok()?;
        answer.get("id")?.as_str().map(str::to_owned)
    }

    /// A task's state (`queued`, `running`, `done`, ...) as a node sees it.
    pub async fn task_state(&self, port: u16, id: &str) -> Option<String> {
        let task: serde_json::Value = self.get(port, &format!("/v1/tasks/{id}")).await?;
        task.get("state")?.as_str().map(str::to_owned)
    }
}
