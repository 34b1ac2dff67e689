//! The ARQ state machine between two ends over a simulated lossy, reordering channel with a
//! virtual clock: deterministic for a seed, so a failing case replays exactly.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use proptest::prelude::*;

use super::*;

/// A small deterministic generator (xorshift64*), enough for loss and delay decisions.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

struct Channel {
    loss: f64,
    latency: Duration,
    jitter: Duration,
}

struct Outcome {
    received: [Vec<u8>; 2],
    states: [LinkState; 2],
    stats: [ArqStats; 2],
    elapsed: Duration,
}

/// A datagram on the wire: delivery time, tiebreak, destination, bytes.
type InTransit = (Instant, u64, usize, Vec<u8>);

struct End {
    arq: Arq,
    to_send: Vec<u8>,
    written: usize,
    received: Vec<u8>,
    ended: bool,
}

/// Runs both ends until both streams ended and closed, a link died, or `limit` of virtual
/// time passed.
fn run(
    config: ArqConfig,
    payloads: [Vec<u8>; 2],
    channel: &Channel,
    seed: u64,
    read_chunk: usize,
    limit: Duration,
) -> Outcome {
    let start = Instant::now();
    let mut now = start;
    let mut rng = Rng::new(seed);
    let [p0, p1] = payloads;
    let mut ends = [p0, p1].map(|to_send| End {
        arq: Arq::new(config.clone(), start),
        to_send,
        written: 0,
        received: Vec::new(),
        ended: false,
    });
    let mut wire: BinaryHeap<Reverse<InTransit>> = BinaryHeap::new();
    let mut counter = 0u64;
    let mut buf = vec![0u8; read_chunk.max(1)];
    loop {
        for end in ends.iter_mut() {
            if end.written < end.to_send.len() {
                end.written += end.arq.write(&end.to_send[end.written..]);
            }
            if end.written == end.to_send.len() {
                end.arq.finish();
            }
            loop {
                match end.arq.read(&mut buf) {
                    Read::Data(n) => end.received.extend_from_slice(&buf[..n]),
                    Read::End => {
                        end.ended = true;
                        break;
                    }
                    Read::Pending | Read::Dead(_) => break,
                }
            }
        }
        for (side, end) in ends.iter_mut().enumerate() {
            while let Some(datagram) = end.arq.poll_transmit(now) {
                assert!(
                    datagram.len() <= config.max_datagram,
                    "datagram over the MTU"
                );
                if rng.chance(channel.loss) {
                    continue;
                }
                let jitter = rng.below(channel.jitter.as_micros() as u64 + 1);
                let at = now + channel.latency + Duration::from_micros(jitter);
                counter += 1;
                wire.push(Reverse((at, counter, 1 - side, datagram)));
            }
        }
        let done = ends.iter().all(|e| e.arq.state() != LinkState::Open)
            || ends
                .iter()
                .any(|e| matches!(e.arq.state(), LinkState::Dead(_)));
        if done || now.duration_since(start) > limit {
            break;
        }
        let next_wire = wire.peek().map(|Reverse((at, ..))| *at);
        let next_timer = ends.iter().filter_map(|e| e.arq.poll_timeout()).min();
        let Some(next) = [next_wire, next_timer].into_iter().flatten().min() else {
            break;
        };
        now = now.max(next);
        while wire.peek().is_some_and(|Reverse((at, ..))| *at <= now) {
            let Some(Reverse((_, _, to, datagram))) = wire.pop() else {
                break;
            };
            let _ = ends[to].arq.handle_datagram(now, &datagram);
        }
        for end in ends.iter_mut() {
            end.arq.handle_timeout(now);
        }
    }
    let [e0, e1] = ends;
    Outcome {
        states: [e0.arq.state(), e1.arq.state()],
        stats: [e0.arq.stats(), e1.arq.stats()],
        received: [e0.received, e1.received],
        elapsed: now.duration_since(start),
    }
}

fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed ^ 0xABCD);
    (0..len).map(|_| rng.next() as u8).collect()
}

fn config_for(mtu: usize) -> ArqConfig {
    ArqConfig {
        max_datagram: mtu - 3,
        ..ArqConfig::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Any payload over any MTU from 23 to 517, with up to 20 % loss and reordering, arrives
    /// intact and in order in both directions, or the link is declared dead.
    #[test]
    fn any_payload_arrives_intact_in_order_or_the_link_is_dead(
        mtu in 23usize..=517,
        loss in 0.0f64..=0.2,
        jitter_ms in 0u64..40,
        len_a in 0usize..24_000,
        len_b in 0usize..6_000,
        read_chunk in 1usize..5_000,
        seed in any::<u64>(),
    ) {
        let channel = Channel {
            loss,
            latency: Duration::from_millis(15),
            jitter: Duration::from_millis(jitter_ms),
        };
        let sent = [bytes(len_a, seed), bytes(len_b, seed + 1)];
        let out = run(config_for(mtu), sent.clone(), &channel, seed, read_chunk, Duration::from_secs(3600));
        let dead = out.states.iter().any(|s| matches!(s, LinkState::Dead(_)));
        if !dead {
            prop_assert_eq!(out.states, [LinkState::Closed, LinkState::Closed]);
            prop_assert!(out.received[1] == sent[0], "a→b differs ({} of {} bytes)", out.received[1].len(), sent[0].len());
            prop_assert!(out.received[0] == sent[1], "b→a differs");
        } else {
            // Dead is allowed, but what did arrive is a prefix: never reordered or corrupt.
            prop_assert!(sent[0].starts_with(&out.received[1]));
            prop_assert!(sent[1].starts_with(&out.received[0]));
        }
    }
}

#[test]
fn a_clean_link_delivers_without_retransmissions() {
    let channel = Channel {
        loss: 0.0,
        latency: Duration::from_millis(30),
        jitter: Duration::ZERO,
    };
    let sent = [bytes(100_000, 1), Vec::new()];
    let out = run(
        config_for(185),
        sent.clone(),
        &channel,
        1,
        4096,
        Duration::from_secs(600),
    );
    assert_eq!(out.states, [LinkState::Closed, LinkState::Closed]);
    assert!(out.received[1] == sent[0]);
    assert_eq!(out.stats[0].retransmissions, 0);
    // 100 kB in frames of 177 bytes is 565 data frames and a fin.
    assert_eq!(out.stats[0].data_frames_sent, 565);
}

#[test]
fn lossy_links_recover_every_frame() {
    let channel = Channel {
        loss: 0.2,
        latency: Duration::from_millis(20),
        jitter: Duration::from_millis(20),
    };
    let sent = [bytes(50_000, 2), bytes(10_000, 3)];
    let out = run(
        config_for(247),
        sent.clone(),
        &channel,
        7,
        1000,
        Duration::from_secs(600),
    );
    assert_eq!(out.states, [LinkState::Closed, LinkState::Closed]);
    assert!(out.received[1] == sent[0]);
    assert!(out.received[0] == sent[1]);
    assert!(out.stats[0].retransmissions > 0);
}

#[test]
fn a_link_that_goes_silent_is_dead_within_the_bound() {
    let channel = Channel {
        loss: 1.0,
        latency: Duration::from_millis(10),
        jitter: Duration::ZERO,
    };
    let config = config_for(185);
    let dead_after = config.dead_after;
    let out = run(
        config,
        [bytes(1000, 4), Vec::new()],
        &channel,
        3,
        100,
        Duration::from_secs(600),
    );
    assert!(
        matches!(out.states[0], LinkState::Dead(_)),
        "{:?}",
        out.states
    );
    assert!(
        out.elapsed <= dead_after + Duration::from_secs(1),
        "{:?}",
        out.elapsed
    );
    assert!(out.received[1].is_empty());
}

/// One step of a lossless, instant link: everything each end has to send is delivered,
/// then 20 ms pass. Returns the new time.
fn exchange(a: &mut Arq, b: &mut Arq, now: Instant) -> Instant {
    while let Some(d) = a.poll_transmit(now) {
        b.handle_datagram(now, &d).unwrap();
    }
    while let Some(d) = b.poll_transmit(now) {
        a.handle_datagram(now, &d).unwrap();
    }
    let now = now + Duration::from_millis(20);
    a.handle_timeout(now);
    b.handle_timeout(now);
    now
}

#[test]
fn a_slow_reader_holds_the_writer_back_without_loss() {
    // The receiver never reads: the writer fills the receiver's buffer and its own, then
    // stops, and no byte is dropped or declared lost; probes keep the link alive.
    let start = Instant::now();
    let config = ArqConfig {
        recv_buffer: 4096,
        send_buffer: 4096,
        ..config_for(185)
    };
    let mut a = Arq::new(config.clone(), start);
    let mut b = Arq::new(config, start);
    let data = bytes(100_000, 5);
    let mut written = 0;
    let mut now = start;
    for _ in 0..2000 {
        written += a.write(&data[written..]);
        now = exchange(&mut a, &mut b, now);
    }
    assert_eq!(a.state(), LinkState::Open);
    assert_eq!(b.state(), LinkState::Open);
    // The receiver's buffer is full to within one frame, never beyond.
    assert!(
        b.readable() <= 4096 && b.readable() > 4096 - 177,
        "{}",
        b.readable()
    );
    assert_eq!(written, b.readable() + a.unacknowledged());
    assert!(a.writable() == 0);
    // Now the reader drains: the rest flows.
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    for _ in 0..20_000 {
        if written < data.len() {
            written += a.write(&data[written..]);
        } else {
            a.finish();
        }
        let mut ended = false;
        loop {
            match b.read(&mut buf) {
                Read::Data(n) => got.extend_from_slice(&buf[..n]),
                Read::End => {
                    ended = true;
                    break;
                }
                _ => break,
            }
        }
        if ended {
            break;
        }
        now = exchange(&mut a, &mut b, now);
    }
    assert!(got == data, "{} of {} bytes", got.len(), data.len());
}

#[test]
fn garbage_is_counted_and_changes_nothing() {
    let start = Instant::now();
    let mut a = Arq::new(config_for(185), start);
    assert!(a.handle_datagram(start, &[]).is_err());
    assert!(a.handle_datagram(start, &[0x77, 1, 2]).is_err());
    // An ack of frames never sent.
    a.handle_datagram(
        start,
        &Frame::Ack {
            next: 500,
            window: 10,
            sack: Vec::new(),
        }
        .encode(),
    )
    .unwrap();
    // Data far beyond the window.
    a.handle_datagram(
        start,
        &Frame::Data {
            seq: 1_000_000,
            payload: vec![1],
        }
        .encode(),
    )
    .unwrap();
    let stats = a.stats();
    assert_eq!(stats.malformed_received, 3);
    assert_eq!(stats.beyond_window_received, 1);
    assert_eq!(a.state(), LinkState::Open);
    assert_eq!(a.readable(), 0);
}

#[test]
fn the_power_policy_chunk_size_bounds_frames() {
    let config = ArqConfig {
        max_payload: Some(64),
        ..config_for(517)
    };
    assert_eq!(config.payload_per_frame(), 64);
    let start = Instant::now();
    let mut a = Arq::new(config, start);
    a.write(&[7u8; 1000]);
    let first = a.poll_transmit(start).unwrap();
    assert_eq!(first.len(), 64 + 5);
}

#[test]
fn a_reset_from_the_peer_kills_the_link_and_reads_say_so() {
    let start = Instant::now();
    let mut a = Arq::new(config_for(185), start);
    let mut b = Arq::new(config_for(185), start);
    b.abort();
    let reset = b.poll_transmit(start).unwrap();
    a.handle_datagram(start, &reset).unwrap();
    assert_eq!(
        a.read(&mut [0u8; 8]),
        Read::Dead(DeadReason::ResetByPeer(ResetReason::Aborted))
    );
}
