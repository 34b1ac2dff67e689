//! `/fogmesh/relay/1`: how a packet crosses one link.
//!
//! One packet per stream, request-response style: the sender writes a u32 big-endian length
//! and the packet; the receiver answers one byte, [`HOP_ACCEPTED`] or [`HOP_REFUSED`], once
//! the relay capability has looked at it. The hop answer is what lets a sender tell "the
//! neighbour has it" from "the link broke mid-way"; it says nothing about the packet reaching
//! its recipient (that is the signed delivery ack). A length above
//! [`packet::MAX_PACKET_LEN`](super::packet::MAX_PACKET_LEN) is refused before anything is
//! read, so a neighbour cannot make the node buffer more than that per stream; the number of
//! streams is bounded by [`MAX_STREAMS`]. The framing is the runtime's
//! ([`fogmesh_wire::framing`]).

use std::time::Duration;

use fogmesh_wire::framing::ResponseFraming;

use super::packet::MAX_PACKET_LEN;
use crate::runtime::capability::Protocol;

pub const PROTOCOL: &str = "/fogmesh/relay/1";
pub const HOP_ACCEPTED: u8 = 0;
pub const HOP_REFUSED: u8 = 1;
/// Streams a connection may have open at once, each way.
pub const MAX_STREAMS: usize = 64;
/// A hop that has not answered by then has failed (BLE links are slow; a 8 KiB packet at
/// 15 KB/s takes half a second).
pub const HOP_TIMEOUT: Duration = Duration::from_secs(20);

/// The protocol as the runtime carries it.
pub const SPEC: Protocol = Protocol {
    name: PROTOCOL,
    max_request: MAX_PACKET_LEN,
    response: ResponseFraming::Byte,
    max_streams: MAX_STREAMS,
    timeout: HOP_TIMEOUT,
};
