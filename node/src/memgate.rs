//! Partitions of the in-memory network: which nodes on the memory transport may talk.
//!
//! A partition must refuse new connections between the two sides and close the ones that
//! exist, as a cut cable would, without the nodes' cooperation (a node that saw it coming
//! would not be tested). Both happen here, in the transport every in-memory node runs
//! ([`gate`], applied by `node.rs` to [`crate::node::Network::Memory`]):
//!
//! - a connection whose secure channel has just named the remote peer is dropped when the
//!   two peers are on different sides, before any protocol sees it (dials fail, listeners
//!   drop it);
//! - every live connection's multiplexer checks again whenever the partitions change (it
//!   is woken for it) and fails when its peers are now apart, which closes the connection
//!   and everything on it.
//!
//! The table is process-wide, like the memory transport's ports it sits beside: the nodes
//! of one in-memory network share nothing else. Peers are keyed by PeerId, so networks in
//! one process (tests run in parallel) never affect each other. With no partition set, the
//! cost is one atomic read per multiplexer poll.

use std::collections::{HashMap, HashSet};
use std::future::ready;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock, Weak};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use libp2p::core::muxing::{StreamMuxer, StreamMuxerBox, StreamMuxerEvent, SubstreamBox};
use libp2p::core::transport::Transport as _;
use libp2p::PeerId;

use fogmesh_transports::BoxedTransport;

/// Who may talk to whom.
#[derive(Default)]
struct Table {
    /// The side each partitioned peer is on; a peer not listed is on side 0 with everyone
    /// else not listed.
    sides: HashMap<PeerId, u64>,
    next_side: u64,
    /// Peers cut off from everyone (an abrupt stop), whatever their side.
    isolated: HashSet<PeerId>,
}

impl Table {
    fn allows(&self, a: &PeerId, b: &PeerId) -> bool {
        let side = |p: &PeerId| self.sides.get(p).copied().unwrap_or(0);
        !self.isolated.contains(a) && !self.isolated.contains(b) && side(a) == side(b)
    }
}

struct Gates {
    table: RwLock<Table>,
    /// Bumped on every change, so a multiplexer re-checks only after one.
    generation: AtomicU64,
    /// Live connections' wakers, woken on every change. Dead ones are pruned as the list
    /// grows, so it stays within twice the live connections.
    wakers: Mutex<(Vec<Weak<AtomicWaker>>, usize)>,
}

static GATES: LazyLock<Gates> = LazyLock::new(|| Gates {
    table: RwLock::new(Table::default()),
    generation: AtomicU64::new(0),
    wakers: Mutex::new((Vec::new(), 64)),
});

fn change(f: impl FnOnce(&mut Table)) {
    {
        let mut table = GATES.table.write().unwrap_or_else(|e| e.into_inner());
        f(&mut table);
    }
    GATES.generation.fetch_add(1, Ordering::SeqCst);
    let mut wakers = GATES.wakers.lock().unwrap_or_else(|e| e.into_inner());
    wakers.0.retain(|w| match w.upgrade() {
        Some(waker) => {
            waker.wake();
            true
        }
        None => false,
    });
}

fn watch(waker: &Arc<AtomicWaker>) {
    let mut wakers = GATES.wakers.lock().unwrap_or_else(|e| e.into_inner());
    let (list, prune_at) = &mut *wakers;
    if list.len() >= *prune_at {
        list.retain(|w| w.strong_count() > 0);
        *prune_at = (list.len() * 2).max(64);
    }
    list.push(Arc::downgrade(waker));
}

/// Whether `a` and `b` may be connected now.
pub fn allows(a: &PeerId, b: &PeerId) -> bool {
    GATES
        .table
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .allows(a, b)
}

/// Puts `group` on a side of its own: its members keep talking among themselves and stop
/// talking to everyone else (existing connections close). Partitions add up: a later group
/// is cut off from the earlier ones too.
pub fn partition(group: impl IntoIterator<Item = PeerId>) {
    change(|t| {
        t.next_side += 1;
        let side = t.next_side;
        for peer in group {
            t.sides.insert(peer, side);
        }
    });
}

/// Puts `peers` back on the common side (ends their partitions; isolation stays).
pub fn heal(peers: impl IntoIterator<Item = PeerId>) {
    change(|t| {
        for peer in peers {
            t.sides.remove(&peer);
        }
    });
}

/// Cuts `peer` off from everyone (`on`) or lets it talk again.
pub fn isolate(peer: PeerId, on: bool) {
    change(|t| {
        if on {
            t.isolated.insert(peer);
        } else {
            t.isolated.remove(&peer);
        }
    });
}

/// The memory transport of node `local`, with the partitions applied (see the module docs).
pub(crate) fn gate(transport: BoxedTransport, local: PeerId) -> BoxedTransport {
    transport
        .and_then(move |(remote, muxer), _| {
            ready(if allows(&local, &remote) {
                let waker = Arc::new(AtomicWaker::new());
                watch(&waker);
                let gated = Gated {
                    inner: muxer,
                    local,
                    remote,
                    seen: GATES.generation.load(Ordering::SeqCst),
                    cut: false,
                    waker,
                };
                Ok((remote, StreamMuxerBox::new(gated)))
            } else {
                tracing::debug!(%local, %remote, "in-memory connection refused: partitioned");
                Err(partitioned())
            })
        })
        .boxed()
}

fn partitioned() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "the in-memory network is partitioned between these peers",
    )
}

/// A connection's multiplexer that fails once its two peers are partitioned.
struct Gated {
    inner: StreamMuxerBox,
    local: PeerId,
    remote: PeerId,
    /// The generation last checked.
    seen: u64,
    /// Found apart once: fails from then on, until the swarm has closed the connection.
    cut: bool,
    waker: Arc<AtomicWaker>,
}

impl Gated {
    fn check(&mut self, cx: &mut Context<'_>) -> Result<(), std::io::Error> {
        self.waker.register(cx.waker());
        let now = GATES.generation.load(Ordering::SeqCst);
        if now != self.seen && !self.cut {
            self.seen = now;
            if !allows(&self.local, &self.remote) {
                tracing::debug!(local = %self.local, remote = %self.remote,
                    "in-memory connection closed: partitioned");
                self.cut = true;
            }
        }
        if self.cut {
            return Err(partitioned());
        }
        Ok(())
    }
}

impl StreamMuxer for Gated {
    type Substream = SubstreamBox;
    type Error = std::io::Error;

    fn poll_inbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_inbound(cx)
    }

    fn poll_outbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_outbound(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            // The swarm closes the connection on this error.
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_and_isolation_decide_who_talks() {
        let [a, b, c, d] = [(); 4].map(|_| PeerId::random());
        assert!(allows(&a, &b));
        partition([a, b]);
        assert!(allows(&a, &b) && allows(&c, &d));
        assert!(!allows(&a, &c) && !allows(&d, &b));
        partition([c]);
        assert!(!allows(&c, &d) && !allows(&c, &a));
        isolate(a, true);
        assert!(!allows(&a, &b));
        heal([a, b, c]);
        assert!(allows(&b, &c) && allows(&c, &d));
        assert!(!allows(&a, &b), "isolation outlives heal");
        isolate(a, false);
        assert!(allows(&a, &d));
    }
}
