//! Replicated store test vectors (`docs/test-vectors/kv.json`, spec: docs/kv.md, "Wire
//! format"): fixed keys, entries (put, tombstone and more) with their CBOR, signed bytes,
//! signatures, key ids and digests; tie-breaks; gossip deltas; `/fogmesh/kv/1` requests and
//! the answers a node holding a fixed replica gives; and deltas with the verdict a receiver
//! gives each (in an open mesh and in a mesh with tickets).
//!
//! Regenerate the file with
//! `FOGMESH_WRITE_VECTORS=1 cargo test -p fogmesh --test kv_vectors --locked`.
//! Without the variable, one test checks the file is what the generator produces, and another
//! runs the implementation against every vector read back from the file. The CBOR of entries
//! and signed bytes is also written here byte by byte, independently of serde, and every
//! expected verdict is written by hand in the case table.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};

use common::vectors::{
    cbor_array as array, cbor_bytes as bytes, cbor_map as map, cbor_text as text,
    cbor_uint as uint, check_or_write, render, unhex,
};
use fogmesh_kv::sync::{SyncRequest, SyncResponse};
use fogmesh_kv::tree::bucket_of;
use fogmesh_kv::{key_id, Entry, Hlc, Merged, Slot, Version};
use fogmesh_node::kv::core::KvCore;
use fogmesh_node::kv::protocol::{Delta, PROTOCOL, TOPIC};
use fogmesh_node::kv::service::{AccessPolicy, KvMetrics, KvService};
use fogmesh_node::runtime::capability::{
    Capability, Effect, GossipId, GossipIn, InboundId, InboundRequest, Outbox, ReasonLabel, Verdict,
};
use fogmesh_store::{Store, StoreOptions};
use fogmesh_transports::secure::AdmissionPolicy;
use fogmesh_transports::ticket::{self, Grant, MeshId, RevocationSet, RevocationTarget};
use fogmesh_wire::codec;
use libp2p::gossipsub::{MessageAcceptance, MessageId};
use libp2p::identity::Keypair;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

/// The receiver's wall clock for every case (ms): 2027-01-15T08:00:00Z.
const NOW_MS: u64 = 1_800_000_000_000;
/// The same, in the Unix seconds tickets count in.
const NOW_S: u64 = NOW_MS / 1000;
const DAY_S: u64 = 86_400;
const SIGNING_TAG: &str = "fogmesh/kv/entry/1";

/// Every reason a receiver counts a refused entry or delta under.
const REASONS: &[&str] = &[
    "bad_namespace",
    "bad_key",
    "value_too_large",
    "bad_author",
    "bad_signature_size",
    "from_the_future",
    "unverifiable_author",
    "bad_signature",
    "no_credential",
    "bad_credential",
    "not_writer",
    "not_admin",
    "revoked",
    "malformed_delta",
];

// ---------------------------------------------------------------------------------------
// The file
// ---------------------------------------------------------------------------------------

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Vectors {
    description: String,
    generated_by: String,
    spec: String,
    topic: String,
    protocol: String,
    signing_tag: String,
    keys: Vec<KeyVector>,
    entries: Vec<EntryVector>,
    ties: Vec<TieVector>,
    deltas: Vec<DeltaVector>,
    framing: FramingVector,
    sync: SyncVectors,
    mesh: MeshVector,
    verdicts: Vec<VerdictVector>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct KeyVector {
    name: String,
    /// The 32-byte Ed25519 secret seed (RFC 8032 private key).
    ed25519_seed: String,
    ed25519_public: String,
    /// libp2p protobuf `PublicKey` encoding.
    public_key_protobuf: String,
    peer_id: String,
    /// The PeerId's bytes (identity multihash of the protobuf key): an entry's `author`.
    peer_id_bytes: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct EntryVector {
    name: String,
    description: String,
    /// The key (in `keys`) that signed it; its `peer_id_bytes` are the entry's author.
    author: String,
    namespace: String,
    key: String,
    /// Hex, or null for a tombstone.
    value: Option<String>,
    wall_ms: u64,
    counter: u32,
    signed_bytes: String,
    signed_bytes_diag: String,
    signature: String,
    entry: String,
    entry_diag: String,
    /// SHA-256(`namespace` "/" `key`), first 16 bytes.
    key_id: String,
    /// The key id's first two bytes, big-endian.
    bucket: u16,
    /// SHA-256(signed bytes || signature).
    digest_sha256: String,
    /// Its first 8 bytes, read as a big-endian u64 (here in 16 hex digits).
    digest: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct TieVector {
    name: String,
    rule: String,
    a: String,
    b: String,
    winner: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct DeltaVector {
    name: String,
    description: String,
    entries: Vec<String>,
    credentials: Vec<String>,
    delta: String,
    diag: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct FramingVector {
    description: String,
    body: String,
    frame: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct SyncVectors {
    description: String,
    /// The answering node's key (in `keys`); it runs an open mesh.
    answering_node: String,
    /// Entries (by name) the answering node holds before each case; every case starts from
    /// this replica afresh.
    replica: Vec<String>,
    now_ms: u64,
    cases: Vec<SyncCase>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct SyncCase {
    name: String,
    description: String,
    request: String,
    /// Null when the request is not CBOR.
    request_diag: Option<String>,
    /// Whether `request` is byte for byte what a node's encoder writes for it.
    request_as_sent: bool,
    answer: String,
    answer_diag: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct MeshVector {
    description: String,
    root: String,
    /// The node that judges the `closed` verdict cases, and its own ticket.
    receiver: String,
    receiver_ticket: String,
    tickets: Vec<TicketVector>,
    /// In force at the receiver in every `closed` case.
    revocations: Vec<RevocationVector>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct TicketVector {
    name: String,
    subject: String,
    issuer: String,
    roles: Vec<String>,
    not_before: u64,
    not_after: u64,
    ticket: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct RevocationVector {
    name: String,
    description: String,
    revocation: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct VerdictVector {
    name: String,
    description: String,
    /// `open` (no tickets) or `closed` (the `mesh` section's root, receiver and
    /// revocations).
    mesh: String,
    now_ms: u64,
    /// The gossip message's data on topic `fogmesh/kv/1`.
    delta: String,
    /// Null when the data is not CBOR.
    delta_diag: Option<String>,
    /// Entries merged.
    merged: u64,
    /// The reason of each refused entry (or of the refused delta), sorted.
    refused: Vec<String>,
    /// The gossipsub validation result: `accept`, `ignore` or `reject`.
    verdict: String,
}

// ---------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------

const KEYS: &[(&str, u8)] = &[
    ("root", 0x01),
    ("other_root", 0x03),
    ("alice", 0x0a),
    ("bob", 0x0b),
    ("carol", 0x0c),
    ("dave", 0x0d),
    ("erin", 0x0e),
    ("frank", 0x0f),
    ("receiver", 0x20),
];

fn key(name: &str) -> Keypair {
    let (_, seed) = KEYS.iter().find(|(n, _)| *n == name).unwrap();
    Keypair::ed25519_from_bytes([*seed; 32]).unwrap()
}

fn peer(name: &str) -> PeerId {
    key(name).public().to_peer_id()
}

fn author(name: &str) -> Vec<u8> {
    peer(name).to_bytes()
}

fn key_vector(name: &str) -> KeyVector {
    let k = key(name);
    let ed = k.clone().try_into_ed25519().unwrap();
    KeyVector {
        name: name.into(),
        ed25519_seed: hex::encode(&ed.to_bytes()[..32]),
        ed25519_public: hex::encode(ed.public().to_bytes()),
        public_key_protobuf: hex::encode(k.public().encode_protobuf()),
        peer_id: peer(name).to_string(),
        peer_id_bytes: hex::encode(author(name)),
    }
}

// ---------------------------------------------------------------------------------------
// CBOR, written and read byte by byte (independently of serde)
// ---------------------------------------------------------------------------------------

const NULL: u8 = 0xf6;

/// The fields of an entry, as raw parts.
#[derive(Clone)]
struct Parts {
    namespace: String,
    key: String,
    value: Option<Vec<u8>>,
    wall_ms: u64,
    counter: u32,
    author: Vec<u8>,
    signature: Vec<u8>,
}

impl Parts {
    fn value_cbor(&self) -> Vec<u8> {
        self.value.as_deref().map_or(vec![NULL], bytes)
    }

    fn version_cbor(&self) -> Vec<u8> {
        let hlc = map(&[
            ("wall_ms", uint(self.wall_ms)),
            ("counter", uint(u64::from(self.counter))),
        ]);
        map(&[("hlc", hlc), ("author", bytes(&self.author))])
    }

    /// What the author signs: a five-entry map whose `tag` is an array of 18 unsigned
    /// integers (the tag's ASCII bytes), not a byte string.
    fn signed_bytes(&self) -> Vec<u8> {
        let tag: Vec<Vec<u8>> = SIGNING_TAG.bytes().map(|b| uint(u64::from(b))).collect();
        map(&[
            ("tag", array(&tag)),
            ("namespace", text(&self.namespace)),
            ("key", text(&self.key)),
            ("value", self.value_cbor()),
            ("version", self.version_cbor()),
        ])
    }

    fn entry_fields(&self) -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("namespace", text(&self.namespace)),
            ("key", text(&self.key)),
            ("value", self.value_cbor()),
            ("version", self.version_cbor()),
            ("signature", bytes(&self.signature)),
        ]
    }

    fn entry_cbor(&self) -> Vec<u8> {
        map(&self.entry_fields())
    }

    fn signed(mut self, signer: &Keypair) -> Self {
        self.signature = signer.sign(&self.signed_bytes()).unwrap();
        self
    }

    fn entry(&self) -> Entry {
        Entry {
            namespace: self.namespace.clone(),
            key: self.key.clone(),
            value: self.value.clone().map(ByteBuf::from),
            version: Version {
                hlc: Hlc {
                    wall_ms: self.wall_ms,
                    counter: self.counter,
                },
                author: ByteBuf::from(self.author.clone()),
            },
            signature: ByteBuf::from(self.signature.clone()),
        }
    }

    fn of(entry: &Entry) -> Parts {
        Parts {
            namespace: entry.namespace.clone(),
            key: entry.key.clone(),
            value: entry.value.as_ref().map(|v| v.to_vec()),
            wall_ms: entry.version.hlc.wall_ms,
            counter: entry.version.hlc.counter,
            author: entry.version.author.to_vec(),
            signature: entry.signature.to_vec(),
        }
    }
}

fn delta_cbor(entries: &[Vec<u8>], credentials: &[Vec<u8>]) -> Vec<u8> {
    let credentials: Vec<Vec<u8>> = credentials.iter().map(|c| bytes(c)).collect();
    map(&[
        ("entries", array(entries)),
        ("credentials", array(&credentials)),
    ])
}

/// RFC 8949 diagnostic notation of one CBOR item (the subset fogmesh writes: integers,
/// byte and text strings, arrays, maps, null, booleans), read without serde.
fn diag(cbor: &[u8]) -> String {
    fn arg(input: &[u8], at: &mut usize) -> (u8, u64) {
        let first = input[*at];
        *at += 1;
        let (major, info) = (first >> 5, first & 0x1f);
        let len = match info {
            0..=23 => return (major, u64::from(info)),
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            _ => panic!("indefinite or reserved length at {}", *at - 1),
        };
        let mut n = 0u64;
        for b in &input[*at..*at + len] {
            n = (n << 8) | u64::from(*b);
        }
        *at += len;
        (major, n)
    }
    fn item(input: &[u8], at: &mut usize, out: &mut String) {
        let start = *at;
        let (major, n) = arg(input, at);
        match major {
            0 => out.push_str(&n.to_string()),
            1 => out.push_str(&format!("-{}", u128::from(n) + 1)),
            2 => {
                let b = &input[*at..*at + n as usize];
                *at += n as usize;
                out.push_str(&format!("h'{}'", hex::encode(b)));
            }
            3 => {
                let s = std::str::from_utf8(&input[*at..*at + n as usize]).unwrap();
                *at += n as usize;
                out.push_str(&serde_json::to_string(s).unwrap());
            }
            4 => {
                out.push('[');
                for i in 0..n {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item(input, at, out);
                }
                out.push(']');
            }
            5 => {
                out.push('{');
                for i in 0..n {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item(input, at, out);
                    out.push_str(": ");
                    item(input, at, out);
                }
                out.push('}');
            }
            7 => out.push_str(match n {
                20 => "false",
                21 => "true",
                22 => "null",
                _ => panic!("simple value or float at {start}"),
            }),
            _ => panic!("tag at {start}"),
        }
    }
    let mut at = 0;
    let mut out = String::new();
    item(cbor, &mut at, &mut out);
    assert_eq!(at, cbor.len(), "trailing bytes after one CBOR item");
    out
}

// ---------------------------------------------------------------------------------------
// Entries
// ---------------------------------------------------------------------------------------

fn parts(
    author_name: &str,
    namespace: &str,
    name: &str,
    value: Option<&[u8]>,
    wall_ms: u64,
    counter: u32,
) -> Parts {
    Parts {
        namespace: namespace.into(),
        key: name.into(),
        value: value.map(<[u8]>::to_vec),
        wall_ms,
        counter,
        author: author(author_name),
        signature: Vec::new(),
    }
    .signed(&key(author_name))
}

/// (name, description, author, parts) of every entry in the file.
fn entry_table() -> Vec<(&'static str, String, &'static str, Parts)> {
    let (small, big) = authors_by_bytes();
    let w = NOW_MS - 10_000;
    let tie = |author: &'static str, value: Option<&[u8]>, wall: u64, counter: u32| {
        (author, parts(author, "app", "tie", value, wall, counter))
    };
    let mut table = vec![
        (
            "put",
            "alice writes `hello` to `app`/`greeting/en`".to_string(),
            "alice",
            parts(
                "alice",
                "app",
                "greeting/en",
                Some(b"hello"),
                NOW_MS - 5_000,
                0,
            ),
        ),
        (
            "tombstone",
            "alice deletes `app`/`greeting/en` a second later: value null".to_string(),
            "alice",
            parts("alice", "app", "greeting/en", None, NOW_MS - 4_000, 0),
        ),
        (
            "empty_value",
            "bob writes an empty value (a byte string of length 0, not a tombstone)".to_string(),
            "bob",
            parts("bob", "app", "empty", Some(b""), NOW_MS - 3_000, 2),
        ),
        (
            "utf8_key",
            "bob writes two bytes under a non-ASCII key, counter 300 (a two-byte integer)"
                .to_string(),
            "bob",
            parts(
                "bob",
                "app",
                "ключ/ü",
                Some(&[0x00, 0xff]),
                NOW_MS - 3_000,
                300,
            ),
        ),
        (
            "blob",
            "alice writes 1,000 bytes (0x5a each): pages a subtree at the smallest budget"
                .to_string(),
            "alice",
            parts(
                "alice",
                "app",
                "blob",
                Some(&[0x5a; 1000]),
                NOW_MS - 2_000,
                0,
            ),
        ),
        (
            "mesh_registry",
            "bob writes the reserved namespace `mesh` (needs `admin` in a mesh with tickets)"
                .to_string(),
            "bob",
            parts("bob", "mesh", "registry/1", Some(b"x"), NOW_MS - 1_000, 0),
        ),
    ];
    let ties: Vec<(&'static str, &'static str, &'static str, Parts)> = vec![
        {
            let (a, p) = tie(small, Some(b"x"), w + 1, 0);
            ("tie_later_wall", "later wall_ms, smaller author", a, p)
        },
        {
            let (a, p) = tie(big, Some(b"y"), w, 7);
            (
                "tie_earlier_wall",
                "earlier wall_ms, greater counter and author",
                a,
                p,
            )
        },
        {
            let (a, p) = tie(small, Some(b"x"), w, 1);
            ("tie_counter_1", "counter 1, smaller author", a, p)
        },
        {
            let (a, p) = tie(big, Some(b"y"), w, 0);
            ("tie_counter_0", "counter 0, greater author", a, p)
        },
        {
            let (a, p) = tie(small, Some(b"zzz"), w, 0);
            ("tie_small_author", "the smaller author, value `zzz`", a, p)
        },
        {
            let (a, p) = tie(big, Some(b"aaa"), w, 0);
            ("tie_big_author", "the greater author, value `aaa`", a, p)
        },
        {
            let (a, p) = tie("alice", None, w + 100, 0);
            ("tie_tombstone", "alice's tombstone at w+100", a, p)
        },
        {
            let (a, p) = tie("alice", Some(b""), w + 100, 0);
            (
                "tie_empty_value",
                "alice's empty value at the same version",
                a,
                p,
            )
        },
        {
            let (a, p) = tie("alice", Some(b"b"), w + 200, 0);
            ("tie_value_b", "alice's `b` at w+200", a, p)
        },
        {
            let (a, p) = tie("alice", Some(b"abc"), w + 200, 0);
            ("tie_value_abc", "alice's `abc` at the same version", a, p)
        },
        {
            let (a, p) = tie("alice", Some(b"ab"), w + 300, 0);
            ("tie_value_ab", "alice's `ab` at w+300", a, p)
        },
        {
            let (a, p) = tie("alice", Some(b"abc"), w + 300, 0);
            ("tie_value_abc_2", "alice's `abc` at the same version", a, p)
        },
    ];
    for (name, description, a, p) in ties {
        table.push((
            name,
            format!("for a tie-break on `app`/`tie`: {description} (w = {w})"),
            a,
            p,
        ));
    }
    table
}

/// alice and bob, ordered by their PeerId bytes.
fn authors_by_bytes() -> (&'static str, &'static str) {
    if author("alice") < author("bob") {
        ("alice", "bob")
    } else {
        ("bob", "alice")
    }
}

fn entry_parts(name: &str) -> Parts {
    entry_table()
        .into_iter()
        .find(|(n, ..)| *n == name)
        .map(|(.., p)| p)
        .unwrap()
}

fn entry_vector(name: &str, description: String, author_name: &str, p: &Parts) -> EntryVector {
    let entry = p.entry();
    let signed = p.signed_bytes();
    // The independent writer and the implementation agree.
    assert_eq!(entry.signing_bytes(), signed, "{name}");
    assert_eq!(codec::encode(&entry).unwrap(), p.entry_cbor(), "{name}");
    let preimage = [signed.clone(), p.signature.clone()].concat();
    let sha = Sha256::digest(&preimage);
    assert_eq!(
        format!("{:016x}", entry.digest()),
        hex::encode(&sha[..8]),
        "{name}"
    );
    let id = key_id(&p.namespace, &p.key);
    EntryVector {
        name: name.into(),
        description,
        author: author_name.into(),
        namespace: p.namespace.clone(),
        key: p.key.clone(),
        value: p.value.as_deref().map(hex::encode),
        wall_ms: p.wall_ms,
        counter: p.counter,
        signed_bytes_diag: diag(&signed),
        signed_bytes: hex::encode(&signed),
        signature: hex::encode(&p.signature),
        entry_diag: diag(&p.entry_cbor()),
        entry: hex::encode(p.entry_cbor()),
        key_id: hex::encode(id),
        bucket: bucket_of(&id),
        digest_sha256: hex::encode(sha),
        digest: hex::encode(&sha[..8]),
    }
}

fn ties() -> Vec<TieVector> {
    let (small, big) = authors_by_bytes();
    let tie = |name: &str, rule: String, a: &str, b: &str, winner: &str| TieVector {
        name: name.into(),
        rule,
        a: a.into(),
        b: b.into(),
        winner: winner.into(),
    };
    vec![
        tie(
            "later_wall_ms_wins",
            format!("the later wall_ms wins, whatever the counters and authors ({small} < {big})"),
            "tie_later_wall",
            "tie_earlier_wall",
            "tie_later_wall",
        ),
        tie(
            "greater_counter_wins",
            "at equal wall_ms the greater counter wins, whatever the authors".into(),
            "tie_counter_1",
            "tie_counter_0",
            "tie_counter_1",
        ),
        tie(
            "greater_author_wins",
            format!(
                "at an equal clock the greater author (PeerId bytes, compared byte by byte) \
                 wins, whatever the values: {big}'s bytes are greater than {small}'s"
            ),
            "tie_small_author",
            "tie_big_author",
            "tie_big_author",
        ),
        tie(
            "a_value_beats_a_tombstone",
            "one author, one clock: any value (even an empty one) beats a tombstone".into(),
            "tie_tombstone",
            "tie_empty_value",
            "tie_empty_value",
        ),
        tie(
            "values_compare_bytewise",
            "one author, one clock, two values: the greater value, compared byte by byte \
             (the first differing byte decides, not the length): `b` > `abc`"
                .into(),
            "tie_value_b",
            "tie_value_abc",
            "tie_value_b",
        ),
        tie(
            "a_prefix_is_smaller",
            "one author, one clock: a value that is a proper prefix of the other is smaller: \
             `abc` > `ab`"
                .into(),
            "tie_value_ab",
            "tie_value_abc_2",
            "tie_value_abc_2",
        ),
    ]
}

/// Merges `a` then `b` and `b` then `a`: the winner's name, the same both ways.
fn merge_winner(a: (&str, Entry), b: (&str, Entry)) -> String {
    let mut ab = Slot::new(a.1.clone());
    ab.merge(b.1.clone());
    let mut ba = Slot::new(b.1.clone());
    ba.merge(a.1.clone());
    assert_eq!(ab, ba, "merge order matters for {} and {}", a.0, b.0);
    if ab.winner == a.1 {
        a.0.to_string()
    } else {
        assert_eq!(ab.winner, b.1);
        b.0.to_string()
    }
}

// ---------------------------------------------------------------------------------------
// A mesh with tickets
// ---------------------------------------------------------------------------------------

struct TicketSpec {
    name: &'static str,
    subject: &'static str,
    issuer: &'static str,
    roles: &'static [&'static str],
    not_before: u64,
    not_after: u64,
}

const TICKETS: &[TicketSpec] = &[
    TicketSpec {
        name: "receiver",
        subject: "receiver",
        issuer: "root",
        roles: &["worker"],
        not_before: NOW_S - DAY_S,
        not_after: NOW_S + 30 * DAY_S,
    },
    TicketSpec {
        name: "alice_writer",
        subject: "alice",
        issuer: "root",
        roles: &["writer"],
        not_before: NOW_S - DAY_S,
        not_after: NOW_S + 30 * DAY_S,
    },
    TicketSpec {
        name: "bob_admin",
        subject: "bob",
        issuer: "root",
        roles: &["writer", "admin"],
        not_before: NOW_S - DAY_S,
        not_after: NOW_S + 30 * DAY_S,
    },
    TicketSpec {
        name: "carol_worker",
        subject: "carol",
        issuer: "root",
        roles: &["worker"],
        not_before: NOW_S - DAY_S,
        not_after: NOW_S + 30 * DAY_S,
    },
    TicketSpec {
        name: "dave_writer",
        subject: "dave",
        issuer: "root",
        roles: &["writer"],
        not_before: NOW_S - DAY_S,
        not_after: NOW_S + 30 * DAY_S,
    },
    TicketSpec {
        name: "erin_other_mesh",
        subject: "erin",
        issuer: "other_root",
        roles: &["writer"],
        not_before: NOW_S - DAY_S,
        not_after: NOW_S + 30 * DAY_S,
    },
    TicketSpec {
        name: "frank_expired",
        subject: "frank",
        issuer: "root",
        roles: &["writer"],
        not_before: NOW_S - 30 * DAY_S,
        not_after: NOW_S - 10 * DAY_S,
    },
];

fn ticket_bytes(name: &str) -> Vec<u8> {
    let spec = TICKETS.iter().find(|t| t.name == name).unwrap();
    let issuer = key(spec.issuer);
    ticket::issue(
        &issuer,
        MeshId::of_root(&issuer.public()),
        peer(spec.subject),
        &Grant {
            roles: spec.roles.iter().map(|r| r.to_string()).collect(),
            not_before: spec.not_before,
            not_after: spec.not_after,
        },
        None,
    )
    .unwrap()
}

fn mesh_vector() -> MeshVector {
    let dave_revoked = ticket::revoke(
        &key("root"),
        RevocationTarget::Subject(author("dave")),
        NOW_S - 3_600,
    )
    .unwrap();
    MeshVector {
        description: "A mesh with tickets (docs/admission.md): the root's key, the node that \
                      judges the `closed` verdict cases with its own ticket, the tickets \
                      that travel as `credentials`, and the revocations the receiver holds."
            .into(),
        root: "root".into(),
        receiver: "receiver".into(),
        receiver_ticket: hex::encode(ticket_bytes("receiver")),
        tickets: TICKETS
            .iter()
            .filter(|t| t.name != "receiver")
            .map(|t| TicketVector {
                name: t.name.into(),
                subject: t.subject.into(),
                issuer: t.issuer.into(),
                roles: t.roles.iter().map(|r| r.to_string()).collect(),
                not_before: t.not_before,
                not_after: t.not_after,
                ticket: hex::encode(ticket_bytes(t.name)),
            })
            .collect(),
        revocations: vec![RevocationVector {
            name: "dave".into(),
            description: "every ticket of dave's with not_before at or before an hour ago".into(),
            revocation: hex::encode(dave_revoked),
        }],
    }
}

// ---------------------------------------------------------------------------------------
// Nodes, driven the way the runtime drives them (jobs run here by hand)
// ---------------------------------------------------------------------------------------

struct Node {
    kv: KvService,
    metrics: KvMetrics,
    _dir: tempfile::TempDir,
}

fn node_with(access: AccessPolicy, receiver: Keypair, replica: Vec<Entry>) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let metrics = KvMetrics::default();
    let mut core = KvCore::open(receiver, &store, access, metrics.clone());
    if !replica.is_empty() {
        let count = replica.len() as u32;
        let taken = core.take_remote(NOW_MS, replica, &[], "gossip");
        assert_eq!((taken.merged, taken.refused), (count, 0));
    }
    Node {
        kv: KvService::new(core),
        metrics,
        _dir: dir,
    }
}

fn closed_policy(mesh: &MeshVector, root: &Keypair) -> AccessPolicy {
    let mut revocations = RevocationSet::default();
    for r in &mesh.revocations {
        assert!(revocations
            .add(&unhex(&r.revocation), &root.public())
            .unwrap());
    }
    AccessPolicy {
        admission: Some(AdmissionPolicy::closed(
            root.public(),
            unhex(&mesh.receiver_ticket),
            Arc::new(RwLock::new(revocations)),
        )),
    }
}

/// Runs every job `out` asks for, and those their outputs ask for, as the storage task
/// would; returns every other effect.
fn run_jobs(kv: &mut KvService, now_ms: u64, mut out: Outbox) -> Vec<Effect> {
    let mut effects = Vec::new();
    let mut queue: VecDeque<Effect> = out.drain().collect();
    while let Some(effect) = queue.pop_front() {
        match effect {
            Effect::Job { job, token, .. } => {
                let mut next = Outbox::at(now_ms);
                kv.on_job(now_ms, token, Ok(job()), &mut next);
                queue.extend(next.drain());
            }
            other => effects.push(other),
        }
    }
    effects
}

fn acceptance(a: MessageAcceptance) -> &'static str {
    match a {
        MessageAcceptance::Accept => "accept",
        MessageAcceptance::Ignore => "ignore",
        MessageAcceptance::Reject => "reject",
    }
}

/// A delta as gossip delivers it: the verdict, entries merged, reasons refused.
fn judge_delta(node: &mut Node, now_ms: u64, data: &[u8]) -> (String, u64, Vec<String>) {
    let id = GossipId {
        message: MessageId::from(vec![1u8]),
        source: peer("carol"),
    };
    let mut out = Outbox::at(now_ms);
    let verdict = node.kv.on_gossip(
        now_ms,
        GossipIn {
            topic: TOPIC,
            propagation_source: peer("carol"),
            author: Some(peer("carol")),
            data,
            id: &id,
        },
        &mut out,
    );
    let effects = run_jobs(&mut node.kv, now_ms, out);
    let verdict = match verdict {
        Verdict::Now(a) => a,
        Verdict::Later => effects
            .iter()
            .find_map(|e| match e {
                Effect::GossipVerdict { acceptance, .. } => Some(*acceptance),
                _ => None,
            })
            .expect("a verdict once the job ran"),
    };
    let merged = node
        .metrics
        .merged
        .get_or_create(&ReasonLabel { reason: "gossip" })
        .get();
    let mut refused = Vec::new();
    for &reason in REASONS {
        let n = node
            .metrics
            .refused
            .get_or_create(&ReasonLabel { reason })
            .get();
        refused.extend(std::iter::repeat_n(reason.to_string(), n as usize));
    }
    refused.sort();
    (acceptance(verdict).into(), merged, refused)
}

/// A sync request as a neighbour sends it: the answer's bytes.
fn ask(node: &mut Node, now_ms: u64, data: Vec<u8>) -> Vec<u8> {
    let mut out = Outbox::at(now_ms);
    node.kv.on_request(
        now_ms,
        InboundRequest {
            id: InboundId(7),
            peer: peer("carol"),
            protocol: PROTOCOL,
            data,
        },
        &mut out,
    );
    let effects = run_jobs(&mut node.kv, now_ms, out);
    let answers: Vec<Vec<u8>> = effects
        .into_iter()
        .filter_map(|e| match e {
            Effect::Respond { id, data } => {
                assert_eq!(id, InboundId(7));
                Some(data)
            }
            _ => None,
        })
        .collect();
    assert_eq!(answers.len(), 1, "one answer per request");
    answers.into_iter().next().unwrap()
}

// ---------------------------------------------------------------------------------------
// Deltas, sync cases, verdict cases
// ---------------------------------------------------------------------------------------

fn encoded_delta(entries: &[&str], credentials: &[&str]) -> Vec<u8> {
    let delta = Delta {
        entries: entries.iter().map(|n| entry_parts(n).entry()).collect(),
        credentials: credentials
            .iter()
            .map(|t| ByteBuf::from(ticket_bytes(t)))
            .collect(),
    };
    let encoded = codec::encode(&delta).unwrap();
    let by_hand = delta_cbor(
        &entries
            .iter()
            .map(|n| entry_parts(n).entry_cbor())
            .collect::<Vec<_>>(),
        &credentials
            .iter()
            .map(|t| ticket_bytes(t))
            .collect::<Vec<_>>(),
    );
    assert_eq!(encoded, by_hand);
    encoded
}

fn deltas() -> Vec<DeltaVector> {
    let delta = |name: &str, description: &str, entries: &[&str], credentials: &[&str]| {
        let bytes = encoded_delta(entries, credentials);
        DeltaVector {
            name: name.into(),
            description: description.into(),
            entries: entries.iter().map(|e| e.to_string()).collect(),
            credentials: credentials
                .iter()
                .map(|t| hex::encode(ticket_bytes(t)))
                .collect(),
            diag: diag(&bytes),
            delta: hex::encode(bytes),
        }
    };
    vec![
        delta(
            "open_mesh",
            "two entries of alice's, no credentials (an open mesh)",
            &["put", "tombstone"],
            &[],
        ),
        delta(
            "with_credential",
            "one entry of alice's with her ticket (`alice_writer` in `mesh`)",
            &["put"],
            &["alice_writer"],
        ),
    ]
}

fn request(r: &SyncRequest) -> Vec<u8> {
    codec::encode(r).unwrap()
}

fn id_of(name: &str) -> ByteBuf {
    let p = entry_parts(name);
    ByteBuf::from(key_id(&p.namespace, &p.key).to_vec())
}

const REPLICA: &[&str] = &["put", "tombstone", "empty_value", "utf8_key", "blob"];

fn replica() -> Vec<Entry> {
    REPLICA.iter().map(|n| entry_parts(n).entry()).collect()
}

fn sync_vectors() -> SyncVectors {
    let put_id = id_of("put");
    let level1 = u32::from(put_id[0] >> 4);
    let put_bucket = bucket_of(&key_id("app", "greeting/en"));
    let utf8_bucket = bucket_of(&key_id("app", "ключ/ü"));
    let empty_bucket = (0..=u16::MAX)
        .find(|b| {
            REPLICA.iter().all(|n| {
                let p = entry_parts(n);
                bucket_of(&key_id(&p.namespace, &p.key)) != *b
            })
        })
        .unwrap();
    let pushed = parts("alice", "app", "pushed", Some(b"new"), NOW_MS - 500, 0);
    let mut forged = pushed.clone();
    forged.value = Some(b"forged".to_vec());

    // The first page of the whole keyspace at the smallest budget, to go on from.
    let first_page = SyncRequest::Subtree {
        nodes: vec![(0, 0)],
        after: None,
        budget: 1024,
    };
    let mut node = node_with(AccessPolicy::open(), key("receiver"), replica());
    let answer = ask(&mut node, NOW_MS, request(&first_page));
    let SyncResponse::Subtree {
        next: Some(next), ..
    } = codec::decode(&answer).unwrap()
    else {
        panic!("a first page with more to come");
    };

    let buckets_without_budget = map(&[(
        "Buckets",
        map(&[("buckets", array(&[uint(u64::from(put_bucket))]))]),
    )]);
    let cases: Vec<(&str, &str, Vec<u8>, bool)> = vec![
        (
            "children_of_the_root",
            "the sums of the root's 16 children: [xor of digests, key count] each",
            request(&SyncRequest::Children {
                level: 0,
                nodes: vec![0],
            }),
            true,
        ),
        (
            "children_at_level_1",
            "the sums of the children of level-1 node `put`'s key id's first hex digit, and \
             of node 0",
            request(&SyncRequest::Children {
                level: 1,
                nodes: vec![level1, 0],
            }),
            true,
        ),
        (
            "buckets",
            "the listings of `put`'s bucket, `utf8_key`'s and an empty one: [key id, digest, \
             wall_ms, counter] per key",
            request(&SyncRequest::Buckets {
                buckets: vec![put_bucket, utf8_bucket, empty_bucket],
                budget: 65_536,
            }),
            true,
        ),
        (
            "buckets_without_budget",
            "`budget` left out (written by hand): 8192 is assumed",
            buckets_without_budget,
            false,
        ),
        (
            "subtree_first_page",
            "every winner of the keyspace (node 0 of level 0) at the smallest budget: a page \
             and the key id to go on after",
            request(&first_page),
            true,
        ),
        (
            "subtree_next_page",
            "the same, after the first page's `next`",
            request(&SyncRequest::Subtree {
                nodes: vec![(0, 0)],
                after: Some(next),
                budget: 1024,
            }),
            true,
        ),
        (
            "fetch",
            "the winners of `app`/`greeting/en` (a tombstone now) and of a key held nowhere: \
             both keys served",
            request(&SyncRequest::Fetch {
                keys: vec![
                    put_id.clone(),
                    ByteBuf::from(key_id("app", "missing").to_vec()),
                ],
                budget: 65_536,
            }),
            true,
        ),
        (
            "push_accepted",
            "a push of one valid entry of alice's",
            request(&SyncRequest::Push {
                entries: vec![pushed.entry()],
                credentials: vec![],
            }),
            true,
        ),
        (
            "push_refused",
            "a push of the same entry with another value, the signature kept",
            request(&SyncRequest::Push {
                entries: vec![forged.entry()],
                credentials: vec![],
            }),
            true,
        ),
        (
            "refused_malformed_request",
            "not CBOR",
            b"hello".to_vec(),
            false,
        ),
        (
            "refused_bad_level",
            "children of a leaf (level 4)",
            request(&SyncRequest::Children {
                level: 4,
                nodes: vec![0],
            }),
            true,
        ),
        (
            "refused_bad_node",
            "node 16 of level 1 (there are 16: 0 to 15)",
            request(&SyncRequest::Children {
                level: 1,
                nodes: vec![16],
            }),
            true,
        ),
        (
            "refused_too_many_nodes",
            "17 nodes in one children request",
            request(&SyncRequest::Children {
                level: 2,
                nodes: (0..17).collect(),
            }),
            true,
        ),
        (
            "refused_too_many_buckets",
            "no buckets",
            request(&SyncRequest::Buckets {
                buckets: vec![],
                budget: 8192,
            }),
            true,
        ),
        (
            "refused_nodes_out_of_order",
            "subtrees not in key-id order",
            request(&SyncRequest::Subtree {
                nodes: vec![(1, 2), (1, 1)],
                after: None,
                budget: 8192,
            }),
            true,
        ),
        (
            "refused_bad_key_id",
            "a key id of 2 bytes",
            request(&SyncRequest::Fetch {
                keys: vec![ByteBuf::from(vec![1, 2])],
                budget: 8192,
            }),
            true,
        ),
        (
            "refused_too_many_entries",
            "a push with 65 credentials",
            request(&SyncRequest::Push {
                entries: vec![],
                credentials: vec![ByteBuf::new(); 65],
            }),
            true,
        ),
    ];
    SyncVectors {
        description: "Each request (its frame's body) sent to a node holding `replica`, in an \
                      open mesh, with the answer it gives (the body of the answer's frame)."
            .into(),
        answering_node: "receiver".into(),
        replica: REPLICA.iter().map(|n| n.to_string()).collect(),
        now_ms: NOW_MS,
        cases: cases
            .into_iter()
            .map(|(name, description, data, as_sent)| {
                let mut node = node_with(AccessPolicy::open(), key("receiver"), replica());
                let answer = ask(&mut node, NOW_MS, data.clone());
                SyncCase {
                    name: name.into(),
                    description: description.into(),
                    request_diag: codec::check_well_formed(&data).ok().map(|_| diag(&data)),
                    request: hex::encode(&data),
                    request_as_sent: as_sent,
                    answer_diag: diag(&answer),
                    answer: hex::encode(answer),
                }
            })
            .collect(),
    }
}

fn framing() -> FramingVector {
    let body = request(&SyncRequest::Children {
        level: 0,
        nodes: vec![0],
    });
    let frame = [(body.len() as u32).to_be_bytes().to_vec(), body.clone()].concat();
    FramingVector {
        description: "one request on its own stream: a u32 big-endian length, then the CBOR \
                      body; the answer is framed the same way on the same stream"
            .into(),
        body: hex::encode(body),
        frame: hex::encode(frame),
    }
}

struct Case {
    name: &'static str,
    description: &'static str,
    closed: bool,
    delta: Vec<u8>,
    merged: u64,
    refused: &'static [&'static str],
    verdict: &'static str,
}

fn one(p: &Parts) -> Vec<u8> {
    delta_cbor(&[p.entry_cbor()], &[])
}

fn with_credentials(p: &Parts, tickets: &[&str]) -> Vec<u8> {
    let tickets: Vec<Vec<u8>> = tickets.iter().map(|t| ticket_bytes(t)).collect();
    delta_cbor(&[p.entry_cbor()], &tickets)
}

fn verdict_cases() -> Vec<Case> {
    let put = entry_parts("put");
    let fresh = |author_name: &str, namespace: &str, key: &str, wall_ms: u64| {
        parts(author_name, namespace, key, Some(b"v"), wall_ms, 0)
    };
    let mut flipped = put.clone();
    flipped.signature[0] ^= 0x01;
    let mut tampered = put.clone();
    tampered.value = Some(b"jello".to_vec());
    let mut other_author = put.clone();
    other_author.author = author("bob");
    let mut short = put.clone();
    short.signature.pop();
    let mut long = put.clone();
    long.signature = vec![0x11; 257];
    let mut not_peer_id = put.clone();
    not_peer_id.author = b"not a peer id".to_vec();
    not_peer_id = not_peer_id.signed(&key("alice"));
    let mut empty_author = put.clone();
    empty_author.author = Vec::new();
    empty_author = empty_author.signed(&key("alice"));
    // A PeerId that hashes its key (SHA-256 multihash): no key inside to verify with.
    let mut hashed = put.clone();
    hashed.author = [vec![0x12, 0x20], Sha256::digest(b"some key").to_vec()].concat();
    hashed = hashed.signed(&key("alice"));
    // alice's key with its two protobuf fields the other way round.
    let proto = key("alice").public().encode_protobuf();
    let reordered_proto = [&proto[2..], &proto[..2]].concat();
    let mut reordered_author = put.clone();
    reordered_author.author = [vec![0x00, reordered_proto.len() as u8], reordered_proto].concat();
    reordered_author = reordered_author.signed(&key("alice"));
    let slash_namespace = fresh("alice", "no/slash", "k", NOW_MS - 1_000);
    let dot_key = fresh("alice", "app", "..", NOW_MS - 1_000);
    let long_key = fresh("alice", "app", &"k".repeat(257), NOW_MS - 1_000);
    let at_bound = fresh("alice", "app", "ahead", NOW_MS + 60_000);
    let beyond = fresh("alice", "app", "ahead", NOW_MS + 60_001);
    // The `put` entry with its map keys reversed and an unknown key added: the same entry.
    let mut fields = put.entry_fields();
    fields.reverse();
    fields.push(("comment", text("ignored")));
    let reordered = map(&fields);
    let without_signature = map(&put.entry_fields()[..4]);
    let as_array = {
        let values: Vec<Vec<u8>> = put.entry_fields().into_iter().map(|(_, v)| v).collect();
        array(&values)
    };
    let value_as_text = {
        let mut fields = put.entry_fields();
        fields[2].1 = text("hello");
        map(&fields)
    };
    let delta_of = |entry: Vec<u8>| delta_cbor(&[entry], &[]);
    let sixty_five: Vec<Vec<u8>> = vec![Vec::new(); 65];

    vec![
        Case {
            name: "accept_put",
            description: "the `put` entry",
            closed: false,
            delta: one(&put),
            merged: 1,
            refused: &[],
            verdict: "accept",
        },
        Case {
            name: "accept_delta",
            description: "the `open_mesh` delta: a put and the tombstone that overwrites it",
            closed: false,
            delta: encoded_delta(&["put", "tombstone"], &[]),
            merged: 2,
            refused: &[],
            verdict: "accept",
        },
        Case {
            name: "accept_empty_delta",
            description: "no entries, no credentials",
            closed: false,
            delta: delta_cbor(&[], &[]),
            merged: 0,
            refused: &[],
            verdict: "accept",
        },
        Case {
            name: "accept_reordered_keys",
            description: "the `put` entry with its map keys in reverse order and an unknown \
                          key `comment` added: decoded, it is the same entry, and its \
                          signature is checked over the signed bytes rebuilt from the decoded \
                          fields",
            closed: false,
            delta: delta_of(reordered),
            merged: 1,
            refused: &[],
            verdict: "accept",
        },
        Case {
            name: "accept_value_as_text",
            description: "the `put` entry with its value `hello` as a text string instead of \
                          a byte string: read as its UTF-8 bytes, so the same entry",
            closed: false,
            delta: delta_of(value_as_text),
            merged: 1,
            refused: &[],
            verdict: "accept",
        },
        Case {
            name: "accept_clock_at_bound",
            description: "an entry whose wall_ms is 60,000 ms after the receiver's clock",
            closed: false,
            delta: one(&at_bound),
            merged: 1,
            refused: &[],
            verdict: "accept",
        },
        Case {
            name: "from_the_future",
            description: "an entry whose wall_ms is 60,001 ms after the receiver's clock",
            closed: false,
            delta: one(&beyond),
            merged: 0,
            refused: &["from_the_future"],
            verdict: "ignore",
        },
        Case {
            name: "one_merged_one_from_the_future",
            description: "the `put` entry and one from too far ahead: the delta is accepted",
            closed: false,
            delta: delta_cbor(&[put.entry_cbor(), beyond.entry_cbor()], &[]),
            merged: 1,
            refused: &["from_the_future"],
            verdict: "accept",
        },
        Case {
            name: "bad_signature_flipped",
            description: "the `put` entry with its signature's first bit flipped",
            closed: false,
            delta: one(&flipped),
            merged: 0,
            refused: &["bad_signature"],
            verdict: "reject",
        },
        Case {
            name: "bad_signature_tampered_value",
            description: "the `put` entry with the value `jello`, signature kept",
            closed: false,
            delta: one(&tampered),
            merged: 0,
            refused: &["bad_signature"],
            verdict: "reject",
        },
        Case {
            name: "bad_signature_other_author",
            description: "the `put` entry naming bob as its author, alice's signature kept",
            closed: false,
            delta: one(&other_author),
            merged: 0,
            refused: &["bad_signature"],
            verdict: "reject",
        },
        Case {
            name: "bad_signature_short",
            description: "the `put` entry with its signature's last byte removed (63 bytes)",
            closed: false,
            delta: one(&short),
            merged: 0,
            refused: &["bad_signature"],
            verdict: "reject",
        },
        Case {
            name: "bad_signature_size",
            description: "the `put` entry with a signature of 257 bytes",
            closed: false,
            delta: one(&long),
            merged: 0,
            refused: &["bad_signature_size"],
            verdict: "reject",
        },
        Case {
            name: "one_forged_one_valid",
            description: "the `put` entry and a forged one: the delta is rejected, the valid \
                          entry still merged",
            closed: false,
            delta: delta_cbor(&[put.entry_cbor(), tampered.entry_cbor()], &[]),
            merged: 1,
            refused: &["bad_signature"],
            verdict: "reject",
        },
        Case {
            name: "bad_namespace",
            description: "namespace `no/slash`, signed",
            closed: false,
            delta: one(&slash_namespace),
            merged: 0,
            refused: &["bad_namespace"],
            verdict: "reject",
        },
        Case {
            name: "bad_key_dots",
            description: "key `..`, signed",
            closed: false,
            delta: one(&dot_key),
            merged: 0,
            refused: &["bad_key"],
            verdict: "reject",
        },
        Case {
            name: "bad_key_too_long",
            description: "a key of 257 bytes, signed",
            closed: false,
            delta: one(&long_key),
            merged: 0,
            refused: &["bad_key"],
            verdict: "reject",
        },
        Case {
            name: "bad_author_not_a_peer_id",
            description: "author bytes `not a peer id`, signed by alice",
            closed: false,
            delta: one(&not_peer_id),
            merged: 0,
            refused: &["bad_author"],
            verdict: "reject",
        },
        Case {
            name: "bad_author_empty",
            description: "an empty author, signed by alice",
            closed: false,
            delta: one(&empty_author),
            merged: 0,
            refused: &["bad_author"],
            verdict: "reject",
        },
        Case {
            name: "unverifiable_author",
            description: "a SHA-256-multihash PeerId (12 20 …) as author: it holds no key",
            closed: false,
            delta: one(&hashed),
            merged: 0,
            refused: &["unverifiable_author"],
            verdict: "reject",
        },
        Case {
            name: "accept_author_key_not_canonical",
            description: "an identity-multihash author holding alice's protobuf key with its \
                          two fields the other way round (12 20 <key> 08 01), signed by \
                          alice: accepted, a second author id for the same key",
            closed: false,
            delta: one(&reordered_author),
            merged: 1,
            refused: &[],
            verdict: "accept",
        },
        Case {
            name: "malformed_delta_not_cbor",
            description: "not CBOR",
            closed: false,
            delta: b"not a delta".to_vec(),
            merged: 0,
            refused: &["malformed_delta"],
            verdict: "reject",
        },
        Case {
            name: "malformed_delta_entry_without_signature",
            description: "the `put` entry without its `signature` key: the whole delta fails",
            closed: false,
            delta: delta_of(without_signature),
            merged: 0,
            refused: &["malformed_delta"],
            verdict: "reject",
        },
        Case {
            name: "accept_entry_as_array",
            description: "the `put` entry's five values in an array instead of a map (in the \
                          map's order): decoded as the same entry (lenient decoding; never \
                          sent so)",
            closed: false,
            delta: delta_of(as_array),
            merged: 1,
            refused: &[],
            verdict: "accept",
        },
        Case {
            name: "malformed_delta_too_many_credentials",
            description: "no entries and 65 (empty) credentials",
            closed: false,
            delta: delta_cbor(&[], &sixty_five),
            merged: 0,
            refused: &["malformed_delta"],
            verdict: "reject",
        },
        Case {
            name: "closed_writer_with_credential",
            description: "the `put` entry with alice's ticket (role `writer`)",
            closed: true,
            delta: with_credentials(&put, &["alice_writer"]),
            merged: 1,
            refused: &[],
            verdict: "accept",
        },
        Case {
            name: "closed_no_credential",
            description: "the `put` entry without a ticket",
            closed: true,
            delta: one(&put),
            merged: 0,
            refused: &["no_credential"],
            verdict: "ignore",
        },
        Case {
            name: "closed_credential_of_another_subject",
            description: "the `put` entry with bob's ticket only",
            closed: true,
            delta: with_credentials(&put, &["bob_admin"]),
            merged: 0,
            refused: &["no_credential"],
            verdict: "ignore",
        },
        Case {
            name: "closed_not_writer",
            description: "carol's entry with her ticket, which grants `worker` only",
            closed: true,
            delta: with_credentials(
                &fresh("carol", "app", "k", NOW_MS - 1_000),
                &["carol_worker"],
            ),
            merged: 0,
            refused: &["not_writer"],
            verdict: "reject",
        },
        Case {
            name: "closed_not_admin",
            description: "alice writes namespace `mesh` with her ticket (`writer` only)",
            closed: true,
            delta: with_credentials(
                &fresh("alice", "mesh", "registry/1", NOW_MS - 1_000),
                &["alice_writer"],
            ),
            merged: 0,
            refused: &["not_admin"],
            verdict: "reject",
        },
        Case {
            name: "closed_admin_writes_mesh",
            description: "the `mesh_registry` entry with bob's ticket (`writer`, `admin`)",
            closed: true,
            delta: with_credentials(&entry_parts("mesh_registry"), &["bob_admin"]),
            merged: 1,
            refused: &[],
            verdict: "accept",
        },
        Case {
            name: "closed_revoked",
            description: "dave's entry with his ticket, which the receiver knows is revoked",
            closed: true,
            delta: with_credentials(&fresh("dave", "app", "k", NOW_MS - 1_000), &["dave_writer"]),
            merged: 0,
            refused: &["revoked"],
            verdict: "ignore",
        },
        Case {
            name: "closed_credential_of_another_mesh",
            description: "erin's entry with a ticket from another root",
            closed: true,
            delta: with_credentials(
                &fresh("erin", "app", "k", NOW_MS - 1_000),
                &["erin_other_mesh"],
            ),
            merged: 0,
            refused: &["bad_credential"],
            verdict: "ignore",
        },
        Case {
            name: "closed_expired_ticket_valid_at_the_entry_clock",
            description: "frank's entry stamped 20 days ago, with his ticket that expired 10 \
                          days ago: valid at the entry's clock",
            closed: true,
            delta: with_credentials(
                &fresh("frank", "app", "k", NOW_MS - 20 * DAY_S * 1000),
                &["frank_expired"],
            ),
            merged: 1,
            refused: &[],
            verdict: "accept",
        },
        Case {
            name: "closed_expired_ticket",
            description: "frank's entry stamped a second ago, with his expired ticket",
            closed: true,
            delta: with_credentials(
                &fresh("frank", "app", "k", NOW_MS - 1_000),
                &["frank_expired"],
            ),
            merged: 0,
            refused: &["bad_credential"],
            verdict: "ignore",
        },
    ]
}

fn generate() -> Vectors {
    let table = entry_table();
    let entries: Vec<EntryVector> = table
        .iter()
        .map(|(name, description, a, p)| entry_vector(name, description.clone(), a, p))
        .collect();
    let ties = ties();
    for t in &ties {
        let winner = merge_winner(
            (&t.a, entry_parts(&t.a).entry()),
            (&t.b, entry_parts(&t.b).entry()),
        );
        assert_eq!(winner, t.winner, "{}", t.name);
    }
    Vectors {
        description: "fogmesh replicated key-value store: fixed Ed25519 keys; entries with \
                      their CBOR, signed bytes, signatures, key ids, buckets and digests; \
                      tie-breaks; gossip deltas; /fogmesh/kv/1 requests with the answers of \
                      a node holding a fixed replica; deltas with the verdict a receiver \
                      gives. Bytes are lowercase hex; `*_diag` fields are RFC 8949 \
                      diagnostic notation of the bytes next to them."
            .into(),
        generated_by: common::vectors::command("kv_vectors"),
        spec: "docs/kv.md".into(),
        topic: TOPIC.into(),
        protocol: PROTOCOL.into(),
        signing_tag: SIGNING_TAG.into(),
        keys: KEYS.iter().map(|(n, _)| key_vector(n)).collect(),
        entries,
        ties,
        deltas: deltas(),
        framing: framing(),
        sync: sync_vectors(),
        mesh: mesh_vector(),
        verdicts: verdict_cases()
            .into_iter()
            .map(|c| VerdictVector {
                name: c.name.into(),
                description: c.description.into(),
                mesh: if c.closed { "closed" } else { "open" }.into(),
                now_ms: NOW_MS,
                delta_diag: codec::check_well_formed(&c.delta)
                    .ok()
                    .map(|_| diag(&c.delta)),
                delta: hex::encode(&c.delta),
                merged: c.merged,
                refused: c.refused.iter().map(|r| r.to_string()).collect(),
                verdict: c.verdict.into(),
            })
            .collect(),
    }
}

#[test]
fn vectors_file_is_what_the_generator_produces() {
    check_or_write("kv.json", &render(&generate()), "kv_vectors");
}

// ---------------------------------------------------------------------------------------
// Replaying the file
// ---------------------------------------------------------------------------------------

fn read_vectors() -> Vectors {
    common::vectors::read("kv.json", || render(&generate()))
}

/// The entry a vector describes, built from its fields alone.
fn entry_of(v: &EntryVector, keys: &[KeyVector]) -> Entry {
    let k = keys.iter().find(|k| k.name == v.author).unwrap();
    Entry {
        namespace: v.namespace.clone(),
        key: v.key.clone(),
        value: v.value.as_deref().map(|h| ByteBuf::from(unhex(h))),
        version: Version {
            hlc: Hlc {
                wall_ms: v.wall_ms,
                counter: v.counter,
            },
            author: ByteBuf::from(unhex(&k.peer_id_bytes)),
        },
        signature: ByteBuf::from(unhex(&v.signature)),
    }
}

#[test]
fn implementation_passes_every_vector() {
    let v = read_vectors();
    assert_eq!(v.topic, TOPIC);
    assert_eq!(v.protocol, PROTOCOL);
    assert_eq!(v.signing_tag, SIGNING_TAG);

    let mut keys = std::collections::HashMap::new();
    for k in &v.keys {
        let key = Keypair::ed25519_from_bytes(unhex(&k.ed25519_seed)).unwrap();
        assert_eq!(
            hex::encode(key.public().encode_protobuf()),
            k.public_key_protobuf
        );
        let id = key.public().to_peer_id();
        assert_eq!(id.to_string(), k.peer_id);
        assert_eq!(hex::encode(id.to_bytes()), k.peer_id_bytes);
        // An Ed25519 PeerId is the identity multihash (00, length) of the protobuf key.
        let proto = unhex(&k.public_key_protobuf);
        assert_eq!(
            unhex(&k.peer_id_bytes),
            [vec![0x00, proto.len() as u8], proto].concat()
        );
        keys.insert(k.name.clone(), key);
    }

    // Entries: both ways, and against the independent writer.
    let mut entries = std::collections::HashMap::new();
    for e in &v.entries {
        let entry = entry_of(e, &v.keys);
        let signed = unhex(&e.signed_bytes);
        assert_eq!(entry.signing_bytes(), signed, "{}", e.name);
        assert_eq!(Parts::of(&entry).signed_bytes(), signed, "{}", e.name);
        assert_eq!(diag(&signed), e.signed_bytes_diag, "{}", e.name);
        let cbor = unhex(&e.entry);
        assert_eq!(codec::encode(&entry).unwrap(), cbor, "{}", e.name);
        assert_eq!(Parts::of(&entry).entry_cbor(), cbor, "{}", e.name);
        assert_eq!(codec::decode::<Entry>(&cbor).unwrap(), entry, "{}", e.name);
        assert_eq!(diag(&cbor), e.entry_diag, "{}", e.name);
        assert_eq!(entry.is_tombstone(), e.value.is_none());
        let signer = &keys[&e.author];
        // Ed25519 signatures are deterministic: signing again gives the same bytes.
        assert_eq!(hex::encode(signer.sign(&signed).unwrap()), e.signature);
        assert!(signer.public().verify(&signed, &entry.signature));
        assert_eq!(entry.check_shape(), Ok(()), "{}", e.name);
        let id = key_id(&e.namespace, &e.key);
        assert_eq!(hex::encode(id), e.key_id, "{}", e.name);
        let name = format!("{}/{}", e.namespace, e.key);
        assert_eq!(
            hex::encode(&Sha256::digest(name.as_bytes())[..16]),
            e.key_id
        );
        assert_eq!(bucket_of(&id), e.bucket);
        assert_eq!(u16::from_be_bytes([id[0], id[1]]), e.bucket);
        let sha = Sha256::digest([signed, entry.signature.to_vec()].concat());
        assert_eq!(hex::encode(sha), e.digest_sha256, "{}", e.name);
        assert_eq!(hex::encode(&sha[..8]), e.digest);
        assert_eq!(format!("{:016x}", entry.digest()), e.digest, "{}", e.name);
        entries.insert(e.name.clone(), entry);
    }

    for t in &v.ties {
        let winner = merge_winner((&t.a, entries[&t.a].clone()), (&t.b, entries[&t.b].clone()));
        assert_eq!(winner, t.winner, "{}", t.name);
        // The loser is kept among the overwritten versions.
        let mut slot = Slot::new(entries[&t.a].clone());
        let merged = slot.merge(entries[&t.b].clone());
        assert_eq!(merged == Merged::Won, t.winner == t.b, "{}", t.name);
        assert_eq!(slot.overwritten.len(), 1);
    }

    for d in &v.deltas {
        let delta = Delta {
            entries: d.entries.iter().map(|n| entries[n].clone()).collect(),
            credentials: d
                .credentials
                .iter()
                .map(|c| ByteBuf::from(unhex(c)))
                .collect(),
        };
        let bytes = unhex(&d.delta);
        assert_eq!(codec::encode(&delta).unwrap(), bytes, "{}", d.name);
        assert_eq!(codec::decode::<Delta>(&bytes).unwrap(), delta, "{}", d.name);
        assert_eq!(diag(&bytes), d.diag, "{}", d.name);
    }

    let body = unhex(&v.framing.body);
    let frame = unhex(&v.framing.frame);
    assert_eq!(frame[..4], (body.len() as u32).to_be_bytes());
    assert_eq!(frame[4..], body[..]);
    let framed_request: SyncRequest = codec::decode(&body).unwrap();
    futures::executor::block_on(async {
        let mut out = futures::io::Cursor::new(Vec::new());
        fogmesh_wire::framing::write_frame(&mut out, &body, 256 * 1024)
            .await
            .unwrap();
        assert_eq!(out.get_ref(), &frame);
    });
    assert!(matches!(framed_request, SyncRequest::Children { .. }));

    // Sync: each request against a fresh node holding the replica.
    let replica: Vec<Entry> = v.sync.replica.iter().map(|n| entries[n].clone()).collect();
    for case in &v.sync.cases {
        let request = unhex(&case.request);
        if let Ok(decoded) = codec::decode::<SyncRequest>(&request) {
            let again = codec::encode(&decoded).unwrap();
            assert_eq!(again == request, case.request_as_sent, "{}", case.name);
        } else {
            assert!(!case.request_as_sent);
        }
        assert_eq!(
            codec::check_well_formed(&request)
                .ok()
                .map(|_| diag(&request)),
            case.request_diag,
            "{}",
            case.name
        );
        let mut node = node_with(
            AccessPolicy::open(),
            keys[&v.sync.answering_node].clone(),
            replica.clone(),
        );
        let answer = ask(&mut node, v.sync.now_ms, request);
        assert_eq!(hex::encode(&answer), case.answer, "{}", case.name);
        assert_eq!(diag(&answer), case.answer_diag, "{}", case.name);
        let decoded: SyncResponse = codec::decode(&answer).unwrap();
        assert_eq!(codec::encode(&decoded).unwrap(), answer, "{}", case.name);
    }
    sync_answers_agree_with_the_entries(&v, &entries);

    // Verdicts.
    let root = &keys[&v.mesh.root];
    for t in &v.mesh.tickets {
        let ticket = unhex(&t.ticket);
        assert_eq!(
            ticket::claimed_subject(&ticket),
            Some(unhex(
                &v.keys
                    .iter()
                    .find(|k| k.name == t.subject)
                    .unwrap()
                    .peer_id_bytes
            )),
            "{}",
            t.name
        );
    }
    assert!(v.verdicts.iter().any(|c| c.verdict == "reject"));
    assert!(v.verdicts.iter().any(|c| c.verdict == "ignore"));
    for case in &v.verdicts {
        let access = match case.mesh.as_str() {
            "open" => AccessPolicy::open(),
            "closed" => closed_policy(&v.mesh, root),
            other => panic!("mesh {other}"),
        };
        let delta = unhex(&case.delta);
        assert_eq!(
            codec::check_well_formed(&delta).ok().map(|_| diag(&delta)),
            case.delta_diag,
            "{}",
            case.name
        );
        let mut node = node_with(access, keys[&v.mesh.receiver].clone(), Vec::new());
        let (verdict, merged, refused) = judge_delta(&mut node, case.now_ms, &unhex(&case.delta));
        assert_eq!(
            (verdict.as_str(), merged, &refused),
            (case.verdict.as_str(), case.merged, &case.refused),
            "{}: {}",
            case.name,
            case.description
        );
    }
}

/// What the answers say agrees with the entries' own vectors: sums are XORs of digests,
/// listings hold each key's id, digest and clock, pages and fetches carry the winners.
fn sync_answers_agree_with_the_entries(
    v: &Vectors,
    entries: &std::collections::HashMap<String, Entry>,
) {
    let vector = |name: &str| v.entries.iter().find(|e| e.name == name).unwrap();
    // The replica's winners: `tombstone` overwrote `put`.
    let winners: Vec<&EntryVector> = v
        .sync
        .replica
        .iter()
        .filter(|n| *n != "put")
        .map(|n| vector(n))
        .collect();
    let digest = |e: &EntryVector| u64::from_str_radix(&e.digest, 16).unwrap();
    let case = |name: &str| -> SyncResponse {
        let c = v.sync.cases.iter().find(|c| c.name == name).unwrap();
        codec::decode(&unhex(&c.answer)).unwrap()
    };

    let SyncResponse::Children { sums } = case("children_of_the_root") else {
        panic!("children");
    };
    assert_eq!(sums.len(), 16);
    for (child, sum) in sums.iter().enumerate() {
        let under: Vec<&&EntryVector> = winners
            .iter()
            .filter(|e| usize::from(e.bucket >> 12) == child)
            .collect();
        assert_eq!(sum.1, under.len() as u64);
        assert_eq!(sum.0, under.iter().fold(0, |x, e| x ^ digest(e)));
    }

    let SyncResponse::Buckets { buckets, oversized } = case("buckets") else {
        panic!("buckets");
    };
    assert!(oversized.is_empty());
    assert_eq!(buckets.len(), 3);
    for (bucket, listed) in &buckets {
        let mut expected: Vec<&&EntryVector> =
            winners.iter().filter(|e| e.bucket == *bucket).collect();
        expected.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        assert_eq!(listed.len(), expected.len());
        for (l, e) in listed.iter().zip(expected) {
            assert_eq!(hex::encode(&l.0), e.key_id);
            assert_eq!((l.1, l.2, l.3), (digest(e), e.wall_ms, e.counter));
        }
    }
    assert_eq!(
        codec::encode(&case("buckets_without_budget")).unwrap(),
        codec::encode(&SyncResponse::Buckets {
            buckets: buckets[..1].to_vec(),
            oversized: vec![],
        })
        .unwrap()
    );

    // The two pages hold every winner once, in key-id order.
    let mut paged = Vec::new();
    for name in ["subtree_first_page", "subtree_next_page"] {
        let SyncResponse::Subtree { entries: page, .. } = case(name) else {
            panic!("subtree");
        };
        paged.extend(page);
    }
    let mut expected: Vec<&&EntryVector> = winners.iter().collect();
    expected.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    let expected: Vec<Entry> = expected.iter().map(|e| entries[&e.name].clone()).collect();
    assert_eq!(paged, expected);

    let SyncResponse::Fetched {
        entries: fetched,
        served,
        ..
    } = case("fetch")
    else {
        panic!("fetched");
    };
    assert_eq!(served, 2);
    assert_eq!(fetched, vec![entries["tombstone"].clone()]);
}
