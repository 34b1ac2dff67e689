//! Acknowledged (durable) writes per second: each `put_durable` flushes sled and records the
//! new generation in the marker file (see `generation`).
//!
//! `cargo run --release -p fogmesh-store --example durable_rate -- [WRITES] [DIR]`
//! (default 500 writes in a temporary directory under DIR or the system temp dir).

use std::time::Instant;

use fogmesh_store::{Store, StoreOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let writes: usize = args.next().map_or(Ok(500), |a| a.parse())?.min(100_000);
    let base = args.next().map_or_else(std::env::temp_dir, Into::into);
    let dir = base.join(format!("fogmesh-durable-rate-{}", std::process::id()));
    let store = Store::open(&dir, &StoreOptions::default())?;
    let table = store.table::<Vec<u8>>("bench")?;
    let value = vec![7u8; 256];
    let started = Instant::now();
    for i in 0..writes {
        table.put_durable(&format!("k{i:08}"), &value)?;
    }
    let took = started.elapsed();
    println!(
        "{writes} durable writes of 256 B in {:.2}s: {:.0} writes/s, {:.2} ms each",
        took.as_secs_f64(),
        writes as f64 / took.as_secs_f64(),
        took.as_secs_f64() * 1000.0 / writes as f64
    );
    drop(table);
    drop(store);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
