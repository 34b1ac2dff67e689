//! The runtime's side of the store: writes and storage jobs on their way to the storage task,
//! and their outcomes on their way back.
//!
//! Capabilities build [`Batch`]es on their own tables and [`Job`]s that read or write them;
//! this module queues both on the storage task ([`fogmesh_store::task`]), which does all
//! sled work on its own thread, off the swarm task, in queue order (a job sees every write
//! queued before it). Durable writes and jobs report back through a channel
//! ([`StorageReport`]) that the driver reads like any other input, so a capability hears
//! "it is on disk" only once the task's group commit has flushed it (`docs/storage.md`).
//!
//! Backpressure: requests are queued with `try_request`, in order. When the task's queue is
//! full, they wait here, in order, and the driver stops taking remote input until the task
//! has taken the backlog ([`NodeStorage::backlogged`], [`NodeStorage::drain_backlog`]): the
//! capability that writes is slowed down through its inputs; nothing is dropped. Each stall
//! is counted (`fogmesh_storage_backpressure_waits_total`).

use std::collections::VecDeque;

use fogmesh_store::task::{
    Pending, Request, StorageError, StorageHandle, StorageStats, TryRequestError,
};
use fogmesh_store::Batch;
use tokio::sync::mpsc;

use crate::runtime::capability::{Job, JobOutput, Token};

/// Outcomes waiting for the driver. Each durable write or job yields one; the driver reads
/// them before remote work, so the queue stays short.
const REPORT_QUEUE: usize = 1024;

/// Which capability (its index in the registration list) and which of its requests.
type Owner = (usize, Token);

/// What the storage side tells the driver.
#[allow(missing_debug_implementations)]
pub enum StorageReport {
    /// A durable write is on disk, or failed.
    Durable {
        owner: usize,
        token: Token,
        result: Result<(), String>,
    },
    /// A job ran (and, if durable, what it wrote is on disk), or failed.
    Job {
        owner: usize,
        token: Token,
        output: Result<JobOutput, String>,
    },
    /// A buffered write failed.
    Failed(String),
}

/// See the module docs.
#[derive(Debug)]
pub struct NodeStorage {
    handle: StorageHandle,
    reports: mpsc::Sender<StorageReport>,
    backlog: VecDeque<(Request, Option<Owner>)>,
    /// Set once the store failed: every later request is refused at once.
    stopped: Option<String>,
}

impl NodeStorage {
    pub fn new(handle: StorageHandle) -> (Self, mpsc::Receiver<StorageReport>) {
        let (reports, rx) = mpsc::channel(REPORT_QUEUE);
        (
            Self {
                handle,
                reports,
                backlog: VecDeque::new(),
                stopped: None,
            },
            rx,
        )
    }

    pub fn stats(&self) -> StorageStats {
        self.handle.stats()
    }

    /// A buffered write: on disk within the store's flush interval.
    pub fn persist(&mut self, batch: Batch) {
        self.submit(Request::Write(batch), None);
    }

    /// A durable write: `owner` hears of it with `token` once it is on disk.
    pub fn persist_durable(&mut self, batch: Batch, owner: usize, token: Token) {
        self.submit(Request::Durable(batch), Some((owner, token)));
    }

    /// A job on the storage task: `owner` gets its output with `token`.
    pub fn job(&mut self, job: Job, durable: bool, owner: usize, token: Token) {
        self.submit(Request::Job { job, durable }, Some((owner, token)));
    }

    /// The store failed: from now on nothing is written or read; a request that expects an
    /// answer gets the failure, a buffered write is dropped (the node is in safe mode).
    pub fn stop_writing(&mut self, reason: &str) {
        if self.stopped.is_none() {
            self.stopped = Some(format!("the store failed earlier: {reason}"));
        }
    }

    fn submit(&mut self, request: Request, owner: Option<Owner>) {
        if let Some(reason) = &self.stopped {
            if owner.is_some() {
                let job = matches!(request, Request::Job { .. });
                self.refused(owner, job, reason.clone());
            }
            return;
        }
        if !self.backlog.is_empty() {
            // Keep the order: nothing overtakes what already waits.
            self.backlog.push_back((request, owner));
            return;
        }
        let job = matches!(request, Request::Job { .. });
        match self.handle.try_request(request) {
            Ok(pending) => self.forward(pending, owner),
            Err(TryRequestError::Full(request)) => self.backlog.push_back((request, owner)),
            Err(TryRequestError::Closed) => {
                self.refused(owner, job, StorageError::Closed.to_string())
            }
            Err(TryRequestError::Rejected(error)) => self.refused(owner, job, error.to_string()),
        }
    }

    /// Reports a request that was never queued.
    fn refused(&self, owner: Option<Owner>, job: bool, error: String) {
        tracing::error!(%error, "store request refused");
        let report = match owner {
            Some((owner, token)) if job => StorageReport::Job {
                owner,
                token,
                output: Err(error),
            },
            Some((owner, token)) => StorageReport::Durable {
                owner,
                token,
                result: Err(error),
            },
            None => StorageReport::Failed(error),
        };
        // The report queue only fills if the driver is gone, and then so is the node.
        let _ = self.reports.try_send(report);
    }

    /// Hands the answer of a queued request to the driver when it comes.
    fn forward(&self, pending: Pending, owner: Option<Owner>) {
        let Some((owner, token)) = owner else {
            return;
        };
        let reports = self.reports.clone();
        match pending {
            Pending::Nothing => {}
            Pending::Durable(ack) => {
                tokio::spawn(async move {
                    let result = match ack.await {
                        Ok(result) => result.map(drop).map_err(|e| e.to_string()),
                        Err(_) => Err(StorageError::Closed.to_string()),
                    };
                    let _ = reports
                        .send(StorageReport::Durable {
                            owner,
                            token,
                            result,
                        })
                        .await;
                });
            }
            Pending::Job(answer) => {
                tokio::spawn(async move {
                    let output = match answer.await {
                        Ok(result) => result.map_err(|e| e.to_string()),
                        Err(_) => Err(StorageError::Closed.to_string()),
                    };
                    let _ = reports
                        .send(StorageReport::Job {
                            owner,
                            token,
                            output,
                        })
                        .await;
                });
            }
        }
    }

    /// Whether requests wait for room in the storage task's queue.
    pub fn backlogged(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Hands the backlog to the storage task, waiting for room (the backpressure).
    pub async fn drain_backlog(&mut self) {
        while let Some((request, owner)) = self.backlog.pop_front() {
            let job = matches!(request, Request::Job { .. });
            match self.handle.request(request).await {
                Ok(pending) => self.forward(pending, owner),
                Err(error) => self.refused(owner, job, error.to_string()),
            }
        }
    }

    /// Writes what waits, flushes everything and stops the storage task.
    pub async fn close(&mut self) -> Result<(), StorageError> {
        self.drain_backlog().await;
        self.handle.close().await
    }
}
