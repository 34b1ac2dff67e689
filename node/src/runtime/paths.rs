//! What the swarm learns about the paths between this node and others — reachability tests,
//! relays on offer, relay slots, circuits relayed, hole punches — as facts any capability
//! may act on ([`crate::runtime::capability::Notice::Path`]). The runtime only translates
//! libp2p's AutoNAT, circuit relay and DCUtR events into these; what to do about them (which
//! relays to reserve on, what the node's reachability is) is a capability's decision.

use libp2p::{Multiaddr, PeerId};

/// One fact about the node's paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathFact {
    /// A server tried to dial this node back at `addr` (AutoNAT v2): it reached it, or not.
    AddressTested {
        addr: Multiaddr,
        server: PeerId,
        reachable: bool,
        error: Option<String>,
    },
    /// A peer that dialled this node from `from` (a direct inbound connection) saw it at
    /// `observed`: evidence that the address reaches this node from where that peer is.
    DialledIn {
        peer: PeerId,
        from: std::net::IpAddr,
        observed: Multiaddr,
    },
    /// A connected peer offers to relay (it speaks the circuit relay's hop protocol), at
    /// these of its addresses, best first.
    RelayOffered {
        relay: PeerId,
        addrs: Vec<Multiaddr>,
    },
    /// A connected peer told its protocols again and no longer offers to relay.
    RelayWithdrawn { relay: PeerId },
    /// A relay accepted (or renewed) this node's slot.
    ReservationAccepted { relay: PeerId, renewal: bool },
    /// This node's slot on a relay is gone (refused, expired, or the relay went away).
    ReservationEnded { relay: PeerId, reason: String },
    /// The relay service of this node did something for another node.
    RelayServed(Served),
    /// A hole punch with `peer` ended: a direct connection, or not.
    HolePunch {
        peer: PeerId,
        ok: bool,
        error: Option<String>,
    },
}

/// What the relay service did, for its counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    ReservationAccepted {
        renewal: bool,
    },
    /// Refused, with the reason the relay told the asker.
    ReservationRefused {
        reason: &'static str,
    },
    ReservationEnded,
    CircuitAccepted,
    CircuitRefused {
        reason: &'static str,
    },
    CircuitEnded,
}

/// The reason word for a relay's status code.
pub fn refusal_reason(status: &libp2p::relay::StatusCode) -> &'static str {
    use libp2p::relay::StatusCode;
    match status {
        StatusCode::OK => "ok",
        StatusCode::ReservationRefused => "reservation_refused",
        StatusCode::ResourceLimitExceeded => "resource_limit",
        StatusCode::PermissionDenied => "permission_denied",
        StatusCode::ConnectionFailed => "connection_failed",
        StatusCode::NoReservation => "no_reservation",
        StatusCode::MalformedMessage => "malformed",
        StatusCode::UnexpectedMessage => "unexpected",
    }
}

/// The relay server's event as a fact, when it is one worth telling.
pub fn served(event: &libp2p::relay::Event) -> Option<PathFact> {
    use libp2p::relay::Event;
    let served = match event {
        Event::ReservationReqAccepted { renewed, .. } => {
            Served::ReservationAccepted { renewal: *renewed }
        }
        Event::ReservationReqDenied { status, .. } => Served::ReservationRefused {
            reason: refusal_reason(status),
        },
        Event::ReservationClosed { .. } | Event::ReservationTimedOut { .. } => {
            Served::ReservationEnded
        }
        Event::CircuitReqAccepted { .. } => Served::CircuitAccepted,
        Event::CircuitReqDenied { status, .. } => Served::CircuitRefused {
            reason: refusal_reason(status),
        },
        Event::CircuitClosed { .. } => Served::CircuitEnded,
        #[allow(deprecated)]
        _ => return None,
    };
    Some(PathFact::RelayServed(served))
}
