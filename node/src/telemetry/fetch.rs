//! One node's record on demand, in one round trip (docs/scale.md): `/fogmesh/telemetry-fetch/1`.
//!
//! In a large mesh a node holds full telemetry only of its own cluster. For any other node
//! it asks someone who holds the record: the node itself when connected, else the
//! coordinator of the node's cluster (from the cluster summaries, [`super::scope::Directory`]),
//! else the node itself again (the request dials it). The answer is the record's signed
//! envelope exactly as its origin sealed it, so the asker checks the origin's signature and
//! trusts the holder for nothing but having kept it; a holder can withhold a record or hand
//! over an older one, never forge one ([`verify_fetched`]).
//!
//! Pure encode, decode and verify; the capability ([`super::service`]) does the asking.

use std::time::Duration;

use fogmesh_wire::codec;
use fogmesh_wire::envelope::{self, MessageKind, MAX_ENVELOPE_LEN};
use fogmesh_wire::framing::ResponseFraming;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::record::{ReceivedTelemetry, TelemetryRecord};
use crate::runtime::capability::Protocol;

pub const FETCH_PROTOCOL: &str = "/fogmesh/telemetry-fetch/1";
/// A request names one PeerId (at most 64 bytes) in CBOR.
pub const MAX_FETCH_REQUEST_BYTES: usize = 128;
pub const MAX_FETCH_RESPONSE_BYTES: usize = MAX_ENVELOPE_LEN + 64;
/// An answer not back within this has failed (it may have dialled first).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Fetches in flight at once on a node; beyond, a new one is refused at once (busy).
pub const MAX_PENDING_FETCHES: usize = 64;

/// `/fogmesh/telemetry-fetch/1`, as the runtime carries it.
pub const FETCH_SPEC: Protocol = Protocol {
    name: FETCH_PROTOCOL,
    max_request: MAX_FETCH_REQUEST_BYTES,
    response: ResponseFraming::Prefixed(MAX_FETCH_RESPONSE_BYTES),
    max_streams: 4,
    timeout: FETCH_TIMEOUT,
};

/// "Send me the latest record you hold of this node."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    /// The origin's PeerId bytes.
    pub origin: ByteBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FetchResponse {
    /// The origin's signed envelope, as sealed.
    Record(ByteBuf),
    NotHeld,
}

/// Why a fetch gave no record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("{asked} holds no record of that node")]
    NotHeld { asked: String },
    #[error("asking {asked} failed: {reason}")]
    Unanswered { asked: String, reason: String },
    #[error("the record {asked} sent is not valid: {reason}")]
    Invalid { asked: String, reason: String },
    #[error("too many fetches in flight ({MAX_PENDING_FETCHES}); try again")]
    Busy,
    #[error("that is not a PeerId")]
    BadPeer,
}

impl FetchRequest {
    pub fn encode(origin: &PeerId) -> Result<Vec<u8>, codec::CodecError> {
        codec::encode(&FetchRequest {
            origin: ByteBuf::from(origin.to_bytes()),
        })
    }

    /// The origin asked for; `None` for anything malformed.
    pub fn decode(bytes: &[u8]) -> Option<PeerId> {
        let request: FetchRequest = codec::decode_bounded(bytes, MAX_FETCH_REQUEST_BYTES).ok()?;
        PeerId::from_bytes(&request.origin).ok()
    }
}

impl FetchResponse {
    pub fn encode(&self) -> Result<Vec<u8>, codec::CodecError> {
        codec::encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<FetchResponse, String> {
        codec::decode_bounded(bytes, MAX_FETCH_RESPONSE_BYTES).map_err(|e| e.to_string())
    }
}

/// Checks a fetched envelope: signed by `expected`, a telemetry record naming it, not from
/// further ahead of `wall_ms` than `max_skew_ms`. Its age is the caller's to judge (the
/// record carries its interval).
pub fn verify_fetched(
    expected: &PeerId,
    sealed: &[u8],
    wall_ms: u64,
    max_skew_ms: u64,
    now_ms: u64,
) -> Result<ReceivedTelemetry, String> {
    let opened = envelope::open(sealed, MessageKind::Telemetry).map_err(|e| e.to_string())?;
    if opened.origin != *expected {
        return Err(format!(
            "signed by {}, not the node asked for",
            opened.origin
        ));
    }
    if opened.timestamp_ms > wall_ms.saturating_add(max_skew_ms) {
        return Err("from the future".into());
    }
    let record: TelemetryRecord = codec::decode(&opened.body).map_err(|e| e.to_string())?;
    if record.peer_id != expected.to_string() {
        return Err("the record names another node".into());
    }
    // Received "now" in node time, minus its age by the sender's clock: a fetched record is
    // as fresh as it is old, not as fresh as the fetch.
    let age_ms = wall_ms.saturating_sub(opened.timestamp_ms);
    Ok(ReceivedTelemetry {
        seq: opened.seq,
        timestamp_ms: opened.timestamp_ms,
        received_at_ms: now_ms.saturating_sub(age_ms),
        record,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use libp2p::identity::Keypair;
    use proptest::prelude::*;

    fn sealed(key: &Keypair, names: Option<String>, at_ms: u64) -> Vec<u8> {
        let record = TelemetryRecord {
            peer_id: names.unwrap_or_else(|| key.public().to_peer_id().to_string()),
            version: "t".into(),
            uptime_s: 1,
            cpu_load_pct: None,
            mem_used_bytes: None,
            mem_total_bytes: None,
            rss_bytes: None,
            peer_count: 0,
            listen_addrs: vec![],
            interval_ms: 1_000,
            device: None,
        };
        envelope::seal(
            key,
            MessageKind::Telemetry,
            at_ms,
            at_ms,
            codec::encode(&record).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn a_record_fetched_from_a_holder_is_checked_against_its_origin() {
        let origin = Keypair::generate_ed25519();
        let holder = Keypair::generate_ed25519();
        let id = origin.public().to_peer_id();
        let good = sealed(&origin, None, 10_000);
        let fetched = verify_fetched(&id, &good, 12_000, 30_000, 50_000).unwrap();
        assert_eq!(fetched.record.peer_id, id.to_string());
        assert_eq!(fetched.received_at_ms, 48_000, "its age carries over");
        // The holder re-signing a record of the origin under its own key: refused.
        let forged = sealed(&holder, Some(id.to_string()), 10_000);
        assert!(verify_fetched(&id, &forged, 12_000, 30_000, 50_000).is_err());
        // Someone else's genuine record in answer to a request for this one: refused.
        let other = sealed(&holder, None, 10_000);
        assert!(verify_fetched(&id, &other, 12_000, 30_000, 50_000).is_err());
        // One bit flipped anywhere: refused.
        let mut flipped = good.clone();
        let at = flipped.len() / 2;
        flipped[at] ^= 1;
        assert!(verify_fetched(&id, &flipped, 12_000, 30_000, 50_000).is_err());
        // Far ahead of our clock: refused.
        assert!(verify_fetched(&id, &good, 1_000, 5_000, 50_000).is_err());
    }

    #[test]
    fn requests_round_trip_and_junk_is_refused() {
        let id = Keypair::generate_ed25519().public().to_peer_id();
        let bytes = FetchRequest::encode(&id).unwrap();
        assert!(bytes.len() <= MAX_FETCH_REQUEST_BYTES);
        assert_eq!(FetchRequest::decode(&bytes), Some(id));
        let answer = FetchResponse::Record(ByteBuf::from(vec![1, 2, 3]));
        assert_eq!(FetchResponse::decode(&answer.encode().unwrap()), Ok(answer));
    }

    proptest! {
        #[test]
        fn no_input_makes_decoding_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = FetchRequest::decode(&bytes);
            let _ = FetchResponse::decode(&bytes);
            let id = Keypair::generate_ed25519().public().to_peer_id();
            prop_assert!(verify_fetched(&id, &bytes, 0, 0, 0).is_err());
        }
    }
}
