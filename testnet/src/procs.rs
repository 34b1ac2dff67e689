//! Processes the testnet starts: identity by PID *and* start time, so `down` never signals a
//! process that merely inherited a recycled PID. Start times and CPU/RSS come from `/proc`
//! (Linux); elsewhere the start time is unknown and only the PID is checked.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

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
    }
}
