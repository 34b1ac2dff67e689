//! The cluster service without a swarm: services exchange requests by hand, so every rule
//! about who may say what is checked on its own.

use std::time::Duration;

use fogmesh_consensus::task::{Priority, Requirements};
use fogmesh_store::{Store, StoreOptions};
use libp2p::identity::Keypair;

use super::*;
use crate::admission::PeerRoles;
use crate::cluster::protocol::ClusterResponse;
use crate::runtime::testing::run_storage;
use fogmesh_consensus::formation::Announcement;
use fogmesh_consensus::task::TaskId;
use fogmesh_device::{self as device, DeviceReadings};
use fogmesh_wire::envelope::{self, MessageKind};
use view::KnownCluster;

const T0: u64 = 1_700_000_000_000;

fn device_notice() -> Notice {
    let readings = DeviceReadings {
        cores: Some(4),
        mem_total_bytes: Some(8 << 30),
        mem_available_bytes: Some(4 << 30),
        ..DeviceReadings::default()
    };
    Notice::share(DeviceChanged {
        view: device::assess(readings, None, Duration::ZERO, None).0,
        rss_bytes: None,
    })
}

fn open(keypair: Keypair, store: &Store, config: ClusterConfig) -> ClusterService {
    let channel = fogmesh_transports::secure::SecureChannel::new(
        &keypair,
        fogmesh_transports::secure::SecureChannelConfig::new(
            fogmesh_transports::secure::AdmissionPolicy::open(),
        ),
    )
    .unwrap();
    ClusterService::open(
        keypair,
        store,
        config,
        Admissions::new(channel, true),
        crate::runtime::handle::Views::default().add(ClusterView::default()),
        T0,
        ClusterMetrics::default(),
    )
    .unwrap()
}

struct Node {
    service: ClusterService,
    peer: PeerId,
    store: Store,
    dir: tempfile::TempDir,
}

impl Node {
    /// Carries out the storage effects in `out` (the others stay for the test to read).
    fn settle(&mut self, now_ms: u64, out: &mut Outbox) {
        let rest = run_storage(&mut self.service, &self.store, now_ms, out);
        for effect in rest {
            out.push(effect);
        }
    }

    fn submit(&mut self, now_ms: u64, task: SubmitTask) -> Result<TaskId, SubmitError> {
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        let mut out = Outbox::default();
        self.service.submit(now_ms, task, reply, &mut out);
        self.settle(now_ms, &mut out);
        answer.try_recv().expect("answered once stored")
    }

    fn tick(&mut self, now_ms: u64, out: &mut Outbox) {
        self.service.on_timer(now_ms, TICK, out);
        self.settle(now_ms, out);
    }
}

fn node(roles: OwnRoles) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let keypair = Keypair::generate_ed25519();
    let peer = keypair.public().to_peer_id();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let config = ClusterConfig {
        roles,
        ..ClusterConfig::default()
    };
    let service = open(keypair, &store, config);
    Node {
        service,
        peer,
        store,
        dir,
    }
}

fn task() -> SubmitTask {
    SubmitTask {
        module: crate::cluster::exec::assemble(include_str!(
            "../../../../examples/workloads/empty.wat"
        ))
        .unwrap(),
        input: None,
        priority: Priority::Normal,
        requirements: Requirements {
            cpu_millicores: 100,
            memory_mb: 1,
            duration_ms: 100,
            gpu: false,
        },
    }
}

fn refused(service: &ClusterService, reason: &'static str) -> u64 {
    service
        .metrics()
        .refused
        .get_or_create(&ReasonLabel { reason })
        .get()
}

/// Runs a lone node until it founded its cluster and coordinates it.
fn founded(n: &mut Node) {
    let mut out = Outbox::default();
    n.service.on_notice(T0, &device_notice(), &mut out);
    let mut now = T0;
    for _ in 0..400 {
        now += group::TICK_MS;
        n.tick(now, &mut out);
        if let Situation::Member(m) = &n.service.situation {
            if m.group.is_leader() && m.joined {
                return;
            }
        }
    }
    panic!("no cluster founded after 40 s");
}

#[test]
fn a_lone_node_that_may_coordinate_founds_a_cluster_and_one_that_may_not_does_not() {
    let mut coordinator = node(OwnRoles::ALL);
    founded(&mut coordinator);
    assert_eq!(coordinator.service.view().state, "member");

    let mut worker = node(OwnRoles {
        coordinator: false,
        worker: true,
        submitter: false,
    });
    let mut out = Outbox::default();
    worker.service.on_notice(T0, &device_notice(), &mut out);
    for i in 0..400 {
        worker.tick(T0 + i * group::TICK_MS, &mut out);
    }
    let view = worker.service.view();
    assert_eq!(view.state, "unclustered");
    assert!(view.why.contains("no coordinator role"), "{}", view.why);
}

#[test]
fn joins_and_submissions_without_their_role_are_refused_and_counted() {
    let mut coordinator = node(OwnRoles::ALL);
    founded(&mut coordinator);
    let cluster = coordinator.service.cluster_id().unwrap().to_owned();
    let stranger = PeerId::random();
    let capacity = coordinator.service.capacity.map(|c| c.capacity).unwrap();
    let mut out = Outbox::default();
    let only = |roles: &[&str]| PeerRoles(Some(roles.iter().map(|r| r.to_string()).collect()));

    let answer = coordinator.service.handle_request(
        T0,
        stranger,
        &only(&["submitter"]),
        ClusterRequest::Join {
            cluster: cluster.clone(),
            capacity,
        },
        InboundId(0),
        &mut out,
    );
    assert!(
        matches!(answer, Some(ClusterResponse::Refused { .. })),
        "{answer:?}"
    );
    assert_eq!(refused(&coordinator.service, "join_without_role"), 1);

    // A submitter's task naming another submitter is refused too.
    let mut submitter = node(OwnRoles::ALL);
    let id = submitter.submit(T0, task()).unwrap();
    let spec = submitter.service.submissions.get(&id).unwrap().spec.clone();
    for (peer, roles) in [
        (stranger, only(&["worker"])),
        (stranger, only(&["submitter"])),
    ] {
        let answer = coordinator.service.handle_request(
            T0,
            peer,
            &roles,
            ClusterRequest::Submit {
                spec: spec.clone(),
                module: None,
                input: None,
                forwarded: false,
            },
            InboundId(0),
            &mut out,
        );
        assert!(
            matches!(answer, Some(ClusterResponse::Refused { .. })),
            "{answer:?}"
        );
    }
    assert_eq!(refused(&coordinator.service, "submit_without_role"), 2);
    // From its submitter, with the role: proposed, and in the state.
    let answer = coordinator.service.handle_request(
        T0,
        submitter.peer,
        &only(&["submitter"]),
        ClusterRequest::Submit {
            spec,
            module: Some(ByteBuf::from(task().module)),
            input: None,
            forwarded: false,
        },
        InboundId(0),
        &mut out,
    );
    assert_eq!(answer, Some(ClusterResponse::Proposed { cluster }));
    // In the state once the coordinator's log has it on disk.
    coordinator.settle(T0, &mut out);
    assert!(coordinator.service.task_report(&id).is_some());
    // And a node without the role cannot submit from its API at all.
    let mut worker = node(OwnRoles {
        coordinator: false,
        worker: true,
        submitter: false,
    });
    assert_eq!(worker.submit(T0, task()), Err(SubmitError::NoRole));
    drop(submitter.dir);
}

#[test]
fn raft_frames_that_are_junk_forged_or_from_strangers_are_refused_and_counted() {
    let mut coordinator = node(OwnRoles::ALL);
    founded(&mut coordinator);
    let cluster = coordinator.service.cluster_id().unwrap().to_owned();
    let mut out = Outbox::default();
    let open = PeerRoles(None);
    let me = coordinator.service.me_id;
    let mut send = |service: &mut ClusterService, peer: PeerId, frame: Vec<u8>| {
        let answer = service.handle_request(
            T0,
            peer,
            &open,
            ClusterRequest::Raft {
                frame: ByteBuf::from(frame),
            },
            InboundId(0),
            &mut out,
        );
        assert_eq!(answer, Some(ClusterResponse::Ack));
    };
    send(&mut coordinator.service, PeerId::random(), vec![0xff; 64]);
    assert_eq!(refused(&coordinator.service, "malformed"), 1);

    let stranger = PeerId::random();
    let stranger_id = wire::member_id(&stranger.to_bytes());
    let mut vote = fogmesh_consensus::raft::eraftpb::Message::default();
    vote.set_msg_type(fogmesh_consensus::raft::eraftpb::MessageType::MsgRequestVote);
    vote.to = me;
    vote.term = 99;
    vote.from = stranger_id;
    send(
        &mut coordinator.service,
        stranger,
        wire::encode(&cluster, &vote, 100).unwrap(),
    );
    assert_eq!(refused(&coordinator.service, "not_member"), 1);
    // Claiming to be someone else.
    vote.from = stranger_id ^ 1;
    send(
        &mut coordinator.service,
        stranger,
        wire::encode(&cluster, &vote, 100).unwrap(),
    );
    assert_eq!(refused(&coordinator.service, "spoofed"), 1);
    // None of it disturbed the coordinator.
    let Situation::Member(m) = &coordinator.service.situation else {
        panic!("left its cluster");
    };
    assert!(m.group.is_leader());
    assert!(m.group.term() < 99);
}

#[test]
fn a_task_submitted_out_of_reach_of_any_cluster_waits_on_disk_across_a_restart() {
    let mut lonely = node(OwnRoles {
        coordinator: false,
        worker: true,
        submitter: true,
    });
    let mut out = Outbox::default();
    let id = lonely.submit(T0, task()).unwrap();
    for i in 1..50 {
        lonely.tick(T0 + i * group::TICK_MS, &mut out);
    }
    let view = lonely.service.task_view(&id).unwrap();
    assert_eq!(view.state, "submitted");
    assert!(
        view.detail
            .as_deref()
            .unwrap_or("")
            .contains("no cluster in reach"),
        "{view:?}"
    );
    // Restarted from the same store: still there, still waiting.
    let keypair = lonely.service.keypair.clone();
    drop(lonely.service);
    drop(lonely.store);
    let store = Store::open(lonely.dir.path(), &StoreOptions::default()).unwrap();
    let again = open(keypair, &store, ClusterConfig::default());
    assert_eq!(again.task_view(&id).unwrap().state, "submitted");
}

#[test]
fn a_broken_module_or_impossible_numbers_are_refused_at_submission() {
    let mut n = node(OwnRoles::ALL);
    let mut junk = task();
    junk.module = b"not wasm at all".to_vec();
    let err = n.submit(T0, junk).unwrap_err();
    assert!(matches!(err, SubmitError::BadModule(_)), "{err}");
    assert!(
        !err.to_string().contains('\n'),
        "one line for a person: {err}"
    );
    let mut zero = task();
    zero.requirements.memory_mb = 0;
    assert!(matches!(
        n.submit(T0, zero),
        Err(SubmitError::BadRequirements(_))
    ));
}

/// Announcements are judged fresh from when they are heard, whatever the sender's clock says:
/// a coordinator 20 s ahead or 20 s behind is heard, held and forgotten on the receiver's time.
#[test]
fn announcements_are_fresh_from_receipt_whatever_the_senders_clock() {
    for skew_ms in [20_000i64, -20_000] {
        let mut a = node(OwnRoles::ALL);
        founded(&mut a);
        let mut b = node(OwnRoles::ALL);
        let sent_at = T0.saturating_add_signed(skew_ms) + 60_000;
        let mut out = Outbox::default();
        a.service.announce(sent_at, &mut out);
        let data = out
            .effects()
            .iter()
            .find_map(|e| match e {
                Effect::Publish { topic, data } if topic == ANNOUNCE_TOPIC => Some(data.clone()),
                _ => None,
            })
            .expect("announced");
        let heard_at = T0 + 60_000;
        assert_eq!(
            b.service
                .on_announcement(heard_at, &data, &mut Outbox::at(T0)),
            libp2p::gossipsub::MessageAcceptance::Accept,
            "skew {skew_ms} ms"
        );
        let Situation::Member(m) = &a.service.situation else {
            panic!("a coordinates");
        };
        assert!(b.service.announcements.contains_key(&m.cluster));
        // Forgotten on the receiver's clock once not heard for fresh_ms.
        let fresh = b.service.config.formation.fresh_ms;
        let mut out = Outbox::default();
        b.service.step(heard_at + fresh - 1, &mut out);
        assert!(b.service.announcements.contains_key(&m.cluster));
        b.service.step(heard_at + fresh + 1, &mut out);
        assert!(!b.service.announcements.contains_key(&m.cluster));
    }
}

/// A submitter cut off from its task's cluster: `task status` says what it last heard, how
/// long ago, and why it hears nothing now, instead of a bare "not delivered".
#[test]
fn a_cut_off_submitter_says_where_its_task_was_and_why_it_hears_nothing() {
    let mut submitter = node(OwnRoles {
        coordinator: false,
        worker: false,
        submitter: true,
    });
    let id = submitter.submit(T0, task()).unwrap();
    let timeout = || Err("Timeout while waiting for a response".to_string());

    // Never delivered: it names the failure, counts the tries and their time.
    let service = &mut submitter.service;
    service.now_ms = T0 + 2_000;
    service.on_submit_answer(T0 + 2_000, id, timeout());
    service.now_ms = T0 + 14_000;
    service.on_submit_answer(T0 + 14_000, id, timeout());
    let view = service.task_view(&id).unwrap();
    assert_eq!(view.state, "submitted");
    let detail = view.detail.unwrap();
    assert!(detail.contains("gave no answer within 30 s"), "{detail}");
    assert!(detail.contains("2 tries in a row, for 12 s"), "{detail}");

    // Then its cluster confirms it (queued), and later stops answering.
    let report = crate::cluster::protocol::TaskReport {
        cluster: "c1".into(),
        state: fogmesh_consensus::state::TaskState::Queued { last_error: None },
        attempts: 0,
        waiting: None,
    };
    let mut out = Outbox::default();
    service.on_status_answer(
        T0 + 20_000,
        id,
        "c1",
        Ok(ClusterResponse::Status(Some(report))),
        &mut out,
    );
    service.now_ms = T0 + 20_000;
    let view = service.task_view(&id).unwrap();
    assert_eq!(
        (view.state.as_str(), view.detail.as_deref()),
        ("queued", None)
    );
    service.on_status_answer(T0 + 45_000, id, "c1", timeout(), &mut out);
    service.now_ms = T0 + 45_000;
    let view = service.task_view(&id).unwrap();
    assert_eq!(view.state, "queued");
    assert_eq!(view.heard_ago_ms, Some(25_000));
    let detail = view.detail.clone().unwrap();
    assert!(detail.contains("cluster c1 gave no answer"), "{detail}");
    assert!(detail.contains("1 try in a row"), "{detail}");
    assert!(detail.contains("heard 25 s ago"), "{detail}");
    assert!(
        crate::client::render::render_task(&view).contains("queued as of 25s ago"),
        "{}",
        crate::client::render::render_task(&view)
    );
}

/// A member whose link stalls (a partition) gets at most `MAX_RAFT_IN_FLIGHT_PER_PEER` raft
/// messages waiting for their acknowledgement, not one stream per heartbeat that would all
/// land at once when the link recovers; each acknowledgement lets one more go.
#[test]
fn raft_messages_to_a_silent_member_stop_at_the_backlog_cap() {
    let mut coordinator = node(OwnRoles::ALL);
    founded(&mut coordinator);
    let cluster = coordinator.service.cluster_id().unwrap().to_owned();
    let joiner = PeerId::random();
    let capacity = coordinator.service.capacity.map(|c| c.capacity).unwrap();
    let mut out = Outbox::default();
    coordinator.service.handle_request(
        T0,
        joiner,
        &PeerRoles(Some(vec!["worker".into()])),
        ClusterRequest::Join { cluster, capacity },
        InboundId(0),
        &mut out,
    );
    coordinator.settle(T0, &mut out);
    // 10 s of heartbeats (before the silent member is removed, at 15 s).
    let mut now = T0;
    for _ in 0..100 {
        now += group::TICK_MS;
        coordinator.tick(now, &mut out);
    }
    let sent_to_joiner = |out: &Outbox| -> Vec<Token> {
        out.effects()
            .iter()
            .filter_map(|e| match e {
                Effect::Send { peer, token, .. } if *peer == joiner => Some(*token),
                _ => None,
            })
            .collect()
    };
    let sent = sent_to_joiner(&out);
    assert_eq!(sent.len(), MAX_RAFT_IN_FLIGHT_PER_PEER);
    assert!(refused(&coordinator.service, "raft_link_backlog") > 0);

    // One acknowledgement: the next heartbeat goes.
    let mut out = Outbox::default();
    coordinator.service.on_response(
        now,
        Response {
            peer: joiner,
            token: sent[0],
            result: Ok(Vec::new()),
        },
        &mut out,
    );
    for _ in 0..10 {
        now += group::TICK_MS;
        coordinator.tick(now, &mut out);
    }
    assert_eq!(sent_to_joiner(&out).len(), 1);
}

/// The summary a coordinator publishes, decoded.
fn published_summary(out: &Outbox) -> (Vec<u8>, Announcement) {
    let data = out
        .effects()
        .iter()
        .find_map(|e| match e {
            Effect::Publish { topic, data } if topic == ANNOUNCE_TOPIC => Some(data.clone()),
            _ => None,
        })
        .expect("announced");
    let opened = envelope::open(&data, MessageKind::ClusterAnnouncement).unwrap();
    (data, fogmesh_wire::codec::decode(&opened.body).unwrap())
}

fn reseal(key: &Keypair, summary: &Announcement, seq: u64) -> Vec<u8> {
    envelope::seal(
        key,
        MessageKind::ClusterAnnouncement,
        seq,
        T0,
        fogmesh_wire::codec::encode(summary).unwrap(),
    )
    .unwrap()
}

#[test]
fn a_coordinators_summary_matches_its_members() {
    let mut a = node(OwnRoles::ALL);
    founded(&mut a);
    let mut out = Outbox::default();
    a.service.announce(T0 + 50_000, &mut out);
    let (_, summary) = published_summary(&out);
    let Situation::Member(m) = &a.service.situation else {
        panic!("a coordinates");
    };
    let state = m.group.state();
    let members: Vec<Vec<u8>> = state.members().keys().map(|n| n.0.clone()).collect();
    let said: Vec<Vec<u8>> = summary.members.iter().map(|m| m.to_vec()).collect();
    assert_eq!(said, members);
    assert_eq!(summary.coordinator, a.peer.to_bytes());
    assert_eq!(summary.summary.len(), members.len());
    for ((node, member), told) in state.members().iter().zip(&summary.summary) {
        assert_eq!(told.capacity, member.capacity);
        assert_eq!(told.load, state.load_of(node));
        assert!(!told.silent, "the coordinator hears itself");
    }
    assert!(summary.is_consistent());
    assert!(summary.every_ms.is_some());
    // What a receiver shows adds up the same members.
    let known = KnownCluster::of(&a.peer, &summary);
    assert_eq!(known.nodes.len(), members.len());
    assert_eq!(known.nodes[0].peer_id, a.peer.to_string());
    assert_eq!(known.capacity.live_members as usize, members.len());
    assert_eq!(
        known.capacity.cores,
        state
            .members()
            .values()
            .map(|m| m.capacity.cores)
            .sum::<u32>()
    );
}

#[test]
fn forged_stale_inconsistent_and_oversized_summaries_are_refused_and_counted() {
    use libp2p::gossipsub::MessageAcceptance::{Accept, Ignore, Reject};
    let mut a = node(OwnRoles::ALL);
    founded(&mut a);
    let mut b = node(OwnRoles::ALL);
    let mut out = Outbox::default();
    a.service.announce(T0 + 50_000, &mut out);
    let (older, summary) = published_summary(&out);
    let mut out = Outbox::default();
    a.service.announce(T0 + 52_000, &mut out);
    let (newer, _) = published_summary(&out);

    // Forged: a summary of a's cluster signed by someone else.
    let mallory = Keypair::generate_ed25519();
    assert_eq!(
        b.service
            .on_announcement(T0, &reseal(&mallory, &summary, 1), &mut Outbox::at(T0)),
        Reject
    );
    assert_eq!(refused(&b.service, "announcement_inconsistent"), 1);
    // ... or claiming to coordinate it under its own name.
    let mut usurped = summary.clone();
    usurped.coordinator = mallory.public().to_peer_id().to_bytes();
    assert_eq!(
        b.service
            .on_announcement(T0, &reseal(&mallory, &usurped, 2), &mut Outbox::at(T0)),
        Reject
    );
    assert_eq!(refused(&b.service, "announcement_inconsistent"), 2);
    // Tampered with on the way: the signature fails.
    let mut tampered = newer.clone();
    let at = tampered.len() - 70;
    tampered[at] ^= 0x40;
    assert_eq!(
        b.service
            .on_announcement(T0, &tampered, &mut Outbox::at(T0)),
        Reject
    );
    assert_eq!(refused(&b.service, "announcement_bad_envelope"), 1);
    // Disagreeing with itself, though properly signed: one entry short.
    let coordinator_key = a.service.keypair.clone();
    let mut short = summary.clone();
    short.summary.clear();
    short.summary.push(summary.summary[0]);
    short.members.push(serde_bytes::ByteBuf::from(
        mallory.public().to_peer_id().to_bytes(),
    ));
    assert_eq!(
        b.service.on_announcement(
            T0,
            &reseal(&coordinator_key, &short, 3),
            &mut Outbox::at(T0)
        ),
        Reject
    );
    assert_eq!(refused(&b.service, "announcement_inconsistent"), 3);
    // Oversized: refused before it is opened.
    let huge = vec![0u8; MAX_ANNOUNCEMENT_BYTES + 1024];
    assert_eq!(
        b.service.on_announcement(T0, &huge, &mut Outbox::at(T0)),
        Reject
    );
    assert_eq!(refused(&b.service, "announcement_oversized"), 1);
    assert!(
        b.service.announcements.is_empty(),
        "nothing refused is held"
    );

    // The genuine ones: the newer is held; the older one after it is stale and ignored.
    assert_eq!(
        b.service.on_announcement(T0, &newer, &mut Outbox::at(T0)),
        Accept
    );
    assert_eq!(
        b.service.on_announcement(T0, &older, &mut Outbox::at(T0)),
        Ignore
    );
    assert_eq!(refused(&b.service, "announcement_not_newer"), 1);
    let (_, held) = &b.service.announcements[&summary.cluster];
    assert_eq!(held.sent_ms(), T0 + 52_000);
    // Telemetry hears who coordinates the summary's members.
    let mut out = Outbox::default();
    b.service.step(T0 + 1, &mut out);
    let directory = out
        .effects()
        .iter()
        .find_map(|e| match e {
            Effect::Notice(n) => n.shared::<crate::telemetry::scope::Directory>().cloned(),
            _ => None,
        })
        .expect("directory shared");
    assert_eq!(directory.coordinator_of.get(&a.peer), Some(&a.peer));
}

#[test]
fn a_joiner_forgets_a_cluster_its_coordinator_disowns_and_avoids_a_full_one() {
    let mut a = node(OwnRoles::ALL);
    founded(&mut a);
    let cluster = a.service.cluster_id().unwrap().to_owned();
    let mut out = Outbox::default();
    a.service.announce(T0 + 50_000, &mut out);
    let (data, _) = published_summary(&out);

    // b hears of a's cluster, is linked to a, and asks to join.
    let ask = |answer: &str| {
        let mut b = node(OwnRoles::ALL);
        let mut out = Outbox::at(T0);
        b.service.on_notice(T0, &device_notice(), &mut out);
        b.service.on_notice(
            T0,
            &Notice::PeerConnected {
                peer: a.peer,
                link: fogmesh_transports::LinkKind::Internet,
            },
            &mut out,
        );
        assert_eq!(
            b.service.on_announcement(T0, &data, &mut out),
            libp2p::gossipsub::MessageAcceptance::Accept
        );
        let mut now = T0;
        let token = loop {
            now += group::TICK_MS;
            let mut out = Outbox::at(now);
            b.tick(now, &mut out);
            let sent = out.effects().iter().find_map(|e| match e {
                Effect::Send { peer, token, .. } if *peer == a.peer => Some(*token),
                _ => None,
            });
            if let Some(token) = sent {
                break token;
            }
            assert!(now < T0 + 5_000, "b never asked");
        };
        let refusal = ClusterResponse::Refused {
            reason: answer.into(),
        };
        b.service.on_response(
            now,
            Response {
                peer: a.peer,
                token,
                result: Ok(refusal.encode().unwrap()),
            },
            &mut Outbox::at(now),
        );
        b
    };
    // "Not in a cluster", from the coordinator itself: the announcement is dropped.
    let b = ask(requests::NOT_IN_A_CLUSTER);
    assert!(!b.service.announcements.contains_key(&cluster));
    // "Full": kept, but not asked again while it is held.
    let b = ask(requests::FULL);
    assert!(b.service.announcements.contains_key(&cluster));
    let until = b.service.avoid.get(&cluster).copied().unwrap();
    assert!(
        until > T0 + formation::LAN.join_timeout_ms,
        "avoided while held"
    );
}
