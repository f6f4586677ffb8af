//! Sender Keys for groups: each member device has, per group, a hash-ratchet
//! chain and an Ed25519 signing key, handed to the other members over their
//! authenticated 1:1 sessions. One encryption serves the whole group.
//!
//! Group message wire layout:
//!
//! ```text
//! 0   1   version (1)
//! 1   32  group id
//! 33  4   key id (u32 BE)
//! 37  4   iteration (u32 BE)
//! 41  …   ChaCha20-Poly1305 ciphertext ‖ tag   (AD = bytes 0..41)
//! end 64  Ed25519 signature over "meshchat/1/sig/group-message" ‖ owner ‖ bytes 0..end-64
//! ```
//!
//! `owner` is the Ed25519 identity key of the member device whose sender
//! key it is: not on the wire, but what the receiver holds the key for. A
//! member that passes another's distribution off as its own therefore gets
//! nothing: the other's messages do not verify as its own.

use std::collections::VecDeque;

use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Serialize};

use super::identity::verify;
use super::kdf::{TAG_LEN, chain_step};
use super::ratchet::{MAX_PLAINTEXT, MAX_SKIP};
use super::wire;
use super::{Error, MessageKey, Secret32, labels};

const VERSION: u8 = 2;
const HEADER_LEN: usize = 41;
const SIG_LEN: usize = 64;
/// Largest encoded group message.
pub const MAX_GROUP_MESSAGE_LEN: usize = HEADER_LEN + MAX_PLAINTEXT + TAG_LEN + SIG_LEN;
/// Skipped keys one receiver keeps for one sender key.
pub const MAX_GROUP_SKIPPED: usize = 2000;
/// Version 2 added `generation`; version 1 is still read (generation 0).
const DIST_VERSION: u8 = 2;
const DIST_VERSION_1: u8 = 1;
/// Version 2 of both saved states added `generation`; version 1 is still
/// read (a sender's generation is then its `created_at`, a receiver's 0).
const STATE_VERSION: u8 = 2;
const STATE_VERSION_1: u8 = 1;
const MAX_DIST_LEN: usize = 128;
const MAX_KEY_STATE_LEN: usize = 256;
const MAX_RECEIVER_STATE_LEN: usize = 256 + MAX_GROUP_SKIPPED * 40;

/// A group message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderKeyMessage {
    /// The group.
    pub group_id: [u8; 32],
    /// Which of the sender's keys.
    pub key_id: u32,
    /// Position in that key's chain.
    pub iteration: u32,
    /// Ciphertext ‖ tag.
    pub ciphertext: Vec<u8>,
    /// Signature over everything before it.
    pub signature: [u8; 64],
}

impl SenderKeyMessage {
    fn header(group_id: &[u8; 32], key_id: u32, iteration: u32) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0] = VERSION;
        h[1..33].copy_from_slice(group_id);
        h[33..37].copy_from_slice(&key_id.to_be_bytes());
        h[37..41].copy_from_slice(&iteration.to_be_bytes());
        h
    }

    /// Encoded form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.ciphertext.len() + SIG_LEN);
        out.extend_from_slice(&Self::header(&self.group_id, self.key_id, self.iteration));
        out.extend_from_slice(&self.ciphertext);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Checks the signature alone, as `owner`'s under the sender key
    /// whose public signing key is `signing_key`: what a node that
    /// forwards a group message can check without the chain key.
    pub fn verify_signature(&self, owner: &[u8; 32], signing_key: &[u8; 32]) -> Result<(), Error> {
        let header = Self::header(&self.group_id, self.key_id, self.iteration);
        verify(
            signing_key,
            labels::SIG_GROUP_MESSAGE,
            &[owner, &header, &self.ciphertext],
            &self.signature,
            "group message",
        )
    }

    /// Bounded decode.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        const WHAT: &str = "group message";
        if bytes.len() > MAX_GROUP_MESSAGE_LEN {
            return Err(Error::TooLarge {
                what: WHAT,
                len: bytes.len(),
                max: MAX_GROUP_MESSAGE_LEN,
            });
        }
        let min = HEADER_LEN + TAG_LEN + SIG_LEN;
        if bytes.len() < min {
            return Err(Error::Truncated {
                what: WHAT,
                len: bytes.len(),
                min,
            });
        }
        if bytes[0] != VERSION {
            return Err(Error::UnknownVersion {
                what: WHAT,
                got: bytes[0],
                expected: VERSION,
            });
        }
        let mut group_id = [0u8; 32];
        group_id.copy_from_slice(&bytes[1..33]);
        let mut k = [0u8; 4];
        k.copy_from_slice(&bytes[33..37]);
        let mut it = [0u8; 4];
        it.copy_from_slice(&bytes[37..41]);
        let sig_at = bytes.len() - SIG_LEN;
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&bytes[sig_at..]);
        Ok(Self {
            group_id,
            key_id: u32::from_be_bytes(k),
            iteration: u32::from_be_bytes(it),
            ciphertext: bytes[HEADER_LEN..sig_at].to_vec(),
            signature,
        })
    }
}

/// What a member sends (over 1:1 sessions only) so others can read its group
/// messages. Contains a chain key: secret.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SenderKeyDistribution {
    version: u8,
    /// The group.
    pub group_id: [u8; 32],
    /// The sender key's id.
    pub key_id: u32,
    /// Iteration the chain key below is at.
    pub iteration: u32,
    chain_key: Secret32,
    /// Ed25519 public key that signs this sender's group messages.
    pub signing_key: [u8; 32],
    /// Orders one member's keys by age: a rotation's key has a higher
    /// generation than the key it replaces (see [`SenderKey::rotate`]).
    pub generation: u64,
}

/// A version 1 distribution: no generation.
#[derive(Serialize, Deserialize)]
struct DistributionV1 {
    version: u8,
    group_id: [u8; 32],
    key_id: u32,
    iteration: u32,
    chain_key: Secret32,
    signing_key: [u8; 32],
}

impl std::fmt::Debug for SenderKeyDistribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderKeyDistribution")
            .field("key_id", &self.key_id)
            .field("iteration", &self.iteration)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl SenderKeyDistribution {
    /// Encoded form (send inside a 1:1 session only).
    pub fn to_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        zeroize::Zeroizing::new(wire::encode(self))
    }

    /// Bounded decode (versions 2 and 1; a version 1 distribution has
    /// generation 0, older than any version 2 one).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        const WHAT: &str = "sender key distribution";
        if bytes.first() == Some(&DIST_VERSION_1) {
            let d: DistributionV1 = wire::decode(bytes, WHAT, DIST_VERSION_1, MAX_DIST_LEN)?;
            return Ok(Self {
                version: DIST_VERSION,
                group_id: d.group_id,
                key_id: d.key_id,
                iteration: d.iteration,
                chain_key: d.chain_key,
                signing_key: d.signing_key,
                generation: 0,
            });
        }
        wire::decode(bytes, WHAT, DIST_VERSION, MAX_DIST_LEN)
    }
}

/// This device's sending state in one group.
#[derive(Clone, Serialize, Deserialize)]
pub struct SenderKey {
    version: u8,
    group_id: [u8; 32],
    key_id: u32,
    pub(crate) iteration: u32,
    chain: Secret32,
    pub(crate) signing: Secret32,
    /// When this key was made (Unix seconds), for periodic rotation.
    pub created_at: u64,
    /// This key's place among its owner's keys for the group (see
    /// [`SenderKeyDistribution::generation`]).
    generation: u64,
}

/// A version 1 saved sender key: no generation.
#[derive(Serialize, Deserialize)]
struct SenderKeyV1 {
    version: u8,
    group_id: [u8; 32],
    key_id: u32,
    iteration: u32,
    chain: Secret32,
    signing: Secret32,
    created_at: u64,
}

impl std::fmt::Debug for SenderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderKey")
            .field("key_id", &self.key_id)
            .field("iteration", &self.iteration)
            .finish_non_exhaustive()
    }
}

impl SenderKey {
    /// A fresh sender key for `group_id`. Its generation is `now`, so that a
    /// device that makes its key again (after leaving and being added back)
    /// starts above the keys it had.
    pub fn new<R: rand_core::CryptoRng + ?Sized>(
        group_id: [u8; 32],
        now: u64,
        rng: &mut R,
    ) -> Self {
        let mut id = [0u8; 4];
        rng.fill_bytes(&mut id);
        Self {
            version: STATE_VERSION,
            group_id,
            key_id: u32::from_be_bytes(id),
            iteration: 0,
            chain: Secret32::random(rng),
            signing: Secret32::random(rng),
            created_at: now,
            generation: now,
        }
    }

    /// A new, unrelated key for the same group (after a member leaves or is
    /// removed, and periodically). Distribute it to the remaining members.
    pub fn rotate<R: rand_core::CryptoRng + ?Sized>(&self, now: u64, rng: &mut R) -> Self {
        let mut next = Self::new(self.group_id, now, rng);
        if next.key_id == self.key_id {
            next.key_id = next.key_id.wrapping_add(1);
        }
        // Above the old key's even when the clock stands still or goes back.
        next.generation = now.max(self.generation.saturating_add(1));
        next
    }

    /// This key's generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The key id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The distribution message for the current chain position.
    pub fn distribution(&self) -> SenderKeyDistribution {
        SenderKeyDistribution {
            version: DIST_VERSION,
            group_id: self.group_id,
            key_id: self.key_id,
            iteration: self.iteration,
            chain_key: self.chain.clone(),
            signing_key: SigningKey::from_bytes(self.signing.expose())
                .verifying_key()
                .to_bytes(),
            generation: self.generation,
        }
    }

    /// Encrypts and signs one group message; `owner` is this device's
    /// identity key (Ed25519), which the signature covers.
    pub fn encrypt(
        &mut self,
        owner: &[u8; 32],
        plaintext: &[u8],
    ) -> Result<SenderKeyMessage, Error> {
        let (msg, _) = self.encrypt_inner(owner, plaintext)?;
        Ok(msg)
    }

    pub(crate) fn encrypt_inner(
        &mut self,
        owner: &[u8; 32],
        plaintext: &[u8],
    ) -> Result<(SenderKeyMessage, super::Aead), Error> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(Error::TooLarge {
                what: "plaintext",
                len: plaintext.len(),
                max: MAX_PLAINTEXT,
            });
        }
        let iteration = self.iteration;
        let next_it = iteration.checked_add(1).ok_or(Error::CounterOverflow)?;
        let (mk, next) = chain_step(&self.chain);
        self.chain = next;
        self.iteration = next_it;
        let header = SenderKeyMessage::header(&self.group_id, self.key_id, iteration);
        let aead = mk.aead(labels::GROUP_MESSAGE);
        let ciphertext = aead.seal(plaintext, &header);
        let signing = SigningKey::from_bytes(self.signing.expose());
        let mut signed = Vec::with_capacity(
            labels::SIG_GROUP_MESSAGE.len() + owner.len() + HEADER_LEN + ciphertext.len(),
        );
        signed.extend_from_slice(labels::SIG_GROUP_MESSAGE);
        signed.extend_from_slice(owner);
        signed.extend_from_slice(&header);
        signed.extend_from_slice(&ciphertext);
        let signature = signing.sign(&signed).to_bytes();
        Ok((
            SenderKeyMessage {
                group_id: self.group_id,
                key_id: self.key_id,
                iteration,
                ciphertext,
                signature,
            },
            aead,
        ))
    }

    /// Saved form (secret).
    pub fn to_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        zeroize::Zeroizing::new(wire::encode(self))
    }

    /// Inverse of [`Self::to_bytes`] (versions 2 and 1).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        const WHAT: &str = "sender key";
        if bytes.first() == Some(&STATE_VERSION_1) {
            let k: SenderKeyV1 = wire::decode(bytes, WHAT, STATE_VERSION_1, MAX_KEY_STATE_LEN)?;
            return Ok(Self {
                version: STATE_VERSION,
                group_id: k.group_id,
                key_id: k.key_id,
                iteration: k.iteration,
                chain: k.chain,
                signing: k.signing,
                created_at: k.created_at,
                generation: k.created_at,
            });
        }
        wire::decode(bytes, WHAT, STATE_VERSION, MAX_KEY_STATE_LEN)
    }
}

/// A receiver's state for one sender key of one member.
#[derive(Clone, Serialize, Deserialize)]
pub struct SenderKeyReceiver {
    version: u8,
    group_id: [u8; 32],
    key_id: u32,
    pub(crate) iteration: u32,
    chain: Secret32,
    signing_key: [u8; 32],
    skipped: VecDeque<(u32, MessageKey)>,
    generation: u64,
}

/// A version 1 saved receiver: no generation.
#[derive(Serialize, Deserialize)]
struct ReceiverV1 {
    version: u8,
    group_id: [u8; 32],
    key_id: u32,
    iteration: u32,
    chain: Secret32,
    signing_key: [u8; 32],
    skipped: VecDeque<(u32, MessageKey)>,
}

impl std::fmt::Debug for SenderKeyReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderKeyReceiver")
            .field("key_id", &self.key_id)
            .field("iteration", &self.iteration)
            .finish_non_exhaustive()
    }
}

impl SenderKeyReceiver {
    /// State from a distribution received over an authenticated session.
    pub fn from_distribution(d: &SenderKeyDistribution) -> Self {
        Self {
            version: STATE_VERSION,
            group_id: d.group_id,
            key_id: d.key_id,
            iteration: d.iteration,
            chain: d.chain_key.clone(),
            signing_key: d.signing_key,
            skipped: VecDeque::new(),
            generation: d.generation,
        }
    }

    /// The generation of the distribution this state came from.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The key id this state reads.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The Ed25519 key the sender's group messages are signed with.
    pub fn signing_key(&self) -> &[u8; 32] {
        &self.signing_key
    }

    /// Verifies and decrypts a group message of `owner`'s (the member
    /// device this key was received from). The state changes only on
    /// success.
    pub fn decrypt(&mut self, owner: &[u8; 32], msg: &SenderKeyMessage) -> Result<Vec<u8>, Error> {
        const WHAT: &str = "group message";
        if msg.group_id != self.group_id {
            return Err(Error::WrongGroup);
        }
        if msg.key_id != self.key_id {
            return Err(Error::UnknownSenderKey { key_id: msg.key_id });
        }
        let header = SenderKeyMessage::header(&msg.group_id, msg.key_id, msg.iteration);
        verify(
            &self.signing_key,
            labels::SIG_GROUP_MESSAGE,
            &[owner, &header, &msg.ciphertext],
            &msg.signature,
            WHAT,
        )?;
        if let Some(idx) = self.skipped.iter().position(|(i, _)| *i == msg.iteration) {
            let pt = match self.skipped.get(idx) {
                Some((_, mk)) => {
                    mk.aead(labels::GROUP_MESSAGE)
                        .open(&msg.ciphertext, &header, WHAT)?
                }
                None => {
                    return Err(Error::Duplicate {
                        counter: msg.iteration,
                    });
                }
            };
            self.skipped.remove(idx);
            return Ok(pt);
        }
        if msg.iteration < self.iteration {
            return Err(Error::Duplicate {
                counter: msg.iteration,
            });
        }
        let gap = u64::from(msg.iteration - self.iteration);
        if gap > u64::from(MAX_SKIP) {
            return Err(Error::GapTooBig { gap, max: MAX_SKIP });
        }
        let mut ck = self.chain.clone();
        let mut new_skipped = Vec::with_capacity(gap as usize);
        for i in self.iteration..msg.iteration {
            let (mk, next) = chain_step(&ck);
            new_skipped.push((i, mk));
            ck = next;
        }
        let (mk, next) = chain_step(&ck);
        let pt = mk
            .aead(labels::GROUP_MESSAGE)
            .open(&msg.ciphertext, &header, WHAT)?;
        self.iteration = msg.iteration.checked_add(1).ok_or(Error::CounterOverflow)?;
        self.chain = next;
        self.skipped.extend(new_skipped);
        while self.skipped.len() > MAX_GROUP_SKIPPED {
            self.skipped.pop_front();
        }
        Ok(pt)
    }

    /// Saved form (secret).
    pub fn to_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        zeroize::Zeroizing::new(wire::encode(self))
    }

    /// Inverse of [`Self::to_bytes`], bounded (versions 2 and 1).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        const WHAT: &str = "sender key state";
        let s: Self = if bytes.first() == Some(&STATE_VERSION_1) {
            let r: ReceiverV1 = wire::decode(bytes, WHAT, STATE_VERSION_1, MAX_RECEIVER_STATE_LEN)?;
            Self {
                version: STATE_VERSION,
                group_id: r.group_id,
                key_id: r.key_id,
                iteration: r.iteration,
                chain: r.chain,
                signing_key: r.signing_key,
                skipped: r.skipped,
                generation: 0,
            }
        } else {
            wire::decode(bytes, WHAT, STATE_VERSION, MAX_RECEIVER_STATE_LEN)?
        };
        if s.skipped.len() > MAX_GROUP_SKIPPED {
            return Err(Error::Malformed { what: WHAT });
        }
        Ok(s)
    }
}
