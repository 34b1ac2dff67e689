//! What other nodes ask of this one on `/fogmesh/cluster/1` (raft, joins, submissions,
//! reports, fetches, status), and the answers to what this node asked them.

use fogmesh_consensus::capacity::NodeCapacity;
use fogmesh_consensus::formation;
use fogmesh_consensus::group::{GroupError, MemberChange};
use fogmesh_consensus::state::{Command, NodeId};
use fogmesh_consensus::wire;
use libp2p::PeerId;
use serde_bytes::ByteBuf;

use super::{ClusterMetrics, ClusterService, Pending, Situation};
use crate::admission::PeerRoles;
use crate::cluster::protocol::{ClusterRequest, ClusterResponse};
use crate::runtime::capability::{InboundId, Outbox};

/// The refusal of a join by a cluster at its target size.
pub(super) const FULL: &str = "the cluster is full";
/// The refusal of a join by a node in no cluster, or in another one than asked.
pub(super) const NOT_IN_A_CLUSTER: &str = "not in a cluster";
const IN_ANOTHER_CLUSTER: &str = "this node is in cluster ";

impl ClusterService {
    /// A request from `peer` (`id`, on its stream); the answer, unless it comes later (a
    /// fetch of a blob read from disk first).
    pub fn handle_request(
        &mut self,
        now_ms: u64,
        peer: PeerId,
        roles: &PeerRoles,
        request: ClusterRequest,
        id: InboundId,
        out: &mut Outbox,
    ) -> Option<ClusterResponse> {
        let refuse = |metrics: &ClusterMetrics, reason: &'static str, text: &str| {
            metrics.refuse(reason);
            ClusterResponse::Refused {
                reason: text.to_owned(),
            }
        };
        let answer = match request {
            ClusterRequest::Raft { frame } => {
                self.reply_to = Some((peer, Vec::new()));
                self.on_raft(now_ms, peer, &frame, out);
                match self.reply_to.take() {
                    Some((_, frames)) if !frames.is_empty() => ClusterResponse::Raft { frames },
                    _ => ClusterResponse::Ack,
                }
            }
            ClusterRequest::Fetch { hash } => {
                self.answer_fetch(id, hash, out);
                return None;
            }
            ClusterRequest::Status { task } => ClusterResponse::Status(self.task_report(&task)),
            ClusterRequest::Join { cluster, capacity } => {
                if !(roles.has("worker") || roles.has("coordinator")) {
                    return Some(refuse(
                        &self.metrics,
                        "join_without_role",
                        "joining takes the worker or coordinator role",
                    ));
                }
                self.on_join(
                    now_ms,
                    peer,
                    roles.has("coordinator"),
                    cluster,
                    capacity,
                    out,
                )
            }
            ClusterRequest::Submit {
                spec,
                module,
                input,
                forwarded,
            } => {
                let as_submitter = roles.has("submitter") && spec.submitter == peer.to_bytes();
                let as_forwarder = forwarded && (roles.has("worker") || roles.has("coordinator"));
                if !(as_submitter || as_forwarder) {
                    return Some(refuse(
                        &self.metrics,
                        "submit_without_role",
                        "submitting takes the submitter role (and the task must name you)",
                    ));
                }
                self.on_submit(now_ms, spec, module, input, out)
            }
            ClusterRequest::Propose { cluster, command } => {
                self.on_propose(peer, cluster, command, None, out)
            }
            ClusterRequest::Finished {
                cluster,
                command,
                result,
            } => {
                let finished = (peer, cluster, command);
                return self.on_finished(finished, result.into_vec(), id, out);
            }
        };
        Some(answer)
    }

    pub(super) fn not_coordinator(&self) -> ClusterResponse {
        let hint = match &self.situation {
            Situation::Member(m) => m.coordinator_peer().map(|p| ByteBuf::from(p.to_bytes())),
            Situation::Unclustered { .. } => None,
        };
        ClusterResponse::NotCoordinator { hint }
    }

    pub(super) fn on_join(
        &mut self,
        now_ms: u64,
        peer: PeerId,
        voter: bool,
        cluster: String,
        capacity: NodeCapacity,
        out: &mut Outbox,
    ) -> ClusterResponse {
        let Situation::Member(m) = &mut self.situation else {
            self.metrics.refuse("join_not_member");
            return ClusterResponse::Refused {
                reason: NOT_IN_A_CLUSTER.into(),
            };
        };
        if m.cluster != cluster {
            self.metrics.refuse("join_other_cluster");
            return ClusterResponse::Refused {
                reason: format!("{IN_ANOTHER_CLUSTER}{}", m.cluster),
            };
        }
        if !m.group.is_leader() {
            return self.not_coordinator();
        }
        let node = NodeId(peer.to_bytes());
        if m.group.state().members().contains_key(&node) {
            return ClusterResponse::Joining;
        }
        if m.group.state().members().len() >= formation::TARGET_SIZE {
            self.metrics.refuse("join_full");
            return ClusterResponse::Refused {
                reason: FULL.into(),
            };
        }
        // Every joiner starts as a learner: added as a voter at once, a joiner slow to answer
        // (a loaded machine, a thousand nodes forming) cost the coordinator its quorum, and
        // with it the cluster. One that may vote is promoted once it answers
        // (`coordination::promote`).
        let change = MemberChange::AddLearner;
        let id = wire::member_id(&peer.to_bytes());
        let join = Command::Join {
            node,
            capacity,
            at_ms: now_ms,
        };
        match m.group.propose_change(change, id, &join) {
            Ok(output) => {
                m.peers.insert(id, peer);
                m.heard.insert(id, now_ms);
                if voter {
                    m.to_promote.insert(id, now_ms);
                }
                tracing::info!(peer_id = %peer, cluster = %m.cluster, voter, "adding a member");
                self.after_output(now_ms, output, out);
                ClusterResponse::Joining
            }
            Err(GroupError::ChangePending) => ClusterResponse::Refused {
                reason: "busy with another membership change; ask again".into(),
            },
            Err(error) => ClusterResponse::Refused {
                reason: error.to_string(),
            },
        }
    }

    pub(super) fn on_propose(
        &mut self,
        peer: PeerId,
        cluster: String,
        command: Command,
        result: Option<Vec<u8>>,
        out: &mut Outbox,
    ) -> ClusterResponse {
        let Situation::Member(m) = &self.situation else {
            self.metrics.refuse("propose_not_member");
            return ClusterResponse::Refused {
                reason: "not in a cluster".into(),
            };
        };
        if m.cluster != cluster {
            self.metrics.refuse("propose_other_cluster");
            return ClusterResponse::Refused {
                reason: format!("this node is in cluster {}", m.cluster),
            };
        }
        if !m.group.is_leader() {
            return self.not_coordinator();
        }
        let sender = NodeId(peer.to_bytes());
        let allowed = match &command {
            Command::Started { node, .. }
            | Command::Failed { node, .. }
            | Command::Report { node, .. } => {
                *node == sender && m.group.state().members().contains_key(&sender)
            }
            Command::Finished {
                node, result: hash, ..
            } => {
                *node == sender
                    && m.group.state().members().contains_key(&sender)
                    && result
                        .as_ref()
                        .is_some_and(|r| crate::cluster::blobs::hash(r) == *hash)
            }
            Command::Cancel { task } => m
                .group
                .state()
                .task(task)
                .is_some_and(|t| t.spec.submitter == sender.0),
            _ => false,
        };
        if !allowed {
            self.metrics.refuse("propose_not_allowed");
            return ClusterResponse::Refused {
                reason: "not a command this node may propose".into(),
            };
        }
        if result.is_some() {
            // Checked; the caller stores the result before proposing.
            return ClusterResponse::Proposed { cluster };
        }
        match self.propose(command, out) {
            Ok(()) => ClusterResponse::Proposed { cluster },
            Err(reason) => ClusterResponse::Refused { reason },
        }
    }

    /// A worker's `Finished` with its result: checked like any proposal, then the result is
    /// put on this coordinator's disk and only then proposed (answered once proposed), so
    /// the cluster never calls a task done whose result its coordinator could lose.
    fn on_finished(
        &mut self,
        (peer, cluster, command): (PeerId, String, Command),
        result: Vec<u8>,
        id: InboundId,
        out: &mut Outbox,
    ) -> Option<ClusterResponse> {
        match self.on_propose(
            peer,
            cluster.clone(),
            command.clone(),
            Some(result.clone()),
            out,
        ) {
            ClusterResponse::Proposed { .. } => {}
            refused => return Some(refused),
        }
        let after = super::AfterDurable::ResultStored {
            command: Box::new(command),
            cluster,
            answer: id,
        };
        match self.put_blob_durable(&result, after, out) {
            Ok(_) => None,
            Err(error) => Some(ClusterResponse::Refused {
                reason: format!("cannot store the result: {error}"),
            }),
        }
    }

    /// The result of a worker's `Finished` is on disk: propose it and answer the worker.
    pub(super) fn on_result_stored(
        &mut self,
        command: Command,
        cluster: String,
        answer: InboundId,
        result: Result<(), String>,
        out: &mut Outbox,
    ) {
        let response = match result.and_then(|()| self.propose(command, out)) {
            Ok(()) => ClusterResponse::Proposed { cluster },
            Err(reason) => ClusterResponse::Refused { reason },
        };
        super::respond(answer, &response, out);
    }

    // ---- answers to our requests ----

    /// The answer to a request this service sent with `token` (or why none came).
    pub fn handle_response(
        &mut self,
        now_ms: u64,
        peer: PeerId,
        token: u64,
        response: Result<ClusterResponse, String>,
        out: &mut Outbox,
    ) {
        let Some(pending) = self.pending.remove(&token) else {
            return;
        };
        match pending {
            Pending::Join { cluster } => self.on_join_answer(now_ms, peer, cluster, response, out),
            Pending::Submit { task } => self.on_submit_answer(now_ms, task, response),
            Pending::Status { task, cluster } => {
                self.on_status_answer(now_ms, task, &cluster, response, out)
            }
            Pending::Fetch { hash, purpose } => {
                self.on_fetched(now_ms, hash, purpose, response, out)
            }
            Pending::Report => {
                if let Ok(ClusterResponse::Refused { reason }) = &response {
                    tracing::debug!(%reason, "report refused");
                }
            }
        }
    }

    pub(super) fn on_join_answer(
        &mut self,
        now_ms: u64,
        peer: PeerId,
        cluster: String,
        response: Result<ClusterResponse, String>,
        out: &mut Outbox,
    ) {
        let Situation::Unclustered {
            asked,
            quiet_since_ms,
        } = &mut self.situation
        else {
            return;
        };
        if asked.as_ref().map(|(c, _)| c) != Some(&cluster) {
            return;
        }
        match response {
            Ok(ClusterResponse::Joining) => {
                if let Err(error) =
                    self.begin_membership(now_ms, cluster, Vec::new(), Some(peer), out)
                {
                    tracing::warn!(%error, "cannot begin the joined cluster's log");
                }
            }
            other => {
                let text = match other {
                    Ok(ClusterResponse::Refused { reason }) => reason,
                    Ok(other) => format!("{other:?}"),
                    Err(error) => error,
                };
                tracing::debug!(%cluster, reason = %text, "join refused");
                *asked = None;
                // The coordinator itself (the authenticated peer asked) says it no longer
                // leads that cluster: it dissolved or merged away. Its last announcement
                // would otherwise be believed for minutes and asked again and again (300
                // in-memory nodes: most refusals once the clusters had formed), keeping the
                // asker from founding.
                if text == NOT_IN_A_CLUSTER || text.starts_with(IN_ANOTHER_CLUSTER) {
                    let held_by = self.announcements.get(&cluster).map(|(by, _)| *by);
                    if held_by == Some(peer) {
                        self.announcements.remove(&cluster);
                        self.known_dirty = true;
                        self.directory_dirty = true;
                    }
                }
                // A busy coordinator is asked again next round; a full or wrong one later:
                // once it announces again (`on_announcement` lifts the avoidance), or, if
                // full, when what we hold of it is forgotten. Asked again after a fixed
                // pause, full clusters whose last summary still showed room drew joiners
                // round after round and kept them from founding (300 in-memory nodes:
                // three refusals in four were "full").
                if text.starts_with("busy") {
                    // A cluster with room that will take us shortly: not the time to found.
                    *quiet_since_ms = now_ms;
                } else {
                    let timing = self.config.formation;
                    let held_for = self
                        .announcements
                        .get(&cluster)
                        .filter(|_| text == FULL)
                        .map_or(0, |(_, a)| a.fresh_for_ms(&timing));
                    let until = now_ms + timing.join_timeout_ms.max(held_for);
                    self.avoid.insert(cluster, until);
                }
            }
        }
    }
}
