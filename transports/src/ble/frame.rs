//! The link frames of a BLE link: what one GATT write (or notification) carries.
//!
//! Every datagram on a link is exactly one frame, big-endian, with a one-byte kind:
//!
//! | kind | layout | meaning |
//! |---|---|---|
//! | `0x01` data | seq u32, payload (1 byte or more) | the next piece of the byte stream |
//! | `0x02` fin | seq u32 | the stream ends here (takes a sequence number, so it is ordered) |
//! | `0x03` ack | next u32, window u16, sack (0–16 bytes) | everything below `next` arrived; `window` more frames fit; bit i of `sack` (byte i / 8, least significant bit first): `next + 1 + i` arrived too |
//! | `0x04` probe | — | "are you there, and how much room have you?": answered by an ack |
//! | `0x05` reset | reason u8 | the sender gave the link up |
//!
//! Decoding is total: any byte string is either one frame or a [`FrameError`], never a panic,
//! and every frame re-encodes to the bytes it was decoded from.

/// Bytes a data frame spends before its payload.
pub const DATA_HEADER: usize = 5;
/// The smallest datagram a link may have: BLE's default ATT MTU of 23 leaves 20 bytes for a
/// write, which must hold a header and at least one payload byte, and an ack.
pub const MIN_DATAGRAM: usize = 20;

/// Bytes an ack spends before its selective-ack bitmap.
pub const ACK_HEADER: usize = 7;
/// Longest selective-ack bitmap: 128 frames past the cumulative ack.
pub const MAX_SACK_BYTES: usize = 16;

const KIND_DATA: u8 = 0x01;
const KIND_FIN: u8 = 0x02;
const KIND_ACK: u8 = 0x03;
const KIND_PROBE: u8 = 0x04;
const KIND_RESET: u8 = 0x05;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        seq: u32,
        payload: Vec<u8>,
    },
    Fin {
        seq: u32,
    },
    Ack {
        next: u32,
        window: u16,
        sack: Vec<u8>,
    },
    Probe,
    Reset {
        reason: ResetReason,
    },
}

/// Why a link was reset by its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// The sender closed the link without finishing the stream.
    Aborted,
    /// The sender declared the link dead.
    Dead,
    /// The sender received something it could not make sense of.
    ProtocolViolation,
    /// A reason this version does not know.
    Other(u8),
}

impl ResetReason {
    fn to_byte(self) -> u8 {
        match self {
            ResetReason::Aborted => 1,
            ResetReason::Dead => 2,
            ResetReason::ProtocolViolation => 3,
            ResetReason::Other(b) => b,
        }
    }

    fn from_byte(b: u8) -> Self {
        match b {
            1 => ResetReason::Aborted,
            2 => ResetReason::Dead,
            3 => ResetReason::ProtocolViolation,
            other => ResetReason::Other(other),
        }
    }
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("empty datagram")]
    Empty,
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    #[error("frame of kind {kind:#04x} is {len} bytes, not {expected}")]
    BadLength {
        kind: u8,
        len: usize,
        expected: usize,
    },
    #[error("data frame without payload")]
    EmptyData,
}

impl FrameError {
    /// A stable label for counters.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::Empty => "empty",
            FrameError::UnknownKind(_) => "unknown_kind",
            FrameError::BadLength { .. } => "bad_length",
            FrameError::EmptyData => "empty_data",
        }
    }
}

impl Frame {
    /// Encoded size in bytes.
    pub fn len(&self) -> usize {
        match self {
            Frame::Data { payload, .. } => DATA_HEADER + payload.len(),
            Frame::Fin { .. } => 5,
            Frame::Ack { sack, .. } => ACK_HEADER + sack.len(),
            Frame::Probe => 1,
            Frame::Reset { .. } => 2,
        }
    }

    /// Never true: every frame has at least its kind byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        match self {
            Frame::Data { seq, payload } => {
                out.push(KIND_DATA);
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(payload);
            }
            Frame::Fin { seq } => {
                out.push(KIND_FIN);
                out.extend_from_slice(&seq.to_be_bytes());
            }
            Frame::Ack { next, window, sack } => {
                out.push(KIND_ACK);
                out.extend_from_slice(&next.to_be_bytes());
                out.extend_from_slice(&window.to_be_bytes());
                out.extend_from_slice(sack);
            }
            Frame::Probe => out.push(KIND_PROBE),
            Frame::Reset { reason } => {
                out.push(KIND_RESET);
                out.push(reason.to_byte());
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
        let (&kind, rest) = bytes.split_first().ok_or(FrameError::Empty)?;
        let exact = |expected: usize| {
            if bytes.len() == expected {
                Ok(())
            } else {
                Err(FrameError::BadLength {
                    kind,
                    len: bytes.len(),
                    expected,
                })
            }
        };
        let u32_at =
            |at: usize| u32::from_be_bytes([rest[at], rest[at + 1], rest[at + 2], rest[at + 3]]);
        match kind {
            KIND_DATA => {
                if bytes.len() < DATA_HEADER {
                    return Err(FrameError::BadLength {
                        kind,
                        len: bytes.len(),
                        expected: DATA_HEADER + 1,
                    });
                }
                if bytes.len() == DATA_HEADER {
                    return Err(FrameError::EmptyData);
                }
                Ok(Frame::Data {
                    seq: u32_at(0),
                    payload: rest[4..].to_vec(),
                })
            }
            KIND_FIN => {
                exact(5)?;
                Ok(Frame::Fin { seq: u32_at(0) })
            }
            KIND_ACK => {
                if !(ACK_HEADER..=ACK_HEADER + MAX_SACK_BYTES).contains(&bytes.len()) {
                    return Err(FrameError::BadLength {
                        kind,
                        len: bytes.len(),
                        expected: ACK_HEADER,
                    });
                }
                Ok(Frame::Ack {
                    next: u32_at(0),
                    window: u16::from_be_bytes([rest[4], rest[5]]),
                    sack: rest[6..].to_vec(),
                })
            }
            KIND_PROBE => {
                exact(1)?;
                Ok(Frame::Probe)
            }
            KIND_RESET => {
                exact(2)?;
                Ok(Frame::Reset {
                    reason: ResetReason::from_byte(rest[0]),
                })
            }
            other => Err(FrameError::UnknownKind(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (any::<u32>(), proptest::collection::vec(any::<u8>(), 1..600))
                .prop_map(|(seq, payload)| Frame::Data { seq, payload }),
            any::<u32>().prop_map(|seq| Frame::Fin { seq }),
            (
                any::<u32>(),
                any::<u16>(),
                proptest::collection::vec(any::<u8>(), 0..=MAX_SACK_BYTES)
            )
                .prop_map(|(next, window, sack)| Frame::Ack { next, window, sack }),
            Just(Frame::Probe),
            any::<u8>().prop_map(|b| Frame::Reset {
                reason: ResetReason::from_byte(b)
            }),
        ]
    }

    proptest! {
        #[test]
        fn every_frame_round_trips(frame in any_frame()) {
            let bytes = frame.encode();
            prop_assert_eq!(bytes.len(), frame.len());
            prop_assert_eq!(Frame::decode(&bytes), Ok(frame));
        }

        #[test]
        fn any_bytes_decode_to_a_frame_that_re_encodes_to_them_or_to_an_error(
            bytes in proptest::collection::vec(any::<u8>(), 0..64)
        ) {
            if let Ok(frame) = Frame::decode(&bytes) {
                prop_assert_eq!(frame.encode(), bytes);
            }
        }
    }

    #[test]
    fn short_and_empty_frames_are_refused_by_reason() {
        assert_eq!(Frame::decode(&[]), Err(FrameError::Empty));
        assert_eq!(
            Frame::decode(&[0x01, 0, 0, 0, 1]),
            Err(FrameError::EmptyData)
        );
        assert_eq!(
            Frame::decode(&[0x01, 0, 0]).unwrap_err().reason(),
            "bad_length"
        );
        assert_eq!(
            Frame::decode(&[0x03, 0, 0, 0, 0]).unwrap_err().reason(),
            "bad_length"
        );
        assert_eq!(
            Frame::decode(&[0x04, 0]).unwrap_err().reason(),
            "bad_length"
        );
        assert_eq!(Frame::decode(&[0x99]), Err(FrameError::UnknownKind(0x99)));
    }
}
