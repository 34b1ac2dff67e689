//! The storage task: sled writes off the caller's task, behind a bounded queue.
//!
//! A [`StorageHandle`] feeds [`Batch`]es to one worker on its own OS thread. The worker
//! takes everything queued (up to the queue's capacity) as one group and applies its
//! batches in queue order, in as few atomic groups as possible (each batch stays atomic;
//! see [`crate::redo`]). If the group holds durable writes, it then advances the store's generation,
//! runs sled's flush (on its own thread), fsyncs sled's files, replaces the generation marker, and
//! only then acknowledges them, in order. Writes that queue up while a commit is in
//! progress form the next group and share its flush (group commit), which is where the
//! throughput of concurrent writers comes from.
//!
//! Queue full: [`StorageHandle::write`] and [`StorageHandle::write_durable`] wait for room
//! (counted as a backpressure wait) and never drop a write; [`StorageHandle::try_write`]
//! hands the batch back instead (counted as a refusal).
//!
//! Reads do not go through the task: sled is safe to read from any thread, so callers read
//! the tables directly ([`StorageHandle::store`]). A read sees a write once the worker has
//! applied it; a durable ack means it was applied, and [`StorageHandle::flush`] waits for
//! everything queued before it. A read is a B-tree lookup in sled's cache (microseconds)
//! or a disk read on a miss; it never waits for a writer (no sled transactions, so no
//! sled-wide lock). Keep scans on latency-sensitive tasks bounded (`.take(n)`).
//!
//! Shutdown: [`StorageHandle::close`] (or dropping the last handle) lets the worker apply
//! everything already queued, make it durable and stop. Afterwards every call returns
//! [`StorageError::Closed`]; a caller never hangs on a task that is gone, including one
//! that panicked (its reply channels are dropped, which reads as `Closed`). Dropping does
//! not wait for that final commit, so a process about to exit awaits `close` instead.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use serde::Serialize;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::batch::{self, Batch};
use crate::{Store, StoreError};

/// Options for the storage task.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Commands the queue holds before writers wait (and `try_write` refuses). Also the
    /// most writes one group commit takes.
    pub queue_capacity: usize,
    /// Tests hold durable commits back with this: the worker takes one permit before each
    /// commit.
    #[doc(hidden)]
    pub commit_gate: Option<Arc<Semaphore>>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 1024,
            commit_gate: None,
        }
    }
}

/// Why a write through the storage task did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error("the storage task has stopped")]
    Closed,
    /// Refused before queueing (a poisoned batch, or tables of another store): nothing was
    /// applied.
    #[error("the batch was refused: {0}")]
    Rejected(StoreError),
    /// sled failed while applying the batch (I/O). Nothing of it was applied, or, if sled
    /// failed part-way, the store finishes it before its next write and when next opened.
    #[error("applying the batch failed: {0}")]
    Apply(StoreError),
    /// The batch was applied but the commit that should have made it durable failed, so it
    /// may or may not survive a crash.
    #[error("the batch was applied but could not be made durable: {0}")]
    Flush(StoreError),
    /// A job panicked on the storage task (the task goes on; what the job wrote before it
    /// panicked stays written).
    #[error("a storage job panicked: {0}")]
    JobPanicked(String),
}

/// What a job returns; its caller downcasts it.
pub type JobOutput = Box<dyn std::any::Any + Send>;

/// Work on the storage task's thread, in queue order with the writes around it: reads see
/// every write queued before the job, and what the job writes (through tables) is made
/// durable with the group's commit when the job asks for it.
pub type StoreJob = Box<dyn FnOnce() -> JobOutput + Send>;

/// What can be queued on the storage task.
pub enum Request {
    /// A buffered write.
    Write(Batch),
    /// A write answered once on disk.
    Durable(Batch),
    /// A job; answered once it ran, or (`durable`) once what it wrote is on disk.
    Job { job: StoreJob, durable: bool },
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Write(batch) => f.debug_tuple("Write").field(&batch.len()).finish(),
            Request::Durable(batch) => f.debug_tuple("Durable").field(&batch.len()).finish(),
            Request::Job { durable, .. } => {
                f.debug_struct("Job").field("durable", durable).finish()
            }
        }
    }
}

/// The answer a queued [`Request`] will get.
#[derive(Debug)]
pub enum Pending {
    /// A buffered write: nobody is answered.
    Nothing,
    Durable(oneshot::Receiver<Result<DurableAck, StorageError>>),
    Job(oneshot::Receiver<Result<JobOutput, StorageError>>),
}

/// Why [`StorageHandle::try_request`] did not queue a request.
#[derive(Debug, thiserror::Error)]
pub enum TryRequestError {
    /// The queue is full: the request is handed back to wait for room.
    #[error("the storage queue is full")]
    Full(Request),
    #[error("the storage task has stopped")]
    Closed,
    #[error("the batch was refused: {0}")]
    Rejected(StoreError),
}

/// Why [`StorageHandle::try_write`] did not queue a batch; the first two hand it back.
#[derive(Debug, thiserror::Error)]
pub enum TryWriteError {
    #[error("the storage queue is full")]
    Full(Batch),
    #[error("the storage task has stopped")]
    Closed(Batch),
    #[error("the batch was refused: {0}")]
    Rejected(StoreError),
}

impl TryWriteError {
    /// The batch, when it was handed back (queue full or task stopped).
    pub fn into_batch(self) -> Option<Batch> {
        match self {
            TryWriteError::Full(batch) | TryWriteError::Closed(batch) => Some(batch),
            TryWriteError::Rejected(_) => None,
        }
    }
}

/// A durable write is on disk: it and everything queued before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurableAck {
    /// The durable generation that covers the write (see [`crate::generation`]).
    pub generation: u64,
}

/// The storage task's counters, read from the same metrics Prometheus scrapes. The durable
/// ack latency histogram is only in Prometheus (prometheus-client reads its sum and count
/// back only in test builds); its count equals `durable_writes`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StorageStats {
    /// Batches applied, buffered and durable.
    pub writes: u64,
    /// Durable writes acknowledged.
    pub durable_writes: u64,
    /// Puts and removes applied (a range removal counts each entry it removed).
    pub entries: u64,
    /// Durable commits (one flush each); `durable_writes / commits` is the group size.
    pub commits: u64,
    /// Writes that failed to apply or to become durable.
    pub errors: u64,
    /// Times a writer found the queue full and waited.
    pub backpressure_waits: u64,
    /// `try_write` calls refused because the queue was full.
    pub queue_full: u64,
    /// Commands in the queue now.
    pub queue_depth: i64,
    pub queue_capacity: usize,
}

/// The metrics themselves: shared by the handles, the worker and a Prometheus registry.
#[derive(Debug, Clone)]
struct Metrics {
    writes: Counter,
    durable_writes: Counter,
    entries: Counter,
    commits: Counter,
    errors: Counter,
    backpressure_waits: Counter,
    queue_full: Counter,
    queue_depth: Gauge,
    queue_capacity: Gauge,
    durable_ack: Histogram,
}

impl Metrics {
    fn new(capacity: usize) -> Self {
        let queue_capacity = Gauge::default();
        queue_capacity.set(i64::try_from(capacity).unwrap_or(i64::MAX));
        Self {
            writes: Counter::default(),
            durable_writes: Counter::default(),
            entries: Counter::default(),
            commits: Counter::default(),
            errors: Counter::default(),
            backpressure_waits: Counter::default(),
            queue_full: Counter::default(),
            queue_depth: Gauge::default(),
            queue_capacity,
            // 100 µs to 3.3 s: an fsync on an idle SSD up to a busy SD card.
            durable_ack: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
        }
    }
}

enum Command {
    Write(Batch),
    Durable {
        batch: Batch,
        since: Instant,
        reply: oneshot::Sender<Result<DurableAck, StorageError>>,
    },
    Job {
        job: StoreJob,
        durable: bool,
        reply: oneshot::Sender<Result<JobOutput, StorageError>>,
    },
    Close,
}

/// What the worker leaves when it stops: the result of its final commit.
type Stopped = Option<Result<(), StorageError>>;

/// A handle to the storage task; clone it freely. See the [module docs](self).
#[derive(Clone)]
pub struct StorageHandle {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

struct Shared {
    store: Store,
    metrics: Metrics,
    capacity: usize,
    stopped: watch::Receiver<Stopped>,
}

impl fmt::Debug for StorageHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageHandle")
            .field("store", &self.shared.store.path())
            .field("capacity", &self.shared.capacity)
            .field("closed", &self.tx.is_closed())
            .finish()
    }
}

impl StorageHandle {
    /// Starts the storage task for `store` on a thread of its own.
    pub fn spawn(store: Store, config: StorageConfig) -> Result<Self, StoreError> {
        let capacity = config.queue_capacity.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let (stopped_tx, stopped) = watch::channel(None);
        let metrics = Metrics::new(capacity);
        // The worker blocks in sled calls, flushes included, so it gets its own thread and a
        // runtime of its own only to await the queue; the caller's runtime is never blocked.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(StoreError::from_io)?;
        let worker = Worker {
            rx,
            store: store.clone(),
            metrics: metrics.clone(),
            gate: config.commit_gate,
            max_group: capacity,
            dirty: false,
        };
        std::thread::Builder::new()
            .name("fogmesh-storage".into())
            .spawn(move || {
                let result = runtime.block_on(worker.run());
                stopped_tx.send_replace(Some(result));
            })
            .map_err(StoreError::from_io)?;
        Ok(Self {
            tx,
            shared: Arc::new(Shared {
                store,
                metrics,
                capacity,
                stopped,
            }),
        })
    }

    /// The store, for reads (see the [module docs](self)).
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Queues `batch` to be applied (buffered: on disk within the store's `flush_every`, or
    /// at the next durable commit). Waits while the queue is full. Returns once queued; an
    /// error applying it later is logged and counted, not returned.
    pub async fn write(&self, batch: Batch) -> Result<(), StorageError> {
        self.check(&batch)?;
        self.send(Command::Write(batch)).await
    }

    /// Queues `batch` if there is room now; otherwise hands it back.
    pub fn try_write(&self, batch: Batch) -> Result<(), TryWriteError> {
        if let Err(error) = self.check(&batch) {
            return Err(match error {
                StorageError::Rejected(e) => TryWriteError::Rejected(e),
                _ => TryWriteError::Closed(batch),
            });
        }
        match self.tx.try_reserve() {
            Ok(permit) => {
                self.shared.metrics.queue_depth.inc();
                permit.send(Command::Write(batch));
                Ok(())
            }
            Err(TrySendError::Full(())) => {
                self.shared.metrics.queue_full.inc();
                Err(TryWriteError::Full(batch))
            }
            Err(TrySendError::Closed(())) => Err(TryWriteError::Closed(batch)),
        }
    }

    /// Queues `request` if there is room now (in order with everything queued before it);
    /// otherwise hands it back. The answer comes on the returned [`Pending`].
    pub fn try_request(&self, request: Request) -> Result<Pending, TryRequestError> {
        if let Request::Write(batch) | Request::Durable(batch) = &request {
            if let Err(error) = self.check(batch) {
                return Err(match error {
                    StorageError::Rejected(e) => TryRequestError::Rejected(e),
                    _ => TryRequestError::Closed,
                });
            }
        }
        match self.tx.try_reserve() {
            Ok(permit) => {
                self.shared.metrics.queue_depth.inc();
                let (command, pending) = Self::command(request);
                permit.send(command);
                Ok(pending)
            }
            Err(TrySendError::Full(())) => {
                self.shared.metrics.queue_full.inc();
                Err(TryRequestError::Full(request))
            }
            Err(TrySendError::Closed(())) => Err(TryRequestError::Closed),
        }
    }

    /// Queues `request`, waiting for room (the backpressure); the answer comes on the
    /// returned [`Pending`].
    pub async fn request(&self, request: Request) -> Result<Pending, StorageError> {
        if let Request::Write(batch) | Request::Durable(batch) = &request {
            self.check(batch)?;
        }
        let (command, pending) = Self::command(request);
        self.send(command).await?;
        Ok(pending)
    }

    fn command(request: Request) -> (Command, Pending) {
        match request {
            Request::Write(batch) => (Command::Write(batch), Pending::Nothing),
            Request::Durable(batch) => {
                let (reply, ack) = oneshot::channel();
                let command = Command::Durable {
                    batch,
                    since: Instant::now(),
                    reply,
                };
                (command, Pending::Durable(ack))
            }
            Request::Job { job, durable } => {
                let (reply, answer) = oneshot::channel();
                (
                    Command::Job {
                        job,
                        durable,
                        reply,
                    },
                    Pending::Job(answer),
                )
            }
        }
    }

    /// Runs `job` on the storage task, after everything queued before it; resolves with its
    /// output once it ran, or (`durable`) once what it wrote is on disk.
    pub async fn run_job(&self, job: StoreJob, durable: bool) -> Result<JobOutput, StorageError> {
        match self.request(Request::Job { job, durable }).await? {
            Pending::Job(answer) => answer.await.map_err(|_| StorageError::Closed)?,
            _ => Err(StorageError::Closed),
        }
    }

    /// Applies `batch` atomically and resolves once it is on disk (sled flushed, its files
    /// fsynced, the generation marker advanced). Waits while the queue is full. Dropping
    /// the future does not cancel a write already queued.
    pub async fn write_durable(&self, batch: Batch) -> Result<DurableAck, StorageError> {
        let since = Instant::now();
        self.check(&batch)?;
        let (reply, ack) = oneshot::channel();
        self.send(Command::Durable {
            batch,
            since,
            reply,
        })
        .await?;
        ack.await.map_err(|_| StorageError::Closed)?
    }

    /// Resolves once everything queued before it is applied and on disk.
    pub async fn flush(&self) -> Result<DurableAck, StorageError> {
        self.write_durable(Batch::new()).await
    }

    /// Stops the task: everything already queued is applied and made durable, then the
    /// worker ends; returns the result of that final commit. Writes after this (from any
    /// clone) fail with [`StorageError::Closed`]. Safe to call more than once.
    pub async fn close(&self) -> Result<(), StorageError> {
        // Already closed by another clone: there is nothing to send, only to wait for.
        if let Ok(permit) = self.tx.reserve().await {
            self.shared.metrics.queue_depth.inc();
            permit.send(Command::Close);
        }
        let mut stopped = self.shared.stopped.clone();
        let result = match stopped.wait_for(Option::is_some).await {
            Ok(result) => result.clone().unwrap_or(Err(StorageError::Closed)),
            // The worker ended without a result: it panicked.
            Err(_) => Err(StorageError::Closed),
        };
        result
    }

    /// True once the task no longer takes writes.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// A snapshot of the counters, read from the same metrics [`Self::register_metrics`]
    /// registers.
    pub fn stats(&self) -> StorageStats {
        let m = &self.shared.metrics;
        StorageStats {
            writes: m.writes.get(),
            durable_writes: m.durable_writes.get(),
            entries: m.entries.get(),
            commits: m.commits.get(),
            errors: m.errors.get(),
            backpressure_waits: m.backpressure_waits.get(),
            queue_full: m.queue_full.get(),
            queue_depth: m.queue_depth.get(),
            queue_capacity: self.shared.capacity,
        }
    }

    /// Registers the task's metrics under `storage_*` names (counters get `_total` from the
    /// encoder); the node registers them in a registry prefixed `fogmesh`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        let m = &self.shared.metrics;
        registry.register(
            "storage_writes",
            "Batches the storage task applied, buffered and durable",
            m.writes.clone(),
        );
        registry.register(
            "storage_durable_writes",
            "Durable writes acknowledged after their data was on disk",
            m.durable_writes.clone(),
        );
        registry.register(
            "storage_entries",
            "Puts and removes the storage task applied",
            m.entries.clone(),
        );
        registry.register(
            "storage_commits",
            "Durable commits (one sled flush each); durable writes queued together share one",
            m.commits.clone(),
        );
        registry.register(
            "storage_errors",
            "Writes that failed to apply or to become durable",
            m.errors.clone(),
        );
        registry.register(
            "storage_backpressure_waits",
            "Times a writer waited because the storage queue was full",
            m.backpressure_waits.clone(),
        );
        registry.register(
            "storage_queue_full",
            "try_write calls refused because the storage queue was full",
            m.queue_full.clone(),
        );
        registry.register(
            "storage_queue_depth",
            "Commands waiting in the storage queue",
            m.queue_depth.clone(),
        );
        registry.register(
            "storage_queue_capacity",
            "Commands the storage queue holds before writers wait",
            m.queue_capacity.clone(),
        );
        registry.register_with_unit(
            "storage_durable_ack",
            "Time from a durable write's call to its acknowledgement",
            Unit::Seconds,
            m.durable_ack.clone(),
        );
    }

    fn check(&self, batch: &Batch) -> Result<(), StorageError> {
        if let Some(error) = batch.error() {
            return Err(StorageError::Rejected(error.clone()));
        }
        self.shared
            .store
            .check_owner(batch)
            .map_err(StorageError::Rejected)
    }

    async fn send(&self, command: Command) -> Result<(), StorageError> {
        let permit = match self.tx.try_reserve() {
            Ok(permit) => permit,
            Err(TrySendError::Full(())) => {
                // The wait below is the backpressure: the writing service slows to the disk.
                self.shared.metrics.backpressure_waits.inc();
                tracing::debug!(
                    capacity = self.shared.capacity,
                    "storage queue full; writer waits"
                );
                self.tx.reserve().await.map_err(|_| StorageError::Closed)?
            }
            Err(TrySendError::Closed(())) => return Err(StorageError::Closed),
        };
        // Counted before sending, so the worker's decrement can never run first.
        self.shared.metrics.queue_depth.inc();
        permit.send(command);
        Ok(())
    }
}

/// Most operations applied as one atomic group. A group of several writes is written twice
/// (its redo record, then the writes), so the bound keeps that record small.
const MAX_GROUP_OPS: usize = 1024;

/// A durable write applied, or a durable job run, waiting for its group's commit.
enum Waiting {
    Write {
        since: Instant,
        reply: oneshot::Sender<Result<DurableAck, StorageError>>,
        applied: Result<(), StoreError>,
    },
    Job {
        reply: oneshot::Sender<Result<JobOutput, StorageError>>,
        output: Result<JobOutput, StorageError>,
    },
}

/// Consecutive writes of a group, applied together before the next job runs.
#[derive(Default)]
struct Run {
    batches: Vec<Batch>,
    /// Per write: its batch's position in `batches` (none for an empty batch, which is only
    /// a flush request) and, for a durable write, who waits for it.
    slots: Vec<(Option<usize>, Option<DurableReply>)>,
}

type DurableReply = (Instant, oneshot::Sender<Result<DurableAck, StorageError>>);

struct Worker {
    rx: mpsc::Receiver<Command>,
    store: Store,
    metrics: Metrics,
    gate: Option<Arc<Semaphore>>,
    max_group: usize,
    /// Something was applied since the last durable commit.
    dirty: bool,
}

impl Run {
    fn push(&mut self, batch: Batch, durable: Option<DurableReply>) {
        let position = (!batch.is_empty()).then(|| {
            self.batches.push(batch);
            self.batches.len() - 1
        });
        self.slots.push((position, durable));
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

impl Worker {
    async fn run(mut self) -> Result<(), StorageError> {
        tracing::debug!(store = %self.store.path().display(), "storage task started");
        let mut group = Vec::new();
        while let Some(first) = self.rx.recv().await {
            group.push(first);
            // Everything that queued meanwhile joins this group, bounded so one group
            // cannot grow while new writes keep arriving.
            while group.len() < self.max_group {
                match self.rx.try_recv() {
                    Ok(command) => group.push(command),
                    Err(_) => break,
                }
            }
            self.metrics
                .queue_depth
                .dec_by(i64::try_from(group.len()).unwrap_or(i64::MAX));
            self.process(&mut group).await;
        }
        // The queue is closed and drained: `close` was called or every handle is gone.
        let result = if self.dirty {
            self.commit().await.map(|_| ()).map_err(StorageError::Flush)
        } else {
            Ok(())
        };
        match &result {
            Ok(()) => tracing::debug!(store = %self.store.path().display(), "storage task stopped"),
            Err(error) => tracing::error!(
                store = %self.store.path().display(),
                %error,
                "storage task stopped without making its last writes durable"
            ),
        }
        result
    }

    async fn process(&mut self, group: &mut Vec<Command>) {
        let size = group.len();
        let mut run = Run::default();
        let mut waiting = Vec::new();
        for command in group.drain(..) {
            match command {
                Command::Write(batch) => run.push(batch, None),
                Command::Durable {
                    batch,
                    since,
                    reply,
                } => run.push(batch, Some((since, reply))),
                Command::Job {
                    job,
                    durable,
                    reply,
                } => {
                    // The job sees every write queued before it.
                    self.apply_run(&mut run, &mut waiting);
                    let output = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))
                        .map_err(|panic| StorageError::JobPanicked(panic_text(&panic)));
                    if let Err(error) = &output {
                        self.metrics.errors.inc();
                        tracing::error!(%error, "storage: a job panicked");
                    }
                    // What the job wrote is unknown here: the next commit covers it.
                    self.dirty = true;
                    if durable {
                        waiting.push(Waiting::Job { reply, output });
                    } else {
                        let _ = reply.send(output);
                    }
                }
                // Refuse new commands but keep draining what is already queued.
                Command::Close => self.rx.close(),
            }
        }
        self.apply_run(&mut run, &mut waiting);
        if waiting.is_empty() {
            return;
        }
        let started = Instant::now();
        let committed = self.commit().await;
        match &committed {
            Ok(generation) => tracing::debug!(
                generation,
                durable = waiting.len(),
                group = size,
                micros = started.elapsed().as_micros(),
                "storage: durable commit"
            ),
            Err(error) => tracing::error!(
                %error,
                durable = waiting.len(),
                "storage: durable commit failed; its writes are not acknowledged"
            ),
        }
        for write in waiting {
            match write {
                Waiting::Write {
                    since,
                    reply,
                    applied,
                } => {
                    let result = match (applied, &committed) {
                        (Err(error), _) => {
                            self.metrics.errors.inc();
                            Err(StorageError::Apply(error))
                        }
                        (Ok(()), Ok(generation)) => {
                            self.metrics.durable_writes.inc();
                            self.metrics
                                .durable_ack
                                .observe(since.elapsed().as_secs_f64());
                            Ok(DurableAck {
                                generation: *generation,
                            })
                        }
                        (Ok(()), Err(error)) => {
                            self.metrics.errors.inc();
                            Err(StorageError::Flush(error.clone()))
                        }
                    };
                    // A caller that stopped waiting gets nothing; its write stays applied.
                    let _ = reply.send(result);
                }
                Waiting::Job { reply, output } => {
                    let result = match (output, &committed) {
                        (Ok(output), Ok(_)) => Ok(output),
                        (Err(error), _) => Err(error),
                        (Ok(_), Err(error)) => Err(StorageError::Flush(error.clone())),
                    };
                    let _ = reply.send(result);
                }
            }
        }
    }

    /// Applies a run of writes; buffered failures are logged and counted, durable ones wait
    /// for the commit with their outcome.
    fn apply_run(&mut self, run: &mut Run, waiting: &mut Vec<Waiting>) {
        if run.slots.is_empty() {
            return;
        }
        let results = self.apply(&run.batches);
        run.batches.clear();
        for (position, durable) in run.slots.drain(..) {
            let applied = position.map_or(Ok(()), |i| results[i].clone());
            match durable {
                // Nobody awaits a buffered write: its failure is logged and counted.
                None => {
                    if let Err(error) = applied {
                        self.metrics.errors.inc();
                        tracing::warn!(%error, "storage: a buffered write failed to apply");
                    }
                }
                Some((since, reply)) => waiting.push(Waiting::Write {
                    since,
                    reply,
                    applied,
                }),
            }
        }
    }

    /// Applies the group's batches, in order, in as few atomic groups as
    /// [`MAX_GROUP_OPS`] allows. Returns one result per batch.
    fn apply(&mut self, batches: &[Batch]) -> Vec<Result<(), StoreError>> {
        let mut results = Vec::with_capacity(batches.len());
        let mut start = 0;
        while start < batches.len() {
            let mut end = start + 1;
            let mut ops = batches[start].len();
            while end < batches.len() && ops + batches[end].len() <= MAX_GROUP_OPS {
                ops += batches[end].len();
                end += 1;
            }
            results.extend(self.apply_together(&batches[start..end]));
            start = end;
        }
        results
    }

    /// Applies `batches` as one atomic group; if that fails, one by one, so only the batch
    /// at fault fails.
    fn apply_together(&mut self, batches: &[Batch]) -> Vec<Result<(), StoreError>> {
        match batch::apply_all(batches) {
            Ok(applied) => {
                self.applied(batches.len(), applied.entries);
                vec![Ok(()); batches.len()]
            }
            Err(error) if batches.len() == 1 => vec![Err(error)],
            Err(error) => {
                tracing::debug!(
                    %error,
                    batches = batches.len(),
                    "storage: a group failed; applying its batches one by one"
                );
                batches
                    .iter()
                    .map(|b| batch::apply(b).map(|applied| self.applied(1, applied.entries)))
                    .collect()
            }
        }
    }

    fn applied(&mut self, batches: usize, entries: usize) {
        self.dirty = true;
        self.metrics
            .writes
            .inc_by(u64::try_from(batches).unwrap_or(u64::MAX));
        self.metrics
            .entries
            .inc_by(u64::try_from(entries).unwrap_or(u64::MAX));
    }

    /// One group commit: the generation goes into sled after the data it covers, sled
    /// flushes both, then `seal` fsyncs sled's files and moves the marker.
    async fn commit(&mut self) -> Result<u64, StoreError> {
        if let Some(gate) = &self.gate {
            if let Ok(permit) = gate.acquire().await {
                permit.forget();
            }
        }
        let generation = self.store.generation().advance()?;
        // The blocking flush, on this worker's own thread: `flush_async` would run it on
        // sled's shared thread pool, and with many stores in a process (the in-memory
        // network) flushes filled that pool while waiting for log writes queued on it.
        self.store.db().flush()?;
        self.store.generation().seal(generation)?;
        self.metrics.commits.inc();
        self.dirty = false;
        Ok(generation)
    }
}
