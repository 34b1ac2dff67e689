//! Peer management: who the node knows, whom it dials and keeps, and the pure cores behind
//! those decisions.
//!
//! - [`manager`] — the `NetworkBehaviour` — the address book, redials, the connection
//!   budget, mDNS dials, the radio's neighbours, DHT walk cadence, closing on request;
//! - [`bootstrap`] — bootstrap redials with backoff (pure);
//! - [`budget`] — which connections to prune above the target (pure);
//! - [`recovery`] — closing stalled links and dialling their peers back quickly (pure);
//! - [`hygiene`] — which of a peer's addresses to keep and pass on (pure).

pub mod bootstrap;
pub mod budget;
pub mod hygiene;
pub mod manager;
pub mod recovery;
