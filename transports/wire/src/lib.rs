//! fogmesh's own wire formats, shared by the transports, the consensus core, the stores and
//! the node, without pulling in sled or a runtime:
//! - [`codec`] — the one CBOR codec for wire messages and stored values;
//! - [`envelope`] — the signed envelope every application message travels in;
//! - [`framing`] — length-prefixed frames on request-response streams.

pub mod codec;
pub mod envelope;
pub mod framing;

pub use codec::CodecError;
