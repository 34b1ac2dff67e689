#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The BLE stack on the simulated radio: the driver contract, the reliable stream over lossy
//! links, and the libp2p transport with the secure channel (admission as on the internet).

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fogmesh_transports::ble::arq::ArqConfig;
use fogmesh_transports::ble::driver::{BleDriver, BleError, DeviceId};
use fogmesh_transports::ble::sim::{LinkParams, SimConfig, SimDevice, SimRadio};
use fogmesh_transports::ble::stream::BleStream;
use fogmesh_transports::ble::transport::{device_addr, BleTransport};
use fogmesh_transports::secure::{AdmissionPolicy, SecureChannel, SecureChannelConfig};
use fogmesh_transports::secure_transport;
use fogmesh_transports::ticket::{self, Grant, MeshId, RevocationSet};
use futures::io::{AsyncReadExt, AsyncWriteExt};
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{ping, PeerId, Swarm, SwarmBuilder};

fn id(n: u8) -> DeviceId {
    DeviceId([n; 8])
}

fn radio(params: LinkParams) -> SimRadio {
    SimRadio::new(SimConfig {
        link: params,
        max_links: 2,
        seed: 7,
        ..SimConfig::default()
    })
}

// ---- The driver contract, on the simulated radio -------------------------------------

#[tokio::test(start_paused = true)]
async fn links_carry_datagrams_both_ways_and_break_when_out_of_range() {
    let radio = radio(LinkParams::default());
    let a = radio.add_device(id(1), (0.0, 0.0));
    let b = radio.add_device(id(2), (5.0, 0.0));
    let mut accepted = b.listen().unwrap();
    assert_eq!(b.listen().unwrap_err(), BleError::AlreadyListening);
    assert_eq!(a.neighbours().len(), 1);
    let mut out = a.connect(id(2)).await.unwrap();
    let mut inn = accepted.recv().await.unwrap();
    assert_eq!(
        (out.peer, inn.peer, out.outbound, inn.outbound),
        (id(2), id(1), true, false)
    );
    assert_eq!(out.max_datagram, 182);
    out.tx.send(vec![1; 182]).await.unwrap();
    inn.tx.send(vec![2; 10]).await.unwrap();
    assert_eq!(inn.rx.recv().await.unwrap(), vec![1; 182]);
    assert_eq!(out.rx.recv().await.unwrap(), vec![2; 10]);
    // One link per pair, whoever connects.
    assert_eq!(
        a.connect(id(2)).await.unwrap_err(),
        BleError::AlreadyLinked(id(2))
    );
    // Out of range: both ends see the link end.
    radio.move_device(id(2), (50.0, 0.0));
    assert!(inn.rx.recv().await.is_none());
    assert!(out.rx.recv().await.is_none());
    assert!(radio.links().is_empty());
    assert_eq!(
        a.connect(id(2)).await.unwrap_err(),
        BleError::NotInRange(id(2))
    );
}

#[tokio::test(start_paused = true)]
async fn a_device_at_its_link_limit_refuses_more_and_a_cut_is_healed() {
    let radio = radio(LinkParams::default());
    let hub = radio.add_device(id(1), (0.0, 0.0));
    let _hub_links = hub.listen().unwrap();
    let mut keep = Vec::new();
    for n in 2..=4 {
        let d = radio.add_device(id(n), (1.0, f64::from(n)));
        match d.connect(id(1)).await {
            Ok(link) => keep.push(link),
            Err(e) => assert_eq!((n, e), (4, BleError::LinkLimit(id(1)))),
        }
    }
    assert_eq!(keep.len(), 2);
    radio.cut(id(1), id(2));
    assert!(!radio.neighbours_of(id(1)).contains(&id(2)));
    radio.heal();
    assert!(radio.neighbours_of(id(1)).contains(&id(2)));
}

// ---- The reliable stream -------------------------------------------------------------

async fn stream_pair(radio: &SimRadio, a: &SimDevice, b: DeviceId) -> (BleStream, BleStream) {
    let mut accepted = radio.add_device(b, (1.0, 0.0)).listen().unwrap();
    let out = a.connect(b).await.unwrap();
    let inn = accepted.recv().await.unwrap();
    (
        BleStream::spawn(out, ArqConfig::default()),
        BleStream::spawn(inn, ArqConfig::default()),
    )
}

#[tokio::test(start_paused = true)]
async fn a_stream_over_a_lossy_link_delivers_everything_in_order() {
    let radio = radio(LinkParams {
        loss: 0.05,
        jitter: Duration::from_millis(10),
        mtu: 247,
        ..LinkParams::default()
    });
    let a = radio.add_device(id(1), (0.0, 0.0));
    let (mut out, mut inn) = stream_pair(&radio, &a, id(2)).await;
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let small: Vec<u8> = (0..30_000u32).map(|i| (i % 13) as u8).collect();
    let (sent_big, sent_small) = (big.clone(), small.clone());
    let writer = tokio::spawn(async move {
        out.write_all(&sent_big).await.unwrap();
        out.close().await.unwrap();
        let mut back = Vec::new();
        out.read_to_end(&mut back).await.unwrap();
        (out, back)
    });
    let mut got = Vec::new();
    inn.write_all(&sent_small).await.unwrap();
    inn.close().await.unwrap();
    inn.read_to_end(&mut got).await.unwrap();
    let (out, back) = writer.await.unwrap();
    assert!(got == big, "{} of {} bytes", got.len(), big.len());
    assert!(back == small, "{} of {} bytes", back.len(), small.len());
    assert!(
        out.stats().retransmissions > 0,
        "5 % loss costs retransmissions"
    );
}

#[tokio::test(start_paused = true)]
async fn a_broken_link_fails_the_stream_within_the_bound() {
    let radio = radio(LinkParams::default());
    let a = radio.add_device(id(1), (0.0, 0.0));
    let (mut out, _inn) = stream_pair(&radio, &a, id(2)).await;
    out.write_all(b"hello").await.unwrap();
    radio.remove_device(id(2));
    let mut buf = [0u8; 8];
    let err = tokio::time::timeout(Duration::from_secs(15), out.read(&mut buf))
        .await
        .expect("a broken link is noticed")
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
}

// ---- The libp2p transport with the secure channel ------------------------------------

struct Mesh {
    root: Keypair,
}

impl Mesh {
    fn ticket(&self, peer: &Keypair) -> Vec<u8> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let grant = Grant {
            roles: vec!["worker".into()],
            not_before: now - 60,
            not_after: now + 3600,
        };
        ticket::issue(
            &self.root,
            MeshId::of_root(&self.root.public()),
            peer.public().to_peer_id(),
            &grant,
            None,
        )
        .unwrap()
    }

    fn policy(&self, ticket: Vec<u8>) -> AdmissionPolicy {
        AdmissionPolicy::closed(
            self.root.public(),
            ticket,
            Arc::new(RwLock::new(RevocationSet::default())),
        )
    }
}

fn node(
    radio: &SimRadio,
    key: Keypair,
    policy: AdmissionPolicy,
    pos: f64,
) -> Swarm<ping::Behaviour> {
    let channel = SecureChannel::new(&key, SecureChannelConfig::new(policy)).unwrap();
    let device = radio.add_device(DeviceId::of_peer(&key.public().to_peer_id()), (pos, 0.0));
    let ble = BleTransport::new(device, ArqConfig::default());
    let transport = secure_transport(&key, &channel, ble, Duration::from_secs(20)).unwrap();
    let mut swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|_| transport)
        .unwrap()
        .with_behaviour(|_| {
            ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_millis(200)))
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build();
    swarm.listen_on("/unix/ble".parse().unwrap()).unwrap();
    swarm
}

/// Drives both swarms until `a` got a ping answer from `b` (Ok) or a dial failed (Err).
async fn ping_over_ble(
    a: &mut Swarm<ping::Behaviour>,
    b: &mut Swarm<ping::Behaviour>,
) -> Result<(), String> {
    let target = *b.local_peer_id();
    let addr = device_addr(DeviceId::of_peer(&target)).with(Protocol::P2p(target));
    a.dial(addr).unwrap();
    let deadline = tokio::time::sleep(Duration::from_secs(30));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            event = a.select_next_some() => match event {
                SwarmEvent::Behaviour(ping::Event { peer, result: Ok(_), .. }) if peer == target => return Ok(()),
                SwarmEvent::OutgoingConnectionError { error, .. } => return Err(error.to_string()),
                _ => {}
            },
            _ = b.select_next_some() => {}
            _ = &mut deadline => return Err("timed out".into()),
        }
    }
}

#[tokio::test]
async fn mesh_members_connect_over_ble_with_the_secure_channel_and_outsiders_do_not() {
    let radio = radio(LinkParams::default());
    let mesh = Mesh {
        root: Keypair::generate_ed25519(),
    };
    let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let (ta, tb) = (mesh.ticket(&ka), mesh.ticket(&kb));
    let mut a = node(&radio, ka, mesh.policy(ta), 0.0);
    let mut b = node(&radio, kb, mesh.policy(tb), 3.0);
    ping_over_ble(&mut a, &mut b)
        .await
        .expect("members ping over BLE");

    // A node with a ticket from another mesh: no link.
    let other = Mesh {
        root: Keypair::generate_ed25519(),
    };
    let kc = Keypair::generate_ed25519();
    let tc = other.ticket(&kc);
    let mut c = node(&radio, kc, other.policy(tc), 1.0);
    let refused = ping_over_ble(&mut c, &mut b).await.unwrap_err();
    assert!(!refused.contains("timed out"), "{refused}");
    let _: PeerId = *c.local_peer_id();
}

// ---- The same contract on the cross-process medium (loopback UDP) --------------------

mod medium {
    use super::*;
    use fogmesh_transports::ble::medium::{DeviceEntry, MediumFile, MediumLink, MediumRadio};

    fn free_port() -> u16 {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn file(xs: &[(DeviceId, f64)], loss: f64) -> MediumFile {
        MediumFile {
            range: 10.0,
            max_links: 7,
            link: MediumLink {
                loss,
                ..MediumLink::default()
            },
            devices: xs
                .iter()
                .map(|(id, x)| {
                    let entry = DeviceEntry {
                        addr: ([127, 0, 0, 1], free_port()).into(),
                        x: *x,
                        y: 0.0,
                        peer_id: None,
                    };
                    (id.to_string(), entry)
                })
                .collect(),
            cuts: vec![],
            joined: vec![],
        }
    }

    #[tokio::test]
    async fn links_across_the_medium_carry_a_stream_and_break_when_moved_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("radio.json");
        let mut medium = file(&[(id(1), 0.0), (id(2), 5.0), (id(3), 30.0)], 0.05);
        medium.save(&path).unwrap();
        let a = MediumRadio::open(&path, id(1), 1).await.unwrap();
        let b = MediumRadio::open(&path, id(2), 2).await.unwrap();
        let c = MediumRadio::open(&path, id(3), 3).await.unwrap();
        let mut accepted = b.listen().unwrap();
        let _c_listens = c.listen().unwrap();
        assert_eq!(b.listen().unwrap_err(), BleError::AlreadyListening);
        assert_eq!(
            a.neighbours().iter().map(|d| d.device).collect::<Vec<_>>(),
            vec![id(2)]
        );
        assert_eq!(
            a.connect(id(3)).await.unwrap_err(),
            BleError::NotInRange(id(3))
        );
        let out = a.connect(id(2)).await.unwrap();
        let inn = accepted.recv().await.unwrap();
        assert_eq!((out.peer, inn.peer, out.max_datagram), (id(2), id(1), 182));
        // A reliable stream over 5 % loss, across two "processes" (sockets).
        let (mut out, mut inn) = (
            BleStream::spawn(out, ArqConfig::default()),
            BleStream::spawn(inn, ArqConfig::default()),
        );
        let big: Vec<u8> = (0..60_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            out.write_all(&sent).await.unwrap();
            out.flush().await.unwrap();
            out
        });
        let mut got = vec![0u8; big.len()];
        tokio::time::timeout(Duration::from_secs(30), inn.read_exact(&mut got))
            .await
            .expect("the stream delivers")
            .unwrap();
        assert!(got == big);
        let mut out = writer.await.unwrap();
        // Moving b out of range (an edit of the file) breaks the link on both sides.
        medium.devices.get_mut(&id(2).to_string()).unwrap().x = 50.0;
        medium.save(&path).unwrap();
        let mut buf = [0u8; 8];
        let ended = tokio::time::timeout(Duration::from_secs(15), inn.read(&mut buf))
            .await
            .expect("the link break is noticed");
        assert!(matches!(ended, Ok(0) | Err(_)));
        let _ = out.write_all(b"x").await;
        assert!(a.neighbours().is_empty());
    }
}
