//! The store's error type. Messages name the path, tree and record key
//! involved (keys as hex; they are identifiers, never secrets) so a report
//! from the field says where to look.

use std::path::PathBuf;

/// Everything that can go wrong in [`crate::store`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// sled could not open the database directory (missing permissions, a
    /// second process holding the lock, a damaged file).
    #[error("cannot open the store at {path}: {source}")]
    Open {
        /// The database directory.
        path: PathBuf,
        /// What sled reported.
        #[source]
        source: sled::Error,
    },
    /// A read, write or flush in sled failed.
    #[error("store tree `{tree}`: {op} failed: {source}")]
    Db {
        /// The tree (or trees) involved.
        tree: &'static str,
        /// What was being done.
        op: &'static str,
        /// What sled reported.
        #[source]
        source: sled::Error,
    },
    /// The database was written by a version of meshchat with a different
    /// on-disk layout.
    #[error(
        "the store at {path} has schema version {found}, but this build reads only \
         version {supported}: run the meshchat version that wrote it, or move the \
         directory aside to start an empty store"
    )]
    UnknownSchema {
        /// The database directory.
        path: PathBuf,
        /// The version found on disk.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// The key-check record does not open under the given database key: the
    /// store belongs to another keystore (or its meta tree was altered).
    #[error(
        "the store at {path} was not created with this database key: unlock the \
         keystore that belongs to it"
    )]
    WrongKey {
        /// The database directory.
        path: PathBuf,
    },
    /// The `meta` tree is incomplete or unreadable.
    #[error("the store at {path} has a damaged meta tree: {what}")]
    CorruptMeta {
        /// The database directory.
        path: PathBuf,
        /// What is wrong.
        what: &'static str,
    },
    /// The database files are damaged or missing although a store was
    /// created in this directory: nothing is opened, so nothing is lost.
    #[error(
        "the store at {path} is damaged ({what}): restore it from a backup \
         (meshchat export / backup), or move the directory aside to start an empty store"
    )]
    Damaged {
        /// The database directory.
        path: PathBuf,
        /// What was found.
        what: String,
    },
    /// A record is larger than its tree allows (checked before decrypting
    /// on read, and before writing).
    #[error("record {key} in tree `{tree}` is {len} bytes, max {max}")]
    TooLarge {
        /// The tree.
        tree: &'static str,
        /// The record key, hex.
        key: String,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A record did not decrypt: it was altered, moved to another key or
    /// tree, or written under another database key.
    #[error("record {key} in tree `{tree}` does not decrypt: {source}")]
    Decrypt {
        /// The tree.
        tree: &'static str,
        /// The record key, hex.
        key: String,
        /// What the crypto layer reported.
        #[source]
        source: crate::crypto::Error,
    },
    /// A record decrypted but its contents do not decode.
    #[error("record {key} in tree `{tree}` is malformed: {what}")]
    Malformed {
        /// The tree.
        tree: &'static str,
        /// The record key, hex.
        key: String,
        /// What is wrong.
        what: String,
    },
    /// A history cursor string is not one this store issued.
    #[error("invalid history cursor: {reason}")]
    BadCursor {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A history cursor belongs to another conversation.
    #[error("history cursor is for conversation {found}, not {expected}")]
    CursorConversation {
        /// The conversation asked for, hex.
        expected: String,
        /// The conversation in the cursor, hex.
        found: String,
    },
    /// No message with this id is stored.
    #[error("no stored message with id {msg_id}")]
    UnknownMessage {
        /// The message id, hex.
        msg_id: String,
    },
    /// No conversation with this id is stored.
    #[error("no stored conversation with id {conv_id}")]
    UnknownConversation {
        /// The conversation id, hex.
        conv_id: String,
    },
    /// The message index points at a record that is not there.
    /// Writing or reading an export or backup failed, or a backup is damaged.
    #[error("backup: {0}")]
    Backup(String),
    /// A store call on the blocking pool did not complete (the runtime is
    /// shutting down, or the call panicked).
    #[error("store task failed: {0}")]
    Task(String),
    /// The operating system gave no randomness for record nonces.
    #[error("no randomness from the operating system for record nonces: {0}")]
    Entropy(String),
}

impl Error {
    /// Wraps a sled error with the tree and operation it came from.
    pub(crate) fn db(tree: &'static str, op: &'static str) -> impl FnOnce(sled::Error) -> Self {
        move |source| Self::Db { tree, op, source }
    }

    /// Whether it says one record is damaged (too large, does not decrypt,
    /// does not decode), rather than that the store cannot be used.
    pub(crate) fn is_damaged_record(&self) -> bool {
        matches!(
            self,
            Self::TooLarge { .. } | Self::Decrypt { .. } | Self::Malformed { .. }
        )
    }
}
