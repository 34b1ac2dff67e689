//! The relay service on a simulated network of pure state machines: packets, hop answers,
//! timers and durable writes are events on one seeded queue, so each schedule is
//! reproducible and many can be tried.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use rand::{Rng, SeedableRng};

use super::*;
use crate::relay::MessageView;
use crate::runtime::events::NodeEvent;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Packet {
        from: usize,
        to: usize,
        token: Token,
        bytes: Vec<u8>,
    },
    Timer {
        node: usize,
        timer: u8,
        at: u64,
    },
    Durable {
        node: usize,
        token: Token,
    },
}

struct Sim {
    nodes: Vec<RelayService>,
    ids: Vec<PeerId>,
    links: HashSet<(usize, usize)>,
    queue: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    timers: HashMap<(usize, u8), u64>,
    now: u64,
    order: u64,
    rng: StdRng,
    /// Every packet a node sent: (from, to, ttl).
    sends: Vec<(usize, usize, MessageId)>,
    events: Vec<(usize, NodeEvent)>,
    disconnects: Vec<(usize, PeerId)>,
    /// (node, hops) of every received packet's ttl, per message id.
    ttls_seen: Vec<(usize, MessageId, u8)>,
}

fn timer_code(t: TimerId) -> u8 {
    t.0 as u8
}

fn timer_of(code: u8) -> TimerId {
    TimerId(u16::from(code))
}

/// Tables in a store of its own, kept for the whole test run.
pub(super) fn tables() -> RelayTables {
    let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
    let store =
        fogmesh_store::Store::open(dir.path(), &fogmesh_store::StoreOptions::default()).unwrap();
    RelayTables::open(&store).unwrap()
}

/// A relay service with throwaway tables and view.
pub(super) fn relay(key: Keypair, config: RelayConfig, rng: StdRng) -> RelayService {
    RelayService::new(
        key,
        config,
        rng,
        tables(),
        crate::runtime::handle::Views::default().add(MessagesView::default()),
        RelayMetrics::default(),
    )
    .unwrap()
}

impl Sim {
    fn new(n: usize, seed: u64, config: RelayConfig) -> Self {
        let mut nodes = Vec::new();
        let mut ids = Vec::new();
        for i in 0..n {
            let key = Keypair::generate_ed25519();
            ids.push(key.public().to_peer_id());
            nodes.push(relay(
                key,
                config.clone(),
                StdRng::seed_from_u64(seed * 1000 + i as u64),
            ));
        }
        let mut sim = Sim {
            nodes,
            ids,
            links: HashSet::new(),
            queue: BinaryHeap::new(),
            timers: HashMap::new(),
            now: 1_700_000_000_000,
            order: 0,
            rng: StdRng::seed_from_u64(seed),
            sends: Vec::new(),
            events: Vec::new(),
            disconnects: Vec::new(),
            ttls_seen: Vec::new(),
        };
        for i in 0..n {
            let mut out = Outbox::at(sim.now);
            sim.nodes[i].on_start(sim.now, &mut out);
            sim.apply(i, out);
        }
        sim
    }

    fn line(n: usize, seed: u64, config: RelayConfig) -> Self {
        let mut sim = Sim::new(n, seed, config);
        for i in 0..n - 1 {
            sim.connect(i, i + 1);
        }
        sim
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.order += 1;
        self.queue.push(Reverse((at, self.order, ev)));
    }

    fn connect(&mut self, a: usize, b: usize) {
        self.connect_by(a, b, LinkKind::Radio);
    }

    fn connect_by(&mut self, a: usize, b: usize, kind: LinkKind) {
        self.links.insert((a, b));
        self.links.insert((b, a));
        for (x, y) in [(a, b), (b, a)] {
            let mut out = Outbox::at(self.now);
            let peer = self.ids[y];
            self.nodes[x].link_up(self.now, peer, kind, &mut out);
            self.apply(x, out);
        }
    }

    fn cut(&mut self, a: usize, b: usize) {
        self.links.remove(&(a, b));
        self.links.remove(&(b, a));
        let (pa, pb) = (self.ids[a], self.ids[b]);
        self.nodes[a].link_down(&pb);
        self.nodes[b].link_down(&pa);
    }

    fn apply(&mut self, node: usize, mut out: Outbox) {
        for effect in out.drain() {
            match effect {
                Effect::Send {
                    peer, data, token, ..
                } => {
                    let to = self.ids.iter().position(|p| *p == peer).unwrap();
                    let (_, id) = packet::peek(&data).unwrap();
                    self.sends.push((node, to, id));
                    let latency = self.rng.gen_range(1..40);
                    self.push(
                        self.now + latency,
                        Ev::Packet {
                            from: node,
                            to,
                            token,
                            bytes: data,
                        },
                    );
                }
                Effect::Timer { at_ms, timer } => {
                    let code = timer_code(timer);
                    self.timers.insert((node, code), at_ms);
                    self.push(
                        at_ms,
                        Ev::Timer {
                            node,
                            timer: code,
                            at: at_ms,
                        },
                    );
                }
                Effect::PersistDurable { token, .. } => {
                    let at = self.now + self.rng.gen_range(1..5);
                    self.push(at, Ev::Durable { node, token });
                }
                Effect::Event(e) => self.events.push((node, e)),
                Effect::Disconnect { peers, .. } => {
                    for p in peers {
                        self.disconnects.push((node, p));
                    }
                }
                _ => {}
            }
        }
    }

    /// Runs events until `until` (absolute ms) or the queue is empty.
    fn run_until(&mut self, until: u64) {
        while let Some(Reverse((at, _, _))) = self.queue.peek() {
            if *at > until {
                break;
            }
            let Reverse((at, _, ev)) = self.queue.pop().unwrap();
            self.now = self.now.max(at);
            let mut out = Outbox::at(self.now);
            match ev {
                Ev::Packet {
                    from,
                    to,
                    token,
                    bytes,
                } => {
                    let from_id = self.ids[from];
                    let to_id = self.ids[to];
                    if !self.links.contains(&(from, to)) {
                        let response = Response {
                            peer: to_id,
                            token,
                            result: Err("link down".into()),
                        };
                        self.nodes[from].on_response(self.now, response, &mut out);
                        self.apply(from, out);
                        continue;
                    }
                    if let Ok(p) = packet::decode(&bytes) {
                        self.ttls_seen.push((to, p.id, p.ttl));
                    }
                    let ok = self.nodes[to].on_packet(self.now, from_id, &bytes, &mut out);
                    self.apply(to, out);
                    let answer = if ok { HOP_ACCEPTED } else { HOP_REFUSED };
                    let mut out = Outbox::at(self.now);
                    let response = Response {
                        peer: to_id,
                        token,
                        result: Ok(vec![answer]),
                    };
                    self.nodes[from].on_response(self.now, response, &mut out);
                    self.apply(from, out);
                    continue;
                }
                Ev::Timer { node, timer, at } => {
                    if self.timers.get(&(node, timer)) != Some(&at) {
                        continue;
                    }
                    self.timers.remove(&(node, timer));
                    self.nodes[node].on_timer(self.now, timer_of(timer), &mut out);
                    self.apply(node, out);
                }
                Ev::Durable { node, token } => {
                    self.nodes[node].on_durable(self.now, token, Ok(()), &mut out);
                    self.apply(node, out);
                }
            }
        }
        self.now = self.now.max(until);
    }

    fn run_for(&mut self, ms: u64) {
        let until = self.now + ms;
        self.run_until(until);
    }

    fn send(&mut self, from: usize, to: Option<usize>, text: &str) -> MessageId {
        let mut out = Outbox::at(self.now);
        let request = SendRequest {
            to: to.map(|t| self.ids[t]),
            app: "text".into(),
            data: text.as_bytes().to_vec(),
        };
        let (reply, mut answer) = oneshot::channel();
        self.nodes[from].submit(self.now, reply, request, &mut out);
        self.apply(from, out);
        // The write lands within 5 ms, then the reply names the id.
        self.run_for(10);
        let id = hex::decode(answer.try_recv().unwrap().unwrap()).unwrap();
        id.try_into().unwrap()
    }

    /// The neighbours `node` itself sent message `id` to, sorted.
    fn first_hops(&self, node: usize, id: &MessageId) -> Vec<usize> {
        let mut hops: Vec<usize> = self
            .sends
            .iter()
            .filter(|(from, _, i)| *from == node && i == id)
            .map(|(_, to, _)| *to)
            .collect();
        hops.sort();
        hops
    }

    fn inbox_of(&self, node: usize) -> Vec<MessageView> {
        self.nodes[node].messages().inbox
    }

    fn sent_status(&self, node: usize, id: &MessageId) -> String {
        self.nodes[node]
            .messages()
            .sent
            .into_iter()
            .find(|m| m.id == hex_id(id))
            .unwrap()
            .status
    }
}

#[test]
fn an_8_node_line_delivers_end_to_end_with_ttl_falling_per_hop() {
    for seed in 0..8 {
        let mut sim = Sim::line(8, seed, RelayConfig::default());
        let id = sim.send(0, Some(7), "across seven hops");
        sim.run_for(10_000);
        let inbox = sim.inbox_of(7);
        assert_eq!(inbox.len(), 1, "seed {seed}");
        assert_eq!(inbox[0].text, "across seven hops");
        assert_eq!(inbox[0].hops, Some(7));
        // Node k got it with ttl 8 - k: one less per hop.
        for k in 1..8 {
            let ttls: Vec<u8> = sim
                .ttls_seen
                .iter()
                .filter(|(n, i, _)| *n == k && *i == id)
                .map(|(_, _, t)| *t)
                .collect();
            assert!(
                ttls.contains(&(8 - k as u8)),
                "seed {seed} node {k}: {ttls:?}"
            );
        }
        // Nobody in between could read it; the ack came back.
        for k in 1..7 {
            assert!(sim.inbox_of(k).is_empty());
        }
        assert_eq!(sim.sent_status(0, &id), "delivered", "seed {seed}");
        // The ack cleared the held copies on the way (acks themselves stay held until
        // they expire: their addressee might not have heard them).
        for k in 0..8 {
            assert!(!sim.nodes[k].held.contains(&id), "seed {seed} node {k}");
        }
    }
}

#[test]
fn nothing_travels_further_than_seven_hops() {
    let mut sim = Sim::line(9, 1, RelayConfig::default());
    sim.send(0, Some(8), "eight hops is one too many");
    sim.send(0, None, "broadcast");
    sim.run_for(10_000);
    assert!(sim.inbox_of(8).is_empty());
    assert_eq!(sim.inbox_of(7).len(), 1, "the broadcast reaches hop 7");
}

#[test]
fn a_broadcast_is_relayed_at_most_once_per_node() {
    for seed in 0..8 {
        // A dense random graph: many paths, many duplicates.
        let n = 12;
        let mut sim = Sim::new(n, seed, RelayConfig::default());
        let mut rng = StdRng::seed_from_u64(seed);
        for i in 1..n {
            sim.connect(i, rng.gen_range(0..i));
        }
        for _ in 0..20 {
            let (a, b) = (rng.gen_range(0..n), rng.gen_range(0..n));
            if a != b && !sim.links.contains(&(a, b)) {
                sim.connect(a, b);
            }
        }
        let id = sim.send(0, None, "to all");
        sim.run_for(10_000);
        for node in 1..n {
            assert_eq!(sim.inbox_of(node).len(), 1, "seed {seed} node {node}");
        }
        let mut per_pair = HashMap::new();
        for (from, to, i) in &sim.sends {
            if *i == id {
                *per_pair.entry((*from, *to)).or_insert(0) += 1;
            }
        }
        // Each node sends it to each neighbour at most once (relayed once, not per copy).
        assert!(
            per_pair.values().all(|c| *c == 1),
            "seed {seed}: {per_pair:?}"
        );
    }
}

#[test]
fn a_partition_keeps_messages_and_the_heal_delivers_them() {
    for seed in 0..8 {
        // 0 - 1 - 2   3 - 4 : the gap between 2 and 3 heals later.
        let mut sim = Sim::new(5, seed, RelayConfig::default());
        sim.connect(0, 1);
        sim.connect(1, 2);
        sim.connect(3, 4);
        let id = sim.send(0, Some(4), "wait for the bridge");
        sim.run_for(60_000);
        assert!(sim.inbox_of(4).is_empty());
        assert_eq!(sim.sent_status(0, &id), "pending");
        assert!(sim.nodes[2].messages().held >= 1, "seed {seed}");
        // The first node that lost its links still holds it; its neighbours too.
        sim.connect(2, 3);
        sim.run_for(10_000);
        assert_eq!(sim.inbox_of(4).len(), 1, "seed {seed}");
        assert_eq!(sim.sent_status(0, &id), "delivered", "seed {seed}");
    }
}

#[test]
fn the_origin_alone_carries_a_message_to_a_later_neighbour() {
    // A phone walks from one island into another: the origin itself is the carrier.
    let mut sim = Sim::new(3, 4, RelayConfig::default());
    sim.connect(1, 2);
    let id = sim.send(0, Some(2), "carried");
    sim.run_for(1_000);
    assert_eq!(sim.sent_status(0, &id), "pending");
    sim.connect(0, 1);
    sim.run_for(5_000);
    assert_eq!(sim.inbox_of(2).len(), 1);
    assert_eq!(sim.sent_status(0, &id), "delivered");
    // Held copies expire after the maximum age when never delivered.
    let mut lonely = Sim::new(2, 5, RelayConfig::default());
    let lone = lonely.send(0, Some(1), "never");
    assert_eq!(lonely.nodes[0].messages().held, 1);
    lonely.run_for(RelayConfig::default().max_age_ms + 2 * SWEEP_EVERY_MS);
    assert_eq!(lonely.nodes[0].messages().held, 0);
    assert_eq!(lonely.sent_status(0, &lone), "pending");
}

#[test]
fn bad_packets_are_refused_counted_and_a_flooding_neighbour_dropped() {
    let mut sim = Sim::line(2, 3, RelayConfig::default());
    let from = sim.ids[0];
    let mut out = Outbox::at(sim.now);
    for _ in 0..RelayConfig::default().strikes_to_disconnect {
        assert!(!sim.nodes[1].on_packet(sim.now, from, b"\xa2junk", &mut out));
    }
    assert!(out.effects().iter().any(
        |e| matches!(e, Effect::Disconnect { peers, reason: "relay_abuse" } if peers == &vec![from])
    ));
    let rejected = sim.nodes[1]
        .metrics()
        .rejected
        .get_or_create(&ReasonLabel {
            reason: "malformed",
        })
        .get();
    assert_eq!(
        rejected,
        u64::from(RelayConfig::default().strikes_to_disconnect)
    );

    // A packet dated far ahead, and one too old, are refused without delivery.
    let key = Keypair::generate_ed25519();
    let payload = AppPayload {
        app: "text".into(),
        data: b"x".to_vec(),
    };
    for created in [sim.now + 3_600_000, sim.now - 25 * 3_600_000] {
        let env = packet::broadcast(&key, 1, created, &payload).unwrap();
        let frame = packet::encode(3, &env).unwrap();
        let mut out = Outbox::at(sim.now);
        assert!(!sim.nodes[1].on_packet(sim.now, from, &frame, &mut out));
    }
    assert!(sim.inbox_of(1).is_empty());

    // A burst above the bucket is refused as a flood.
    let cfg = RelayConfig {
        neighbour_burst: 5.0,
        neighbour_per_second: 0.0,
        ..RelayConfig::default()
    };
    let mut sim = Sim::line(2, 3, cfg);
    let from = sim.ids[0];
    let mut accepted = 0;
    for seq in 0..10 {
        let env = packet::broadcast(&key, seq, sim.now, &payload).unwrap();
        let frame = packet::encode(3, &env).unwrap();
        let mut out = Outbox::at(sim.now);
        if sim.nodes[1].on_packet(sim.now, from, &frame, &mut out) {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 5);
}

#[test]
fn a_message_for_an_unknown_key_or_self_is_refused_at_submit() {
    let mut sim = Sim::new(1, 1, RelayConfig::default());
    let me = sim.ids[0];
    let mut out = Outbox::at(sim.now);
    let (reply, mut answer) = oneshot::channel();
    sim.nodes[0].submit(
        sim.now,
        reply,
        SendRequest {
            to: Some(me),
            app: "text".into(),
            data: vec![],
        },
        &mut out,
    );
    assert!(matches!(answer.try_recv(), Ok(Err(_))));
    assert!(out.is_empty());
    let mut out = Outbox::at(sim.now);
    let (reply, mut answer) = oneshot::channel();
    sim.nodes[0].submit(
        sim.now,
        reply,
        SendRequest {
            to: None,
            app: "text".into(),
            data: vec![0; packet::MAX_APP_DATA + 1],
        },
        &mut out,
    );
    assert!(matches!(answer.try_recv(), Ok(Err(_))));
    assert!(out.is_empty());
}

#[test]
fn held_packets_survive_a_restart_and_are_offered_again() {
    let mut sim = Sim::new(3, 9, RelayConfig::default());
    sim.connect(0, 1);
    let id = sim.send(0, Some(2), "persisted");
    sim.run_for(1_000);
    // Node 1 holds it; rebuild node 1 from what it wrote.
    let held: Vec<(String, HeldRecord)> = sim.nodes[1]
        .held
        .iter()
        .map(|(id, h)| (hex_id(id), h.record.clone()))
        .collect();
    assert_eq!(held.len(), 1);
    let key = Keypair::generate_ed25519();
    let mut fresh = relay(
        key.clone(),
        RelayConfig::default(),
        StdRng::seed_from_u64(1),
    );
    fresh.restore(sim.now, held, vec![], vec![]);
    assert!(fresh.restore_removals.is_empty());
    sim.ids[1] = key.public().to_peer_id();
    sim.nodes[1] = fresh;
    sim.cut(0, 1);
    sim.connect(1, 2);
    sim.run_for(5_000);
    assert_eq!(sim.inbox_of(2).len(), 1);
    // The ack needs a path back to the origin.
    sim.connect(0, 1);
    sim.run_for(5_000);
    assert_eq!(sim.sent_status(0, &id), "delivered");
}

#[test]
fn only_a_gateway_carries_radio_traffic_onto_the_internet() {
    for gateway in [false, true] {
        // 0 ~radio~ 1 —internet— 2 —internet— 3 ~radio~ 4, with 1 and 3 the would-be gateways.
        let mut sim = Sim::new(5, 2, RelayConfig::default());
        for g in [1, 3] {
            sim.nodes[g].config.gateway = gateway;
        }
        sim.connect_by(0, 1, LinkKind::Radio);
        sim.connect_by(1, 2, LinkKind::Internet);
        sim.connect_by(2, 3, LinkKind::Internet);
        sim.connect_by(3, 4, LinkKind::Radio);
        let id = sim.send(0, Some(4), "island to island");
        sim.send(0, None, "to everyone");
        sim.run_for(10_000);
        let reached: Vec<usize> = (1..5).filter(|n| !sim.inbox_of(*n).is_empty()).collect();
        if gateway {
            assert_eq!(reached, vec![1, 2, 3, 4]);
            assert_eq!(sim.sent_status(0, &id), "delivered");
        } else {
            // The broadcast stays on the radio side; the directed message waits.
            assert_eq!(reached, vec![1]);
            assert_eq!(sim.sent_status(0, &id), "pending");
        }
    }
}

#[test]
fn copies_of_a_delivered_message_are_acked_again_at_a_bounded_rate() {
    let sender = Keypair::generate_ed25519();
    let from = sender.public().to_peer_id();
    let recipient_key = Keypair::generate_ed25519();
    let to = recipient_key.public().to_peer_id();
    let mut recipient = relay(
        recipient_key,
        RelayConfig::default(),
        StdRng::seed_from_u64(1),
    );
    let now = 1_700_000_000_000;
    let mut out = Outbox::at(now);
    recipient.link_up(now, from, LinkKind::Radio, &mut out);
    let plaintext = packet::seal_payload(&AppPayload {
        app: "text".into(),
        data: b"did you get this?".to_vec(),
    })
    .unwrap();
    let sealed = sealed::seal(&from, &to, Zeroizing::new([9; 32]), &plaintext).unwrap();
    let frame = packet::encode(7, &packet::direct(&sender, 1, now, &to, sealed).unwrap()).unwrap();
    let acks = |out: &Outbox| {
        out.effects()
            .iter()
            .filter(|e| matches!(e, Effect::Send { peer, .. } if *peer == from))
            .count()
    };
    let mut out = Outbox::at(now);
    assert!(recipient.on_packet(now, from, &frame, &mut out));
    // No ack before the message is on disk.
    assert_eq!(acks(&out), 0);
    let token = durable_token(&out).unwrap();
    // A copy during the write is not acked, nor is the message in the inbox yet.
    let mut out = Outbox::at(now);
    assert!(recipient.on_packet(now + 1, from, &frame, &mut out));
    assert_eq!(acks(&out), 0);
    assert!(recipient.messages().inbox.is_empty());
    // The write fails: no ack, and the next copy is taken as new.
    let mut out = Outbox::at(now);
    recipient.on_durable(now + 2, token, Err("disk full".into()), &mut out);
    assert_eq!(acks(&out), 0);
    let mut out = Outbox::at(now);
    assert!(recipient.on_packet(now + 3, from, &frame, &mut out));
    let token = durable_token(&out).expect("the copy after a failed write is written again");
    let mut out = Outbox::at(now);
    recipient.on_durable(now + 5, token, Ok(()), &mut out);
    assert_eq!(acks(&out), 1);
    // The origin offers it again (it missed the ack): soon after, no second ack...
    let mut out = Outbox::at(now);
    assert!(recipient.on_packet(now + 1_000, from, &frame, &mut out));
    assert_eq!(acks(&out), 0);
    // ...later, one.
    let mut out = Outbox::at(now);
    assert!(recipient.on_packet(now + REACK_AFTER_MS + 10, from, &frame, &mut out));
    assert_eq!(acks(&out), 1);
    assert_eq!(recipient.messages().inbox.len(), 1, "delivered once");
}

#[test]
fn a_backlog_larger_than_the_in_flight_budget_drains_after_a_heal() {
    // 0 - 1   2: node 0 sends many messages to 2 while 1 and 2 are apart.
    let config = RelayConfig {
        held_per_recipient: 200,
        ..RelayConfig::default()
    };
    let mut sim = Sim::new(3, 6, config);
    sim.connect(0, 1);
    let n = 3 * MAX_IN_FLIGHT_PER_PEER;
    for i in 0..n {
        sim.send(0, Some(2), &format!("backlog {i}"));
    }
    sim.run_for(5_000);
    assert!(sim.nodes[1].messages().held >= n);
    sim.connect(1, 2);
    sim.run_for(30_000);
    assert_eq!(
        sim.inbox_of(2).len(),
        n,
        "every held message crossed after the heal"
    );
}

#[test]
fn at_low_battery_own_packets_go_over_the_radio_when_there_is_one() {
    let mut sim = Sim::new(3, 3, RelayConfig::default());
    sim.connect_by(0, 1, LinkKind::Radio);
    sim.connect_by(0, 2, LinkKind::Internet);
    sim.nodes[0].set_prefer_radio(true);
    let id = sim.send(0, None, "sparing the battery");
    assert_eq!(sim.first_hops(0, &id), vec![1]);
    sim.nodes[0].set_prefer_radio(false);
    let id = sim.send(0, None, "plugged in again");
    assert_eq!(sim.first_hops(0, &id), vec![1, 2]);
}

/// The token of the durable write among `out`'s effects.
fn durable_token(out: &Outbox) -> Option<Token> {
    out.effects().iter().find_map(|e| match e {
        Effect::PersistDurable { token, .. } => Some(*token),
        _ => None,
    })
}
