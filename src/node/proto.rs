//! What nodes say to each other above libp2p: the frames of the direct path,
//! the payloads inside ratchet messages, and presence beacons.
//!
//! Every type here starts with a version byte and decodes through
//! `crypto::wire` (size bound → version → postcard → no trailing bytes →
//! canonical encoding), so a peer's bytes are checked before anything is
//! allocated from them. Layouts are in `docs/protocol.md` ("Node").

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crypto::{
    self, DeviceIdentity, Envelope, PrekeyBundle, PublicIdentity, labels, wire, wire::bytes64,
};

const FRAME_VERSION: u8 = 1;
const PAYLOAD_VERSION: u8 = 1;
const BEACON_VERSION: u8 = 1;

/// Largest chat message body: what a ratchet message carries
/// (`MAX_PLAINTEXT`) less room for the chat's own fields (at most ~130
/// bytes with a quoted reply).
pub const MAX_BODY: usize = crypto::limits::MAX_PLAINTEXT - 256;
/// Most receipts in one payload.
pub const MAX_RECEIPTS: usize = 1024;
/// Largest encoded payload (a full body plus headers).
pub const MAX_PAYLOAD: usize = crypto::limits::MAX_PLAINTEXT;
/// Largest encoded direct frame: an envelope, or a ratchet message of the
/// largest payload with its header and a pending X3DH initial message.
pub const MAX_FRAME: usize = crypto::limits::MAX_ENVELOPE + 512;
/// Largest encoded presence beacon.
pub const MAX_BEACON: usize = 256;

/// One item of a `/meshchat/direct/1` batch. The connection already
/// authenticates both devices (Noise with their libp2p keys, which are
/// their identity keys), so ratchet messages travel without the outer seal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// An encoded `RatchetMessage` of the session with the connected device.
    Ratchet(#[serde(with = "serde_bytes")] Vec<u8>),
    /// An encoded `PrekeyMessage`: the first messages of a new session.
    Prekey(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A sealed envelope handed over directly (as it would travel by mesh).
    Envelope(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Asks the device for its current prekey bundle.
    BundleRequest,
    /// A prekey bundle (answer to [`Frame::BundleRequest`]).
    Bundle(PrekeyBundle),
    /// A new device asking to join this device's account with a link
    /// code (docs/devices.md §4). The only frame a device that is not a
    /// contact may send, and only while a link code is waiting.
    Link(LinkRequest),
}

/// What [`Frame::Link`] carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRequest {
    /// The joining device's invite: its bundle and addresses (the
    /// connection authenticates its key; the bundle must be of that key).
    #[serde(with = "serde_bytes")]
    pub invite: Vec<u8>,
    /// Its consent to be in the account ([`crypto::DeviceMembership`]).
    #[serde(with = "bytes64")]
    pub consent: [u8; 64],
    /// The name it asks to be listed under.
    pub name: String,
    /// [`crypto::link_proof`] of the code's secret, the account and the
    /// joining device.
    pub mac: [u8; 32],
}

#[derive(Serialize, Deserialize)]
struct FrameWire {
    version: u8,
    frame: Frame,
}

impl Frame {
    /// Encoded form.
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(&Versioned(FRAME_VERSION, self))
    }

    /// Bounded decode.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crypto::Error> {
        let w: FrameWire = wire::decode(bytes, "direct frame", FRAME_VERSION, MAX_FRAME)?;
        Ok(w.frame)
    }
}

/// A version byte and a borrowed value, encoded exactly like a struct of
/// the two (so like `FrameWire`/`PayloadWire`) without copying the value.
struct Versioned<'a, T>(u8, &'a T);

impl<T: Serialize> Serialize for Versioned<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&self.0)?;
        t.serialize_element(self.1)?;
        t.end()
    }
}

/// A reference to a message inside a 1:1 conversation, as receipts and
/// replies carry it (the conversation is the one the payload travels in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MsgRef {
    /// Lamport clock of the message.
    pub lamport: u64,
    /// Its author's identity (signing key).
    pub sender: [u8; 32],
    /// Its id.
    pub msg_id: [u8; 16],
}

/// A chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chat {
    /// Random id.
    pub msg_id: [u8; 16],
    /// Lamport clock of the conversation: above everything the author had
    /// seen when writing it, so a reply sorts after what it answers.
    pub lamport: u64,
    /// The author's per-conversation sequence number, from 1 with no gaps:
    /// the recipient detects a missing message by it.
    pub seq: u64,
    /// Author's wall clock, Unix seconds.
    pub sent_at: u64,
    /// When every device should delete it (temporary chats), Unix seconds.
    pub expires_at: Option<u64>,
    /// The message this one answers.
    pub reply_to: Option<MsgRef>,
    /// Content.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// Which receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReceiptKind {
    /// The recipient's device stored the messages.
    Delivered,
    /// The recipient read them.
    Read,
}

/// What a ratchet message carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// A chat message.
    Chat(Chat),
    /// Receipts for messages the recipient of this payload wrote.
    Receipts {
        /// Delivered or read.
        kind: ReceiptKind,
        /// The messages (Lamport clock and id; their author is the
        /// recipient of the receipt).
        messages: Vec<(u64, [u8; 16])>,
    },
    /// "I am missing your messages from sequence number `from` on": the
    /// author sends what it still has queued at once.
    Resend {
        /// The first missing sequence number.
        from: u64,
    },
    /// Operations of a group's membership log
    /// ([`super::groups::Op`] encodings), for a member or a new member.
    GroupOps {
        /// Its id in the sender's outbox (acknowledged like a message's).
        id: [u8; 16],
        /// The operations.
        ops: Vec<serde_bytes::ByteBuf>,
    },
    /// The author's sender key for a group
    /// ([`crate::crypto::SenderKeyDistribution`]): only ever inside a 1:1
    /// session.
    SenderKey {
        /// Its id in the sender's outbox (acknowledged like a message's).
        id: [u8; 16],
        /// The encoded distribution.
        #[serde(with = "serde_bytes")]
        distribution: Vec<u8>,
    },
    /// A group message ([`crate::crypto::SenderKeyMessage`]) sent 1:1: to a
    /// member that did not acknowledge it from the group's topic in time.
    Group {
        /// The encoded group message.
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
    },
    /// Receipts for group messages the recipient of this payload wrote.
    GroupReceipts {
        /// The group.
        group: [u8; 32],
        /// Delivered or read.
        kind: ReceiptKind,
        /// The messages (Lamport clock and id).
        messages: Vec<(u64, [u8; 16])>,
    },
    /// The 1:1 conversation's retention from now on (temporary chat), as
    /// its sender set it.
    Retention {
        /// Its id in the sender's outbox (acknowledged like a message's).
        id: [u8; 16],
        /// Seconds messages live; `None`: kept.
        secs: Option<u64>,
        /// The conversation's clock at the change (the newest change wins,
        /// then the higher identity key).
        lamport: u64,
    },
    /// The answer to a [`Payload::Resend`] for messages the author no
    /// longer has: its messages numbered from `from` up to `until` (not
    /// included) will not come (they expired before they were delivered,
    /// or were delivered already).
    Gone {
        /// The first sequence number that will not come.
        from: u64,
        /// The first one that may still come (queued, or not written yet).
        until: u64,
    },
    /// The sender's account's device list changed: the new one (an
    /// encoded [`crate::crypto::DeviceList`]), with the bundles of the
    /// devices it adds.
    Devices {
        /// Its id in the sender's outbox (acknowledged like a message's).
        id: [u8; 16],
        /// The encoded list.
        #[serde(with = "serde_bytes")]
        list: Vec<u8>,
        /// Bundles of devices the list adds.
        bundles: Vec<crate::crypto::PrekeyBundle>,
    },
    /// Contacts of the sender's account, from the account's first device
    /// to a device that joined it: each one's name and invite, at most
    /// [`MAX_SHARED_CONTACTS`] a payload.
    AccountContacts {
        /// Its id in the sender's outbox (acknowledged like a message's).
        id: [u8; 16],
        /// The contacts.
        contacts: Vec<SharedContact>,
    },
    /// A copy of a message the sending device wrote to `peer`, for
    /// another device of the same account, which files it in its own
    /// conversation with `peer` as this account's (docs/devices.md, §3).
    /// Its `chat.seq` is 0: copies are retried until acknowledged, not
    /// numbered.
    Sent {
        /// Its id in the sender's outbox (acknowledged like a message's).
        id: [u8; 16],
        /// The account the message was written to.
        peer: [u8; 32],
        /// The message.
        chat: Chat,
    },
    /// Another device of the sender's account read the conversation with
    /// `peer` up to the Lamport clock `lamport`: the messages of other
    /// senders at or below it are read here too (docs/devices.md, §3).
    ReadUpTo {
        /// The account the conversation is with.
        peer: [u8; 32],
        /// The newest message read, by its clock.
        lamport: u64,
    },
}

/// One contact in [`Payload::AccountContacts`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedContact {
    /// What the account calls it.
    pub name: String,
    /// Its encoded invite (checked like any invite when taken).
    #[serde(with = "serde_bytes")]
    pub invite: Vec<u8>,
}

/// Most contacts in one [`Payload::AccountContacts`].
pub const MAX_SHARED_CONTACTS: usize = 32;

#[derive(Serialize, Deserialize)]
struct PayloadWire {
    version: u8,
    payload: Payload,
}

impl Payload {
    /// Encoded form.
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(&Versioned(PAYLOAD_VERSION, self))
    }

    /// Bounded decode; also checks the payload's own limits.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crypto::Error> {
        let w: PayloadWire = wire::decode(bytes, "payload", PAYLOAD_VERSION, MAX_PAYLOAD)?;
        match &w.payload {
            Payload::Chat(c) if c.body.len() > MAX_BODY => Err(crypto::Error::TooLarge {
                what: "chat body",
                len: c.body.len(),
                max: MAX_BODY,
            }),
            Payload::Receipts { messages, .. } | Payload::GroupReceipts { messages, .. }
                if messages.len() > MAX_RECEIPTS =>
            {
                Err(crypto::Error::TooLarge {
                    what: "receipts",
                    len: messages.len(),
                    max: MAX_RECEIPTS,
                })
            }
            Payload::Devices { list, bundles, .. }
                if list.len() > crypto::DEVICE_LIST_MAX || bundles.len() >= crypto::MAX_DEVICES =>
            {
                Err(crypto::Error::TooLarge {
                    what: "device list",
                    len: list.len(),
                    max: crypto::DEVICE_LIST_MAX,
                })
            }
            Payload::AccountContacts { contacts, .. }
                if contacts.len() > MAX_SHARED_CONTACTS
                    || contacts
                        .iter()
                        .any(|c| c.name.len() > super::state::MAX_NAME) =>
            {
                Err(crypto::Error::TooLarge {
                    what: "shared contacts",
                    len: contacts.len(),
                    max: MAX_SHARED_CONTACTS,
                })
            }
            _ => Ok(w.payload),
        }
    }
}

/// Presence as a user shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PresenceState {
    /// Using the app.
    Online,
    /// Running but idle.
    Away,
    /// Gone (sent once on a clean shutdown; otherwise inferred when
    /// beacons stop).
    Offline,
}

/// A signed presence beacon, published on the presence topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beacon {
    version: u8,
    /// The device (Ed25519 identity key).
    pub device: [u8; 32],
    /// Its state.
    pub state: PresenceState,
    /// When it was made, Unix milliseconds (also orders beacons).
    pub at_ms: u64,
    /// Signature over `labels::SIG_PRESENCE ‖` the fields above.
    #[serde(with = "bytes64")]
    pub sig: [u8; 64],
}

impl Beacon {
    fn signed_fields(device: &[u8; 32], state: PresenceState, at_ms: u64) -> Vec<u8> {
        let state = match state {
            PresenceState::Online => 0u8,
            PresenceState::Away => 1,
            PresenceState::Offline => 2,
        };
        let mut out = Vec::with_capacity(41);
        out.extend_from_slice(device);
        out.push(state);
        out.extend_from_slice(&at_ms.to_be_bytes());
        out
    }

    /// A beacon signed by `identity`.
    pub fn new(identity: &DeviceIdentity, state: PresenceState, at_ms: u64) -> Self {
        let device = identity.public().signing;
        let fields = Self::signed_fields(&device, state, at_ms);
        Self {
            version: BEACON_VERSION,
            device,
            state,
            at_ms,
            sig: identity.sign(labels::SIG_PRESENCE, &[&fields]),
        }
    }

    /// Encoded form.
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(self)
    }

    /// Bounded decode and signature check.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crypto::Error> {
        let b: Self = wire::decode(bytes, "presence beacon", BEACON_VERSION, MAX_BEACON)?;
        let fields = Self::signed_fields(&b.device, b.state, b.at_ms);
        crypto::verify_signature(
            &b.device,
            labels::SIG_PRESENCE,
            &[&fields],
            &b.sig,
            "presence beacon",
        )?;
        Ok(b)
    }
}

/// The id of the 1:1 conversation between two devices: the same on both.
pub fn conversation_id(a: &PublicIdentity, b: &PublicIdentity) -> [u8; 32] {
    conversation_of(&a.signing, &b.signing)
}

/// The id of the 1:1 conversation between two accounts (or devices),
/// named by their signing keys: the same on both sides. An account's key
/// is its first device's, so for an account of one device this is
/// [`conversation_id`] of its device.
pub fn conversation_of(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut h = Sha256::new();
    h.update(labels::CONVERSATION);
    h.update(lo);
    h.update(hi);
    h.finalize().into()
}

/// Furthest ahead of our clock an envelope's expiry may be: the longest a
/// message is retried ([`super::engine::MESSAGE_TTL`]), and a day for
/// clocks that differ. The expiry is not authenticated; without a bound a
/// carrier could make a copy live for ever.
pub const MAX_ENVELOPE_AHEAD: u64 = super::engine::MESSAGE_TTL + 24 * 3600;

/// Decodes an envelope and checks it is not past its expiry at `now`, nor
/// expiring further ahead than [`MAX_ENVELOPE_AHEAD`].
pub fn envelope_checked(bytes: &[u8], now: u64) -> Result<Envelope, crypto::Error> {
    let env = Envelope::from_bytes(bytes)?;
    if env.expires_at <= now {
        return Err(crypto::Error::Malformed {
            what: "envelope (expired)",
        });
    }
    if env.expires_at > now.saturating_add(MAX_ENVELOPE_AHEAD) {
        return Err(crypto::Error::Malformed {
            what: "envelope (expiry too far ahead)",
        });
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_payloads_round_trip_and_refuse_bad_input() {
        let f = Frame::Ratchet(vec![1, 2, 3]);
        assert_eq!(Frame::from_bytes(&f.to_bytes()).unwrap(), f);
        assert_eq!(
            f.to_bytes(),
            wire::encode(&FrameWire {
                version: FRAME_VERSION,
                frame: f.clone()
            })
        );
        let mut bad = f.to_bytes();
        bad[0] = 9;
        assert!(matches!(
            Frame::from_bytes(&bad),
            Err(crypto::Error::UnknownVersion { .. })
        ));
        let mut trailing = f.to_bytes();
        trailing.push(0);
        assert!(Frame::from_bytes(&trailing).is_err());
        assert!(Frame::from_bytes(&vec![1; MAX_FRAME + 1]).is_err());

        let p = Payload::Chat(Chat {
            msg_id: [1; 16],
            lamport: 7,
            seq: 1,
            sent_at: 100,
            expires_at: None,
            reply_to: Some(MsgRef {
                lamport: 6,
                sender: [2; 32],
                msg_id: [3; 16],
            }),
            body: b"hi".to_vec(),
        });
        assert_eq!(Payload::from_bytes(&p.to_bytes()).unwrap(), p);
        let many = Payload::Receipts {
            kind: ReceiptKind::Read,
            messages: vec![(1, [0; 16]); MAX_RECEIPTS + 1],
        };
        assert!(Payload::from_bytes(&many.to_bytes()).is_err());
        // Shared contacts: at most MAX_SHARED_CONTACTS, names bounded.
        let one = SharedContact {
            name: "bob".into(),
            invite: vec![7; 40],
        };
        let shared = Payload::AccountContacts {
            id: [4; 16],
            contacts: vec![one.clone(); MAX_SHARED_CONTACTS],
        };
        assert_eq!(Payload::from_bytes(&shared.to_bytes()).unwrap(), shared);
        let too_many = Payload::AccountContacts {
            id: [4; 16],
            contacts: vec![one.clone(); MAX_SHARED_CONTACTS + 1],
        };
        assert!(Payload::from_bytes(&too_many.to_bytes()).is_err());
        let long_name = Payload::AccountContacts {
            id: [4; 16],
            contacts: vec![SharedContact {
                name: "x".repeat(crate::node::state::MAX_NAME + 1),
                ..one
            }],
        };
        assert!(Payload::from_bytes(&long_name.to_bytes()).is_err());
        // A link request round-trips as a frame.
        let link = Frame::Link(LinkRequest {
            invite: vec![1; 10],
            consent: [2; 64],
            name: "laptop".into(),
            mac: [3; 32],
        });
        assert_eq!(Frame::from_bytes(&link.to_bytes()).unwrap(), link);
        // The examples of protocol.md §16.5.
        assert_eq!(Payload::Resend { from: 5 }.to_bytes(), [1, 2, 5]);
        let gone = Payload::Gone {
            from: 2,
            until: 300,
        };
        assert_eq!(gone.to_bytes(), [1, 8, 2, 0xac, 0x02]);
        assert_eq!(Payload::from_bytes(&gone.to_bytes()).unwrap(), gone);
    }

    #[test]
    fn envelopes_expired_or_expiring_too_far_ahead_are_refused() {
        let now = 1_000_000;
        let env = |at| Envelope::new([1; 32], [2; 16], at, vec![3; 300]).to_bytes();
        assert!(envelope_checked(&env(now + 1), now).is_ok());
        assert!(envelope_checked(&env(now + MAX_ENVELOPE_AHEAD), now).is_ok());
        for (at, why) in [
            (now, "envelope (expired)"),
            (
                now + MAX_ENVELOPE_AHEAD + 1,
                "envelope (expiry too far ahead)",
            ),
            (u64::MAX, "envelope (expiry too far ahead)"),
        ] {
            assert!(matches!(
                envelope_checked(&env(at), now),
                Err(crypto::Error::Malformed { what }) if what == why
            ));
        }
    }

    #[test]
    fn beacons_verify_and_forgeries_fail() {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
        let id = DeviceIdentity::generate(&mut rng);
        let b = Beacon::new(&id, PresenceState::Away, 1234);
        let back = Beacon::from_bytes(&b.to_bytes()).unwrap();
        assert_eq!(back, b);
        let mut forged = b.clone();
        forged.state = PresenceState::Online;
        assert!(Beacon::from_bytes(&forged.to_bytes()).is_err());
    }

    #[test]
    fn both_sides_compute_the_same_conversation() {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(2);
        let (a, b) = (
            DeviceIdentity::generate(&mut rng),
            DeviceIdentity::generate(&mut rng),
        );
        assert_eq!(
            conversation_id(a.public(), b.public()),
            conversation_id(b.public(), a.public())
        );
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = Frame::from_bytes(&bytes);
            let _ = Payload::from_bytes(&bytes);
            let _ = Beacon::from_bytes(&bytes);
        }
    }
}
