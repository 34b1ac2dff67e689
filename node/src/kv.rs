//! What nodes say to each other about the replicated store (docs/kv.md):
//! - deltas on gossip topic [`TOPIC`]: the entries of local writes, at once, to every node
//!   the gossip mesh reaches (multi-hop);
//! - anti-entropy on request-response `/fogmesh/kv/1` ([`behaviour`]) between direct
//!   neighbours: the messages of [`fogmesh_kv::sync`], framed by [`fogmesh_wire::framing`],
//!   each at most [`MAX_MESSAGE_BYTES`].
//!
//! Entries carry their author's signature; messages carry the authors' tickets
//! (`credentials`) so a node that never met an author can still check its role. Who
//! forwarded a message does not matter: every entry is verified on its own
//! ([`crate::services::kv`]).

use std::time::Duration;

use fogmesh_kv::sync::{SyncRequest, SyncResponse, MAX_MESSAGE_BYTES};
use fogmesh_kv::Entry;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

pub const TOPIC: &str = "fogmesh/kv/1";
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/fogmesh/kv/1");
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

pub type Codec = fogmesh_wire::framing::CborCodec<SyncRequest, SyncResponse>;
pub type Behaviour = request_response::Behaviour<Codec>;
pub type Event = request_response::Event<SyncRequest, SyncResponse>;

/// `/fogmesh/kv/1`, its frames counted in `bytes` (the `fogmesh_kv_sync_bytes_*` counters).
pub fn behaviour(bytes: fogmesh_wire::framing::WireBytes) -> Behaviour {
    request_response::Behaviour::with_codec(
        Codec::new(MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES).counting(bytes),
        [(PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(REQUEST_TIMEOUT)
            .with_max_concurrent_streams(MAX_STREAMS),
    )
}
