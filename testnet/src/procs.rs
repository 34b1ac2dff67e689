//! Processes the testnet starts: identity by PID *and* start time, so `down` never signals a
//! process that merely inherited a recycled PID. Start times and CPU/RSS come from `/proc`
//! (Linux); elsewhere the start time is unknown and only the PID is checked.
//!
//! A node someone restarted by hand has a PID the state file does not know. It is still tied
//! to the testnet if its data dir's `control.json` names it *and* its command line is a
//! `fogmesh` node run with that very `--data-dir`: the control file alone could be stale and
//! name a recycled PID, the command line alone could be a second node fighting over the dir.

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// A process's start time in clock ticks since boot (field 22 of `/proc/PID/stat`).
pub fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid).and_then(|f| f.get(19).and_then(|v| v.parse().ok()))
}

/// Fields of `/proc/PID/stat` after the command name, so field 3 (state) is index 0.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces or ')'.
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// True if `pid` is a live (not zombie) process with the recorded start time.
pub fn is_ours_and_alive(pid: u32, recorded_start: Option<u64>) -> bool {
    if cfg!(target_os = "linux") {
        match stat_fields(pid) {
            None => false,
            Some(fields) => {
                let zombie = fields.first().map(|s| s == "Z" || s == "X").unwrap_or(true);
                let same = match recorded_start {
                    Some(recorded) => start_time(pid) == Some(recorded),
                    None => true,
                };
                !zombie && same
            }
        }
    } else {
        kill(Pid::from_raw(pid as i32), None).is_ok()
    }
}

/// The argument vector of `pid` (`/proc/PID/cmdline`), non-UTF-8 bytes replaced.
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if bytes.is_empty() {
        // Kernel threads and zombies have no command line.
        return None;
    }
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(&bytes);
    Some(
        bytes
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// The working directory of `pid`, to resolve a relative `--data-dir` it was given.
pub fn cwd(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// What the testnet needs to know about a process to decide whether it is a node's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub start_time: Option<u64>,
    pub argv: Vec<String>,
    pub cwd: Option<PathBuf>,
}

/// Reads [`ProcInfo`] of a live (not zombie) process from `/proc`.
pub fn proc_info(pid: u32) -> Option<ProcInfo> {
    if !is_ours_and_alive(pid, None) {
        return None;
    }
    Some(ProcInfo {
        start_time: start_time(pid),
        // Without `/proc` the command line is unknown, and an empty one matches no node.
        argv: cmdline(pid).unwrap_or_default(),
        cwd: cwd(pid),
    })
}

/// The `--data-dir` a `fogmesh` node run was given, if `argv` is one. A node run is the
/// binary (named `fogmesh`, or like `binary`) followed by `run` or directly by flags (a bare
/// `fogmesh --flags` runs a node too); `fogmesh status --data-dir D` and other client commands
/// are not. The last `--data-dir` wins, as it would for the node.
pub fn node_data_dir_arg<'a>(argv: &'a [String], binary: Option<&Path>) -> Option<&'a str> {
    let program = Path::new(argv.first()?).file_name()?;
    let named_like = program == OsStr::new("fogmesh")
        || binary
            .and_then(Path::file_name)
            .is_some_and(|b| b == program);
    if !named_like {
        return None;
    }
    let first = argv.get(1)?;
    if first != "run" && !first.starts_with('-') {
        return None;
    }
    let mut found = None;
    let mut args = argv[1..].iter();
    while let Some(arg) = args.next() {
        if arg == "--" {
            break;
        }
        if arg == "--data-dir" {
            found = Some(args.next()?.as_str());
        } else if let Some(value) = arg.strip_prefix("--data-dir=") {
            found = Some(value);
        }
    }
    found
}

/// `path` made absolute against `base` and with `.`/`..` resolved by the text alone.
fn lexical_absolute(base: Option<&Path>, path: &Path) -> Option<PathBuf> {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base?.join(path)
    };
    let mut out = PathBuf::new();
    for part in joined.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    Some(out)
}

/// True if `arg` (as given to a process whose working directory is `cwd`) names the directory
/// `data_dir`. Symlinks are resolved when both paths exist; otherwise the text decides.
pub fn same_dir(cwd: Option<&Path>, arg: &str, data_dir: &Path) -> bool {
    let here = std::env::current_dir().ok();
    let (Some(theirs), Some(ours)) = (
        lexical_absolute(cwd, Path::new(arg)),
        lexical_absolute(here.as_deref(), data_dir),
    ) else {
        return false;
    };
    match (theirs.canonicalize(), ours.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => theirs == ours,
    }
}

/// How the live process of a node was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FoundBy {
    /// The PID and start time recorded in the state file.
    RecordedPid,
    /// The data dir's `control.json`, confirmed by the process's command line.
    ControlFile,
}

/// A live process tied to a testnet node. Keeps the start time it had when found, so a later
/// signal cannot hit a process that took over the PID in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeProcess {
    pub pid: u32,
    pub start_time: Option<u64>,
    pub found_by: FoundBy,
}

impl NodeProcess {
    pub fn is_alive(&self) -> bool {
        is_ours_and_alive(self.pid, self.start_time)
    }
}

/// What is known about one node, for [`choose`].
#[derive(Debug, Clone, Copy)]
pub struct NodeClues<'a> {
    pub recorded_pid: u32,
    pub recorded_start: Option<u64>,
    /// The PID `<data_dir>/control.json` names, if the file is there and readable.
    pub control_pid: Option<u32>,
    pub data_dir: &'a Path,
    /// The binary the testnet started, to recognise its command lines.
    pub binary: Option<&'a Path>,
}

/// Which live process, if any, is the node. The recorded process wins while it lives; then a
/// process named by the control file counts only if its command line runs a node on this very
/// data dir. `info` answers for live processes only (`None` for dead or zombie ones).
pub fn choose(
    clues: &NodeClues<'_>,
    info: impl Fn(u32) -> Option<ProcInfo>,
) -> Option<NodeProcess> {
    if let Some(recorded) = info(clues.recorded_pid) {
        let same = match clues.recorded_start {
            Some(start) => recorded.start_time == Some(start),
            None => true,
        };
        if same {
            return Some(NodeProcess {
                pid: clues.recorded_pid,
                start_time: clues.recorded_start,
                found_by: FoundBy::RecordedPid,
            });
        }
    }
    let pid = clues.control_pid?;
    let candidate = info(pid)?;
    let arg = node_data_dir_arg(&candidate.argv, clues.binary)?;
    same_dir(candidate.cwd.as_deref(), arg, clues.data_dir).then_some(NodeProcess {
        pid,
        start_time: candidate.start_time,
        found_by: FoundBy::ControlFile,
    })
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: Signal) -> Result<(), String> {
    kill(Pid::from_raw(pid as i32), signal).map_err(|e| e.to_string())
}

/// Resident memory of `pid` in bytes (`VmRSS` of `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User plus system CPU time of `pid` in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let fields = stat_fields(pid)?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second.
pub fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn reads_own_process() {
        let me = std::process::id();
        let start = start_time(me);
        assert!(start.is_some());
        assert!(is_ours_and_alive(me, start));
        assert!(!is_ours_and_alive(me, start.map(|s| s + 1)));
        assert!(rss_bytes(me).unwrap() > 0);
        assert!(cpu_ticks(me).is_some());
        let info = proc_info(me).unwrap();
        assert_eq!(info.start_time, start);
        assert!(!info.argv.is_empty());
        assert_eq!(info.cwd, std::env::current_dir().ok());
    }

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn recognises_node_runs_and_their_data_dir() {
        let bin = Some(Path::new("/build/target/debug/fogmesh"));
        for (line, want) in [
            (
                "/x/fogmesh run --config c --data-dir /tn/node-1 --no-mdns",
                Some("/tn/node-1"),
            ),
            ("fogmesh --data-dir=/tn/node-1", Some("/tn/node-1")),
            ("fogmesh run --data-dir /a --data-dir /b", Some("/b")),
            // Client commands name a data dir too, but are not the node.
            ("fogmesh status --data-dir /tn/node-1", None),
            ("fogmesh id --data-dir /tn/node-1", None),
            ("fogmesh run --no-mdns", None),
            ("fogmesh run --data-dir", None),
            ("fogmesh run -- --data-dir /tn/node-1", None),
            ("/usr/bin/sleep --data-dir /tn/node-1", None),
            ("fogmesh", None),
        ] {
            assert_eq!(node_data_dir_arg(&argv(line), bin), want, "{line}");
        }
        // A binary renamed by the build is recognised by the name the testnet ran.
        let renamed = Some(Path::new("/opt/fm-node"));
        assert_eq!(
            node_data_dir_arg(&argv("/opt/fm-node run --data-dir /d"), renamed),
            Some("/d")
        );
        assert_eq!(
            node_data_dir_arg(&argv("/opt/fm-node run --data-dir /d"), bin),
            None
        );
    }

    #[test]
    fn relative_data_dirs_resolve_against_the_process_cwd() {
        let tn = Path::new("/nonexistent-tn/node-1");
        assert!(same_dir(None, "/nonexistent-tn/node-1", tn));
        assert!(same_dir(Some(Path::new("/nonexistent-tn")), "node-1", tn));
        assert!(same_dir(
            Some(Path::new("/nonexistent-tn/x")),
            "../node-1/.",
            tn
        ));
        assert!(!same_dir(Some(Path::new("/elsewhere")), "node-1", tn));
        assert!(!same_dir(None, "node-1", tn), "unknown cwd never matches");
        assert!(!same_dir(None, "/nonexistent-tn/node-10", tn));
    }

    /// A fake process table: pid -> (start time, command line).
    fn table<'a>(rows: &'a [(u32, u64, &'a str)]) -> impl Fn(u32) -> Option<ProcInfo> + 'a {
        move |pid| {
            rows.iter().find(|r| r.0 == pid).map(|r| ProcInfo {
                start_time: Some(r.1),
                argv: argv(r.2),
                cwd: None,
            })
        }
    }

    #[test]
    fn chooses_the_node_process() {
        let dir = Path::new("/nonexistent-tn/node-1");
        let clues = |control_pid| NodeClues {
            recorded_pid: 100,
            recorded_start: Some(7),
            control_pid,
            data_dir: dir,
            binary: None,
        };
        let node = "fogmesh run --data-dir /nonexistent-tn/node-1";
        let found = |pid, found_by, start| {
            Some(NodeProcess {
                pid,
                start_time: Some(start),
                found_by,
            })
        };

        // The recorded process, alive with its start time, is the node.
        let rows = [(100, 7, node), (200, 9, node)];
        assert_eq!(
            choose(&clues(Some(200)), table(&rows)),
            found(100, FoundBy::RecordedPid, 7)
        );
        // Killed and restarted by hand: found through the control file.
        let rows = [(200, 9, node)];
        assert_eq!(
            choose(&clues(Some(200)), table(&rows)),
            found(200, FoundBy::ControlFile, 9)
        );
        // The recorded PID was recycled by another program: not the node, and without a
        // control file nothing is.
        let rows = [(100, 8, "bash")];
        assert_eq!(choose(&clues(None), table(&rows)), None);
        // Stale control file (its process is dead).
        assert_eq!(choose(&clues(Some(200)), table(&[])), None);
        // Control file naming a recycled PID, or a node on another data dir, or a client.
        for other in [
            "bash",
            "fogmesh run --data-dir /nonexistent-tn/node-2",
            "fogmesh status --data-dir /nonexistent-tn/node-1",
        ] {
            let rows = [(200, 9, other)];
            assert_eq!(choose(&clues(Some(200)), table(&rows)), None, "{other}");
        }
        // The control file names the recorded PID, now someone else's.
        let rows = [(100, 8, "bash")];
        assert_eq!(choose(&clues(Some(100)), table(&rows)), None);
    }
}
