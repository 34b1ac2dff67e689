//! Who may complete a handshake: the mesh's root key, this node's own ticket, and the
//! revocations in force. An open policy (no mesh configured) admits everyone and presents
//! no ticket; it exists for development and the node warns loudly when it runs one.

use std::sync::{Arc, RwLock};

use libp2p::identity::PublicKey;
use libp2p::PeerId;

use crate::ticket::{Admission, MeshId, RevocationSet, Verifier, DEFAULT_CLOCK_SKEW_S};

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
}

impl AdmissionPolicy {
    /// No mesh: anyone may connect, and no ticket is shown.
    pub fn open() -> Self {
        AdmissionPolicy {
            mesh: None,
            revocations: Arc::default(),
            clock_skew: DEFAULT_CLOCK_SKEW_S,
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
        verifier
            .verify(ticket, peer)
            .map(Some)
            .map_err(HandshakeError::Ticket)
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
