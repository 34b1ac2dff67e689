//! Anti-entropy: how two replicas find and exchange the entries on which they differ. Pure:
//! the messages, the answering side ([`answer`]) and the asking side ([`SyncSession`]) work
//! on any [`Replica`]; the node carries the messages and verifies what arrives.
//!
//! The asking side drives everything; the answering side keeps no state:
//! 1. ask the sums of the root's children ([`SyncRequest::Children`]) and compare them
//!    with its own ([`crate::tree`]); descend only into children whose sums differ;
//! 2. a differing child the peer has nothing under: push everything under it
//!    ([`SyncRequest::Push`]); one this side has nothing under: page through the peer's
//!    entries under it ([`SyncRequest::Subtree`]);
//! 3. at the leaves, ask the peer's bucket listings (key id, digest, clock) and compare key
//!    by key: fetch what is newer or missing here ([`SyncRequest::Fetch`]), push what is
//!    newer or missing there, both when the clocks tie.
//!
//! Every request and answer is bounded by a byte budget ([`BATCH_BYTES`] by default, sized
//! for a BLE link; an entry larger than the budget travels alone) and by counts (at most
//! [`MAX_ASK_NODES`] nodes, [`MAX_ASK_BUCKETS`] buckets, [`MAX_ASK_KEYS`] keys per request).
//! A session that breaks off (a dropped link) is simply started again later: what was
//! already exchanged now compares equal and is skipped, so the next session resumes where
//! the last one stopped, at the price of one walk down the tree.
//!
//! What a session sends is only what differs plus the sums and listings on the way: two
//! replicas in sync cost one round trip of 16 sums.

use std::collections::{HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::model::{Entry, KeyId, Merged, Slot, KEY_ID_BYTES};
use crate::tree::{bucket_of, covers, nodes_at, DigestTree, NodeSum, FANOUT, LEAF_LEVEL};
use crate::ReplicaError;

/// Bytes a request or answer aims to stay within (an entry larger than this goes alone):
/// the budget on a Bluetooth link, where one message should not hold the radio for long.
pub const BATCH_BYTES: usize = 8 * 1024;
/// The budget on an internet link, where fewer, larger messages go faster.
pub const LAN_BATCH_BYTES: usize = 64 * 1024;
/// Budgets an asker may ask the answering side for.
const ANSWER_BUDGETS: std::ops::RangeInclusive<usize> = 1024..=LAN_BATCH_BYTES;

fn default_budget() -> u32 {
    BATCH_BYTES as u32
}
/// Nodes whose children one request asks for.
pub const MAX_ASK_NODES: usize = 16;
/// Buckets one request lists.
pub const MAX_ASK_BUCKETS: usize = 256;
/// Keys one fetch names.
pub const MAX_ASK_KEYS: usize = 256;
/// Subtrees one page request names (many are a single sparse bucket).
pub const MAX_ASK_SUBTREES: usize = 256;
/// Entries one push or answer may carry.
pub const MAX_ENTRIES_PER_MESSAGE: usize = 1024;
/// Author credentials (tickets) one message may carry.
pub const MAX_CREDENTIALS: usize = 64;
/// The largest sync message: one entry at its caps, its credential, and framing.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Keys a bucket may list; a bucket holding more (about 4,000 times the average at a
/// million keys: only a writer grinding key ids gets there) is exchanged by paging through
/// its entries instead, so a listing always fits a message.
pub const MAX_BUCKET_LISTING: u64 = 2_048;
/// Requests one session sends at most; a longer one ends and the next resumes it.
pub const MAX_SESSION_REQUESTS: u64 = 100_000;
/// Keys waiting to be fetched beyond which the session fetches before it lists more.
const FETCH_FIRST_ABOVE: usize = 4 * MAX_ASK_KEYS;

/// What the asking side asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SyncRequest {
    /// The sums of these nodes' children (in order, [`FANOUT`] each).
    Children { level: u8, nodes: Vec<u32> },
    /// The listings of these leaf buckets.
    Buckets {
        buckets: Vec<u16>,
        #[serde(default = "default_budget")]
        budget: u32,
    },
    /// Winners under these nodes (disjoint, in key-id order), in key-id order, after
    /// `after`: the pages of subtrees this side holds nothing under.
    Subtree {
        nodes: Vec<(u8, u32)>,
        after: Option<ByteBuf>,
        #[serde(default = "default_budget")]
        budget: u32,
    },
    /// The winners of these keys.
    Fetch {
        keys: Vec<ByteBuf>,
        #[serde(default = "default_budget")]
        budget: u32,
    },
    /// Entries the asking side holds and the peer may not; `credentials` are their
    /// authors' tickets (empty in an open mesh).
    Push {
        entries: Vec<Entry>,
        credentials: Vec<ByteBuf>,
    },
}

/// One key in a bucket listing: id, digest of its winner, and the winner's clock
/// (wall ms, counter), which says which side is newer without sending the entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed(pub ByteBuf, pub u64, pub u64, pub u32);

/// The answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SyncResponse {
    Children {
        sums: Vec<NodeSum>,
    },
    /// Listings of some of the buckets asked (as many as fit the budget), and those too
    /// full to list (see [`MAX_BUCKET_LISTING`]); the rest is asked again.
    Buckets {
        buckets: Vec<(u16, Vec<Listed>)>,
        #[serde(default)]
        oversized: Vec<u16>,
    },
    /// Entries under a node; `next` is where to resume if more remain.
    Subtree {
        entries: Vec<Entry>,
        credentials: Vec<ByteBuf>,
        next: Option<ByteBuf>,
    },
    /// The winners of the first `served` keys asked (keys held nowhere are skipped).
    Fetched {
        entries: Vec<Entry>,
        credentials: Vec<ByteBuf>,
        served: u32,
    },
    Pushed {
        accepted: u32,
        refused: u32,
    },
    Refused {
        reason: String,
    },
}

/// Why a message from a peer is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    #[error("malformed sync message: {0}")]
    Malformed(&'static str),
    #[error("the peer refused: {0}")]
    Refused(String),
    #[error("an answer to nothing asked")]
    Unexpected,
}

impl SyncError {
    pub fn reason(&self) -> &'static str {
        match self {
            SyncError::Malformed(reason) => reason,
            SyncError::Refused(_) => "refused_by_peer",
            SyncError::Unexpected => "unexpected_answer",
        }
    }
}

/// A replica as anti-entropy sees it.
pub trait Replica {
    fn tree(&self) -> &DigestTree;
    /// Every key in one leaf bucket.
    fn bucket(&self, bucket: u16) -> Result<Vec<Listed>, ReplicaError>;
    /// Winners under a node in key-id order, after `after`, until `budget` bytes (at least
    /// one entry); with the id to resume after when more remain.
    fn subtree(
        &self,
        level: u8,
        node: u32,
        after: Option<&KeyId>,
        budget: usize,
    ) -> Result<(Vec<Entry>, Option<KeyId>), ReplicaError>;
    /// A key's winner.
    fn winner(&self, id: &KeyId) -> Result<Option<Entry>, ReplicaError>;
    /// The authors' tickets to send along with `entries` (none in an open mesh).
    fn credentials(&self, _entries: &[Entry]) -> Vec<ByteBuf> {
        Vec::new()
    }
}

/// Roughly what an entry takes on the wire, for budgets.
pub fn entry_size(entry: &Entry) -> usize {
    entry.namespace.len()
        + entry.key.len()
        + entry.value.as_ref().map_or(0, |v| v.len())
        + entry.version.author.len()
        + entry.signature.len()
        + 64
}

/// What one listed key takes on the wire.
const LISTED_BYTES: usize = 48;

/// A key id from the wire.
pub fn key_id_from(bytes: &[u8]) -> Option<KeyId> {
    bytes.try_into().ok()
}

fn id_bytes(id: &KeyId) -> ByteBuf {
    ByteBuf::from(id.to_vec())
}

/// Checks a request's shape (what a peer controls) before any work is done for it.
pub fn check_request(request: &SyncRequest) -> Result<(), SyncError> {
    match request {
        SyncRequest::Children { level, nodes } => {
            if *level >= LEAF_LEVEL {
                return Err(SyncError::Malformed("bad_level"));
            }
            if nodes.is_empty() || nodes.len() > MAX_ASK_NODES {
                return Err(SyncError::Malformed("too_many_nodes"));
            }
            let count = nodes_at(*level).unwrap_or(0);
            if nodes.iter().any(|n| *n >= count) {
                return Err(SyncError::Malformed("bad_node"));
            }
        }
        SyncRequest::Buckets { buckets, .. } => {
            if buckets.is_empty() || buckets.len() > MAX_ASK_BUCKETS {
                return Err(SyncError::Malformed("too_many_buckets"));
            }
        }
        SyncRequest::Subtree { nodes, after, .. } => {
            if nodes.is_empty() || nodes.len() > MAX_ASK_SUBTREES {
                return Err(SyncError::Malformed("too_many_nodes"));
            }
            if nodes
                .iter()
                .any(|(level, node)| *level > LEAF_LEVEL || *node >= nodes_at(*level).unwrap_or(0))
            {
                return Err(SyncError::Malformed("bad_node"));
            }
            // Disjoint and in order, so one cursor walks them all.
            if nodes
                .windows(2)
                .any(|w| node_range(w[0].0, w[0].1).end() >= node_range(w[1].0, w[1].1).start())
            {
                return Err(SyncError::Malformed("nodes_out_of_order"));
            }
            if after.as_ref().is_some_and(|a| a.len() != KEY_ID_BYTES) {
                return Err(SyncError::Malformed("bad_key_id"));
            }
        }
        SyncRequest::Fetch { keys, .. } => {
            if keys.is_empty() || keys.len() > MAX_ASK_KEYS {
                return Err(SyncError::Malformed("too_many_keys"));
            }
            if keys.iter().any(|k| k.len() != KEY_ID_BYTES) {
                return Err(SyncError::Malformed("bad_key_id"));
            }
        }
        SyncRequest::Push {
            entries,
            credentials,
        } => {
            if entries.len() > MAX_ENTRIES_PER_MESSAGE || credentials.len() > MAX_CREDENTIALS {
                return Err(SyncError::Malformed("too_many_entries"));
            }
        }
    }
    Ok(())
}

/// The answering side of every request but [`SyncRequest::Push`] (which the caller merges
/// and answers with [`SyncResponse::Pushed`]), within the budget the request asks for
/// (kept between 1 KiB and [`LAN_BATCH_BYTES`]).
pub fn answer<R: Replica + ?Sized>(
    replica: &R,
    request: &SyncRequest,
) -> Result<SyncResponse, ReplicaError> {
    if let Err(error) = check_request(request) {
        return Ok(SyncResponse::Refused {
            reason: error.reason().into(),
        });
    }
    let budget = match request {
        SyncRequest::Buckets { budget, .. }
        | SyncRequest::Subtree { budget, .. }
        | SyncRequest::Fetch { budget, .. } => {
            (*budget as usize).clamp(*ANSWER_BUDGETS.start(), *ANSWER_BUDGETS.end())
        }
        _ => BATCH_BYTES,
    };
    Ok(match request {
        SyncRequest::Children { level, nodes } => {
            let mut sums = Vec::with_capacity(nodes.len() * FANOUT);
            for node in nodes {
                sums.extend_from_slice(replica.tree().children(*level, *node).unwrap_or(&[]));
            }
            SyncResponse::Children { sums }
        }
        SyncRequest::Buckets { buckets, .. } => {
            let mut listed = Vec::new();
            let mut oversized = Vec::new();
            let mut used = 0;
            for bucket in buckets {
                let count = replica
                    .tree()
                    .node(LEAF_LEVEL, u32::from(*bucket))
                    .map_or(0, |s| s.count());
                if count > MAX_BUCKET_LISTING {
                    oversized.push(*bucket);
                    continue;
                }
                let size = 8 + count as usize * LISTED_BYTES;
                // At least one bucket per answer, so a full bucket still makes progress.
                if !listed.is_empty() && used + size > budget {
                    break;
                }
                used += size;
                listed.push((*bucket, replica.bucket(*bucket)?));
            }
            SyncResponse::Buckets {
                buckets: listed,
                oversized,
            }
        }
        SyncRequest::Subtree { nodes, after, .. } => {
            let after = after.as_ref().and_then(|a| key_id_from(a));
            let mut entries: Vec<Entry> = Vec::new();
            let mut next = None;
            let mut used = 0;
            for (level, node) in nodes {
                // Nodes wholly before the cursor hold nothing still to send.
                if after.is_some_and(|a| *node_range(*level, *node).end() <= a) {
                    continue;
                }
                if used >= budget {
                    next = entries.last().map(|e| e.key_id());
                    break;
                }
                let (found, more) =
                    replica.subtree(*level, *node, after.as_ref(), budget - used)?;
                used += found.iter().map(entry_size).sum::<usize>();
                entries.extend(found);
                if more.is_some() {
                    next = more;
                    break;
                }
            }
            SyncResponse::Subtree {
                credentials: replica.credentials(&entries),
                entries,
                next: next.as_ref().map(id_bytes),
            }
        }
        SyncRequest::Fetch { keys, .. } => {
            let ids = keys.iter().filter_map(|k| key_id_from(k));
            let (entries, served) = winners_within(replica, ids, budget)?;
            SyncResponse::Fetched {
                credentials: replica.credentials(&entries),
                entries,
                // At most MAX_ASK_KEYS.
                served: served as u32,
            }
        }
        SyncRequest::Push { .. } => SyncResponse::Refused {
            reason: "push_is_merged_by_the_caller".into(),
        },
    })
}

/// What a request was, kept to read its answer.
#[derive(Debug, Clone)]
enum Asked {
    Children {
        level: u8,
        nodes: Vec<u32>,
    },
    Buckets {
        buckets: Vec<u16>,
    },
    Subtree {
        nodes: Vec<(u8, u32)>,
        after: Option<KeyId>,
    },
    Fetch {
        keys: Vec<KeyId>,
    },
    Push,
}

/// Counts of one session, for metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub requests: u64,
    pub entries_received: u64,
    pub entries_sent: u64,
}

/// The asking side of one sync with one peer. See the module docs.
#[derive(Debug, Default)]
pub struct SyncSession {
    children: VecDeque<(u8, u32)>,
    buckets: VecDeque<u16>,
    /// Subtrees this side holds nothing under, to page through the peer's entries.
    pulls: Vec<(u8, u32)>,
    /// Page requests cut short by the budget, to go on from their cursors.
    pull_rest: VecDeque<(Vec<(u8, u32)>, KeyId)>,
    /// Subtrees the peer holds nothing under, to push (with a cursor once started).
    pushes: VecDeque<(u8, u32, Option<KeyId>)>,
    fetch: VecDeque<KeyId>,
    send: VecDeque<KeyId>,
    in_flight: HashMap<u64, Asked>,
    next_id: u64,
    /// Whether this session also sends what the peer lacks (else it only fetches).
    push: bool,
    pub stats: SyncStats,
}

impl SyncSession {
    /// A session that starts at the root and exchanges both ways.
    pub fn new() -> Self {
        SyncSession {
            children: VecDeque::from([(0, 0)]),
            push: true,
            ..SyncSession::default()
        }
    }

    /// A session that only fetches what the peer has and this side lacks (or holds older).
    /// Two neighbours each running one converge just the same, and a node that comes back
    /// to several neighbours pulls what it missed once instead of having each of them push
    /// it at the same time.
    pub fn pull_only() -> Self {
        SyncSession {
            push: false,
            ..Self::new()
        }
    }

    /// Nothing left to ask or to wait for.
    pub fn is_done(&self) -> bool {
        self.in_flight.is_empty()
            && self.children.is_empty()
            && self.buckets.is_empty()
            && self.pulls.is_empty()
            && self.pull_rest.is_empty()
            && self.pushes.is_empty()
            && self.fetch.is_empty()
            && self.send.is_empty()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn ask(&mut self, asked: Asked) -> u64 {
        self.next_id += 1;
        self.in_flight.insert(self.next_id, asked);
        self.stats.requests += 1;
        self.next_id
    }

    /// The next requests, until `max_in_flight` are out. Each has an id for its answer.
    pub fn next_requests<R: Replica + ?Sized>(
        &mut self,
        replica: &R,
        budget: usize,
        max_in_flight: usize,
    ) -> Result<Vec<(u64, SyncRequest)>, ReplicaError> {
        let mut out = Vec::new();
        while self.in_flight.len() < max_in_flight {
            let Some(request) = self.next_request(replica, budget)? else {
                break;
            };
            out.push(request);
        }
        Ok(out)
    }

    fn next_request<R: Replica + ?Sized>(
        &mut self,
        replica: &R,
        budget: usize,
    ) -> Result<Option<(u64, SyncRequest)>, ReplicaError> {
        if self.stats.requests >= MAX_SESSION_REQUESTS {
            return Ok(None);
        }
        if self.fetch.len() > FETCH_FIRST_ABOVE {
            return Ok(Some(self.fetch_request(budget)));
        }
        if let Some(&(level, _)) = self.children.front() {
            let mut nodes = Vec::new();
            while nodes.len() < MAX_ASK_NODES {
                match self.children.front() {
                    Some(&(l, node)) if l == level => {
                        nodes.push(node);
                        self.children.pop_front();
                    }
                    _ => break,
                }
            }
            let id = self.ask(Asked::Children {
                level,
                nodes: nodes.clone(),
            });
            return Ok(Some((id, SyncRequest::Children { level, nodes })));
        }
        if !self.buckets.is_empty() {
            let take = self.buckets.len().min(MAX_ASK_BUCKETS);
            let buckets: Vec<u16> = self.buckets.drain(..take).collect();
            let id = self.ask(Asked::Buckets {
                buckets: buckets.clone(),
            });
            let budget = budget as u32;
            return Ok(Some((id, SyncRequest::Buckets { buckets, budget })));
        }
        if !self.fetch.is_empty() {
            return Ok(Some(self.fetch_request(budget)));
        }
        let page = match self.pull_rest.pop_front() {
            Some((nodes, after)) => Some((nodes, Some(after))),
            None if !self.pulls.is_empty() => {
                // Answers arrive in any order: sort, so the nodes are disjoint and ordered.
                self.pulls
                    .sort_unstable_by_key(|(level, node)| *node_range(*level, *node).start());
                let take = self.pulls.len().min(MAX_ASK_SUBTREES);
                Some((self.pulls.drain(..take).collect(), None))
            }
            None => None,
        };
        if let Some((nodes, after)) = page {
            let request = SyncRequest::Subtree {
                nodes: nodes.clone(),
                after: after.as_ref().map(id_bytes),
                budget: budget as u32,
            };
            let id = self.ask(Asked::Subtree { nodes, after });
            return Ok(Some((id, request)));
        }
        let (mut entries, sent) = winners_within(replica, self.send.iter().copied(), budget)?;
        self.send.drain(..sent);
        let mut used: usize = entries.iter().map(entry_size).sum();
        while used < budget && entries.len() < MAX_ENTRIES_PER_MESSAGE {
            let Some((level, node, after)) = self.pushes.pop_front() else {
                break;
            };
            let (found, next) = replica.subtree(level, node, after.as_ref(), budget - used)?;
            if let Some(next) = next {
                self.pushes.push_front((level, node, Some(next)));
            }
            used += found.iter().map(entry_size).sum::<usize>();
            entries.extend(found);
        }
        if entries.is_empty() {
            return Ok(None);
        }
        self.stats.entries_sent += entries.len() as u64;
        let credentials = replica.credentials(&entries);
        let id = self.ask(Asked::Push);
        Ok(Some((
            id,
            SyncRequest::Push {
                entries,
                credentials,
            },
        )))
    }

    fn fetch_request(&mut self, budget: usize) -> (u64, SyncRequest) {
        let take = self.fetch.len().min(MAX_ASK_KEYS);
        let keys: Vec<KeyId> = self.fetch.drain(..take).collect();
        let request = SyncRequest::Fetch {
            keys: keys.iter().map(id_bytes).collect(),
            budget: budget as u32,
        };
        (self.ask(Asked::Fetch { keys }), request)
    }

    /// Whether the session stopped at [`MAX_SESSION_REQUESTS`] with work left.
    pub fn cut_short(&self) -> bool {
        self.stats.requests >= MAX_SESSION_REQUESTS
    }

    /// The request `id` failed (the link dropped, a timeout): the session cannot finish;
    /// the caller drops it and starts a new one later.
    pub fn failed(&mut self, id: u64) {
        self.in_flight.remove(&id);
    }

    /// Reads the answer to request `id`. Returns the entries it brought, for the caller to
    /// verify and merge; an answer that does not fit what was asked is an error.
    pub fn on_response<R: Replica + ?Sized>(
        &mut self,
        replica: &R,
        id: u64,
        response: SyncResponse,
    ) -> Result<Vec<Entry>, SyncError> {
        let asked = self.in_flight.remove(&id).ok_or(SyncError::Unexpected)?;
        match (asked, response) {
            (_, SyncResponse::Refused { reason }) => Err(SyncError::Refused(reason)),
            (Asked::Children { level, nodes }, SyncResponse::Children { sums }) => {
                if sums.len() != nodes.len() * FANOUT {
                    return Err(SyncError::Malformed("wrong_sum_count"));
                }
                for (node, theirs) in nodes.iter().zip(sums.chunks(FANOUT)) {
                    let ours = replica.tree().children(level, *node).unwrap_or(&[]);
                    for (k, (mine, their)) in ours.iter().zip(theirs).enumerate() {
                        if mine == their {
                            continue;
                        }
                        let child = node * FANOUT as u32 + k as u32;
                        let child_level = level + 1;
                        if their.count() == 0 {
                            if self.push {
                                self.pushes.push_back((child_level, child, None));
                            }
                        } else if mine.count() == 0 {
                            self.pulls.push((child_level, child));
                        } else if child_level == LEAF_LEVEL {
                            // A leaf index is below 2^16 by construction.
                            self.buckets.push_back(child as u16);
                        } else {
                            self.children.push_back((child_level, child));
                        }
                    }
                }
                Ok(Vec::new())
            }
            (
                Asked::Buckets { buckets },
                SyncResponse::Buckets {
                    buckets: listed,
                    oversized,
                },
            ) => {
                let answered: Vec<u16> = listed
                    .iter()
                    .map(|(b, _)| *b)
                    .chain(oversized.iter().copied())
                    .collect();
                let mut unique = answered.clone();
                unique.sort_unstable();
                unique.dedup();
                if answered.is_empty()
                    || unique.len() != answered.len()
                    || answered.iter().any(|b| !buckets.contains(b))
                {
                    return Err(SyncError::Malformed("wrong_bucket"));
                }
                if listed
                    .iter()
                    .any(|(_, keys)| keys.len() as u64 > MAX_BUCKET_LISTING)
                {
                    return Err(SyncError::Malformed("listing_too_long"));
                }
                // Buckets that did not fit are asked again.
                for bucket in buckets.iter().rev().filter(|b| !answered.contains(b)) {
                    self.buckets.push_front(*bucket);
                }
                for bucket in oversized {
                    let node = u32::from(bucket);
                    self.pulls.push((LEAF_LEVEL, node));
                    if self.push {
                        self.pushes.push_back((LEAF_LEVEL, node, None));
                    }
                }
                for (bucket, theirs) in listed {
                    self.compare_bucket(replica, bucket, theirs)?;
                }
                Ok(Vec::new())
            }
            (
                Asked::Subtree { nodes, after },
                SyncResponse::Subtree {
                    entries,
                    credentials: _,
                    next,
                },
            ) => {
                // Strictly increasing ids, all past the cursor: every page moves on.
                let mut last = after;
                for entry in &entries {
                    let id = entry.key_id();
                    if !nodes.iter().any(|(level, node)| covers(*level, *node, &id)) {
                        return Err(SyncError::Malformed("entry_outside_subtree"));
                    }
                    if last.is_some_and(|l| id <= l) {
                        return Err(SyncError::Malformed("entries_out_of_order"));
                    }
                    last = Some(id);
                }
                if let Some(next) = next {
                    let next = key_id_from(&next).ok_or(SyncError::Malformed("bad_key_id"))?;
                    if entries.is_empty() || last != Some(next) {
                        return Err(SyncError::Malformed("no_progress"));
                    }
                    let rest: Vec<(u8, u32)> = nodes
                        .into_iter()
                        .filter(|(level, node)| *node_range(*level, *node).end() > next)
                        .collect();
                    if !rest.is_empty() {
                        self.pull_rest.push_back((rest, next));
                    }
                }
                self.stats.entries_received += entries.len() as u64;
                Ok(entries)
            }
            (
                Asked::Fetch { keys },
                SyncResponse::Fetched {
                    entries,
                    credentials: _,
                    served,
                },
            ) => {
                let served = served as usize;
                if served > keys.len()
                    || entries.len() > served
                    || (served == 0 && !keys.is_empty())
                {
                    return Err(SyncError::Malformed("wrong_served_count"));
                }
                if entries
                    .iter()
                    .any(|e| !keys[..served].contains(&e.key_id()))
                {
                    return Err(SyncError::Malformed("entry_not_asked"));
                }
                for key in keys[served..].iter().rev() {
                    self.fetch.push_front(*key);
                }
                self.stats.entries_received += entries.len() as u64;
                Ok(entries)
            }
            (Asked::Push, SyncResponse::Pushed { .. }) => Ok(Vec::new()),
            _ => Err(SyncError::Malformed("answer_of_the_wrong_kind")),
        }
    }

    fn compare_bucket<R: Replica + ?Sized>(
        &mut self,
        replica: &R,
        bucket: u16,
        theirs: Vec<Listed>,
    ) -> Result<(), SyncError> {
        let ours = replica
            .bucket(bucket)
            .map_err(|_| SyncError::Malformed("local_store_unreadable"))?;
        let mut mine: HashMap<KeyId, (u64, (u64, u32))> = ours
            .into_iter()
            .filter_map(|Listed(id, digest, wall, counter)| {
                Some((key_id_from(&id)?, (digest, (wall, counter))))
            })
            .collect();
        let mut listed = HashSet::new();
        for Listed(id, digest, wall, counter) in theirs {
            let id = key_id_from(&id).ok_or(SyncError::Malformed("bad_key_id"))?;
            if bucket_of(&id) != bucket {
                return Err(SyncError::Malformed("key_outside_bucket"));
            }
            if !listed.insert(id) {
                return Err(SyncError::Malformed("key_listed_twice"));
            }
            match mine.remove(&id) {
                None => self.fetch.push_back(id),
                Some((my_digest, _)) if my_digest == digest => {}
                Some((_, my_clock)) => match my_clock.cmp(&(wall, counter)) {
                    std::cmp::Ordering::Less => self.fetch.push_back(id),
                    std::cmp::Ordering::Greater if self.push => self.send.push_back(id),
                    std::cmp::Ordering::Greater => {}
                    std::cmp::Ordering::Equal => {
                        self.fetch.push_back(id);
                        if self.push {
                            self.send.push_back(id);
                        }
                    }
                },
            }
        }
        if self.push {
            // Held here only.
            self.send.extend(mine.into_keys());
        }
        Ok(())
    }
}

/// A replica in memory: for tests, simulations and benchmarks of the sync itself.
#[derive(Debug, Clone, Default)]
pub struct MemReplica {
    slots: std::collections::BTreeMap<KeyId, (u64, Slot)>,
    tree: DigestTree,
}

impl MemReplica {
    pub fn new() -> Self {
        Self::default()
    }

    /// Merges one entry (already verified).
    pub fn merge(&mut self, entry: Entry) -> Merged {
        let id = entry.key_id();
        match self.slots.get_mut(&id) {
            Some((digest, slot)) => {
                let merged = slot.merge(entry);
                if merged == Merged::Won {
                    let new = slot.winner.digest();
                    self.tree.update(&id, Some(*digest), new);
                    *digest = new;
                }
                merged
            }
            None => {
                let digest = entry.digest();
                self.tree.update(&id, None, digest);
                self.slots.insert(id, (digest, Slot::new(entry)));
                Merged::Won
            }
        }
    }

    pub fn get(&self, namespace: &str, key: &str) -> Option<&Slot> {
        self.slots
            .get(&crate::model::key_id(namespace, key))
            .map(|(_, s)| s)
    }

    /// Every key's winner, in key-id order.
    pub fn winners(&self) -> impl Iterator<Item = &Entry> {
        self.slots.values().map(|(_, s)| &s.winner)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

fn bucket_range(bucket: u16) -> std::ops::RangeInclusive<KeyId> {
    let mut low = [0u8; KEY_ID_BYTES];
    low[..2].copy_from_slice(&bucket.to_be_bytes());
    let mut high = [0xffu8; KEY_ID_BYTES];
    high[..2].copy_from_slice(&bucket.to_be_bytes());
    low..=high
}

/// The key-id range a node covers.
pub fn node_range(level: u8, node: u32) -> std::ops::RangeInclusive<KeyId> {
    let shift = 4 * u32::from(LEAF_LEVEL - level);
    let first = (node << shift) as u16;
    let last = (((node + 1) << shift) - 1) as u16;
    *bucket_range(first).start()..=*bucket_range(last).end()
}

impl Replica for MemReplica {
    fn tree(&self) -> &DigestTree {
        &self.tree
    }

    fn bucket(&self, bucket: u16) -> Result<Vec<Listed>, ReplicaError> {
        Ok(self
            .slots
            .range(bucket_range(bucket))
            .map(|(id, (digest, slot))| listed(id, *digest, &slot.winner))
            .collect())
    }

    fn subtree(
        &self,
        level: u8,
        node: u32,
        after: Option<&KeyId>,
        budget: usize,
    ) -> Result<(Vec<Entry>, Option<KeyId>), ReplicaError> {
        let range = node_range(level, node);
        let iter = self
            .slots
            .range(range)
            .filter(|(id, _)| after.is_none_or(|a| *id > a))
            .map(|(id, (_, slot))| Ok((*id, slot.winner.clone())));
        take_budget(iter, budget)
    }

    fn winner(&self, id: &KeyId) -> Result<Option<Entry>, ReplicaError> {
        Ok(self.slots.get(id).map(|(_, s)| s.winner.clone()))
    }
}

/// A bucket listing's line for one key.
pub fn listed(id: &KeyId, digest: u64, winner: &Entry) -> Listed {
    Listed(
        id_bytes(id),
        digest,
        winner.version.hlc.wall_ms,
        winner.version.hlc.counter,
    )
}

/// The winners of `ids`, in order, until `budget` bytes (at least one entry) or
/// [`MAX_ENTRIES_PER_MESSAGE`]; with how many ids were consumed (ids held nowhere count).
fn winners_within<R: Replica + ?Sized>(
    replica: &R,
    ids: impl Iterator<Item = KeyId>,
    budget: usize,
) -> Result<(Vec<Entry>, usize), ReplicaError> {
    let mut entries = Vec::new();
    let mut used = 0;
    let mut consumed = 0;
    for id in ids {
        if entries.len() >= MAX_ENTRIES_PER_MESSAGE {
            break;
        }
        if let Some(entry) = replica.winner(&id)? {
            let size = entry_size(&entry);
            if !entries.is_empty() && used + size > budget {
                break;
            }
            used += size;
            entries.push(entry);
        }
        consumed += 1;
    }
    Ok((entries, consumed))
}

/// Takes entries until `budget` bytes (at least one); the id to resume after if more remain.
pub fn take_budget(
    iter: impl Iterator<Item = Result<(KeyId, Entry), ReplicaError>>,
    budget: usize,
) -> Result<(Vec<Entry>, Option<KeyId>), ReplicaError> {
    let mut entries = Vec::new();
    let mut used = 0;
    let mut last = None;
    for item in iter {
        let (id, entry) = item?;
        let size = entry_size(&entry);
        if !entries.is_empty() && (used + size > budget || entries.len() >= MAX_ENTRIES_PER_MESSAGE)
        {
            return Ok((entries, last));
        }
        used += size;
        last = Some(id);
        entries.push(entry);
    }
    Ok((entries, None))
}

/// Runs a whole session of `a` against `b` in memory, both ways merging, and returns the
/// session's counts and the bytes its messages took (CBOR). For tests and benchmarks.
pub fn sync_in_memory(a: &mut MemReplica, b: &mut MemReplica, budget: usize) -> (SyncStats, u64) {
    run_in_memory(SyncSession::new(), a, b, budget)
}

/// [`sync_in_memory`] with a given session (e.g. [`SyncSession::pull_only`]).
pub fn run_in_memory(
    mut session: SyncSession,
    a: &mut MemReplica,
    b: &mut MemReplica,
    budget: usize,
) -> (SyncStats, u64) {
    let mut bytes = 0u64;
    // A memory replica never fails a read.
    while let Ok(requests) = session.next_requests(a, budget, 4) {
        if requests.is_empty() && session.in_flight() == 0 {
            break;
        }
        for (id, request) in requests {
            bytes += encoded_len(&request);
            let response = match &request {
                SyncRequest::Push { entries, .. } => {
                    for entry in entries {
                        b.merge(entry.clone());
                    }
                    SyncResponse::Pushed {
                        accepted: entries.len() as u32,
                        refused: 0,
                    }
                }
                other => match answer(b, other) {
                    Ok(r) => r,
                    Err(_) => return (session.stats, bytes),
                },
            };
            bytes += encoded_len(&response);
            match session.on_response(a, id, response) {
                Ok(entries) => {
                    for entry in entries {
                        a.merge(entry);
                    }
                }
                Err(_) => return (session.stats, bytes),
            }
        }
    }
    (session.stats, bytes)
}

/// Bytes a message takes encoded.
pub fn encoded_len<T: Serialize>(message: &T) -> u64 {
    fogmesh_wire::codec::encode(message).map_or(0, |b| b.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Hlc, Version};
    use proptest::prelude::*;

    fn entry(author: u8, key: u32, wall_ms: u64, value: Option<u8>) -> Entry {
        Entry {
            namespace: "app".into(),
            key: format!("k{key}"),
            value: value.map(|v| ByteBuf::from(vec![v; 100])),
            version: Version {
                hlc: Hlc {
                    wall_ms,
                    counter: 0,
                },
                author: ByteBuf::from(vec![author]),
            },
            signature: ByteBuf::from(vec![author, 0xee]),
        }
    }

    fn same(a: &MemReplica, b: &MemReplica) -> bool {
        a.tree().root() == b.tree().root() && a.winners().eq(b.winners())
    }

    #[test]
    fn replicas_in_sync_cost_one_round_trip() {
        let mut a = MemReplica::new();
        let mut b = MemReplica::new();
        for k in 0..500 {
            a.merge(entry(1, k, 10, Some(1)));
            b.merge(entry(1, k, 10, Some(1)));
        }
        let (stats, bytes) = sync_in_memory(&mut a, &mut b, BATCH_BYTES);
        assert_eq!(stats.requests, 1);
        assert!(bytes < 600, "{bytes} bytes");
    }

    #[test]
    fn one_differing_key_among_many_is_found_by_a_few_small_messages() {
        let mut a = MemReplica::new();
        let mut b = MemReplica::new();
        for k in 0..20_000 {
            a.merge(entry(1, k, 10, Some(1)));
            b.merge(entry(1, k, 10, Some(1)));
        }
        b.merge(entry(2, 77, 11, Some(2)));
        let (stats, bytes) = sync_in_memory(&mut a, &mut b, BATCH_BYTES);
        assert!(same(&a, &b));
        assert_eq!(stats.entries_received, 1);
        assert_eq!(stats.entries_sent, 0);
        // Four levels of 16 sums, one bucket listing, one entry.
        assert!(stats.requests <= 6, "{stats:?}");
        assert!(bytes < 4_000, "{bytes} bytes");
    }

    #[test]
    fn an_empty_replica_pulls_everything_in_pages_and_sends_nothing_back() {
        let mut a = MemReplica::new();
        let mut b = MemReplica::new();
        for k in 0..3_000 {
            b.merge(entry(1, k, 10, Some(1)));
        }
        let (stats, bytes) = sync_in_memory(&mut a, &mut b, BATCH_BYTES);
        assert!(same(&a, &b));
        assert_eq!(stats.entries_received, 3_000);
        assert_eq!(stats.entries_sent, 0);
        let data: usize = b
            .winners()
            .map(|e| fogmesh_wire::codec::encode(e).unwrap().len())
            .sum();
        assert!(
            (bytes as f64) < 1.2 * data as f64,
            "{bytes} bytes for {data} of entries"
        );
    }

    #[test]
    fn a_pull_only_session_fetches_and_sends_nothing() {
        let mut a = MemReplica::new();
        let mut b = MemReplica::new();
        for k in 0..300 {
            a.merge(entry(1, k, 10, Some(1)));
            b.merge(entry(2, k + 150, 11, Some(2)));
        }
        let before = b.tree().root();
        let (stats, _) = run_in_memory(SyncSession::pull_only(), &mut a, &mut b, BATCH_BYTES);
        assert_eq!(stats.entries_sent, 0);
        assert_eq!(b.tree().root(), before, "the peer is untouched");
        assert_eq!(a.len(), 450);
        // b then pulls from a: both hold the same.
        run_in_memory(SyncSession::pull_only(), &mut b, &mut a, BATCH_BYTES);
        assert!(same(&a, &b));
    }

    #[test]
    fn a_subtree_answer_must_move_past_its_cursor() {
        let mut b = MemReplica::new();
        for k in 0..200 {
            b.merge(entry(1, k, 10, Some(1)));
        }
        let a = MemReplica::new();
        let mut session = SyncSession::new();
        let (id, request) = session.next_requests(&a, 600, 1).unwrap().remove(0);
        let answer_ = answer(&b, &request).unwrap();
        session.on_response(&a, id, answer_).unwrap();
        // Everything under the root's children is pulled by subtree pages.
        let (id, request) = session.next_requests(&a, 600, 1).unwrap().remove(0);
        assert!(matches!(request, SyncRequest::Subtree { .. }));
        let SyncResponse::Subtree {
            mut entries, next, ..
        } = answer(&b, &request).unwrap()
        else {
            panic!("a subtree page");
        };
        assert!(entries.len() > 1 && next.is_some());
        // The same page in another order, or a cursor that does not move: refused.
        entries.reverse();
        let reordered = SyncResponse::Subtree {
            entries,
            credentials: Vec::new(),
            next: next.clone(),
        };
        assert_eq!(
            session.on_response(&a, id, reordered),
            Err(SyncError::Malformed("entries_out_of_order"))
        );
        let mut session = SyncSession::new();
        let (id, request) = session.next_requests(&a, 600, 1).unwrap().remove(0);
        session
            .on_response(&a, id, answer(&b, &request).unwrap())
            .unwrap();
        let (id, request) = session.next_requests(&a, 600, 1).unwrap().remove(0);
        let SyncResponse::Subtree { entries, .. } = answer(&b, &request).unwrap() else {
            panic!("a subtree page");
        };
        let stuck = SyncResponse::Subtree {
            entries: entries[..1].to_vec(),
            credentials: Vec::new(),
            next: Some(ByteBuf::from(vec![0; KEY_ID_BYTES])),
        };
        assert_eq!(
            session.on_response(&a, id, stuck),
            Err(SyncError::Malformed("no_progress"))
        );
    }

    #[test]
    fn malformed_answers_and_requests_are_refused() {
        let a = MemReplica::new();
        let mut session = SyncSession::new();
        let (id, _) = session.next_requests(&a, BATCH_BYTES, 1).unwrap().remove(0);
        let wrong = SyncResponse::Children {
            sums: vec![NodeSum::default(); 3],
        };
        assert_eq!(
            session.on_response(&a, id, wrong),
            Err(SyncError::Malformed("wrong_sum_count"))
        );
        assert_eq!(
            session.on_response(
                &a,
                99,
                SyncResponse::Pushed {
                    accepted: 0,
                    refused: 0
                }
            ),
            Err(SyncError::Unexpected)
        );
        for bad in [
            SyncRequest::Children {
                level: 4,
                nodes: vec![0],
            },
            SyncRequest::Children {
                level: 1,
                nodes: vec![16],
            },
            SyncRequest::Fetch {
                keys: vec![ByteBuf::from(vec![1, 2])],
                budget: 100,
            },
            SyncRequest::Buckets {
                buckets: vec![],
                budget: 100,
            },
        ] {
            assert!(matches!(
                answer(&a, &bad).unwrap(),
                SyncResponse::Refused { .. }
            ));
        }
    }

    fn ops() -> impl Strategy<Value = Vec<(Entry, u8)>> {
        // (entry, which replicas it is delivered to: a bit per replica; 0 = dropped
        // everywhere but the first).
        proptest::collection::vec(
            (
                (0u8..4, 0u32..40, 0u64..8, proptest::option::of(0u8..3)),
                0u8..8,
            )
                .prop_map(|((a, k, w, v), mask)| (entry(a, k, w, v), mask)),
            1..120,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any operations delivered to three replicas in any subsets, orders and with
        /// duplicates: after anti-entropy around the ring, all three hold the same winners.
        #[test]
        fn anti_entropy_repairs_any_delivery(ops in ops(), seed in any::<u64>(), budget in 200usize..4000) {
            let mut replicas = [MemReplica::new(), MemReplica::new(), MemReplica::new()];
            let mut state = seed | 1;
            for (entry, mask) in &ops {
                let mask = if *mask == 0 { 1 } else { *mask };
                for (i, r) in replicas.iter_mut().enumerate() {
                    if mask & (1 << i) != 0 {
                        r.merge(entry.clone());
                        state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                        if state % 3 == 0 {
                            r.merge(entry.clone());
                        }
                    }
                }
            }
            let (first, rest) = replicas.split_at_mut(1);
            let (second, third) = rest.split_at_mut(1);
            sync_in_memory(&mut first[0], &mut second[0], budget);
            sync_in_memory(&mut second[0], &mut third[0], budget);
            sync_in_memory(&mut third[0], &mut first[0], budget);
            prop_assert!(same(&first[0], &second[0]));
            prop_assert!(same(&second[0], &third[0]));
            // And the winners are what merging everything at once gives.
            let mut all = MemReplica::new();
            for (entry, _) in &ops {
                all.merge(entry.clone());
            }
            prop_assert!(same(&all, &first[0]));
        }
    }
}
