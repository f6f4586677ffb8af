//! End-to-end cryptography: identities, sessions, groups, envelopes, keys at rest.
//!
//! This module is pure library code: no I/O, no networking, no clocks (callers
//! pass the time in). Everything here is built from one generation of audited
//! primitives — X25519, Ed25519, HKDF-SHA256, HMAC-SHA256, ChaCha20-Poly1305
//! (XChaCha20-Poly1305 at rest), Argon2id, SHA-256 and SHA-512 — composed as
//! the published Signal specifications describe (X3DH, Double Ratchet,
//! Sender Keys, sealed sender).
//!
//! Who talks to it: the node encrypts and decrypts through [`Session`],
//! [`SenderKey`] and [`seal`]/[`open`]; the store unlocks its database key
//! through [`Keystore`]; the CLI shows [`safety_number`]s.
//!
//! Every byte layout, constant and label used here is written down in
//! `docs/protocol.md`.
//!
//! A session from a published bundle to a reply:
//!
//! ```
//! use meshchat::crypto::{DeviceIdentity, PrekeyStore, Session, initiate, respond};
//!
//! # fn main() -> Result<(), meshchat::crypto::Error> {
//! let mut rng = rand::rng();
//! let (alice, bob) = (DeviceIdentity::generate(&mut rng), DeviceIdentity::generate(&mut rng));
//! let mut bob_prekeys = PrekeyStore::new(&bob, 0, &mut rng);
//! bob_prekeys.generate_one_time(&bob, 5, 0, &mut rng);
//! let bundle = bob_prekeys.bundle(&bob, [0; 32], &[], 0, true)?.verify()?;
//!
//! let (agreed, initial, their_ratchet) = initiate(&alice, &bundle, &mut rng)?;
//! let mut to_bob = Session::initiator(&agreed, their_ratchet, Some(initial), &mut rng)?;
//! let first = to_bob.encrypt(b"hello")?;
//!
//! let (agreed, ratchet_key) = respond(&bob, &bob_prekeys, alice.public(), &initial)?;
//! let mut to_alice = Session::responder(&agreed, &ratchet_key, Some(initial.ephemeral));
//! assert_eq!(to_alice.decrypt(&first, &mut rng)?, b"hello");
//! let reply = to_alice.encrypt(b"hi")?;
//! assert_eq!(to_bob.decrypt(&reply, &mut rng)?, b"hi");
//! # Ok(())
//! # }
//! ```

mod devices;
mod envelope;
mod error;
mod identity;
mod kdf;
mod keystore;
mod mailbox;
pub mod media;
mod prekeys;
mod ratchet;
mod safety;
mod secret;
mod sender_key;
pub(crate) mod wire;
mod x3dh;

#[cfg(test)]
mod tests;

pub use devices::{
    DEVICE_LIST_MAX, DeviceEntry, DeviceList, DeviceMembership, ListUpdate, MAX_DEVICE_NAME,
    MAX_DEVICES, VerifiedDeviceList, link_proof, link_proof_holds,
};
pub use envelope::{
    ContentKind, Envelope, OpenedEnvelope, SealCache, SealedContent, SenderCertificate, open, pad,
    seal, unpad,
};
pub use error::Error;
pub use identity::{DeviceIdentity, PublicIdentity};
pub use kdf::{Aead, MessageKey};
pub use keystore::{DataKey, KdfParams, Keystore};
pub use mailbox::{MailboxId, MailboxKey};
pub use prekeys::{
    BundleBody, OneTimePrekey, OneTimePublic, PrekeyBundle, PrekeyStore, SignedPrekey,
    VerifiedBundle,
};
pub use ratchet::{Header, RatchetMessage, Session};
pub use safety::{fingerprint, safety_number};
pub use secret::Secret32;
pub use sender_key::{SenderKey, SenderKeyDistribution, SenderKeyMessage, SenderKeyReceiver};
pub use x3dh::{InitialMessage, PrekeyMessage, X3dhOutput, initiate, respond};

/// Protocol labels: HKDF `info` strings (or their fixed prefix), signature
/// contexts and hash prefixes. Each is used for exactly one purpose, so a key
/// or signature made for one purpose can never be taken for another.
pub mod labels {
    /// X3DH shared secret.
    pub const X3DH: &[u8] = b"meshchat/1/x3dh";
    /// Binding of the X3DH secret to both signing keys.
    pub const X3DH_IDENTITIES: &[u8] = b"meshchat/1/identity-binding";
    /// Double Ratchet root chain.
    pub const ROOT: &[u8] = b"meshchat/1/root";
    /// AEAD key and nonce of a 1:1 message key.
    pub const MESSAGE: &[u8] = b"meshchat/1/message";
    /// AEAD key and nonce of a group (sender key) message key.
    pub const GROUP_MESSAGE: &[u8] = b"meshchat/1/group-message";
    /// Sealed envelope, ephemeral layer.
    pub const SEAL_EPHEMERAL: &[u8] = b"meshchat/1/seal/ephemeral";
    /// Sealed envelope, static (sender-authenticating) layer.
    pub const SEAL_STATIC: &[u8] = b"meshchat/1/seal/static";
    /// Signature context: a device signs its X25519 identity key.
    pub const SIG_IDENTITY_DH: &[u8] = b"meshchat/1/sig/identity-dh";
    /// Signature context: a device signs its signed prekey.
    pub const SIG_SIGNED_PREKEY: &[u8] = b"meshchat/1/sig/signed-prekey";
    /// Signature context: a device signs a one-time prekey.
    pub const SIG_ONE_TIME_PREKEY: &[u8] = b"meshchat/1/sig/one-time-prekey";
    /// Signature context: a device signs a whole prekey bundle.
    pub const SIG_BUNDLE: &[u8] = b"meshchat/1/sig/bundle";
    /// Signature context: a sender-key group message.
    pub const SIG_GROUP_MESSAGE: &[u8] = b"meshchat/1/sig/group-message";
    /// Mailbox id derivation (SHA-256 prefix).
    pub const MAILBOX: &[u8] = b"meshchat/mailbox";
    /// Keystore: associated data when wrapping the database key.
    pub const KEYSTORE: &[u8] = b"meshchat/1/keystore";
    /// Safety-number fingerprint.
    pub const FINGERPRINT: &[u8] = b"meshchat/1/fingerprint";
    /// Signature context: a presence beacon.
    pub const SIG_PRESENCE: &[u8] = b"meshchat/1/sig/presence";
    /// Conversation id of a 1:1 chat (SHA-256 prefix).
    pub const CONVERSATION: &[u8] = b"meshchat/1/conversation";
    /// Signature context: a mailbox owner's request to a relay (fetch, ack).
    pub const SIG_MAILBOX_REQUEST: &[u8] = b"meshchat/1/sig/mailbox-request";
    /// Signature context: a change to a group's membership.
    pub const SIG_GROUP_OP: &[u8] = b"meshchat/1/sig/group-op";
    /// A group's id: SHA-256 of this ‖ its signed creation.
    pub const GROUP_ID: &[u8] = b"meshchat/1/group-id";
    /// A group's gossip topic id: SHA-256 of this ‖ the group id.
    pub const GROUP_TOPIC: &[u8] = b"meshchat/1/group-topic";
    /// Media chunk keys and nonces (HKDF info prefix; see [`super::media`]).
    pub const MEDIA: &[u8] = b"meshchat/1/media";
    /// Signature context: a relay's custody receipt for deposited envelopes.
    pub const SIG_CUSTODY: &[u8] = b"meshchat/1/sig/custody";
    /// The store's key for the tags of its tombstones (HKDF info, from the
    /// database key).
    pub const STORE_TOMBSTONE: &[u8] = b"meshchat/1/store/tombstone";
    /// Signature context: an account's list of its devices.
    pub const SIG_DEVICE_LIST: &[u8] = b"meshchat/1/sig/device-list";
    /// Signature context: a device's consent to be in an account's list.
    pub const SIG_DEVICE_OF: &[u8] = b"meshchat/1/sig/device-of";
    /// A joining device's proof that it holds a link code's secret
    /// (HMAC-SHA256 data prefix).
    pub const LINK: &[u8] = b"meshchat/1/link";
}

pub(crate) use identity::hex8;
pub(crate) use identity::verify as verify_signature;
pub(crate) use kdf::hmac_sha256;

/// Size and count limits, all enforced before allocation.
pub mod limits {
    pub use super::envelope::{MAX_BUCKET, MAX_ENVELOPE, MAX_SEALED, MIN_BUCKET, SEAL_CACHE_CAP};
    pub use super::keystore::{RECORD_NONCE_ROOM, RECORD_OVERHEAD};
    pub use super::prekeys::{
        BUNDLE_MAX, MAX_BUNDLE_RELAYS, MAX_ONE_TIME_PREKEYS, MAX_RELAY_ADDR_LEN,
        ONE_TIME_PREKEY_HAND_OUT_SECS, ONE_TIME_PREKEY_MARGIN_SECS, SIGNED_PREKEY_GRACE_SECS,
        SIGNED_PREKEY_ROTATION_SECS,
    };
    pub use super::ratchet::{
        HEADER_LEN, MAX_MESSAGE_LEN, MAX_PLAINTEXT, MAX_SKIP, MAX_SKIPPED_TOTAL, SEND_RESERVE,
        STATE_MAX as SESSION_STATE_MAX,
    };
    pub use super::sender_key::{MAX_GROUP_MESSAGE_LEN, MAX_GROUP_SKIPPED};
}
