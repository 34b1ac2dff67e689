//! What cluster members, joiners and submitters say to each other on a direct link, on two
//! request-response protocols with the same messages and different bounds:
//! - `/fogmesh/cluster/1` ([`SPEC`]): raft, joins, reports, fetches, status — requests
//!   at most [`MAX_CONTROL_REQUEST_BYTES`] (a raft frame), 32 streams per connection;
//! - `/fogmesh/cluster-bulk/1` ([`BULK_SPEC`]): submissions with their module and input,
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
use fogmesh_wire::framing::ResponseFraming;

use crate::runtime::capability::Protocol;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::cluster::exec::{MAX_INPUT_BYTES, MAX_MODULE_BYTES, MAX_OUTPUT_BYTES};

pub const PROTOCOL: &str = "/fogmesh/cluster/1";
pub const BULK_PROTOCOL: &str = "/fogmesh/cluster-bulk/1";
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
    /// A raft frame's acknowledgement that carries the receiver's own raft frames for the
    /// sender, made while stepping it (a heartbeat's answer, a vote): one exchange where
    /// there were two. At most [`MAX_REPLY_FRAMES`]; a sender that reads acknowledgements
    /// as `Ack` only loses those frames, which raft sends again.
    Raft {
        frames: Vec<ByteBuf>,
    },
}

/// Raft frames one acknowledgement carries at most ([`ClusterResponse::Raft`]).
pub const MAX_REPLY_FRAMES: usize = 8;

/// `/fogmesh/cluster/1`, as the runtime carries it.
pub const SPEC: Protocol = Protocol {
    name: PROTOCOL,
    max_request: MAX_CONTROL_REQUEST_BYTES,
    response: ResponseFraming::Prefixed(MAX_RESPONSE_BYTES),
    max_streams: MAX_STREAMS,
    timeout: REQUEST_TIMEOUT,
};

/// `/fogmesh/cluster-bulk/1`, as the runtime carries it.
pub const BULK_SPEC: Protocol = Protocol {
    name: BULK_PROTOCOL,
    max_request: MAX_BULK_REQUEST_BYTES,
    response: ResponseFraming::Prefixed(MAX_RESPONSE_BYTES),
    max_streams: MAX_BULK_STREAMS,
    timeout: REQUEST_TIMEOUT,
};

impl ClusterRequest {
    /// The protocol it goes on, and its bytes.
    pub fn encode(&self) -> Result<(&'static str, Vec<u8>), fogmesh_wire::CodecError> {
        let protocol = if self.is_bulk() {
            BULK_PROTOCOL
        } else {
            PROTOCOL
        };
        Ok((protocol, fogmesh_wire::codec::encode(self)?))
    }

    /// A request read from `protocol` (bounded by that protocol's size).
    pub fn decode(protocol: &str, bytes: &[u8]) -> Result<Self, fogmesh_wire::CodecError> {
        let max = if protocol == BULK_PROTOCOL {
            MAX_BULK_REQUEST_BYTES
        } else {
            MAX_CONTROL_REQUEST_BYTES
        };
        fogmesh_wire::codec::decode_bounded(bytes, max)
    }
}

impl ClusterResponse {
    pub fn encode(&self) -> Result<Vec<u8>, fogmesh_wire::CodecError> {
        fogmesh_wire::codec::encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, fogmesh_wire::CodecError> {
        fogmesh_wire::codec::decode_bounded(bytes, MAX_RESPONSE_BYTES)
    }
}

const _: () = assert!(MAX_OUTPUT_BYTES < MAX_RESPONSE_BYTES);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn requests_round_trip_on_their_protocol_and_junk_is_refused() {
        let request = ClusterRequest::Fetch { hash: [7; 32] };
        let (protocol, bytes) = request.encode().unwrap();
        assert_eq!(protocol, PROTOCOL);
        assert_eq!(ClusterRequest::decode(protocol, &bytes).unwrap(), request);
        assert!(ClusterRequest::decode(PROTOCOL, &[0xff, 0x00, 0x13]).is_err());
        assert!(ClusterRequest::decode(PROTOCOL, &vec![0; MAX_CONTROL_REQUEST_BYTES + 1]).is_err());
        let response = ClusterResponse::Refused {
            reason: "no".into(),
        };
        assert_eq!(
            ClusterResponse::decode(&response.encode().unwrap()).unwrap(),
            response
        );
        // A raft acknowledgement may carry the answer's frames back.
        let answer = ClusterResponse::Raft {
            frames: vec![ByteBuf::from(vec![1, 2, 3]); MAX_REPLY_FRAMES],
        };
        assert_eq!(
            ClusterResponse::decode(&answer.encode().unwrap()).unwrap(),
            answer
        );
    }
}
