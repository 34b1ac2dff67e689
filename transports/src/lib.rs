//! Transport stacks for fogmesh nodes.
//!
//! [`build_transport`] composes what a node speaks on the internet side: the BetaNet-style
//! TCP path (TCP, then the [`secure`] channel — Noise XK with admission tickets — then yamux),
//! plus QUIC in open meshes, optionally behind DNS resolution. Everything is boxed to
//! `(PeerId, StreamMuxerBox)` so the swarm does not care which stack a connection came from.
//!
//! QUIC brings its own TLS handshake, which has no place for tickets, so a node whose mesh
//! requires tickets does not run QUIC at all: every connection it has went through the
//! ticket check before any application protocol could send a byte.
//!
//! An open mesh admits anyone, so its TCP path also speaks libp2p's own `/noise`
//! ([`secure::open`]): stock libp2p peers connect over TCP as they do over QUIC.
//!
//! A relayed connection (circuit relay v2, `/p2p-circuit` addresses) is a byte stream
//! through a relay, so it goes through the same secure channel as TCP: the ticket check and
//! the encryption run end to end between the two peers, and the relay sees ciphertext only.

pub mod ble;
pub mod secure;
pub mod ticket;

use std::time::Duration;

use futures::future::Either;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::timeout::TransportTimeout;
use libp2p::core::transport::{Boxed, MemoryTransport, OptionalTransport};
use libp2p::identity::Keypair;
use libp2p::{dns, quic, relay, tcp, yamux, PeerId, Transport};

use secure::open::OpenSecurity;
use secure::SecureChannel;

/// What kind of link a connection is: what decides its budgets (message sizes, telemetry
/// cadence, relay preference) and its timing margins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkKind {
    /// Bluetooth LE (`/unix/ble-<device>` addresses): slow, lossy, low-power.
    Radio,
    /// TCP, QUIC or the in-process memory transport.
    Internet,
}

impl LinkKind {
    /// The kind of a connection by its remote address.
    pub fn of(addr: &libp2p::Multiaddr) -> LinkKind {
        let radio = addr.iter().any(|p| {
            matches!(p, libp2p::multiaddr::Protocol::Unix(name) if name.starts_with(ble::transport::PREFIX))
        });
        if radio {
            LinkKind::Radio
        } else {
            LinkKind::Internet
        }
    }
}

/// Which transports a node runs.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub tcp: bool,
    /// Wanted QUIC; only honoured in an open mesh (see the module docs).
    pub quic: bool,
    /// Resolve `/dns*` multiaddrs through the system resolver when it can be read.
    pub dns: bool,
    /// Upper bound for the security and muxer upgrade of one TCP connection.
    pub upgrade_timeout: Duration,
    /// Upper bound for a TCP connect. A SYN that a NAT or firewall drops silently is
    /// otherwise retried for minutes by the kernel; a dial-back test (AutoNAT) must fail
    /// well within its 10 s to report the address unreachable.
    pub connect_timeout: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            tcp: true,
            quic: true,
            dns: true,
            upgrade_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a transport stack could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TransportBuildError {
    #[error("no transport enabled: enable at least one of tcp and quic (QUIC is off in a mesh that requires tickets)")]
    NothingEnabled,
    #[error("open-mesh TCP security: {0}")]
    OpenMesh(#[from] secure::open::OpenSetupError),
    #[error("DNS resolver configuration changed while the transport was built: {0}")]
    Dns(String),
}

/// The boxed transport a swarm is built on.
pub type BoxedTransport = Boxed<(PeerId, StreamMuxerBox)>;

/// Whether QUIC runs under `config` with `channel`'s admission policy.
pub fn quic_enabled(config: &TransportConfig, channel: &SecureChannel) -> bool {
    config.quic && !channel.policy().requires_tickets()
}

/// Builds the internet-side transport stack for `keypair`, secured by `channel`; with
/// `relay`, `/p2p-circuit` addresses are dialled and listened on through relays too.
pub fn build_transport(
    keypair: &Keypair,
    channel: &SecureChannel,
    config: &TransportConfig,
    relay: Option<relay::client::Transport>,
) -> Result<BoxedTransport, TransportBuildError> {
    if !config.tcp && !quic_enabled(config, channel) {
        return Err(TransportBuildError::NothingEnabled);
    }
    let stack = ip_stack(keypair, channel, config, relay)?;
    if !config.dns {
        return Ok(stack);
    }
    // Probe the resolver configuration first: a failed wrap would drop the stack, and with
    // it the relay transport its relay behaviour must outlive.
    if let Err(error) = dns::tokio::Transport::system(()) {
        // A device without a readable resolver configuration (some phones, minimal
        // containers) still works with IP multiaddrs, so DNS is best effort.
        tracing::warn!(%error, "system DNS configuration unreadable; /dns multiaddrs will not resolve");
        return Ok(stack);
    }
    dns::tokio::Transport::system(stack)
        .map(|with_dns| with_dns.boxed())
        .map_err(|e| TransportBuildError::Dns(e.to_string()))
}

/// Puts the node's security and multiplexing on any byte-stream transport: XK with tickets
/// in a closed mesh, XK beside libp2p's `/noise` in an open one (see the module docs), then
/// yamux, all within `upgrade_timeout`. TCP goes through here, and so do the in-memory
/// transport of tests and the coming BLE links: one admission path for every link.
pub fn secure_transport<T>(
    keypair: &Keypair,
    channel: &SecureChannel,
    base: T,
    upgrade_timeout: Duration,
) -> Result<BoxedTransport, TransportBuildError>
where
    T: Transport + Send + Unpin + 'static,
    T::Output: futures::AsyncRead + futures::AsyncWrite + Unpin + Send + 'static,
    T::Error: Send + Sync + 'static,
    T::Dial: Send + 'static,
    T::ListenerUpgrade: Send + 'static,
{
    let secured = if channel.policy().requires_tickets() {
        secure::upgrade_transport(base, channel.clone(), yamux::Config::default())
    } else {
        let security = OpenSecurity::new(keypair, channel.clone())?;
        secure::open::upgrade_transport(base, security, yamux::Config::default())
    };
    Ok(TransportTimeout::new(secured, upgrade_timeout).boxed())
}

/// The in-process transport (`/memory/<port>` addresses) with the real secure channel and
/// yamux on top: what the in-memory test network runs on. Ports are process-wide. With
/// `relay`, circuits through relays run over it too.
pub fn build_memory_transport(
    keypair: &Keypair,
    channel: &SecureChannel,
    config: &TransportConfig,
    relay: Option<relay::client::Transport>,
) -> Result<BoxedTransport, TransportBuildError> {
    secure_transport(
        keypair,
        channel,
        optional(relay).or_transport(MemoryTransport::default()),
        config.upgrade_timeout,
    )
}

fn optional<T>(transport: Option<T>) -> OptionalTransport<T> {
    transport.map_or_else(OptionalTransport::none, OptionalTransport::some)
}

fn ip_stack(
    keypair: &Keypair,
    channel: &SecureChannel,
    config: &TransportConfig,
    relay: Option<relay::client::Transport>,
) -> Result<BoxedTransport, TransportBuildError> {
    let tcp_stack = if config.tcp || relay.is_some() {
        let tcp = config.tcp.then(|| {
            TransportTimeout::with_outgoing_timeout(
                tcp::tokio::Transport::new(tcp::Config::default().nodelay(true)),
                config.connect_timeout,
            )
        });
        OptionalTransport::some(secure_transport(
            keypair,
            channel,
            optional(relay).or_transport(optional(tcp)),
            config.upgrade_timeout,
        )?)
    } else {
        OptionalTransport::none()
    };
    let quic_stack = if quic_enabled(config, channel) {
        OptionalTransport::some(quic::tokio::Transport::new(quic::Config::new(keypair)))
    } else {
        OptionalTransport::none()
    };
    Ok(tcp_stack
        .or_transport(quic_stack)
        .map(|either, _| match either {
            Either::Left((peer, muxer)) => (peer, muxer),
            Either::Right((peer, muxer)) => (peer, StreamMuxerBox::new(muxer)),
        })
        .boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mesh_that_requires_tickets_runs_no_quic() {
        let key = Keypair::generate_ed25519();
        let config = TransportConfig::default();
        let open = SecureChannel::new(
            &key,
            secure::SecureChannelConfig::new(secure::AdmissionPolicy::open()),
        )
        .unwrap();
        assert!(quic_enabled(&config, &open));
        let root = Keypair::generate_ed25519();
        let closed = SecureChannel::new(
            &key,
            secure::SecureChannelConfig::new(secure::AdmissionPolicy::closed(
                root.public(),
                Vec::new(),
                Default::default(),
            )),
        )
        .unwrap();
        assert!(!quic_enabled(&config, &closed));
        // With TCP off too, nothing is left to run.
        let tcp_off = TransportConfig {
            tcp: false,
            ..TransportConfig::default()
        };
        assert!(matches!(
            build_transport(&key, &closed, &tcp_off, None),
            Err(TransportBuildError::NothingEnabled)
        ));
    }

    #[tokio::test]
    async fn an_open_mesh_stack_needs_the_channels_own_identity() {
        // XK and /noise must prove the same PeerId, or a peer would see two identities.
        let channel = SecureChannel::new(
            &Keypair::generate_ed25519(),
            secure::SecureChannelConfig::new(secure::AdmissionPolicy::open()),
        )
        .unwrap();
        let config = TransportConfig {
            dns: false,
            ..TransportConfig::default()
        };
        assert!(matches!(
            build_transport(&Keypair::generate_ed25519(), &channel, &config, None),
            Err(TransportBuildError::OpenMesh(
                secure::open::OpenSetupError::IdentityMismatch { .. }
            ))
        ));
    }

    #[test]
    fn refuses_an_empty_stack() {
        let key = Keypair::generate_ed25519();
        let config = TransportConfig {
            tcp: false,
            quic: false,
            ..TransportConfig::default()
        };
        let channel = SecureChannel::new(
            &key,
            secure::SecureChannelConfig::new(secure::AdmissionPolicy::open()),
        )
        .unwrap();
        assert!(matches!(
            build_transport(&key, &channel, &config, None),
            Err(TransportBuildError::NothingEnabled)
        ));
    }
}
