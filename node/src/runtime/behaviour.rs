//! The swarm's behaviours: the peer manager beside the protocols every node speaks, the
//! NAT-traversal trio (AutoNAT v2, circuit relay v2, DCUtR: docs/nat.md), and one
//! request-response behaviour carrying every capability's protocols ([`Rpc`]).

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    autonat, connection_limits, dcutr, gossipsub, identify, kad, mdns, ping, relay, StreamProtocol,
};

use crate::config::Settings;
use crate::runtime::peers::manager::{PeerManager, PeerManagerConfig, PeerMetrics};
use crate::runtime::registration::SetupError;
use crate::runtime::rpc::Rpc;
use fogmesh_wire::envelope;

/// The version every node reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Protocol name for identify and kad.
pub const PROTOCOL_VERSION: &str = "/fogmesh/1.0.0";
const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/fogmesh/kad/1.0.0");
/// Peers remembered in the registry; the least recently seen is forgotten beyond this.
pub const MAX_KNOWN_PEERS: usize = 1024;
/// Known peers redialled at start-up, most recently seen first.
const REDIAL_ON_START: usize = 16;

/// See the module docs.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) peers: PeerManager,
    pub(crate) gossipsub: gossipsub::Behaviour,
    pub(crate) kad: Toggle<kad::Behaviour<kad::store::MemoryStore>>,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    /// Tests this node's addresses by asking peers to dial back (only confirmed addresses
    /// are announced: docs/nat.md).
    pub(crate) autonat: Toggle<autonat::v2::client::Behaviour>,
    /// Dials peers back at the addresses they ask about.
    pub(crate) autonat_server: Toggle<autonat::v2::server::Behaviour>,
    /// Reserves slots on relays and accepts circuits through them.
    pub(crate) relay_client: Toggle<relay::client::Behaviour>,
    /// Relays for others, once this node is confirmed publicly reachable.
    pub(crate) relay_server: Toggle<relay::Behaviour>,
    /// Turns relayed connections into direct ones by hole punching.
    pub(crate) dcutr: Toggle<dcutr::Behaviour>,
    pub(crate) rpc: Rpc,
}

/// Per peer: relay slots held for it, circuits relayed for it.
const RELAY_RESERVATIONS_PER_PEER: usize = 2;
const RELAY_CIRCUITS_PER_PEER: usize = 4;
/// A relayed circuit is closed after this long or this many bytes; the peers' connection
/// is re-established (through a relay again, or directly) as any lost connection is.
const RELAY_CIRCUIT_DURATION: Duration = Duration::from_secs(30 * 60);
const RELAY_CIRCUIT_BYTES: u64 = 32 << 20;

/// The relay service's bounds (docs/nat.md, "Relay limits"). Set field by field: the
/// config has private fields (its rate limiters), so it cannot be built literally.
#[allow(clippy::field_reassign_with_default)]
fn relay_config(settings: &Settings) -> relay::Config {
    let mut config = relay::Config::default();
    config.max_reservations = settings.relay_max_reservations as usize;
    config.max_reservations_per_peer = RELAY_RESERVATIONS_PER_PEER;
    config.max_circuits = settings.relay_max_circuits as usize;
    config.max_circuits_per_peer = RELAY_CIRCUITS_PER_PEER;
    config.max_circuit_duration = RELAY_CIRCUIT_DURATION;
    config.max_circuit_bytes = RELAY_CIRCUIT_BYTES;
    config
}

pub(crate) fn build(
    keypair: &Keypair,
    settings: &Settings,
    peer_metrics: PeerMetrics,
    clock: crate::runtime::clock::Clock,
    rpc: Rpc,
    relay_client: Option<relay::client::Behaviour>,
) -> Result<Behaviour, SetupError> {
    let peer_id = keypair.public().to_peer_id();
    let setup = |what: &'static str| move |e: String| SetupError::Failed { what, reason: e };
    // Every message we publish is an envelope signed by its origin, and receivers check that
    // signature once per unique message, after gossipsub's duplicate filter. gossipsub's own
    // signature would be checked in its codec for every copy received (measured: ~30 % of a
    // node's CPU in a 50-node mesh), so gossipsub only names the author (`from`), and the
    // envelope check requires author == origin. Message ids hash the content, so nobody can
    // pre-empt an honest message by sending junk under the same (author, seqno) id.
    let gossip_config = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(Duration::from_secs(1))
        .validation_mode(gossipsub::ValidationMode::Permissive)
        .validate_messages()
        .message_id_fn(|message: &gossipsub::Message| {
            // Topic and author too, not only the data: see `envelope::message_id`.
            let id = envelope::message_id(
                message.topic.as_str(),
                message.source.as_ref(),
                &message.data,
            );
            gossipsub::MessageId::from(id.to_vec())
        })
        .flood_publish(false)
        .max_transmit_size(envelope::MAX_ENVELOPE_LEN + 1024)
        .build()
        .map_err(|e| setup("gossipsub")(e.to_string()))?;
    let gossipsub = gossipsub::Behaviour::new(
        gossipsub::MessageAuthenticity::Author(peer_id),
        gossip_config,
    )
    .map_err(|e| setup("gossipsub")(e.to_string()))?;
    // Off (`dht = false`): kad walks by itself whenever its table holds fewer than 20 peers,
    // and a walk dials a few dozen; a thousand in-memory nodes starting together on one
    // machine spent most of their CPU on those handshakes (docs/testnet.md).
    let kad = settings.dht.then(|| {
        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        // kad's own periodic walk fires at once, before any peer is known, and warns "No
        // known peers" at every start; the peer manager asks for walks once it has peers.
        kad_config.set_periodic_bootstrap_interval(None);
        let mut kad =
            kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
        kad.set_mode(Some(kad::Mode::Server));
        kad
    });
    let mdns = if settings.mdns {
        Some(
            mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)
                .map_err(|e| setup("mDNS")(e.to_string()))?,
        )
    } else {
        None
    };
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(settings.max_connections))
        // Two for a simultaneous dial (or a relayed connection and the direct one that
        // replaces it), one more for a peer's AutoNAT dial-back: at two, a dial-back to a
        // peer already connected twice was refused, and this node wrongly judged private.
        .with_max_established_per_peer(Some(3))
        .with_max_pending_incoming(Some(64))
        .with_max_pending_outgoing(Some(64));
    let peers = PeerManager::new(
        PeerManagerConfig {
            local: peer_id,
            bootstrap: settings.bootstrap.clone(),
            target_peers: settings.target_peers as usize,
            max_known_peers: MAX_KNOWN_PEERS,
            redial_on_start: REDIAL_ON_START,
        },
        peer_metrics,
        clock,
    );
    Ok(Behaviour {
        limits: connection_limits::Behaviour::new(limits),
        peers,
        gossipsub,
        kad: Toggle::from(kad),
        mdns: Toggle::from(mdns),
        identify: identify::Behaviour::new(
            identify::Config::new(PROTOCOL_VERSION.into(), keypair.public())
                .with_agent_version(format!("fogmesh/{VERSION}"))
                // A new address (a relay slot, a confirmed external address) reaches the
                // connected peers at once, not at the next identify round minutes later.
                .with_push_listen_addr_updates(true),
        ),
        ping: ping::Behaviour::new(
            ping::Config::new()
                .with_interval(crate::runtime::peers::recovery::PING_EVERY)
                .with_timeout(crate::runtime::peers::recovery::PING_TIMEOUT),
        ),
        autonat: Toggle::from(
            settings
                .nat_traversal
                .then(autonat::v2::client::Behaviour::default),
        ),
        autonat_server: Toggle::from(
            settings
                .nat_traversal
                .then(autonat::v2::server::Behaviour::default),
        ),
        relay_client: Toggle::from(relay_client),
        relay_server: Toggle::from(settings.relay_service.then(|| {
            let mut server = relay::Behaviour::new(peer_id, relay_config(settings));
            // Off until the reach capability says this node is publicly reachable: libp2p's
            // own rule (any external address) would count the circuit addresses a node
            // behind a NAT holds through its relays.
            server.set_status(Some(relay::Status::Disable));
            server
        })),
        dcutr: Toggle::from(
            settings
                .nat_traversal
                .then(|| dcutr::Behaviour::new(peer_id)),
        ),
        rpc,
    })
}
