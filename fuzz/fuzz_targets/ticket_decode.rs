//! Arbitrary bytes as a ticket (inspect and full verification) and as a revocation: never a
//! panic, and never an admission for anyone but the fixed subject.
#![no_main]

use std::sync::OnceLock;

use fogmesh_transports::ticket::{inspect, RevocationSet, Verifier};
use libfuzzer_sys::fuzz_target;
use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;

fn fixed() -> &'static (PublicKey, PeerId) {
    static FIXED: OnceLock<(PublicKey, PeerId)> = OnceLock::new();
    FIXED.get_or_init(|| {
        let root = Keypair::ed25519_from_bytes([7u8; 32]).expect("fixed seed");
        let peer = Keypair::ed25519_from_bytes([9u8; 32]).expect("fixed seed");
        (root.public(), peer.public().to_peer_id())
    })
}

fuzz_target!(|data: &[u8]| {
    let (root, peer) = fixed();
    let _ = inspect(data);
    let revocations = RevocationSet::default();
    let verifier = Verifier {
        root,
        now: 1_800_000_000,
        clock_skew: 300,
        revocations: &revocations,
    };
    if let Ok(admission) = verifier.verify(data, peer) {
        // Only a ticket signed by the fixed root could get here, which the fuzzer cannot forge.
        assert_eq!(&admission.subject, peer);
    }
    let _ = RevocationSet::default().add(data, root);
});
