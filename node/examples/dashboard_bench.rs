//! How the dashboard copes with a large mesh: starts N in-memory nodes (200 by default),
//! waits until node 0 holds most of their telemetry, opens node 0's dashboard in headless
//! Chromium on the mesh view and measures, over a window, what the page reports about
//! itself (`window.fogmeshPerf`: time to merge a poll's data and update the table, time to
//! draw the graph) plus the page's JavaScript heap. Stops by itself.
//!
//! ```text
//! cargo run --release -p fogmesh --example dashboard_bench -- 200
//! cargo run --release -p fogmesh --example dashboard_bench -- 200 --window 30s --interval 10s
//! ```
//!
//! Needs Debian's `chromium` and `chromium-driver`. Screenshots of the run land in
//! `target/dashboard-bench/`.

#[path = "../tests/common/browser.rs"]
mod browser;

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fantoccini::Locator;
use fogmesh_node::memnet::{MemNet, Topology};

const USAGE: &str = "usage: dashboard_bench [N] [--interval DURATION] [--window DURATION]";

struct Args {
    nodes: usize,
    interval: Duration,
    window: Duration,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut parsed = Args {
        nodes: 200,
        interval: Duration::from_secs(30),
        window: Duration::from_secs(20),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{arg} needs a value; {USAGE}"))
        };
        match arg.as_str() {
            "--interval" => parsed.interval = humantime::parse_duration(&value()?)?,
            "--window" => parsed.window = humantime::parse_duration(&value()?)?,
            n => {
                parsed.nodes = n
                    .parse()
                    .with_context(|| format!("{n:?} is not N; {USAGE}"))?
            }
        }
    }
    if parsed.nodes < 2 {
        bail!("N must be at least 2; {USAGE}");
    }
    Ok(parsed)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn run(args: Args) -> anyhow::Result<()> {
    let Some(driver) = browser::start_chromedriver(Duration::from_secs(20)).await else {
        bail!("Chromium is needed (apt-get install chromium chromium-driver)");
    };
    let dir = tempfile::tempdir()?;
    println!(
        "{} in-memory nodes, telemetry every {:?}",
        args.nodes, args.interval
    );
    let started = Instant::now();
    let net = MemNet::builder(dir.path())
        .nodes(args.nodes)
        .telemetry_interval(args.interval)
        .topology(Topology::Random { links: 2, seed: 1 })
        .start()
        .await?;
    let want = args.nodes * 95 / 100;
    let known = |net: &MemNet| net.fresh_telemetry(0).len() + 1;
    let waited = Instant::now();
    while known(&net) < want {
        if waited.elapsed() > Duration::from_secs(180) {
            bail!(
                "node 0 holds {} of {} nodes' telemetry after 180 s",
                known(&net),
                args.nodes
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "node 0 knows {} nodes after {:.1} s",
        known(&net),
        started.elapsed().as_secs_f64()
    );

    let node = net.node(0).context("node 0")?;
    let profile = tempfile::tempdir()?;
    let page = browser::browser(&driver, profile.path(), (1280, 900)).await;
    page.goto(&format!(
        "http://{}/ui/#token={}",
        node.control_addr,
        node.api_token.as_str()
    ))
    .await?;
    browser::show(&page, "mesh").await;
    let shown = Instant::now();
    loop {
        let rows = browser::count(&page, "#mesh-nodes tr[data-peer]").await as usize;
        if rows >= want {
            println!(
                "the page lists {rows} nodes {:.1} s after opening",
                shown.elapsed().as_secs_f64()
            );
            break;
        }
        if shown.elapsed() > Duration::from_secs(60) {
            bail!("the page lists {rows} of {want} nodes after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Measure the steady state: forget what loading cost.
    browser::js(
        &page,
        "const p = window.fogmeshPerf; p.updates = 0; p.maxUpdateMs = 0; p.frameMs.length = 0; \
         window.__updateMs = []; return true",
    )
    .await;
    let mut updates_ms = Vec::new();
    let mut last_updates = 0u64;
    let window_started = Instant::now();
    while window_started.elapsed() < args.window {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let perf = browser::js(&page, "return window.fogmeshPerf").await;
        let updates = perf["updates"].as_u64().unwrap_or(0);
        if updates != last_updates {
            last_updates = updates;
            if let Some(ms) = perf["lastUpdateMs"].as_f64() {
                updates_ms.push(ms);
            }
        }
    }
    let perf = browser::js(&page, "return window.fogmeshPerf").await;
    let heap = browser::js(
        &page,
        "return performance.memory ? performance.memory.usedJSHeapSize : null",
    )
    .await;
    let mut frames: Vec<f64> = perf["frameMs"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
        .unwrap_or_default();
    frames.sort_by(f64::total_cmp);
    updates_ms.sort_by(f64::total_cmp);
    let rows = browser::count(&page, "#mesh-nodes tr[data-peer]").await;
    let drawn = browser::js(
        &page,
        "return document.querySelector('#mesh-graph').dataset.nodeCount",
    )
    .await;
    println!(
        "window {:?}: {} nodes listed, {} drawn",
        args.window,
        rows,
        drawn.as_str().unwrap_or("?")
    );
    println!(
        "update (merge + table): {} updates, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        perf["updates"],
        percentile(&updates_ms, 50.0),
        percentile(&updates_ms, 99.0),
        perf["maxUpdateMs"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "graph draw: last {} frames p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        frames.len(),
        percentile(&frames, 50.0),
        percentile(&frames, 99.0),
        frames.last().copied().unwrap_or(f64::NAN)
    );
    if let Some(bytes) = heap.as_f64() {
        println!("JS heap used: {:.1} MiB", bytes / (1024.0 * 1024.0));
    }
    let shots =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard-bench");
    browser::screenshot(&page, &shots, &format!("mesh-{}", args.nodes)).await;
    // Details of one node, with its history graphs.
    if let Ok(row) = page
        .find(Locator::Css("#mesh-nodes tr[data-peer]:nth-child(2)"))
        .await
    {
        let _ = row.click().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        browser::screenshot(&page, &shots, &format!("details-{}", args.nodes)).await;
    }
    page.close().await?;
    drop(driver);
    Ok(())
}
