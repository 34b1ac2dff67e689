#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The replica's side of the store, called directly: writes, verification, answers.

use super::*;
use crate::kv::protocol::Delta;
use crate::kv::view::KvChanged;
use fogmesh_store::StoreOptions;
use libp2p::gossipsub::MessageAcceptance;

const T0: u64 = 1_800_000_000_000;

fn service(dir: &std::path::Path) -> KvCore {
    let store = Store::open(dir, &StoreOptions::default()).unwrap();
    KvCore::open(
        Keypair::generate_ed25519(),
        &store,
        AccessPolicy::open(),
        KvMetrics::default(),
    )
}

fn refused(kv: &KvCore, reason: &'static str) -> u64 {
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

/// What a delta of these entries comes to, as gossip would judge it.
fn gossip(kv: &mut KvCore, delta: &Delta) -> MessageAcceptance {
    let taken = kv.take_remote(T0, delta.entries.clone(), &delta.credentials, "gossip");
    crate::kv::service::verdict_of(&taken)
}

#[test]
fn a_local_write_is_signed_merged_and_given_back_to_publish() {
    let dir = tempfile::tempdir().unwrap();
    let mut kv = service(dir.path());
    let write = KvWrite {
        namespace: "app".into(),
        key: "greeting".into(),
        value: Some(b"hello".to_vec()),
    };
    let written = kv.write(T0, vec![write]).unwrap();
    assert_eq!(written.written.written, 1);
    assert_eq!(written.entries.len(), 1, "the entry to publish");
    assert!(written.events.iter().any(|e| e.is::<KvChanged>()));
    let entry = &written.entries[0];
    let key = Keypair::from_protobuf_encoding(&kv.keypair.to_protobuf_encoding().unwrap())
        .unwrap()
        .public();
    assert!(key.verify(&entry.signing_bytes(), &entry.signature));
    let view = kv.get("app", "greeting").unwrap().unwrap();
    assert_eq!(view.winner.value.as_deref(), Some("hello"));
    // A bad namespace is refused whole.
    let bad = KvWrite {
        namespace: "no/slash".into(),
        key: "k".into(),
        value: None,
    };
    assert!(kv.write(T0, vec![bad]).is_err());
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
    // A forgery in it: its forwarder is penalised, what is valid is still taken.
    assert_eq!(gossip(&mut kv, &delta), MessageAcceptance::Reject);
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
    assert_eq!(gossip(&mut kv, &ahead), MessageAcceptance::Ignore);
    // A delta of nothing but refused entries is rejected too (junk bytes are refused
    // before the core: see the capability's tests).
    let mut bad = signed(&author, "k2", b"v", T0);
    bad.signature = ByteBuf::from(vec![1; 64]);
    let only_bad = Delta {
        entries: vec![bad],
        credentials: Vec::new(),
    };
    assert_eq!(gossip(&mut kv, &only_bad), MessageAcceptance::Reject);
}

#[test]
fn malformed_sync_requests_are_refused_and_a_push_is_verified() {
    let dir = tempfile::tempdir().unwrap();
    let mut kv = service(dir.path());
    let bad = SyncRequest::Children {
        level: 9,
        nodes: vec![0],
    };
    assert!(matches!(kv.answer(T0, bad).0, SyncResponse::Refused { .. }));
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
        kv.answer(T0, push).0,
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
    let mut kv = KvCore::open(
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
    assert_eq!(
        kv.answer(T0, push).0,
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
        kv.answer(T0, later).0,
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
        kv.answer(T0, after).0,
        SyncResponse::Pushed { accepted: 0, .. }
    ));
    assert_eq!(refused(&kv, "revoked"), 1);
    assert!(
        kv.get("app", "ok").unwrap().is_some(),
        "earlier writes stay"
    );
    // An author whose ticket grants `admin` writes the reserved namespace.
    let admin = Keypair::generate_ed25519();
    let mut by_admin = signed(&admin, "registry", b"v", T0);
    by_admin.namespace = RESERVED_NAMESPACE.into();
    by_admin.signature = ByteBuf::from(admin.sign(&by_admin.signing_bytes()).unwrap());
    let push = SyncRequest::Push {
        entries: vec![by_admin],
        credentials: vec![ByteBuf::from(ticket_for(&admin, &["writer", "admin"]))],
    };
    assert!(matches!(
        kv.answer(T0, push).0,
        SyncResponse::Pushed { accepted: 1, .. }
    ));
    // This node's own ticket grants `writer` but not `admin`.
    let own = KvWrite {
        namespace: RESERVED_NAMESPACE.into(),
        key: "k".into(),
        value: Some(b"v".to_vec()),
    };
    assert_eq!(
        kv.write(T0, vec![own]).err(),
        Some(KvWriteError::NotAllowed("admin"))
    );
}

#[test]
fn an_unreadable_store_refuses_everything_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let slots: fogmesh_store::Table<crate::kv::replica::KvRecord> =
            store.table(crate::kv::replica::TABLE_SLOTS).unwrap();
        slots.put_raw_for_test("00", b"\xffjunk").unwrap();
        store.flush().unwrap();
    }
    let mut kv = service(dir.path());
    let reason = kv.broken().expect("unusable").to_owned();
    assert!(
        reason.contains(&dir.path().display().to_string()),
        "{reason}"
    );
    let write = KvWrite {
        namespace: "app".into(),
        key: "k".into(),
        value: Some(b"v".to_vec()),
    };
    assert!(kv.write(T0, vec![write]).is_err());
    assert!(kv.get("app", "k").is_err());
}
