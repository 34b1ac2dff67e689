//! Device policy cost: evaluating the power policy and score (pure), and one full sensing
//! pass of this machine (edge: sysinfo, battery, sensors, disks).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use fogmesh_node::device::{self, evaluate, DeviceMonitor, DeviceReadings};

fn phone() -> DeviceReadings {
    DeviceReadings {
        cores: Some(8),
        mem_total_bytes: Some(4 << 30),
        mem_available_bytes: Some(2 << 30),
        storage_total_bytes: Some(64 << 30),
        storage_available_bytes: Some(20 << 30),
        battery_present: Some(true),
        battery_pct: Some(18.0),
        charging: Some(false),
        temperature_c: Some(47.0),
        gpu: Some(true),
        cpu_load_pct: Some(35.0),
    }
}

fn benches(c: &mut Criterion) {
    let readings = phone();
    let previous = Some(evaluate(&readings, None).state());
    c.bench_function("device/evaluate_policy", |b| {
        b.iter(|| evaluate(black_box(&readings), black_box(previous)))
    });
    c.bench_function("device/assess (validate+classify+policy+score)", |b| {
        b.iter(|| device::assess(black_box(readings), None, Duration::ZERO, previous))
    });
    let dir = std::env::temp_dir();
    let mut monitor = DeviceMonitor::new(&dir, None);
    c.bench_function("device/sensing_pass", |b| b.iter(|| monitor.pass(0)));
    c.bench_function("device/first_pass_including_setup", |b| {
        b.iter(|| DeviceMonitor::new(black_box(&dir), None).pass(0))
    });
}

criterion_group!(device_benches, benches);
criterion_main!(device_benches);
