//! The testnet's control API token. Nodes refuse writes without their token (the node's
//! `control::access`); a testnet is one person's lab, so `up` makes one token for the whole
//! testnet (`<dir>/api-token`) and gives it to every node it starts as that node's own
//! `api-token` (the node's format: 64 hex digits, mode 0600). The tools that write (the
//! benchmarks, failover's task submissions) send it with every request.

use std::path::{Path, PathBuf};

use crate::{io_err, TestnetError};

pub const TOKEN_FILE: &str = "api-token";

fn token_path(dir: &Path) -> PathBuf {
    dir.join(TOKEN_FILE)
}

/// The testnet's token, made if there is none.
pub fn token(dir: &Path) -> Result<String, TestnetError> {
    let path = token_path(dir);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let text = text.trim();
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(text.to_owned());
        }
    }
    let bytes: [u8; 32] = rand::random();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, &token)?;
    Ok(token)
}

/// Gives a node's data dir the testnet's token, unless it has a token already.
pub fn give(dir: &Path, data_dir: &Path) -> Result<(), TestnetError> {
    let node_token = data_dir.join(TOKEN_FILE);
    if node_token.exists() {
        return Ok(());
    }
    write_private(&node_token, &token(dir)?)
}

fn write_private(path: &Path, text: &str) -> Result<(), TestnetError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    use std::io::Write;
    options
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(io_err(path))
}

/// A client builder that sends the testnet's token with every request (none if the
/// testnet has no token file, as one made by an older `fogmesh`).
pub fn authorized(builder: reqwest::ClientBuilder, dir: &Path) -> reqwest::ClientBuilder {
    let Ok(text) = std::fs::read_to_string(token_path(dir)) else {
        return builder;
    };
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(value) = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", text.trim())) {
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    builder.default_headers(headers)
}
