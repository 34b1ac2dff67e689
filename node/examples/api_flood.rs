//! Slow-client flood against a running node's control API, measuring the node's memory.
//!
//! `cargo run --release -p fogmesh --example api_flood -- DATA_DIR [CONNECTIONS] [ROUNDS]`
//!
//! Finds the node through `DATA_DIR/control.json` (loopback only, like the API itself), and
//! for each round opens CONNECTIONS connections that send half a request head and stall, waits
//! until the node has closed every one of them (at most 30 s), then samples the node's RSS.
//! Bounded in count (at most 5,000 connections, 20 rounds) and time; it stops by itself.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let data_dir = args
        .next()
        .ok_or("usage: api_flood DATA_DIR [CONNECTIONS] [ROUNDS]")?;
    let connections: usize = args.next().map_or(Ok(2000), |a| a.parse())?.min(5000);
    let rounds: usize = args.next().map_or(Ok(5), |a| a.parse())?.min(20);
    let control: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{data_dir}/control.json"))?)?;
    let addr: std::net::SocketAddr = control["addr"].as_str().ok_or("no addr")?.parse()?;
    if !addr.ip().is_loopback() {
        return Err("the control API must be on loopback".into());
    }
    let pid = u32::try_from(control["pid"].as_u64().ok_or("no pid")?)?;
    println!(
        "node pid {pid} at {addr}: RSS before {} KiB",
        rss_kib(pid).unwrap_or(0)
    );
    for round in 1..=rounds {
        let started = Instant::now();
        let mut streams = Vec::with_capacity(connections);
        for _ in 0..connections {
            if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                let _ = s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n");
                streams.push(s);
            }
        }
        let peak = rss_kib(pid).unwrap_or(0);
        let mut held = 0;
        for s in &mut streams {
            let left = Duration::from_secs(30).saturating_sub(started.elapsed());
            let _ = s.set_read_timeout(Some(left.max(Duration::from_millis(10))));
            let mut buf = [0u8; 256];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        held += 1;
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        drop(streams);
        std::thread::sleep(Duration::from_millis(500));
        println!(
            "round {round}: {connections} stalled, all closed by the node after {:.1}s ({held} still open), RSS peak {peak} KiB, after {} KiB",
            started.elapsed().as_secs_f64(),
            rss_kib(pid).unwrap_or(0)
        );
    }
    Ok(())
}
