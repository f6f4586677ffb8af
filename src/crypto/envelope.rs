//! Sealed envelopes: what relays and forwarding nodes carry.
//!
//! An [`Envelope`] names only the recipient's mailbox, a random id and an
//! expiry. Its `sealed` bytes hide the sender (Signal's "sealed sender"):
//!
//! ```text
//! sealed = 0x01 ‖ E (32) ‖ L (u16 BE) ‖ C1 (L bytes) ‖ C2
//!
//! e, E   fresh X25519 key pair          R = recipient's X25519 identity key
//! okm1   = HKDF(0³², DH(e, R), "meshchat/1/seal/ephemeral" ‖ E ‖ R, 76)
//!          = k1 (32) ‖ n1 (12) ‖ c (32)
//! C1     = ChaCha20-Poly1305(k1, n1, sender certificate, AD = 0x01 ‖ E)
//! okm2   = HKDF(c, DH(S, R), "meshchat/1/seal/static" ‖ C1, 44) = k2 ‖ n2
//! C2     = ChaCha20-Poly1305(k2, n2, pad(content), AD = 0x01 ‖ E ‖ L ‖ C1)
//! ```
//!
//! `S` is the sender's X25519 identity key. The second layer can only be
//! made by the holder of `S`, so a certificate naming someone else fails to
//! open: [`Error::ForgedSender`].

use std::collections::{HashMap, VecDeque};

use curve25519_dalek::edwards::EdwardsPoint;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::identity::PUBLIC_MAX;
use super::kdf::{Aead, TAG_LEN, decompress, dh, dh_point, hkdf};
use super::wire;
use super::{DeviceIdentity, Error, PublicIdentity, Secret32, labels};

const SEALED_VERSION: u8 = 1;
const ENVELOPE_VERSION: u8 = 1;
const CONTENT_VERSION: u8 = 1;
const CERT_VERSION: u8 = 1;
/// Smallest padded size.
pub const MIN_BUCKET: usize = 256;
/// Largest padded size (content + terminator must fit).
pub const MAX_BUCKET: usize = 64 * 1024;
/// Largest `sealed` field.
pub const MAX_SEALED: usize = 1 + 32 + 2 + (PUBLIC_MAX + 8 + TAG_LEN) + MAX_BUCKET + TAG_LEN;
/// Largest encoded envelope.
pub const MAX_ENVELOPE: usize = MAX_SEALED + 128;
/// How many peers' static-static secrets a [`SealCache`] keeps.
pub const SEAL_CACHE_CAP: usize = 1024;

/// What a relay stores and the mesh forwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    version: u8,
    /// `SHA-256("meshchat/mailbox" ‖ mailbox public key)` of the recipient device.
    pub mailbox_id: [u8; 32],
    /// Random id (mailbox acknowledgements name it).
    pub envelope_id: [u8; 16],
    /// Unix seconds after which nobody should keep or deliver it.
    pub expires_at: u64,
    /// The sealed content.
    #[serde(with = "serde_bytes")]
    pub sealed: Vec<u8>,
}

impl Envelope {
    /// A new envelope.
    pub fn new(
        mailbox_id: [u8; 32],
        envelope_id: [u8; 16],
        expires_at: u64,
        sealed: Vec<u8>,
    ) -> Self {
        Self {
            version: ENVELOPE_VERSION,
            mailbox_id,
            envelope_id,
            expires_at,
            sealed,
        }
    }

    /// Encoded form.
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(self)
    }

    /// Bounded decode.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let env: Self = wire::decode(bytes, "envelope", ENVELOPE_VERSION, MAX_ENVELOPE)?;
        if env.sealed.len() > MAX_SEALED {
            return Err(Error::TooLarge {
                what: "sealed",
                len: env.sealed.len(),
                max: MAX_SEALED,
            });
        }
        Ok(env)
    }

    /// SHA-256 of the encoded bytes: the dedup and gossip message id.
    pub fn hash(bytes: &[u8]) -> [u8; 32] {
        Sha256::digest(bytes).into()
    }
}

/// The sender's identity as shown to the recipient inside the seal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderCertificate {
    version: u8,
    /// The sending device.
    pub identity: PublicIdentity,
}

/// What a sealed envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ContentKind {
    /// A [`super::x3dh::PrekeyMessage`] (first messages of a session).
    Prekey,
    /// A [`super::RatchetMessage`].
    Ratchet,
    /// A [`super::SenderKeyMessage`].
    SenderKey,
    /// An introduction: the sender's invite, sent by a device that added
    /// the recipient's invite, so that the recipient, who has not added
    /// the sender, sees a contact request.
    Intro,
    /// A session set-up (`Prekey`) with the sender's invite beside it,
    /// for a recipient that may not have added the sender.
    Introduced,
}

/// The plaintext inside the seal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedContent {
    version: u8,
    /// What `body` is.
    pub kind: ContentKind,
    /// The encoded message.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

impl SealedContent {
    /// New content.
    pub fn new(kind: ContentKind, body: Vec<u8>) -> Self {
        Self {
            version: CONTENT_VERSION,
            kind,
            body,
        }
    }
}

/// An opened envelope.
#[derive(Debug, Clone)]
pub struct OpenedEnvelope {
    /// The authenticated sender.
    pub sender: PublicIdentity,
    /// Its content.
    pub content: SealedContent,
}

/// Cache of `DH(our identity, their identity)` per peer: that value never
/// changes for a pair of identities, and caching it saves one X25519
/// multiplication per envelope on each side. Bounded, oldest evicted.
///
/// Keyed by the peer's key only: one cache belongs to one local identity.
/// Its values are as secret as the identity key itself.
#[derive(Default)]
pub struct SealCache {
    map: HashMap<[u8; 32], CacheEntry>,
    order: VecDeque<[u8; 32]>,
}

struct CacheEntry {
    /// `DH(our identity, their identity)`.
    shared: Secret32,
    /// Their identity key as an Edwards point (the sender's ephemeral
    /// exchange with a recipient starts from it).
    point: EdwardsPoint,
    /// The sender identity (with this X25519 key) whose binding signature
    /// verified and whose seal authenticated; saves one Ed25519
    /// verification per envelope.
    identity: Option<PublicIdentity>,
}

impl std::fmt::Debug for SealCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealCache({} peers)", self.map.len())
    }
}

impl SealCache {
    /// The cached static secret with `theirs` and their key as a point, or
    /// freshly computed ones (not yet remembered).
    fn static_dh(
        &self,
        ours: &StaticSecret,
        theirs: &[u8; 32],
    ) -> Result<(Secret32, EdwardsPoint), Error> {
        const WHAT: &str = "sealed sender (static)";
        match self.map.get(theirs) {
            Some(e) => Ok((e.shared.clone(), e.point)),
            None => {
                let point = decompress(&PublicKey::from(*theirs), WHAT)?;
                Ok((dh_point(ours, &point, WHAT)?, point))
            }
        }
    }

    /// Whether `id` is exactly an identity already checked and authenticated.
    fn knows(&self, id: &PublicIdentity) -> bool {
        self.map.get(&id.dh).and_then(|e| e.identity.as_ref()) == Some(id)
    }

    /// Remembers a static secret (and, on the receiving side, the identity
    /// it authenticated). Only called after the secret was used
    /// successfully, so forged envelopes never displace real entries.
    fn remember(
        &mut self,
        theirs: [u8; 32],
        shared: Secret32,
        point: EdwardsPoint,
        identity: Option<PublicIdentity>,
    ) {
        if let Some(e) = self.map.get_mut(&theirs) {
            if identity.is_some() {
                e.identity = identity;
            }
            return;
        }
        if self.map.len() >= SEAL_CACHE_CAP
            && let Some(old) = self.order.pop_front()
        {
            self.map.remove(&old);
        }
        self.map.insert(
            theirs,
            CacheEntry {
                shared,
                point,
                identity,
            },
        );
        self.order.push_back(theirs);
    }
}

/// Pads to the next bucket: content ‖ 0x80 ‖ zeros. Buckets are powers of
/// two from [`MIN_BUCKET`] to [`MAX_BUCKET`].
pub fn pad(content: &[u8]) -> Result<Vec<u8>, Error> {
    let need = content.len() + 1;
    if need > MAX_BUCKET {
        return Err(Error::TooLarge {
            what: "sealed content",
            len: content.len(),
            max: MAX_BUCKET - 1,
        });
    }
    let size = need.next_power_of_two().max(MIN_BUCKET);
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(content);
    out.push(0x80);
    out.resize(size, 0);
    Ok(out)
}

/// Removes [`pad`]ding.
pub fn unpad(padded: &[u8]) -> Result<&[u8], Error> {
    let n = padded.len();
    if !n.is_power_of_two() || !(MIN_BUCKET..=MAX_BUCKET).contains(&n) {
        return Err(Error::BadPadding);
    }
    let end = padded
        .iter()
        .rposition(|&b| b != 0)
        .ok_or(Error::BadPadding)?;
    if padded[end] != 0x80 {
        return Err(Error::BadPadding);
    }
    Ok(&padded[..end])
}

fn ephemeral_keys(dh_e: &Secret32, e_pub: &[u8; 32], r_pub: &[u8; 32]) -> (Aead, Secret32) {
    let mut info = Vec::with_capacity(labels::SEAL_EPHEMERAL.len() + 64);
    info.extend_from_slice(labels::SEAL_EPHEMERAL);
    info.extend_from_slice(e_pub);
    info.extend_from_slice(r_pub);
    let okm: Zeroizing<[u8; 76]> = Zeroizing::new(hkdf(&[0u8; 32], dh_e.expose(), &info));
    let mut k = [0u8; 32];
    let mut n = [0u8; 12];
    let mut c = [0u8; 32];
    k.copy_from_slice(&okm[..32]);
    n.copy_from_slice(&okm[32..44]);
    c.copy_from_slice(&okm[44..]);
    (Aead::from_parts(k, n), Secret32::new(c))
}

fn static_keys(chain: &Secret32, dh_s: &Secret32, c1: &[u8]) -> Aead {
    let mut info = Vec::with_capacity(labels::SEAL_STATIC.len() + c1.len());
    info.extend_from_slice(labels::SEAL_STATIC);
    info.extend_from_slice(c1);
    let okm: Zeroizing<[u8; 44]> = Zeroizing::new(hkdf(chain.expose(), dh_s.expose(), &info));
    let mut k = [0u8; 32];
    let mut n = [0u8; 12];
    k.copy_from_slice(&okm[..32]);
    n.copy_from_slice(&okm[32..]);
    Aead::from_parts(k, n)
}

/// Seals `content` from `sender` to the device whose X25519 identity key is
/// `recipient`.
pub fn seal<R: rand_core::CryptoRng + ?Sized>(
    sender: &DeviceIdentity,
    recipient: &[u8; 32],
    content: &SealedContent,
    cache: &mut SealCache,
    rng: &mut R,
) -> Result<Vec<u8>, Error> {
    let padded = Zeroizing::new(pad(&wire::encode(content))?);
    let cert = wire::encode(&SenderCertificate {
        version: CERT_VERSION,
        identity: sender.public().clone(),
    });
    let (dh_s, r) = cache.static_dh(sender.dh_secret(), recipient)?;
    cache.remember(*recipient, dh_s.clone(), r, None);
    let e = StaticSecret::random_from_rng(rng);
    let e_pub = PublicKey::from(&e).to_bytes();
    let dh_e = dh_point(&e, &r, "sealed sender (ephemeral)")?;
    let (aead1, chain) = ephemeral_keys(&dh_e, &e_pub, recipient);
    let mut out = Vec::with_capacity(35 + cert.len() + padded.len() + 2 * TAG_LEN);
    out.push(SEALED_VERSION);
    out.extend_from_slice(&e_pub);
    let c1 = aead1.seal(&cert, &out);
    let l = u16::try_from(c1.len()).map_err(|_| Error::TooLarge {
        what: "sender certificate",
        len: c1.len(),
        max: 65535,
    })?;
    out.extend_from_slice(&l.to_be_bytes());
    out.extend_from_slice(&c1);
    let c2 = static_keys(&chain, &dh_s, &c1).seal(&padded, &out);
    out.extend_from_slice(&c2);
    Ok(out)
}

/// Opens a sealed payload addressed to `recipient`, authenticating the sender.
pub fn open(
    recipient: &DeviceIdentity,
    sealed: &[u8],
    cache: &mut SealCache,
) -> Result<OpenedEnvelope, Error> {
    const WHAT: &str = "sealed envelope";
    if sealed.len() > MAX_SEALED {
        return Err(Error::TooLarge {
            what: WHAT,
            len: sealed.len(),
            max: MAX_SEALED,
        });
    }
    let min = 35 + TAG_LEN + TAG_LEN;
    if sealed.len() < min {
        return Err(Error::Truncated {
            what: WHAT,
            len: sealed.len(),
            min,
        });
    }
    if sealed[0] != SEALED_VERSION {
        return Err(Error::UnknownVersion {
            what: WHAT,
            got: sealed[0],
            expected: SEALED_VERSION,
        });
    }
    let mut e_pub = [0u8; 32];
    e_pub.copy_from_slice(&sealed[1..33]);
    let l = usize::from(u16::from_be_bytes([sealed[33], sealed[34]]));
    if l > PUBLIC_MAX + 8 + TAG_LEN || 35 + l + TAG_LEN > sealed.len() {
        return Err(Error::Malformed { what: WHAT });
    }
    let c1 = &sealed[35..35 + l];
    let c2 = &sealed[35 + l..];
    let dh_e = dh(
        recipient.dh_secret(),
        &PublicKey::from(e_pub),
        "sealed sender (ephemeral)",
    )?;
    let (aead1, chain) = ephemeral_keys(&dh_e, &e_pub, &recipient.public().dh);
    let cert_bytes = aead1.open(c1, &sealed[..33], "sender certificate")?;
    let cert: SenderCertificate = wire::decode(
        &cert_bytes,
        "sender certificate",
        CERT_VERSION,
        PUBLIC_MAX + 8,
    )?;
    let known = cache.knows(&cert.identity);
    if !known {
        cert.identity.verify()?;
    }
    let (dh_s, point) = cache.static_dh(recipient.dh_secret(), &cert.identity.dh)?;
    let padded = Zeroizing::new(
        static_keys(&chain, &dh_s, c1)
            .open(c2, &sealed[..35 + l], WHAT)
            .map_err(|_| Error::ForgedSender)?,
    );
    // Authenticated by the holder of the certificate's key: worth caching.
    if !known {
        cache.remember(cert.identity.dh, dh_s, point, Some(cert.identity.clone()));
    }
    let content: SealedContent = wire::decode(
        unpad(&padded)?,
        "sealed content",
        CONTENT_VERSION,
        MAX_BUCKET,
    )?;
    Ok(OpenedEnvelope {
        sender: cert.identity,
        content,
    })
}
