//! Network namespaces for the NAT lab (docs/nat-lab.md): what the lab needs on the machine,
//! `ip`/`nft` commands with a bound on each, asking a node that runs inside a namespace, and
//! deleting namespaces.
//!
//! Everything here acts on namespaces by name only; nothing touches the namespace this
//! process runs in (its interfaces, routes or rules).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::NatLabError;

/// Where `ip netns add` puts a namespace's handle (and `ip netns list` looks).
pub const NETNS_DIR: &str = "/run/netns";
/// The bound on one `ip`/`nft` command: each does a few syscalls, so one that takes
/// this long is stuck (e.g. on the rtnl lock) and waiting longer would only hide it.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// The bound on asking a node (`fogmesh status|peers --json --api ...` in its namespace).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// The programs the lab runs, as found on this machine.
#[derive(Debug, Clone)]
pub struct Tools {
    pub ip: PathBuf,
    pub nft: PathBuf,
    /// A POSIX shell, to set a sysctl inside a namespace without needing `sysctl`.
    pub sh: PathBuf,
}

/// Checks that the lab can run here (Linux, root, `ip`, `nft` and `sh` present) and
/// finds its tools.
pub fn preflight() -> Result<Tools, NatLabError> {
    if !cfg!(target_os = "linux") {
        return Err(NatLabError::NotLinux);
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(NatLabError::NotRoot);
    }
    let find = |tool: &'static str, package: &'static str| {
        find_tool(tool).ok_or(NatLabError::MissingTool { tool, package })
    };
    Ok(Tools {
        ip: find("ip", "iproute2")?,
        nft: find("nft", "nftables")?,
        sh: find("sh", "dash")?,
    })
}

/// `name` on PATH, or in the sbin directories (a root shell reached through `su` or a test
/// harness may not have them on PATH).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// True if a namespace of that name exists.
pub fn exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

/// Names of the existing namespaces that start with `prefix`.
pub fn with_prefix(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(prefix))
        .collect()
}

/// Runs `program args...` (stdin closed, bounded by [`COMMAND_TIMEOUT`]) and returns its
/// standard output; a failure carries the command line and its standard error.
pub async fn run(program: &Path, args: &[String]) -> Result<String, NatLabError> {
    run_with_input(program, args, None).await
}

/// [`run`] with `input` written to the command's standard input.
pub async fn run_with_input(
    program: &Path,
    args: &[String],
    input: Option<&str>,
) -> Result<String, NatLabError> {
    let command = format!("{} {}", program.display(), args.join(" "));
    let failed = |reason: String| NatLabError::Command {
        command: command.clone(),
        reason,
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A command abandoned at its timeout (or by Ctrl-C) must not linger.
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| failed(e.to_string()))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        use tokio::io::AsyncWriteExt;
        stdin
            .write_all(text.as_bytes())
            .await
            .map_err(|e| failed(format!("writing its input: {e}")))?;
        // Dropping stdin closes it: the command sees the end of its input.
    }
    let out = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| failed(format!("no answer within {COMMAND_TIMEOUT:?}")))?
        .map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        return Err(failed(if stderr.is_empty() {
            out.status.to_string()
        } else {
            stderr
        }));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip netns exec <ns> <program> <args...>`, as [`run`].
pub async fn run_in(
    ip: &Path,
    ns: &str,
    program: &Path,
    args: &[&str],
) -> Result<String, NatLabError> {
    let mut all = vec![
        "netns".to_owned(),
        "exec".to_owned(),
        ns.to_owned(),
        program.display().to_string(),
    ];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    run(ip, &all).await
}

/// Deletes the namespaces (last created first); those already gone are skipped. Deleting a
/// namespace removes its interfaces (both ends of its veth pairs) and its nftables rules
/// with it, once no process runs inside it any more. Returns the ones that could not be
/// deleted, with why.
pub async fn delete(ip: &Path, namespaces: &[String]) -> Vec<(String, String)> {
    let mut failed = Vec::new();
    for name in namespaces.iter().rev() {
        if !exists(name) {
            continue;
        }
        let args = ["netns".to_owned(), "del".to_owned(), name.clone()];
        match run(ip, &args).await {
            Ok(_) => tracing::debug!(namespace = %name, "lab namespace deleted"),
            Err(e) => {
                tracing::warn!(namespace = %name, error = %e, "cannot delete lab namespace");
                failed.push((name.clone(), e.to_string()));
            }
        }
    }
    failed
}

/// Asks the node in namespace `ns` whose control API listens on that namespace's
/// 127.0.0.1:`port`: runs `ip netns exec <ns> <binary> <what> --json --api 127.0.0.1:<port>`
/// and parses what it prints. `None` if the node does not answer (within [`QUERY_TIMEOUT`])
/// or the answer does not parse.
pub async fn query<T: DeserializeOwned>(
    ip: &Path,
    binary: &Path,
    ns: &str,
    port: u16,
    what: &str,
) -> Option<T> {
    let mut cmd = tokio::process::Command::new(ip);
    cmd.args(["netns", "exec", ns]).arg(binary).args([
        what,
        "--json",
        "--api",
        &format!("127.0.0.1:{port}"),
    ]);
    for key in crate::scrubbed_env() {
        cmd.env_remove(key);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(QUERY_TIMEOUT, cmd.output())
        .await
        .ok()?
        .ok()?;
    if !out.status.success() {
        return None;
    }
    match serde_json::from_slice(&out.stdout) {
        Ok(parsed) => Some(parsed),
        Err(e) => {
            tracing::debug!(namespace = ns, what, error = %e, "node answer does not parse");
            None
        }
    }
}
