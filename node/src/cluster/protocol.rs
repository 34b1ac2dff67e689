//! `/fogmesh/cluster/1`: what cluster members, joiners and submitters say to each other on
//! a direct link. One request per stream: a u32 big-endian length and a CBOR
//! [`ClusterRequest`]; the answer the same way with a [`ClusterResponse`]. Lengths above
//! [`MAX_REQUEST_BYTES`] / [`MAX_RESPONSE_BYTES`] are refused before anything is read.
//!
//! Who sent a request is the connection's peer, which the secure channel (Noise XK with
//! the mesh ticket) authenticated; raft messages additionally name their sender, and the
//! receiver checks that name against the peer (`consensus::wire::admit`). Traffic between
//! members that are not neighbours would ride the relay's signed, sealed packets instead;
//! that seam is described in docs/clusters.md and not built yet.

use std::io;
use std::time::Duration;

use fogmesh_consensus::capacity::NodeCapacity;
use fogmesh_consensus::state::{Command, TaskState};
use fogmesh_consensus::task::{TaskId, TaskSpec};
use fogmesh_store::codec;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::exec::{MAX_INPUT_BYTES, MAX_MODULE_BYTES, MAX_OUTPUT_BYTES};

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/fogmesh/cluster/1");
/// A submission carries its module and input.
pub const MAX_REQUEST_BYTES: usize = MAX_MODULE_BYTES + MAX_INPUT_BYTES + 64 * 1024;
/// A fetched blob is at most a module.
pub const MAX_RESPONSE_BYTES: usize = MAX_MODULE_BYTES + 64 * 1024;
/// Streams a connection may have open at once, each way (raft sends one per message).
pub const MAX_STREAMS: usize = 256;
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

#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterCodec;

pub type Behaviour = request_response::Behaviour<ClusterCodec>;
pub type Event = request_response::Event<ClusterRequest, ClusterResponse>;

pub fn behaviour() -> Behaviour {
    request_response::Behaviour::with_codec(
        ClusterCodec,
        [(PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(REQUEST_TIMEOUT)
            .with_max_concurrent_streams(MAX_STREAMS),
    )
}

async fn read_frame<T, M>(io: &mut T, max: usize) -> io::Result<M>
where
    T: AsyncRead + Unpin + Send,
    M: serde::de::DeserializeOwned,
{
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cluster frame of {len} bytes exceeds {max}"),
        ));
    }
    let mut bytes = vec![0u8; len];
    io.read_exact(&mut bytes).await?;
    codec::decode_bounded(&bytes, max).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

async fn write_frame<T, M>(io: &mut T, message: &M, max: usize) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
    M: Serialize,
{
    let bytes =
        codec::encode(message).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|l| *l as usize <= max)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "cluster frame too large"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(&bytes).await?;
    io.close().await
}

impl request_response::Codec for ClusterCodec {
    type Protocol = StreamProtocol;
    type Request = ClusterRequest;
    type Response = ClusterResponse;

    async fn read_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<ClusterRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, MAX_REQUEST_BYTES).await
    }

    async fn read_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<ClusterResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, MAX_RESPONSE_BYTES).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: ClusterRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &request, MAX_REQUEST_BYTES).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: ClusterResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &response, MAX_RESPONSE_BYTES).await
    }
}

const _: () = assert!(MAX_OUTPUT_BYTES < MAX_RESPONSE_BYTES);

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::request_response::Codec;

    #[test]
    fn requests_round_trip_and_oversized_lengths_are_refused_unread() {
        futures::executor::block_on(async {
            let mut codec = ClusterCodec;
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
            huge.extend_from_slice(&((MAX_REQUEST_BYTES as u32) + 1).to_be_bytes());
            let err = codec
                .read_request(&PROTOCOL, &mut huge.as_slice())
                .await
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);

            let mut junk = vec![0, 0, 0, 3, 0xff, 0x00, 0x13];
            junk.truncate(7);
            assert!(codec
                .read_request(&PROTOCOL, &mut junk.as_slice())
                .await
                .is_err());
        });
    }
}
