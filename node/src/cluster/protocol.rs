//! What cluster members, joiners and submitters say to each other on a direct link, on two
//! request-response protocols with the same messages and different bounds:
//! - `/fogmesh/cluster/1` ([`behaviour`]): raft, joins, reports, fetches, status — requests
//!   at most [`MAX_CONTROL_REQUEST_BYTES`] (a raft frame), 32 streams per connection;
//! - `/fogmesh/cluster-bulk/1` ([`bulk_behaviour`]): submissions with their module and input,
//!   and results — requests at most [`MAX_BULK_REQUEST_BYTES`], 2 streams per connection.
//!
//! One request per stream: a u32 big-endian length and a CBOR [`ClusterRequest`]; the answer
//! the same way with a [`ClusterResponse`] (at most [`MAX_RESPONSE_BYTES`], a fetched
//! module). A length above the bound is refused before anything is read, and a frame's
//! buffer grows only as its bytes arrive, so what a peer can make a node hold is the bound
//! times the streams, and only by sending that much.
//!
//! Who sent a request is the connection's peer, which the secure channel (Noise XK with
//! the mesh ticket) authenticated; raft messages additionally name their sender, and the
//! receiver checks that name against the peer (`consensus::wire::admit`). Traffic between
//! members that are not neighbours would ride the relay's signed, sealed packets instead;
//! that seam is described in docs/clusters.md and not built yet.

use std::time::Duration;

use fogmesh_consensus::capacity::NodeCapacity;
use fogmesh_consensus::state::{Command, TaskState};
use fogmesh_consensus::task::{TaskId, TaskSpec};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::exec::{MAX_INPUT_BYTES, MAX_MODULE_BYTES, MAX_OUTPUT_BYTES};

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/fogmesh/cluster/1");
pub const BULK_PROTOCOL: StreamProtocol = StreamProtocol::new("/fogmesh/cluster-bulk/1");
/// A raft frame and its envelope.
pub const MAX_CONTROL_REQUEST_BYTES: usize = fogmesh_consensus::wire::MAX_FRAME_BYTES + 16 * 1024;
/// A submission carries its module and input.
pub const MAX_BULK_REQUEST_BYTES: usize = MAX_MODULE_BYTES + MAX_INPUT_BYTES + 64 * 1024;
/// A fetched blob is at most a module.
pub const MAX_RESPONSE_BYTES: usize = MAX_MODULE_BYTES + 64 * 1024;
/// Streams a connection may have open at once, each way (raft sends one per message).
pub const MAX_STREAMS: usize = 32;
pub const MAX_BULK_STREAMS: usize = 2;
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What one node asks another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClusterRequest {
    /// A raft message (`consensus::wire` frame).
    Raft { frame: ByteBuf },
    /// Let me join your cluster.
    Join {
        cluster: String,
        capacity: NodeCapacity,
    },
    /// Take this task into your cluster (from its submitter, or forwarded by a member of a
    /// cluster that dissolved or was lost). The module and input ride along when the sender
    /// holds them.
    Submit {
        spec: TaskSpec,
        module: Option<ByteBuf>,
        input: Option<ByteBuf>,
        forwarded: bool,
    },
    /// A member's report (started, failed, its capacity) or a submitter's cancel, for the
    /// coordinator to propose.
    Propose { cluster: String, command: Command },
    /// A worker's result: the coordinator stores it, then proposes `Finished`.
    Finished {
        cluster: String,
        command: Command,
        result: ByteBuf,
    },
    /// A module, input or result, by content hash.
    Fetch { hash: [u8; 32] },
    /// Where a task is.
    Status { task: TaskId },
}

impl ClusterRequest {
    /// Whether the request goes on the bulk protocol.
    pub fn is_bulk(&self) -> bool {
        matches!(
            self,
            ClusterRequest::Submit { .. } | ClusterRequest::Finished { .. }
        )
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ClusterRequest::Raft { .. } => "raft",
            ClusterRequest::Join { .. } => "join",
            ClusterRequest::Submit { .. } => "submit",
            ClusterRequest::Propose { .. } => "propose",
            ClusterRequest::Finished { .. } => "finished",
            ClusterRequest::Fetch { .. } => "fetch",
            ClusterRequest::Status { .. } => "status",
        }
    }
}

/// A task's whereabouts as a cluster member sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    pub cluster: String,
    pub state: TaskState,
    pub attempts: u32,
    /// Why a queued task waits, if it does.
    pub waiting: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClusterResponse {
    Ack,
    /// The join is proposed: the coordinator's log follows.
    Joining,
    /// The command is proposed to the cluster (committed once it shows in the state).
    Proposed {
        cluster: String,
    },
    /// I do not coordinate; try this peer (PeerId bytes) if known.
    NotCoordinator {
        hint: Option<ByteBuf>,
    },
    Refused {
        reason: String,
    },
    Blob(ByteBuf),
    Missing,
    Status(Option<TaskReport>),
}

/// The codec, with its protocol's request bound.
pub type ClusterCodec = fogmesh_wire::framing::CborCodec<ClusterRequest, ClusterResponse>;

pub type Behaviour = request_response::Behaviour<ClusterCodec>;
pub type Event = request_response::Event<ClusterRequest, ClusterResponse>;

/// `/fogmesh/cluster/1`.
pub fn behaviour() -> Behaviour {
    request_response::Behaviour::with_codec(
        ClusterCodec::new(MAX_CONTROL_REQUEST_BYTES, MAX_RESPONSE_BYTES),
        [(PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(REQUEST_TIMEOUT)
            .with_max_concurrent_streams(MAX_STREAMS),
    )
}

/// `/fogmesh/cluster-bulk/1`.
pub fn bulk_behaviour() -> Behaviour {
    request_response::Behaviour::with_codec(
        ClusterCodec::new(MAX_BULK_REQUEST_BYTES, MAX_RESPONSE_BYTES),
        [(BULK_PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(REQUEST_TIMEOUT)
            .with_max_concurrent_streams(MAX_BULK_STREAMS),
    )
}

const _: () = assert!(MAX_OUTPUT_BYTES < MAX_RESPONSE_BYTES);

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::request_response::Codec;

    #[test]
    fn requests_round_trip_and_oversized_lengths_are_refused_unread() {
        futures::executor::block_on(async {
            let mut codec = ClusterCodec::new(MAX_CONTROL_REQUEST_BYTES, MAX_RESPONSE_BYTES);
            let request = ClusterRequest::Fetch { hash: [7; 32] };
            let mut wire = Vec::new();
            codec
                .write_request(&PROTOCOL, &mut wire, request.clone())
                .await
                .unwrap();
            let back = codec
                .read_request(&PROTOCOL, &mut wire.as_slice())
                .await
                .unwrap();
            assert_eq!(back, request);

            let mut huge = Vec::new();
            huge.extend_from_slice(&((MAX_CONTROL_REQUEST_BYTES as u32) + 1).to_be_bytes());
            let err = codec
                .read_request(&PROTOCOL, &mut huge.as_slice())
                .await
                .unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);

            let mut junk = vec![0, 0, 0, 3, 0xff, 0x00, 0x13];
            junk.truncate(7);
            assert!(codec
                .read_request(&PROTOCOL, &mut junk.as_slice())
                .await
                .is_err());
        });
    }
}
