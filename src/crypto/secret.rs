//! A 32-byte secret that zeroizes on drop and never prints.

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// 32 secret bytes (a chain key, a private key, a root key…).
///
/// Zeroized when dropped; `Debug` prints only `Secret32(..)`. Serializes as
/// the raw 32 bytes so that saved session state round-trips; encrypt that
/// state before it touches a disk.
#[derive(Clone, Zeroize, ZeroizeOnDrop, Serialize, Deserialize, PartialEq, Eq)]
pub struct Secret32([u8; 32]);

impl Secret32 {
    /// Wraps bytes. The caller should zeroize its own copy.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Fresh random bytes.
    pub fn random<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// The secret bytes.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret32(..)")
    }
}
