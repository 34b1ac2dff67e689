//! A simulated phone whose battery drains changes power mode, and its peers see the new
//! mode and a lower score in its telemetry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::dial_addr;
use fogmesh_node::client::ControlClient;
use fogmesh_node::device::simulate::BatteryCurve;
use fogmesh_node::device::{DeviceClass, PowerMode, SimulateConfig, TransportPreference};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_phone_changes_mode_and_peers_see_it() {
    let observer_dir = tempfile::tempdir().unwrap();
    let phone_dir = tempfile::tempdir().unwrap();
    let observer = common::start(observer_dir.path(), vec![], Duration::from_millis(300)).await;
    let addr = dial_addr(&observer).await;

    let mut settings = common::settings(phone_dir.path(), vec![addr], Duration::from_millis(300));
    settings.sense_interval = Duration::from_millis(200);
    // 24 % draining 4 points a second: normal, then low (<= 20 %) after ~1 s, then critical
    // (<= 10 %) after ~3.5 s.
    settings.simulate = Some(SimulateConfig {
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
    let phone = fogmesh_node::node::start(settings).await.unwrap();
    let phone_id = phone.peer_id.to_string();

    // Watch the phone through the observer's eyes.
    let client = ControlClient::new(observer.control_addr);
    let mut seen = Vec::new();
    let started = std::time::Instant::now();
    let mut reached_critical = false;
    while !reached_critical && started.elapsed() < Duration::from_secs(60) {
        if let Ok(t) = client.telemetry().await {
            if let Some(d) = t
                .nodes
                .into_iter()
                .find(|n| n.peer_id == phone_id)
                .and_then(|n| n.record.device)
            {
                reached_critical = d.mode == PowerMode::Critical;
                seen.push(d);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        reached_critical,
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
    let view = ControlClient::new(phone.control_addr)
        .device()
        .await
        .unwrap();
    assert_eq!(view.decision.mode, PowerMode::Critical);
    assert!(view.simulated);
    let status = ControlClient::new(phone.control_addr)
        .telemetry()
        .await
        .unwrap();
    let own = status.nodes.iter().find(|n| n.local).unwrap();
    assert_eq!(own.record.interval_ms, 1200);

    phone.shutdown().await;
    observer.shutdown().await;
}
