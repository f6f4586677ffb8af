//! Media: a file sent in a chat travels as a small manifest inside an
//! ordinary end-to-end encrypted message, and as encrypted chunks that the
//! recipient fetches by their hashes.
//!
//! The sender picks a random 32-byte media key, cuts the file into chunks of
//! [`CHUNK`] bytes (the last one shorter) and encrypts chunk `i` with the
//! ChaCha20-Poly1305 key and nonce `HKDF(media key, info = "meshchat/1/media"
//! ‖ i as u32 BE)`, with the file's size and chunk count as associated data.
//! A chunk is named by the SHA-256 of its ciphertext. The manifest (name,
//! type, size, media key, chunk names) is the message body, behind
//! [`BODY_TAG`], so it is as confidential as any message; the chunks are
//! opaque to whoever carries or stores them, and one that was altered or
//! belongs elsewhere fails its hash before it is decrypted.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use super::{Aead, Error, wire};

/// Bytes of file per chunk (the last chunk may be shorter).
pub const CHUNK: usize = 64 * 1024;
/// Most chunks of one file.
pub const MAX_CHUNKS: usize = 512;
/// Largest file: 32 MiB.
pub const MAX_MEDIA: u64 = (CHUNK * MAX_CHUNKS) as u64;
/// Largest encrypted chunk.
pub const MAX_SEALED_CHUNK: usize = CHUNK + TAG;
/// Longest file name, in bytes.
pub const MAX_NAME: usize = 255;
/// Longest media type, in bytes.
pub const MAX_MIME: usize = 127;
/// What a media message's body starts with. The local API refuses a text
/// that starts so; a body that does and does not decode is shown as a file
/// that cannot be read.
pub const BODY_TAG: &[u8] = b"\0meshchat/1/media\0";
/// Largest encoded manifest (behind the tag).
pub const MAX_MANIFEST: usize = 64 + MAX_NAME + MAX_MIME + 32 + MAX_CHUNKS * 32 + 16;

const TAG: usize = 16;
const MANIFEST_VERSION: u8 = 1;
use super::labels::MEDIA as LABEL;

/// First byte of an envelope's `sealed` field that carries an encrypted
/// chunk for a relay to hold (see [`relayed_chunk_envelope`]) rather than a
/// sealed message, whose field starts with its version, 1.
pub const RELAYED_CHUNK: u8 = 0xc1;
/// The mark and the chunk's length (u32 BE) before a relayed chunk.
const RELAYED_HEADER: usize = 5;
/// Largest `sealed` field of a relayed chunk: every full chunk's.
pub const MAX_RELAYED: usize = RELAYED_HEADER + MAX_SEALED_CHUNK;
const _: () = assert!(MAX_RELAYED <= super::envelope::MAX_SEALED);

/// The size a relayed chunk of `len` bytes is padded to: the next power of
/// two from 256, every full chunk the same (so a relay sees a file's size
/// only to within a chunk, and a small one's to within a power of two).
fn relayed_size(len: usize) -> usize {
    (RELAYED_HEADER + len)
        .next_power_of_two()
        .clamp(256, MAX_RELAYED)
}

/// An envelope for mailbox `mailbox_id` that carries the encrypted chunk
/// `chunk` (named by its hash) for a relay to hold until `expires_at`, so
/// that a device that is away gets a file while its author is away too:
/// `sealed = RELAYED_CHUNK ‖ len (u32 BE) ‖ chunk ‖ zeros`. Its id is the
/// start of the chunk's name, so the same chunk deposited again is the
/// same bytes, which a relay holds once. Nothing in it is readable
/// without the manifest, which travels in the message.
pub fn relayed_chunk_envelope(
    mailbox_id: [u8; 32],
    expires_at: u64,
    chunk: &[u8],
) -> Result<Vec<u8>, Error> {
    if chunk.len() > MAX_SEALED_CHUNK {
        return Err(Error::TooLarge {
            what: "media chunk",
            len: chunk.len(),
            max: MAX_SEALED_CHUNK,
        });
    }
    let mut sealed = Vec::with_capacity(relayed_size(chunk.len()));
    sealed.push(RELAYED_CHUNK);
    sealed.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
    sealed.extend_from_slice(chunk);
    sealed.resize(relayed_size(chunk.len()), 0);
    let name = chunk_name(chunk);
    let mut id = [0u8; 16];
    id.copy_from_slice(&name[..16]);
    Ok(super::Envelope::new(mailbox_id, id, expires_at, sealed).to_bytes())
}

/// The chunk an envelope's `sealed` field carries, if it is a relayed
/// chunk (`None`: it is not one, open it as a sealed message). Its size,
/// length and padding must be exactly as [`relayed_chunk_envelope`] makes
/// them.
pub fn relayed_chunk(sealed: &[u8]) -> Option<Result<&[u8], Error>> {
    const WHAT: &str = "relayed media chunk";
    if sealed.first() != Some(&RELAYED_CHUNK) {
        return None;
    }
    let Some(len) = sealed.get(1..RELAYED_HEADER) else {
        return Some(Err(Error::Truncated {
            what: WHAT,
            len: sealed.len(),
            min: RELAYED_HEADER,
        }));
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len > MAX_SEALED_CHUNK {
        return Some(Err(Error::TooLarge {
            what: WHAT,
            len,
            max: MAX_SEALED_CHUNK,
        }));
    }
    if sealed.len() != relayed_size(len) {
        return Some(Err(Error::Malformed { what: WHAT }));
    }
    let (chunk, padding) = sealed[RELAYED_HEADER..].split_at(len);
    if padding.iter().any(|b| *b != 0) {
        return Some(Err(Error::Malformed { what: WHAT }));
    }
    Some(Ok(chunk))
}

/// The name of an encrypted chunk: SHA-256 of its bytes.
pub fn chunk_name(sealed: &[u8]) -> [u8; 32] {
    Sha256::digest(sealed).into()
}

/// What a media message carries: enough to fetch, check and decrypt the
/// file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The file's name as the sender gave it (no directories).
    pub name: String,
    /// Its media type (`image/png`…), as the sender gave it.
    pub mime: String,
    /// Its length in bytes.
    pub size: u64,
    key: [u8; 32],
    /// The names of its encrypted chunks, in order.
    pub chunks: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Manifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manifest")
            .field("name", &self.name)
            .field("mime", &self.mime)
            .field("size", &self.size)
            .field("chunks", &self.chunks.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Manifest {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

#[derive(Serialize)]
struct WireRef<'a> {
    version: u8,
    manifest: &'a Manifest,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    version: u8,
    manifest: Manifest,
}

/// Chunks the file has at `size` bytes.
fn chunk_count(size: u64) -> usize {
    usize::try_from(size.div_ceil(CHUNK as u64)).unwrap_or(usize::MAX)
}

/// Characters that change how the text around them is shown (direction
/// overrides and isolates, line and paragraph separators): refused in names.
fn reorders(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2028}' | '\u{2029}' | '\u{2066}'..='\u{2069}')
}

/// A file name as a manifest may hold it: at most [`MAX_NAME`] bytes, no
/// control characters or characters that reorder text, no path separators.
pub fn check_name(name: &str) -> Result<(), Error> {
    check_text("media name", name, MAX_NAME)?;
    if name.contains(['/', '\\']) {
        return Err(Error::Malformed { what: "media name" });
    }
    Ok(())
}

/// A media type as a manifest may hold it: at most [`MAX_MIME`] bytes, no
/// control characters or characters that reorder text.
pub fn check_mime(mime: &str) -> Result<(), Error> {
    check_text("media type", mime, MAX_MIME)
}

fn check_text(what: &'static str, s: &str, max: usize) -> Result<(), Error> {
    if s.len() > max {
        return Err(Error::TooLarge {
            what,
            len: s.len(),
            max,
        });
    }
    if s.chars().any(|c| c.is_control() || reorders(c)) {
        return Err(Error::Malformed { what });
    }
    Ok(())
}

impl Manifest {
    /// Encrypts `data` under a fresh key: the manifest and the encrypted
    /// chunks, in order.
    pub fn seal<R: rand_core::CryptoRng + ?Sized>(
        data: &[u8],
        name: &str,
        mime: &str,
        rng: &mut R,
    ) -> Result<(Manifest, Vec<Vec<u8>>), Error> {
        if data.len() as u64 > MAX_MEDIA {
            return Err(Error::TooLarge {
                what: "media",
                len: data.len(),
                max: MAX_MEDIA as usize,
            });
        }
        check_name(name)?;
        check_mime(mime)?;
        let mut key = [0u8; 32];
        rng.fill_bytes(&mut key);
        let mut manifest = Manifest {
            name: name.to_owned(),
            mime: mime.to_owned(),
            size: data.len() as u64,
            key,
            chunks: Vec::with_capacity(chunk_count(data.len() as u64)),
        };
        key.zeroize();
        let sealed: Vec<Vec<u8>> = data
            .chunks(CHUNK)
            .enumerate()
            .map(|(i, part)| manifest.aead(i).seal(part, &manifest.ad()))
            .collect();
        manifest.chunks = sealed.iter().map(|c| chunk_name(c)).collect();
        Ok((manifest, sealed))
    }

    fn aead(&self, index: usize) -> Aead {
        let mut info = LABEL.to_vec();
        info.extend_from_slice(&u32::try_from(index).unwrap_or(u32::MAX).to_be_bytes());
        Aead::derive(&self.key, &info)
    }

    fn ad(&self) -> [u8; 12] {
        let mut ad = [0u8; 12];
        ad[..8].copy_from_slice(&self.size.to_be_bytes());
        ad[8..].copy_from_slice(&(self.chunks_expected() as u32).to_be_bytes());
        ad
    }

    fn chunks_expected(&self) -> usize {
        chunk_count(self.size)
    }

    /// The length of chunk `index`'s plaintext.
    fn plain_len(&self, index: usize) -> usize {
        let before = (index * CHUNK) as u64;
        usize::try_from(self.size.saturating_sub(before).min(CHUNK as u64)).unwrap_or(CHUNK)
    }

    /// The message body that carries this manifest.
    pub fn to_body(&self) -> Vec<u8> {
        let mut body = BODY_TAG.to_vec();
        body.extend_from_slice(&wire::encode(&WireRef {
            version: MANIFEST_VERSION,
            manifest: self,
        }));
        body
    }

    /// The manifest a message body carries: `None` for a body that is not
    /// media, an error for one that says it is and does not decode or
    /// breaks a bound.
    pub fn from_body(body: &[u8]) -> Option<Result<Manifest, Error>> {
        let rest = body.strip_prefix(BODY_TAG)?;
        Some(Self::decode(rest))
    }

    fn decode(bytes: &[u8]) -> Result<Manifest, Error> {
        let w: Wire = wire::decode(bytes, "media manifest", MANIFEST_VERSION, MAX_MANIFEST)?;
        let m = w.manifest;
        if m.size > MAX_MEDIA {
            return Err(Error::TooLarge {
                what: "media",
                len: usize::try_from(m.size).unwrap_or(usize::MAX),
                max: MAX_MEDIA as usize,
            });
        }
        if m.chunks.len() != m.chunks_expected() {
            return Err(Error::Malformed {
                what: "media manifest (chunk count)",
            });
        }
        check_name(&m.name)?;
        check_mime(&m.mime)?;
        Ok(m)
    }

    /// Checks chunk `index` against its name and decrypts it.
    pub fn open_chunk(&self, index: usize, sealed: &[u8]) -> Result<Vec<u8>, Error> {
        let Some(name) = self.chunks.get(index) else {
            return Err(Error::Malformed {
                what: "media chunk (index)",
            });
        };
        if chunk_name(sealed) != *name {
            return Err(Error::Malformed {
                what: "media chunk (name)",
            });
        }
        let plain = self.aead(index).open(sealed, &self.ad(), "media chunk")?;
        if plain.len() != self.plain_len(index) {
            return Err(Error::Malformed {
                what: "media chunk (length)",
            });
        }
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn file(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn a_file_round_trips_through_its_manifest_and_chunks() {
        let mut rng = StdRng::seed_from_u64(1);
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17] {
            let data = file(len);
            let (m, sealed) =
                Manifest::seal(&data, "a.bin", "application/octet-stream", &mut rng).unwrap();
            assert_eq!(sealed.len(), len.div_ceil(CHUNK));
            let back = Manifest::from_body(&m.to_body()).unwrap().unwrap();
            assert_eq!(back, m);
            let mut out = Vec::new();
            for (i, c) in sealed.iter().enumerate() {
                out.extend(back.open_chunk(i, c).unwrap());
            }
            assert_eq!(out, data);
        }
    }

    #[test]
    fn a_chunk_out_of_place_or_altered_is_refused() {
        let mut rng = StdRng::seed_from_u64(2);
        let (m, sealed) = Manifest::seal(&file(2 * CHUNK), "x", "", &mut rng).unwrap();
        assert!(m.open_chunk(1, &sealed[0]).is_err(), "swapped");
        assert!(m.open_chunk(2, &sealed[0]).is_err(), "past the end");
        let mut bad = sealed[0].clone();
        bad[3] ^= 1;
        assert!(m.open_chunk(0, &bad).is_err(), "altered");
        // Another file's chunk at the right place: not its name.
        let (_, other) = Manifest::seal(&file(2 * CHUNK), "x", "", &mut rng).unwrap();
        assert!(m.open_chunk(0, &other[0]).is_err());
    }

    #[test]
    fn bodies_that_are_not_media_or_break_bounds_are_told_apart() {
        assert!(Manifest::from_body(b"hello").is_none());
        assert!(Manifest::from_body(b"").is_none());
        let mut body = BODY_TAG.to_vec();
        body.push(MANIFEST_VERSION + 1);
        assert!(matches!(
            Manifest::from_body(&body),
            Some(Err(Error::UnknownVersion { .. }))
        ));
        let mut rng = StdRng::seed_from_u64(3);
        let (mut m, _) = Manifest::seal(&file(10), "x", "", &mut rng).unwrap();
        m.chunks.push([0; 32]);
        assert!(Manifest::from_body(&m.to_body()).unwrap().is_err(), "count");
        m.chunks.pop();
        m.size = MAX_MEDIA + 1;
        assert!(Manifest::from_body(&m.to_body()).unwrap().is_err(), "size");
        assert!(Manifest::seal(&file(10), "../etc/passwd", "", &mut rng).is_err());
        assert!(Manifest::seal(&file(10), "a\nb", "", &mut rng).is_err());
        assert!(Manifest::seal(&file(10), "gpj.\u{202E}exe", "", &mut rng).is_err());
        assert!(Manifest::seal(&file(10), &"n".repeat(MAX_NAME + 1), "", &mut rng).is_err());
        // A manifest of the largest file fits a message body.
        let (big, _) = Manifest::seal(
            &file(0),
            &"n".repeat(MAX_NAME),
            &"t".repeat(MAX_MIME),
            &mut rng,
        )
        .unwrap();
        let mut big = big.clone();
        big.size = MAX_MEDIA;
        big.chunks = vec![[7; 32]; MAX_CHUNKS];
        let body = big.to_body();
        assert!(body.len() <= crate::node::proto::MAX_BODY, "{}", body.len());
        assert_eq!(Manifest::from_body(&body).unwrap().unwrap(), big);
    }

    #[test]
    fn a_relayed_chunk_round_trips_padded_to_its_size_class() {
        let mut rng = StdRng::seed_from_u64(5);
        let (_, sealed) = Manifest::seal(&file(CHUNK + 1000), "x", "", &mut rng).unwrap();
        let mut sizes = Vec::new();
        for c in sealed
            .iter()
            .map(Vec::as_slice)
            .chain([&b""[..], &[9u8; 300][..]])
        {
            let bytes = relayed_chunk_envelope([3; 32], 77, c).unwrap();
            let env = crate::crypto::Envelope::from_bytes(&bytes).unwrap();
            assert_eq!((env.mailbox_id, env.expires_at), ([3; 32], 77));
            assert_eq!(env.envelope_id[..], chunk_name(c)[..16]);
            assert_eq!(relayed_chunk(&env.sealed).unwrap().unwrap(), c);
            // The same chunk makes the same bytes (a relay holds it once).
            assert_eq!(relayed_chunk_envelope([3; 32], 77, c).unwrap(), bytes);
            sizes.push(env.sealed.len());
        }
        assert_eq!(sizes, [MAX_RELAYED, 1024, 256, 512]);
        assert!(relayed_chunk_envelope([3; 32], 77, &vec![0; MAX_SEALED_CHUNK + 1]).is_err());
    }

    #[test]
    fn a_relayed_chunk_out_of_shape_is_refused_and_a_sealed_message_is_not_one() {
        let good = {
            let bytes = relayed_chunk_envelope([3; 32], 77, &[5u8; 1000]).unwrap();
            crate::crypto::Envelope::from_bytes(&bytes).unwrap().sealed
        };
        assert!(relayed_chunk(&[1, 2, 3]).is_none(), "a sealed message");
        assert!(relayed_chunk(&[]).is_none());
        assert!(relayed_chunk(&good[..3]).unwrap().is_err(), "truncated");
        let mut long = good.clone();
        long[1..5].copy_from_slice(&(MAX_SEALED_CHUNK as u32 + 1).to_be_bytes());
        assert!(relayed_chunk(&long).unwrap().is_err(), "over the limit");
        let mut padded = good.clone();
        *padded.last_mut().unwrap() = 1;
        assert!(relayed_chunk(&padded).unwrap().is_err(), "padding");
        let mut short = good.clone();
        short.pop();
        assert!(relayed_chunk(&short).unwrap().is_err(), "size class");
        let mut claims = good.clone();
        claims[1..5].copy_from_slice(&2000u32.to_be_bytes());
        assert!(
            relayed_chunk(&claims).unwrap().is_err(),
            "length past the field"
        );
    }

    #[test]
    fn the_key_is_not_printed() {
        let mut rng = StdRng::seed_from_u64(4);
        let (m, _) = Manifest::seal(&file(10), "x", "", &mut rng).unwrap();
        let shown = format!("{m:?}");
        assert!(!shown.contains(&format!("{:?}", m.key)));
    }
}
