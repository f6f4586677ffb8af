//! The Double Ratchet (Signal specification, revision 4) for 1:1 sessions.
//!
//! - root KDF: `rk' ‖ ck = HKDF-SHA256(salt = rk, ikm = DH out, info = "meshchat/1/root", 64)`
//! - chain KDF: `mk = HMAC-SHA256(ck, 0x01)`, `ck' = HMAC-SHA256(ck, 0x02)`
//! - message AEAD: ChaCha20-Poly1305, key ‖ nonce = HKDF(mk, "meshchat/1/message"),
//!   associated data = session AD ‖ the 41 header bytes.
//!
//! Decryption is transactional: every new key is computed into locals and the
//! state changes only after the ciphertext authenticates, so a forged,
//! replayed or corrupted message leaves the session exactly as it was.

mod header;
mod skipped;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};

pub use header::{HEADER_LEN, Header, MAX_MESSAGE_LEN, MAX_PLAINTEXT, RatchetMessage};
pub use skipped::{MAX_SKIP, MAX_SKIPPED_TOTAL};
use skipped::{Skipped, SkippedKeys};

use super::kdf::{chain_step, decompress, dh, dh_point, hkdf};
use super::wire::{self, bytes64};
use super::x3dh::InitialMessage;
use super::{Error, MessageKey, Secret32, X3dhOutput, labels};

const STATE_VERSION: u8 = 1;
/// How many earlier receiving ratchet keys we remember, to answer a replay
/// from an old chain with a clear "duplicate" instead of a failed DH step.
const PREVIOUS_KEYS: usize = 8;
/// Largest saved session (skipped keys dominate: at most 69 bytes each).
pub const STATE_MAX: usize = 512 + MAX_SKIPPED_TOTAL * 80;
/// How far ahead of the sending chain its saved form is kept (see
/// [`Session::to_bytes`]): at most this many message keys are never used
/// after a restart, and the peer skips over them (well within
/// [`MAX_SKIP`]).
pub const SEND_RESERVE: u32 = 32;

#[derive(Clone, Serialize, Deserialize)]
struct Chain {
    key: Secret32,
    n: u32,
}

/// A sending chain advanced ahead of the live one: what the saved form
/// holds in its place.
#[derive(Clone)]
struct Reserved {
    /// The ratchet key of the chain it belongs to.
    dh: [u8; 32],
    chain: Chain,
}

/// One side of a 1:1 Double Ratchet session.
#[derive(Clone, Serialize, Deserialize)]
pub struct Session {
    version: u8,
    #[serde(with = "bytes64")]
    pub(crate) ad: [u8; 64],
    root: Secret32,
    dhs: Secret32,
    dhs_pub: [u8; 32],
    dhr: Option<[u8; 32]>,
    send: Option<Chain>,
    recv: Option<Chain>,
    pn: u32,
    skipped: SkippedKeys,
    previous_dhr: VecDeque<[u8; 32]>,
    /// X3DH ephemeral key this session was created from.
    base_key: Option<[u8; 32]>,
    /// Sent along with each message until the peer first answers.
    pending_initial: Option<InitialMessage>,
    /// The sending chain as [`Self::to_bytes`] writes it (not itself saved).
    #[serde(skip)]
    reserved: Option<Reserved>,
    /// The sending chain's ratchet key and counter in the last saved form
    /// that was stored (see [`Self::note_stored`]).
    #[serde(skip)]
    saved: Option<([u8; 32], u32)>,
    /// The same, for the last stored form known to be on disk.
    #[serde(skip)]
    durable: Option<([u8; 32], u32)>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("send_n", &self.send.as_ref().map(|c| c.n))
            .field("recv_n", &self.recv.as_ref().map(|c| c.n))
            .field("skipped", &self.skipped.len())
            .finish_non_exhaustive()
    }
}

fn kdf_rk(root: &Secret32, dh_out: &Secret32) -> (Secret32, Secret32) {
    let okm: zeroize::Zeroizing<[u8; 64]> =
        zeroize::Zeroizing::new(hkdf(root.expose(), dh_out.expose(), labels::ROOT));
    let mut rk = [0u8; 32];
    let mut ck = [0u8; 32];
    rk.copy_from_slice(&okm[..32]);
    ck.copy_from_slice(&okm[32..]);
    (Secret32::new(rk), Secret32::new(ck))
}

/// Advances `chain` from its counter up to message `n`, returning the keys
/// for the messages in between, the key for `n`, and the chain after `n`.
fn advance(
    chain: &Chain,
    dh_pub: &[u8; 32],
    n: u32,
) -> Result<(Vec<Skipped>, MessageKey, Chain), Error> {
    let mut skipped = Vec::with_capacity((n - chain.n) as usize);
    let mut ck = chain.key.clone();
    let mut i = chain.n;
    while i < n {
        let (mk, next) = chain_step(&ck);
        skipped.push(Skipped {
            dh: *dh_pub,
            n: i,
            key: mk,
        });
        ck = next;
        i += 1;
    }
    let (mk, next) = chain_step(&ck);
    let after = n.checked_add(1).ok_or(Error::CounterOverflow)?;
    Ok((
        skipped,
        mk,
        Chain {
            key: next,
            n: after,
        },
    ))
}

fn secret(s: &Secret32) -> StaticSecret {
    StaticSecret::from(*s.expose())
}

impl Session {
    /// The initiator's session (after X3DH): a fresh ratchet key pair and a
    /// sending chain toward the responder's signed prekey.
    pub fn initiator<R: rand_core::CryptoRng + ?Sized>(
        x3dh: &X3dhOutput,
        their_ratchet: [u8; 32],
        initial: Option<InitialMessage>,
        rng: &mut R,
    ) -> Result<Self, Error> {
        let dhs = StaticSecret::random_from_rng(rng);
        let dhs_pub = PublicKey::from(&dhs).to_bytes();
        let out = dh(&dhs, &PublicKey::from(their_ratchet), "ratchet init")?;
        let (root, ck) = kdf_rk(&x3dh.shared_secret, &out);
        let mut session = Self {
            version: STATE_VERSION,
            ad: x3dh.associated_data,
            root,
            dhs: Secret32::new(dhs.to_bytes()),
            dhs_pub,
            dhr: Some(their_ratchet),
            send: Some(Chain { key: ck, n: 0 }),
            recv: None,
            pn: 0,
            skipped: SkippedKeys::default(),
            previous_dhr: VecDeque::new(),
            base_key: initial.map(|i| i.ephemeral),
            pending_initial: initial,
            reserved: None,
            saved: None,
            durable: None,
        };
        session.reserve();
        Ok(session)
    }

    /// The responder's session: its signed prekey is its first ratchet key.
    /// It can send once the initiator's first message has decrypted.
    pub fn responder(
        x3dh: &X3dhOutput,
        our_ratchet: &Secret32,
        base_key: Option<[u8; 32]>,
    ) -> Self {
        let dhs_pub = PublicKey::from(&secret(our_ratchet)).to_bytes();
        Self {
            version: STATE_VERSION,
            ad: x3dh.associated_data,
            root: x3dh.shared_secret.clone(),
            dhs: our_ratchet.clone(),
            dhs_pub,
            dhr: None,
            send: None,
            recv: None,
            pn: 0,
            skipped: SkippedKeys::default(),
            previous_dhr: VecDeque::new(),
            base_key,
            pending_initial: None,
            reserved: None,
            saved: None,
            durable: None,
        }
    }

    /// The X3DH parameters to attach to outgoing messages, until the peer
    /// has answered once.
    pub fn pending_initial(&self) -> Option<&InitialMessage> {
        self.pending_initial.as_ref()
    }

    /// The X3DH ephemeral key the session grew from (to recognise a replayed
    /// session set-up).
    pub fn base_key(&self) -> Option<&[u8; 32]> {
        self.base_key.as_ref()
    }

    /// Whether this side can send yet.
    pub fn can_send(&self) -> bool {
        self.send.is_some()
    }

    /// Number of skipped message keys held.
    pub fn skipped_len(&self) -> usize {
        self.skipped.len()
    }

    fn aad(&self, header: &[u8; HEADER_LEN]) -> [u8; 64 + HEADER_LEN] {
        let mut ad = [0u8; 64 + HEADER_LEN];
        ad[..64].copy_from_slice(&self.ad);
        ad[64..].copy_from_slice(header);
        ad
    }

    /// Encrypts one message and advances the sending chain.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<RatchetMessage, Error> {
        let (msg, _) = self.encrypt_inner(plaintext)?;
        Ok(msg)
    }

    pub(crate) fn encrypt_inner(
        &mut self,
        plaintext: &[u8],
    ) -> Result<(RatchetMessage, super::Aead), Error> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(Error::TooLarge {
                what: "plaintext",
                len: plaintext.len(),
                max: MAX_PLAINTEXT,
            });
        }
        let chain = self.send.as_mut().ok_or(Error::Malformed {
            what: "session cannot send yet",
        })?;
        let n = chain.n;
        let next_n = n.checked_add(1).ok_or(Error::CounterOverflow)?;
        let (mk, next) = chain_step(&chain.key);
        chain.key = next;
        chain.n = next_n;
        let header = Header {
            dh: self.dhs_pub,
            pn: self.pn,
            n,
        };
        let hb = header.to_bytes();
        let aead = mk.aead(labels::MESSAGE);
        let ciphertext = aead.seal(plaintext, &self.aad(&hb));
        self.reserve();
        Ok((RatchetMessage { header, ciphertext }, aead))
    }

    /// Keeps the saved form of the sending chain at least half of
    /// [`SEND_RESERVE`] ahead of the live chain, moving it
    /// [`SEND_RESERVE`] ahead when it falls behind that (or the chain is
    /// new). A counter at the end of its range keeps no reserve: its
    /// saved form is the live chain.
    fn reserve(&mut self) {
        let Some(send) = &self.send else {
            self.reserved = None;
            return;
        };
        let ahead = self
            .reserved
            .as_ref()
            .filter(|r| r.dh == self.dhs_pub)
            .map_or(0, |r| r.chain.n.saturating_sub(send.n));
        if ahead >= SEND_RESERVE / 2 {
            return;
        }
        let Some(n) = send.n.checked_add(SEND_RESERVE) else {
            self.reserved = None;
            return;
        };
        let mut key = send.key.clone();
        for _ in 0..SEND_RESERVE {
            key = chain_step(&key).1;
        }
        self.reserved = Some(Reserved {
            dh: self.dhs_pub,
            chain: Chain { key, n },
        });
    }

    /// Whether the message with `header`, just encrypted by this session,
    /// used a key that no restart can use again: a saved form that is on
    /// disk (see [`Self::mark_saved_durable`]) already holds its chain
    /// past it. Such a message may be sent before the session's new state
    /// is on disk.
    pub fn sent_key_is_durable(&self, header: &Header) -> bool {
        self.durable
            .is_some_and(|(dh, n)| dh == header.dh && header.n < n)
    }

    /// Tells the session that the bytes [`Self::to_bytes`] just gave were
    /// stored (not yet on disk: see [`Self::mark_saved_durable`]). Call it
    /// only once the write succeeded, with no change to the session since
    /// `to_bytes`.
    pub fn note_stored(&mut self) {
        self.saved = self.send.as_ref().map(|live| {
            let n = self.reserved_ahead().map_or(live.n, |r| r.chain.n);
            (self.dhs_pub, n)
        });
    }

    /// Tells the session that the store was flushed: the form last noted
    /// by [`Self::note_stored`] is on disk.
    pub fn mark_saved_durable(&mut self) {
        if let Some(saved) = self.saved {
            self.durable = Some(saved);
        }
    }

    /// The reserve [`Self::to_bytes`] writes in place of the live chain.
    fn reserved_ahead(&self) -> Option<&Reserved> {
        self.reserved
            .as_ref()
            .filter(|r| r.dh == self.dhs_pub && self.send.is_some())
    }

    /// Decrypts one message. On any error the session is unchanged.
    pub fn decrypt<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        msg: &RatchetMessage,
        rng: &mut R,
    ) -> Result<Vec<u8>, Error> {
        let h = msg.header;
        let aad = self.aad(&h.to_bytes());
        const WHAT: &str = "ratchet message";

        // 1. A key we kept for a message that was skipped earlier.
        if let Some(idx) = self.skipped.find(&h.dh, h.n) {
            let mk = self
                .skipped
                .get(idx)
                .ok_or(Error::Duplicate { counter: h.n })?;
            let pt = mk.aead(labels::MESSAGE).open(&msg.ciphertext, &aad, WHAT)?;
            self.skipped.remove(idx);
            return Ok(pt);
        }

        // 2. The current receiving chain.
        if self.dhr == Some(h.dh)
            && let Some(recv) = &self.recv
        {
            if h.n < recv.n {
                return Err(Error::Duplicate { counter: h.n });
            }
            let gap = u64::from(h.n - recv.n);
            if gap > u64::from(MAX_SKIP) {
                return Err(Error::GapTooBig { gap, max: MAX_SKIP });
            }
            let (skipped, mk, after) = advance(recv, &h.dh, h.n)?;
            let pt = mk.aead(labels::MESSAGE).open(&msg.ciphertext, &aad, WHAT)?;
            self.skipped.extend(skipped);
            self.recv = Some(after);
            return Ok(pt);
        }
        if self.previous_dhr.contains(&h.dh) {
            return Err(Error::Duplicate { counter: h.n });
        }

        // 3. A new ratchet key from the peer: a DH ratchet step. Bound the
        // work before deriving anything.
        let old_gap = match (&self.recv, self.dhr) {
            (Some(recv), Some(_)) => u64::from(h.pn.saturating_sub(recv.n)),
            _ => 0,
        };
        let gap = old_gap + u64::from(h.n);
        if gap > u64::from(MAX_SKIP) {
            return Err(Error::GapTooBig { gap, max: MAX_SKIP });
        }
        let mut new_skipped = Vec::new();
        if let (Some(recv), Some(old_dh)) = (&self.recv, self.dhr)
            && h.pn > recv.n
        {
            let (mut s, last, _) = advance(recv, &old_dh, h.pn - 1)?;
            s.push(Skipped {
                dh: old_dh,
                n: h.pn - 1,
                key: last,
            });
            new_skipped = s;
        }
        let their = decompress(&PublicKey::from(h.dh), "ratchet step")?;
        let dh_recv = dh_point(&secret(&self.dhs), &their, "ratchet step")?;
        let (root1, ck_recv) = kdf_rk(&self.root, &dh_recv);
        let new_dhs = StaticSecret::random_from_rng(rng);
        let dh_send = dh_point(&new_dhs, &their, "ratchet step")?;
        let (root2, ck_send) = kdf_rk(&root1, &dh_send);
        let (s, mk, after) = advance(&Chain { key: ck_recv, n: 0 }, &h.dh, h.n)?;
        new_skipped.extend(s);
        let pt = mk.aead(labels::MESSAGE).open(&msg.ciphertext, &aad, WHAT)?;

        // Authentic: commit.
        self.skipped.extend(new_skipped);
        if let Some(old) = self.dhr.replace(h.dh) {
            self.previous_dhr.push_back(old);
            while self.previous_dhr.len() > PREVIOUS_KEYS {
                self.previous_dhr.pop_front();
            }
        }
        self.recv = Some(after);
        self.pn = self.send.as_ref().map_or(0, |c| c.n);
        self.send = Some(Chain { key: ck_send, n: 0 });
        self.dhs_pub = PublicKey::from(&new_dhs).to_bytes();
        self.dhs = Secret32::new(new_dhs.to_bytes());
        self.root = root2;
        self.pending_initial = None;
        self.reserve();
        Ok(pt)
    }

    /// Saved form (secret: encrypt before storing).
    ///
    /// The sending chain is written as it will be [`SEND_RESERVE`]
    /// messages or fewer ahead (see `reserve`): a session restored after a
    /// crash continues from there, so no message key is used twice even
    /// when messages left before their session's state reached the disk.
    /// (A session loaded from its saved form holds no reserve until it
    /// next encrypts; until then the chain it writes is the one it loaded.)
    pub fn to_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        self.encode(true)
    }

    /// Saved form with the live sending chain, not reserved ahead: for a
    /// last save before a clean stop, when nothing encrypted since will
    /// leave. A session restored from it continues without a gap.
    pub fn to_bytes_exact(&self) -> zeroize::Zeroizing<Vec<u8>> {
        self.encode(false)
    }

    fn encode(&self, reserved: bool) -> zeroize::Zeroizing<Vec<u8>> {
        let bytes = match self.reserved_ahead().filter(|_| reserved) {
            Some(r) => {
                let mut saved = self.clone();
                saved.send = Some(r.chain.clone());
                wire::encode(&saved)
            }
            None => wire::encode(self),
        };
        zeroize::Zeroizing::new(bytes)
    }

    /// Inverse of [`Self::to_bytes`], bounded.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let s: Self = wire::decode(bytes, "session state", STATE_VERSION, STATE_MAX)?;
        if s.skipped.len() > MAX_SKIPPED_TOTAL || s.previous_dhr.len() > PREVIOUS_KEYS {
            return Err(Error::Malformed {
                what: "session state",
            });
        }
        Ok(s)
    }
}
