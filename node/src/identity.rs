//! The node's Ed25519 identity, kept in `<data_dir>/identity.key`.
//!
//! Created on first run with mode 0600 (written to a temporary file and renamed, so a crash
//! never leaves half a key). A file that exists but cannot be read or decoded is an error
//! naming the file: replacing it would silently change the node's PeerId and lose its
//! standing in the mesh, so a person has to decide.

use std::io::Write;
use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;

pub const IDENTITY_FILE: &str = "identity.key";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read identity file {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("identity file {path} is corrupt ({reason}); move it away to create a new identity, which changes this node's PeerId")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot create identity file {path}: {reason}")]
    Create { path: PathBuf, reason: String },
}

/// Loads the identity from `data_dir`, creating it if there is none.
pub fn load_or_create(data_dir: &Path) -> Result<Keypair, IdentityError> {
    let path = data_dir.join(IDENTITY_FILE);
    if data_dir.is_file() {
        // Reading through it would only say "Not a directory (os error 20)".
        return Err(IdentityError::Unreadable {
            reason: format!(
                "the data dir {} is a file, not a directory",
                data_dir.display()
            ),
            path,
        });
    }
    match std::fs::read(&path) {
        Ok(bytes) => decode(&path, &bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(&path),
        Err(e) => Err(IdentityError::Unreadable {
            path,
            reason: e.to_string(),
        }),
    }
}

fn decode(path: &Path, bytes: &[u8]) -> Result<Keypair, IdentityError> {
    // libp2p's own decode errors talk about its cargo features (`rsa`, ...), which means
    // nothing to a person holding a damaged file: say what the file is instead.
    let keypair = Keypair::from_protobuf_encoding(bytes).map_err(|_| IdentityError::Corrupt {
        path: path.to_path_buf(),
        reason: if bytes.is_empty() {
            "the file is empty".into()
        } else {
            format!(
                "its {} bytes are not a protobuf-encoded Ed25519 key pair",
                bytes.len()
            )
        },
    })?;
    if keypair.clone().try_into_ed25519().is_err() {
        return Err(IdentityError::Corrupt {
            path: path.to_path_buf(),
            reason: "not an Ed25519 key".into(),
        });
    }
    Ok(keypair)
}

fn create(path: &Path) -> Result<Keypair, IdentityError> {
    let keypair = Keypair::generate_ed25519();
    write_keypair(path, &keypair)?;
    Ok(keypair)
}

/// Reads an Ed25519 key pair file; errors name the file.
pub fn read_keypair(path: &Path) -> Result<Keypair, IdentityError> {
    let bytes = std::fs::read(path).map_err(|e| IdentityError::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    decode(path, &bytes)
}

/// Writes `keypair` to `path` with mode 0600, atomically (temporary file, then rename).
pub fn write_keypair(path: &Path, keypair: &Keypair) -> Result<(), IdentityError> {
    let bytes = keypair
        .to_protobuf_encoding()
        .map_err(|e| IdentityError::Create {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    write_secret(path, &bytes)
}

/// Writes a secret (a key, the control API token) to `path`, readable by its owner only
/// (mode 0600), atomically: a temporary file beside it, synced, then renamed.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    let err = |e: std::io::Error| IdentityError::Create {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    if let Some(dir) = path.parent() {
        if dir.is_file() {
            // create_dir_all would only say "File exists (os error 17)".
            return Err(IdentityError::Create {
                path: path.to_path_buf(),
                reason: format!("{} is a file, not a directory", dir.display()),
            });
        }
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
    }
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp).map_err(err)?;
        file.write_all(bytes).map_err(err)?;
        file.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(IDENTITY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn corrupt_file_is_an_error_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        std::fs::write(&path, b"garbage").unwrap();
        let err = load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::Corrupt { .. }));
        assert!(err.to_string().contains("identity.key"));
        assert_eq!(std::fs::read(&path).unwrap(), b"garbage");
    }
}
