//! Telemetry records and their validation.
//!
//! Every node publishes a [`TelemetryRecord`] in a signed envelope on the telemetry topic.
//! [`TelemetryValidator`] is the pure state machine a receiver runs over each message:
//! `(now, gossipsub author, bytes) -> Accepted | Rejected(reason)`. It keeps the highest
//! sequence number accepted per origin, bounded to [`TelemetryValidator::MAX_TRACKED_ORIGINS`];
//! when full it forgets the origin heard from longest ago (its replays are then still bounded by
//! the freshness window).

use std::collections::HashMap;
use std::time::Duration;

use fogmesh_wire::codec;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use fogmesh_wire::envelope::{self, EnvelopeError, MessageKind};

/// The gossipsub topic telemetry travels on.
pub const TELEMETRY_TOPIC: &str = "fogmesh/telemetry/1";

/// What a node says about itself every telemetry interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryRecord {
    pub peer_id: String,
    pub version: String,
    pub uptime_s: u64,
    /// Whole-system CPU load in percent, if it could be read.
    pub cpu_load_pct: Option<f32>,
    /// Whole-system memory in use and installed, if they could be read.
    pub mem_used_bytes: Option<u64>,
    pub mem_total_bytes: Option<u64>,
    /// This node process's resident memory, if it could be read.
    pub rss_bytes: Option<u64>,
    pub peer_count: u32,
    pub listen_addrs: Vec<String>,
    /// Telemetry interval of the publisher, so receivers can judge staleness per node.
    pub interval_ms: u64,
    /// Device class, power mode and score; absent from nodes that have not sensed yet.
    #[serde(default)]
    pub device: Option<fogmesh_device::DeviceSummary>,
}

/// A telemetry record as a receiver keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceivedTelemetry {
    pub seq: u64,
    pub timestamp_ms: u64,
    pub received_at_ms: u64,
    pub record: TelemetryRecord,
}

impl ReceivedTelemetry {
    /// A node is stale once nothing has been heard from it for three of its intervals.
    pub fn is_stale(&self, now_ms: u64) -> bool {
        let window = self.record.interval_ms.max(1).saturating_mul(3);
        now_ms.saturating_sub(self.received_at_ms) > window
    }
}

/// Why a telemetry message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("oversized")]
    Oversized,
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("bad signature")]
    BadSignature,
    #[error("origin {origin} is not the author {author}")]
    SenderMismatch { origin: String, author: String },
    #[error("stale: {age_ms} ms old")]
    Stale { age_ms: u64 },
    #[error("from the future: {ahead_ms} ms ahead")]
    FromFuture { ahead_ms: u64 },
    #[error("replayed: seq {seq} <= last accepted {last}")]
    Replayed { seq: u64, last: u64 },
}

impl Rejection {
    /// The counter this rejection is counted under (a field of [`RejectionCounters`]), as
    /// named in `docs/telemetry.md` and the test vectors.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Oversized => "oversized",
            Rejection::Malformed(_) => "malformed",
            Rejection::BadSignature => "bad_signature",
            Rejection::SenderMismatch { .. } => "sender_mismatch",
            Rejection::Stale { .. } => "stale",
            Rejection::FromFuture { .. } => "from_future",
            Rejection::Replayed { .. } => "replayed",
        }
    }

    /// Whether gossipsub should drop the message without penalising the peer that sent it:
    /// late and repeated copies reach honest relays too.
    pub fn is_ignorable(&self) -> bool {
        matches!(self, Rejection::Stale { .. } | Rejection::Replayed { .. })
    }
}

impl From<EnvelopeError> for Rejection {
    fn from(e: EnvelopeError) -> Self {
        match e {
            EnvelopeError::Oversized(_) => Rejection::Oversized,
            EnvelopeError::BadSignature => Rejection::BadSignature,
            other => Rejection::Malformed(other.to_string()),
        }
    }
}

pub use crate::runtime::status::RejectionCounters;

impl RejectionCounters {
    pub fn count(&mut self, rejection: &Rejection) {
        let slot = match rejection {
            Rejection::Oversized => &mut self.oversized,
            Rejection::Malformed(_) => &mut self.malformed,
            Rejection::BadSignature => &mut self.bad_signature,
            Rejection::SenderMismatch { .. } => &mut self.sender_mismatch,
            Rejection::Stale { .. } => &mut self.stale,
            Rejection::FromFuture { .. } => &mut self.from_future,
            Rejection::Replayed { .. } => &mut self.replayed,
        };
        *slot += 1;
    }

    pub fn total(&self) -> u64 {
        self.oversized
            + self.malformed
            + self.bad_signature
            + self.sender_mismatch
            + self.stale
            + self.from_future
            + self.replayed
    }
}

/// Acceptance window for telemetry timestamps.
#[derive(Debug, Clone, Copy)]
pub struct FreshnessPolicy {
    /// Oldest a message may be when it arrives.
    pub max_age: Duration,
    /// How far ahead of our clock a sender's clock may run.
    pub max_clock_skew: Duration,
}

impl Default for FreshnessPolicy {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(60),
            max_clock_skew: Duration::from_secs(30),
        }
    }
}

/// An accepted telemetry message.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub origin: PeerId,
    pub telemetry: ReceivedTelemetry,
}

#[derive(Debug, Clone, Copy)]
struct OriginState {
    last_seq: u64,
    last_accepted_ms: u64,
}

/// The receiver-side telemetry state machine.
#[derive(Debug)]
pub struct TelemetryValidator {
    policy: FreshnessPolicy,
    origins: HashMap<PeerId, OriginState>,
    /// The origin and signed timestamp of the last message whose signature verified and
    /// that was not a replay, accepted or refused for its time ([`Self::take_stamp`]).
    stamp: Option<(PeerId, u64)>,
}

impl TelemetryValidator {
    /// Most origins whose last sequence number is remembered.
    pub const MAX_TRACKED_ORIGINS: usize = 4096;

    pub fn new(policy: FreshnessPolicy) -> Self {
        Self {
            policy,
            origins: HashMap::new(),
            stamp: None,
        }
    }

    /// Seeds the replay state from stored telemetry, so a restart does not reopen old seqs.
    pub fn remember(&mut self, origin: PeerId, seq: u64, at_ms: u64) {
        self.insert(
            origin,
            OriginState {
                last_seq: seq,
                last_accepted_ms: at_ms,
            },
        );
    }

    /// Drops an origin's replay state (the origin expired or was evicted).
    pub fn forget(&mut self, origin: &PeerId) {
        self.origins.remove(origin);
    }

    /// The origin and signed timestamp of the message last checked, if its signature
    /// verified and it was no replay: a sample of the origin's clock even when the message
    /// was refused for being too far from ours.
    pub fn take_stamp(&mut self) -> Option<(PeerId, u64)> {
        self.stamp.take()
    }

    /// How many origins' replay state is held.
    pub fn tracked(&self) -> usize {
        self.origins.len()
    }

    /// Validates one message. `author` is the gossipsub-signed source of the message.
    pub fn check(
        &mut self,
        now_ms: u64,
        author: Option<PeerId>,
        bytes: &[u8],
    ) -> Result<Accepted, Rejection> {
        self.stamp = None;
        let opened = envelope::open(bytes, MessageKind::Telemetry)?;
        if author != Some(opened.origin) {
            return Err(sender_mismatch(opened.origin, author));
        }
        if self
            .origins
            .get(&opened.origin)
            .is_none_or(|state| opened.seq > state.last_seq)
        {
            self.stamp = Some((opened.origin, opened.timestamp_ms));
        }
        let max_age = duration_ms(self.policy.max_age);
        let max_skew = duration_ms(self.policy.max_clock_skew);
        if opened.timestamp_ms > now_ms.saturating_add(max_skew) {
            return Err(Rejection::FromFuture {
                ahead_ms: opened.timestamp_ms - now_ms,
            });
        }
        let age_ms = now_ms.saturating_sub(opened.timestamp_ms);
        if age_ms > max_age {
            return Err(Rejection::Stale { age_ms });
        }
        if let Some(state) = self.origins.get(&opened.origin) {
            if opened.seq <= state.last_seq {
                return Err(Rejection::Replayed {
                    seq: opened.seq,
                    last: state.last_seq,
                });
            }
        }
        let record: TelemetryRecord =
            codec::decode(&opened.body).map_err(|e| Rejection::Malformed(e.to_string()))?;
        if record.peer_id != opened.origin.to_string() {
            return Err(sender_mismatch(opened.origin, author));
        }
        self.insert(
            opened.origin,
            OriginState {
                last_seq: opened.seq,
                last_accepted_ms: now_ms,
            },
        );
        Ok(Accepted {
            origin: opened.origin,
            telemetry: ReceivedTelemetry {
                seq: opened.seq,
                timestamp_ms: opened.timestamp_ms,
                received_at_ms: now_ms,
                record,
            },
        })
    }

    fn insert(&mut self, origin: PeerId, state: OriginState) {
        if !self.origins.contains_key(&origin) && self.origins.len() >= Self::MAX_TRACKED_ORIGINS {
            let oldest = self
                .origins
                .iter()
                .min_by_key(|(_, s)| s.last_accepted_ms)
                .map(|(p, _)| *p);
            if let Some(oldest) = oldest {
                self.origins.remove(&oldest);
            }
        }
        self.origins.insert(origin, state);
    }
}

fn sender_mismatch(origin: PeerId, author: Option<PeerId>) -> Rejection {
    Rejection::SenderMismatch {
        origin: origin.to_string(),
        author: author.map_or_else(|| "unknown".into(), |a| a.to_string()),
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The sequence number for the next publication: strictly above the last one, and at least
/// the wall clock in milliseconds so a node that lost its counter still moves forward.
pub fn next_seq(last: u64, now_ms: u64) -> u64 {
    last.saturating_add(1).max(now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fogmesh_wire::envelope::seal;
    use libp2p::identity::Keypair;
    use proptest::prelude::*;

    const NOW: u64 = 1_700_000_000_000;

    fn record_for(key: &Keypair) -> TelemetryRecord {
        TelemetryRecord {
            peer_id: key.public().to_peer_id().to_string(),
            version: "test".into(),
            uptime_s: 1,
            cpu_load_pct: Some(3.5),
            mem_used_bytes: Some(1),
            mem_total_bytes: Some(2),
            rss_bytes: None,
            peer_count: 4,
            listen_addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
            interval_ms: 1000,
            device: None,
        }
    }

    fn message(key: &Keypair, seq: u64, ts: u64) -> Vec<u8> {
        let body = codec::encode(&record_for(key)).unwrap();
        seal(key, MessageKind::Telemetry, seq, ts, body).unwrap()
    }

    fn validator() -> TelemetryValidator {
        TelemetryValidator::new(FreshnessPolicy::default())
    }

    fn author(key: &Keypair) -> Option<PeerId> {
        Some(key.public().to_peer_id())
    }

    #[test]
    fn accepts_fresh_signed_telemetry() {
        let key = Keypair::generate_ed25519();
        let mut v = validator();
        let acc = v.check(NOW, author(&key), &message(&key, 1, NOW)).unwrap();
        assert_eq!(acc.origin, key.public().to_peer_id());
        assert_eq!(acc.telemetry.record, record_for(&key));
        assert_eq!(acc.telemetry.received_at_ms, NOW);
    }

    #[test]
    fn rejects_replay_and_old_sequence() {
        let key = Keypair::generate_ed25519();
        let mut v = validator();
        v.check(NOW, author(&key), &message(&key, 10, NOW)).unwrap();
        assert!(matches!(
            v.check(NOW, author(&key), &message(&key, 10, NOW)),
            Err(Rejection::Replayed { seq: 10, last: 10 })
        ));
        assert!(matches!(
            v.check(NOW, author(&key), &message(&key, 9, NOW)),
            Err(Rejection::Replayed { .. })
        ));
        assert!(v.check(NOW, author(&key), &message(&key, 11, NOW)).is_ok());
    }

    #[test]
    fn remembered_sequence_survives_restart() {
        let key = Keypair::generate_ed25519();
        let mut v = validator();
        v.remember(key.public().to_peer_id(), 50, NOW);
        assert!(matches!(
            v.check(NOW, author(&key), &message(&key, 50, NOW)),
            Err(Rejection::Replayed { .. })
        ));
    }

    #[test]
    fn rejects_stale_and_future() {
        let key = Keypair::generate_ed25519();
        let mut v = validator();
        assert!(matches!(
            v.check(NOW, author(&key), &message(&key, 1, NOW - 61_000)),
            Err(Rejection::Stale { age_ms: 61_000 })
        ));
        assert!(matches!(
            v.check(NOW, author(&key), &message(&key, 1, NOW + 31_000)),
            Err(Rejection::FromFuture { ahead_ms: 31_000 })
        ));
        // Inside both bounds is fine.
        assert!(v
            .check(NOW, author(&key), &message(&key, 1, NOW + 29_000))
            .is_ok());
    }

    #[test]
    fn rejects_message_relayed_under_another_author() {
        let key = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let mut v = validator();
        assert!(matches!(
            v.check(NOW, author(&other), &message(&key, 1, NOW)),
            Err(Rejection::SenderMismatch { .. })
        ));
        assert!(matches!(
            v.check(NOW, None, &message(&key, 1, NOW)),
            Err(Rejection::SenderMismatch { .. })
        ));
    }

    #[test]
    fn rejects_record_claiming_another_peer() {
        let key = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let body = codec::encode(&record_for(&other)).unwrap();
        let bytes = seal(&key, MessageKind::Telemetry, 1, NOW, body).unwrap();
        assert!(matches!(
            validator().check(NOW, author(&key), &bytes),
            Err(Rejection::SenderMismatch { .. })
        ));
    }

    #[test]
    fn rejects_malformed_body_and_bad_signature() {
        let key = Keypair::generate_ed25519();
        let bytes = seal(&key, MessageKind::Telemetry, 1, NOW, vec![0xff, 0xff]).unwrap();
        assert!(matches!(
            validator().check(NOW, author(&key), &bytes),
            Err(Rejection::Malformed(_))
        ));
        let mut env: envelope::Envelope = codec::decode(&message(&key, 1, NOW)).unwrap();
        env.seq = 2;
        let forged = codec::encode(&env).unwrap();
        assert_eq!(
            validator().check(NOW, author(&key), &forged),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            validator().check(NOW, author(&key), &vec![0u8; 70_000]),
            Err(Rejection::Oversized)
        );
    }

    #[test]
    fn relay_reencoding_is_rejected_and_counted_as_malformed() {
        let key = Keypair::generate_ed25519();
        let honest = message(&key, 1, NOW);
        // An extra key appended by a relay: the signature still verifies over the signed
        // fields, but the bytes (and the message id) differ from what the origin sent.
        let mut relayed = honest.clone();
        relayed[0] += 1;
        relayed.extend([0x65, b'r', b'e', b'l', b'a', b'y', 0x01]);
        let mut v = validator();
        let mut counters = RejectionCounters::default();
        let rejection = v.check(NOW, author(&key), &relayed).unwrap_err();
        counters.count(&rejection);
        assert_eq!(rejection.reason(), "malformed");
        assert_eq!(counters.malformed, 1);
        assert_eq!(counters.total(), 1);
        // The refused copy leaves no trace: the honest one is still accepted.
        assert!(v.check(NOW, author(&key), &honest).is_ok());
    }

    #[test]
    fn reasons_are_the_counter_names() {
        let all = [
            Rejection::Oversized,
            Rejection::Malformed(String::new()),
            Rejection::BadSignature,
            Rejection::SenderMismatch {
                origin: String::new(),
                author: String::new(),
            },
            Rejection::Stale { age_ms: 0 },
            Rejection::FromFuture { ahead_ms: 0 },
            Rejection::Replayed { seq: 0, last: 0 },
        ];
        let mut counters = RejectionCounters::default();
        for r in &all {
            counters.count(r);
        }
        let json = serde_json::to_value(&counters).unwrap();
        let fields = json.as_object().unwrap();
        assert_eq!(fields.len(), all.len());
        for r in &all {
            assert_eq!(fields[r.reason()], 1, "{}", r.reason());
        }
        let ignorable: Vec<_> = all.iter().filter(|r| r.is_ignorable()).collect();
        assert_eq!(ignorable.len(), 2);
    }

    /// A record written by some other encoder: the body is signed, so receivers read it
    /// leniently (docs/telemetry.md, "Telemetry record").
    #[derive(Serialize)]
    struct ForeignRecord {
        interval_ms: u64,
        zz_future_field: &'static str,
        listen_addrs: Vec<String>,
        peer_count: u64,
        version: &'static str,
        uptime_s: u64,
        peer_id: String,
        cpu_load_pct: f64,
        device: ForeignDevice,
    }

    #[derive(Serialize)]
    struct ForeignDevice {
        transport: &'static str,
        score: u8,
        mode: &'static str,
        class: &'static str,
    }

    fn foreign(key: &Keypair) -> ForeignRecord {
        ForeignRecord {
            interval_ms: 5000,
            zz_future_field: "ignored",
            listen_addrs: vec![],
            peer_count: 3,
            version: "other",
            uptime_s: 9,
            peer_id: key.public().to_peer_id().to_string(),
            cpu_load_pct: 0.1,
            device: ForeignDevice {
                transport: "bitchat_only",
                score: 2,
                mode: "critical",
                class: "smartphone",
            },
        }
    }

    fn check_body(key: &Keypair, body: Vec<u8>) -> Result<Accepted, Rejection> {
        let bytes = seal(key, MessageKind::Telemetry, 1, NOW, body).unwrap();
        validator().check(NOW, author(key), &bytes)
    }

    #[test]
    fn record_is_read_leniently_as_documented() {
        let key = Keypair::generate_ed25519();
        let accepted = check_body(&key, codec::encode(&foreign(&key)).unwrap()).unwrap();
        let record = accepted.telemetry.record;
        // Keys in another order, an unknown key, a double for a float, an integer for a
        // float, and missing nullable keys (mem_*, rss_bytes, battery_pct, ...).
        assert_eq!(record.cpu_load_pct, Some(0.1));
        assert_eq!(record.mem_used_bytes, None);
        assert_eq!(record.rss_bytes, None);
        assert_eq!(record.peer_count, 3);
        let device = record.device.unwrap();
        assert_eq!(device.score, 2.0);
        assert_eq!(device.battery_pct, None);
        assert_eq!(device.charging, None);
    }

    #[test]
    fn record_type_errors_are_malformed() {
        let key = Keypair::generate_ed25519();
        let mut too_many_peers = foreign(&key);
        too_many_peers.peer_count = u64::from(u32::MAX) + 1;
        let mut unknown_class = foreign(&key);
        unknown_class.device.class = "mainframe";
        let mut duplicate = codec::encode(&foreign(&key)).unwrap();
        // One more map entry: `version` a second time.
        duplicate[0] += 1;
        duplicate.extend([0x67, b'v', b'e', b'r', b's', b'i', b'o', b'n', 0x61, b'x']);
        for (what, body) in [
            (
                "peer_count over u32",
                codec::encode(&too_many_peers).unwrap(),
            ),
            ("unknown class", codec::encode(&unknown_class).unwrap()),
            ("duplicate key", duplicate),
        ] {
            let result = check_body(&key, body);
            assert!(
                matches!(result, Err(Rejection::Malformed(_))),
                "{what}: {result:?}"
            );
        }
    }

    #[test]
    fn origin_table_is_bounded() {
        let mut v = validator();
        for i in 0..(TelemetryValidator::MAX_TRACKED_ORIGINS + 10) {
            v.remember(PeerId::random(), 1, i as u64);
        }
        assert_eq!(v.origins.len(), TelemetryValidator::MAX_TRACKED_ORIGINS);
    }

    #[test]
    fn staleness_is_three_intervals() {
        let key = Keypair::generate_ed25519();
        let rt = ReceivedTelemetry {
            seq: 1,
            timestamp_ms: NOW,
            received_at_ms: NOW,
            record: record_for(&key),
        };
        assert!(!rt.is_stale(NOW + 3000));
        assert!(rt.is_stale(NOW + 3001));
    }

    proptest! {
        #[test]
        fn next_seq_always_increases(last in any::<u64>(), now in any::<u64>()) {
            let next = next_seq(last, now);
            prop_assert!(next > last || last == u64::MAX);
            prop_assert!(next >= now);
        }

        // Under any order of delivery (duplicates included), the accepted sequence numbers
        // from one origin are strictly increasing.
        #[test]
        fn accepted_seqs_strictly_increase(order in proptest::collection::vec(1u64..20, 1..40)) {
            let key = Keypair::generate_ed25519();
            let mut v = validator();
            let mut last = 0;
            for seq in order {
                if let Ok(acc) = v.check(NOW, author(&key), &message(&key, seq, NOW)) {
                    prop_assert!(acc.telemetry.seq > last);
                    last = acc.telemetry.seq;
                }
            }
        }
    }
}
