//! The lab's network: which namespaces, links, addresses and NAT rules, as a plan of steps
//! (pure, so it is tested without root), and the runner that carries a plan out.
//!
//! ```text
//!                      fmlab-<id>-inet: bridge br0 = "the internet", 198.18.0.0/24
//!        ┌──────────────┬──────────┴───┬─────────────────────┐
//!   fmlab-<id>-pub0  fmlab-<id>-pub1  fmlab-<id>-rtr0 (wan 198.18.0.100, NAT)   ...
//!   198.18.0.10      198.18.0.11        │ lan 10.1.0.1
//!                                     fmlab-<id>-nat0: 10.1.0.2, default via 10.1.0.1
//! ```

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::netns::{self, Tools};
use crate::state::NodeKind;
use crate::NatLabError;

/// The lab's internet: 198.18.0.0/24, from the benchmarking range of RFC 2544. It is not
/// private (RFC 1918) space, so a node classifies these addresses as public, and it is never
/// routed on the real internet, so nothing in the lab can be mistaken for a real host.
pub const INET_PREFIX: [u8; 3] = [198, 18, 0];
pub const INET_PREFIX_LEN: u8 = 24;
/// Public node `i` is 198.18.0.(10 + i); router `k`'s outside address is 198.18.0.(100 + k).
pub const PUBLIC_BASE: u8 = 10;
pub const ROUTER_BASE: u8 = 100;
/// Most public nodes: their addresses must stay below the routers'.
pub const MAX_PUBLIC: usize = (ROUTER_BASE - PUBLIC_BASE) as usize;
/// Most NATed nodes: router addresses up to 198.18.0.254.
pub const MAX_NATED: usize = (255 - ROUTER_BASE as usize) - 1;

/// Which nodes a lab has: public ones, and NATed ones of each kind. Written (and parsed) as
/// `public=2,port-restricted=2,full-cone=1,symmetric=2`; kinds left out have none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub public: usize,
    /// The NATed nodes' kinds, in node order (each gets a router of its own).
    pub nated: Vec<NodeKind>,
}

impl Default for Layout {
    /// 2 public nodes; 2 behind port-restricted NATs, 1 full-cone, 2 symmetric.
    fn default() -> Self {
        Layout {
            public: 2,
            nated: vec![
                NodeKind::PortRestricted,
                NodeKind::PortRestricted,
                NodeKind::FullCone,
                NodeKind::Symmetric,
                NodeKind::Symmetric,
            ],
        }
    }
}

impl Layout {
    /// Every node's kind, in node order: public nodes first.
    pub fn kinds(&self) -> Vec<NodeKind> {
        let mut kinds = vec![NodeKind::Public; self.public];
        kinds.extend(&self.nated);
        kinds
    }
}

impl fmt::Display for Layout {
    /// In node order, so it parses back to the same numbering.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "public={}", self.public)?;
        let mut runs: Vec<(NodeKind, usize)> = Vec::new();
        for kind in &self.nated {
            match runs.last_mut() {
                Some((last, n)) if last == kind => *n += 1,
                _ => runs.push((*kind, 1)),
            }
        }
        for (kind, n) in runs {
            write!(f, ",{}={n}", kind.name())?;
        }
        Ok(())
    }
}

impl FromStr for Layout {
    type Err = NatLabError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| NatLabError::BadLayout {
            layout: text.to_owned(),
            reason,
        };
        let mut counts: Vec<(NodeKind, usize)> = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, count) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("{part:?} is not kind=count")))?;
            let kind = NodeKind::from_name(name.trim()).ok_or_else(|| {
                bad(format!(
                    "unknown kind {name:?} (kinds: public, port-restricted, full-cone, symmetric)"
                ))
            })?;
            let count: usize = count
                .trim()
                .parse()
                .map_err(|e| bad(format!("{part:?}: {e}")))?;
            if counts.iter().any(|(k, _)| *k == kind) {
                return Err(bad(format!("{} given twice", kind.name())));
            }
            counts.push((kind, count));
        }
        let public = counts
            .iter()
            .find(|(k, _)| *k == NodeKind::Public)
            .map(|(_, n)| *n)
            .unwrap_or(0);
        if public == 0 {
            return Err(bad(
                "a lab needs at least one public node (node 0 bootstraps every other)".into(),
            ));
        }
        if public > MAX_PUBLIC {
            return Err(bad(format!("at most {MAX_PUBLIC} public nodes")));
        }
        let nated: Vec<NodeKind> = counts
            .iter()
            .filter(|(k, _)| k.is_nated())
            .flat_map(|(k, n)| std::iter::repeat_n(*k, *n))
            .collect();
        if nated.len() > MAX_NATED {
            return Err(bad(format!("at most {MAX_NATED} NATed nodes")));
        }
        Ok(Layout { public, nated })
    }
}

/// One node's place in the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub index: usize,
    pub kind: NodeKind,
    /// Where the node runs.
    pub namespace: String,
    /// NATed nodes: the router's namespace and the router's number `k`.
    pub router: Option<(String, usize)>,
    pub addr: Ipv4Addr,
    pub external: Ipv4Addr,
}

/// The lab's whole network, before anything exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub id: String,
    pub inet: String,
    pub nodes: Vec<Placement>,
}

fn inet_addr(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(INET_PREFIX[0], INET_PREFIX[1], INET_PREFIX[2], last)
}

/// Router `k`'s inside subnet is 10.(k + 1).0.0/24: the router is .1, the host .2.
fn lan_addr(k: usize, last: u8) -> Ipv4Addr {
    // Bounded by MAX_NATED, so k + 1 <= 154.
    Ipv4Addr::new(10, (k + 1) as u8, 0, last)
}

/// The prefix of every namespace of lab `id`.
pub fn namespace_prefix(id: &str) -> String {
    format!("fmlab-{id}-")
}

impl Plan {
    pub fn new(id: &str, layout: &Layout) -> Plan {
        let prefix = namespace_prefix(id);
        let mut nodes = Vec::new();
        for i in 0..layout.public {
            let addr = inet_addr(PUBLIC_BASE + i as u8);
            nodes.push(Placement {
                index: nodes.len(),
                kind: NodeKind::Public,
                namespace: format!("{prefix}pub{i}"),
                router: None,
                addr,
                external: addr,
            });
        }
        for (k, kind) in layout.nated.iter().enumerate() {
            nodes.push(Placement {
                index: nodes.len(),
                kind: *kind,
                namespace: format!("{prefix}nat{k}"),
                router: Some((format!("{prefix}rtr{k}"), k)),
                addr: lan_addr(k, 2),
                external: inet_addr(ROUTER_BASE + k as u8),
            });
        }
        Plan {
            id: id.to_owned(),
            inet: format!("{prefix}inet"),
            nodes,
        }
    }

    /// The steps that build the lab, in order. `rules_dir` is where each router's nftables
    /// ruleset is written (and kept, to be read) before it is loaded.
    pub fn steps(&self, tools: &Tools, rules_dir: &Path) -> Vec<Step> {
        let ip = |args: &[&str]| Step::Run {
            program: tools.ip.clone(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        };
        let inet = self.inet.as_str();
        let mut steps = vec![
            Step::AddNamespace(self.inet.clone()),
            ip(&["-n", inet, "link", "add", "br0", "type", "bridge"]),
            ip(&["-n", inet, "link", "set", "br0", "up"]),
        ];
        let cidr = |addr: Ipv4Addr| format!("{addr}/{INET_PREFIX_LEN}");
        for node in &self.nodes {
            let ns = node.namespace.as_str();
            match &node.router {
                None => {
                    // A public node: one veth, its own end straight on the bridge.
                    let port = format!("p{}", node.index);
                    steps.push(Step::AddNamespace(node.namespace.clone()));
                    steps.extend([
                        ip(&[
                            "-n", inet, "link", "add", &port, "type", "veth", "peer", "name",
                            "eth0", "netns", ns,
                        ]),
                        ip(&["-n", inet, "link", "set", &port, "master", "br0", "up"]),
                        ip(&["-n", ns, "addr", "add", &cidr(node.addr), "dev", "eth0"]),
                        ip(&["-n", ns, "link", "set", "eth0", "up"]),
                    ]);
                }
                Some((router, k)) => {
                    let port = format!("n{k}");
                    let (gateway, host) = (lan_addr(*k, 1), node.addr);
                    steps.push(Step::AddNamespace(router.clone()));
                    steps.push(Step::AddNamespace(node.namespace.clone()));
                    steps.extend([
                        // Router outside: `wan` on the bridge.
                        ip(&[
                            "-n", inet, "link", "add", &port, "type", "veth", "peer", "name",
                            "wan", "netns", router,
                        ]),
                        ip(&["-n", inet, "link", "set", &port, "master", "br0", "up"]),
                        ip(&[
                            "-n",
                            router,
                            "addr",
                            "add",
                            &cidr(node.external),
                            "dev",
                            "wan",
                        ]),
                        ip(&["-n", router, "link", "set", "wan", "up"]),
                        // Router inside: `lan`, to the host's `eth0`.
                        ip(&[
                            "-n", router, "link", "add", "lan", "type", "veth", "peer", "name",
                            "eth0", "netns", ns,
                        ]),
                        ip(&[
                            "-n",
                            router,
                            "addr",
                            "add",
                            &format!("{gateway}/24"),
                            "dev",
                            "lan",
                        ]),
                        ip(&["-n", router, "link", "set", "lan", "up"]),
                        ip(&[
                            "-n",
                            ns,
                            "addr",
                            "add",
                            &format!("{host}/24"),
                            "dev",
                            "eth0",
                        ]),
                        ip(&["-n", ns, "link", "set", "eth0", "up"]),
                        ip(&[
                            "-n",
                            ns,
                            "route",
                            "add",
                            "default",
                            "via",
                            &gateway.to_string(),
                        ]),
                        // A namespace inherits forwarding from the machine's; say it. Through
                        // the shell (the file is the namespace's own as seen from inside it),
                        // so the lab needs no `sysctl` binary.
                        Step::Run {
                            program: tools.ip.clone(),
                            args: [
                                "netns",
                                "exec",
                                router,
                                &tools.sh.display().to_string(),
                                "-c",
                                "echo 1 > /proc/sys/net/ipv4/ip_forward",
                            ]
                            .map(str::to_owned)
                            .to_vec(),
                        },
                        Step::Nft {
                            namespace: router.clone(),
                            file: rules_dir.join(format!("{router}.nft")),
                            rules: nft_rules(node.kind, node.external, host),
                        },
                    ]);
                }
            }
        }
        steps
    }
}

/// One step of building a lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `ip netns add <name>`, then `lo` up inside it. The runner records the name first.
    AddNamespace(String),
    Run {
        program: PathBuf,
        args: Vec<String>,
    },
    /// Write `rules` to `file`, then `ip netns exec <namespace> nft -f <file>`.
    Nft {
        namespace: String,
        file: PathBuf,
        rules: String,
    },
}

/// The nftables ruleset of a router of `kind` whose outside address is `wan` and whose one
/// host is `host`. Outside is interface `wan`, inside `lan`.
///
/// Every kind drops unsolicited packets to the router itself (no RST, no ICMP), as home and
/// carrier routers do: an RST would tear down the other side's half of a hole punch.
pub fn nft_rules(kind: NodeKind, wan: Ipv4Addr, host: Ipv4Addr) -> String {
    // Outbound NAT: which source address and port the internet sees.
    let (prerouting, postrouting, inbound) = match kind {
        // Endpoint-independent mapping (Linux keeps the host's source port when it is free,
        // and one host never competes with another for it); the forward chain admits only
        // replies to what the host sent: address-and-port-dependent filtering.
        NodeKind::PortRestricted | NodeKind::Public => (
            None,
            "oifname \"wan\" masquerade".to_owned(),
            "iifname \"wan\" oifname \"lan\" ct state established,related accept",
        ),
        // Every inbound TCP/UDP packet to the outside address goes to the one host, at the
        // same port: endpoint-independent filtering. Outbound keeps its port (snat without a
        // port range), so mapping is endpoint-independent too.
        NodeKind::FullCone => (
            Some(format!(
                "iifname \"wan\" meta l4proto {{ tcp, udp }} dnat to {host}"
            )),
            format!("oifname \"wan\" snat to {wan}"),
            "iifname \"wan\" oifname \"lan\" accept",
        ),
        // A fresh random port for every new flow: address-and-port-dependent mapping, so the
        // port a peer saw is useless to anyone else. Filtering as port-restricted.
        NodeKind::Symmetric => (
            None,
            "oifname \"wan\" masquerade fully-random".to_owned(),
            "iifname \"wan\" oifname \"lan\" ct state established,related accept",
        ),
    };
    let mut out = format!("# fogmesh NAT lab: {kind} NAT, outside {wan}, host {host}\n");
    out.push_str("table ip fmlab {\n");
    if let Some(rule) = prerouting {
        out.push_str(&format!(
            "  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    {rule}\n  }}\n"
        ));
    }
    out.push_str(&format!(
        "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    {postrouting}\n  }}\n"
    ));
    out.push_str(&format!(
        "  chain forward {{\n    type filter hook forward priority filter; policy drop;\n    iifname \"lan\" oifname \"wan\" accept\n    {inbound}\n  }}\n"
    ));
    out.push_str(
        "  chain input {\n    type filter hook input priority filter; policy accept;\n    iifname \"wan\" ct state established,related accept\n    iifname \"wan\" drop\n  }\n",
    );
    out.push_str("}\n");
    out
}

/// Carries out `steps`. Before a namespace is created, `record` is told its name (and must
/// persist it), so whatever interrupts the build, the caller can delete every namespace the
/// build made. Each command is bounded; the first failure stops the build.
pub async fn build(
    tools: &Tools,
    steps: &[Step],
    mut record: impl FnMut(&str) -> Result<(), crate::TestnetError>,
) -> Result<(), crate::TestnetError> {
    for step in steps {
        match step {
            Step::AddNamespace(name) => {
                if netns::exists(name) {
                    // Never adopt (and later delete) a namespace someone else made.
                    return Err(NatLabError::Command {
                        command: format!("ip netns add {name}"),
                        reason: "a namespace of that name already exists".into(),
                    }
                    .into());
                }
                record(name)?;
                tracing::debug!(namespace = %name, "creating lab namespace");
                let args = ["netns", "add", name].map(str::to_owned);
                netns::run(&tools.ip, &args).await?;
                let args = ["-n", name, "link", "set", "lo", "up"].map(str::to_owned);
                netns::run(&tools.ip, &args).await?;
            }
            Step::Run { program, args } => {
                netns::run(program, args).await?;
            }
            Step::Nft {
                namespace,
                file,
                rules,
            } => {
                std::fs::write(file, rules).map_err(crate::io_err(file))?;
                let file = file.display().to_string();
                netns::run_in(&tools.ip, namespace, &tools.nft, &["-f", &file]).await?;
            }
        }
    }
    Ok(())
}

/// A lab id no existing namespace uses: four hex digits from the clock and this process.
pub fn new_lab_id() -> Result<String, NatLabError> {
    const TRIES: usize = 64;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64 ^ d.as_secs())
        .unwrap_or(0)
        ^ (u64::from(std::process::id()) << 16);
    for attempt in 0..TRIES as u64 {
        // A multiplicative hash spreads consecutive attempts over the id space.
        let id = format!(
            "{:04x}",
            (seed
                .wrapping_add(attempt)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                >> 48)
                & 0xffff
        );
        if netns::with_prefix(&namespace_prefix(&id)).is_empty() {
            return Ok(id);
        }
    }
    Err(NatLabError::NoLabId(TRIES))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_parse_and_print() {
        let layout: Layout = "public=2,port-restricted=2,full-cone=1,symmetric=2"
            .parse()
            .unwrap();
        assert_eq!(layout, Layout::default());
        assert_eq!(
            layout.to_string(),
            "public=2,port-restricted=2,full-cone=1,symmetric=2"
        );
        assert_eq!(
            layout.to_string().parse::<Layout>().unwrap().kinds().len(),
            7
        );
        let small: Layout = "public=1, port-restricted=2, symmetric=1".parse().unwrap();
        assert_eq!(
            small.kinds(),
            [
                NodeKind::Public,
                NodeKind::PortRestricted,
                NodeKind::PortRestricted,
                NodeKind::Symmetric
            ]
        );
        for bad in [
            "",
            "port-restricted=2",
            "public=0,full-cone=1",
            "public=1,cone=1",
            "public=1,public=2",
            "public=x",
            "public",
            "public=1,symmetric=200",
            "public=91",
        ] {
            assert!(bad.parse::<Layout>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn plan_places_nodes_as_documented() {
        let plan = Plan::new("ab12", &Layout::default());
        assert_eq!(plan.inet, "fmlab-ab12-inet");
        let n = &plan.nodes;
        assert_eq!(n.len(), 7);
        assert_eq!(
            (n[0].namespace.as_str(), n[0].addr, n[0].external),
            (
                "fmlab-ab12-pub0",
                Ipv4Addr::new(198, 18, 0, 10),
                Ipv4Addr::new(198, 18, 0, 10)
            )
        );
        assert_eq!(n[1].addr, Ipv4Addr::new(198, 18, 0, 11));
        // The first NATed node: router 0, subnet 10.1.0.0/24, outside 198.18.0.100.
        assert_eq!(n[2].kind, NodeKind::PortRestricted);
        assert_eq!(n[2].namespace, "fmlab-ab12-nat0");
        assert_eq!(n[2].router, Some(("fmlab-ab12-rtr0".to_owned(), 0)));
        assert_eq!(n[2].addr, Ipv4Addr::new(10, 1, 0, 2));
        assert_eq!(n[2].external, Ipv4Addr::new(198, 18, 0, 100));
        assert_eq!(n[6].kind, NodeKind::Symmetric);
        assert_eq!(n[6].addr, Ipv4Addr::new(10, 5, 0, 2));
        assert_eq!(n[6].external, Ipv4Addr::new(198, 18, 0, 104));
        // Every namespace is the lab's own, and named once.
        let tools = Tools {
            ip: "/sbin/ip".into(),
            nft: "/sbin/nft".into(),
            sh: "/bin/sh".into(),
        };
        let steps = plan.steps(&tools, Path::new("/tmp/rules"));
        let created: Vec<&String> = steps
            .iter()
            .filter_map(|s| match s {
                Step::AddNamespace(name) => Some(name),
                _ => None,
            })
            .collect();
        assert_eq!(created.len(), 1 + 2 + 5 * 2);
        assert!(created.iter().all(|n| n.starts_with("fmlab-ab12-")));
        let unique: std::collections::HashSet<_> = created.iter().collect();
        assert_eq!(unique.len(), created.len());
        // Every command names a lab namespace: nothing runs in the caller's own.
        for step in &steps {
            if let Step::Run { args, .. } = step {
                let ns = match args.first().map(String::as_str) {
                    Some("-n") => &args[1],
                    Some("netns") => &args[2],
                    _ => panic!("command outside a namespace: {args:?}"),
                };
                assert!(ns.starts_with("fmlab-ab12-"), "{args:?}");
            }
        }
    }

    #[test]
    fn nft_rules_per_kind() {
        let wan = Ipv4Addr::new(198, 18, 0, 102);
        let host = Ipv4Addr::new(10, 3, 0, 2);
        let pr = nft_rules(NodeKind::PortRestricted, wan, host);
        assert!(pr.contains("oifname \"wan\" masquerade\n"));
        assert!(pr.contains("ct state established,related accept"));
        assert!(!pr.contains("dnat"));
        let fc = nft_rules(NodeKind::FullCone, wan, host);
        assert!(fc.contains("dnat to 10.3.0.2"));
        assert!(fc.contains("snat to 198.18.0.102"));
        let sym = nft_rules(NodeKind::Symmetric, wan, host);
        assert!(sym.contains("masquerade fully-random"));
        for rules in [pr, fc, sym] {
            assert!(rules.contains("policy drop"));
            assert!(rules.contains("iifname \"wan\" drop"));
        }
    }
}
