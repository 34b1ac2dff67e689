#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The live event stream (`GET /v1/events`, `fogmesh watch`) and the metrics endpoint
//! (`GET /metrics`), through the control API router served the way the node serves it.

mod common;
#[path = "common/openmetrics.rs"]
mod openmetrics;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::wait_until;
use fogmesh_node::client::sse::SseParser;
use fogmesh_node::client::{ClientError, ControlClient, EventStream, SseFrame};
use fogmesh_node::control::server::{self as api_server, ServerBounds};
use fogmesh_node::device::service::PowerModeChanged;
use fogmesh_node::runtime::events::{self, EventBus, EventBusConfig, NodeEvent, StampedEvent};
use fogmesh_node::runtime::handle::NodeHandle;
use fogmesh_node::runtime::lifecycle::Phase;
use fogmesh_node::runtime::metrics::{MetricsRegistry, CONTENT_TYPE};
use fogmesh_node::telemetry::service::{TelemetryExpired, TelemetryReceived};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const PEER: &str = "12D3KooWGzh8Ju3mwdD8ZoJAn9Zu4N4jR7vm1Gxd7nrXKhXpUzfJ";

/// A control API served on 127.0.0.1:0 over a test state, like the node serves its own.
struct Served {
    addr: SocketAddr,
    bus: EventBus,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Served {
    async fn start(config: EventBusConfig, bounds: ServerBounds) -> Self {
        let mut registry = MetricsRegistry::new();
        let bus = EventBus::new(config);
        bus.register_metrics(registry.fogmesh());
        let _libp2p = registry.libp2p();
        let access = fogmesh_node::control::access::Access::new(
            fogmesh_node::control::access::ApiToken::generate(),
            registry.fogmesh(),
        );
        let handle = NodeHandle::detached(bus.clone(), registry.freeze());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stop_signal) = oneshot::channel();
        let task = tokio::spawn(api_server::serve_with(
            listener,
            fogmesh_node::control::router(handle, Vec::new(), access),
            std::sync::Arc::default(),
            stop_signal,
            bounds,
        ));
        Self {
            addr,
            bus,
            stop: Some(stop),
            task,
        }
    }

    async fn with_defaults() -> Self {
        Self::start(EventBusConfig::default(), ServerBounds::default()).await
    }

    fn client(&self) -> ControlClient {
        ControlClient::new(self.addr)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .expect("the server stops within its grace period")
            .unwrap();
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn connected(n: u64) -> NodeEvent {
    events::PeerConnected {
        peer_id: PEER.into(),
        addr: format!("/ip4/127.0.0.1/tcp/{n}"),
        direction: "in".into(),
    }
    .into()
}

/// A mix of event types, `n` decides which.
fn some_event(n: u64) -> NodeEvent {
    match n % 4 {
        0 => connected(n),
        1 => TelemetryReceived {
            origin: PEER.into(),
            seq: n,
            latency_ms: n % 50,
        }
        .into(),
        2 => events::Lifecycle {
            from: Phase::Idle,
            to: Phase::Active,
            reason: format!("{n} peers connected"),
        }
        .into(),
        _ => PowerModeChanged {
            from: Some("normal".into()),
            to: "saver".into(),
            score: 0.5,
            reasons: vec!["battery 15 %".into()],
        }
        .into(),
    }
}

async fn next_event(stream: &mut EventStream) -> StampedEvent {
    let data = tokio::time::timeout(Duration::from_secs(10), stream.next_data())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .expect("the stream goes on");
    serde_json::from_str(&data).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_framed_as_server_sent_events() {
    let mut served = Served::with_defaults().await;
    let mut response = http().get(served.url("/v1/events")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    served.bus.publish(connected(1));
    served.bus.publish(
        TelemetryExpired {
            origin: PEER.into(),
        }
        .into(),
    );
    let mut text = String::new();
    while text.matches("\n\n").count() < 2 {
        let chunk = response.chunk().await.unwrap().expect("more body");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let frames: Vec<&str> = text.split_terminator("\n\n").collect();
    assert_eq!(frames.len(), 2, "{text:?}");
    let mut events = Vec::new();
    for frame in frames {
        let json = frame
            .strip_prefix("data: ")
            .expect("one data line per event");
        assert!(!json.contains('\n'), "{frame:?}");
        events.push(serde_json::from_str::<serde_json::Value>(json).unwrap());
    }
    assert_eq!(events[0]["seq"], 1);
    assert_eq!(events[0]["type"], "peer_connected");
    assert_eq!(events[0]["peer_id"], PEER);
    assert_eq!(events[0]["direction"], "in");
    assert!(events[0]["at_ms"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(events[1]["seq"], 2);
    assert_eq!(events[1]["type"], "telemetry_expired");
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_events_arrive_in_order() {
    let mut served = Served::with_defaults().await;
    // Events before anyone listens advance the seq but reach nobody.
    served.bus.publish(connected(0));
    let mut stream = served.client().events().await.unwrap();
    for n in 0..500 {
        served.bus.publish(some_event(n));
    }
    for n in 0..500 {
        let event = next_event(&mut stream).await;
        assert_eq!(event.seq, n + 2);
        assert_eq!(event.event, some_event(n));
    }
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_cap_get_503_and_a_closed_stream_frees_its_slot() {
    let mut served = Served::with_defaults().await;
    let client = served.client();
    let mut streams = Vec::new();
    for _ in 0..8 {
        streams.push(client.events().await.unwrap());
    }
    assert_eq!(served.bus.open_streams(), 8);

    let refused = http().get(served.url("/v1/events")).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    let body: serde_json::Value = refused.json().await.unwrap();
    let reason = body["error"].as_str().unwrap();
    assert!(reason.contains("8 event streams are open"), "{reason}");
    match client.events().await {
        Err(ClientError::Busy { reason, .. }) => {
            assert!(reason.contains("8 event streams are open"), "{reason}")
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    // Other requests are still served.
    assert!(client.status().await.is_ok());

    // hyper notices the closed connection at once (it reads while it writes), long before
    // the next keep-alive would.
    drop(streams.pop());
    wait_until("the closed stream's slot", Duration::from_secs(5), || {
        std::future::ready(served.bus.open_streams() == 7)
    })
    .await;
    let mut ninth = client.events().await.unwrap();
    served.bus.publish(connected(9));
    assert_eq!(next_event(&mut ninth).await.event, connected(9));
    for stream in &mut streams {
        assert_eq!(next_event(stream).await.event, connected(9));
    }
    served.stop().await;
}

/// Reads the stream until the event with seq `last` arrives.
async fn read_through(stream: &mut EventStream, last: u64) -> Vec<StampedEvent> {
    let mut events = Vec::new();
    loop {
        let event = next_event(stream).await;
        let seq = event.seq;
        events.push(event);
        if seq == last {
            return events;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_cannot_grow_the_node_and_is_told_it_lagged() {
    let mut served = Served::with_defaults().await;
    let mut stream = served.client().events().await.unwrap();
    // The client reads nothing while the node publishes far more than fits anywhere: the
    // ring (1024 events), hyper's write buffer (64 KiB) and both sockets' buffers.
    const PUBLISHED: u64 = 200_000;
    for n in 0..PUBLISHED {
        served.bus.publish(connected(n));
        if n % 10_000 == 0 {
            // Let the server write until the socket is full.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let events = read_through(&mut stream, PUBLISHED).await;
    // Seqs run on without a hole: each lagged marker stands for exactly the events it
    // replaces and carries the seq of the last of them.
    let mut expected = 1;
    let (mut delivered, mut missed, mut markers) = (0u64, 0u64, 0);
    let mut after_marker = false;
    for event in &events {
        match event.event.decode::<events::Lagged>() {
            Some(events::Lagged { missed: lost }) => {
                assert!(!after_marker, "two lagged markers in a row");
                after_marker = true;
                assert_eq!(event.seq, expected + lost - 1);
                missed += lost;
                markers += 1;
            }
            _ => {
                after_marker = false;
                assert_eq!(event.seq, expected);
                delivered += 1;
            }
        }
        expected = event.seq + 1;
    }
    assert!(markers > 0, "no lagged marker");
    assert_eq!(delivered + missed, PUBLISHED);
    // What was buffered outside the ring is bounded by buffer sizes, not by what was
    // published (here some 15 000 events, about 3 MB, sat in the two sockets).
    assert!(
        delivered < PUBLISHED / 4,
        "{delivered} events delivered: something buffered without bound"
    );
    assert_eq!(served.bus.lagged(), missed);

    // Caught up, the stream is live again.
    served.bus.publish(connected(1));
    assert_eq!(next_event(&mut stream).await.seq, PUBLISHED + 1);
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_outlives_the_request_deadline_and_header_timeout() {
    let bounds = ServerBounds {
        header_read_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_millis(300),
        ..ServerBounds::default()
    };
    let config = EventBusConfig {
        keep_alive: Duration::from_millis(250),
        ..EventBusConfig::default()
    };
    let mut served = Served::start(config, bounds).await;
    let mut stream = served.client().events().await.unwrap();
    let started = Instant::now();

    // The bounds are in force meanwhile: a request head sent halfway is cut off.
    let mut stalled = TcpStream::connect(served.addr).await.unwrap();
    stalled
        .write_all(b"GET /v1/status HTTP/1.1\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(3), stalled.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(_)) | Ok(Err(_))),
        "a stalled request head was not cut off"
    );

    let mut keep_alives = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        match tokio::time::timeout(Duration::from_secs(2), stream.next_frame()).await {
            Ok(Ok(Some(SseFrame::Comment(text)))) => {
                assert_eq!(text, "keep-alive");
                keep_alives += 1;
            }
            other => panic!("expected keep-alives, got {other:?}"),
        }
    }
    assert!(keep_alives >= 3, "{keep_alives} keep-alives in 1.5 s");
    served.bus.publish(connected(7));
    assert_eq!(next_event(&mut stream).await.event, connected(7));
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_server_delivers_pending_events_then_ends_the_stream() {
    let mut served = Served::with_defaults().await;
    let mut stream = served.client().events().await.unwrap();
    for n in 0..3 {
        served.bus.publish(connected(n));
    }
    served.bus.publish(
        events::Lifecycle {
            from: Phase::Active,
            to: Phase::Draining,
            reason: "shutdown requested".into(),
        }
        .into(),
    );
    served.stop().await;
    let mut seqs = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.next_data()).await {
            Ok(Ok(Some(data))) => seqs.push(serde_json::from_str::<StampedEvent>(&data).unwrap()),
            Ok(Ok(None)) => break,
            other => panic!("expected a clean end, got {other:?}"),
        }
    }
    assert_eq!(seqs.len(), 4);
    assert!(matches!(
        seqs[3].event.decode(),
        Some(events::Lifecycle {
            to: Phase::Draining,
            ..
        })
    ));
    assert_eq!(served.bus.open_streams(), 0);
}

async fn scrape(served: &Served) -> openmetrics::Exposition {
    let response = http().get(served.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        CONTENT_TYPE
    );
    let text = response.text().await.unwrap();
    openmetrics::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn the_openmetrics_parser_is_strict() {
    openmetrics::self_check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_strictly_and_follow_the_event_stream() {
    let mut served = Served::with_defaults().await;
    let before = scrape(&served).await;
    for (family, kind) in [
        ("fogmesh_events_published", "counter"),
        ("fogmesh_events_lagged", "counter"),
        ("fogmesh_event_streams_open", "gauge"),
    ] {
        let found = before
            .family(family)
            .unwrap_or_else(|| panic!("{family} missing"));
        assert_eq!(found.kind, kind);
        assert!(found.help.is_some());
    }
    assert_eq!(
        before.value("fogmesh_events_published_total", &[]),
        Some(0.0)
    );
    assert_eq!(before.value("fogmesh_event_streams_open", &[]), Some(0.0));
    // libp2p's own metrics are in the same exposition, under their own names.
    assert!(before
        .families
        .iter()
        .any(|f| f.name.starts_with("libp2p_")));

    let mut stream = served.client().events().await.unwrap();
    for n in 0..5 {
        served.bus.publish(connected(n));
    }
    let after = scrape(&served).await;
    assert_eq!(
        after.value("fogmesh_events_published_total", &[]),
        Some(5.0)
    );
    assert_eq!(after.value("fogmesh_event_streams_open", &[]), Some(1.0));
    assert_eq!(next_event(&mut stream).await.seq, 1);
    drop(stream);
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lagged_counter_counts_what_slow_streams_lost() {
    let mut served = Served::start(
        EventBusConfig {
            capacity: 16,
            ..EventBusConfig::default()
        },
        ServerBounds::default(),
    )
    .await;
    // A subscription held in the test, never read, lags deterministically.
    let mut subscription = served.bus.subscribe().unwrap();
    for n in 0..116 {
        served.bus.publish(connected(n));
    }
    let marker = subscription.next().await.unwrap();
    assert_eq!(marker.event, events::Lagged { missed: 100 }.into());
    let metrics = scrape(&served).await;
    assert_eq!(
        metrics.value("fogmesh_events_lagged_total", &[]),
        Some(100.0)
    );
    served.stop().await;
}

/// The SSE parser the CLI uses agrees with what the server writes, chunk by chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_parser_reads_the_servers_bytes() {
    let mut served = Served::with_defaults().await;
    let mut response = http().get(served.url("/v1/events")).send().await.unwrap();
    for n in 0..50 {
        served.bus.publish(some_event(n));
    }
    let mut parser = SseParser::default();
    let mut frames = Vec::new();
    while frames.len() < 50 {
        let chunk = response.chunk().await.unwrap().unwrap();
        // Feed it byte by byte: every boundary is a chunk boundary somewhere.
        for byte in chunk.iter() {
            frames.extend(parser.feed(&[*byte]).unwrap());
        }
    }
    for (n, frame) in frames.into_iter().enumerate() {
        let SseFrame::Message { event: None, data } = frame else {
            panic!("unexpected frame {frame:?}")
        };
        let event: StampedEvent = serde_json::from_str(&data).unwrap();
        assert_eq!(event.event, some_event(n as u64));
    }
    served.stop().await;
}

fn fogmesh_bin() -> &'static str {
    env!("CARGO_BIN_EXE_fogmesh")
}

async fn run_watch(args: &[&str]) -> std::process::Output {
    let child = tokio::process::Command::new(fogmesh_bin())
        .args(args)
        .env_remove("FOGMESH_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("watch exits")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_events_and_exits_cleanly_when_the_node_stops() {
    for json in [true, false] {
        let mut served = Served::with_defaults().await;
        let addr = served.addr.to_string();
        let mut args = vec!["watch", "--api", addr.as_str()];
        if json {
            args.push("--json");
        }
        let watch = tokio::spawn({
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                run_watch(&args).await
            }
        });
        wait_until("watch to connect", Duration::from_secs(15), || {
            std::future::ready(served.bus.open_streams() == 1)
        })
        .await;
        served.bus.publish(connected(4001));
        served.bus.publish(
            events::AdmissionRefused {
                remote: "/ip4/10.0.0.9/tcp/5123".into(),
                direction: "in".into(),
                reason: "ticket_expired".into(),
            }
            .into(),
        );
        served.stop().await;
        let output = watch.await.unwrap();
        let stdout = String::from_utf8(output.stdout).unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(output.status.success(), "{stderr}");
        assert!(stderr.contains("the node ended the stream"), "{stderr}");
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 2, "{stdout}");
        if json {
            let first: StampedEvent = serde_json::from_str(lines[0]).unwrap();
            assert_eq!(first.event, connected(4001));
            let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
            assert_eq!(second["type"], "admission_refused");
        } else {
            assert!(
                lines[0].contains("peer connected      12D3Ko…XpUzfJ in /ip4/127.0.0.1/tcp/4001"),
                "{stdout}"
            );
            assert!(
                lines[1].contains("admission refused   /ip4/10.0.0.9/tcp/5123 in: ticket_expired"),
                "{stdout}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_says_when_the_stream_cap_is_reached_or_nothing_listens() {
    let mut served = Served::start(
        EventBusConfig {
            max_streams: 0,
            ..EventBusConfig::default()
        },
        ServerBounds::default(),
    )
    .await;
    let addr = served.addr.to_string();
    let output = run_watch(&["watch", "--api", &addr]).await;
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(!output.status.success());
    assert!(stderr.contains("is busy"), "{stderr}");
    assert!(stderr.contains("event streams are open"), "{stderr}");
    served.stop().await;

    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let output = run_watch(&["watch", "--api", &closed]).await;
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(!output.status.success());
    assert!(stderr.contains("nothing listens there"), "{stderr}");
}
