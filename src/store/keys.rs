//! Record keys of the history trees, and the opaque page cursor.
//!
//! `messages` keys are `conv_id (32) ‖ lamport (u64 BE) ‖ sender (32) ‖
//! msg_id (16)`, so sled's byte order is conversation, then
//! (lamport, sender, id): the order every device shows.

use super::Error;
use super::codec::{hex, unhex};

/// Length of a `messages` key.
pub(crate) const MESSAGE_KEY_LEN: usize = 32 + 8 + 32 + 16;

/// The `messages` key of one message.
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

/// The parts of a `messages` key: conversation, Lamport clock, sender, id.
pub(crate) fn split_message_key(
    key: &[u8; MESSAGE_KEY_LEN],
) -> ([u8; 32], u64, [u8; 32], [u8; 16]) {
    let mut conv = [0u8; 32];
    let mut lamport = [0u8; 8];
    let mut sender = [0u8; 32];
    let mut id = [0u8; 16];
    conv.copy_from_slice(&key[..32]);
    lamport.copy_from_slice(&key[32..40]);
    sender.copy_from_slice(&key[40..72]);
    id.copy_from_slice(&key[72..]);
    (conv, u64::from_be_bytes(lamport), sender, id)
}

/// The conversation a `messages` key belongs to.
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
