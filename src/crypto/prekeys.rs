//! Prekeys: the signed prekey (rotated) and one-time prekeys (used once),
//! and the signed bundle that lets someone start a session with this device
//! while it is offline.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};

use super::identity::verify;
use super::wire::{self, bytes64};
use super::{DeviceIdentity, Error, PublicIdentity, Secret32, kdf, labels};

/// How long a signed prekey is the current one.
pub const SIGNED_PREKEY_ROTATION_SECS: u64 = 7 * 24 * 3600;
/// How long a replaced signed prekey still answers session set-ups that were
/// started from an older bundle.
pub const SIGNED_PREKEY_GRACE_SECS: u64 = 14 * 24 * 3600;
/// The most one-time prekeys a device keeps (each relay of its holds up to
/// 100 of them for two weeks, and the device keeps them some weeks longer:
/// see [`PrekeyStore::retire_one_time`]).
pub const MAX_ONE_TIME_PREKEYS: usize = 400;
/// How long after its publication a relay still hands out a one-time
/// prekey.
pub const ONE_TIME_PREKEY_HAND_OUT_SECS: u64 = 14 * 24 * 3600;
/// Room for the time between making a one-time prekey and publishing it.
pub const ONE_TIME_PREKEY_MARGIN_SECS: u64 = 24 * 3600;
/// The most relay addresses a bundle may list.
pub const MAX_BUNDLE_RELAYS: usize = 8;
/// The longest relay address.
pub const MAX_RELAY_ADDR_LEN: usize = 256;

/// Version 2 added `one_time_made`; version 1 is still read.
const STORE_VERSION: u8 = 2;
const STORE_VERSION_1: u8 = 1;
const BUNDLE_VERSION: u8 = 1;
const BODY_VERSION: u8 = 1;
/// Encoded bundle limit.
pub const BUNDLE_MAX: usize = 4096;
const STORE_MAX: usize = 128 * 1024;

/// A signed prekey with its secret.
#[derive(Clone, Serialize, Deserialize)]
pub struct SignedPrekey {
    /// Identifier carried in session set-ups.
    pub id: u32,
    secret: Secret32,
    /// Public key.
    pub public: [u8; 32],
    /// Ed25519 signature over `labels::SIG_SIGNED_PREKEY ‖ id (u32 BE) ‖ public`.
    #[serde(with = "bytes64")]
    pub sig: [u8; 64],
    /// When it was made (Unix seconds).
    pub created_at: u64,
}

impl std::fmt::Debug for SignedPrekey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedPrekey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SignedPrekey {
    pub(crate) fn secret(&self) -> StaticSecret {
        StaticSecret::from(*self.secret.expose())
    }
}

/// A one-time prekey with its secret.
#[derive(Clone, Serialize, Deserialize)]
pub struct OneTimePrekey {
    /// Identifier carried in session set-ups.
    pub id: u32,
    secret: Secret32,
    /// Public key.
    pub public: [u8; 32],
    /// Ed25519 signature over `labels::SIG_ONE_TIME_PREKEY ‖ id (u32 BE) ‖ public`.
    #[serde(with = "bytes64")]
    pub sig: [u8; 64],
}

impl std::fmt::Debug for OneTimePrekey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneTimePrekey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl OneTimePrekey {
    pub(crate) fn secret(&self) -> StaticSecret {
        StaticSecret::from(*self.secret.expose())
    }

    /// The public part as it travels in bundles.
    pub fn to_public(&self) -> OneTimePublic {
        OneTimePublic {
            id: self.id,
            key: self.public,
            sig: self.sig,
        }
    }
}

/// A one-time prekey's public part, individually signed so that whoever
/// serves it (a relay) cannot substitute its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneTimePublic {
    /// Identifier.
    pub id: u32,
    /// X25519 public key.
    pub key: [u8; 32],
    /// Signature, see [`OneTimePrekey::sig`].
    #[serde(with = "bytes64")]
    pub sig: [u8; 64],
}

/// This device's prekey secrets.
#[derive(Serialize, Deserialize)]
pub struct PrekeyStore {
    version: u8,
    /// Newest last; older ones kept for the grace period.
    signed: Vec<SignedPrekey>,
    one_time: BTreeMap<u32, OneTimePrekey>,
    next_id: u32,
    /// When each one-time prekey was made (Unix seconds). One without an
    /// entry (read from version 1) is dated by the next
    /// [`PrekeyStore::retire_one_time`].
    one_time_made: BTreeMap<u32, u64>,
}

/// A version 1 prekey store: no dates for one-time prekeys.
#[derive(Serialize, Deserialize)]
struct PrekeyStoreV1 {
    version: u8,
    signed: Vec<SignedPrekey>,
    one_time: BTreeMap<u32, OneTimePrekey>,
    next_id: u32,
}

impl std::fmt::Debug for PrekeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrekeyStore")
            .field("signed", &self.signed.len())
            .field("one_time", &self.one_time.len())
            .finish_non_exhaustive()
    }
}

impl PrekeyStore {
    /// A store with one fresh signed prekey and no one-time prekeys.
    pub fn new<R: rand_core::CryptoRng + ?Sized>(
        identity: &DeviceIdentity,
        now: u64,
        rng: &mut R,
    ) -> Self {
        let mut store = Self {
            version: STORE_VERSION,
            signed: Vec::new(),
            one_time: BTreeMap::new(),
            next_id: 1,
            one_time_made: BTreeMap::new(),
        };
        store.push_signed(identity, now, rng);
        store
    }

    fn take_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    fn push_signed<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        identity: &DeviceIdentity,
        now: u64,
        rng: &mut R,
    ) {
        let id = self.take_id();
        let secret = StaticSecret::random_from_rng(rng);
        let public = PublicKey::from(&secret).to_bytes();
        let sig = identity.sign(labels::SIG_SIGNED_PREKEY, &[&id.to_be_bytes(), &public]);
        self.signed.push(SignedPrekey {
            id,
            secret: Secret32::new(secret.to_bytes()),
            public,
            sig,
            created_at: now,
        });
    }

    /// Makes the id of every key made from now on at least `first`. A
    /// store restored from a backup must not make again the ids it made
    /// since: a relay may hold or have handed out those (with other keys),
    /// and takes no new one-time prekey at or below the highest id it took.
    pub fn advance_ids_to(&mut self, first: u32) {
        self.next_id = self.next_id.max(first).max(1);
    }

    /// The id the next key made gets.
    pub fn next_id(&self) -> u32 {
        self.next_id
    }

    /// How many signed prekeys are held (the current one and those in
    /// their grace period).
    pub fn signed_count(&self) -> usize {
        self.signed.len()
    }

    /// The current signed prekey.
    pub fn current(&self) -> Option<&SignedPrekey> {
        self.signed.last()
    }

    /// Rotates the signed prekey when it is older than the rotation period,
    /// and forgets replaced ones past their grace period. Returns whether a
    /// new one was made (then publish a new bundle).
    pub fn rotate_if_due<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        identity: &DeviceIdentity,
        now: u64,
        rng: &mut R,
    ) -> bool {
        let due = self
            .current()
            .is_none_or(|spk| now.saturating_sub(spk.created_at) >= SIGNED_PREKEY_ROTATION_SECS);
        if due {
            self.push_signed(identity, now, rng);
        }
        // A replaced key's grace runs from when its successor was made.
        let successors: Vec<Option<u64>> = (0..self.signed.len())
            .map(|i| self.signed.get(i + 1).map(|next| next.created_at))
            .collect();
        let mut successors = successors.into_iter();
        self.signed.retain(|_| match successors.next().flatten() {
            None => true,
            Some(replaced_at) => now.saturating_sub(replaced_at) < SIGNED_PREKEY_GRACE_SECS,
        });
        due
    }

    /// Makes up to `count` new one-time prekeys at `now` (never holding
    /// more than [`MAX_ONE_TIME_PREKEYS`]) and returns their public parts.
    pub fn generate_one_time<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        identity: &DeviceIdentity,
        count: usize,
        now: u64,
        rng: &mut R,
    ) -> Vec<OneTimePublic> {
        let room = MAX_ONE_TIME_PREKEYS.saturating_sub(self.one_time.len());
        let mut out = Vec::with_capacity(count.min(room));
        for _ in 0..count.min(room) {
            let id = self.take_id();
            let secret = StaticSecret::random_from_rng(rng);
            let public = PublicKey::from(&secret).to_bytes();
            let sig = identity.sign(labels::SIG_ONE_TIME_PREKEY, &[&id.to_be_bytes(), &public]);
            let opk = OneTimePrekey {
                id,
                secret: Secret32::new(secret.to_bytes()),
                public,
                sig,
            };
            out.push(opk.to_public());
            self.one_time.insert(id, opk);
            self.one_time_made.insert(id, now);
        }
        out
    }

    /// When the one-time prekey `id` was made, if it is held and dated.
    pub fn one_time_made(&self, id: u32) -> Option<u64> {
        self.one_time
            .contains_key(&id)
            .then(|| self.one_time_made.get(&id).copied())
            .flatten()
    }

    /// Forgets the one-time prekeys nobody used that no bundle still
    /// readable can carry. A one-time prekey goes out beside a signed
    /// prekey that was current then: a relay hands it out only within
    /// [`ONE_TIME_PREKEY_HAND_OUT_SECS`] of its publication (right after it
    /// was made, within [`ONE_TIME_PREKEY_MARGIN_SECS`]), and a device only
    /// one made after its current signed prekey. So once the oldest signed
    /// prekey still held was made later than that, every signed prekey it
    /// can have gone out with is forgotten, a first message from such a
    /// bundle is not read anyway, and the one-time prekey is of no more
    /// use. This goes by the signed prekeys held, not by the clock alone,
    /// so a device that was offline (and replaced none) keeps them.
    ///
    /// Those without a date (read from version 1) may have gone out with
    /// any signed prekey made before now: they are dated so that they go
    /// once all of those are forgotten. Returns whether anything changed
    /// (then write the store).
    pub fn retire_one_time(&mut self, now: u64) -> bool {
        const WINDOW: u64 = ONE_TIME_PREKEY_HAND_OUT_SECS + ONE_TIME_PREKEY_MARGIN_SECS;
        let before = (self.one_time.len(), self.one_time_made.len());
        let undated = now.saturating_sub(WINDOW);
        for id in self.one_time.keys() {
            self.one_time_made.entry(*id).or_insert(undated);
        }
        let oldest_signed = self.signed.first().map_or(0, |s| s.created_at);
        let made = &self.one_time_made;
        self.one_time.retain(|id, _| {
            made.get(id)
                .is_none_or(|at| oldest_signed <= at.saturating_add(WINDOW))
        });
        let held = &self.one_time;
        self.one_time_made.retain(|id, _| held.contains_key(id));
        before != (self.one_time.len(), self.one_time_made.len())
    }

    /// The public part of the one-time prekey `id`, while it is unused.
    pub fn one_time_public(&self, id: u32) -> Option<OneTimePublic> {
        self.one_time.get(&id).map(OneTimePrekey::to_public)
    }

    /// How many one-time prekeys remain.
    pub fn one_time_count(&self) -> usize {
        self.one_time.len()
    }

    /// The public parts of the remaining one-time prekeys.
    pub fn one_time_publics(&self) -> Vec<OneTimePublic> {
        self.one_time
            .values()
            .map(OneTimePrekey::to_public)
            .collect()
    }

    /// A signed prekey by id (current or within grace).
    pub fn signed(&self, id: u32) -> Result<&SignedPrekey, Error> {
        self.signed
            .iter()
            .find(|s| s.id == id)
            .ok_or(Error::UnknownPrekey { kind: "signed", id })
    }

    /// A one-time prekey by id, left in place.
    pub fn one_time(&self, id: u32) -> Result<&OneTimePrekey, Error> {
        self.one_time.get(&id).ok_or(Error::UnknownPrekey {
            kind: "one-time",
            id,
        })
    }

    /// Removes and returns a one-time prekey: each is used at most once.
    pub fn take_one_time(&mut self, id: u32) -> Result<OneTimePrekey, Error> {
        self.one_time_made.remove(&id);
        self.one_time.remove(&id).ok_or(Error::UnknownPrekey {
            kind: "one-time",
            id,
        })
    }

    /// A signed bundle for this device, with at most one one-time prekey.
    pub fn bundle(
        &self,
        identity: &DeviceIdentity,
        mailbox_id: [u8; 32],
        relays: &[String],
        now: u64,
        with_one_time: bool,
    ) -> Result<PrekeyBundle, Error> {
        let spk = self.current().ok_or(Error::UnknownPrekey {
            kind: "signed",
            id: 0,
        })?;
        let relays: Vec<String> = relays
            .iter()
            .filter(|r| r.len() <= MAX_RELAY_ADDR_LEN)
            .take(MAX_BUNDLE_RELAYS)
            .cloned()
            .collect();
        let body = BundleBody {
            version: BODY_VERSION,
            identity: identity.public().clone(),
            signed_prekey_id: spk.id,
            signed_prekey: spk.public,
            signed_prekey_sig: spk.sig,
            mailbox_id,
            relays,
            created_at: now,
        };
        let body = wire::encode(&body);
        let body_sig = identity.sign(labels::SIG_BUNDLE, &[&body]);
        let one_time = if with_one_time {
            self.one_time.values().next().map(OneTimePrekey::to_public)
        } else {
            None
        };
        Ok(PrekeyBundle {
            version: BUNDLE_VERSION,
            body,
            body_sig,
            one_time,
        })
    }

    /// Encodes the secrets for storage (encrypt before writing).
    pub fn to_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        zeroize::Zeroizing::new(wire::encode(self))
    }

    /// Inverse of [`Self::to_bytes`] (versions 2 and 1).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        const WHAT: &str = "prekey store";
        let store: Self = if bytes.first() == Some(&STORE_VERSION_1) {
            let v1: PrekeyStoreV1 = wire::decode(bytes, WHAT, STORE_VERSION_1, STORE_MAX)?;
            Self {
                version: STORE_VERSION,
                signed: v1.signed,
                one_time: v1.one_time,
                next_id: v1.next_id,
                one_time_made: BTreeMap::new(),
            }
        } else {
            wire::decode(bytes, WHAT, STORE_VERSION, STORE_MAX)?
        };
        if store.one_time.len() > MAX_ONE_TIME_PREKEYS
            || store.one_time_made.len() > MAX_ONE_TIME_PREKEYS
            || store.signed.len() > 16
        {
            return Err(Error::Malformed {
                what: "prekey store",
            });
        }
        Ok(store)
    }
}

/// The signed part of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleBody {
    version: u8,
    /// The device's identity keys.
    pub identity: PublicIdentity,
    /// Id of the signed prekey.
    pub signed_prekey_id: u32,
    /// The signed prekey.
    pub signed_prekey: [u8; 32],
    /// Its signature by the identity.
    #[serde(with = "bytes64")]
    pub signed_prekey_sig: [u8; 64],
    /// Where the device collects offline mail.
    pub mailbox_id: [u8; 32],
    /// Relays holding that mailbox (multiaddrs).
    pub relays: Vec<String>,
    /// When the bundle was made (Unix seconds).
    pub created_at: u64,
}

/// What a device publishes so others can open a session with it.
///
/// `body` is the encoded [`BundleBody`]; its signature covers those exact
/// bytes. The one-time prekey rides outside that signature (a relay hands a
/// different one to each asker) but carries its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrekeyBundle {
    version: u8,
    /// Encoded [`BundleBody`].
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// Signature over `labels::SIG_BUNDLE ‖ body`.
    #[serde(with = "bytes64")]
    pub body_sig: [u8; 64],
    /// At most one one-time prekey.
    pub one_time: Option<OneTimePublic>,
}

/// A bundle whose every signature has been checked.
#[derive(Debug, Clone)]
pub struct VerifiedBundle {
    /// The signed contents.
    pub body: BundleBody,
    /// A checked one-time prekey, if one came with it.
    pub one_time: Option<OneTimePublic>,
}

impl PrekeyBundle {
    /// Encoded form.
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(self)
    }

    /// Decodes (bounded) without verifying.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        wire::decode(bytes, "prekey bundle", BUNDLE_VERSION, BUNDLE_MAX)
    }

    /// Checks the version, the identity binding, the signed prekey, the body
    /// and the one-time prekey signatures, and that every X25519 key in it
    /// can take part in an exchange ([`kdf::check_public`]): a signed but
    /// unusable key is refused here, before a contact or a session is made
    /// with it.
    pub fn verify(&self) -> Result<VerifiedBundle, Error> {
        let v = self.verify_signatures()?;
        kdf::check_public(&v.body.identity.dh, "identity key")?;
        kdf::check_public(&v.body.signed_prekey, "signed prekey")?;
        if let Some(opk) = &v.one_time {
            kdf::check_public(&opk.key, "one-time prekey")?;
        }
        Ok(v)
    }

    /// [`Self::verify`] without the checks of the X25519 keys: who signed
    /// it, and what. A group's member card is read this way, so that every
    /// version folds a group's log alike; writing to that member checks
    /// its keys then.
    pub fn verify_signatures(&self) -> Result<VerifiedBundle, Error> {
        // `from_bytes` checks it too; a bundle inside another structure
        // comes here without it.
        if self.version != BUNDLE_VERSION {
            return Err(Error::UnknownVersion {
                what: "prekey bundle",
                got: self.version,
                expected: BUNDLE_VERSION,
            });
        }
        let body: BundleBody = wire::decode(&self.body, "bundle body", BODY_VERSION, BUNDLE_MAX)?;
        body.identity.verify()?;
        let signer = &body.identity.signing;
        verify(
            signer,
            labels::SIG_BUNDLE,
            &[&self.body],
            &self.body_sig,
            "prekey bundle",
        )?;
        verify(
            signer,
            labels::SIG_SIGNED_PREKEY,
            &[&body.signed_prekey_id.to_be_bytes(), &body.signed_prekey],
            &body.signed_prekey_sig,
            "signed prekey",
        )?;
        if body.relays.len() > MAX_BUNDLE_RELAYS
            || body.relays.iter().any(|r| r.len() > MAX_RELAY_ADDR_LEN)
        {
            return Err(Error::Malformed {
                what: "bundle relays",
            });
        }
        if let Some(opk) = &self.one_time {
            verify(
                signer,
                labels::SIG_ONE_TIME_PREKEY,
                &[&opk.id.to_be_bytes(), &opk.key],
                &opk.sig,
                "one-time prekey",
            )?;
        }
        Ok(VerifiedBundle {
            body,
            one_time: self.one_time.clone(),
        })
    }
}

impl VerifiedBundle {
    /// Checks that `opk` is signed by this bundle's identity and can take
    /// part in an exchange (a relay checks every one-time prekey published
    /// to it, so that it never hands out one that `verify` would refuse).
    pub fn check_one_time(&self, opk: &OneTimePublic) -> Result<(), Error> {
        verify(
            &self.body.identity.signing,
            labels::SIG_ONE_TIME_PREKEY,
            &[&opk.id.to_be_bytes(), &opk.key],
            &opk.sig,
            "one-time prekey",
        )?;
        kdf::check_public(&opk.key, "one-time prekey")
    }
}
