//! Acknowledged durable writes per second through the storage task, four ways: single
//! writes one at a time, single writes from many concurrent writers (group commit), and
//! batches of 10 and of 100 entries per durable write; then, for comparison, buffered
//! single writes as fast as the queue takes them, made durable by one flush at the end.
//! Values are 256 bytes in an ordered table (a Raft log's shape).
//!
//! `cargo run --release -p fogmesh-store --example storage_rate -- [ENTRIES] [DIR]`
//! (default 2000 entries per mode, in a temporary directory under DIR or the system temp
//! dir, removed afterwards).

use std::path::Path;
use std::time::{Duration, Instant};

use fogmesh_store::{
    Batch, OrderedTable, Scope, StorageConfig, StorageHandle, Store, StoreOptions,
};

const VALUE_LEN: usize = 256;

struct Run {
    mode: &'static str,
    entries: u64,
    acks: u64,
    took: Duration,
    commits: u64,
    waits: u64,
    latencies: Vec<Duration>,
}

impl Run {
    fn print(&mut self) {
        self.latencies.sort_unstable();
        let pick = |q: f64| {
            let i = ((self.latencies.len() as f64 - 1.0) * q).round() as usize;
            self.latencies
                .get(i)
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        let secs = self.took.as_secs_f64();
        if self.mode.starts_with("buffered") {
            println!(
                "{:<28} {:>15} {:>8} entries/s  {:>5} commits                  \
                 final flush {:>6.2} ms              backpressure waits {}",
                self.mode,
                "",
                (self.entries as f64 / secs).round(),
                self.commits,
                pick(0.5),
                self.waits,
            );
            return;
        }
        println!(
            "{:<28} {:>7} acks/s {:>8} entries/s  {:>5} commits ({:>5.1} acks each)  \
             ack p50 {:>6.2} ms p99 {:>6.2} ms  backpressure waits {}",
            self.mode,
            (self.acks as f64 / secs).round(),
            (self.entries as f64 / secs).round(),
            self.commits,
            self.acks as f64 / self.commits.max(1) as f64,
            pick(0.5),
            pick(0.99),
            self.waits,
        );
    }
}

fn batch_of(table: &OrderedTable<Vec<u8>>, scope: &Scope, from: u64, len: u64) -> Batch {
    let value = vec![7u8; VALUE_LEN];
    let mut batch = Batch::new();
    for index in from..from + len {
        // A 256-byte Vec always encodes.
        let _ = batch.put_ordered(table, scope, index, &value);
    }
    batch
}

/// Durable writes of `per_write` entries each, awaited one at a time.
async fn sequential(
    handle: &StorageHandle,
    table: &OrderedTable<Vec<u8>>,
    mode: &'static str,
    entries: u64,
    per_write: u64,
) -> Result<Run, Box<dyn std::error::Error>> {
    let scope = Scope::new(mode)?;
    let before = handle.stats();
    let mut latencies = Vec::new();
    let started = Instant::now();
    let mut index = 0;
    while index < entries {
        let batch = batch_of(table, &scope, index, per_write);
        let sent = Instant::now();
        handle.write_durable(batch).await?;
        latencies.push(sent.elapsed());
        index += per_write;
    }
    let took = started.elapsed();
    let after = handle.stats();
    Ok(Run {
        mode,
        entries: index,
        acks: latencies.len() as u64,
        took,
        commits: after.commits - before.commits,
        waits: after.backpressure_waits - before.backpressure_waits,
        latencies,
    })
}

/// Single-entry durable writes from `writers` concurrent tasks.
async fn concurrent(
    handle: &StorageHandle,
    table: &OrderedTable<Vec<u8>>,
    mode: &'static str,
    entries: u64,
    writers: u64,
) -> Result<Run, Box<dyn std::error::Error>> {
    let scope = Scope::new(mode)?;
    let before = handle.stats();
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (handle, table, scope) = (handle.clone(), table.clone(), scope.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut index = w;
                while index < entries {
                    let batch = batch_of(&table, &scope, index, 1);
                    let sent = Instant::now();
                    handle.write_durable(batch).await?;
                    latencies.push(sent.elapsed());
                    index += writers;
                }
                Ok::<_, fogmesh_store::StorageError>(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let took = started.elapsed();
    let after = handle.stats();
    Ok(Run {
        mode,
        entries,
        acks: latencies.len() as u64,
        took,
        commits: after.commits - before.commits,
        waits: after.backpressure_waits - before.backpressure_waits,
        latencies,
    })
}

/// Single-entry buffered writes as fast as the queue takes them, then one flush; the ack
/// count is that one flush.
async fn buffered(
    handle: &StorageHandle,
    table: &OrderedTable<Vec<u8>>,
    mode: &'static str,
    entries: u64,
) -> Result<Run, Box<dyn std::error::Error>> {
    let scope = Scope::new(mode)?;
    let before = handle.stats();
    let started = Instant::now();
    for index in 0..entries {
        handle.write(batch_of(table, &scope, index, 1)).await?;
    }
    let sent = Instant::now();
    handle.flush().await?;
    let latencies = vec![sent.elapsed()];
    let took = started.elapsed();
    let after = handle.stats();
    Ok(Run {
        mode,
        entries,
        acks: 1,
        took,
        commits: after.commits - before.commits,
        waits: after.backpressure_waits - before.backpressure_waits,
        latencies,
    })
}

async fn bench(dir: &Path, entries: u64) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open(dir, &StoreOptions::default())?;
    let table = store.ordered_table::<Vec<u8>>("bench")?;
    let handle = StorageHandle::spawn(store.clone(), StorageConfig::default())?;
    // Warm up: sled's first flushes allocate segments and threads.
    for i in 0..20 {
        handle
            .write_durable(batch_of(&table, &Scope::global(), i, 1))
            .await?;
    }
    println!(
        "{entries} entries of {VALUE_LEN} B per mode, queue capacity {}",
        handle.stats().queue_capacity
    );
    let mut runs = vec![
        sequential(&handle, &table, "single, one at a time", entries / 4, 1).await?,
        concurrent(&handle, &table, "single, 64 concurrent", entries, 64).await?,
        sequential(&handle, &table, "batches of 10", entries, 10).await?,
        sequential(&handle, &table, "batches of 100", entries, 100).await?,
        buffered(&handle, &table, "buffered single, one flush", entries * 5).await?,
    ];
    for run in &mut runs {
        run.print();
    }
    handle.close().await?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let entries: u64 = args
        .next()
        .map_or(Ok(2000), |a| a.parse())?
        .clamp(100, 1_000_000);
    let base = args.next().map_or_else(std::env::temp_dir, Into::into);
    let dir = base.join(format!("fogmesh-storage-rate-{}", std::process::id()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(bench(&dir, entries));
    std::fs::remove_dir_all(&dir)?;
    result
}
