//! The CLI side of the control API: find a node and ask it ([`ControlClient`]); follow its
//! event stream ([`sse`]); print what it answers for a person ([`render`]).

pub mod render;
pub mod sse;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::control::access::{self, ApiToken};
use crate::control::events::EventFilter;
use crate::control::{control_file_path, ControlFile};
use crate::revocations::RevocationOutcome;
use crate::runtime::status::{PeersResponse, StatusView};
use crate::telemetry::view::{ReceiptsResponse, TelemetryResponse};
use fogmesh_device::DeviceView;
pub use sse::{EventStream, SseFrame};

/// How long an event stream may stay silent before the client gives up on the node: three
/// of the node's keep-alive intervals.
pub const STREAM_IDLE_LIMIT: Duration = Duration::from_secs(45);
/// Longest SSE line (and longest event) the client accepts, so a confused server cannot
/// make it buffer without end.
pub const MAX_SSE_LINE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no running node found for data dir {data_dir}: {path} is missing (start one with `fogmesh run --data-dir {data_dir}`)")]
    NotRunning { data_dir: PathBuf, path: PathBuf },
    #[error("control file {path} is unreadable: {reason}")]
    BadControlFile { path: PathBuf, reason: String },
    #[error("node control API at {addr} did not answer: {reason}")]
    Unreachable { addr: SocketAddr, reason: String },
    #[error("the node refused it: {0}")]
    Refused(String),
    #[error("node control API at {addr} answered {status} for {path}")]
    Status {
        addr: SocketAddr,
        path: String,
        status: u16,
    },
    #[error("node control API at {addr} is busy: {reason}")]
    Busy { addr: SocketAddr, reason: String },
    #[error("the event stream from {addr} broke: {reason}")]
    StreamBroken { addr: SocketAddr, reason: String },
}

/// The HTTP client of [`ControlClient`]: 5 s per request, no proxy, the token if any.
fn http_client(token: Option<&ApiToken>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        if let Ok(mut value) =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.as_str()))
        {
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
    }
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .default_headers(headers)
        .build()
        .unwrap_or_default()
}

/// A client of one node's control API.
#[derive(Debug, Clone)]
pub struct ControlClient {
    addr: SocketAddr,
    http: reqwest::Client,
    /// The control file this address came from, to name it when it turns out stale.
    control_file: Option<PathBuf>,
    /// The node's token, sent with every write (`crate::control::access`).
    token: Option<ApiToken>,
}

impl ControlClient {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            http: http_client(None),
            control_file: None,
            token: None,
        }
    }

    /// This client with the node's token, sent with every request (writes and private
    /// reads need it; `crate::control::access`).
    pub fn with_token(mut self, token: ApiToken) -> Self {
        self.http = http_client(Some(&token));
        self.token = Some(token);
        self
    }

    /// The token this client sends with writes, if it has one.
    pub fn token(&self) -> Option<&ApiToken> {
        self.token.as_ref()
    }

    /// Finds the node that runs with `data_dir` through its control file.
    pub fn for_data_dir(data_dir: &Path) -> Result<Self, ClientError> {
        let path = control_file_path(data_dir);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ClientError::NotRunning {
                    data_dir: data_dir.to_path_buf(),
                    path,
                })
            }
            Err(e) => {
                return Err(ClientError::BadControlFile {
                    path,
                    reason: e.to_string(),
                })
            }
        };
        let file: ControlFile =
            serde_json::from_slice(&bytes).map_err(|e| ClientError::BadControlFile {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let client = Self {
            control_file: Some(path),
            ..Self::new(file.addr)
        };
        // Without a readable token (a node older than tokens, or another user's node) the
        // public reads still work; the rest get the node's own explanation.
        Ok(match access::read(data_dir) {
            Ok(Some(token)) => client.with_token(token),
            Ok(None) => client,
            Err(error) => {
                tracing::debug!(%error, "no control API token");
                client
            }
        })
    }

    /// The control API address this client talks to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Opens the node's live event stream (`GET /v1/events`).
    pub async fn events(&self) -> Result<EventStream, ClientError> {
        self.events_filtered(&EventFilter::default()).await
    }

    /// The event stream with a filter (`kv watch`: one type, namespace and key prefix).
    pub async fn events_filtered(&self, filter: &EventFilter) -> Result<EventStream, ClientError> {
        let path = "/v1/events";
        // The stream lives as long as the node: no total timeout, only one for connecting
        // and, in `EventStream`, one for silence.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .unwrap_or_default();
        let request = http
            .get(format!("http://{}{}", self.addr, path))
            .query(filter)
            .send();
        let response = match tokio::time::timeout(Duration::from_secs(5), request).await {
            Ok(sent) => sent.map_err(|e| self.unreachable(e))?,
            Err(_) => {
                return Err(ClientError::Unreachable {
                    addr: self.addr,
                    reason: "no answer within 5 s: the node is overloaded or stuck".to_owned(),
                })
            }
        };
        let status = response.status();
        if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            let reason = response
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
                .unwrap_or_else(|| "it refused the event stream (503)".to_owned());
            return Err(ClientError::Busy {
                addr: self.addr,
                reason,
            });
        }
        if !status.is_success() {
            return Err(ClientError::Status {
                addr: self.addr,
                path: path.to_owned(),
                status: status.as_u16(),
            });
        }
        Ok(EventStream::new(self.addr, response))
    }

    /// Why a request got no answer, in terms a person can act on.
    fn unreachable(&self, e: reqwest::Error) -> ClientError {
        let reason = if e.is_connect() {
            match &self.control_file {
                Some(file) => format!(
                    "nothing listens there: the node is not running, and {} is stale (a node \
                     stopped by a crash or kill -9 leaves it behind; starting the node replaces it)",
                    file.display()
                ),
                None => "nothing listens there: is the node running?".to_owned(),
            }
        } else if e.is_timeout() {
            "no answer within 5 s: the node is overloaded or stuck".to_owned()
        } else {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(inner) = source {
                text = inner.to_string();
                source = inner.source();
            }
            text
        };
        ClientError::Unreachable {
            addr: self.addr,
            reason,
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("http://{}{}", self.addr, path);
        let unreachable = |e: reqwest::Error| self.unreachable(e);
        let response = self.http.get(url).send().await.map_err(unreachable)?;
        if !response.status().is_success() {
            return Err(ClientError::Status {
                addr: self.addr,
                path: path.to_owned(),
                status: response.status().as_u16(),
            });
        }
        response.json().await.map_err(unreachable)
    }

    pub async fn status(&self) -> Result<StatusView, ClientError> {
        self.get("/v1/status").await
    }

    pub async fn peers(&self) -> Result<PeersResponse, ClientError> {
        self.get("/v1/peers").await
    }

    pub async fn telemetry(&self) -> Result<TelemetryResponse, ClientError> {
        self.get("/v1/telemetry").await
    }

    /// One node's latest record: held by this node, or fetched from the mesh.
    pub async fn telemetry_of(
        &self,
        peer: &str,
    ) -> Result<crate::telemetry::view::TelemetryView, ClientError> {
        self.get(&format!("/v1/telemetry/{peer}")).await
    }

    pub async fn receipts(&self) -> Result<ReceiptsResponse, ClientError> {
        self.get("/v1/receipts").await
    }

    pub async fn device(&self) -> Result<DeviceView, ClientError> {
        self.get("/v1/device").await
    }

    pub async fn messages(&self) -> Result<crate::relay::MessagesView, ClientError> {
        self.get("/v1/messages").await
    }

    pub async fn message(&self, id: &str) -> Result<crate::relay::MessageView, ClientError> {
        self.get(&format!("/v1/messages/{id}")).await
    }

    /// Hands a message to the node, which stores and sends it; answers its id.
    pub async fn send_message(
        &self,
        request: &crate::relay::api::SendMessageRequest,
    ) -> Result<crate::relay::api::SentMessage, ClientError> {
        let body = serde_json::to_vec(request).map_err(|e| ClientError::Refused(e.to_string()))?;
        self.post("/v1/messages", body, Some("application/json"))
            .await
    }

    /// A one-time sign-in code for the dashboard (`crate::control::signin`); needs the token.
    pub async fn signin_code(&self) -> Result<String, ClientError> {
        let issued: crate::control::signin::IssuedCode =
            self.post("/v1/signin/codes", Vec::new(), None).await?;
        Ok(issued.code)
    }

    /// Hands a revocation to the node, which applies, stores and gossips it.
    pub async fn submit_revocation(
        &self,
        revocation: Vec<u8>,
    ) -> Result<RevocationOutcome, ClientError> {
        self.post("/v1/revocations", revocation, None).await
    }

    pub async fn cluster(&self) -> Result<crate::cluster::service::ClusterView, ClientError> {
        self.get("/v1/cluster").await
    }

    pub async fn tasks(&self) -> Result<Vec<crate::cluster::service::TaskView>, ClientError> {
        self.get("/v1/tasks").await
    }

    pub async fn task(&self, id: &str) -> Result<crate::cluster::service::TaskView, ClientError> {
        let path = format!("/v1/tasks/{id}");
        let response = self.send(self.http.get(self.url(&path)), &path).await?;
        response.json().await.map_err(|e| self.unreachable(e))
    }

    /// Hands a task to the node; answers its id once it is on disk there.
    pub async fn submit_task(
        &self,
        request: &crate::cluster::api::SubmitTaskRequest,
    ) -> Result<crate::cluster::api::SubmittedTask, ClientError> {
        let body = serde_json::to_vec(request).map_err(|e| ClientError::Refused(e.to_string()))?;
        self.post("/v1/tasks", body, Some("application/json")).await
    }

    pub async fn cancel_task(&self, id: &str) -> Result<serde_json::Value, ClientError> {
        let path = format!("/v1/tasks/{id}");
        let response = self.send(self.http.delete(self.url(&path)), &path).await?;
        response.json().await.map_err(|e| self.unreachable(e))
    }

    /// A finished task's output.
    pub async fn task_result(&self, id: &str) -> Result<Vec<u8>, ClientError> {
        let path = format!("/v1/tasks/{id}/result");
        let response = self.send(self.http.get(self.url(&path)), &path).await?;
        let bytes = response.bytes().await.map_err(|e| self.unreachable(e))?;
        Ok(bytes.to_vec())
    }

    /// `/v1/kv/{namespace}/{key}`, the key as one path segment with every byte but
    /// letters, digits, `-`, `_` and `~` escaped (so `/`, `.` and `..` stay in the key
    /// instead of being read as path structure).
    fn kv_url(&self, namespace: &str, key: &str) -> Result<reqwest::Url, ClientError> {
        let escape = |text: &str| -> String {
            text.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect()
        };
        let url = format!(
            "http://{}/v1/kv/{}/{}",
            self.addr,
            escape(namespace),
            escape(key)
        );
        reqwest::Url::parse(&url).map_err(|e| ClientError::Refused(e.to_string()))
    }

    /// Writes a value (or deletes the key with `None`); answers once it is on disk.
    pub async fn kv_write(
        &self,
        namespace: &str,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> Result<crate::kv::service::KvWritten, ClientError> {
        let url = self.kv_url(namespace, key)?;
        let path = url.path().to_owned();
        let request = match value {
            Some(value) => self.http.put(url).body(value),
            None => self.http.delete(url),
        };
        let response = self.send(request, &path).await?;
        response.json().await.map_err(|e| self.unreachable(e))
    }

    /// Several writes in one request: one flush, one answer.
    pub async fn kv_batch(
        &self,
        namespace: &str,
        batch: &crate::kv::api::KvBatch,
    ) -> Result<crate::kv::service::KvWritten, ClientError> {
        let body = serde_json::to_vec(batch).map_err(|e| ClientError::Refused(e.to_string()))?;
        self.post(
            &format!("/v1/kv/{namespace}"),
            body,
            Some("application/json"),
        )
        .await
    }

    /// A key with its overwritten versions; `None` if the node holds no such key.
    pub async fn kv_get(
        &self,
        namespace: &str,
        key: &str,
    ) -> Result<Option<crate::kv::service::KeyView>, ClientError> {
        let url = self.kv_url(namespace, key)?;
        let path = url.path().to_owned();
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = self.check(response, &path).await?;
        response.json().await.map_err(|e| self.unreachable(e))
    }

    pub async fn kv_list(
        &self,
        namespace: &str,
        query: &crate::kv::api::KvListQuery,
    ) -> Result<Vec<crate::kv::service::KeyView>, ClientError> {
        let path = format!("/v1/kv/{namespace}");
        let request = self.http.get(self.url(&path)).query(query);
        let response = self.send(request, &path).await?;
        response.json().await.map_err(|e| self.unreachable(e))
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
        content_type: Option<&str>,
    ) -> Result<T, ClientError> {
        let unreachable = |e: reqwest::Error| self.unreachable(e);
        let mut request = self.http.post(self.url(path)).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = self.send(request, path).await?;
        response.json().await.map_err(unreachable)
    }

    /// Sends a request; a refusal with a reason (4xx with `{"error": ...}`) becomes
    /// [`ClientError::Refused`].
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        path: &str,
    ) -> Result<reqwest::Response, ClientError> {
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        self.check(response, path).await
    }

    /// A refusal with a reason becomes [`ClientError::Refused`].
    async fn check(
        &self,
        response: reqwest::Response,
        path: &str,
    ) -> Result<reqwest::Response, ClientError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let reason = response
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_owned));
        match reason {
            Some(reason)
                if status.is_client_error()
                    || status == reqwest::StatusCode::SERVICE_UNAVAILABLE =>
            {
                Err(ClientError::Refused(reason))
            }
            _ => Err(ClientError::Status {
                addr: self.addr,
                path: path.to_owned(),
                status: status.as_u16(),
            }),
        }
    }
}
