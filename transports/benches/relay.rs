#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Relayed against direct, on loopback TCP with the node's transport stack (the secure
//! channel runs end to end inside the circuit): round-trip time, bulk throughput, and the
//! process's CPU time per MiB moved (the relay's copying shows as the difference).
//!
//! `cargo bench -p fogmesh-transports --bench relay` (figures in BENCHMARKS.md).

#[path = "../tests/relay_harness/mod.rs"]
mod relay_harness;

use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{ping, request_response, Multiaddr, PeerId, Swarm};
use relay_harness::{drive, listen, reserve, trio, Mesh, Node, NodeEvent, Trio};

const PINGS: usize = 30;
const CHUNK: usize = 1 << 20;
const CHUNKS: usize = 24;

/// CPU time of this process so far (user + system), from /proc.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

struct Figures {
    rtt_p50: Duration,
    rtt_p99: Duration,
    mib_per_s: f64,
    cpu_ms_per_mib: f64,
}

async fn measure(swarms: &mut [Swarm<Node>], to: PeerId) -> Figures {
    let mut rtts = Vec::new();
    drive(swarms, Duration::from_secs(30), |i, e| {
        if let SwarmEvent::Behaviour(NodeEvent::Ping(ping::Event {
            peer,
            result: Ok(rtt),
            ..
        })) = e
        {
            if i == 2 && *peer == to {
                rtts.push(*rtt);
            }
        }
        rtts.len() >= PINGS
    })
    .await;
    rtts.sort();
    let cpu_before = cpu_time();
    let started = Instant::now();
    let mut answered = 0usize;
    for _ in 0..CHUNKS {
        swarms[2]
            .behaviour_mut()
            .bulk
            .send_request(&to, vec![0x5a; CHUNK]);
    }
    drive(swarms, Duration::from_secs(120), |_, e| {
        if let SwarmEvent::Behaviour(NodeEvent::Bulk(request_response::Event::Message {
            message: request_response::Message::Response { response, .. },
            ..
        })) = e
        {
            assert_eq!(*response, CHUNK as u64);
            answered += 1;
        }
        answered == CHUNKS
    })
    .await;
    let took = started.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_before);
    let mib = (CHUNK * CHUNKS) as f64 / f64::from(1u32 << 20);
    Figures {
        rtt_p50: rtts[rtts.len() / 2],
        rtt_p99: rtts[(rtts.len() * 99 / 100).min(rtts.len() - 1)],
        mib_per_s: mib / took.as_secs_f64(),
        cpu_ms_per_mib: cpu.as_secs_f64() * 1000.0 / mib,
    }
}

async fn run(relayed: bool) -> Figures {
    let mesh = Mesh::new();
    let trio = trio(&mesh, mesh.member(), mesh.member()).await;
    let b_via_relay = trio.b_via_relay();
    let Trio {
        mut swarms,
        relay,
        relay_addr,
        b,
        ..
    } = trio;
    let target: Multiaddr = if relayed {
        assert!(reserve(&mut swarms, 1, &relay_addr, relay).await);
        b_via_relay
    } else {
        listen(&mut swarms, 1).await.with(Protocol::P2p(b))
    };
    swarms[2].dial(target).unwrap();
    measure(&mut swarms, b).await
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run either way.
    println!("relay: {PINGS} pings at 200 ms, then {CHUNKS} x 1 MiB requests in flight");
    println!("| path | RTT p50 | RTT p99 | throughput | CPU per MiB (whole process) |");
    println!("|---|---|---|---|---|");
    for (name, relayed) in [("direct", false), ("relayed", true)] {
        let f = run(relayed).await;
        println!(
            "| {name} | {:.2} ms | {:.2} ms | {:.0} MiB/s | {:.1} ms |",
            f.rtt_p50.as_secs_f64() * 1000.0,
            f.rtt_p99.as_secs_f64() * 1000.0,
            f.mib_per_s,
            f.cpu_ms_per_mib
        );
    }
}
