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
//!
//! Payloads are decoded strictly: a payload is accepted only if it is byte for byte the
//! encoding this module would produce for the value it decodes to (see [`decode_exact`]).
//! Every way of writing one value but ours is refused, so two implementations can never
//! disagree about what a message said.

use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use snow::{HandshakeState, TransportState};

use fogmesh_wire::codec;

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
/// Longest reason name carried in a refusal or verdict.
pub const MAX_REASON_LEN: usize = 64;

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

/// A fixed ephemeral private key, for test vectors only: a real handshake draws a fresh one.
pub type FixedEphemeral<'a> = Option<&'a [u8; KEY_LEN]>;

fn builder(ephemeral: FixedEphemeral<'_>) -> Result<snow::Builder<'_>, HandshakeError> {
    let params = NOISE_PARAMS
        .parse()
        .map_err(|e: snow::Error| HandshakeError::Noise(e))?;
    let builder = snow::Builder::with_resolver(params, Box::new(Resolver))
        .prologue(PROLOGUE)
        .map_err(HandshakeError::Noise)?;
    Ok(match ephemeral {
        Some(key) => builder.fixed_ephemeral_key_for_testing_only(key),
        None => builder,
    })
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

fn malformed(why: impl Into<String>) -> HandshakeError {
    HandshakeError::MalformedPayload(why.into())
}

/// Decodes `payload` as `T`, accepting only the exact bytes [`encode`] gives for the result:
/// a definite-length map with exactly `T`'s keys in declaration order, shortest-form
/// lengths and integers, no tags, absent values as an explicit `null`. Comparing with a
/// re-encoding states all of that in one check, whatever the CBOR decoder would tolerate.
pub fn decode_exact<T>(payload: &[u8]) -> Result<T, HandshakeError>
where
    T: serde::de::DeserializeOwned + Serialize,
{
    let value: T =
        codec::decode_bounded(payload, MAX_PAYLOAD).map_err(|e| malformed(e.to_string()))?;
    if encode(&value)? != payload {
        return Err(malformed(
            "not the canonical encoding (key order, unknown or missing keys, or non-shortest form)",
        ));
    }
    Ok(value)
}

/// Encodes a payload the way [`decode_exact`] requires.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, HandshakeError> {
    codec::encode(value).map_err(|e| malformed(e.to_string()))
}

/// Reason names travel between implementations and end up in logs: plain snake_case only,
/// so a peer cannot write arbitrary text into our log lines.
fn check_reason(reason: &str) -> Result<(), HandshakeError> {
    let plain = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
    if reason.is_empty() || reason.len() > MAX_REASON_LEN || !reason.bytes().all(plain) {
        return Err(malformed(
            "a reason name must be 1-64 characters of a-z, 0-9 and _",
        ));
    }
    Ok(())
}

/// Decodes msg2's payload.
pub fn decode_responder_hello(payload: &[u8]) -> Result<ResponderHello, HandshakeError> {
    decode_exact(payload)
}

/// Decodes msg3's payload: the exact map, a 32-byte identity key, a well-formed refusal.
pub fn decode_initiator_hello(payload: &[u8]) -> Result<InitiatorHello, HandshakeError> {
    let hello: InitiatorHello = decode_exact(payload)?;
    if hello.identity_key.len() != KEY_LEN {
        return Err(malformed("identity_key is not 32 bytes"));
    }
    if let Some(reason) = &hello.refusal {
        check_reason(reason)?;
    }
    Ok(hello)
}

/// Decodes a verdict: `reason` is null exactly when `admitted` is true.
pub fn decode_verdict(plaintext: &[u8]) -> Result<Verdict, HandshakeError> {
    let verdict: Verdict = decode_exact(plaintext)?;
    match (&verdict.reason, verdict.admitted) {
        (None, true) => {}
        (Some(reason), false) => check_reason(reason)?,
        (Some(_), true) => return Err(malformed("an admitting verdict carries a reason")),
        (None, false) => return Err(malformed("a refusing verdict carries no reason")),
    }
    Ok(verdict)
}

/// Seals the verdict as the responder's first transport message.
fn seal_verdict(
    session: &mut TransportState,
    refusal: Option<&HandshakeError>,
) -> Result<Vec<u8>, HandshakeError> {
    let verdict = Verdict {
        admitted: refusal.is_none(),
        reason: refusal.map(|e| e.reason().to_owned()),
    };
    let plain = encode(&verdict)?;
    let mut frame = vec![0u8; plain.len() + TAG_LEN];
    let n = session
        .write_message(&plain, &mut frame)
        .map_err(HandshakeError::Noise)?;
    frame.truncate(n);
    Ok(frame)
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
        Self::start_with(local, remote, None)
    }

    /// [`Self::start`] with a chosen ephemeral key: for test vectors, never for real peers.
    #[doc(hidden)]
    pub fn start_with(
        local: &LocalKeys,
        remote: PeerId,
        ephemeral: FixedEphemeral<'_>,
    ) -> Result<(Initiator, Vec<u8>), HandshakeError> {
        Self::start_verbatim(local, remote, ephemeral, &[])
    }

    /// [`Self::start_with`] sending `payload` in msg1, which must be empty: a misbehaving
    /// initiator, for test vectors.
    #[doc(hidden)]
    pub fn start_verbatim(
        local: &LocalKeys,
        remote: PeerId,
        ephemeral: FixedEphemeral<'_>,
        payload: &[u8],
    ) -> Result<(Initiator, Vec<u8>), HandshakeError> {
        let remote_static = keys::static_key_of(&remote).map_err(HandshakeError::RemoteKey)?;
        let mut state = builder(ephemeral)?
            .local_private_key(local.static_secret())
            .and_then(|b| b.remote_public_key(&remote_static))
            .and_then(|b| b.build_initiator())
            .map_err(HandshakeError::Noise)?;
        let msg1 = write(&mut state, payload)?;
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
        // The responder has proven its key by now, so even a payload we cannot use is
        // answered with a refusal naming why, rather than a bare close.
        let decision = decode_responder_hello(&payload)
            .and_then(|hello| policy.check(hello.ticket.as_deref(), &self.remote, now));
        // A refusing initiator still names its identity key: msg3's shape never varies.
        let mut reply = InitiatorHello {
            identity_key: local.identity_public().to_vec(),
            ticket: policy.own_ticket().map(<[u8]>::to_vec),
            refusal: None,
        };
        match decision {
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

impl Initiator {
    /// Reads msg2 and answers with `payload` as msg3, whatever it holds and without judging
    /// the responder: a misbehaving initiator, for test vectors and fuzzing.
    #[doc(hidden)]
    pub fn answer_verbatim(
        mut self,
        msg2: &[u8],
        payload: &[u8],
    ) -> Result<(AwaitingVerdict, Vec<u8>), HandshakeError> {
        read(&mut self.state, msg2)?;
        let msg3 = write(&mut self.state, payload)?;
        let session = self
            .state
            .into_transport_mode()
            .map_err(HandshakeError::Noise)?;
        Ok((
            AwaitingVerdict {
                session,
                remote: self.remote,
                admission: None,
            },
            msg3,
        ))
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
        let verdict = decode_verdict(&plain[..n])?;
        if let Some(reason) = verdict.reason {
            return Err(HandshakeError::RefusedByRemote(reason));
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
        Self::with_ephemeral(local, None)
    }

    /// [`Self::new`] with a chosen ephemeral key: for test vectors, never for real peers.
    #[doc(hidden)]
    pub fn with_ephemeral(
        local: &LocalKeys,
        ephemeral: FixedEphemeral<'_>,
    ) -> Result<Responder, HandshakeError> {
        let state = builder(ephemeral)?
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
        let hello = ResponderHello {
            ticket: policy.own_ticket().map(<[u8]>::to_vec),
        };
        self.answer_verbatim(msg1, &encode(&hello)?)
    }

    /// Reads msg1 and answers with `payload` as msg2, whatever it holds: the honest path
    /// passes its ResponderHello; test vectors pass misbehaving ones.
    #[doc(hidden)]
    pub fn answer_verbatim(
        &mut self,
        msg1: &[u8],
        payload: &[u8],
    ) -> Result<Vec<u8>, HandshakeError> {
        let received = read(&mut self.state, msg1)?;
        if !received.is_empty() {
            return Err(malformed("msg1 must carry no payload"));
        }
        write(&mut self.state, payload)
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
        // From here on msg3 decrypted: the initiator holds the static key `s` it sent, and
        // the channel is encrypted to it. Whatever is wrong next, the initiator is told why
        // in a verdict; it learns nothing it could not learn from a correct handshake.
        let remote_static = self
            .state
            .get_remote_static()
            .map(<[u8]>::to_vec)
            .ok_or(HandshakeError::IdentityMismatch)?;
        let mut session = self
            .state
            .into_transport_mode()
            .map_err(HandshakeError::Noise)?;
        let mut refuse = |error: HandshakeError, remote: Option<PeerId>| {
            let farewell = seal_verdict(&mut session, Some(&error)).ok();
            Err(Box::new(Failure {
                error,
                farewell,
                remote,
            }))
        };
        let hello = match decode_initiator_hello(&payload) {
            Ok(hello) => hello,
            Err(error) => return refuse(error, None),
        };
        let identity: [u8; KEY_LEN] = match hello.identity_key.as_slice().try_into() {
            Ok(key) => key,
            Err(_) => return refuse(malformed("identity_key is not 32 bytes"), None),
        };
        let claimed_static = match keys::montgomery(&identity) {
            Ok(key) => key,
            Err(error) => return refuse(HandshakeError::RemoteKey(error), None),
        };
        if claimed_static.as_slice() != remote_static.as_slice() {
            return refuse(HandshakeError::IdentityMismatch, None);
        }
        let remote = match keys::peer_id_of(&identity) {
            Ok(peer) => peer,
            Err(error) => return refuse(HandshakeError::RemoteKey(error), None),
        };
        // The identity is checked first so that even a refusal names a proven PeerId, and
        // a refusal wins over any ticket sent beside it.
        if let Some(reason) = hello.refusal {
            return refuse(HandshakeError::RefusedByRemote(reason), Some(remote));
        }
        let admission = match policy.check(hello.ticket.as_deref(), &remote, now) {
            Ok(admission) => admission,
            Err(error) => return refuse(error, Some(remote)),
        };
        let frame = seal_verdict(&mut session, None).map_err(|error| {
            Box::new(Failure {
                error,
                farewell: None,
                remote: Some(remote),
            })
        })?;
        Ok((
            Established {
                session,
                remote,
                admission,
            },
            frame,
        ))
    }
}
