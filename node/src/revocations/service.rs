//! The revocations capability: applies root-signed revocations, persists them durably, closes
//! the connections they withdraw, and re-gossips them so nodes that were away catch up.
//!
//! The set in force is the secure channel's (shared with its admission policy, which checks
//! every handshake against it); this service is its only writer. Re-gossip draws from an
//! in-memory list of the newest [`REPUBLISH_MAX`] revocations, seeded from the store at start,
//! so a round costs no table scan.
//!
//! A revocation submitted through the control API is answered only once it is on disk
//! (`PersistDurable`, then the reply): "done" means it survives a crash.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fogmesh_transports::secure::SecureChannel;
use fogmesh_transports::ticket::{self, Admission, RevocationSet};
use libp2p::gossipsub::MessageAcceptance;
use libp2p::identity::PublicKey;
use libp2p::PeerId;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use fogmesh_store::{Batch, Table};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::revocations::{RevocationOutcome, StoredRevocation};
use crate::runtime::capability::{
    duration_ms, Capability, Effect, GossipIn, Outbox, ReasonLabel, TimerId, Token, Verdict,
};
use crate::runtime::events::EventKind;
use crate::runtime::status::StatusView;

const REPUBLISH: TimerId = TimerId(0);

/// The answer to a revocation handed in through the control API.
pub type Reply = oneshot::Sender<Result<RevocationOutcome, String>>;

/// A revocation was applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevocationApplied {
    pub ticket_id: String,
    /// Peers whose connections were closed because of it.
    pub disconnected: Vec<String>,
}

impl EventKind for RevocationApplied {
    const KIND: &'static str = "revocation_applied";
}

/// How often held revocations are gossiped again.
pub const REPUBLISH_EVERY: Duration = Duration::from_secs(300);
/// Most revocations re-gossiped per round (the newest), and kept in memory for it.
pub const REPUBLISH_MAX: usize = 256;

/// The service's counters.
#[derive(Debug, Clone, Default)]
pub struct RevocationMetrics {
    pub applied: Counter,
    pub duplicates: Counter,
    pub rejected: Family<ReasonLabel, Counter>,
    pub held: Gauge,
}

impl RevocationMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("revocations");
        r.register("applied", "New revocations applied", self.applied.clone());
        r.register(
            "duplicates",
            "Revocations received again after being applied",
            self.duplicates.clone(),
        );
        r.register(
            "rejected",
            "Revocations refused, by reason",
            self.rejected.clone(),
        );
        r.register("held", "Revocations in force", self.held.clone());
    }
}

/// What a closed mesh gives this service.
#[derive(Debug, Clone)]
pub struct MeshAuthority {
    pub root: PublicKey,
    pub own_admission: Admission,
    pub topic: String,
}

/// See the module docs.
#[derive(Debug)]
pub struct RevocationService {
    mesh: Option<MeshAuthority>,
    channel: SecureChannel,
    table: Table<StoredRevocation>,
    recent: VecDeque<StoredRevocation>,
    /// Control requests waiting for their revocation to reach the disk.
    waiting: HashMap<Token, (Reply, RevocationOutcome)>,
    next_token: Token,
    metrics: RevocationMetrics,
}

impl RevocationService {
    /// `mesh` is `None` in an open mesh, where revocations have no root to verify against.
    pub fn new(
        mesh: Option<MeshAuthority>,
        channel: SecureChannel,
        table: Table<StoredRevocation>,
        metrics: RevocationMetrics,
    ) -> Self {
        let held = lock_read(channel.policy().revocations()).len();
        metrics.held.set(held as i64);
        Self {
            mesh,
            channel,
            table,
            recent: VecDeque::new(),
            waiting: HashMap::new(),
            next_token: 0,
            metrics,
        }
    }

    /// Seeds the re-gossip list from the store (any order; the newest are kept).
    pub fn restore(&mut self, stored: impl IntoIterator<Item = StoredRevocation>) {
        let mut all: Vec<StoredRevocation> = stored.into_iter().collect();
        all.sort_by_key(|r| r.received_at_ms);
        let skip = all.len().saturating_sub(REPUBLISH_MAX);
        self.recent = all.into_iter().skip(skip).collect();
    }

    pub fn metrics(&self) -> &RevocationMetrics {
        &self.metrics
    }

    /// The rejection counters by reason, for the status view.
    pub fn rejected_by_reason(&self) -> std::collections::BTreeMap<String, u64> {
        // Family has no iterator; the reasons are those `TicketError::reason` names.
        ticket::TicketError::REASONS
            .iter()
            .filter_map(|reason| {
                let n = self
                    .metrics
                    .rejected
                    .get_or_create(&ReasonLabel { reason })
                    .get();
                (n > 0).then(|| ((*reason).to_owned(), n))
            })
            .collect()
    }

    /// A revocation handed to this node through the control API; answered on `reply` once
    /// it is durable if it was new, at once otherwise.
    pub fn submit(&mut self, now_ms: u64, reply: Reply, bytes: Vec<u8>, out: &mut Outbox) {
        match self.apply(now_ms, &bytes, out) {
            Err(error) => {
                let _ = reply.send(Err(error));
            }
            Ok(None) => {
                let _ = reply.send(Ok(RevocationOutcome {
                    new: false,
                    disconnected: Vec::new(),
                }));
            }
            Ok(Some((token, disconnected))) => {
                if let Some(mesh) = &self.mesh {
                    out.push(Effect::Publish {
                        topic: mesh.topic.clone(),
                        data: bytes,
                    });
                }
                self.waiting.insert(
                    token,
                    (
                        reply,
                        RevocationOutcome {
                            new: true,
                            disconnected: disconnected.iter().map(|p| p.to_string()).collect(),
                        },
                    ),
                );
            }
        }
    }

    /// Verifies and applies; `Ok(None)` if already held, `Ok(Some(durable token, closed))`
    /// if new.
    fn apply(
        &mut self,
        now_ms: u64,
        bytes: &[u8],
        out: &mut Outbox,
    ) -> Result<Option<(Token, Vec<PeerId>)>, String> {
        let Some(mesh) = &self.mesh else {
            return Err("this node runs an open mesh; revocations need a mesh root".into());
        };
        let added = lock_write(self.channel.policy().revocations()).add(bytes, &mesh.root);
        let added = match added {
            Ok(added) => added,
            Err(error) => {
                self.metrics
                    .rejected
                    .get_or_create(&ReasonLabel {
                        reason: error.reason(),
                    })
                    .inc();
                return Err(format!("revocation refused: {error}"));
            }
        };
        if !added {
            self.metrics.duplicates.inc();
            return Ok(None);
        }
        self.metrics.applied.inc();
        self.metrics
            .held
            .set(lock_read(self.channel.policy().revocations()).len() as i64);
        let ticket_id = hex::encode(ticket::ticket_id(bytes));
        let stored = StoredRevocation {
            bytes: bytes.to_vec(),
            received_at_ms: now_ms,
        };
        if self.recent.len() >= REPUBLISH_MAX {
            self.recent.pop_front();
        }
        self.recent.push_back(stored.clone());
        self.next_token += 1;
        let token = self.next_token;
        let mut batch = Batch::new();
        if let Err(error) = batch.put(&self.table, &ticket_id, &stored) {
            tracing::warn!(%error, "revocation not stored");
        }
        out.push(Effect::PersistDurable { batch, token });
        if !self.channel.policy().still_admitted(&mesh.own_admission) {
            tracing::error!(
                "this node's own ticket has been revoked: peers will refuse new connections from it"
            );
        }
        // Every peer whose handshake admitted it, not only those reported connected: a
        // connection whose multiplexer is still coming up is not reported yet, and the peer
        // manager refuses it as it is established.
        let revoked = self.channel.revoked_admitted();
        for peer in &revoked {
            tracing::warn!(%peer, "closing connections: ticket revoked");
        }
        if !revoked.is_empty() {
            out.push(Effect::Disconnect {
                peers: revoked.clone(),
                reason: "ticket revoked",
            });
        }
        tracing::info!(%ticket_id, disconnected = revoked.len(), "revocation applied");
        out.event(RevocationApplied {
            ticket_id,
            disconnected: revoked.iter().map(|p| p.to_string()).collect(),
        });
        Ok(Some((token, revoked)))
    }
}

impl Capability for RevocationService {
    fn name(&self) -> &'static str {
        "revocations"
    }

    fn topics(&self) -> Vec<String> {
        self.mesh.iter().map(|m| m.topic.clone()).collect()
    }

    fn on_start(&mut self, now_ms: u64, out: &mut Outbox) {
        if self.mesh.is_some() {
            out.timer(
                now_ms.saturating_add(duration_ms(REPUBLISH_EVERY)),
                REPUBLISH,
            );
        }
    }

    fn on_gossip(&mut self, now_ms: u64, msg: GossipIn<'_>, out: &mut Outbox) -> Verdict {
        let acceptance = match self.apply(now_ms, msg.data, out) {
            Ok(Some(_)) => MessageAcceptance::Accept,
            // Known already: do not forward it again.
            Ok(None) => MessageAcceptance::Ignore,
            Err(error) => {
                tracing::debug!(source = %msg.propagation_source, %error, "revocation rejected");
                MessageAcceptance::Reject
            }
        };
        Verdict::Now(acceptance)
    }

    fn on_timer(&mut self, now_ms: u64, timer: TimerId, out: &mut Outbox) {
        if timer != REPUBLISH {
            return;
        }
        let Some(mesh) = &self.mesh else {
            return;
        };
        out.timer(
            now_ms.saturating_add(duration_ms(REPUBLISH_EVERY)),
            REPUBLISH,
        );
        // Newest first; gossipsub refuses copies of what it sent recently, which is fine.
        for revocation in self.recent.iter().rev() {
            out.push(Effect::Publish {
                topic: mesh.topic.clone(),
                data: revocation.bytes.clone(),
            });
        }
    }

    fn on_durable(
        &mut self,
        _now_ms: u64,
        token: Token,
        result: Result<(), String>,
        _out: &mut Outbox,
    ) {
        let Some((reply, outcome)) = self.waiting.remove(&token) else {
            return;
        };
        let answer = match result {
            Ok(()) => Ok(outcome),
            Err(error) => Err(format!(
                "revocation applied and gossiped but not stored: {error}"
            )),
        };
        let _ = reply.send(answer);
    }

    fn status(&self, _now_ms: u64, status: &mut StatusView) {
        status.admission.revocations = usize::try_from(self.metrics.held.get()).unwrap_or(0);
        status.admission.revocations_rejected = self.rejected_by_reason();
    }
}

fn lock_read(set: &Arc<RwLock<RevocationSet>>) -> std::sync::RwLockReadGuard<'_, RevocationSet> {
    set.read().unwrap_or_else(|p| p.into_inner())
}

fn lock_write(set: &Arc<RwLock<RevocationSet>>) -> std::sync::RwLockWriteGuard<'_, RevocationSet> {
    set.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use fogmesh_transports::secure::{AdmissionPolicy, SecureChannelConfig};
    use fogmesh_transports::ticket::{MeshId, RevocationTarget};
    use libp2p::identity::Keypair;

    const T0: u64 = 1_700_000_000_000;

    struct Mesh {
        root: Keypair,
        service: RevocationService,
    }

    fn mesh() -> Mesh {
        let root = Keypair::generate_ed25519();
        let node = Keypair::generate_ed25519();
        let mesh_id = MeshId::of_root(&root.public());
        let grant = ticket::Grant {
            roles: vec!["member".into()],
            not_before: 0,
            not_after: u64::MAX / 2,
        };
        let ticket =
            ticket::issue(&root, mesh_id, node.public().to_peer_id(), &grant, None).unwrap();
        let revocations = RevocationSet::default();
        let admission = ticket::Verifier {
            root: &root.public(),
            now: 1,
            clock_skew: 0,
            revocations: &revocations,
        }
        .verify(&ticket, &node.public().to_peer_id())
        .unwrap();
        let policy = AdmissionPolicy::closed(root.public(), ticket, Arc::default());
        let channel = SecureChannel::new(&node, SecureChannelConfig::new(policy)).unwrap();
        let service = RevocationService::new(
            Some(MeshAuthority {
                root: root.public(),
                own_admission: admission,
                topic: format!("fogmesh/revocations/{}", MeshId::of_root(&root.public())),
            }),
            channel,
            table(),
            RevocationMetrics::default(),
        );
        Mesh { root, service }
    }

    fn table() -> Table<StoredRevocation> {
        let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
        fogmesh_store::Store::open(dir.path(), &fogmesh_store::StoreOptions::default())
            .unwrap()
            .table(super::super::TABLE_REVOCATIONS)
            .unwrap()
    }

    fn revoke_subject(root: &Keypair, subject: PeerId, at: u64) -> Vec<u8> {
        ticket::revoke(root, RevocationTarget::Subject(subject.to_bytes()), at).unwrap()
    }

    #[test]
    fn a_submitted_revocation_is_answered_only_once_durable() {
        let mut m = mesh();
        let bytes = revoke_subject(&m.root, PeerId::random(), 10);
        let mut out = Outbox::default();
        let (reply, mut answer) = oneshot::channel();
        m.service.submit(T0, reply, bytes.clone(), &mut out);
        let token = out
            .effects()
            .iter()
            .find_map(|e| match e {
                Effect::PersistDurable { token, .. } => Some(*token),
                _ => None,
            })
            .expect("persisted durably");
        assert!(out
            .effects()
            .iter()
            .any(|e| matches!(e, Effect::Publish { .. })));
        assert!(answer.try_recv().is_err(), "no answer before the disk");
        let mut out = Outbox::default();
        m.service.on_durable(T0, token, Ok(()), &mut out);
        assert!(matches!(
            answer.try_recv(),
            Ok(Ok(RevocationOutcome { new: true, .. }))
        ));
        // Again: known, answered at once, not new.
        let mut out = Outbox::default();
        let (reply, mut answer) = oneshot::channel();
        m.service.submit(T0, reply, bytes, &mut out);
        assert!(matches!(
            answer.try_recv(),
            Ok(Ok(RevocationOutcome { new: false, .. }))
        ));
        assert_eq!(m.service.metrics().duplicates.get(), 1);
    }

    /// The swarm reports a connection only once its multiplexer is up; a revocation before
    /// that still names the peer whose handshake admitted it.
    #[tokio::test]
    async fn closes_a_peer_admitted_but_not_yet_reported_connected() {
        let pair = crate::runtime::testing::AdmittedPair::new().await.unwrap();
        let mut service = RevocationService::new(
            Some(MeshAuthority {
                root: pair.root.public(),
                own_admission: pair.listener_admission.clone(),
                topic: "revocations".into(),
            }),
            pair.listener.clone(),
            table(),
            RevocationMetrics::default(),
        );
        let mut out = Outbox::default();
        let (reply, _answer) = oneshot::channel();
        service.submit(T0, reply, pair.revoke_dialer().unwrap(), &mut out);
        let closed: Vec<&Vec<PeerId>> = out
            .effects()
            .iter()
            .filter_map(|e| match e {
                Effect::Disconnect { peers, .. } => Some(peers),
                _ => None,
            })
            .collect();
        assert_eq!(closed, vec![&vec![pair.dialer]]);
    }

    #[test]
    fn a_forged_revocation_is_rejected_and_counted() {
        let mut m = mesh();
        let forger = Keypair::generate_ed25519();
        let forged = revoke_subject(&forger, PeerId::random(), 10);
        let mut out = Outbox::default();
        let source = PeerId::random();
        let id = crate::runtime::capability::GossipId {
            message: libp2p::gossipsub::MessageId::from(vec![0]),
            source,
        };
        let verdict = m.service.on_gossip(
            T0,
            GossipIn {
                topic: "t",
                propagation_source: source,
                author: None,
                data: &forged,
                id: &id,
            },
            &mut out,
        );
        assert_eq!(verdict, Verdict::Now(MessageAcceptance::Reject));
        assert!(out.is_empty());
        assert_eq!(m.service.rejected_by_reason().values().sum::<u64>(), 1);
    }

    #[test]
    fn republishes_the_newest_from_memory_on_its_timer() {
        let mut m = mesh();
        m.service
            .restore((0..REPUBLISH_MAX as u64 + 10).map(|i| StoredRevocation {
                bytes: vec![i as u8],
                received_at_ms: i,
            }));
        let mut out = Outbox::default();
        m.service.on_start(T0, &mut out);
        assert!(matches!(
            out.effects(),
            [Effect::Timer {
                timer: REPUBLISH,
                ..
            }]
        ));
        let mut out = Outbox::default();
        m.service.on_timer(T0, REPUBLISH, &mut out);
        let published: Vec<u8> = out
            .effects()
            .iter()
            .filter_map(|e| match e {
                Effect::Publish { data, .. } => Some(data[0]),
                _ => None,
            })
            .collect();
        assert_eq!(published.len(), REPUBLISH_MAX);
        assert_eq!(published[0], (REPUBLISH_MAX + 9) as u8, "newest first");
    }

    #[test]
    fn an_open_mesh_refuses_revocations() {
        let node = Keypair::generate_ed25519();
        let channel =
            SecureChannel::new(&node, SecureChannelConfig::new(AdmissionPolicy::open())).unwrap();
        let mut s = RevocationService::new(None, channel, table(), RevocationMetrics::default());
        assert!(s.topics().is_empty());
        let mut out = Outbox::default();
        let (reply, mut answer) = oneshot::channel();
        s.submit(T0, reply, vec![1, 2, 3], &mut out);
        assert!(matches!(answer.try_recv(), Ok(Err(_))));
    }
}
