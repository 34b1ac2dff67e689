//! How many nodes the in-memory network holds in one process: starts N nodes, waits for full
//! telemetry convergence (every node holds fresh telemetry from every other), and reports the
//! time it took and the resident memory per node. Stops by itself.
//!
//! `fogmesh testnet bench --in-memory` is the supported measurement (docs/testnet.md); this
//! example stays for digging into one run: thread counts, missing pairs, rejection reasons.
//!
//! ```text
//! cargo run --release -p fogmesh --example memnet_scale -- 200
//! cargo run --release -p fogmesh --example memnet_scale -- 500 --timeout 60s
//! cargo run --release -p fogmesh --example memnet_scale -- 200 --target-peers 12 --max-connections 16
//! cargo run --release -p fogmesh --example memnet_scale -- 100 --upkeep 60s --settle 60s
//! ```
//!
//! `--upkeep WINDOW` then measures the steady state over that window, after `--settle` (60 s by
//! default: start-up publishes several records a node as the first device passes come in):
//! what each node spends on
//! keeping the mesh up (telemetry, membership, cluster announcements, revocations, the
//! store's anti-entropy, pings) when nobody uses it — bytes per second through its
//! connections (in and out, from `libp2p_bandwidth_bytes_total`), CPU (this process's, per
//! node) and telemetry records accepted per second.
//!
//! Nodes run the node's default settings (telemetry every 30 s, 24 target peers, 128
//! connections at most) unless a flag says otherwise; each dials `--links` random earlier
//! nodes. Gives up after `--timeout` (60 s by default) and says how far it got: nodes
//! converged, pairs fresh, which nodes miss most, and what the network did (publications,
//! connections). `RUST_LOG=info` shows the nodes' logs (hundreds of nodes make a lot).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fogmesh_node::config::{ConfigLayer, Settings};
use fogmesh_node::memnet::{MemNet, Topology};

struct Args {
    nodes: usize,
    interval: Option<Duration>,
    links: usize,
    target_peers: Option<u32>,
    max_connections: Option<u32>,
    seed: u64,
    timeout: Duration,
    upkeep: Option<Duration>,
    settle: Duration,
}

const USAGE: &str = "usage: memnet_scale N [--interval DURATION] [--links K] \
     [--target-peers P] [--max-connections C] [--seed S] [--timeout DURATION] [--upkeep WINDOW [--settle DURATION]]";

fn parse_args() -> anyhow::Result<Args> {
    let mut args = std::env::args().skip(1);
    let mut parsed = Args {
        nodes: 0,
        interval: None,
        links: 2,
        target_peers: None,
        max_connections: None,
        seed: 1,
        timeout: Duration::from_secs(60),
        upkeep: None,
        settle: Duration::from_secs(60),
    };
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{arg} needs a value; {USAGE}"))
        };
        match arg.as_str() {
            "--interval" => parsed.interval = Some(humantime::parse_duration(&value()?)?),
            "--links" => parsed.links = value()?.parse()?,
            "--target-peers" => parsed.target_peers = Some(value()?.parse()?),
            "--max-connections" => parsed.max_connections = Some(value()?.parse()?),
            "--seed" => parsed.seed = value()?.parse()?,
            "--timeout" => parsed.timeout = humantime::parse_duration(&value()?)?,
            "--upkeep" => parsed.upkeep = Some(humantime::parse_duration(&value()?)?),
            "--settle" => parsed.settle = humantime::parse_duration(&value()?)?,
            n if parsed.nodes == 0 => {
                parsed.nodes = n
                    .parse()
                    .with_context(|| format!("{n:?} is not N; {USAGE}"))?
            }
            other => bail!("unexpected argument {other:?}; {USAGE}"),
        }
    }
    if parsed.nodes < 2 {
        bail!("N must be at least 2; {USAGE}");
    }
    Ok(parsed)
}

/// A `/proc/self/status` field in kB (VmRSS, Threads, ...), Linux only.
fn proc_status(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Threads of this process by name (sled's flushers, tokio's pools, libp2p's timer, ...).
fn threads_by_name() -> Vec<(String, usize)> {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            // Numbered pool threads (sled-io-3) count under one name.
            let name = name.trim().trim_end_matches(|c: char| c.is_ascii_digit());
            *counts.entry(name.to_owned()).or_default() += 1;
        }
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    counts
}

/// Sums over every node's status view: what the network did, for telling overload from a
/// network that does not form.
fn totals(net: &MemNet) -> String {
    let (mut published, mut accepted, mut rejected, mut admitted, mut refused) = (0, 0, 0, 0, 0);
    let (mut peers, mut max_peers) = (0, 0);
    let mut by_reason = std::collections::BTreeMap::<&str, u64>::new();
    for i in 0..net.len() {
        let Some(s) = net.status(i) else { continue };
        published += s.telemetry_published;
        accepted += s.telemetry_accepted;
        let r = &s.telemetry_rejected;
        rejected += r.total();
        for (reason, n) in [
            ("replayed", r.replayed),
            ("stale", r.stale),
            ("from_future", r.from_future),
            (
                "other",
                r.malformed + r.oversized + r.bad_signature + r.sender_mismatch,
            ),
        ] {
            *by_reason.entry(reason).or_default() += n;
        }
        let h = &s.admission.handshakes;
        admitted += h.admitted_inbound + h.admitted_outbound;
        refused += h.refused.values().sum::<u64>();
        peers += s.connected_peers;
        max_peers = max_peers.max(s.connected_peers);
    }
    let rejections = by_reason
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "published {published}, accepted {accepted}, rejected {rejected} ({rejections}); \
         connections opened {} \
         (refused {refused}); peers {:.1} a node (max {max_peers})",
        admitted / 2,
        peers as f64 / net.len().max(1) as f64
    )
}

/// Whether the missing pairs are a few origins nobody hears or a few holders who hear
/// nobody, or spread thin.
fn missing_summary(net: &MemNet) -> String {
    let missing = net.missing_pairs();
    let mut by_origin = std::collections::HashMap::<usize, usize>::new();
    let mut by_holder = std::collections::HashMap::<usize, usize>::new();
    for (h, o) in &missing {
        *by_origin.entry(*o).or_default() += 1;
        *by_holder.entry(*h).or_default() += 1;
    }
    let top = |counts: std::collections::HashMap<usize, usize>| {
        let mut v: Vec<_> = counts.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(5);
        v
    };
    format!(
        "missing pairs: {}; most missed origins (node, holders missing it) {:?}; \
         holders missing most (node, origins missing) {:?}",
        missing.len(),
        top(by_origin),
        top(by_holder)
    )
}

/// This process's CPU time so far (user + system), from `/proc/self/stat`, Linux only.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Clock ticks are 100 a second on every Linux this runs on.
    Some(Duration::from_millis(ticks * 10))
}

/// What each node spends on upkeep over `window` of an idle mesh.
async fn upkeep(net: &MemNet, window: Duration) {
    let before = net.traffic();
    let cpu_0 = cpu_time();
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let seconds = t0.elapsed().as_secs_f64();
    let after = net.traffic();
    let cpu_1 = cpu_time();
    let nodes = net.len().max(1) as f64;
    let cpu_pct = match (cpu_0, cpu_1) {
        (Some(a), Some(b)) => 100.0 * b.saturating_sub(a).as_secs_f64() / seconds / nodes,
        _ => f64::NAN,
    };
    println!(
        "UPKEEP over {seconds:.0} s: {:.0} bytes/s a node (in + out), {:.2} % of a core a node,          {:.1} telemetry records accepted/s a node",
        (after.bytes - before.bytes) / seconds / nodes,
        cpu_pct,
        after.accepted.saturating_sub(before.accepted) as f64 / seconds / nodes,
    );
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    // The node's own default unless told otherwise: every record reaches every node, so the
    // work per interval grows as N², and the in-memory network's fast test interval would
    // measure an overload no deployment runs.
    let interval = args
        .interval
        .unwrap_or_else(|| Settings::resolve(ConfigLayer::default()).telemetry_interval);
    let dir = tempfile::tempdir()?;
    let rss_before = proc_status("VmRSS").unwrap_or(0);
    let threads_before = proc_status("Threads").unwrap_or(0);
    println!(
        "{} nodes, telemetry every {interval:?}, {} random links each, timeout {:?}",
        args.nodes, args.links, args.timeout
    );

    let started = Instant::now();
    let (target_peers, max_connections) = (args.target_peers, args.max_connections);
    let net = MemNet::builder(dir.path())
        .nodes(args.nodes)
        .settings(move |_, s| {
            if let Some(target) = target_peers {
                s.target_peers = target;
            }
            if let Some(max) = max_connections {
                s.max_connections = max;
            }
        })
        .telemetry_interval(interval)
        .topology(Topology::Random {
            links: args.links,
            seed: args.seed,
        })
        .start()
        .await?;
    let start_took = started.elapsed();
    let rss_started = proc_status("VmRSS").unwrap_or(0);
    println!(
        "started in {:.1} s ({:.1} ms a node); RSS {:.0} MiB, {} threads",
        start_took.as_secs_f64(),
        start_took.as_secs_f64() * 1000.0 / args.nodes as f64,
        mib(rss_started),
        proc_status("Threads").unwrap_or(0),
    );

    // A line every 5 s while waiting, so a run that does not converge shows how it went.
    let pairs = args.nodes * (args.nodes - 1);
    let waiting = Instant::now();
    let outcome = loop {
        let left = args.timeout.saturating_sub(waiting.elapsed());
        match net.wait_converged(left.min(Duration::from_secs(5))).await {
            Ok(_) => break Ok(waiting.elapsed()),
            Err(_) if left <= Duration::from_secs(5) => break Err(waiting.elapsed()),
            Err(_) => println!(
                "  {:5.1} s: {}/{} nodes converged, {:.1} % of pairs fresh; {}",
                started.elapsed().as_secs_f64(),
                net.converged_nodes(),
                args.nodes,
                100.0 * net.fresh_pairs() as f64 / pairs as f64,
                totals(&net)
            ),
        }
    };
    let total = started.elapsed();
    let rss_after = proc_status("VmRSS").unwrap_or(0);
    let threads_after = proc_status("Threads").unwrap_or(0);
    let per_node_kb = rss_after.saturating_sub(rss_before) as f64 / args.nodes as f64;
    match outcome {
        Ok(took) => println!(
            "CONVERGED: {} nodes in {:.1} s from the first start ({:.1} s after the last)",
            args.nodes,
            total.as_secs_f64(),
            took.as_secs_f64()
        ),
        Err(waited) => println!(
            "NOT CONVERGED within {:.1} s: {}/{} nodes hold fresh telemetry from all others; \
             {}/{} pairs ({:.1} %)",
            waited.as_secs_f64(),
            net.converged_nodes(),
            args.nodes,
            net.fresh_pairs(),
            pairs,
            100.0 * net.fresh_pairs() as f64 / pairs as f64
        ),
    }
    if outcome.is_err() {
        println!("{}", missing_summary(&net));
    }
    println!("{}", totals(&net));
    if let Some(window) = args.upkeep {
        tokio::time::sleep(args.settle).await;
        upkeep(&net, window).await;
    }
    println!("threads: {:?}", threads_by_name());
    println!(
        "RSS {:.0} MiB before, {:.0} MiB after: {:.2} MiB a node; threads {threads_before} -> {threads_after}",
        mib(rss_before),
        mib(rss_after),
        per_node_kb / 1024.0,
    );
    let stopping = Instant::now();
    if tokio::time::timeout(Duration::from_secs(60), net.shutdown())
        .await
        .is_err()
    {
        println!("shutdown took over 60 s; exiting anyway");
    } else {
        println!("stopped in {:.1} s", stopping.elapsed().as_secs_f64());
    }
    Ok(())
}
