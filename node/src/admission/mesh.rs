//! Mesh roots and tickets at the command line: `fogmesh mesh init`, `fogmesh ticket
//! issue|show|revoke`. The formats and their verification live in
//! `fogmesh_transports::ticket`; this module handles files and time.
//!
//! Files: `<name>.root.key` is the mesh root key pair (mode 0600; whoever holds it can admit
//! anyone), `<name>.mesh.json` is public (name, mesh id, root public key) and is what nodes
//! are configured with. Tickets and revocations are written as binary files; `ticket show`
//! also accepts them as hex text.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fogmesh_transports::ticket::{self, Grant, MeshId, RevocationTarget, TicketBody};
use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use crate::identity::{self, IdentityError};

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error(transparent)]
    Key(#[from] IdentityError),
    #[error("{path} already exists; refusing to replace a mesh root key")]
    Exists { path: PathBuf },
    #[error("cannot read or write {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error(transparent)]
    Ticket(#[from] ticket::TicketError),
    #[error("unknown role {0:?}; known roles: {known}", known = ticket::KNOWN_ROLES.join(", "))]
    UnknownRole(String),
    #[error("{0} is neither a ticket file nor hex text")]
    Unreadable(PathBuf),
    #[error("mesh root key {path} is unusable ({reason}); give the `<name>.root.key` file that `fogmesh mesh init` wrote")]
    RootKey { path: PathBuf, reason: String },
    #[error("{path} is not a ticket: {reason}")]
    NotATicket { path: PathBuf, reason: String },
    #[error("that ticket belongs to mesh {ticket_mesh}, but this root key is mesh {root_mesh}'s")]
    ForeignTicket {
        ticket_mesh: String,
        root_mesh: String,
    },
    #[error("mesh name {0:?} is not usable: use 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'")]
    BadName(String),
}

/// A mesh name becomes part of file names, so it must be a plain file name: no separators,
/// no `..`, nothing hidden.
fn check_name(name: &str) -> Result<(), MeshError> {
    let plain = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if plain {
        Ok(())
    } else {
        Err(MeshError::BadName(name.to_owned()))
    }
}

/// Reads a mesh root key, with errors that speak of a root key (not a node identity).
fn read_root_key(path: &Path) -> Result<Keypair, MeshError> {
    identity::read_keypair(path).map_err(|e| MeshError::RootKey {
        path: path.to_path_buf(),
        reason: match e {
            IdentityError::Unreadable { reason, .. } | IdentityError::Corrupt { reason, .. } => {
                reason
            }
            other => other.to_string(),
        },
    })
}

/// The public description of a mesh.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeshInfo {
    pub name: String,
    pub mesh_id: String,
    /// The root public key, libp2p protobuf encoding, hex.
    pub root_public_key: String,
}

fn file_err(path: &Path) -> impl Fn(std::io::Error) -> MeshError + '_ {
    move |e| MeshError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Creates a mesh root in `dir`: `<name>.root.key` and `<name>.mesh.json`.
pub fn init(dir: &Path, name: &str) -> Result<(MeshInfo, PathBuf, PathBuf), MeshError> {
    check_name(name)?;
    let key_path = dir.join(format!("{name}.root.key"));
    let info_path = dir.join(format!("{name}.mesh.json"));
    if key_path.exists() {
        return Err(MeshError::Exists { path: key_path });
    }
    let root = Keypair::generate_ed25519();
    identity::write_keypair(&key_path, &root)?;
    let info = MeshInfo {
        name: name.to_owned(),
        mesh_id: MeshId::of_root(&root.public()).to_string(),
        root_public_key: hex::encode(root.public().encode_protobuf()),
    };
    let json = serde_json::to_vec_pretty(&info).map_err(|e| MeshError::File {
        path: info_path.clone(),
        reason: e.to_string(),
    })?;
    std::fs::write(&info_path, json).map_err(file_err(&info_path))?;
    Ok((info, key_path, info_path))
}

pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Issues a root-signed ticket for `peer` valid from now for `valid`.
pub fn issue(
    root_key: &Path,
    peer: PeerId,
    roles: &[String],
    valid: Duration,
) -> Result<Vec<u8>, MeshError> {
    if let Some(unknown) = roles
        .iter()
        .find(|r| !ticket::KNOWN_ROLES.contains(&r.as_str()))
    {
        return Err(MeshError::UnknownRole(unknown.clone()));
    }
    let root = read_root_key(root_key)?;
    let now = now_s();
    let grant = Grant {
        roles: roles.to_vec(),
        not_before: now,
        not_after: now.saturating_add(valid.as_secs()),
    };
    Ok(ticket::issue(
        &root,
        MeshId::of_root(&root.public()),
        peer,
        &grant,
        None,
    )?)
}

/// Reads a ticket or revocation file, binary or hex.
pub fn read_blob(path: &Path) -> Result<Vec<u8>, MeshError> {
    let bytes = std::fs::read(path).map_err(file_err(path))?;
    if let Ok(text) = std::str::from_utf8(&bytes) {
        if let Ok(decoded) = hex::decode(text.trim()) {
            return Ok(decoded);
        }
    }
    if bytes.is_empty() {
        return Err(MeshError::Unreadable(path.to_path_buf()));
    }
    Ok(bytes)
}

/// A ticket explained for a person.
pub fn show(bytes: &[u8]) -> Result<String, MeshError> {
    let body: TicketBody = ticket::inspect(bytes)?;
    let subject = PeerId::from_bytes(&body.subject)
        .map(|p| p.to_string())
        .unwrap_or_else(|_| "(invalid PeerId)".into());
    let issuer = PublicKey::try_decode_protobuf(&body.issuer)
        .map(|k| k.to_peer_id().to_string())
        .unwrap_or_else(|_| "(invalid key)".into());
    let mesh = body
        .mesh_id
        .clone()
        .try_into()
        .map(|id: [u8; 16]| MeshId(id).to_string())
        .unwrap_or_else(|_| "(invalid)".into());
    let when = |s: u64| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(s))
            .to_string()
    };
    let now = now_s();
    let state = if now < body.not_before {
        "not yet valid"
    } else if now >= body.not_after {
        "expired"
    } else {
        "within its validity window"
    };
    Ok(format!(
        "ticket {id}\n  mesh        {mesh}\n  subject     {subject}\n  roles       {roles}\n  valid       {from} .. {to} ({state})\n  issuer      {issuer}{delegated}\n  signature   checks out against the issuer key (mesh membership is checked by nodes)",
        id = hex::encode(ticket::ticket_id(bytes)),
        roles = body.roles.join(", "),
        from = when(body.not_before),
        to = when(body.not_after),
        delegated = if body.delegation.is_some() { " (delegated by the root)" } else { " (the mesh root, if the mesh id matches)" },
    ))
}

/// A root-signed revocation of a ticket file or of every ticket of a peer issued until now.
///
/// A ticket must be one (signed, decodable) and of this root's mesh: revoking the hash of
/// anything else would be a revocation that matches nothing, reported as success.
pub fn revoke(root_key: &Path, target: RevokeTarget) -> Result<Vec<u8>, MeshError> {
    let root = read_root_key(root_key)?;
    let target = match target {
        RevokeTarget::Ticket { path, bytes } => {
            let body = ticket::inspect(&bytes).map_err(|e| MeshError::NotATicket {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let root_mesh = MeshId::of_root(&root.public());
            if body.mesh_id.as_slice() != root_mesh.0.as_slice() {
                return Err(MeshError::ForeignTicket {
                    ticket_mesh: hex::encode(&body.mesh_id),
                    root_mesh: root_mesh.to_string(),
                });
            }
            RevocationTarget::Ticket(ticket::ticket_id(&bytes).to_vec())
        }
        RevokeTarget::Peer(peer) => RevocationTarget::Subject(peer.to_bytes()),
    };
    Ok(ticket::revoke(&root, target, now_s())?)
}

#[derive(Debug)]
pub enum RevokeTarget {
    Ticket { path: PathBuf, bytes: Vec<u8> },
    Peer(PeerId),
}

/// Writes `bytes` to `out`, or returns them as hex for printing.
pub fn emit(bytes: &[u8], out: Option<&Path>) -> Result<Option<String>, MeshError> {
    match out {
        Some(path) => {
            std::fs::write(path, bytes).map_err(file_err(path))?;
            Ok(None)
        }
        None => Ok(Some(hex::encode(bytes))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fogmesh_transports::ticket::{RevocationSet, Verifier};

    #[test]
    fn init_issue_show_revoke_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (info, key, _) = init(dir.path(), "home").unwrap();
        assert!(matches!(
            init(dir.path(), "home"),
            Err(MeshError::Exists { .. })
        ));
        let peer = PeerId::random();
        let t = issue(&key, peer, &["worker".into()], Duration::from_secs(3600)).unwrap();
        // Through a hex file, as a person might paste it.
        let file = dir.path().join("t.hex");
        std::fs::write(&file, emit(&t, None).unwrap().unwrap()).unwrap();
        let back = read_blob(&file).unwrap();
        assert_eq!(back, t);
        let text = show(&back).unwrap();
        assert!(
            text.contains(&peer.to_string()) && text.contains(&info.mesh_id),
            "{text}"
        );

        let root = identity::read_keypair(&key).unwrap().public();
        let mut set = RevocationSet::default();
        let v = Verifier {
            root: &root,
            now: now_s(),
            clock_skew: 300,
            revocations: &set,
        };
        assert!(v.verify(&t, &peer).is_ok());
        let r = revoke(
            &key,
            RevokeTarget::Ticket {
                path: file.clone(),
                bytes: t.clone(),
            },
        )
        .unwrap();
        assert!(set.add(&r, &root).unwrap());
        let v = Verifier {
            root: &root,
            now: now_s(),
            clock_skew: 300,
            revocations: &set,
        };
        assert_eq!(v.verify(&t, &peer), Err(ticket::TicketError::Revoked));
    }

    #[test]
    fn unknown_roles_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_, key, _) = init(dir.path(), "m").unwrap();
        let err = issue(
            &key,
            PeerId::random(),
            &["mayor".into()],
            Duration::from_secs(60),
        )
        .unwrap_err();
        assert!(err.to_string().contains("mayor"));
        // Every role the node interprets can be granted, `admin` (the store's `mesh`
        // namespace) among them.
        let every: Vec<String> = ticket::KNOWN_ROLES.iter().map(|r| r.to_string()).collect();
        assert!(every.contains(&"admin".to_string()));
        issue(&key, PeerId::random(), &every, Duration::from_secs(60)).unwrap();
    }

    #[test]
    fn revoking_something_that_is_not_this_meshs_ticket_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_, key, _) = init(dir.path(), "a").unwrap();
        let (_, other_key, _) = init(dir.path(), "b").unwrap();
        let garbage = RevokeTarget::Ticket {
            path: "g".into(),
            bytes: b"not a ticket at all".to_vec(),
        };
        assert!(matches!(
            revoke(&key, garbage),
            Err(MeshError::NotATicket { .. })
        ));
        let foreign = issue(&other_key, PeerId::random(), &[], Duration::from_secs(60)).unwrap();
        let foreign = RevokeTarget::Ticket {
            path: "f".into(),
            bytes: foreign,
        };
        assert!(matches!(
            revoke(&key, foreign),
            Err(MeshError::ForeignTicket { .. })
        ));
    }

    #[test]
    fn a_garbage_root_key_is_named_as_a_root_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("x.root.key");
        std::fs::write(&key, b"garbage").unwrap();
        let err = issue(&key, PeerId::random(), &[], Duration::from_secs(60)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("mesh root key") && !text.contains("move it away"),
            "{text}"
        );
    }

    #[test]
    fn mesh_names_must_be_plain_file_names() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["../../x", "a/b", "", ".hidden", "..", "x y"] {
            assert!(
                matches!(init(dir.path(), bad), Err(MeshError::BadName(_))),
                "{bad:?} accepted"
            );
        }
        assert!(init(dir.path(), "home-lab_2.test").is_ok());
        // Nothing was written outside the directory.
        assert!(!dir.path().parent().unwrap().join("x.root.key").exists());
    }
}
