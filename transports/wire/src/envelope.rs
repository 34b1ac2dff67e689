//! Signed envelopes: how every application message names and proves its origin.
//!
//! An envelope carries a kind, the origin's Ed25519 public key, a per-origin sequence number,
//! a timestamp and an opaque body, signed by the origin. gossipsub signs its own frames too,
//! but that signature belongs to gossipsub's framing; ours travels with the message wherever
//! it is stored or relayed (BLE relays, store-and-forward) and is checked the same way there.
//!
//! The signature covers [`signing_bytes`]: a domain tag, then the fields in a fixed binary
//! layout, so it never depends on how a CBOR encoder orders or sizes things. The envelope's
//! own CBOR is accepted only in its one canonical form, so the bytes of a valid envelope are
//! a function of what was signed plus the signature: a relay cannot re-encode a message (and
//! so change its content-derived message id, see [`message_id`]) without it being refused.
//! See `docs/telemetry.md` for the exact layout.

use crate::codec;
use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
    /// A relayed message for one recipient, its payload encrypted to them (`relay::packet`).
    RelayDirect = 2,
    /// A relayed message for every node in range of the flood.
    RelayBroadcast = 3,
    /// A recipient's signed acknowledgement of a directed message.
    RelayAck = 4,
    /// A coordinator's announcement of its cluster (`consensus::formation`).
    ClusterAnnouncement = 5,
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
            2 => Ok(MessageKind::RelayDirect),
            3 => Ok(MessageKind::RelayBroadcast),
            4 => Ok(MessageKind::RelayAck),
            5 => Ok(MessageKind::ClusterAnnouncement),
            other => Err(format!("unknown message kind {other}")),
        }
    }
}

/// The encoded form of an envelope. Field order is the canonical key order on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// Decodes, but is not byte for byte the encoding [`seal`] produces (key order, duplicate
    /// keys, integer or length widths, indefinite lengths, tags, ...).
    #[error("envelope is not in canonical encoding")]
    NonCanonical,
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

/// Decodes `bytes` and checks its encoding, version, kind and signature. Freshness and replay
/// are the caller's business: they need state (see `telemetry::TelemetryValidator`).
pub fn open(bytes: &[u8], expected: MessageKind) -> Result<VerifiedEnvelope, EnvelopeError> {
    let opened = open_any(bytes)?;
    if opened.kind != expected {
        return Err(EnvelopeError::WrongKind {
            expected,
            got: opened.kind,
        });
    }
    Ok(opened)
}

/// As [`open`], for a caller that accepts several kinds and dispatches on
/// [`VerifiedEnvelope::kind`].
pub fn open_any(bytes: &[u8]) -> Result<VerifiedEnvelope, EnvelopeError> {
    if bytes.len() > MAX_ENVELOPE_LEN {
        return Err(EnvelopeError::Oversized(bytes.len()));
    }
    let envelope: Envelope = codec::decode_bounded(bytes, MAX_ENVELOPE_LEN)
        .map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    // One encoding per content: re-encoding what was decoded must give back the input.
    // Everything but the signature is signed, and a third party cannot make a second valid
    // signature, so a valid envelope's bytes cannot be varied by anyone but its origin.
    let canonical =
        codec::encode(&envelope).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    if canonical != bytes {
        return Err(EnvelopeError::NonCanonical);
    }
    if envelope.version != ENVELOPE_VERSION {
        return Err(EnvelopeError::UnsupportedVersion(envelope.version));
    }
    let key = PublicKey::try_decode_protobuf(&envelope.origin_key)
        .map_err(|e| EnvelopeError::Malformed(format!("origin key: {e}")))?;
    // Node identities are Ed25519; a key accepted only through a feature flag elsewhere in the
    // dependency tree must not widen what the wire accepts.
    if key.key_type() != libp2p::identity::KeyType::Ed25519 {
        return Err(EnvelopeError::Malformed("origin key is not Ed25519".into()));
    }
    // The origin's PeerId is derived from these bytes: one key, one encoding, one PeerId.
    if key.encode_protobuf() != envelope.origin_key {
        return Err(EnvelopeError::Malformed(
            "origin key is not in canonical protobuf encoding".into(),
        ));
    }
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

/// The gossipsub message id of a message: SHA-256 over the topic, the author and the data,
/// the first two prefixed by their u32 big-endian length (`author` is the PeerId's bytes, or
/// nothing when the message names no author).
///
/// gossipsub files an id as seen before anyone validates the message, and a copy that is
/// then rejected keeps its id filed. Topic and author are not covered by the envelope
/// signature, so if they were left out of the id, a peer could forward an honest message
/// under a false author or on another topic, have that copy rejected, and make the honest
/// copies that follow look like duplicates. With every field the validator looks at in the
/// id, only one variant of a message can be valid, and junk variants have ids of their own.
pub fn message_id(topic: &str, author: Option<&PeerId>, data: &[u8]) -> [u8; 32] {
    let author = author.map(|a| a.to_bytes()).unwrap_or_default();
    let mut hasher = Sha256::new();
    for field in [topic.as_bytes(), author.as_slice()] {
        // Topics and PeerIds are far below u32::MAX bytes.
        hasher.update((field.len() as u32).to_be_bytes());
        hasher.update(field);
    }
    hasher.update(data);
    hasher.finalize().into()
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

    /// A CBOR head: major type and argument, in its shortest form.
    fn head(major: u8, arg: u64) -> Vec<u8> {
        let m = major << 5;
        match arg {
            0..=23 => vec![m | arg as u8],
            24..=0xff => vec![m | 24, arg as u8],
            0x100..=0xffff => [vec![m | 25], (arg as u16).to_be_bytes().to_vec()].concat(),
            0x1_0000..=0xffff_ffff => [vec![m | 26], (arg as u32).to_be_bytes().to_vec()].concat(),
            _ => [vec![m | 27], arg.to_be_bytes().to_vec()].concat(),
        }
    }

    fn text(s: &str) -> Vec<u8> {
        [head(3, s.len() as u64), s.as_bytes().to_vec()].concat()
    }

    fn bytes(b: &[u8]) -> Vec<u8> {
        [head(2, b.len() as u64), b.to_vec()].concat()
    }

    /// The entries of a sealed envelope as (key, encoded value), in canonical order.
    fn entries(env: &Envelope) -> Vec<(String, Vec<u8>)> {
        vec![
            ("version".into(), head(0, env.version.into())),
            ("kind".into(), head(0, u8::from(env.kind).into())),
            ("origin_key".into(), bytes(&env.origin_key)),
            ("seq".into(), head(0, env.seq)),
            ("timestamp_ms".into(), head(0, env.timestamp_ms)),
            ("body".into(), bytes(&env.body)),
            ("signature".into(), bytes(&env.signature)),
        ]
    }

    fn map(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
        let mut out = head(5, entries.len() as u64);
        for (k, v) in entries {
            out.extend(text(k));
            out.extend(v);
        }
        out
    }

    #[test]
    fn hand_built_canonical_map_is_what_seal_produces() {
        let key = Keypair::generate_ed25519();
        let sealed = sealed(&key);
        let env: Envelope = codec::decode(&sealed).unwrap();
        assert_eq!(map(&entries(&env)), sealed);
    }

    #[test]
    fn every_other_encoding_of_a_valid_envelope_is_refused() {
        let key = Keypair::generate_ed25519();
        let env: Envelope = codec::decode(&sealed(&key)).unwrap();
        let canonical = entries(&env);
        let mut variants: Vec<(&str, Vec<u8>)> = Vec::new();

        let mut extra = canonical.clone();
        extra.push(("relay".into(), text("x")));
        variants.push(("unknown key", map(&extra)));

        let mut dup = canonical.clone();
        dup.push(canonical[3].clone());
        variants.push(("duplicate key", map(&dup)));

        let mut swapped = canonical.clone();
        swapped.swap(0, 1);
        variants.push(("key order", map(&swapped)));

        let mut wide = canonical.clone();
        wide[0].1 = vec![0x18, 0x01];
        variants.push(("non-shortest integer", map(&wide)));

        let mut indefinite = vec![0xbf];
        indefinite.extend_from_slice(&map(&canonical)[1..]);
        indefinite.push(0xff);
        variants.push(("indefinite-length map", indefinite));

        let mut chunked = canonical.clone();
        let body = &env.body;
        chunked[5].1 = [vec![0x5f], bytes(&body[..2]), bytes(&body[2..]), vec![0xff]].concat();
        variants.push(("chunked byte string", map(&chunked)));

        let mut as_array = canonical.clone();
        let mut arr = head(4, env.body.len() as u64);
        for b in body {
            arr.extend(head(0, (*b).into()));
        }
        as_array[5].1 = arr;
        variants.push(("byte string as array", map(&as_array)));

        let mut tagged = canonical.clone();
        tagged[3].1 = [vec![0xc1], head(0, env.seq)].concat();
        variants.push(("tagged integer", map(&tagged)));

        let mut trailing = map(&canonical);
        trailing.push(0x00);
        variants.push(("trailing byte", trailing));

        for (what, bytes) in variants {
            let result = open(&bytes, MessageKind::Telemetry);
            assert!(
                matches!(
                    result,
                    Err(EnvelopeError::NonCanonical) | Err(EnvelopeError::Malformed(_))
                ),
                "{what}: {result:?}"
            );
        }
    }

    #[test]
    fn missing_key_and_out_of_range_fields_are_malformed() {
        let key = Keypair::generate_ed25519();
        let env: Envelope = codec::decode(&sealed(&key)).unwrap();
        let canonical = entries(&env);
        let missing = map(&canonical[..6]);
        let mut v256 = canonical.clone();
        v256[0].1 = head(0, 256);
        let mut k256 = canonical.clone();
        k256[1].1 = head(0, 256);
        let mut k2 = canonical.clone();
        k2[1].1 = head(0, 9);
        let mut negative = canonical.clone();
        negative[3].1 = vec![0x20];
        for (what, bytes) in [
            ("missing signature", missing),
            ("version 256", map(&v256)),
            ("kind 256", map(&k256)),
            ("unknown kind 9", map(&k2)),
            ("negative seq", map(&negative)),
        ] {
            let result = open(&bytes, MessageKind::Telemetry);
            assert!(
                matches!(result, Err(EnvelopeError::Malformed(_))),
                "{what}: {result:?}"
            );
        }
    }

    #[test]
    fn origin_key_must_be_canonical_ed25519() {
        let key = Keypair::generate_ed25519();
        let canonical_key = key.public().encode_protobuf();
        // Same key, protobuf fields in the other order: decodes to the same key, and is
        // correctly signed, but is a second spelling of the origin.
        let reordered = [&canonical_key[2..], &canonical_key[..2]].concat();
        let with_key = |origin_key: Vec<u8>| {
            let to_sign = signing_bytes(1, MessageKind::Telemetry, &origin_key, 1, 1, b"x");
            codec::encode(&Envelope {
                version: 1,
                kind: MessageKind::Telemetry,
                signature: key.sign(&to_sign).unwrap(),
                origin_key,
                seq: 1,
                timestamp_ms: 1,
                body: b"x".to_vec(),
            })
            .unwrap()
        };
        assert!(open(&with_key(canonical_key.clone()), MessageKind::Telemetry).is_ok());
        assert!(matches!(
            open(&with_key(reordered), MessageKind::Telemetry),
            Err(EnvelopeError::Malformed(_))
        ));
        // Secp256k1 key type (2) with junk: never an accepted origin.
        let mut secp = vec![0x08, 0x02, 0x12, 0x21, 0x02];
        secp.extend([7u8; 32]);
        assert!(matches!(
            open(&with_key(secp), MessageKind::Telemetry),
            Err(EnvelopeError::Malformed(_))
        ));
    }

    #[test]
    fn message_id_covers_topic_author_and_data() {
        let a = PeerId::random();
        let b = PeerId::random();
        let id = message_id("t", Some(&a), b"data");
        assert_eq!(id, message_id("t", Some(&a), b"data"));
        assert_ne!(id, message_id("u", Some(&a), b"data"));
        assert_ne!(id, message_id("t", Some(&b), b"data"));
        assert_ne!(id, message_id("t", None, b"data"));
        assert_ne!(id, message_id("t", Some(&a), b"datb"));
        // Length prefixes keep field boundaries: moving bytes between fields changes the id.
        assert_ne!(message_id("ab", None, b"c"), message_id("a", None, b"bc"));
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
            // Signed content or not, canonical form leaves no byte a relay may change.
            prop_assert!(open(&bytes, MessageKind::Telemetry).is_err());
        }
    }
}
