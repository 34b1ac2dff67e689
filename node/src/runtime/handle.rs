//! The one typed handle to a running node (the rust-libp2p file-sharing example's `Client`):
//! what the control API, the in-memory network and the tests use to ask a node something,
//! instead of building commands and reading shared locks by hand.
//!
//! - [`NodeHandle::call`] runs a closure on one capability, found by its type, on the
//!   driver's task, with the time and an outbox whose effects the driver then executes; its
//!   result comes back. Each capability wraps the calls it offers in typed functions of its
//!   own (`kv::api::write`, `cluster::api::submit`, ...). Calls queue in a bounded channel
//!   ([`CALL_QUEUE`]); a caller waits for room rather than being refused (backpressure), and
//!   gives up after [`CALL_TIMEOUT`].
//! - Views ([`ViewCell`]) are what capabilities publish for readers: plain values behind a
//!   lock, each owned by one writer; [`NodeHandle::view`] finds one by type, and
//!   [`NodeHandle::changed`] wakes whoever waits for a change.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot, watch};

use crate::runtime::capability::{Capability, Outbox};
use crate::runtime::clock::Clock;
use crate::runtime::events::EventBus;
use crate::runtime::metrics::FrozenMetrics;
use crate::runtime::status::{PeerView, StatusView};

/// Calls waiting for the driver; beyond, callers wait.
pub const CALL_QUEUE: usize = 256;
/// A call not taken by the driver within this gives up (the node is wedged or stopping).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("the node is not running")]
    Stopped,
    #[error("the node did not take the request within {0:?}")]
    Busy(Duration),
    #[error("this node does not run that capability")]
    NoSuchCapability,
}

/// What runs a call on the driver: the capability by type, the time, an outbox.
pub(crate) trait CallTarget {
    fn call_on(
        &mut self,
        capability: TypeId,
        run: &mut dyn FnMut(&mut dyn Any, u64, &mut Outbox),
    ) -> bool;
}

pub(crate) type Call = Box<dyn FnOnce(&mut dyn CallTarget) + Send>;

/// Counters of what the control API's bounds turned away, shared by the server and the
/// status view.
#[derive(Debug, Default)]
pub struct ApiLimits {
    /// Connections closed at accept because the server's connection cap was reached.
    pub refused_connections: std::sync::atomic::AtomicU64,
}

/// A value a capability publishes for readers. Cloning shares it.
#[derive(Debug)]
pub struct ViewCell<T> {
    value: Arc<RwLock<T>>,
    changed: watch::Sender<u64>,
    /// Someone read the value since it was last set: a writer whose view is costly to
    /// build may refresh an unread one less often ([`ViewCell::read_since_set`]).
    read: Arc<AtomicBool>,
}

impl<T> Clone for ViewCell<T> {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
            changed: self.changed.clone(),
            read: self.read.clone(),
        }
    }
}

impl<T: Clone> ViewCell<T> {
    /// The value now (a copy).
    pub fn get(&self) -> T {
        self.read(T::clone)
    }
}

impl<T> ViewCell<T> {
    /// Reads the value under the lock, without copying it.
    pub fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        self.read.store(true, Ordering::Relaxed);
        match self.value.read() {
            Ok(guard) => f(&guard),
            // Views are plain data: a writer that panicked left a value worth reading.
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    /// Whether the value was read since it was last set or updated.
    pub fn read_since_set(&self) -> bool {
        self.read.load(Ordering::Relaxed)
    }

    /// Changes the value and wakes whoever waits for a change.
    pub fn update(&self, f: impl FnOnce(&mut T)) {
        self.read.store(false, Ordering::Relaxed);
        match self.value.write() {
            Ok(mut guard) => f(&mut guard),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn set(&self, value: T) {
        self.update(|v| *v = value);
    }
}

/// Every view of a node, by type; made at start-up, read by the API and tests.
#[derive(Debug)]
pub struct Views {
    cells: RwLock<HashMap<TypeId, Box<dyn Any + Send + Sync>>>,
    changed: watch::Sender<u64>,
}

impl Default for Views {
    fn default() -> Self {
        Self {
            cells: RwLock::default(),
            changed: watch::channel(0).0,
        }
    }
}

impl Views {
    /// A new view holding `value`, findable by its type (one view per type).
    pub fn add<T: Send + Sync + 'static>(&self, value: T) -> ViewCell<T> {
        let cell = ViewCell {
            value: Arc::new(RwLock::new(value)),
            changed: self.changed.clone(),
            read: Arc::new(AtomicBool::new(false)),
        };
        if let Ok(mut cells) = self.cells.write() {
            cells.insert(TypeId::of::<T>(), Box::new(cell.clone()));
        }
        cell
    }

    pub fn get<T: Send + Sync + 'static>(&self) -> Option<ViewCell<T>> {
        let cells = self.cells.read().ok()?;
        cells
            .get(&TypeId::of::<T>())?
            .downcast_ref::<ViewCell<T>>()
            .cloned()
    }

    /// Wakes on every change of any view.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    peer_id: PeerId,
    calls: mpsc::Sender<Call>,
    views: Arc<Views>,
    status: ViewCell<StatusView>,
    peers: ViewCell<Vec<PeerView>>,
    events: EventBus,
    metrics: Arc<FrozenMetrics>,
    clock: Clock,
    api_limits: Arc<ApiLimits>,
}

/// The parts a handle is made of, from start-up.
pub(crate) struct HandleParts {
    pub peer_id: PeerId,
    pub calls: mpsc::Sender<Call>,
    pub views: Arc<Views>,
    pub status: ViewCell<StatusView>,
    pub peers: ViewCell<Vec<PeerView>>,
    pub events: EventBus,
    pub metrics: Arc<FrozenMetrics>,
    pub clock: Clock,
    pub api_limits: Arc<ApiLimits>,
}

impl NodeHandle {
    pub(crate) fn new(parts: HandleParts) -> Self {
        Self {
            peer_id: parts.peer_id,
            calls: parts.calls,
            views: parts.views,
            status: parts.status,
            peers: parts.peers,
            events: parts.events,
            metrics: parts.metrics,
            clock: parts.clock,
            api_limits: parts.api_limits,
        }
    }

    /// A handle with no node behind it (calls answer [`CallError::Stopped`]): for serving
    /// the control API's router in tests.
    #[doc(hidden)]
    pub fn detached(events: EventBus, metrics: Arc<FrozenMetrics>) -> Self {
        let (calls, _) = mpsc::channel(1);
        let views = Arc::new(Views::default());
        let clock = Clock::default();
        let status = views.add(StatusView::starting(
            String::new(),
            std::path::PathBuf::new(),
            clock.now_ms(),
        ));
        let peers = views.add(Vec::new());
        Self::new(HandleParts {
            peer_id: PeerId::random(),
            calls,
            views,
            status,
            peers,
            events,
            metrics,
            clock,
            api_limits: Arc::default(),
        })
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Runs `f` on capability `C` on the driver's task; see the module docs.
    pub async fn call<C, R>(
        &self,
        f: impl FnOnce(&mut C, u64, &mut Outbox) -> R + Send + 'static,
    ) -> Result<R, CallError>
    where
        C: Capability,
        R: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let call: Call = Box::new(move |target: &mut dyn CallTarget| {
            let mut f = Some(f);
            let mut result = None;
            let found = target.call_on(TypeId::of::<C>(), &mut |any, now_ms, out| {
                if let (Some(capability), Some(f)) = (any.downcast_mut::<C>(), f.take()) {
                    result = Some(f(capability, now_ms, out));
                }
            });
            let _ = reply.send(if found { result } else { None });
        });
        match tokio::time::timeout(CALL_TIMEOUT, self.calls.send(call)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(CallError::Stopped),
            Err(_) => return Err(CallError::Busy(CALL_TIMEOUT)),
        }
        match answer.await {
            Ok(Some(result)) => Ok(result),
            Ok(None) => Err(CallError::NoSuchCapability),
            Err(_) => Err(CallError::Stopped),
        }
    }

    /// A capability's view, by type.
    pub fn view<T: Send + Sync + 'static>(&self) -> Option<ViewCell<T>> {
        self.views.get::<T>()
    }

    /// The node's status (runtime and capabilities, refreshed every second and on change).
    pub fn status(&self) -> StatusView {
        self.status.get()
    }

    /// Connected and known peers.
    pub fn peers(&self) -> Vec<PeerView> {
        self.peers.get()
    }

    /// Wakes on every change of any view.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.views.watch()
    }

    pub fn events(&self) -> &EventBus {
        &self.events
    }

    pub fn metrics(&self) -> &Arc<FrozenMetrics> {
        &self.metrics
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub(crate) fn api_limits(&self) -> &Arc<ApiLimits> {
        &self.api_limits
    }
}
