//! The digest tree anti-entropy compares: a fixed-shape summary of a replica's keyspace.
//!
//! The keyspace is split by key id ([`crate::model::key_id`], a SHA-256 prefix, so keys spread
//! evenly) into [`BUCKETS`] leaf buckets, by the id's first 16 bits. Above them sit
//! [`LEVELS`]` - 1` levels of nodes with [`FANOUT`] children each: the node at level `L`
//! and index `i` covers every key whose id begins with the `L` hex digits of `i`, so a
//! node is also a key-id prefix, which is how a replica lists "everything under" one.
//!
//! Each node holds a [`NodeSum`]: how many keys it covers and the XOR of their winners'
//! digests ([`crate::model::Entry::digest`]). XOR makes every change O(levels): a key's new
//! winner is XORed out (the old digest) and in (the new one) along its path, so the tree is
//! kept in memory (about 1.1 MB) and never recomputed. It is not a cryptographic
//! commitment: it only has to tell honest replicas where they differ; a peer that wants to
//! hide entries can simply not send them.
//!
//! Two replicas whose sums agree at a node hold the same winners under it (up to a 2^-64
//! accident). Finding one differing key among a million therefore walks one path: four
//! rounds of 16 sums, then one bucket of about 15 keys (docs/kv.md, "Anti-entropy").

use serde::{Deserialize, Serialize};

use crate::model::KeyId;

/// Children per node: one hex digit of the key id per level.
pub const FANOUT: usize = 16;
/// Levels, root (0) to leaves (`LEVELS - 1`).
pub const LEVELS: usize = 5;
/// The leaf level.
pub const LEAF_LEVEL: u8 = (LEVELS - 1) as u8;
/// Leaf buckets: `FANOUT^(LEVELS-1)`, the key id's first 16 bits.
pub const BUCKETS: usize = 1 << 16;

/// A node's summary: how many keys it covers and the XOR of their digests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSum(pub u64, pub u64);

impl NodeSum {
    pub fn count(&self) -> u64 {
        self.1
    }
}

/// The leaf bucket of a key id.
pub fn bucket_of(id: &KeyId) -> u16 {
    u16::from_be_bytes([id[0], id[1]])
}

/// Nodes at `level`, or `None` past the leaves.
pub fn nodes_at(level: u8) -> Option<u32> {
    (level <= LEAF_LEVEL).then(|| 1u32 << (4 * u32::from(level)))
}

/// The key-id prefix (lower-case hex, `level` digits) a node covers.
pub fn node_prefix(level: u8, index: u32) -> String {
    if level == 0 {
        return String::new();
    }
    format!("{index:0width$x}", width = usize::from(level))
}

/// Whether `id` falls under the node at `level`, `index`.
pub fn covers(level: u8, index: u32, id: &KeyId) -> bool {
    if level == 0 {
        return true;
    }
    let shift = 4 * u32::from(LEAF_LEVEL - level);
    u32::from(bucket_of(id)) >> shift == index
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct DigestTree {
    /// `levels[L]` holds the `16^L` sums of level `L`.
    levels: Vec<Vec<NodeSum>>,
}

impl Default for DigestTree {
    fn default() -> Self {
        Self::new()
    }
}

impl DigestTree {
    pub fn new() -> Self {
        let levels = (0..LEVELS as u8)
            .map(|l| vec![NodeSum::default(); nodes_at(l).unwrap_or(0) as usize])
            .collect();
        DigestTree { levels }
    }

    /// Records a key's winner: `old` is the digest it replaces (`None` for a new key).
    pub fn update(&mut self, id: &KeyId, old: Option<u64>, new: u64) {
        let bucket = u32::from(bucket_of(id));
        let (xor, added) = match old {
            Some(old) => (old ^ new, 0),
            None => (new, 1),
        };
        for level in 0..LEVELS {
            let index = (bucket >> (4 * (LEVELS - 1 - level))) as usize;
            let sum = &mut self.levels[level][index];
            sum.0 ^= xor;
            sum.1 += added;
        }
    }

    /// Forgets a key whose winner had `digest` (a collected tombstone).
    pub fn remove(&mut self, id: &KeyId, digest: u64) {
        let bucket = u32::from(bucket_of(id));
        for level in 0..LEVELS {
            let index = (bucket >> (4 * (LEVELS - 1 - level))) as usize;
            let sum = &mut self.levels[level][index];
            sum.0 ^= digest;
            sum.1 = sum.1.saturating_sub(1);
        }
    }

    /// The sum of one node, `None` if there is no such node.
    pub fn node(&self, level: u8, index: u32) -> Option<NodeSum> {
        self.levels
            .get(usize::from(level))?
            .get(index as usize)
            .copied()
    }

    /// The sums of a node's [`FANOUT`] children; `None` for a leaf or no such node.
    pub fn children(&self, level: u8, index: u32) -> Option<&[NodeSum]> {
        if level >= LEAF_LEVEL || index >= nodes_at(level)? {
            return None;
        }
        let start = index as usize * FANOUT;
        self.levels
            .get(usize::from(level) + 1)?
            .get(start..start + FANOUT)
    }

    /// Keys covered (the root's count).
    pub fn keys(&self) -> u64 {
        self.levels[0][0].1
    }

    pub fn root(&self) -> NodeSum {
        self.levels[0][0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::key_id;

    #[test]
    fn updates_move_every_level_and_cancel_out() {
        let mut tree = DigestTree::new();
        let a = key_id("app", "a");
        let b = key_id("app", "b");
        tree.update(&a, None, 7);
        tree.update(&b, None, 9);
        assert_eq!(tree.root(), NodeSum(7 ^ 9, 2));
        let leaf = u32::from(bucket_of(&a));
        assert_eq!(tree.node(LEAF_LEVEL, leaf).unwrap().count(), 1);
        tree.update(&a, Some(7), 11);
        assert_eq!(tree.root(), NodeSum(11 ^ 9, 2));
        tree.remove(&a, 11);
        tree.remove(&b, 9);
        assert_eq!(tree.root(), NodeSum::default());
        for level in 0..LEVELS as u8 {
            for i in 0..nodes_at(level).unwrap() {
                assert_eq!(tree.node(level, i), Some(NodeSum::default()));
            }
        }
    }

    #[test]
    fn a_node_is_a_key_id_prefix() {
        let id = key_id("app", "some key");
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let bucket = u32::from(bucket_of(&id));
        for level in 0..LEVELS as u8 {
            let index = bucket >> (4 * u32::from(LEAF_LEVEL - level));
            assert!(covers(level, index, &id));
            assert!(!covers(level, index ^ 1, &id) || level == 0);
            assert!(hex.starts_with(&node_prefix(level, index)));
        }
        let mut tree = DigestTree::new();
        tree.update(&id, None, 1);
        let first = bucket >> 12;
        let children = tree.children(0, 0).unwrap();
        assert_eq!(children[first as usize], NodeSum(1, 1));
        assert!(tree.children(LEAF_LEVEL, 0).is_none());
        assert!(tree.children(1, 16).is_none());
    }
}
