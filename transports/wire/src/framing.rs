//! Framing on request-response streams: the one framing the node's own protocols share
//! (relay hops, cluster, kv sync).
//!
//! One request per stream: a u32 big-endian length and the body (a protocol's own encoding,
//! CBOR for most). The answer is framed the same way, or is a single byte where a protocol
//! says so ([`ResponseFraming::Byte`]). A length above the protocol's bound is refused
//! before anything is read, and a frame's buffer grows only as its bytes arrive, so what a
//! peer can make a node hold is the bound times the streams, and only by sending that much.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response;
use libp2p::StreamProtocol;

/// How a protocol's response is framed on its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// A u32 big-endian length, then at most this many bytes (like requests).
    Prefixed(usize),
    /// Exactly one byte.
    Byte,
}

/// Reads one length-prefixed frame of at most `max` bytes.
pub async fn read_frame<T>(io: &mut T, max: usize) -> io::Result<Vec<u8>>
where
    T: AsyncRead + Unpin + Send,
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
    Ok(bytes)
}

/// Writes one length-prefixed frame and closes the writing side.
pub async fn write_frame<T>(io: &mut T, bytes: &[u8], max: usize) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|l| *l as usize <= max)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("frame of {} bytes exceeds {max}", bytes.len()),
            )
        })?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

/// A request-response codec of byte bodies: requests length-prefixed up to `max_request`,
/// responses as `response` says.
#[derive(Debug, Clone, Copy)]
pub struct BytesCodec {
    pub max_request: usize,
    pub response: ResponseFraming,
}

impl request_response::Codec for BytesCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_request).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        match self.response {
            ResponseFraming::Prefixed(max) => read_frame(io, max).await,
            ResponseFraming::Byte => {
                let mut answer = [0u8; 1];
                io.read_exact(&mut answer).await?;
                Ok(answer.to_vec())
            }
        }
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Vec<u8>,
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
        response: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match self.response {
            ResponseFraming::Prefixed(max) => write_frame(io, &response, max).await,
            ResponseFraming::Byte => {
                let [answer] = response.as_slice() else {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "a one-byte answer must be one byte",
                    ));
                };
                io.write_all(&[*answer]).await?;
                io.close().await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use libp2p::request_response::Codec;

    const PROTOCOL: StreamProtocol = StreamProtocol::new("/test/1");

    #[test]
    fn an_oversized_length_is_refused_before_reading() {
        futures::executor::block_on(async {
            let mut codec = BytesCodec {
                max_request: 8,
                response: ResponseFraming::Byte,
            };
            let mut wire = Vec::new();
            wire.extend_from_slice(&9u32.to_be_bytes());
            let mut io = futures::io::Cursor::new(wire);
            let error = codec.read_request(&PROTOCOL, &mut io).await.unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData);

            let mut out = futures::io::Cursor::new(Vec::new());
            codec
                .write_request(&PROTOCOL, &mut out, vec![1, 2, 3])
                .await
                .unwrap();
            assert_eq!(out.get_ref()[..4], 3u32.to_be_bytes());
            let mut back = futures::io::Cursor::new(out.into_inner());
            assert_eq!(
                codec.read_request(&PROTOCOL, &mut back).await.unwrap(),
                vec![1, 2, 3]
            );
            let too_big = codec
                .write_request(
                    &PROTOCOL,
                    &mut futures::io::Cursor::new(Vec::new()),
                    vec![0; 9],
                )
                .await;
            assert!(too_big.is_err());
        });
    }

    #[test]
    fn a_cut_frame_and_a_one_byte_answer() {
        futures::executor::block_on(async {
            let mut codec = BytesCodec {
                max_request: 64,
                response: ResponseFraming::Byte,
            };
            let mut wire = 10u32.to_be_bytes().to_vec();
            wire.extend_from_slice(&[1, 2, 3]);
            let error = codec
                .read_request(&PROTOCOL, &mut futures::io::Cursor::new(wire))
                .await
                .unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);

            let mut out = futures::io::Cursor::new(Vec::new());
            codec
                .write_response(&PROTOCOL, &mut out, vec![1])
                .await
                .unwrap();
            assert_eq!(out.get_ref(), &vec![1u8]);
            let mut back = futures::io::Cursor::new(out.into_inner());
            assert_eq!(
                codec.read_response(&PROTOCOL, &mut back).await.unwrap(),
                vec![1]
            );
            assert!(codec
                .write_response(
                    &PROTOCOL,
                    &mut futures::io::Cursor::new(Vec::new()),
                    vec![1, 2]
                )
                .await
                .is_err());
        });
    }
}
