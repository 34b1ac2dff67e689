#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A stock rust-libp2p swarm (libp2p's own tcp + noise + yamux, identify and ping) against
//! the TCP stack `build_transport` gives a fogmesh node: welcome in an open mesh in both
//! dial directions, refused by a closed mesh; and the handshake guard covers `/noise`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fogmesh_transports::secure::open::{OpenSecurity, NOISE};
use fogmesh_transports::secure::{
    AdmissionPolicy, GuardConfig, HandshakeError, SecureChannel, SecureChannelConfig,
};
use fogmesh_transports::ticket::{self, Grant, MeshId};
use fogmesh_transports::{build_transport, TransportConfig};
use futures::StreamExt;
use libp2p::core::multiaddr::Protocol;
use libp2p::core::upgrade::OutboundConnectionUpgrade;
use libp2p::identity::Keypair;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::tcp::tokio::TcpStream;
use libp2p::{identify, noise, ping, tcp, yamux, Multiaddr, PeerId, Swarm, SwarmBuilder};
use multistream_select::{dialer_select_proto, Version};

#[derive(NetworkBehaviour)]
struct Probe {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

fn probe(key: &Keypair) -> Probe {
    Probe {
        identify: identify::Behaviour::new(identify::Config::new("/probe/1".into(), key.public())),
        ping: ping::Behaviour::new(ping::Config::new()),
    }
}

fn stock() -> Swarm<Probe> {
    SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(probe)
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build()
}

/// A swarm on the fogmesh TCP stack, and its channel (for the counters).
fn fogmesh(key: Keypair, policy: AdmissionPolicy) -> (Swarm<Probe>, SecureChannel) {
    let channel = SecureChannel::new(&key, SecureChannelConfig::new(policy)).unwrap();
    let config = TransportConfig {
        quic: false,
        dns: false,
        ..TransportConfig::default()
    };
    let transport = build_transport(&key, &channel, &config, None).unwrap();
    let swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|_| transport)
        .unwrap()
        .with_behaviour(probe)
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build();
    (swarm, channel)
}

fn open_node() -> (Swarm<Probe>, SecureChannel) {
    fogmesh(Keypair::generate_ed25519(), AdmissionPolicy::open())
}

/// A member of a fresh closed mesh, with a valid ticket.
fn closed_node() -> (Swarm<Probe>, SecureChannel) {
    let root = Keypair::generate_ed25519();
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
    let own = ticket::issue(
        &root,
        MeshId::of_root(&root.public()),
        key.public().to_peer_id(),
        &grant,
        None,
    )
    .unwrap();
    let policy = AdmissionPolicy::closed(root.public(), own, Arc::default());
    fogmesh(key, policy)
}

const LIMIT: Duration = Duration::from_secs(20);

/// Listens on loopback; the address with `/p2p/`.
async fn listen(swarm: &mut Swarm<Probe>) -> Multiaddr {
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let addr = tokio::time::timeout(LIMIT, async {
        loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                return address;
            }
        }
    })
    .await
    .unwrap();
    addr.with(Protocol::P2p(*swarm.local_peer_id()))
}

/// What one swarm saw of the other.
#[derive(Debug, Default)]
struct Seen {
    connected: Option<PeerId>,
    pinged: Option<PeerId>,
    identified: Option<PeerId>,
    dial_error: Option<String>,
}

impl Seen {
    fn note(&mut self, event: SwarmEvent<ProbeEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished { peer_id, .. } => self.connected = Some(peer_id),
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                self.dial_error = Some(error.to_string())
            }
            SwarmEvent::Behaviour(ProbeEvent::Ping(ping::Event {
                peer,
                result: Ok(_),
                ..
            })) => self.pinged = Some(peer),
            SwarmEvent::Behaviour(ProbeEvent::Identify(identify::Event::Received {
                peer_id,
                ..
            })) => self.identified = Some(peer_id),
            _ => {}
        }
    }

    /// Connected to `peer`, with a ping answered and identify received over the connection.
    fn talked_to(&self, peer: PeerId) -> bool {
        self.connected == Some(peer) && self.pinged == Some(peer) && self.identified == Some(peer)
    }
}

/// Drives both swarms until `done` holds (true) or [`LIMIT`] passes (false).
async fn drive(
    a: &mut Swarm<Probe>,
    b: &mut Swarm<Probe>,
    done: impl Fn(&Seen, &Seen) -> bool,
) -> (bool, Seen, Seen) {
    let (mut seen_a, mut seen_b) = (Seen::default(), Seen::default());
    let finished = tokio::time::timeout(LIMIT, async {
        while !done(&seen_a, &seen_b) {
            tokio::select! {
                event = a.select_next_some() => seen_a.note(event),
                event = b.select_next_some() => seen_b.note(event),
            }
        }
    })
    .await
    .is_ok();
    (finished, seen_a, seen_b)
}

/// `dialer` dials `addr` of `listener`; both must connect, ping and identify each other.
async fn converse(dialer: &mut Swarm<Probe>, listener: &mut Swarm<Probe>, addr: Multiaddr) {
    let (d, l) = (*dialer.local_peer_id(), *listener.local_peer_id());
    dialer.dial(addr).unwrap();
    let (finished, seen_d, seen_l) = drive(dialer, listener, |sd, sl| {
        sd.talked_to(l) && sl.talked_to(d) || sd.dial_error.is_some()
    })
    .await;
    assert!(finished, "no conversation: {seen_d:?} / {seen_l:?}");
    assert!(seen_d.dial_error.is_none(), "{seen_d:?}");
}

#[tokio::test]
async fn a_stock_peer_dials_an_open_node_over_noise() {
    let (mut node, channel) = open_node();
    let addr = listen(&mut node).await;
    let mut peer = stock();
    converse(&mut peer, &mut node, addr).await;

    let stats = channel.stats().snapshot();
    assert_eq!(stats.admitted_inbound, 1);
    assert_eq!(stats.admitted_noise_inbound, 1);
    assert!(stats.refused.is_empty(), "{:?}", stats.refused);
}

#[tokio::test]
async fn an_open_node_dials_a_stock_peer_over_noise_with_or_without_its_peer_id() {
    let mut peer = stock();
    let addr = listen(&mut peer).await;

    // With /p2p/: XK is proposed first, the stock peer answers `na`, /noise follows.
    let (mut node, channel) = open_node();
    converse(&mut node, &mut peer, addr.clone()).await;
    let stats = channel.stats().snapshot();
    assert_eq!(
        (stats.admitted_outbound, stats.admitted_noise_outbound),
        (1, 1)
    );
    assert!(stats.refused.is_empty(), "{:?}", stats.refused);

    // Without /p2p/: only /noise can run, and it tells us whom we reached.
    let (mut node, channel) = open_node();
    let mut bare = addr.clone();
    bare.pop();
    converse(&mut node, &mut peer, bare).await;
    assert_eq!(channel.stats().snapshot().admitted_noise_outbound, 1);
}

#[tokio::test]
async fn dialing_a_peer_id_that_noise_does_not_prove_fails() {
    let mut peer = stock();
    let mut addr = listen(&mut peer).await;
    addr.pop();
    let impostor_of = Keypair::generate_ed25519().public().to_peer_id();
    let (mut node, channel) = open_node();
    node.dial(addr.with(Protocol::P2p(impostor_of))).unwrap();
    let (finished, seen_node, seen_peer) =
        drive(&mut node, &mut peer, |sn, _| sn.dial_error.is_some()).await;
    assert!(finished, "{seen_node:?} / {seen_peer:?}");
    assert!(seen_node.connected.is_none());
    let stats = channel.stats().snapshot();
    assert_eq!(stats.refused.get("outbound.unexpected_peer"), Some(&1));
    assert_eq!(stats.admitted_outbound, 0);
}

#[tokio::test]
async fn open_nodes_still_speak_xk_to_each_other() {
    let (mut a, channel_a) = open_node();
    let (mut b, channel_b) = open_node();
    let addr = listen(&mut b).await;
    converse(&mut a, &mut b, addr).await;
    let (sa, sb) = (channel_a.stats().snapshot(), channel_b.stats().snapshot());
    assert_eq!((sa.admitted_outbound, sa.admitted_noise_outbound), (1, 0));
    assert_eq!((sb.admitted_inbound, sb.admitted_noise_inbound), (1, 0));
}

#[tokio::test]
async fn a_closed_mesh_refuses_stock_peers_both_ways() {
    // Stock dials the closed node: /noise is answered `na`.
    let (mut node, channel) = closed_node();
    let addr = listen(&mut node).await;
    let mut peer = stock();
    peer.dial(addr).unwrap();
    let (finished, seen_peer, seen_node) =
        drive(&mut peer, &mut node, |sp, _| sp.dial_error.is_some()).await;
    assert!(finished, "{seen_peer:?} / {seen_node:?}");
    assert!(seen_peer.connected.is_none() && seen_node.connected.is_none());

    // The closed node dials stock: it offers XK only, which the stock peer answers `na`.
    let addr = listen(&mut peer).await;
    node.dial(addr).unwrap();
    let (finished, seen_node, seen_peer) =
        drive(&mut node, &mut peer, |sn, _| sn.dial_error.is_some()).await;
    assert!(finished, "{seen_node:?} / {seen_peer:?}");
    assert!(seen_node.connected.is_none() && seen_peer.connected.is_none());
    let stats = channel.stats().snapshot();
    assert_eq!((stats.admitted_inbound, stats.admitted_outbound), (0, 0));
    assert_eq!(
        stats.admitted_noise_outbound + stats.admitted_noise_inbound,
        0
    );
}

// The guard, driven through `OpenSecurity` on raw sockets (the swarm hides the source
// address and timing a test needs).

async fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (dialed, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
    (TcpStream(dialed.unwrap()), TcpStream(accepted.unwrap().0))
}

fn open_security(config: SecureChannelConfig) -> OpenSecurity {
    let key = Keypair::generate_ed25519();
    OpenSecurity::new(&key, SecureChannel::new(&key, config).unwrap()).unwrap()
}

/// libp2p's own dialer with a new identity: negotiate `/noise`, then run libp2p-noise.
/// Gives the dialer's PeerId and the one the listener proved.
async fn stock_noise_dial(io: TcpStream) -> Result<(PeerId, PeerId), noise::Error> {
    let (_, io) = dialer_select_proto(io, [NOISE], Version::V1Lazy)
        .await
        .map_err(|e| noise::Error::Io(e.into()))?;
    let key = Keypair::generate_ed25519();
    let (peer, _) = noise::Config::new(&key)?
        .upgrade_outbound(io, NOISE)
        .await?;
    Ok((key.public().to_peer_id(), peer))
}

fn reason<S>(outcome: &Result<(PeerId, S), HandshakeError>) -> &'static str {
    match outcome {
        Ok(_) => "ok",
        Err(e) => e.reason(),
    }
}

const LOOPBACK: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

#[tokio::test]
async fn the_timeout_and_pending_cap_cover_noise() {
    let mut config = SecureChannelConfig::new(AdmissionPolicy::open());
    config.handshake_timeout = Duration::from_millis(300);
    config.guard = GuardConfig {
        max_pending: 1,
        ..GuardConfig::default()
    };
    let listener = open_security(config);

    // A dialer that negotiates /noise, then says nothing, holds the only slot until the
    // timeout; a second connection meanwhile is turned away.
    let (stalling, accepted) = socket_pair().await;
    let (_second, accepted_second) = socket_pair().await;
    let stall = async {
        let negotiated = dialer_select_proto(stalling, [NOISE], Version::V1)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(negotiated);
    };
    let second = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        listener.inbound(accepted_second, LOOPBACK, None).await
    };
    let (first, second, ()) =
        tokio::join!(listener.inbound(accepted, LOOPBACK, None), second, stall);
    assert_eq!(reason(&first), "timeout");
    assert_eq!(reason(&second), "too_many_pending");

    // The slot is free again, and a libp2p-noise dialer gets in.
    let (dialed, accepted) = socket_pair().await;
    let (inn, out) = tokio::join!(
        listener.inbound(accepted, LOOPBACK, None),
        stock_noise_dial(dialed)
    );
    let (dialer, listener_as_proven) = out.unwrap();
    assert_eq!(inn.unwrap().0, dialer);
    assert_eq!(listener_as_proven, listener.channel().local_peer_id());
    let stats = listener.channel().stats().snapshot();
    assert_eq!(stats.admitted_noise_inbound, 1);
    assert_eq!(stats.refused.get("inbound.timeout"), Some(&1));
    assert_eq!(stats.refused.get("inbound.too_many_pending"), Some(&1));
}

#[tokio::test]
async fn the_per_address_rate_limit_covers_noise() {
    let mut config = SecureChannelConfig::new(AdmissionPolicy::open());
    config.guard = GuardConfig {
        per_source_per_minute: 2,
        ..GuardConfig::default()
    };
    let listener = open_security(config);
    // Not loopback as far as the guard knows, so the limit applies.
    let source = Some("192.0.2.7".parse().unwrap());
    let mut reasons = Vec::new();
    for _ in 0..3 {
        let (dialed, accepted) = socket_pair().await;
        let (inn, _) = tokio::join!(
            listener.inbound(accepted, source, None),
            stock_noise_dial(dialed)
        );
        reasons.push(reason(&inn));
    }
    assert_eq!(reasons, ["ok", "ok", "rate_limited"]);
}
