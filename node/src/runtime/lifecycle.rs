//! The node lifecycle as an explicit state machine.
//!
//! ```text
//! Booting --Listening--> Idle <--PeerCount--> Active
//!    any (but Draining) --StoreFailed / ListenFailed--> SafeMode
//!    any --ShutdownRequested--> Draining (terminal)
//! ```
//!
//! SafeMode is where a node goes when it can no longer do its job safely but can still be
//! looked at: the store failed (writes are no longer persisted) or every listener closed. It
//! keeps serving the control API and its existing connections, publishes no more telemetry,
//! and stays in SafeMode until it is restarted: a broken disk does not heal itself. A port
//! that cannot be bound at start is different: the node exits with an error instead, because
//! a node that never came up has nothing to show.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Booting,
    Idle,
    Active,
    Draining,
    SafeMode,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Phase::Booting => "booting",
            Phase::Idle => "idle",
            Phase::Active => "active",
            Phase::Draining => "draining",
            Phase::SafeMode => "safe_mode",
        };
        f.write_str(name)
    }
}

/// What the lifecycle reacts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleInput {
    /// The node listens on at least one address.
    Listening,
    /// The number of connected peers changed.
    PeerCount(usize),
    StoreFailed(String),
    ListenFailed(String),
    ShutdownRequested,
}

/// One change of phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub at_ms: u64,
    pub from: Phase,
    pub to: Phase,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct Lifecycle {
    phase: Phase,
    since_ms: u64,
    reason: String,
    peers: usize,
    history: VecDeque<Transition>,
}

impl Lifecycle {
    /// Transitions kept for `fogmesh status`.
    pub const HISTORY: usize = 16;

    pub fn new(now_ms: u64) -> Self {
        Self {
            phase: Phase::Booting,
            since_ms: now_ms,
            reason: "starting".into(),
            peers: 0,
            history: VecDeque::new(),
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn since_ms(&self) -> u64 {
        self.since_ms
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }

    pub fn history(&self) -> impl Iterator<Item = &Transition> {
        self.history.iter()
    }

    /// Applies `input`; returns the transition if the phase changed.
    pub fn apply(&mut self, now_ms: u64, input: LifecycleInput) -> Option<Transition> {
        use Phase::*;
        if let LifecycleInput::PeerCount(n) = input {
            self.peers = n;
        }
        let (next, reason) = match (self.phase, input) {
            (Draining, _) => return None,
            (_, LifecycleInput::ShutdownRequested) => (Draining, "shutdown requested".to_owned()),
            (SafeMode, _) => return None,
            (_, LifecycleInput::StoreFailed(why)) => (SafeMode, format!("store failed: {why}")),
            (_, LifecycleInput::ListenFailed(why)) => (SafeMode, format!("cannot listen: {why}")),
            (Booting, LifecycleInput::Listening) => self.by_peers(),
            (Booting, LifecycleInput::PeerCount(_)) => return None,
            (Idle | Active, LifecycleInput::Listening) => return None,
            (Idle | Active, LifecycleInput::PeerCount(_)) => self.by_peers(),
        };
        if next == self.phase {
            return None;
        }
        let transition = Transition {
            at_ms: now_ms,
            from: self.phase,
            to: next,
            reason: reason.clone(),
        };
        self.phase = next;
        self.since_ms = now_ms;
        self.reason = reason;
        if self.history.len() == Self::HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(transition.clone());
        Some(transition)
    }

    fn by_peers(&self) -> (Phase, String) {
        if self.peers == 0 {
            (Phase::Idle, "no peers connected".into())
        } else {
            (Phase::Active, "peers connected".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn boots_to_idle_then_active_and_back() {
        let mut l = Lifecycle::new(0);
        assert_eq!(l.phase(), Phase::Booting);
        assert_eq!(l.apply(1, LifecycleInput::PeerCount(0)), None);
        assert_eq!(
            l.apply(2, LifecycleInput::Listening).unwrap().to,
            Phase::Idle
        );
        assert_eq!(
            l.apply(3, LifecycleInput::PeerCount(2)).unwrap().to,
            Phase::Active
        );
        assert_eq!(l.apply(4, LifecycleInput::PeerCount(1)), None);
        assert_eq!(
            l.apply(5, LifecycleInput::PeerCount(0)).unwrap().to,
            Phase::Idle
        );
        assert_eq!(l.since_ms(), 5);
    }

    #[test]
    fn peers_seen_while_booting_count_when_listening() {
        let mut l = Lifecycle::new(0);
        l.apply(1, LifecycleInput::PeerCount(3));
        assert_eq!(
            l.apply(2, LifecycleInput::Listening).unwrap().to,
            Phase::Active
        );
    }

    #[test]
    fn safe_mode_is_sticky_until_shutdown() {
        let mut l = Lifecycle::new(0);
        l.apply(1, LifecycleInput::Listening);
        let t = l
            .apply(2, LifecycleInput::StoreFailed("disk full".into()))
            .unwrap();
        assert_eq!(t.to, Phase::SafeMode);
        assert!(l.reason().contains("disk full"));
        assert_eq!(l.apply(3, LifecycleInput::PeerCount(4)), None);
        assert_eq!(
            l.apply(4, LifecycleInput::ShutdownRequested).unwrap().to,
            Phase::Draining
        );
    }

    fn input() -> impl Strategy<Value = LifecycleInput> {
        prop_oneof![
            Just(LifecycleInput::Listening),
            (0usize..5).prop_map(LifecycleInput::PeerCount),
            Just(LifecycleInput::StoreFailed("x".into())),
            Just(LifecycleInput::ListenFailed("y".into())),
            Just(LifecycleInput::ShutdownRequested),
        ]
    }

    proptest! {
        // Whatever happens, Draining is terminal, history is bounded, transitions chain, and
        // the node is Active exactly when it has peers (outside Booting/SafeMode/Draining).
        #[test]
        fn invariants_hold(inputs in proptest::collection::vec(input(), 0..60)) {
            let mut l = Lifecycle::new(0);
            let mut drained = false;
            let mut peers = 0;
            for (i, inp) in inputs.into_iter().enumerate() {
                if let LifecycleInput::PeerCount(n) = inp { peers = n; }
                let before = l.phase();
                if let Some(t) = l.apply(i as u64, inp) {
                    prop_assert_eq!(t.from, before);
                    prop_assert_ne!(t.from, t.to);
                }
                if drained { prop_assert_eq!(l.phase(), Phase::Draining); }
                drained |= l.phase() == Phase::Draining;
                match l.phase() {
                    Phase::Active => prop_assert!(peers > 0),
                    Phase::Idle => prop_assert_eq!(peers, 0),
                    _ => {}
                }
                prop_assert!(l.history().count() <= Lifecycle::HISTORY);
            }
        }
    }
}
