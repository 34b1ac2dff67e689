#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Heap held per BLE link: N links on the simulated radio, each with a reliable stream at
//! both ends, measured idle and after each link carried 64 KiB both ways. Stops by itself.
//!
//! ```text
//! cargo run --release -p fogmesh-transports --example ble_link_memory -- [links=64]
//! ```

use fogmesh_transports::ble::arq::ArqConfig;
use fogmesh_transports::ble::driver::{BleDriver, DeviceId};
use fogmesh_transports::ble::sim::{SimConfig, SimRadio};
use fogmesh_transports::ble::stream::BleStream;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

fn live_heap() -> isize {
    let s = GLOBAL.stats();
    s.bytes_allocated as isize - s.bytes_deallocated as isize
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let links: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(64);
    let radio = SimRadio::new(SimConfig {
        max_links: 2,
        ..SimConfig::default()
    });
    let before = live_heap();
    let mut pairs = Vec::new();
    for i in 0..links {
        let a = DeviceId((2 * i as u64).to_be_bytes());
        let b = DeviceId((2 * i as u64 + 1).to_be_bytes());
        let da = radio.add_device(a, (100.0 * i as f64, 0.0));
        let db = radio.add_device(b, (100.0 * i as f64 + 1.0, 0.0));
        let mut accepted = db.listen().unwrap();
        let out = da.connect(b).await.unwrap();
        let inn = accepted.recv().await.unwrap();
        pairs.push((
            BleStream::spawn(out, ArqConfig::default()),
            BleStream::spawn(inn, ArqConfig::default()),
            accepted,
        ));
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let idle = live_heap() - before;
    let block = vec![7u8; 64 * 1024];
    for (out, inn, _) in &mut pairs {
        let mut got = vec![0u8; block.len()];
        let (w, r) = tokio::join!(out.write_all(&block), inn.read_exact(&mut got));
        w.unwrap();
        r.unwrap();
        let (w, r) = tokio::join!(inn.write_all(&block), out.read_exact(&mut got));
        w.unwrap();
        r.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let used = live_heap() - before;
    println!(
        "{links} links (a stream at each end): {:.1} KiB of heap per link idle, {:.1} KiB after 64 KiB each way",
        idle as f64 / links as f64 / 1024.0,
        used as f64 / links as f64 / 1024.0
    );
}
