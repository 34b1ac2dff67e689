//! A guard against disk work where there must be none.
//!
//! The node's swarm task holds [`forbid`] while it handles an input, so no capability (and
//! nothing in the runtime) touches a table there: writes go to the storage task as batches,
//! reads as jobs. A table or the store used on a thread that holds the guard panics in debug
//! builds, so every test that runs a node checks the rule, and logs an error in release
//! builds, where a slow turn is better than a dead node.

use std::cell::Cell;

thread_local! {
    static FORBIDDEN: Cell<bool> = const { Cell::new(false) };
}

/// Disk work is forbidden on this thread until this is dropped.
#[derive(Debug)]
#[must_use = "the guard forbids disk work only while it lives"]
pub struct Forbidden {
    previous: bool,
}

/// Forbids disk work on this thread while the returned guard lives. Hold it only across
/// code that does not await (a task may move between threads at an await).
pub fn forbid() -> Forbidden {
    Forbidden {
        previous: FORBIDDEN.with(|f| f.replace(true)),
    }
}

impl Drop for Forbidden {
    fn drop(&mut self) {
        FORBIDDEN.with(|f| f.set(self.previous));
    }
}

/// Called before every disk access, naming what is accessed.
pub(crate) fn check(what: &'static str) {
    if FORBIDDEN.with(Cell::get) {
        if cfg!(debug_assertions) {
            panic!("disk access ({what}) on a thread where it is forbidden (the swarm task)");
        }
        tracing::error!(table = what, "disk access on the swarm task");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_forbids_while_it_lives_and_nests() {
        check("free");
        let outer = forbid();
        let inner = forbid();
        drop(inner);
        assert!(std::panic::catch_unwind(|| check("still forbidden")).is_err());
        drop(outer);
        check("free again");
    }
}
