//! Device identity: the Ed25519 signing key that is also the libp2p identity,
//! and a separate X25519 identity key for Diffie-Hellman, signed by it.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::wire::{self, bytes64};
use super::{Error, Secret32, labels};

const SECRET_VERSION: u8 = 1;
const PUBLIC_VERSION: u8 = 1;
/// Upper bound of an encoded [`PublicIdentity`].
pub(crate) const PUBLIC_MAX: usize = 1 + 32 + 32 + 64;

/// This device's long-term secret keys.
///
/// The Ed25519 key names the device on the network (its libp2p `PeerId`) and
/// signs; the X25519 key takes part in X3DH and sealed sender. The dalek
/// documentation advises against using one key for both, so they are
/// separate and bound together by a signature.
pub struct DeviceIdentity {
    signing: SigningKey,
    dh: StaticSecret,
    public: PublicIdentity,
}

impl std::fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceIdentity")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// What everyone may know about a device: both public keys and the signature
/// binding the X25519 key to the Ed25519 key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicIdentity {
    version: u8,
    /// Ed25519 public key (the libp2p identity).
    pub signing: [u8; 32],
    /// X25519 identity public key.
    pub dh: [u8; 32],
    /// Ed25519 signature over `labels::SIG_IDENTITY_DH ‖ dh`.
    #[serde(with = "bytes64")]
    pub dh_sig: [u8; 64],
}

impl std::fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicIdentity({})", hex8(&self.signing))
    }
}

pub(crate) fn hex8(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Concatenation used for domain-separated signatures.
pub(crate) fn signed_bytes(label: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(label.len() + parts.iter().map(|p| p.len()).sum::<usize>());
    out.extend_from_slice(label);
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

impl DeviceIdentity {
    /// A fresh identity.
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let signing = SigningKey::generate(rng);
        let dh = StaticSecret::random_from_rng(rng);
        Self::from_keys(signing, dh)
    }

    fn from_keys(signing: SigningKey, dh: StaticSecret) -> Self {
        let dh_pub = PublicKey::from(&dh).to_bytes();
        let sig = signing.sign(&signed_bytes(labels::SIG_IDENTITY_DH, &[&dh_pub]));
        let public = PublicIdentity {
            version: PUBLIC_VERSION,
            signing: signing.verifying_key().to_bytes(),
            dh: dh_pub,
            dh_sig: sig.to_bytes(),
        };
        Self {
            signing,
            dh,
            public,
        }
    }

    /// Builds from a 32-byte Ed25519 seed and a 32-byte X25519 secret.
    pub fn from_secrets(signing_seed: &Secret32, dh_secret: &Secret32) -> Self {
        Self::from_keys(
            SigningKey::from_bytes(signing_seed.expose()),
            StaticSecret::from(*dh_secret.expose()),
        )
    }

    /// Builds from an existing libp2p Ed25519 keypair plus an X25519 secret.
    pub fn from_libp2p(
        keypair: &libp2p::identity::Keypair,
        dh_secret: &Secret32,
    ) -> Result<Self, Error> {
        let ed = keypair
            .clone()
            .try_into_ed25519()
            .map_err(|_| Error::InvalidKey {
                what: "libp2p keypair (not ed25519)",
            })?;
        let mut seed = [0u8; 32];
        seed.copy_from_slice(ed.secret().as_ref());
        let seed = Secret32::new(seed);
        Ok(Self::from_secrets(&seed, dh_secret))
    }

    /// The same Ed25519 key as a libp2p keypair (same `PeerId`).
    pub fn to_libp2p(&self) -> Result<libp2p::identity::Keypair, Error> {
        // ed25519_from_bytes zeroes the buffer it is given: hand it a copy.
        let mut seed = Zeroizing::new(self.signing.to_bytes());
        libp2p::identity::Keypair::ed25519_from_bytes(&mut *seed).map_err(|_| Error::InvalidKey {
            what: "libp2p keypair",
        })
    }

    /// The libp2p peer id of this device.
    pub fn peer_id(&self) -> Result<libp2p::PeerId, Error> {
        self.public.peer_id()
    }

    /// A device holding `real`'s secret keys that claims to be `claimed`.
    #[cfg(test)]
    pub(crate) fn forged_for_tests(real: &DeviceIdentity, claimed: PublicIdentity) -> Self {
        Self {
            signing: real.signing.clone(),
            dh: real.dh.clone(),
            public: claimed,
        }
    }

    /// Public half.
    pub fn public(&self) -> &PublicIdentity {
        &self.public
    }

    /// Signs `label ‖ parts…` with the device key.
    pub(crate) fn sign(&self, label: &[u8], parts: &[&[u8]]) -> [u8; 64] {
        self.signing.sign(&signed_bytes(label, parts)).to_bytes()
    }

    pub(crate) fn dh_secret(&self) -> &StaticSecret {
        &self.dh
    }

    /// Secret bytes for storage (encrypt before writing anywhere).
    pub fn to_secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        let value = SecretRecord {
            version: SECRET_VERSION,
            signing: Secret32::new(self.signing.to_bytes()),
            dh: Secret32::new(self.dh.to_bytes()),
        };
        Zeroizing::new(wire::encode(&value))
    }

    /// Inverse of [`Self::to_secret_bytes`].
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let rec: SecretRecord =
            wire::decode(bytes, "device identity", SECRET_VERSION, 1 + 32 + 32)?;
        Ok(Self::from_secrets(&rec.signing, &rec.dh))
    }
}

#[derive(Serialize, Deserialize)]
struct SecretRecord {
    version: u8,
    signing: Secret32,
    dh: Secret32,
}

impl PublicIdentity {
    /// Checks that the X25519 key is signed by the Ed25519 key.
    pub fn verify(&self) -> Result<(), Error> {
        if self.version != PUBLIC_VERSION {
            return Err(Error::UnknownVersion {
                what: "public identity",
                got: self.version,
                expected: PUBLIC_VERSION,
            });
        }
        verify(
            &self.signing,
            labels::SIG_IDENTITY_DH,
            &[&self.dh],
            &self.dh_sig,
            "identity key",
        )
    }

    /// The device's libp2p peer id.
    pub fn peer_id(&self) -> Result<libp2p::PeerId, Error> {
        let pk =
            libp2p::identity::ed25519::PublicKey::try_from_bytes(&self.signing).map_err(|_| {
                Error::InvalidKey {
                    what: "identity signing key",
                }
            })?;
        Ok(libp2p::identity::PublicKey::from(pk).to_peer_id())
    }

    /// The X25519 identity key.
    pub(crate) fn dh_key(&self) -> PublicKey {
        PublicKey::from(self.dh)
    }

    /// Encoded form.
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(self)
    }

    /// Decodes and verifies the binding signature.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let id: Self = wire::decode(bytes, "public identity", PUBLIC_VERSION, PUBLIC_MAX)?;
        id.verify()?;
        Ok(id)
    }
}

/// Strict Ed25519 verification of `label ‖ parts…`.
pub(crate) fn verify(
    public: &[u8; 32],
    label: &[u8],
    parts: &[&[u8]],
    sig: &[u8; 64],
    what: &'static str,
) -> Result<(), Error> {
    let key = VerifyingKey::from_bytes(public).map_err(|_| Error::InvalidKey { what })?;
    let sig = ed25519_dalek::Signature::from_bytes(sig);
    key.verify_strict(&signed_bytes(label, parts), &sig)
        .map_err(|_| Error::BadSignature { what })
}
