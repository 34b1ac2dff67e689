//! What the control API shows of the store and takes from it, and the `kv_changed` event.

use fogmesh_kv::{Entry, Hlc, Slot};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use crate::runtime::events::EventKind;

/// A key's value changed on this node: a local write, or one merged from elsewhere (`via`:
/// `local`, `gossip`, `sync`, `push`). What `kv watch` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KvChanged {
    pub namespace: String,
    pub key: String,
    pub deleted: bool,
    /// The value when it is UTF-8 and at most 1 KiB.
    pub value: Option<String>,
    pub value_len: usize,
    pub author: String,
    pub hlc: String,
    pub via: String,
}

impl EventKind for KvChanged {
    const KIND: &'static str = "kv_changed";
}

/// A write arrived that lost to another author's newer one already here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KvConflict {
    pub namespace: String,
    pub key: String,
    pub kept: String,
    pub overwritten: String,
}

impl EventKind for KvConflict {
    const KIND: &'static str = "kv_conflict";
}

/// Values shown in events when at most this long (the event says the length either way).
const EVENT_VALUE_BYTES: usize = 1024;

/// One write of a control request: a value, or `None` to delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvWrite {
    pub namespace: String,
    pub key: String,
    pub value: Option<Vec<u8>>,
}

/// What a durable write answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvWritten {
    pub written: usize,
    /// The clock of the last write (`wall_ms.counter`).
    pub hlc: String,
    pub author: String,
}

/// One version of a key, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionView {
    /// The value as text if it is UTF-8.
    pub value: Option<String>,
    pub value_hex: Option<String>,
    pub deleted: bool,
    pub author: String,
    pub hlc: String,
    pub written_ms: u64,
}

/// A key, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyView {
    pub namespace: String,
    pub key: String,
    #[serde(flatten)]
    pub winner: VersionView,
    /// The versions it overwrote that this node saw, newest first.
    pub overwritten: Vec<VersionView>,
}

pub(crate) fn author_text(author: &[u8]) -> String {
    PeerId::from_bytes(author)
        .map(|p| p.to_string())
        .unwrap_or_else(|_| hex::encode(author))
}

pub(crate) fn hlc_text(hlc: &Hlc) -> String {
    format!("{}.{}", hlc.wall_ms, hlc.counter)
}

impl VersionView {
    pub fn of(entry: &Entry) -> Self {
        let value = entry.value.as_ref();
        VersionView {
            value: value.and_then(|v| String::from_utf8(v.to_vec()).ok()),
            value_hex: value.map(hex::encode),
            deleted: value.is_none(),
            author: author_text(&entry.version.author),
            hlc: hlc_text(&entry.version.hlc),
            written_ms: entry.version.hlc.wall_ms,
        }
    }
}

impl KeyView {
    pub fn of(slot: &Slot) -> Self {
        KeyView {
            namespace: slot.winner.namespace.clone(),
            key: slot.winner.key.clone(),
            winner: VersionView::of(&slot.winner),
            overwritten: slot.overwritten.iter().map(VersionView::of).collect(),
        }
    }
}

pub(crate) fn changed_event(entry: &Entry, via: &'static str) -> KvChanged {
    let value = entry.value.as_ref();
    KvChanged {
        namespace: entry.namespace.clone(),
        key: entry.key.clone(),
        deleted: value.is_none(),
        value: value
            .filter(|v| v.len() <= EVENT_VALUE_BYTES)
            .and_then(|v| String::from_utf8(v.to_vec()).ok()),
        value_len: value.map_or(0, |v| v.len()),
        author: author_text(&entry.version.author),
        hlc: hlc_text(&entry.version.hlc),
        via: via.into(),
    }
}
