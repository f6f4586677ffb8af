//! What the node keeps in the store besides history: its own keys, its
//! contacts, per-conversation counters and queued payloads. Every record
//! is sealed by the store; these are the plaintext shapes, encoded with
//! postcard behind a version byte and decoded with bounds.

use serde::{Deserialize, Serialize};

use crate::crypto::{self, PrekeyBundle, PublicIdentity, wire};

const CONTACT_VERSION: u8 = 2;
/// Contacts before they kept their account's device list.
const CONTACT_VERSION_1: u8 = 1;
const CONV_STATE_VERSION: u8 = 1;
const QUEUED_VERSION: u8 = 2;
/// Queued payloads before they kept the frame last sent.
const QUEUED_VERSION_1: u8 = 1;
const INVITE_VERSION: u8 = 2;
/// Invites before they carried the account's device list.
const INVITE_VERSION_1: u8 = 1;

/// Most addresses kept for a contact.
pub const MAX_ADDRS: usize = 16;
/// Longest address kept, in bytes.
pub const MAX_ADDR_LEN: usize = 256;
/// Longest contact name, in bytes.
pub const MAX_NAME: usize = 128;
/// Most out-of-order sequence numbers remembered per conversation. The
/// conversation's state, with this many numbers of the largest encoding
/// (10 bytes each), must stay within a contacts record (16 KiB), or a
/// contact sending huge numbers could make it impossible to write.
pub const MAX_AHEAD: usize = 1024;

/// A contact: a device we talk to, with what we need to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    version: u8,
    /// Its identity keys.
    pub identity: PublicIdentity,
    /// What the user calls it.
    pub name: String,
    /// Where it collects sealed mail (relays, and the mesh inbox shard).
    pub mailbox_id: [u8; 32],
    /// Known multiaddrs.
    pub addrs: Vec<String>,
    /// Its prekey bundle as last received (verified before storing).
    pub bundle: PrekeyBundle,
    /// Whether the user compared safety numbers.
    pub verified: bool,
    /// Its account's device list as last received and verified (an
    /// encoded [`crypto::DeviceList`]); empty if it never sent one (an
    /// invite of version 1).
    #[serde(with = "serde_bytes")]
    pub devices: Vec<u8>,
}

/// A contact as version 1 kept it: no device list.
#[derive(Deserialize, Serialize)]
struct ContactV1 {
    version: u8,
    identity: PublicIdentity,
    name: String,
    mailbox_id: [u8; 32],
    addrs: Vec<String>,
    bundle: PrekeyBundle,
    verified: bool,
}

/// Largest encoded contact record.
const CONTACT_MAX: usize = 16 * 1024;

impl Contact {
    /// A new contact from a verified invite.
    pub fn new(
        invite: &Invite,
        identity: PublicIdentity,
        mailbox_id: [u8; 32],
        name: &str,
    ) -> Self {
        Self {
            version: CONTACT_VERSION,
            identity,
            name: truncate(name, MAX_NAME),
            mailbox_id,
            addrs: invite.addrs.clone(),
            bundle: invite.bundle.clone(),
            verified: false,
            devices: invite.devices.clone(),
        }
    }

    /// Its account's device list, verified again (`None` if it sent
    /// none).
    pub fn device_list(&self) -> Option<crypto::VerifiedDeviceList> {
        if self.devices.is_empty() {
            return None;
        }
        crypto::DeviceList::from_bytes(&self.devices)
            .ok()?
            .verify()
            .ok()
    }

    /// Encoded form (sealed by the store when written).
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(self)
    }

    /// Bounded decode (a version-1 record reads as a contact without a
    /// device list).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crypto::Error> {
        if bytes.first() == Some(&CONTACT_VERSION_1) {
            let c: ContactV1 = wire::decode(bytes, "contact", CONTACT_VERSION_1, CONTACT_MAX)?;
            return Ok(Self {
                version: CONTACT_VERSION,
                identity: c.identity,
                name: c.name,
                mailbox_id: c.mailbox_id,
                addrs: c.addrs,
                bundle: c.bundle,
                verified: c.verified,
                devices: Vec::new(),
            });
        }
        wire::decode(bytes, "contact", CONTACT_VERSION, CONTACT_MAX)
    }
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Counters of one conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvState {
    version: u8,
    /// The conversation's Lamport clock: above every message seen or sent.
    pub lamport: u64,
    /// Sequence number of our next message (from 1).
    pub next_seq: u64,
    /// Highest sequence number of the peer's up to which nothing is missing.
    pub peer_contiguous: u64,
    /// The peer's sequence numbers received beyond a gap (bounded).
    pub peer_ahead: Vec<u64>,
    /// When we last asked the peer to resend (Unix seconds).
    pub resend_asked_at: u64,
}

impl Default for ConvState {
    fn default() -> Self {
        Self {
            version: CONV_STATE_VERSION,
            lamport: 0,
            next_seq: 1,
            peer_contiguous: 0,
            peer_ahead: Vec::new(),
            resend_asked_at: 0,
        }
    }
}

/// What accepting a peer's sequence number found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    /// In order (or filled a gap).
    InOrder,
    /// Ahead of a gap: messages from `missing_from` on have not arrived.
    Gap {
        /// The first missing sequence number.
        missing_from: u64,
    },
    /// Already seen.
    Old,
}

impl ConvState {
    /// Records the peer's sequence number `seq`.
    pub fn accept_seq(&mut self, seq: u64) -> SeqCheck {
        if seq <= self.peer_contiguous || self.peer_ahead.contains(&seq) {
            return SeqCheck::Old;
        }
        if seq == self.peer_contiguous + 1 {
            self.peer_contiguous = seq;
            self.advance();
            return if self.peer_ahead.is_empty() {
                SeqCheck::InOrder
            } else {
                SeqCheck::Gap {
                    missing_from: self.peer_contiguous + 1,
                }
            };
        }
        if self.peer_ahead.len() >= MAX_AHEAD {
            // Bounded: forget the oldest; the messages are stored anyway,
            // only gap detection loses precision. (A state written when the
            // bound was higher comes down to it at once.)
            self.peer_ahead.sort_unstable();
            let extra = self.peer_ahead.len() + 1 - MAX_AHEAD;
            self.peer_ahead.drain(..extra);
        }
        self.peer_ahead.push(seq);
        SeqCheck::Gap {
            missing_from: self.peer_contiguous + 1,
        }
    }

    /// Counts the peer's sequence numbers from `from` up to `until` (not
    /// included) as received: the peer said they will not come
    /// ([`super::proto::Payload::Gone`]). Only a gap below numbers that did
    /// arrive is closed, and only from its start, so a peer can close its
    /// own gaps but cannot move the counter past what it sent. Whether it
    /// closed anything.
    pub fn skip(&mut self, from: u64, until: u64) -> bool {
        let Some(&top) = self.peer_ahead.iter().max() else {
            return false;
        };
        let last = until.saturating_sub(1).min(top);
        if from > self.peer_contiguous.saturating_add(1) || last <= self.peer_contiguous {
            return false;
        }
        self.peer_contiguous = last;
        self.peer_ahead.retain(|&s| s > last);
        self.advance();
        true
    }

    /// Moves `peer_contiguous` over the numbers in `peer_ahead` that follow
    /// it.
    fn advance(&mut self) {
        self.peer_ahead.sort_unstable();
        while let Some(next) = self.peer_contiguous.checked_add(1)
            && let Some(pos) = self.peer_ahead.iter().position(|&s| s == next)
        {
            self.peer_ahead.remove(pos);
            self.peer_contiguous = next;
        }
    }

    /// Encoded form (sealed by the store when written).
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(self)
    }

    /// Bounded decode.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crypto::Error> {
        wire::decode(bytes, "conversation state", CONV_STATE_VERSION, 64 * 1024)
    }
}

/// A payload waiting in the outbox for its recipient's acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    version: u8,
    /// The conversation.
    pub conv_id: [u8; 32],
    /// Lamport clock of the chat message it carries, if it is one.
    pub lamport: Option<u64>,
    /// Its sequence number, if it is a chat message.
    pub seq: Option<u64>,
    /// The encoded [`super::proto::Payload`], encrypted again when the
    /// session with the recipient is no longer the one [`Self::sent`]
    /// was made in.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// The frame the last fresh retry sent, and the session it was
    /// encrypted in: later retries send it again in that session rather
    /// than take a new message key each (see `Engine::due` for when one
    /// encrypts afresh).
    pub sent: Option<SentFrame>,
}

/// A frame kept for the retries of a queued payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentFrame {
    /// The session's base key (the X3DH ephemeral key it grew from).
    pub session: [u8; 32],
    /// The encoded frame.
    #[serde(with = "serde_bytes")]
    pub frame: Vec<u8>,
}

/// [`Queued`] at version 1 (no kept frame).
#[derive(Serialize, Deserialize)]
struct QueuedV1 {
    version: u8,
    conv_id: [u8; 32],
    lamport: Option<u64>,
    seq: Option<u64>,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

impl Queued {
    /// A queued payload.
    pub fn new(
        conv_id: [u8; 32],
        lamport: Option<u64>,
        seq: Option<u64>,
        payload: Vec<u8>,
    ) -> Self {
        Self {
            version: QUEUED_VERSION,
            conv_id,
            lamport,
            seq,
            payload,
            sent: None,
        }
    }

    /// Encoded form (sealed by the store when written).
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(self)
    }

    /// Bounded decode (versions 2 and 1).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crypto::Error> {
        const WHAT: &str = "queued payload";
        if bytes.first() == Some(&QUEUED_VERSION_1) {
            let q: QueuedV1 = wire::decode(
                bytes,
                WHAT,
                QUEUED_VERSION_1,
                super::proto::MAX_PAYLOAD + 128,
            )?;
            return Ok(Self::new(q.conv_id, q.lamport, q.seq, q.payload));
        }
        wire::decode(bytes, WHAT, QUEUED_VERSION, MAX_QUEUED)
    }
}

/// Longest encoded [`Queued`]: a payload and a frame carrying it.
pub const MAX_QUEUED: usize = super::proto::MAX_PAYLOAD + super::proto::MAX_FRAME + 256;
// The store must take the longest one.
const _: () = assert!(MAX_QUEUED <= crate::store::MAX_QUEUED_ENVELOPE);

/// What one device hands another out of band to become contacts: its
/// signed prekey bundle (identity keys, mailbox, relays), its account's
/// signed device list with the bundles of the account's other devices,
/// and addresses.
///
/// Encoded as `version ‖ bundle ‖ addrs`, and from version 2 on
/// `‖ devices ‖ others`: an invite of version 1 (no device list) is still
/// read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    version: u8,
    /// The device's bundle, without a one-time prekey (an invite may be
    /// used by several people; one-time prekeys are fetched directly).
    pub bundle: PrekeyBundle,
    /// Multiaddrs where it listens (may be empty: found by the mesh).
    pub addrs: Vec<String>,
    /// Its account's encoded [`crypto::DeviceList`] (empty in version 1).
    pub devices: Vec<u8>,
    /// The bundles of the account's other devices the list names.
    pub others: Vec<PrekeyBundle>,
}

impl Serialize for Invite {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.version == INVITE_VERSION_1 {
            (self.version, &self.bundle, &self.addrs).serialize(s)
        } else {
            (
                self.version,
                &self.bundle,
                &self.addrs,
                serde_bytes::Bytes::new(&self.devices),
                &self.others,
            )
                .serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Invite {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error as _, SeqAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Invite;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an invite")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Invite, A::Error> {
                let missing = || A::Error::custom("truncated invite");
                let version: u8 = seq.next_element()?.ok_or_else(missing)?;
                if version != INVITE_VERSION_1 && version != INVITE_VERSION {
                    return Err(A::Error::custom("unknown invite version"));
                }
                let bundle = seq.next_element()?.ok_or_else(missing)?;
                let addrs = seq.next_element()?.ok_or_else(missing)?;
                let (devices, others) = if version == INVITE_VERSION_1 {
                    (Vec::new(), Vec::new())
                } else {
                    let devices: serde_bytes::ByteBuf = seq.next_element()?.ok_or_else(missing)?;
                    let others = seq.next_element()?.ok_or_else(missing)?;
                    (devices.into_vec(), others)
                };
                Ok(Invite {
                    version,
                    bundle,
                    addrs,
                    devices,
                    others,
                })
            }
        }
        // Postcard reads a tuple field by field: a version-1 invite stops
        // after its third.
        d.deserialize_tuple(5, V)
    }
}

/// Text prefix of an invite code.
pub const INVITE_PREFIX: &str = "meshchat:";
/// Largest encoded invite: a full device list (under 1.7 KB), eight
/// bundles (under 4 KB) and the addresses.
const INVITE_MAX: usize = 12 * 1024;

/// An invite whose every signature and rule was checked
/// ([`Invite::verify`]).
#[derive(Debug, Clone)]
pub struct VerifiedInvite {
    /// The inviting device's bundle.
    pub bundle: crypto::VerifiedBundle,
    /// Its account's device list (`None` in a version-1 invite).
    pub list: Option<crypto::VerifiedDeviceList>,
}

impl VerifiedInvite {
    /// The account the inviting device belongs to (itself without a list).
    pub fn account(&self) -> [u8; 32] {
        self.list
            .as_ref()
            .map_or(self.bundle.body.identity.signing, |l| *l.account())
    }
}

impl Invite {
    /// An invite of a device whose account's list is not known (version
    /// 1; [`Self::with_devices`] adds one).
    pub fn new(bundle: PrekeyBundle, addrs: Vec<String>) -> Self {
        Self {
            version: INVITE_VERSION_1,
            bundle,
            addrs: addrs
                .into_iter()
                .filter(|a| a.len() <= MAX_ADDR_LEN)
                .take(MAX_ADDRS)
                .collect(),
            devices: Vec::new(),
            others: Vec::new(),
        }
    }

    /// The same invite with its account's device list and the bundles of
    /// the account's other devices (version 2). An empty `devices`
    /// leaves it at version 1.
    pub fn with_devices(mut self, devices: Vec<u8>, others: Vec<PrekeyBundle>) -> Self {
        if devices.is_empty() {
            return self;
        }
        self.version = INVITE_VERSION;
        self.devices = devices;
        self.others = others;
        self
    }

    /// The same invite naming no addresses.
    pub fn without_addrs(mut self) -> Self {
        self.addrs.clear();
        self
    }

    /// Checks every signature: the bundle's, and with a device list, the
    /// list's, that the list names the inviting device with these very
    /// keys, and each other bundle's (each of a listed device, none
    /// twice, none the inviting device).
    pub fn verify(&self) -> Result<VerifiedInvite, crypto::Error> {
        let bundle = self.bundle.verify()?;
        if self.version == INVITE_VERSION_1 {
            return Ok(VerifiedInvite { bundle, list: None });
        }
        let refused = |reason| crypto::Error::DeviceList { reason };
        let list = crypto::DeviceList::from_bytes(&self.devices)?.verify()?;
        let me = &bundle.body.identity;
        if !list.names(me) {
            return Err(refused("the inviting device is not in its account's list"));
        }
        if self.others.len() >= crypto::MAX_DEVICES {
            return Err(refused("more bundles than devices"));
        }
        let mut seen = vec![me.signing];
        for other in &self.others {
            let b = other.verify()?;
            let id = &b.body.identity;
            if seen.contains(&id.signing) {
                return Err(refused("a device's bundle twice"));
            }
            if !list.names(id) {
                return Err(refused("a bundle of a device not in the list"));
            }
            seen.push(id.signing);
        }
        Ok(VerifiedInvite {
            bundle,
            list: Some(list),
        })
    }

    /// The invite code: `meshchat:` and base64url of the encoding.
    pub fn to_code(&self) -> String {
        format!("{INVITE_PREFIX}{}", base64url::encode(&self.to_bytes()))
    }

    /// Reads an invite code (not yet verified: see [`Self::verify`]).
    pub fn from_code(code: &str) -> Result<Self, crypto::Error> {
        let bytes = code_bytes(
            code,
            INVITE_PREFIX,
            INVITE_MAX,
            [
                "invite code",
                "invite code (no meshchat: prefix)",
                "invite code (not base64url)",
            ],
        )?;
        Self::from_bytes(&bytes)
    }

    /// Encoded form (what an invite code carries, and an introduction).
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(self)
    }

    /// Decodes an invite of either version (bounded; not yet verified).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crypto::Error> {
        let version = match bytes.first() {
            Some(&INVITE_VERSION_1) => INVITE_VERSION_1,
            _ => INVITE_VERSION,
        };
        let invite: Self = wire::decode(bytes, "invite", version, INVITE_MAX)?;
        if invite.addrs.len() > MAX_ADDRS || invite.addrs.iter().any(|a| a.len() > MAX_ADDR_LEN) {
            return Err(crypto::Error::TooLarge {
                what: "invite addresses",
                len: invite.addrs.len(),
                max: MAX_ADDRS,
            });
        }
        if invite.devices.len() > crypto::DEVICE_LIST_MAX {
            return Err(crypto::Error::TooLarge {
                what: "invite device list",
                len: invite.devices.len(),
                max: crypto::DEVICE_LIST_MAX,
            });
        }
        if invite.others.len() >= crypto::MAX_DEVICES {
            return Err(crypto::Error::TooLarge {
                what: "invite bundles",
                len: invite.others.len() + 1,
                max: crypto::MAX_DEVICES,
            });
        }
        Ok(invite)
    }
}

/// A link code's prefix (`meshchat devices link`).
pub const LINK_PREFIX: &str = "meshchat-link:";
const LINK_CODE_VERSION: u8 = 1;

/// What a new device needs to join this device's account
/// (docs/devices.md §4): the invite of the device that made the code, a
/// secret that device keeps until the code is used once or ends, and when
/// it ends. Whoever holds the code can join the account, so it is shown
/// to the person only, like a password.
#[derive(Clone, Serialize, Deserialize)]
pub struct LinkCode {
    version: u8,
    #[serde(with = "serde_bytes")]
    invite: Vec<u8>,
    secret: [u8; 32],
    /// When it ends (Unix seconds).
    pub expires_at: u64,
}

impl std::fmt::Debug for LinkCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkCode")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl LinkCode {
    /// The code for `invite`, `secret` and `expires_at`.
    pub fn new(invite: &Invite, secret: [u8; 32], expires_at: u64) -> Self {
        Self {
            version: LINK_CODE_VERSION,
            invite: invite.to_bytes(),
            secret,
            expires_at,
        }
    }

    /// The invite of the device that made it (not yet verified).
    pub fn invite(&self) -> Result<Invite, crypto::Error> {
        Invite::from_bytes(&self.invite)
    }

    /// The secret.
    pub fn secret(&self) -> &[u8; 32] {
        &self.secret
    }

    /// `meshchat-link:` and base64url of the encoding.
    pub fn to_code(&self) -> String {
        format!("{LINK_PREFIX}{}", base64url::encode(&wire::encode(self)))
    }

    /// Reads a link code (bounded; its invite is checked when used).
    pub fn from_code(code: &str) -> Result<Self, crypto::Error> {
        let max = INVITE_MAX + 64;
        let bytes = code_bytes(
            code,
            LINK_PREFIX,
            max,
            [
                "link code",
                "link code (no meshchat-link: prefix)",
                "link code (not base64url)",
            ],
        )?;
        wire::decode(&bytes, "link code", LINK_CODE_VERSION, max)
    }
}

/// The bytes of a code: `prefix` and base64url of at most `max` bytes,
/// its length checked before decoding. `what`: the code, then how it is
/// malformed without its prefix and when not base64url.
fn code_bytes(
    code: &str,
    prefix: &str,
    max: usize,
    what: [&'static str; 3],
) -> Result<Vec<u8>, crypto::Error> {
    let body = code
        .trim()
        .strip_prefix(prefix)
        .ok_or(crypto::Error::Malformed { what: what[1] })?;
    let longest = max * 4 / 3 + 4;
    if body.len() > longest {
        return Err(crypto::Error::TooLarge {
            what: what[0],
            len: body.len(),
            max: longest,
        });
    }
    base64url::decode(body).ok_or(crypto::Error::Malformed { what: what[2] })
}

/// What a sealed [`crate::crypto::ContentKind::Introduced`] carries: the
/// sender's invite and a frame (a session set-up).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Introduced {
    version: u8,
    /// The sender's encoded [`Invite`].
    #[serde(with = "serde_bytes")]
    pub invite: Vec<u8>,
    /// The encoded `PrekeyMessage`.
    #[serde(with = "serde_bytes")]
    pub frame: Vec<u8>,
}

const INTRODUCED_VERSION: u8 = 1;

impl Introduced {
    /// The encoded `invite` beside the set-up `frame`.
    pub fn new(invite: Vec<u8>, frame: Vec<u8>) -> Self {
        Self {
            version: INTRODUCED_VERSION,
            invite,
            frame,
        }
    }

    /// Encoded form.
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(self)
    }

    /// Decodes (bounded by the largest sealed content).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crypto::Error> {
        wire::decode(
            bytes,
            "introduced set-up",
            INTRODUCED_VERSION,
            crypto::limits::MAX_BUCKET,
        )
    }
}

/// Unpadded base64url (RFC 4648 §5), for invite codes.
pub(crate) mod base64url {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    /// Encodes without padding.
    pub(crate) fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            let chars = chunk.len() + 1;
            for i in 0..chars {
                let idx = (n >> (18 - 6 * i)) & 63;
                out.push(char::from(ALPHABET[idx as usize]));
            }
        }
        out
    }

    fn value(c: u8) -> Option<u32> {
        ALPHABET.iter().position(|&a| a == c).map(|p| p as u32)
    }

    /// Decodes unpadded base64url; `None` on any other character or a
    /// length no encoding has, or non-zero trailing bits.
    pub(crate) fn decode(text: &str) -> Option<Vec<u8>> {
        let bytes = text.as_bytes();
        if bytes.len() % 4 == 1 {
            return None;
        }
        let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
        for chunk in bytes.chunks(4) {
            let mut n = 0u32;
            for (i, &c) in chunk.iter().enumerate() {
                n |= value(c)? << (18 - 6 * i);
            }
            let full = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            let take = chunk.len() - 1;
            // Bits below the last full byte must be zero (canonical form).
            let used_bits = 8 * take;
            let spare = 6 * chunk.len() - used_bits;
            if spare > 0 && (n >> (24 - 6 * chunk.len())) & ((1 << spare) - 1) != 0 {
                return None;
            }
            out.extend_from_slice(&full[..take]);
        }
        Some(out)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn rfc4648_vectors_and_round_trips() {
            for (plain, code) in [
                ("", ""),
                ("f", "Zg"),
                ("fo", "Zm8"),
                ("foo", "Zm9v"),
                ("foob", "Zm9vYg"),
                ("fooba", "Zm9vYmE"),
                ("foobar", "Zm9vYmFy"),
            ] {
                assert_eq!(encode(plain.as_bytes()), code);
                assert_eq!(decode(code).unwrap(), plain.as_bytes());
            }
            let all: Vec<u8> = (0..=255).collect();
            assert_eq!(decode(&encode(&all)).unwrap(), all);
            assert!(decode("Zg=").is_none());
            assert!(decode("Z").is_none());
            assert!(decode("Zh").is_none(), "non-zero spare bits");
            assert!(decode("Zm9v+").is_none());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Version 1 entries (no kept frame) are still read; version 2 keeps
    /// its frame; other versions and oversized input are refused.
    #[test]
    fn queued_payloads_of_both_versions_are_read() {
        let v1 = wire::encode(&QueuedV1 {
            version: QUEUED_VERSION_1,
            conv_id: [3; 32],
            lamport: Some(7),
            seq: Some(2),
            payload: b"payload".to_vec(),
        });
        let old = Queued::from_bytes(&v1).unwrap();
        assert_eq!(
            old,
            Queued::new([3; 32], Some(7), Some(2), b"payload".to_vec())
        );
        let mut q = old;
        q.sent = Some(SentFrame {
            session: [9; 32],
            frame: vec![1; 300],
        });
        assert_eq!(Queued::from_bytes(&q.to_bytes()).unwrap(), q);
        let mut other = q.to_bytes();
        other[0] = 3;
        assert!(Queued::from_bytes(&other).is_err());
        assert!(Queued::from_bytes(&vec![QUEUED_VERSION; MAX_QUEUED + 1]).is_err());
    }

    fn device(seed: u64) -> (crypto::DeviceIdentity, PrekeyBundle) {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let id = crypto::DeviceIdentity::generate(&mut rng);
        let bundle = crypto::PrekeyStore::new(&id, 1, &mut rng)
            .bundle(&id, [seed as u8; 32], &[], 1, false)
            .unwrap();
        (id, bundle)
    }

    /// An invite carries its account's list and the other devices'
    /// bundles; one of version 1 is still read (no list); a list that
    /// does not name the inviting device, or bundles it does not list,
    /// are refused; so are unknown versions.
    #[test]
    fn invites_of_both_versions_are_read_and_their_lists_checked() {
        let (a, a_bundle) = device(1);
        let (b, b_bundle) = device(2);
        let list = crypto::DeviceList::first(&a, "phone", 5).unwrap();
        let invite = Invite::new(a_bundle.clone(), vec!["/ip4/127.0.0.1/tcp/1".into()])
            .with_devices(list.to_bytes(), Vec::new());
        let back = Invite::from_code(&invite.to_code()).unwrap();
        assert_eq!(back, invite);
        let v = back.verify().unwrap();
        assert_eq!(v.account(), a.public().signing);
        assert_eq!(v.list.unwrap().devices()[0].name, "phone");

        let old = Invite::new(b_bundle.clone(), Vec::new());
        assert_eq!(old.to_bytes()[0], INVITE_VERSION_1);
        let back = Invite::from_bytes(&old.to_bytes()).unwrap();
        assert_eq!(back, old);
        let v = back.verify().unwrap();
        assert!(v.list.is_none());
        assert_eq!(v.account(), b.public().signing);

        // B's bundle with A's list: B is not A's device.
        let forged =
            Invite::new(b_bundle.clone(), Vec::new()).with_devices(list.to_bytes(), Vec::new());
        assert!(matches!(
            forged.verify(),
            Err(crypto::Error::DeviceList { .. })
        ));
        // A's list naming B too: B's bundle may go beside A's, once.
        let both = list
            .verify()
            .unwrap()
            .with_device(
                &a,
                &crypto::DeviceMembership::new(&b, &a.public().signing),
                "laptop",
                6,
            )
            .unwrap();
        let two = Invite::new(a_bundle.clone(), Vec::new())
            .with_devices(both.to_bytes(), vec![b_bundle.clone()]);
        assert_eq!(two.verify().unwrap().account(), a.public().signing);
        let twice = Invite::new(a_bundle.clone(), Vec::new())
            .with_devices(both.to_bytes(), vec![b_bundle.clone(), b_bundle.clone()]);
        assert!(twice.verify().is_err());
        let unlisted =
            Invite::new(a_bundle.clone(), Vec::new()).with_devices(list.to_bytes(), vec![b_bundle]);
        assert!(unlisted.verify().is_err());
        // A list whose signature does not hold.
        let mut bytes = list.to_bytes();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let bad = Invite::new(a_bundle, Vec::new()).with_devices(bytes, Vec::new());
        assert!(bad.verify().is_err());

        let mut other = invite.to_bytes();
        other[0] = 3;
        assert!(matches!(
            Invite::from_bytes(&other),
            Err(crypto::Error::UnknownVersion { got: 3, .. })
        ));
        assert!(Invite::from_bytes(&vec![INVITE_VERSION; INVITE_MAX + 1]).is_err());
        // Cut anywhere: refused, not a panic.
        let bytes = invite.to_bytes();
        for n in 0..bytes.len() {
            assert!(Invite::from_bytes(&bytes[..n]).is_err());
        }
    }

    /// A contact kept before contacts had device lists is read without
    /// one; one with a list keeps it.
    #[test]
    fn contacts_of_both_versions_are_read() {
        let (a, bundle) = device(3);
        let v1 = wire::encode(&ContactV1 {
            version: CONTACT_VERSION_1,
            identity: a.public().clone(),
            name: "ann".into(),
            mailbox_id: [4; 32],
            addrs: vec!["/ip4/127.0.0.1/tcp/2".into()],
            bundle: bundle.clone(),
            verified: true,
        });
        let old = Contact::from_bytes(&v1).unwrap();
        assert_eq!((old.name.as_str(), old.verified), ("ann", true));
        assert!(old.devices.is_empty() && old.device_list().is_none());
        let list = crypto::DeviceList::first(&a, "", 1).unwrap();
        let invite = Invite::new(bundle, Vec::new()).with_devices(list.to_bytes(), Vec::new());
        let c = Contact::new(&invite, a.public().clone(), [4; 32], "ann");
        let back = Contact::from_bytes(&c.to_bytes()).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.device_list().unwrap().account(), &a.public().signing);
    }

    #[test]
    fn sequence_numbers_find_gaps_and_fill_them() {
        let mut s = ConvState::default();
        assert_eq!(s.accept_seq(1), SeqCheck::InOrder);
        assert_eq!(s.accept_seq(1), SeqCheck::Old);
        assert_eq!(s.accept_seq(3), SeqCheck::Gap { missing_from: 2 });
        assert_eq!(s.accept_seq(5), SeqCheck::Gap { missing_from: 2 });
        assert_eq!(s.accept_seq(3), SeqCheck::Old);
        assert_eq!(s.accept_seq(2), SeqCheck::Gap { missing_from: 4 });
        assert_eq!(s.accept_seq(4), SeqCheck::InOrder);
        assert_eq!(s.peer_contiguous, 5);
        assert!(s.peer_ahead.is_empty());
        let back = ConvState::from_bytes(&s.to_bytes()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn the_state_with_the_most_and_largest_numbers_ahead_fits_a_record() {
        let mut s = ConvState {
            lamport: u64::MAX,
            next_seq: u64::MAX,
            resend_asked_at: u64::MAX,
            ..ConvState::default()
        };
        for i in 0..2 * MAX_AHEAD as u64 {
            s.accept_seq(u64::MAX - i);
        }
        assert_eq!(s.peer_ahead.len(), MAX_AHEAD);
        let len = s.to_bytes().len();
        // One written when the bound was 4 096 comes down to it.
        let mut old = ConvState {
            peer_ahead: (10..4096 + 10).collect(),
            ..ConvState::default()
        };
        old.accept_seq(u64::MAX);
        assert_eq!(old.peer_ahead.len(), MAX_AHEAD);
        assert!(old.peer_ahead.contains(&u64::MAX));
        let max = crate::store::Kind::Contacts.spec().max_plain;
        assert!(len <= max, "{len} bytes, a record holds {max}");
    }

    #[test]
    fn a_gap_the_peer_says_will_not_come_closes_up_to_what_arrived() {
        let mut s = ConvState::default();
        assert_eq!(s.accept_seq(1), SeqCheck::InOrder);
        assert!(!s.skip(2, 10), "no gap: nothing to close");
        assert_eq!(s.accept_seq(4), SeqCheck::Gap { missing_from: 2 });
        assert_eq!(s.accept_seq(7), SeqCheck::Gap { missing_from: 2 });
        // Not from the gap's start: a gap before it would stay unknown.
        assert!(!s.skip(3, 4));
        // 2 and 3 will not come: over 4 up to the next gap.
        assert!(s.skip(2, 4));
        assert_eq!((s.peer_contiguous, s.peer_ahead.clone()), (4, vec![7]));
        // Never past the highest number that arrived.
        assert!(s.skip(5, u64::MAX));
        assert_eq!((s.peer_contiguous, s.peer_ahead.len()), (7, 0));
        assert_eq!(s.accept_seq(8), SeqCheck::InOrder);
        assert!(!s.skip(0, 0));
    }

    #[test]
    fn the_highest_sequence_number_does_not_overflow() {
        let mut s = ConvState::default();
        assert_eq!(s.accept_seq(u64::MAX), SeqCheck::Gap { missing_from: 1 });
        assert_eq!(
            s.accept_seq(u64::MAX - 1),
            SeqCheck::Gap { missing_from: 1 }
        );
        assert!(s.skip(1, u64::MAX));
        assert_eq!(s.peer_contiguous, u64::MAX);
        assert!(s.peer_ahead.is_empty());
        assert_eq!(s.accept_seq(u64::MAX), SeqCheck::Old);
        assert!(!s.skip(1, u64::MAX));
    }
}
