//! Relay mailboxes: sealed envelopes held for devices that are offline.
//!
//! `mailbox`: `mailbox id (32) ‖ seq (u64 BE)` → sealed [`Held`];
//! `mailbox_meta`: `mailbox id` → sealed [`MailboxStats`]. Sequence numbers
//! only grow within a mailbox, so a fetch cursor ("everything after seq n")
//! never skips or repeats an envelope. Deposits and acknowledgements change
//! both trees in one transaction; a custody receipt may be sent once a
//! [`Store::flush`] after the deposit returned.

use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::ConflictableTransactionError as TxError;

use super::codec::{TreeSpec, hex};
use super::{Error, Store};
use crate::crypto::limits::MAX_ENVELOPE;

pub(crate) const MAILBOX: TreeSpec = TreeSpec {
    name: "mailbox",
    max_plain: MAX_ENVELOPE + 64,
};
pub(crate) const MAILBOX_META: TreeSpec = TreeSpec {
    name: "mailbox_meta",
    max_plain: 64,
};

/// One envelope held for a mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// Position in its mailbox.
    pub seq: u64,
    /// The envelope's own id.
    pub envelope_id: [u8; 16],
    /// When it was deposited (Unix seconds).
    pub deposited_at: u64,
    /// When it must be dropped (Unix seconds).
    pub expires_at: u64,
    /// The encoded envelope.
    #[serde(with = "serde_bytes")]
    pub envelope: Vec<u8>,
}

/// Counters of one mailbox (for quotas and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxStats {
    /// Envelopes held.
    pub count: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// The seq the next deposit gets.
    pub next_seq: u64,
}

/// An envelope dropped at its expiry: `(mailbox id, envelope id)`, so the
/// relay can tell the sender.
pub type Expired = ([u8; 32], [u8; 16]);

/// The relay mailboxes of a [`Store`].
#[derive(Debug, Clone, Copy)]
pub struct Mailboxes<'a> {
    store: &'a Store,
}

fn held_key(mailbox: &[u8; 32], seq: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(mailbox);
    k[32..].copy_from_slice(&seq.to_be_bytes());
    k
}

impl<'a> Mailboxes<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        Self { store }
    }

    /// Counters of `mailbox` (zero if it holds nothing).
    pub fn stats(&self, mailbox: &[u8; 32]) -> Result<MailboxStats, Error> {
        match self
            .store
            .mailbox_meta
            .get(mailbox)
            .map_err(Error::db(MAILBOX_META.name, "read"))?
        {
            None => Ok(MailboxStats::default()),
            Some(sealed) => self.store.sealer.open(&MAILBOX_META, mailbox, &sealed),
        }
    }

    /// Stores envelopes `(envelope id, expires at, bytes)` for `mailbox`, all
    /// or none, and returns their sequence numbers.
    pub fn deposit(
        &self,
        mailbox: &[u8; 32],
        envelopes: &[([u8; 16], u64, Vec<u8>)],
        now: u64,
    ) -> Result<Vec<u64>, Error> {
        let s = self.store;
        (&s.mailbox, &s.mailbox_meta)
            .transaction(|(m, meta)| {
                let mut stats: MailboxStats = match meta.get(mailbox)? {
                    None => MailboxStats::default(),
                    Some(v) => s
                        .sealer
                        .open(&MAILBOX_META, mailbox, &v)
                        .map_err(TxError::Abort)?,
                };
                let mut seqs = Vec::with_capacity(envelopes.len());
                for (envelope_id, expires_at, envelope) in envelopes {
                    let held = Held {
                        seq: stats.next_seq,
                        envelope_id: *envelope_id,
                        deposited_at: now,
                        expires_at: *expires_at,
                        envelope: envelope.clone(),
                    };
                    let key = held_key(mailbox, held.seq);
                    let sealed = s
                        .sealer
                        .seal(&MAILBOX, &key, &held)
                        .map_err(TxError::Abort)?;
                    m.insert(&key[..], sealed)?;
                    seqs.push(held.seq);
                    stats.count += 1;
                    stats.bytes += envelope.len() as u64;
                    stats.next_seq += 1;
                }
                let sealed = s
                    .sealer
                    .seal(&MAILBOX_META, mailbox, &stats)
                    .map_err(TxError::Abort)?;
                meta.insert(&mailbox[..], sealed)?;
                Ok(seqs)
            })
            .map_err(Error::from_tx("mailbox+mailbox_meta", "deposit"))
    }

    /// Up to `limit` envelopes of `mailbox` after `after` (or from the start),
    /// oldest first.
    pub fn fetch(
        &self,
        mailbox: &[u8; 32],
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Held>, Error> {
        let first = match after {
            None => 0,
            Some(u64::MAX) => return Ok(Vec::new()),
            Some(a) => a + 1,
        };
        let start = held_key(mailbox, first);
        let end = held_key(mailbox, u64::MAX);
        let mut out = Vec::new();
        for item in self.store.mailbox.range(start..=end) {
            if out.len() >= limit {
                break;
            }
            let (key, sealed) = item.map_err(Error::db(MAILBOX.name, "scan"))?;
            out.push(self.store.sealer.open(&MAILBOX, &key, &sealed)?);
        }
        Ok(out)
    }

    /// Deletes the envelopes with these sequence numbers (the owner has them
    /// now). Returns how many were held.
    pub fn ack(&self, mailbox: &[u8; 32], seqs: &[u64]) -> Result<usize, Error> {
        let s = self.store;
        (&s.mailbox, &s.mailbox_meta)
            .transaction(|(m, meta)| {
                let mut stats: MailboxStats = match meta.get(mailbox)? {
                    None => return Ok(0),
                    Some(v) => s
                        .sealer
                        .open(&MAILBOX_META, mailbox, &v)
                        .map_err(TxError::Abort)?,
                };
                let mut removed = 0;
                for seq in seqs {
                    let key = held_key(mailbox, *seq);
                    if let Some(v) = m.remove(&key[..])? {
                        let held: Held =
                            s.sealer.open(&MAILBOX, &key, &v).map_err(TxError::Abort)?;
                        stats.count = stats.count.saturating_sub(1);
                        stats.bytes = stats.bytes.saturating_sub(held.envelope.len() as u64);
                        removed += 1;
                    }
                }
                let sealed = s
                    .sealer
                    .seal(&MAILBOX_META, mailbox, &stats)
                    .map_err(TxError::Abort)?;
                meta.insert(&mailbox[..], sealed)?;
                Ok(removed)
            })
            .map_err(Error::from_tx("mailbox+mailbox_meta", "ack"))
    }

    /// Deletes every held envelope whose expiry is at or before `now`, in all
    /// mailboxes, and returns `(mailbox, envelope id)` of each.
    pub fn purge_expired(&self, now: u64) -> Result<Vec<Expired>, Error> {
        let mut expired: Vec<([u8; 32], u64, [u8; 16])> = Vec::new();
        for item in self.store.mailbox.iter() {
            let (key, sealed) = item.map_err(Error::db(MAILBOX.name, "scan"))?;
            let held: Held = self.store.sealer.open(&MAILBOX, &key, &sealed)?;
            if held.expires_at <= now {
                let mailbox: [u8; 32] =
                    key.get(..32)
                        .and_then(|k| k.try_into().ok())
                        .ok_or_else(|| Error::Malformed {
                            tree: MAILBOX.name,
                            key: hex(&key),
                            what: "short key".into(),
                        })?;
                expired.push((mailbox, held.seq, held.envelope_id));
            }
        }
        for (mailbox, seq, _) in &expired {
            self.ack(mailbox, &[*seq])?;
        }
        Ok(expired.into_iter().map(|(m, _, e)| (m, e)).collect())
    }
}
