//! What the CLI prints: readable tables and one-line events.

use std::time::Duration;

use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};

use crate::runtime::events::{NodeEvent, StampedEvent};
use crate::runtime::status::{PeersResponse, StatusView};
use crate::telemetry::view::TelemetryResponse;
use fogmesh_device::{DeviceSummary, DeviceView};

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
pub fn render_cluster(view: &crate::cluster::service::ClusterView) -> String {
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
        for c in view.known_clusters.iter() {
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
pub fn render_task(t: &crate::cluster::service::TaskView) -> String {
    format!(
        "{}  {}{} ({}){}{}{}{}",
        t.id,
        t.state,
        // Heard from the task's cluster a while ago: say so, it may have moved on.
        match t.heard_ago_ms {
            Some(ms) if ms >= 5_000 => format!(" as of {} ago", age(ms)),
            _ => String::new(),
        },
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
pub fn render_tasks(tasks: &[crate::cluster::service::TaskView]) -> String {
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

fn render_version_value(v: &crate::kv::service::VersionView) -> String {
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
pub fn render_key_versions(view: &crate::kv::service::KeyView) -> String {
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
pub fn render_keys(keys: &[crate::kv::service::KeyView]) -> String {
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
    match describe(&stamped.event) {
        Some(what) => format!("{} {what}", time_of_day(stamped.at_ms)),
        None => render_unknown_event(json),
    }
}

/// What an event says, for the events this version knows.
fn describe(event: &NodeEvent) -> Option<String> {
    use crate::cluster::service::{ClusterChanged, TaskChanged};
    use crate::device::service::PowerModeChanged;
    use crate::kv::service::{KvChanged, KvConflict};
    use crate::relay::service::{MessageDelivered, MessageReceived};
    use crate::revocations::service::RevocationApplied;
    use crate::runtime::events::{
        AdmissionRefused, Lagged, Lifecycle, PeerConnected, PeerDisconnected,
    };
    use crate::telemetry::service::{TelemetryExpired, TelemetryReceived};

    if let Some(PeerConnected {
        peer_id,
        addr,
        direction,
    }) = event.decode()
    {
        return Some(format!(
            "peer connected      {} {direction} {addr}",
            short_id(&peer_id)
        ));
    }
    if let Some(PeerDisconnected { peer_id, cause }) = event.decode() {
        return Some(format!(
            "peer disconnected   {} ({cause})",
            short_id(&peer_id)
        ));
    }
    if let Some(TelemetryReceived {
        origin,
        seq,
        latency_ms,
    }) = event.decode()
    {
        return Some(format!(
            "telemetry           from {} seq {seq}, {latency_ms} ms after it was sent",
            short_id(&origin)
        ));
    }
    if let Some(TelemetryExpired { origin }) = event.decode() {
        return Some(format!("telemetry expired   {}", short_id(&origin)));
    }
    if let Some(AdmissionRefused {
        remote,
        direction,
        reason,
    }) = event.decode()
    {
        return Some(format!(
            "admission refused   {} {direction}: {reason}",
            peer_or_addr(&remote)
        ));
    }
    if let Some(RevocationApplied {
        ticket_id,
        disconnected,
    }) = event.decode()
    {
        let closed = if disconnected.is_empty() {
            "no connection closed".to_owned()
        } else {
            let peers: Vec<String> = disconnected.iter().map(|p| short_id(p)).collect();
            format!("closed {}", peers.join(", "))
        };
        return Some(format!("revocation applied  ticket {ticket_id}, {closed}"));
    }
    if let Some(Lifecycle { from, to, reason }) = event.decode() {
        return Some(format!("lifecycle           {from} -> {to} ({reason})"));
    }
    if let Some(PowerModeChanged {
        from,
        to,
        score,
        reasons,
    }) = event.decode()
    {
        return Some(format!(
            "power mode          {} -> {to}, score {score:.3} ({})",
            from.as_deref().unwrap_or("none"),
            reasons.join("; ")
        ));
    }
    if let Some(MessageReceived {
        id,
        from,
        app,
        hops,
        broadcast,
    }) = event.decode()
    {
        return Some(format!(
            "message received    {} from {} ({app}, {hops} hops{})",
            short_message_id(&id),
            short_id(&from),
            if broadcast { ", broadcast" } else { "" }
        ));
    }
    if let Some(MessageDelivered { id, to, after_ms }) = event.decode() {
        return Some(format!(
            "message delivered   {} to {} after {after_ms} ms",
            short_message_id(&id),
            short_id(&to)
        ));
    }
    if let Some(ClusterChanged {
        state,
        cluster,
        term,
        coordinator,
        members,
        reason,
    }) = event.decode()
    {
        return Some(format!(
            "cluster             {state} {} term {term}, coordinator {}, {members} members ({reason})",
            cluster.as_deref().unwrap_or("-"),
            coordinator.as_deref().map_or("none".to_string(), short_id)
        ));
    }
    if let Some(TaskChanged {
        id,
        state,
        node,
        cluster,
        detail,
    }) = event.decode()
    {
        return Some(format!(
            "task                {} {state}{}{}{}",
            short_message_id(&id),
            node.as_deref()
                .map_or(String::new(), |n| format!(" on {}", short_id(n))),
            cluster
                .as_deref()
                .map_or(String::new(), |c| format!(" in {c}")),
            detail
                .as_deref()
                .map_or(String::new(), |d| format!(": {d}"))
        ));
    }
    if let Some(KvChanged {
        namespace,
        key,
        deleted,
        value,
        value_len,
        author,
        via,
        ..
    }) = event.decode()
    {
        return Some(format!(
            "kv changed          {namespace}/{key} {} by {} ({via})",
            if deleted {
                "deleted".to_string()
            } else {
                value
                    .as_deref()
                    .map_or(format!("= <{value_len} bytes>"), |v| format!("= {v:?}"))
            },
            short_id(&author)
        ));
    }
    if let Some(KvConflict {
        namespace,
        key,
        kept,
        overwritten,
    }) = event.decode()
    {
        return Some(format!(
            "kv conflict         {namespace}/{key}: kept {}'s, overwrote {}'s",
            short_id(&kept),
            short_id(&overwritten)
        ));
    }
    if let Some(Lagged { missed }) = event.decode() {
        return Some(format!(
            "LAGGED              {missed} events missed: this client read too slowly and the node dropped them"
        ));
    }
    None
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
                age(crate::runtime::clock::system_wall_ms().saturating_sub(s.phase_since_ms)),
                s.phase_reason
            ),
        ),
        // From the same clock as the phase's age, so the two agree.
        (
            "uptime",
            age(crate::runtime::clock::system_wall_ms().saturating_sub(s.started_at_ms)),
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
        ("clock", clock_line(s)),
        ("mesh", mesh_line(s)),
        ("handshakes", handshake_line(s)),
        ("reach", reach_line(s)),
    ];
    for (k, v) in rows {
        t.add_row(vec![k.to_owned(), v]);
    }
    t.to_string()
}

/// Reachability with its evidence, relay slots, and what this node relays for others.
fn reach_line(s: &StatusView) -> String {
    let r = &s.reach;
    if r.reachability.is_empty() || r.reachability == "off" {
        return "NAT traversal off".into();
    }
    let mut lines = vec![r.reachability.clone()];
    for a in &r.addresses {
        lines.push(format!(
            "{} {} ({} {} {} ago{})",
            a.addr,
            a.verdict,
            if a.evidence.is_empty() || a.evidence == "dial-back" {
                "dial-back by".to_owned()
            } else {
                format!("{}, last", a.evidence)
            },
            short_id(&a.server),
            age(a.age_ms),
            a.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ));
    }
    for slot in &r.reservations {
        lines.push(format!(
            "relay slot on {} ({}): {}",
            short_id(&slot.relay),
            slot.state,
            slot.addr
        ));
    }
    lines.push(format!(
        "relays for others: {}{}; hole punches {} direct / {} failed",
        if r.relay_service { "yes" } else { "no" },
        if r.relay_service || r.relaying_circuits > 0 {
            format!(
                " ({}, {})",
                plural(r.relaying_reservations, "slot", "slots"),
                plural(r.relaying_circuits, "circuit", "circuits")
            )
        } else {
            String::new()
        },
        r.hole_punches_ok,
        r.hole_punches_failed
    ));
    lines.join("\n")
}

/// How far this node's clock is from the mesh's, and the peer furthest from it.
fn clock_line(s: &StatusView) -> String {
    let m = &s.mesh_clock;
    if m.peers == 0 {
        return "no peer heard yet: own clock".into();
    }
    let direction = match m.offset_ms {
        0 => "on mesh time".to_owned(),
        o if o < 0 => format!("{} ahead of the mesh", signed_ms(-o)),
        o => format!("{} behind the mesh", signed_ms(o)),
    };
    let furthest = m
        .furthest
        .first()
        .map(|p| {
            format!(
                "; furthest peer {} {}",
                short_id(&p.peer_id),
                offset_text(p.offset_ms)
            )
        })
        .unwrap_or_default();
    format!(
        "{direction}{} (from {}){furthest}",
        if m.clamped {
            ", correction clamped at 10 min"
        } else {
            ""
        },
        plural(m.peers as u64, "peer", "peers")
    )
}

/// "1.2 s", "350 ms".
fn signed_ms(ms: i64) -> String {
    if ms.abs() >= 1000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{ms} ms")
    }
}

/// A peer's clock relative to ours: "+90.0 s", "-350 ms".
fn offset_text(ms: i64) -> String {
    if ms >= 0 {
        format!("+{}", signed_ms(ms))
    } else {
        format!("-{}", signed_ms(-ms))
    }
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
        "path",
        "rtt",
        "clock",
        "device",
        "mode",
        "score",
        "last seen",
    ]);
    let now = crate::runtime::clock::system_wall_ms();
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
            match (&peer.path, &peer.via) {
                (Some(path), Some(via)) if path == "direct" => format!("direct ({via})"),
                (Some(path), _) => path.clone(),
                _ => String::new(),
            },
            peer.rtt_ms
                .map(|r| format!("{r:.1} ms"))
                .unwrap_or_default(),
            peer.clock_offset_ms.map(offset_text).unwrap_or_default(),
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
