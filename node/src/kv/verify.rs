//! Checks on remote entries that need no state: who may write where, and signatures.

use fogmesh_kv::Entry;
use libp2p::identity::PublicKey;
use libp2p::PeerId;

use crate::kv::core::RESERVED_NAMESPACE;

pub(crate) fn needed_role(namespace: &str) -> &'static str {
    if namespace == RESERVED_NAMESPACE {
        "admin"
    } else {
        "writer"
    }
}

/// Entries from which signature checks are spread over the machine's cores.
const PARALLEL_VERIFY_FROM: usize = 64;

/// Whether each entry carries its author's valid signature. Pure CPU work; a large batch
/// (a sync page) is split over up to four threads for its duration, which is what bounds a
/// catch-up's speed (an Ed25519 check is ~30 µs, BENCHMARKS.md).
pub(crate) fn verify_signatures(entries: &[Entry], keys: &[Option<PublicKey>]) -> Vec<bool> {
    fn one((entry, key): (&Entry, &Option<PublicKey>)) -> bool {
        key.as_ref()
            .is_some_and(|key| key.verify(&entry.signing_bytes(), &entry.signature))
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    if entries.len() < PARALLEL_VERIFY_FROM || threads < 2 {
        return entries.iter().zip(keys).map(one).collect();
    }
    let chunk = entries.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = entries
            .chunks(chunk)
            .zip(keys.chunks(chunk))
            .map(|(part, keys)| {
                scope.spawn(move || part.iter().zip(keys).map(one).collect::<Vec<bool>>())
            })
            .collect();
        workers
            .into_iter()
            .zip(entries.chunks(chunk))
            // Verification returns false on anything odd; should a worker still panic,
            // its entries count as unverified.
            .flat_map(|(worker, part)| worker.join().unwrap_or_else(|_| vec![false; part.len()]))
            .collect()
    })
}

/// The public key inlined in a PeerId (Ed25519 ids inline theirs).
pub(crate) fn public_key_of(peer: &PeerId) -> Option<PublicKey> {
    let multihash = peer.as_ref();
    if multihash.code() != 0 {
        return None;
    }
    PublicKey::try_decode_protobuf(multihash.digest()).ok()
}
