//! The crypto module's error type. Messages carry the numbers involved and
//! never any secret.

/// Everything that can go wrong in [`crate::crypto`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A frame or record is longer than its protocol allows.
    #[error("{what} too large: {len} bytes, max {max}")]
    TooLarge {
        /// What was being decoded.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame is shorter than its fixed part.
    #[error("{what} truncated: {len} bytes, need at least {min}")]
    Truncated {
        /// What was being decoded.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// The version byte names a version this code does not speak.
    #[error("{what}: unknown version {got}, expected {expected}")]
    UnknownVersion {
        /// What was being decoded.
        what: &'static str,
        /// The version received.
        got: u8,
        /// The version supported.
        expected: u8,
    },
    /// Bytes follow a complete value.
    #[error("{what}: {extra} trailing bytes")]
    TrailingBytes {
        /// What was being decoded.
        what: &'static str,
        /// How many bytes were left over.
        extra: usize,
    },
    /// The bytes do not decode as the expected structure.
    #[error("{what}: malformed encoding")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
    },
    /// Authenticated decryption failed: wrong key, or the data was altered.
    #[error("{what}: authentication failed")]
    Decrypt {
        /// What was being decrypted.
        what: &'static str,
    },
    /// A signature did not verify.
    #[error("bad signature on {what}")]
    BadSignature {
        /// What was signed.
        what: &'static str,
    },
    /// A public key is not a valid point.
    #[error("invalid public key in {what}")]
    InvalidKey {
        /// Where the key came from.
        what: &'static str,
    },
    /// A Diffie-Hellman result was all zeros (a low-order point was supplied).
    #[error("non-contributory Diffie-Hellman result in {what}")]
    NonContributory {
        /// Which exchange.
        what: &'static str,
    },
    /// A header asks to skip more message keys than one chain may skip.
    #[error("message gap too big: skip {gap} keys, max {max}")]
    GapTooBig {
        /// Keys that would have to be derived.
        gap: u64,
        /// The per-chain limit.
        max: u32,
    },
    /// A message number or chain counter would overflow.
    #[error("message counter overflow")]
    CounterOverflow,
    /// This message was already decrypted (or its key was discarded).
    #[error("duplicate or expired message: chain counter {counter}")]
    Duplicate {
        /// The message number in the header.
        counter: u32,
    },
    /// The sender certificate inside a sealed envelope does not match the key
    /// that actually sealed it.
    #[error("sealed sender does not match its certificate")]
    ForgedSender,
    /// The padding of a sealed plaintext is not well formed.
    #[error("bad padding")]
    BadPadding,
    /// A prekey named by an incoming session set-up is not (or no longer) here.
    #[error("unknown {kind} prekey {id}")]
    UnknownPrekey {
        /// `signed` or `one-time`.
        kind: &'static str,
        /// The id named.
        id: u32,
    },
    /// A group message names a sender key we were never given.
    #[error("unknown sender key {key_id}")]
    UnknownSenderKey {
        /// The key id in the message.
        key_id: u32,
    },
    /// A group message is for another group.
    #[error("group message for another group")]
    WrongGroup,
    /// The keystore passphrase is wrong (or the keystore file was altered).
    #[error("wrong passphrase (or the keystore file was altered)")]
    WrongPassphrase,
    /// A device list breaks a rule of its own (docs/devices.md §1), or a
    /// change to one cannot be made.
    #[error("device list refused: {reason}")]
    DeviceList {
        /// Which rule.
        reason: &'static str,
    },
    /// Key-derivation parameters are outside what this code accepts.
    #[error("key derivation parameters rejected: {0}")]
    KdfParams(String),
}
