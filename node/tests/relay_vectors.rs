//! Relay test vectors (`docs/test-vectors/relay.json`): fixed keys, a sealed message with
//! every intermediate value of its key agreement and key derivation, one packet of each kind
//! (body, signing bytes, signature, envelope, message id, packet, stream request), and
//! packets with the outcome a receiving node must reach (`docs/relay.md`).
//!
//! The generator builds every byte by hand (its own CBOR writer, signing layout and key
//! derivation over the raw primitives), so the file states the format independently of the
//! relay code. The checks then hold the real code to it: the file must be what the generator
//! produces, the relay's encoders must produce the file's bytes, its decoder must read the
//! file's fields back, the recipient's node must open the sealed message, and a relay service
//! fed each case must reach the stated outcome.
//!
//! Regenerate the file with
//! `FOGMESH_WRITE_VECTORS=1 cargo test -p fogmesh --test relay_vectors --locked`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use common::vectors::{
    cbor_bytes, cbor_map as map, cbor_text, cbor_uint, check_or_write, head, render, unhex,
};
use fogmesh_node::relay::packet::{
    self, AppPayload, Content, MAX_APP_DATA, MAX_APP_NAME, MAX_PACKET_LEN, MAX_TTL,
};
use fogmesh_node::relay::protocol::{HOP_ACCEPTED, HOP_REFUSED, PROTOCOL};
use fogmesh_node::relay::sealed;
use fogmesh_node::relay::service::{RelayConfig, RelayMetrics, RelayService};
use fogmesh_node::relay::tables::RelayTables;
use fogmesh_node::relay::MessagesView;
use fogmesh_node::runtime::capability::{Outbox, ReasonLabel};
use fogmesh_node::runtime::handle::Views;
use fogmesh_transports::secure::keys::{static_key_of, LocalKeys};
use fogmesh_wire::envelope;
use libp2p::identity::Keypair;
use libp2p::PeerId;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use zeroize::Zeroizing;

/// The receiving node's wall clock for every case: 2026-01-01T00:00:00Z.
const NOW_MS: u64 = 1_767_225_600_000;
/// When the origin made the vector messages: 1.5 s earlier, by its clock.
const CREATED_MS: u64 = NOW_MS - 1_500;
const DAY_MS: u64 = 24 * 3_600_000;
const FIVE_MIN_MS: u64 = 5 * 60_000;
const ENVELOPE_TAG: &[u8] = b"fogmesh/envelope/v1\0";
const SEAL_TAG: &[u8] = b"fogmesh/relay/seal/v1\0";
/// Drawn at random by a real sender; fixed here. X25519 clamps it (first and last byte).
const EPHEMERAL_SECRET: [u8; 32] = [0xa5; 32];
/// Every reason a relay refuses a packet for (`fogmesh_relay_rejected_total{reason}`).
const REASONS: [&str; 12] = [
    "malformed",
    "oversized",
    "ttl_too_high",
    "ttl_exhausted",
    "bad_signature",
    "non_canonical",
    "not_relay",
    "bad_body",
    "expired",
    "from_future",
    "undecryptable",
    "flood",
];

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Vectors {
    description: String,
    generated_by: String,
    spec: String,
    protocol: String,
    constants: Constants,
    keys: Vec<KeyVector>,
    sealed: Vec<SealedVector>,
    packets: Vec<PacketVector>,
    cases: Vec<CaseVector>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Constants {
    max_ttl: u8,
    max_packet_len: usize,
    max_app_data: usize,
    max_app_name: usize,
    /// Packets older than this by the origin's clock are refused (`expired`).
    max_age_ms: u64,
    /// Packets dated further ahead than this are refused (`from_future`).
    max_future_ms: u64,
    duplicate_filter_ids: usize,
    duplicate_filter_ms: u64,
    hop_accepted: u8,
    hop_refused: u8,
    /// `fogmesh/envelope/v1` 0x00.
    envelope_domain_tag: String,
    /// `fogmesh/relay/seal/v1` 0x00.
    seal_domain_tag: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct KeyVector {
    name: String,
    /// The 32-byte Ed25519 secret seed (RFC 8032 private key).
    ed25519_seed: String,
    ed25519_public: String,
    /// libp2p protobuf `PublicKey` encoding: the envelope's `origin_key`.
    origin_key: String,
    peer_id: String,
    /// The PeerId's bytes (identity multihash of `origin_key`).
    peer_id_bytes: String,
    /// SHA-512(seed)[0..32], unclamped: the node's X25519 static secret.
    x25519_secret: String,
    /// The Montgomery form of `ed25519_public`: X25519(x25519_secret, 9).
    x25519_public: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct SealedVector {
    name: String,
    origin: String,
    recipient: String,
    app: String,
    /// The application data, hex.
    data: String,
    /// CBOR `{app, data}`: what is sealed.
    plaintext: String,
    /// As drawn (32 random bytes); X25519 clamps it.
    ephemeral_secret: String,
    ephemeral_secret_clamped: String,
    /// X25519(ephemeral_secret, 9).
    ephemeral_public: String,
    /// The recipient's X25519 static public key (from its PeerId).
    recipient_static_public: String,
    /// X25519(ephemeral_secret, recipient_static_public)
    /// = X25519(recipient x25519_secret, ephemeral_public).
    shared_secret: String,
    /// What is hashed into the key, in order.
    kdf_input: String,
    /// SHA-256(kdf_input).
    key: String,
    nonce: String,
    associated_data: String,
    /// ChaCha20-Poly1305 output: ciphertext then the 16-byte tag.
    ciphertext: String,
    /// ephemeral_public || ciphertext: the direct body's `sealed`.
    sealed: String,
}

/// A body's fields as they appear in it; bytes as hex.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct BodyFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    recipient: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    app: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct PacketVector {
    name: String,
    kind: u8,
    kind_name: String,
    /// The key that signs the envelope (the packet's origin).
    origin: String,
    seq: u64,
    timestamp_ms: u64,
    ttl: u8,
    /// Links crossed when a node receives it with this TTL: 8 - ttl.
    hops: u8,
    fields: BodyFields,
    body: String,
    signing_bytes: String,
    signature: String,
    envelope: String,
    /// SHA-256(envelope).
    message_id: String,
    /// CBOR `{ttl, envelope}`.
    packet: String,
    /// What a sender writes on a `/fogmesh/relay/1` stream: u32 big-endian length, packet.
    stream_request: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct CaseVector {
    name: String,
    description: String,
    /// The node that receives the packet from a neighbour (`dave`).
    receiver: String,
    /// The receiver's wall clock.
    wall_ms: u64,
    packet: String,
    /// `delivered` (for this node, or a broadcast), `relayed` (taken for others), or the
    /// reason it was refused (the `fogmesh_relay_rejected_total` label).
    expect: String,
    /// The byte the receiver answers on the stream.
    hop_answer: u8,
}

fn key(seed_byte: u8) -> Keypair {
    Keypair::ed25519_from_bytes([seed_byte; 32]).unwrap()
}

fn peer(key: &Keypair) -> PeerId {
    key.public().to_peer_id()
}

fn h(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

fn arr32(bytes: &[u8]) -> [u8; 32] {
    bytes.try_into().unwrap()
}

// A minimal CBOR writer, so every byte is built without the relay's encoders.

fn frame(ttl: u8, envelope: &[u8]) -> Vec<u8> {
    map(&[
        ("ttl", cbor_uint(u64::from(ttl))),
        ("envelope", cbor_bytes(envelope)),
    ])
}

fn payload_cbor(app: &str, data: &[u8]) -> Vec<u8> {
    map(&[("app", cbor_text(app)), ("data", cbor_bytes(data))])
}

fn direct_body(recipient: &[u8], sealed: &[u8]) -> Vec<u8> {
    map(&[
        ("recipient", cbor_bytes(recipient)),
        ("sealed", cbor_bytes(sealed)),
    ])
}

fn ack_body(to: &[u8], message: &[u8]) -> Vec<u8> {
    map(&[("to", cbor_bytes(to)), ("message", cbor_bytes(message))])
}

/// An envelope's fields, encodable canonically or with one field's encoding swapped.
#[derive(Clone)]
struct Parts {
    kind: u8,
    origin_key: Vec<u8>,
    seq: u64,
    timestamp_ms: u64,
    body: Vec<u8>,
    signature: Vec<u8>,
}

impl Parts {
    fn new(key: &Keypair, kind: u8, seq: u64, timestamp_ms: u64, body: Vec<u8>) -> Self {
        let mut parts = Parts {
            kind,
            origin_key: key.public().encode_protobuf(),
            seq,
            timestamp_ms,
            body,
            signature: Vec::new(),
        };
        parts.signature = key.sign(&parts.signing_bytes()).unwrap();
        parts
    }

    /// The signing layout of docs/telemetry.md, written out here.
    fn signing_bytes(&self) -> Vec<u8> {
        let mut out = ENVELOPE_TAG.to_vec();
        out.push(1);
        out.push(self.kind);
        out.extend(self.seq.to_be_bytes());
        out.extend(self.timestamp_ms.to_be_bytes());
        for field in [&self.origin_key, &self.body] {
            out.extend((field.len() as u32).to_be_bytes());
            out.extend(field);
        }
        out
    }

    fn encode_with_version(&self, version: Vec<u8>) -> Vec<u8> {
        map(&[
            ("version", version),
            ("kind", cbor_uint(u64::from(self.kind))),
            ("origin_key", cbor_bytes(&self.origin_key)),
            ("seq", cbor_uint(self.seq)),
            ("timestamp_ms", cbor_uint(self.timestamp_ms)),
            ("body", cbor_bytes(&self.body)),
            ("signature", cbor_bytes(&self.signature)),
        ])
    }

    fn encode(&self) -> Vec<u8> {
        self.encode_with_version(cbor_uint(1))
    }
}

/// X25519 static secret of an identity: SHA-512(seed)[0..32].
fn x25519_secret(seed_byte: u8) -> [u8; 32] {
    arr32(&Sha512::digest([seed_byte; 32])[..32])
}

fn x25519_public(secret: &[u8; 32]) -> [u8; 32] {
    x25519_dalek::x25519(*secret, x25519_dalek::X25519_BASEPOINT_BYTES)
}

fn clamp(mut scalar: [u8; 32]) -> [u8; 32] {
    scalar[0] &= 248;
    scalar[31] &= 127;
    scalar[31] |= 64;
    scalar
}

fn key_vector(name: &str, seed_byte: u8) -> KeyVector {
    let key = key(seed_byte);
    let ed = key.clone().try_into_ed25519().unwrap();
    let secret = x25519_secret(seed_byte);
    KeyVector {
        name: name.into(),
        ed25519_seed: h(&[seed_byte; 32]),
        ed25519_public: h(&ed.public().to_bytes()),
        origin_key: h(&key.public().encode_protobuf()),
        peer_id: peer(&key).to_string(),
        peer_id_bytes: h(&peer(&key).to_bytes()),
        x25519_secret: h(&secret),
        x25519_public: h(&x25519_public(&secret)),
    }
}

/// Seals by the recipe in docs/relay.md, over the raw primitives.
fn seal_by_hand(
    name: &str,
    (origin_name, origin): (&str, &Keypair),
    (recipient_name, recipient_seed): (&str, u8),
    ephemeral: [u8; 32],
    app: &str,
    data: &[u8],
) -> SealedVector {
    let plaintext = payload_cbor(app, data);
    let recipient_public = x25519_public(&x25519_secret(recipient_seed));
    let ephemeral_public = x25519_public(&ephemeral);
    let shared = x25519_dalek::x25519(ephemeral, recipient_public);
    let origin_id = peer(origin).to_bytes();
    let mut kdf_input = SEAL_TAG.to_vec();
    kdf_input.extend((origin_id.len() as u32).to_be_bytes());
    kdf_input.extend(&origin_id);
    kdf_input.extend(ephemeral_public);
    kdf_input.extend(recipient_public);
    kdf_input.extend(shared);
    let aead_key = Sha256::digest(&kdf_input);
    let nonce = [0u8; 12];
    let ciphertext = ChaCha20Poly1305::new(Key::from_slice(&aead_key))
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &plaintext,
                aad: b"",
            },
        )
        .unwrap();
    SealedVector {
        name: name.into(),
        origin: origin_name.into(),
        recipient: recipient_name.into(),
        app: app.into(),
        data: h(data),
        plaintext: h(&plaintext),
        ephemeral_secret: h(&ephemeral),
        ephemeral_secret_clamped: h(&clamp(ephemeral)),
        ephemeral_public: h(&ephemeral_public),
        recipient_static_public: h(&recipient_public),
        shared_secret: h(&shared),
        kdf_input: h(&kdf_input),
        key: h(&aead_key),
        nonce: h(&nonce),
        associated_data: String::new(),
        ciphertext: h(&ciphertext),
        sealed: h(&[ephemeral_public.to_vec(), ciphertext].concat()),
    }
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        2 => "RelayDirect",
        3 => "RelayBroadcast",
        4 => "RelayAck",
        _ => "other",
    }
}

#[allow(clippy::too_many_arguments)]
fn packet_vector(
    name: &str,
    (origin_name, origin): (&str, &Keypair),
    kind: u8,
    seq: u64,
    timestamp_ms: u64,
    ttl: u8,
    fields: BodyFields,
    body: Vec<u8>,
) -> PacketVector {
    let parts = Parts::new(origin, kind, seq, timestamp_ms, body.clone());
    let envelope = parts.encode();
    let packet = frame(ttl, &envelope);
    let stream_request = [(packet.len() as u32).to_be_bytes().to_vec(), packet.clone()].concat();
    PacketVector {
        name: name.into(),
        kind,
        kind_name: kind_name(kind).into(),
        origin: origin_name.into(),
        seq,
        timestamp_ms,
        ttl,
        hops: MAX_TTL + 1 - ttl,
        fields,
        body: h(&body),
        signing_bytes: h(&parts.signing_bytes()),
        signature: h(&parts.signature),
        envelope: h(&envelope),
        message_id: h(&Sha256::digest(&envelope)),
        packet: h(&packet),
        stream_request: h(&stream_request),
    }
}

struct Case<'a> {
    name: &'a str,
    description: &'a str,
    receiver: &'a str,
    wall_ms: u64,
    packet: Vec<u8>,
    expect: &'a str,
}

impl Case<'_> {
    fn vector(self) -> CaseVector {
        let taken = matches!(
            self.expect,
            "delivered" | "relayed" | "undecryptable" | "duplicate"
        );
        CaseVector {
            name: self.name.into(),
            description: self.description.into(),
            receiver: self.receiver.into(),
            wall_ms: self.wall_ms,
            packet: h(&self.packet),
            expect: self.expect.into(),
            hop_answer: if taken { HOP_ACCEPTED } else { HOP_REFUSED },
        }
    }
}

/// 32 bytes that are not the encoding of any Ed25519 curve point (y = n, the first such).
fn off_curve_point() -> [u8; 32] {
    (2u8..)
        .map(|n| {
            let mut y = [0u8; 32];
            y[0] = n;
            y
        })
        .find(|y| libp2p::identity::ed25519::PublicKey::try_from_bytes(y).is_err())
        .unwrap()
}

fn generate() -> Vectors {
    let alice = key(0x01);
    let bob = key(0x02);
    let carol = key(0x03);
    let a = ("alice", &alice);
    let bob_id = peer(&bob).to_bytes();

    let text = b"meet at the north gate";
    let sealed_vec = seal_by_hand("to_bob", a, ("bob", 0x02), EPHEMERAL_SECRET, "text", text);
    let sealed_bytes = unhex(&sealed_vec.sealed);

    // The origin's seq: max(previous + 1, its wall clock), one counter for all it signs.
    let direct = packet_vector(
        "direct",
        a,
        2,
        CREATED_MS,
        CREATED_MS,
        MAX_TTL,
        BodyFields {
            recipient: Some(h(&bob_id)),
            sealed: Some(h(&sealed_bytes)),
            ..BodyFields::default()
        },
        direct_body(&bob_id, &sealed_bytes),
    );
    let broadcast_data = b"road closed at km 12";
    let broadcast = packet_vector(
        "broadcast",
        a,
        3,
        CREATED_MS + 1,
        CREATED_MS,
        4,
        BodyFields {
            app: Some("text".into()),
            data: Some(h(broadcast_data)),
            ..BodyFields::default()
        },
        payload_cbor("text", broadcast_data),
    );
    let direct_id = unhex(&direct.message_id);
    let alice_id = peer(&alice).to_bytes();
    let ack = packet_vector(
        "ack",
        ("bob", &bob),
        4,
        NOW_MS,
        NOW_MS,
        MAX_TTL,
        BodyFields {
            to: Some(h(&alice_id)),
            message: Some(h(&direct_id)),
            ..BodyFields::default()
        },
        ack_body(&alice_id, &direct_id),
    );

    let direct_env = unhex(&direct.envelope);
    let broadcast_body = payload_cbor("text", broadcast_data);
    let broadcast_at = |ts: u64| {
        frame(
            MAX_TTL,
            &Parts::new(&alice, 3, ts, ts, broadcast_body.clone()).encode(),
        )
    };
    let signed_by = |key: &Keypair, kind: u8, body: Vec<u8>| {
        frame(
            MAX_TTL,
            &Parts::new(key, kind, CREATED_MS, CREATED_MS, body).encode(),
        )
    };

    let mut forged = Parts::new(&alice, 3, CREATED_MS, CREATED_MS, broadcast_body.clone());
    forged.signature[0] ^= 0x01;
    let mut off_curve = Parts::new(&alice, 3, CREATED_MS, CREATED_MS, broadcast_body.clone());
    off_curve.origin_key = [vec![0x08, 0x01, 0x12, 0x20], off_curve_point().to_vec()].concat();
    let non_canonical = Parts::new(&alice, 3, CREATED_MS, CREATED_MS, broadcast_body.clone())
        .encode_with_version(vec![0x18, 0x01]);
    let sealed_for_carol =
        unhex(&seal_by_hand("x", a, ("carol", 0x03), EPHEMERAL_SECRET, "text", text).sealed);
    // A sha2-512 multihash: well formed, but not a kind of PeerId.
    let not_a_peer_id = [vec![0x13, 0x40], vec![0x07; 64]].concat();
    let mut oversized = frame(
        MAX_TTL,
        &Parts::new(
            &alice,
            2,
            CREATED_MS,
            CREATED_MS,
            direct_body(&bob_id, &[0; 8_000]),
        )
        .encode(),
    );
    assert!(oversized.len() > MAX_PACKET_LEN);
    oversized.truncate(MAX_PACKET_LEN + 1);
    let lenient = [
        vec![0xa2],
        cbor_text("envelope"),
        cbor_bytes(&unhex(&broadcast.envelope)),
        cbor_text("ttl"),
        vec![0x18, 0x04],
    ]
    .concat();
    let as_array = [
        head(4, 2),
        cbor_uint(4),
        cbor_bytes(&unhex(&broadcast.envelope)),
    ]
    .concat();
    let integer_keys = [
        head(5, 2),
        cbor_uint(0),
        cbor_uint(4),
        cbor_uint(1),
        cbor_bytes(&unhex(&broadcast.envelope)),
    ]
    .concat();
    let unknown_key = map(&[
        ("ttl", cbor_uint(7)),
        ("envelope", cbor_bytes(&direct_env)),
        ("hops", cbor_uint(1)),
    ]);

    let cases = vec![
        Case {
            name: "direct_for_me",
            description: "the `direct` packet at its recipient: opened, stored, acked",
            receiver: "bob",
            wall_ms: NOW_MS,
            packet: unhex(&direct.packet),
            expect: "delivered",
        },
        Case {
            name: "direct_for_another",
            description: "the `direct` packet at a relay: held and forwarded",
            receiver: "carol",
            wall_ms: NOW_MS,
            packet: unhex(&direct.packet),
            expect: "relayed",
        },
        Case {
            name: "broadcast",
            description: "the `broadcast` packet: delivered here and forwarded",
            receiver: "carol",
            wall_ms: NOW_MS,
            packet: unhex(&broadcast.packet),
            expect: "delivered",
        },
        Case {
            name: "ack_for_another",
            description: "the `ack` packet at a relay: held for `to` and forwarded",
            receiver: "carol",
            wall_ms: NOW_MS,
            packet: unhex(&ack.packet),
            expect: "relayed",
        },
        Case {
            name: "ttl_zero",
            description: "the `direct` envelope with TTL 0",
            receiver: "carol",
            wall_ms: NOW_MS,
            packet: frame(0, &direct_env),
            expect: "ttl_exhausted",
        },
        Case {
            name: "ttl_eight",
            description: "the `direct` envelope with TTL 8",
            receiver: "carol",
            wall_ms: NOW_MS,
            packet: frame(8, &direct_env),
            expect: "ttl_too_high",
        },
        Case {
            name: "oldest_accepted",
            description: "a broadcast made 24 h minus 1 ms before the receiver's clock",
            receiver: "carol",
            wall_ms: NOW_MS,
            packet: broadcast_at(NOW_MS - DAY_MS + 1),
            expect: "delivered",
        },
        Case {
            name: "expired",
            description: "a broadcast made exactly 24 h before the receiver's clock",
            receiver: "carol",
            wall_ms: NOW_MS,
            packet: broadcast_at(NOW_MS - DAY_MS),
            expect: "expired",
        },
        Case {
            name: "furthest_ahead_accepted",
            description: "a broadcast dated exactly 5 min after the receiver's clock",
            receiver: "carol",
            wall_ms: NOW_MS,
            packet: broadcast_at(NOW_MS + FIVE_MIN_MS),
            expect: "delivered",
        },
        Case {
            name: "from_future",
            description: "a broadcast dated 5 min and 1 ms after the receiver's clock",
            receiver: "carol",
            wall_ms: NOW_MS,
            packet: broadcast_at(NOW_MS + FIVE_MIN_MS + 1),
            expect: "from_future",
        },
        Case {
            name: "forged_signature",
            description: "a broadcast with the signature's first bit flipped",
            receiver: "carol",
            wall_ms: NOW_MS,
            packet: frame(MAX_TTL, &forged.encode()),
            expect: "bad_signature",
        },
        Case {
            name: "non_canonical_envelope",
            description: "a correctly signed broadcast whose envelope writes version 1 as 18 01",
            receiver: "carol",
            wall_ms: NOW_MS,
            packet: frame(MAX_TTL, &non_canonical),
            expect: "non_canonical",
        },
        Case {
            name: "origin_key_off_curve",
            description: "an envelope whose origin_key holds 32 bytes that are no Ed25519 point",
            receiver: "carol",
            wall_ms: NOW_MS,
            packet: frame(MAX_TTL, &off_curve.encode()),
            expect: "malformed",
        },
        Case {
            name: "unknown_kind",
            description: "a signed envelope of kind 9",
            receiver: "carol",
            wall_ms: NOW_MS,
            packet: signed_by(&alice, 9, broadcast_body.clone()),
            expect: "malformed",
        },
        Case {
            name: "telemetry_kind",
            description: "a signed envelope of kind 1 (telemetry) in a relay packet",
            receiver: "carol",
            wall_ms: NOW_MS,
            packet: signed_by(&alice, 1, broadcast_body.clone()),
            expect: "not_relay",
        },
        Case {
            name: "recipient_not_a_peer_id",
            description: "a direct message whose recipient is a sha2-512 multihash",
            receiver: "carol",
            wall_ms: NOW_MS,
            packet: signed_by(&alice, 2, direct_body(&not_a_peer_id, &sealed_bytes)),
            expect: "bad_body",
        },
        Case {
            name: "broadcast_without_app",
            description: "a broadcast whose app name is empty",
            receiver: "carol",
            wall_ms: NOW_MS,
            packet: signed_by(&alice, 3, payload_cbor("", b"x")),
            expect: "bad_body",
        },
        Case {
            name: "broadcast_data_too_large",
            description: "a broadcast with 4097 bytes of data",
            receiver: "carol",
            wall_ms: NOW_MS,
            packet: signed_by(&alice, 3, payload_cbor("text", &[0x61; MAX_APP_DATA + 1])),
            expect: "oversized",
        },
        Case {
            name: "packet_too_long",
            description: "8193 bytes (the start of a larger direct packet)",
            receiver: "bob",
            wall_ms: NOW_MS,
            packet: oversized,
            expect: "oversized",
        },
        Case {
            name: "packet_unknown_key",
            description: "the `direct` envelope in a packet map with a third key",
            receiver: "carol",
            wall_ms: NOW_MS,
            packet: unknown_key,
            expect: "malformed",
        },
        Case {
            name: "packet_other_key_order",
            description: "the `broadcast` envelope in a packet map written envelope first, \
                          TTL 4 as 18 04: the packet map is not held to one encoding",
            receiver: "carol",
            wall_ms: NOW_MS,
            packet: lenient,
            expect: "delivered",
        },
        Case {
            name: "packet_as_array",
            description: "the `broadcast` envelope in a packet written as the array [4, envelope]",
            receiver: "carol",
            wall_ms: NOW_MS,
            packet: as_array,
            expect: "delivered",
        },
        Case {
            name: "packet_integer_keys",
            description: "the `broadcast` envelope in a packet map with keys 0 (ttl) and 1 \
                          (envelope) instead of their names",
            receiver: "carol",
            wall_ms: NOW_MS,
            packet: integer_keys,
            expect: "delivered",
        },
        Case {
            name: "sealed_for_another",
            description: "a direct message to bob whose payload was sealed to carol's key",
            receiver: "bob",
            wall_ms: NOW_MS,
            packet: signed_by(&alice, 2, direct_body(&bob_id, &sealed_for_carol)),
            expect: "undecryptable",
        },
        Case {
            name: "sealed_rewrapped",
            description: "the `to_bob` sealed bytes in a direct message signed by carol: the \
                          key derivation names the origin, so bob cannot open it",
            receiver: "bob",
            wall_ms: NOW_MS,
            packet: signed_by(&carol, 2, direct_body(&bob_id, &sealed_bytes)),
            expect: "undecryptable",
        },
        Case {
            name: "sealed_truncated",
            description: "a direct message to bob whose sealed bytes are 47 long",
            receiver: "bob",
            wall_ms: NOW_MS,
            packet: signed_by(&alice, 2, direct_body(&bob_id, &sealed_bytes[..47])),
            expect: "undecryptable",
        },
    ];

    let config = RelayConfig::default();
    Vectors {
        description: "fogmesh relay packets (docs/relay.md): fixed Ed25519 keys with their \
                      X25519 forms, a sealed direct message with every intermediate value, \
                      one packet of each kind, and packets with the outcome a receiving node \
                      must reach. Bytes are hex."
            .into(),
        generated_by: common::vectors::command("relay_vectors"),
        spec: "docs/relay.md".into(),
        protocol: PROTOCOL.into(),
        constants: Constants {
            max_ttl: MAX_TTL,
            max_packet_len: MAX_PACKET_LEN,
            max_app_data: MAX_APP_DATA,
            max_app_name: MAX_APP_NAME,
            max_age_ms: DAY_MS,
            max_future_ms: FIVE_MIN_MS,
            duplicate_filter_ids: 16_384,
            duplicate_filter_ms: DAY_MS,
            hop_accepted: 0,
            hop_refused: 1,
            envelope_domain_tag: h(ENVELOPE_TAG),
            seal_domain_tag: h(SEAL_TAG),
        }
        .checked_against(&config),
        keys: vec![
            key_vector("alice", 0x01),
            key_vector("bob", 0x02),
            key_vector("carol", 0x03),
            key_vector("dave", 0x04),
        ],
        sealed: vec![sealed_vec],
        packets: vec![direct, broadcast, ack],
        cases: cases.into_iter().map(Case::vector).collect(),
    }
}

impl Constants {
    /// The numbers written by hand above are the code's.
    fn checked_against(self, config: &RelayConfig) -> Self {
        assert_eq!(self.max_age_ms, config.max_age_ms);
        assert_eq!(self.max_future_ms, config.max_future_ms);
        assert_eq!(self.duplicate_filter_ids, config.seen_capacity);
        assert_eq!(self.duplicate_filter_ms, config.seen_ttl_ms);
        assert_eq!(self.hop_accepted, HOP_ACCEPTED);
        assert_eq!(self.hop_refused, HOP_REFUSED);
        self
    }
}

#[test]
fn vectors_file_is_what_the_generator_produces() {
    check_or_write("relay.json", &render(&generate()), "relay_vectors");
}

fn read_vectors() -> Vectors {
    common::vectors::read("relay.json", || render(&generate()))
}

struct Keys(Vec<(String, Keypair)>);

impl Keys {
    fn get(&self, name: &str) -> &Keypair {
        &self.0.iter().find(|(n, _)| n == name).unwrap().1
    }
}

fn check_keys(v: &Vectors) -> Keys {
    let mut keys = Vec::new();
    for k in &v.keys {
        let key = Keypair::ed25519_from_bytes(unhex(&k.ed25519_seed)).unwrap();
        assert_eq!(h(&key.public().encode_protobuf()), k.origin_key);
        assert_eq!(peer(&key).to_string(), k.peer_id);
        assert_eq!(h(&peer(&key).to_bytes()), k.peer_id_bytes);
        // The node's own X25519 key pair, and what a sender derives from the PeerId alone.
        let local = LocalKeys::from_identity(&key).unwrap();
        assert_eq!(h(local.static_secret()), k.x25519_secret, "{}", k.name);
        assert_eq!(h(local.static_public()), k.x25519_public, "{}", k.name);
        assert_eq!(h(&static_key_of(&peer(&key)).unwrap()), k.x25519_public);
        assert_eq!(
            h(&x25519_public(&arr32(&unhex(&k.x25519_secret)))),
            k.x25519_public
        );
        keys.push((k.name.clone(), key));
    }
    Keys(keys)
}

#[test]
fn sealed_vectors_open_and_reseal() {
    let v = read_vectors();
    let keys = check_keys(&v);
    assert!(!v.sealed.is_empty());
    for s in &v.sealed {
        let origin = peer(keys.get(&s.origin));
        let recipient = keys.get(&s.recipient);
        let recipient_vector = v.keys.iter().find(|k| k.name == s.recipient).unwrap();
        let plaintext = unhex(&s.plaintext);
        let sealed_bytes = unhex(&s.sealed);

        // As an independent implementation would: from the recipient's secret and the file.
        let ephemeral_public = arr32(&sealed_bytes[..32]);
        assert_eq!(h(&ephemeral_public), s.ephemeral_public);
        let secret = arr32(&unhex(&recipient_vector.x25519_secret));
        let shared = x25519_dalek::x25519(secret, ephemeral_public);
        assert_eq!(h(&shared), s.shared_secret);
        let origin_bytes = origin.to_bytes();
        let kdf_input = [
            SEAL_TAG.to_vec(),
            (origin_bytes.len() as u32).to_be_bytes().to_vec(),
            origin_bytes,
            ephemeral_public.to_vec(),
            unhex(&recipient_vector.x25519_public),
            shared.to_vec(),
        ]
        .concat();
        assert_eq!(h(&kdf_input), s.kdf_input);
        let aead_key = Sha256::digest(&kdf_input);
        assert_eq!(h(&aead_key), s.key);
        let opened = ChaCha20Poly1305::new(Key::from_slice(&aead_key))
            .decrypt(
                Nonce::from_slice(&unhex(&s.nonce)),
                Payload {
                    msg: &sealed_bytes[32..],
                    aad: &unhex(&s.associated_data),
                },
            )
            .unwrap();
        assert_eq!(opened, plaintext);
        assert_eq!(h(&sealed_bytes[32..]), s.ciphertext);
        assert_eq!(
            x25519_public(&arr32(&unhex(&s.ephemeral_secret))),
            ephemeral_public
        );
        assert_eq!(
            h(&clamp(arr32(&unhex(&s.ephemeral_secret)))),
            s.ephemeral_secret_clamped
        );

        // The relay code: it opens the vector, and seals to the same bytes.
        let local = LocalKeys::from_identity(recipient).unwrap();
        assert_eq!(
            sealed::open(&local, &origin, &sealed_bytes).unwrap(),
            plaintext
        );
        let payload = packet::decode_payload(&plaintext).unwrap();
        assert_eq!(payload.app, s.app);
        assert_eq!(h(&payload.data), s.data);
        assert_eq!(h(&packet::seal_payload(&payload).unwrap()), s.plaintext);
        let resealed = sealed::seal(
            &origin,
            &peer(recipient),
            Zeroizing::new(arr32(&unhex(&s.ephemeral_secret))),
            &plaintext,
        )
        .unwrap();
        assert_eq!(h(&resealed), s.sealed, "{}", s.name);
    }
}

#[test]
fn packet_vectors_decode_and_encode() {
    let v = read_vectors();
    let keys = check_keys(&v);
    assert_eq!(v.protocol, PROTOCOL);
    let kinds: Vec<u8> = v.packets.iter().map(|p| p.kind).collect();
    assert_eq!(kinds, vec![2, 3, 4]);
    for p in &v.packets {
        let key = keys.get(&p.origin);
        let bytes = unhex(&p.packet);
        let decoded = packet::decode(&bytes).unwrap();
        assert_eq!(h(&decoded.id), p.message_id, "{}", p.name);
        assert_eq!(h(&Sha256::digest(unhex(&p.envelope))), p.message_id);
        assert_eq!(decoded.ttl, p.ttl);
        assert_eq!(decoded.origin, peer(key));
        assert_eq!(decoded.seq, p.seq);
        assert_eq!(decoded.created_ms, p.timestamp_ms);
        assert_eq!(h(&decoded.envelope), p.envelope);
        assert_eq!(MAX_TTL + 1 - decoded.ttl, p.hops);

        // The envelope, its signing bytes and signature.
        let opened = envelope::open_any(&unhex(&p.envelope)).unwrap();
        assert_eq!(u8::from(opened.kind), p.kind);
        assert_eq!(h(&opened.body), p.body);
        let signing = envelope::signing_bytes(
            1,
            opened.kind,
            &key.public().encode_protobuf(),
            p.seq,
            p.timestamp_ms,
            &opened.body,
        );
        assert_eq!(h(&signing), p.signing_bytes, "{}", p.name);
        assert!(key.public().verify(&signing, &unhex(&p.signature)));

        // The fields, and the relay's encoder building the same envelope from them.
        let f = &p.fields;
        let envelope = match (&decoded.content, p.kind) {
            (Content::Direct { recipient, sealed }, 2) => {
                assert_eq!(Some(h(&recipient.to_bytes())), f.recipient);
                assert_eq!(Some(h(sealed)), f.sealed);
                packet::direct(key, p.seq, p.timestamp_ms, recipient, sealed.clone()).unwrap()
            }
            (Content::Broadcast(payload), 3) => {
                assert_eq!(Some(&payload.app), f.app.as_ref());
                assert_eq!(Some(h(&payload.data)), f.data);
                let rebuilt = AppPayload {
                    app: f.app.clone().unwrap(),
                    data: unhex(f.data.as_ref().unwrap()),
                };
                packet::broadcast(key, p.seq, p.timestamp_ms, &rebuilt).unwrap()
            }
            (Content::Ack { to, message }, 4) => {
                assert_eq!(Some(h(&to.to_bytes())), f.to);
                assert_eq!(Some(h(message)), f.message);
                packet::ack(key, p.seq, p.timestamp_ms, to, message).unwrap()
            }
            (other, kind) => panic!("{}: kind {kind} decoded as {other:?}", p.name),
        };
        assert_eq!(h(&envelope), p.envelope, "{}", p.name);
        assert_eq!(h(&packet::encode(p.ttl, &envelope).unwrap()), p.packet);
        let request = unhex(&p.stream_request);
        assert_eq!(request[..4], (bytes.len() as u32).to_be_bytes());
        assert_eq!(request[4..], bytes[..]);
    }
    // The direct packet carries the sealed vector, and the ack acknowledges the direct one.
    let direct = &v.packets[0];
    assert_eq!(direct.fields.sealed.as_ref(), Some(&v.sealed[0].sealed));
    assert_eq!(
        v.packets[2].fields.message.as_ref(),
        Some(&direct.message_id)
    );
    assert_eq!(
        v.packets[2].fields.to.as_ref(),
        Some(&h(&peer(keys.get(&direct.origin)).to_bytes()))
    );
}

/// A relay service for `key`, with tables in a throwaway store.
fn service(key: &Keypair, store: &fogmesh_store::Store) -> RelayService {
    RelayService::new(
        key.clone(),
        RelayConfig::default(),
        rand::rngs::StdRng::seed_from_u64(7),
        RelayTables::open(store).unwrap(),
        Views::default().add(MessagesView::default()),
        RelayMetrics::default(),
    )
    .unwrap()
}

#[test]
fn receivers_reach_every_case_outcome() {
    let v = read_vectors();
    let keys = check_keys(&v);
    let dir = tempfile::tempdir().unwrap();
    let store =
        fogmesh_store::Store::open(dir.path(), &fogmesh_store::StoreOptions::default()).unwrap();
    let neighbour = peer(keys.get("dave"));
    assert!(v.cases.iter().any(|c| c.expect == "delivered"));
    for case in &v.cases {
        let mut relay = service(keys.get(&case.receiver), &store);
        let mut out = Outbox::at(case.wall_ms);
        let taken = relay.on_packet(case.wall_ms, neighbour, &unhex(&case.packet), &mut out);
        let m = relay.metrics();
        let mut outcomes: Vec<&str> = REASONS
            .iter()
            .copied()
            .filter(|reason| m.rejected.get_or_create(&ReasonLabel { reason }).get() > 0)
            .collect();
        if m.duplicates.get() > 0 {
            outcomes.push("duplicate");
        }
        if m.delivered.get() > 0 {
            outcomes.push("delivered");
        }
        if outcomes.is_empty() {
            outcomes.push("relayed");
        }
        assert_eq!(outcomes, vec![case.expect.as_str()], "{}", case.name);
        let answer = if taken { HOP_ACCEPTED } else { HOP_REFUSED };
        assert_eq!(answer, case.hop_answer, "{}", case.name);
    }
}
