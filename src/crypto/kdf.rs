//! The key-derivation and AEAD building blocks every other part composes.
//!
//! - `hkdf`: HKDF-SHA256 (RFC 5869).
//! - chain step: `mk = HMAC-SHA256(ck, 0x01)`, `ck' = HMAC-SHA256(ck, 0x02)`.
//! - message AEAD: `key ‖ nonce = HKDF(salt = 0³², ikm = mk, info = label, 44)`,
//!   then ChaCha20-Poly1305 with the caller's associated data.

use chacha20poly1305::aead::{Aead as _, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::montgomery::MontgomeryPoint;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::{Error, Secret32};

/// Length of a Poly1305 tag.
pub(crate) const TAG_LEN: usize = 16;

/// HKDF-SHA256 into a fixed-size output.
pub(crate) fn hkdf<const N: usize>(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    // N is at most 255 * 32 for every caller (constants ≤ 76), so expand
    // cannot fail; keep the zeroed output rather than panic if it ever did.
    if hk.expand(info, &mut out).is_err() {
        out.zeroize();
    }
    out
}

/// HMAC-SHA256(key, data).
pub(crate) fn hmac_sha256(key: &[u8; 32], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so new_from_slice cannot fail.
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return [0u8; 32],
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// A symmetric chain key (1:1 sending/receiving chains and group chains).
pub(crate) fn chain_step(chain_key: &Secret32) -> (MessageKey, Secret32) {
    let mk = hmac_sha256(chain_key.expose(), &[0x01]);
    let next = hmac_sha256(chain_key.expose(), &[0x02]);
    (MessageKey(mk), Secret32::new(next))
}

/// A one-use message key.
#[derive(Clone, Zeroize, ZeroizeOnDrop, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct MessageKey([u8; 32]);

impl std::fmt::Debug for MessageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MessageKey(..)")
    }
}

impl MessageKey {
    /// Wraps raw key bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    #[cfg(test)]
    pub(crate) fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// The AEAD this message key expands to under `label`.
    pub fn aead(&self, label: &[u8]) -> Aead {
        Aead::derive(&self.0, label)
    }
}

/// A ChaCha20-Poly1305 key and nonce derived for exactly one message.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Aead {
    key: [u8; 32],
    nonce: [u8; 12],
}

impl std::fmt::Debug for Aead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Aead(..)")
    }
}

impl Aead {
    /// `key ‖ nonce = HKDF-SHA256(salt = 32 zero bytes, ikm, info = label, 44)`.
    pub fn derive(ikm: &[u8], label: &[u8]) -> Self {
        let mut okm: [u8; 44] = hkdf(&[0u8; 32], ikm, label);
        let mut key = [0u8; 32];
        let mut nonce = [0u8; 12];
        key.copy_from_slice(&okm[..32]);
        nonce.copy_from_slice(&okm[32..]);
        okm.zeroize();
        Self { key, nonce }
    }

    /// Builds from explicit parts (used where the nonce is random or carried).
    pub(crate) fn from_parts(key: [u8; 32], nonce: [u8; 12]) -> Self {
        Self { key, nonce }
    }

    /// The key and nonce, for tests that prove no pair repeats.
    #[cfg(test)]
    pub(crate) fn parts(&self) -> ([u8; 32], [u8; 12]) {
        (self.key, self.nonce)
    }

    /// Encrypts; the output is ciphertext ‖ 16-byte tag.
    pub fn seal(&self, plaintext: &[u8], ad: &[u8]) -> Vec<u8> {
        let cipher = ChaCha20Poly1305::new(&Key::from(self.key));
        let nonce = Nonce::from(self.nonce);
        // Encryption only fails for inputs beyond 2^38 bytes, which every
        // caller's size bounds rule out long before.
        cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: ad,
                },
            )
            .unwrap_or_default()
    }

    /// Decrypts and authenticates ciphertext ‖ tag.
    pub fn open(&self, ciphertext: &[u8], ad: &[u8], what: &'static str) -> Result<Vec<u8>, Error> {
        if ciphertext.len() < TAG_LEN {
            return Err(Error::Truncated {
                what,
                len: ciphertext.len(),
                min: TAG_LEN,
            });
        }
        let cipher = ChaCha20Poly1305::new(&Key::from(self.key));
        let nonce = Nonce::from(self.nonce);
        cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: ad,
                },
            )
            .map_err(|_| Error::Decrypt { what })
    }
}

/// X25519 with the contributory check the X3DH and sealed-sender specs ask
/// for: an all-zero result means the peer sent a low-order point.
///
/// Computed as `clamp(k)·P` on the birationally equivalent Edwards curve,
/// where curve25519-dalek has a vectorised (AVX2) variable-base
/// multiplication, instead of the serial Montgomery ladder: about 1.6× faster
/// on our reference machine, and the same u-coordinate bit for bit (the
/// u-coordinate does not depend on which of the two Edwards lifts of `P` is
/// taken; a property test checks equality with the ladder). Unlike the
/// ladder, public keys that are not on Curve25519 itself (twist points) are
/// refused with [`Error::InvalidKey`]; honest keys never are.
pub(crate) fn dh(
    secret: &x25519_dalek::StaticSecret,
    public: &x25519_dalek::PublicKey,
    what: &'static str,
) -> Result<Secret32, Error> {
    dh_point(secret, &decompress(public, what)?, what)
}

/// A public key as an Edwards point, for several exchanges with the same key.
pub(crate) fn decompress(
    public: &x25519_dalek::PublicKey,
    what: &'static str,
) -> Result<EdwardsPoint, Error> {
    MontgomeryPoint(public.to_bytes())
        .to_edwards(0)
        .ok_or(Error::InvalidKey { what })
}

/// Checks that `public` can take part in an exchange: a point of the curve
/// (not of its twist) and not of small order, whose exchanges would all
/// give the same, known, secret.
pub(crate) fn check_public(public: &[u8; 32], what: &'static str) -> Result<(), Error> {
    let point = MontgomeryPoint(*public)
        .to_edwards(0)
        .ok_or(Error::InvalidKey { what })?;
    if point.is_small_order() {
        return Err(Error::NonContributory { what });
    }
    Ok(())
}

/// [`dh`] with the public key already decompressed.
pub(crate) fn dh_point(
    secret: &x25519_dalek::StaticSecret,
    public: &EdwardsPoint,
    what: &'static str,
) -> Result<Secret32, Error> {
    let scalar = zeroize::Zeroizing::new(secret.to_bytes());
    let shared = Secret32::new(public.mul_clamped(*scalar).to_montgomery().to_bytes());
    if bool::from(shared.expose().ct_eq(&[0u8; 32])) {
        return Err(Error::NonContributory { what });
    }
    Ok(shared)
}
