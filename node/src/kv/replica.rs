//! The replicated store's replica on sled: slots by key id, a name index for listing, the
//! authors' credentials, and the in-memory digest tree rebuilt at open.
//!
//! Tables:
//! - `kv_slots`: hex key id → [`KvRecord`] (the key's [`Slot`] and its winner's digest).
//!   Ordered by key id, so a digest-tree node is a key prefix and a bucket one range scan.
//! - `kv_names`: `namespace/key` → nothing, for `kv list` in name order.
//! - `kv_credentials`: hex author id → the author's ticket, sent along with its entries.
//!
//! Writes are buffered sled writes made by the caller's thread (microseconds); the caller
//! makes them durable with a flush of the whole store (the node uses the storage task's
//! durable path, so concurrent writes share one flush) and acknowledges only then. A slot
//! is written before its name; a crash between the two leaves a slot without a name, which
//! [`KvStore::open`] restores, so nothing acknowledged is missing from `kv list`.
//!
//! A row that cannot be read fails [`KvStore::open`] with the table, key and store path:
//! serving part of a replicated store would make this node push "I have nothing there" to
//! its peers' sync, and take wrong decisions on what it lacks.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use fogmesh_kv::sync::{listed, take_budget, Listed, Replica};
use fogmesh_kv::tree::{node_prefix, DigestTree};
use fogmesh_kv::{key_id, Entry, KeyId, Merged, ReplicaError, Slot};
use fogmesh_store::{Store, StoreError, Table};

pub const TABLE_SLOTS: &str = "kv_slots";
pub const TABLE_NAMES: &str = "kv_names";
pub const TABLE_CREDENTIALS: &str = "kv_credentials";
/// Authors whose credentials are kept; beyond, new authors' credentials are not stored
/// (their entries still merge when verified; this node just cannot vouch for them).
pub const MAX_AUTHORS: usize = 10_000;

/// What merging an entry did, and whose the key's winner was before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeOutcome {
    pub merged: Merged,
    /// The author of the key's previous winner (`None`: a new key).
    pub previous: Option<ByteBuf>,
}

/// What `kv_slots` holds for a key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KvRecord {
    pub digest: u64,
    pub slot: Slot,
}

/// See the module docs.
#[derive(Debug)]
pub struct KvStore {
    store: Store,
    slots: Table<KvRecord>,
    names: Table<()>,
    credentials_table: Table<ByteBuf>,
    credentials: HashMap<Vec<u8>, ByteBuf>,
    tree: DigestTree,
    value_bytes: u64,
    /// The latest clock among the winners, so a restarted node's clock starts past it.
    max_hlc: fogmesh_kv::Hlc,
}

fn id_from_hex(text: &str) -> Option<KeyId> {
    hex::decode(text).ok()?.try_into().ok()
}

fn value_len(slot: &Slot) -> u64 {
    slot.value().map_or(0, |v| v.len() as u64)
}

impl KvStore {
    /// Opens the tables and rebuilds the digest tree; fails on any unreadable row.
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        let slots: Table<KvRecord> = store.table(TABLE_SLOTS)?;
        let names: Table<()> = store.table(TABLE_NAMES)?;
        let credentials_table: Table<ByteBuf> = store.table(TABLE_CREDENTIALS)?;
        let mut tree = DigestTree::new();
        let mut value_bytes = 0;
        let mut max_hlc = fogmesh_kv::Hlc::default();
        for row in slots.entries() {
            let (hex_id, record) = row?;
            let id = id_from_hex(&hex_id).ok_or_else(|| StoreError::Corrupt {
                table: TABLE_SLOTS,
                key: hex_id.clone(),
                source: fogmesh_wire::CodecError::Malformed("the key is not a key id".into()),
            })?;
            tree.update(&id, None, record.digest);
            value_bytes += value_len(&record.slot);
            max_hlc = max_hlc.max(record.slot.winner.version.hlc);
            let name = record.slot.winner.name();
            if !names.contains_key(&name)? {
                names.put(&name, &())?;
            }
        }
        let mut credentials = HashMap::new();
        for row in credentials_table.entries() {
            let (author, ticket) = row?;
            if let Ok(author) = hex::decode(&author) {
                credentials.insert(author, ticket);
            }
        }
        Ok(KvStore {
            store: store.clone(),
            slots,
            names,
            credentials_table,
            credentials,
            tree,
            value_bytes,
            max_hlc,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A key's slot.
    pub fn get(&self, namespace: &str, key: &str) -> Result<Option<Slot>, StoreError> {
        Ok(self
            .slots
            .get(&hex::encode(key_id(namespace, key)))?
            .map(|r| r.slot))
    }

    /// Merges one entry, already checked and verified. Buffered: flush to make it durable.
    pub fn merge(&mut self, entry: Entry) -> Result<MergeOutcome, StoreError> {
        let id = entry.key_id();
        let row = hex::encode(id);
        let (merged, record, old_digest, old_bytes, previous) = match self.slots.get(&row)? {
            Some(mut record) => {
                let old_bytes = value_len(&record.slot);
                let previous = Some(record.slot.winner.version.author.clone());
                let merged = record.slot.merge(entry);
                if merged == Merged::Duplicate {
                    return Ok(MergeOutcome { merged, previous });
                }
                let old = record.digest;
                record.digest = record.slot.winner.digest();
                (merged, record, Some(old), old_bytes, previous)
            }
            None => {
                let name = entry.name();
                let record = KvRecord {
                    digest: entry.digest(),
                    slot: Slot::new(entry),
                };
                self.slots.put(&row, &record)?;
                self.names.put(&name, &())?;
                self.tree.update(&id, None, record.digest);
                self.value_bytes += value_len(&record.slot);
                return Ok(MergeOutcome {
                    merged: Merged::Won,
                    previous: None,
                });
            }
        };
        self.slots.put(&row, &record)?;
        if merged == Merged::Won {
            self.tree.update(&id, old_digest, record.digest);
            self.value_bytes = self.value_bytes - old_bytes + value_len(&record.slot);
        }
        Ok(MergeOutcome { merged, previous })
    }

    /// Slots of `namespace` whose key starts with `prefix`, in key order, after the key
    /// `after` if given, at most `limit`.
    pub fn list(
        &self,
        namespace: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Slot>, StoreError> {
        let start = format!("{namespace}/{prefix}");
        let after = after.map(|a| format!("{namespace}/{a}"));
        let mut out = Vec::new();
        for row in self.names.scan_prefix(&start, after.as_deref()) {
            if out.len() >= limit {
                break;
            }
            let (name, ()) = row?;
            let Some((ns, key)) = name.split_once('/') else {
                continue;
            };
            if let Some(slot) = self.get(ns, key)? {
                out.push(slot);
            }
        }
        Ok(out)
    }

    /// The latest clock of any winner held when the store was opened.
    pub fn max_hlc_at_open(&self) -> fogmesh_kv::Hlc {
        self.max_hlc
    }

    /// Keys held (tombstones included).
    pub fn keys(&self) -> u64 {
        self.tree.keys()
    }

    /// Bytes of the live values.
    pub fn value_bytes(&self) -> u64 {
        self.value_bytes
    }

    /// Remembers an author's (verified) ticket, to send along with its entries.
    pub fn put_credential(&mut self, author: &[u8], ticket: &[u8]) -> Result<(), StoreError> {
        if self.credentials.get(author).is_some_and(|t| t == ticket)
            || (self.credentials.len() >= MAX_AUTHORS && !self.credentials.contains_key(author))
        {
            return Ok(());
        }
        let ticket = ByteBuf::from(ticket.to_vec());
        self.credentials_table.put(&hex::encode(author), &ticket)?;
        self.credentials.insert(author.to_vec(), ticket);
        Ok(())
    }

    pub fn credential(&self, author: &[u8]) -> Option<&ByteBuf> {
        self.credentials.get(author)
    }
}

fn unreadable(error: StoreError) -> ReplicaError {
    ReplicaError(error.to_string())
}

impl Replica for KvStore {
    fn tree(&self) -> &DigestTree {
        &self.tree
    }

    fn bucket(&self, bucket: u16) -> Result<Vec<Listed>, ReplicaError> {
        let prefix = format!("{bucket:04x}");
        let mut out = Vec::new();
        for row in self.slots.scan_prefix(&prefix, None) {
            let (row, record) = row.map_err(unreadable)?;
            if let Some(id) = id_from_hex(&row) {
                out.push(listed(&id, record.digest, &record.slot.winner));
            }
        }
        Ok(out)
    }

    fn subtree(
        &self,
        level: u8,
        node: u32,
        after: Option<&KeyId>,
        budget: usize,
    ) -> Result<(Vec<Entry>, Option<KeyId>), ReplicaError> {
        let prefix = node_prefix(level, node);
        let after = after.map(hex::encode);
        let iter = self
            .slots
            .scan_prefix(&prefix, after.as_deref())
            .filter_map(|row| match row {
                Ok((row, record)) => id_from_hex(&row).map(|id| Ok((id, record.slot.winner))),
                Err(error) => Some(Err(unreadable(error))),
            });
        take_budget(iter, budget)
    }

    fn winner(&self, id: &KeyId) -> Result<Option<Entry>, ReplicaError> {
        Ok(self
            .slots
            .get(&hex::encode(id))
            .map_err(unreadable)?
            .map(|r| r.slot.winner))
    }

    fn credentials(&self, entries: &[Entry]) -> Vec<ByteBuf> {
        let mut out: Vec<ByteBuf> = Vec::new();
        for entry in entries {
            if let Some(ticket) = self.credentials.get(entry.version.author.as_slice()) {
                if !out.contains(ticket) && out.len() < fogmesh_kv::sync::MAX_CREDENTIALS {
                    out.push(ticket.clone());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fogmesh_kv::sync::{sync_in_memory, MemReplica, SyncSession, BATCH_BYTES};
    use fogmesh_kv::{Hlc, Version};
    use fogmesh_store::StoreOptions;

    fn entry(key: &str, wall_ms: u64, value: Option<&[u8]>) -> Entry {
        Entry {
            namespace: "app".into(),
            key: key.into(),
            value: value.map(|v| ByteBuf::from(v.to_vec())),
            version: Version {
                hlc: Hlc {
                    wall_ms,
                    counter: 0,
                },
                author: ByteBuf::from(vec![1]),
            },
            signature: ByteBuf::from(vec![2]),
        }
    }

    #[test]
    fn slots_survive_reopen_and_the_tree_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let root;
        {
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            let mut kv = KvStore::open(&store).unwrap();
            assert_eq!(
                kv.merge(entry("a", 1, Some(b"1"))).unwrap().merged,
                Merged::Won
            );
            assert_eq!(
                kv.merge(entry("a", 2, Some(b"22"))).unwrap().merged,
                Merged::Won
            );
            assert_eq!(
                kv.merge(entry("a", 1, Some(b"1"))).unwrap().merged,
                Merged::Duplicate
            );
            kv.merge(entry("b", 1, None)).unwrap();
            kv.merge(entry("ab", 1, Some(b"x"))).unwrap();
            assert_eq!(kv.value_bytes(), 3);
            root = kv.tree().root();
            store.flush().unwrap();
        }
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let kv = KvStore::open(&store).unwrap();
        assert_eq!(kv.tree().root(), root);
        assert_eq!(kv.keys(), 3);
        assert_eq!(kv.value_bytes(), 3);
        let a = kv.get("app", "a").unwrap().unwrap();
        assert_eq!(a.value(), Some(&b"22"[..]));
        assert_eq!(a.overwritten.len(), 1);
        let listed: Vec<String> = kv
            .list("app", "a", None, 10)
            .unwrap()
            .into_iter()
            .map(|s| s.winner.key)
            .collect();
        assert_eq!(listed, vec!["a", "ab"]);
        let clamped: Vec<String> = kv
            .list("app", "b", Some("a"), 10)
            .unwrap()
            .into_iter()
            .map(|s| s.winner.key)
            .collect();
        assert_eq!(clamped, vec!["b"], "paging stays within the prefix");
        assert_eq!(kv.max_hlc_at_open().wall_ms, 2);
        // A cursor past a node's range finds nothing (and does not panic).
        let (found, next) = kv.subtree(1, 0, Some(&[0xff; 16]), 1024).unwrap();
        assert!(found.is_empty() && next.is_none());
        let after: Vec<String> = kv
            .list("app", "", Some("a"), 10)
            .unwrap()
            .into_iter()
            .map(|s| s.winner.key)
            .collect();
        assert_eq!(after, vec!["ab", "b"]);
    }

    #[test]
    fn an_unreadable_slot_fails_the_open_with_where_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let slots: Table<KvRecord> = store.table(TABLE_SLOTS).unwrap();
        slots
            .put_raw_for_test(&hex::encode([0; 16]), b"\xff\x00junk")
            .unwrap();
        let error = KvStore::open(&store).unwrap_err().to_string();
        assert!(error.contains(TABLE_SLOTS), "{error}");
    }

    #[test]
    fn a_sled_replica_syncs_with_a_memory_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let mut kv = KvStore::open(&store).unwrap();
        let mut mem = MemReplica::new();
        for k in 0..400 {
            kv.merge(entry(&format!("k{k}"), 5, Some(b"v"))).unwrap();
            if k % 3 == 0 {
                mem.merge(entry(&format!("k{k}"), 6, Some(b"newer")));
            }
        }
        for k in 400..500 {
            mem.merge(entry(&format!("k{k}"), 5, Some(b"v")));
        }
        // The sled replica asks; what it receives it merges.
        let mut session = SyncSession::new();
        loop {
            let requests = session.next_requests(&kv, BATCH_BYTES, 4).unwrap();
            if requests.is_empty() {
                break;
            }
            for (id, request) in requests {
                let response = match &request {
                    fogmesh_kv::sync::SyncRequest::Push { entries, .. } => {
                        for e in entries {
                            mem.merge(e.clone());
                        }
                        fogmesh_kv::sync::SyncResponse::Pushed {
                            accepted: 0,
                            refused: 0,
                        }
                    }
                    other => fogmesh_kv::sync::answer(&mem, other).unwrap(),
                };
                for e in session.on_response(&kv, id, response).unwrap() {
                    kv.merge(e).unwrap();
                }
            }
        }
        assert_eq!(kv.tree().root(), mem.tree().root());
        assert_eq!(kv.keys(), 500);
        assert_eq!(
            kv.get("app", "k3").unwrap().unwrap().value(),
            Some(&b"newer"[..])
        );
        // And a second session finds nothing to do.
        let mut again = mem.clone();
        let mut copy = MemReplica::new();
        for e in mem.winners() {
            copy.merge(e.clone());
        }
        let (stats, _) = sync_in_memory(&mut again, &mut copy, BATCH_BYTES);
        assert_eq!(stats.requests, 1);
    }
}
