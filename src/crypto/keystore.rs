//! Keys at rest: passphrase → Argon2id → key-encryption key, which wraps a
//! random 32-byte database key. Changing the passphrase rewraps the same
//! database key, so nothing else has to be re-encrypted.
//!
//! File layout (postcard): `version (1) ‖ m_cost ‖ t_cost ‖ p_cost (varints) ‖
//! salt (16) ‖ nonce (24) ‖ wrapped (varint length ‖ 48 bytes)`, where
//! `wrapped = XChaCha20-Poly1305(KEK, nonce, database key,
//! AD = "meshchat/1/keystore" ‖ version ‖ m ‖ t ‖ p (u32 BE each) ‖ salt)`.
//!
//! Records are sealed with XChaCha20-Poly1305 under the database key with a
//! random 24-byte nonce: `nonce ‖ ciphertext ‖ tag`. The extended nonce makes
//! random nonces safe for any number of records one database will hold.

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead as _, AeadInOut as _, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::kdf::TAG_LEN;
use super::wire;
use super::{Error, Secret32, labels};

const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
/// Room a record being sealed in place keeps in front of its plaintext,
/// for the nonce ([`DataKey::seal_record_in_place`]).
pub const RECORD_NONCE_ROOM: usize = NONCE_LEN;
/// Overhead of a sealed record.
pub const RECORD_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// Argon2id cost parameters, stored beside the salt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl KdfParams {
    /// For people: 64 MiB, 3 passes, 1 lane (≈ 0.1–0.3 s on a small machine).
    pub const DEFAULT: Self = Self {
        m_cost_kib: 64 * 1024,
        t_cost: 3,
        p_cost: 1,
    };
    /// For throwaway test nodes only: trivially brute-forced.
    pub const INSECURE_FAST: Self = Self {
        m_cost_kib: 64,
        t_cost: 1,
        p_cost: 1,
    };
    /// Largest accepted from a file (a hostile file must not exhaust
    /// memory): 1 GiB, sixteen times the default.
    pub const MAX_M_COST_KIB: u32 = 1024 * 1024;
    /// Most passes accepted from a file.
    pub const MAX_T_COST: u32 = 64;
    /// Most lanes accepted from a file.
    pub const MAX_P_COST: u32 = 16;

    fn check(&self) -> Result<Params, Error> {
        if self.m_cost_kib > Self::MAX_M_COST_KIB
            || self.t_cost > Self::MAX_T_COST
            || self.p_cost > Self::MAX_P_COST
        {
            return Err(Error::KdfParams(format!(
                "m={} KiB t={} p={} exceed the limits m≤{} t≤{} p≤{}",
                self.m_cost_kib,
                self.t_cost,
                self.p_cost,
                Self::MAX_M_COST_KIB,
                Self::MAX_T_COST,
                Self::MAX_P_COST
            )));
        }
        Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(32))
            .map_err(|e| Error::KdfParams(e.to_string()))
    }
}

/// The on-disk keystore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keystore {
    version: u8,
    pub(crate) params: KdfParams,
    salt: [u8; 16],
    nonce: [u8; NONCE_LEN],
    wrapped: Vec<u8>,
}

/// The database key: encrypts every record at rest.
#[derive(Clone)]
pub struct DataKey(Secret32);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

fn kek(
    passphrase: &[u8],
    params: &KdfParams,
    salt: &[u8; 16],
) -> Result<Zeroizing<[u8; 32]>, Error> {
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.check()?);
    let mut out = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase, salt, &mut *out)
        .map_err(|e| Error::KdfParams(e.to_string()))?;
    Ok(out)
}

impl Keystore {
    fn ad(&self) -> Vec<u8> {
        let mut ad = Vec::with_capacity(labels::KEYSTORE.len() + 1 + 12 + 16);
        ad.extend_from_slice(labels::KEYSTORE);
        ad.push(self.version);
        ad.extend_from_slice(&self.params.m_cost_kib.to_be_bytes());
        ad.extend_from_slice(&self.params.t_cost.to_be_bytes());
        ad.extend_from_slice(&self.params.p_cost.to_be_bytes());
        ad.extend_from_slice(&self.salt);
        ad
    }

    fn wrap<R: rand_core::CryptoRng + ?Sized>(
        passphrase: &[u8],
        params: KdfParams,
        key: &DataKey,
        rng: &mut R,
    ) -> Result<Self, Error> {
        let mut salt = [0u8; 16];
        rng.fill_bytes(&mut salt);
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let mut ks = Self {
            version: VERSION,
            params,
            salt,
            nonce,
            wrapped: Vec::new(),
        };
        let kek = kek(passphrase, &params, &salt)?;
        let cipher = XChaCha20Poly1305::new(&(*kek).into());
        ks.wrapped = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: key.0.expose(),
                    aad: &ks.ad(),
                },
            )
            .map_err(|_| Error::Malformed {
                what: "keystore wrap",
            })?;
        Ok(ks)
    }

    /// A new keystore with a fresh random database key.
    pub fn create<R: rand_core::CryptoRng + ?Sized>(
        passphrase: &[u8],
        params: KdfParams,
        rng: &mut R,
    ) -> Result<(Self, DataKey), Error> {
        let key = DataKey(Secret32::random(rng));
        let ks = Self::wrap(passphrase, params, &key, rng)?;
        Ok((ks, key))
    }

    /// Unwraps the database key. A wrong passphrase is [`Error::WrongPassphrase`].
    pub fn unlock(&self, passphrase: &[u8]) -> Result<DataKey, Error> {
        let kek = kek(passphrase, &self.params, &self.salt)?;
        let cipher = XChaCha20Poly1305::new(&(*kek).into());
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    &XNonce::from(self.nonce),
                    Payload {
                        msg: &self.wrapped,
                        aad: &self.ad(),
                    },
                )
                .map_err(|_| Error::WrongPassphrase)?,
        );
        let bytes: [u8; 32] = plain.as_slice().try_into().map_err(|_| Error::Malformed {
            what: "keystore key",
        })?;
        Ok(DataKey(Secret32::new(bytes)))
    }

    /// The same database key under a new passphrase (and parameters).
    pub fn change_passphrase<R: rand_core::CryptoRng + ?Sized>(
        &self,
        old: &[u8],
        new: &[u8],
        params: KdfParams,
        rng: &mut R,
    ) -> Result<Self, Error> {
        let key = self.unlock(old)?;
        Self::wrap(new, params, &key, rng)
    }

    /// The Argon2id parameters in use.
    pub fn params(&self) -> KdfParams {
        self.params
    }

    /// Encoded form.
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(self)
    }

    /// Bounded decode, with the parameters checked against the limits.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let ks: Self = wire::decode(bytes, "keystore", VERSION, 256)?;
        ks.params.check()?;
        if ks.wrapped.len() != 32 + TAG_LEN {
            return Err(Error::Malformed { what: "keystore" });
        }
        Ok(ks)
    }
}

impl DataKey {
    /// Wraps raw key bytes (for tests and explicit unencrypted test stores).
    pub fn from_secret(secret: Secret32) -> Self {
        Self(secret)
    }

    /// A key for another use of the store, derived from this one and
    /// named by `label` (HKDF-SHA256): the same label gives the same key.
    pub fn derive(&self, label: &[u8]) -> Secret32 {
        Secret32::new(super::kdf::hkdf(&[], self.0.expose(), label))
    }

    /// Encrypts a record: `nonce (24) ‖ ciphertext ‖ tag`, bound to `ad`.
    pub fn seal_record<R: rand_core::CryptoRng + ?Sized>(
        &self,
        ad: &[u8],
        plaintext: &[u8],
        rng: &mut R,
    ) -> Vec<u8> {
        let mut record = Vec::with_capacity(RECORD_OVERHEAD + plaintext.len());
        record.extend_from_slice(&[0; NONCE_LEN]);
        record.extend_from_slice(plaintext);
        self.seal_record_in_place(ad, &mut record, rng);
        record
    }

    /// As [`Self::seal_record`], without a copy: `record` holds
    /// [`RECORD_NONCE_ROOM`] bytes of any value and then the plaintext,
    /// and becomes the sealed record (the plaintext is encrypted where it
    /// lies). A `record` too short for the nonce is left empty.
    pub fn seal_record_in_place<R: rand_core::CryptoRng + ?Sized>(
        &self,
        ad: &[u8],
        record: &mut Vec<u8>,
        rng: &mut R,
    ) {
        let Some((room, plaintext)) = record.split_at_mut_checked(NONCE_LEN) else {
            record.clear();
            return;
        };
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        room.copy_from_slice(&nonce);
        let cipher = XChaCha20Poly1305::new(&(*self.0.expose()).into());
        match cipher.encrypt_inout_detached(&XNonce::from(nonce), ad, plaintext.into()) {
            Ok(tag) => record.extend_from_slice(&tag),
            // Only for a plaintext of 256 GiB or more; none is written.
            Err(_) => {
                zeroize::Zeroize::zeroize(record);
                record.clear();
            }
        }
    }

    /// Decrypts a record sealed with [`Self::seal_record`] under the same `ad`.
    pub fn open_record(&self, ad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, Error> {
        if sealed.len() < RECORD_OVERHEAD {
            return Err(Error::Truncated {
                what: "record",
                len: sealed.len(),
                min: RECORD_OVERHEAD,
            });
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| Error::Malformed { what: "record" })?;
        let cipher = XChaCha20Poly1305::new(&(*self.0.expose()).into());
        cipher
            .decrypt(&XNonce::from(nonce), Payload { msg: ct, aad: ad })
            .map_err(|_| Error::Decrypt { what: "record" })
    }
}
