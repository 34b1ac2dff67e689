//! What nodes say to each other about the replicated store (docs/kv.md):
//! - deltas on gossip topic [`TOPIC`]: the entries of local writes, at once, to every node
//!   the gossip mesh reaches (multi-hop);
//! - anti-entropy on request-response `/fogmesh/kv/1` ([`SPEC`]) between direct
//!   neighbours: the messages of [`fogmesh_kv::sync`] in CBOR, framed by
//!   [`fogmesh_wire::framing`], each at most [`MAX_MESSAGE_BYTES`].
//!
//! Entries carry their author's signature; messages carry the authors' tickets
//! (`credentials`) so a node that never met an author can still check its role. Who
//! forwarded a message does not matter: every entry is verified on its own
//! ([`crate::kv::service`]).

use std::time::Duration;

use fogmesh_kv::sync::MAX_MESSAGE_BYTES;
use fogmesh_kv::Entry;
use fogmesh_wire::framing::ResponseFraming;

use crate::runtime::capability::Protocol;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

pub const TOPIC: &str = "fogmesh/kv/1";
pub const PROTOCOL: &str = "/fogmesh/kv/1";
/// Streams a connection may have open at once, each way: a session keeps up to four
/// requests in flight, and two nodes may sync each other at once.
pub const MAX_STREAMS: usize = 8;
/// An answer is a bounded read of the answering node's store: one not back within this is
/// not coming (the session is dropped and resumed later).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of entries one delta carries (a gossip message is at most 64 KiB); an entry too
/// large for a delta reaches peers by anti-entropy, which a large write starts at once.
pub const DELTA_BYTES: usize = 48 * 1024;

/// A gossip delta: entries just written, and their authors' tickets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    pub entries: Vec<Entry>,
    pub credentials: Vec<ByteBuf>,
}

/// `/fogmesh/kv/1`, as the runtime carries it.
pub const SPEC: Protocol = Protocol {
    name: PROTOCOL,
    max_request: MAX_MESSAGE_BYTES,
    response: ResponseFraming::Prefixed(MAX_MESSAGE_BYTES),
    max_streams: MAX_STREAMS,
    timeout: REQUEST_TIMEOUT,
};
