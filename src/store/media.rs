//! Media chunks and the media messages still being fetched.
//!
//! A chunk is kept in the `media` record tree under its name (the SHA-256
//! of its encrypted bytes), sealed under the database key like every
//! record, behind the id of the media message it came with: the first 16
//! bytes of the SHA-256 of that message's body (the same on the sender's
//! device and every recipient's). When that message is purged, its chunks
//! go with it; a chunk that another message brought first is left alone.
//! The chunks are encrypted under a key that only the message holds, so
//! one left behind by a crash between the two writes cannot be read.

use sha2::{Digest, Sha256};

use super::records::Records;
use super::{Error, Kind, Store};
use crate::crypto::media::{BODY_TAG, Manifest};

/// The id that ties chunks to the media message whose body is `body`.
pub fn media_id(body: &[u8]) -> [u8; 16] {
    let d = Sha256::digest(body);
    let mut id = [0u8; 16];
    id.copy_from_slice(&d[..16]);
    id
}

/// A wanted media message: its id and the node's record.
pub type WantedRecord = ([u8; 16], Vec<u8>);

/// Media chunks and wanted media ([`Store::media`]).
pub struct Media<'a> {
    chunks: Records<'a>,
    wanted: Records<'a>,
}

impl<'a> Media<'a> {
    pub(crate) fn new(store: &'a Store) -> Result<Self, Error> {
        Ok(Self {
            chunks: store.records(Kind::Media)?,
            wanted: store.records(Kind::MediaWanted)?,
        })
    }

    /// Keeps an encrypted chunk for the media message `owner` (unless one
    /// of that name is here already).
    pub fn put_chunk(&self, owner: &[u8; 16], name: &[u8; 32], sealed: &[u8]) -> Result<(), Error> {
        if self.chunks.get(name)?.is_some() {
            return Ok(());
        }
        let mut value = Vec::with_capacity(16 + sealed.len());
        value.extend_from_slice(owner);
        value.extend_from_slice(sealed);
        self.chunks.put(name, &value)
    }

    /// The encrypted chunk of this name, if it is here.
    pub fn chunk(&self, name: &[u8; 32]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self
            .chunks
            .get(name)?
            .filter(|v| v.len() >= 16)
            .map(|mut v| v.split_off(16)))
    }

    /// Whether the chunk of this name is here.
    pub fn has_chunk(&self, name: &[u8; 32]) -> Result<bool, Error> {
        Ok(self.chunks.get(name)?.is_some())
    }

    /// Removes the chunks of the media message whose body is `body`, and
    /// its wanted record if it has one (`msg_id`). Returns how many chunks
    /// went.
    pub fn forget(&self, body: &[u8], msg_id: &[u8; 16]) -> Result<usize, Error> {
        let Some(Ok(manifest)) = Manifest::from_body(body) else {
            return Ok(0);
        };
        let owner = media_id(body);
        let mut removed = 0;
        for name in &manifest.chunks {
            if self
                .chunks
                .get(name)?
                .is_some_and(|v| v.get(..16) == Some(&owner[..]))
            {
                self.chunks.remove(name)?;
                removed += 1;
            }
        }
        self.wanted.remove(msg_id)?;
        Ok(removed)
    }

    /// Records that the media message `msg_id` is being fetched (`record`
    /// is the node's own encoding of where from).
    pub fn want(&self, msg_id: &[u8; 16], record: &[u8]) -> Result<(), Error> {
        self.wanted.put(msg_id, record)
    }

    /// The media messages being fetched: id and record, at most `limit`.
    pub fn wanted(&self, limit: usize) -> Result<Vec<WantedRecord>, Error> {
        Ok(self
            .wanted
            .step(None, limit)?
            .into_iter()
            .filter_map(|(k, v)| Some((k.try_into().ok()?, v?)))
            .collect())
    }

    /// The media message `msg_id` has every chunk, or is given up.
    pub fn unwant(&self, msg_id: &[u8; 16]) -> Result<(), Error> {
        self.wanted.remove(msg_id).map(|_| ())
    }
}

/// Whether `body` says it is media (see [`crate::crypto::media`]).
pub fn is_media(body: &[u8]) -> bool {
    body.starts_with(BODY_TAG)
}
