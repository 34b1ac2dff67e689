//! Relay routing: messages that cross several links (BLE hops, internet links, both), with
//! store-and-forward for recipients out of reach. `docs/relay.md` is the protocol.
//!
//! - [`service`] — the capability, the state machine that makes every decision (its
//!   simulated-network tests in `sim_tests.rs`);
//! - [`tables`] — what it stores;
//! - [`api`] — `/v1/messages`;
//! - [`packet`] — the wire form and its checks (pure, proptested);
//! - [`sealed`] — end-to-end encryption of directed payloads to the recipient's identity;
//! - [`protocol`] — `/fogmesh/relay/1`, one packet per stream with a one-byte hop answer;
//! - [`seen`] — the bounded duplicate filter;
//! - [`held`] — the bounded store of packets kept for recipients not reached yet.

pub mod api;
pub mod held;
pub mod packet;
pub mod protocol;
pub mod sealed;
pub mod seen;
pub mod service;
pub mod tables;

use crate::runtime::registration::SetupError;
use crate::runtime::registration::{Registered, Setup};
use service::{RelayConfig, RelayMetrics, RelayService};

/// Registers the relay capability, seeded from its tables.
pub fn register(setup: &mut Setup<'_>) -> Result<Registered, SetupError> {
    let tables = tables::RelayTables::open(setup.store)?;
    let restored = tables.restore();
    let metrics = RelayMetrics::default();
    metrics.register(setup.metrics);
    let view = setup.views.add(MessagesView::default());
    let mut relay = RelayService::new(
        setup.keypair.clone(),
        RelayConfig {
            // In a closed mesh the ticket says who bridges radio and internet; an open mesh
            // has nobody to say it, so any node with both links does.
            gateway: setup
                .membership
                .is_none_or(|m| m.admission.roles.iter().any(|r| r == "gateway")),
            ..RelayConfig::default()
        },
        rand::SeedableRng::from_entropy(),
        tables,
        view,
        metrics,
    )
    .map_err(|reason| SetupError::Failed {
        what: "relay",
        reason,
    })?;
    relay.restore(
        setup.clock.now_ms(),
        restored.held,
        restored.inbox,
        restored.sent,
    );
    Ok(Registered {
        capability: Box::new(relay),
        routes: api::routes(),
    })
}

use serde::{Deserialize, Serialize};

/// A message this node received (directed to it, or a broadcast), as stored and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxRecord {
    /// Hex of the message id.
    pub id: String,
    pub from: String,
    pub app: String,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    pub broadcast: bool,
    /// Links it crossed to get here.
    pub hops: u8,
    pub created_ms: u64,
    pub received_ms: u64,
}

/// A message this node sent, and whether its recipient acknowledged it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentRecord {
    pub id: String,
    /// `None` for a broadcast (which has no acknowledgement).
    pub to: Option<String>,
    pub app: String,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    pub created_ms: u64,
    pub delivered_ms: Option<u64>,
}

/// A packet kept for a recipient not reached yet, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldRecord {
    #[serde(with = "serde_bytes")]
    pub envelope: Vec<u8>,
    /// The TTL it is forwarded with.
    pub ttl: u8,
    /// A message this node's user sent: never pushed out by packets relayed for others.
    pub own: bool,
    /// Made on this node (a message or an ack): offered on every kind of link.
    #[serde(default)]
    pub local: bool,
    /// Whether it came in over the radio (a non-gateway keeps it on that side).
    pub from_radio: bool,
    pub held_since_ms: u64,
}

/// One message as the control API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView {
    pub id: String,
    /// The other end: the sender of a received message, the recipient of a sent one
    /// (`null` for a broadcast).
    pub peer: Option<String>,
    pub app: String,
    /// The data as UTF-8 (lossy).
    pub text: String,
    pub broadcast: bool,
    pub created_ms: u64,
    /// Received messages: when it arrived. Sent ones: when the recipient acknowledged it.
    pub at_ms: Option<u64>,
    /// `received`, `delivered`, `pending` or `sent` (a broadcast).
    pub status: String,
    /// Received messages: how many links it crossed.
    pub hops: Option<u8>,
}

/// `GET /v1/messages`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagesView {
    /// Newest first.
    pub inbox: Vec<MessageView>,
    /// Newest first.
    pub sent: Vec<MessageView>,
    /// Packets held for others (store-and-forward), this node's own pending ones included.
    pub held: usize,
}

impl InboxRecord {
    pub fn view(&self) -> MessageView {
        MessageView {
            id: self.id.clone(),
            peer: Some(self.from.clone()),
            app: self.app.clone(),
            text: String::from_utf8_lossy(&self.data).into_owned(),
            broadcast: self.broadcast,
            created_ms: self.created_ms,
            at_ms: Some(self.received_ms),
            status: "received".into(),
            hops: Some(self.hops),
        }
    }
}

impl SentRecord {
    pub fn status(&self) -> &'static str {
        match (&self.to, self.delivered_ms) {
            (None, _) => "sent",
            (Some(_), Some(_)) => "delivered",
            (Some(_), None) => "pending",
        }
    }

    pub fn view(&self) -> MessageView {
        MessageView {
            id: self.id.clone(),
            peer: self.to.clone(),
            app: self.app.clone(),
            text: String::from_utf8_lossy(&self.data).into_owned(),
            broadcast: self.to.is_none(),
            created_ms: self.created_ms,
            at_ms: self.delivered_ms,
            status: self.status().into(),
            hops: None,
        }
    }
}
