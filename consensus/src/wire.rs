//! Raft messages as they travel between members: a frame naming the cluster, carrying
//! raft-rs's protobuf bytes, which the node puts in its signed envelope. Pure encode/decode,
//! and the admission rule a receiver applies before stepping a message into its group.
//!
//! Member ids: raft-rs names members by `u64`; a member's id is the first 8 bytes of the
//! SHA-256 of its PeerId ([`member_id`]; 0, raft's "nobody", maps to 1). A receiver accepts a
//! message only if it is addressed to it, its `from` is the id of the peer whose signature
//! the envelope carries (so one member cannot speak for another), and that peer is a member
//! of the cluster.

use protobuf::Message as _;
use raft::eraftpb::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Largest frame accepted, encoded: raft messages are capped at 256 KiB of entries
/// (`max_size_per_msg`), plus headers.
pub const MAX_FRAME_BYTES: usize = 320 * 1024;
/// Longest cluster id.
pub const MAX_CLUSTER_ID: usize = 64;

/// Why a frame was refused; each is counted by reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame over {MAX_FRAME_BYTES} bytes")]
    Oversized,
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("cluster id over {MAX_CLUSTER_ID} bytes")]
    BadCluster,
    #[error("not a raft message: {0}")]
    BadRaft(String),
    #[error("the message is for another cluster")]
    OtherCluster,
    #[error("the message is for another member")]
    NotForUs,
    #[error("the message claims to come from another member than its signer")]
    Spoofed,
    #[error("the sender is not a member of the cluster")]
    NotMember,
    #[error("members do not send this kind of raft message to each other")]
    ForbiddenType,
    #[error("only a voting member may lead or ask for votes")]
    NotVoter,
}

impl WireError {
    pub fn reason(&self) -> &'static str {
        match self {
            WireError::Oversized => "oversized",
            WireError::Malformed(_) => "malformed",
            WireError::BadCluster => "bad_cluster",
            WireError::BadRaft(_) => "bad_raft",
            WireError::OtherCluster => "other_cluster",
            WireError::NotForUs => "not_for_us",
            WireError::Spoofed => "spoofed",
            WireError::NotMember => "not_member",
            WireError::ForbiddenType => "forbidden_type",
            WireError::NotVoter => "not_voter",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Frame {
    cluster: String,
    #[serde(with = "serde_bytes")]
    raft: Vec<u8>,
    /// The sender's raft pace in ms per tick ([`crate::pace`]); members follow their
    /// coordinator's. Absent from senders that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pace_ms: Option<u64>,
}

/// A frame as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub cluster: String,
    pub message: Message,
    /// The sender's raft pace, if it said.
    pub pace_ms: Option<u64>,
}

/// The raft member id of a peer (by its PeerId bytes).
pub fn member_id(peer: &[u8]) -> u64 {
    let digest = Sha256::digest(peer);
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes).max(1)
}

/// A message for the wire.
pub fn encode(cluster: &str, message: &Message, pace_ms: u64) -> Result<Vec<u8>, WireError> {
    if cluster.len() > MAX_CLUSTER_ID {
        return Err(WireError::BadCluster);
    }
    let raft = message
        .write_to_bytes()
        .map_err(|e| WireError::BadRaft(e.to_string()))?;
    let bytes = fogmesh_wire::codec::encode(&Frame {
        cluster: cluster.to_owned(),
        raft,
        pace_ms: Some(pace_ms),
    })
    .map_err(|e| WireError::Malformed(e.to_string()))?;
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(WireError::Oversized);
    }
    Ok(bytes)
}

/// A frame from the wire: its cluster and message. Total: never panics, whatever the bytes.
pub fn decode(bytes: &[u8]) -> Result<Received, WireError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(WireError::Oversized);
    }
    let frame: Frame = fogmesh_wire::codec::decode_bounded(bytes, MAX_FRAME_BYTES)
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    if frame.cluster.len() > MAX_CLUSTER_ID {
        return Err(WireError::BadCluster);
    }
    let message =
        Message::parse_from_bytes(&frame.raft).map_err(|e| WireError::BadRaft(e.to_string()))?;
    Ok(Received {
        cluster: frame.cluster,
        message,
        pace_ms: frame.pace_ms,
    })
}

/// Whether a decoded message may be stepped into this member's group: it is for this
/// cluster and this member, of a kind members exchange (replication, votes, heartbeats and
/// the leader's "time out now" of a transfer — not proposals, transfer requests or
/// snapshots, which raft-rs would accept from any peer: commands are proposed by the
/// coordinator itself), and its signer is the member it claims to be, and a member.
pub fn admit(
    cluster: &str,
    message: &Message,
    our_cluster: &str,
    our_id: u64,
    signer: &[u8],
    members: &[u64],
) -> Result<(), WireError> {
    if cluster != our_cluster {
        return Err(WireError::OtherCluster);
    }
    if message.to != our_id {
        return Err(WireError::NotForUs);
    }
    use raft::eraftpb::MessageType as T;
    if !matches!(
        message.get_msg_type(),
        T::MsgAppend
            | T::MsgAppendResponse
            | T::MsgRequestVote
            | T::MsgRequestVoteResponse
            | T::MsgRequestPreVote
            | T::MsgRequestPreVoteResponse
            | T::MsgHeartbeat
            | T::MsgHeartbeatResponse
            | T::MsgTimeoutNow
    ) {
        return Err(WireError::ForbiddenType);
    }
    let signer_id = member_id(signer);
    if message.from != signer_id {
        return Err(WireError::Spoofed);
    }
    if !members.contains(&signer_id) {
        return Err(WireError::NotMember);
    }
    Ok(())
}

/// The second half of admission, once the group's configuration is known: messages only a
/// leader sends (appends, heartbeats) or a candidate sends (vote requests) are accepted only
/// from voters — a learner (a `worker`) must not be able to lead — and "time out now" only
/// from the leader this member follows. `leaders` are the voters, plus the coordinator a
/// joiner asked while it does not know the configuration yet.
pub fn admit_role(
    message: &Message,
    leaders: &[u64],
    leader: Option<u64>,
) -> Result<(), WireError> {
    use raft::eraftpb::MessageType as T;
    match message.get_msg_type() {
        T::MsgAppend | T::MsgHeartbeat | T::MsgRequestVote | T::MsgRequestPreVote => {
            if leaders.contains(&message.from) {
                Ok(())
            } else {
                Err(WireError::NotVoter)
            }
        }
        T::MsgTimeoutNow => {
            if leader == Some(message.from) {
                Ok(())
            } else {
                Err(WireError::NotVoter)
            }
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use raft::eraftpb::{Entry, MessageType};

    fn message(from: u64, to: u64, entries: usize) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.from = from;
        m.to = to;
        m.term = 3;
        m.entries = (0..entries)
            .map(|i| Entry {
                index: i as u64 + 1,
                term: 3,
                data: vec![7; 100].into(),
                ..Default::default()
            })
            .collect::<Vec<_>>()
            .into();
        m
    }

    #[test]
    fn only_voters_lead_or_campaign_and_only_the_leader_times_out_others() {
        let append = message(7, 2, 1);
        assert_eq!(
            admit_role(&append, &[1, 2, 3], Some(1)),
            Err(WireError::NotVoter)
        );
        assert_eq!(admit_role(&append, &[1, 2, 3, 7], Some(1)), Ok(()));
        let mut response = message(7, 2, 0);
        response.set_msg_type(MessageType::MsgAppendResponse);
        assert_eq!(admit_role(&response, &[1, 2, 3], Some(1)), Ok(()));
        let mut timeout = message(3, 2, 0);
        timeout.set_msg_type(MessageType::MsgTimeoutNow);
        assert_eq!(
            admit_role(&timeout, &[1, 2, 3], Some(1)),
            Err(WireError::NotVoter)
        );
        assert_eq!(admit_role(&timeout, &[1, 2, 3], Some(3)), Ok(()));
    }

    #[test]
    fn a_message_round_trips_and_is_admitted_from_its_signer() {
        let alice = b"alice-peer-id".to_vec();
        let bob = b"bob-peer-id".to_vec();
        let (a, b) = (member_id(&alice), member_id(&bob));
        let sent = message(a, b, 3);
        let got = decode(&encode("c1", &sent, 300).unwrap()).unwrap();
        assert_eq!(got.cluster, "c1");
        assert_eq!(got.pace_ms, Some(300));
        let got = got.message;
        assert_eq!(got, sent);
        assert_eq!(admit("c1", &got, "c1", b, &alice, &[a, b]), Ok(()));
    }

    #[test]
    fn strangers_spoofers_and_misdirected_messages_are_refused() {
        let (alice, bob, eve) = (b"alice".to_vec(), b"bob".to_vec(), b"eve".to_vec());
        let (a, b, e) = (member_id(&alice), member_id(&bob), member_id(&eve));
        let members = [a, b];
        let from_alice = message(a, b, 0);
        assert_eq!(
            admit("c1", &from_alice, "c2", b, &alice, &members),
            Err(WireError::OtherCluster)
        );
        assert_eq!(
            admit("c1", &from_alice, "c1", a, &alice, &members),
            Err(WireError::NotForUs)
        );
        // Eve signs a message claiming to be Alice.
        assert_eq!(
            admit("c1", &from_alice, "c1", b, &eve, &members),
            Err(WireError::Spoofed)
        );
        // A member proposing commands, or asking for leadership, is refused.
        for kind in [
            MessageType::MsgPropose,
            MessageType::MsgTransferLeader,
            MessageType::MsgSnapshot,
        ] {
            let mut m = message(a, b, 0);
            m.set_msg_type(kind);
            assert_eq!(
                admit("c1", &m, "c1", b, &alice, &members),
                Err(WireError::ForbiddenType)
            );
        }
        // Eve speaks for herself but is not a member.
        assert_eq!(
            admit("c1", &message(e, b, 0), "c1", b, &eve, &members),
            Err(WireError::NotMember)
        );
    }

    #[test]
    fn oversized_frames_and_clusters_are_refused() {
        let huge = message(1, 2, 4000);
        assert_eq!(encode("c1", &huge, 100), Err(WireError::Oversized));
        assert_eq!(
            decode(&vec![0; MAX_FRAME_BYTES + 1]),
            Err(WireError::Oversized)
        );
        assert_eq!(
            encode(&"x".repeat(MAX_CLUSTER_ID + 1), &message(1, 2, 0), 100),
            Err(WireError::BadCluster)
        );
        assert_ne!(member_id(b""), 0);
    }

    proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn a_frame_with_junk_raft_bytes_is_refused(raft in proptest::collection::vec(any::<u8>(), 1..256)) {
            let bytes = fogmesh_wire::codec::encode(&Frame { cluster: "c".into(), raft, pace_ms: None }).unwrap();
            // Either junk (refused) or, by chance, a valid protobuf message (decoded).
            match decode(&bytes) {
                Ok(received) => prop_assert_eq!(received.cluster, "c"),
                Err(e) => prop_assert!(matches!(e, WireError::BadRaft(_)), "{:?}", e),
            }
        }
    }
}
