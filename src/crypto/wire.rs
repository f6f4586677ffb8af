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

/// Decodes a sequence a peer sends, of at most `max` elements: decoding
/// fails at an announced count above `max`, or at the first element past
/// it (postcard announces none when fewer bytes are left than the count
/// says), so a few bytes announcing millions of empty elements cost no more
/// than `max` of them (serde's own `Vec` would grow to the count, 24 bytes
/// an element for byte strings, before any count check after decoding).
/// For a field: `#[serde(deserialize_with = "...")]` with a function that
/// calls this with the field's bound.
pub(crate) fn bounded_seq<'de, D, T>(d: D, max: usize) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    use serde::de::{Error as _, SeqAccess, Visitor};

    struct V<T> {
        max: usize,
        element: std::marker::PhantomData<T>,
    }
    impl<'de, T: serde::Deserialize<'de>> Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "at most {} elements", self.max)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let announced = seq.size_hint().unwrap_or(0);
            if announced > self.max {
                return Err(A::Error::invalid_length(announced, &self));
            }
            let mut out = Vec::with_capacity(announced);
            while let Some(x) = seq.next_element()? {
                if out.len() == self.max {
                    return Err(A::Error::invalid_length(self.max + 1, &self));
                }
                out.push(x);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(V {
        max,
        element: std::marker::PhantomData,
    })
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

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use serde::{Deserialize, Deserializer};

    thread_local! {
        static ELEMENTS: Cell<usize> = const { Cell::new(0) };
    }

    /// An element that counts how many were decoded.
    struct Counted;
    impl<'de> Deserialize<'de> for Counted {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            u8::deserialize(d)?;
            ELEMENTS.with(|n| n.set(n.get() + 1));
            Ok(Counted)
        }
    }

    #[derive(Deserialize)]
    struct Few(#[serde(deserialize_with = "few")] Vec<Counted>);

    fn few<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Counted>, D::Error> {
        super::bounded_seq(d, 4)
    }

    fn decode(count: u8, elements: usize) -> Option<usize> {
        ELEMENTS.with(|n| n.set(0));
        let mut bytes = vec![count];
        bytes.resize(1 + elements, 7);
        postcard::from_bytes::<Few>(&bytes).ok().map(|f| f.0.len())
    }

    #[test]
    fn a_bounded_sequence_stops_at_its_bound() {
        assert_eq!(decode(4, 4), Some(4));
        assert_eq!(decode(0, 0), Some(0));
        assert_eq!(decode(5, 5), None, "one past the bound");
        assert_eq!(ELEMENTS.with(Cell::get), 0, "refused at the count");
        assert_eq!(decode(3, 2), None, "fewer than announced");
        // Millions announced (a varint), thousands sent: postcard gives no
        // count when fewer bytes are left than it announces, so decoding
        // stops one element past the bound.
        ELEMENTS.with(|n| n.set(0));
        let mut bytes = vec![0x80, 0x89, 0xfa, 0x01];
        bytes.resize(4 + 4096, 7);
        assert!(postcard::from_bytes::<Few>(&bytes).is_err());
        assert_eq!(ELEMENTS.with(Cell::get), 5);
    }
}
