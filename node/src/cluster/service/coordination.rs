//! The cluster service's formation round, once a second: joining or founding a cluster,
//! leaving one that is gone, and the coordinator's duties (recording itself, removing
//! silent members, handing leadership over, announcing, merging, placing tasks); and the
//! announcements heard from other coordinators. The decisions themselves are
//! `fogmesh_consensus::formation`'s; this is where they meet the group and the network.

use fogmesh_consensus::formation::{self, Announcement};
use fogmesh_consensus::group::MemberChange;
use fogmesh_consensus::state::{Command, NodeId};
use fogmesh_consensus::wire;
use libp2p::gossipsub::MessageAcceptance;
use libp2p::PeerId;
use serde_bytes::ByteBuf;

use super::{
    work, ClusterService, Pending, Situation, ANNOUNCE_TOPIC, MAX_ANNOUNCEMENT_BYTES,
    MEMBERSHIP_KEY, PLACEMENTS_PER_PASS,
};
use crate::cluster::protocol::ClusterRequest;
use crate::runtime::capability::{Effect, Notice, Outbox};
use crate::telemetry::scope::{Directory, TelemetryScope};

/// Whether a member that was heard in the `old` summary is silent in the `new` one.
fn newly_silent(old: &super::SummaryKey, new: &super::SummaryKey) -> bool {
    let (_, old_members, old_silent) = old;
    let (_, new_members, new_silent) = new;
    new_members
        .iter()
        .zip(new_silent)
        .filter(|(_, silent)| **silent)
        .any(|(member, _)| {
            old_members
                .iter()
                .zip(old_silent)
                .any(|(m, was)| m == member && !*was)
        })
}

/// Coordinators of clusters with room an unclustered node dials at once, the fullest first:
/// in a large mesh hundreds may have room, and dialling all would open connections by the
/// thousand for one join.
const DIAL_AT_MOST: usize = 3;
use fogmesh_store::Batch;
use fogmesh_wire::envelope::{self, MessageKind};

impl ClusterService {
    pub(super) fn step(&mut self, now_ms: u64, out: &mut Outbox) {
        let timing = self.config.formation;
        let held = self.announcements.len();
        self.announcements
            .retain(|_, (_, a)| a.is_fresh(now_ms, &timing));
        if self.announcements.len() != held {
            self.known_dirty = true;
            self.directory_dirty = true;
        }
        self.avoid.retain(|_, until| *until > now_ms);
        self.metrics
            .clusters_known
            .set(self.announcements.len() as i64);
        match &self.situation {
            Situation::Unclustered { .. } => self.step_unclustered(now_ms, out),
            Situation::Member(_) => self.step_member(now_ms, out),
        }
        self.step_work(now_ms, out);
        self.step_submissions(now_ms, out);
        self.tell_telemetry(out);
        self.publish_view(now_ms, out);
        // Links between cluster members carry raft: the connection budget spares them.
        let members = self.member_peers();
        if members != self.kept_links {
            self.kept_links.clone_from(&members);
            out.push(Effect::KeepLinks(members));
        }
    }

    pub(super) fn step_unclustered(&mut self, now_ms: u64, out: &mut Outbox) {
        let timing = self.config.formation;
        let Situation::Unclustered { asked, .. } = &mut self.situation else {
            return;
        };
        if let Some((cluster, at)) = asked.clone() {
            if now_ms.saturating_sub(at) < timing.join_timeout_ms {
                return;
            }
            self.avoid.insert(cluster, now_ms + timing.join_timeout_ms);
            *asked = None;
        }
        if !(self.config.roles.worker || self.config.roles.coordinator) {
            return;
        }
        let Some(capacity) = self.capacity.map(|c| c.capacity) else {
            // Nothing to offer a cluster before the device was sensed once.
            return;
        };
        let connected = &self.connected;
        let reachable = |p: &[u8]| PeerId::from_bytes(p).is_ok_and(|p| connected.contains(&p));
        let avoid = &self.avoid;
        let me = self.me.to_bytes();
        let preferred = self
            .prefer
            .as_ref()
            .and_then(|id| self.announcements.get(id))
            .map(|(_, a)| a)
            .filter(|a| a.has_room() && reachable(&a.coordinator));
        let choice = preferred.or_else(|| {
            formation::choose_cluster(
                &me,
                now_ms,
                &timing,
                self.announcements.values().map(|(_, a)| a),
                reachable,
                |c| avoid.contains_key(c),
            )
        });
        if let Some(choice) = choice {
            let cluster = choice.cluster.clone();
            let Ok(coordinator) = PeerId::from_bytes(&choice.coordinator) else {
                return;
            };
            // Asking does not restart the founding delay: a refusal (full, dissolved, moved
            // on) is no cluster with room in reach. Only "busy" does (`on_join_answer`).
            *asked = Some((cluster.clone(), now_ms));
            tracing::info!(%cluster, coordinator = %coordinator, "asking to join");
            self.ask(
                coordinator,
                ClusterRequest::Join {
                    cluster: cluster.clone(),
                    capacity,
                },
                Pending::Join { cluster },
                out,
            );
            return;
        }
        // Clusters with room we cannot reach yet: dial their coordinators (those this node
        // prefers, so a fleet's dials spread too), and do not found a cluster of our own
        // while a dial may still bring one in reach.
        let mut with_room: Vec<&(PeerId, Announcement)> = self
            .announcements
            .values()
            .filter(|(peer, a)| a.has_room() && !self.connected.contains(peer))
            .filter(|(_, a)| !self.avoid.contains_key(&a.cluster))
            .collect();
        formation::by_affinity(&me, &mut with_room, |(_, a)| &a.cluster);
        let coordinators: Vec<PeerId> = with_room
            .into_iter()
            .take(DIAL_AT_MOST)
            .map(|(peer, _)| *peer)
            .collect();
        self.dialing.retain(|peer, _| coordinators.contains(peer));
        let mut dial_pending = false;
        for peer in coordinators {
            let since = *self.dialing.entry(peer).or_insert_with(|| {
                out.push(Effect::Dial { peer });
                now_ms
            });
            dial_pending |= now_ms.saturating_sub(since) < timing.join_timeout_ms;
        }
        // A node that founds first in its neighbourhood is not held back by clusters it is
        // still dialling: in a fleet starting together those are a few far-away clusters
        // with room for a handful, and waiting for them made formation serial (one cluster
        // at a time). Its neighbours join it; a spare cluster merges away later.
        let first = self.founds_first();
        let Situation::Unclustered { quiet_since_ms, .. } = &mut self.situation else {
            return;
        };
        if dial_pending && !first {
            *quiet_since_ms = now_ms;
        }
        let quiet_since = *quiet_since_ms;
        let delay = formation::founding_delay_ms(&timing, first, self.jitter_ms);
        if formation::should_found(now_ms, self.config.roles.coordinator, quiet_since, delay) {
            self.found(now_ms, out);
        }
    }

    /// Whether this node ranks first among itself and the unclustered nodes it is linked
    /// to (`formation::founds_first`): those no held announcement names as a member. A node
    /// linked to nobody yet has not seen its neighbourhood, and does not: 1,000 in-memory
    /// nodes starting on a loaded machine, most still dialling, founded 600 clusters of one.
    pub(super) fn founds_first(&self) -> bool {
        if self.connected.is_empty() {
            return false;
        }
        let named = |peer: &[u8]| {
            self.announcements
                .values()
                .any(|(_, a)| a.members.iter().any(|m| m.as_slice() == peer))
        };
        let neighbours: Vec<Vec<u8>> = self
            .connected
            .iter()
            .map(|p| p.to_bytes())
            .filter(|p| !named(p))
            .collect();
        formation::founds_first(&self.me.to_bytes(), neighbours.iter().map(Vec::as_slice))
    }

    pub(super) fn found(&mut self, now_ms: u64, out: &mut Outbox) {
        let cluster = formation::new_cluster_id(&self.me.to_bytes(), now_ms);
        let founders = vec![self.me_id];
        match self.begin_membership(now_ms, cluster.clone(), founders, None, out) {
            Ok(()) => {
                tracing::info!(%cluster, "founded a cluster");
                self.metrics.change("founded");
                // Lead, record ourselves and announce at once: the sooner the others hear
                // of a cluster with room, the fewer found their own.
                if let Situation::Member(m) = &mut self.situation {
                    match m.group.campaign() {
                        Ok(output) => self.after_output(now_ms, output, out),
                        Err(error) => tracing::debug!(%error, "founder did not campaign"),
                    }
                }
                self.coordinate(now_ms, out);
                if let Situation::Member(m) = &mut self.situation {
                    if m.group.is_leader() {
                        m.last_announce_ms = now_ms;
                        self.announce(now_ms, out);
                    }
                }
                self.cluster_event("founded", out);
            }
            Err(error) => tracing::warn!(%error, "cannot found a cluster"),
        }
    }

    pub(super) fn step_member(&mut self, now_ms: u64, out: &mut Outbox) {
        let timing = self.config.formation;
        let Situation::Member(m) = &mut self.situation else {
            return;
        };
        // Not a member after all: the join timed out, we were removed, or the cluster
        // dissolved or was lost.
        if !m.joined && now_ms.saturating_sub(m.since_ms) > timing.join_timeout_ms {
            let cluster = m.cluster.clone();
            self.avoid.insert(cluster, now_ms + timing.join_timeout_ms);
            self.leave(now_ms, "join_timed_out", false, out);
            return;
        }
        if m.joined && !m.group.member_ids().contains(&self.me_id) {
            self.leave(now_ms, "removed", false, out);
            return;
        }
        if let Some(into) = m.group.state().dissolved_into().map(str::to_owned) {
            self.prefer = Some(into);
            self.leave(now_ms, "merged", true, out);
            return;
        }
        if m.joined
            && !m.group.is_leader()
            && formation::lost_for_good(now_ms, &timing, m.contact_ms)
        {
            self.leave(now_ms, "lost", true, out);
            return;
        }
        if let Some(reason) = m.group.disk_failed() {
            if reason.starts_with("raft stopped") {
                self.leave(now_ms, "raft_failed", false, out);
            } else {
                let reason = reason.to_owned();
                out.push(Effect::StoreFailed(reason));
            }
            return;
        }
        // Links to every member.
        for peer in m.peers.values() {
            if *peer != self.me && !self.connected.contains(peer) {
                out.push(Effect::Dial { peer: *peer });
            }
        }
        self.report_capacity(now_ms, out);
        let Situation::Member(m) = &mut self.situation else {
            return;
        };
        if m.group.is_leader() {
            self.coordinate(now_ms, out);
        }
        self.cluster_event("changed", out);
    }

    /// This node is no longer in its cluster. When the cluster is gone (merged or lost),
    /// the unfinished tasks this node holds are forwarded to the next cluster.
    pub(super) fn leave(
        &mut self,
        now_ms: u64,
        reason: &'static str,
        forward: bool,
        out: &mut Outbox,
    ) {
        let situation = std::mem::replace(
            &mut self.situation,
            Situation::Unclustered {
                quiet_since_ms: now_ms,
                asked: None,
            },
        );
        let Situation::Member(m) = situation else {
            return;
        };
        tracing::info!(cluster = %m.cluster, reason, "left the cluster");
        self.metrics.change(reason);
        let mut batch = Batch::new();
        if forward {
            // Merged: every member forwards everything (the next cluster refuses duplicates by
            // id). Lost: only what this node submitted or was given, since a member cut off
            // alone for a while must not copy a cluster that lives on.
            let merged = m.group.state().dissolved_into().is_some();
            let me = &self.me_node;
            let tasks: Vec<_> = m
                .group
                .state()
                .unfinished()
                .filter(|t| {
                    merged
                        || t.spec.submitter == me.0
                        || t.state.assignment().is_some_and(|(n, _)| n == me)
                })
                .map(|t| t.spec.clone())
                .collect();
            for spec in tasks {
                self.submissions.forward(spec, &self.me, &mut batch);
            }
        }
        // One batch: the forwarded tasks are stored if and only if the log they came from
        // is gone.
        batch.remove(&self.membership_table, MEMBERSHIP_KEY);
        self.raft_tables.destroy(&m.cluster, &mut batch);
        out.push(Effect::Persist(batch));
        // A new cluster has its own terms: the fencing gate starts over with it.
        self.work = work::Work::default();
        self.cluster_event(reason, out);
    }

    /// The coordinator's round: announce, founding join, silent members, leadership,
    /// merging, scheduling.
    pub(super) fn coordinate(&mut self, now_ms: u64, out: &mut Outbox) {
        let timing = self.config.formation;
        let capacity = self.capacity.map(|c| c.capacity);
        let me_node = self.me_node.clone();
        let me_id = self.me_id;
        let Situation::Member(m) = &mut self.situation else {
            return;
        };
        // A founder (or a coordinator that lost its own entry) records itself first.
        if !m.group.state().members().contains_key(&me_node) {
            if let (Some(capacity), false) = (capacity, m.group.change_pending()) {
                let join = Command::Join {
                    node: me_node,
                    capacity,
                    at_ms: now_ms,
                };
                match m.group.propose_change(MemberChange::AddVoter, me_id, &join) {
                    Ok(output) => self.after_output(now_ms, output, out),
                    Err(error) => tracing::debug!(%error, "founding join not proposed"),
                }
            }
            return;
        }
        // A new coordinator has heard nobody yet (followers talk to the leader only):
        // everyone counts from now. Members never heard count from when we first looked.
        if !m.was_leader {
            m.was_leader = true;
            m.heard.clear();
        }
        for id in m.peers.keys() {
            m.heard.entry(*id).or_insert(now_ms);
        }
        m.heard.retain(|id, _| m.peers.contains_key(id));
        if !m.group.change_pending() {
            if let Some(silent) =
                formation::silent_members(now_ms, &timing, me_id, &m.heard).first()
            {
                if let Some(peer) = m.peers.get(silent).copied() {
                    let leave = Command::Leave {
                        node: NodeId(peer.to_bytes()),
                    };
                    tracing::info!(peer_id = %peer, cluster = %m.cluster, "removing a silent member");
                    match m
                        .group
                        .propose_change(MemberChange::Remove, *silent, &leave)
                    {
                        Ok(output) => {
                            self.metrics.change("removed_silent");
                            self.after_output(now_ms, output, out);
                        }
                        Err(error) => tracing::debug!(%error, "removal not proposed"),
                    }
                    return;
                }
            }
        }
        self.promote(now_ms, out);
        self.hand_over(now_ms, out);
        let Situation::Member(m) = &mut self.situation else {
            return;
        };
        let since = now_ms.saturating_sub(m.last_announce_ms);
        let announced = m.announced.clone();
        let every =
            formation::summary_every_ms(&timing, self.announcements.len(), self.last_summary_len);
        // A change goes out before the period ends: a loss within a second, so it is
        // reflected mesh-wide in seconds; joins and the like within a quarter period.
        let key = self.summary_key(now_ms);
        let changed = announced.as_ref() != Some(&key);
        let newly_silent = announced
            .as_ref()
            .is_some_and(|old| newly_silent(old, &key));
        if since >= every || (changed && since >= formation::change_gap_ms(every, newly_silent)) {
            if let Situation::Member(m) = &mut self.situation {
                m.last_announce_ms = now_ms;
            }
            self.announce(now_ms, out);
        }
        self.maybe_merge(now_ms, out);
        let Situation::Member(m) = &self.situation else {
            return;
        };
        if m.schedule_soon
            || now_ms.saturating_sub(m.last_schedule_ms) >= self.config.schedule_every_ms
        {
            self.schedule(now_ms, out);
        }
    }

    /// Makes a learner that may vote a voter once it has answered since it was added (one
    /// change at a time). The change carries the member's own capacity report, which every
    /// replica applies alike.
    pub(super) fn promote(&mut self, now_ms: u64, out: &mut Outbox) {
        let Situation::Member(m) = &mut self.situation else {
            return;
        };
        let learners = m.group.configuration().learners;
        m.to_promote.retain(|id, _| learners.contains(id));
        if m.group.change_pending() {
            return;
        }
        let ready = m
            .to_promote
            .iter()
            .find(|(id, added)| m.heard.get(id).is_some_and(|heard| heard > added))
            .map(|(id, _)| *id);
        let Some(id) = ready else {
            return;
        };
        let Some(peer) = m.peers.get(&id).copied() else {
            m.to_promote.remove(&id);
            return;
        };
        let node = NodeId(peer.to_bytes());
        let Some(capacity) = m.group.state().members().get(&node).map(|x| x.capacity) else {
            return;
        };
        let report = Command::Report { node, capacity };
        match m.group.propose_change(MemberChange::AddVoter, id, &report) {
            Ok(output) => {
                m.to_promote.remove(&id);
                tracing::info!(peer_id = %peer, cluster = %m.cluster, "promoting a member to voter");
                self.metrics.change("promoted");
                self.after_output(now_ms, output, out);
            }
            Err(error) => tracing::debug!(%error, "promotion not proposed"),
        }
    }

    pub(super) fn hand_over(&mut self, now_ms: u64, out: &mut Outbox) {
        let me_node = self.me_node.clone();
        let Situation::Member(m) = &mut self.situation else {
            return;
        };
        let state = m.group.state();
        let own = state
            .members()
            .get(&me_node)
            .map_or(0, |member| member.capacity.score_milli);
        let voters = m.group.configuration().voters;
        let best = state
            .members()
            .iter()
            .filter(|(node, _)| **node != me_node)
            .filter_map(|(node, member)| {
                let id = wire::member_id(&node.0);
                voters
                    .contains(&id)
                    .then_some((id, member.capacity.score_milli))
            })
            .filter(|(id, _)| {
                m.heard
                    .get(id)
                    .is_some_and(|h| now_ms.saturating_sub(*h) < 2_000)
            })
            .max_by_key(|(_, score)| *score);
        if let Some(to) = m.hysteresis.observe(now_ms, own, best) {
            tracing::info!(cluster = %m.cluster, to, "handing the coordination to a better-scored member");
            self.metrics.change("transferred");
            let output = m.group.transfer_leader(to);
            self.after_output(now_ms, output, out);
        }
    }

    /// Whether the coordinator has not heard `member` (a raft id) for the flagging time.
    fn is_silent(&self, m: &super::Membership, member: u64, now_ms: u64) -> bool {
        member != self.me_id
            && m.heard.get(&member).is_some_and(|heard| {
                now_ms.saturating_sub(*heard) > self.config.formation.flag_silent_after_ms
            })
    }

    /// What in our summary is announced at once when it changes.
    fn summary_key(&self, now_ms: u64) -> super::SummaryKey {
        let Situation::Member(m) = &self.situation else {
            return (0, Vec::new(), Vec::new());
        };
        let members = m.group.state().members();
        (
            m.group.term(),
            members.keys().map(|n| ByteBuf::from(n.0.clone())).collect(),
            members
                .keys()
                .map(|n| self.is_silent(m, wire::member_id(&n.0), now_ms))
                .collect(),
        )
    }

    /// Our cluster's signed summary: members with capacity, load and silent flags.
    fn summary(&self, now_ms: u64, every_ms: u64) -> Option<Announcement> {
        let Situation::Member(m) = &self.situation else {
            return None;
        };
        let state = m.group.state();
        let loads = state.loads();
        Some(Announcement {
            cluster: m.cluster.clone(),
            term: m.group.term(),
            coordinator: self.me.to_bytes(),
            members: state
                .members()
                .keys()
                .map(|n| ByteBuf::from(n.0.clone()))
                .collect(),
            queued: u32::try_from(state.queued().count()).unwrap_or(u32::MAX),
            at_ms: now_ms,
            sent_at_ms: None,
            summary: state
                .members()
                .iter()
                .map(|(node, member)| formation::MemberSummary {
                    capacity: member.capacity,
                    load: loads.get(node).copied().unwrap_or_default(),
                    silent: self.is_silent(m, wire::member_id(&node.0), now_ms),
                })
                .collect(),
            every_ms: Some(every_ms),
            addrs: self.listen_addrs.clone(),
        })
    }

    pub(super) fn announce(&mut self, now_ms: u64, out: &mut Outbox) {
        let timing = self.config.formation;
        if !matches!(self.situation, Situation::Member(_)) {
            return;
        }
        let every =
            formation::summary_every_ms(&timing, self.announcements.len(), self.last_summary_len);
        let key = self.summary_key(now_ms);
        let Some(announcement) = self.summary(now_ms, every) else {
            return;
        };
        let cluster = announcement.cluster.clone();
        if let Situation::Member(m) = &mut self.situation {
            m.announced = Some(key);
        }
        let changed = self
            .announcements
            .get(&cluster)
            .is_none_or(|(_, held)| held.members != announcement.members);
        self.directory_dirty |= changed;
        self.known_dirty = true;
        self.announcements
            .insert(cluster, (self.me, announcement.clone()));
        let body = match fogmesh_wire::codec::encode(&announcement) {
            Ok(body) => body,
            Err(error) => {
                tracing::warn!(%error, "announcement not encodable");
                return;
            }
        };
        self.announce_seq += 1;
        match envelope::seal(
            &self.keypair,
            MessageKind::ClusterAnnouncement,
            self.announce_seq,
            now_ms,
            body,
        ) {
            Ok(data) => {
                self.last_summary_len = data.len();
                out.push(Effect::Publish {
                    topic: ANNOUNCE_TOPIC.into(),
                    data,
                })
            }
            Err(error) => tracing::warn!(%error, "announcement not sealed"),
        }
    }

    pub(super) fn maybe_merge(&mut self, now_ms: u64, out: &mut Outbox) {
        let timing = self.config.formation;
        let Situation::Member(m) = &mut self.situation else {
            return;
        };
        // Only a settled cluster merges (not one still gathering its first members).
        if now_ms.saturating_sub(m.since_ms) < timing.found_after_ms + timing.found_jitter_ms {
            return;
        }
        let size = m.group.state().members().len();
        let target = formation::merge_target(
            now_ms,
            &timing,
            &m.cluster,
            size,
            self.announcements.values().map(|(_, a)| a),
            |_| true,
        )
        .map(|a| a.cluster.clone());
        // Its coordinator must be in reach, for our members to join it: dial it first.
        let target = target.filter(|into| match self.announcements.get(into) {
            Some((peer, _)) if self.connected.contains(peer) => true,
            Some((peer, _)) => {
                out.push(Effect::Dial { peer: *peer });
                false
            }
            None => false,
        });
        if let Some(into) = target {
            tracing::info!(cluster = %m.cluster, %into, "merging into a larger cluster");
            match m.group.propose(&Command::Dissolve { into }) {
                Ok(output) => self.after_output(now_ms, output, out),
                Err(error) => tracing::debug!(%error, "dissolve not proposed"),
            }
        }
    }

    pub(super) fn schedule(&mut self, now_ms: u64, out: &mut Outbox) {
        let Situation::Member(m) = &mut self.situation else {
            return;
        };
        m.schedule_soon = false;
        m.last_schedule_ms = now_ms;
        let placements = m.group.plan(now_ms, PLACEMENTS_PER_PASS);
        if placements.is_empty() {
            return;
        }
        // One proposal batch, one flush, whatever the number of placements.
        match m.group.propose_all(&placements) {
            Ok(output) => {
                self.metrics.placements.inc_by(placements.len() as u64);
                self.after_output(now_ms, output, out);
            }
            Err(error) => tracing::debug!(%error, "placements not proposed"),
        }
    }

    pub(super) fn cluster_event(&mut self, reason: &str, out: &mut Outbox) {
        let (state, cluster, term, leader, members) = match &self.situation {
            Situation::Unclustered { .. } => ("unclustered".to_string(), None, 0, None, 0),
            Situation::Member(m) => (
                if m.joined { "member" } else { "joining" }.to_string(),
                Some(m.cluster.clone()),
                m.group.term(),
                m.group.leader(),
                m.group.state().members().len(),
            ),
        };
        self.metrics.members.set(members as i64);
        self.metrics
            .term
            .set(i64::try_from(term).unwrap_or(i64::MAX));
        let coordinating = matches!(&self.situation, Situation::Member(m) if m.group.is_leader());
        self.metrics.coordinator.set(i64::from(coordinating));
        let key = (state.clone(), cluster.clone(), term, leader, members);
        if self.last_event.as_ref() == Some(&key) {
            return;
        }
        self.last_event = Some(key);
        let coordinator = match &self.situation {
            Situation::Member(m) => m.coordinator_peer().map(|p| p.to_string()),
            Situation::Unclustered { .. } => None,
        };
        out.event(super::ClusterChanged {
            state,
            cluster,
            term,
            coordinator,
            members,
            reason: reason.to_owned(),
        });
    }

    pub(super) fn on_announcement(
        &mut self,
        now_ms: u64,
        data: &[u8],
        out: &mut Outbox,
    ) -> MessageAcceptance {
        if data.len() > MAX_ANNOUNCEMENT_BYTES + 512 {
            self.metrics.refuse("announcement_oversized");
            return MessageAcceptance::Reject;
        }
        let opened = match envelope::open(data, MessageKind::ClusterAnnouncement) {
            Ok(opened) => opened,
            Err(_) => {
                self.metrics.refuse("announcement_bad_envelope");
                return MessageAcceptance::Reject;
            }
        };
        let announcement: Announcement =
            match fogmesh_wire::codec::decode_bounded(&opened.body, MAX_ANNOUNCEMENT_BYTES) {
                Ok(a) => a,
                Err(_) => {
                    self.metrics.refuse("announcement_malformed");
                    return MessageAcceptance::Reject;
                }
            };
        if announcement.coordinator != opened.origin.to_bytes()
            || announcement.cluster.len() > wire::MAX_CLUSTER_ID
            || announcement.members.len() > formation::TARGET_SIZE * 2
            || !announcement.is_consistent()
        {
            self.metrics.refuse("announcement_inconsistent");
            return MessageAcceptance::Reject;
        }
        // The sender's time is not judged against ours: clocks differ by seconds or minutes,
        // and judging by them split clusters (a node 20 s ahead found every other cluster
        // stale). Gossip delivers an announcement only from its signer (author == origin),
        // so an old one cannot be replayed by another peer; freshness counts from receipt
        // (below) and the sender's time only orders announcements of one cluster.
        // A cluster's announcement is replaced only by its coordinator again or by one of its
        // members (a new coordinator), at the same or a later term: a stranger cannot take
        // over another cluster's id by announcing it with a huge term.
        let origin_bytes = opened.origin.to_bytes();
        let replaces =
            self.announcements
                .get(&announcement.cluster)
                .is_none_or(|(held_by, held)| {
                    let insider = *held_by == opened.origin
                        || held
                            .members
                            .iter()
                            .any(|m| m.as_slice() == origin_bytes.as_slice());
                    insider && (announcement.term, announcement.at_ms) > (held.term, held.sent_ms())
                });
        if !replaces {
            self.metrics.refuse("announcement_not_newer");
            return MessageAcceptance::Ignore;
        }
        // Freshness counts from when we heard it, not from the sender's clock.
        let mut announcement = announcement;
        announcement.mark_received(now_ms);
        if !self.announcements.contains_key(&announcement.cluster)
            && self.announcements.len() >= formation::MAX_ANNOUNCEMENTS
        {
            // Full: the stalest one goes.
            if let Some(stalest) = self
                .announcements
                .iter()
                .min_by_key(|(_, (_, a))| a.at_ms)
                .map(|(id, _)| id.clone())
            {
                self.announcements.remove(&stalest);
            }
        }
        let (moved, readdressed) = match self.announcements.get(&announcement.cluster) {
            Some((held_by, held)) => {
                let other = *held_by != opened.origin;
                (
                    other || held.members != announcement.members,
                    other || held.addrs != announcement.addrs,
                )
            }
            None => (true, true),
        };
        if readdressed {
            let addrs = crate::runtime::peers::hygiene::dialable(
                announcement.addrs.iter().map(String::as_str),
                formation::MAX_ANNOUNCED_ADDRS,
            );
            if !addrs.is_empty() {
                out.push(Effect::LearnAddresses {
                    peer: opened.origin,
                    addrs,
                });
            }
        }
        self.directory_dirty |= moved;
        self.known_dirty = true;
        // News of a cluster that refused us: worth asking again if it has room.
        if announcement.has_room() {
            self.avoid.remove(&announcement.cluster);
        }
        self.announcements
            .insert(announcement.cluster.clone(), (opened.origin, announcement));
        MessageAcceptance::Accept
    }

    /// Tells telemetry which cluster's topic to publish on, and who coordinates the nodes
    /// of every held summary (for fetching one node's record), when either changed.
    pub(super) fn tell_telemetry(&mut self, out: &mut Outbox) {
        let scope = match &self.situation {
            Situation::Member(m) if m.joined => Some(m.cluster.clone()),
            _ => None,
        };
        if self.told_scope.as_ref() != Some(&scope) {
            self.told_scope = Some(scope.clone());
            out.push(Effect::Notice(Notice::share(TelemetryScope {
                cluster: scope,
            })));
        }
        if std::mem::take(&mut self.directory_dirty) {
            let mut coordinator_of = std::collections::HashMap::new();
            for (coordinator, a) in self.announcements.values() {
                for member in &a.members {
                    if let Ok(peer) = PeerId::from_bytes(member) {
                        coordinator_of.insert(peer, *coordinator);
                    }
                }
            }
            out.push(Effect::Notice(Notice::share(Directory {
                coordinator_of: std::sync::Arc::new(coordinator_of),
            })));
        }
    }
}
