//! Mesh admission tickets and revocations (issue 4, part 2): format, issuing, offline
//! verification. Pure: no clocks (time comes in as Unix seconds), no I/O.
//!
//! A mesh is named by its root Ed25519 key: `MeshId = SHA-256("fogmesh/mesh/v1\0" ||
//! root public key in libp2p protobuf encoding)[..16]`, so a mesh id cannot be claimed by
//! another key. A **ticket** says "PeerId P may join mesh M with roles R from T1 to T2". It is
//! signed by the root, or by an issuer key the root delegated to (the delegation, itself
//! signed by the root, travels inside the ticket). A **revocation**, signed by the root,
//! withdraws one ticket (by id) or every ticket of a subject issued up to a time.
//!
//! Every signed object is `{ body: bytes, signature: bytes }` where `body` is the CBOR of the
//! body struct and the signature covers `domain tag || body`. Verifiers check the signature
//! over the bytes they received and only then decode the body. Every CBOR item, envelope and
//! body alike, must be exactly the encoding this module writes: otherwise one ticket could
//! travel as many byte strings, each with its own ticket id, and a revocation by id would
//! catch only one of them. The exact layout is in `docs/admission.md`.

use std::collections::{HashMap, HashSet};

use fogmesh_wire::codec;
use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const TICKET_VERSION: u8 = 1;
/// Largest encoded ticket, delegation or revocation accepted.
pub const MAX_TICKET_LEN: usize = 4096;
/// Clock skew tolerated on validity windows, in seconds (BLE islands have no time server).
pub const DEFAULT_CLOCK_SKEW_S: u64 = 300;
/// Most revocations a node keeps; beyond this new ones are refused (and counted).
pub const MAX_REVOCATIONS: usize = 65_536;
/// Roles this version knows. Others are carried but grant nothing here.
pub const KNOWN_ROLES: &[&str] = &[
    "worker",
    "coordinator",
    "submitter",
    "writer",
    "admin",
    "gateway",
];

const MESH_TAG: &[u8] = b"fogmesh/mesh/v1\0";
const TICKET_TAG: &[u8] = b"fogmesh/ticket/v1\0";
const DELEGATION_TAG: &[u8] = b"fogmesh/delegation/v1\0";
const REVOCATION_TAG: &[u8] = b"fogmesh/revocation/v1\0";

/// The id of a mesh, derived from its root key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MeshId(pub [u8; 16]);

impl MeshId {
    pub fn of_root(root: &PublicKey) -> MeshId {
        let mut h = Sha256::new();
        h.update(MESH_TAG);
        h.update(root.encode_protobuf());
        let digest = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        MeshId(id)
    }
}

impl std::fmt::Display for MeshId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::str::FromStr for MeshId {
    type Err = TicketError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut id = [0u8; 16];
        hex::decode_to_slice(s, &mut id)
            .map_err(|_| TicketError::Malformed(format!("mesh id {s:?} is not 32 hex digits")))?;
        Ok(MeshId(id))
    }
}

/// A signed object as it travels: CBOR body bytes and a signature over tag || body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketBody {
    pub version: u8,
    #[serde(with = "serde_bytes")]
    pub mesh_id: Vec<u8>,
    /// The subject's PeerId bytes.
    #[serde(with = "serde_bytes")]
    pub subject: Vec<u8>,
    pub roles: Vec<String>,
    /// Unix seconds, inclusive.
    pub not_before: u64,
    /// Unix seconds, exclusive.
    pub not_after: u64,
    /// The signer's public key (libp2p protobuf encoding).
    #[serde(with = "serde_bytes")]
    pub issuer: Vec<u8>,
    /// Present when the issuer is not the root: the root's signed delegation to it.
    pub delegation: Option<Signed>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegationBody {
    pub version: u8,
    #[serde(with = "serde_bytes")]
    pub mesh_id: Vec<u8>,
    /// The delegated issuer's public key.
    #[serde(with = "serde_bytes")]
    pub issuer: Vec<u8>,
    /// Roles the issuer may grant.
    pub roles: Vec<String>,
    pub not_before: u64,
    pub not_after: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationTarget {
    /// One ticket, by [`ticket_id`].
    Ticket(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Every ticket of this PeerId whose `not_before` is at or before `revoked_at`.
    Subject(#[serde(with = "serde_bytes")] Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationBody {
    pub version: u8,
    #[serde(with = "serde_bytes")]
    pub mesh_id: Vec<u8>,
    pub target: RevocationTarget,
    pub revoked_at: u64,
}

/// Why a ticket, delegation or revocation is refused. Each is logged and counted by name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("oversized ({0} bytes)")]
    Oversized(usize),
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    #[error("bad signature")]
    BadSignature,
    #[error("for another mesh")]
    WrongMesh,
    #[error("issued to another peer")]
    WrongSubject,
    #[error("signed by a key that is neither the mesh root nor delegated by it")]
    UnknownIssuer,
    #[error("not valid before {0} (Unix seconds)")]
    NotYetValid(u64),
    #[error("expired at {0} (Unix seconds)")]
    Expired(u64),
    #[error("the issuer's delegation is not valid now")]
    DelegationNotValid,
    #[error("role {0:?} exceeds what the issuer was delegated")]
    RoleNotDelegated(String),
    #[error("revoked")]
    Revoked,
    #[error("revocation list is full")]
    RevocationListFull,
}

impl TicketError {
    /// Every name [`TicketError::reason`] gives, for counters that list them all.
    pub const REASONS: [&'static str; 13] = [
        "oversized",
        "malformed",
        "unsupported_version",
        "bad_signature",
        "wrong_mesh",
        "wrong_subject",
        "unknown_issuer",
        "not_yet_valid",
        "expired",
        "delegation_not_valid",
        "role_not_delegated",
        "revoked",
        "revocation_list_full",
    ];

    /// A short stable name for counters and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            TicketError::Oversized(_) => "oversized",
            TicketError::Malformed(_) => "malformed",
            TicketError::UnsupportedVersion(_) => "unsupported_version",
            TicketError::BadSignature => "bad_signature",
            TicketError::WrongMesh => "wrong_mesh",
            TicketError::WrongSubject => "wrong_subject",
            TicketError::UnknownIssuer => "unknown_issuer",
            TicketError::NotYetValid(_) => "not_yet_valid",
            TicketError::Expired(_) => "expired",
            TicketError::DelegationNotValid => "delegation_not_valid",
            TicketError::RoleNotDelegated(_) => "role_not_delegated",
            TicketError::Revoked => "revoked",
            TicketError::RevocationListFull => "revocation_list_full",
        }
    }
}

fn malformed(e: impl std::fmt::Display) -> TicketError {
    TicketError::Malformed(e.to_string())
}

fn tagged(tag: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(tag.len() + body.len());
    out.extend_from_slice(tag);
    out.extend_from_slice(body);
    out
}

fn sign<T: Serialize>(key: &Keypair, tag: &[u8], body: &T) -> Result<Signed, TicketError> {
    let body = codec::encode(body).map_err(malformed)?;
    let signature = key.sign(&tagged(tag, &body)).map_err(malformed)?;
    Ok(Signed { body, signature })
}

/// What a signed object is; each kind has its own signature domain tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ticket,
    Delegation,
    Revocation,
}

/// Signs any body as `kind`, without checking that it makes sense: for test vectors and
/// tools that need objects the issuing functions refuse to make.
#[doc(hidden)]
pub fn sign_unchecked<T: Serialize>(
    signer: &Keypair,
    kind: Kind,
    body: &T,
) -> Result<Signed, TicketError> {
    let tag = match kind {
        Kind::Ticket => TICKET_TAG,
        Kind::Delegation => DELEGATION_TAG,
        Kind::Revocation => REVOCATION_TAG,
    };
    sign(signer, tag, body)
}

/// The bytes of a signed object (no size limit applied: tests need oversized ones too).
#[doc(hidden)]
pub fn encode_unchecked(signed: &Signed) -> Result<Vec<u8>, TicketError> {
    codec::encode(signed).map_err(malformed)
}

/// Decodes `bytes` as `T`, accepting only the exact bytes the encoder writes for the
/// result: keys in declaration order, none missing or unknown, shortest forms, no tags.
fn decode_exact<T: serde::de::DeserializeOwned + Serialize>(
    bytes: &[u8],
) -> Result<T, TicketError> {
    let value: T = codec::decode_bounded(bytes, MAX_TICKET_LEN).map_err(malformed)?;
    if codec::encode(&value).map_err(malformed)? != bytes {
        return Err(malformed("not the canonical CBOR encoding"));
    }
    Ok(value)
}

fn encode_signed(signed: &Signed) -> Result<Vec<u8>, TicketError> {
    let bytes = codec::encode(signed).map_err(malformed)?;
    if bytes.len() > MAX_TICKET_LEN {
        return Err(TicketError::Oversized(bytes.len()));
    }
    Ok(bytes)
}

/// Checks `signed` against `key` and decodes its body.
fn open<T: serde::de::DeserializeOwned + Serialize>(
    signed: &Signed,
    tag: &[u8],
    key: &PublicKey,
) -> Result<T, TicketError> {
    if !key.verify(&tagged(tag, &signed.body), &signed.signature) {
        return Err(TicketError::BadSignature);
    }
    decode_exact(&signed.body)
}

fn decode_signed(bytes: &[u8]) -> Result<Signed, TicketError> {
    if bytes.len() > MAX_TICKET_LEN {
        return Err(TicketError::Oversized(bytes.len()));
    }
    decode_exact(bytes)
}

fn window(now: u64, not_before: u64, not_after: u64, skew: u64) -> Result<(), TicketError> {
    if now.saturating_add(skew) < not_before {
        return Err(TicketError::NotYetValid(not_before));
    }
    if now >= not_after.saturating_add(skew) {
        return Err(TicketError::Expired(not_after));
    }
    Ok(())
}

/// The id of an encoded ticket: SHA-256 of its bytes.
pub fn ticket_id(ticket: &[u8]) -> [u8; 32] {
    Sha256::digest(ticket).into()
}

/// What a ticket grants, once verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub mesh_id: MeshId,
    pub subject: PeerId,
    pub roles: Vec<String>,
    pub not_before: u64,
    pub not_after: u64,
    /// The delegated issuer, or None when the root signed the ticket itself.
    pub delegated_issuer: Option<PeerId>,
    /// The delegation's own validity window, when there is one.
    pub delegation_window: Option<(u64, u64)>,
    pub ticket_id: [u8; 32],
}

/// A validity span and roles, for issuing.
#[derive(Debug, Clone)]
pub struct Grant {
    pub roles: Vec<String>,
    pub not_before: u64,
    pub not_after: u64,
}

/// The root delegates issuing to `issuer` for `grant`'s roles and span.
pub fn delegate(root: &Keypair, issuer: &PublicKey, grant: &Grant) -> Result<Signed, TicketError> {
    let body = DelegationBody {
        version: TICKET_VERSION,
        mesh_id: MeshId::of_root(&root.public()).0.to_vec(),
        issuer: issuer.encode_protobuf(),
        roles: grant.roles.clone(),
        not_before: grant.not_before,
        not_after: grant.not_after,
    };
    sign(root, DELEGATION_TAG, &body)
}

/// Issues a ticket for `subject` in `mesh`, signed by `signer` (the root, or a delegated
/// issuer passing its `delegation`).
pub fn issue(
    signer: &Keypair,
    mesh: MeshId,
    subject: PeerId,
    grant: &Grant,
    delegation: Option<Signed>,
) -> Result<Vec<u8>, TicketError> {
    let body = TicketBody {
        version: TICKET_VERSION,
        mesh_id: mesh.0.to_vec(),
        subject: subject.to_bytes(),
        roles: grant.roles.clone(),
        not_before: grant.not_before,
        not_after: grant.not_after,
        issuer: signer.public().encode_protobuf(),
        delegation,
    };
    encode_signed(&sign(signer, TICKET_TAG, &body)?)
}

/// Decodes a ticket for display, checking only its own signature (not the mesh, time or
/// revocations): what `fogmesh ticket show` explains.
pub fn inspect(bytes: &[u8]) -> Result<TicketBody, TicketError> {
    let signed = decode_signed(bytes)?;
    let unchecked: TicketBody = decode_exact(&signed.body)?;
    let issuer = PublicKey::try_decode_protobuf(&unchecked.issuer).map_err(malformed)?;
    open(&signed, TICKET_TAG, &issuer)
}

/// The subject (PeerId bytes) a ticket names, read without checking anything: for picking,
/// among tickets offered, the ones worth verifying for a given peer.
pub fn claimed_subject(bytes: &[u8]) -> Option<Vec<u8>> {
    let signed = decode_signed(bytes).ok()?;
    let body: TicketBody = decode_exact(&signed.body).ok()?;
    Some(body.subject)
}

/// Everything a verifier needs besides the ticket.
#[derive(Debug)]
pub struct Verifier<'a> {
    pub root: &'a PublicKey,
    pub now: u64,
    pub clock_skew: u64,
    pub revocations: &'a RevocationSet,
}

impl Verifier<'_> {
    /// Verifies `bytes` as a ticket presented by `peer`.
    pub fn verify(&self, bytes: &[u8], peer: &PeerId) -> Result<Admission, TicketError> {
        let signed = decode_signed(bytes)?;
        // The issuer is named inside the body, so peek at it, then verify before trusting
        // anything else the body says.
        let peek: TicketBody = decode_exact(&signed.body)?;
        let issuer = PublicKey::try_decode_protobuf(&peek.issuer).map_err(malformed)?;
        let body: TicketBody = open(&signed, TICKET_TAG, &issuer)?;
        if body.version != TICKET_VERSION {
            return Err(TicketError::UnsupportedVersion(body.version));
        }
        let mesh = MeshId::of_root(self.root);
        if body.mesh_id != mesh.0 {
            return Err(TicketError::WrongMesh);
        }
        let subject = PeerId::from_bytes(&body.subject).map_err(malformed)?;
        if &subject != peer {
            return Err(TicketError::WrongSubject);
        }
        let (delegated_issuer, delegation_window) = if issuer == *self.root {
            (None, None)
        } else {
            let delegation = body.delegation.as_ref().ok_or(TicketError::UnknownIssuer)?;
            let d: DelegationBody =
                open(delegation, DELEGATION_TAG, self.root).map_err(|e| match e {
                    TicketError::BadSignature => TicketError::UnknownIssuer,
                    other => other,
                })?;
            if d.version != TICKET_VERSION {
                return Err(TicketError::UnsupportedVersion(d.version));
            }
            if d.mesh_id != mesh.0 || d.issuer != body.issuer {
                return Err(TicketError::UnknownIssuer);
            }
            window(self.now, d.not_before, d.not_after, self.clock_skew)
                .map_err(|_| TicketError::DelegationNotValid)?;
            if let Some(role) = body.roles.iter().find(|r| !d.roles.contains(r)) {
                return Err(TicketError::RoleNotDelegated(role.clone()));
            }
            (Some(issuer.to_peer_id()), Some((d.not_before, d.not_after)))
        };
        window(self.now, body.not_before, body.not_after, self.clock_skew)?;
        let id = ticket_id(bytes);
        if self.revocations.revokes(&id, &subject, body.not_before) {
            return Err(TicketError::Revoked);
        }
        Ok(Admission {
            mesh_id: mesh,
            subject,
            roles: body.roles,
            not_before: body.not_before,
            not_after: body.not_after,
            delegated_issuer,
            delegation_window,
            ticket_id: id,
        })
    }

    /// Re-checks an earlier verified admission for the same ticket bytes: everything that
    /// can change since (who presents it, the time, revocations), without the signatures.
    pub fn recheck(&self, admission: &Admission, peer: &PeerId) -> Result<(), TicketError> {
        if &admission.subject != peer {
            return Err(TicketError::WrongSubject);
        }
        if let Some((from, to)) = admission.delegation_window {
            window(self.now, from, to, self.clock_skew)
                .map_err(|_| TicketError::DelegationNotValid)?;
        }
        window(
            self.now,
            admission.not_before,
            admission.not_after,
            self.clock_skew,
        )?;
        if self.revocations.revokes(
            &admission.ticket_id,
            &admission.subject,
            admission.not_before,
        ) {
            return Err(TicketError::Revoked);
        }
        Ok(())
    }
}

/// The root revokes a ticket or a subject.
pub fn revoke(
    root: &Keypair,
    target: RevocationTarget,
    revoked_at: u64,
) -> Result<Vec<u8>, TicketError> {
    let body = RevocationBody {
        version: TICKET_VERSION,
        mesh_id: MeshId::of_root(&root.public()).0.to_vec(),
        target,
        revoked_at,
    };
    encode_signed(&sign(root, REVOCATION_TAG, &body)?)
}

/// Revocations in force. Bounded by [`MAX_REVOCATIONS`].
#[derive(Debug, Default, Clone)]
pub struct RevocationSet {
    tickets: HashSet<[u8; 32]>,
    /// Subject -> latest revocation time.
    subjects: HashMap<PeerId, u64>,
}

impl RevocationSet {
    pub fn len(&self) -> usize {
        self.tickets.len() + self.subjects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Verifies a revocation against `root` and adds it. Returns true if it was new.
    pub fn add(&mut self, bytes: &[u8], root: &PublicKey) -> Result<bool, TicketError> {
        let signed = decode_signed(bytes)?;
        let body: RevocationBody = open(&signed, REVOCATION_TAG, root)?;
        if body.version != TICKET_VERSION {
            return Err(TicketError::UnsupportedVersion(body.version));
        }
        if body.mesh_id != MeshId::of_root(root).0 {
            return Err(TicketError::WrongMesh);
        }
        match body.target {
            RevocationTarget::Ticket(id) => {
                let id: [u8; 32] = id
                    .try_into()
                    .map_err(|_| malformed("ticket id is not 32 bytes"))?;
                if self.tickets.contains(&id) {
                    return Ok(false);
                }
                if self.len() >= MAX_REVOCATIONS {
                    return Err(TicketError::RevocationListFull);
                }
                Ok(self.tickets.insert(id))
            }
            RevocationTarget::Subject(peer) => {
                let peer = PeerId::from_bytes(&peer).map_err(malformed)?;
                match self.subjects.get(&peer) {
                    Some(at) if *at >= body.revoked_at => Ok(false),
                    existing => {
                        if existing.is_none() && self.len() >= MAX_REVOCATIONS {
                            return Err(TicketError::RevocationListFull);
                        }
                        self.subjects.insert(peer, body.revoked_at);
                        Ok(true)
                    }
                }
            }
        }
    }

    /// True if a ticket with this id, subject and start is revoked.
    pub fn revokes(&self, id: &[u8; 32], subject: &PeerId, not_before: u64) -> bool {
        self.tickets.contains(id)
            || self
                .subjects
                .get(subject)
                .is_some_and(|at| not_before <= *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_800_000_000;

    fn grant(roles: &[&str], from: u64, to: u64) -> Grant {
        Grant {
            roles: roles.iter().map(|r| r.to_string()).collect(),
            not_before: from,
            not_after: to,
        }
    }

    struct Mesh {
        root: Keypair,
    }

    impl Mesh {
        fn new() -> Self {
            Mesh {
                root: Keypair::generate_ed25519(),
            }
        }
        fn id(&self) -> MeshId {
            MeshId::of_root(&self.root.public())
        }
        fn ticket_for(&self, peer: PeerId) -> Vec<u8> {
            issue(
                &self.root,
                self.id(),
                peer,
                &grant(&["worker"], NOW - 10, NOW + 3600),
                None,
            )
            .unwrap()
        }
        fn verify(
            &self,
            bytes: &[u8],
            peer: &PeerId,
            revocations: &RevocationSet,
        ) -> Result<Admission, TicketError> {
            let root = self.root.public();
            Verifier {
                root: &root,
                now: NOW,
                clock_skew: DEFAULT_CLOCK_SKEW_S,
                revocations,
            }
            .verify(bytes, peer)
        }
    }

    #[test]
    fn root_issued_ticket_admits_its_subject_only() {
        let mesh = Mesh::new();
        let peer = PeerId::random();
        let ticket = mesh.ticket_for(peer);
        let ok = mesh
            .verify(&ticket, &peer, &RevocationSet::default())
            .unwrap();
        assert_eq!(ok.subject, peer);
        assert_eq!(ok.roles, vec!["worker".to_string()]);
        assert_eq!(ok.delegated_issuer, None);
        assert_eq!(
            mesh.verify(&ticket, &PeerId::random(), &RevocationSet::default()),
            Err(TicketError::WrongSubject)
        );
        assert_eq!(inspect(&ticket).unwrap().roles, vec!["worker".to_string()]);
    }

    #[test]
    fn each_rejection_reason() {
        let mesh = Mesh::new();
        let other = Mesh::new();
        let peer = PeerId::random();
        let none = RevocationSet::default();
        // Wrong mesh: a valid ticket of another mesh.
        assert_eq!(
            mesh.verify(&other.ticket_for(peer), &peer, &none),
            Err(TicketError::WrongMesh)
        );
        // Unknown issuer: a stranger signs a ticket naming this mesh.
        let stranger = Keypair::generate_ed25519();
        let forged = issue(
            &stranger,
            mesh.id(),
            peer,
            &grant(&["worker"], NOW, NOW + 10),
            None,
        )
        .unwrap();
        assert_eq!(
            mesh.verify(&forged, &peer, &none),
            Err(TicketError::UnknownIssuer)
        );
        // Expired and not yet valid, beyond the skew allowance.
        let old = issue(
            &mesh.root,
            mesh.id(),
            peer,
            &grant(&["worker"], NOW - 9000, NOW - 301),
            None,
        )
        .unwrap();
        assert_eq!(
            mesh.verify(&old, &peer, &none),
            Err(TicketError::Expired(NOW - 301))
        );
        let future = issue(
            &mesh.root,
            mesh.id(),
            peer,
            &grant(&["worker"], NOW + 301, NOW + 9000),
            None,
        )
        .unwrap();
        assert_eq!(
            mesh.verify(&future, &peer, &none),
            Err(TicketError::NotYetValid(NOW + 301))
        );
        // Within the skew allowance both are fine.
        let edge = issue(
            &mesh.root,
            mesh.id(),
            peer,
            &grant(&["worker"], NOW + 299, NOW + 9000),
            None,
        )
        .unwrap();
        assert!(mesh.verify(&edge, &peer, &none).is_ok());
        // Tampered: flip a byte of the body.
        let mut signed: Signed = codec::decode(&mesh.ticket_for(peer)).unwrap();
        let last = signed.body.len() - 1;
        signed.body[last] ^= 1;
        let tampered = codec::encode(&signed).unwrap();
        assert!(matches!(
            mesh.verify(&tampered, &peer, &none),
            Err(TicketError::BadSignature | TicketError::Malformed(_))
        ));
        // Oversized and garbage.
        assert_eq!(
            mesh.verify(&vec![0; MAX_TICKET_LEN + 1], &peer, &none),
            Err(TicketError::Oversized(MAX_TICKET_LEN + 1))
        );
        assert!(matches!(
            mesh.verify(b"garbage", &peer, &none),
            Err(TicketError::Malformed(_))
        ));
    }

    #[test]
    fn delegated_issuer_within_its_grant() {
        let mesh = Mesh::new();
        let issuer = Keypair::generate_ed25519();
        let peer = PeerId::random();
        let none = RevocationSet::default();
        let delegation = delegate(
            &mesh.root,
            &issuer.public(),
            &grant(&["worker", "gateway"], NOW - 10, NOW + 100),
        )
        .unwrap();
        let ticket = issue(
            &issuer,
            mesh.id(),
            peer,
            &grant(&["worker"], NOW, NOW + 50),
            Some(delegation.clone()),
        )
        .unwrap();
        let ok = mesh.verify(&ticket, &peer, &none).unwrap();
        assert_eq!(ok.delegated_issuer, Some(issuer.public().to_peer_id()));
        // A role the root did not delegate.
        let greedy = issue(
            &issuer,
            mesh.id(),
            peer,
            &grant(&["coordinator"], NOW, NOW + 50),
            Some(delegation.clone()),
        )
        .unwrap();
        assert_eq!(
            mesh.verify(&greedy, &peer, &none),
            Err(TicketError::RoleNotDelegated("coordinator".into()))
        );
        // A delegation for another key does not transfer.
        let thief = Keypair::generate_ed25519();
        let stolen = issue(
            &thief,
            mesh.id(),
            peer,
            &grant(&["worker"], NOW, NOW + 50),
            Some(delegation),
        )
        .unwrap();
        assert_eq!(
            mesh.verify(&stolen, &peer, &none),
            Err(TicketError::UnknownIssuer)
        );
        // An expired delegation.
        let lapsed = delegate(
            &mesh.root,
            &issuer.public(),
            &grant(&["worker"], NOW - 9000, NOW - 1000),
        )
        .unwrap();
        let late = issue(
            &issuer,
            mesh.id(),
            peer,
            &grant(&["worker"], NOW, NOW + 50),
            Some(lapsed),
        )
        .unwrap();
        assert_eq!(
            mesh.verify(&late, &peer, &none),
            Err(TicketError::DelegationNotValid)
        );
        // A delegation signed by someone other than the root.
        let fake = delegate(&thief, &issuer.public(), &grant(&["worker"], NOW, NOW + 50)).unwrap();
        let bogus = issue(
            &issuer,
            mesh.id(),
            peer,
            &grant(&["worker"], NOW, NOW + 50),
            Some(fake),
        )
        .unwrap();
        assert_eq!(
            mesh.verify(&bogus, &peer, &none),
            Err(TicketError::UnknownIssuer)
        );
    }

    #[test]
    fn revocation_by_ticket_and_by_subject() {
        let mesh = Mesh::new();
        let peer = PeerId::random();
        let ticket = mesh.ticket_for(peer);
        let root = mesh.root.public();
        let mut set = RevocationSet::default();
        let by_id = revoke(
            &mesh.root,
            RevocationTarget::Ticket(ticket_id(&ticket).to_vec()),
            NOW,
        )
        .unwrap();
        assert!(set.add(&by_id, &root).unwrap());
        assert!(!set.add(&by_id, &root).unwrap(), "idempotent");
        assert_eq!(mesh.verify(&ticket, &peer, &set), Err(TicketError::Revoked));

        let mut by_subject = RevocationSet::default();
        let r = revoke(&mesh.root, RevocationTarget::Subject(peer.to_bytes()), NOW).unwrap();
        assert!(by_subject.add(&r, &root).unwrap());
        assert_eq!(
            mesh.verify(&ticket, &peer, &by_subject),
            Err(TicketError::Revoked)
        );
        // A ticket issued after the subject revocation is good again.
        let fresh = issue(
            &mesh.root,
            mesh.id(),
            peer,
            &grant(&["worker"], NOW + 1, NOW + 10),
            None,
        )
        .unwrap();
        assert!(mesh.verify(&fresh, &peer, &by_subject).is_ok());

        // Only the root may revoke.
        let other = Keypair::generate_ed25519();
        let forged = revoke(&other, RevocationTarget::Subject(peer.to_bytes()), NOW).unwrap();
        assert!(set.add(&forged, &root).is_err());
    }

    /// Re-encoding a ticket's envelope another way would give it another ticket id and so
    /// slip past a revocation by id: every other encoding is refused.
    #[test]
    fn only_the_canonical_encoding_of_a_ticket_is_accepted() {
        #[derive(Serialize)]
        struct Reordered<'a> {
            #[serde(with = "serde_bytes")]
            signature: &'a [u8],
            #[serde(with = "serde_bytes")]
            body: &'a [u8],
        }
        #[derive(Serialize)]
        struct Extra<'a> {
            #[serde(with = "serde_bytes")]
            body: &'a [u8],
            #[serde(with = "serde_bytes")]
            signature: &'a [u8],
            note: u8,
        }
        let mesh = Mesh::new();
        let peer = PeerId::random();
        let ticket = mesh.ticket_for(peer);
        let signed: Signed = codec::decode(&ticket).unwrap();
        let none = RevocationSet::default();
        assert!(mesh.verify(&ticket, &peer, &none).is_ok());
        let reordered = codec::encode(&Reordered {
            signature: &signed.signature,
            body: &signed.body,
        })
        .unwrap();
        let extra = codec::encode(&Extra {
            body: &signed.body,
            signature: &signed.signature,
            note: 0,
        })
        .unwrap();
        // The same map with a 2-byte length where 1 byte would do.
        let mut long_form = ticket.clone();
        assert_eq!(long_form[0], 0xa2);
        long_form.splice(0..1, [0xb8, 0x02]);
        for variant in [reordered, extra, long_form] {
            assert!(matches!(
                mesh.verify(&variant, &peer, &none),
                Err(TicketError::Malformed(_))
            ));
            assert!(inspect(&variant).is_err());
        }
    }

    #[test]
    fn mesh_id_round_trips_as_hex() {
        let id = Mesh::new().id();
        assert_eq!(id.to_string().parse::<MeshId>().unwrap(), id);
        assert!("xyz".parse::<MeshId>().is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mesh = Mesh::new();
            let _ = mesh.verify(&bytes, &PeerId::random(), &RevocationSet::default());
            let _ = inspect(&bytes);
            let _ = RevocationSet::default().add(&bytes, &mesh.root.public());
        }

        #[test]
        fn no_bit_flip_yields_a_different_admission(pos in 0usize..2048, bit in 0u8..8) {
            let mesh = Mesh::new();
            let peer = PeerId::random();
            let mut ticket = mesh.ticket_for(peer);
            let pos = pos % ticket.len();
            ticket[pos] ^= 1 << bit;
            if let Ok(a) = mesh.verify(&ticket, &peer, &RevocationSet::default()) {
                prop_assert_eq!(a.subject, peer);
                prop_assert_eq!(a.roles, vec!["worker".to_string()]);
            }
        }
    }
}
