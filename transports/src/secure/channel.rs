//! The I/O edge of the secure channel: runs the handshake steps over a socket, enforces the
//! guard, counts and logs every outcome, and plugs into libp2p two ways:
//!
//! - [`XkUpgrade`] is an ordinary libp2p security upgrade (`/fogmesh/xk/1`) for any
//!   transport. Noise XK must know the responder's PeerId before the first byte, and
//!   libp2p's upgrade traits do not pass it, so the dialer's upgrade carries it. The traits
//!   do not pass the remote address either, so through this path the per-address rate limit
//!   and the pending-handshake cap do not apply (the timeout and per-PeerId backoff do).
//! - [`upgrade_transport`] wraps a raw transport: it takes the PeerId from the `/p2p/...`
//!   suffix the swarm puts on every address it dials, negotiates `/fogmesh/xk/1`, runs the
//!   handshake, then negotiates yamux. Its output is what a swarm runs on.
//!
//! A connection that fails admission ends inside the upgrade, so no application protocol
//! (identify, kad, gossipsub, ...) ever sees it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::{BoxFuture, Either};
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures::FutureExt;
use libp2p::core::multiaddr::Protocol;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use libp2p::core::{ConnectedPoint, Endpoint, Multiaddr};
use libp2p::identity::Keypair;
use libp2p::{yamux, PeerId, Transport};
use multistream_select::{dialer_select_proto, listener_select_proto, Negotiated, Version};

use crate::ticket::Admission;

use super::admission::AdmissionPolicy;
use super::frame::{self, TAG_LEN};
use super::guard::{GuardConfig, GuardRefusal, HandshakeGuard};
use super::handshake::{Established, Failure, Initiator, Responder};
use super::keys::{KeyError, LocalKeys};
use super::stats::{Direction, SecurityStats};
use super::stream::{RekeyPolicy, XkStream};
use super::HandshakeError;

/// The multistream-select protocol name of this channel.
pub const PROTOCOL: &str = "/fogmesh/xk/1";
const YAMUX: &str = "/yamux/1.0.0";
/// Peers whose admission is remembered (to re-check connections against new revocations,
/// from the end of the handshake until the peer's last connection closes). Far above any
/// connection limit; should it fill, further peers are not remembered, so a revocation
/// reaches their live connection only when it reconnects.
const MAX_REMEMBERED: usize = 8192;

/// An admission kept for re-checking, and when its handshake ended.
#[derive(Debug, Clone)]
struct Remembered {
    admission: Admission,
    at: Instant,
}

/// A connection that went through protocol negotiation here, or arrived negotiated.
pub type Negotiable<C> = Either<Negotiated<C>, C>;

#[derive(Debug, Clone)]
pub struct SecureChannelConfig {
    pub policy: AdmissionPolicy,
    pub guard: GuardConfig,
    pub rekey: RekeyPolicy,
    /// Bound on negotiation plus handshake plus verdict.
    pub handshake_timeout: Duration,
}

impl SecureChannelConfig {
    pub fn new(policy: AdmissionPolicy) -> Self {
        SecureChannelConfig {
            policy,
            guard: GuardConfig::default(),
            rekey: RekeyPolicy::default(),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

struct Shared {
    keys: LocalKeys,
    policy: AdmissionPolicy,
    rekey: RekeyPolicy,
    handshake_timeout: Duration,
    guard: Mutex<HandshakeGuard>,
    stats: Arc<SecurityStats>,
    admitted: Mutex<HashMap<PeerId, Remembered>>,
    log_limit: Mutex<super::log_limit::LogLimiter>,
    /// Where refusals are reported as they happen, once someone asks (see
    /// [`SecureChannel::watch_refusals`]).
    refusal_sink: std::sync::OnceLock<tokio::sync::mpsc::Sender<Refusal>>,
}

/// A handshake that did not admit the remote, as reported to [`SecureChannel::watch_refusals`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub direction: Direction,
    /// The remote's PeerId when the handshake got that far, else its address.
    pub remote: String,
    pub reason: &'static str,
}

/// One node's secure channel: its keys, admission policy, guard and counters. Cheap to
/// clone; every clone shares state.
#[derive(Clone)]
pub struct SecureChannel {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SecureChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureChannel")
            .field("peer_id", &self.shared.keys.peer_id())
            .field("mesh", &self.shared.policy.mesh_id())
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn io_error(e: std::io::Error) -> HandshakeError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        HandshakeError::Truncated
    } else {
        HandshakeError::Io(e)
    }
}

async fn send<C: AsyncWrite + Unpin>(io: &mut C, body: &[u8]) -> Result<(), HandshakeError> {
    let mut wire = Vec::with_capacity(body.len() + frame::HEADER_LEN);
    frame::encode_into(body, &mut wire).map_err(HandshakeError::Frame)?;
    io.write_all(&wire).await.map_err(io_error)?;
    io.flush().await.map_err(io_error)
}

/// Reads handshake frames with as few reads as the peer's writes allow. Whatever arrives
/// after the last handshake frame belongs to the encrypted stream and is handed to it.
#[derive(Default)]
struct Inbox {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Inbox {
    async fn frame<C: AsyncRead + Unpin>(
        &mut self,
        io: &mut C,
        min: usize,
    ) -> Result<Vec<u8>, HandshakeError> {
        loop {
            let peeked = frame::peek(&self.buf[self.start..self.end], min);
            match peeked.map_err(HandshakeError::Frame)? {
                frame::Peek::Frame { body } => {
                    let out = self.buf[self.start + body.start..self.start + body.end].to_vec();
                    self.start += body.end;
                    return Ok(out);
                }
                frame::Peek::Incomplete { need } => {
                    if self.start + need > self.buf.len() {
                        self.buf.copy_within(self.start..self.end, 0);
                        self.end -= self.start;
                        self.start = 0;
                        if need > self.buf.len() {
                            self.buf.resize(need.max(1024), 0);
                        }
                    }
                    let n = io.read(&mut self.buf[self.end..]).await.map_err(io_error)?;
                    if n == 0 {
                        return Err(HandshakeError::Truncated);
                    }
                    self.end += n;
                }
            }
        }
    }

    fn leftover(self) -> Vec<u8> {
        self.buf[self.start..self.end].to_vec()
    }
}

/// Sends a last message explaining a refusal, then closes; errors here change nothing.
async fn part<C: AsyncWrite + Unpin>(io: &mut C, farewell: Option<Vec<u8>>) {
    if let Some(message) = farewell {
        let _ = send(io, &message).await;
    }
    let _ = io.close().await;
}

/// Runs `work` for at most `limit`; past it, the result is `on_timeout`.
async fn with_timeout<T, E>(
    limit: Duration,
    on_timeout: E,
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or(Err(on_timeout))
}

/// Frees an inbound pending-handshake slot even if the upgrade future is dropped midway.
pub(crate) struct PendingSlot {
    channel: SecureChannel,
    ip: Option<IpAddr>,
}

impl PendingSlot {
    pub(crate) fn finish(mut self, admitted: bool) {
        if let Some(ip) = self.ip.take() {
            lock(&self.channel.shared.guard).finish_inbound(Instant::now(), ip, admitted);
        }
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip.take() {
            lock(&self.channel.shared.guard).finish_inbound(Instant::now(), ip, false);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl SecureChannel {
    pub fn new(identity: &Keypair, config: SecureChannelConfig) -> Result<Self, KeyError> {
        Ok(SecureChannel {
            shared: Arc::new(Shared {
                keys: LocalKeys::from_identity(identity)?,
                policy: config.policy,
                rekey: config.rekey,
                handshake_timeout: config.handshake_timeout,
                guard: Mutex::new(HandshakeGuard::new(config.guard)),
                log_limit: Mutex::default(),
                refusal_sink: std::sync::OnceLock::new(),
                stats: Arc::default(),
                admitted: Mutex::default(),
            }),
        })
    }

    /// Reports every refused handshake from now on, up to `capacity` unread (more are not
    /// queued; the refusal counters still count them). Only the first caller gets a
    /// receiver.
    pub fn watch_refusals(&self, capacity: usize) -> Option<tokio::sync::mpsc::Receiver<Refusal>> {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        self.shared.refusal_sink.set(tx).ok().map(|()| rx)
    }

    pub fn local_peer_id(&self) -> PeerId {
        self.shared.keys.peer_id()
    }

    pub fn policy(&self) -> &AdmissionPolicy {
        &self.shared.policy
    }

    pub fn stats(&self) -> &Arc<SecurityStats> {
        &self.shared.stats
    }

    /// The ticket `peer` was last admitted with, if it is remembered.
    pub fn admission_of(&self, peer: &PeerId) -> Option<Admission> {
        lock(&self.shared.admitted)
            .get(peer)
            .map(|r| r.admission.clone())
    }

    /// Which of `peers` hold admissions the current revocations withdraw.
    pub fn revoked_among<'a>(&self, peers: impl IntoIterator<Item = &'a PeerId>) -> Vec<PeerId> {
        let admitted = lock(&self.shared.admitted);
        peers
            .into_iter()
            .filter(|p| {
                admitted
                    .get(p)
                    .is_some_and(|r| !self.shared.policy.still_admitted(&r.admission))
            })
            .copied()
            .collect()
    }

    /// Every remembered peer whose admission the current revocations withdraw: those with a
    /// live connection and those whose handshake is done but whose connection is not yet
    /// established (the swarm reports a connection only once its multiplexer is up).
    pub fn revoked_admitted(&self) -> Vec<PeerId> {
        lock(&self.shared.admitted)
            .iter()
            .filter(|(_, r)| !self.shared.policy.still_admitted(&r.admission))
            .map(|(peer, _)| *peer)
            .collect()
    }

    /// Forgets a peer whose last connection closed, unless a handshake with it ended after
    /// `newest_established` (when its newest connection was established): that admission
    /// belongs to a connection still being set up, which must stay checkable.
    pub fn forget(&self, peer: &PeerId, newest_established: Instant) {
        let mut admitted = lock(&self.shared.admitted);
        if admitted
            .get(peer)
            .is_some_and(|r| r.at <= newest_established)
        {
            admitted.remove(peer);
        }
    }

    /// The libp2p upgrade for one connection; `remote` is required when dialing.
    pub fn upgrade(&self, remote: Option<PeerId>) -> XkUpgrade {
        XkUpgrade {
            channel: self.clone(),
            remote,
        }
    }

    pub(crate) fn record(
        &self,
        direction: Direction,
        peer: Option<PeerId>,
        addr: Option<&Multiaddr>,
        outcome: Result<PeerId, &HandshakeError>,
    ) {
        match outcome {
            Ok(remote) => {
                self.shared.stats.count_admitted(direction);
                tracing::debug!(peer = %remote, direction = direction.as_str(), "handshake complete");
            }
            Err(error) => {
                let reason = error.reason();
                self.shared.stats.count_refused(direction, reason);
                // Before the handshake names the peer, its address is all there is to say.
                let remote = || match (peer, addr) {
                    (Some(peer), _) => peer.to_string(),
                    (None, Some(addr)) => addr.to_string(),
                    (None, None) => "unknown".into(),
                };
                if let Some(sink) = self.shared.refusal_sink.get() {
                    // Full: the watcher is behind; the counters above still have it.
                    let _ = sink.try_send(Refusal {
                        direction,
                        remote: remote(),
                        reason,
                    });
                }
                let key = (direction.as_str(), reason);
                let Some(held_back) = lock(&self.shared.log_limit).admit(Instant::now(), key)
                else {
                    return;
                };
                let remote = remote();
                let direction = direction.as_str();
                match error {
                    // Load shedding and plain network trouble are routine.
                    HandshakeError::Guard(_)
                    | HandshakeError::Io(_)
                    | HandshakeError::Truncated
                    | HandshakeError::Timeout
                    | HandshakeError::Negotiation(_) => tracing::info!(
                        %remote, direction, reason, %error, held_back, "handshake failed"
                    ),
                    _ => tracing::warn!(
                        %remote, direction, reason, %error, held_back, "connection refused"
                    ),
                }
            }
        }
    }

    /// Dials side, on a raw connection: guard, negotiate, handshake, all under the timeout;
    /// counted and logged.
    pub async fn outbound<C>(
        &self,
        io: C,
        remote: PeerId,
        addr: Option<&Multiaddr>,
        negotiate: bool,
    ) -> Result<(PeerId, XkStream<Negotiable<C>>), HandshakeError>
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let checked = lock(&self.shared.guard).check_outbound(Instant::now(), remote);
        let result = match checked {
            Err(refusal) => Err(HandshakeError::Guard(refusal)),
            Ok(()) => {
                let result = with_timeout(
                    self.shared.handshake_timeout,
                    HandshakeError::Timeout,
                    async {
                        let io = if negotiate {
                            let (_, io) = dialer_select_proto(io, [PROTOCOL], Version::V1Lazy)
                                .await
                                .map_err(|e| HandshakeError::Negotiation(e.to_string()))?;
                            Either::Left(io)
                        } else {
                            Either::Right(io)
                        };
                        self.secure_outbound(io, remote).await
                    },
                )
                .await;
                lock(&self.shared.guard).finish_outbound(Instant::now(), remote, result.is_ok());
                result
            }
        };
        self.record(
            Direction::Outbound,
            Some(remote),
            addr,
            result.as_ref().map(|(p, _)| *p),
        );
        result
    }

    /// Listening side, on a raw connection from `source`.
    pub async fn inbound<C>(
        &self,
        io: C,
        source: Option<IpAddr>,
        addr: Option<&Multiaddr>,
        negotiate: bool,
    ) -> Result<(PeerId, XkStream<Negotiable<C>>), HandshakeError>
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let began = self.begin_inbound(source);
        // The remote's identity, once the handshake proved it (for logs).
        let mut peer = None;
        let result = match began {
            Err(refusal) => Err((HandshakeError::Guard(refusal), None)),
            Ok(slot) => {
                let timeout = (HandshakeError::Timeout, None);
                let result = with_timeout(self.shared.handshake_timeout, timeout, async {
                    let io = if negotiate {
                        let (_, io) = listener_select_proto(io, [PROTOCOL])
                            .await
                            .map_err(|e| (HandshakeError::Negotiation(e.to_string()), None))?;
                        Either::Left(io)
                    } else {
                        Either::Right(io)
                    };
                    self.secure_inbound(io).await
                })
                .await;
                slot.finish(result.is_ok());
                result
            }
        };
        let result = result.map_err(|(error, proven)| {
            peer = proven;
            error
        });
        self.record(
            Direction::Inbound,
            peer,
            addr,
            result.as_ref().map(|(p, _)| *p),
        );
        result
    }

    /// Runs the initiator's side on a negotiated stream.
    pub(crate) async fn secure_outbound<C>(
        &self,
        mut io: C,
        remote: PeerId,
    ) -> Result<(PeerId, XkStream<C>), HandshakeError>
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let shared = &self.shared;
        let mut inbox = Inbox::default();
        let (initiator, msg1) = Initiator::start(&shared.keys, remote)?;
        send(&mut io, &msg1).await?;
        let msg2 = inbox.frame(&mut io, 1).await?;
        let (awaiting, msg3) =
            match initiator.on_responder_hello(&msg2, &shared.keys, &shared.policy, unix_now()) {
                Ok(next) => next,
                Err(failure) => {
                    let Failure {
                        error, farewell, ..
                    } = *failure;
                    part(&mut io, farewell).await;
                    return Err(error);
                }
            };
        send(&mut io, &msg3).await?;
        let verdict = inbox.frame(&mut io, TAG_LEN).await?;
        let established = awaiting.on_verdict(&verdict)?;
        self.finish(io, established, inbox)
    }

    /// Runs the responder's side on a negotiated stream. Errors carry the remote's PeerId
    /// when it was proven before the failure.
    pub(crate) async fn secure_inbound<C>(
        &self,
        mut io: C,
    ) -> Result<(PeerId, XkStream<C>), (HandshakeError, Option<PeerId>)>
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let shared = &self.shared;
        let anonymous = |e: HandshakeError| (e, None);
        let mut responder = Responder::new(&shared.keys).map_err(anonymous)?;
        let mut inbox = Inbox::default();
        let msg1 = inbox.frame(&mut io, 1).await.map_err(anonymous)?;
        let msg2 = responder
            .on_opening(&msg1, &shared.policy)
            .map_err(anonymous)?;
        send(&mut io, &msg2).await.map_err(anonymous)?;
        let msg3 = inbox.frame(&mut io, 1).await.map_err(anonymous)?;
        match responder.on_initiator_hello(&msg3, &shared.policy, unix_now()) {
            Ok((established, verdict)) => {
                let remote = Some(established.remote);
                send(&mut io, &verdict).await.map_err(|e| (e, remote))?;
                self.finish(io, established, inbox).map_err(|e| (e, remote))
            }
            Err(failure) => {
                let Failure {
                    error,
                    farewell,
                    remote,
                } = *failure;
                part(&mut io, farewell).await;
                Err((error, remote))
            }
        }
    }

    fn finish<C>(
        &self,
        io: C,
        established: Established,
        inbox: Inbox,
    ) -> Result<(PeerId, XkStream<C>), HandshakeError> {
        let remote = established.remote;
        // Keep the admission for re-checking this live connection against new revocations.
        if let Some(admission) = established.admission {
            let mut admitted = lock(&self.shared.admitted);
            if admitted.len() < MAX_REMEMBERED || admitted.contains_key(&remote) {
                admitted.insert(
                    remote,
                    Remembered {
                        admission,
                        at: Instant::now(),
                    },
                );
            }
        }
        let stream = XkStream::with_pending(
            io,
            established.session,
            self.shared.rekey,
            self.shared.stats.clone(),
            inbox.leftover(),
        );
        Ok((remote, stream))
    }
}

/// `/fogmesh/xk/1` as a libp2p security upgrade. The dialing side must name its remote
/// ([`SecureChannel::upgrade`]); see the module docs for why.
#[derive(Debug, Clone)]
pub struct XkUpgrade {
    channel: SecureChannel,
    remote: Option<PeerId>,
}

impl UpgradeInfo for XkUpgrade {
    type Info = &'static str;
    type InfoIter = std::iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        std::iter::once(PROTOCOL)
    }
}

impl<C> InboundConnectionUpgrade<C> for XkUpgrade
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = (PeerId, XkStream<Negotiable<C>>);
    type Error = HandshakeError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move { self.channel.inbound(socket, None, None, false).await }.boxed()
    }
}

impl<C> OutboundConnectionUpgrade<C> for XkUpgrade
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = (PeerId, XkStream<Negotiable<C>>);
    type Error = HandshakeError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            let remote = self.remote.ok_or(HandshakeError::NoRemotePeerId)?;
            self.channel.outbound(socket, remote, None, false).await
        }
        .boxed()
    }
}

pub(crate) fn dialed_peer(address: &Multiaddr) -> Option<PeerId> {
    match address.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}

pub(crate) fn source_ip(address: &Multiaddr) -> Option<IpAddr> {
    address.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// Guard access for the open-mesh stack ([`super::open`]), which negotiates itself.
impl SecureChannel {
    /// Takes a pending-handshake slot for an inbound connection from `source` (rate limit and
    /// backoff included); without a source address there is nothing to hold a slot against.
    pub(crate) fn begin_inbound(
        &self,
        source: Option<IpAddr>,
    ) -> Result<PendingSlot, GuardRefusal> {
        match source {
            Some(ip) => lock(&self.shared.guard)
                .begin_inbound(Instant::now(), ip)
                .map(|()| PendingSlot {
                    channel: self.clone(),
                    ip: Some(ip),
                }),
            None => Ok(PendingSlot {
                channel: self.clone(),
                ip: None,
            }),
        }
    }

    /// Whether `remote` may be dialled now (outbound backoff).
    pub(crate) fn check_outbound(&self, remote: PeerId) -> Result<(), GuardRefusal> {
        lock(&self.shared.guard).check_outbound(Instant::now(), remote)
    }

    pub(crate) fn finish_outbound(&self, remote: PeerId, admitted: bool) {
        lock(&self.shared.guard).finish_outbound(Instant::now(), remote, admitted);
    }

    pub(crate) fn handshake_timeout(&self) -> Duration {
        self.shared.handshake_timeout
    }
}

/// Negotiates yamux on a secured stream and starts it: the dialer proposes, the listener
/// accepts. Shared by the XK-only and the open-mesh stacks.
pub(crate) async fn multiplex<S>(
    stream: S,
    dialer: bool,
    config: yamux::Config,
) -> Result<StreamMuxerBox, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let negotiation =
        |e: multistream_select::NegotiationError| HandshakeError::Negotiation(e.to_string());
    if dialer {
        let (_, negotiated) = dialer_select_proto(stream, [YAMUX], Version::V1Lazy)
            .await
            .map_err(negotiation)?;
        let muxer = config
            .upgrade_outbound(negotiated, YAMUX)
            .await
            .map_err(HandshakeError::Muxer)?;
        Ok(StreamMuxerBox::new(muxer))
    } else {
        let (_, negotiated) = listener_select_proto(stream, [YAMUX])
            .await
            .map_err(negotiation)?;
        let muxer = config
            .upgrade_inbound(negotiated, YAMUX)
            .await
            .map_err(HandshakeError::Muxer)?;
        Ok(StreamMuxerBox::new(muxer))
    }
}

/// Secures every connection of `transport` with `channel`, then multiplexes it with yamux.
pub fn upgrade_transport<T>(
    transport: T,
    channel: SecureChannel,
    yamux_config: yamux::Config,
) -> Boxed<(PeerId, StreamMuxerBox)>
where
    T: Transport + Send + Unpin + 'static,
    T::Output: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T::Error: Send + Sync + 'static,
    T::Dial: Send + 'static,
    T::ListenerUpgrade: Send + 'static,
{
    transport
        .and_then(move |io, endpoint: ConnectedPoint| {
            let channel = channel.clone();
            let yamux_config = yamux_config.clone();
            async move {
                match endpoint {
                    ConnectedPoint::Dialer {
                        address,
                        role_override: Endpoint::Dialer,
                        ..
                    } => {
                        let Some(remote) = dialed_peer(&address) else {
                            let error = HandshakeError::NoRemotePeerId;
                            channel.record(Direction::Outbound, None, Some(&address), Err(&error));
                            return Err(error);
                        };
                        let (peer, stream) =
                            channel.outbound(io, remote, Some(&address), true).await?;
                        Ok((peer, multiplex(stream, true, yamux_config).await?))
                    }
                    endpoint => {
                        let address = endpoint.get_remote_address().clone();
                        let source = source_ip(&address);
                        let (peer, stream) =
                            channel.inbound(io, source, Some(&address), true).await?;
                        Ok((peer, multiplex(stream, false, yamux_config).await?))
                    }
                }
            }
            .boxed()
        })
        .boxed()
}
