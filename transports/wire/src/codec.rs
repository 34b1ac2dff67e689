//! The one codec for fogmesh's own wire messages and stored values.
//!
//! Everything fogmesh encodes itself (signed envelopes, telemetry records, stored registry
//! entries) goes through this module, so the format can be swapped in one place. The format is
//! CBOR via `serde_cbor`; structs are encoded as maps with field names, which keeps old stored
//! values readable when a field is added with `#[serde(default)]`.
//!
//! Decoding is bounded: [`decode`] refuses input longer than [`MAX_DECODE_LEN`] before looking
//! at it, and callers that know a tighter bound use [`decode_bounded`].

use serde::{de::DeserializeOwned, Serialize};

/// Upper bound for any single value decoded through this module (1 MiB).
pub const MAX_DECODE_LEN: usize = 1024 * 1024;

/// Why a value could not be encoded or decoded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CodecError {
    #[error("input of {len} bytes exceeds the limit of {max} bytes")]
    TooLong { len: usize, max: usize },
    #[error("malformed CBOR: {0}")]
    Malformed(String),
    #[error("value cannot be encoded: {0}")]
    Encode(String),
}

/// Encodes `value` as CBOR.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    serde_cbor::to_vec(value).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes a CBOR value of at most [`MAX_DECODE_LEN`] bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_bounded(bytes, MAX_DECODE_LEN)
}

/// Decodes a CBOR value, refusing input longer than `max_len` bytes and trailing bytes.
pub fn decode_bounded<T: DeserializeOwned>(bytes: &[u8], max_len: usize) -> Result<T, CodecError> {
    if bytes.len() > max_len {
        return Err(CodecError::TooLong {
            len: bytes.len(),
            max: max_len,
        });
    }
    // `from_slice` rejects trailing data, so a value cannot smuggle bytes after itself.
    serde_cbor::from_slice(bytes).map_err(|e| CodecError::Malformed(e.to_string()))
}

/// Checks that `bytes` is one well-formed value of at most [`MAX_DECODE_LEN`] bytes, without
/// knowing its type (for store checks).
pub fn check_well_formed(bytes: &[u8]) -> Result<(), CodecError> {
    decode::<serde::de::IgnoredAny>(bytes).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Sample {
        name: String,
        seq: u64,
        load: Option<f32>,
        addrs: Vec<String>,
        blob: Vec<u8>,
    }

    fn sample() -> impl Strategy<Value = Sample> {
        (
            ".{0,40}",
            any::<u64>(),
            proptest::option::of(-1.0e6f32..1.0e6),
            proptest::collection::vec(".{0,20}", 0..5),
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(name, seq, load, addrs, blob)| Sample {
                name,
                seq,
                load,
                addrs,
                blob,
            })
    }

    proptest! {
        #[test]
        fn roundtrip(value in sample()) {
            let bytes = encode(&value).unwrap();
            let back: Sample = decode(&bytes).unwrap();
            prop_assert_eq!(back, value);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<Sample>(&bytes);
        }

        #[test]
        fn truncation_is_an_error(value in sample(), cut in 1usize..8) {
            let bytes = encode(&value).unwrap();
            let cut = cut.min(bytes.len());
            prop_assert!(decode::<Sample>(&bytes[..bytes.len() - cut]).is_err());
        }
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let bytes = vec![0u8; 11];
        match decode_bounded::<u8>(&bytes, 10) {
            Err(CodecError::TooLong { len: 11, max: 10 }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&7u32).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<u32>(&bytes),
            Err(CodecError::Malformed(_))
        ));
    }
}
