//! The TCP stack of an open mesh, where stock libp2p peers are welcome too.
//!
//! An open mesh admits anyone, so speaking libp2p's own `/noise` (Noise XX with the identity
//! key signed inside the handshake) costs no admission guarantee, and lets every libp2p peer
//! join over TCP as it already can over QUIC. Tickets only travel in `/fogmesh/xk/1`, so a
//! closed mesh never uses this module.
//!
//! - Listening: multistream-select over [`PROTOCOL`, [`NOISE`]]. The guard (pending cap,
//!   per-address rate limit and backoff) is taken before negotiation and the handshake
//!   timeout covers negotiation plus either handshake, so `/noise` is no way around them.
//! - Dialing `/p2p/<PeerId>`: XK is proposed first (another fogmesh node accepts it and we
//!   keep its rekeying); on `na`, `/noise`, and the identity it proves must be the PeerId
//!   dialled. Dialing an address without `/p2p/` can only run `/noise`: XK must know the
//!   responder's static key before its first message.
//!
//! Either way the connection is then multiplexed with yamux. Outcomes are counted like XK
//! handshakes (`admitted_*`, `refused` by reason); admissions over `/noise` are also counted
//! in `admitted_noise_inbound` / `admitted_noise_outbound`.

use std::net::IpAddr;

use futures::future::Either;
use futures::io::{AsyncRead, AsyncWrite};
use futures::FutureExt;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade};
use libp2p::core::{ConnectedPoint, Endpoint, Multiaddr};
use libp2p::identity::Keypair;
use libp2p::{noise, yamux, PeerId, Transport};
use multistream_select::{dialer_select_proto, listener_select_proto, Negotiated, Version};

use super::channel::{dialed_peer, multiplex, source_ip, SecureChannel, PROTOCOL};
use super::stats::Direction;
use super::stream::XkStream;
use super::HandshakeError;

/// The multistream-select name of libp2p-noise.
pub const NOISE: &str = "/noise";

/// A connection secured by whichever protocol was negotiated.
pub type OpenStream<C> = Either<XkStream<Negotiated<C>>, noise::Output<Negotiated<C>>>;

/// Why the open-mesh stack could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OpenSetupError {
    #[error("the /noise identity {identity} is not the secure channel's {channel}")]
    IdentityMismatch {
        identity: Box<PeerId>,
        channel: Box<PeerId>,
    },
    #[error("libp2p-noise: {0}")]
    Noise(#[from] noise::Error),
}

/// XK and `/noise` side by side, sharing one channel's guard and counters.
#[derive(Clone)]
pub struct OpenSecurity {
    channel: SecureChannel,
    noise: noise::Config,
}

impl std::fmt::Debug for OpenSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenSecurity")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

fn negotiation(error: multistream_select::NegotiationError) -> HandshakeError {
    HandshakeError::Negotiation(error.to_string())
}

fn noise_failure(error: noise::Error) -> HandshakeError {
    match error {
        // Plain network trouble keeps the names (and quiet logging) it has on the XK path.
        noise::Error::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            HandshakeError::Truncated
        }
        noise::Error::Io(e) => HandshakeError::Io(e),
        other => HandshakeError::Libp2pNoise(other),
    }
}

impl OpenSecurity {
    /// `identity` must be the key `channel` was made with: a peer must see one PeerId
    /// whichever protocol it speaks.
    pub fn new(identity: &Keypair, channel: SecureChannel) -> Result<Self, OpenSetupError> {
        let id = identity.public().to_peer_id();
        if id != channel.local_peer_id() {
            return Err(OpenSetupError::IdentityMismatch {
                identity: Box::new(id),
                channel: Box::new(channel.local_peer_id()),
            });
        }
        Ok(OpenSecurity {
            channel,
            noise: noise::Config::new(identity)?,
        })
    }

    pub fn channel(&self) -> &SecureChannel {
        &self.channel
    }

    /// Listening side, on a raw connection from `source`: guard, negotiation and either
    /// handshake under the channel's timeout; counted and logged.
    pub async fn inbound<C>(
        &self,
        io: C,
        source: Option<IpAddr>,
        addr: Option<&Multiaddr>,
    ) -> Result<(PeerId, OpenStream<C>), HandshakeError>
    where
        C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let channel = &self.channel;
        // The remote's identity when XK proved it before failing (for logs).
        let mut proven = None;
        let mut via_noise = false;
        let result = match channel.begin_inbound(source) {
            Err(refusal) => Err(HandshakeError::Guard(refusal)),
            Ok(slot) => {
                let work = async {
                    let (protocol, io) = listener_select_proto(io, [PROTOCOL, NOISE])
                        .await
                        .map_err(negotiation)?;
                    if protocol == NOISE {
                        via_noise = true;
                        let (peer, stream) = self
                            .noise
                            .clone()
                            .upgrade_inbound(io, NOISE)
                            .await
                            .map_err(noise_failure)?;
                        Ok((peer, Either::Right(stream)))
                    } else {
                        match channel.secure_inbound(io).await {
                            Ok((peer, stream)) => Ok((peer, Either::Left(stream))),
                            Err((error, peer)) => {
                                proven = peer;
                                Err(error)
                            }
                        }
                    }
                };
                let result = tokio::time::timeout(channel.handshake_timeout(), work)
                    .await
                    .unwrap_or(Err(HandshakeError::Timeout));
                slot.finish(result.is_ok());
                result
            }
        };
        self.record(Direction::Inbound, proven, addr, via_noise, &result);
        result
    }

    /// Dialing side, on a raw connection to `remote` (`None`: the address had no `/p2p/`,
    /// so only `/noise` is proposed); counted and logged.
    pub async fn outbound<C>(
        &self,
        io: C,
        remote: Option<PeerId>,
        addr: Option<&Multiaddr>,
    ) -> Result<(PeerId, OpenStream<C>), HandshakeError>
    where
        C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let channel = &self.channel;
        let checked = match remote {
            Some(peer) => channel.check_outbound(peer),
            None => Ok(()),
        };
        let mut via_noise = false;
        let result = match checked {
            Err(refusal) => Err(HandshakeError::Guard(refusal)),
            Ok(()) => {
                let work = async {
                    let proposals: Vec<&'static str> = match remote {
                        Some(_) => vec![PROTOCOL, NOISE],
                        None => vec![NOISE],
                    };
                    let (protocol, io) = dialer_select_proto(io, proposals, Version::V1Lazy)
                        .await
                        .map_err(negotiation)?;
                    match remote {
                        Some(expected) if protocol == PROTOCOL => channel
                            .secure_outbound(io, expected)
                            .await
                            .map(|(peer, stream)| (peer, Either::Left(stream))),
                        _ => {
                            via_noise = true;
                            let (peer, stream) = self
                                .noise
                                .clone()
                                .upgrade_outbound(io, NOISE)
                                .await
                                .map_err(noise_failure)?;
                            match remote {
                                Some(expected) if expected != peer => {
                                    Err(HandshakeError::UnexpectedPeer {
                                        expected: Box::new(expected),
                                        actual: Box::new(peer),
                                    })
                                }
                                _ => Ok((peer, Either::Right(stream))),
                            }
                        }
                    }
                };
                let result = tokio::time::timeout(channel.handshake_timeout(), work)
                    .await
                    .unwrap_or(Err(HandshakeError::Timeout));
                if let Some(peer) = remote {
                    channel.finish_outbound(peer, result.is_ok());
                }
                result
            }
        };
        self.record(Direction::Outbound, remote, addr, via_noise, &result);
        result
    }

    fn record<S>(
        &self,
        direction: Direction,
        peer: Option<PeerId>,
        addr: Option<&Multiaddr>,
        via_noise: bool,
        result: &Result<(PeerId, S), HandshakeError>,
    ) {
        let outcome = result.as_ref().map(|(peer, _)| *peer);
        self.channel.record(direction, peer, addr, outcome);
        if let (true, Ok(remote)) = (via_noise, outcome) {
            self.channel.stats().count_admitted_via_noise(direction);
            tracing::debug!(peer = %remote, direction = direction.as_str(), "admitted over /noise");
        }
    }
}

/// Secures every connection of `transport` with XK or `/noise` as negotiated (see the
/// module docs), then multiplexes it with yamux.
pub fn upgrade_transport<T>(
    transport: T,
    security: OpenSecurity,
    yamux_config: yamux::Config,
) -> Boxed<(PeerId, StreamMuxerBox)>
where
    T: Transport + Send + Unpin + 'static,
    T::Output: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T::Error: Send + Sync + 'static,
    T::Dial: Send + 'static,
    T::ListenerUpgrade: Send + 'static,
{
    transport
        .and_then(move |io, endpoint: ConnectedPoint| {
            let security = security.clone();
            let yamux_config = yamux_config.clone();
            async move {
                match endpoint {
                    ConnectedPoint::Dialer {
                        address,
                        role_override: Endpoint::Dialer,
                        ..
                    } => {
                        let remote = dialed_peer(&address);
                        let (peer, stream) = security.outbound(io, remote, Some(&address)).await?;
                        Ok::<_, HandshakeError>((
                            peer,
                            multiplex(stream, true, yamux_config).await?,
                        ))
                    }
                    endpoint => {
                        let address = endpoint.get_remote_address().clone();
                        let source = source_ip(&address);
                        let (peer, stream) = security.inbound(io, source, Some(&address)).await?;
                        Ok((peer, multiplex(stream, false, yamux_config).await?))
                    }
                }
            }
            .boxed()
        })
        .boxed()
}
