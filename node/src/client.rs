//! The CLI side of the control API: find a node, ask it, print readable tables.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use serde::de::DeserializeOwned;

use crate::api::{
    control_file_path, ControlFile, PeersResponse, ReceiptsResponse, RevocationOutcome, StatusView,
    TelemetryResponse,
};
use crate::device::{DeviceSummary, DeviceView};
use crate::events::{NodeEvent, StampedEvent};

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

/// A client of one node's control API.
#[derive(Debug, Clone)]
pub struct ControlClient {
    addr: SocketAddr,
    http: reqwest::Client,
    /// The control file this address came from, to name it when it turns out stale.
    control_file: Option<PathBuf>,
}

impl ControlClient {
    pub fn new(addr: SocketAddr) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .unwrap_or_default();
        Self {
            addr,
            http,
            control_file: None,
        }
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
        Ok(Self {
            control_file: Some(path),
            ..Self::new(file.addr)
        })
    }

    /// The control API address this client talks to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Opens the node's live event stream (`GET /v1/events`).
    pub async fn events(&self) -> Result<EventStream, ClientError> {
        self.events_filtered(&crate::api::EventFilter::default())
            .await
    }

    /// The event stream with a filter (`kv watch`: one type, namespace and key prefix).
    pub async fn events_filtered(
        &self,
        filter: &crate::api::EventFilter,
    ) -> Result<EventStream, ClientError> {
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
        Ok(EventStream {
            addr: self.addr,
            response,
            parser: SseParser::default(),
            ready: VecDeque::new(),
        })
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
        request: &crate::api::SendMessageRequest,
    ) -> Result<crate::api::SentMessage, ClientError> {
        let body = serde_json::to_vec(request).map_err(|e| ClientError::Refused(e.to_string()))?;
        self.post("/v1/messages", body, Some("application/json"))
            .await
    }

    /// Hands a revocation to the node, which applies, stores and gossips it.
    pub async fn submit_revocation(
        &self,
        revocation: Vec<u8>,
    ) -> Result<RevocationOutcome, ClientError> {
        self.post("/v1/revocations", revocation, None).await
    }

    pub async fn cluster(&self) -> Result<crate::services::cluster::ClusterView, ClientError> {
        self.get("/v1/cluster").await
    }

    pub async fn tasks(&self) -> Result<Vec<crate::services::cluster::TaskView>, ClientError> {
        self.get("/v1/tasks").await
    }

    pub async fn task(&self, id: &str) -> Result<crate::services::cluster::TaskView, ClientError> {
        let path = format!("/v1/tasks/{id}");
        let response = self.send(self.http.get(self.url(&path)), &path).await?;
        response.json().await.map_err(|e| self.unreachable(e))
    }

    /// Hands a task to the node; answers its id once it is on disk there.
    pub async fn submit_task(
        &self,
        request: &crate::api::SubmitTaskRequest,
    ) -> Result<crate::api::SubmittedTask, ClientError> {
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
    ) -> Result<crate::services::kv::KvWritten, ClientError> {
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
        batch: &crate::api::KvBatch,
    ) -> Result<crate::services::kv::KvWritten, ClientError> {
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
    ) -> Result<Option<crate::services::kv::KeyView>, ClientError> {
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
        query: &crate::api::KvListQuery,
    ) -> Result<Vec<crate::services::kv::KeyView>, ClientError> {
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

/// An open `GET /v1/events` stream.
#[derive(Debug)]
pub struct EventStream {
    addr: SocketAddr,
    response: reqwest::Response,
    parser: SseParser,
    /// Frames parsed from the last chunk and not yet handed out.
    ready: VecDeque<SseFrame>,
}

impl EventStream {
    /// The next frame: an event's data or a keep-alive comment. `None` when the node ended
    /// the stream (it is stopping).
    pub async fn next_frame(&mut self) -> Result<Option<SseFrame>, ClientError> {
        loop {
            if let Some(frame) = self.ready.pop_front() {
                return Ok(Some(frame));
            }
            let chunk = match tokio::time::timeout(STREAM_IDLE_LIMIT, self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => chunk,
                Ok(Ok(None)) => return Ok(None),
                Ok(Err(e)) => return Err(self.broken(root_cause(&e))),
                Err(_) => {
                    return Err(self.broken(format!(
                        "nothing for {} s, not even a keep-alive: the node is stuck or gone",
                        STREAM_IDLE_LIMIT.as_secs()
                    )))
                }
            };
            let frames = self
                .parser
                .feed(&chunk)
                .map_err(|e| self.broken(e.to_string()))?;
            self.ready.extend(frames);
        }
    }

    /// The next event's JSON text, skipping comments; `None` when the stream ended.
    pub async fn next_data(&mut self) -> Result<Option<String>, ClientError> {
        loop {
            match self.next_frame().await? {
                Some(SseFrame::Message { data, .. }) => return Ok(Some(data)),
                Some(SseFrame::Comment(_)) => continue,
                None => return Ok(None),
            }
        }
    }

    fn broken(&self, reason: String) -> ClientError {
        ClientError::StreamBroken {
            addr: self.addr,
            reason,
        }
    }
}

/// The innermost error's text: reqwest's outer ones say only "error decoding response body".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = e;
    while let Some(inner) = innermost.source() {
        innermost = inner;
    }
    innermost.to_string()
}

/// One unit of a server-sent event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseFrame {
    /// A dispatched event: its `data:` lines joined by newlines, and its `event:` type if any.
    Message { event: Option<String>, data: String },
    /// A comment line (`: keep-alive`), without the colon and one leading space.
    Comment(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("a line of the event stream is longer than {limit} bytes")]
    LineTooLong { limit: usize },
    #[error("an event of the event stream is longer than {limit} bytes")]
    EventTooLong { limit: usize },
}

/// Splits a server-sent event stream (the WHATWG `text/event-stream` format) into frames,
/// whatever the chunk boundaries: lines end in LF, CR or CRLF (a CR at the end of one chunk
/// and the LF at the start of the next are one line break), an empty line dispatches the
/// event, a line starting with `:` is a comment, `id` and `retry` are ignored, and an event
/// not ended by an empty line when the stream ends is discarded.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    /// The last line ended in CR, so a LF next is part of that line break.
    after_cr: bool,
    /// A byte-order mark is stripped from the first line only.
    seen_first_line: bool,
    data: String,
    has_data: bool,
    event: Option<String>,
}

impl SseParser {
    /// Feeds the next chunk of the stream; returns the frames it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<SseFrame>, SseError> {
        let mut frames = Vec::new();
        for &byte in chunk {
            let after_cr = std::mem::take(&mut self.after_cr);
            match byte {
                b'\n' if after_cr => {}
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(frame) = self.end_line(&line)? {
                        frames.push(frame);
                    }
                }
                _ if self.line.len() >= MAX_SSE_LINE => {
                    return Err(SseError::LineTooLong {
                        limit: MAX_SSE_LINE,
                    })
                }
                _ => self.line.push(byte),
            }
        }
        Ok(frames)
    }

    fn end_line(&mut self, raw: &[u8]) -> Result<Option<SseFrame>, SseError> {
        let text = String::from_utf8_lossy(raw);
        let mut line: &str = &text;
        if !self.seen_first_line {
            self.seen_first_line = true;
            line = line.strip_prefix('\u{feff}').unwrap_or(line);
        }
        if line.is_empty() {
            let event = self.event.take();
            if !std::mem::take(&mut self.has_data) {
                return Ok(None);
            }
            return Ok(Some(SseFrame::Message {
                event,
                data: std::mem::take(&mut self.data),
            }));
        }
        if let Some(comment) = line.strip_prefix(':') {
            let comment = comment.strip_prefix(' ').unwrap_or(comment);
            return Ok(Some(SseFrame::Comment(comment.to_owned())));
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.data.len() + value.len() + 1 > MAX_SSE_LINE {
                    return Err(SseError::EventTooLong {
                        limit: MAX_SSE_LINE,
                    });
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            // `id` and `retry` matter to reconnecting browsers, not to a terminal.
            _ => {}
        }
        Ok(None)
    }
}

/// The time of day (UTC, like the node's log) of a millisecond timestamp: `12:03:04.512`.
fn time_of_day(at_ms: u64) -> String {
    let ms_of_day = at_ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000
    )
}

/// A PeerId shortened, anything else (an address) as it is.
fn peer_or_addr(remote: &str) -> String {
    if remote.parse::<libp2p::PeerId>().is_ok() {
        short_id(remote)
    } else {
        remote.to_owned()
    }
}

/// `fogmesh inbox`: received messages, then sent ones with their delivery status.
/// `fogmesh cluster`.
pub fn render_cluster(view: &crate::services::cluster::ClusterView) -> String {
    let mut out = String::new();
    match &view.cluster {
        Some(cluster) => out.push_str(&format!(
            "cluster {cluster} ({}), term {}, coordinator {}{}
  {}
",
            view.state,
            view.term,
            view.coordinator.as_deref().map_or("none".into(), short_id),
            if view.is_coordinator {
                " (this node)"
            } else {
                ""
            },
            view.why
        )),
        None => out.push_str(&format!(
            "not in a cluster: {}
",
            view.why
        )),
    }
    if !view.members.is_empty() {
        out.push_str(&format!(
            "members ({}), {} queued, {} running here
",
            view.members.len(),
            view.queued,
            view.running
        ));
        for m in &view.members {
            let battery = match (m.battery_pct, m.charging) {
                (Some(pct), Some(true)) => format!("battery {pct}% charging"),
                (Some(pct), _) => format!("battery {pct}%"),
                _ => "mains".into(),
            };
            out.push_str(&format!(
                "  {}{} {} score {:.3}  {} cores at {}%, {} MB, {} tasks max, {battery}  load {} tasks, {} mcpu, {} MB
",
                if m.coordinator { "*" } else { " " },
                short_id(&m.peer_id),
                if m.voter { "voter  " } else { "learner" },
                m.score,
                m.cores,
                m.cpu_pct,
                m.memory_mb,
                m.max_tasks,
                m.tasks,
                m.cpu_millicores,
                m.load_memory_mb
            ));
        }
    }
    if !view.known_clusters.is_empty() {
        out.push_str(&format!(
            "clusters heard of ({})
",
            view.known_clusters.len()
        ));
        for c in &view.known_clusters {
            out.push_str(&format!(
                "  {}  coordinator {}, term {}, {} members, {} queued, announced {:.1} s ago
",
                c.cluster,
                short_id(&c.coordinator),
                c.term,
                c.members,
                c.queued,
                c.age_ms as f64 / 1000.0
            ));
        }
    }
    out
}

/// One task, for `fogmesh task status`.
pub fn render_task(t: &crate::services::cluster::TaskView) -> String {
    format!(
        "{}  {} ({}){}{}{}{}",
        t.id,
        t.state,
        t.priority,
        t.cluster
            .as_deref()
            .map_or(String::new(), |c| format!(" in {c}")),
        t.node
            .as_deref()
            .map_or(String::new(), |n| format!(" on {}", short_id(n))),
        if t.attempts > 0 {
            format!(", {} failed attempts", t.attempts)
        } else {
            String::new()
        },
        t.detail
            .as_deref()
            .map_or(String::new(), |d| format!(": {d}"))
    )
}

/// `fogmesh task list`.
pub fn render_tasks(tasks: &[crate::services::cluster::TaskView]) -> String {
    if tasks.is_empty() {
        return "no tasks known here\n".into();
    }
    tasks.iter().map(|t| render_task(t) + "\n").collect()
}

pub fn render_messages(m: &crate::relay::MessagesView) -> String {
    let mut out = String::new();
    let when = |ms: u64| {
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        )
        .to_string()
    };
    out.push_str(&format!("inbox ({})\n", m.inbox.len()));
    for msg in &m.inbox {
        out.push_str(&format!(
            "  {}  {} from {}{} ({} hops): {}\n",
            when(msg.at_ms.unwrap_or(msg.created_ms)),
            short_message_id(&msg.id),
            msg.peer.as_deref().map(short_id).unwrap_or_default(),
            if msg.broadcast { " (broadcast)" } else { "" },
            msg.hops.unwrap_or(0),
            msg.text
        ));
    }
    out.push_str(&format!("sent ({})\n", m.sent.len()));
    for msg in &m.sent {
        out.push_str(&format!(
            "  {}  {} to {} [{}]: {}\n",
            when(msg.created_ms),
            short_message_id(&msg.id),
            msg.peer
                .as_deref()
                .map(short_id)
                .unwrap_or_else(|| "everyone".into()),
            msg.status,
            msg.text
        ));
    }
    out.push_str(&format!("held for store-and-forward: {}\n", m.held));
    out
}

fn render_version_value(v: &crate::services::kv::VersionView) -> String {
    if v.deleted {
        return "(deleted)".into();
    }
    match (&v.value, &v.value_hex) {
        (Some(text), _) if text.chars().count() <= 60 => format!("{text:?}"),
        (Some(text), _) => format!(
            "{:?}… ({} bytes)",
            text.chars().take(57).collect::<String>(),
            text.len()
        ),
        (None, Some(hex)) => format!("<{} bytes>", hex.len() / 2),
        (None, None) => String::new(),
    }
}

/// `kv get --conflicts`: the value, then what it overwrote, newest first, with authors.
pub fn render_key_versions(view: &crate::services::kv::KeyView) -> String {
    let mut out = format!(
        "{}/{}\n  current      {} by {} at {}\n",
        view.namespace,
        view.key,
        render_version_value(&view.winner),
        short_id(&view.winner.author),
        view.winner.hlc
    );
    if view.overwritten.is_empty() {
        out.push_str("  overwrote    nothing this node saw\n");
    }
    for v in &view.overwritten {
        out.push_str(&format!(
            "  overwrote    {} by {} at {}\n",
            render_version_value(v),
            short_id(&v.author),
            v.hlc
        ));
    }
    out.trim_end().to_string()
}

/// `kv list`: one key per line.
pub fn render_keys(keys: &[crate::services::kv::KeyView]) -> String {
    if keys.is_empty() {
        return "no keys".into();
    }
    let width = keys.iter().map(|k| k.key.len()).max().unwrap_or(0).min(40);
    keys.iter()
        .map(|k| {
            format!(
                "{:width$}  {}  by {} at {}",
                k.key,
                render_version_value(&k.winner),
                short_id(&k.winner.author),
                k.winner.hlc
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first 12 hex digits of a message id: enough to tell messages apart on a screen.
pub fn short_message_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// One line of `fogmesh watch` for an event's JSON: time, what happened, the key fields.
/// An event this version does not know is shown by its type and raw fields.
pub fn render_event(json: &str) -> String {
    let Ok(stamped) = serde_json::from_str::<StampedEvent>(json) else {
        return render_unknown_event(json);
    };
    let what = match &stamped.event {
        NodeEvent::PeerConnected {
            peer_id,
            addr,
            direction,
        } => format!("peer connected      {} {direction} {addr}", short_id(peer_id)),
        NodeEvent::PeerDisconnected { peer_id, cause } => {
            format!("peer disconnected   {} ({cause})", short_id(peer_id))
        }
        NodeEvent::TelemetryReceived {
            origin,
            seq,
            latency_ms,
        } => format!(
            "telemetry           from {} seq {seq}, {latency_ms} ms after it was sent",
            short_id(origin)
        ),
        NodeEvent::TelemetryExpired { origin } => {
            format!("telemetry expired   {}", short_id(origin))
        }
        NodeEvent::AdmissionRefused {
            remote,
            direction,
            reason,
        } => format!(
            "admission refused   {} {direction}: {reason}",
            peer_or_addr(remote)
        ),
        NodeEvent::RevocationApplied {
            ticket_id,
            disconnected,
        } => {
            let closed = if disconnected.is_empty() {
                "no connection closed".to_owned()
            } else {
                let peers: Vec<String> = disconnected.iter().map(|p| short_id(p)).collect();
                format!("closed {}", peers.join(", "))
            };
            format!("revocation applied  ticket {ticket_id}, {closed}")
        }
        NodeEvent::Lifecycle { from, to, reason } => {
            format!("lifecycle           {from} -> {to} ({reason})")
        }
        NodeEvent::PowerMode {
            from,
            to,
            score,
            reasons,
        } => format!(
            "power mode          {} -> {to}, score {score:.3} ({})",
            from.as_deref().unwrap_or("none"),
            reasons.join("; ")
        ),
        NodeEvent::MessageReceived {
            id,
            from,
            app,
            hops,
            broadcast,
        } => format!(
            "message received    {} from {} ({app}, {hops} hops{})",
            short_message_id(id),
            short_id(from),
            if *broadcast { ", broadcast" } else { "" }
        ),
        NodeEvent::MessageDelivered { id, to, after_ms } => format!(
            "message delivered   {} to {} after {after_ms} ms",
            short_message_id(id),
            short_id(to)
        ),
        NodeEvent::Cluster {
            state,
            cluster,
            term,
            coordinator,
            members,
            reason,
        } => format!(
            "cluster             {state} {} term {term}, coordinator {}, {members} members ({reason})",
            cluster.as_deref().unwrap_or("-"),
            coordinator.as_deref().map_or("none".to_string(), short_id)
        ),
        NodeEvent::Task {
            id,
            state,
            node,
            cluster,
            detail,
        } => format!(
            "task                {} {state}{}{}{}",
            short_message_id(id),
            node.as_deref()
                .map_or(String::new(), |n| format!(" on {}", short_id(n))),
            cluster
                .as_deref()
                .map_or(String::new(), |c| format!(" in {c}")),
            detail
                .as_deref()
                .map_or(String::new(), |d| format!(": {d}"))
        ),
        NodeEvent::KvChanged {
            namespace,
            key,
            deleted,
            value,
            value_len,
            author,
            via,
            ..
        } => format!(
            "kv changed          {namespace}/{key} {} by {} ({via})",
            if *deleted {
                "deleted".to_string()
            } else {
                value
                    .as_deref()
                    .map_or(format!("= <{value_len} bytes>"), |v| format!("= {v:?}"))
            },
            short_id(author)
        ),
        NodeEvent::KvConflict {
            namespace,
            key,
            kept,
            overwritten,
        } => format!(
            "kv conflict         {namespace}/{key}: kept {}'s, overwrote {}'s",
            short_id(kept),
            short_id(overwritten)
        ),
        NodeEvent::Lagged { missed } => format!(
            "LAGGED              {missed} events missed: this client read too slowly and the node dropped them"
        ),
    };
    format!("{} {what}", time_of_day(stamped.at_ms))
}

fn render_unknown_event(json: &str) -> String {
    let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_str(json) else {
        return format!("(not an event) {json}");
    };
    let at = fields
        .remove("at_ms")
        .and_then(|v| v.as_u64())
        .map(time_of_day)
        .unwrap_or_else(|| "??:??:??.???".to_owned());
    let kind = match fields.remove("type") {
        Some(serde_json::Value::String(kind)) => kind,
        _ => "unknown".to_owned(),
    };
    fields.remove("seq");
    format!("{at} {kind:<19} {}", serde_json::Value::Object(fields))
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(header.iter().copied());
    t
}

/// Shortens a PeerId for tables: enough to tell nodes apart, full ids are in `--json`.
pub fn short_id(peer_id: &str) -> String {
    if peer_id.len() > 14 {
        format!("{}…{}", &peer_id[..6], &peer_id[peer_id.len() - 6..])
    } else {
        peer_id.to_owned()
    }
}

fn bytes(b: Option<u64>) -> String {
    match b {
        None => "?".into(),
        Some(b) if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        Some(b) => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
    }
}

fn age(ms: u64) -> String {
    if ms < 10_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
    }
}

pub fn render_status(s: &StatusView) -> String {
    let r = &s.telemetry_rejected;
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    let rows: Vec<(&str, String)> = vec![
        ("peer id", s.peer_id.clone()),
        ("version", s.version.clone()),
        (
            "phase",
            format!(
                "{} since {} ago ({})",
                s.phase,
                age(crate::api::now_ms().saturating_sub(s.phase_since_ms)),
                s.phase_reason
            ),
        ),
        // From the same clock as the phase's age, so the two agree.
        (
            "uptime",
            age(crate::api::now_ms().saturating_sub(s.started_at_ms)),
        ),
        ("data dir", s.data_dir.display().to_string()),
        ("listening on", s.listen_addrs.join("\n")),
        (
            "peers",
            format!("{} connected, {} known", s.connected_peers, s.known_peers),
        ),
        (
            "bootstrap",
            format!(
                "{}/{} connected",
                s.bootstrap.connected, s.bootstrap.configured
            ),
        ),
        ("mDNS", if s.mdns { "on" } else { "off" }.into()),
        (
            "telemetry",
            format!(
                "{} ({} stale), every {}, {}, {} accepted{}",
                plural(s.telemetry_nodes as u64, "node", "nodes"),
                s.stale_nodes,
                humantime::format_duration(Duration::from_millis(s.telemetry_interval_ms)),
                published_text(s),
                s.telemetry_accepted,
                match s.telemetry_expired {
                    0 => String::new(),
                    n => format!(", {n} forgotten (silent too long or over the cap)"),
                }
            ),
        ),
        (
            "rejected",
            format!(
                "{} (malformed {}, oversized {}, bad signature {}, sender mismatch {}, stale {}, future {}, replayed {})",
                r.total(), r.malformed, r.oversized, r.bad_signature, r.sender_mismatch, r.stale, r.from_future, r.replayed
            ),
        ),
        ("store errors", s.store_errors.to_string()),
        ("mesh", mesh_line(s)),
        ("handshakes", handshake_line(s)),
    ];
    for (k, v) in rows {
        t.add_row(vec![k.to_owned(), v]);
    }
    t.to_string()
}

/// "1 node", "2 nodes".
fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Published telemetry, and why none went out when none did.
fn published_text(s: &StatusView) -> String {
    match (s.telemetry_published, s.telemetry_unsent) {
        (published, 0) => format!("{published} published"),
        (published, unsent) => format!(
            "{published} published, {unsent} not sent ({}; it tries again every interval)",
            if s.connected_peers == 0 {
                "no peer connected"
            } else {
                "no connected peer has subscribed yet"
            }
        ),
    }
}

fn mesh_line(s: &StatusView) -> String {
    let a = &s.admission;
    if a.open {
        return "OPEN: no mesh configured, anyone may connect".into();
    }
    let expires = a
        .ticket_expires_s
        .map(|t| {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(t))
                .to_string()
        })
        .unwrap_or_default();
    format!(
        "{} ({})\nroles {}, ticket valid until {expires}\n{}, QUIC {}",
        a.mesh_name.as_deref().unwrap_or("?"),
        a.mesh_id.as_deref().unwrap_or("?"),
        a.roles.join(", "),
        plural(a.revocations as u64, "revocation", "revocations"),
        if a.quic {
            "on"
        } else {
            "off (tickets need TCP)"
        },
    )
}

fn handshake_line(s: &StatusView) -> String {
    let h = &s.admission.handshakes;
    let mut line = format!(
        "admitted {} in / {} out, rekeys {} sent / {} received",
        h.admitted_inbound, h.admitted_outbound, h.rekeys_sent, h.rekeys_received
    );
    if !h.refused.is_empty() {
        let refused: Vec<String> = h.refused.iter().map(|(k, v)| format!("{k} {v}")).collect();
        line.push_str(&format!("\nrefused: {}", refused.join(", ")));
    }
    line
}

pub fn render_peers(p: &PeersResponse) -> String {
    if p.peers.is_empty() {
        return "no peers known yet".into();
    }
    let mut t = table(&[
        "peer",
        "state",
        "address",
        "rtt",
        "device",
        "mode",
        "score",
        "last seen",
    ]);
    let now = crate::api::now_ms();
    for peer in &p.peers {
        let [device, mode, score] = device_cells(peer.device.as_ref());
        t.add_row(vec![
            short_id(&peer.peer_id),
            if peer.connected {
                format!("connected ({})", peer.direction.as_deref().unwrap_or("?"))
            } else {
                "known".into()
            },
            peer.connection_addr
                .clone()
                .or_else(|| peer.known_addrs.first().cloned())
                .unwrap_or_default(),
            peer.rtt_ms
                .map(|r| format!("{r:.1} ms"))
                .unwrap_or_default(),
            device,
            mode,
            score,
            if peer.connected {
                "now".into()
            } else {
                format!("{} ago", age(now.saturating_sub(peer.last_seen_ms)))
            },
        ]);
    }
    t.to_string()
}

/// The device, mode and score cells of a peer's or node's row (empty when unknown).
fn device_cells(d: Option<&DeviceSummary>) -> [String; 3] {
    let Some(d) = d else {
        return Default::default();
    };
    let battery = match (d.battery_pct, d.charging) {
        (Some(b), Some(true)) => format!(" {b:.0}%+"),
        (Some(b), _) => format!(" {b:.0}%"),
        _ => String::new(),
    };
    let temp = d
        .temperature_c
        .map(|t| format!(" {t:.0}C"))
        .unwrap_or_default();
    [
        format!("{}{battery}{temp}", d.class),
        d.mode.to_string(),
        format!("{:.3}", d.score),
    ]
}

fn opt<T: std::fmt::Display>(v: Option<T>, unit: &str) -> String {
    v.map(|v| format!("{v}{unit}"))
        .unwrap_or_else(|| "unknown".into())
}

/// `fogmesh device`: what was detected, the mode and why, its limits, the score.
pub fn render_device(v: &DeviceView) -> String {
    let r = &v.readings;
    let d = &v.decision;
    let l = &d.limits;
    let (scan_on, scan_off, adv) = l.ble_duty.timings();
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    let rows: Vec<(&str, String)> = vec![
        (
            "class",
            format!(
                "{}{}",
                v.class,
                if v.simulated { " (simulated)" } else { "" }
            ),
        ),
        ("cores", opt(r.cores, "")),
        (
            "memory",
            format!(
                "{} available of {}",
                bytes(r.mem_available_bytes),
                bytes(r.mem_total_bytes)
            ),
        ),
        (
            "storage",
            format!(
                "{} available of {}",
                bytes(r.storage_available_bytes),
                bytes(r.storage_total_bytes)
            ),
        ),
        (
            "battery",
            match (r.battery_present, r.battery_pct) {
                (Some(false), _) => "none (mains powered)".into(),
                (_, Some(p)) => format!(
                    "{p:.0} %, {}",
                    match r.charging {
                        Some(true) => "charging",
                        Some(false) => "discharging",
                        None => "charging state unknown",
                    }
                ),
                (Some(true), None) => "present, level unknown".into(),
                (None, None) => "unknown".into(),
            },
        ),
        (
            "temperature",
            r.temperature_c
                .map(|t| format!("{t:.1} C"))
                .unwrap_or_else(|| "unknown".into()),
        ),
        (
            "GPU",
            match r.gpu {
                Some(true) => "yes".into(),
                Some(false) => "no".into(),
                None => "unknown".into(),
            },
        ),
        (
            "CPU load",
            r.cpu_load_pct
                .map(|c| format!("{c:.0} %"))
                .unwrap_or_else(|| "unknown".into()),
        ),
        (
            "power mode",
            format!("{} ({})", d.mode, d.reasons.join("; ")),
        ),
        ("CPU limit", format!("{} %", l.cpu_pct)),
        ("memory limit", bytes(Some(l.memory_bytes))),
        ("max tasks", l.max_tasks.to_string()),
        ("chunk size", format!("{} B", l.chunk_bytes)),
        ("transport", l.transport.to_string()),
        (
            "telemetry",
            format!("every {} x base interval", l.telemetry_multiplier),
        ),
        (
            "BLE duty",
            format!(
                "{}: scan {scan_on} ms on / {scan_off} ms off, advertise every {adv} ms",
                l.ble_duty
            ),
        ),
        ("score", format!("{:.4}", v.score)),
        (
            "sensing pass",
            format!("{:.2} ms", v.sense_micros as f64 / 1000.0),
        ),
    ];
    for (k, val) in rows {
        t.add_row(vec![k.to_owned(), val]);
    }
    if !v.rejected_readings.is_empty() {
        t.add_row(vec![
            "ignored readings".to_owned(),
            v.rejected_readings.join(", "),
        ]);
    }
    t.to_string()
}

pub fn render_telemetry(r: &TelemetryResponse) -> String {
    if r.nodes.is_empty() {
        return "no telemetry yet".into();
    }
    let mut t = table(&[
        "node", "seq", "age", "state", "device", "mode", "score", "cpu", "memory", "rss", "peers",
        "uptime",
    ]);
    for n in &r.nodes {
        let rec = &n.record;
        let [device, mode, score] = device_cells(rec.device.as_ref());
        t.add_row(vec![
            format!(
                "{}{}",
                short_id(&n.peer_id),
                if n.local { " (self)" } else { "" }
            ),
            (n.seq % 100_000).to_string(),
            age(n.age_ms),
            if n.stale { "STALE" } else { "fresh" }.into(),
            device,
            mode,
            score,
            rec.cpu_load_pct
                .map(|c| format!("{c:.0}%"))
                .unwrap_or_else(|| "?".into()),
            format!(
                "{} / {}",
                bytes(rec.mem_used_bytes),
                bytes(rec.mem_total_bytes)
            ),
            bytes(rec.rss_bytes),
            rec.peer_count.to_string(),
            age(rec.uptime_s * 1000),
        ]);
    }
    t.to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    fn message(data: &str) -> SseFrame {
        SseFrame::Message {
            event: None,
            data: data.to_owned(),
        }
    }

    fn feed_all(chunks: &[&[u8]]) -> Vec<SseFrame> {
        let mut parser = SseParser::default();
        chunks
            .iter()
            .flat_map(|chunk| parser.feed(chunk).unwrap())
            .collect()
    }

    #[test]
    fn events_and_comments_in_one_chunk() {
        let frames = feed_all(&[b"data: {\"a\":1}\n\n: keep-alive\n\ndata: {\"b\":2}\n\n"]);
        assert_eq!(
            frames,
            vec![
                message("{\"a\":1}"),
                SseFrame::Comment("keep-alive".into()),
                message("{\"b\":2}"),
            ]
        );
    }

    #[test]
    fn a_line_split_across_chunks_is_one_line() {
        let frames = feed_all(&[b"da", b"ta: {\"seq\":", b"1}", b"\n", b"\n"]);
        assert_eq!(frames, vec![message("{\"seq\":1}")]);
    }

    #[test]
    fn an_event_is_dispatched_only_by_its_blank_line() {
        let mut parser = SseParser::default();
        assert!(parser.feed(b"data: x\n").unwrap().is_empty());
        assert_eq!(parser.feed(b"\n").unwrap(), vec![message("x")]);
        // Cut off before its blank line: never dispatched.
        assert!(parser.feed(b"data: half").unwrap().is_empty());
    }

    #[test]
    fn crlf_split_between_chunks_is_one_line_break() {
        let frames = feed_all(&[b"data: a\r", b"\n\r", b"\ndata: b\r\r"]);
        assert_eq!(frames, vec![message("a"), message("b")]);
    }

    #[test]
    fn multi_line_data_event_types_and_ignored_fields() {
        let frames = feed_all(&[
            b"\xEF\xBB\xBFevent: lagged\nid: 7\nretry: 100\ndata: one\ndata:two\ndata\n\n",
        ]);
        assert_eq!(
            frames,
            vec![SseFrame::Message {
                event: Some("lagged".into()),
                data: "one\ntwo\n".into(),
            }]
        );
        // A blank line with no data dispatches nothing; a colon-less unknown field is ignored.
        assert!(feed_all(&[b"id: 3\n\nbogus\n\n"]).is_empty());
    }

    #[test]
    fn a_multibyte_character_split_across_chunks_survives() {
        let text = "data: caf\u{e9} \u{2603}\n\n".as_bytes();
        let (a, b) = text.split_at(10); // inside the two-byte é
        assert_eq!(feed_all(&[a, b]), vec![message("caf\u{e9} \u{2603}")]);
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut parser = SseParser::default();
        let chunk = vec![b'x'; 64 * 1024];
        let mut result = Ok(Vec::new());
        for _ in 0..=(MAX_SSE_LINE / chunk.len()) {
            result = parser.feed(&chunk);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(
            result.unwrap_err(),
            SseError::LineTooLong {
                limit: MAX_SSE_LINE
            }
        );
    }

    proptest! {
        #[test]
        fn chunk_boundaries_do_not_change_the_frames(
            cuts in proptest::collection::vec(0usize..200, 0..12),
            crlf in any::<bool>(),
        ) {
            let newline = if crlf { "\r\n" } else { "\n" };
            let stream = [
                "data: {\"seq\":1}", "", ": keep-alive", "", "data: {\"seq\":2,\"x\":\"\u{e9}\"}",
                "data: second line", "", "event: e", "data: 3", "",
            ]
            .join(newline);
            let stream = format!("{stream}{newline}").into_bytes();
            let whole = feed_all(&[&stream]);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut start = 0;
            for cut in cuts {
                chunks.push(&stream[start..cut]);
                start = cut;
            }
            chunks.push(&stream[start..]);
            prop_assert_eq!(feed_all(&chunks), whole.clone());
            prop_assert_eq!(whole.len(), 4);
        }
    }

    #[test]
    fn time_of_day_is_utc_with_milliseconds() {
        // 2024-01-02T12:03:04.512Z
        assert_eq!(time_of_day(1_704_196_984_512), "12:03:04.512");
        assert_eq!(time_of_day(0), "00:00:00.000");
    }

    #[test]
    fn every_event_renders_on_one_line_with_its_key_fields() {
        let peer = "12D3KooWGzh8Ju3mwdD8ZoJAn9Zu4N4jR7vm1Gxd7nrXKhXpUzfJ";
        let at = 1_704_196_984_512u64;
        let cases = [
            (
                serde_json::json!({"type":"peer_connected","peer_id":peer,"addr":"/ip4/127.0.0.1/tcp/4001","direction":"in"}),
                "12:03:04.512 peer connected      12D3Ko…XpUzfJ in /ip4/127.0.0.1/tcp/4001",
            ),
            (
                serde_json::json!({"type":"peer_disconnected","peer_id":peer,"cause":"connection reset"}),
                "12:03:04.512 peer disconnected   12D3Ko…XpUzfJ (connection reset)",
            ),
            (
                serde_json::json!({"type":"telemetry_received","origin":peer,"telemetry_seq":42,"latency_ms":12}),
                "12:03:04.512 telemetry           from 12D3Ko…XpUzfJ seq 42, 12 ms after it was sent",
            ),
            (
                serde_json::json!({"type":"telemetry_expired","origin":peer}),
                "12:03:04.512 telemetry expired   12D3Ko…XpUzfJ",
            ),
            (
                serde_json::json!({"type":"admission_refused","remote":"/ip4/10.0.0.9/tcp/5123","direction":"in","reason":"ticket_expired"}),
                "12:03:04.512 admission refused   /ip4/10.0.0.9/tcp/5123 in: ticket_expired",
            ),
            (
                serde_json::json!({"type":"admission_refused","remote":peer,"direction":"out","reason":"revoked"}),
                "12:03:04.512 admission refused   12D3Ko…XpUzfJ out: revoked",
            ),
            (
                serde_json::json!({"type":"revocation_applied","ticket_id":"ab12","disconnected":[peer]}),
                "12:03:04.512 revocation applied  ticket ab12, closed 12D3Ko…XpUzfJ",
            ),
            (
                serde_json::json!({"type":"revocation_applied","ticket_id":"ab12","disconnected":[]}),
                "12:03:04.512 revocation applied  ticket ab12, no connection closed",
            ),
            (
                serde_json::json!({"type":"lifecycle","from":"idle","to":"active","reason":"1 peer connected"}),
                "12:03:04.512 lifecycle           idle -> active (1 peer connected)",
            ),
            (
                serde_json::json!({"type":"power_mode","from":"normal","to":"saver","score":0.42,"reasons":["battery 15 %","discharging"]}),
                "12:03:04.512 power mode          normal -> saver, score 0.420 (battery 15 %; discharging)",
            ),
            (
                serde_json::json!({"type":"lagged","missed":37}),
                "12:03:04.512 LAGGED              37 events missed: this client read too slowly and the node dropped them",
            ),
            (
                serde_json::json!({"type":"task_started","task":"t1"}),
                "12:03:04.512 task_started        {\"task\":\"t1\"}",
            ),
        ];
        for (mut fields, expected) in cases {
            fields["seq"] = 5.into();
            fields["at_ms"] = at.into();
            assert_eq!(render_event(&fields.to_string()), expected);
        }
        assert_eq!(render_event("[1]"), "(not an event) [1]");
    }
}
