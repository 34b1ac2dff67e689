//! Length-prefixed CBOR over request-response streams: the one framing the node's own
//! request-response protocols share (cluster, kv sync).
//!
//! One message per stream: a u32 big-endian length and the CBOR body. A length above the
//! protocol's bound is refused before anything is read, and a frame's buffer grows only as
//! its bytes arrive, so what a peer can make a node hold is the bound times the streams,
//! and only by sending that much.

use std::io;
use std::marker::PhantomData;

use fogmesh_store::codec;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response;
use libp2p::StreamProtocol;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A request-response codec of `Req` and `Resp` with a bound on each.
#[derive(Debug)]
pub struct CborCodec<Req, Resp> {
    pub max_request: usize,
    pub max_response: usize,
    _messages: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> CborCodec<Req, Resp> {
    pub fn new(max_request: usize, max_response: usize) -> Self {
        CborCodec {
            max_request,
            max_response,
            _messages: PhantomData,
        }
    }
}

impl<Req, Resp> Clone for CborCodec<Req, Resp> {
    fn clone(&self) -> Self {
        Self::new(self.max_request, self.max_response)
    }
}

pub async fn read_frame<T, M>(io: &mut T, max: usize) -> io::Result<M>
where
    T: AsyncRead + Unpin + Send,
    M: DeserializeOwned,
{
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {max}"),
        ));
    }
    // Grows as bytes arrive: a length prefix alone reserves nothing.
    let mut bytes = Vec::new();
    io.take(len as u64).read_to_end(&mut bytes).await?;
    if bytes.len() != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "frame cut short",
        ));
    }
    codec::decode_bounded(&bytes, max).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

pub async fn write_frame<T, M>(io: &mut T, message: &M, max: usize) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
    M: Serialize,
{
    let bytes =
        codec::encode(message).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|l| *l as usize <= max)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(&bytes).await?;
    io.close().await
}

impl<Req, Resp> request_response::Codec for CborCodec<Req, Resp>
where
    Req: Serialize + DeserializeOwned + Send + Sync + 'static,
    Resp: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_request).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_response).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Req,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &request, self.max_request).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &response, self.max_response).await
    }
}
