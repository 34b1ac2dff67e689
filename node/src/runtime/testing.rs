//! Test support: a capability's storage effects carried out the way the storage task does
//! (in order, on one store), with the outcomes fed back to the capability, so a capability
//! can be tested on a real store without a driver.

use std::sync::{Arc, RwLock};

use fogmesh_store::Store;
use fogmesh_transports::secure::{AdmissionPolicy, SecureChannel, SecureChannelConfig};
use fogmesh_transports::ticket::{self, Admission, Grant, MeshId, RevocationSet, RevocationTarget};
use libp2p::identity::Keypair;
use libp2p::tcp::tokio::TcpStream;
use libp2p::PeerId;

use crate::runtime::capability::{Capability, Effect, Lane, Outbox};

/// Carries out every storage effect in `out` (and those the outcomes cause) against
/// `store`; the other effects are returned, in order.
pub fn run_storage<C: Capability + ?Sized>(
    capability: &mut C,
    store: &Store,
    now_ms: u64,
    out: &mut Outbox,
) -> Vec<Effect> {
    let mut rest = Vec::new();
    loop {
        let effects: Vec<Effect> = out.drain().collect();
        if effects.is_empty() {
            return rest;
        }
        for effect in effects {
            match effect {
                Effect::Persist(batch) => {
                    if let Err(error) = store.apply(batch) {
                        rest.push(Effect::StoreFailed(error.to_string()));
                    }
                }
                Effect::PersistDurable { batch, token } => {
                    let result = store
                        .apply_durable(batch)
                        .map(drop)
                        .map_err(|e| e.to_string());
                    capability.on_durable(now_ms, token, result, out);
                }
                Effect::Job {
                    lane: Lane::Storage { durable },
                    job,
                    token,
                } => {
                    let output = job();
                    let flushed = if durable {
                        store.flush().map_err(|e| e.to_string())
                    } else {
                        Ok(())
                    };
                    capability.on_job(now_ms, token, flushed.map(|()| output), out);
                }
                other => rest.push(other),
            }
        }
    }
}

/// Two members of one closed mesh whose handshake (over loopback TCP) has ended: the
/// `listener` channel remembers the dialer's admission, as a node does before the swarm
/// reports the connection.
#[derive(Debug)]
pub struct AdmittedPair {
    pub root: Keypair,
    pub revocations: Arc<RwLock<RevocationSet>>,
    pub listener: SecureChannel,
    /// The listener's own verified ticket.
    pub listener_admission: Admission,
    pub dialer: PeerId,
}

impl AdmittedPair {
    pub async fn new() -> Result<Self, String> {
        let root = Keypair::generate_ed25519();
        let revocations: Arc<RwLock<RevocationSet>> = Arc::default();
        let mesh = MeshId::of_root(&root.public());
        let member = |key: &Keypair| -> Result<(Vec<u8>, SecureChannel), String> {
            let grant = Grant {
                roles: vec!["worker".into()],
                not_before: 0,
                not_after: u64::MAX / 2,
            };
            let issued = ticket::issue(&root, mesh, key.public().to_peer_id(), &grant, None)
                .map_err(|e| e.to_string())?;
            let policy =
                AdmissionPolicy::closed(root.public(), issued.clone(), revocations.clone());
            let mut config = SecureChannelConfig::new(policy);
            config.guard.exempt_loopback = true;
            let channel = SecureChannel::new(key, config).map_err(|e| e.to_string())?;
            Ok((issued, channel))
        };
        let (dialer_key, listener_key) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (_, dialer) = member(&dialer_key)?;
        let (listener_ticket, listener) = member(&listener_key)?;
        let listener_admission = ticket::Verifier {
            root: &root.public(),
            now: 1,
            clock_skew: 0,
            revocations: &RevocationSet::default(),
        }
        .verify(&listener_ticket, &listener_key.public().to_peer_id())
        .map_err(|e| e.to_string())?;

        let socket = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = socket.local_addr().map_err(|e| e.to_string())?;
        let (dialed, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), socket.accept());
        let dialed = TcpStream(dialed.map_err(|e| e.to_string())?);
        let accepted = TcpStream(accepted.map_err(|e| e.to_string())?.0);
        let (out, inn) = tokio::join!(
            dialer.outbound(dialed, listener.local_peer_id(), None, false),
            listener.inbound(accepted, Some(addr.ip()), None, false)
        );
        out.map_err(|e| e.to_string())?;
        inn.map_err(|e| e.to_string())?;
        Ok(Self {
            root,
            revocations,
            listener,
            listener_admission,
            dialer: dialer_key.public().to_peer_id(),
        })
    }

    /// A root-signed revocation of every ticket the dialer holds.
    pub fn revoke_dialer(&self) -> Result<Vec<u8>, String> {
        ticket::revoke(
            &self.root,
            RevocationTarget::Subject(self.dialer.to_bytes()),
            1,
        )
        .map_err(|e| e.to_string())
    }
}
