//! One member's side of a cluster's Raft group: raft-rs's sans-io `RawNode` driving the
//! replicated [`ClusterState`].
//!
//! The caller owns time and the network: it calls [`ClusterNode::tick`] every
//! [`TICK_MS`], hands in messages from other members with [`ClusterNode::step`], proposes
//! commands with [`ClusterNode::propose`], and sends out the messages each call returns.
//! Every call persists what Raft needs before the messages that depend on it are returned
//! (raft-rs's `Ready` protocol), then applies newly committed commands to the state.
//!
//! The coordinator is the leader; it stamps assignments with its term ([`ClusterNode::plan`]).
//! Pre-vote and check-quorum are on, so a partitioned member does not disturb the cluster
//! when it returns, and a leader cut off from a majority steps down. Election timeouts are
//! in ticks: [`LAN_TIMING`] for internet links, [`RADIO_TIMING`] for Bluetooth ones.
//!
//! raft-rs draws its randomized election timeouts from its own thread-local generator, so a
//! simulation's seed fixes the schedule of messages, losses and crashes but not those
//! timeouts; the simulation checks invariants over many runs rather than replaying one.
//!
//! Storage is the caller's, and asynchronous: raft-rs's `MemStorage` holds the log in memory,
//! and every `Ready` also comes out as a [`PersistRequest`] in [`Output::persist`] for the
//! caller to write (the node writes it on its storage task, off the swarm task; a
//! simulation just acknowledges it). The messages that depend on a write — everything a
//! follower says, and what a leader says once its own copy counts — are held until the
//! caller reports the write done ([`ClusterNode::on_persisted`]); a leader's appends go out at
//! once (raft thesis 10.2.1), and committed entries are applied only once persisted here. A
//! request that only moves the commit index needs no sync and, when nothing synced is still
//! outstanding, is taken as persisted at once. If a write fails, the member stops: every
//! later call returns [`GroupError::DiskFailed`], since it can no longer keep its promises.
//! [`crate::log`] says how requests are stored and a group restored.

use std::collections::VecDeque;

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfState, Entry, EntryType, Message};
use raft::storage::MemStorage;
use raft::{Config, RawNode, StateRole};

use crate::log::DiskError;
pub use crate::log::PersistRequest;
use crate::scheduler;
use crate::state::{Applied, ClusterState, Command, Refusal};

/// How often the caller ticks, in milliseconds.
pub const TICK_MS: u64 = 100;

/// Election and heartbeat timing, in ticks of [`TICK_MS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub heartbeat_ticks: usize,
    /// Elections start after a random timeout in `[election_ticks, 2 × election_ticks)`.
    pub election_ticks: usize,
}

/// On internet links, at the base pace: heartbeats every 100 ms, elections after 300–600 ms
/// of silence, so a dead coordinator is replaced well within the 1.5 s target even when two
/// followers' timeouts fire together and split the vote (one more 300–600 ms). That tight is
/// safe because the pace ([`crate::pace`]) stretches every tick as soon as the round trips
/// of the cluster's links (a slow link, a loaded node) call for it.
pub const LAN_TIMING: Timing = Timing {
    heartbeat_ticks: 1,
    election_ticks: 3,
};

/// On Bluetooth links (a relay hop costs ~200 ms): heartbeats every 500 ms, elections after
/// 3–6 s of silence.
pub const RADIO_TIMING: Timing = Timing {
    heartbeat_ticks: 5,
    election_ticks: 30,
};

/// Largest command a member proposes or accepts, encoded.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// A change of who is in the group, proposed with the [`Command`] that records it in the
/// cluster state (a `Join` with an addition, a `Leave` with a removal): both commit in one
/// log entry, so raft's configuration and the cluster's member table never disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    /// A member that votes and may coordinate (its ticket grants `coordinator`).
    AddVoter,
    /// A member that runs tasks and follows the log but never votes or coordinates.
    AddLearner,
    Remove,
}

/// Why a call did not go through.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("this member is not the coordinator")]
    NotLeader,
    #[error("command too large ({0} bytes)")]
    TooLarge(usize),
    #[error("cannot encode the command: {0}")]
    Encode(String),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("the raft disk failed: {0}")]
    DiskFailed(String),
    #[error("a membership change is still in progress")]
    ChangePending,
    #[error("raft stopped on an impossible message")]
    Panicked,
    #[error("impossible message refused: {0}")]
    Impossible(&'static str),
    #[error("cannot load the raft disk: {0}")]
    Load(#[from] DiskError),
}

/// What a call produced: messages to send (already safe to send: what they promise is
/// persisted), what to store, and the commands newly applied, in order, with their
/// outcomes.
#[derive(Debug, Default)]
pub struct Output {
    pub messages: Vec<Message>,
    pub persist: Vec<PersistRequest>,
    pub applied: Vec<(Command, Result<Applied, Refusal>)>,
}

impl Output {
    fn extend(&mut self, other: Output) {
        self.messages.extend(other.messages);
        self.persist.extend(other.persist);
        self.applied.extend(other.applied);
    }
}

/// Readies drained per call at most: each persisted one may make another ready at once.
const MAX_READIES_PER_CALL: usize = 16;

/// One member of a cluster's Raft group.
pub struct ClusterNode {
    id: u64,
    raw: RawNode<MemStorage>,
    state: ClusterState,
    /// Committed entries whose bytes are not a command (a member with a newer or corrupt
    /// encoder): skipped identically on every replica, and counted.
    skipped: u64,
    disk_failed: Option<String>,
    /// Synced requests not yet reported stored, oldest first.
    unsynced: VecDeque<u64>,
    /// Messages waiting for the request of their number to be stored.
    held: VecDeque<(u64, Vec<Message>)>,
    /// The newest request number handed out, and the newest reported to raft as stored.
    issued: u64,
    released: u64,
}

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode")
            .field("id", &self.id)
            .field("term", &self.raw.raft.term)
            .field("role", &self.raw.raft.state)
            .finish()
    }
}

/// A fresh storage for a group whose founding members are `voters`.
pub fn founding_storage(voters: &[u64]) -> MemStorage {
    MemStorage::new_with_conf_state(ConfState::from((voters.to_vec(), vec![])))
}

impl ClusterNode {
    /// Starts (or restarts, from what `storage` kept) member `id`. The state machine is
    /// rebuilt by applying the committed log again.
    pub fn new(
        id: u64,
        storage: MemStorage,
        timing: Timing,
        logger: &slog::Logger,
    ) -> Result<Self, GroupError> {
        let config = Config {
            id,
            heartbeat_tick: timing.heartbeat_ticks,
            election_tick: timing.election_ticks,
            pre_vote: true,
            check_quorum: true,
            max_size_per_msg: 256 * 1024,
            max_inflight_msgs: 64,
            applied: 0,
            ..Config::default()
        };
        let raw = RawNode::new(&config, storage, logger)?;
        Ok(Self {
            id,
            raw,
            state: ClusterState::default(),
            skipped: 0,
            disk_failed: None,
            unsynced: VecDeque::new(),
            held: VecDeque::new(),
            issued: 0,
            released: 0,
        })
    }

    /// What a group that was never stored must store before anything else: its founding
    /// configuration and an empty hard state (synced, so a restart finds the group).
    pub fn initial_request(&self) -> PersistRequest {
        let stored = raft::Storage::initial_state(self.raw.store()).unwrap_or_default();
        PersistRequest {
            number: 0,
            entries: Vec::new(),
            hard_state: stored.hard_state,
            conf_state: stored.conf_state,
            sync: true,
        }
    }

    /// The request `number` (and every one before it) is stored: the messages that waited
    /// for it go out, and what it made ready (a leader's commit, entries now committed)
    /// follows.
    pub fn on_persisted(&mut self, number: u64) -> Output {
        if self.disk_failed.is_some() {
            return Output::default();
        }
        while self.unsynced.front().is_some_and(|n| *n <= number) {
            self.unsynced.pop_front();
        }
        let mut out = Output::default();
        self.release(&mut out);
        out.extend(self.drain());
        out
    }

    /// A write failed: the member stops for good (what it promised may not be stored).
    pub fn on_persist_failed(&mut self, reason: String) {
        tracing::error!(%reason, "raft disk failed; this member stops");
        self.disk_failed = Some(reason);
        self.held.clear();
    }

    /// Tells raft what is stored and hands out the messages that waited for it.
    fn release(&mut self, out: &mut Output) {
        let safe = match self.unsynced.front() {
            Some(first) => first - 1,
            None => self.issued,
        };
        if safe > self.released {
            self.raw.on_persist_ready(safe);
            self.released = safe;
        }
        while self.held.front().is_some_and(|(n, _)| *n <= safe) {
            if let Some((_, messages)) = self.held.pop_front() {
                out.messages.extend(messages);
            }
        }
    }

    fn check_disk(&self) -> Result<(), GroupError> {
        match &self.disk_failed {
            Some(reason) => Err(GroupError::DiskFailed(reason.clone())),
            None => Ok(()),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The member this one believes leads, if any.
    pub fn leader(&self) -> Option<u64> {
        let leader = self.raw.raft.leader_id;
        (leader != raft::INVALID_ID).then_some(leader)
    }

    /// Why the member stopped, if its disk failed.
    pub fn disk_failed(&self) -> Option<&str> {
        self.disk_failed.as_deref()
    }

    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The storage, for a restart after a (simulated) crash.
    pub fn storage(&self) -> MemStorage {
        self.raw.store().clone()
    }

    /// Sets this member's election priority (its score): among up-to-date candidates, the
    /// higher priority wins.
    pub fn set_priority(&mut self, priority: i64) {
        self.raw.set_priority(priority);
    }

    /// Hands leadership to `member` (a better-scored one); the caller applies hysteresis.
    pub fn transfer_leader(&mut self, member: u64) -> Output {
        self.raw.transfer_leader(member);
        self.drain()
    }

    /// Starts an election now rather than after a timeout: a founder, alone in its group,
    /// leads at once.
    pub fn campaign(&mut self) -> Result<Output, GroupError> {
        self.check_disk()?;
        self.raw.campaign()?;
        Ok(self.drain())
    }

    /// One tick of the clock. Nothing happens once the disk failed.
    pub fn tick(&mut self) -> Output {
        if self.disk_failed.is_some() {
            return Output::default();
        }
        self.raw.tick();
        self.drain()
    }

    /// A message from another member. Messages for another group member id, or that raft
    /// rejects, are dropped with the error.
    ///
    /// raft-rs panics on a few impossible messages (a commit index beyond the log, an
    /// append that rewrites committed entries): the first is refused here, and any panic is
    /// caught and stops the member (`GroupError::Panicked`), so a misbehaving voter cannot
    /// crash the node.
    pub fn step(&mut self, message: Message) -> Result<Output, GroupError> {
        self.check_disk()?;
        if message.to != self.id {
            return Err(GroupError::Raft(raft::Error::StepPeerNotFound));
        }
        if message.get_msg_type() == raft::eraftpb::MessageType::MsgHeartbeat
            && message.commit > self.raw.raft.raft_log.last_index()
        {
            return Err(GroupError::Impossible(
                "a heartbeat's commit beyond our log",
            ));
        }
        let raw = &mut self.raw;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| raw.step(message))) {
            Ok(stepped) => stepped?,
            Err(_) => {
                tracing::error!("raft refused an impossible message; this member stops");
                self.disk_failed = Some("raft stopped on an impossible message".into());
                return Err(GroupError::Panicked);
            }
        }
        Ok(self.drain())
    }

    /// Proposes a command; only the leader may.
    pub fn propose(&mut self, command: &Command) -> Result<Output, GroupError> {
        self.check_disk()?;
        if !self.is_leader() {
            return Err(GroupError::NotLeader);
        }
        let data =
            fogmesh_wire::codec::encode(command).map_err(|e| GroupError::Encode(e.to_string()))?;
        if data.len() > MAX_COMMAND_BYTES {
            return Err(GroupError::TooLarge(data.len()));
        }
        self.raw.propose(vec![], data)?;
        Ok(self.drain())
    }

    /// Proposes several commands and persists them in one `Ready` (one flush for all): how
    /// a coordinator proposes a scheduling pass's placements. Stops at the first that cannot
    /// be proposed; what was proposed before it goes out.
    pub fn propose_all(&mut self, commands: &[Command]) -> Result<Output, GroupError> {
        self.check_disk()?;
        if !self.is_leader() {
            return Err(GroupError::NotLeader);
        }
        let mut failed = None;
        for command in commands {
            let data = match fogmesh_wire::codec::encode(command) {
                Ok(data) if data.len() <= MAX_COMMAND_BYTES => data,
                Ok(data) => {
                    failed = Some(GroupError::TooLarge(data.len()));
                    break;
                }
                Err(e) => {
                    failed = Some(GroupError::Encode(e.to_string()));
                    break;
                }
            };
            if let Err(e) = self.raw.propose(vec![], data) {
                failed = Some(e.into());
                break;
            }
        }
        let output = self.drain();
        match failed {
            Some(error) if output.messages.is_empty() && output.applied.is_empty() => Err(error),
            _ => Ok(output),
        }
    }

    /// Proposes a membership change together with the command recording it; only the
    /// leader may, and only one change at a time.
    pub fn propose_change(
        &mut self,
        change: MemberChange,
        member: u64,
        command: &Command,
    ) -> Result<Output, GroupError> {
        self.check_disk()?;
        if !self.is_leader() {
            return Err(GroupError::NotLeader);
        }
        if self.raw.raft.has_pending_conf() {
            return Err(GroupError::ChangePending);
        }
        let context =
            fogmesh_wire::codec::encode(command).map_err(|e| GroupError::Encode(e.to_string()))?;
        if context.len() > MAX_COMMAND_BYTES {
            return Err(GroupError::TooLarge(context.len()));
        }
        let mut cc = ConfChange {
            node_id: member,
            ..Default::default()
        };
        cc.set_change_type(match change {
            MemberChange::AddVoter => ConfChangeType::AddNode,
            MemberChange::AddLearner => ConfChangeType::AddLearnerNode,
            MemberChange::Remove => ConfChangeType::RemoveNode,
        });
        self.raw.propose_conf_change(context, cc)?;
        Ok(self.drain())
    }

    /// Raft's current configuration: who votes and who only learns.
    pub fn configuration(&self) -> ConfState {
        self.raw.raft.prs().conf().to_conf_state()
    }

    /// Every member raft knows, voting or not.
    pub fn member_ids(&self) -> Vec<u64> {
        let conf = self.configuration();
        conf.voters
            .iter()
            .chain(conf.learners.iter())
            .copied()
            .collect()
    }

    /// Whether a membership change is proposed and not yet applied.
    pub fn change_pending(&self) -> bool {
        self.raw.raft.has_pending_conf()
    }

    /// The coordinator's placements for now, as `Assign` commands stamped with its term.
    pub fn plan(&self, now_ms: u64, limit: usize) -> Vec<Command> {
        if !self.is_leader() {
            return Vec::new();
        }
        let term = self.term();
        scheduler::plan(&self.state, now_ms, limit)
            .into_iter()
            .map(|p| Command::Assign {
                task: p.task,
                node: p.node,
                term,
                at_ms: now_ms,
            })
            .collect()
    }

    /// Runs raft-rs's `Ready` protocol, asynchronously: send what needs nothing stored,
    /// apply what is committed and stored, hand out what to store, hold what depends on it.
    fn drain(&mut self) -> Output {
        let mut out = Output::default();
        for _ in 0..MAX_READIES_PER_CALL {
            if self.disk_failed.is_some() || !self.raw.has_ready() {
                break;
            }
            let store = self.raw.store().clone();
            let mut ready = self.raw.ready();
            let number = ready.number();
            // Messages in `messages()` need nothing persisted (a leader's appends go out
            // while it writes its own copy).
            out.messages.extend(ready.take_messages());
            if !ready.snapshot().is_empty() {
                // No member compacts its log yet, so no snapshot should arrive (and `admit`
                // refuses them on the wire); the state machine could not be restored from
                // one.
                tracing::error!("unexpected raft snapshot; this member stops");
                self.disk_failed =
                    Some("received a raft snapshot, which this version cannot apply".into());
                out.messages.clear();
                return out;
            }
            // Committed entries are committed and stored here: safe to apply.
            self.apply(ready.take_committed_entries(), &mut out);
            if !ready.entries().is_empty() {
                if let Err(err) = store.wl().append(ready.entries()) {
                    tracing::error!(%err, "cannot append raft entries");
                }
            }
            if let Some(hard_state) = ready.hs() {
                store.wl().set_hardstate(hard_state.clone());
            }
            let stored = raft::Storage::initial_state(&store).unwrap_or_default();
            let sync = ready.must_sync();
            out.persist.push(PersistRequest {
                number,
                entries: ready.entries().to_vec(),
                hard_state: stored.hard_state,
                conf_state: stored.conf_state,
                sync,
            });
            let persisted = ready.take_persisted_messages();
            self.raw.advance_append_async(ready);
            self.raw.advance_apply();
            self.issued = number;
            if sync {
                self.unsynced.push_back(number);
            }
            if !persisted.is_empty() {
                self.held.push_back((number, persisted));
            }
            self.release(&mut out);
        }
        out
    }

    fn apply(&mut self, entries: Vec<Entry>, out: &mut Output) {
        for entry in entries {
            if entry.get_entry_type() == EntryType::EntryConfChange {
                self.apply_change(&entry, out);
                continue;
            }
            if entry.data.is_empty() || entry.get_entry_type() != EntryType::EntryNormal {
                continue;
            }
            match fogmesh_wire::codec::decode_bounded::<Command>(&entry.data, MAX_COMMAND_BYTES) {
                Ok(command) => {
                    let outcome = self.state.apply(command.clone());
                    out.applied.push((command, outcome));
                }
                Err(err) => {
                    self.skipped += 1;
                    tracing::warn!(%err, index = entry.index, "committed entry is not a command; skipped");
                }
            }
        }
    }
}

impl ClusterNode {
    /// A committed membership change: raft's configuration first, then the command that
    /// records it. A change whose bytes do not parse is skipped on every replica alike.
    fn apply_change(&mut self, entry: &Entry, out: &mut Output) {
        let cc = match ConfChange::parse_from_bytes(&entry.data) {
            Ok(cc) => cc,
            Err(err) => {
                self.skipped += 1;
                tracing::warn!(%err, index = entry.index, "committed membership change does not parse; skipped");
                return;
            }
        };
        match self.raw.apply_conf_change(&cc) {
            Ok(conf) => {
                self.raw.store().wl().set_conf_state(conf);
            }
            Err(err) => {
                self.skipped += 1;
                tracing::warn!(%err, index = entry.index, "membership change refused by raft; skipped");
                return;
            }
        }
        match fogmesh_wire::codec::decode_bounded::<Command>(&entry.context, MAX_COMMAND_BYTES) {
            Ok(command) => {
                let outcome = self.state.apply(command.clone());
                out.applied.push((command, outcome));
            }
            Err(err) => {
                self.skipped += 1;
                tracing::warn!(%err, index = entry.index, "membership change carries no command");
            }
        }
    }
}

/// raft-rs logs through slog; this drain hands its records to `tracing` (target `raft`).
#[derive(Debug)]
pub struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        _values: &slog::OwnedKVList,
    ) -> Result<Self::Ok, Self::Err> {
        let message = record.msg().to_string();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::error!(target: "raft", %message),
            slog::Level::Warning => tracing::warn!(target: "raft", %message),
            slog::Level::Info => tracing::debug!(target: "raft", %message),
            slog::Level::Debug | slog::Level::Trace => tracing::trace!(target: "raft", %message),
        }
        Ok(())
    }
}

/// A slog logger writing into `tracing`.
pub fn raft_logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}
