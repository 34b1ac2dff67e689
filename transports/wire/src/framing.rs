//! Length-prefixed CBOR over request-response streams: the one framing the node's own
//! request-response protocols share (cluster, kv sync).
//!
//! One message per stream: a u32 big-endian length and the CBOR body. A length above the
//! protocol's bound is refused before anything is read, and a frame's buffer grows only as
//! its bytes arrive, so what a peer can make a node hold is the bound times the streams,
//! and only by sending that much.

use std::io;
use std::marker::PhantomData;

use crate::codec;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response;
use libp2p::StreamProtocol;
use prometheus_client::metrics::counter::Counter;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Bytes a protocol's frames took on the wire (length prefix included), both roles.
#[derive(Debug, Clone, Default)]
pub struct WireBytes {
    pub sent: Counter,
    pub received: Counter,
}

/// A request-response codec of `Req` and `Resp` with a bound on each.
#[derive(Debug)]
pub struct CborCodec<Req, Resp> {
    pub max_request: usize,
    pub max_response: usize,
    /// Counted here, where the bytes are, rather than by encoding messages again.
    bytes: Option<WireBytes>,
    _messages: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> CborCodec<Req, Resp> {
    pub fn new(max_request: usize, max_response: usize) -> Self {
        CborCodec {
            max_request,
            max_response,
            bytes: None,
            _messages: PhantomData,
        }
    }

    /// The same, counting every frame's bytes in `bytes`.
    pub fn counting(mut self, bytes: WireBytes) -> Self {
        self.bytes = Some(bytes);
        self
    }

    fn count(&self, received: bool, len: usize) {
        if let Some(bytes) = &self.bytes {
            let counter = if received {
                &bytes.received
            } else {
                &bytes.sent
            };
            counter.inc_by(len as u64 + 4);
        }
    }
}

impl<Req, Resp> Clone for CborCodec<Req, Resp> {
    fn clone(&self) -> Self {
        CborCodec {
            bytes: self.bytes.clone(),
            ..Self::new(self.max_request, self.max_response)
        }
    }
}

/// Reads one frame; its decoded message and the body's length.
pub async fn read_frame<T, M>(io: &mut T, max: usize) -> io::Result<(M, usize)>
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
    let message = codec::decode_bounded(&bytes, max)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok((message, len))
}

/// Writes one frame; the body's length.
pub async fn write_frame<T, M>(io: &mut T, message: &M, max: usize) -> io::Result<usize>
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
    io.close().await?;
    Ok(bytes.len())
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
        let (request, len) = read_frame(io, self.max_request).await?;
        self.count(true, len);
        Ok(request)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        let (response, len) = read_frame(io, self.max_response).await?;
        self.count(true, len);
        Ok(response)
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
        let len = write_frame(io, &request, self.max_request).await?;
        self.count(false, len);
        Ok(())
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
        let len = write_frame(io, &response, self.max_response).await?;
        self.count(false, len);
        Ok(())
    }
}
