//! The cluster's Raft group on the node: starting one (founded or joined), writing what it
//! asks to store and telling it once on disk, stepping its messages, ticking it, proposing,
//! and what its applied commands mean for this node (events, scheduling, work).

use super::*;

impl ClusterService {
    pub(super) fn new_group(
        &self,
        storage: fogmesh_consensus::raft::storage::MemStorage,
    ) -> Result<ClusterNode, GroupError> {
        ClusterNode::new(self.me_id, storage, self.config.raft, &group::raft_logger())
    }

    /// Becomes a member of `cluster` with a fresh group (founded with `founders`, or joined
    /// through `via` with none: the log tells the configuration). The record and the group's
    /// initial state go to the store in one batch, ahead of anything the group writes.
    pub(super) fn begin_membership(
        &mut self,
        now_ms: u64,
        cluster: String,
        founders: Vec<u64>,
        via: Option<PeerId>,
        out: &mut Outbox,
    ) -> Result<(), String> {
        let group = self
            .new_group(group::founding_storage(&founders))
            .map_err(|e| e.to_string())?;
        let record = MembershipRecord {
            cluster: cluster.clone(),
            founders,
            via: via.map(|v| ByteBuf::from(v.to_bytes())),
        };
        let mut batch = Batch::new();
        batch
            .put(&self.membership_table, MEMBERSHIP_KEY, &record)
            .map_err(|e| e.to_string())?;
        self.raft_tables
            .write(&cluster, &group.initial_request(), &mut batch)
            .map_err(|e| e.to_string())?;
        out.push(Effect::Persist(batch));
        let membership = self.new_membership(cluster, group, now_ms, via);
        self.situation = Situation::Member(Box::new(membership));
        self.prefer = None;
        Ok(())
    }

    /// Writes what the group asked to store; the synced part durably, reported back to the
    /// group once on disk (its messages wait in it until then).
    pub(super) fn persist_group(&mut self, requests: &[PersistRequest], out: &mut Outbox) {
        let Situation::Member(m) = &mut self.situation else {
            return;
        };
        if requests.is_empty() {
            return;
        }
        let mut batch = Batch::new();
        for request in requests {
            if let Err(error) = self.raft_tables.write(&m.cluster, request, &mut batch) {
                let reason = format!("raft log not writable: {error}");
                m.group.on_persist_failed(reason.clone());
                out.push(Effect::StoreFailed(reason));
                return;
            }
        }
        match requests.iter().rev().find(|r| r.sync) {
            Some(last_synced) => {
                let token = self.next_durable;
                self.next_durable += 1;
                self.durable.insert(
                    token,
                    AfterDurable::Raft {
                        epoch: m.epoch,
                        number: last_synced.number,
                    },
                );
                out.push(Effect::PersistDurable { batch, token });
            }
            None => out.push(Effect::Persist(batch)),
        }
    }

    pub(super) fn on_group_persisted(
        &mut self,
        now_ms: u64,
        epoch: u64,
        number: u64,
        result: Result<(), String>,
        out: &mut Outbox,
    ) {
        let Situation::Member(m) = &mut self.situation else {
            return;
        };
        if m.epoch != epoch {
            return;
        }
        match result {
            Ok(()) => {
                let output = m.group.on_persisted(number);
                self.after_output(now_ms, output, out);
            }
            // The runtime sends the node to safe mode; the group stops for good.
            Err(reason) => m.group.on_persist_failed(reason),
        }
    }

    /// Sends a group's output and reacts to what it applied.
    pub(super) fn after_output(&mut self, now_ms: u64, mut output: Output, out: &mut Outbox) {
        let persist = std::mem::take(&mut output.persist);
        self.persist_group(&persist, out);
        let Situation::Member(m) = &mut self.situation else {
            return;
        };
        for message in output.messages {
            let Some(peer) = m.peers.get(&message.to).copied().or_else(|| {
                m.via
                    .filter(|v| wire::member_id(&v.to_bytes()) == message.to)
            }) else {
                continue;
            };
            // A count over at most MAX_RAFT_IN_FLIGHT entries, per message sent.
            let waiting = self
                .raft_in_flight
                .values()
                .filter(|(to, _)| *to == peer)
                .count();
            if waiting >= MAX_RAFT_IN_FLIGHT_PER_PEER
                || self.raft_in_flight.len() >= MAX_RAFT_IN_FLIGHT
            {
                // The link is not keeping up: raft sends again what matters.
                self.metrics.refuse("raft_link_backlog");
                continue;
            }
            match wire::encode(&m.cluster, &message, m.pace.tick_ms()) {
                Ok(frame) => {
                    self.metrics.raft_messages_out.inc();
                    // An answer to the frame being handled rides in its acknowledgement.
                    if let Some((to, frames)) = &mut self.reply_to {
                        if *to == peer && frames.len() < crate::cluster::protocol::MAX_REPLY_FRAMES
                        {
                            frames.push(ByteBuf::from(frame));
                            continue;
                        }
                    }
                    let request = ClusterRequest::Raft {
                        frame: ByteBuf::from(frame),
                    };
                    self.next_raft_token = self.next_raft_token.wrapping_add(1);
                    let token = RAFT_TOKEN | (self.next_raft_token & !RAFT_TOKEN);
                    self.raft_in_flight.insert(token, (peer, now_ms));
                    send(peer, &request, token, out);
                }
                Err(error) => tracing::warn!(%error, "raft message not encodable"),
            }
        }
        if output.applied.is_empty() {
            return;
        }
        let cluster = m.cluster.clone();
        let mut members_changed = false;
        for (command, outcome) in &output.applied {
            if matches!(command, Command::Join { .. } | Command::Leave { .. }) {
                members_changed = true;
            }
            if let Command::Join { node, .. } = command {
                if *node == self.me_node && !m.joined {
                    m.joined = true;
                    self.metrics.change("joined");
                    tracing::info!(%cluster, "joined the cluster");
                }
                if let Ok(peer) = PeerId::from_bytes(&node.0) {
                    m.heard.insert(wire::member_id(&peer.to_bytes()), now_ms);
                }
            }
            m.schedule_soon |= matches!(
                outcome,
                Ok(Applied::Submitted
                    | Applied::Finished
                    | Applied::Failed { .. }
                    | Applied::Cancelled
                    | Applied::MemberJoined
                    | Applied::MemberLeft { .. }
                    | Applied::CapacityChanged)
            );
            task_event(&cluster, command, outcome, out);
        }
        if members_changed {
            m.refresh_peers();
        }
        // Local work first: place what just became placeable now, not at the next tick
        // (submit-to-start is one commit, not a scheduling period).
        let place_now = m.schedule_soon && m.group.is_leader() && !self.scheduling;
        self.reconcile(now_ms, out);
        if place_now {
            self.scheduling = true;
            self.schedule(now_ms, out);
            self.scheduling = false;
        }
    }

    pub(super) fn on_raft(&mut self, now_ms: u64, peer: PeerId, frame: &[u8], out: &mut Outbox) {
        let wire::Received {
            cluster,
            message,
            pace_ms,
        } = match wire::decode(frame) {
            Ok(decoded) => decoded,
            Err(error) => {
                self.metrics.refuse(error.reason());
                return;
            }
        };
        let Situation::Member(m) = &mut self.situation else {
            self.metrics.refuse("not_in_a_cluster");
            return;
        };
        let mut leaders = m.group.configuration().voters;
        if !m.joined {
            leaders.extend(m.via.map(|v| wire::member_id(&v.to_bytes())));
        }
        if let Err(error) = wire::admit(
            &cluster,
            &message,
            &m.cluster,
            self.me_id,
            &peer.to_bytes(),
            &m.allowed_senders(),
        )
        .and_then(|()| wire::admit_role(&message, &leaders, m.group.leader()))
        {
            self.metrics.refuse(error.reason());
            return;
        }
        self.metrics.raft_messages_in.inc();
        let from = message.from;
        m.heard.insert(from, now_ms);
        match m.group.step(message) {
            Ok(output) => {
                if m.group.leader() == Some(from) {
                    m.contact_ms = now_ms;
                    // One pace per cluster: the coordinator's.
                    if let Some(pace_ms) = pace_ms {
                        m.pace.follow(pace_ms);
                        self.metrics.raft_tick_ms.set(m.pace.tick_ms() as i64);
                    }
                }
                self.after_output(now_ms, output, out);
            }
            Err(GroupError::DiskFailed(reason)) => {
                tracing::error!(%reason, "raft disk failed");
                out.push(Effect::StoreFailed(reason));
            }
            Err(GroupError::Panicked) => {
                // A voter sent what raft cannot take: this replica is no longer
                // trustworthy. Leave; the node starts over unclustered.
                self.metrics.refuse("raft_impossible");
                self.leave(now_ms, "raft_failed", false, out);
            }
            Err(GroupError::Impossible(what)) => {
                tracing::warn!(peer_id = %peer, what, "impossible raft message refused");
                self.metrics.refuse("raft_impossible");
            }
            Err(error) => tracing::debug!(%error, "raft message not stepped"),
        }
    }

    pub(super) fn tick(&mut self, now_ms: u64, out: &mut Outbox) {
        if let Situation::Member(m) = &mut self.situation {
            if m.group.is_leader() && m.pace.review(now_ms) {
                tracing::info!(
                    cluster = %m.cluster,
                    tick_ms = m.pace.tick_ms(),
                    round_trip_p95_ms = m.pace.round_trip_p95(),
                    "raft pace changed"
                );
                self.metrics.raft_tick_ms.set(m.pace.tick_ms() as i64);
            }
            // The service wakes every base tick; raft ticks at the cluster's pace.
            if m.pace.due(now_ms) {
                let output = m.group.tick();
                if m.group.is_leader() {
                    m.contact_ms = now_ms;
                } else {
                    m.was_leader = false;
                }
                self.after_output(now_ms, output, out);
            }
        }
        self.ticks += 1;
        if self.ticks.is_multiple_of(STEP_TICKS) {
            // Messages whose acknowledgement never came (a lost connection may report
            // nothing): forgotten after the request timeout.
            let timeout_ms =
                crate::runtime::capability::duration_ms(crate::cluster::protocol::REQUEST_TIMEOUT);
            self.raft_in_flight
                .retain(|_, (_, sent)| now_ms.saturating_sub(*sent) <= timeout_ms);
            self.step(now_ms, out);
        } else if let Situation::Member(m) = &self.situation {
            if m.schedule_soon && m.group.is_leader() {
                self.schedule(now_ms, out);
            }
        }
    }

    /// A raft message was acknowledged (`Some(true)`), timed out (`Some(false)`) or failed
    /// otherwise (`None`, not a round trip): one round trip for the pace.
    pub(super) fn raft_acknowledged(&mut self, now_ms: u64, token: Token, timed: Option<bool>) {
        let Some((_, sent_ms)) = self.raft_in_flight.remove(&token) else {
            return;
        };
        if let (Situation::Member(m), Some(delivered)) = (&mut self.situation, timed) {
            m.pace
                .sample(delivered.then(|| now_ms.saturating_sub(sent_ms)));
        }
    }

    /// Proposes `command` as coordinator, or sends it to the coordinator.
    pub(super) fn propose(&mut self, command: Command, out: &mut Outbox) -> Result<(), String> {
        let now_ms = self.now_ms;
        let Situation::Member(m) = &mut self.situation else {
            return Err("not in a cluster".into());
        };
        if m.group.is_leader() {
            let output = m.group.propose(&command).map_err(|e| e.to_string())?;
            self.after_output(now_ms, output, out);
            return Ok(());
        }
        let Some(coordinator) = m.coordinator_peer() else {
            return Err("the cluster has no coordinator right now".into());
        };
        let cluster = m.cluster.clone();
        if self.ask(
            coordinator,
            ClusterRequest::Propose { cluster, command },
            Pending::Report,
            out,
        ) {
            Ok(())
        } else {
            Err("too many requests outstanding".into())
        }
    }
}

pub(super) fn task_event(
    cluster: &str,
    command: &Command,
    outcome: &Result<Applied, Refusal>,
    out: &mut Outbox,
) {
    let (id, node) = match command {
        Command::Submit { spec } => (spec.id, None),
        Command::Assign { task, node, .. }
        | Command::Started { task, node, .. }
        | Command::Finished { task, node, .. }
        | Command::Failed { task, node, .. } => (*task, Some(node)),
        Command::Cancel { task } => (*task, None),
        _ => return,
    };
    let (state, detail) = match outcome {
        Ok(Applied::Submitted) => ("queued", None),
        Ok(Applied::Assigned) => ("assigned", None),
        Ok(Applied::Started) => ("running", None),
        Ok(Applied::Finished) => ("done", None),
        Ok(Applied::Failed { retry: true }) => ("queued", failure_reason(command)),
        Ok(Applied::Failed { retry: false }) => ("failed", failure_reason(command)),
        Ok(Applied::Cancelled) => ("cancelled", None),
        Ok(_) => return,
        Err(refusal) => ("refused", Some(refusal.to_string())),
    };
    out.event(TaskChanged {
        id: id.to_string(),
        state: state.into(),
        node: node
            .and_then(|n| PeerId::from_bytes(&n.0).ok())
            .map(|p| p.to_string()),
        cluster: Some(cluster.to_owned()),
        detail,
    });
}

pub(super) fn failure_reason(command: &Command) -> Option<String> {
    match command {
        Command::Failed { reason, .. } => Some(reason.clone()),
        _ => None,
    }
}
