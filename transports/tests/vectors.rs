#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Test vectors for the secure channel (`docs/test-vectors/secure-channel.json`) and for
//! tickets and revocations (`docs/test-vectors/admission.json`).
//!
//! Every vector is built from fixed keys, fixed ephemerals and a fixed clock, and every
//! expected outcome below is written by hand from the specs: building a vector asserts that
//! the implementation reaches that outcome. The check then requires the files to equal what
//! was built, byte for byte, and also replays the bytes read from the files, the way an
//! independent implementation would use them.
//!
//! Regenerate after a deliberate change:
//!
//! ```sh
//! FOGMESH_WRITE_VECTORS=1 cargo test -p fogmesh-transports --test vectors
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fogmesh_transports::secure::frame::{self, Peek};
use fogmesh_transports::secure::handshake::{
    self, AwaitingVerdict, Established, Initiator, InitiatorHello, Responder, ResponderHello,
    Verdict,
};
use fogmesh_transports::secure::keys::LocalKeys;
use fogmesh_transports::secure::{
    AdmissionPolicy, HandshakeError, RekeyPolicy, SecurityStats, XkStream,
};
use fogmesh_transports::ticket::{
    self, DelegationBody, Grant, Kind, MeshId, RevocationBody, RevocationSet, RevocationTarget,
    Signed, TicketBody, Verifier,
};
use fogmesh_wire::codec;
use futures::executor::block_on;
use futures::io::{AsyncReadExt, AsyncWriteExt, Cursor};
use libp2p::identity::Keypair;
use libp2p::PeerId;
use serde::Serialize;
use serde_json::{json, Value};

const GENERATED_BY: &str =
    "FOGMESH_WRITE_VECTORS=1 cargo test -p fogmesh-transports --test vectors";
/// The clock every vector is judged at (Unix seconds).
const NOW: u64 = 1_800_000_000;
const SKEW: u64 = 300;
const DAY: u64 = 86_400;

fn h(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

fn unhex(value: &Value) -> Vec<u8> {
    hex::decode(value.as_str().expect("a hex string")).expect("valid hex")
}

/// Ed25519 seeds: a fixed byte repeated, so anyone can type them in.
fn seed(byte: u8) -> [u8; 32] {
    [byte; 32]
}

fn keypair(byte: u8) -> Keypair {
    Keypair::ed25519_from_bytes(seed(byte)).unwrap()
}

fn peer(byte: u8) -> PeerId {
    keypair(byte).public().to_peer_id()
}

const ROOT: u8 = 0x01;
const ISSUER: u8 = 0x02;
const OTHER_ROOT: u8 = 0x03;
const STRANGER: u8 = 0x04;
const INITIATOR: u8 = 0x11;
const RESPONDER: u8 = 0x22;
const INITIATOR_EPHEMERAL: [u8; 32] = [0xe1; 32];
const RESPONDER_EPHEMERAL: [u8; 32] = [0xe2; 32];

fn grant(roles: &[&str], not_before: u64, not_after: u64) -> Grant {
    Grant {
        roles: roles.iter().map(|r| r.to_string()).collect(),
        not_before,
        not_after,
    }
}

fn mesh_id() -> MeshId {
    MeshId::of_root(&keypair(ROOT).public())
}

fn root_ticket(subject: u8, not_before: u64, not_after: u64) -> Vec<u8> {
    ticket::issue(
        &keypair(ROOT),
        mesh_id(),
        peer(subject),
        &grant(&["worker"], not_before, not_after),
        None,
    )
    .unwrap()
}

fn good_ticket(subject: u8) -> Vec<u8> {
    root_ticket(subject, NOW - DAY, NOW + 30 * DAY)
}

fn identity(byte: u8) -> Value {
    let key = keypair(byte);
    let local = LocalKeys::from_identity(&key).unwrap();
    json!({
        "ed25519_seed": h(&seed(byte)),
        "ed25519_public": h(local.identity_public()),
        "public_key_protobuf": h(&key.public().encode_protobuf()),
        "peer_id": local.peer_id().to_string(),
        "peer_id_bytes": h(&local.peer_id().to_bytes()),
        "x25519_private": h(local.static_secret()),
        "x25519_public": h(local.static_public()),
    })
}

fn local(byte: u8) -> LocalKeys {
    LocalKeys::from_identity(&keypair(byte)).unwrap()
}

fn policy(own: u8) -> AdmissionPolicy {
    AdmissionPolicy::closed(keypair(ROOT).public(), good_ticket(own), Arc::default())
}

// ---------------------------------------------------------------------------------------
// The secure channel
// ---------------------------------------------------------------------------------------

fn msg1() -> (Initiator, Vec<u8>) {
    Initiator::start_with(
        &local(INITIATOR),
        peer(RESPONDER),
        Some(&INITIATOR_EPHEMERAL),
    )
    .unwrap()
}

fn responder() -> Responder {
    Responder::with_ephemeral(&local(RESPONDER), Some(&RESPONDER_EPHEMERAL)).unwrap()
}

fn responder_hello() -> Vec<u8> {
    handshake::encode(&ResponderHello {
        ticket: Some(good_ticket(RESPONDER)),
    })
    .unwrap()
}

/// Runs msg1 and a msg2 carrying `msg2_payload`; returns the initiator waiting for msg2,
/// the responder waiting for msg3, and msg2.
fn to_msg2(msg2_payload: &[u8]) -> (Initiator, Responder, Vec<u8>) {
    let (initiator, m1) = msg1();
    let mut responder = responder();
    let m2 = responder.answer_verbatim(&m1, msg2_payload).unwrap();
    (initiator, responder, m2)
}

/// msg3 carrying `payload` (what a correct or misbehaving initiator sends), with the
/// initiator left waiting for the verdict.
fn msg3_with(payload: &[u8]) -> (AwaitingVerdict, Responder, Vec<u8>) {
    let (initiator, responder, m2) = to_msg2(&responder_hello());
    let (awaiting, m3) = initiator.answer_verbatim(&m2, payload).unwrap();
    (awaiting, responder, m3)
}

fn hello(identity_key: &[u8], ticket: Option<Vec<u8>>, refusal: Option<&str>) -> Vec<u8> {
    handshake::encode(&InitiatorHello {
        identity_key: identity_key.to_vec(),
        ticket,
        refusal: refusal.map(str::to_owned),
    })
    .unwrap()
}

fn verdict_plaintext(reason: Option<&str>) -> Vec<u8> {
    handshake::encode(&Verdict {
        admitted: reason.is_none(),
        reason: reason.map(str::to_owned),
    })
    .unwrap()
}

fn reason_of(error: &HandshakeError) -> String {
    error.reason().to_owned()
}

/// Feeds `msg3` to a responder at the vectors' state; returns the reason it refuses with
/// and the verdict frame it sends (None: bare close).
fn responder_refuses(msg3: &[u8]) -> (String, Option<Vec<u8>>) {
    // The responder's state depends only on msg1 and msg2, both fixed, so a fresh one is in
    // the state every msg3 vector was made for.
    let (_, responder, _) = to_msg2(&responder_hello());
    match responder.on_initiator_hello(msg3, &policy(RESPONDER), NOW) {
        Ok(_) => ("admitted".to_owned(), None),
        Err(failure) => (reason_of(&failure.error), failure.farewell),
    }
}

/// A struct with the InitiatorHello's fields in another order.
#[derive(Serialize)]
struct HelloReordered<'a> {
    #[serde(with = "serde_bytes")]
    ticket: Option<&'a [u8]>,
    #[serde(with = "serde_bytes")]
    identity_key: &'a [u8],
    refusal: Option<&'a str>,
}

#[derive(Serialize)]
struct HelloExtraKey<'a> {
    #[serde(with = "serde_bytes")]
    identity_key: &'a [u8],
    #[serde(with = "serde_bytes")]
    ticket: Option<&'a [u8]>,
    refusal: Option<&'a str>,
    version: u8,
}

#[derive(Serialize)]
struct HelloNoRefusal<'a> {
    #[serde(with = "serde_bytes")]
    identity_key: &'a [u8],
    #[serde(with = "serde_bytes")]
    ticket: Option<&'a [u8]>,
}

#[derive(Serialize)]
struct HelloTextKey<'a> {
    identity_key: &'a str,
    #[serde(with = "serde_bytes")]
    ticket: Option<&'a [u8]>,
    refusal: Option<&'a str>,
}

#[derive(Serialize)]
struct VerdictLoose<'a> {
    admitted: u8,
    reason: Option<&'a str>,
}

#[derive(Serialize)]
struct ResponderHelloExtra<'a> {
    #[serde(with = "serde_bytes")]
    ticket: Option<&'a [u8]>,
    roles: Vec<&'a str>,
}

/// The first valid Ed25519 y-coordinate encoding that does not decode to a point.
fn not_a_point() -> [u8; 32] {
    (2u8..=255)
        .map(|y| {
            let mut key = [0u8; 32];
            key[0] = y;
            key
        })
        .find(|key| {
            matches!(
                fogmesh_transports::secure::keys::montgomery(key),
                Err(fogmesh_transports::secure::keys::KeyError::InvalidPoint)
            )
        })
        .unwrap()
}

/// The whole handshake that succeeds, and the transport frames after it.
fn admitted_run() -> Value {
    let (initiator, m1) = msg1();
    let mut responder = responder();
    let m2 = responder.on_opening(&m1, &policy(RESPONDER)).unwrap();
    let (awaiting, m3) = initiator
        .on_responder_hello(&m2, &local(INITIATOR), &policy(INITIATOR), NOW)
        .unwrap();
    let (at_responder, verdict) = responder
        .on_initiator_hello(&m3, &policy(RESPONDER), NOW)
        .unwrap();
    let at_initiator = awaiting.on_verdict(&verdict).unwrap();
    assert_eq!(at_responder.remote, peer(INITIATOR));
    assert_eq!(at_initiator.remote, peer(RESPONDER));
    let msg3_payload = hello(
        local(INITIATOR).identity_public(),
        Some(good_ticket(INITIATOR)),
        None,
    );
    let forward = transport(
        at_initiator,
        &["hello", "fogmesh", "after the rekey"],
        at_responder,
    );
    json!({
        "msg1": h(&m1),
        "msg1_payload": "",
        "msg2": h(&m2),
        "msg2_payload": h(&responder_hello()),
        "msg3": h(&m3),
        "msg3_payload": h(&msg3_payload),
        "verdict_frame": h(&verdict),
        "verdict_plaintext": h(&verdict_plaintext(None)),
        "transport_initiator_to_responder": forward,
    })
}

const REKEY_AFTER: u64 = 2;

/// `sender` writes each plaintext and flushes (one frame each), rekeying after every
/// [`REKEY_AFTER`] frames; `receiver` must read back exactly the plaintexts.
fn transport(sender: Established, plaintexts: &[&str], receiver: Established) -> Value {
    let rekey = RekeyPolicy {
        max_frames: REKEY_AFTER,
        max_age: Duration::from_secs(3600),
    };
    let mut out = XkStream::new(
        Cursor::new(Vec::new()),
        sender.session,
        rekey,
        Arc::default(),
    );
    block_on(async {
        for text in plaintexts {
            out.write_all(text.as_bytes()).await.unwrap();
            out.flush().await.unwrap();
        }
    });
    let wire = out.get_mut().get_ref().clone();
    let stats = Arc::new(SecurityStats::default());
    let mut back = Vec::new();
    let mut input = XkStream::new(
        Cursor::new(wire.clone()),
        receiver.session,
        rekey,
        stats.clone(),
    );
    block_on(input.read_to_end(&mut back)).unwrap();
    assert_eq!(back, plaintexts.concat().as_bytes());
    assert_eq!(stats.snapshot().rekeys_received, 1);

    // Split the wire into frames and label each with what it carries.
    let mut frames = Vec::new();
    let mut rest = &wire[..];
    let mut texts = plaintexts.iter();
    let mut sent = 0;
    while !rest.is_empty() {
        let Peek::Frame { body } = frame::peek(rest, 16).unwrap() else {
            panic!("incomplete frame");
        };
        let plaintext = if sent == REKEY_AFTER {
            sent = 0;
            String::new()
        } else {
            sent += 1;
            h(texts.next().unwrap().as_bytes())
        };
        frames.push(json!({ "ciphertext": h(&rest[body.clone()]), "plaintext": plaintext }));
        rest = &rest[body.end..];
    }
    json!({
        "rekey_after_frames": REKEY_AFTER,
        "frames": frames,
        "wire": h(&wire),
    })
}

/// msg3 payloads a responder must refuse, each with the reason its verdict carries.
fn responder_refusals() -> Vec<Value> {
    let me = local(INITIATOR);
    let id = me.identity_public();
    let ticket = good_ticket(INITIATOR);
    let other = local(STRANGER);
    let mut low_order = [0u8; 32];
    low_order[0] = 1;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "no ticket in a closed mesh",
            hello(id, None, None),
            "missing_ticket",
        ),
        (
            "expired ticket (not_after + 300 s skew has passed)",
            hello(
                id,
                Some(root_ticket(INITIATOR, NOW - 30 * DAY, NOW - SKEW)),
                None,
            ),
            "expired",
        ),
        (
            "someone else's ticket (the responder's own)",
            hello(id, Some(good_ticket(RESPONDER)), None),
            "wrong_subject",
        ),
        (
            "ticket bytes that are not a ticket",
            hello(id, Some(b"not a ticket".to_vec()), None),
            "malformed",
        ),
        (
            "identity key of another peer than the static key",
            hello(other.identity_public(), Some(ticket.clone()), None),
            "identity_mismatch",
        ),
        (
            "identity key ff..ff: decodes (y = p + 18) but is not canonical",
            hello(&[0xff; 32], Some(ticket.clone()), None),
            "invalid_remote_key",
        ),
        (
            "identity key that is not a curve point",
            hello(&not_a_point(), Some(ticket.clone()), None),
            "invalid_remote_key",
        ),
        (
            "identity key of low order (the neutral point, y = 1)",
            hello(&low_order, Some(ticket.clone()), None),
            "invalid_remote_key",
        ),
        (
            "the initiator refuses the responder",
            hello(id, None, Some("expired")),
            "refused_by_remote",
        ),
        (
            "a refusal wins over a ticket sent beside it",
            hello(id, Some(ticket.clone()), Some("wrong_mesh")),
            "refused_by_remote",
        ),
        (
            "keys out of order",
            codec::encode(&HelloReordered {
                ticket: Some(&ticket),
                identity_key: id,
                refusal: None,
            })
            .unwrap(),
            "malformed_payload",
        ),
        (
            "an unknown key",
            codec::encode(&HelloExtraKey {
                identity_key: id,
                ticket: Some(&ticket),
                refusal: None,
                version: 1,
            })
            .unwrap(),
            "malformed_payload",
        ),
        (
            "refusal key missing (instead of null)",
            codec::encode(&HelloNoRefusal {
                identity_key: id,
                ticket: Some(&ticket),
            })
            .unwrap(),
            "malformed_payload",
        ),
        (
            "an array instead of a map",
            codec::encode(&(
                serde_bytes::Bytes::new(id),
                serde_bytes::Bytes::new(&ticket),
                None::<String>,
            ))
            .unwrap(),
            "malformed_payload",
        ),
        (
            "identity_key as text",
            codec::encode(&HelloTextKey {
                identity_key: &h(id),
                ticket: Some(&ticket),
                refusal: None,
            })
            .unwrap(),
            "malformed_payload",
        ),
        (
            "identity_key of 31 bytes",
            hello(&id[..31], Some(ticket.clone()), None),
            "malformed_payload",
        ),
        (
            "a refusal that is not a reason name",
            hello(id, None, Some("Expired!\nforged log line")),
            "malformed_payload",
        ),
        (
            "map length in a longer form than needed (0xb8 0x03 for 0xa3)",
            {
                let mut p = hello(id, Some(ticket.clone()), None);
                p.splice(0..1, [0xb8, 0x03]);
                p
            },
            "malformed_payload",
        ),
        (
            "payload of 4609 bytes (over the 4608-byte limit)",
            {
                // identity_key (13 + 2 + 32) + "ticket" key (7) + bytes header (3) +
                // "refusal" key (8) + null (1) + map header (1) = 67 bytes of overhead.
                let p = hello(id, Some(vec![0x55; 4609 - 67]), None);
                assert_eq!(p.len(), 4609);
                p
            },
            "malformed_payload",
        ),
        ("empty payload", Vec::new(), "malformed_payload"),
    ];
    cases
        .into_iter()
        .map(|(name, payload, expected)| {
            let (awaiting, _, m3) = msg3_with(&payload);
            let (reason, farewell) = responder_refuses(&m3);
            assert_eq!(reason, expected, "{name}");
            let farewell = farewell.unwrap_or_else(|| panic!("{name}: no verdict"));
            // The initiator decrypts the verdict and learns the same reason.
            match awaiting.on_verdict(&farewell) {
                Err(HandshakeError::RefusedByRemote(r)) => assert_eq!(r, expected, "{name}"),
                other => panic!("{name}: {other:?}"),
            }
            json!({
                "name": name,
                "msg3_payload": h(&payload),
                "msg3": h(&m3),
                "reason": expected,
                "verdict_plaintext": h(&verdict_plaintext(Some(expected))),
                "verdict_frame": h(&farewell),
            })
        })
        .collect()
}

/// msg2 payloads an initiator refuses: it answers with a msg3 naming the reason.
fn initiator_refusals() -> Vec<Value> {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "the responder shows no ticket",
            handshake::encode(&ResponderHello { ticket: None }).unwrap(),
            "missing_ticket",
        ),
        (
            "the responder's ticket is not yet valid (not_before - 300 s is in the future)",
            handshake::encode(&ResponderHello {
                ticket: Some(root_ticket(RESPONDER, NOW + SKEW + 1, NOW + 30 * DAY)),
            })
            .unwrap(),
            "not_yet_valid",
        ),
        (
            "an unknown key in ResponderHello",
            codec::encode(&ResponderHelloExtra {
                ticket: Some(&good_ticket(RESPONDER)),
                roles: vec!["worker"],
            })
            .unwrap(),
            "malformed_payload",
        ),
    ];
    cases
        .into_iter()
        .map(|(name, payload, expected)| {
            let (initiator, responder, m2) = to_msg2(&payload);
            let failure = initiator
                .on_responder_hello(&m2, &local(INITIATOR), &policy(INITIATOR), NOW)
                .unwrap_err();
            assert_eq!(reason_of(&failure.error), expected, "{name}");
            let m3 = failure.farewell.unwrap();
            let refusal = hello(local(INITIATOR).identity_public(), None, Some(expected));
            // The responder hears the refusal, from a proven peer, and answers with a verdict.
            let outcome = responder.on_initiator_hello(&m3, &policy(RESPONDER), NOW);
            let failure = outcome.err().unwrap();
            assert_eq!(reason_of(&failure.error), "refused_by_remote", "{name}");
            assert_eq!(failure.remote, Some(peer(INITIATOR)));
            json!({
                "name": name,
                "msg2_payload": h(&payload),
                "msg2": h(&m2),
                "reason": expected,
                "msg3_payload": h(&refusal),
                "msg3": h(&m3),
            })
        })
        .collect()
}

/// msg1s a responder ends with a bare close: no key is shared yet to say why.
fn bare_closes() -> Vec<Value> {
    let (_, good) = msg1();
    let mut tampered = good.clone();
    tampered[40] ^= 1;
    let (_, with_payload) = Initiator::start_verbatim(
        &local(INITIATOR),
        peer(RESPONDER),
        Some(&INITIATOR_EPHEMERAL),
        b"hi",
    )
    .unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "msg1 of 31 bytes (shorter than e)",
            good[..31].to_vec(),
            "noise_error",
        ),
        (
            "msg1 of 47 bytes (e, then a cut tag)",
            good[..47].to_vec(),
            "decrypt_failed",
        ),
        ("msg1 with a flipped tag bit", tampered, "decrypt_failed"),
        ("msg1 carrying a payload", with_payload, "malformed_payload"),
    ];
    cases
        .into_iter()
        .map(|(name, m1, expected)| {
            let error = responder().on_opening(&m1, &policy(RESPONDER)).unwrap_err();
            assert_eq!(reason_of(&error), expected, "{name}");
            json!({ "name": name, "msg1": h(&m1), "reason": expected })
        })
        .collect()
}

/// Verdict plaintexts an initiator must refuse as `malformed_payload`.
fn bad_verdicts() -> Vec<Value> {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "admitted with a reason",
            handshake::encode(&Verdict {
                admitted: true,
                reason: Some("expired".into()),
            })
            .unwrap(),
        ),
        (
            "refused without a reason",
            handshake::encode(&Verdict {
                admitted: false,
                reason: None,
            })
            .unwrap(),
        ),
        (
            "admitted as the integer 1",
            codec::encode(&VerdictLoose {
                admitted: 1,
                reason: None,
            })
            .unwrap(),
        ),
        (
            "reason key missing",
            codec::encode(&json_free_admitted()).unwrap(),
        ),
    ];
    cases
        .into_iter()
        .map(|(name, plaintext)| {
            let error = handshake::decode_verdict(&plaintext).unwrap_err();
            assert_eq!(reason_of(&error), "malformed_payload", "{name}");
            json!({ "name": name, "verdict_plaintext": h(&plaintext), "reason": "malformed_payload" })
        })
        .collect()
}

#[derive(Serialize)]
struct AdmittedOnly {
    admitted: bool,
}

fn json_free_admitted() -> AdmittedOnly {
    AdmittedOnly { admitted: true }
}

#[derive(Serialize)]
struct SecureChannelFile {
    about: &'static str,
    generated_by: &'static str,
    protocol: &'static str,
    prologue: String,
    now: u64,
    mesh: Value,
    initiator: Value,
    responder: Value,
    admitted: Value,
    responder_refusals: Vec<Value>,
    initiator_refusals: Vec<Value>,
    bare_closes: Vec<Value>,
    bad_verdicts: Vec<Value>,
}

fn secure_channel_vectors() -> SecureChannelFile {
    let mut initiator = identity(INITIATOR);
    initiator["ephemeral_private"] = json!(h(&INITIATOR_EPHEMERAL));
    initiator["ticket"] = json!(h(&good_ticket(INITIATOR)));
    let mut responder = identity(RESPONDER);
    responder["ephemeral_private"] = json!(h(&RESPONDER_EPHEMERAL));
    responder["ticket"] = json!(h(&good_ticket(RESPONDER)));
    SecureChannelFile {
        about: "Secure channel /fogmesh/xk/1 (docs/secure-channel.md). Messages are Noise \
                messages without the 2-byte length prefix every frame adds. Both sides are \
                in the closed mesh of `mesh` and judge at Unix time `now`. Every \
                responder_refusals entry is a msg3 sent after the admitted run's msg1 and \
                msg2; the verdict frame is what the responder answers.",
        generated_by: GENERATED_BY,
        protocol: handshake::NOISE_PARAMS,
        prologue: h(handshake::PROLOGUE),
        now: NOW,
        mesh: json!({
            "root": identity(ROOT),
            "mesh_id": mesh_id().to_string(),
        }),
        initiator,
        responder,
        admitted: admitted_run(),
        responder_refusals: responder_refusals(),
        initiator_refusals: initiator_refusals(),
        bare_closes: bare_closes(),
        bad_verdicts: bad_verdicts(),
    }
}

// ---------------------------------------------------------------------------------------
// Tickets and revocations
// ---------------------------------------------------------------------------------------

fn body(
    subject: PeerId,
    signer: &Keypair,
    version: u8,
    not_before: u64,
    not_after: u64,
) -> TicketBody {
    TicketBody {
        version,
        mesh_id: mesh_id().0.to_vec(),
        subject: subject.to_bytes(),
        roles: vec!["worker".into()],
        not_before,
        not_after,
        issuer: signer.public().encode_protobuf(),
        delegation: None,
    }
}

fn signed_ticket(signer: &Keypair, body: &TicketBody) -> Vec<u8> {
    ticket::encode_unchecked(&ticket::sign_unchecked(signer, Kind::Ticket, body).unwrap()).unwrap()
}

fn delegation(roles: &[&str], not_before: u64, not_after: u64) -> Signed {
    ticket::delegate(
        &keypair(ROOT),
        &keypair(ISSUER).public(),
        &grant(roles, not_before, not_after),
    )
    .unwrap()
}

fn delegated(roles: &[&str], d: Signed) -> Vec<u8> {
    ticket::issue(
        &keypair(ISSUER),
        mesh_id(),
        peer(INITIATOR),
        &grant(roles, NOW - DAY, NOW + DAY),
        Some(d),
    )
    .unwrap()
}

fn revocation(target: RevocationTarget, revoked_at: u64) -> Vec<u8> {
    ticket::revoke(&keypair(ROOT), target, revoked_at).unwrap()
}

fn outcome<T>(result: Result<T, ticket::TicketError>) -> String {
    match result {
        Ok(_) => "ok".to_owned(),
        Err(e) => e.reason().to_owned(),
    }
}

/// Verifies `ticket` as presented by `presenter`, with `revocations` in force.
fn verify(ticket: &[u8], presenter: &PeerId, revocations: &[Vec<u8>]) -> String {
    let root = keypair(ROOT).public();
    let mut set = RevocationSet::default();
    for r in revocations {
        set.add(r, &root).unwrap();
    }
    outcome(
        Verifier {
            root: &root,
            now: NOW,
            clock_skew: SKEW,
            revocations: &set,
        }
        .verify(ticket, presenter),
    )
}

fn ticket_vectors() -> Vec<Value> {
    let alice = INITIATOR;
    let good = good_ticket(alice);
    let root = keypair(ROOT);
    let mut bad_sig: Signed = codec::decode(&good).unwrap();
    bad_sig.signature[0] ^= 1;
    let mut long_form = good.clone();
    long_form.splice(0..1, [0xb8, 0x02]);
    #[derive(Serialize)]
    struct Envelope<'a> {
        #[serde(with = "serde_bytes")]
        body: &'a [u8],
        #[serde(with = "serde_bytes")]
        signature: &'a [u8],
        note: &'a str,
    }
    let signed: Signed = codec::decode(&good).unwrap();
    let extra_key = codec::encode(&Envelope {
        body: &signed.body,
        signature: &signed.signature,
        note: "same ticket, new id?",
    })
    .unwrap();
    let other_mesh = ticket::issue(
        &keypair(OTHER_ROOT),
        MeshId::of_root(&keypair(OTHER_ROOT).public()),
        peer(alice),
        &grant(&["worker"], NOW - DAY, NOW + DAY),
        None,
    )
    .unwrap();
    let by_id = revocation(
        RevocationTarget::Ticket(ticket::ticket_id(&good).to_vec()),
        NOW - 10,
    );
    let by_subject = revocation(RevocationTarget::Subject(peer(alice).to_bytes()), NOW - 10);
    let reissued = root_ticket(alice, NOW - 9, NOW + DAY);
    let mut oversized = vec![0u8; 4097];
    oversized[0] = 0xa2;
    type Case = (&'static str, Vec<u8>, PeerId, Vec<Vec<u8>>, &'static str);
    let cases: Vec<Case> = vec![
        (
            "issued by the root",
            good.clone(),
            peer(alice),
            vec![],
            "ok",
        ),
        (
            "issued by a delegated issuer within its grant",
            delegated(
                &["worker"],
                delegation(&["worker", "gateway"], NOW - DAY, NOW + DAY),
            ),
            peer(alice),
            vec![],
            "ok",
        ),
        (
            "not_before 300 s ahead: inside the skew",
            root_ticket(alice, NOW + SKEW, NOW + DAY),
            peer(alice),
            vec![],
            "ok",
        ),
        (
            "not_before 301 s ahead",
            root_ticket(alice, NOW + SKEW + 1, NOW + DAY),
            peer(alice),
            vec![],
            "not_yet_valid",
        ),
        (
            "not_after 299 s ago: inside the skew",
            root_ticket(alice, NOW - DAY, NOW - SKEW + 1),
            peer(alice),
            vec![],
            "ok",
        ),
        (
            "not_after 300 s ago",
            root_ticket(alice, NOW - DAY, NOW - SKEW),
            peer(alice),
            vec![],
            "expired",
        ),
        (
            "presented by another peer",
            good.clone(),
            peer(RESPONDER),
            vec![],
            "wrong_subject",
        ),
        (
            "of another mesh",
            other_mesh,
            peer(alice),
            vec![],
            "wrong_mesh",
        ),
        (
            "signed by a stranger without delegation",
            signed_ticket(
                &keypair(STRANGER),
                &body(peer(alice), &keypair(STRANGER), 1, NOW - DAY, NOW + DAY),
            ),
            peer(alice),
            vec![],
            "unknown_issuer",
        ),
        (
            "a delegation naming another key",
            ticket::issue(
                &keypair(STRANGER),
                mesh_id(),
                peer(alice),
                &grant(&["worker"], NOW - DAY, NOW + DAY),
                Some(delegation(&["worker"], NOW - DAY, NOW + DAY)),
            )
            .unwrap(),
            peer(alice),
            vec![],
            "unknown_issuer",
        ),
        (
            "a delegation signed by a stranger, not the root",
            ticket::issue(
                &keypair(ISSUER),
                mesh_id(),
                peer(alice),
                &grant(&["worker"], NOW - DAY, NOW + DAY),
                Some(
                    ticket::delegate(
                        &keypair(STRANGER),
                        &keypair(ISSUER).public(),
                        &grant(&["worker"], NOW - DAY, NOW + DAY),
                    )
                    .unwrap(),
                ),
            )
            .unwrap(),
            peer(alice),
            vec![],
            "unknown_issuer",
        ),
        (
            "an expired delegation",
            delegated(
                &["worker"],
                delegation(&["worker"], NOW - 30 * DAY, NOW - DAY),
            ),
            peer(alice),
            vec![],
            "delegation_not_valid",
        ),
        (
            "a role the delegation does not cover",
            delegated(
                &["coordinator"],
                delegation(&["worker"], NOW - DAY, NOW + DAY),
            ),
            peer(alice),
            vec![],
            "role_not_delegated",
        ),
        (
            "a flipped signature bit",
            ticket::encode_unchecked(&bad_sig).unwrap(),
            peer(alice),
            vec![],
            "bad_signature",
        ),
        (
            "version 2, signed by the root",
            signed_ticket(&root, &body(peer(alice), &root, 2, NOW - DAY, NOW + DAY)),
            peer(alice),
            vec![],
            "unsupported_version",
        ),
        (
            "not CBOR",
            b"not a ticket".to_vec(),
            peer(alice),
            vec![],
            "malformed",
        ),
        (
            "an unknown envelope key",
            extra_key,
            peer(alice),
            vec![],
            "malformed",
        ),
        (
            "envelope map length in a longer form",
            long_form,
            peer(alice),
            vec![],
            "malformed",
        ),
        ("4097 bytes", oversized, peer(alice), vec![], "oversized"),
        (
            "revoked by ticket id",
            good.clone(),
            peer(alice),
            vec![by_id],
            "revoked",
        ),
        (
            "revoked by subject",
            good.clone(),
            peer(alice),
            vec![by_subject.clone()],
            "revoked",
        ),
        (
            "issued after its subject's revocation (not_before > revoked_at)",
            reissued,
            peer(alice),
            vec![by_subject],
            "ok",
        ),
    ];
    cases
        .into_iter()
        .map(|(name, bytes, presenter, revocations, expected)| {
            assert_eq!(verify(&bytes, &presenter, &revocations), expected, "{name}");
            json!({
                "name": name,
                "ticket": h(&bytes),
                "ticket_id": h(&ticket::ticket_id(&bytes)),
                "presented_by": presenter.to_string(),
                "revocations": revocations.iter().map(|r| h(r)).collect::<Vec<_>>(),
                "expect": expected,
            })
        })
        .collect()
}

fn revocation_vectors() -> Vec<Value> {
    let root = keypair(ROOT);
    let good = good_ticket(INITIATOR);
    let revocation_body = |mesh: MeshId, version: u8, target: RevocationTarget| RevocationBody {
        version,
        mesh_id: mesh.0.to_vec(),
        target,
        revoked_at: NOW,
    };
    let signed = |key: &Keypair, body: &RevocationBody| {
        ticket::encode_unchecked(&ticket::sign_unchecked(key, Kind::Revocation, body).unwrap())
            .unwrap()
    };
    let by_id = RevocationTarget::Ticket(ticket::ticket_id(&good).to_vec());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("a ticket, by id", revocation(by_id.clone(), NOW), "ok"),
        (
            "a subject",
            revocation(RevocationTarget::Subject(peer(INITIATOR).to_bytes()), NOW),
            "ok",
        ),
        (
            "signed by a stranger",
            signed(
                &keypair(STRANGER),
                &revocation_body(mesh_id(), 1, by_id.clone()),
            ),
            "bad_signature",
        ),
        (
            "signed by the root, naming another mesh",
            signed(
                &root,
                &revocation_body(
                    MeshId::of_root(&keypair(OTHER_ROOT).public()),
                    1,
                    by_id.clone(),
                ),
            ),
            "wrong_mesh",
        ),
        (
            "version 2",
            signed(&root, &revocation_body(mesh_id(), 2, by_id)),
            "unsupported_version",
        ),
        (
            "a ticket id of 31 bytes",
            signed(
                &root,
                &revocation_body(mesh_id(), 1, RevocationTarget::Ticket(vec![7; 31])),
            ),
            "malformed",
        ),
    ];
    cases
        .into_iter()
        .map(|(name, bytes, expected)| {
            let got = outcome(RevocationSet::default().add(&bytes, &root.public()));
            assert_eq!(got, expected, "{name}");
            json!({ "name": name, "revocation": h(&bytes), "expect": expected })
        })
        .collect()
}

#[derive(Serialize)]
struct AdmissionFile {
    about: &'static str,
    generated_by: &'static str,
    now: u64,
    clock_skew: u64,
    root: Value,
    issuer: Value,
    subjects: Value,
    delegation_example: Value,
    tickets: Vec<Value>,
    revocations: Vec<Value>,
}

fn admission_vectors() -> AdmissionFile {
    let d = delegation(&["worker", "gateway"], NOW - DAY, NOW + DAY);
    let body: DelegationBody = codec::decode(&d.body).unwrap();
    let decoded = json!({
        "version": body.version,
        "mesh_id": h(&body.mesh_id),
        "issuer": h(&body.issuer),
        "roles": body.roles,
        "not_before": body.not_before,
        "not_after": body.not_after,
    });
    AdmissionFile {
        about: "Tickets and revocations (docs/admission.md), judged at Unix time `now` with \
                `clock_skew`. Each ticket is verified as presented by `presented_by`, after \
                adding `revocations` (root-signed, all valid); `expect` is `ok` or the reason \
                it must be refused with. Each revocation is added to an empty set of the \
                root's mesh. Ed25519 signatures are deterministic, so every byte is \
                reproducible from the seeds.",
        generated_by: GENERATED_BY,
        now: NOW,
        clock_skew: SKEW,
        root: json!({
            "identity": identity(ROOT),
            "mesh_id": mesh_id().to_string(),
        }),
        issuer: identity(ISSUER),
        subjects: json!({
            "presenter": identity(INITIATOR),
            "other": identity(RESPONDER),
            "stranger": identity(STRANGER),
            "other_root": identity(OTHER_ROOT),
        }),
        delegation_example: json!({
            "body": h(&d.body),
            "signature": h(&d.signature),
            "decoded": decoded,
        }),
        tickets: ticket_vectors(),
        revocations: revocation_vectors(),
    }
}

// ---------------------------------------------------------------------------------------
// Writing and checking
// ---------------------------------------------------------------------------------------

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/test-vectors")
        .join(name)
}

fn render<T: Serialize>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap();
    text.push('\n');
    text
}

/// Writes the file when asked to, otherwise requires it to be exactly `text`.
fn write_or_compare(name: &str, text: &str) {
    let path = path(name);
    if std::env::var_os("FOGMESH_WRITE_VECTORS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        return;
    }
    let stored = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; generate with {GENERATED_BY}", path.display()));
    assert!(
        stored == text,
        "{} differs from what the implementation produces; if the change is deliberate, \
         regenerate with {GENERATED_BY}",
        path.display()
    );
}

fn stored(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path(name)).unwrap()).unwrap()
}

#[test]
fn secure_channel_vectors_match_the_implementation() {
    write_or_compare("secure-channel.json", &render(&secure_channel_vectors()));
}

#[test]
fn admission_vectors_match_the_implementation() {
    write_or_compare("admission.json", &render(&admission_vectors()));
}

/// Replays the stored bytes as an independent implementation would: whatever generated
/// them, these are the outcomes the node must produce.
#[test]
fn stored_vectors_replay() {
    if std::env::var_os("FOGMESH_WRITE_VECTORS").is_some() {
        return;
    }
    let file = stored("admission.json");
    for v in file["tickets"].as_array().unwrap() {
        let presenter: PeerId = v["presented_by"].as_str().unwrap().parse().unwrap();
        let revocations: Vec<Vec<u8>> = v["revocations"]
            .as_array()
            .unwrap()
            .iter()
            .map(unhex)
            .collect();
        let ticket = unhex(&v["ticket"]);
        assert_eq!(ticket::ticket_id(&ticket).to_vec(), unhex(&v["ticket_id"]));
        assert_eq!(
            verify(&ticket, &presenter, &revocations),
            v["expect"],
            "{}",
            v["name"]
        );
    }
    let root = keypair(ROOT).public();
    for v in file["revocations"].as_array().unwrap() {
        let got = outcome(RevocationSet::default().add(&unhex(&v["revocation"]), &root));
        assert_eq!(got, v["expect"], "{}", v["name"]);
    }

    let file = stored("secure-channel.json");
    let admitted = &file["admitted"];
    // A responder fed the stored msg1 and msg3 admits the initiator with the stored verdict.
    let mut responder = responder();
    let m2 = responder
        .on_opening(&unhex(&admitted["msg1"]), &policy(RESPONDER))
        .unwrap();
    assert_eq!(m2, unhex(&admitted["msg2"]));
    let (established, verdict) = responder
        .on_initiator_hello(&unhex(&admitted["msg3"]), &policy(RESPONDER), NOW)
        .unwrap();
    assert_eq!(verdict, unhex(&admitted["verdict_frame"]));
    // ... and reads the stored transport frames, rekey included, back to their plaintexts.
    let forward = &admitted["transport_initiator_to_responder"];
    let mut input = XkStream::new(
        Cursor::new(unhex(&forward["wire"])),
        established.session,
        RekeyPolicy::default(),
        Arc::new(SecurityStats::default()),
    );
    let mut back = Vec::new();
    block_on(input.read_to_end(&mut back)).unwrap();
    let expected: Vec<u8> = forward["frames"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| unhex(&f["plaintext"]))
        .collect();
    assert_eq!(back, expected);
    for v in file["responder_refusals"].as_array().unwrap() {
        let (reason, farewell) = responder_refuses(&unhex(&v["msg3"]));
        assert_eq!(reason, v["reason"], "{}", v["name"]);
        assert_eq!(farewell, Some(unhex(&v["verdict_frame"])), "{}", v["name"]);
    }
    for v in file["bare_closes"].as_array().unwrap() {
        let error = super_responder_on_opening(&unhex(&v["msg1"]));
        assert_eq!(error, v["reason"], "{}", v["name"]);
    }
    for v in file["bad_verdicts"].as_array().unwrap() {
        let error = handshake::decode_verdict(&unhex(&v["verdict_plaintext"])).unwrap_err();
        assert_eq!(reason_of(&error), v["reason"], "{}", v["name"]);
    }
}

fn super_responder_on_opening(m1: &[u8]) -> String {
    reason_of(&responder().on_opening(m1, &policy(RESPONDER)).unwrap_err())
}
