//! Admission at the node: loading the mesh description and this node's own ticket, what
//! a peer's ticket grants ([`PeerRoles`]), and what the node shows about admission. The
//! secure channel checks tickets in the handshake (`fogmesh_transports::secure`); the
//! revocations capability spreads withdrawals; `mesh.rs` is the command line's side
//! (`fogmesh mesh init`, `fogmesh ticket ...`).
//!
//! A node configured with `mesh` and `ticket` checks its own ticket at start (against the
//! mesh root, the clock and the stored revocations) and refuses to start with a clear error
//! if it is not valid: a node that every peer would refuse is better stopped at the prompt.
//! Without a mesh the node runs open and says so loudly.

use std::path::{Path, PathBuf};

use fogmesh_transports::ticket::{
    Admission, MeshId, RevocationSet, TicketError, Verifier, DEFAULT_CLOCK_SKEW_S,
};
use libp2p::identity::PublicKey;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use crate::config::MeshFiles;
use mesh::MeshInfo;

pub mod mesh;
pub mod metrics;

/// What a peer's ticket grants, as the secure channel admitted it; `None` in an open mesh,
/// where every peer has every role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRoles(pub Option<Vec<String>>);

impl PeerRoles {
    pub fn has(&self, role: &str) -> bool {
        self.0.as_ref().is_none_or(|r| r.iter().any(|x| x == role))
    }
}

/// Who admitted a peer, and with which roles: the secure channel's record, read by
/// capabilities that authorise requests by role.
#[derive(Debug, Clone)]
pub struct Admissions {
    channel: fogmesh_transports::secure::SecureChannel,
    /// No mesh configured: every peer has every role.
    open: bool,
}

impl Admissions {
    pub fn new(channel: fogmesh_transports::secure::SecureChannel, open: bool) -> Self {
        Self { channel, open }
    }

    /// The roles `peer`'s ticket grants (none if it was not admitted with one).
    pub fn roles_of(&self, peer: &PeerId) -> PeerRoles {
        if self.open {
            PeerRoles(None)
        } else {
            PeerRoles(Some(
                self.channel
                    .admission_of(peer)
                    .map(|a| a.roles)
                    .unwrap_or_default(),
            ))
        }
    }
}

/// Gossip topic of a mesh's revocations.
pub fn revocation_topic(mesh: &MeshId) -> String {
    format!("fogmesh/revocations/1/{mesh}")
}

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("cannot read mesh file {path}: {reason}")]
    MeshFile { path: PathBuf, reason: String },
    #[error("cannot read ticket file {path}: {reason}")]
    TicketFile { path: PathBuf, reason: String },
    #[error("this node's ticket {path} is not valid for mesh {mesh}: {error} (issue a new one with `fogmesh ticket issue --peer {peer}`)")]
    OwnTicket {
        path: PathBuf,
        mesh: MeshId,
        /// Boxed: a PeerId is large and errors travel by value.
        peer: Box<PeerId>,
        error: TicketError,
    },
}

/// A node's place in a closed mesh.
#[derive(Debug, Clone)]
pub struct Membership {
    pub name: String,
    pub mesh_id: MeshId,
    pub root: PublicKey,
    pub ticket: Vec<u8>,
    pub admission: Admission,
}

fn read_mesh_info(path: &Path) -> Result<(MeshInfo, PublicKey, MeshId), MembershipError> {
    let err = |reason: String| MembershipError::MeshFile {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let info: MeshInfo = serde_json::from_slice(&text).map_err(|e| err(e.to_string()))?;
    let key_bytes = hex::decode(&info.root_public_key)
        .map_err(|e| err(format!("root_public_key is not hex: {e}")))?;
    let root = PublicKey::try_decode_protobuf(&key_bytes)
        .map_err(|e| err(format!("root_public_key is not a public key: {e}")))?;
    let mesh_id = MeshId::of_root(&root);
    if info.mesh_id != mesh_id.to_string() {
        return Err(err(format!(
            "mesh_id {} does not belong to root_public_key (which makes {mesh_id})",
            info.mesh_id
        )));
    }
    Ok((info, root, mesh_id))
}

/// Loads the mesh description and checks this node's ticket against it at Unix time `now`
/// and the revocations `revocations` builds for the mesh root.
pub fn load(
    files: &MeshFiles,
    peer: PeerId,
    revocations: impl FnOnce(&PublicKey) -> RevocationSet,
    now: u64,
) -> Result<(Membership, RevocationSet), MembershipError> {
    let (info, root, mesh_id) = read_mesh_info(&files.mesh)?;
    let revocations = revocations(&root);
    let ticket = mesh::read_blob(&files.ticket).map_err(|e| MembershipError::TicketFile {
        path: files.ticket.clone(),
        reason: e.to_string(),
    })?;
    let verifier = Verifier {
        root: &root,
        now,
        clock_skew: DEFAULT_CLOCK_SKEW_S,
        revocations: &revocations,
    };
    let admission =
        verifier
            .verify(&ticket, &peer)
            .map_err(|error| MembershipError::OwnTicket {
                path: files.ticket.clone(),
                mesh: mesh_id,
                peer: Box::new(peer),
                error,
            })?;
    Ok((
        Membership {
            name: info.name,
            mesh_id,
            root,
            ticket,
            admission,
        },
        revocations,
    ))
}

/// The admission part of `/v1/status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AdmissionView {
    /// True when no mesh is configured: anyone may connect.
    pub open: bool,
    pub mesh_name: Option<String>,
    pub mesh_id: Option<String>,
    pub roles: Vec<String>,
    /// When this node's own ticket expires (Unix seconds).
    pub ticket_expires_s: Option<u64>,
    pub revocations: usize,
    /// Revocations received that failed verification, by reason.
    pub revocations_rejected: std::collections::BTreeMap<String, u64>,
    pub quic: bool,
    pub handshakes: fogmesh_transports::secure::SecuritySnapshot,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn files(dir: &Path, peer: PeerId, valid: Duration) -> MeshFiles {
        let (_, key, public) = mesh::init(dir, "home").unwrap();
        let ticket = mesh::issue(&key, peer, &["worker".into()], valid).unwrap();
        let ticket_path = dir.join("node.ticket");
        std::fs::write(&ticket_path, ticket).unwrap();
        MeshFiles {
            mesh: public,
            ticket: ticket_path,
        }
    }

    #[test]
    fn loads_a_valid_membership() {
        let dir = tempfile::tempdir().unwrap();
        let peer = PeerId::random();
        let f = files(dir.path(), peer, Duration::from_secs(3600));
        let (m, _) = load(&f, peer, |_| RevocationSet::default(), mesh::now_s()).unwrap();
        assert_eq!(m.name, "home");
        assert_eq!(m.admission.subject, peer);
    }

    #[test]
    fn refuses_someone_elses_or_an_expired_ticket() {
        let dir = tempfile::tempdir().unwrap();
        let peer = PeerId::random();
        let f = files(dir.path(), peer, Duration::from_secs(3600));
        let err = load(
            &f,
            PeerId::random(),
            |_| RevocationSet::default(),
            mesh::now_s(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("issued to another peer"), "{err}");
        let later = mesh::now_s() + 7200;
        let err = load(&f, peer, |_| RevocationSet::default(), later).unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
    }

    #[test]
    fn refuses_a_mesh_file_whose_id_does_not_match_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let peer = PeerId::random();
        let f = files(dir.path(), peer, Duration::from_secs(3600));
        let text = std::fs::read_to_string(&f.mesh).unwrap();
        let info: MeshInfo = serde_json::from_str(&text).unwrap();
        let forged = text.replace(&info.mesh_id, &"0".repeat(32));
        std::fs::write(&f.mesh, forged).unwrap();
        let err = load(&f, peer, |_| RevocationSet::default(), mesh::now_s()).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
        std::fs::write(&f.mesh, "{").unwrap();
        assert!(load(&f, peer, |_| RevocationSet::default(), mesh::now_s()).is_err());
    }
}
