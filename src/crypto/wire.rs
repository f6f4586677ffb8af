//! Bounded, versioned postcard decoding shared by every wire type here.
//!
//! Each encoded value starts with a one-byte version. Decoding checks, in
//! this order and before any allocation: the total length against the type's
//! limit, the version byte, then the postcard body, then that no bytes trail,
//! then that the encoding is the canonical one (no over-long varints).
//! Bounding the input bounds what decoding allocates, though not to the
//! input's length: serde reserves room for a sequence's announced count
//! (capped by its own limit of about 1 MiB of elements) before its elements
//! are read, so a few bytes announcing many empty strings cost their
//! headers (24 bytes each). Types whose fields must be few check the
//! counts after decoding.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Error;

/// Encodes `value` (whose first field is its version byte) into a buffer
/// of exactly its size, written once: a growing buffer would leave copies
/// of secret encodings behind in freed memory, where the caller's
/// `Zeroizing` cannot reach them.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing our own plain structs cannot fail: postcard only errors
    // on unsupported serde features (maps with unknown length etc.) that
    // none of the wire types use.
    let Ok(len) = size(value) else {
        return Vec::new();
    };
    let mut out = vec![0u8; len];
    match postcard::to_slice(value, &mut out) {
        Ok(written) if written.len() == len => out,
        _ => Vec::new(),
    }
}

/// The length of `value`'s encoding.
fn size<T: Serialize>(value: &T) -> Result<usize, postcard::Error> {
    postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default())
}

/// Decodes a versioned value with a size bound, rejecting trailing bytes.
pub(crate) fn decode<T: DeserializeOwned + Serialize>(
    bytes: &[u8],
    what: &'static str,
    version: u8,
    max_len: usize,
) -> Result<T, Error> {
    if bytes.len() > max_len {
        return Err(Error::TooLarge {
            what,
            len: bytes.len(),
            max: max_len,
        });
    }
    match bytes.first() {
        None => {
            return Err(Error::Truncated {
                what,
                len: 0,
                min: 1,
            });
        }
        Some(&got) if got != version => {
            return Err(Error::UnknownVersion {
                what,
                got,
                expected: version,
            });
        }
        Some(_) => {}
    }
    let (value, rest) =
        postcard::take_from_bytes::<T>(bytes).map_err(|_| Error::Malformed { what })?;
    if !rest.is_empty() {
        return Err(Error::TrailingBytes {
            what,
            extra: rest.len(),
        });
    }
    // postcard accepts over-long varints; we accept only the one canonical
    // encoding, so a value has exactly one byte string (and one hash). The
    // copy made to compare may be secret: it is wiped.
    let canonical = match size(&value) {
        Ok(len) if len == bytes.len() => {
            let mut again = zeroize::Zeroizing::new(vec![0u8; len]);
            postcard::to_slice(&value, &mut again).is_ok_and(|w| w == bytes)
        }
        _ => false,
    };
    if !canonical {
        return Err(Error::Malformed { what });
    }
    Ok(value)
}

/// Serde for 64-byte arrays (signatures), which serde's array support stops
/// short of. Encoded by postcard as 64 raw bytes, like the 32-byte arrays.
pub(crate) mod bytes64 {
    use serde::de::{Error as _, SeqAccess, Visitor};
    use serde::ser::SerializeTuple;
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(64)?;
        for b in bytes {
            t.serialize_element(b)?;
        }
        t.end()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = [u8; 64];
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("64 bytes")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; 64], A::Error> {
                let mut out = [0u8; 64];
                for (i, slot) in out.iter_mut().enumerate() {
                    *slot = seq
                        .next_element()?
                        .ok_or_else(|| A::Error::invalid_length(i, &self))?;
                }
                Ok(out)
            }
        }
        d.deserialize_tuple(64, V)
    }
}
