//! Transport stacks for fogmesh nodes.
//!
//! [`build_transport`] composes what a node speaks on the internet side: TCP upgraded with a
//! secure channel and yamux, plus QUIC, optionally behind DNS resolution. Everything is boxed to
//! `(PeerId, StreamMuxerBox)` so the swarm does not care which stack a connection came from.
//!
//! The secure channel on TCP is libp2p-noise (XX) for now; the BetaNet-style channel
//! (Noise XK with admission tickets) replaces it here, in one place, without touching the swarm.

pub mod ticket;

use std::time::Duration;

use futures::future::Either;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, OptionalTransport};
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::{dns, noise, quic, tcp, yamux, PeerId, Transport};

/// Which transports a node runs.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub tcp: bool,
    pub quic: bool,
    /// Resolve `/dns*` multiaddrs through the system resolver when it can be read.
    pub dns: bool,
    /// Upper bound for the security and muxer upgrade of one TCP connection.
    pub upgrade_timeout: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            tcp: true,
            quic: true,
            dns: true,
            upgrade_timeout: Duration::from_secs(20),
        }
    }
}

/// Why a transport stack could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TransportBuildError {
    #[error("no transport enabled: enable at least one of tcp and quic")]
    NothingEnabled,
    #[error("secure channel setup failed: {0}")]
    Security(#[from] noise::Error),
}

/// The boxed transport a swarm is built on.
pub type BoxedTransport = Boxed<(PeerId, StreamMuxerBox)>;

/// Builds the internet-side transport stack for `keypair`.
pub fn build_transport(
    keypair: &Keypair,
    config: &TransportConfig,
) -> Result<BoxedTransport, TransportBuildError> {
    if !config.tcp && !config.quic {
        return Err(TransportBuildError::NothingEnabled);
    }
    if config.dns {
        match dns::tokio::Transport::system(ip_stack(keypair, config)?) {
            Ok(with_dns) => return Ok(with_dns.boxed()),
            // A device without a readable resolver configuration (some phones, minimal
            // containers) still works with IP multiaddrs, so DNS is best effort.
            Err(error) => {
                tracing::warn!(%error, "system DNS configuration unreadable; /dns multiaddrs will not resolve")
            }
        }
    }
    ip_stack(keypair, config)
}

fn ip_stack(
    keypair: &Keypair,
    config: &TransportConfig,
) -> Result<BoxedTransport, TransportBuildError> {
    let tcp_stack = if config.tcp {
        let noise = noise::Config::new(keypair)?;
        OptionalTransport::some(
            tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                .upgrade(Version::V1Lazy)
                .authenticate(noise)
                .multiplex(yamux::Config::default())
                .timeout(config.upgrade_timeout),
        )
    } else {
        OptionalTransport::none()
    };
    let quic_stack = if config.quic {
        OptionalTransport::some(quic::tokio::Transport::new(quic::Config::new(keypair)))
    } else {
        OptionalTransport::none()
    };
    Ok(tcp_stack
        .or_transport(quic_stack)
        .map(|either, _| match either {
            Either::Left((peer, muxer)) => (peer, StreamMuxerBox::new(muxer)),
            Either::Right((peer, muxer)) => (peer, StreamMuxerBox::new(muxer)),
        })
        .boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_an_empty_stack() {
        let key = Keypair::generate_ed25519();
        let config = TransportConfig {
            tcp: false,
            quic: false,
            ..TransportConfig::default()
        };
        assert!(matches!(
            build_transport(&key, &config),
            Err(TransportBuildError::NothingEnabled)
        ));
    }
}
