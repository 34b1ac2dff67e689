//! Swarms on loopback TCP with the node's transport stack (secure channel, yamux, relay
//! client), a relay server, ping and a bulk request protocol: what the relay test and the
//! relay benchmark run on.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    // relay::Config has private fields: it is set field by field.
    clippy::field_reassign_with_default
)]

use std::io;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fogmesh_transports::secure::{AdmissionPolicy, SecureChannel, SecureChannelConfig};
use fogmesh_transports::ticket::{self, Grant, MeshId, RevocationSet, RevocationTarget};
use fogmesh_transports::{build_transport, TransportConfig};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{ping, relay, request_response, Multiaddr, PeerId, StreamProtocol, Swarm};
use std::sync::{Arc, RwLock};

/// Largest bulk request.
pub const MAX_BULK: usize = 8 << 20;

/// Requests are raw bytes up to [`MAX_BULK`]; the answer is their length.
#[derive(Debug, Clone, Default)]
pub struct BulkCodec;

impl request_response::Codec for BulkCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = u64;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut data = Vec::new();
        io.take(MAX_BULK as u64 + 1).read_to_end(&mut data).await?;
        Ok(data)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<u64>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut len = [0u8; 8];
        io.read_exact(&mut len).await?;
        Ok(u64::from_be_bytes(len))
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        data: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&data).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        len: u64,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&len.to_be_bytes()).await?;
        io.close().await
    }
}

#[derive(NetworkBehaviour)]
pub struct Node {
    pub relay_server: Toggle<relay::Behaviour>,
    pub relay_client: relay::client::Behaviour,
    pub ping: ping::Behaviour,
    pub bulk: request_response::Behaviour<BulkCodec>,
}

/// A mesh root and its tickets.
pub struct Mesh {
    root: Keypair,
}

impl Mesh {
    pub fn new() -> Mesh {
        Mesh {
            root: Keypair::generate_ed25519(),
        }
    }

    /// A key with a ticket of this mesh, and the policy that admits only its members.
    pub fn member(&self) -> (Keypair, AdmissionPolicy) {
        self.member_with(Default::default())
    }

    /// A member whose node refuses what `revocations` withdraws.
    pub fn member_with(
        &self,
        revocations: Arc<RwLock<RevocationSet>>,
    ) -> (Keypair, AdmissionPolicy) {
        let key = Keypair::generate_ed25519();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let grant = Grant {
            roles: vec!["worker".into()],
            not_before: now - 60,
            not_after: now + 3600,
        };
        let ticket = ticket::issue(
            &self.root,
            MeshId::of_root(&self.root.public()),
            key.public().to_peer_id(),
            &grant,
            None,
        )
        .unwrap();
        let policy = AdmissionPolicy::closed(self.root.public(), ticket, revocations);
        (key, policy)
    }

    /// Withdraws `peer`'s tickets in `revocations`.
    pub fn revoke(&self, peer: PeerId, revocations: &RwLock<RevocationSet>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let revocation =
            ticket::revoke(&self.root, RevocationTarget::Subject(peer.to_bytes()), now).unwrap();
        revocations
            .write()
            .unwrap()
            .add(&revocation, &self.root.public())
            .unwrap();
    }
}

/// The relay server's config in these swarms: circuits big and long enough for the
/// benchmark.
pub fn relay_config() -> relay::Config {
    let mut config = relay::Config::default();
    config.max_circuit_bytes = 64 << 20;
    config.max_circuit_duration = Duration::from_secs(600);
    config
}

/// A swarm with the node's stack; `relays` runs a relay server for others.
pub fn swarm(key: Keypair, policy: AdmissionPolicy, relays: bool) -> (Swarm<Node>, SecureChannel) {
    swarm_with(key, policy, relays.then(relay_config))
}

/// A swarm with the node's stack, relaying with `relay` if given.
pub fn swarm_with(
    key: Keypair,
    policy: AdmissionPolicy,
    relay: Option<relay::Config>,
) -> (Swarm<Node>, SecureChannel) {
    let peer_id = key.public().to_peer_id();
    let mut config = SecureChannelConfig::new(policy);
    config.guard.exempt_loopback = true;
    let channel = SecureChannel::new(&key, config).unwrap();
    let (relay_transport, relay_client) = relay::client::new(peer_id);
    let transport = build_transport(
        &key,
        &channel,
        &TransportConfig {
            quic: false,
            dns: false,
            ..TransportConfig::default()
        },
        Some(relay_transport),
    )
    .unwrap();
    let relay_server = relay.map(|config| {
        let mut server = relay::Behaviour::new(peer_id, config);
        server.set_status(Some(relay::Status::Enable));
        server
    });
    let behaviour = Node {
        relay_server: Toggle::from(relay_server),
        relay_client,
        ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_millis(200))),
        bulk: request_response::Behaviour::new(
            [(
                StreamProtocol::new("/fogmesh-test/bulk/1"),
                request_response::ProtocolSupport::Full,
            )],
            request_response::Config::default().with_request_timeout(Duration::from_secs(60)),
        ),
    };
    let swarm = Swarm::new(
        transport,
        behaviour,
        peer_id,
        libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(Duration::from_secs(60)),
    );
    (swarm, channel)
}

/// Polls every swarm until `until` says stop (given the swarm's index and its event), or
/// `timeout` passes (then `false`). Bulk requests are answered on the way.
pub async fn drive(
    swarms: &mut [Swarm<Node>],
    timeout: Duration,
    mut until: impl FnMut(usize, &SwarmEvent<NodeEvent>) -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let next = futures::future::poll_fn(|cx| {
            for (i, s) in swarms.iter_mut().enumerate() {
                if let Poll::Ready(Some(e)) = s.poll_next_unpin(cx) {
                    return Poll::Ready((i, e));
                }
            }
            Poll::Pending
        });
        let Ok((i, event)) = tokio::time::timeout_at(deadline, next).await else {
            return false;
        };
        if let SwarmEvent::Behaviour(NodeEvent::Bulk(request_response::Event::Message {
            message:
                request_response::Message::Request {
                    request, channel, ..
                },
            ..
        })) = event
        {
            let len = request.len() as u64;
            let _ = swarms[i].behaviour_mut().bulk.send_response(channel, len);
            continue;
        }
        if until(i, &event) {
            return true;
        }
    }
}

/// Listens on a fresh loopback port and returns the address.
pub async fn listen(swarms: &mut [Swarm<Node>], index: usize) -> Multiaddr {
    swarms[index]
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let mut addr = None;
    drive(swarms, Duration::from_secs(5), |i, e| match e {
        SwarmEvent::NewListenAddr { address, .. } if i == index => {
            addr = Some(address.clone());
            true
        }
        _ => false,
    })
    .await;
    let addr = addr.expect("listening");
    // A relay's reservations carry its confirmed addresses; a node finds them by AutoNAT,
    // here the loopback address is simply taken as confirmed.
    swarms[index].add_external_address(addr.clone());
    addr
}

/// `/<relay addr>/p2p/<relay>/p2p-circuit`.
pub fn circuit(relay_addr: &Multiaddr, relay: PeerId) -> Multiaddr {
    relay_addr
        .clone()
        .with(Protocol::P2p(relay))
        .with(Protocol::P2pCircuit)
}

/// Has `swarms[holder]` reserve a slot on `relay` (whose address is `relay_addr`); true once
/// the relay accepted.
pub async fn reserve(
    swarms: &mut [Swarm<Node>],
    holder: usize,
    relay_addr: &Multiaddr,
    relay: PeerId,
) -> bool {
    swarms[holder]
        .listen_on(circuit(relay_addr, relay))
        .unwrap();
    drive(swarms, Duration::from_secs(10), |i, e| {
        if std::env::var_os("RELAY_HARNESS_DEBUG").is_some() {
            eprintln!("{i}: {e:?}");
        }
        i == holder
            && matches!(
                e,
                SwarmEvent::Behaviour(NodeEvent::RelayClient(
                    relay::client::Event::ReservationReqAccepted { .. }
                ))
            )
    })
    .await
}

/// A relay (swarm 0, a member of the mesh, listening), B (1) and A (2).
pub struct Trio {
    pub swarms: [Swarm<Node>; 3],
    pub relay: PeerId,
    pub relay_addr: Multiaddr,
    pub b: PeerId,
    pub a: PeerId,
    pub b_channel: SecureChannel,
    pub a_channel: SecureChannel,
}

/// Starts a [`Trio`] with B's and A's keys and policies.
pub async fn trio(
    mesh: &Mesh,
    (b_key, b_policy): (Keypair, AdmissionPolicy),
    (a_key, a_policy): (Keypair, AdmissionPolicy),
) -> Trio {
    let (relay_key, relay_policy) = mesh.member();
    let relay = relay_key.public().to_peer_id();
    let b = b_key.public().to_peer_id();
    let a = a_key.public().to_peer_id();
    let (r, _) = swarm(relay_key, relay_policy, true);
    let (sb, b_channel) = swarm(b_key, b_policy, false);
    let (sa, a_channel) = swarm(a_key, a_policy, false);
    let mut swarms = [r, sb, sa];
    let relay_addr = listen(&mut swarms, 0).await;
    Trio {
        swarms,
        relay,
        relay_addr,
        b,
        a,
        b_channel,
        a_channel,
    }
}

impl Trio {
    /// B's address through the relay.
    pub fn b_via_relay(&self) -> Multiaddr {
        circuit(&self.relay_addr, self.relay).with(Protocol::P2p(self.b))
    }
}
