//! Telemetry test vectors (`docs/test-vectors/telemetry.json`): a fixed key, records, their
//! CBOR bodies, signing bytes, signatures, envelopes and gossipsub message ids, and invalid
//! envelopes with the rejection each must get.
//!
//! Regenerate the file with
//! `FOGMESH_WRITE_VECTORS=1 cargo test -p fogmesh --test telemetry_vectors --locked`.
//! Without the variable, one test checks the file is what the generator produces, and another
//! runs the implementation against every vector read back from the file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::vectors::{
    cbor_bytes, cbor_map as map, cbor_text, check_or_write, head, render, unhex,
};
use fogmesh_node::device::{DeviceClass, DeviceSummary, PowerMode, TransportPreference};
use fogmesh_node::telemetry::record::{
    FreshnessPolicy, TelemetryRecord, TelemetryValidator, TELEMETRY_TOPIC,
};
use fogmesh_wire::codec;
use fogmesh_wire::envelope::{self, Envelope, MessageKind, MAX_ENVELOPE_LEN};
use libp2p::identity::Keypair;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The receiver's clock for every case: 2026-01-01T00:00:00Z.
const NOW_MS: u64 = 1_767_225_600_000;
/// When the vector messages were published: 1.5 s before the receiver's clock.
const PUBLISHED_MS: u64 = NOW_MS - 1_500;
const DOMAIN_TAG: &[u8] = b"fogmesh/envelope/v1\0";

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Vectors {
    description: String,
    generated_by: String,
    spec: String,
    topic: String,
    keys: Vec<KeyVector>,
    messages: Vec<MessageVector>,
    cases: Vec<CaseVector>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct KeyVector {
    name: String,
    /// The 32-byte Ed25519 secret seed (RFC 8032 private key).
    ed25519_seed: String,
    ed25519_public: String,
    /// libp2p protobuf `PublicKey` encoding: what the envelope carries as `origin_key`.
    origin_key: String,
    peer_id: String,
    /// The PeerId's bytes (identity multihash of `origin_key`), as hashed into message ids.
    peer_id_bytes: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct MessageVector {
    name: String,
    key: String,
    record: TelemetryRecord,
    body: String,
    version: u8,
    kind: u8,
    seq: u64,
    timestamp_ms: u64,
    signing_bytes: String,
    signature: String,
    envelope: String,
    message_id_preimage: String,
    message_id: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct CaseVector {
    name: String,
    description: String,
    envelope: String,
    /// The gossipsub `from` field of the message, or null when absent.
    author: Option<String>,
    now_ms: u64,
    /// The last accepted seq of the case's origin before this message, if any.
    last_seq: Option<u64>,
    /// `accept`, or the rejection reason (the counter name).
    expect: String,
    /// The gossipsub validation result: `accept`, `reject` or `ignore`.
    verdict: String,
}

fn key(seed_byte: u8) -> Keypair {
    Keypair::ed25519_from_bytes([seed_byte; 32]).unwrap()
}

fn peer(key: &Keypair) -> PeerId {
    key.public().to_peer_id()
}

// A minimal CBOR writer, so invalid encodings can be built byte by byte.

/// CBOR map entries: text key, encoded value.
type Entries = Vec<(String, Vec<u8>)>;

/// An envelope's fields as raw parts, encodable in the canonical way or any other.
#[derive(Clone)]
struct Parts {
    version: u64,
    kind: u64,
    origin_key: Vec<u8>,
    seq: u64,
    timestamp_ms: u64,
    body: Vec<u8>,
    signature: Vec<u8>,
}

impl Parts {
    fn entries(&self) -> Entries {
        vec![
            ("version".into(), head(0, self.version)),
            ("kind".into(), head(0, self.kind)),
            ("origin_key".into(), cbor_bytes(&self.origin_key)),
            ("seq".into(), head(0, self.seq)),
            ("timestamp_ms".into(), head(0, self.timestamp_ms)),
            ("body".into(), cbor_bytes(&self.body)),
            ("signature".into(), cbor_bytes(&self.signature)),
        ]
    }

    fn encode(&self) -> Vec<u8> {
        map(&self.entries())
    }

    /// Signs the parts as they are (any version and kind byte), like an origin would.
    fn signed(mut self, key: &Keypair) -> Self {
        self.signature = key.sign(&raw_signing_bytes(&self)).unwrap();
        self
    }
}

/// The signing layout written out independently of `envelope::signing_bytes`, so the two
/// check each other; version and kind are truncated to the byte the layout has room for.
fn raw_signing_bytes(p: &Parts) -> Vec<u8> {
    let mut out = DOMAIN_TAG.to_vec();
    out.push(p.version as u8);
    out.push(p.kind as u8);
    out.extend(p.seq.to_be_bytes());
    out.extend(p.timestamp_ms.to_be_bytes());
    for field in [&p.origin_key, &p.body] {
        out.extend((field.len() as u32).to_be_bytes());
        out.extend(field);
    }
    out
}

fn message_id_preimage(topic: &str, author: &PeerId, data: &[u8]) -> Vec<u8> {
    let author = author.to_bytes();
    let mut out = Vec::new();
    out.extend((topic.len() as u32).to_be_bytes());
    out.extend(topic.as_bytes());
    out.extend((author.len() as u32).to_be_bytes());
    out.extend(&author);
    out.extend(data);
    out
}

fn full_record(key: &Keypair) -> TelemetryRecord {
    TelemetryRecord {
        peer_id: peer(key).to_string(),
        version: "0.1.0".into(),
        uptime_s: 86_400,
        // 12.5 fits a half-precision float, 41.3 needs single precision, 0.65 (f64) double.
        cpu_load_pct: Some(12.5),
        mem_used_bytes: Some(3_221_225_472),
        mem_total_bytes: Some(8_589_934_592),
        rss_bytes: Some(19_922_944),
        peer_count: 7,
        listen_addrs: vec![
            "/ip4/192.0.2.10/tcp/4001".into(),
            "/ip4/192.0.2.10/udp/4001/quic-v1".into(),
        ],
        interval_ms: 30_000,
        device: Some(DeviceSummary {
            class: DeviceClass::Laptop,
            mode: PowerMode::Balanced,
            score: 0.65,
            battery_pct: Some(87.5),
            charging: Some(true),
            temperature_c: Some(41.3),
            transport: TransportPreference::BetanetPreferred,
        }),
    }
}

fn minimal_record(key: &Keypair) -> TelemetryRecord {
    TelemetryRecord {
        peer_id: peer(key).to_string(),
        version: "0.1.0".into(),
        uptime_s: 0,
        cpu_load_pct: None,
        mem_used_bytes: None,
        mem_total_bytes: None,
        rss_bytes: None,
        peer_count: 0,
        listen_addrs: vec![],
        interval_ms: 1_000,
        device: None,
    }
}

fn parts_for(key: &Keypair, body: Vec<u8>, seq: u64, timestamp_ms: u64) -> Parts {
    Parts {
        version: 1,
        kind: 1,
        origin_key: key.public().encode_protobuf(),
        seq,
        timestamp_ms,
        body,
        signature: Vec::new(),
    }
    .signed(key)
}

fn key_vector(name: &str, key: &Keypair) -> KeyVector {
    let ed = key.clone().try_into_ed25519().unwrap();
    KeyVector {
        name: name.into(),
        ed25519_seed: hex::encode(&ed.to_bytes()[..32]),
        ed25519_public: hex::encode(ed.public().to_bytes()),
        origin_key: hex::encode(key.public().encode_protobuf()),
        peer_id: peer(key).to_string(),
        peer_id_bytes: hex::encode(peer(key).to_bytes()),
    }
}

fn message_vector(name: &str, key: &Keypair, record: TelemetryRecord, seq: u64) -> MessageVector {
    let body = codec::encode(&record).unwrap();
    let parts = parts_for(key, body.clone(), seq, PUBLISHED_MS);
    let envelope = parts.encode();
    let preimage = message_id_preimage(TELEMETRY_TOPIC, &peer(key), &envelope);
    MessageVector {
        name: name.into(),
        key: "origin".into(),
        record,
        body: hex::encode(&body),
        version: 1,
        kind: 1,
        seq,
        timestamp_ms: PUBLISHED_MS,
        signing_bytes: hex::encode(raw_signing_bytes(&parts)),
        signature: hex::encode(&parts.signature),
        envelope: hex::encode(&envelope),
        message_id: hex::encode(Sha256::digest(&preimage)),
        message_id_preimage: hex::encode(preimage),
    }
}

struct Case<'a> {
    name: &'a str,
    description: &'a str,
    envelope: Vec<u8>,
    author: Option<PeerId>,
    now_ms: u64,
    last_seq: Option<u64>,
    expect: &'a str,
}

impl Case<'_> {
    fn vector(self) -> CaseVector {
        let verdict = match self.expect {
            "accept" => "accept",
            "stale" | "replayed" => "ignore",
            _ => "reject",
        };
        CaseVector {
            name: self.name.into(),
            description: self.description.into(),
            envelope: hex::encode(&self.envelope),
            author: self.author.map(|a| a.to_string()),
            now_ms: self.now_ms,
            last_seq: self.last_seq,
            expect: self.expect.into(),
            verdict: verdict.into(),
        }
    }
}

/// A signed, otherwise valid envelope whose encoding is exactly `len` bytes long.
fn envelope_of_len(key: &Keypair, seq: u64, len: usize) -> Vec<u8> {
    let with_pad = |pad: usize| {
        let mut record = minimal_record(key);
        record.version = "x".repeat(pad);
        parts_for(key, codec::encode(&record).unwrap(), seq, PUBLISHED_MS).encode()
    };
    let guess = len - with_pad(0).len();
    let bytes = with_pad(guess);
    let bytes = with_pad(guess + len - bytes.len());
    assert_eq!(bytes.len(), len);
    bytes
}

fn generate() -> Vectors {
    let origin = key(0x01);
    let other = key(0x02);
    let me = peer(&origin);
    let seq = PUBLISHED_MS;
    let full = message_vector("full", &origin, full_record(&origin), seq);
    let minimal = message_vector("minimal", &origin, minimal_record(&origin), seq);
    let full_body = codec::encode(&full_record(&origin)).unwrap();
    let valid = parts_for(&origin, full_body.clone(), seq, PUBLISHED_MS);
    let at = |ts: u64| parts_for(&origin, full_body.clone(), seq, ts).encode();
    let entries_with = |f: &dyn Fn(&mut Entries)| {
        let mut entries = valid.entries();
        f(&mut entries);
        map(&entries)
    };

    let mut body_unknown_key = full_body.clone();
    // The record map has 11 entries (head 0xab); one more, with a key no node knows.
    assert_eq!(body_unknown_key[0], 0xab);
    body_unknown_key[0] = 0xac;
    body_unknown_key.extend(cbor_text("zz_future_field"));
    body_unknown_key.extend(cbor_text("ignored"));

    let mut flipped = valid.clone();
    flipped.signature[0] ^= 0x01;
    let mut bumped = valid.clone();
    bumped.seq += 1;
    let mut body_changed = valid.clone();
    body_changed.body = codec::encode(&minimal_record(&origin)).unwrap();
    let mut swapped_key = valid.clone();
    swapped_key.origin_key = other.public().encode_protobuf();
    let mut short_sig = valid.clone();
    short_sig.signature.pop();
    let mut v2 = valid.clone();
    v2.version = 2;
    let mut v256 = valid.clone();
    v256.version = 256;
    let mut k2 = valid.clone();
    k2.kind = 2;
    let mut k256 = valid.clone();
    k256.kind = 256;
    let mut reordered_key = valid.clone();
    let canonical_key = origin.public().encode_protobuf();
    reordered_key.origin_key = [&canonical_key[2..], &canonical_key[..2]].concat();
    let mut secp_key = valid.clone();
    secp_key.origin_key = [vec![0x08, 0x02, 0x12, 0x21, 0x02], vec![0x07; 32]].concat();
    let mut indefinite = vec![0xbf];
    indefinite.extend_from_slice(&valid.encode()[1..]);
    indefinite.push(0xff);
    let mut trailing = valid.encode();
    trailing.push(0x00);
    let mut as_array = head(4, 7);
    for (_, v) in valid.entries() {
        as_array.extend(v);
    }

    let cases = vec![
        Case {
            name: "accept_full",
            description: "the `full` message, received 1.5 s after it was published",
            envelope: valid.encode(),
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: None,
            expect: "accept",
        },
        Case {
            name: "accept_minimal",
            description: "the `minimal` message: unknown sensors are null, device absent",
            envelope: hex::decode(&minimal.envelope).unwrap(),
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: None,
            expect: "accept",
        },
        Case {
            name: "accept_after_last_seq",
            description: "seq one above the last accepted",
            envelope: valid.encode(),
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: Some(seq - 1),
            expect: "accept",
        },
        Case {
            name: "accept_oldest",
            description: "timestamp exactly 60 s before the receiver's clock",
            envelope: at(NOW_MS - 60_000),
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: None,
            expect: "accept",
        },
        Case {
            name: "accept_furthest_ahead",
            description: "timestamp exactly 30 s after the receiver's clock",
            envelope: at(NOW_MS + 30_000),
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: None,
            expect: "accept",
        },
        Case {
            name: "accept_body_as_signed",
            description: "the body is checked as received, never re-encoded: a record with \
                          a key no node knows is signed and accepted (the key is ignored)",
            envelope: parts_for(&origin, body_unknown_key, seq, PUBLISHED_MS).encode(),
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: None,
            expect: "accept",
        },
        Case {
            name: "oversized",
            description: "correctly signed and canonical, but 65537 bytes long",
            envelope: envelope_of_len(&origin, seq, MAX_ENVELOPE_LEN + 1),
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: None,
            expect: "oversized",
        },
        Case {
            name: "not_cbor",
            description: "not a CBOR data item",
            envelope: b"this is not an envelope".to_vec(),
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: None,
            expect: "malformed",
        },
        Case {
            name: "unknown_key",
            description: "the valid envelope with an eighth key `relay` appended",
            envelope: entries_with(&|e| e.push(("relay".into(), cbor_text("x")))),
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: None,
            expect: "malformed",
        },
        Case {
            name: "duplicate_key",
            description: "the valid envelope with `seq` repeated at the end",
            envelope: entries_with(&|e| {
                let seq_entry = e[3].clone();
                e.push(seq_entry)
            }),
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: None,
            expect: "malformed",
        },
        Case {
            name: "key_order",
            description: "the valid envelope with `kind` before `version`",
            envelope: entries_with(&|e| e.swap(0, 1)),
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: None,
            expect: "malformed",
        },
        Case {
            name: "non_shortest_integer",
            description: "`version` 1 written as 0x18 0x01 instead of 0x01",
            envelope: entries_with(&|e| e[0].1 = vec![0x18, 0x01]),
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: None,
            expect: "malformed",
        },
        Case {
            name: "indefinite_length_map",
            description: "the valid envelope's entries in an indefinite-length map",
            envelope: indefinite,
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: None,
            expect: "malformed",
        },
        Case {
            name: "trailing_byte",
            description: "the valid envelope followed by one 0x00 byte",
            envelope: trailing,
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: None,
            expect: "malformed",
        },
        Case {
            name: "missing_signature",
            description: "the valid envelope without its `signature` entry",
            envelope: entries_with(&|e| {
                e.pop();
            }),
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: None,
            expect: "malformed",
        },
        Case {
            name: "array_not_map",
            description: "the seven values in a CBOR array instead of a map",
            envelope: as_array,
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: None,
            expect: "malformed",
        },
        Case {
            name: "version_2",
            description: "version 2, signed as such",
            envelope: v2.signed(&origin).encode(),
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: None,
            expect: "malformed",
        },
        Case {
            name: "version_256",
            description: "version 256: does not fit its byte in the signing layout",
            envelope: v256.signed(&origin).encode(),
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: None,
            expect: "malformed",
        },
        Case {
            name: "kind_2",
            description: "an unknown kind, signed as such",
            envelope: k2.signed(&origin).encode(),
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: None,
            expect: "malformed",
        },
        Case {
            name: "kind_256",
            description: "kind 256: does not fit its byte in the signing layout",
            envelope: k256.signed(&origin).encode(),
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: None,
            expect: "malformed",
        },
        Case {
            name: "origin_key_not_canonical",
            description: "the origin's key with its two protobuf fields in the other order, \
                          signed as such",
            envelope: reordered_key.signed(&origin).encode(),
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: None,
            expect: "malformed",
        },
        Case {
            name: "origin_key_not_ed25519",
            description: "a secp256k1-typed origin key (key type 2), signed by the origin",
            envelope: secp_key.signed(&origin).encode(),
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: None,
            expect: "malformed",
        },
        Case {
            name: "forged_signature",
            description: "the valid envelope with the signature's first bit flipped",
            envelope: flipped.encode(),
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: None,
            expect: "bad_signature",
        },
        Case {
            name: "tampered_seq",
            description: "the valid envelope with seq raised by one, signature kept",
            envelope: bumped.encode(),
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: None,
            expect: "bad_signature",
        },
        Case {
            name: "tampered_body",
            description: "the valid envelope with another body, signature kept",
            envelope: body_changed.encode(),
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: None,
            expect: "bad_signature",
        },
        Case {
            name: "swapped_origin_key",
            description: "another peer's key in `origin_key`, the origin's signature kept",
            envelope: swapped_key.encode(),
            author: Some(peer(&other)),
            now_ms: NOW_MS,
            last_seq: None,
            expect: "bad_signature",
        },
        Case {
            name: "short_signature",
            description: "the valid envelope with the signature's last byte removed",
            envelope: short_sig.encode(),
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: None,
            expect: "bad_signature",
        },
        Case {
            name: "author_mismatch",
            description: "the valid envelope under another gossipsub author",
            envelope: valid.encode(),
            author: Some(peer(&other)),
            now_ms: NOW_MS,
            last_seq: None,
            expect: "sender_mismatch",
        },
        Case {
            name: "no_author",
            description: "the valid envelope in a gossipsub message without `from`",
            envelope: valid.encode(),
            author: None,
            now_ms: NOW_MS,
            last_seq: None,
            expect: "sender_mismatch",
        },
        Case {
            name: "record_names_another_peer",
            description: "signed by the origin, but the record's peer_id is another peer's",
            envelope: parts_for(
                &origin,
                codec::encode(&full_record(&other)).unwrap(),
                seq,
                PUBLISHED_MS,
            )
            .encode(),
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: None,
            expect: "sender_mismatch",
        },
        Case {
            name: "body_not_a_record",
            description: "correctly signed, but the body is the CBOR text \"hello\"",
            envelope: parts_for(&origin, cbor_text("hello"), seq, PUBLISHED_MS).encode(),
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: None,
            expect: "malformed",
        },
        Case {
            name: "from_future",
            description: "timestamp 30.001 s after the receiver's clock",
            envelope: at(NOW_MS + 30_001),
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: None,
            expect: "from_future",
        },
        Case {
            name: "stale",
            description: "timestamp 60.001 s before the receiver's clock",
            envelope: at(NOW_MS - 60_001),
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: None,
            expect: "stale",
        },
        Case {
            name: "replayed",
            description: "the valid envelope again after it was accepted",
            envelope: valid.encode(),
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: Some(seq),
            expect: "replayed",
        },
        Case {
            name: "older_seq",
            description: "seq below the last accepted",
            envelope: valid.encode(),
            author: Some(me),
            now_ms: NOW_MS,
            last_seq: Some(seq + 1),
            expect: "replayed",
        },
    ];

    Vectors {
        description: "fogmesh telemetry envelopes: a fixed Ed25519 key, records with their \
                      CBOR bodies, signing bytes, signatures, envelopes and gossipsub message \
                      ids, and cases (envelope, gossipsub author, receiver clock, last \
                      accepted seq) with the outcome each must get. Bytes are hex."
            .into(),
        generated_by: common::vectors::command("telemetry_vectors"),
        spec: "docs/telemetry.md".into(),
        topic: TELEMETRY_TOPIC.into(),
        keys: vec![key_vector("origin", &origin), key_vector("other", &other)],
        messages: vec![full, minimal],
        cases: cases.into_iter().map(Case::vector).collect(),
    }
}

#[test]
fn vectors_file_is_what_the_generator_produces() {
    check_or_write("telemetry.json", &render(&generate()), "telemetry_vectors");
}

#[test]
fn implementation_passes_every_vector() {
    let v: Vectors = common::vectors::read("telemetry.json", || render(&generate()));
    assert_eq!(v.topic, TELEMETRY_TOPIC);

    let mut keys = std::collections::HashMap::new();
    for k in &v.keys {
        let key = Keypair::ed25519_from_bytes(unhex(&k.ed25519_seed)).unwrap();
        assert_eq!(hex::encode(key.public().encode_protobuf()), k.origin_key);
        assert_eq!(peer(&key).to_string(), k.peer_id);
        assert_eq!(hex::encode(peer(&key).to_bytes()), k.peer_id_bytes);
        keys.insert(k.name.clone(), key);
    }
    let origin = peer(&keys["origin"]);

    for m in &v.messages {
        let key = &keys[&m.key];
        let body = unhex(&m.body);
        // Our encoder produces the body, and our decoder reads it back as the record.
        assert_eq!(
            hex::encode(codec::encode(&m.record).unwrap()),
            m.body,
            "{}",
            m.name
        );
        assert_eq!(codec::decode::<TelemetryRecord>(&body).unwrap(), m.record);
        let signing = envelope::signing_bytes(
            m.version,
            MessageKind::try_from(m.kind).unwrap(),
            &key.public().encode_protobuf(),
            m.seq,
            m.timestamp_ms,
            &body,
        );
        assert_eq!(hex::encode(&signing), m.signing_bytes, "{}", m.name);
        assert!(key.public().verify(&signing, &unhex(&m.signature)));
        let sealed = envelope::seal(
            key,
            MessageKind::Telemetry,
            m.seq,
            m.timestamp_ms,
            body.clone(),
        )
        .unwrap();
        assert_eq!(hex::encode(&sealed), m.envelope, "{}", m.name);
        let decoded: Envelope = codec::decode(&sealed).unwrap();
        assert_eq!(hex::encode(&decoded.signature), m.signature);
        let author = peer(key);
        assert_eq!(
            Sha256::digest(unhex(&m.message_id_preimage)).to_vec(),
            unhex(&m.message_id)
        );
        assert_eq!(
            hex::encode(envelope::message_id(
                TELEMETRY_TOPIC,
                Some(&author),
                &sealed
            )),
            m.message_id,
            "{}",
            m.name
        );
    }

    assert!(v.cases.iter().any(|c| c.expect != "accept"));
    for case in &v.cases {
        let mut validator = TelemetryValidator::new(FreshnessPolicy::default());
        if let Some(last) = case.last_seq {
            validator.remember(origin, last, case.now_ms);
        }
        let author = case.author.as_ref().map(|a| a.parse::<PeerId>().unwrap());
        let result = validator.check(case.now_ms, author, &unhex(&case.envelope));
        let (outcome, verdict) = match &result {
            Ok(_) => ("accept", "accept"),
            Err(r) if r.is_ignorable() => (r.reason(), "ignore"),
            Err(r) => (r.reason(), "reject"),
        };
        assert_eq!(outcome, case.expect, "{}: {result:?}", case.name);
        assert_eq!(verdict, case.verdict, "{}", case.name);
    }
}
