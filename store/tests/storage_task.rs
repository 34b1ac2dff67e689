#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The storage task: durable acks only after the commit, backpressure on a full queue,
//! group commit, shutdown, metrics.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fogmesh_store::{
    Batch, Scope, StorageConfig, StorageError, StorageHandle, Store, StoreOptions, Table,
    TryWriteError,
};
use tokio::sync::Semaphore;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    names: Table<String>,
    gate: Arc<Semaphore>,
    handle: StorageHandle,
}

/// A store and its task; commits wait for permits on `gate` when `gated`.
fn fixture(capacity: usize, gated: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let names = store.table::<String>("names").unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let handle = StorageHandle::spawn(
        store.clone(),
        StorageConfig {
            queue_capacity: capacity,
            commit_gate: gated.then(|| gate.clone()),
        },
    )
    .unwrap();
    Fixture {
        _dir: dir,
        store,
        names,
        gate,
        handle,
    }
}

fn put(table: &Table<String>, key: &str) -> Batch {
    let mut batch = Batch::new();
    batch.put(table, key, &format!("value of {key}")).unwrap();
    batch
}

fn marker(store: &Store) -> u64 {
    fogmesh_store::generation::read_marker(store.path())
        .unwrap()
        .unwrap()
}

/// True if `fut` is still pending after a short while (it is polled, not dropped).
async fn stays_pending<F: Future + Unpin>(fut: &mut F) -> bool {
    tokio::time::timeout(Duration::from_millis(100), fut)
        .await
        .is_err()
}

/// Waits until the worker has taken everything from the queue.
async fn until(mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("condition not reached in 1 s");
}

#[tokio::test]
async fn a_durable_ack_comes_only_after_the_commit() {
    let f = fixture(16, true);
    let before = marker(&f.store);
    let mut ack = Box::pin(f.handle.write_durable(put(&f.names, "a")));
    assert!(stays_pending(&mut ack).await, "acked before its commit");
    // Applied (readable) but not yet durable: the marker has not moved.
    assert_eq!(f.names.get("a").unwrap().as_deref(), Some("value of a"));
    assert_eq!(marker(&f.store), before);
    f.gate.add_permits(1);
    let ack = ack.await.unwrap();
    assert_eq!(ack.generation, before + 1);
    assert_eq!(marker(&f.store), ack.generation);
    assert_eq!(f.store.durable_generation(), ack.generation);
    let stats = f.handle.stats();
    assert_eq!(
        (stats.durable_writes, stats.commits, stats.errors),
        (1, 1, 0)
    );
}

#[tokio::test]
async fn a_full_queue_makes_writers_wait_and_try_write_hand_the_batch_back() {
    let f = fixture(2, true);
    let h = &f.handle;
    // The worker takes this one and holds at the gate, so the queue behind it fills.
    let mut first = Box::pin(h.write_durable(put(&f.names, "d0")));
    assert!(stays_pending(&mut first).await);
    until(|| h.stats().queue_depth == 0).await;
    h.write(put(&f.names, "w1")).await.unwrap();
    h.write(put(&f.names, "w2")).await.unwrap();
    assert_eq!(h.stats().queue_depth, 2);

    let refused = h.try_write(put(&f.names, "w3")).unwrap_err();
    assert!(matches!(refused, TryWriteError::Full(_)));
    let w3 = refused.into_batch().unwrap();
    assert_eq!(h.stats().queue_full, 1);

    let mut waiting = Box::pin(h.write(put(&f.names, "w4")));
    assert!(stays_pending(&mut waiting).await, "write did not wait");
    assert_eq!(h.stats().backpressure_waits, 1);

    f.gate.add_permits(100);
    first.await.unwrap();
    waiting.await.unwrap();
    h.write(w3).await.unwrap();
    h.flush().await.unwrap();
    for key in ["d0", "w1", "w2", "w3", "w4"] {
        assert!(f.names.get(key).unwrap().is_some(), "{key} missing");
    }
    let stats = h.stats();
    assert_eq!((stats.writes, stats.queue_depth, stats.errors), (5, 0, 0));
}

#[tokio::test]
async fn durable_writes_queued_during_a_commit_share_the_next_one() {
    let f = fixture(64, true);
    let h = &f.handle;
    let mut first = Box::pin(h.write_durable(put(&f.names, "first")));
    assert!(stays_pending(&mut first).await);
    until(|| h.stats().queue_depth == 0).await;
    let rest: Vec<_> = (0..20)
        .map(|i| {
            let h = h.clone();
            let batch = put(&f.names, &format!("k{i:02}"));
            tokio::spawn(async move { h.write_durable(batch).await })
        })
        .collect();
    until(|| h.stats().queue_depth == 20).await;
    f.gate.add_permits(2);
    let first = first.await.unwrap();
    let mut generations = Vec::new();
    for task in rest {
        generations.push(task.await.unwrap().unwrap().generation);
    }
    // One commit for the first write, one for all twenty queued behind it.
    assert!(generations.iter().all(|g| *g == first.generation + 1));
    let stats = h.stats();
    assert_eq!((stats.durable_writes, stats.commits), (21, 2));
}

#[tokio::test]
async fn close_makes_queued_writes_durable_and_later_calls_fail() {
    let f = fixture(64, false);
    let log = f.store.ordered_table::<u64>("log").unwrap();
    let scope = Scope::new("origin").unwrap();
    let before = f.store.durable_generation();
    for i in 0..50 {
        let mut batch = Batch::new();
        batch.put_ordered(&log, &scope, i, &i).unwrap();
        f.handle.write(batch).await.unwrap();
    }
    let other = f.handle.clone();
    f.handle.close().await.unwrap();
    assert_eq!(log.count(&scope, ..).unwrap(), 50);
    assert!(f.store.durable_generation() > before, "no final commit");
    assert_eq!(marker(&f.store), f.store.durable_generation());
    assert!(other.is_closed());
    assert!(matches!(
        other.write(put(&f.names, "late")).await,
        Err(StorageError::Closed)
    ));
    assert!(matches!(
        other.write_durable(put(&f.names, "late")).await,
        Err(StorageError::Closed)
    ));
    assert!(matches!(
        other.try_write(put(&f.names, "late")),
        Err(TryWriteError::Closed(_))
    ));
    // Closing again just reports the same end.
    other.close().await.unwrap();
}

#[tokio::test]
async fn dropping_every_handle_still_commits_what_was_queued() {
    let f = fixture(64, false);
    let before = f.store.durable_generation();
    f.handle.write(put(&f.names, "last")).await.unwrap();
    let store = f.store.clone();
    drop(f.handle);
    until(|| store.durable_generation() > before).await;
    assert!(f.names.get("last").unwrap().is_some());
}

#[tokio::test]
async fn bad_batches_are_refused_before_queueing_and_apply_failures_are_reported() {
    let f = fixture(8, false);
    let other_dir = tempfile::tempdir().unwrap();
    let other = Store::open(other_dir.path(), &StoreOptions::default()).unwrap();
    let foreign = other.table::<String>("names").unwrap();
    let err = f.handle.write(put(&foreign, "x")).await.unwrap_err();
    assert!(matches!(err, StorageError::Rejected(_)), "{err}");

    let mut failing = put(&f.names, "a");
    failing.fail_for_test();
    let err = f.handle.write_durable(failing).await.unwrap_err();
    assert!(matches!(err, StorageError::Apply(_)), "{err}");
    assert!(f.names.get("a").unwrap().is_none());
    assert_eq!(f.handle.stats().errors, 1);
    f.handle.close().await.unwrap();
}

#[tokio::test]
async fn a_failing_batch_in_a_group_fails_alone() {
    let f = fixture(16, true);
    let h = &f.handle;
    let mut first = Box::pin(h.write_durable(put(&f.names, "first")));
    assert!(stays_pending(&mut first).await);
    until(|| h.stats().queue_depth == 0).await;
    // These three queue behind the held commit and are applied as one group.
    let mut failing = put(&f.names, "bad");
    failing.fail_for_test();
    let (good, bad, buffered) = (h.clone(), h.clone(), h.clone());
    let good_batch = put(&f.names, "good");
    let buffered_batch = put(&f.names, "buffered");
    let good = tokio::spawn(async move { good.write_durable(good_batch).await });
    let bad = tokio::spawn(async move { bad.write_durable(failing).await });
    until(|| h.stats().queue_depth == 2).await;
    buffered.write(buffered_batch).await.unwrap();
    f.gate.add_permits(2);
    first.await.unwrap();
    good.await.unwrap().unwrap();
    assert!(matches!(bad.await.unwrap(), Err(StorageError::Apply(_))));
    assert!(f.names.get("good").unwrap().is_some());
    assert!(f.names.get("buffered").unwrap().is_some());
    assert!(f.names.get("bad").unwrap().is_none());
    let stats = h.stats();
    assert_eq!((stats.writes, stats.errors, stats.commits), (3, 1, 2));
}

#[tokio::test]
async fn metrics_are_registered_with_prometheus_names_and_match_stats() {
    let f = fixture(8, false);
    f.handle.write(put(&f.names, "a")).await.unwrap();
    f.handle.write_durable(put(&f.names, "b")).await.unwrap();
    let mut registry = prometheus_client::registry::Registry::with_prefix("fogmesh");
    f.handle.register_metrics(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        "fogmesh_storage_writes_total 2",
        "fogmesh_storage_durable_writes_total 1",
        "fogmesh_storage_entries_total 2",
        "fogmesh_storage_commits_total 1",
        "fogmesh_storage_errors_total 0",
        "fogmesh_storage_backpressure_waits_total 0",
        "fogmesh_storage_queue_full_total 0",
        "fogmesh_storage_queue_depth 0",
        "fogmesh_storage_queue_capacity 8",
        "fogmesh_storage_durable_ack_seconds_count 1",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    assert!(text.contains("# UNIT fogmesh_storage_durable_ack_seconds seconds"));
    let stats = f.handle.stats();
    assert_eq!(
        (stats.writes, stats.durable_writes, stats.commits),
        (2, 1, 1)
    );
}

#[tokio::test]
async fn a_job_sees_the_writes_queued_before_it_and_a_durable_one_waits_for_the_commit() {
    let f = fixture(64, true);
    f.handle.write(put(&f.names, "before")).await.unwrap();
    let names = f.names.clone();
    let read = f.handle.run_job(
        Box::new(move || Box::new(names.get("before").unwrap())),
        false,
    );
    // Not durable: answered without a commit (the gate holds every commit back).
    let seen = tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("a read job waits for no commit")
        .unwrap();
    assert_eq!(
        *seen.downcast::<Option<String>>().unwrap(),
        Some("value of before".to_owned())
    );
    let names = f.names.clone();
    let write = f.handle.run_job(
        Box::new(move || {
            names.put("by_job", &"x".to_owned()).unwrap();
            Box::new(7u32)
        }),
        true,
    );
    tokio::pin!(write);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut write)
            .await
            .is_err(),
        "a durable job is answered only after its commit"
    );
    let generation = marker(&f.store);
    f.gate.add_permits(1);
    let output = write.await.unwrap();
    assert_eq!(*output.downcast::<u32>().unwrap(), 7);
    assert!(marker(&f.store) > generation);
}

#[tokio::test]
async fn a_panicking_job_fails_alone() {
    let f = fixture(64, false);
    let failed = f
        .handle
        .run_job(Box::new(|| panic!("job broke")), false)
        .await;
    assert!(matches!(failed, Err(StorageError::JobPanicked(ref m)) if m == "job broke"));
    f.handle
        .write_durable(put(&f.names, "after"))
        .await
        .unwrap();
    assert_eq!(f.names.get("after").unwrap(), Some("value of after".into()));
}
