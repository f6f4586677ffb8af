//! A conversation's tail: its newest messages, one record each, until
//! there are [`TAIL_MAX`] of them and they move into a block.
//!
//! Live chat appends one message at a time at the end of a conversation.
//! Rewriting the last block for each (a few KiB sealed and written, and sled
//! consolidating the tree page that holds it) costs several times more
//! than writing one small record, so new messages land in the tail —
//! `t ‖ sort key` → one sealed message — and every [`TAIL_MAX`] appends
//! they are moved together into a new block in the same atomic write.
//!
//! The invariant that keeps reads simple: every tail message sorts after
//! every block message of its conversation. The conversation record keeps
//! `blocks_end`, the highest position a block may hold; a message at or
//! below it (one arriving late) goes straight into its block, one above it
//! into the tail. So a page reads the tail newest first, then the blocks.

use super::blocks::{BLOCKS, Entry, HISTORY, Staged};
use super::codec::{TreeSpec, hex};
use super::keys::{BlockKey, MESSAGE_KEY_LEN, tail_key, tail_prefix};
use super::{DeliveryState, Error, Store, StoredMessage};

/// Tail records hold one message.
pub(crate) const TAIL: TreeSpec = TreeSpec {
    name: HISTORY,
    max_plain: BLOCKS.max_plain,
};

/// A conversation's tail moves into a block when it reaches this length.
pub(crate) const TAIL_MAX: u32 = 16;

/// A staged change to a tail record.
#[derive(Debug, Clone)]
pub(crate) enum TailOp {
    /// Write this message.
    Put(Entry),
    /// Delete the record (and the expiry entry of this time, if any).
    Delete { expires_at: Option<u64> },
}

/// Opens a sealed tail record and checks it holds the message its key names.
pub(crate) fn open_tail(s: &Store, key: &[u8], sealed: &[u8]) -> Result<Entry, Error> {
    let entry: Entry = s.sealer.open(&TAIL, key, sealed)?;
    let matches = key.len() == 1 + MESSAGE_KEY_LEN
        && key
            .get(1..33)
            .and_then(|c| <[u8; 32]>::try_from(c).ok())
            .is_some_and(|conv| entry.sort_key(&conv)[..] == key[1..]);
    if !matches {
        return Err(Error::Malformed {
            tree: HISTORY,
            key: hex(key),
            what: "tail record holds another message than its key names".into(),
        });
    }
    Ok(entry)
}

/// (Lamport clock, sender, id) of a sort key.
fn order_of(sort: &[u8; MESSAGE_KEY_LEN]) -> (u64, [u8; 32], [u8; 16]) {
    let mut lamport = [0u8; 8];
    let mut sender = [0u8; 32];
    let mut id = [0u8; 16];
    lamport.copy_from_slice(&sort[32..40]);
    sender.copy_from_slice(&sort[40..72]);
    id.copy_from_slice(&sort[72..]);
    (u64::from_be_bytes(lamport), sender, id)
}

fn owned_order(e: &Entry) -> (u64, [u8; 32], [u8; 16]) {
    (e.lamport, e.sender, e.msg_id)
}

/// The sort-key range of one conversation's tail records.
fn tail_range(conv_id: &[u8; 32]) -> (BlockKey, BlockKey) {
    let prefix = tail_prefix(conv_id);
    let mut lo = [0u8; 1 + MESSAGE_KEY_LEN];
    let mut hi = [0xffu8; 1 + MESSAGE_KEY_LEN];
    lo[..33].copy_from_slice(&prefix);
    hi[..33].copy_from_slice(&prefix);
    (lo, hi)
}

impl Staged<'_> {
    /// Whether a message at `sort` belongs in the tail (above `blocks_end`).
    pub(super) fn in_tail(
        &mut self,
        conv_id: &[u8; 32],
        sort: &[u8; MESSAGE_KEY_LEN],
    ) -> Result<bool, Error> {
        self.load_record(conv_id)?;
        let end = self.convs.get(conv_id).and_then(|(r, _)| r.blocks_end);
        Ok(end.is_none_or(|end| order_of(sort) > end))
    }

    /// The tail message at `key`, staged or on disk.
    fn tail_entry(&self, key: &BlockKey) -> Result<Option<Entry>, Error> {
        match self.tail.get(key) {
            Some(TailOp::Put(e)) => Ok(Some(e.clone())),
            Some(TailOp::Delete { .. }) => Ok(None),
            None => self
                .store
                .history
                .get(key)
                .map_err(Error::db(HISTORY, "read"))?
                .map(|sealed| open_tail(self.store, key, &sealed))
                .transpose(),
        }
    }

    /// Stores a message (in the tail, or in its block if it arrives late).
    /// Returns `false` if a message with the same sort key is stored: a
    /// duplicate, left as it is.
    pub(crate) fn insert(&mut self, msg: &StoredMessage) -> Result<bool, Error> {
        let conv = msg.conv_id;
        let sort = super::keys::message_key(&conv, msg.lamport, &msg.sender, &msg.msg_id);
        let entry = Entry::from_message(msg);
        if !self.in_tail(&conv, &sort)? {
            return self.insert_into_blocks(&conv, entry);
        }
        let key = tail_key(&sort);
        let present = match self.tail.get(&key) {
            Some(TailOp::Put(_)) => true,
            Some(TailOp::Delete { .. }) => false,
            None => self
                .store
                .history
                .contains_key(key)
                .map_err(Error::db(HISTORY, "read"))?,
        };
        if present {
            return Ok(false);
        }
        self.tail.insert(key, TailOp::Put(entry));
        let record = self.record_mut(&conv)?;
        record.tail_len = record.tail_len.saturating_add(1);
        if record.tail_len >= TAIL_MAX {
            self.compact(&conv)?;
        }
        Ok(true)
    }

    /// The conversation's tail messages, oldest first (staged state).
    fn tail_entries(&self, conv_id: &[u8; 32]) -> Result<Vec<(BlockKey, Entry)>, Error> {
        let (lo, hi) = tail_range(conv_id);
        let mut out = std::collections::BTreeMap::new();
        for item in self.store.history.range(&lo[..]..=&hi[..]) {
            let (k, sealed) = item.map_err(Error::db(HISTORY, "scan"))?;
            let key: BlockKey = k.as_ref().try_into().map_err(|_| Error::Malformed {
                tree: HISTORY,
                key: hex(&k),
                what: "tail key has the wrong length".into(),
            })?;
            if !self.tail.contains_key(&key) {
                out.insert(key, open_tail(self.store, &key, &sealed)?);
            }
        }
        for (key, op) in self.tail.range(lo..=hi) {
            if let TailOp::Put(e) = op {
                out.insert(*key, e.clone());
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Moves the whole tail of `conv_id` into new blocks after the last
    /// one (every tail message is newer than every block message).
    fn compact(&mut self, conv_id: &[u8; 32]) -> Result<(), Error> {
        let entries = self.tail_entries(conv_id)?;
        let end = entries.last().map(|(_, e)| owned_order(e));
        let mut moved = Vec::with_capacity(entries.len());
        for (key, entry) in entries {
            self.tail.insert(
                key,
                TailOp::Delete {
                    expires_at: entry.expires_at,
                },
            );
            moved.push(entry);
        }
        self.add_blocks(conv_id, moved);
        let record = self.record_mut(conv_id)?;
        record.tail_len = 0;
        if end > record.blocks_end {
            record.blocks_end = end;
        }
        Ok(())
    }

    /// [`Staged::set_state`] for a message in the tail.
    pub(super) fn set_tail_state(
        &mut self,
        sort: &[u8; MESSAGE_KEY_LEN],
        state: DeliveryState,
    ) -> Result<Option<bool>, Error> {
        let key = tail_key(sort);
        let Some(mut entry) = self.tail_entry(&key)? else {
            return Ok(None);
        };
        if state <= entry.state {
            return Ok(Some(false));
        }
        entry.state = state;
        self.tail.insert(key, TailOp::Put(entry));
        Ok(Some(true))
    }

    /// Removes the tail message at `key` if `drop` selects it; returns
    /// how many were removed (0 or 1).
    pub(crate) fn remove_tail_where(
        &mut self,
        key: &BlockKey,
        drop: impl Fn(&Entry) -> bool,
    ) -> Result<usize, Error> {
        let Some(entry) = self.tail_entry(key)? else {
            return Ok(0);
        };
        if !drop(&entry) {
            return Ok(0);
        }
        self.deletes_messages = true;
        let conv: [u8; 32] = key[1..33].try_into().unwrap_or_default();
        self.tail.insert(
            *key,
            TailOp::Delete {
                expires_at: entry.expires_at,
            },
        );
        let record = self.record_mut(&conv)?;
        record.tail_len = record.tail_len.saturating_sub(1);
        if record
            .newest
            .as_ref()
            .is_some_and(|n| n.sort_key(&conv)[..] == key[1..])
        {
            self.stale_newest.insert(conv);
        }
        Ok(1)
    }

    /// The newest tail message of `conv_id` (staged state).
    pub(super) fn newest_tail_entry(&self, conv_id: &[u8; 32]) -> Result<Option<Entry>, Error> {
        Ok(self.tail_entries(conv_id)?.pop().map(|(_, e)| e))
    }
}

/// Reads the tail of `conv_id` below `upper` (exclusive; everything if
/// `None`), newest first, calling `each` until it returns `false`.
pub(crate) fn scan_tail_rev(
    s: &Store,
    conv_id: &[u8; 32],
    upper: Option<&[u8; MESSAGE_KEY_LEN]>,
    mut each: impl FnMut(Entry) -> bool,
) -> Result<(), Error> {
    let (lo, hi) = tail_range(conv_id);
    let iter = match upper {
        Some(u) => s.history.range(&lo[..]..&tail_key(u)[..]),
        None => s.history.range(&lo[..]..=&hi[..]),
    };
    for item in iter.rev() {
        let (key, sealed) = item.map_err(Error::db(HISTORY, "scan"))?;
        if !each(open_tail(s, &key, &sealed)?) {
            break;
        }
    }
    Ok(())
}

/// Reads the tail of `conv_id` oldest first.
pub(crate) fn scan_tail(
    s: &Store,
    conv_id: &[u8; 32],
    mut each: impl FnMut(Entry) -> Result<(), Error>,
) -> Result<(), Error> {
    let (lo, hi) = tail_range(conv_id);
    for item in s.history.range(&lo[..]..=&hi[..]) {
        let (key, sealed) = item.map_err(Error::db(HISTORY, "scan"))?;
        each(open_tail(s, &key, &sealed)?)?;
    }
    Ok(())
}

/// The tail message at this sort key, if any.
pub(crate) fn get_tail(s: &Store, sort: &[u8; MESSAGE_KEY_LEN]) -> Result<Option<Entry>, Error> {
    let key = tail_key(sort);
    s.history
        .get(key)
        .map_err(Error::db(HISTORY, "read"))?
        .map(|sealed| open_tail(s, &key, &sealed))
        .transpose()
}

impl super::History<'_> {
    /// Brings every conversation in line after a crash cut short a write
    /// made of single sled writes (see `Staged::commit`): tail records
    /// already copied into a block are deleted; `blocks_end` is set to
    /// the newest message actually in a block; the unread count, activity
    /// and Lamport clock are recounted from the record's note of that
    /// write (counting only the messages that reached the disk); the tail
    /// count and the newest-message copy are recomputed. Run on open;
    /// returns how many conversation records it rewrote.
    pub(crate) fn repair_tails(&self) -> Result<usize, Error> {
        let s = self.store;
        let mut convs = std::collections::BTreeSet::new();
        for item in s.history.scan_prefix([super::keys::TAIL_PREFIX]) {
            let (key, _) = item.map_err(Error::db(HISTORY, "scan"))?;
            if let Some(conv) = key.get(1..33).and_then(|c| <[u8; 32]>::try_from(c).ok()) {
                convs.insert(conv);
            }
        }
        // A record that does not open is logged and passed over: one
        // damaged conversation must not keep the whole store (contacts,
        // outbox, every other conversation) from opening. Reading it later
        // gives its error then.
        for item in s.history.scan_prefix([super::keys::CONV_PREFIX]) {
            let (key, sealed) = item.map_err(Error::db(HISTORY, "scan"))?;
            let pending = match self.open_conversation(&key, &sealed) {
                Ok(record) => record.pending.is_some(),
                Err(e) if e.is_damaged_record() => {
                    tracing::error!(error = %e, "a conversation record that does not open is not checked at open");
                    false
                }
                Err(e) => return Err(e),
            };
            if pending && let Some(conv) = key.get(1..33).and_then(|c| <[u8; 32]>::try_from(c).ok())
            {
                convs.insert(conv);
            }
        }
        let mut fixed = 0;
        for conv in convs {
            match self.repair_one(&conv) {
                Ok(true) => fixed += 1,
                Ok(false) => {}
                Err(e) if e.is_damaged_record() => {
                    tracing::error!(error = %e, "a conversation whose records do not open is not repaired at open");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(fixed)
    }

    /// The newest message in a block of `conv`.
    fn newest_in_blocks(&self, conv: &[u8; 32]) -> Result<Option<Entry>, Error> {
        let s = self.store;
        match s
            .history
            .scan_prefix(super::keys::block_prefix(conv))
            .next_back()
            .transpose()
            .map_err(Error::db(HISTORY, "scan"))?
        {
            Some((key, sealed)) => Ok(super::blocks::open_block(s, &key, &sealed)?.pop()),
            None => Ok(None),
        }
    }

    fn repair_one(&self, conv: &[u8; 32]) -> Result<bool, Error> {
        let s = self.store;
        let mut record = self
            .conv_record(conv)?
            .unwrap_or_else(|| super::conversations::ConvRecord::new(*conv));
        let original = record.clone();
        let mut tail = Vec::new();
        scan_tail(s, conv, |e| {
            tail.push(e);
            Ok(())
        })?;
        let end = self.newest_in_blocks(conv)?.map(|e| owned_order(&e));
        // Tail records at or below the newest block message were copied
        // into a block by the cut-short write: delete the copy once the
        // block is seen to hold it; one the blocks lack moves there.
        let mut moved = false;
        if let Some(end) = end {
            let mut staged = Staged::new(s);
            for e in tail.iter().filter(|e| owned_order(e) <= end) {
                let key = tail_key(&e.sort_key(conv));
                staged.tail.insert(
                    key,
                    TailOp::Delete {
                        expires_at: e.expires_at,
                    },
                );
                let in_block = self.find_in_blocks(conv, &e.sort_key(conv))?.is_some();
                if !in_block {
                    staged.insert_into_blocks(conv, e.clone())?;
                    moved = true;
                }
            }
            if !staged.tail.is_empty() {
                staged.commit_batch()?;
            }
            tail.retain(|e| owned_order(e) > end);
        }
        let block_newest = self.newest_in_blocks(conv)?;
        if moved {
            record.blocks_end = block_newest.as_ref().map(owned_order);
        } else {
            record.blocks_end = end;
        }
        if let Some(p) = record.pending.take() {
            let (mut unread, mut lamport, mut at) = p.before;
            for ((l, sender, id), incoming, sent_at) in p.added {
                let r = super::MessageRef {
                    conv_id: *conv,
                    lamport: l,
                    sender,
                    msg_id: id,
                };
                if self.get(&r)?.is_some() {
                    unread = unread.saturating_add(u32::from(incoming));
                    lamport = lamport.max(l);
                    at = at.max(sent_at);
                }
            }
            record.conv.unread = unread;
            record.conv.last_lamport = lamport;
            record.conv.last_message_at = at;
        }
        record.tail_len = u32::try_from(tail.len()).unwrap_or(u32::MAX);
        record.newest = tail.pop().or(block_newest);
        if record == original {
            return Ok(false);
        }
        s.history
            .insert(
                &super::keys::conv_key(conv)[..],
                self.seal_conversation(&record)?,
            )
            .map_err(Error::db(HISTORY, "repair"))?;
        Ok(true)
    }
}
