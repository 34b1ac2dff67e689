#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The event stream and metrics of a real node: wired into its control API, served on
//! 127.0.0.1 only, not cut by the API's request deadline, ended when the node stops.

mod common;
#[path = "common/openmetrics.rs"]
mod openmetrics;

use std::time::Duration;

use fogmesh_node::client::ControlClient;
use fogmesh_node::control::server::{HEADER_READ_TIMEOUT, REQUEST_TIMEOUT};
use fogmesh_node::revocations::service::RevocationApplied;
use fogmesh_node::runtime::events::{NodeEvent, StampedEvent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_event_stream_lives_past_the_request_deadline_and_ends_with_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path(), Vec::new(), Duration::from_secs(1)).await;
    assert!(node.control_addr.ip().is_loopback());

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let text = http
        .get(format!("http://{}/metrics", node.control_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let metrics = openmetrics::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(metrics
        .value("fogmesh_events_published_total", &[])
        .is_some());
    assert_eq!(metrics.value("fogmesh_event_streams_open", &[]), Some(0.0));

    let client = ControlClient::new(node.control_addr);
    let mut stream = client.events().await.unwrap();
    // Silent for longer than both of the API's time bounds (and than no keep-alive, which
    // comes every 15 s): the stream must still be there.
    tokio::time::sleep(REQUEST_TIMEOUT.max(HEADER_READ_TIMEOUT) + Duration::from_secs(1)).await;
    let probe: NodeEvent = RevocationApplied {
        ticket_id: "probe".into(),
        disconnected: Vec::new(),
    }
    .into();
    node.handle.events().publish(probe.clone());
    let mut seen_probe = false;
    while !seen_probe {
        let data = tokio::time::timeout(Duration::from_secs(5), stream.next_data())
            .await
            .expect("the probe within 5 s")
            .unwrap()
            .expect("the stream is still open");
        let event: StampedEvent = serde_json::from_str(&data).unwrap();
        // The node may publish its own events meanwhile; only the probe matters here.
        seen_probe = event.event == probe;
    }

    node.shutdown().await;
    // Whatever the node published while stopping is delivered, then the stream ends cleanly.
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.next_data()).await {
            Ok(Ok(Some(data))) => {
                serde_json::from_str::<StampedEvent>(&data).unwrap();
            }
            Ok(Ok(None)) => break,
            other => panic!("the stream should end cleanly with the node: {other:?}"),
        }
    }
}
