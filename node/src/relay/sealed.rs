//! End-to-end encryption of directed payloads: only the recipient can read what relays carry.
//!
//! The recipient's static key is the X25519 form of its Ed25519 identity, exactly as the
//! secure channel derives it (`fogmesh_transports::secure::keys`), so a sender needs nothing
//! but the recipient's PeerId. Each message uses a fresh ephemeral X25519 key:
//!
//! ```text
//! sealed = ephemeral_public (32) || ChaCha20-Poly1305(key, nonce = 0, plaintext) (len + 16)
//! key    = SHA-256("fogmesh/relay/seal/v1\0" || len || origin PeerId || ephemeral_public
//!                  || recipient_static_public || X25519(ephemeral, recipient_static))
//! ```
//!
//! A key is used for one message only, so the zero nonce never repeats under a key. The
//! origin's PeerId (its public key, inline) is in the derivation: the envelope around the sealed bytes is signed
//! by the origin, and a third party who re-wraps someone else's sealed bytes in an envelope
//! of its own gets a different key, so the recipient cannot be fooled about who wrote what it
//! decrypts. There is no forward secrecy against a later theft of the recipient's identity
//! key (as in any one-message scheme without a round trip).

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use fogmesh_transports::secure::keys::{static_key_of, LocalKeys, KEY_LEN};
use libp2p::PeerId;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

const DOMAIN_TAG: &[u8] = b"fogmesh/relay/seal/v1\0";
/// Bytes sealing adds to a payload: the ephemeral key and the tag.
pub const OVERHEAD: usize = KEY_LEN + 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the recipient's PeerId carries no usable key: {0}")]
    Recipient(String),
    #[error("sealed payload of {0} bytes is shorter than its header")]
    Truncated(usize),
    #[error("sealed payload does not decrypt with this node's key")]
    Undecryptable,
    #[error("key agreement gave a low-order result")]
    WeakKey,
}

fn derive(
    origin: &PeerId,
    ephemeral_public: &[u8; KEY_LEN],
    recipient_public: &[u8; KEY_LEN],
    shared: &[u8; KEY_LEN],
) -> Result<Zeroizing<[u8; 32]>, SealError> {
    // An all-zero shared secret means a low-order point was involved: refuse it rather than
    // derive a key anyone could compute.
    if shared.iter().all(|b| *b == 0) {
        return Err(SealError::WeakKey);
    }
    let mut hasher = Sha256::new();
    hasher.update(DOMAIN_TAG);
    let origin = origin.to_bytes();
    hasher.update((origin.len() as u32).to_be_bytes());
    hasher.update(&origin);
    hasher.update(ephemeral_public);
    hasher.update(recipient_public);
    hasher.update(shared);
    Ok(Zeroizing::new(hasher.finalize().into()))
}

/// Seals `plaintext` for `recipient`, from `origin`. `ephemeral_secret` must be fresh random
/// bytes for every call.
pub fn seal(
    origin: &PeerId,
    recipient: &PeerId,
    ephemeral_secret: Zeroizing<[u8; KEY_LEN]>,
    plaintext: &[u8],
) -> Result<Vec<u8>, SealError> {
    let recipient_public =
        static_key_of(recipient).map_err(|e| SealError::Recipient(e.to_string()))?;
    let ephemeral_public =
        x25519_dalek::x25519(*ephemeral_secret, x25519_dalek::X25519_BASEPOINT_BYTES);
    let shared = Zeroizing::new(x25519_dalek::x25519(*ephemeral_secret, recipient_public));
    let key = derive(origin, &ephemeral_public, &recipient_public, &shared)?;
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key.as_ref()));
    let ciphertext = cipher
        .encrypt(Nonce::from_slice(&[0u8; 12]), plaintext)
        .map_err(|_| SealError::Undecryptable)?;
    let mut out = Vec::with_capacity(KEY_LEN + ciphertext.len());
    out.extend_from_slice(&ephemeral_public);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// Opens bytes sealed for this node by `origin`.
pub fn open(local: &LocalKeys, origin: &PeerId, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
    if sealed.len() < OVERHEAD {
        return Err(SealError::Truncated(sealed.len()));
    }
    let (head, ciphertext) = sealed.split_at(KEY_LEN);
    let mut ephemeral_public = [0u8; KEY_LEN];
    ephemeral_public.copy_from_slice(head);
    let shared = Zeroizing::new(x25519_dalek::x25519(
        *local.static_secret(),
        ephemeral_public,
    ));
    let key = derive(origin, &ephemeral_public, local.static_public(), &shared)?;
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key.as_ref()));
    cipher
        .decrypt(Nonce::from_slice(&[0u8; 12]), ciphertext)
        .map_err(|_| SealError::Undecryptable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;
    use proptest::prelude::*;

    fn ephemeral(byte: u8) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new([byte; KEY_LEN])
    }

    #[test]
    fn only_the_recipient_opens_and_only_for_the_named_origin() {
        let origin = Keypair::generate_ed25519();
        let origin_key = origin.public().to_peer_id();
        let recipient = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let sealed = seal(
            &origin_key,
            &recipient.public().to_peer_id(),
            ephemeral(7),
            b"meet at the hill",
        )
        .unwrap();
        assert_eq!(sealed.len(), 16 + OVERHEAD);
        let mine = LocalKeys::from_identity(&recipient).unwrap();
        assert_eq!(
            open(&mine, &origin_key, &sealed).unwrap(),
            b"meet at the hill"
        );
        // Another node cannot read it.
        let theirs = LocalKeys::from_identity(&other).unwrap();
        assert_eq!(
            open(&theirs, &origin_key, &sealed),
            Err(SealError::Undecryptable)
        );
        // Re-wrapped under another origin, it no longer opens.
        let impostor = other.public().to_peer_id();
        assert_eq!(
            open(&mine, &impostor, &sealed),
            Err(SealError::Undecryptable)
        );
        assert_eq!(
            open(&mine, &origin_key, &sealed[..10]),
            Err(SealError::Truncated(10))
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn any_flipped_bit_is_refused(
            text in proptest::collection::vec(any::<u8>(), 0..256),
            flip in any::<prop::sample::Index>(),
        ) {
            let recipient = Keypair::generate_ed25519();
            let origin_key = Keypair::generate_ed25519().public().to_peer_id();
            let mut sealed = seal(
                &origin_key,
                &recipient.public().to_peer_id(),
                ephemeral(3),
                &text,
            ).unwrap();
            let mine = LocalKeys::from_identity(&recipient).unwrap();
            prop_assert_eq!(open(&mine, &origin_key, &sealed).unwrap(), text);
            let at = flip.index(sealed.len());
            sealed[at] ^= 1;
            prop_assert!(open(&mine, &origin_key, &sealed).is_err());
        }
    }
}
