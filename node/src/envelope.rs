//! Signed envelopes: how every application message names and proves its origin.
//!
//! An envelope carries a kind, the origin's Ed25519 public key, a per-origin sequence number,
//! a timestamp and an opaque body, signed by the origin. gossipsub signs its own frames too,
//! but that signature belongs to gossipsub's framing; ours travels with the message wherever
//! it is stored or relayed (BLE relays, store-and-forward) and is checked the same way there.
//!
//! The signature covers [`signing_bytes`]: a domain tag, then the fields in a fixed binary
//! layout, so it never depends on how a CBOR encoder orders or sizes things. See
//! `docs/telemetry.md` for the exact layout.

use fogmesh_store::codec;
use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

/// The only envelope version this node speaks.
pub const ENVELOPE_VERSION: u8 = 1;

/// Largest encoded envelope accepted, in bytes.
pub const MAX_ENVELOPE_LEN: usize = 64 * 1024;

const DOMAIN_TAG: &[u8] = b"fogmesh/envelope/v1\0";

/// What an envelope's body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum MessageKind {
    Telemetry = 1,
}

impl From<MessageKind> for u8 {
    fn from(kind: MessageKind) -> u8 {
        kind as u8
    }
}

impl TryFrom<u8> for MessageKind {
    type Error = String;
    fn try_from(value: u8) -> Result<Self, Self::Error> {
        match value {
            1 => Ok(MessageKind::Telemetry),
            other => Err(format!("unknown message kind {other}")),
        }
    }
}

/// The encoded form of an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u8,
    pub kind: MessageKind,
    /// The origin's public key in libp2p's protobuf encoding.
    #[serde(with = "serde_bytes")]
    pub origin_key: Vec<u8>,
    pub seq: u64,
    /// Milliseconds since the Unix epoch, by the origin's clock.
    pub timestamp_ms: u64,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// An envelope whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedEnvelope {
    pub origin: PeerId,
    pub kind: MessageKind,
    pub seq: u64,
    pub timestamp_ms: u64,
    pub body: Vec<u8>,
}

/// Why an envelope was refused. Each variant is counted separately by the node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope of {0} bytes exceeds the limit")]
    Oversized(usize),
    #[error("malformed envelope: {0}")]
    Malformed(String),
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u8),
    #[error("expected a {expected:?} message, got {got:?}")]
    WrongKind {
        expected: MessageKind,
        got: MessageKind,
    },
    #[error("signature does not verify")]
    BadSignature,
}

/// The bytes the origin signs: domain tag, version, kind, seq, timestamp, key and body, with
/// integers big-endian and variable fields prefixed by their u32 big-endian length.
pub fn signing_bytes(
    version: u8,
    kind: MessageKind,
    origin_key: &[u8],
    seq: u64,
    timestamp_ms: u64,
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(DOMAIN_TAG.len() + 26 + origin_key.len() + body.len());
    out.extend_from_slice(DOMAIN_TAG);
    out.push(version);
    out.push(kind.into());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    for field in [origin_key, body] {
        // Fields are bounded by MAX_ENVELOPE_LEN, far below u32::MAX.
        out.extend_from_slice(&(field.len() as u32).to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

/// Signs `body` as `kind` from `keypair` and returns the encoded envelope.
pub fn seal(
    keypair: &Keypair,
    kind: MessageKind,
    seq: u64,
    timestamp_ms: u64,
    body: Vec<u8>,
) -> Result<Vec<u8>, EnvelopeError> {
    let origin_key = keypair.public().encode_protobuf();
    let to_sign = signing_bytes(
        ENVELOPE_VERSION,
        kind,
        &origin_key,
        seq,
        timestamp_ms,
        &body,
    );
    let signature = keypair
        .sign(&to_sign)
        .map_err(|e| EnvelopeError::Malformed(format!("cannot sign: {e}")))?;
    let envelope = Envelope {
        version: ENVELOPE_VERSION,
        kind,
        origin_key,
        seq,
        timestamp_ms,
        body,
        signature,
    };
    let bytes = codec::encode(&envelope).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    if bytes.len() > MAX_ENVELOPE_LEN {
        return Err(EnvelopeError::Oversized(bytes.len()));
    }
    Ok(bytes)
}

/// Decodes `bytes` and checks its version, kind and signature. Freshness and replay are the
/// caller's business: they need state (see `telemetry::TelemetryValidator`).
pub fn open(bytes: &[u8], expected: MessageKind) -> Result<VerifiedEnvelope, EnvelopeError> {
    if bytes.len() > MAX_ENVELOPE_LEN {
        return Err(EnvelopeError::Oversized(bytes.len()));
    }
    let envelope: Envelope = codec::decode_bounded(bytes, MAX_ENVELOPE_LEN)
        .map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    if envelope.version != ENVELOPE_VERSION {
        return Err(EnvelopeError::UnsupportedVersion(envelope.version));
    }
    if envelope.kind != expected {
        return Err(EnvelopeError::WrongKind {
            expected,
            got: envelope.kind,
        });
    }
    let key = PublicKey::try_decode_protobuf(&envelope.origin_key)
        .map_err(|e| EnvelopeError::Malformed(format!("origin key: {e}")))?;
    let signed = signing_bytes(
        envelope.version,
        envelope.kind,
        &envelope.origin_key,
        envelope.seq,
        envelope.timestamp_ms,
        &envelope.body,
    );
    if !key.verify(&signed, &envelope.signature) {
        return Err(EnvelopeError::BadSignature);
    }
    Ok(VerifiedEnvelope {
        origin: key.to_peer_id(),
        kind: envelope.kind,
        seq: envelope.seq,
        timestamp_ms: envelope.timestamp_ms,
        body: envelope.body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sealed(key: &Keypair) -> Vec<u8> {
        seal(key, MessageKind::Telemetry, 5, 1_000, b"hello".to_vec()).unwrap()
    }

    fn tamper(bytes: &[u8], f: impl FnOnce(&mut Envelope)) -> Vec<u8> {
        let mut env: Envelope = codec::decode(bytes).unwrap();
        f(&mut env);
        codec::encode(&env).unwrap()
    }

    #[test]
    fn sealed_envelope_opens_with_origin() {
        let key = Keypair::generate_ed25519();
        let opened = open(&sealed(&key), MessageKind::Telemetry).unwrap();
        assert_eq!(opened.origin, key.public().to_peer_id());
        assert_eq!(opened.seq, 5);
        assert_eq!(opened.timestamp_ms, 1_000);
        assert_eq!(opened.body, b"hello");
    }

    #[test]
    fn each_signed_field_is_covered() {
        let key = Keypair::generate_ed25519();
        let bytes = sealed(&key);
        type Tamper = Box<dyn Fn(&mut Envelope)>;
        let cases: Vec<Tamper> = vec![
            Box::new(|e| e.seq += 1),
            Box::new(|e| e.timestamp_ms += 1),
            Box::new(|e| e.body.push(0)),
            Box::new(|e| e.signature[0] ^= 1),
        ];
        for case in cases {
            let forged = tamper(&bytes, case);
            assert_eq!(
                open(&forged, MessageKind::Telemetry),
                Err(EnvelopeError::BadSignature)
            );
        }
    }

    #[test]
    fn key_swap_is_a_bad_signature() {
        let key = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let forged = tamper(&sealed(&key), |e| {
            e.origin_key = other.public().encode_protobuf()
        });
        assert_eq!(
            open(&forged, MessageKind::Telemetry),
            Err(EnvelopeError::BadSignature)
        );
    }

    #[test]
    fn version_and_size_are_checked() {
        let key = Keypair::generate_ed25519();
        let v2 = tamper(&sealed(&key), |e| e.version = 2);
        assert_eq!(
            open(&v2, MessageKind::Telemetry),
            Err(EnvelopeError::UnsupportedVersion(2))
        );
        let huge = vec![0u8; MAX_ENVELOPE_LEN + 1];
        assert!(matches!(
            open(&huge, MessageKind::Telemetry),
            Err(EnvelopeError::Oversized(_))
        ));
        assert!(matches!(
            seal(
                &key,
                MessageKind::Telemetry,
                1,
                1,
                vec![0; MAX_ENVELOPE_LEN]
            ),
            Err(EnvelopeError::Oversized(_))
        ));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = open(&bytes, MessageKind::Telemetry);
        }

        #[test]
        fn any_single_bit_flip_is_refused(pos in 0usize..4096, bit in 0u8..8) {
            let key = Keypair::generate_ed25519();
            let mut bytes = sealed(&key);
            let pos = pos % bytes.len();
            bytes[pos] ^= 1 << bit;
            // A flip may hit CBOR structure (malformed) or content (bad signature/key), but
            // it never yields an accepted envelope with different content.
            if let Ok(opened) = open(&bytes, MessageKind::Telemetry) {
                prop_assert_eq!(opened.body, b"hello".to_vec());
                prop_assert_eq!(opened.seq, 5);
                prop_assert_eq!(opened.origin, key.public().to_peer_id());
            }
        }
    }
}
