//! Relay mailboxes: sealed envelopes held for devices that are offline.
//!
//! - `mailbox`: `mailbox id (32) ‖ seq (u64 BE)` → sealed [`Held`];
//! - `mailbox_meta`: `mailbox id` → sealed [`MailboxStats`];
//! - `mailbox_expiry`: `expires at (u64 BE) ‖ mailbox id ‖ seq` → nothing,
//!   so a purge reads only what is due;
//! - `mailbox_ids`: `mailbox id ‖ envelope id (16)` → seq, so an envelope
//!   deposited twice (a sender retrying after a lost receipt) is held once.
//!
//! Sequence numbers only grow within a mailbox, so a fetch cursor
//! ("everything after seq n") never skips or repeats an envelope. A deposit
//! (of any number of mailboxes) and an acknowledgement change every tree in
//! one transaction; a custody receipt may be sent once a [`Store::flush`]
//! after the deposit returned.

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
/// Expiry index (keys only).
pub(crate) const MAILBOX_EXPIRY: &str = "mailbox_expiry";
/// Envelope-id index: `mailbox ‖ envelope id` → seq (u64 BE).
pub(crate) const MAILBOX_IDS: &str = "mailbox_ids";

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

/// An envelope to hold: for which mailbox, its id, until when, its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToHold {
    /// The recipient's mailbox.
    pub mailbox: [u8; 32],
    /// The envelope's own id.
    pub envelope_id: [u8; 16],
    /// When it must be dropped (Unix seconds).
    pub expires_at: u64,
    /// The encoded envelope.
    pub envelope: Vec<u8>,
}

/// What a deposit did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deposited {
    /// The seq of each envelope, in the order given (an envelope already
    /// held keeps its first seq).
    pub seqs: Vec<u64>,
    /// Envelopes that were new.
    pub new: u64,
    /// Their bytes.
    pub new_bytes: u64,
}

/// What an acknowledgement or a purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    /// Envelopes removed.
    pub count: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// An envelope dropped at its expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    /// Its mailbox.
    pub mailbox: [u8; 32],
    /// Its id.
    pub envelope_id: [u8; 16],
    /// Its size.
    pub bytes: u64,
}

/// Totals over every mailbox (for metrics and the disk budget).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Mailboxes holding at least one envelope.
    pub mailboxes: u64,
    /// Envelopes held.
    pub envelopes: u64,
    /// Their bytes.
    pub bytes: u64,
}

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

fn expiry_key(expires_at: u64, mailbox: &[u8; 32], seq: u64) -> [u8; 48] {
    let mut k = [0u8; 48];
    k[..8].copy_from_slice(&expires_at.to_be_bytes());
    k[8..40].copy_from_slice(mailbox);
    k[40..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn id_key(mailbox: &[u8; 32], envelope_id: &[u8; 16]) -> [u8; 48] {
    let mut k = [0u8; 48];
    k[..32].copy_from_slice(mailbox);
    k[32..].copy_from_slice(envelope_id);
    k
}

fn malformed(tree: &'static str, key: &[u8], what: &str) -> Error {
    Error::Malformed {
        tree,
        key: hex(key),
        what: what.into(),
    }
}

type Trees = (
    sled::transaction::TransactionalTree,
    sled::transaction::TransactionalTree,
    sled::transaction::TransactionalTree,
    sled::transaction::TransactionalTree,
);

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

    /// Totals over every mailbox (one pass over the counters).
    pub fn totals(&self) -> Result<Totals, Error> {
        let mut t = Totals::default();
        for item in self.store.mailbox_meta.iter() {
            let (key, sealed) = item.map_err(Error::db(MAILBOX_META.name, "scan"))?;
            let stats: MailboxStats = self.store.sealer.open(&MAILBOX_META, &key, &sealed)?;
            if stats.count > 0 {
                t.mailboxes += 1;
            }
            t.envelopes += stats.count;
            t.bytes += stats.bytes;
        }
        Ok(t)
    }

    /// Holds every envelope of `items`, in one transaction: all or none.
    /// An envelope id a mailbox already holds is not stored again.
    pub fn deposit(&self, items: &[ToHold], now: u64) -> Result<Deposited, Error> {
        let s = self.store;
        (
            &s.mailbox,
            &s.mailbox_meta,
            &s.mailbox_expiry,
            &s.mailbox_ids,
        )
            .transaction(|(m, meta, exp, ids)| {
                let mut stats: std::collections::HashMap<[u8; 32], MailboxStats> =
                    std::collections::HashMap::new();
                let mut out = Deposited::default();
                for item in items {
                    let mb = &item.mailbox;
                    if !stats.contains_key(mb) {
                        let st = match meta.get(mb)? {
                            None => MailboxStats::default(),
                            Some(v) => s
                                .sealer
                                .open(&MAILBOX_META, mb, &v)
                                .map_err(TxError::Abort)?,
                        };
                        stats.insert(*mb, st);
                    }
                    let idk = id_key(mb, &item.envelope_id);
                    if let Some(seq) = ids.get(&idk[..])? {
                        let seq = <[u8; 8]>::try_from(seq.as_ref())
                            .map_err(|_| TxError::Abort(malformed(MAILBOX_IDS, &idk, "seq")))?;
                        out.seqs.push(u64::from_be_bytes(seq));
                        continue;
                    }
                    let Some(st) = stats.get_mut(mb) else {
                        continue;
                    };
                    let held = Held {
                        seq: st.next_seq,
                        envelope_id: item.envelope_id,
                        deposited_at: now,
                        expires_at: item.expires_at,
                        envelope: item.envelope.clone(),
                    };
                    let key = held_key(mb, held.seq);
                    let sealed = s
                        .sealer
                        .seal(&MAILBOX, &key, &held)
                        .map_err(TxError::Abort)?;
                    m.insert(&key[..], sealed)?;
                    exp.insert(&expiry_key(item.expires_at, mb, held.seq)[..], &[][..])?;
                    ids.insert(&idk[..], &held.seq.to_be_bytes()[..])?;
                    out.seqs.push(held.seq);
                    out.new += 1;
                    out.new_bytes += item.envelope.len() as u64;
                    st.count += 1;
                    st.bytes += item.envelope.len() as u64;
                    st.next_seq += 1;
                }
                for (mb, st) in &stats {
                    let sealed = s
                        .sealer
                        .seal(&MAILBOX_META, mb, st)
                        .map_err(TxError::Abort)?;
                    meta.insert(&mb[..], sealed)?;
                }
                Ok(out)
            })
            .map_err(Error::from_tx("mailbox trees", "deposit"))
    }

    /// Up to `limit` envelopes of `mailbox` after `after` (or from the start),
    /// oldest first, leaving out any past its expiry at `now` (the next
    /// purge drops those).
    pub fn fetch(
        &self,
        mailbox: &[u8; 32],
        after: Option<u64>,
        limit: usize,
        now: u64,
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
            let held: Held = self.store.sealer.open(&MAILBOX, &key, &sealed)?;
            if held.expires_at > now {
                out.push(held);
            }
        }
        Ok(out)
    }

    /// Deletes the envelopes with these sequence numbers (the owner has them
    /// now) and says what was removed.
    pub fn ack(&self, mailbox: &[u8; 32], seqs: &[u64]) -> Result<Removed, Error> {
        let s = self.store;
        (
            &s.mailbox,
            &s.mailbox_meta,
            &s.mailbox_expiry,
            &s.mailbox_ids,
        )
            .transaction(|trees| remove(s, trees, mailbox, seqs))
            .map_err(Error::from_tx("mailbox trees", "ack"))
    }

    /// Deletes up to `limit` held envelopes whose expiry is at or before
    /// `now`, in all mailboxes, oldest expiry first, and says which.
    pub fn purge_expired(&self, now: u64, limit: usize) -> Result<Vec<Expired>, Error> {
        let mut due: Vec<(sled::IVec, [u8; 32], u64)> = Vec::new();
        let end = expiry_key(now, &[0xff; 32], u64::MAX);
        for item in self.store.mailbox_expiry.range(..=end) {
            if due.len() >= limit {
                break;
            }
            let (key, _) = item.map_err(Error::db(MAILBOX_EXPIRY, "scan"))?;
            let mailbox: [u8; 32] = key
                .get(8..40)
                .and_then(|k| k.try_into().ok())
                .ok_or_else(|| malformed(MAILBOX_EXPIRY, &key, "short key"))?;
            let seq: [u8; 8] = key
                .get(40..48)
                .and_then(|k| k.try_into().ok())
                .ok_or_else(|| malformed(MAILBOX_EXPIRY, &key, "short key"))?;
            due.push((key, mailbox, u64::from_be_bytes(seq)));
        }
        let mut expired = Vec::with_capacity(due.len());
        for (index_key, mailbox, seq) in due {
            let key = held_key(&mailbox, seq);
            let held = match self
                .store
                .mailbox
                .get(key)
                .map_err(Error::db(MAILBOX.name, "read"))?
            {
                Some(sealed) => Some(self.store.sealer.open::<Held>(&MAILBOX, &key, &sealed)?),
                None => None,
            };
            let s = self.store;
            (
                &s.mailbox,
                &s.mailbox_meta,
                &s.mailbox_expiry,
                &s.mailbox_ids,
            )
                .transaction(|trees| {
                    // An index entry whose envelope is gone goes too.
                    if held.is_none() {
                        trees.2.remove(&index_key)?;
                    }
                    remove(s, trees, &mailbox, &[seq])
                })
                .map_err(Error::from_tx("mailbox trees", "purge"))?;
            if let Some(h) = held {
                expired.push(Expired {
                    mailbox,
                    envelope_id: h.envelope_id,
                    bytes: h.envelope.len() as u64,
                });
            }
        }
        Ok(expired)
    }
}

/// Removes `seqs` of `mailbox` from every tree, inside a transaction.
fn remove(
    s: &Store,
    (m, meta, exp, ids): &Trees,
    mailbox: &[u8; 32],
    seqs: &[u64],
) -> sled::transaction::ConflictableTransactionResult<Removed, Error> {
    let mut stats: MailboxStats = match meta.get(mailbox)? {
        None => return Ok(Removed::default()),
        Some(v) => s
            .sealer
            .open(&MAILBOX_META, mailbox, &v)
            .map_err(TxError::Abort)?,
    };
    let mut removed = Removed::default();
    for seq in seqs {
        let key = held_key(mailbox, *seq);
        if let Some(v) = m.remove(&key[..])? {
            let held: Held = s.sealer.open(&MAILBOX, &key, &v).map_err(TxError::Abort)?;
            exp.remove(&expiry_key(held.expires_at, mailbox, *seq)[..])?;
            ids.remove(&id_key(mailbox, &held.envelope_id)[..])?;
            stats.count = stats.count.saturating_sub(1);
            stats.bytes = stats.bytes.saturating_sub(held.envelope.len() as u64);
            removed.count += 1;
            removed.bytes += held.envelope.len() as u64;
        }
    }
    if removed.count > 0 {
        let sealed = s
            .sealer
            .seal(&MAILBOX_META, mailbox, &stats)
            .map_err(TxError::Abort)?;
        meta.insert(&mailbox[..], sealed)?;
    }
    Ok(removed)
}
