//! Blobs as the capability uses them: from memory when cached, else read by a storage job
//! with whoever waits for it (a peer's fetch, `task result`, a run, a report) resumed when
//! the read comes back; new ones written in batches ordered ahead of what names them.

use super::*;

/// Who waits for a blob being read from disk.
#[derive(Debug)]
pub(super) enum BlobWaiter {
    /// A peer's fetch.
    Fetch(InboundId),
    /// `task result` from the API.
    Result(submit::ResultReply),
}

impl BlobWaiter {
    pub(super) fn answer(self, bytes: Option<&Vec<u8>>, out: &mut Outbox) {
        match (self, bytes) {
            (BlobWaiter::Fetch(id), Some(bytes)) => respond(
                id,
                &ClusterResponse::Blob(ByteBuf::from(bytes.clone())),
                out,
            ),
            (BlobWaiter::Fetch(id), None) => respond(id, &ClusterResponse::Missing, out),
            (BlobWaiter::Result(reply), Some(bytes)) => {
                let _ = reply.send(Ok(bytes.clone()));
            }
            (BlobWaiter::Result(reply), None) => {
                let _ = reply.send(Err(
                    "the result is not readable here right now; try again shortly".into(),
                ));
            }
        }
    }
}

/// Waiters for blobs read from disk, at most.
pub(super) const MAX_BLOB_WAITERS: usize = 256;

impl ClusterService {
    /// The blob if it is in memory; else it is read from disk and whoever needed it is
    /// resumed by [`ClusterService::blob_ready`].
    pub(super) fn blob(&mut self, hash: &blobs::Hash, out: &mut Outbox) -> Option<Vec<u8>> {
        if let Some(bytes) = self.blobs.cached(hash) {
            return Some(bytes);
        }
        if let Some(job) = self.blobs.load(*hash) {
            out.push(Effect::Job {
                lane: Lane::Storage { durable: false },
                job,
                token: BLOB_LOAD,
            });
        }
        None
    }

    /// Puts `bytes` into a batch of their own (buffered: see `crate::cluster::blobs` for
    /// why that is durable enough).
    pub(super) fn put_blob(
        &mut self,
        bytes: &[u8],
        out: &mut Outbox,
    ) -> Result<blobs::Hash, blobs::BlobError> {
        let mut batch = Batch::new();
        let hash = self.blobs.put(bytes, &mut batch)?;
        if !batch.is_empty() {
            out.push(Effect::Persist(batch));
            self.metrics.blobs.set(self.blobs.count() as i64);
        }
        Ok(hash)
    }

    /// Puts `bytes` in a durable batch of their own; `after` runs once it is on disk (and
    /// with it every write queued before).
    pub(super) fn put_blob_durable(
        &mut self,
        bytes: &[u8],
        after: AfterDurable,
        out: &mut Outbox,
    ) -> Result<blobs::Hash, blobs::BlobError> {
        let mut batch = Batch::new();
        let hash = self.blobs.put(bytes, &mut batch)?;
        self.metrics.blobs.set(self.blobs.count() as i64);
        let token = self.next_durable;
        self.next_durable += 1;
        self.durable.insert(token, after);
        out.push(Effect::PersistDurable { batch, token });
        Ok(hash)
    }

    /// A fetch from a peer: answered now if the blob is in memory, when read if on disk.
    pub(super) fn answer_fetch(&mut self, id: InboundId, hash: blobs::Hash, out: &mut Outbox) {
        if !self.blobs.contains(&hash) {
            return respond(id, &ClusterResponse::Missing, out);
        }
        match self.blob(&hash, out) {
            Some(bytes) => respond(id, &ClusterResponse::Blob(ByteBuf::from(bytes)), out),
            None => self.wait_for_blob(hash, BlobWaiter::Fetch(id), out),
        }
    }

    /// `waiter` is answered once `hash` was read from disk (a read was asked for).
    pub(super) fn wait_for_blob(
        &mut self,
        hash: blobs::Hash,
        waiter: BlobWaiter,
        out: &mut Outbox,
    ) {
        let waiting: usize = self.blob_waiters.values().map(Vec::len).sum();
        if waiting >= MAX_BLOB_WAITERS || !self.blobs.is_loading(&hash) {
            self.metrics.refuse("blob_read_backlog");
            return waiter.answer(None, out);
        }
        self.blob_waiters.entry(hash).or_default().push(waiter);
    }

    pub(super) fn on_blob_loaded(&mut self, now_ms: u64, loaded: blobs::Loaded, out: &mut Outbox) {
        let hash = loaded.hash;
        self.blobs.on_loaded(loaded);
        self.metrics.blobs.set(self.blobs.count() as i64);
        self.blob_ready(now_ms, hash, out);
    }

    /// Blob reads failed (the store did; the node goes to safe mode): nobody waits on them.
    pub(super) fn loads_failed(&mut self, out: &mut Outbox) {
        self.blobs.forget_loads();
        for waiter in std::mem::take(&mut self.blob_waiters)
            .into_values()
            .flatten()
        {
            waiter.answer(None, out);
        }
    }

    /// A blob was read from disk (or found missing): what waited for it goes on.
    pub(super) fn blob_ready(&mut self, now_ms: u64, hash: blobs::Hash, out: &mut Outbox) {
        let cached = self.blobs.cached(&hash);
        for waiter in self.blob_waiters.remove(&hash).unwrap_or_default() {
            waiter.answer(cached.as_ref(), out);
        }
        self.resume_work(now_ms, hash, out);
        self.resume_results(hash, out);
    }
}
