#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The kv service without a swarm: inputs in, effects out.

use super::*;
use fogmesh_store::StoreOptions;

const T0: u64 = 1_800_000_000_000;

fn service(dir: &std::path::Path) -> KvService {
    let store = Store::open(dir, &StoreOptions::default()).unwrap();
    KvService::open(
        Keypair::generate_ed25519(),
        &store,
        AccessPolicy::open(),
        KvMetrics::default(),
    )
}

fn refused(kv: &KvService, reason: &'static str) -> u64 {
    kv.metrics
        .refused
        .get_or_create(&ReasonLabel { reason })
        .get()
}

/// An entry signed by `author`, merged nowhere yet.
fn signed(author: &Keypair, key: &str, value: &[u8], wall_ms: u64) -> Entry {
    let mut entry = Entry {
        namespace: "app".into(),
        key: key.into(),
        value: Some(ByteBuf::from(value.to_vec())),
        version: Version {
            hlc: Hlc {
                wall_ms,
                counter: 0,
            },
            author: ByteBuf::from(author.public().to_peer_id().to_bytes()),
        },
        signature: ByteBuf::new(),
    };
    entry.signature = ByteBuf::from(author.sign(&entry.signing_bytes()).unwrap());
    entry
}

fn gossip_bytes(kv: &mut KvService, data: &[u8], out: &mut Outbox) -> MessageAcceptance {
    let source = PeerId::random();
    let id = crate::runtime::capability::GossipId {
        message: libp2p::gossipsub::MessageId::from(vec![0]),
        source,
    };
    let msg = GossipIn {
        topic: TOPIC,
        propagation_source: source,
        author: None,
        data,
        id: &id,
    };
    match kv.on_gossip(T0, msg, out) {
        Verdict::Now(acceptance) => acceptance,
        Verdict::Later => panic!("kv answers deltas at once"),
    }
}

fn gossip(kv: &mut KvService, delta: &Delta, out: &mut Outbox) -> MessageAcceptance {
    let data = fogmesh_wire::codec::encode(delta).unwrap();
    gossip_bytes(kv, &data, out)
}

#[test]
fn a_local_write_is_answered_once_flushed_and_published() {
    let dir = tempfile::tempdir().unwrap();
    let mut kv = service(dir.path());
    let mut out = Outbox::at(T0);
    let write = KvWrite {
        namespace: "app".into(),
        key: "greeting".into(),
        value: Some(b"hello".to_vec()),
    };
    let (reply, mut answer) = oneshot::channel();
    kv.write(Some(reply), vec![write], &mut out);
    let token = out
        .effects()
        .iter()
        .find_map(|e| match e {
            Effect::PersistDurable { batch, token } if batch.is_empty() => Some(*token),
            _ => None,
        })
        .expect("a flush");
    assert!(
        !out.effects()
            .iter()
            .any(|e| matches!(e, Effect::Publish { .. })),
        "no delta before the flush"
    );
    assert!(answer.try_recv().is_err(), "no answer before the flush");
    let mut out = Outbox::at(T0);
    kv.on_durable(T0, token, Ok(()), &mut out);
    assert!(out
        .effects()
        .iter()
        .any(|e| matches!(e, Effect::Publish { topic, .. } if topic == TOPIC)));
    assert!(matches!(answer.try_recv(), Ok(Ok(w)) if w.written == 1));
    let view = kv.get("app", "greeting").unwrap().unwrap();
    assert_eq!(view.winner.value.as_deref(), Some("hello"));
    // A bad namespace is refused whole.
    let bad = KvWrite {
        namespace: "no/slash".into(),
        key: "k".into(),
        value: None,
    };
    assert!(kv.try_write(vec![bad], &mut Outbox::at(T0)).is_err());
}

#[test]
fn forged_oversized_and_future_entries_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut kv = service(dir.path());
    let author = Keypair::generate_ed25519();
    let good = signed(&author, "k", b"v", T0);
    let mut forged = signed(&author, "forged", b"v", T0);
    forged.value = Some(ByteBuf::from(b"changed".to_vec()));
    let future = signed(&author, "future", b"v", T0 + 10 * kv::DEFAULT_MAX_SKEW_MS);
    let mut stranger = signed(&author, "stranger", b"v", T0);
    stranger.version.author = ByteBuf::from(vec![0xff; 8]);
    let delta = Delta {
        entries: vec![forged, future, stranger, good],
        credentials: Vec::new(),
    };
    let mut out = Outbox::at(T0);
    // A forgery in it: its forwarder is penalised, what is valid is still taken.
    assert_eq!(gossip(&mut kv, &delta, &mut out), MessageAcceptance::Reject);
    assert_eq!(refused(&kv, "bad_signature"), 1);
    assert_eq!(refused(&kv, "from_the_future"), 1);
    assert_eq!(refused(&kv, "bad_author"), 1);
    assert_eq!(kv.keys(), 1, "only the good entry is merged");
    assert!(kv.get("app", "k").unwrap().is_some());
    // Refused only for this node's own view (its clock): ignored, nobody penalised.
    let ahead = Delta {
        entries: vec![signed(
            &author,
            "ahead",
            b"v",
            T0 + 5 * kv::DEFAULT_MAX_SKEW_MS,
        )],
        credentials: Vec::new(),
    };
    assert_eq!(gossip(&mut kv, &ahead, &mut out), MessageAcceptance::Ignore);
    // Junk is rejected (gossipsub penalises the sender), and so is a delta of nothing
    // but refused entries.
    assert_eq!(
        gossip_bytes(&mut kv, b"\xff\x00 not cbor", &mut out),
        MessageAcceptance::Reject
    );
    assert_eq!(refused(&kv, "malformed_delta"), 1);
    let mut bad = signed(&author, "k2", b"v", T0);
    bad.signature = ByteBuf::from(vec![1; 64]);
    let only_bad = Delta {
        entries: vec![bad],
        credentials: Vec::new(),
    };
    assert_eq!(
        gossip(&mut kv, &only_bad, &mut out),
        MessageAcceptance::Reject
    );
}

#[test]
fn malformed_sync_requests_are_refused_and_a_push_is_verified() {
    let dir = tempfile::tempdir().unwrap();
    let mut kv = service(dir.path());
    let peer = PeerId::random();
    let mut out = Outbox::at(T0);
    let bad = SyncRequest::Children {
        level: 9,
        nodes: vec![0],
    };
    assert!(matches!(
        kv.on_sync_request(T0, peer, bad, &mut out),
        SyncResponse::Refused { .. }
    ));
    assert_eq!(refused(&kv, "bad_level"), 1);
    let author = Keypair::generate_ed25519();
    let mut forged = signed(&author, "x", b"1", T0);
    forged.key = "y".into();
    // Larger than a gossip delta may be, but a sync message carries it: still refused.
    let mut huge = signed(&author, "huge", b"v", T0);
    huge.value = Some(ByteBuf::from(vec![0; kv::MAX_VALUE_BYTES + 1]));
    let push = SyncRequest::Push {
        entries: vec![signed(&author, "x", b"1", T0), forged, huge],
        credentials: Vec::new(),
    };
    assert_eq!(
        kv.on_sync_request(T0, peer, push, &mut out),
        SyncResponse::Pushed {
            accepted: 1,
            refused: 2
        }
    );
    assert_eq!(refused(&kv, "value_too_large"), 1);
}

#[test]
fn in_a_mesh_with_tickets_only_writers_write_and_revoked_authors_are_refused() {
    use fogmesh_transports::ticket::{self, Grant, MeshId, RevocationSet, RevocationTarget};
    let root = Keypair::generate_ed25519();
    let mesh = MeshId::of_root(&root.public());
    let now_s = T0 / 1000;
    let ticket_for = |who: &Keypair, roles: &[&str]| {
        let grant = Grant {
            roles: roles.iter().map(|r| r.to_string()).collect(),
            not_before: now_s - 3600,
            not_after: now_s + 3600,
        };
        ticket::issue(&root, mesh, who.public().to_peer_id(), &grant, None).unwrap()
    };
    let me = Keypair::generate_ed25519();
    let writer = Keypair::generate_ed25519();
    let worker = Keypair::generate_ed25519();
    let stranger = Keypair::generate_ed25519();
    let revocations = std::sync::Arc::new(std::sync::RwLock::new(RevocationSet::default()));
    let policy = AdmissionPolicy::closed(
        root.public(),
        ticket_for(&me, &["writer"]),
        revocations.clone(),
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let mut kv = KvService::open(
        me,
        &store,
        AccessPolicy {
            admission: Some(policy),
        },
        KvMetrics::default(),
    );
    let writer_ticket = ByteBuf::from(ticket_for(&writer, &["writer"]));
    let worker_ticket = ByteBuf::from(ticket_for(&worker, &["worker"]));
    let mut in_mesh = signed(&writer, "reserved", b"v", T0);
    in_mesh.namespace = RESERVED_NAMESPACE.into();
    in_mesh.signature = ByteBuf::from(writer.sign(&in_mesh.signing_bytes()).unwrap());
    let push = SyncRequest::Push {
        entries: vec![
            signed(&writer, "ok", b"v", T0),
            signed(&worker, "not-a-writer", b"v", T0),
            signed(&stranger, "no-ticket", b"v", T0),
            in_mesh,
        ],
        // The worker's ticket is offered for the stranger too: it names someone else.
        credentials: vec![writer_ticket, worker_ticket],
    };
    let mut out = Outbox::at(T0);
    let peer = PeerId::random();
    assert_eq!(
        kv.on_sync_request(T0, peer, push, &mut out),
        SyncResponse::Pushed {
            accepted: 1,
            refused: 3
        }
    );
    assert_eq!(refused(&kv, "not_writer"), 1);
    assert_eq!(refused(&kv, "no_credential"), 1);
    assert_eq!(refused(&kv, "not_admin"), 1);
    // The writer's ticket is remembered: later entries need not carry it.
    let later = SyncRequest::Push {
        entries: vec![signed(&writer, "later", b"v", T0 + 1)],
        credentials: Vec::new(),
    };
    assert!(matches!(
        kv.on_sync_request(T0, peer, later, &mut out),
        SyncResponse::Pushed { accepted: 1, .. }
    ));
    // Revoked: refused from now on; what was merged stays.
    let revocation = ticket::revoke(
        &root,
        RevocationTarget::Subject(writer.public().to_peer_id().to_bytes()),
        now_s,
    )
    .unwrap();
    revocations
        .write()
        .unwrap()
        .add(&revocation, &root.public())
        .unwrap();
    let after = SyncRequest::Push {
        entries: vec![signed(&writer, "after", b"v", T0 + 2)],
        credentials: Vec::new(),
    };
    assert!(matches!(
        kv.on_sync_request(T0, peer, after, &mut out),
        SyncResponse::Pushed { accepted: 0, .. }
    ));
    assert_eq!(refused(&kv, "revoked"), 1);
    assert!(
        kv.get("app", "ok").unwrap().is_some(),
        "earlier writes stay"
    );
    // This node's own ticket grants `writer` but not `admin`.
    let own = KvWrite {
        namespace: RESERVED_NAMESPACE.into(),
        key: "k".into(),
        value: Some(b"v".to_vec()),
    };
    assert_eq!(
        kv.try_write(vec![own], &mut out).err(),
        Some(KvWriteError::NotAllowed("admin"))
    );
}

#[test]
fn an_unreadable_store_refuses_everything_and_sends_the_node_to_safe_mode() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let slots: fogmesh_store::Table<crate::kv::replica::KvRecord> =
            store.table(crate::kv::replica::TABLE_SLOTS).unwrap();
        slots.put_raw_for_test("00", b"\xffjunk").unwrap();
        store.flush().unwrap();
    }
    let mut kv = service(dir.path());
    let mut out = Outbox::at(T0);
    kv.on_start(T0, &mut out);
    let reason = out
        .effects()
        .iter()
        .find_map(|e| match e {
            Effect::StoreFailed(reason) => Some(reason.clone()),
            _ => None,
        })
        .expect("safe mode");
    assert!(
        reason.contains(&dir.path().display().to_string()),
        "{reason}"
    );
    let write = KvWrite {
        namespace: "app".into(),
        key: "k".into(),
        value: Some(b"v".to_vec()),
    };
    assert!(kv.try_write(vec![write], &mut out).is_err());
    assert!(kv.get("app", "k").is_err());
}
