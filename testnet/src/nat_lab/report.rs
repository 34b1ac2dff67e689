//! The lab's report: for every pair of nodes with at least one NATed node, whether they are
//! connected, over which path, how the connection came about and how long it took to become
//! direct; then the same per pair of NAT kinds. Built from what each node answers to
//! `fogmesh status --json` and `fogmesh peers --json` (pure, so it is tested with fixtures).
//!
//! The NAT fields of the node's answers (`path`, `via`, `direct_after_ms`, `reach`) are
//! optional: a node that does not report them still gives a report, with those columns
//! empty (and `path` read from the connection's address, see [`SideView::effective_path`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use serde::{Deserialize, Serialize};

use crate::bench::percentile;
use crate::state::{LabRecord, NodeKind};

/// How a connection carries its bytes, as the node says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    Direct,
    /// Through a circuit relay (`/p2p-circuit`).
    Relayed,
    /// A value this version does not know.
    #[serde(other)]
    Other,
}

/// How this node's first direct connection with the peer came about, as the node says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    Dialled,
    Accepted,
    HolePunched,
    /// A relayed connection: it came about through the relay.
    Relay,
    #[serde(other)]
    Other,
}

/// One row of `fogmesh peers --json`, the fields the lab reads.
#[derive(Debug, Clone, Deserialize)]
pub struct PeerProbe {
    pub peer_id: String,
    #[serde(default)]
    pub connected: bool,
    #[serde(default)]
    pub connection_addr: Option<String>,
    #[serde(default)]
    pub path: Option<PathKind>,
    #[serde(default)]
    pub via: Option<Via>,
    #[serde(default)]
    pub direct_after_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PeersProbe {
    #[serde(default)]
    pub peers: Vec<PeerProbe>,
}

/// `fogmesh status --json`, the fields the lab reads.
#[derive(Debug, Clone, Deserialize)]
pub struct LabStatusProbe {
    pub peer_id: String,
    pub phase: String,
    pub connected_peers: usize,
    #[serde(default)]
    pub listen_addrs: Vec<String>,
    /// What the node knows about its own reachability; shown as the node gives it.
    #[serde(default)]
    pub reach: Option<serde_json::Value>,
}

/// What one node answered (either may be missing: the node did not answer).
#[derive(Debug, Clone, Default)]
pub struct NodeAnswers {
    pub status: Option<LabStatusProbe>,
    pub peers: Option<PeersProbe>,
    pub pid: Option<u32>,
    pub alive: bool,
}

/// One node in the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeReport {
    pub index: usize,
    pub kind: NodeKind,
    pub namespace: String,
    pub addr: Ipv4Addr,
    /// The address the lab's internet sees the node as.
    pub external: Ipv4Addr,
    pub peer_id: String,
    pub pid: Option<u32>,
    pub alive: bool,
    pub answering: bool,
    pub phase: Option<String>,
    pub connected_peers: Option<usize>,
    #[serde(default)]
    pub reach: Option<serde_json::Value>,
}

/// What one side of a pair says about the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SideView {
    pub connected: bool,
    pub addr: Option<String>,
    pub path: Option<PathKind>,
    pub via: Option<Via>,
    pub direct_after_ms: Option<u64>,
}

impl SideView {
    /// The path as the node says it, or, from a node that does not say, as its connection's
    /// address shows it (a relayed connection's address holds `/p2p-circuit`). The flag is
    /// true when read from the address.
    pub fn effective_path(&self) -> Option<(PathKind, bool)> {
        if !self.connected {
            return None;
        }
        if let Some(path) = self.path {
            return Some((path, false));
        }
        let addr = self.addr.as_deref()?;
        Some(if addr.contains("/p2p-circuit") {
            (PathKind::Relayed, true)
        } else {
            (PathKind::Direct, true)
        })
    }
}

/// How the pair's connection came about, from `a`'s side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PairVia {
    /// `a` dialled `b` (and `b` accepted).
    ADialled,
    BDialled,
    HolePunched,
    /// Through a circuit relay.
    Relay,
    Other,
}

/// One pair of nodes, `a < b`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairReport {
    pub a: usize,
    pub b: usize,
    pub a_kind: NodeKind,
    pub b_kind: NodeKind,
    /// Either side holds a connection to the other.
    pub connected: bool,
    /// `direct` if either side holds a direct connection, else `relayed` if either holds a
    /// relayed one.
    pub path: Option<PathKind>,
    /// True when no connected side said its path and it was read from the address.
    #[serde(default)]
    pub path_inferred: bool,
    /// `hole-punched` if either side says so; else `a`'s word (`dialled`: a dialled b), else
    /// `b`'s turned round.
    pub via: Option<PairVia>,
    /// The larger of the two sides' figures: by then both held a direct connection.
    pub direct_after_ms: Option<u64>,
    pub a_sees: Option<SideView>,
    pub b_sees: Option<SideView>,
}

/// The pairs of one pair of kinds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KindPairSummary {
    pub a: NodeKind,
    pub b: NodeKind,
    pub pairs: usize,
    pub connected: usize,
    pub direct: usize,
    pub hole_punched: usize,
    pub connected_share: f64,
    pub direct_share: f64,
    /// Over the pairs with a `direct_after_ms` (nearest-rank percentiles).
    pub direct_after_p50_ms: Option<u64>,
    pub direct_after_p99_ms: Option<u64>,
}

/// How the wait for the lab to settle ended (`testnet up --nat lab` only).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SettleOutcome {
    /// Every pair connected and nothing changed for the quiet period (or nothing could).
    pub settled: bool,
    /// From the first node's start until the report.
    pub after_ms: u64,
    pub bound_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabReport {
    pub dir: PathBuf,
    pub lab_id: String,
    pub layout: String,
    pub at_ms: u64,
    #[serde(default)]
    pub settle: Option<SettleOutcome>,
    pub nodes: Vec<NodeReport>,
    pub pairs: Vec<PairReport>,
    pub kinds: Vec<KindPairSummary>,
}

impl LabReport {
    pub fn pair(&self, a: usize, b: usize) -> Option<&PairReport> {
        let (a, b) = (a.min(b), a.max(b));
        self.pairs.iter().find(|p| p.a == a && p.b == b)
    }

    /// Pairs connected, direct, relayed.
    pub fn counts(&self) -> (usize, usize, usize) {
        let connected = self.pairs.iter().filter(|p| p.connected).count();
        let direct = self
            .pairs
            .iter()
            .filter(|p| p.path == Some(PathKind::Direct))
            .count();
        let relayed = self
            .pairs
            .iter()
            .filter(|p| p.path == Some(PathKind::Relayed))
            .count();
        (connected, direct, relayed)
    }
}

fn side_view(answers: &NodeAnswers, peer_id: &str) -> Option<SideView> {
    let peers = answers.peers.as_ref()?;
    let row = peers.peers.iter().find(|p| p.peer_id == peer_id);
    Some(match row {
        Some(p) => SideView {
            connected: p.connected,
            addr: p.connection_addr.clone(),
            path: p.path,
            via: p.via,
            direct_after_ms: p.direct_after_ms,
        },
        // Answered, but does not know the peer at all.
        None => SideView {
            connected: false,
            addr: None,
            path: None,
            via: None,
            direct_after_ms: None,
        },
    })
}

fn pair_report(lab: &LabRecord, answers: &[NodeAnswers], a: usize, b: usize) -> PairReport {
    let (na, nb) = (&lab.nodes[a], &lab.nodes[b]);
    let a_sees = answers.get(a).and_then(|x| side_view(x, &nb.peer_id));
    let b_sees = answers.get(b).and_then(|x| side_view(x, &na.peer_id));
    let sides: Vec<&SideView> = [&a_sees, &b_sees]
        .into_iter()
        .flatten()
        .filter(|s| s.connected)
        .collect();
    let paths: Vec<(PathKind, bool)> = sides.iter().filter_map(|s| s.effective_path()).collect();
    let pick = |kind: PathKind| {
        let of_kind: Vec<bool> = paths
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, inferred)| *inferred)
            .collect();
        (!of_kind.is_empty()).then(|| (kind, of_kind.iter().all(|i| *i)))
    };
    let path = pick(PathKind::Direct)
        .or_else(|| pick(PathKind::Relayed))
        .or_else(|| pick(PathKind::Other));
    let said = |side: &Option<SideView>| side.as_ref().filter(|s| s.connected).and_then(|s| s.via);
    let (via_a, via_b) = (said(&a_sees), said(&b_sees));
    let via = if via_a == Some(Via::HolePunched) || via_b == Some(Via::HolePunched) {
        Some(PairVia::HolePunched)
    } else {
        let from_a = via_a.map(|v| match v {
            Via::Dialled => PairVia::ADialled,
            Via::Accepted => PairVia::BDialled,
            Via::HolePunched => PairVia::HolePunched,
            Via::Relay => PairVia::Relay,
            Via::Other => PairVia::Other,
        });
        let from_b = via_b.map(|v| match v {
            Via::Dialled => PairVia::BDialled,
            Via::Accepted => PairVia::ADialled,
            Via::HolePunched => PairVia::HolePunched,
            Via::Relay => PairVia::Relay,
            Via::Other => PairVia::Other,
        });
        from_a.or(from_b)
    };
    let direct_after_ms = sides.iter().filter_map(|s| s.direct_after_ms).max();
    PairReport {
        a,
        b,
        a_kind: na.kind,
        b_kind: nb.kind,
        connected: !sides.is_empty(),
        path: path.map(|(k, _)| k),
        path_inferred: path.is_some_and(|(_, inferred)| inferred),
        via,
        direct_after_ms,
        a_sees,
        b_sees,
    }
}

fn kind_order(a: NodeKind, b: NodeKind) -> (NodeKind, NodeKind) {
    (a.min(b), a.max(b))
}

/// The pairs (every pair with at least one NATed node) and their summary per kind pair.
pub fn assemble(
    lab: &LabRecord,
    answers: &[NodeAnswers],
) -> (Vec<PairReport>, Vec<KindPairSummary>) {
    let mut pairs = Vec::new();
    for a in 0..lab.nodes.len() {
        for b in a + 1..lab.nodes.len() {
            if lab.nodes[a].kind.is_nated() || lab.nodes[b].kind.is_nated() {
                pairs.push(pair_report(lab, answers, a, b));
            }
        }
    }
    let mut groups: BTreeMap<(NodeKind, NodeKind), Vec<&PairReport>> = BTreeMap::new();
    for pair in &pairs {
        groups
            .entry(kind_order(pair.a_kind, pair.b_kind))
            .or_default()
            .push(pair);
    }
    let kinds = groups
        .into_iter()
        .map(|((a, b), group)| {
            let n = group.len();
            let connected = group.iter().filter(|p| p.connected).count();
            let direct = group
                .iter()
                .filter(|p| p.path == Some(PathKind::Direct))
                .count();
            let hole_punched = group
                .iter()
                .filter(|p| p.via == Some(PairVia::HolePunched))
                .count();
            let mut times: Vec<u64> = group.iter().filter_map(|p| p.direct_after_ms).collect();
            times.sort_unstable();
            let share = |k: usize| if n == 0 { 0.0 } else { k as f64 / n as f64 };
            KindPairSummary {
                a,
                b,
                pairs: n,
                connected,
                direct,
                hole_punched,
                connected_share: share(connected),
                direct_share: share(direct),
                direct_after_p50_ms: percentile(&times, 50.0),
                direct_after_p99_ms: percentile(&times, 99.0),
            }
        })
        .collect();
    (pairs, kinds)
}

/// The per-node part of the report.
pub fn node_reports(lab: &LabRecord, answers: &[NodeAnswers]) -> Vec<NodeReport> {
    lab.nodes
        .iter()
        .map(|n| {
            let a = answers.get(n.index).cloned().unwrap_or_default();
            NodeReport {
                index: n.index,
                kind: n.kind,
                namespace: n.namespace.clone(),
                addr: n.addr,
                external: n.external,
                peer_id: n.peer_id.clone(),
                pid: a.pid,
                alive: a.alive,
                answering: a.status.is_some(),
                phase: a.status.as_ref().map(|s| s.phase.clone()),
                connected_peers: a.status.as_ref().map(|s| s.connected_peers),
                reach: a.status.and_then(|s| s.reach),
            }
        })
        .collect()
}

/// `reach` in one line: `reachability` first, then plain values as `key=value`, lists as
/// their length; addresses the node had confirmed public (`addresses[].verdict`) last,
/// since they say where the internet reaches it. The full object is in `--json`.
fn render_reach(reach: &serde_json::Value) -> String {
    use serde_json::Value;
    let Value::Object(fields) = reach else {
        return reach.to_string();
    };
    let mut parts = Vec::new();
    let mut ordered: Vec<(&String, &Value)> = fields.iter().collect();
    ordered.sort_by_key(|(k, _)| (k.as_str() != "reachability", k.as_str()));
    for (key, value) in ordered {
        parts.push(match value {
            Value::String(s) => format!("{key}={s}"),
            Value::Array(items) => format!("{key}={}", items.len()),
            Value::Object(_) => format!("{key}={{..}}"),
            other => format!("{key}={other}"),
        });
    }
    let confirmed: Vec<&str> = fields
        .get("addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|a| a.get("verdict").and_then(Value::as_str) == Some("public"))
        .filter_map(|a| a.get("addr").and_then(Value::as_str))
        .collect();
    if !confirmed.is_empty() {
        parts.push(format!("confirmed={}", confirmed.join(",")));
    }
    parts.join(" ")
}

fn ms(value: Option<u64>) -> String {
    value.map(|v| format!("{v} ms")).unwrap_or_default()
}

fn percent(share: f64) -> String {
    format!("{:.0} %", share * 100.0)
}

fn path_name(path: Option<PathKind>) -> &'static str {
    match path {
        Some(PathKind::Direct) => "direct",
        Some(PathKind::Relayed) => "relayed",
        Some(PathKind::Other) => "other",
        None => "",
    }
}

pub fn render(report: &LabReport) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "NAT lab {} ({}) in {}\n",
        report.lab_id,
        report.layout,
        report.dir.display()
    ));

    let mut nodes = Table::new();
    nodes.load_preset(UTF8_BORDERS_ONLY);
    nodes.set_header(vec![
        "#",
        "kind",
        "namespace",
        "address",
        "seen as",
        "pid",
        "phase",
        "peers",
        "reach",
    ]);
    for n in &report.nodes {
        nodes.add_row(vec![
            n.index.to_string(),
            n.kind.to_string(),
            n.namespace.clone(),
            n.addr.to_string(),
            n.external.to_string(),
            match (n.pid, n.alive) {
                (Some(pid), true) => pid.to_string(),
                _ => "stopped".into(),
            },
            n.phase.clone().unwrap_or_else(|| {
                if n.alive {
                    "not answering".into()
                } else {
                    String::new()
                }
            }),
            n.connected_peers.map(|c| c.to_string()).unwrap_or_default(),
            n.reach.as_ref().map(render_reach).unwrap_or_default(),
        ]);
    }
    out.push_str(&nodes.to_string());
    out.push('\n');

    let mut pairs = Table::new();
    pairs.load_preset(UTF8_BORDERS_ONLY);
    pairs.set_header(vec![
        "a",
        "b",
        "kinds",
        "connected",
        "path",
        "via",
        "direct after",
    ]);
    let mut any_inferred = false;
    for p in &report.pairs {
        any_inferred |= p.path_inferred;
        pairs.add_row(vec![
            p.a.to_string(),
            p.b.to_string(),
            format!("{} / {}", p.a_kind, p.b_kind),
            if p.connected { "yes" } else { "no" }.to_owned(),
            format!(
                "{}{}",
                path_name(p.path),
                if p.path_inferred { "*" } else { "" }
            ),
            match p.via {
                Some(PairVia::ADialled) => format!("{} dialled {}", p.a, p.b),
                Some(PairVia::BDialled) => format!("{} dialled {}", p.b, p.a),
                Some(PairVia::HolePunched) => "hole-punched".into(),
                Some(PairVia::Relay) => "relay".into(),
                Some(PairVia::Other) => "other".into(),
                None => String::new(),
            },
            ms(p.direct_after_ms),
        ]);
    }
    out.push_str(&pairs.to_string());
    out.push('\n');

    let mut kinds = Table::new();
    kinds.load_preset(UTF8_BORDERS_ONLY);
    kinds.set_header(vec![
        "kinds",
        "pairs",
        "connected",
        "direct",
        "hole-punched",
        "direct after p50",
        "p99",
    ]);
    for k in &report.kinds {
        kinds.add_row(vec![
            format!("{} / {}", k.a, k.b),
            k.pairs.to_string(),
            percent(k.connected_share),
            percent(k.direct_share),
            k.hole_punched.to_string(),
            ms(k.direct_after_p50_ms),
            ms(k.direct_after_p99_ms),
        ]);
    }
    out.push_str(&kinds.to_string());
    let (connected, direct, relayed) = report.counts();
    out.push_str(&format!(
        "\n{connected}/{} pairs connected: {direct} direct, {relayed} relayed",
        report.pairs.len()
    ));
    if let Some(settle) = &report.settle {
        out.push_str(&format!(
            "; {} after {:.1}s (bound {:.0}s)",
            if settle.settled {
                "settled"
            } else {
                "NOT settled"
            },
            settle.after_ms as f64 / 1000.0,
            settle.bound_ms as f64 / 1000.0
        ));
    }
    if any_inferred {
        out.push_str("\n* the node does not report its path; read from the connection's address");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::LabNodeRecord;

    fn lab(kinds: &[NodeKind]) -> LabRecord {
        LabRecord {
            id: "t".into(),
            nodes: kinds
                .iter()
                .enumerate()
                .map(|(i, kind)| LabNodeRecord {
                    index: i,
                    kind: *kind,
                    namespace: format!("fmlab-t-{i}"),
                    router: None,
                    addr: Ipv4Addr::new(10, i as u8 + 1, 0, 2),
                    external: Ipv4Addr::new(198, 18, 0, 100 + i as u8),
                    peer_id: format!("peer{i}"),
                })
                .collect(),
            ..LabRecord::default()
        }
    }

    fn answers(json: &[&str]) -> Vec<NodeAnswers> {
        json.iter()
            .map(|peers| NodeAnswers {
                peers: serde_json::from_str(peers).unwrap(),
                alive: true,
                ..NodeAnswers::default()
            })
            .collect()
    }

    #[test]
    fn peers_without_nat_fields_still_parse() {
        // What `fogmesh peers --json` printed before the NAT fields existed.
        let old = r#"{"peers":[{"peer_id":"p","connected":true,"connection_addr":"/ip4/198.18.0.10/tcp/4747",
            "direction":"outbound","rtt_ms":0.4,"agent":null,"known_addrs":[],"last_seen_ms":1,"device":null}]}"#;
        let parsed: PeersProbe = serde_json::from_str(old).unwrap();
        assert_eq!(parsed.peers[0].path, None);
        assert_eq!(parsed.peers[0].direct_after_ms, None);
        let new = r#"{"peers":[{"peer_id":"p","connected":true,"path":"relayed","via":"hole-punched",
            "direct_after_ms":null},{"peer_id":"q","connected":true,"path":"carrier-pigeon","via":"teleported"}]}"#;
        let parsed: PeersProbe = serde_json::from_str(new).unwrap();
        assert_eq!(parsed.peers[0].path, Some(PathKind::Relayed));
        assert_eq!(parsed.peers[0].via, Some(Via::HolePunched));
        assert_eq!(parsed.peers[1].path, Some(PathKind::Other));
        assert_eq!(parsed.peers[1].via, Some(Via::Other));
        let status: LabStatusProbe = serde_json::from_str(
            r#"{"peer_id":"p","phase":"running","connected_peers":2,"reach":{"relay_service":false,
                "reachability":"public","reservations":[],"addresses":[
                {"addr":"/ip4/198.18.0.102/tcp/4747","verdict":"public"},{"addr":"/p2p/x","verdict":"private"}]}}"#,
        )
        .unwrap();
        assert_eq!(
            render_reach(&status.reach.unwrap()),
            "reachability=public addresses=2 relay_service=false reservations=0 \
             confirmed=/ip4/198.18.0.102/tcp/4747"
        );
    }

    #[test]
    fn pairs_combine_both_sides() {
        use NodeKind::*;
        let lab = lab(&[Public, PortRestricted, PortRestricted, Symmetric]);
        let answers = answers(&[
            // 0: connected to everyone, old node (no NAT fields).
            r#"{"peers":[{"peer_id":"peer1","connected":true,"connection_addr":"/ip4/198.18.0.101/tcp/4747"},
                         {"peer_id":"peer2","connected":true,"connection_addr":"/ip4/198.18.0.102/tcp/4747"},
                         {"peer_id":"peer3","connected":true,"connection_addr":"/ip4/198.18.0.103/tcp/3333"}]}"#,
            // 1: punched to 2 after 900 ms, relayed to 3.
            r#"{"peers":[{"peer_id":"peer0","connected":true,"path":"direct","via":"dialled"},
                         {"peer_id":"peer2","connected":true,"path":"direct","via":"hole-punched","direct_after_ms":900},
                         {"peer_id":"peer3","connected":true,"path":"relayed","via":"relay"}]}"#,
            r#"{"peers":[{"peer_id":"peer0","connected":true,"path":"direct","via":"dialled"},
                         {"peer_id":"peer1","connected":true,"path":"direct","via":"hole-punched","direct_after_ms":1100}]}"#,
            // 3: does not answer.
            "null",
        ]);
        let (pairs, kinds) = assemble(&lab, &answers);
        // Every pair but none (all have a NATed node): 6 pairs.
        assert_eq!(pairs.len(), 6);
        let p = |a: usize, b: usize| pairs.iter().find(|p| p.a == a && p.b == b).unwrap();
        // 0-1: 0 infers direct from its address, 1 says direct and that it dialled.
        assert_eq!(p(0, 1).path, Some(PathKind::Direct));
        assert!(!p(0, 1).path_inferred);
        assert_eq!(p(0, 1).via, Some(PairVia::BDialled));
        assert_eq!(p(1, 2).via, Some(PairVia::HolePunched));
        assert_eq!(p(1, 2).direct_after_ms, Some(1100));
        assert_eq!(p(1, 3).path, Some(PathKind::Relayed));
        assert_eq!(p(1, 3).via, Some(PairVia::Relay));
        assert!(p(1, 3).b_sees.is_none(), "3 did not answer");
        // 0-3: only 0's view, inferred.
        assert!(p(0, 3).connected && p(0, 3).path_inferred);
        assert!(!p(2, 3).connected);
        let pr = kinds
            .iter()
            .find(|k| (k.a, k.b) == (PortRestricted, PortRestricted))
            .unwrap();
        assert_eq!((pr.pairs, pr.direct, pr.hole_punched), (1, 1, 1));
        assert_eq!(pr.direct_after_p50_ms, Some(1100));
        let sym = kinds
            .iter()
            .find(|k| (k.a, k.b) == (PortRestricted, Symmetric))
            .unwrap();
        assert_eq!((sym.pairs, sym.connected, sym.direct), (2, 1, 0));
        assert_eq!(sym.connected_share, 0.5);
        let text = render(&LabReport {
            dir: "/tmp/lab".into(),
            lab_id: "t".into(),
            layout: "public=1".into(),
            at_ms: 0,
            settle: None,
            nodes: node_reports(&lab, &answers),
            pairs: pairs.clone(),
            kinds: kinds.clone(),
        });
        assert!(text.contains("hole-punched"), "{text}");
        assert!(
            text.contains("2 dialled 0") || text.contains("1 dialled 0"),
            "{text}"
        );
    }
}
