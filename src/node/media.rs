//! Media messages: what the handle, the swarm's task and the store thread
//! say to each other about them.
//!
//! Sending: the handle encrypts the file ([`crate::crypto::media`]), has
//! the store thread keep its chunks, then sends the manifest as an
//! ordinary message (1:1 or to a group), so that it travels, is queued,
//! retried, acknowledged, ordered and expires like any other.
//!
//! Receiving: when the store thread stores a message whose body is a
//! manifest, it records the message as wanted (in the same flush) and asks
//! the swarm's task to fetch the missing chunks from the message's author
//! (in a group, from another member when the author is not connected) on
//! `/meshchat/media/1`, a few at a time. Each chunk that comes is checked
//! against its name and kept; when the last is here the user hears
//! [`super::NodeEvent::MediaReady`]. A fetch that fails is tried again when
//! the author connects, and otherwise every [`FETCH_AGAIN`] seconds
//! ([`BUSY_AGAIN`] if the author said it was busy), until the message is
//! purged.
//!
//! Serving: a contact (only) may ask for a chunk by name; the store thread
//! looks it up and the swarm's task answers.

use crate::store::MessageRef;

use super::NodeError;

/// Seconds before a fetch that failed is tried again (sooner when the
/// author connects).
pub const FETCH_AGAIN: u64 = 30;
/// Seconds before a fetch the author was too busy to answer goes on.
pub const BUSY_AGAIN: u64 = 2;
/// Wanted media messages followed at once; more wait on disk for their
/// turn.
pub const MAX_FOLLOWED: usize = 256;
/// Chunk requests in flight per media message.
pub const FETCH_WINDOW: usize = 8;
/// Media messages fetched at once; more wait for their turn.
pub const MAX_FETCHES: usize = 16;
/// Chunk requests from peers waiting for the store thread; more are
/// answered "busy" at once (the asker goes on a moment later).
pub const MAX_SERVING: usize = 256;

/// A file as the user sends or reads it.
#[derive(Clone, PartialEq, Eq)]
pub struct MediaFile {
    /// Its name (no directories).
    pub name: String,
    /// Its media type (`image/png`…; may be empty).
    pub mime: String,
    /// Its bytes.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for MediaFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaFile")
            .field("name", &self.name)
            .field("mime", &self.mime)
            .field("bytes", &self.data.len())
            .finish()
    }
}

type Reply<T> = tokio::sync::oneshot::Sender<Result<T, NodeError>>;

/// Work about media for the store thread.
pub(crate) enum MediaJob {
    /// Keep the encrypted chunks of a file about to be sent (`owner`: its
    /// message's owner id, `crate::store::media_owner`).
    Put {
        owner: [u8; 16],
        chunks: Vec<([u8; 32], Vec<u8>)>,
        reply: Reply<()>,
    },
    /// A send of the media message with this body failed: drop its chunks.
    Forget { body: Vec<u8> },
    /// Decrypt the file of a media message.
    Read {
        message: MessageRef,
        reply: Reply<MediaFile>,
    },
    /// A chunk came for the wanted media message `message`.
    Chunk {
        message: MessageRef,
        name: [u8; 32],
        chunk: Vec<u8>,
    },
    /// The fetch of `message` ended (every chunk asked for came, or not;
    /// `busy`: the author said it was busy).
    Ended { message: MessageRef, busy: bool },
    /// A peer asks for the chunk `name`; answer `token`.
    Serve { token: u64, name: [u8; 32] },
}
