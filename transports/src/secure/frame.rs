//! Length framing for handshake and transport messages: a 2-byte big-endian length, then
//! that many bytes. Pure, so it can be fuzzed and property-tested on its own.
//!
//! The length can never exceed 65535 (the Noise maximum message size), so an oversized
//! frame cannot even be expressed; what the decoder refuses is a frame too short to be a
//! Noise message of the kind expected (a transport frame carries at least its 16-byte tag).

use std::ops::Range;

/// Largest frame body: the Noise message size limit.
pub const MAX_FRAME_LEN: usize = 65_535;
/// Length prefix size.
pub const HEADER_LEN: usize = 2;
/// ChaCha20-Poly1305 tag on every encrypted message.
pub const TAG_LEN: usize = 16;
/// Most plaintext one transport frame carries.
pub const MAX_PLAINTEXT: usize = MAX_FRAME_LEN - TAG_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is shorter than the {min}-byte minimum")]
    TooShort { len: usize, min: usize },
    #[error("frame of {0} bytes exceeds the 65535-byte maximum")]
    TooLong(usize),
}

/// What the bytes at the front of a buffer hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peek {
    /// Not a whole frame yet: at least `need` bytes in total are required.
    Incomplete { need: usize },
    /// A whole frame: its body is `buf[body]`, and it occupies `buf[..body.end]`.
    Frame { body: Range<usize> },
}

/// Looks for one frame at the start of `buf`, whose body must be at least `min_len` bytes.
pub fn peek(buf: &[u8], min_len: usize) -> Result<Peek, FrameError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(Peek::Incomplete { need: HEADER_LEN });
    };
    let len = usize::from(u16::from_be_bytes([header[0], header[1]]));
    if len < min_len {
        return Err(FrameError::TooShort { len, min: min_len });
    }
    let end = HEADER_LEN + len;
    if buf.len() < end {
        return Ok(Peek::Incomplete { need: end });
    }
    Ok(Peek::Frame {
        body: HEADER_LEN..end,
    })
}

/// The length prefix for a body of `len` bytes.
pub fn header(len: usize) -> Result<[u8; HEADER_LEN], FrameError> {
    u16::try_from(len)
        .map(u16::to_be_bytes)
        .map_err(|_| FrameError::TooLong(len))
}

/// Appends `body` as one frame to `out`.
pub fn encode_into(body: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    out.extend_from_slice(&header(body.len())?);
    out.extend_from_slice(body);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn needs_the_header_then_the_body() {
        assert_eq!(peek(&[], 0), Ok(Peek::Incomplete { need: 2 }));
        assert_eq!(peek(&[0], 0), Ok(Peek::Incomplete { need: 2 }));
        assert_eq!(peek(&[0, 3, 1], 0), Ok(Peek::Incomplete { need: 5 }));
        assert_eq!(peek(&[0, 3, 1, 2, 3, 9], 0), Ok(Peek::Frame { body: 2..5 }));
    }

    #[test]
    fn refuses_short_bodies_and_long_encodings() {
        assert_eq!(
            peek(&[0, 15], TAG_LEN),
            Err(FrameError::TooShort { len: 15, min: 16 })
        );
        let mut out = Vec::new();
        assert_eq!(
            encode_into(&vec![0; MAX_FRAME_LEN + 1], &mut out),
            Err(FrameError::TooLong(MAX_FRAME_LEN + 1))
        );
        assert!(encode_into(&vec![0; MAX_FRAME_LEN], &mut out).is_ok());
    }

    proptest! {
        #[test]
        fn frames_round_trip_back_to_back(bodies in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..300), 0..8)) {
            let mut wire = Vec::new();
            for body in &bodies {
                encode_into(body, &mut wire).unwrap();
            }
            let mut rest = &wire[..];
            for body in &bodies {
                match peek(rest, 0).unwrap() {
                    Peek::Frame { body: range } => {
                        prop_assert_eq!(&rest[range.clone()], &body[..]);
                        rest = &rest[range.end..];
                    }
                    other => prop_assert!(false, "expected a frame, got {:?}", other),
                }
            }
            prop_assert!(rest.is_empty());
        }

        #[test]
        fn any_prefix_is_incomplete_or_a_frame_never_a_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..600), min in 0usize..64) {
            match peek(&bytes, min) {
                Ok(Peek::Incomplete { need }) => prop_assert!(need > bytes.len()),
                Ok(Peek::Frame { body }) => prop_assert!(body.end <= bytes.len()),
                Err(FrameError::TooShort { len, .. }) => prop_assert!(len < min),
                Err(FrameError::TooLong(_)) => prop_assert!(false),
            }
        }
    }
}
