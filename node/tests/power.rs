//! A simulated phone whose battery drains changes power mode, and its peers see the new
//! mode and a lower score in its telemetry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use fogmesh_node::device::simulate::BatteryCurve;
use fogmesh_node::device::{DeviceClass, PowerMode, SimulateConfig, TransportPreference};
use fogmesh_node::memnet::NodeSpec;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_phone_changes_mode_and_peers_see_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = common::memnet(dir.path(), Duration::from_millis(300))
        .nodes(1)
        .start()
        .await
        .unwrap();
    let observer = 0;
    let phone = net
        .add_node(NodeSpec::new().bootstrap([observer]).settings(|s| {
            s.sense_interval = Duration::from_millis(200);
            // 24 % draining 4 points a second: normal, then low (<= 20 %) after ~1 s, then
            // critical (<= 10 %) after ~3.5 s.
            s.simulate = Some(SimulateConfig {
                device: Some(DeviceClass::Smartphone),
                temperature: Some(30.0),
                battery_curve: Some(BatteryCurve {
                    start: 24.0,
                    drain_per_minute: 240.0,
                    charge_per_minute: 0.0,
                    charging_windows: vec![],
                }),
                ..SimulateConfig::default()
            });
        }))
        .await
        .unwrap();
    let phone_id = net.peer_id(phone).unwrap().to_string();

    // Watch the phone through the observer's eyes: every record of it the observer accepts.
    let mut seen = Vec::new();
    let mut last_seq = None;
    let reached_critical = net
        .wait_for(
            |n| {
                let record = n.handle(observer).and_then(|h| {
                    fogmesh_node::telemetry::view::latest(h)
                        .get(&phone_id)
                        .map(|t| (t.seq, t.record.device.clone()))
                });
                if let Some((seq, Some(device))) = record {
                    if last_seq != Some(seq) {
                        last_seq = Some(seq);
                        seen.push(device);
                    }
                }
                seen.last().is_some_and(|d| d.mode == PowerMode::Critical)
            },
            Duration::from_secs(60),
        )
        .await;
    assert!(
        reached_critical.is_ok(),
        "observer never saw the phone in critical mode: {seen:?}"
    );
    assert!(seen.iter().all(|d| d.class == DeviceClass::Smartphone));
    let first = seen.first().unwrap();
    let last = seen.last().unwrap();
    assert!(
        seen.iter().any(|d| d.mode == PowerMode::PowerSave),
        "power save passed unseen: {seen:?}"
    );
    assert!(
        last.score < first.score,
        "score fell: {first:?} -> {last:?}"
    );
    assert_eq!(last.transport, TransportPreference::BitchatOnly);
    // Modes only ever got stricter while the battery drained.
    assert!(seen.windows(2).all(|w| w[1].mode >= w[0].mode));

    // The phone's own view agrees, and its telemetry slowed down (x4 in critical).
    let handle = net.handle(phone).unwrap();
    let view = handle
        .view::<Option<fogmesh_node::device::DeviceView>>()
        .unwrap()
        .get()
        .unwrap();
    assert_eq!(view.decision.mode, PowerMode::Critical);
    assert!(view.simulated);
    let own = handle
        .view::<fogmesh_node::telemetry::view::TelemetrySnapshot>()
        .unwrap()
        .get()
        .own
        .unwrap();
    assert_eq!(own.record.interval_ms, 1200);

    net.shutdown().await;
}
