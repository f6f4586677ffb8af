//! The encrypted on-disk store (sled).
//!
//! What it owns: everything a node keeps between runs — the message history
//! (the `history` tree: conversation records, blocks of messages, each
//! conversation's tail of newest messages, expiry entries), the outbox,
//! contacts, sessions, prekeys and keys (`records`), and a
//! `meta` tree with the schema version and a key-check record. The layout
//! and its reasons are in `docs/storage.md`.
//!
//! Who talks to it: the node actor records messages and delivery receipts
//! through [`History`]; the CLI reads pages and the conversation list. The
//! database key comes from [`crate::crypto::Keystore`]; every value is sealed
//! with it (see `codec`), bound to its tree and key, so a record moved
//! elsewhere fails to open. Keys stay plaintext so sled can order them.
//!
//! Durability: writes reach the disk only at [`Store::flush`] (sled's log
//! write and its `fdatasync`). Anything a peer or the user is told about (a
//! delivery receipt, "sent") must be flushed first. A crash between flushes
//! leaves a prefix of the writes; opening repairs what that can leave
//! half-done (see `tail::repair_tails`).
//!
//! A relay's mailboxes are not in sled: [`Spool`] keeps them in append-only
//! segment files of sealed records under the same data key (a queue's
//! append, read once, delete, with one `fdatasync` per round).

mod backup;
mod blocks;
mod codec;
mod commit;
mod conversations;
mod error;
mod handle;
mod history;
mod keys;
mod marker;
mod media;
mod outbox;
mod records;
mod spool;
mod tail;
mod tombstones;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::{StdRng, SysRng};

use crate::crypto::DataKey;
use codec::{Sealer, TreeSpec};

/// Makes the entries of the directory `dir` durable (new files, renames,
/// new subdirectories in it): a file's own sync does not cover its name.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::File::open(dir)?.sync_all()
}

/// [`sync_dir`] where it may fail without undoing anything (the write it
/// follows is whole either way): a failure is logged.
pub(crate) fn sync_dir_or_warn(dir: &Path) {
    if let Err(e) = sync_dir(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "directory not synced");
    }
}

/// Writes `path` whole or not at all, owner-only, replacing what is
/// there: `fill` writes into a new temporary file beside it (a random
/// name, created exclusively, mode 0600), which is flushed, synced and
/// then renamed to `path`, and the rename is made durable. On failure the
/// temporary file is removed.
pub(crate) fn write_private<T>(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<T>,
) -> std::io::Result<T> {
    write_whole(path, true, fill)
}

/// [`write_private`] for a file that must not exist yet: an existing
/// `path` (even one made while `fill` runs) is left alone and the call
/// fails with [`std::io::ErrorKind::AlreadyExists`].
pub(crate) fn write_private_new<T>(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<T>,
) -> std::io::Result<T> {
    write_whole(path, false, fill)
}

fn write_whole<T>(
    path: &Path,
    replace: bool,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<T>,
) -> std::io::Result<T> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(path.file_name().unwrap_or_default());
    prefix.push(".");
    // Exclusive create with a random name: nothing another user placed
    // there (a file, a symbolic link) is written through.
    let (file, temp) = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".part")
        .tempfile_in(dir)?
        .into_parts();
    let mut out = std::io::BufWriter::new(file);
    let t = fill(&mut out)?;
    out.flush()?;
    out.get_ref().sync_all()?;
    if replace {
        temp.persist(path).map_err(|e| e.error)?;
    } else {
        temp.persist_noclobber(path).map_err(|e| e.error)?;
    }
    // The file is whole either way; its name is durable once its
    // directory is synced (best effort: a directory that cannot be
    // opened for that does not undo the write).
    sync_dir_or_warn(dir);
    Ok(t)
}

pub(crate) use codec::{hex, unhex};
pub use conversations::{Conversation, Summary};
pub use error::Error;
pub use handle::{Clock, PurgeTask, StoreHandle};
pub use history::{Appended, DeliveryState, Direction, History, MessageRef, Page, StoredMessage};
pub use keys::Cursor;
pub use media::{Media, is_media, media_owner};
pub use outbox::{MAX_QUEUED_ENVELOPE, Outbox, OutboxEntry};
pub use records::{Kind, MAX_RECORD_KEY, MaybeRecord, Record, RecordBatch, Records};
pub use spool::{
    Deposited, Expired, Held, MailboxStats, Removed, SEGMENT_BYTES, Spool, ToHold, Totals,
    digest_key,
};
pub use tombstones::{CLOCK_SLACK, MAX_TOMBSTONES, TOMBSTONE_LIFE};

/// The on-disk layout version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 2;

/// sled's page cache bound, in bytes.
const CACHE_CAPACITY: u64 = 64 * 1024 * 1024;

/// The `meta` tree: schema version (plaintext u32 BE) and the key check.
const META: TreeSpec = TreeSpec {
    name: "meta",
    max_plain: 64,
};
const SCHEMA_KEY: &[u8] = b"schema_version";
const KEY_CHECK_KEY: &[u8] = b"key_check";
/// The flush generation (u64 BE, plaintext), mirrored in the `STORE` marker.
const GENERATION_KEY: &[u8] = b"flush_generation";
/// Set (plaintext, one byte) by [`Store::restore`]: the store is an older
/// copy of a device, which its owner must not continue blindly (see
/// [`Store::restored`]).
const RESTORED_KEY: &[u8] = b"restored";
/// Sealed under the database key at creation; opening it proves the key.
const KEY_CHECK: &[u8] = b"meshchat/1/store-key-check";

/// An open store. Cheap to share by reference across threads; all methods
/// take `&self`.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
    /// The marker file and the last flush generation written to it; the
    /// lock also serialises flushes.
    watermark: std::sync::Mutex<(marker::Watermark, u64)>,
    sealer: Sealer,
    /// Conversations, message blocks, expiry entries and tombstones (see
    /// `keys`).
    history: sled::Tree,
    /// Serialises history writes: each reads blocks, changes them in memory
    /// and writes them back as one batch.
    history_lock: std::sync::Mutex<()>,
    /// Conversations that have (or had, since the store was opened)
    /// tombstones: an incoming message of any other is not looked up.
    tombstoned: std::sync::Mutex<std::collections::HashSet<[u8; 32]>>,
    outbox: sled::Tree,
    /// Serialises changes to the count of media bytes (read, changed,
    /// written back).
    media_lock: std::sync::Mutex<()>,
}

impl Store {
    /// Overwrites a conversation's record with bytes that do not open (for
    /// tests of what the node does with a damaged store).
    #[cfg(test)]
    pub(crate) fn damage_conversation_for_tests(&self, conv: &[u8; 32]) {
        let mut key = vec![keys::CONV_PREFIX];
        key.extend_from_slice(conv);
        self.history
            .insert(key, vec![0x5a; 60])
            .expect("test write");
    }

    /// Overwrites the outbox entry at `seq` with bytes that do not open.
    #[cfg(test)]
    pub(crate) fn damage_outbox_for_tests(&self, seq: u64) {
        self.outbox
            .insert(seq.to_be_bytes(), vec![0x5a; 60])
            .expect("test write");
    }

    /// Overwrites the record `key` of `kind` with bytes that do not open.
    #[cfg(test)]
    pub(crate) fn damage_record_for_tests(&self, kind: Kind, key: &[u8]) {
        self.db
            .open_tree(kind.spec().name)
            .expect("test tree")
            .insert(key, vec![0x5a; 60])
            .expect("test write");
    }

    /// Opens (or creates) the store in the directory `path` with the database
    /// key unlocked from its keystore.
    ///
    /// A new store records [`SCHEMA_VERSION`] and a key-check record and is
    /// flushed before this returns. An existing store must carry the same
    /// schema version ([`Error::UnknownSchema`]) and must have been created
    /// with the same key ([`Error::WrongKey`]).
    pub fn open(path: impl AsRef<Path>, key: &DataKey) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let rng = StdRng::try_from_rng(&mut SysRng).map_err(|e| Error::Entropy(e.to_string()))?;
        let sealer = Sealer::new(key.clone(), rng);
        let db = open_sled(&path).map_err(|source| Error::Open {
            path: path.clone(),
            source,
        })?;
        // The store's own directory may be new: its name is made durable
        // too (as far as the parent directory can be opened).
        if let Some(parent) = path.parent() {
            sync_dir_or_warn(parent);
        }
        let meta = db
            .open_tree(META.name)
            .map_err(Error::db(META.name, "open"))?;
        let generation = check_meta(&path, &db, &meta, &sealer)?;
        let watermark = std::sync::Mutex::new((marker::Watermark::open(&path)?, generation));
        let tree = |name: &'static str| db.open_tree(name).map_err(Error::db(name, "open"));
        let store = Self {
            history: tree(blocks::HISTORY)?,
            history_lock: std::sync::Mutex::new(()),
            tombstoned: std::sync::Mutex::new(std::collections::HashSet::new()),
            outbox: tree(outbox::OUTBOX.name)?,
            media_lock: std::sync::Mutex::new(()),
            path,
            db,
            meta,
            watermark,
            sealer,
        };
        store.history().find_tombstoned()?;
        let repaired = store.history().repair_tails()?;
        if repaired > 0 {
            tracing::info!(path = %store.path.display(), repaired, "conversation records brought in line with their newest messages");
        }
        Ok(store)
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Message history and the conversation list.
    pub fn history(&self) -> History<'_> {
        History::new(self)
    }

    /// Holds the history write lock. A poisoned lock only means a writer
    /// panicked before its batch; nothing half-written is visible.
    fn lock_history(&self) -> std::sync::MutexGuard<'_, ()> {
        self.history_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Envelopes waiting for an acknowledgement.
    pub fn outbox(&self) -> Outbox<'_> {
        Outbox::new(self)
    }

    /// Media chunks and the media messages being fetched.
    pub fn media(&self) -> Result<Media<'_>, Error> {
        Media::new(self)
    }

    /// The records of one kind (contacts, sessions, prekeys…).
    pub fn records(&self, kind: Kind) -> Result<Records<'_>, Error> {
        Records::new(self, kind)
    }

    /// Whether this store was restored from a backup and its owner has not
    /// yet said it dealt with that ([`Store::clear_restored`]). A node
    /// drops what it must not continue from an older copy of itself (the
    /// sending state of its sessions and sender keys) before anything else.
    pub fn restored(&self) -> Result<bool, Error> {
        Ok(self
            .meta
            .get(RESTORED_KEY)
            .map_err(Error::db(META.name, "read"))?
            .is_some())
    }

    /// Clears the mark [`Store::restored`] reads (durable after the next
    /// flush).
    pub fn clear_restored(&self) -> Result<(), Error> {
        self.meta
            .remove(RESTORED_KEY)
            .map_err(Error::db(META.name, "write"))?;
        Ok(())
    }

    /// Bytes the database files take on disk (for a relay's disk budget).
    pub fn size_on_disk(&self) -> Result<u64, Error> {
        self.db
            .size_on_disk()
            .map_err(Error::db("(all trees)", "size"))
    }

    /// Writes everything so far to disk and waits for it: the durability
    /// point. A write is only safe to acknowledge — to a peer (custody or
    /// delivery receipt) or to the user ("sent") — after a `flush` that
    /// followed it returned `Ok`. Returns the number of bytes written.
    ///
    /// sled's log write ends with an `fdatasync` (the vendored sled: 0.34
    /// as published calls `sync_file_range`, which leaves the file's size
    /// and the disk's write cache unsynced).
    ///
    /// Each flush also raises the store's flush generation and records it in
    /// the `STORE` marker after sled's data is on disk, so a data file that
    /// later loses flushed writes is detected on open ([`Error::Damaged`]).
    /// The marker itself is forced to the device at most once a second (and
    /// when the store closes); see `marker::Watermark::set`.
    pub fn flush(&self) -> Result<usize, Error> {
        // A poisoned lock only means a flush panicked; the state is a plain
        // counter and file handle, still usable.
        let mut guard = self.watermark.lock().unwrap_or_else(|p| p.into_inner());
        // Only a tampered file (a restored backup, say) gets here: one
        // flush a microsecond would take half a million years.
        let next = guard.1.checked_add(1).ok_or_else(|| Error::Damaged {
            path: self.path.clone(),
            what: "the store's flush generation is at its highest value".into(),
        })?;
        self.meta
            .insert(GENERATION_KEY, &next.to_be_bytes())
            .map_err(Error::db(META.name, "write"))?;
        // sled (as vendored, see vendor/sled/PATCHES.md) ends each log
        // write with `fdatasync`: the data, the file's size and the device's
        // write cache, in one sync.
        let bytes = self.db.flush().map_err(Error::db("(all trees)", "flush"))?;
        guard.0.set(next).map_err(|e| Error::Damaged {
            path: self.path.clone(),
            what: format!("cannot record the flush in the store marker: {e}"),
        })?;
        guard.1 = next;
        Ok(bytes)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Best effort: a marker left a second behind only narrows the check
        // on the next open.
        let mut guard = self.watermark.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = guard.0.sync() {
            tracing::warn!(path = %self.path.display(), error = %e, "store marker not synced on close");
        }
    }
}

/// How long [`open_sled`] waits for a directory lock that a just-closed
/// handle in this process is still releasing.
const LOCK_RELEASE_WAIT: Duration = Duration::from_secs(2);

/// Opens the sled database with this store's settings.
///
/// sled releases its directory lock from a background I/O thread shortly
/// after the last handle drops, so a process that closes and reopens its
/// store (a restart) can briefly find it still locked. That case is retried
/// for at most [`LOCK_RELEASE_WAIT`]; any other error, or a lock that stays
/// held (another process), is returned.
pub(crate) fn open_sled(path: &Path) -> Result<sled::Db, sled::Error> {
    let deadline = Instant::now() + LOCK_RELEASE_WAIT;
    loop {
        let result = sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_CAPACITY)
            // No background flusher: durability comes from explicit `flush`
            // calls at the points where someone is told.
            .flush_every_ms(None)
            .open();
        match result {
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// Initialises a new store's meta tree, or checks an existing one's schema
/// version, key and identity (against the `STORE` marker).
fn check_meta(
    path: &Path,
    db: &sled::Db,
    meta: &sled::Tree,
    sealer: &Sealer,
) -> Result<u64, Error> {
    let marker = marker::read(path)?;
    let generation = match meta
        .get(GENERATION_KEY)
        .map_err(Error::db(META.name, "read"))?
    {
        None => 0,
        Some(v) => u64::from_be_bytes(v.as_ref().try_into().map_err(|_| Error::CorruptMeta {
            path: path.to_path_buf(),
            what: "flush generation is not 8 bytes",
        })?),
    };
    let schema = meta.get(SCHEMA_KEY).map_err(Error::db(META.name, "read"))?;
    let check = meta
        .get(KEY_CHECK_KEY)
        .map_err(Error::db(META.name, "read"))?;
    match (schema, check) {
        (None, None) => {
            if marker.is_some() {
                return Err(Error::Damaged {
                    path: path.to_path_buf(),
                    what: "its data file is empty or unreadable although a store was created \
                           here"
                        .into(),
                });
            }
            let sealed = sealer.seal(&META, KEY_CHECK_KEY, &KEY_CHECK)?;
            let mut batch = sled::Batch::default();
            batch.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes());
            batch.insert(KEY_CHECK_KEY, sealed.as_slice());
            meta.apply_batch(batch)
                .map_err(Error::db(META.name, "initialise"))?;
            db.flush().map_err(Error::db(META.name, "flush"))?;
            let id = marker::store_id(&sealed);
            marker::create(path, &marker::Marker { id, generation: 0 })?;
            Ok(0)
        }
        (Some(schema), check) => {
            let bytes: [u8; 4] = schema.as_ref().try_into().map_err(|_| Error::CorruptMeta {
                path: path.to_path_buf(),
                what: "schema version is not 4 bytes",
            })?;
            let found = u32::from_be_bytes(bytes);
            if found != SCHEMA_VERSION {
                return Err(Error::UnknownSchema {
                    path: path.to_path_buf(),
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
            let check = check.ok_or_else(|| Error::CorruptMeta {
                path: path.to_path_buf(),
                what: "key-check record missing",
            })?;
            match sealer.open::<Vec<u8>>(&META, KEY_CHECK_KEY, &check) {
                Ok(plain) if plain == KEY_CHECK => {}
                Ok(_) | Err(Error::Decrypt { .. }) => {
                    return Err(Error::WrongKey {
                        path: path.to_path_buf(),
                    });
                }
                Err(e) => return Err(e),
            }
            let id = marker::store_id(&check);
            match marker {
                Some(m) if m.id != id => Err(Error::Damaged {
                    path: path.to_path_buf(),
                    what: "its data file belongs to another store than the one created here".into(),
                }),
                Some(m) if m.generation > generation => Err(Error::Damaged {
                    path: path.to_path_buf(),
                    what: format!(
                        "its data file ends at flush {generation} but flush {} completed: \
                         writes reported as durable are missing",
                        m.generation
                    ),
                }),
                Some(_) => Ok(generation),
                // Created by a crash between initialising and writing the
                // marker, or restored from a backup: name it now.
                None => {
                    marker::create(path, &marker::Marker { id, generation })?;
                    Ok(generation)
                }
            }
        }
        (None, Some(_)) => Err(Error::CorruptMeta {
            path: path.to_path_buf(),
            what: "schema version missing",
        }),
    }
}

/// Marks the database at `db` restored (see [`Store::restored`]), unflushed.
pub(crate) fn mark_restored(db: &sled::Db) -> Result<(), Error> {
    db.open_tree(META.name)
        .map_err(Error::db(META.name, "open"))?
        .insert(RESTORED_KEY, &[1u8])
        .map_err(Error::db(META.name, "write"))?;
    Ok(())
}
