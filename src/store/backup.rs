//! Getting data out: a conversation's history as JSON for the user, and a
//! backup of the whole (still encrypted) database that restores into a new
//! directory.
//!
//! Backup format (all integers big-endian):
//!
//! ```text
//! "MESHCHAT-BACKUP\0"  u32 format version (1)  u32 schema version
//! repeated per tree:   0x01 ‖ u16 name length ‖ name
//!                      repeated per record: 0x02 ‖ u32 key length ‖ key ‖ u32 value length ‖ value
//! end:                 0x00 ‖ SHA-256 of every byte before it
//! ```
//!
//! Values stay sealed under the database key, so a backup is as safe to keep
//! as the database itself, and restoring needs the same keystore.

use std::io::{Read, Write};
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::codec::hex;
use super::{Error, History, SCHEMA_VERSION, Store, StoredMessage};

const MAGIC: &[u8; 16] = b"MESHCHAT-BACKUP\0";
const FORMAT: u32 = 1;
/// Longest tree name and key accepted from a backup.
const MAX_NAME: usize = 256;
const MAX_KEY: usize = 1024;
/// Longest value accepted from a backup (the largest sealed record).
const MAX_VALUE: usize = 512 * 1024;

/// One message in a JSON export.
#[derive(Serialize)]
struct ExportedMessage {
    msg_id: String,
    sender: String,
    lamport: u64,
    sent_at: u64,
    state: String,
    expires_at: Option<u64>,
    /// The body as text when it is UTF-8 …
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    /// … and as hex when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    body_hex: Option<String>,
}

impl From<&StoredMessage> for ExportedMessage {
    fn from(m: &StoredMessage) -> Self {
        let text = String::from_utf8(m.body.clone()).ok();
        Self {
            msg_id: hex(&m.msg_id),
            sender: hex(&m.sender),
            lamport: m.lamport,
            sent_at: m.sent_at,
            state: format!("{:?}", m.state).to_lowercase(),
            expires_at: m.expires_at,
            body_hex: text.is_none().then(|| hex(&m.body)),
            text,
        }
    }
}

fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Backup(format!("{op}: {e}"))
}

impl History<'_> {
    /// Writes the whole history of `conv_id` as one JSON document, oldest
    /// message first, streaming one block at a time. An unknown conversation is
    /// [`Error::UnknownConversation`].
    pub fn export_json(&self, conv_id: &[u8; 32], out: &mut impl Write) -> Result<usize, Error> {
        let conv = self
            .conversation(conv_id)?
            .ok_or_else(|| Error::UnknownConversation {
                conv_id: hex(conv_id),
            })?;
        let header = serde_json::json!({
            "format": "meshchat-export",
            "version": 1,
            "conversation": {
                "id": hex(&conv.id),
                "title": conv.title,
                "retention_seconds": conv.retention,
            },
        });
        let header = serde_json::to_string(&header).map_err(|e| Error::Backup(e.to_string()))?;
        // Re-open the object to append the messages array.
        let head = header.strip_suffix('}').unwrap_or(&header);
        write!(out, "{head},\"messages\":[").map_err(io("write export"))?;
        let mut first = true;
        let n = self.for_each_oldest_first(conv_id, |m| {
            if !first {
                out.write_all(b",").map_err(io("write export"))?;
            }
            first = false;
            serde_json::to_writer(&mut *out, &ExportedMessage::from(&m))
                .map_err(|e| Error::Backup(e.to_string()))
        })?;
        out.write_all(b"]}\n").map_err(io("write export"))?;
        Ok(n)
    }
}

/// Writes `bytes` to `out` and into the running checksum.
struct Hashed<W> {
    out: W,
    hash: Sha256,
}

impl<W: Write> Hashed<W> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.hash.update(bytes);
        self.out.write_all(bytes).map_err(io("write backup"))
    }
}

/// Reads exactly `n` bytes and feeds them to the checksum.
struct Checked<R> {
    input: R,
    hash: Sha256,
}

impl<R: Read> Checked<R> {
    fn take(&mut self, n: usize) -> Result<Vec<u8>, Error> {
        let mut buf = vec![0u8; n];
        self.input.read_exact(&mut buf).map_err(io("read backup"))?;
        self.hash.update(&buf);
        Ok(buf)
    }

    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A length-prefixed field, its length checked before allocating.
    fn field(&mut self, len_bytes: usize, max: usize, what: &str) -> Result<Vec<u8>, Error> {
        let len = if len_bytes == 2 {
            let b = self.take(2)?;
            usize::from(u16::from_be_bytes([b[0], b[1]]))
        } else {
            self.u32()? as usize
        };
        if len > max {
            return Err(Error::Backup(format!(
                "{what} of {len} bytes exceeds {max}"
            )));
        }
        self.take(len)
    }
}

impl Store {
    /// Writes a backup of every tree to `out` (flushing first). Returns the
    /// number of records written.
    pub fn backup(&self, out: &mut impl Write) -> Result<u64, Error> {
        self.flush()?;
        let mut w = Hashed {
            out,
            hash: Sha256::new(),
        };
        w.put(MAGIC)?;
        w.put(&FORMAT.to_be_bytes())?;
        w.put(&SCHEMA_VERSION.to_be_bytes())?;
        let mut records = 0u64;
        for name in self.db.tree_names() {
            let tree = self
                .db
                .open_tree(&name)
                .map_err(Error::db("(backup)", "open"))?;
            let name_len = u16::try_from(name.len())
                .map_err(|_| Error::Backup("tree name too long".into()))?;
            w.put(&[1])?;
            w.put(&name_len.to_be_bytes())?;
            w.put(&name)?;
            for item in tree.iter() {
                let (k, v) = item.map_err(Error::db("(backup)", "scan"))?;
                w.put(&[2])?;
                w.put(&(k.len() as u32).to_be_bytes())?;
                w.put(&k)?;
                w.put(&(v.len() as u32).to_be_bytes())?;
                w.put(&v)?;
                records += 1;
            }
        }
        w.put(&[0])?;
        let digest = w.hash.finalize();
        w.out.write_all(&digest).map_err(io("write backup"))?;
        w.out.flush().map_err(io("write backup"))?;
        Ok(records)
    }

    /// Restores a backup into `path`, which must not exist yet or be an empty
    /// directory, and opens it with `key` (which must be the key the backup
    /// was made under). A damaged or truncated backup is an error and the
    /// half-written directory is removed. The store is marked restored
    /// ([`Store::restored`]): it is an older copy of its device.
    pub fn restore(
        input: &mut impl Read,
        path: &Path,
        key: &crate::crypto::DataKey,
    ) -> Result<Store, Error> {
        if path.exists()
            && std::fs::read_dir(path)
                .map_err(io("inspect restore target"))?
                .next()
                .is_some()
        {
            return Err(Error::Backup(format!(
                "restore target {} is not empty: choose a new directory",
                path.display()
            )));
        }
        // On any error (a damaged backup, or another key than the one it
        // was made under) the directory goes, so the restore can be run
        // again into the same place.
        let restored = Self::restore_into(input, path).and_then(|()| Store::open(path, key));
        match restored {
            Ok(store) => Ok(store),
            Err(e) => {
                let _ = std::fs::remove_dir_all(path);
                Err(e)
            }
        }
    }

    pub(super) fn restore_into(input: &mut impl Read, path: &Path) -> Result<(), Error> {
        let mut r = Checked {
            input,
            hash: Sha256::new(),
        };
        if r.take(16)? != MAGIC {
            return Err(Error::Backup("not a meshchat backup".into()));
        }
        let format = r.u32()?;
        if format != FORMAT {
            return Err(Error::Backup(format!(
                "backup format {format}, this build reads {FORMAT}"
            )));
        }
        let schema = r.u32()?;
        if schema != SCHEMA_VERSION {
            return Err(Error::UnknownSchema {
                path: path.to_path_buf(),
                found: schema,
                supported: SCHEMA_VERSION,
            });
        }
        let db = super::open_sled(path).map_err(|source| Error::Open {
            path: path.to_path_buf(),
            source,
        })?;
        // Marked restored before any record is written, and flushed with
        // them: a restore cut short at any point must not leave a store
        // that looks like the device's own (its sessions would send again
        // from the backup's counters, with message keys already used);
        // sled may write its buffers before the flush.
        super::mark_restored(&db)?;
        let mut tree: Option<sled::Tree> = None;
        loop {
            match r.u8()? {
                0 => break,
                1 => {
                    let name = r.field(2, MAX_NAME, "tree name")?;
                    tree = Some(db.open_tree(name).map_err(Error::db("(restore)", "open"))?);
                }
                2 => {
                    let k = r.field(4, MAX_KEY, "record key")?;
                    let v = r.field(4, MAX_VALUE, "record value")?;
                    let t = tree
                        .as_ref()
                        .ok_or_else(|| Error::Backup("record before any tree".into()))?;
                    t.insert(k, v).map_err(Error::db("(restore)", "write"))?;
                }
                tag => return Err(Error::Backup(format!("unknown section tag {tag}"))),
            }
        }
        let want = r.hash.finalize();
        let mut got = [0u8; 32];
        r.input
            .read_exact(&mut got)
            .map_err(io("read backup checksum"))?;
        if got[..] != want[..] {
            return Err(Error::Backup(
                "checksum mismatch: the backup is damaged".into(),
            ));
        }
        db.flush().map_err(Error::db("(restore)", "flush"))?;
        Ok(())
    }
}
