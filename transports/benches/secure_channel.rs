//! Side-by-side benchmark of the fogmesh TCP stack (TCP + Noise XK with tickets + yamux)
//! against stock libp2p (TCP + libp2p-noise XX + yamux), in one run on loopback:
//! handshakes per second, single-stream throughput, and heap held per connection.
//!
//! `cargo bench -p fogmesh-transports --bench secure_channel`
//! Knobs (environment): FOGMESH_BENCH_BYTES (default 1 GiB), FOGMESH_BENCH_HANDSHAKES per
//! round (default 300), FOGMESH_BENCH_CONNECTIONS (default 200).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fogmesh_transports::secure::{
    upgrade_transport, AdmissionPolicy, SecureChannel, SecureChannelConfig,
};
use fogmesh_transports::ticket::{self, Grant, MeshId};
use futures::future;
use futures::io::{AsyncRead, AsyncWrite};
use futures::StreamExt;
use libp2p::core::muxing::{StreamMuxerBox, StreamMuxerExt};
use libp2p::core::transport::{Boxed, DialOpts, ListenerId, PortUse, TransportEvent};
use libp2p::core::upgrade::Version;
use libp2p::core::Endpoint;
use libp2p::identity::Keypair;
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId, Transport};
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use tokio::sync::mpsc;

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

fn live_heap() -> isize {
    let s = GLOBAL.stats();
    // Reallocations are already in the two totals (growth as allocated, shrinking as
    // deallocated): adding `bytes_reallocated` would count them twice.
    s.bytes_allocated as isize - s.bytes_deallocated as isize
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stack {
    Stock,
    XkOpen,
    XkTickets,
}

impl Stack {
    fn name(&self) -> &'static str {
        match self {
            Stack::Stock => "libp2p TCP+noise(XX)+yamux",
            Stack::XkOpen => "fogmesh TCP+XK+yamux, open",
            Stack::XkTickets => "fogmesh TCP+XK+yamux, tickets",
        }
    }
}

fn tcp() -> tcp::tokio::Transport {
    tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
}

struct Mesh {
    root: Keypair,
}

impl Mesh {
    fn policy(&self, key: &Keypair) -> AdmissionPolicy {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let grant = Grant {
            roles: vec!["worker".into()],
            not_before: now - 60,
            not_after: now + 3600,
        };
        let t = ticket::issue(
            &self.root,
            MeshId::of_root(&self.root.public()),
            key.public().to_peer_id(),
            &grant,
            None,
        )
        .unwrap();
        AdmissionPolicy::closed(
            self.root.public(),
            t,
            Arc::new(RwLock::new(Default::default())),
        )
    }
}

fn transport(stack: Stack, key: &Keypair, mesh: &Mesh) -> Boxed<(PeerId, StreamMuxerBox)> {
    match stack {
        Stack::Stock => tcp()
            .upgrade(Version::V1Lazy)
            .authenticate(noise::Config::new(key).unwrap())
            .multiplex(yamux::Config::default())
            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
            .boxed(),
        Stack::XkOpen | Stack::XkTickets => {
            let policy = if stack == Stack::XkOpen {
                AdmissionPolicy::open()
            } else {
                mesh.policy(key)
            };
            // Both ends on loopback, hundreds of handshakes a second: the per-source guard
            // would throttle them (stock libp2p has none), so loopback is exempt, as in
            // testnets.
            let mut config = SecureChannelConfig::new(policy);
            config.guard.exempt_loopback = true;
            let channel = SecureChannel::new(key, config).unwrap();
            upgrade_transport(tcp(), channel, yamux::Config::default())
        }
    }
}

/// A listening transport in its own task; finished upgrades come out of `accepted`.
async fn serve(
    mut listener: Boxed<(PeerId, StreamMuxerBox)>,
    peer: PeerId,
) -> (Multiaddr, mpsc::UnboundedReceiver<StreamMuxerBox>) {
    listener
        .listen_on(ListenerId::next(), "/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut addr_tx = Some(addr_tx);
        while let Some(event) = listener.next().await {
            match event {
                TransportEvent::NewAddress { listen_addr, .. } => {
                    if let Some(a) = addr_tx.take() {
                        let _ = a.send(listen_addr);
                    }
                }
                TransportEvent::Incoming { upgrade, .. } => {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        if let Ok((_, muxer)) = upgrade.await {
                            let _ = tx.send(muxer);
                        }
                    });
                }
                _ => {}
            }
        }
    });
    let addr: Multiaddr = addr_rx.await.unwrap();
    (addr.with_p2p(peer).unwrap(), rx)
}

const DIAL: DialOpts = DialOpts {
    role: Endpoint::Dialer,
    port_use: PortUse::New,
};

/// Drives `muxer` until it has nothing to do; false if the connection failed.
fn drive(muxer: &mut StreamMuxerBox, cx: &mut Context<'_>) -> bool {
    loop {
        match muxer.poll_unpin(cx) {
            Poll::Pending => return true,
            Poll::Ready(Ok(_)) => continue,
            Poll::Ready(Err(_)) => return false,
        }
    }
}

/// Dials and returns both ends once both upgrades finished. The dialer negotiates yamux
/// lazily (its proposal leaves with its first write, as in a swarm), so it opens a stream and
/// writes a byte to let the listener finish.
async fn connect(
    client: &mut Boxed<(PeerId, StreamMuxerBox)>,
    addr: &Multiaddr,
    accepted: &mut mpsc::UnboundedReceiver<StreamMuxerBox>,
) -> (StreamMuxerBox, StreamMuxerBox) {
    let (_, mut muxer) = client.dial(addr.clone(), DIAL).unwrap().await.unwrap();
    let mut stream = None;
    let (mut written, mut closed) = (false, false);
    let mut server_side = None;
    {
        let mut next = std::pin::pin!(accepted.recv());
        future::poll_fn(|cx| {
            if server_side.is_none() {
                if let Poll::Ready(accepted) = next.as_mut().poll(cx) {
                    server_side = accepted;
                }
            }
            assert!(drive(&mut muxer, cx), "connection failed");
            if stream.is_none() {
                if let Poll::Ready(Ok(s)) = muxer.poll_outbound_unpin(cx) {
                    stream = Some(s);
                }
            }
            if let Some(s) = &mut stream {
                if !written {
                    if let Poll::Ready(Ok(_)) = Pin::new(&mut *s).poll_write(cx, b"x") {
                        written = true;
                    }
                }
                if written && !closed {
                    closed = Pin::new(s).poll_close(cx).is_ready();
                }
            }
            if closed && server_side.is_some() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
    (muxer, server_side.expect("listener upgrade finished"))
}

/// Keeps `muxer` going until `work` is done (yamux sends only while its connection is polled).
async fn drive_until<T>(muxer: &mut StreamMuxerBox, work: impl Future<Output = T>) -> T {
    let mut work = std::pin::pin!(work);
    future::poll_fn(|cx| {
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        drive(muxer, cx);
        Poll::Pending
    })
    .await
}

/// Sends `bytes` on a new stream of `client` and waits until `received` says they arrived.
async fn transfer<T>(
    client: &mut StreamMuxerBox,
    bytes: u64,
    received: impl Future<Output = T>,
) -> T {
    pump(client, bytes).await;
    drive_until(client, received).await
}

/// Opens a stream on `muxer` and writes `bytes` into it, then closes it.
async fn pump(muxer: &mut StreamMuxerBox, bytes: u64) {
    let chunk = vec![0xa5u8; 256 * 1024];
    let mut stream = None;
    let mut sent = 0u64;
    future::poll_fn(|cx| loop {
        assert!(drive(muxer, cx), "connection failed while sending");
        let s = match &mut stream {
            Some(s) => s,
            None => match muxer.poll_outbound_unpin(cx) {
                Poll::Ready(Ok(s)) => stream.insert(s),
                Poll::Ready(Err(e)) => panic!("cannot open a stream: {e}"),
                Poll::Pending => return Poll::Pending,
            },
        };
        if sent < bytes {
            let n = (bytes - sent).min(chunk.len() as u64) as usize;
            match Pin::new(s).poll_write(cx, &chunk[..n]) {
                Poll::Ready(Ok(written)) => sent += written as u64,
                Poll::Ready(Err(e)) => panic!("write failed: {e}"),
                Poll::Pending => return Poll::Pending,
            }
            continue;
        }
        match Pin::new(s).poll_close(cx) {
            Poll::Ready(_) => return Poll::Ready(()),
            Poll::Pending => return Poll::Pending,
        }
    })
    .await
}

/// Reads inbound streams on `muxer` to their ends, skipping the one-byte stream `connect`
/// opened; returns the byte count of the first real one.
async fn sink(muxer: &mut StreamMuxerBox) -> u64 {
    let mut buf = vec![0u8; 256 * 1024];
    let mut stream = None;
    let mut total = 0u64;
    future::poll_fn(|cx| loop {
        if !drive(muxer, cx) {
            return Poll::Ready(total);
        }
        let s = match &mut stream {
            Some(s) => s,
            None => match muxer.poll_inbound_unpin(cx) {
                Poll::Ready(Ok(s)) => stream.insert(s),
                Poll::Ready(Err(_)) => return Poll::Ready(total),
                Poll::Pending => return Poll::Pending,
            },
        };
        match Pin::new(s).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) if total <= 1 => {
                stream = None;
                total = 0;
            }
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(total),
            Poll::Ready(Ok(n)) => total += n as u64,
            Poll::Pending => return Poll::Pending,
        }
    })
    .await
}

/// CPU time this process has used (user + system), from /proc (Linux; zero elsewhere).
fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let ticks = field(11) + field(12);
    Duration::from_millis(ticks * 10)
}

/// One stack's client and listener.
struct Setup {
    stack: Stack,
    client: Boxed<(PeerId, StreamMuxerBox)>,
    addr: Multiaddr,
    accepted: mpsc::UnboundedReceiver<StreamMuxerBox>,
}

impl Setup {
    async fn new(stack: Stack) -> Setup {
        let mesh = Mesh {
            root: Keypair::generate_ed25519(),
        };
        let (server_key, client_key) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let server_peer = server_key.public().to_peer_id();
        let (addr, accepted) = serve(transport(stack, &server_key, &mesh), server_peer).await;
        let client = transport(stack, &client_key, &mesh);
        Setup {
            stack,
            client,
            addr,
            accepted,
        }
    }

    async fn connect(&mut self) -> (StreamMuxerBox, StreamMuxerBox) {
        connect(&mut self.client, &self.addr, &mut self.accepted).await
    }

    /// `n` handshakes back to back: (handshakes per second, CPU time per handshake).
    async fn handshakes(&mut self, n: u64) -> (f64, Duration) {
        let cpu = cpu_time();
        let started = Instant::now();
        for _ in 0..n {
            drop(self.connect().await);
        }
        let rate = n as f64 / started.elapsed().as_secs_f64();
        (rate, (cpu_time() - cpu) / n as u32)
    }

    /// MB/s of `bytes` over one stream; each end runs on its own task (2 worker threads).
    async fn throughput(&mut self, bytes: u64) -> f64 {
        let (mut client_muxer, mut server_muxer) = self.connect().await;
        let started = Instant::now();
        let receiver = tokio::spawn(async move { sink(&mut server_muxer).await });
        let received = transfer(&mut client_muxer, bytes, receiver).await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(
            received,
            bytes,
            "{}: not everything arrived",
            self.stack.name()
        );
        bytes as f64 / 1e6 / elapsed.as_secs_f64()
    }

    /// Heap bytes per connection end: idle after the handshake, then after some traffic.
    async fn heap(&mut self, connections: u64) -> (f64, f64) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = live_heap();
        let mut open = Vec::with_capacity(connections as usize);
        for _ in 0..connections {
            open.push(self.connect().await);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let idle = live_heap() - before;
        for (c, s) in &mut open {
            // 100 KB through each: buffers grow to what real traffic makes them.
            let sent = transfer(c, 100_000, sink(s)).await;
            assert_eq!(sent, 100_000);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let used = live_heap() - before;
        let ends = 2.0 * connections as f64;
        (idle as f64 / ends, used as f64 / ends)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

const STACKS: [Stack; 3] = [Stack::Stock, Stack::XkOpen, Stack::XkTickets];
const ROUNDS: usize = 5;

fn main() {
    let bytes = env_or("FOGMESH_BENCH_BYTES", 1 << 30);
    let handshakes = env_or("FOGMESH_BENCH_HANDSHAKES", 300);
    let connections = env_or("FOGMESH_BENCH_CONNECTIONS", 200);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut setups = Vec::new();
        for stack in STACKS {
            let mut setup = Setup::new(stack).await;
            setup.handshakes(20).await;
            setups.push(setup);
        }
        // Rounds interleave the stacks, so a noisy moment hurts all of them alike.
        let mut rates = vec![Vec::new(); STACKS.len()];
        let mut cpu = vec![Vec::new(); STACKS.len()];
        let mut speeds = vec![Vec::new(); STACKS.len()];
        for round in 0..ROUNDS {
            for (i, setup) in setups.iter_mut().enumerate() {
                let (rate, per) = setup.handshakes(handshakes).await;
                rates[i].push(rate);
                cpu[i].push(per.as_secs_f64() * 1e6);
                speeds[i].push(setup.throughput(bytes).await);
            }
            eprintln!("  round {} of {ROUNDS} done", round + 1);
        }
        println!(
            "secure channel benchmark: {ROUNDS} rounds of {handshakes} sequential handshakes and {:.0} MiB on one stream, {connections} open connections (medians)",
            bytes as f64 / 1048576.0
        );
        println!(
            "{:<32} {:>13} {:>16} {:>10} {:>17} {:>17}",
            "stack", "handshakes/s", "CPU/handshake", "MB/s", "idle heap/end", "used heap/end"
        );
        for (i, setup) in setups.iter_mut().enumerate() {
            let (idle, used) = setup.heap(connections).await;
            println!(
                "{:<32} {:>13.0} {:>13.0} µs {:>10.0} {:>13.1} KiB {:>13.1} KiB",
                setup.stack.name(),
                median(rates[i].clone()),
                median(cpu[i].clone()),
                median(speeds[i].clone()),
                idle / 1024.0,
                used / 1024.0
            );
        }
    });
}
