//! The Noise XK handshake as pure steps: each takes the message received and returns the
//! message to send. No sockets and no clock (the time for ticket checks comes in); the only
//! randomness is the ephemeral key, which snow draws inside.
//!
//! ```text
//! initiator                                   responder
//!   msg1  -> e, es            payload: empty
//!   msg2  <- e, ee            payload: ResponderHello { ticket }
//!   msg3  -> s, se            payload: InitiatorHello { identity_key, ticket, refusal }
//!   frame <- (transport #0)   Verdict { admitted, reason }
//! ```
//!
//! The responder proves its identity by decrypting msg1 and producing msg2 (both need the
//! static key derived from its PeerId). The initiator proves its identity with `se`, and
//! msg3 names the Ed25519 key whose Montgomery form must equal the static key `s`. Each
//! side checks the other's ticket; a refusing initiator says why in msg3, a refusing
//! responder says why in the verdict, so both ends can log the reason.

use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use snow::{HandshakeState, TransportState};

use fogmesh_store::codec;

use crate::ticket::{Admission, MAX_TICKET_LEN};

use super::admission::AdmissionPolicy;
use super::crypto::Resolver;
use super::frame::TAG_LEN;
use super::keys::{self, LocalKeys, KEY_LEN};
use super::HandshakeError;

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_XK_25519_ChaChaPoly_SHA256";
/// Mixed into the handshake hash so a transcript cannot be replayed under another protocol.
pub const PROLOGUE: &[u8] = b"/fogmesh/xk/1";
/// Largest handshake payload we decode (a ticket plus field overhead).
pub const MAX_PAYLOAD: usize = MAX_TICKET_LEN + 512;

/// msg2 payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponderHello {
    #[serde(with = "serde_bytes")]
    pub ticket: Option<Vec<u8>>,
}

/// msg3 payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitiatorHello {
    /// The initiator's raw 32-byte Ed25519 public key.
    #[serde(with = "serde_bytes")]
    pub identity_key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub ticket: Option<Vec<u8>>,
    /// Set when the initiator refuses the responder; the connection ends after msg3.
    pub refusal: Option<String>,
}

/// The responder's first transport message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub admitted: bool,
    pub reason: Option<String>,
}

/// A finished handshake: the cipher states and who is on the other end.
#[derive(Debug)]
pub struct Established {
    pub session: TransportState,
    pub remote: PeerId,
    /// The remote's verified ticket (None on an open policy).
    pub admission: Option<Admission>,
}

/// A failed step: why, and possibly a last message that tells the remote why.
#[derive(Debug)]
pub struct Failure {
    pub error: HandshakeError,
    pub farewell: Option<Vec<u8>>,
    /// Who the remote proved to be, when the handshake got that far.
    pub remote: Option<PeerId>,
}

impl From<HandshakeError> for Box<Failure> {
    fn from(error: HandshakeError) -> Self {
        Box::new(Failure {
            error,
            farewell: None,
            remote: None,
        })
    }
}

fn builder() -> Result<snow::Builder<'static>, HandshakeError> {
    let params = NOISE_PARAMS
        .parse()
        .map_err(|e: snow::Error| HandshakeError::Noise(e))?;
    snow::Builder::with_resolver(params, Box::new(Resolver))
        .prologue(PROLOGUE)
        .map_err(HandshakeError::Noise)
}

fn write(state: &mut HandshakeState, payload: &[u8]) -> Result<Vec<u8>, HandshakeError> {
    // Room for two keys, two tags and the payload; snow reports the exact length.
    let mut out = vec![0u8; payload.len() + 2 * KEY_LEN + 2 * TAG_LEN];
    let n = state
        .write_message(payload, &mut out)
        .map_err(HandshakeError::Noise)?;
    out.truncate(n);
    Ok(out)
}

fn read(state: &mut HandshakeState, message: &[u8]) -> Result<Vec<u8>, HandshakeError> {
    let mut payload = vec![0u8; message.len()];
    let n = state
        .read_message(message, &mut payload)
        .map_err(HandshakeError::Noise)?;
    payload.truncate(n);
    Ok(payload)
}

fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, HandshakeError> {
    codec::decode_bounded(payload, MAX_PAYLOAD)
        .map_err(|e| HandshakeError::MalformedPayload(e.to_string()))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, HandshakeError> {
    codec::encode(value).map_err(|e| HandshakeError::MalformedPayload(e.to_string()))
}

/// The dialing side, after sending msg1.
pub struct Initiator {
    state: HandshakeState,
    remote: PeerId,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiator")
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

impl Initiator {
    /// Starts a handshake with `remote`, returning msg1.
    pub fn start(
        local: &LocalKeys,
        remote: PeerId,
    ) -> Result<(Initiator, Vec<u8>), HandshakeError> {
        let remote_static = keys::static_key_of(&remote).map_err(HandshakeError::RemoteKey)?;
        let mut state = builder()?
            .local_private_key(local.static_secret())
            .and_then(|b| b.remote_public_key(&remote_static))
            .and_then(|b| b.build_initiator())
            .map_err(HandshakeError::Noise)?;
        let msg1 = write(&mut state, &[])?;
        Ok((Initiator { state, remote }, msg1))
    }

    /// Reads msg2, checks the responder's ticket, and returns msg3.
    pub fn on_responder_hello(
        mut self,
        msg2: &[u8],
        local: &LocalKeys,
        policy: &AdmissionPolicy,
        now: u64,
    ) -> Result<(AwaitingVerdict, Vec<u8>), Box<Failure>> {
        let payload = read(&mut self.state, msg2)?;
        let hello: ResponderHello = decode(&payload)?;
        let mut reply = InitiatorHello {
            identity_key: local.identity_public().to_vec(),
            ticket: policy.own_ticket().map(<[u8]>::to_vec),
            refusal: None,
        };
        match policy.check(hello.ticket.as_deref(), &self.remote, now) {
            Ok(admission) => {
                let msg3 = write(&mut self.state, &encode(&reply)?)?;
                let session = self
                    .state
                    .into_transport_mode()
                    .map_err(HandshakeError::Noise)?;
                Ok((
                    AwaitingVerdict {
                        session,
                        remote: self.remote,
                        admission,
                    },
                    msg3,
                ))
            }
            Err(error) => {
                reply.ticket = None;
                reply.refusal = Some(error.reason().to_owned());
                let farewell = encode(&reply).and_then(|p| write(&mut self.state, &p)).ok();
                Err(Box::new(Failure {
                    error,
                    farewell,
                    remote: Some(self.remote),
                }))
            }
        }
    }
}

/// The dialing side, after sending msg3: waiting to hear whether it was admitted.
#[derive(Debug)]
pub struct AwaitingVerdict {
    session: TransportState,
    remote: PeerId,
    admission: Option<Admission>,
}

impl AwaitingVerdict {
    /// Reads the responder's verdict (the body of its first transport frame).
    pub fn on_verdict(mut self, frame: &[u8]) -> Result<Established, HandshakeError> {
        let mut plain = vec![0u8; frame.len()];
        let n = self
            .session
            .read_message(frame, &mut plain)
            .map_err(HandshakeError::Noise)?;
        let verdict: Verdict = decode(&plain[..n])?;
        if !verdict.admitted {
            return Err(HandshakeError::RefusedByRemote(
                verdict.reason.unwrap_or_else(|| "unspecified".to_owned()),
            ));
        }
        Ok(Established {
            session: self.session,
            remote: self.remote,
            admission: self.admission,
        })
    }
}

/// The listening side.
pub struct Responder {
    state: HandshakeState,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder").finish_non_exhaustive()
    }
}

impl Responder {
    pub fn new(local: &LocalKeys) -> Result<Responder, HandshakeError> {
        let state = builder()?
            .local_private_key(local.static_secret())
            .and_then(|b| b.build_responder())
            .map_err(HandshakeError::Noise)?;
        Ok(Responder { state })
    }

    /// Reads msg1 and returns msg2, carrying this node's ticket.
    pub fn on_opening(
        &mut self,
        msg1: &[u8],
        policy: &AdmissionPolicy,
    ) -> Result<Vec<u8>, HandshakeError> {
        let payload = read(&mut self.state, msg1)?;
        if !payload.is_empty() {
            return Err(HandshakeError::MalformedPayload(
                "msg1 must carry no payload".to_owned(),
            ));
        }
        let hello = ResponderHello {
            ticket: policy.own_ticket().map(<[u8]>::to_vec),
        };
        write(&mut self.state, &encode(&hello)?)
    }

    /// Reads msg3, checks the initiator's identity and ticket, and returns the outcome with
    /// the verdict frame body to send (when the handshake got far enough to encrypt one).
    pub fn on_initiator_hello(
        mut self,
        msg3: &[u8],
        policy: &AdmissionPolicy,
        now: u64,
    ) -> Result<(Established, Vec<u8>), Box<Failure>> {
        let payload = read(&mut self.state, msg3)?;
        let hello: InitiatorHello = decode(&payload)?;
        if let Some(reason) = hello.refusal {
            return Err(HandshakeError::RefusedByRemote(reason).into());
        }
        let identity: [u8; KEY_LEN] = hello.identity_key.as_slice().try_into().map_err(|_| {
            HandshakeError::MalformedPayload("identity key is not 32 bytes".to_owned())
        })?;
        let remote_static = self
            .state
            .get_remote_static()
            .ok_or(HandshakeError::IdentityMismatch)?;
        let claimed_static = keys::montgomery(&identity).map_err(HandshakeError::RemoteKey)?;
        if claimed_static.as_slice() != remote_static {
            return Err(HandshakeError::IdentityMismatch.into());
        }
        let remote = keys::peer_id_of(&identity).map_err(HandshakeError::RemoteKey)?;
        let proven = |error: HandshakeError| {
            Box::new(Failure {
                error,
                farewell: None,
                remote: Some(remote),
            })
        };
        let mut session = self
            .state
            .into_transport_mode()
            .map_err(|e| proven(HandshakeError::Noise(e)))?;
        let decision = policy.check(hello.ticket.as_deref(), &remote, now);
        let verdict = match &decision {
            Ok(_) => Verdict {
                admitted: true,
                reason: None,
            },
            Err(error) => Verdict {
                admitted: false,
                reason: Some(error.reason().to_owned()),
            },
        };
        let plain = encode(&verdict).map_err(proven)?;
        let mut frame = vec![0u8; plain.len() + TAG_LEN];
        let n = session
            .write_message(&plain, &mut frame)
            .map_err(|e| proven(HandshakeError::Noise(e)))?;
        frame.truncate(n);
        match decision {
            Ok(admission) => Ok((
                Established {
                    session,
                    remote,
                    admission,
                },
                frame,
            )),
            Err(error) => Err(Box::new(Failure {
                error,
                farewell: Some(frame),
                remote: Some(remote),
            })),
        }
    }
}
