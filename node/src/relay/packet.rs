//! Relay packets on the wire: pure encoding and decoding, no state.
//!
//! A packet is a CBOR map `{ttl, envelope}`. The envelope is a signed envelope
//! ([`fogmesh_wire::envelope`]) of kind `RelayDirect`, `RelayBroadcast` or `RelayAck`, carried
//! byte for byte from its origin to every node it reaches; only `ttl` changes on the way
//! (one less per hop), so it is the one field outside the signature. A relay cannot raise it
//! above [`MAX_TTL`] (refused on receipt) and gains nothing by lowering it.
//!
//! The packet's id is SHA-256 over the envelope bytes: envelopes are accepted in one
//! canonical encoding only, so one message has one id however many paths it takes.
//!
//! Bodies (CBOR, inside the signed envelope):
//! - direct: `{recipient: PeerId bytes, sealed: bytes}`, `sealed` being [`super::sealed`]
//!   over an [`AppPayload`];
//! - broadcast: an [`AppPayload`] in clear;
//! - ack: `{to: PeerId bytes, message: 32-byte id}`, signed by the recipient of `message`
//!   and flooded back towards its origin `to`.

use fogmesh_wire::codec;
use libp2p::identity::Keypair;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use fogmesh_wire::envelope::{self, EnvelopeError, MessageKind};

/// Most hops a packet may travel (BitChat's limit too).
pub const MAX_TTL: u8 = 7;
/// Largest packet accepted from a neighbour, in bytes: a BLE-sized bound, far below the
/// envelope limit. Larger frames are refused by the codec before they are read whole.
pub const MAX_PACKET_LEN: usize = 8 * 1024;
/// Largest application data in one message.
pub const MAX_APP_DATA: usize = 4 * 1024;
/// Longest application name (`"text"`, `"cluster"`, ...).
pub const MAX_APP_NAME: usize = 32;

/// A message's id: SHA-256 of its envelope.
pub type MessageId = [u8; 32];

/// The wire form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Frame {
    ttl: u8,
    #[serde(with = "serde_bytes")]
    envelope: Vec<u8>,
}

/// What a message carries for the application on the other end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppPayload {
    pub app: String,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DirectBody {
    #[serde(with = "serde_bytes")]
    recipient: Vec<u8>,
    #[serde(with = "serde_bytes")]
    sealed: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    #[serde(with = "serde_bytes")]
    to: Vec<u8>,
    #[serde(with = "serde_bytes")]
    message: Vec<u8>,
}

/// What a verified packet says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Direct { recipient: PeerId, sealed: Vec<u8> },
    Broadcast(AppPayload),
    Ack { to: PeerId, message: MessageId },
}

impl Content {
    /// The node the packet is for, if it is for one node.
    pub fn addressee(&self) -> Option<&PeerId> {
        match self {
            Content::Direct { recipient, .. } => Some(recipient),
            Content::Ack { to, .. } => Some(to),
            Content::Broadcast(_) => None,
        }
    }
}

/// A packet whose envelope verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayPacket {
    pub id: MessageId,
    pub ttl: u8,
    pub origin: PeerId,
    pub seq: u64,
    /// When the origin made it, by its clock.
    pub created_ms: u64,
    pub content: Content,
    /// The signed bytes, forwarded unchanged.
    pub envelope: Vec<u8>,
}

/// Why a packet was refused. [`PacketError::reason`] names the counter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet of {0} bytes exceeds {MAX_PACKET_LEN}")]
    Oversized(usize),
    #[error("malformed packet: {0}")]
    Malformed(String),
    #[error("ttl {0} above {MAX_TTL}")]
    TtlTooHigh(u8),
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("not a relay message: {0:?}")]
    NotRelay(MessageKind),
    #[error("malformed body: {0}")]
    Body(String),
    #[error("application data of {0} bytes exceeds {MAX_APP_DATA}")]
    DataTooLarge(usize),
}

impl PacketError {
    /// The counter label.
    pub fn reason(&self) -> &'static str {
        match self {
            PacketError::Oversized(_) => "oversized",
            PacketError::Malformed(_) => "malformed",
            PacketError::TtlTooHigh(_) => "ttl_too_high",
            PacketError::Envelope(EnvelopeError::BadSignature) => "bad_signature",
            PacketError::Envelope(EnvelopeError::NonCanonical) => "non_canonical",
            PacketError::Envelope(EnvelopeError::Oversized(_)) => "oversized",
            PacketError::Envelope(_) => "malformed",
            PacketError::NotRelay(_) => "not_relay",
            PacketError::Body(_) => "bad_body",
            PacketError::DataTooLarge(_) => "oversized",
        }
    }
}

/// The id of an envelope.
pub fn message_id(envelope: &[u8]) -> MessageId {
    Sha256::digest(envelope).into()
}

/// Encodes a packet for a neighbour.
pub fn encode(ttl: u8, envelope: &[u8]) -> Result<Vec<u8>, PacketError> {
    let bytes = codec::encode(&Frame {
        ttl,
        envelope: envelope.to_vec(),
    })
    .map_err(|e| PacketError::Malformed(e.to_string()))?;
    if bytes.len() > MAX_PACKET_LEN {
        return Err(PacketError::Oversized(bytes.len()));
    }
    Ok(bytes)
}

fn check_payload(payload: &AppPayload) -> Result<(), PacketError> {
    if payload.app.is_empty() || payload.app.len() > MAX_APP_NAME {
        return Err(PacketError::Body(format!(
            "application name of {} bytes (1 to {MAX_APP_NAME})",
            payload.app.len()
        )));
    }
    if payload.data.len() > MAX_APP_DATA {
        return Err(PacketError::DataTooLarge(payload.data.len()));
    }
    Ok(())
}

fn peer_from(bytes: &[u8], what: &str) -> Result<PeerId, PacketError> {
    PeerId::from_bytes(bytes).map_err(|e| PacketError::Body(format!("{what}: {e}")))
}

/// The TTL and id of a packet, without checking its signature: enough to drop a copy of a
/// packet already handled (the id hashes the exact envelope that was verified then) at the
/// cost of a hash instead of a signature check.
pub fn peek(bytes: &[u8]) -> Result<(u8, MessageId), PacketError> {
    if bytes.len() > MAX_PACKET_LEN {
        return Err(PacketError::Oversized(bytes.len()));
    }
    let frame: Frame = codec::decode_bounded(bytes, MAX_PACKET_LEN)
        .map_err(|e| PacketError::Malformed(e.to_string()))?;
    if frame.ttl > MAX_TTL {
        return Err(PacketError::TtlTooHigh(frame.ttl));
    }
    Ok((frame.ttl, message_id(&frame.envelope)))
}

/// Decodes and verifies a packet: its size, TTL, envelope signature and body.
/// Freshness, duplicates and rates need state: the relay service checks those.
pub fn decode(bytes: &[u8]) -> Result<RelayPacket, PacketError> {
    if bytes.len() > MAX_PACKET_LEN {
        return Err(PacketError::Oversized(bytes.len()));
    }
    let frame: Frame = codec::decode_bounded(bytes, MAX_PACKET_LEN)
        .map_err(|e| PacketError::Malformed(e.to_string()))?;
    if frame.ttl > MAX_TTL {
        return Err(PacketError::TtlTooHigh(frame.ttl));
    }
    let opened = envelope::open_any(&frame.envelope)?;
    let content = match opened.kind {
        MessageKind::RelayDirect => {
            let body: DirectBody = codec::decode_bounded(&opened.body, MAX_PACKET_LEN)
                .map_err(|e| PacketError::Body(e.to_string()))?;
            Content::Direct {
                recipient: peer_from(&body.recipient, "recipient")?,
                sealed: body.sealed,
            }
        }
        MessageKind::RelayBroadcast => {
            let payload: AppPayload = codec::decode_bounded(&opened.body, MAX_PACKET_LEN)
                .map_err(|e| PacketError::Body(e.to_string()))?;
            check_payload(&payload)?;
            Content::Broadcast(payload)
        }
        MessageKind::RelayAck => {
            let body: AckBody = codec::decode_bounded(&opened.body, MAX_PACKET_LEN)
                .map_err(|e| PacketError::Body(e.to_string()))?;
            let message: MessageId = body
                .message
                .as_slice()
                .try_into()
                .map_err(|_| PacketError::Body("acknowledged id is not 32 bytes".into()))?;
            Content::Ack {
                to: peer_from(&body.to, "ack addressee")?,
                message,
            }
        }
        other => return Err(PacketError::NotRelay(other)),
    };
    Ok(RelayPacket {
        id: message_id(&frame.envelope),
        ttl: frame.ttl,
        origin: opened.origin,
        seq: opened.seq,
        created_ms: opened.timestamp_ms,
        content,
        envelope: frame.envelope,
    })
}

/// Decodes the plaintext of a direct message once opened.
pub fn decode_payload(plaintext: &[u8]) -> Result<AppPayload, PacketError> {
    let payload: AppPayload = codec::decode_bounded(plaintext, MAX_PACKET_LEN)
        .map_err(|e| PacketError::Body(e.to_string()))?;
    check_payload(&payload)?;
    Ok(payload)
}

fn body<T: Serialize>(value: &T) -> Result<Vec<u8>, PacketError> {
    codec::encode(value).map_err(|e| PacketError::Malformed(e.to_string()))
}

/// The signed envelope of a direct message; `sealed` is the payload sealed for `recipient`
/// (see [`seal_payload`]).
pub fn direct(
    keypair: &Keypair,
    seq: u64,
    now_ms: u64,
    recipient: &PeerId,
    sealed: Vec<u8>,
) -> Result<Vec<u8>, PacketError> {
    let body = body(&DirectBody {
        recipient: recipient.to_bytes(),
        sealed,
    })?;
    Ok(envelope::seal(
        keypair,
        MessageKind::RelayDirect,
        seq,
        now_ms,
        body,
    )?)
}

/// The plaintext of a direct message, checked against the limits.
pub fn seal_payload(payload: &AppPayload) -> Result<Vec<u8>, PacketError> {
    check_payload(payload)?;
    body(payload)
}

/// The signed envelope of a broadcast.
pub fn broadcast(
    keypair: &Keypair,
    seq: u64,
    now_ms: u64,
    payload: &AppPayload,
) -> Result<Vec<u8>, PacketError> {
    check_payload(payload)?;
    Ok(envelope::seal(
        keypair,
        MessageKind::RelayBroadcast,
        seq,
        now_ms,
        body(payload)?,
    )?)
}

/// The signed acknowledgement of `message`, for its origin `to`.
pub fn ack(
    keypair: &Keypair,
    seq: u64,
    now_ms: u64,
    to: &PeerId,
    message: &MessageId,
) -> Result<Vec<u8>, PacketError> {
    let body = body(&AckBody {
        to: to.to_bytes(),
        message: message.to_vec(),
    })?;
    Ok(envelope::seal(
        keypair,
        MessageKind::RelayAck,
        seq,
        now_ms,
        body,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text(data: &[u8]) -> AppPayload {
        AppPayload {
            app: "text".into(),
            data: data.to_vec(),
        }
    }

    #[test]
    fn each_kind_round_trips_with_its_id() {
        let key = Keypair::generate_ed25519();
        let to = Keypair::generate_ed25519().public().to_peer_id();
        let cases = [
            (direct(&key, 1, 10, &to, vec![9; 60]).unwrap(), "direct"),
            (broadcast(&key, 2, 11, &text(b"hi")).unwrap(), "broadcast"),
            (ack(&key, 3, 12, &to, &[5; 32]).unwrap(), "ack"),
        ];
        for (env, what) in cases {
            let packet = decode(&encode(5, &env).unwrap()).unwrap();
            assert_eq!(packet.ttl, 5, "{what}");
            assert_eq!(packet.origin, key.public().to_peer_id(), "{what}");
            assert_eq!(packet.id, message_id(&env), "{what}");
            assert_eq!(packet.envelope, env, "{what}");
        }
        let packet =
            decode(&encode(0, &ack(&key, 3, 12, &to, &[5; 32]).unwrap()).unwrap()).unwrap();
        assert_eq!(
            packet.content,
            Content::Ack {
                to,
                message: [5; 32]
            }
        );
    }

    #[test]
    fn refusals_name_their_reason() {
        let key = Keypair::generate_ed25519();
        let env = broadcast(&key, 1, 1, &text(b"x")).unwrap();
        let high = codec::encode(&Frame {
            ttl: MAX_TTL + 1,
            envelope: env.clone(),
        })
        .unwrap();
        assert_eq!(decode(&high).unwrap_err().reason(), "ttl_too_high");
        let mut forged = env.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert_eq!(
            decode(&encode(3, &forged).unwrap()).unwrap_err().reason(),
            "bad_signature"
        );
        assert_eq!(
            decode(&vec![0; MAX_PACKET_LEN + 1]).unwrap_err().reason(),
            "oversized"
        );
        let telemetry = envelope::seal(&key, MessageKind::Telemetry, 1, 1, vec![]).unwrap();
        assert_eq!(
            decode(&encode(3, &telemetry).unwrap())
                .unwrap_err()
                .reason(),
            "not_relay"
        );
        assert!(broadcast(&key, 1, 1, &text(&[0; MAX_APP_DATA + 1])).is_err());
        let unnamed = AppPayload {
            app: String::new(),
            data: vec![],
        };
        assert!(seal_payload(&unnamed).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Whatever a neighbour sends, decoding answers (never panics), and anything that
        /// decodes re-encodes to an equal packet.
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(packet) = decode(&bytes) {
                let again = decode(&encode(packet.ttl, &packet.envelope).unwrap()).unwrap();
                prop_assert_eq!(again, packet);
            }
        }

        #[test]
        fn truncations_and_flips_of_a_valid_packet_are_refused_or_equal(
            cut in 0usize..200,
            flip in any::<prop::sample::Index>(),
        ) {
            let key = Keypair::generate_ed25519();
            let bytes = encode(4, &broadcast(&key, 1, 1, &text(b"payload")).unwrap()).unwrap();
            let original = decode(&bytes).unwrap();
            let cut = cut.min(bytes.len());
            prop_assert!(decode(&bytes[..bytes.len() - cut]).is_err() || cut == 0);
            let mut flipped = bytes.clone();
            let at = flip.index(flipped.len());
            flipped[at] ^= 0x40;
            // Only the unsigned ttl may change, and then within bounds.
            if let Ok(p) = decode(&flipped) {
                prop_assert_eq!(p.id, original.id);
                prop_assert!(p.ttl <= MAX_TTL);
            }
        }
    }
}
