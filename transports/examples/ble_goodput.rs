#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Goodput of the BLE stream on the simulated radio, as a share of the link rate.
//!
//! ```text
//! cargo run --release -p fogmesh-transports --example ble_goodput
//! ```
//!
//! One link at 1 Mbit/s with 30 ms latency; 1 MB written one way through a `BleStream`
//! (the ARQ over the link), timed on the radio's clock (tokio's paused time), so the figure
//! is the protocol's, not this machine's. Each MTU and loss rate is run with three seeds.

use std::time::Duration;

use fogmesh_transports::ble::arq::ArqConfig;
use fogmesh_transports::ble::driver::{BleDriver, DeviceId};
use fogmesh_transports::ble::sim::{LinkParams, SimConfig, SimRadio};
use fogmesh_transports::ble::stream::BleStream;
use futures::io::{AsyncReadExt, AsyncWriteExt};

const BYTES: usize = 1_000_000;
const RATE: u64 = 1_000_000;

async fn transfer(mtu: usize, loss: f64, seed: u64) -> (Duration, u64) {
    let radio = SimRadio::new(SimConfig {
        link: LinkParams {
            rate_bps: RATE,
            latency: Duration::from_millis(30),
            jitter: Duration::ZERO,
            loss,
            mtu,
        },
        seed,
        ..SimConfig::default()
    });
    let a = radio.add_device(DeviceId([1; 8]), (0.0, 0.0));
    let b = radio.add_device(DeviceId([2; 8]), (1.0, 0.0));
    let mut accepted = b.listen().expect("listen");
    let out = a.connect(DeviceId([2; 8])).await.expect("connect");
    let inn = accepted.recv().await.expect("accept");
    let mut out = BleStream::spawn(out, ArqConfig::default());
    let mut inn = BleStream::spawn(inn, ArqConfig::default());
    let data = vec![0x5a_u8; BYTES];
    let start = tokio::time::Instant::now();
    let writer = tokio::spawn(async move {
        out.write_all(&data).await.expect("write");
        out.close().await.expect("close");
        out
    });
    let mut got = Vec::with_capacity(BYTES);
    inn.read_to_end(&mut got).await.expect("read");
    let took = start.elapsed();
    let out = writer.await.expect("writer");
    assert_eq!(got.len(), BYTES);
    (took, out.stats().retransmissions)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    println!("1 MB over one simulated link, 1 Mbit/s, 30 ms latency; goodput / link rate");
    println!("| MTU | loss | goodput (3 seeds) | share of link rate | retransmissions |");
    println!("|---|---|---|---|---|");
    for mtu in [185usize, 512] {
        for loss in [0.0, 0.05] {
            let mut rates = Vec::new();
            let mut retrans = Vec::new();
            for seed in 1..=3 {
                let (took, r) = runtime.block_on(transfer(mtu, loss, seed));
                rates.push(BYTES as f64 * 8.0 / took.as_secs_f64());
                retrans.push(r);
            }
            let mean = rates.iter().sum::<f64>() / rates.len() as f64;
            println!(
                "| {mtu} | {:.0} % | {} kbit/s | {:.1} % | {:?} |",
                loss * 100.0,
                rates
                    .iter()
                    .map(|r| format!("{:.0}", r / 1000.0))
                    .collect::<Vec<_>>()
                    .join(", "),
                mean / RATE as f64 * 100.0,
                retrans
            );
        }
    }
}
