//! Record keys of the `history` tree, and the opaque page cursor.
//!
//! A message's *sort key* is `conv_id (32) ‖ lamport (u64 BE) ‖ sender (32)
//! ‖ msg_id (16)`, so byte order is conversation, then (lamport, sender,
//! id): the order every device shows. The `history` tree holds these kinds
//! of record, told apart by a one-byte prefix:
//!
//! - `c ‖ conv_id` → the conversation record;
//! - `m ‖ sort key of its first message` → a block of consecutive messages;
//! - `t ‖ sort key` → one recent message not yet moved into a block (the
//!   conversation's *tail*, newer than every block);
//! - `x ‖ expires_at (u64 BE) ‖ block key` → empty: the block's earliest
//!   expiry, walked by the purge;
//! - `d ‖ conv_id ‖ tag (16)` → `until` (u64 BE): a *tombstone*, left by a
//!   message deleted or cleared here so that a copy sent again is not
//!   stored again. The tag is a keyed digest of the message's sort key
//!   (see `Sealer::tombstone_tag`), so the key does not name the message;
//! - `y ‖ until (u64 BE) ‖ conv_id ‖ tag` → empty: when a tombstone goes,
//!   walked by the purge.

use super::Error;
use super::codec::{hex, unhex};

/// Length of a message's sort key.
pub(crate) const MESSAGE_KEY_LEN: usize = 32 + 8 + 32 + 16;

/// Prefix of conversation records.
pub(crate) const CONV_PREFIX: u8 = b'c';
/// Prefix of message blocks.
pub(crate) const BLOCK_PREFIX: u8 = b'm';
/// Prefix of tail records.
pub(crate) const TAIL_PREFIX: u8 = b't';
/// Prefix of expiry entries.
pub(crate) const EXPIRY_PREFIX: u8 = b'x';

/// Prefix of tombstones.
pub(crate) const TOMB_PREFIX: u8 = b'd';
/// Prefix of tombstone expiry entries.
pub(crate) const TOMB_EXPIRY_PREFIX: u8 = b'y';
/// Length of a tombstone's tag.
pub(crate) const TOMB_TAG_LEN: usize = 16;
/// Length of a tombstone's key.
pub(crate) const TOMB_KEY_LEN: usize = 1 + 32 + TOMB_TAG_LEN;
/// Length of a tombstone expiry entry's key.
pub(crate) const TOMB_EXPIRY_KEY_LEN: usize = 1 + 8 + 32 + TOMB_TAG_LEN;

/// Length of a block key: prefix and the sort key of its first message.
pub(crate) const BLOCK_KEY_LEN: usize = 1 + MESSAGE_KEY_LEN;
/// A block key.
pub(crate) type BlockKey = [u8; BLOCK_KEY_LEN];

/// The record key of a conversation.
pub(crate) fn conv_key(conv_id: &[u8; 32]) -> [u8; 33] {
    let mut key = [0u8; 33];
    key[0] = CONV_PREFIX;
    key[1..].copy_from_slice(conv_id);
    key
}

/// The key of a block whose first message has this sort key.
pub(crate) fn block_key(sort_key: &[u8; MESSAGE_KEY_LEN]) -> BlockKey {
    let mut key = [0u8; BLOCK_KEY_LEN];
    key[0] = BLOCK_PREFIX;
    key[1..].copy_from_slice(sort_key);
    key
}

/// The key of a tail record (same length as a block key).
pub(crate) fn tail_key(sort_key: &[u8; MESSAGE_KEY_LEN]) -> BlockKey {
    let mut key = [0u8; BLOCK_KEY_LEN];
    key[0] = TAIL_PREFIX;
    key[1..].copy_from_slice(sort_key);
    key
}

/// `t ‖ conv_id`: every tail record of the conversation starts with it.
pub(crate) fn tail_prefix(conv_id: &[u8; 32]) -> [u8; 33] {
    let mut key = [0u8; 33];
    key[0] = TAIL_PREFIX;
    key[1..].copy_from_slice(conv_id);
    key
}

/// The sort key of a block's first message.
pub(crate) fn block_first(key: &BlockKey) -> [u8; MESSAGE_KEY_LEN] {
    let mut sort = [0u8; MESSAGE_KEY_LEN];
    sort.copy_from_slice(&key[1..]);
    sort
}

/// `m ‖ conv_id`: every block of the conversation starts with it.
pub(crate) fn block_prefix(conv_id: &[u8; 32]) -> [u8; 33] {
    let mut key = [0u8; 33];
    key[0] = BLOCK_PREFIX;
    key[1..].copy_from_slice(conv_id);
    key
}

/// Length of an expiry entry's key.
pub(crate) const EXPIRY_KEY_LEN: usize = 1 + 8 + BLOCK_KEY_LEN;

/// The expiry entry of a block whose earliest expiry is `at`.
pub(crate) fn expiry_key(at: u64, block: &BlockKey) -> [u8; EXPIRY_KEY_LEN] {
    let mut key = [0u8; EXPIRY_KEY_LEN];
    key[0] = EXPIRY_PREFIX;
    key[1..9].copy_from_slice(&at.to_be_bytes());
    key[9..].copy_from_slice(block);
    key
}

/// The tombstone with `tag` in conversation `conv_id`.
pub(crate) fn tomb_key(conv_id: &[u8; 32], tag: &[u8; TOMB_TAG_LEN]) -> [u8; TOMB_KEY_LEN] {
    let mut key = [0u8; TOMB_KEY_LEN];
    key[0] = TOMB_PREFIX;
    key[1..33].copy_from_slice(conv_id);
    key[33..].copy_from_slice(tag);
    key
}

/// `d ‖ conv_id`: every tombstone of the conversation starts with it.
pub(crate) fn tomb_prefix(conv_id: &[u8; 32]) -> [u8; 33] {
    let mut key = [0u8; 33];
    key[0] = TOMB_PREFIX;
    key[1..].copy_from_slice(conv_id);
    key
}

/// The expiry entry of the tombstone `tomb` (its key) that goes at `until`.
pub(crate) fn tomb_expiry_key(until: u64, tomb: &[u8; TOMB_KEY_LEN]) -> [u8; TOMB_EXPIRY_KEY_LEN] {
    let mut key = [0u8; TOMB_EXPIRY_KEY_LEN];
    key[0] = TOMB_EXPIRY_PREFIX;
    key[1..9].copy_from_slice(&until.to_be_bytes());
    key[9..].copy_from_slice(&tomb[1..]);
    key
}

/// The sort key of one message.
pub(crate) fn message_key(
    conv_id: &[u8; 32],
    lamport: u64,
    sender: &[u8; 32],
    msg_id: &[u8; 16],
) -> [u8; MESSAGE_KEY_LEN] {
    let mut key = [0u8; MESSAGE_KEY_LEN];
    key[..32].copy_from_slice(conv_id);
    key[32..40].copy_from_slice(&lamport.to_be_bytes());
    key[40..72].copy_from_slice(sender);
    key[72..].copy_from_slice(msg_id);
    key
}

/// The conversation a sort key belongs to.
pub(crate) fn key_conv_id(key: &[u8; MESSAGE_KEY_LEN]) -> [u8; 32] {
    let mut conv = [0u8; 32];
    conv.copy_from_slice(&key[..32]);
    conv
}

/// A position in one conversation's history, handed out by
/// [`History::page`](super::History::page) and passed back to fetch the next
/// (older) page. Its text form ([`Cursor::as_str`], [`Cursor::parse`]) is
/// opaque to callers and safe in URLs and command lines.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor {
    key: [u8; MESSAGE_KEY_LEN],
    text: String,
}

impl Cursor {
    pub(crate) fn from_key(key: [u8; MESSAGE_KEY_LEN]) -> Self {
        Self {
            text: hex(&key),
            key,
        }
    }

    pub(crate) fn key(&self) -> &[u8; MESSAGE_KEY_LEN] {
        &self.key
    }

    /// The text form, to hand to a user or client.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Reads a cursor back from its text form. Anything this store did not
    /// produce is [`Error::BadCursor`].
    pub fn parse(text: &str) -> Result<Self, Error> {
        if text.len() != MESSAGE_KEY_LEN * 2 {
            return Err(Error::BadCursor {
                reason: "wrong length",
            });
        }
        let bytes = unhex(text).ok_or(Error::BadCursor {
            reason: "not hexadecimal",
        })?;
        let key: [u8; MESSAGE_KEY_LEN] = bytes.try_into().map_err(|_| Error::BadCursor {
            reason: "wrong length",
        })?;
        Ok(Self::from_key(key))
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for Cursor {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_is_lamport_sender_id() {
        let c = [1u8; 32];
        let a = message_key(&c, 1, &[9; 32], &[9; 16]);
        let b = message_key(&c, 2, &[0; 32], &[0; 16]);
        let b2 = message_key(&c, 2, &[0; 32], &[1; 16]);
        let b3 = message_key(&c, 2, &[1; 32], &[0; 16]);
        assert!(a < b && b < b2 && b2 < b3);
        assert!(
            message_key(&c, 256, &[0; 32], &[0; 16]) > message_key(&c, 255, &[0; 32], &[0; 16])
        );
    }

    #[test]
    fn cursor_text_round_trip() {
        let key = message_key(&[3; 32], 77, &[4; 32], &[5; 16]);
        let cursor = Cursor::from_key(key);
        let back: Cursor = cursor.as_str().parse().unwrap();
        assert_eq!(back, cursor);
        assert_eq!(key_conv_id(back.key()), [3; 32]);
    }

    #[test]
    fn malformed_cursor_is_error() {
        assert!(matches!(Cursor::parse(""), Err(Error::BadCursor { .. })));
        assert!(matches!(
            Cursor::parse("abcd"),
            Err(Error::BadCursor {
                reason: "wrong length"
            })
        ));
        let bad = "g".repeat(MESSAGE_KEY_LEN * 2);
        assert!(matches!(
            Cursor::parse(&bad),
            Err(Error::BadCursor {
                reason: "not hexadecimal"
            })
        ));
        let multibyte = "é".repeat(MESSAGE_KEY_LEN);
        assert!(matches!(
            Cursor::parse(&multibyte),
            Err(Error::BadCursor { .. })
        ));
    }
}
