//! Cost of admission checks: verifying a root-signed and a delegated ticket (what every
//! handshake will pay once tickets are enforced), and adding a revocation.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use fogmesh_transports::ticket::{
    delegate, issue, revoke, Grant, MeshId, RevocationSet, RevocationTarget, Verifier,
};
use libp2p::identity::Keypair;
use libp2p::PeerId;

const NOW: u64 = 1_800_000_000;

fn benches(c: &mut Criterion) {
    let root = Keypair::generate_ed25519();
    let root_pub = root.public();
    let mesh = MeshId::of_root(&root_pub);
    let peer = PeerId::random();
    let grant = Grant {
        roles: vec!["worker".into()],
        not_before: NOW - 10,
        not_after: NOW + 3600,
    };
    let Ok(direct) = issue(&root, mesh, peer, &grant, None) else {
        return;
    };
    let issuer = Keypair::generate_ed25519();
    let Ok(delegation) = delegate(&root, &issuer.public(), &grant) else {
        return;
    };
    let Ok(delegated) = issue(&issuer, mesh, peer, &grant, Some(delegation)) else {
        return;
    };
    let revocations = RevocationSet::default();
    let verifier = Verifier {
        root: &root_pub,
        now: NOW,
        clock_skew: 300,
        revocations: &revocations,
    };
    c.bench_function("ticket/verify_root_signed", |b| {
        b.iter(|| verifier.verify(black_box(&direct), &peer))
    });
    c.bench_function("ticket/verify_delegated", |b| {
        b.iter(|| verifier.verify(black_box(&delegated), &peer))
    });
    let Ok(revocation) = revoke(&root, RevocationTarget::Subject(peer.to_bytes()), NOW) else {
        return;
    };
    c.bench_function("ticket/add_revocation", |b| {
        b.iter_batched(
            RevocationSet::default,
            |mut set| set.add(black_box(&revocation), &root_pub),
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(ticket_benches, benches);
criterion_main!(ticket_benches);
