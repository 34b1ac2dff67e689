//! A byte stream over a [`BleLink`]: the [`Arq`] state machine driven by one task per link.
//!
//! The task owns the link and the clock: it feeds received datagrams and timer expiries to
//! the ARQ and sends what it produces, as fast as the link takes it (a full link makes the
//! task wait, which fills the send buffer, which makes the writer wait: backpressure end to
//! end). [`BleStream`] is the application's end, `AsyncRead + AsyncWrite`, sharing the ARQ
//! with the task behind a mutex held only for non-blocking calls.
//!
//! Errors: a dead link (unacknowledged, silent, reset, or the radio link broke) fails reads
//! and writes with `io::ErrorKind::ConnectionReset` naming the reason. `poll_close` sends
//! the fin and returns once the peer acknowledged everything (or the link died).
//! Dropping the stream aborts the link (the peer is told with a reset).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;

use super::arq::{Arq, ArqConfig, ArqStats, LinkState, Read};
use super::driver::{BleLink, DeviceId};

/// How long a closed link stays to re-acknowledge a peer that missed our last ack.
const LINGER: Duration = Duration::from_secs(2);

struct Shared {
    arq: Arq,
    reader: Option<Waker>,
    writer: Option<Waker>,
    /// The application dropped its end.
    dropped: bool,
    /// The application asked to close (the task was told once).
    closing: bool,
}

impl Shared {
    fn wake(&mut self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }
}

struct Inner {
    shared: Mutex<Shared>,
    /// Tells the task the application did something (wrote, read, closed, dropped).
    poke: Notify,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The application's end of a reliable stream over one BLE link.
pub struct BleStream {
    inner: Arc<Inner>,
    peer: DeviceId,
    outbound: bool,
}

impl std::fmt::Debug for BleStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BleStream")
            .field("peer", &self.peer)
            .field("outbound", &self.outbound)
            .finish()
    }
}

impl BleStream {
    /// Starts the link's task; `config.max_datagram` is taken from the link.
    pub fn spawn(link: BleLink, mut config: ArqConfig) -> Self {
        config.max_datagram = link.max_datagram;
        let inner = Arc::new(Inner {
            shared: Mutex::new(Shared {
                arq: Arq::new(config, tokio::time::Instant::now().into_std()),
                reader: None,
                writer: None,
                dropped: false,
                closing: false,
            }),
            poke: Notify::new(),
        });
        let peer = link.peer;
        let outbound = link.outbound;
        tokio::spawn(drive(inner.clone(), link));
        Self {
            inner,
            peer,
            outbound,
        }
    }

    pub fn peer(&self) -> DeviceId {
        self.peer
    }

    pub fn stats(&self) -> ArqStats {
        self.inner.lock().arq.stats()
    }

    pub fn state(&self) -> LinkState {
        self.inner.lock().arq.state()
    }
}

fn dead_error(state: LinkState) -> io::Error {
    match state {
        LinkState::Dead(reason) => io::Error::new(io::ErrorKind::ConnectionReset, reason),
        _ => io::Error::new(io::ErrorKind::BrokenPipe, "the stream is closed"),
    }
}

impl AsyncRead for BleStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut shared = self.inner.lock();
        match shared.arq.read(buf) {
            Read::Data(n) => {
                drop(shared);
                // Reading may have opened the window: the task may owe an ack.
                self.inner.poke.notify_one();
                Poll::Ready(Ok(n))
            }
            Read::End => Poll::Ready(Ok(0)),
            Read::Dead(reason) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, reason)))
            }
            Read::Pending => {
                shared.reader = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for BleStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut shared = self.inner.lock();
        let state = shared.arq.state();
        if state != LinkState::Open {
            return Poll::Ready(Err(dead_error(state)));
        }
        match shared.arq.write(buf) {
            0 => {
                shared.writer = Some(cx.waker().clone());
                Poll::Pending
            }
            n => {
                drop(shared);
                self.inner.poke.notify_one();
                Poll::Ready(Ok(n))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written bytes are the link's to deliver; there is no buffer in front of it.
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut shared = self.inner.lock();
        shared.arq.finish();
        if shared.arq.finished_sending() {
            return Poll::Ready(Ok(()));
        }
        if let LinkState::Dead(reason) = shared.arq.state() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, reason)));
        }
        shared.writer = Some(cx.waker().clone());
        // Tell the task once; it wakes us on every step after that, and telling it again
        // on each of those polls would keep both busy without time passing.
        let first = !std::mem::replace(&mut shared.closing, true);
        drop(shared);
        if first {
            self.inner.poke.notify_one();
        }
        Poll::Pending
    }
}

impl Drop for BleStream {
    fn drop(&mut self) {
        let mut shared = self.inner.lock();
        shared.dropped = true;
        if !shared.arq.finished_sending() {
            shared.arq.abort();
        }
        drop(shared);
        self.inner.poke.notify_one();
    }
}

/// The link's task: runs until the link is dead, or closed and lingered, or dropped.
async fn drive(inner: Arc<Inner>, mut link: BleLink) {
    let mut closed_at: Option<tokio::time::Instant> = None;
    loop {
        let now = tokio::time::Instant::now();
        // Send what the ARQ has, as long as the link takes it without waiting.
        let (deadline, finished, wants_send) = {
            let mut shared = inner.lock();
            shared.arq.handle_timeout(now.into_std());
            loop {
                let Ok(permit) = link.tx.try_reserve() else {
                    break;
                };
                match shared.arq.poll_transmit(now.into_std()) {
                    Some(datagram) => permit.send(datagram),
                    None => break,
                }
            }
            shared.wake();
            let state = shared.arq.state();
            let finished = match state {
                LinkState::Dead(_) => true,
                LinkState::Closed => {
                    let since = *closed_at.get_or_insert(now);
                    now.duration_since(since) >= LINGER || shared.dropped
                }
                LinkState::Open => shared.dropped && shared.arq.finished_sending(),
            };
            let deadline = shared
                .arq
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .or_else(|| closed_at.map(|at| at + LINGER));
            // The link is full: what is due now can only leave once it has room, so a
            // deadline already passed is left to the `reserve` branch (or the task would spin).
            let wants_send = link.tx.capacity() == 0;
            let deadline = deadline.filter(|&at| !(wants_send && at <= now));
            (deadline, finished, wants_send)
        };
        if finished {
            // Give the reset (if any) a chance to leave; the link closes as we return.
            let reset = inner.lock().arq.poll_transmit(now.into_std());
            if let Some(reset) = reset {
                let _ = link.tx.try_send(reset);
            }
            return;
        }
        tokio::select! {
            received = link.rx.recv() => {
                let mut shared = inner.lock();
                match received {
                    Some(datagram) => {
                        // A malformed frame is counted by the ARQ and otherwise ignored.
                        let _ = shared.arq.handle_datagram(
                            tokio::time::Instant::now().into_std(),
                            &datagram,
                        );
                    }
                    None => shared.arq.link_lost(),
                }
                shared.wake();
            }
            _ = super::sleep_until(deadline) => {}
            _ = inner.poke.notified() => {}
            permit = link.tx.reserve(), if wants_send => {
                if let Ok(permit) = permit {
                    let mut shared = inner.lock();
                    match shared.arq.poll_transmit(tokio::time::Instant::now().into_std()) {
                        Some(datagram) => permit.send(datagram),
                        None => drop(permit),
                    }
                } else {
                    inner.lock().arq.link_lost();
                }
            }
        }
    }
}
