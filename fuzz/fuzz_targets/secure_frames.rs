//! The secure channel's parsers on arbitrary bytes: the frame decoder, a responder fed
//! arbitrary msg1/msg3, and an established stream fed valid frames followed by arbitrary
//! bytes. Never a panic; a forged handshake is never admitted; garbage never decrypts.
#![no_main]

use std::sync::{Arc, OnceLock};

use fogmesh_transports::secure::frame::{self, Peek, TAG_LEN};
use fogmesh_transports::secure::handshake::{Initiator, Responder};
use fogmesh_transports::secure::keys::LocalKeys;
use fogmesh_transports::secure::{AdmissionPolicy, RekeyPolicy, SecurityStats, XkStream};
use fogmesh_transports::ticket::{self, Grant, MeshId};
use futures::io::{AsyncReadExt, Cursor};
use libfuzzer_sys::fuzz_target;
use libp2p::identity::Keypair;

struct Fixed {
    responder: LocalKeys,
    initiator: LocalKeys,
    responder_policy: AdmissionPolicy,
    initiator_policy: AdmissionPolicy,
}

fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| {
        let root = Keypair::ed25519_from_bytes([7u8; 32]).expect("fixed seed");
        let r = Keypair::ed25519_from_bytes([9u8; 32]).expect("fixed seed");
        let i = Keypair::ed25519_from_bytes([11u8; 32]).expect("fixed seed");
        let grant = Grant { roles: vec!["worker".into()], not_before: 0, not_after: u64::MAX / 2 };
        let mesh = MeshId::of_root(&root.public());
        let policy = |k: &Keypair| {
            let t = ticket::issue(&root, mesh, k.public().to_peer_id(), &grant, None).expect("issue");
            AdmissionPolicy::closed(root.public(), t, Arc::default())
        };
        Fixed {
            responder: LocalKeys::from_identity(&r).expect("ed25519"),
            initiator: LocalKeys::from_identity(&i).expect("ed25519"),
            responder_policy: policy(&r),
            initiator_policy: policy(&i),
        }
    })
}

const NOW: u64 = 1_800_000_000;

fn frames(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Ok(Peek::Frame { body }) = frame::peek(rest, 1) {
        out.push(&rest[body.clone()]);
        rest = &rest[body.end..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let f = fixed();
    let Some((&mode, data)) = data.split_first() else { return };

    // 1. Arbitrary bytes as a responder's msg1 and msg3.
    let messages = frames(data);
    if let Ok(mut responder) = Responder::new(&f.responder) {
        if let Some(msg1) = messages.first() {
            if responder.on_opening(msg1, &f.responder_policy).is_ok() {
                let msg3 = messages.get(1).copied().unwrap_or(&[]);
                let outcome = responder.on_initiator_hello(msg3, &f.responder_policy, NOW);
                assert!(outcome.is_err(), "a forged msg3 was admitted");
            }
        }
    }

    // 2. An established session: some valid frames, then the arbitrary bytes. Setting up a
    // session costs a whole handshake, so only inputs whose first byte has the top bit set
    // take this path; the rest run part 1 fast.
    if mode & 0x80 == 0 {
        return;
    }
    let (initiator, msg1) = Initiator::start(&f.initiator, f.responder.peer_id()).expect("start");
    let mut responder = Responder::new(&f.responder).expect("responder");
    let msg2 = responder.on_opening(&msg1, &f.responder_policy).expect("msg2");
    let (awaiting, msg3) = initiator
        .on_responder_hello(&msg2, &f.initiator, &f.initiator_policy, NOW)
        .expect("msg3");
    let (established, verdict) = responder
        .on_initiator_hello(&msg3, &f.responder_policy, NOW)
        .expect("admitted");
    let mut sender = awaiting.on_verdict(&verdict).expect("verdict").session;
    let mut wire = Vec::new();
    let valid = usize::from(mode % 4);
    let mut expected = Vec::new();
    for i in 0..valid {
        let plain = vec![i as u8; 1 + i * 100];
        let mut sealed = vec![0u8; plain.len() + TAG_LEN];
        let n = sender.write_message(&plain, &mut sealed).expect("seal");
        frame::encode_into(&sealed[..n], &mut wire).expect("frame");
        expected.extend_from_slice(&plain);
    }
    wire.extend_from_slice(data);
    let mut stream = XkStream::new(
        Cursor::new(wire),
        established.session,
        RekeyPolicy::default(),
        Arc::new(SecurityStats::default()),
    );
    let mut got = Vec::new();
    let result = futures::executor::block_on(stream.read_to_end(&mut got));
    // Whatever followed, the valid frames came out intact, and nothing forged decrypted:
    // any bytes beyond them mean the fuzzer forged a ChaCha20-Poly1305 tag.
    assert!(got.starts_with(&expected));
    assert_eq!(got, expected, "garbage decrypted");
    let _ = result;
});
