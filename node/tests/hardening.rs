#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Availability and data-loss hardening: damaged stores, shared ports, stalled API clients.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use fogmesh_node::client::ControlClient;
use fogmesh_node::config::{ConfigLayer, Settings};
use fogmesh_node::control::server::{HEADER_READ_TIMEOUT, MAX_CONNECTIONS};
use fogmesh_node::node::{self, StartError};

const INTERVAL: Duration = Duration::from_secs(1);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn on_port(dir: &std::path::Path, listen: &str) -> Settings {
    let mut settings = common::settings(dir, Vec::new(), INTERVAL);
    settings.listen = vec![listen.parse().unwrap()];
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_on_the_same_port_does_not_start() {
    for (quic, listen) in [
        (false, format!("/ip4/127.0.0.1/tcp/{}", free_port())),
        (true, format!("/ip4/127.0.0.1/udp/{}/quic-v1", free_port())),
    ] {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut first = on_port(a.path(), &listen);
        let mut second = on_port(b.path(), &listen);
        first.quic = quic;
        second.quic = quic;
        let running = node::start(first).await.expect("the first node starts");
        match node::start(second).await {
            Err(StartError::Listen { addr, reason }) => {
                assert_eq!(addr.to_string(), listen);
                assert!(reason.contains("in use"), "{reason}");
            }
            Ok(_) => panic!("a second node shares {listen}"),
            Err(other) => panic!("unexpected error for {listen}: {other}"),
        }
        running.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_stops_the_start_naming_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let settings = common::settings(dir.path(), Vec::new(), INTERVAL);
    let store_dir = node::store_dir(dir.path());
    {
        // Acknowledged writes, as a revocation would make.
        let store = fogmesh_store::Store::open(&store_dir, &fogmesh_store::StoreOptions::default())
            .unwrap();
        let table = store.table::<Vec<u8>>("revocations").unwrap();
        for i in 0..20u8 {
            table.put_durable(&format!("r{i}"), &vec![i; 32]).unwrap();
        }
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(store_dir.join("db"))
        .unwrap()
        .set_len(0)
        .unwrap();
    let err = node::start(settings).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&store_dir.display().to_string()) && text.contains("--repair"),
        "{text}"
    );
}

/// Connects and sends half a request head, then stalls.
fn stalled_client(addr: std::net::SocketAddr) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
        .ok()?;
    Some(stream)
}

/// True once the server has closed `stream` (read returns EOF or an error).
fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            // A 408 or similar before the close is fine; keep reading to the close.
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_api_clients_are_dropped_and_cannot_lock_others_out_for_long() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path(), Vec::new(), INTERVAL).await;
    let addr = node.control_addr;
    let client = ControlClient::new(addr);

    let stalled = tokio::task::spawn_blocking(move || {
        let mut streams: Vec<TcpStream> = (0..MAX_CONNECTIONS + 20)
            .filter_map(|_| stalled_client(addr))
            .collect();
        let started = Instant::now();
        let deadline = HEADER_READ_TIMEOUT + Duration::from_secs(10);
        let mut closed = 0;
        for stream in &mut streams {
            if closed_by_server(
                stream,
                deadline
                    .saturating_sub(started.elapsed())
                    .max(Duration::from_millis(10)),
            ) {
                closed += 1;
            }
        }
        (streams.len(), closed, started.elapsed())
    })
    .await
    .unwrap();
    let (opened, closed, took) = stalled;
    assert_eq!(closed, opened, "every stalled client was dropped");
    assert!(
        took < HEADER_READ_TIMEOUT + Duration::from_secs(10),
        "took {took:?}"
    );

    // Those beyond the cap were refused at once and counted; the API answers again.
    let status = client
        .status()
        .await
        .expect("the API answers after the flood");
    assert!(
        status.control_api_refused >= 20,
        "{}",
        status.control_api_refused
    );
    node.shutdown().await;
}

#[test]
fn exempting_loopback_is_opt_in() {
    let settings = Settings::resolve(ConfigLayer::default());
    assert!(!settings.exempt_loopback);
}
