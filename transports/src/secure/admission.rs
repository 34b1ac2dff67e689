//! Who may complete a handshake: the mesh's root key, this node's own ticket, and the
//! revocations in force. An open policy (no mesh configured) admits everyone and presents
//! no ticket; it exists for development and the node warns loudly when it runs one.
//!
//! Verified tickets are remembered by ticket id (SHA-256 of the exact bytes): peers reconnect
//! with the same ticket, and its signatures cannot have changed, so a repeat presentation
//! re-checks only what can (presenter, time, revocations). At most [`VERIFIED_CACHE`] are
//! kept; when full, the cache is cleared and refills from live handshakes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use libp2p::identity::PublicKey;
use libp2p::PeerId;

use crate::ticket::{self, Admission, MeshId, RevocationSet, Verifier, DEFAULT_CLOCK_SKEW_S};

/// Verified tickets remembered.
pub const VERIFIED_CACHE: usize = 1024;

use super::HandshakeError;

#[derive(Debug, Clone)]
struct Mesh {
    root: PublicKey,
    id: MeshId,
    own_ticket: Vec<u8>,
}

/// The admission rules a node applies to every connection, on both ends.
#[derive(Debug, Clone)]
pub struct AdmissionPolicy {
    mesh: Option<Mesh>,
    revocations: Arc<RwLock<RevocationSet>>,
    clock_skew: u64,
    verified: Arc<Mutex<HashMap<[u8; 32], Admission>>>,
}

impl AdmissionPolicy {
    /// No mesh: anyone may connect, and no ticket is shown.
    pub fn open() -> Self {
        AdmissionPolicy {
            mesh: None,
            revocations: Arc::default(),
            clock_skew: DEFAULT_CLOCK_SKEW_S,
            verified: Arc::default(),
        }
    }

    /// Only holders of valid, unrevoked tickets for the mesh of `root` may connect.
    pub fn closed(
        root: PublicKey,
        own_ticket: Vec<u8>,
        revocations: Arc<RwLock<RevocationSet>>,
    ) -> Self {
        AdmissionPolicy {
            mesh: Some(Mesh {
                id: MeshId::of_root(&root),
                root,
                own_ticket,
            }),
            revocations,
            clock_skew: DEFAULT_CLOCK_SKEW_S,
            verified: Arc::default(),
        }
    }

    pub fn with_clock_skew(mut self, seconds: u64) -> Self {
        self.clock_skew = seconds;
        self
    }

    pub fn requires_tickets(&self) -> bool {
        self.mesh.is_some()
    }

    pub fn mesh_id(&self) -> Option<MeshId> {
        self.mesh.as_ref().map(|m| m.id)
    }

    pub fn root(&self) -> Option<&PublicKey> {
        self.mesh.as_ref().map(|m| &m.root)
    }

    /// The ticket this node presents, if it is in a mesh.
    pub fn own_ticket(&self) -> Option<&[u8]> {
        self.mesh.as_ref().map(|m| m.own_ticket.as_slice())
    }

    pub fn revocations(&self) -> &Arc<RwLock<RevocationSet>> {
        &self.revocations
    }

    /// Decides on the ticket `peer` presented at Unix time `now`. `Ok(None)` on an open
    /// policy.
    pub fn check(
        &self,
        ticket: Option<&[u8]>,
        peer: &PeerId,
        now: u64,
    ) -> Result<Option<Admission>, HandshakeError> {
        let Some(mesh) = &self.mesh else {
            return Ok(None);
        };
        let ticket = ticket.ok_or(HandshakeError::MissingTicket)?;
        let revocations = self.revocations.read().unwrap_or_else(|p| p.into_inner());
        let verifier = Verifier {
            root: &mesh.root,
            now,
            clock_skew: self.clock_skew,
            revocations: &revocations,
        };
        let id = ticket::ticket_id(ticket);
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = verified.get(&id) {
            verifier
                .recheck(known, peer)
                .map_err(HandshakeError::Ticket)?;
            return Ok(Some(known.clone()));
        }
        let admission = verifier
            .verify(ticket, peer)
            .map_err(HandshakeError::Ticket)?;
        if verified.len() >= VERIFIED_CACHE {
            verified.clear();
        }
        verified.insert(id, admission.clone());
        Ok(Some(admission))
    }

    /// Whether an earlier admission still stands against the current revocations.
    pub fn still_admitted(&self, admission: &Admission) -> bool {
        !self
            .revocations
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .revokes(
                &admission.ticket_id,
                &admission.subject,
                admission.not_before,
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ticket::{Grant, RevocationTarget};
    use libp2p::identity::Keypair;

    const NOW: u64 = 1_800_000_000;

    /// A ticket verified once is re-checked from the cache: the presenter, the time and
    /// revocations still decide.
    #[test]
    fn remembered_tickets_are_still_rechecked() {
        let root = Keypair::generate_ed25519();
        let member = Keypair::generate_ed25519();
        let peer = member.public().to_peer_id();
        let grant = Grant {
            roles: vec!["worker".into()],
            not_before: NOW - 60,
            not_after: NOW + 3600,
        };
        let mesh = MeshId::of_root(&root.public());
        let t = ticket::issue(&root, mesh, peer, &grant, None).unwrap();
        let policy = AdmissionPolicy::closed(root.public(), Vec::new(), Arc::default());
        let reason = |r: Result<Option<Admission>, HandshakeError>| match r {
            Ok(_) => "ok",
            Err(HandshakeError::Ticket(e)) => e.reason(),
            Err(_) => "other",
        };
        assert_eq!(reason(policy.check(Some(&t), &peer, NOW)), "ok");
        assert_eq!(reason(policy.check(Some(&t), &peer, NOW)), "ok");
        let stranger = Keypair::generate_ed25519().public().to_peer_id();
        assert_eq!(
            reason(policy.check(Some(&t), &stranger, NOW)),
            "wrong_subject"
        );
        assert_eq!(reason(policy.check(Some(&t), &peer, NOW + 7200)), "expired");
        let revocation = ticket::revoke(
            &root,
            RevocationTarget::Ticket(ticket::ticket_id(&t).to_vec()),
            NOW,
        )
        .unwrap();
        policy
            .revocations()
            .write()
            .unwrap()
            .add(&revocation, &root.public())
            .unwrap();
        assert_eq!(reason(policy.check(Some(&t), &peer, NOW)), "revoked");
        assert!(matches!(
            policy.check(None, &peer, NOW),
            Err(HandshakeError::MissingTicket)
        ));
    }
}
