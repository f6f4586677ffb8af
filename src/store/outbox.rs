//! The outbox: every envelope this device sent that no one has acknowledged
//! yet, so a crash or restart never loses a message the user was told is on
//! its way.
//!
//! `outbox`: `seq (u64 BE)` → sealed [`OutboxEntry`]. Sequence numbers come
//! from sled's persistent id generator, so they only grow, also across
//! restarts: iterating the tree returns entries in the order they were
//! queued.

use serde::{Deserialize, Serialize};

use super::codec::{TreeSpec, hex};
use super::{Error, Store};
use crate::crypto::limits::MAX_ENVELOPE;

/// Longest `envelope` an entry may carry: room for a payload and an
/// encrypted frame of it (the node keeps the frame its retries send).
pub const MAX_QUEUED_ENVELOPE: usize = 2 * MAX_ENVELOPE + 768;

pub(crate) const OUTBOX: TreeSpec = TreeSpec {
    name: "outbox",
    max_plain: MAX_QUEUED_ENVELOPE + 256,
};

/// One queued envelope with its retry state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Position in the queue (assigned by [`Outbox::push`]).
    pub seq: u64,
    /// The message it carries (for receipts and for telling the user).
    pub msg_id: [u8; 16],
    /// The device it is addressed to (its identity key).
    pub recipient: [u8; 32],
    /// What is owed, encoded by the node (the payload, and the frame its
    /// retries send; the store does not look inside).
    #[serde(with = "serde_bytes")]
    pub envelope: Vec<u8>,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Not to be retried before this time (Unix seconds).
    pub next_attempt_at: u64,
    /// Given up after this time (Unix seconds): the sender is told.
    pub expires_at: u64,
}

/// The outbox of a [`Store`].
#[derive(Debug, Clone, Copy)]
pub struct Outbox<'a> {
    store: &'a Store,
}

impl<'a> Outbox<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        Self { store }
    }

    fn key(seq: u64) -> [u8; 8] {
        seq.to_be_bytes()
    }

    fn put(&self, entry: &OutboxEntry) -> Result<(), Error> {
        let key = Self::key(entry.seq);
        let sealed = self.store.sealer.seal(&OUTBOX, &key, entry)?;
        self.store
            .outbox
            .insert(key, sealed)
            .map_err(Error::db(OUTBOX.name, "write"))?;
        Ok(())
    }

    /// Queues an envelope; its `seq` is assigned here and returned. Durable
    /// once a later [`Store::flush`] returns: flush before showing "sent".
    pub fn push(
        &self,
        msg_id: [u8; 16],
        recipient: [u8; 32],
        envelope: Vec<u8>,
        now: u64,
        expires_at: u64,
    ) -> Result<OutboxEntry, Error> {
        let seq = self.positions(1)?[0];
        self.push_at(seq, msg_id, recipient, envelope, now, expires_at)
    }

    /// `n` new queue positions, increasing and above every entry queued
    /// so far, for [`Outbox::push_at`]. A caller may name a position (in
    /// a frame's acknowledgement) before its entry is written; it must
    /// write them before it asks for more.
    pub fn positions(&self, n: usize) -> Result<Vec<u64>, Error> {
        // sled's id generator only grows, but starts again from zero in a
        // database restored from a backup: never go below the last entry.
        let mut next = self
            .store
            .outbox
            .last()
            .map_err(Error::db(OUTBOX.name, "read"))?
            .and_then(|(k, _)| <[u8; 8]>::try_from(k.as_ref()).ok())
            .map_or(0, |k| u64::from_be_bytes(k).saturating_add(1));
        let mut seqs = Vec::with_capacity(n);
        for _ in 0..n {
            let generated = self
                .store
                .db
                .generate_id()
                .map_err(Error::db(OUTBOX.name, "generate id"))?;
            let seq = generated.max(next);
            next = seq.saturating_add(1);
            seqs.push(seq);
        }
        Ok(seqs)
    }

    /// Queues an envelope at `seq`, a position from [`Outbox::positions`].
    pub fn push_at(
        &self,
        seq: u64,
        msg_id: [u8; 16],
        recipient: [u8; 32],
        envelope: Vec<u8>,
        now: u64,
        expires_at: u64,
    ) -> Result<OutboxEntry, Error> {
        let entry = OutboxEntry {
            seq,
            msg_id,
            recipient,
            envelope,
            attempts: 0,
            next_attempt_at: now,
            expires_at,
        };
        self.put(&entry)?;
        Ok(entry)
    }

    /// The entry at position `seq`, if still queued.
    pub fn get(&self, seq: u64) -> Result<Option<OutboxEntry>, Error> {
        let key = Self::key(seq);
        match self
            .store
            .outbox
            .get(key)
            .map_err(Error::db(OUTBOX.name, "read"))?
        {
            Some(sealed) => Ok(Some(self.store.sealer.open(&OUTBOX, &key, &sealed)?)),
            None => Ok(None),
        }
    }

    /// Every queued entry, oldest first. Here and in the other scans, an
    /// entry that does not open is skipped (and logged), not an error:
    /// it stays on disk untouched.
    pub fn all(&self) -> Result<Vec<OutboxEntry>, Error> {
        self.scan(|_| true, usize::MAX)
    }

    /// Up to `limit` entries due for an attempt at `now` and not expired,
    /// oldest first.
    pub fn due(&self, now: u64, limit: usize) -> Result<Vec<OutboxEntry>, Error> {
        self.scan(|e| e.next_attempt_at <= now && e.expires_at > now, limit)
    }

    fn scan(
        &self,
        keep: impl Fn(&OutboxEntry) -> bool,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, Error> {
        let mut out = Vec::new();
        for item in self.store.outbox.iter() {
            if out.len() >= limit {
                break;
            }
            let (key, sealed) = item.map_err(Error::db(OUTBOX.name, "scan"))?;
            let entry: OutboxEntry = match self.store.sealer.open(&OUTBOX, &key, &sealed) {
                Ok(e) => e,
                // One entry that does not open (a damaged disk block) must
                // not stop every other message: it is left as it is, never
                // sent, for whoever can repair it.
                Err(e) if e.is_damaged_record() => {
                    tracing::warn!(position = %hex(&key), error = %e,
                        "a queued message that does not open is left in the outbox");
                    continue;
                }
                Err(e) => return Err(e),
            };
            if keep(&entry) {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// Writes `entry` back, changed (the node keeps the frame its retries
    /// send in `envelope`), at its `seq`.
    pub fn rewrite(&self, entry: &OutboxEntry) -> Result<(), Error> {
        self.put(entry)
    }

    /// Records a failed attempt: one more attempt, next try at `retry_at`.
    /// Returns `false` if the entry is no longer queued (acknowledged meanwhile).
    pub fn record_attempt(&self, seq: u64, retry_at: u64) -> Result<bool, Error> {
        let key = Self::key(seq);
        let Some(sealed) = self
            .store
            .outbox
            .get(key)
            .map_err(Error::db(OUTBOX.name, "read"))?
        else {
            return Ok(false);
        };
        let mut entry: OutboxEntry = self.store.sealer.open(&OUTBOX, &key, &sealed)?;
        entry.attempts = entry.attempts.saturating_add(1);
        entry.next_attempt_at = retry_at;
        self.put(&entry)?;
        Ok(true)
    }

    /// Removes an acknowledged entry. Returns whether it was queued.
    pub fn ack(&self, seq: u64) -> Result<bool, Error> {
        Ok(self
            .store
            .outbox
            .remove(Self::key(seq))
            .map_err(Error::db(OUTBOX.name, "remove"))?
            .is_some())
    }

    /// Removes every entry carrying `msg_id` to `recipient` (an end-to-end
    /// receipt arrived by another path). Returns how many.
    pub fn ack_message(&self, msg_id: &[u8; 16], recipient: &[u8; 32]) -> Result<usize, Error> {
        let matching = self.scan(
            |e| &e.msg_id == msg_id && &e.recipient == recipient,
            usize::MAX,
        )?;
        for e in &matching {
            self.ack(e.seq)?;
        }
        Ok(matching.len())
    }

    /// Removes and returns every entry whose expiry is at or before `now`, so
    /// the caller can tell the user those messages were not delivered.
    pub fn take_expired(&self, now: u64) -> Result<Vec<OutboxEntry>, Error> {
        let expired = self.scan(|e| e.expires_at <= now, usize::MAX)?;
        for e in &expired {
            self.ack(e.seq)?;
        }
        Ok(expired)
    }

    /// Number of queued entries.
    pub fn len(&self) -> usize {
        self.store.outbox.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.store.outbox.is_empty()
    }
}

impl std::fmt::Display for OutboxEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "outbox #{} (message {})", self.seq, hex(&self.msg_id))
    }
}
