//! What `fogmesh cluster` and `fogmesh task` show: built from the replica and the
//! submission records, published once a second and after every control request.

use fogmesh_consensus::formation;
use fogmesh_consensus::state::TaskState;
use fogmesh_consensus::task::TaskId;
use fogmesh_consensus::wire;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use super::{ClusterService, Situation};
use crate::runtime::capability::Outbox;

/// Tasks listed at most (the cluster's unfinished ones and this node's submissions first).
pub const MAX_LISTED: usize = 500;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    /// `unclustered`, `joining` or `member`.
    pub state: String,
    pub cluster: Option<String>,
    pub term: u64,
    pub coordinator: Option<String>,
    pub is_coordinator: bool,
    /// Why the coordinator is who it is, or why this node is in no cluster.
    pub why: String,
    pub members: Vec<MemberView>,
    /// Every cluster held by its summary (this node's own included); shared, not copied,
    /// each time the view is published. `age_ms` is filled in when served.
    pub known_clusters: std::sync::Arc<Vec<KnownCluster>>,
    pub queued: usize,
    pub running: usize,
    pub tasks: Vec<TaskView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberView {
    pub peer_id: String,
    pub voter: bool,
    pub coordinator: bool,
    pub score: f64,
    pub cores: u32,
    pub cpu_pct: u8,
    pub memory_mb: u32,
    pub max_tasks: u32,
    pub battery_pct: Option<u8>,
    pub charging: Option<bool>,
    /// Tasks assigned or running there, and the CPU and memory they take.
    pub tasks: u32,
    pub cpu_millicores: u32,
    pub load_memory_mb: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnownCluster {
    pub cluster: String,
    pub coordinator: String,
    pub term: u64,
    pub members: usize,
    pub queued: u32,
    pub age_ms: u64,
    /// When this node heard the summary (node time).
    #[serde(default)]
    pub heard_at_ms: u64,
    /// The longest until the cluster's next summary, as its coordinator said.
    #[serde(default)]
    pub every_ms: Option<u64>,
    /// Every member as the summary describes it (empty from nodes older than summaries).
    #[serde(default)]
    pub nodes: Vec<SummaryMember>,
    /// The members' capacity and load added up (live members only).
    #[serde(default)]
    pub capacity: ClusterCapacity,
}

/// One member of another cluster, from its coordinator's summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryMember {
    pub peer_id: String,
    pub score: f64,
    pub cores: u32,
    pub cpu_pct: u8,
    pub memory_mb: u32,
    pub max_tasks: u32,
    pub gpu: bool,
    pub battery_pct: Option<u8>,
    pub charging: Option<bool>,
    pub tasks: u32,
    pub cpu_millicores: u32,
    pub load_memory_mb: u32,
    /// Its coordinator has not heard it lately (it may be gone).
    pub silent: bool,
}

/// What a cluster offers, summed over its live members.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterCapacity {
    pub live_members: u32,
    pub cores: u32,
    /// CPU tasks may use, and what assigned tasks take, in thousandths of a core.
    pub cpu_budget_millicores: u32,
    pub cpu_used_millicores: u32,
    pub memory_mb: u32,
    pub memory_used_mb: u32,
    pub task_slots: u32,
    pub tasks: u32,
}

impl KnownCluster {
    pub fn of(coordinator: &PeerId, a: &formation::Announcement) -> KnownCluster {
        let mut capacity = ClusterCapacity::default();
        let nodes = a
            .members
            .iter()
            .zip(&a.summary)
            .map(|(peer, m)| {
                let c = m.capacity;
                if !m.silent {
                    capacity.live_members += 1;
                    capacity.cores = capacity.cores.saturating_add(c.cores);
                    capacity.cpu_budget_millicores = capacity
                        .cpu_budget_millicores
                        .saturating_add(c.cpu_budget_millicores());
                    capacity.cpu_used_millicores = capacity
                        .cpu_used_millicores
                        .saturating_add(m.load.cpu_millicores);
                    capacity.memory_mb = capacity.memory_mb.saturating_add(c.memory_mb);
                    capacity.memory_used_mb =
                        capacity.memory_used_mb.saturating_add(m.load.memory_mb);
                    capacity.task_slots = capacity.task_slots.saturating_add(c.max_tasks);
                    capacity.tasks = capacity.tasks.saturating_add(m.load.tasks);
                }
                SummaryMember {
                    peer_id: peer_text(peer),
                    score: f64::from(c.score_milli) / 1000.0,
                    cores: c.cores,
                    cpu_pct: c.cpu_pct,
                    memory_mb: c.memory_mb,
                    max_tasks: c.max_tasks,
                    gpu: c.gpu,
                    battery_pct: c.battery.map(|b| b.pct),
                    charging: c.battery.map(|b| b.charging),
                    tasks: m.load.tasks,
                    cpu_millicores: m.load.cpu_millicores,
                    load_memory_mb: m.load.memory_mb,
                    silent: m.silent,
                }
            })
            .collect();
        KnownCluster {
            cluster: a.cluster.clone(),
            coordinator: coordinator.to_string(),
            term: a.term,
            members: a.size(),
            queued: a.queued,
            age_ms: 0,
            heard_at_ms: a.at_ms,
            every_ms: a.every_ms,
            nodes,
            capacity,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    pub id: String,
    /// `submitted` (not yet in a cluster), `queued`, `assigned`, `running`, `done`,
    /// `failed`, `cancelled`.
    pub state: String,
    pub priority: String,
    pub cluster: Option<String>,
    pub node: Option<String>,
    pub attempts: u32,
    pub submitted_at_ms: u64,
    /// Why it waits, the last error, or where its submission stands.
    pub detail: Option<String>,
    /// Hex SHA-256 of the result, once done.
    pub result: Option<String>,
    pub submitted_here: bool,
    /// How long ago the state shown was heard from the task's cluster, when it comes from
    /// this node's submission record rather than its own replica (a submitter outside the
    /// cluster): the older, the less it may still be true.
    #[serde(default)]
    pub heard_ago_ms: Option<u64>,
}

fn state_name(state: &TaskState) -> &'static str {
    match state {
        TaskState::Queued { .. } => "queued",
        TaskState::Assigned { .. } => "assigned",
        TaskState::Running { .. } => "running",
        TaskState::Done { .. } => "done",
        TaskState::Failed { .. } => "failed",
        TaskState::Cancelled => "cancelled",
    }
}

fn peer_text(bytes: &[u8]) -> String {
    PeerId::from_bytes(bytes).map_or_else(|_| hex::encode(bytes), |p| p.to_string())
}

impl ClusterService {
    /// One task as this node knows it: from its replica if its cluster has it, else from
    /// its submission record.
    pub fn task_view(&self, id: &TaskId) -> Option<TaskView> {
        let record = self.submissions.get(id);
        if let Some(report) = self.task_report(id) {
            let Situation::Member(m) = &self.situation else {
                return None;
            };
            let task = m.group.state().task(id)?;
            return Some(self.view_of(
                &task.spec,
                &report.state,
                Some(report.cluster),
                report.attempts,
                report.waiting,
                record.is_some(),
            ));
        }
        let record = record?;
        match &record.last {
            Some(last) => {
                let mut view = self.view_of(
                    &record.spec,
                    &last.state,
                    Some(last.cluster.clone()),
                    last.attempts,
                    last.waiting.clone(),
                    !record.forwarded,
                );
                // Trouble reaching the cluster says more than the last reason it gave,
                // whatever the state.
                if !record.note.is_empty() {
                    view.detail = Some(record.note.clone());
                }
                view.heard_ago_ms = Some(self.now_ms.saturating_sub(record.heard_ms));
                Some(view)
            }
            None => Some(TaskView {
                id: id.to_string(),
                state: "submitted".into(),
                priority: format!("{:?}", record.spec.priority).to_lowercase(),
                cluster: record.cluster.clone(),
                node: None,
                attempts: 0,
                submitted_at_ms: record.spec.submitted_at_ms,
                detail: Some(record.note.clone()),
                result: None,
                submitted_here: !record.forwarded,
                heard_ago_ms: None,
            }),
        }
    }

    fn view_of(
        &self,
        spec: &fogmesh_consensus::task::TaskSpec,
        state: &TaskState,
        cluster: Option<String>,
        attempts: u32,
        waiting: Option<String>,
        submitted_here: bool,
    ) -> TaskView {
        let (node, detail, result) = match state {
            TaskState::Queued { last_error } => {
                (None, waiting.or_else(|| last_error.clone()), None)
            }
            TaskState::Assigned { node, .. } | TaskState::Running { node, .. } => {
                (Some(peer_text(&node.0)), None, None)
            }
            TaskState::Done { node, result, .. } => {
                (Some(peer_text(&node.0)), None, Some(hex::encode(result)))
            }
            TaskState::Failed { reason } => (None, Some(reason.clone()), None),
            TaskState::Cancelled => (None, None, None),
        };
        TaskView {
            id: spec.id.to_string(),
            state: state_name(state).into(),
            priority: format!("{:?}", spec.priority).to_lowercase(),
            cluster,
            node,
            attempts,
            submitted_at_ms: spec.submitted_at_ms,
            detail,
            result,
            submitted_here,
            heard_ago_ms: None,
        }
    }

    pub fn view(&self) -> ClusterView {
        let mut view = ClusterView {
            known_clusters: self.known_clusters.clone(),
            running: self.work.running(),
            ..ClusterView::default()
        };
        let mut listed = std::collections::BTreeSet::new();
        match &self.situation {
            Situation::Unclustered { asked, .. } => {
                view.state = "unclustered".into();
                view.why = match asked {
                    Some((cluster, _)) => format!("asked to join cluster {cluster}"),
                    None if !(self.config.roles.worker || self.config.roles.coordinator) => {
                        "this node's ticket grants neither worker nor coordinator: it joins no cluster".into()
                    }
                    None if self.capacity.is_none() => "waiting for the first device reading".into(),
                    None if self.config.roles.coordinator => format!(
                        "no cluster with room in reach; founding one after {} ms of quiet",
                        fogmesh_consensus::formation::founding_delay_ms(
                            &self.config.formation,
                            self.founds_first(),
                            self.jitter_ms
                        )
                    ),
                    None => "no cluster with room in reach (this node may not found one: no coordinator role)".into(),
                };
            }
            Situation::Member(m) => {
                let state = m.group.state();
                let leader = m.group.leader();
                view.state = if m.joined { "member" } else { "joining" }.into();
                view.cluster = Some(m.cluster.clone());
                view.term = m.group.term();
                view.is_coordinator = m.group.is_leader();
                view.coordinator = m.coordinator_peer().map(|p| p.to_string());
                view.queued = state.queued().count();
                let conf = m.group.configuration();
                let loads = state.loads();
                for (node, member) in state.members() {
                    let id = wire::member_id(&node.0);
                    let load = loads.get(node).copied().unwrap_or_default();
                    let c = member.capacity;
                    view.members.push(MemberView {
                        peer_id: peer_text(&node.0),
                        voter: conf.voters.contains(&id),
                        coordinator: leader == Some(id),
                        score: f64::from(c.score_milli) / 1000.0,
                        cores: c.cores,
                        cpu_pct: c.cpu_pct,
                        memory_mb: c.memory_mb,
                        max_tasks: c.max_tasks,
                        battery_pct: c.battery.map(|b| b.pct),
                        charging: c.battery.map(|b| b.charging),
                        tasks: load.tasks,
                        cpu_millicores: load.cpu_millicores,
                        load_memory_mb: load.memory_mb,
                    });
                }
                view.why = why_coordinator(&view.members, view.term);
                // The cluster's unfinished tasks, then the latest ended ones.
                let mut tasks: Vec<_> = state.tasks().values().collect();
                tasks.sort_by_key(|t| {
                    (
                        t.state.is_terminal(),
                        std::cmp::Reverse(t.spec.submitted_at_ms),
                    )
                });
                for task in tasks.into_iter().take(MAX_LISTED) {
                    if let Some(v) = self.task_view(&task.spec.id) {
                        listed.insert(task.spec.id);
                        view.tasks.push(v);
                    }
                }
            }
        }
        for record in self.submissions.own() {
            if view.tasks.len() >= MAX_LISTED * 2 {
                break;
            }
            if listed.contains(&record.spec.id) {
                continue;
            }
            if let Some(v) = self.task_view(&record.spec.id) {
                view.tasks.push(v);
            }
        }
        view
    }

    /// Publishes the view (once a second, and at once after a control request).
    pub fn publish_view(&mut self, _now_ms: u64, _out: &mut Outbox) {
        if std::mem::take(&mut self.known_dirty) {
            self.known_clusters = std::sync::Arc::new(
                self.announcements
                    .values()
                    .map(|(peer, a)| KnownCluster::of(peer, a))
                    .collect(),
            );
        }
        self.view_cell.set(self.view());
    }
}

fn why_coordinator(members: &[MemberView], term: u64) -> String {
    let Some(coordinator) = members.iter().find(|m| m.coordinator) else {
        return format!("no coordinator in term {term} yet (an election is under way, or no majority is in reach)");
    };
    let voters = members.iter().filter(|m| m.voter).count();
    let best = members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.score)
        .fold(0.0_f64, f64::max);
    if coordinator.score >= best {
        format!(
            "elected in term {term}: the best-scored of {voters} voting members (score {:.3}; voters hold the coordinator role)",
            coordinator.score
        )
    } else {
        format!(
            "elected in term {term} with score {:.3}; a voter scores {best:.3}, and leadership moves only when another is at least {}% and {:.3} better for {} s",
            coordinator.score,
            formation::TRANSFER_RATIO_PCT - 100,
            f64::from(formation::TRANSFER_MARGIN_MILLI) / 1000.0,
            formation::TRANSFER_AFTER_MS / 1000
        )
    }
}
