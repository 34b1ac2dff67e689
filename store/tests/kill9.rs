#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Acknowledged writes survive kill -9: a child process (this test binary run again, with
//! only `kill9_child` selected) writes through the storage task and prints every durable
//! ack the moment it gets it; the parent SIGKILLs it mid-burst, reopens the store and
//! checks every acknowledged write, batch atomicity, and that buffered writes are present
//! or absent but never damaged. Several rounds on one store, so recovery of a store that
//! was itself recovered is covered too.
//!
//! `FOGMESH_KILL9_ROUNDS=N` runs N rounds instead of 3 (for longer soak runs).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fogmesh_store::{integrity, Batch, Scope, StorageConfig, StorageHandle, Store, StoreOptions};

const CHILD_DIR: &str = "FOGMESH_KILL9_CHILD_DIR";
const CHILD_ROUND: &str = "FOGMESH_KILL9_CHILD_ROUND";
const CHILD_MODE: &str = "FOGMESH_KILL9_CHILD_MODE";
/// sled's flush interval in the buffered-loss measurement.
const BUFFERED_FLUSH_EVERY: Duration = Duration::from_millis(100);
const LOG: &str = "log";
const BUFFERED: &str = "buffered";
const DIRECT: &str = "direct";
const BATCHES: &str = "batches";
/// Entries per batched durable write.
const BATCH: u64 = 10;

/// The value stored at `index` in `round`'s scope: its length and bytes both vary.
fn value(round: u64, index: u64) -> Vec<u8> {
    let len = 16 + (index * 7 % 300) as usize;
    (0..len)
        .map(|k| (round * 31 + index + k as u64) as u8)
        .collect()
}

fn scope(round: u64) -> Scope {
    Scope::new(format!("round-{round}")).unwrap()
}

/// Indices per cycle of the child's loop: 40 single, 40 concurrent, 8 batches of BATCH.
const CYCLE: u64 = 80 + 8 * BATCH;

/// The first index of the batch that wrote `index`, if a batch did.
fn batch_of(index: u64) -> Option<u64> {
    let offset = index % CYCLE;
    (offset >= 80).then(|| index - (offset - 80) % BATCH)
}

fn batch_key(round: u64, first: u64) -> String {
    format!("r{round}-{first:08}")
}

/// The child: runs only when the parent starts it; a no-op in a normal test run.
#[test]
fn kill9_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let round: u64 = std::env::var(CHILD_ROUND).unwrap().parse().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match std::env::var(CHILD_MODE).as_deref() {
        Ok(mode @ ("task" | "direct")) => {
            runtime.block_on(write_buffered_until_killed(Path::new(&dir), mode))
        }
        _ => runtime.block_on(write_until_killed(Path::new(&dir), round)),
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Buffered writes only, about one a millisecond, each printed with the time it was
/// accepted: through the storage task (`task`), or straight into a string-keyed table
/// with `Table::put` (`direct`), which is not a sled transaction.
async fn write_buffered_until_killed(dir: &Path, mode: &str) {
    let options = StoreOptions {
        flush_every: BUFFERED_FLUSH_EVERY,
        ..StoreOptions::default()
    };
    let store = Store::open(dir, &options).unwrap();
    let buffered = store.ordered_table::<Vec<u8>>(BUFFERED).unwrap();
    let direct = store.table::<Vec<u8>>(DIRECT).unwrap();
    let handle = StorageHandle::spawn(store.clone(), StorageConfig::default()).unwrap();
    let scope = scope(0);
    for index in 0..20_000 {
        if mode == "direct" {
            direct.put(&direct_key(index), &value(0, index)).unwrap();
        } else {
            let mut batch = Batch::new();
            batch
                .put_ordered(&buffered, &scope, index, &value(0, index))
                .unwrap();
            handle.write(batch).await.unwrap();
        }
        println!("BUF {index} {}", unix_ms());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn direct_key(index: u64) -> String {
    format!("{index:08}")
}

async fn write_until_killed(dir: &Path, round: u64) {
    let store = Store::open(dir, &StoreOptions::default()).unwrap();
    let log = store.ordered_table::<Vec<u8>>(LOG).unwrap();
    let buffered = store.ordered_table::<Vec<u8>>(BUFFERED).unwrap();
    let batches = store.table::<Vec<u64>>(BATCHES).unwrap();
    let handle = StorageHandle::spawn(store.clone(), StorageConfig::default()).unwrap();
    let scope = scope(round);
    let started = Instant::now();
    let mut next = 0u64;
    let mut next_buffered = 0u64;
    // Bounded so a child the parent forgot can never run for ever.
    while started.elapsed() < Duration::from_secs(20) {
        // Single durable writes, one at a time.
        for _ in 0..40 {
            let mut batch = Batch::new();
            batch
                .put_ordered(&log, &scope, next, &value(round, next))
                .unwrap();
            handle.write_durable(batch).await.unwrap();
            println!("ACK {next}");
            next += 1;
            let mut batch = Batch::new();
            batch
                .put_ordered(
                    &buffered,
                    &scope,
                    next_buffered,
                    &value(round, next_buffered),
                )
                .unwrap();
            handle.write(batch).await.unwrap();
            println!("BUF {next_buffered}");
            next_buffered += 1;
        }
        // Many single durable writes at once: they share commits.
        let tasks: Vec<_> = (next..next + 40)
            .map(|index| {
                let (handle, log, scope) = (handle.clone(), log.clone(), scope.clone());
                tokio::spawn(async move {
                    let mut batch = Batch::new();
                    batch
                        .put_ordered(&log, &scope, index, &value(round, index))
                        .unwrap();
                    handle.write_durable(batch).await.unwrap();
                    println!("ACK {index}");
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        next += 40;
        // Batched durable writes: BATCH log entries and a record of them, atomically.
        for _ in 0..8 {
            let mut batch = Batch::new();
            let indices: Vec<u64> = (next..next + BATCH).collect();
            for &index in &indices {
                batch
                    .put_ordered(&log, &scope, index, &value(round, index))
                    .unwrap();
            }
            batch
                .put(&batches, &batch_key(round, next), &indices)
                .unwrap();
            handle.write_durable(batch).await.unwrap();
            println!("ACKB {next}");
            next += BATCH;
        }
    }
}

#[derive(Default)]
struct Acked {
    /// (round, index) of every acknowledged log entry.
    log: BTreeSet<(u64, u64)>,
    /// (round, first index) of every acknowledged batch.
    batches: BTreeSet<(u64, u64)>,
    /// (round, index) of every buffered write the task accepted.
    buffered: BTreeSet<(u64, u64)>,
}

/// A child writer and the lines it prints, read on a thread of their own.
struct Child {
    process: std::process::Child,
    lines: mpsc::Receiver<String>,
    reader: std::thread::JoinHandle<()>,
}

fn spawn_child(dir: &Path, round: u64, mode: &str) -> Child {
    let mut process = Command::new(std::env::current_exe().unwrap())
        .args(["kill9_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .env(CHILD_ROUND, round.to_string())
        .env(CHILD_MODE, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = process.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Child {
        process,
        lines,
        reader,
    }
}

impl Child {
    /// Reads lines until `enough` says stop (or panics after 30 s), SIGKILLs the child
    /// (std's kill is SIGKILL on Unix: no destructor, no flush, no clean shutdown), and
    /// returns every line it printed, including those still in the pipe.
    fn kill_when(mut self, mut enough: impl FnMut(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let stop = enough(&line);
                    lines.push(line);
                    if stop {
                        break;
                    }
                }
                Err(_) => {
                    let _ = self.process.kill();
                    panic!("the child stopped writing after {} lines", lines.len());
                }
            }
        }
        self.process.kill().unwrap();
        self.process.wait().unwrap();
        self.reader.join().unwrap();
        lines.extend(self.lines.try_iter());
        lines
    }
}

/// Runs one child until it has printed `acks` durable acks, kills it, and records every
/// line it printed (each was printed after its ack, so all count).
fn run_child_and_kill(dir: &Path, round: u64, acks: usize, acked: &mut Acked) -> usize {
    let mut seen = 0;
    let lines = spawn_child(dir, round, "durable").kill_when(|line| {
        seen += usize::from(line.starts_with("ACK"));
        seen >= acks
    });
    let mut total = 0;
    for line in lines {
        let mut words = line.split_whitespace();
        let (Some(kind), Some(n)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match kind {
            "ACK" => {
                acked.log.insert((round, n));
                total += 1;
            }
            "ACKB" => {
                acked.batches.insert((round, n));
                acked.log.extend((n..n + BATCH).map(|i| (round, i)));
                total += 1;
            }
            "BUF" => {
                acked.buffered.insert((round, n));
            }
            _ => {}
        }
    }
    total
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let rounds: u64 = std::env::var("FOGMESH_KILL9_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    let mut acked = Acked::default();
    for round in 0..rounds {
        // Vary where in the burst the kill lands.
        let target = 150 + (round as usize * 137) % 300;
        let acks = run_child_and_kill(&dir, round, target, &mut acked);

        let report = integrity::check(&dir).unwrap();
        assert!(report.healthy(), "round {round}: {report:?}");
        let store = Store::open(&dir, &StoreOptions::default())
            .unwrap_or_else(|e| panic!("round {round}: the store does not open: {e}"));
        let log = store.ordered_table::<Vec<u8>>(LOG).unwrap();
        let buffered = store.ordered_table::<Vec<u8>>(BUFFERED).unwrap();
        let batches = store.table::<Vec<u64>>(BATCHES).unwrap();

        let mut lost = Vec::new();
        for &(r, i) in &acked.log {
            match log.get(&scope(r), i).unwrap() {
                Some(v) => assert_eq!(v, value(r, i), "round {r} index {i}: wrong value"),
                None => lost.push((r, i)),
            }
        }
        assert!(
            lost.is_empty(),
            "acknowledged writes lost after kill -9 in round {round}: {} of {}, first {:?}",
            lost.len(),
            acked.log.len(),
            &lost[..lost.len().min(10)]
        );

        // Every batch on disk, acknowledged or not, is whole: its record and all entries.
        for r in 0..=round {
            let scope = scope(r);
            for entry in batches.entries() {
                let (key, indices) = entry.unwrap();
                if !key.starts_with(&format!("r{r}-")) {
                    continue;
                }
                for i in indices {
                    assert!(log.get(&scope, i).unwrap().is_some(), "batch {key} torn");
                }
            }
            for &(_, first) in acked.batches.iter().filter(|(br, _)| *br == r) {
                assert!(batches.get(&batch_key(r, first)).unwrap().is_some());
            }
            // And the other way: an entry written by a batch has its batch's record.
            for entry in log.range(&scope, ..) {
                let (i, _) = entry.unwrap();
                if let Some(first) = batch_of(i) {
                    assert!(
                        batches.get(&batch_key(r, first)).unwrap().is_some(),
                        "round {r}: entry {i} without the record of batch {first}"
                    );
                }
            }
        }

        // Buffered writes: present or absent, never damaged; every stored value reads.
        let mut present = 0;
        let mut accepted = 0;
        for r in 0..=round {
            for entry in buffered.range(&scope(r), ..) {
                let (i, v) = entry.unwrap();
                assert_eq!(v, value(r, i), "buffered round {r} index {i}: wrong value");
            }
            for entry in log.range(&scope(r), ..) {
                let (i, v) = entry.unwrap();
                assert_eq!(v, value(r, i), "log round {r} index {i}: wrong value");
            }
        }
        for &(r, i) in acked.buffered.iter().filter(|(r, _)| *r == round) {
            accepted += 1;
            present += usize::from(buffered.get(&scope(r), i).unwrap().is_some());
        }
        eprintln!(
            "kill9 round {round}: killed after {acks} durable acks ({} entries acknowledged \
             in all rounds, all present); buffered writes of this round: {present} of \
             {accepted} present; durable generation {}",
            acked.log.len(),
            store.durable_generation()
        );
    }
}

/// What kill -9 costs buffered writes, through the storage task and with a plain
/// `Table::put`: everything accepted well before the kill (ten of sled's flush intervals)
/// must be there, the lost ones must be the newest (sled recovers a prefix of its log),
/// and none may be damaged.
#[test]
fn buffered_writes_lost_to_kill_9_are_only_the_newest() {
    for mode in ["task", "direct"] {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("store");
        let mut started = None;
        let lines = spawn_child(&dir, 0, mode).kill_when(|_| {
            started.get_or_insert_with(Instant::now).elapsed() > Duration::from_millis(800)
        });
        let killed_at = unix_ms();
        let accepted: Vec<(u64, u64)> = lines
            .iter()
            .filter_map(|line| {
                let mut words = line.strip_prefix("BUF ")?.split_whitespace();
                Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
            })
            .collect();
        assert!(
            accepted.len() > 100,
            "{mode}: only {} writes",
            accepted.len()
        );

        let store = Store::open(&dir, &StoreOptions::default()).unwrap();
        let present: BTreeSet<u64> = if mode == "direct" {
            let table = store.table::<Vec<u8>>(DIRECT).unwrap();
            table
                .entries()
                .map(|entry| {
                    let (key, v) = entry.unwrap();
                    let i: u64 = key.parse().unwrap();
                    assert_eq!(v, value(0, i), "{mode} index {i}: wrong value");
                    i
                })
                .collect()
        } else {
            let table = store.ordered_table::<Vec<u8>>(BUFFERED).unwrap();
            table
                .range(&scope(0), ..)
                .map(|entry| {
                    let (i, v) = entry.unwrap();
                    assert_eq!(v, value(0, i), "{mode} index {i}: wrong value");
                    i
                })
                .collect()
        };
        let lost: Vec<&(u64, u64)> = accepted
            .iter()
            .filter(|(i, _)| !present.contains(i))
            .collect();
        let margin = BUFFERED_FLUSH_EVERY.as_millis() as u64 * 10;
        for (i, at) in &lost {
            assert!(
                killed_at - at < margin,
                "{mode}: write {i}, accepted {} ms before the kill, was lost",
                killed_at - at
            );
        }
        let oldest_lost = lost.iter().map(|(_, at)| killed_at - at).max().unwrap_or(0);
        let suffix = lost.iter().all(|(i, _)| present.iter().all(|p| p < i));
        eprintln!(
            "kill9 buffered ({mode}): {} accepted, {} lost, the oldest lost accepted \
             {oldest_lost} ms before the kill (flush_every {} ms); lost ones are the newest: \
             {suffix}",
            accepted.len(),
            lost.len(),
            BUFFERED_FLUSH_EVERY.as_millis()
        );
        assert!(
            suffix,
            "{mode}: an older write was lost while a newer one survived"
        );
    }
}
