//! `/fogmesh/relay/1`: how a packet crosses one link.
//!
//! One packet per stream, request-response style: the sender writes a u32 big-endian length
//! and the packet; the receiver answers one byte, [`HOP_ACCEPTED`] or [`HOP_REFUSED`], once
//! the relay service has looked at it. The hop answer is what lets a sender tell "the
//! neighbour has it" from "the link broke mid-way"; it says nothing about the packet reaching
//! its recipient (that is the signed delivery ack). A length above
//! [`packet::MAX_PACKET_LEN`](super::packet::MAX_PACKET_LEN) is refused before anything is
//! read, so a neighbour cannot make the node buffer more than that per stream; the number of
//! streams is bounded by the behaviour's `max_concurrent_streams`.

use std::io;
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::StreamProtocol;

use super::packet::MAX_PACKET_LEN;

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/fogmesh/relay/1");
pub const HOP_ACCEPTED: u8 = 0;
pub const HOP_REFUSED: u8 = 1;
/// Streams a connection may have open at once, each way.
pub const MAX_STREAMS: usize = 64;
/// A hop that has not answered by then has failed (BLE links are slow; a 8 KiB packet at
/// 15 KB/s takes half a second).
pub const HOP_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, Default)]
pub struct RelayCodec;

pub type Behaviour = request_response::Behaviour<RelayCodec>;
pub type Event = request_response::Event<Vec<u8>, u8>;

pub fn behaviour() -> Behaviour {
    request_response::Behaviour::with_codec(
        RelayCodec,
        [(PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(HOP_TIMEOUT)
            .with_max_concurrent_streams(MAX_STREAMS),
    )
}

impl request_response::Codec for RelayCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = u8;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut len = [0u8; 4];
        io.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_PACKET_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("relay packet of {len} bytes exceeds {MAX_PACKET_LEN}"),
            ));
        }
        let mut packet = vec![0u8; len];
        io.read_exact(&mut packet).await?;
        Ok(packet)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<u8>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut answer = [0u8; 1];
        io.read_exact(&mut answer).await?;
        Ok(answer[0])
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        packet: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let len = u32::try_from(packet.len())
            .ok()
            .filter(|l| *l as usize <= MAX_PACKET_LEN)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "relay packet too large"))?;
        io.write_all(&len.to_be_bytes()).await?;
        io.write_all(&packet).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        answer: u8,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&[answer]).await?;
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::request_response::Codec;

    #[test]
    fn an_oversized_length_is_refused_before_reading() {
        futures::executor::block_on(async {
            let mut codec = RelayCodec;
            let mut wire = Vec::new();
            wire.extend_from_slice(&((MAX_PACKET_LEN as u32) + 1).to_be_bytes());
            let mut io = futures::io::Cursor::new(wire);
            let error = codec.read_request(&PROTOCOL, &mut io).await.unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData);

            let mut out = futures::io::Cursor::new(Vec::new());
            codec
                .write_request(&PROTOCOL, &mut out, vec![1, 2, 3])
                .await
                .unwrap();
            let mut back = futures::io::Cursor::new(out.into_inner());
            assert_eq!(
                codec.read_request(&PROTOCOL, &mut back).await.unwrap(),
                vec![1, 2, 3]
            );
        });
    }
}
