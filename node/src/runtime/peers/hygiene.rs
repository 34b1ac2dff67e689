//! Address hygiene: which of a peer's addresses are worth keeping and passing on (pure).
//!
//! A peer reports every address it listens on: loopback, its LAN addresses, public ones,
//! relay circuits. Only some of them can work for us, and the DHT hands what we store to
//! anyone who asks. The rule: an address is kept only if its reach is at least that of the
//! connection we heard it on. A peer met over a public address gets its public addresses
//! (and circuits through public relays) kept; a peer on our LAN its LAN and public ones; a
//! peer on this machine all of them. So loopback and private addresses never leave the
//! machine or LAN they mean something on, and nobody wastes dials on them.
//!
//! Addresses without an IP (the in-process memory transport, Bluetooth LE, DNS names) are
//! judged as reaching as far as anything: the rule is about IP scopes only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;

/// How far an address reaches, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// This machine: 127.0.0.0/8, ::1.
    Loopback,
    /// A LAN or a carrier's network: RFC 1918, link-local, 100.64.0.0/10 (carrier-grade
    /// NAT), IPv6 unique-local and link-local.
    Local,
    /// Anything else: the internet (and addresses with no IP).
    Global,
}

/// The scope of `addr` (by its first IP), or `None` for an address nobody can dial
/// (unspecified, multicast, broadcast).
pub fn scope(addr: &Multiaddr) -> Option<Scope> {
    ip_of(addr).map_or(Some(Scope::Global), ip_scope)
}

/// The addresses among `reported` (as a peer wrote them in a signed record or
/// announcement) worth offering to a dial of that peer: those that parse and that someone
/// can dial, at most `at_most`. Heard second-hand, not on a connection, so there is no
/// scope to judge them by (see the module docs); a dial checks the peer's identity, so a
/// wrong one costs a failed attempt, not a wrong peer.
pub fn dialable<'a>(reported: impl IntoIterator<Item = &'a str>, at_most: usize) -> Vec<Multiaddr> {
    reported
        .into_iter()
        .filter_map(|a| a.parse::<Multiaddr>().ok())
        .filter(|a| scope(a).is_some())
        .take(at_most)
        .collect()
}

/// The first IP of `addr` (the relay's, for a circuit).
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// Whether `addr` reaches as far as anything (and is dialable).
pub fn is_global(addr: &Multiaddr) -> bool {
    scope(addr) == Some(Scope::Global)
}

/// `<relay_addr's transport part>/p2p/<relay>/p2p-circuit`: where a node listens through
/// `relay` (and, with `/p2p/<node>` after it, where peers reach it).
pub fn relay_circuit(relay_addr: &Multiaddr, relay: libp2p::PeerId) -> Multiaddr {
    let mut addr: Multiaddr = relay_addr
        .iter()
        .take_while(|p| !matches!(p, Protocol::P2p(_) | Protocol::P2pCircuit))
        .collect();
    addr.push(Protocol::P2p(relay));
    addr.push(Protocol::P2pCircuit);
    addr
}

fn ip_scope(ip: IpAddr) -> Option<Scope> {
    match ip {
        IpAddr::V4(ip) => v4_scope(ip),
        IpAddr::V6(ip) => {
            if let Some(v4) = ip.to_ipv4_mapped() {
                return v4_scope(v4);
            }
            v6_scope(ip)
        }
    }
}

fn v4_scope(ip: Ipv4Addr) -> Option<Scope> {
    if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
        return None;
    }
    if ip.is_loopback() {
        return Some(Scope::Loopback);
    }
    let [a, b, ..] = ip.octets();
    let carrier_nat = a == 100 && (64..128).contains(&b);
    if ip.is_private() || ip.is_link_local() || carrier_nat {
        return Some(Scope::Local);
    }
    Some(Scope::Global)
}

fn v6_scope(ip: Ipv6Addr) -> Option<Scope> {
    if ip.is_unspecified() || ip.is_multicast() {
        return None;
    }
    if ip.is_loopback() {
        return Some(Scope::Loopback);
    }
    let first = ip.segments()[0];
    let unique_local = first & 0xfe00 == 0xfc00;
    let link_local = first & 0xffc0 == 0xfe80;
    if unique_local || link_local {
        return Some(Scope::Local);
    }
    Some(Scope::Global)
}

/// Whether `addr`, reported by a peer we are connected to over `via`, is worth keeping
/// and passing on (see the module docs).
pub fn plausible(addr: &Multiaddr, via: &Multiaddr) -> bool {
    match (scope(addr), scope(via)) {
        (Some(addr), Some(via)) => addr >= via,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// The addresses of `addrs` worth keeping when heard over `via`.
pub fn keep_plausible(addrs: Vec<Multiaddr>, via: &Multiaddr) -> Vec<Multiaddr> {
    addrs.into_iter().filter(|a| plausible(a, via)).collect()
}

/// Whether `addr` goes through a circuit relay.
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn a(text: &str) -> Multiaddr {
        text.parse().unwrap()
    }

    #[test]
    fn scopes_of_common_addresses() {
        assert_eq!(scope(&a("/ip4/127.0.0.1/tcp/1")), Some(Scope::Loopback));
        assert_eq!(scope(&a("/ip6/::1/tcp/1")), Some(Scope::Loopback));
        for local in [
            "/ip4/10.1.0.2/tcp/1",
            "/ip4/172.16.5.1/tcp/1",
            "/ip4/192.168.1.5/tcp/1",
            "/ip4/169.254.0.9/tcp/1",
            "/ip4/100.64.3.3/tcp/1",
            "/ip6/fd00::1/tcp/1",
            "/ip6/fe80::1/tcp/1",
        ] {
            assert_eq!(scope(&a(local)), Some(Scope::Local), "{local}");
        }
        for global in [
            "/ip4/198.18.0.10/tcp/1",
            "/ip4/8.8.8.8/tcp/1",
            "/ip6/2001:db8::1/tcp/1",
            "/dns4/example.org/tcp/1",
            "/memory/7",
        ] {
            assert_eq!(scope(&a(global)), Some(Scope::Global), "{global}");
        }
        assert_eq!(scope(&a("/ip4/0.0.0.0/tcp/1")), None);
        assert_eq!(scope(&a("/ip4/224.0.0.1/tcp/1")), None);
    }

    #[test]
    fn a_peer_met_over_the_internet_keeps_only_its_public_addresses() {
        let via = a("/ip4/198.18.0.101/tcp/4747");
        let reported = vec![
            a("/ip4/127.0.0.1/tcp/4747"),
            a("/ip4/10.2.0.2/tcp/4747"),
            a("/ip4/198.18.0.101/tcp/4747"),
            a("/ip4/198.18.0.10/tcp/4747/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit"),
            a("/ip4/0.0.0.0/tcp/4747"),
        ];
        let kept = keep_plausible(reported.clone(), &via);
        assert_eq!(kept, reported[2..4].to_vec());
    }

    #[test]
    fn a_peer_on_the_lan_keeps_lan_and_public_and_one_on_this_machine_keeps_all() {
        let lan = a("/ip4/192.168.1.7/tcp/1");
        assert!(plausible(&a("/ip4/192.168.1.9/tcp/1"), &lan));
        assert!(plausible(&a("/ip4/203.0.113.9/tcp/1"), &lan));
        assert!(!plausible(&a("/ip4/127.0.0.1/tcp/1"), &lan));
        let local = a("/ip4/127.0.0.1/tcp/1");
        assert!(plausible(&a("/ip4/127.0.0.1/tcp/2"), &local));
        assert!(plausible(&a("/ip4/10.0.0.1/tcp/2"), &local));
    }

    #[test]
    fn circuits_are_recognised() {
        assert!(is_relayed(&a(
            "/ip4/198.18.0.10/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit"
        )));
        assert!(!is_relayed(&a("/ip4/198.18.0.10/tcp/1")));
    }

    proptest! {
        /// Whatever a peer reports, nothing kept is narrower than the link it came over,
        /// and nothing undialable is kept.
        #[test]
        fn nothing_kept_is_narrower_than_its_link(
            reported in proptest::collection::vec(any::<[u8; 4]>(), 0..16),
            via in any::<[u8; 4]>(),
        ) {
            let addr = |o: [u8; 4]| Multiaddr::empty()
                .with(Protocol::Ip4(Ipv4Addr::from(o)))
                .with(Protocol::Tcp(4747));
            let via = addr(via);
            let kept = keep_plausible(reported.into_iter().map(addr).collect(), &via);
            for k in &kept {
                prop_assert!(scope(k).is_some());
                if let Some(v) = scope(&via) {
                    prop_assert!(scope(k).unwrap() >= v);
                }
            }
        }
    }
}
