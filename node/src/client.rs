//! The CLI side of the control API: find a node, ask it, print readable tables.

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

    /// Hands a revocation to the node, which applies, stores and gossips it.
    pub async fn submit_revocation(
        &self,
        revocation: Vec<u8>,
    ) -> Result<RevocationOutcome, ClientError> {
        let path = "/v1/revocations";
        let unreachable = |e: reqwest::Error| self.unreachable(e);
        let response = self
            .http
            .post(format!("http://{}{}", self.addr, path))
            .body(revocation)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        if status.is_success() {
            return response.json().await.map_err(unreachable);
        }
        let reason = response
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_owned));
        match reason {
            Some(reason) if status.is_client_error() => Err(ClientError::Refused(reason)),
            _ => Err(ClientError::Status {
                addr: self.addr,
                path: path.to_owned(),
                status: status.as_u16(),
            }),
        }
    }
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
                "{} ({} stale), every {}, {}, {} accepted",
                plural(s.telemetry_nodes as u64, "node", "nodes"),
                s.stale_nodes,
                humantime::format_duration(Duration::from_millis(s.telemetry_interval_ms)),
                published_text(s),
                s.telemetry_accepted
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
