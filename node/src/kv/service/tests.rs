#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The capability without a swarm: its jobs are run here, by hand, the way the storage
//! task would run them, so the tests see exactly what waits for the replica.

use std::collections::VecDeque;

use fogmesh_kv::{Entry, Hlc, Version};
use fogmesh_store::{Store, StoreOptions};
use libp2p::identity::Keypair;

use super::*;
use crate::runtime::capability::GossipId;

const T0: u64 = 1_800_000_000_000;

struct Node {
    kv: KvService,
    peer: PeerId,
    keypair: Keypair,
    _dir: tempfile::TempDir,
}

fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let keypair = Keypair::generate_ed25519();
    let core = KvCore::open(
        keypair.clone(),
        &store,
        AccessPolicy::open(),
        KvMetrics::default(),
    );
    Node {
        kv: KvService::new(core),
        peer: keypair.public().to_peer_id(),
        keypair,
        _dir: dir,
    }
}

/// Runs every job `out` asks for (and those their outputs ask for), as the storage task
/// would; returns every other effect, in order.
fn run_jobs(kv: &mut KvService, mut out: Outbox) -> Vec<Effect> {
    let mut effects = Vec::new();
    let mut queue: VecDeque<Effect> = out.drain().collect();
    while let Some(effect) = queue.pop_front() {
        match effect {
            Effect::Job { job, token, .. } => {
                let mut next = Outbox::at(T0);
                kv.on_job(T0, token, Ok(job()), &mut next);
                queue.extend(next.drain());
            }
            other => effects.push(other),
        }
    }
    effects
}

fn signed(author: &Keypair, key: &str, wall_ms: u64) -> Entry {
    let mut entry = Entry {
        namespace: "app".into(),
        key: key.into(),
        value: Some(ByteBuf::from(b"v".to_vec())),
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

fn write(key: &str) -> KvWrite {
    KvWrite {
        namespace: "app".into(),
        key: key.into(),
        value: Some(b"hello".to_vec()),
    }
}

#[test]
fn a_write_is_a_durable_storage_job_answered_and_published_only_after_it() {
    let mut n = node();
    let mut out = Outbox::at(T0);
    let (reply, mut answer) = oneshot::channel();
    n.kv.write(Some(reply), vec![write("greeting")], &mut out);
    assert!(
        matches!(
            out.effects(),
            [Effect::Job {
                lane: Lane::Storage { durable: true },
                ..
            }]
        ),
        "nothing but the job: the swarm task does not touch the replica"
    );
    assert!(answer.try_recv().is_err(), "no answer before the job ran");
    let effects = run_jobs(&mut n.kv, out);
    assert!(matches!(answer.try_recv(), Ok(Ok(w)) if w.written == 1));
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::Publish { topic, .. } if topic == TOPIC)));
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::Event(ev) if ev.is::<KvChanged>())));
}

#[test]
fn a_failed_write_job_answers_with_the_store_error_and_sends_the_node_to_safe_mode() {
    let mut n = node();
    let mut out = Outbox::at(T0);
    let (reply, mut answer) = oneshot::channel();
    n.kv.write(Some(reply), vec![write("k")], &mut out);
    let Some(Effect::Job { token, .. }) = out.drain().next() else {
        panic!("a job")
    };
    let mut next = Outbox::at(T0);
    n.kv.on_job(T0, token, Err("flush failed".into()), &mut next);
    assert!(matches!(answer.try_recv(), Ok(Err(KvWriteError::Store(_)))));
    assert!(next
        .effects()
        .iter()
        .any(|e| matches!(e, Effect::StoreFailed(_))));
}

#[test]
fn a_delta_is_judged_after_its_job_and_junk_at_once() {
    let mut n = node();
    let author = Keypair::generate_ed25519();
    let source = PeerId::random();
    let id = GossipId {
        message: libp2p::gossipsub::MessageId::from(vec![1]),
        source,
    };
    let deliver = |kv: &mut KvService, data: &[u8]| {
        let mut out = Outbox::at(T0);
        let verdict = kv.on_gossip(
            T0,
            GossipIn {
                topic: TOPIC,
                propagation_source: source,
                author: None,
                data,
                id: &id,
            },
            &mut out,
        );
        (verdict, run_jobs(kv, out))
    };
    let junk = deliver(&mut n.kv, b"\xff\x00 not cbor");
    assert_eq!(junk.0, Verdict::Now(MessageAcceptance::Reject));
    assert_eq!(
        n.kv.metrics()
            .refused
            .get_or_create(&ReasonLabel {
                reason: "malformed_delta"
            })
            .get(),
        1
    );
    let mut forged = signed(&author, "forged", T0);
    forged.value = Some(ByteBuf::from(b"changed".to_vec()));
    for (entries, expected) in [
        (vec![signed(&author, "k", T0)], MessageAcceptance::Accept),
        (vec![forged], MessageAcceptance::Reject),
    ] {
        let data = fogmesh_wire::codec::encode(&Delta {
            entries,
            credentials: Vec::new(),
        })
        .unwrap();
        let (verdict, effects) = deliver(&mut n.kv, &data);
        assert_eq!(verdict, Verdict::Later);
        assert!(
            effects.iter().any(|e| matches!(
                e,
                Effect::GossipVerdict { acceptance, .. } if *acceptance == expected
            )),
            "{effects:?}"
        );
    }
}

/// Two capabilities linked by hand: their requests, answers and jobs delivered in order.
struct Pair {
    a: Node,
    b: Node,
}

impl Pair {
    fn node(&mut self, peer: PeerId) -> &mut KvService {
        if peer == self.a.peer {
            &mut self.a.kv
        } else {
            &mut self.b.kv
        }
    }

    /// Delivers `from`'s effects until nothing moves; counts the sync requests sent.
    fn settle(&mut self, from: PeerId, effects: Vec<Effect>) -> usize {
        let mut sent = 0;
        let mut queue: VecDeque<(PeerId, Effect)> =
            effects.into_iter().map(|e| (from, e)).collect();
        while let Some((from, effect)) = queue.pop_front() {
            match effect {
                Effect::Send {
                    peer, data, token, ..
                } => {
                    sent += 1;
                    // The answering side's job runs, then its answer goes back.
                    let mut out = Outbox::at(T0);
                    self.node(peer).on_request(
                        T0,
                        InboundRequest {
                            id: InboundId(token),
                            peer: from,
                            protocol: protocol::PROTOCOL,
                            data,
                        },
                        &mut out,
                    );
                    let answers = run_jobs(self.node(peer), out);
                    for answer in answers {
                        match answer {
                            Effect::Respond { id, data } => {
                                let mut out = Outbox::at(T0);
                                self.node(from).on_response(
                                    T0,
                                    Response {
                                        peer,
                                        token: id.0,
                                        result: Ok(data),
                                    },
                                    &mut out,
                                );
                                let effects = run_jobs(self.node(from), out);
                                queue.extend(effects.into_iter().map(|e| (from, e)));
                            }
                            other => queue.push_back((peer, other)),
                        }
                    }
                }
                Effect::Job { .. } => unreachable!("jobs are run by run_jobs"),
                _ => {}
            }
        }
        sent
    }
}

#[test]
fn a_neighbour_that_was_away_catches_up_through_sessions_run_as_jobs() {
    let mut pair = Pair {
        a: node(),
        b: node(),
    };
    // B writes while A is away.
    for i in 0..50 {
        let mut out = Outbox::at(T0);
        pair.b
            .kv
            .write(None, vec![write(&format!("away/{i}"))], &mut out);
        run_jobs(&mut pair.b.kv, out);
    }
    // A meets B: a session starts at once (as a job), its requests go out when it ran.
    let (a, b) = (pair.a.peer, pair.b.peer);
    let mut out = Outbox::at(T0);
    pair.a.kv.on_notice(
        T0,
        &Notice::PeerConnected {
            peer: b,
            link: LinkKind::Internet,
        },
        &mut out,
    );
    assert!(matches!(out.effects(), [Effect::Job { .. }]));
    let effects = run_jobs(&mut pair.a.kv, out);
    let sent = pair.settle(a, effects);
    assert!(sent >= 2, "the session asked and fetched: {sent} requests");
    // What A holds now, read by a job too.
    let (reply, mut answer) = oneshot::channel();
    let mut out = Outbox::at(T0);
    pair.a.kv.list(
        reply,
        "app".into(),
        "away/".into(),
        None,
        100,
        false,
        &mut out,
    );
    run_jobs(&mut pair.a.kv, out);
    assert_eq!(answer.try_recv().unwrap().unwrap().len(), 50);
    assert_eq!(
        pair.a
            .kv
            .metrics()
            .sync_sessions
            .get_or_create(&ReasonLabel {
                reason: "completed"
            })
            .get(),
        1
    );
    let _ = &pair.b.keypair;
}

#[test]
fn an_unreadable_store_sends_the_node_to_safe_mode_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let slots: fogmesh_store::Table<crate::kv::replica::KvRecord> =
            store.table(crate::kv::replica::TABLE_SLOTS).unwrap();
        slots.put_raw_for_test("00", b"\xffjunk").unwrap();
        store.flush().unwrap();
    }
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let core = KvCore::open(
        Keypair::generate_ed25519(),
        &store,
        AccessPolicy::open(),
        KvMetrics::default(),
    );
    let mut kv = KvService::new(core);
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
    let (reply, mut answer) = oneshot::channel();
    kv.write(Some(reply), vec![write("k")], &mut out);
    assert!(matches!(answer.try_recv(), Ok(Err(KvWriteError::Store(_)))));
}
