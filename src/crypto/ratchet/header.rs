//! The ratchet message wire layout.
//!
//! ```text
//! offset  size  field
//! 0       1     version (1)
//! 1       32    sender's current ratchet public key (X25519)
//! 33      4     pn: length of the sender's previous sending chain (u32 BE)
//! 37      4     n: message number in the current sending chain (u32 BE)
//! 41      …     ChaCha20-Poly1305 ciphertext ‖ 16-byte tag
//! ```
//!
//! The first 41 bytes are the header, and they are — byte for byte as
//! received — part of the AEAD associated data, so nothing in them can be
//! changed without the message failing to decrypt.

use crate::crypto::Error;
use crate::crypto::kdf::TAG_LEN;

/// Ratchet message format version.
pub(crate) const VERSION: u8 = 1;
/// Header length.
pub const HEADER_LEN: usize = 41;
/// Largest plaintext one message carries (1:1 or group). Chosen so that the
/// largest message, with every header around it, still fits the largest
/// padding bucket of a sealed envelope.
pub const MAX_PLAINTEXT: usize = 60 * 1024;
/// Largest encoded ratchet message.
pub const MAX_MESSAGE_LEN: usize = HEADER_LEN + MAX_PLAINTEXT + TAG_LEN;

/// A ratchet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Sender's ratchet public key.
    pub dh: [u8; 32],
    /// Previous sending chain length.
    pub pn: u32,
    /// Message number in this chain.
    pub n: u32,
}

impl Header {
    /// The 41 header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = VERSION;
        out[1..33].copy_from_slice(&self.dh);
        out[33..37].copy_from_slice(&self.pn.to_be_bytes());
        out[37..41].copy_from_slice(&self.n.to_be_bytes());
        out
    }

    fn from_bytes(b: &[u8; HEADER_LEN]) -> Result<Self, Error> {
        if b[0] != VERSION {
            return Err(Error::UnknownVersion {
                what: "ratchet message",
                got: b[0],
                expected: VERSION,
            });
        }
        let mut dh = [0u8; 32];
        dh.copy_from_slice(&b[1..33]);
        let mut pn = [0u8; 4];
        pn.copy_from_slice(&b[33..37]);
        let mut n = [0u8; 4];
        n.copy_from_slice(&b[37..41]);
        Ok(Self {
            dh,
            pn: u32::from_be_bytes(pn),
            n: u32::from_be_bytes(n),
        })
    }
}

/// An encrypted 1:1 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RatchetMessage {
    /// Header (authenticated, not encrypted).
    pub header: Header,
    /// Ciphertext ‖ tag.
    pub ciphertext: Vec<u8>,
}

impl RatchetMessage {
    /// Encoded form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.ciphertext.len());
        out.extend_from_slice(&self.header.to_bytes());
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Bounded decode: checks length limits and version before copying.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        const WHAT: &str = "ratchet message";
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(Error::TooLarge {
                what: WHAT,
                len: bytes.len(),
                max: MAX_MESSAGE_LEN,
            });
        }
        if bytes.len() < HEADER_LEN + TAG_LEN {
            return Err(Error::Truncated {
                what: WHAT,
                len: bytes.len(),
                min: HEADER_LEN + TAG_LEN,
            });
        }
        let (head, body) = bytes.split_at(HEADER_LEN);
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(head);
        Ok(Self {
            header: Header::from_bytes(&h)?,
            ciphertext: body.to_vec(),
        })
    }
}
