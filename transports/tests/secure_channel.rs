#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The secure channel end to end over loopback TCP: admission outcomes on both sides, bad
//! input, rekeying, and the abuse guard.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fogmesh_transports::secure::{
    AdmissionPolicy, GuardConfig, HandshakeError, RekeyPolicy, SecureChannel, SecureChannelConfig,
};
use fogmesh_transports::ticket::{self, Grant, MeshId, RevocationSet, RevocationTarget};
use futures::io::{AsyncReadExt, AsyncWriteExt};
use libp2p::identity::Keypair;
use libp2p::tcp::tokio::TcpStream;
use libp2p::PeerId;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn grant(from: u64, to: u64) -> Grant {
    Grant {
        roles: vec!["worker".into()],
        not_before: from,
        not_after: to,
    }
}

struct Mesh {
    root: Keypair,
    revocations: Arc<RwLock<RevocationSet>>,
}

impl Mesh {
    fn new() -> Mesh {
        Mesh {
            root: Keypair::generate_ed25519(),
            revocations: Arc::default(),
        }
    }

    fn id(&self) -> MeshId {
        MeshId::of_root(&self.root.public())
    }

    fn ticket(&self, peer: &Keypair) -> Vec<u8> {
        let t = now();
        ticket::issue(
            &self.root,
            self.id(),
            peer.public().to_peer_id(),
            &grant(t - 60, t + 3600),
            None,
        )
        .unwrap()
    }

    fn policy(&self, ticket: Vec<u8>) -> AdmissionPolicy {
        AdmissionPolicy::closed(self.root.public(), ticket, self.revocations.clone())
    }

    fn member(&self) -> (Keypair, AdmissionPolicy) {
        let key = Keypair::generate_ed25519();
        let policy = self.policy(self.ticket(&key));
        (key, policy)
    }
}

/// A channel as testnets run it: every test connection comes from 127.0.0.1, so loopback is
/// exempt from the per-address rate limit and backoff (the tests of those limits opt out).
fn channel(key: &Keypair, policy: AdmissionPolicy) -> SecureChannel {
    let mut config = SecureChannelConfig::new(policy);
    config.guard.exempt_loopback = true;
    channel_with(key, config)
}

fn channel_with(key: &Keypair, config: SecureChannelConfig) -> SecureChannel {
    SecureChannel::new(key, config).unwrap()
}

async fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (dialed, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
    (TcpStream(dialed.unwrap()), TcpStream(accepted.unwrap().0))
}

const LOOPBACK: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

type Outcome = Result<PeerId, HandshakeError>;

/// Runs one handshake: `dialer` dials `listener`, expecting `expected` (its PeerId by default).
async fn handshake(
    dialer: &SecureChannel,
    listener: &SecureChannel,
    expected: Option<PeerId>,
) -> (Outcome, Outcome) {
    let (a, b) = socket_pair().await;
    let remote = expected.unwrap_or_else(|| listener.local_peer_id());
    let (out, inn) = tokio::join!(
        dialer.outbound(a, remote, None, false),
        listener.inbound(b, LOOPBACK, None, false)
    );
    (out.map(|(p, _)| p), inn.map(|(p, _)| p))
}

type Stream = fogmesh_transports::secure::XkStream<
    fogmesh_transports::secure::channel::Negotiable<TcpStream>,
>;

/// `a` dials `b`; both handshakes must succeed.
async fn connected(a: &SecureChannel, b: &SecureChannel) -> ((PeerId, Stream), (PeerId, Stream)) {
    let (sa, sb) = socket_pair().await;
    let (out, inn) = tokio::join!(
        a.outbound(sa, b.local_peer_id(), None, false),
        b.inbound(sb, LOOPBACK, None, false)
    );
    (out.unwrap(), inn.unwrap())
}

fn reason(outcome: &Outcome) -> &'static str {
    match outcome {
        Ok(_) => "ok",
        Err(e) => e.reason(),
    }
}

fn remote_reason(outcome: &Outcome) -> String {
    match outcome {
        Err(HandshakeError::RefusedByRemote(r)) => r.clone(),
        other => format!("not a remote refusal: {other:?}"),
    }
}

#[tokio::test]
async fn members_of_one_mesh_connect_and_exchange_data() {
    let mesh = Mesh::new();
    let (ka, pa) = mesh.member();
    let (kb, pb) = mesh.member();
    let (a, b) = (channel(&ka, pa), channel(&kb, pb));
    let ((peer_b, mut to_b), (peer_a, mut to_a)) = connected(&a, &b).await;
    assert_eq!(peer_b, kb.public().to_peer_id());
    assert_eq!(peer_a, ka.public().to_peer_id());
    // Each side remembers the other's verified ticket.
    assert_eq!(
        b.admission_of(&peer_a).unwrap().roles,
        vec!["worker".to_string()]
    );
    assert!(a.admission_of(&peer_b).is_some());

    let message: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let sent = message.clone();
    let writer = tokio::spawn(async move {
        to_b.write_all(&sent).await.unwrap();
        to_b.close().await.unwrap();
    });
    let mut received = Vec::new();
    to_a.read_to_end(&mut received).await.unwrap();
    writer.await.unwrap();
    assert_eq!(received, message);
    assert_eq!(a.stats().snapshot().admitted_outbound, 1);
    assert_eq!(b.stats().snapshot().admitted_inbound, 1);
}

#[tokio::test]
async fn an_open_node_admits_anyone_but_a_mesh_node_refuses_it() {
    let mesh = Mesh::new();
    let (km, pm) = mesh.member();
    let member = channel(&km, pm);
    let ko = Keypair::generate_ed25519();
    let open = channel(&ko, AdmissionPolicy::open());
    let other = channel(&Keypair::generate_ed25519(), AdmissionPolicy::open());

    let (out, inn) = handshake(&open, &other, None).await;
    assert!(out.is_ok() && inn.is_ok());

    // The open node dials a member: it shows no ticket, so the member refuses it.
    let (out, inn) = handshake(&open, &member, None).await;
    assert_eq!(reason(&inn), "missing_ticket");
    assert_eq!(remote_reason(&out), "missing_ticket");
    // The member dials the open node: the open node shows no ticket, so the member refuses.
    let (out, inn) = handshake(&member, &open, None).await;
    assert_eq!(reason(&out), "missing_ticket");
    assert_eq!(remote_reason(&inn), "missing_ticket");
    let refused = member.stats().snapshot().refused;
    assert_eq!(refused.get("inbound.missing_ticket"), Some(&1));
    assert_eq!(refused.get("outbound.missing_ticket"), Some(&1));
}

/// A revocation finds every peer whose handshake admitted it, before the swarm reports any
/// connection; the record outlives the close of an older connection while a newer handshake
/// with the same peer is still being set up.
#[tokio::test]
async fn a_revoked_peer_is_found_from_the_end_of_its_handshake() {
    let mesh = Mesh::new();
    let (ka, pa) = mesh.member();
    let (kb, pb) = mesh.member();
    let (a, b) = (channel(&ka, pa), channel(&kb, pb));
    let before_handshake = std::time::Instant::now();
    let ((_, _to_b), (peer_a, _to_a)) = connected(&a, &b).await;
    assert!(b.revoked_admitted().is_empty());

    let revocation = ticket::revoke(
        &mesh.root,
        RevocationTarget::Subject(peer_a.to_bytes()),
        now(),
    )
    .unwrap();
    mesh.revocations
        .write()
        .unwrap()
        .add(&revocation, &mesh.root.public())
        .unwrap();
    assert_eq!(b.revoked_admitted(), vec![peer_a]);
    assert_eq!(b.revoked_among([&peer_a]), vec![peer_a]);

    // An older connection closing does not forget an admission recorded after it was up.
    b.forget(&peer_a, before_handshake);
    assert_eq!(b.revoked_admitted(), vec![peer_a]);
    b.forget(&peer_a, std::time::Instant::now());
    assert!(b.revoked_admitted().is_empty());
    assert!(b.admission_of(&peer_a).is_none());
}

/// A dialer whose ticket is wrong in each documented way is refused by the listener, and
/// both sides name the same reason.
#[tokio::test]
async fn each_bad_ticket_is_refused_with_its_reason_on_both_sides() {
    let mesh = Mesh::new();
    let (kl, pl) = mesh.member();
    let listener = channel(&kl, pl);
    let t = now();
    let dialer_key = Keypair::generate_ed25519();
    let me = dialer_key.public().to_peer_id();
    let other_mesh = Mesh::new();
    let stranger = Keypair::generate_ed25519();

    let mut tampered = mesh.ticket(&dialer_key);
    let last = tampered.len() - 1;
    tampered[last] ^= 1;

    let revoked = mesh.ticket(&dialer_key);
    let revocation = ticket::revoke(
        &mesh.root,
        RevocationTarget::Ticket(ticket::ticket_id(&revoked).to_vec()),
        t,
    )
    .unwrap();

    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "expired",
            ticket::issue(&mesh.root, mesh.id(), me, &grant(t - 7200, t - 3600), None).unwrap(),
        ),
        (
            "not_yet_valid",
            ticket::issue(&mesh.root, mesh.id(), me, &grant(t + 3600, t + 7200), None).unwrap(),
        ),
        ("wrong_mesh", other_mesh.ticket(&dialer_key)),
        ("wrong_subject", mesh.ticket(&Keypair::generate_ed25519())),
        ("bad_signature", tampered),
        (
            "unknown_issuer",
            ticket::issue(&stranger, mesh.id(), me, &grant(t - 60, t + 3600), None).unwrap(),
        ),
        ("revoked", revoked),
    ];
    // The dialer's own policy trusts its (bad) ticket blindly: it is the listener that judges.
    for (expected, bad_ticket) in cases {
        if expected == "revoked" {
            mesh.revocations
                .write()
                .unwrap()
                .add(&revocation, &mesh.root.public())
                .unwrap();
        }
        let dialer = channel(&dialer_key, mesh.policy(bad_ticket));
        let (out, inn) = handshake(&dialer, &listener, None).await;
        assert_eq!(reason(&inn), expected, "listener side");
        assert_eq!(remote_reason(&out), expected, "dialer side");
    }
    let refused = listener.stats().snapshot().refused;
    for reason in [
        "expired",
        "not_yet_valid",
        "wrong_mesh",
        "wrong_subject",
        "bad_signature",
        "unknown_issuer",
        "revoked",
    ] {
        assert_eq!(
            refused.get(&format!("inbound.{reason}")),
            Some(&1),
            "{reason}"
        );
    }
}

#[tokio::test]
async fn a_dialer_refuses_a_listener_with_a_bad_ticket_and_tells_it_why() {
    let mesh = Mesh::new();
    let (kd, pd) = mesh.member();
    let dialer = channel(&kd, pd);
    let kl = Keypair::generate_ed25519();
    let t = now();
    let expired = ticket::issue(
        &mesh.root,
        mesh.id(),
        kl.public().to_peer_id(),
        &grant(t - 7200, t - 3600),
        None,
    )
    .unwrap();
    let listener = channel(&kl, mesh.policy(expired));
    let (out, inn) = handshake(&dialer, &listener, None).await;
    assert_eq!(reason(&out), "expired");
    assert_eq!(remote_reason(&inn), "expired");
}

#[tokio::test]
async fn dialing_the_wrong_peer_fails_on_the_first_message() {
    let a = channel(&Keypair::generate_ed25519(), AdmissionPolicy::open());
    let b = channel(&Keypair::generate_ed25519(), AdmissionPolicy::open());
    let impostor_of = Keypair::generate_ed25519().public().to_peer_id();
    let (out, inn) = handshake(&a, &b, Some(impostor_of)).await;
    assert_eq!(reason(&inn), "decrypt_failed");
    assert!(out.is_err());
}

/// Raw bytes a hostile dialer might send instead of a handshake.
#[tokio::test]
async fn truncated_oversized_and_garbage_handshakes_are_refused() {
    let listener = channel(&Keypair::generate_ed25519(), AdmissionPolicy::open());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // A header promising 48 bytes, then the connection closes.
        ("truncated", vec![0, 48, 1, 2, 3]),
        // A zero-length message.
        ("bad_frame", vec![0, 0]),
        // A maximum-size message of garbage.
        (
            "decrypt_failed",
            [vec![0xff, 0xff], vec![7u8; 65_535]].concat(),
        ),
        // A plausible-length message of garbage.
        ("decrypt_failed", [vec![0, 48], vec![9u8; 48]].concat()),
    ];
    for (expected, bytes) in cases {
        let (mut raw, accepted) = socket_pair().await;
        let (inn, ()) = tokio::join!(listener.inbound(accepted, LOOPBACK, None, false), async {
            raw.write_all(&bytes).await.unwrap();
            raw.close().await.unwrap();
        });
        assert_eq!(reason(&inn.map(|(p, _)| p)), expected);
    }
}

#[tokio::test]
async fn tampered_ciphertext_and_garbage_after_the_handshake_end_the_stream() {
    let ka = Keypair::generate_ed25519();
    let kb = Keypair::generate_ed25519();
    let (a, b) = (
        channel(&ka, AdmissionPolicy::open()),
        channel(&kb, AdmissionPolicy::open()),
    );

    // Garbage after the handshake: a frame that does not decrypt.
    let ((_, mut to_b), (_, mut to_a)) = connected(&a, &b).await;
    to_b.write_all(b"hello").await.unwrap();
    to_b.flush().await.unwrap();
    let mut buf = [0u8; 5];
    to_a.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");
    // Reach under the encryption: write a well-framed but forged frame on the socket.
    let mut forged = vec![0u8, 32];
    forged.extend_from_slice(&[0x5a; 32]);
    to_b.get_mut().write_all(&forged).await.unwrap();
    let error = to_a.read(&mut buf).await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);

    // A frame too short to hold a tag.
    let ((_, mut to_b), (_, mut to_a)) = connected(&a, &b).await;
    to_b.get_mut().write_all(&[0, 3, 1, 2, 3]).await.unwrap();
    assert_eq!(
        to_a.read(&mut buf).await.unwrap_err().kind(),
        std::io::ErrorKind::InvalidData
    );
}

#[tokio::test]
async fn rekeying_keeps_traffic_flowing_in_both_directions() {
    let rekey = RekeyPolicy {
        max_frames: 3,
        max_age: Duration::from_secs(3600),
    };
    let config = |key: &Keypair| {
        let mut c = SecureChannelConfig::new(AdmissionPolicy::open());
        c.rekey = rekey;
        channel_with(key, c)
    };
    let (a, b) = (
        config(&Keypair::generate_ed25519()),
        config(&Keypair::generate_ed25519()),
    );
    let ((_, mut to_b), (_, mut to_a)) = connected(&a, &b).await;
    for round in 0..100u32 {
        let message = format!("round {round} ").repeat(1 + round as usize);
        to_b.write_all(message.as_bytes()).await.unwrap();
        to_b.flush().await.unwrap();
        let mut got = vec![0u8; message.len()];
        to_a.read_exact(&mut got).await.unwrap();
        assert_eq!(got, message.as_bytes());
        to_a.write_all(&got).await.unwrap();
        to_a.flush().await.unwrap();
        let mut echo = vec![0u8; message.len()];
        to_b.read_exact(&mut echo).await.unwrap();
        assert_eq!(echo, message.as_bytes());
    }
    // 100 frames each way, a rekey every 3.
    assert_eq!(a.stats().snapshot().rekeys_sent, 33);
    assert_eq!(b.stats().snapshot().rekeys_received, 33);
    assert_eq!(b.stats().snapshot().rekeys_sent, 33);
    assert_eq!(a.stats().snapshot().rekeys_received, 33);
}

#[tokio::test]
async fn a_silent_dialer_times_out_and_frees_its_slot() {
    let mut config = SecureChannelConfig::new(AdmissionPolicy::open());
    config.handshake_timeout = Duration::from_millis(300);
    config.guard = GuardConfig {
        max_pending: 1,
        ..GuardConfig::default()
    };
    let listener = channel_with(&Keypair::generate_ed25519(), config);
    let (_silent, accepted) = socket_pair().await;
    let (_second, accepted_second) = socket_pair().await;
    let first = listener.inbound(accepted, LOOPBACK, None, false);
    let second = async {
        // Starts while the first handshake holds the only slot.
        tokio::time::sleep(Duration::from_millis(50)).await;
        listener
            .inbound(accepted_second, LOOPBACK, None, false)
            .await
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(reason(&first.map(|(p, _)| p)), "timeout");
    assert_eq!(reason(&second.map(|(p, _)| p)), "too_many_pending");
    // The slot is free again.
    let dialer = channel(&Keypair::generate_ed25519(), AdmissionPolicy::open());
    let (out, inn) = handshake(&dialer, &listener, None).await;
    assert!(out.is_ok() && inn.is_ok());
}

#[tokio::test]
async fn a_peer_failing_admission_repeatedly_is_backed_off() {
    let mesh = Mesh::new();
    let (kl, pl) = mesh.member();
    let listener = channel(&kl, pl);
    // A dialer with no ticket, from a non-loopback address as far as the guard knows.
    let dialer = channel(&Keypair::generate_ed25519(), AdmissionPolicy::open());
    let source = Some("192.0.2.7".parse().unwrap());
    let mut reasons = Vec::new();
    for _ in 0..4 {
        let (a, b) = socket_pair().await;
        let (_, inn) = tokio::join!(
            dialer.outbound(a, listener.local_peer_id(), None, false),
            listener.inbound(b, source, None, false)
        );
        reasons.push(reason(&inn.map(|(p, _)| p)));
    }
    assert_eq!(
        reasons,
        [
            "missing_ticket",
            "missing_ticket",
            "missing_ticket",
            "backed_off"
        ]
    );
    // The dialer, refused three times, backs off dialing that peer too.
    let (a, _b) = socket_pair().await;
    let out = dialer
        .outbound(a, listener.local_peer_id(), None, false)
        .await;
    assert_eq!(reason(&out.map(|(p, _)| p)), "backed_off");
}
