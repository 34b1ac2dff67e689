//! The BetaNet-style secure channel: `Noise_XK_25519_ChaChaPoly_SHA256` with admission
//! tickets carried in the handshake, as a libp2p security upgrade.
//!
//! - [`keys`]: Ed25519 identities as X25519 static keys (so a PeerId is enough to run XK).
//! - [`handshake`]: the three Noise messages and the verdict, as pure steps.
//! - [`frame`]: 2-byte length framing, pure.
//! - [`stream`]: the encrypted stream, with buffering and rekeying.
//! - [`admission`]: the mesh root, own ticket and revocations a node judges peers by.
//! - [`guard`]: handshake abuse limits, a pure state machine.
//! - [`channel`]: the I/O edge: runs the above over a socket and plugs into libp2p.
//! - [`open`]: the TCP stack of an open mesh, which also speaks libp2p's `/noise`.
//!
//! The wire protocol is specified in `docs/secure-channel.md`.

pub mod admission;
pub mod channel;
mod crypto;
pub mod frame;
pub mod guard;
pub mod handshake;
pub mod keys;
pub mod log_limit;
pub mod open;
pub mod stats;
pub mod stream;

pub use admission::AdmissionPolicy;
pub use channel::{
    upgrade_transport, Refusal, SecureChannel, SecureChannelConfig, XkUpgrade, PROTOCOL,
};
pub use guard::{GuardConfig, GuardRefusal};
pub use stats::{SecuritySnapshot, SecurityStats};
pub use stream::{RekeyPolicy, XkStream};

use libp2p::PeerId;

use crate::ticket::TicketError;

/// Why a handshake failed. [`HandshakeError::reason`] gives the stable name that is logged
/// and counted.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("noise: {0}")]
    Noise(snow::Error),
    #[error("malformed handshake payload: {0}")]
    MalformedPayload(String),
    #[error("the identity key does not match the Noise static key")]
    IdentityMismatch,
    #[error("remote key unusable: {0}")]
    RemoteKey(keys::KeyError),
    #[error("no ticket presented, and this mesh requires one")]
    MissingTicket,
    #[error("ticket refused: {0}")]
    Ticket(TicketError),
    #[error("refused by the remote: {0}")]
    RefusedByRemote(String),
    #[error("bad frame: {0}")]
    Frame(frame::FrameError),
    #[error("connection closed during the handshake")]
    Truncated,
    #[error("i/o during the handshake: {0}")]
    Io(std::io::Error),
    #[error("handshake timed out")]
    Timeout,
    #[error("the address has no /p2p/<PeerId> component; Noise XK must know whom it dials")]
    NoRemotePeerId,
    #[error("{0}")]
    Guard(GuardRefusal),
    #[error("protocol negotiation failed: {0}")]
    Negotiation(String),
    #[error("muxer: {0}")]
    Muxer(std::io::Error),
    /// A `/noise` handshake (open meshes only) failed.
    #[error("libp2p-noise: {0}")]
    Libp2pNoise(libp2p::noise::Error),
    /// We dialled `/p2p/<expected>` over `/noise`, and the remote proved another identity.
    #[error("dialled {expected}, but the remote proved to be {actual}")]
    UnexpectedPeer {
        // Boxed: two PeerIds would make every handshake result twice as large.
        expected: Box<PeerId>,
        actual: Box<PeerId>,
    },
}

impl HandshakeError {
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeError::Noise(snow::Error::Decrypt) => "decrypt_failed",
            HandshakeError::Noise(snow::Error::Dh) => "bad_key_exchange",
            HandshakeError::Noise(_) => "noise_error",
            HandshakeError::MalformedPayload(_) => "malformed_payload",
            HandshakeError::IdentityMismatch => "identity_mismatch",
            HandshakeError::RemoteKey(_) => "invalid_remote_key",
            HandshakeError::MissingTicket => "missing_ticket",
            HandshakeError::Ticket(e) => e.reason(),
            HandshakeError::RefusedByRemote(_) => "refused_by_remote",
            HandshakeError::Frame(_) => "bad_frame",
            HandshakeError::Truncated => "truncated",
            HandshakeError::Io(_) => "io",
            HandshakeError::Timeout => "timeout",
            HandshakeError::NoRemotePeerId => "no_remote_peer_id",
            HandshakeError::Guard(g) => g.reason(),
            HandshakeError::Negotiation(_) => "negotiation",
            HandshakeError::Muxer(_) => "muxer",
            HandshakeError::Libp2pNoise(_) => "libp2p_noise",
            HandshakeError::UnexpectedPeer { .. } => "unexpected_peer",
        }
    }
}
