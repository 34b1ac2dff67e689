//! The one registration list: every capability the node runs, in the order the runtime
//! gives them inputs. Adding a capability is a folder and one line here
//! (`crate::runtime::registration` says what a registration gets and returns).

pub use crate::runtime::registration::{Register, Registered, Setup, SetupError};

/// Every capability, in order.
pub const ALL: &[Register] = &[
    crate::device::register,
    crate::telemetry::register,
    crate::revocations::register,
    crate::relay::register,
    crate::cluster::register,
    crate::kv::register,
    crate::reach::register,
    crate::dashboard::register,
];
