//! The replicated key-value store's data model (issue 12): what an entry is, how two
//! replicas' entries for a key merge, and the clock that orders them. Pure: no I/O, no
//! clock reads, no randomness; the node signs and verifies, stores and replicates.
//!
//! - An entry is `(namespace, key) -> value` or a tombstone (a delete), with its author
//!   (PeerId bytes), a hybrid logical clock ([`Hlc`]) and the author's signature over
//!   [`Entry::signing_bytes`].
//! - **Merge rule: last writer wins by version**, where a version is `(hlc, author)` compared
//!   in that order. Every replica therefore picks the same winner for a key whatever order
//!   entries arrive in, with duplicates, and whichever side of a partition wrote: the later
//!   clock wins, and at equal clocks the greater author id. (Two entries with the same
//!   version but different content can only come from one author signing twice at the same
//!   clock; the greater content wins, so even that converges.)
//! - A key also keeps the [`MAX_OVERWRITTEN`] most recent versions it superseded, so
//!   `kv get --conflicts` can show what was overwritten and by whom. Keeping "the top K of
//!   all versions seen" is itself commutative, associative and idempotent, so that list
//!   converges too.
//! - The clock: a write takes `max(now, last + 1 tick)` ([`Hlc::next`]); an entry from
//!   elsewhere moves the local clock forward ([`Hlc::observe`]) unless it is more than the
//!   allowed skew ahead of the local wall clock, in which case it is refused (a node with
//!   a clock far in the future would otherwise win every key for as long as its lead).
//! - Deletes are tombstones, which win and replicate like values. A tombstone may be
//!   collected once it is older than [`TOMBSTONE_TTL_MS`] ([`collectable`]); a replica
//!   offline for longer than that could bring the deleted value back, which is why the TTL
//!   is long (docs/kv.md, "Tombstones").

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Longest namespace, in bytes.
pub const MAX_NAMESPACE_BYTES: usize = 64;
/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Largest value: small enough that a handful fit one BLE-sized sync batch.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Largest signature accepted (an Ed25519 one is 64 bytes; room for other key types).
pub const MAX_SIGNATURE_BYTES: usize = 256;
/// Longest author id (PeerId bytes).
pub const MAX_AUTHOR_BYTES: usize = 64;
/// Superseded versions a key keeps for `--conflicts`.
pub const MAX_OVERWRITTEN: usize = 4;
/// An entry whose clock is further than this ahead of the local wall clock is refused.
pub const DEFAULT_MAX_SKEW_MS: u64 = 60_000;
/// A tombstone older than this may be collected.
pub const TOMBSTONE_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// Domain separation for entry signatures.
const SIGNING_TAG: &[u8] = b"fogmesh/kv/entry/1";

/// A hybrid logical clock: wall-clock milliseconds, and a counter for events within one.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Hlc {
    pub wall_ms: u64,
    pub counter: u32,
}

/// Why an entry or clock is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("namespace empty, over {MAX_NAMESPACE_BYTES} bytes, or not of letters, digits, '.', '_' and '-'")]
    BadNamespace,
    #[error("key over {MAX_KEY_BYTES} bytes, empty, `.` or `..`")]
    BadKey,
    #[error("value of {0} bytes; at most {MAX_VALUE_BYTES}")]
    ValueTooLarge(usize),
    #[error("author id empty or over {MAX_AUTHOR_BYTES} bytes")]
    BadAuthor,
    #[error("signature over {MAX_SIGNATURE_BYTES} bytes")]
    BadSignature,
    #[error("clock {ahead_ms} ms ahead of ours (at most {max_ms})")]
    FromTheFuture { ahead_ms: u64, max_ms: u64 },
    #[error("the clock cannot advance any further")]
    ClockExhausted,
}

impl KvError {
    /// A short label for counters.
    pub fn reason(&self) -> &'static str {
        match self {
            KvError::BadNamespace => "bad_namespace",
            KvError::BadKey => "bad_key",
            KvError::ValueTooLarge(_) => "value_too_large",
            KvError::BadAuthor => "bad_author",
            KvError::BadSignature => "bad_signature_size",
            KvError::FromTheFuture { .. } => "from_the_future",
            KvError::ClockExhausted => "clock_exhausted",
        }
    }
}

impl Hlc {
    /// The clock of a local write at `now_ms`, after the last one `last`: strictly greater
    /// than `last`, and at least `now_ms`.
    pub fn next(last: Hlc, now_ms: u64) -> Result<Hlc, KvError> {
        if now_ms > last.wall_ms {
            return Ok(Hlc {
                wall_ms: now_ms,
                counter: 0,
            });
        }
        match last.counter.checked_add(1) {
            Some(counter) => Ok(Hlc {
                wall_ms: last.wall_ms,
                counter,
            }),
            None => last
                .wall_ms
                .checked_add(1)
                .map(|wall_ms| Hlc {
                    wall_ms,
                    counter: 0,
                })
                .ok_or(KvError::ClockExhausted),
        }
    }

    /// Takes in `remote` (an entry's clock) at `now_ms`: the local clock becomes the later
    /// of the two, so the next local write orders after everything seen. A clock more than
    /// `max_skew_ms` ahead of `now_ms` is refused and changes nothing.
    pub fn observe(last: Hlc, remote: Hlc, now_ms: u64, max_skew_ms: u64) -> Result<Hlc, KvError> {
        let ahead_ms = remote.wall_ms.saturating_sub(now_ms);
        if ahead_ms > max_skew_ms {
            return Err(KvError::FromTheFuture {
                ahead_ms,
                max_ms: max_skew_ms,
            });
        }
        Ok(last.max(remote))
    }
}

/// Which write an entry is: later clocks win, then greater authors.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    pub hlc: Hlc,
    pub author: ByteBuf,
}

/// One write (or delete) of one key, as its author signed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub namespace: String,
    pub key: String,
    /// `None`: a tombstone (the key was deleted).
    pub value: Option<ByteBuf>,
    pub version: Version,
    pub signature: ByteBuf,
}

#[derive(Serialize)]
struct Signed<'a> {
    tag: &'a [u8],
    namespace: &'a str,
    key: &'a str,
    value: Option<&'a ByteBuf>,
    version: &'a Version,
}

impl Entry {
    /// `namespace/key`, the name `kv list` orders by.
    pub fn name(&self) -> String {
        format!("{}/{}", self.namespace, self.key)
    }

    /// What the author signs: everything but the signature, with a domain tag.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let signed = Signed {
            tag: SIGNING_TAG,
            namespace: &self.namespace,
            key: &self.key,
            value: self.value.as_ref(),
            version: &self.version,
        };
        // Encoding a struct of strings, bytes and integers cannot fail.
        fogmesh_wire::codec::encode(&signed).unwrap_or_default()
    }

    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// Checks sizes (what a peer controls before any signature is looked at).
    pub fn check_shape(&self) -> Result<(), KvError> {
        if !namespace_is_valid(&self.namespace) {
            return Err(KvError::BadNamespace);
        }
        // `.` and `..` are refused so that every key can be named in a URL path.
        if self.key.is_empty()
            || self.key.len() > MAX_KEY_BYTES
            || self.key == "."
            || self.key == ".."
        {
            return Err(KvError::BadKey);
        }
        if let Some(value) = &self.value {
            if value.len() > MAX_VALUE_BYTES {
                return Err(KvError::ValueTooLarge(value.len()));
            }
        }
        if self.version.author.is_empty() || self.version.author.len() > MAX_AUTHOR_BYTES {
            return Err(KvError::BadAuthor);
        }
        if self.signature.len() > MAX_SIGNATURE_BYTES {
            return Err(KvError::BadSignature);
        }
        Ok(())
    }

    /// The total order merge uses: version, then content (only one author signing two
    /// contents at one clock can make the second comparison matter).
    fn rank(&self) -> (&Version, Option<&ByteBuf>, &ByteBuf) {
        (&self.version, self.value.as_ref(), &self.signature)
    }
}

/// A key's state on a replica: the winning entry and the versions it superseded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub winner: Entry,
    /// The most recent superseded entries, newest first, at most [`MAX_OVERWRITTEN`].
    pub overwritten: Vec<Entry>,
}

/// What merging an entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merged {
    /// The entry is the key's new winner.
    Won,
    /// Older than the winner: kept among the overwritten versions (if recent enough).
    Lost,
    /// Already held.
    Duplicate,
}

impl Slot {
    pub fn new(entry: Entry) -> Slot {
        Slot {
            winner: entry,
            overwritten: Vec::new(),
        }
    }

    /// Merges one entry for the same key. Commutative, associative and idempotent: the
    /// slot is a function of the set of entries merged, whatever their order.
    pub fn merge(&mut self, entry: Entry) -> Merged {
        if self.winner == entry || self.overwritten.contains(&entry) {
            return Merged::Duplicate;
        }
        let won = entry.rank() > self.winner.rank();
        let loser = if won {
            std::mem::replace(&mut self.winner, entry)
        } else {
            entry
        };
        // The top K of everything but the winner, newest first.
        let at = self
            .overwritten
            .iter()
            .position(|held| loser.rank() > held.rank())
            .unwrap_or(self.overwritten.len());
        self.overwritten.insert(at, loser);
        self.overwritten.truncate(MAX_OVERWRITTEN);
        if won {
            Merged::Won
        } else {
            Merged::Lost
        }
    }

    /// The key's value, `None` if deleted.
    pub fn value(&self) -> Option<&[u8]> {
        self.winner.value.as_ref().map(|v| v.as_slice())
    }
}

/// Whether `namespace` may name a namespace: 1 to [`MAX_NAMESPACE_BYTES`] ASCII letters,
/// digits, `.`, `_` or `-` (no `/`, so `namespace/key` names a key unambiguously).
pub fn namespace_is_valid(namespace: &str) -> bool {
    !namespace.is_empty()
        && namespace.len() <= MAX_NAMESPACE_BYTES
        && namespace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Bytes of a [`KeyId`].
pub const KEY_ID_BYTES: usize = 16;

/// Where a key lives in the keyspace: the first 16 bytes of SHA-256(`namespace/key`).
/// Keys spread evenly over ids, which is what lets the digest tree ([`crate::tree`])
/// split the keyspace into equal buckets by the id's first bits.
pub type KeyId = [u8; KEY_ID_BYTES];

pub fn key_id(namespace: &str, key: &str) -> KeyId {
    use sha2::{Digest as _, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(namespace.as_bytes());
    hasher.update(b"/");
    hasher.update(key.as_bytes());
    let hash = hasher.finalize();
    let mut id = [0u8; KEY_ID_BYTES];
    id.copy_from_slice(&hash[..KEY_ID_BYTES]);
    id
}

impl Entry {
    /// The entry's key id ([`key_id`]).
    pub fn key_id(&self) -> KeyId {
        key_id(&self.namespace, &self.key)
    }

    /// A 64-bit digest of the whole entry, signature included: two replicas hold the same
    /// winner for a key exactly when (barring a 2^-64 accident) its digests agree.
    pub fn digest(&self) -> u64 {
        use sha2::{Digest as _, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(self.signing_bytes());
        hasher.update(&self.signature);
        let hash = hasher.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&hash[..8]);
        u64::from_be_bytes(first)
    }
}

/// Whether a key's slot may be dropped: its winner is a tombstone older than `ttl_ms`.
pub fn collectable(slot: &Slot, now_ms: u64, ttl_ms: u64) -> bool {
    slot.winner.is_tombstone() && now_ms.saturating_sub(slot.winner.version.hlc.wall_ms) > ttl_ms
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(author: u8, wall_ms: u64, counter: u32, value: Option<u8>) -> Entry {
        Entry {
            namespace: "app".into(),
            key: "k".into(),
            value: value.map(|v| ByteBuf::from(vec![v])),
            version: Version {
                hlc: Hlc { wall_ms, counter },
                author: ByteBuf::from(vec![author]),
            },
            signature: ByteBuf::from(vec![author, 0xee]),
        }
    }

    #[test]
    fn the_later_clock_wins_then_the_greater_author() {
        let mut slot = Slot::new(entry(1, 100, 0, Some(1)));
        assert_eq!(slot.merge(entry(2, 99, 5, Some(2))), Merged::Lost);
        assert_eq!(slot.value(), Some(&[1][..]));
        assert_eq!(slot.merge(entry(0, 100, 1, Some(3))), Merged::Won);
        assert_eq!(slot.merge(entry(9, 100, 1, None)), Merged::Won);
        assert_eq!(slot.value(), None, "a later delete wins");
        assert_eq!(slot.merge(entry(9, 100, 1, None)), Merged::Duplicate);
        let overwritten: Vec<_> = slot
            .overwritten
            .iter()
            .map(|e| e.version.author[0])
            .collect();
        assert_eq!(overwritten, vec![0, 1, 2]);
    }

    #[test]
    fn clocks_move_forward_and_refuse_the_far_future() {
        let a = Hlc::next(Hlc::default(), 1000).unwrap();
        assert_eq!(
            a,
            Hlc {
                wall_ms: 1000,
                counter: 0
            }
        );
        // The wall clock stepped back: the counter keeps order.
        let b = Hlc::next(a, 900).unwrap();
        assert!(b > a);
        let remote = Hlc {
            wall_ms: 5000,
            counter: 3,
        };
        assert_eq!(Hlc::observe(b, remote, 1000, 60_000), Ok(remote));
        assert!(Hlc::next(remote, 1000).unwrap() > remote);
        let err = Hlc::observe(
            b,
            Hlc {
                wall_ms: 100_000,
                counter: 0,
            },
            1000,
            60_000,
        );
        assert_eq!(err.unwrap_err().reason(), "from_the_future");
        let full = Hlc {
            wall_ms: 7,
            counter: u32::MAX,
        };
        assert_eq!(
            Hlc::next(full, 0).unwrap(),
            Hlc {
                wall_ms: 8,
                counter: 0
            }
        );
        let end = Hlc {
            wall_ms: u64::MAX,
            counter: u32::MAX,
        };
        assert_eq!(Hlc::next(end, 0), Err(KvError::ClockExhausted));
    }

    #[test]
    fn shapes_beyond_the_caps_are_refused() {
        let mut e = entry(1, 1, 0, Some(1));
        assert_eq!(e.check_shape(), Ok(()));
        e.value = Some(ByteBuf::from(vec![0; MAX_VALUE_BYTES + 1]));
        assert_eq!(
            e.check_shape(),
            Err(KvError::ValueTooLarge(MAX_VALUE_BYTES + 1))
        );
        let mut e = entry(1, 1, 0, None);
        e.key = "k".repeat(MAX_KEY_BYTES + 1);
        assert_eq!(e.check_shape(), Err(KvError::BadKey));
        let mut e = entry(1, 1, 0, None);
        e.version.author = ByteBuf::new();
        assert_eq!(e.check_shape(), Err(KvError::BadAuthor));
    }

    #[test]
    fn signing_bytes_cover_everything_but_the_signature() {
        let e = entry(1, 1, 0, Some(1));
        let mut other = e.clone();
        other.signature = ByteBuf::from(vec![9]);
        assert_eq!(e.signing_bytes(), other.signing_bytes());
        for changed in [
            Entry {
                key: "x".into(),
                ..e.clone()
            },
            Entry {
                value: None,
                ..e.clone()
            },
            entry(1, 2, 0, Some(1)),
            entry(2, 1, 0, Some(1)),
        ] {
            assert_ne!(e.signing_bytes(), changed.signing_bytes());
        }
    }

    #[test]
    fn old_tombstones_are_collectable_values_never() {
        let dead = Slot::new(entry(1, 1000, 0, None));
        assert!(!collectable(
            &dead,
            1000 + TOMBSTONE_TTL_MS,
            TOMBSTONE_TTL_MS
        ));
        assert!(collectable(
            &dead,
            1001 + TOMBSTONE_TTL_MS,
            TOMBSTONE_TTL_MS
        ));
        let alive = Slot::new(entry(1, 1000, 0, Some(1)));
        assert!(!collectable(&alive, u64::MAX, TOMBSTONE_TTL_MS));
    }

    fn any_entry() -> impl Strategy<Value = Entry> {
        (0u8..4, 0u64..6, 0u32..3, proptest::option::of(0u8..3))
            .prop_map(|(a, w, c, v)| entry(a, w, c, v))
    }

    fn fold(entries: &[Entry]) -> Option<Slot> {
        let mut iter = entries.iter().cloned();
        let mut slot = Slot::new(iter.next()?);
        for e in iter {
            slot.merge(e);
        }
        Some(slot)
    }

    proptest! {
        /// Any entries, in any order, with duplicates: the same slot.
        #[test]
        fn merge_is_order_and_duplicate_independent(
            entries in proptest::collection::vec(any_entry(), 1..24),
            seed in any::<u64>(),
        ) {
            let reference = fold(&entries).unwrap();
            let mut shuffled = entries.clone();
            // A seeded permutation plus duplicates of a prefix.
            let n = shuffled.len();
            let mut state = seed | 1;
            for i in (1..n).rev() {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                shuffled.swap(i, (state % (i as u64 + 1)) as usize);
            }
            shuffled.extend(entries.iter().take(n / 2).cloned());
            prop_assert_eq!(fold(&shuffled).unwrap(), reference.clone());
            // The winner is the greatest entry.
            let greatest = entries.iter().max_by(|a, b| a.rank().cmp(&b.rank())).unwrap();
            prop_assert_eq!(&reference.winner, greatest);
        }

        /// Merging two replicas' slots entry by entry is associative: replica A then B, or B
        /// then A, or everything at once, agree.
        #[test]
        fn replicas_merged_either_way_agree(
            a in proptest::collection::vec(any_entry(), 1..12),
            b in proptest::collection::vec(any_entry(), 1..12),
        ) {
            let mut ab = fold(&a).unwrap();
            let slot_b = fold(&b).unwrap();
            for e in std::iter::once(slot_b.winner.clone()).chain(slot_b.overwritten.clone()) {
                ab.merge(e);
            }
            let mut ba = slot_b;
            let slot_a = fold(&a).unwrap();
            for e in std::iter::once(slot_a.winner.clone()).chain(slot_a.overwritten.clone()) {
                ba.merge(e);
            }
            let all: Vec<Entry> = a.iter().chain(b.iter()).cloned().collect();
            let everything = fold(&all).unwrap();
            prop_assert_eq!(&ab.winner, &everything.winner);
            prop_assert_eq!(&ba.winner, &everything.winner);
            prop_assert_eq!(&ab, &ba);
            prop_assert_eq!(ab, everything);
        }
    }
}
