//! Typed encrypted records.
//!
//! Every value in an encrypted tree is
//! `DataKey::seal_record(ad = tree name ‖ 0x00 ‖ record key, postcard(value))`.
//! Tree names never contain `0x00`, so the associated data is unambiguous: a
//! record copied to another key, or to another tree, fails to open.
//!
//! Reads are bounded: a value longer than its tree's limit is rejected before
//! any decryption or decoding. Writes check the same limit, so the store never
//! writes a record it would refuse to read back.

use std::sync::Mutex;

use rand::rngs::StdRng;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Error;
use super::keys::{MESSAGE_KEY_LEN, TOMB_TAG_LEN};
use crate::crypto::limits::{RECORD_NONCE_ROOM, RECORD_OVERHEAD};
use crate::crypto::{DataKey, Secret32};

/// One encrypted tree: its sled name and the largest plaintext it holds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TreeSpec {
    /// The sled tree name (ASCII, no `0x00`).
    pub(crate) name: &'static str,
    /// Largest postcard encoding of one value.
    pub(crate) max_plain: usize,
}

impl TreeSpec {
    /// Largest sealed value accepted from disk.
    pub(crate) const fn max_sealed(&self) -> usize {
        self.max_plain + RECORD_OVERHEAD
    }

    /// The associated data binding a value to this tree and `key`.
    pub(crate) fn ad(&self, key: &[u8]) -> Vec<u8> {
        let mut ad = Vec::with_capacity(self.name.len() + 1 + key.len());
        ad.extend_from_slice(self.name.as_bytes());
        ad.push(0);
        ad.extend_from_slice(key);
        ad
    }
}

/// Seals and opens records under the database key. Record nonces come from
/// an internal generator seeded from the operating system; they only need to
/// be unique, which 192 random bits make them.
pub(crate) struct Sealer {
    key: DataKey,
    rng: Mutex<StdRng>,
    /// Derived from `key`: tags tombstones (see [`Sealer::tombstone_tag`]).
    tomb_key: Secret32,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// A sealer for `key` drawing nonces from `rng`.
    pub(crate) fn new(key: DataKey, rng: StdRng) -> Self {
        Self {
            tomb_key: key.derive(crate::crypto::labels::STORE_TOMBSTONE),
            key,
            rng: Mutex::new(rng),
        }
    }

    /// The tag of the tombstone a message with sort key `sort` leaves:
    /// HMAC-SHA256 under a key derived from the database key, cut to 16
    /// bytes. Without the key, a tag does not tell which message it was.
    pub(crate) fn tombstone_tag(&self, sort: &[u8; MESSAGE_KEY_LEN]) -> [u8; TOMB_TAG_LEN] {
        let full = crate::crypto::hmac_sha256(self.tomb_key.expose(), sort);
        let mut tag = [0u8; TOMB_TAG_LEN];
        tag.copy_from_slice(&full[..TOMB_TAG_LEN]);
        tag
    }

    /// Encodes and seals `value` as the record at `key` in `tree`. The
    /// encoding's size is measured first and the record is encoded and
    /// encrypted in one buffer allocated once at its final size: a buffer
    /// that grew would leave copies of the plaintext in freed memory.
    pub(crate) fn seal<T: Serialize>(
        &self,
        tree: &TreeSpec,
        key: &[u8],
        value: &T,
    ) -> Result<Vec<u8>, Error> {
        let cannot = |e: postcard::Error| Error::Malformed {
            tree: tree.name,
            key: hex(key),
            what: format!("cannot encode: {e}"),
        };
        let plain_len =
            postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default())
                .map_err(cannot)?;
        if plain_len > tree.max_plain {
            return Err(Error::TooLarge {
                tree: tree.name,
                key: hex(key),
                len: plain_len,
                max: tree.max_plain,
            });
        }
        let mut record = Vec::with_capacity(RECORD_OVERHEAD + plain_len);
        record.resize(RECORD_NONCE_ROOM, 0);
        let mut record =
            zeroize::Zeroizing::new(postcard::to_extend(value, record).map_err(cannot)?);
        // A poisoned lock only means another thread panicked while drawing a
        // nonce; the generator state is still usable.
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        self.key
            .seal_record_in_place(&tree.ad(key), &mut record, &mut *rng);
        // Sealed now: nothing left to wipe.
        Ok(std::mem::take(&mut *record))
    }

    /// Opens the record at `key` in `tree` and decodes it, rejecting values
    /// over the tree's limit before decrypting.
    pub(crate) fn open<T: DeserializeOwned>(
        &self,
        tree: &TreeSpec,
        key: &[u8],
        sealed: &[u8],
    ) -> Result<T, Error> {
        if sealed.len() > tree.max_sealed() {
            return Err(Error::TooLarge {
                tree: tree.name,
                key: hex(key),
                len: sealed.len(),
                max: tree.max_sealed(),
            });
        }
        let plain = zeroize::Zeroizing::new(self.key.open_record(&tree.ad(key), sealed).map_err(
            |source| Error::Decrypt {
                tree: tree.name,
                key: hex(key),
                source,
            },
        )?);
        let (value, rest) =
            postcard::take_from_bytes::<T>(&plain).map_err(|e| Error::Malformed {
                tree: tree.name,
                key: hex(key),
                what: e.to_string(),
            })?;
        if !rest.is_empty() {
            return Err(Error::Malformed {
                tree: tree.name,
                key: hex(key),
                what: format!("{} trailing bytes", rest.len()),
            });
        }
        Ok(value)
    }
}

/// Lowercase hex, for record keys in error messages and cursors.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Parses lowercase or uppercase hex; `None` on odd length or a non-hex digit.
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| match pair {
            [hi, lo] => Some(digit(*hi)? << 4 | digit(*lo)?),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    const T1: TreeSpec = TreeSpec {
        name: "t1",
        max_plain: 64,
    };
    const T2: TreeSpec = TreeSpec {
        name: "t2",
        max_plain: 64,
    };

    fn sealer() -> Sealer {
        let mut rng = StdRng::seed_from_u64(7);
        let key = DataKey::from_secret(crate::crypto::Secret32::random(&mut rng));
        Sealer::new(key, rng)
    }

    #[test]
    fn round_trip() {
        let s = sealer();
        let sealed = s.seal(&T1, b"k", &(7u32, "x".to_string())).unwrap();
        let back: (u32, String) = s.open(&T1, b"k", &sealed).unwrap();
        assert_eq!(back, (7, "x".to_string()));
    }

    #[test]
    fn moved_record_fails() {
        let s = sealer();
        let sealed = s.seal(&T1, b"k1", &1u32).unwrap();
        assert!(matches!(
            s.open::<u32>(&T1, b"k2", &sealed),
            Err(Error::Decrypt { tree: "t1", .. })
        ));
        assert!(matches!(
            s.open::<u32>(&T2, b"k1", &sealed),
            Err(Error::Decrypt { tree: "t2", .. })
        ));
    }

    #[test]
    fn ad_is_unambiguous() {
        // "t1" ‖ 0 ‖ "2k" must differ from a tree "t12" with key "k".
        let a = T1.ad(b"2k");
        let b = TreeSpec {
            name: "t12",
            max_plain: 1,
        }
        .ad(b"k");
        assert_ne!(a, b);
    }

    #[test]
    fn oversized_rejected_both_ways() {
        let s = sealer();
        assert!(matches!(
            s.seal(&T1, b"k", &vec![0u8; 100]),
            Err(Error::TooLarge {
                len: 101,
                max: 64,
                ..
            })
        ));
        let huge = vec![0u8; T1.max_sealed() + 1];
        assert!(matches!(
            s.open::<Vec<u8>>(&T1, b"k", &huge),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn a_record_is_written_into_one_buffer_of_its_final_size() {
        // Had the buffer grown while the value was encoded, copies of the
        // plaintext would be left in freed memory: its capacity shows it
        // was allocated once, exactly.
        let s = sealer();
        let big = TreeSpec {
            name: "big",
            max_plain: 1 << 20,
        };
        for len in [0, 1, 63, 64, 65, 1000, 100_000] {
            let value = (7u64, vec![0xa5u8; len], "x".to_string());
            let sealed = s.seal(&big, b"k", &value).unwrap();
            assert_eq!(sealed.capacity(), sealed.len(), "{len} bytes");
            let back: (u64, Vec<u8>, String) = s.open(&big, b"k", &sealed).unwrap();
            assert_eq!(back, value);
        }
    }

    #[test]
    fn trailing_bytes_rejected() {
        let s = sealer();
        let sealed = s.seal(&T1, b"k", &(1u8, 2u8)).unwrap();
        assert!(matches!(
            s.open::<u8>(&T1, b"k", &sealed),
            Err(Error::Malformed { .. })
        ));
    }

    #[test]
    fn hex_round_trip() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(hex(&bytes), "0001abff");
        assert_eq!(unhex("0001ABff").unwrap(), bytes);
        assert!(unhex("abc").is_none());
        assert!(unhex("zz").is_none());
    }
}
