//! Media chunks and the media messages still being fetched.
//!
//! A chunk is kept in the `media` record tree under its name (the SHA-256
//! of its encrypted bytes), sealed under the database key like every
//! record, behind the **owner** id of the media message it came with: the
//! first 16 bytes of SHA-256(body ‖ author's identity key), the same on the
//! author's device and every recipient's. Each message that holds a chunk
//! (it brought it, or found it here when it was complete) has a reference
//! record `r:` ‖ name ‖ owner id. When a message is purged its references
//! go, and a chunk goes with the last of them: two messages carrying the
//! same manifest (a copy of someone else's file, sent again under another
//! owner id) share the chunks, and deleting either leaves the other's
//! file whole. A chunk with no reference at all (kept before references
//! were) goes with the message whose owner id it is kept under. The
//! chunks are encrypted under a key that only the message holds, so one
//! left behind (a crash between the writes) cannot be read.
//!
//! The same tree keeps, under the key `size`, how many bytes the chunk
//! records take sealed ([`Media::bytes`]): raised when a chunk is kept,
//! lowered when one goes (in the same atomic write as the chunk), counted
//! afresh from the records when it is missing (a store from before it was
//! kept, or none is kept) or does not open; it goes when it falls to
//! zero.
//!
//! A wanted message is a record in `media_wanted` under the message's sort
//! key (conversation, Lamport clock, sender, id), with a version byte.

use sha2::{Digest, Sha256};

use super::keys::MESSAGE_KEY_LEN;
use super::records::{RecordBatch, Records};
use super::{Error, Kind, MessageRef, Store};
use crate::crypto::media::{BODY_TAG, Manifest};

const WANT_VERSION: u8 = 1;

/// The id that ties chunks to the media message whose body is `body`,
/// written by `author`.
pub fn media_owner(body: &[u8], author: &[u8; 32]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(body);
    h.update(author);
    let d = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&d[..16]);
    id
}

/// The records of the messages holding the chunk `name` start so.
fn ref_prefix(name: &[u8; 32]) -> Vec<u8> {
    [REF_PREFIX, name.as_slice()].concat()
}

/// The record saying that the message of owner id `owner` holds the
/// chunk `name`.
fn ref_key(name: &[u8; 32], owner: &[u8; 16]) -> Vec<u8> {
    [REF_PREFIX, name.as_slice(), owner.as_slice()].concat()
}

const REF_PREFIX: &[u8] = b"r:";

/// The key of the count of chunk bytes: no chunk's name (32 bytes) nor a
/// reference (`r:` ‖ 48 bytes).
const SIZE_KEY: &[u8] = b"size";

/// Whether `body` says it is media (see [`crate::crypto::media`]).
pub fn is_media(body: &[u8]) -> bool {
    body.starts_with(BODY_TAG)
}

fn ref_of_key(key: &[u8]) -> Option<MessageRef> {
    if key.len() != MESSAGE_KEY_LEN {
        return None;
    }
    Some(MessageRef {
        conv_id: key[..32].try_into().ok()?,
        lamport: u64::from_be_bytes(key[32..40].try_into().ok()?),
        sender: key[40..72].try_into().ok()?,
        msg_id: key[72..].try_into().ok()?,
    })
}

/// Media chunks and wanted media ([`Store::media`]).
pub struct Media<'a> {
    store: &'a Store,
    chunks: Records<'a>,
    wanted: Records<'a>,
}

impl<'a> Media<'a> {
    pub(crate) fn new(store: &'a Store) -> Result<Self, Error> {
        Ok(Self {
            store,
            chunks: store.records(Kind::Media)?,
            wanted: store.records(Kind::MediaWanted)?,
        })
    }

    /// How many bytes the kept chunks take (sealed, as written; sled's own
    /// overhead aside).
    pub fn bytes(&self) -> Result<u64, Error> {
        let _guard = self.lock();
        self.read_bytes()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded state is the record itself: a panic elsewhere
        // leaves nothing half-changed in memory.
        self.store
            .media_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn read_bytes(&self) -> Result<u64, Error> {
        let kept = match self.chunks.get(SIZE_KEY) {
            Ok(Some(v)) => <[u8; 8]>::try_from(v.as_slice()).ok(),
            Ok(None) => None,
            Err(e) if e.is_damaged_record() => None,
            Err(e) => return Err(e),
        };
        match kept {
            Some(b) => Ok(u64::from_be_bytes(b)),
            None => {
                let n = self.chunks.sealed_bytes(|k| k.len() == 32)?;
                self.write_bytes(n)?;
                Ok(n)
            }
        }
    }

    /// Writes the count of chunk bytes (under the lock, read first with
    /// [`Self::read_bytes`] so that a count made afresh does not see the
    /// change twice).
    fn write_bytes(&self, n: u64) -> Result<(), Error> {
        if n == 0 {
            // No chunk left (or the count ran low): nothing is kept, and
            // the next reading counts afresh.
            return self.chunks.remove(SIZE_KEY).map(|_| ());
        }
        self.chunks.put(SIZE_KEY, &n.to_be_bytes())
    }

    /// The count of chunk bytes `n`, into `batch`.
    fn stage_bytes(&self, batch: &mut RecordBatch, n: u64) -> Result<(), Error> {
        if n == 0 {
            batch.remove(SIZE_KEY);
            return Ok(());
        }
        self.chunks
            .stage(batch, SIZE_KEY, &n.to_be_bytes())
            .map(|_| ())
    }

    /// Keeps an encrypted chunk under the owner id `owner` (unless one of
    /// that name is here already), and `owner`'s reference to it. The
    /// chunk, its reference and the new count are one atomic write.
    pub fn put_chunk(&self, owner: &[u8; 16], name: &[u8; 32], sealed: &[u8]) -> Result<(), Error> {
        let _guard = self.lock();
        if self.chunks.contains(name)? {
            return self.hold_chunks(owner, std::slice::from_ref(name));
        }
        let mut value = Vec::with_capacity(16 + sealed.len());
        value.extend_from_slice(owner);
        value.extend_from_slice(sealed);
        let n = self.read_bytes()?;
        let mut batch = self.chunks.batch();
        let size = self.chunks.stage(&mut batch, name, &value)?;
        self.chunks.stage(&mut batch, &ref_key(name, owner), &[])?;
        self.stage_bytes(&mut batch, n.saturating_add(size))?;
        self.chunks.apply(batch)
    }

    /// The message of owner id `owner` holds the chunks `names`, here
    /// already (another message may have brought them): its references.
    /// A chunk kept before references were gets one for the message it
    /// is kept under first, so that it stays while that message does.
    pub fn hold_chunks(&self, owner: &[u8; 16], names: &[[u8; 32]]) -> Result<(), Error> {
        for name in names {
            if self.chunks.scan(&ref_prefix(name))?.is_empty()
                && let Some(first) = self
                    .chunks
                    .get(name)?
                    .and_then(|v| <[u8; 16]>::try_from(v.get(..16)?).ok())
            {
                self.chunks.put(&ref_key(name, &first), &[])?;
            }
            self.chunks.put(&ref_key(name, owner), &[])?;
        }
        Ok(())
    }

    /// The encrypted chunk of this name, if it is here.
    pub fn chunk(&self, name: &[u8; 32]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self
            .chunks
            .get(name)?
            .filter(|v| v.len() >= 16)
            .map(|mut v| v.split_off(16)))
    }

    /// Whether the chunk of this name is here (nothing is decrypted).
    pub fn has_chunk(&self, name: &[u8; 32]) -> Result<bool, Error> {
        self.chunks.contains(name)
    }

    /// Drops the references of the media message whose body is `body`,
    /// written by `author`, and the chunks no other message holds, with
    /// the new count, in one atomic write. Returns how many chunks went.
    pub fn forget_chunks(&self, body: &[u8], author: &[u8; 32]) -> Result<usize, Error> {
        let Some(Ok(manifest)) = Manifest::from_body(body) else {
            return Ok(0);
        };
        let owner = media_owner(body, author);
        let _guard = self.lock();
        let before = self.read_bytes()?;
        let mut batch = self.chunks.batch();
        let mut removed = 0;
        let mut freed = 0u64;
        // Each name once: the batch is applied only at the end.
        let names: std::collections::BTreeSet<&[u8; 32]> = manifest.chunks.iter().collect();
        for name in names {
            let mine = ref_key(name, &owner);
            let refs = self.chunks.scan(&ref_prefix(name))?;
            let had = refs.iter().any(|(k, _)| *k == mine);
            let others = refs.iter().any(|(k, _)| *k != mine);
            if had {
                batch.remove(&mine);
            }
            let gone = !others
                && (had
                    || self
                        .chunks
                        .get(name)?
                        .is_some_and(|v| v.get(..16) == Some(&owner[..])));
            if gone && let Some(size) = self.chunks.sealed_len(name)? {
                batch.remove(name);
                removed += 1;
                freed = freed.saturating_add(size);
            }
        }
        if freed > 0 {
            self.stage_bytes(&mut batch, before.saturating_sub(freed))?;
        }
        self.chunks.apply(batch)?;
        Ok(removed)
    }

    /// Records that the media message `r` is being fetched.
    pub fn want(&self, r: &MessageRef) -> Result<(), Error> {
        self.wanted.put(&r.sort_key(), &[WANT_VERSION])
    }

    /// Whether the media message `r` is still to be fetched.
    pub fn is_wanted(&self, r: &MessageRef) -> Result<bool, Error> {
        self.wanted.contains(&r.sort_key())
    }

    /// The media message `r` has every chunk, or went.
    pub fn unwant(&self, r: &MessageRef) -> Result<(), Error> {
        self.wanted.remove(&r.sort_key()).map(|_| ())
    }

    /// Up to `limit` wanted media messages after `after` (from the first
    /// if `None`), in key order. A record whose key is not a message's is
    /// removed.
    pub fn wanted(
        &self,
        after: Option<&MessageRef>,
        limit: usize,
    ) -> Result<Vec<MessageRef>, Error> {
        let after = after.map(MessageRef::sort_key);
        let mut out = Vec::new();
        for (key, _) in self.wanted.step(after.as_ref().map(|k| &k[..]), limit)? {
            match ref_of_key(&key) {
                Some(r) => out.push(r),
                None => {
                    self.wanted.remove(&key)?;
                }
            }
        }
        Ok(out)
    }
}
