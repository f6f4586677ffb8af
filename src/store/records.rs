//! Small keyed records: contacts, groups, ratchet sessions, sender keys,
//! prekeys and this device's own keys.
//!
//! Each kind lives in its own sled tree; values are opaque bytes that the
//! owning module encodes (a ratchet session's `to_bytes`, a contact's
//! postcard form…) and that are sealed here under the database key, bound to
//! their tree and key like every other record.

use super::codec::{TreeSpec, hex};
use super::{Error, Store};

/// Which record tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// Contacts (accounts, their devices, verification state), by account key.
    Contacts,
    /// Group metadata and membership, by group id.
    Groups,
    /// Double Ratchet sessions, by peer device key.
    Sessions,
    /// Sender keys (ours and other members'), by group id ‖ device key ‖ key id.
    SenderKeys,
    /// This device's prekey store.
    Prekeys,
    /// This device's identity and mailbox keys.
    Identity,
    /// On a relay: the prekey bundles and one-time prekeys devices
    /// published, by mailbox id.
    HeldPrekeys,
    /// Encrypted media chunks, by name (the SHA-256 of the chunk), each
    /// with the id of the message it came with.
    Media,
    /// Media messages whose chunks are still being fetched, by message id.
    MediaWanted,
    /// Contact requests (what each introduced device sent meanwhile) and
    /// declined devices, by identity key.
    Requests,
}

/// Largest key of a record.
pub const MAX_RECORD_KEY: usize = 128;

impl Kind {
    /// Every kind, for backups and tests.
    pub const ALL: [Kind; 10] = [
        Kind::Contacts,
        Kind::Groups,
        Kind::Sessions,
        Kind::SenderKeys,
        Kind::Prekeys,
        Kind::Identity,
        Kind::HeldPrekeys,
        Kind::Media,
        Kind::MediaWanted,
        Kind::Requests,
    ];

    pub(crate) const fn spec(self) -> TreeSpec {
        match self {
            Kind::Contacts => TreeSpec {
                name: "contacts",
                max_plain: 16 * 1024,
            },
            Kind::Groups => TreeSpec {
                name: "groups",
                max_plain: 64 * 1024,
            },
            // A contact's record holds its session and the one it
            // replaced, each up to ~160 KiB with a full skipped-key store,
            // and the set-ups seen (64 × 32 bytes).
            Kind::Sessions => TreeSpec {
                name: "sessions",
                max_plain: 2 * crate::crypto::limits::SESSION_STATE_MAX + 4 * 1024,
            },
            Kind::SenderKeys => TreeSpec {
                name: "sender_keys",
                max_plain: 128 * 1024,
            },
            Kind::Prekeys => TreeSpec {
                name: "prekeys",
                max_plain: 64 * 1024,
            },
            Kind::Identity => TreeSpec {
                name: "identity",
                max_plain: 4 * 1024,
            },
            // A bundle (≤ 4 KiB) and 100 one-time prekeys (~110 bytes each).
            Kind::HeldPrekeys => TreeSpec {
                name: "held_prekeys",
                max_plain: 32 * 1024,
            },
            // A message id and one encrypted chunk.
            Kind::Media => TreeSpec {
                name: "media",
                max_plain: 64 + crate::crypto::media::MAX_SEALED_CHUNK,
            },
            Kind::MediaWanted => TreeSpec {
                name: "media_wanted",
                max_plain: 1024,
            },
            Kind::Requests => TreeSpec {
                name: "requests",
                max_plain: crate::node::requests::RECORD_MAX,
            },
        }
    }
}

/// Writes to one kind's records, applied at once ([`Records::apply`]).
#[derive(Default)]
pub struct RecordBatch(sled::Batch);

impl RecordBatch {
    /// Removes the record at `key` when applied.
    pub fn remove(&mut self, key: &[u8]) {
        self.0.remove(key);
    }
}

/// A record's key and value, as [`Records::scan`] returns them.
pub type Record = (Vec<u8>, Vec<u8>);

/// A record's key and value, `None` if the value does not open.
pub type MaybeRecord = (Vec<u8>, Option<Vec<u8>>);

/// The records of one [`Kind`] in a [`Store`].
#[derive(Debug, Clone)]
pub struct Records<'a> {
    store: &'a Store,
    kind: Kind,
    tree: sled::Tree,
}

impl<'a> Records<'a> {
    pub(super) fn new(store: &'a Store, kind: Kind) -> Result<Self, Error> {
        let spec = kind.spec();
        let tree = store
            .db
            .open_tree(spec.name)
            .map_err(Error::db(spec.name, "open"))?;
        Ok(Self { store, kind, tree })
    }

    /// How many records there are (walks the keys; nothing is decrypted).
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    fn check_key(&self, key: &[u8]) -> Result<(), Error> {
        if key.is_empty() || key.len() > MAX_RECORD_KEY {
            return Err(Error::TooLarge {
                tree: self.kind.spec().name,
                key: hex(key),
                len: key.len(),
                max: MAX_RECORD_KEY,
            });
        }
        Ok(())
    }

    /// The record at `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.check_key(key)?;
        let spec = self.kind.spec();
        self.tree
            .get(key)
            .map_err(Error::db(spec.name, "read"))?
            .map(|sealed| self.store.sealer.open::<Vec<u8>>(&spec, key, &sealed))
            .transpose()
    }

    /// Whether there is a record at `key` (without opening it).
    pub fn contains(&self, key: &[u8]) -> Result<bool, Error> {
        self.check_key(key)?;
        self.tree
            .contains_key(key)
            .map_err(Error::db(self.kind.spec().name, "read"))
    }

    /// Writes the record at `key` (durable after [`Store::flush`]).
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        self.check_key(key)?;
        let spec = self.kind.spec();
        let sealed = self.store.sealer.seal(&spec, key, &value)?;
        self.tree
            .insert(key, sealed)
            .map_err(Error::db(spec.name, "write"))?;
        Ok(())
    }

    /// How many bytes the record at `key` takes sealed (nothing is
    /// decrypted); `None` if there is none.
    pub fn sealed_len(&self, key: &[u8]) -> Result<Option<u64>, Error> {
        self.check_key(key)?;
        let spec = self.kind.spec();
        Ok(self
            .tree
            .get(key)
            .map_err(Error::db(spec.name, "read"))?
            .map(|v| v.len() as u64))
    }

    /// A set of writes to apply at once ([`Self::apply`]).
    pub fn batch(&self) -> RecordBatch {
        RecordBatch::default()
    }

    /// Seals `value` for `key` into `batch`; returns how many bytes the
    /// record takes sealed.
    pub fn stage(&self, batch: &mut RecordBatch, key: &[u8], value: &[u8]) -> Result<u64, Error> {
        self.check_key(key)?;
        let sealed = self.store.sealer.seal(&self.kind.spec(), key, &value)?;
        let len = sealed.len() as u64;
        batch.0.insert(key, sealed);
        Ok(len)
    }

    /// Applies `batch`: all its writes or, after a crash, none.
    pub fn apply(&self, batch: RecordBatch) -> Result<(), Error> {
        self.tree
            .apply_batch(batch.0)
            .map_err(Error::db(self.kind.spec().name, "write"))
    }

    /// The sum of the sealed sizes of the records whose key passes
    /// `count` (nothing is decrypted; every record is read).
    pub fn sealed_bytes(&self, count: impl Fn(&[u8]) -> bool) -> Result<u64, Error> {
        let spec = self.kind.spec();
        let mut total = 0u64;
        for item in self.tree.iter() {
            let (key, sealed) = item.map_err(Error::db(spec.name, "scan"))?;
            if count(&key) {
                total = total.saturating_add(sealed.len() as u64);
            }
        }
        Ok(total)
    }

    /// Removes the record at `key`; returns whether there was one.
    pub fn remove(&self, key: &[u8]) -> Result<bool, Error> {
        self.check_key(key)?;
        let spec = self.kind.spec();
        Ok(self
            .tree
            .remove(key)
            .map_err(Error::db(spec.name, "remove"))?
            .is_some())
    }

    /// Up to `limit` records after the key `after` (from the first if
    /// `None`), in key order: each key and value (`None`: it does not
    /// open). For walking a large kind in steps.
    pub fn step(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<MaybeRecord>, Error> {
        use std::ops::Bound;
        let spec = self.kind.spec();
        let from = match after {
            Some(k) => Bound::Excluded(k.to_vec()),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for item in self.tree.range::<Vec<u8>, _>((from, Bound::Unbounded)) {
            if out.len() >= limit {
                break;
            }
            let (key, sealed) = item.map_err(Error::db(spec.name, "scan"))?;
            let value = self.store.sealer.open::<Vec<u8>>(&spec, &key, &sealed).ok();
            out.push((key.to_vec(), value));
        }
        Ok(out)
    }

    /// Every record whose key starts with `prefix`, in key order.
    pub fn scan(&self, prefix: &[u8]) -> Result<Vec<Record>, Error> {
        let spec = self.kind.spec();
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(prefix) {
            let (key, sealed) = item.map_err(Error::db(spec.name, "scan"))?;
            let value = self.store.sealer.open::<Vec<u8>>(&spec, &key, &sealed)?;
            out.push((key.to_vec(), value));
        }
        Ok(out)
    }
}
