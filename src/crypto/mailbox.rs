//! Mailbox keys: who may fetch and delete mail held for a device at a relay.
//!
//! The mailbox id is `SHA-256("meshchat/mailbox" ‖ mailbox public key)`; a
//! relay releases or deletes mail only for a request signed by the matching
//! key, whatever libp2p identity the request arrives on.

use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};

use super::identity::{signed_bytes, verify};
use super::{Error, Secret32, labels};

/// A mailbox id.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct MailboxId(pub [u8; 32]);

impl MailboxId {
    /// The id belonging to a mailbox public key.
    pub fn of(public: &[u8; 32]) -> Self {
        let mut h = Sha256::new();
        h.update(labels::MAILBOX);
        h.update(public);
        Self(h.finalize().into())
    }

    /// Checks that `public` owns this mailbox and signed `label ‖ request`.
    pub fn verify_request(
        &self,
        public: &[u8; 32],
        label: &[u8],
        request: &[u8],
        sig: &[u8; 64],
    ) -> Result<(), Error> {
        if Self::of(public) != *self {
            return Err(Error::BadSignature {
                what: "mailbox request (key does not own mailbox)",
            });
        }
        verify(public, label, &[request], sig, "mailbox request")
    }
}

impl std::fmt::Debug for MailboxId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MailboxId({})", super::identity::hex8(&self.0))
    }
}

impl std::fmt::Display for MailboxId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The secret key of a mailbox.
#[derive(Clone)]
pub struct MailboxKey {
    seed: Secret32,
    key: SigningKey,
}

impl std::fmt::Debug for MailboxKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MailboxKey({:?})", self.id())
    }
}

impl MailboxKey {
    /// A fresh mailbox key.
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self::from_seed(Secret32::random(rng))
    }

    /// From a stored seed.
    pub fn from_seed(seed: Secret32) -> Self {
        let key = SigningKey::from_bytes(seed.expose());
        Self { seed, key }
    }

    /// The seed, for storage (secret).
    pub fn seed(&self) -> &Secret32 {
        &self.seed
    }

    /// The public key.
    pub fn public(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The mailbox id.
    pub fn id(&self) -> MailboxId {
        MailboxId::of(&self.public())
    }

    /// Signs `label ‖ request`.
    pub fn sign(&self, label: &[u8], request: &[u8]) -> [u8; 64] {
        self.key.sign(&signed_bytes(label, &[request])).to_bytes()
    }
}
