//! Ed25519 identity keys as X25519 Noise static keys.
//!
//! A node's Noise static key is not a second secret: it is its Ed25519 identity key in
//! Montgomery form. The private half is the Ed25519 secret scalar, `SHA-512(seed)[..32]`
//! (X25519 clamps it, exactly as Ed25519 does); the public half is the birational map of the
//! Ed25519 public point, `u = (1 + y) / (1 - y)`. So anyone who knows a PeerId knows that
//! peer's Noise static key, which is what Noise XK needs from the dialer, and holding the
//! X25519 private key is the same as holding the signing key. Using one key for both jobs
//! this way is analysed (and found sound) in "On using the same key pair for Ed25519 and an
//! X25519 based KEM" (Thormarker, 2021).

use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;
use sha2::{Digest, Sha512};
use zeroize::Zeroizing;

/// Length of X25519 keys.
pub const KEY_LEN: usize = 32;

/// Why a key cannot serve as a Noise static key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("only Ed25519 identities can run Noise XK")]
    NotEd25519,
    #[error("the PeerId does not embed its public key")]
    NotInlineKey,
    #[error("not a valid Ed25519 public key")]
    InvalidPoint,
    #[error("not the canonical encoding of an Ed25519 public key")]
    NonCanonical,
    #[error("low-order Ed25519 public key")]
    WeakKey,
}

/// This node's static Noise key pair, derived from its identity.
pub struct LocalKeys {
    peer_id: PeerId,
    identity_public: [u8; KEY_LEN],
    static_secret: Zeroizing<[u8; KEY_LEN]>,
    static_public: [u8; KEY_LEN],
}

impl std::fmt::Debug for LocalKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKeys")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl LocalKeys {
    pub fn from_identity(identity: &Keypair) -> Result<LocalKeys, KeyError> {
        let ed = identity
            .clone()
            .try_into_ed25519()
            .map_err(|_| KeyError::NotEd25519)?;
        let seed = ed.secret();
        let mut static_secret = Zeroizing::new([0u8; KEY_LEN]);
        let expanded: Zeroizing<[u8; 64]> = Zeroizing::new(Sha512::digest(seed.as_ref()).into());
        static_secret.copy_from_slice(&expanded[..KEY_LEN]);
        let identity_public = ed.public().to_bytes();
        Ok(LocalKeys {
            peer_id: identity.public().to_peer_id(),
            identity_public,
            static_secret,
            static_public: montgomery(&identity_public)?,
        })
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The raw 32-byte Ed25519 public key, as sent in the initiator's handshake payload.
    pub fn identity_public(&self) -> &[u8; KEY_LEN] {
        &self.identity_public
    }

    pub fn static_secret(&self) -> &[u8; KEY_LEN] {
        &self.static_secret
    }

    pub fn static_public(&self) -> &[u8; KEY_LEN] {
        &self.static_public
    }
}

/// The X25519 public key of a raw Ed25519 public key. Rejects encodings that do not decode,
/// non-canonical encodings, and low-order points (whose DH output is predictable).
pub fn montgomery(ed25519_public: &[u8; KEY_LEN]) -> Result<[u8; KEY_LEN], KeyError> {
    let key = ed25519_dalek::VerifyingKey::from_bytes(ed25519_public)
        .map_err(|_| KeyError::InvalidPoint)?;
    // The decoder reduces y modulo p and ignores a sign bit on x = 0, so several byte
    // strings name one point. Accepting them would let one key appear under many PeerIds;
    // like libsodium, only the encoding the point compresses back to is accepted.
    if key.to_edwards().compress().as_bytes() != ed25519_public {
        return Err(KeyError::NonCanonical);
    }
    if key.is_weak() {
        return Err(KeyError::WeakKey);
    }
    Ok(key.to_montgomery().to_bytes())
}

/// The raw Ed25519 public key inside `peer` (Ed25519 PeerIds inline their key).
pub fn ed25519_of(peer: &PeerId) -> Result<[u8; KEY_LEN], KeyError> {
    let hash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    // 0x00 is the identity multihash: the "digest" is the protobuf-encoded key itself.
    if hash.code() != 0 {
        return Err(KeyError::NotInlineKey);
    }
    let key = PublicKey::try_decode_protobuf(hash.digest()).map_err(|_| KeyError::NotInlineKey)?;
    let ed = key.try_into_ed25519().map_err(|_| KeyError::NotEd25519)?;
    Ok(ed.to_bytes())
}

/// The X25519 static key a dialer expects `peer` to hold.
pub fn static_key_of(peer: &PeerId) -> Result<[u8; KEY_LEN], KeyError> {
    montgomery(&ed25519_of(peer)?)
}

/// The PeerId of a raw Ed25519 public key (canonical encodings only, as [`montgomery`]).
pub fn peer_id_of(ed25519_public: &[u8; KEY_LEN]) -> Result<PeerId, KeyError> {
    montgomery(ed25519_public)?;
    let key = libp2p::identity::ed25519::PublicKey::try_from_bytes(ed25519_public)
        .map_err(|_| KeyError::InvalidPoint)?;
    Ok(PublicKey::from(key).to_peer_id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dialer_derives_the_same_static_key_the_owner_holds() {
        for _ in 0..16 {
            let id = Keypair::generate_ed25519();
            let local = LocalKeys::from_identity(&id).unwrap();
            let from_peer_id = static_key_of(&id.public().to_peer_id()).unwrap();
            assert_eq!(&from_peer_id, local.static_public());
            // The private half really is the private key of that public key.
            let public =
                x25519_dalek::x25519(*local.static_secret(), x25519_dalek::X25519_BASEPOINT_BYTES);
            assert_eq!(public, from_peer_id);
            assert_eq!(
                peer_id_of(local.identity_public()).unwrap(),
                id.public().to_peer_id()
            );
        }
    }

    #[test]
    fn refuses_non_ed25519_and_hashed_peer_ids() {
        // A PeerId whose multihash is SHA-256 (as for RSA keys) carries no key to derive from.
        let hashed = PeerId::from_multihash(
            libp2p::multihash::Multihash::<64>::wrap(0x12, &[7u8; 32]).unwrap(),
        )
        .unwrap();
        assert_eq!(static_key_of(&hashed), Err(KeyError::NotInlineKey));
    }

    #[test]
    fn refuses_low_order_points() {
        // The Edwards identity point (y = 1) has order 1.
        let mut identity_point = [0u8; 32];
        identity_point[0] = 1;
        assert_eq!(montgomery(&identity_point), Err(KeyError::WeakKey));
    }

    #[test]
    fn refuses_non_canonical_encodings_of_valid_points() {
        // y = 2^255 - 19 + 18 = p + 18 with the sign bit set: decodes (to the point with
        // y = 18), but is not how that point is written.
        assert_eq!(montgomery(&[0xff; 32]), Err(KeyError::NonCanonical));
        assert_eq!(peer_id_of(&[0xff; 32]), Err(KeyError::NonCanonical));
        // The bytes of p itself: y = 0 written as p + 0.
        let mut p = [0xffu8; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        assert_eq!(montgomery(&p), Err(KeyError::NonCanonical));
        // Every honest key is canonical.
        for _ in 0..8 {
            let id = Keypair::generate_ed25519();
            let local = LocalKeys::from_identity(&id).unwrap();
            assert!(montgomery(local.identity_public()).is_ok());
        }
    }
}
