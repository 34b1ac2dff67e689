//! How a capability joins the node: its registration function gets what start-up made
//! ([`Setup`]): the identity, the settings, the store (to open its tables and read what it
//! left last time, before the node runs), the metrics registry, the views, admission, the
//! clock; it returns the capability and its control API routes ([`Registered`]). The list
//! of registrations the node runs is `crate::capabilities::ALL`.

use std::path::Path;

use axum::Router;
use fogmesh_store::Store;
use fogmesh_transports::secure::SecureChannel;
use libp2p::identity::Keypair;
use prometheus_client::registry::Registry;

use crate::admission::{Admissions, Membership};
use crate::config::Settings;
use crate::runtime::capability::Capability;
use crate::runtime::clock::Clock;
use crate::runtime::handle::{NodeHandle, Views};

/// What start-up hands each capability.
pub struct Setup<'a> {
    pub keypair: &'a Keypair,
    pub settings: &'a Settings,
    pub data_dir: &'a Path,
    /// Every link the node can have is a radio one (offline nodes).
    pub radio_only: bool,
    pub store: &'a Store,
    /// The `fogmesh_` registry.
    pub metrics: &'a mut Registry,
    pub views: &'a Views,
    /// The closed mesh this node is in (`None`: an open mesh).
    pub membership: Option<&'a Membership>,
    pub channel: &'a SecureChannel,
    pub admissions: Admissions,
    pub clock: &'a Clock,
}

impl std::fmt::Debug for Setup<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setup")
            .field("data_dir", &self.data_dir)
            .field("radio_only", &self.radio_only)
            .finish_non_exhaustive()
    }
}

/// A capability as registered: the state machine and its routes.
pub struct Registered {
    pub capability: Box<dyn Capability>,
    pub routes: Router<NodeHandle>,
}

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registered")
            .field("capability", &self.capability.name())
            .finish_non_exhaustive()
    }
}

/// A capability's registration: builds it from what start-up made.
pub type Register = fn(&mut Setup<'_>) -> Result<Registered, SetupError>;

/// Why a capability could not be set up; the node does not start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    // The store's errors name the store and say what to do; a prefix would only repeat them.
    #[error(transparent)]
    Store(#[from] fogmesh_store::StoreError),
    #[error("cannot set up {what}: {reason}")]
    Failed { what: &'static str, reason: String },
}
