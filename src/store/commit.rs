//! Writing a staged history change: one sled batch, or single writes in a
//! safe order (see `Staged::commit`).

use super::Error;
use super::blocks::{BLOCKS, Entry, HISTORY, MAX_PENDING_ADDED, Staged, earliest_expiry};
use super::keys::{block_key, conv_key, expiry_key, message_key};
use super::tail::TailOp;

/// Damaged blocks [`Staged::newest_entry`] passes over before it gives up.
const MAX_DAMAGED_PASSED: usize = 16;

impl Staged<'_> {
    /// Writes a change that only adds — new tail records, new blocks made
    /// from the tail, the conversation records, and the deletion of tail
    /// records that moved into those blocks — as single writes in a safe
    /// order instead of one sled batch: sled rolls its IO buffer twice for
    /// every batch (two writes to the file), which costs more than the rest
    /// of a live-chat append. This is the write of live chat.
    ///
    /// The order: conversation records first, each carrying a note of
    /// what this write adds and the counters before it
    /// (`ConvRecord::pending`); then new blocks and new tail records, each
    /// after its expiry entry; then the deletions of tail records that
    /// moved into the new blocks. sled recovers a prefix of its log, so
    /// after a crash the possible states are: a conversation record ahead
    /// of its messages, an expiry entry without its record (the purge drops
    /// it), or a message both in a new block and still in the tail.
    /// `History::repair_tails`, run on open, resolves the first and last
    /// from the note; nothing a flush covered is lost.
    fn commit_in_order(mut self) -> Result<(), Error> {
        let s = self.store;
        let write = |key: &[u8], value: Vec<u8>| {
            s.history
                .insert(key, value)
                .map(|_| ())
                .map_err(Error::db(HISTORY, "write"))
        };
        let history = s.history();
        for (id, (record, changed)) in &mut self.convs {
            if *changed {
                record.pending = self.journal.remove(id);
                write(&conv_key(id)[..], history.seal_conversation(record)?)?;
            }
        }
        for (key, entries) in &self.blocks {
            if let Some(entries) = entries {
                if let Some(at) = earliest_expiry(entries) {
                    write(&expiry_key(at, key)[..], Vec::new())?;
                }
                write(&key[..], s.sealer.seal(&BLOCKS, key, entries)?)?;
            }
        }
        for (key, op) in &self.tail {
            if let TailOp::Put(e) = op {
                if let Some(at) = e.expires_at {
                    write(&expiry_key(at, key)[..], Vec::new())?;
                }
                write(&key[..], s.sealer.seal(&super::tail::TAIL, key, e)?)?;
            }
        }
        for (key, op) in &self.tail {
            if let TailOp::Delete { expires_at } = op {
                s.history
                    .remove(&key[..])
                    .map_err(Error::db(HISTORY, "delete"))?;
                if let Some(at) = expires_at {
                    s.history
                        .remove(&expiry_key(*at, key)[..])
                        .map_err(Error::db(HISTORY, "delete"))?;
                }
            }
        }
        Ok(())
    }

    /// The newest message of a conversation as staged. Records that do not
    /// open are passed over (logged): the newest message is a summary, and
    /// a damaged record under it must not stop the write that asks (a
    /// purge would otherwise fail at it every time); at most
    /// [`MAX_DAMAGED_PASSED`] damaged blocks, then the summary says none.
    /// The second value says whether every record looked at opened (so
    /// that `None` means the conversation is empty).
    fn newest_entry(&mut self, conv_id: &[u8; 32]) -> Result<(Option<Entry>, bool), Error> {
        let mut whole = true;
        match self.newest_tail_entry(conv_id) {
            Ok(Some(e)) => return Ok((Some(e), whole)),
            Ok(None) => {}
            Err(e) if e.is_damaged_record() => {
                tracing::error!(error = %e, "a tail record that does not open is passed over for the newest message");
                whole = false;
            }
            Err(e) => return Err(e),
        }
        let mut upper = block_key(&message_key(conv_id, u64::MAX, &[0xff; 32], &[0xff; 16]));
        let mut inclusive = true;
        for _ in 0..MAX_DAMAGED_PASSED {
            let Some(key) = self.last_block_in(conv_id, &upper, inclusive)? else {
                return Ok((None, whole));
            };
            let was_staged = self.blocks.contains_key(&key);
            match self.take(&key) {
                Ok(entries) => {
                    let newest = entries.last().cloned();
                    self.untake(key, entries, was_staged, false);
                    return Ok((newest, whole));
                }
                Err(e) if e.is_damaged_record() => {
                    tracing::error!(error = %e, "a block that does not open is passed over for the newest message");
                    whole = false;
                    upper = key;
                    inclusive = false;
                }
                Err(e) => return Err(e),
            }
        }
        Ok((None, false))
    }

    /// Writes everything staged as one atomic sled batch.
    pub(crate) fn commit(mut self) -> Result<(), Error> {
        for conv in std::mem::take(&mut self.stale_newest) {
            let (newest, whole) = self.newest_entry(&conv)?;
            let record = self.record_mut(&conv)?;
            // Nothing left (every message expired): nothing is unread. (Not
            // when records that did not open were passed over.)
            if newest.is_none() && whole {
                record.conv.unread = 0;
            }
            record.newest = newest;
        }
        // A deletion of messages goes in one batch: the journal of single
        // writes only knows how to repair messages added (a record that
        // says what the counters were before would bring back an unread
        // count its deletions had cleared). Tail records that move into a
        // block are not deleted messages.
        let only_additions = self.removals.is_empty()
            && self.inserts.is_empty()
            && !self.deletes_messages
            && self
                .blocks
                .iter()
                .all(|(k, v)| v.is_some() && !self.read_expiry.contains_key(k))
            && self
                .journal
                .values()
                .all(|j| j.added.len() <= MAX_PENDING_ADDED);
        if only_additions {
            return self.commit_in_order();
        }
        self.commit_batch()
    }

    /// Writes everything staged as one atomic sled batch.
    pub(super) fn commit_batch(mut self) -> Result<(), Error> {
        let s = self.store;
        let mut batch = sled::Batch::default();
        for key in self.removals {
            batch.remove(key);
        }
        for (key, value) in self.inserts {
            batch.insert(key, value);
        }
        for (key, op) in &self.tail {
            match op {
                TailOp::Put(e) => {
                    batch.insert(&key[..], s.sealer.seal(&super::tail::TAIL, key, e)?);
                    if let Some(at) = e.expires_at {
                        batch.insert(&expiry_key(at, key)[..], &[][..]);
                    }
                }
                TailOp::Delete { expires_at } => {
                    batch.remove(&key[..]);
                    if let Some(at) = expires_at {
                        batch.remove(&expiry_key(*at, key)[..]);
                    }
                }
            }
        }
        for (key, entries) in &self.blocks {
            let was = self.read_expiry.get(key).copied().flatten();
            let now = entries.as_deref().and_then(earliest_expiry);
            if was != now {
                if let Some(at) = was {
                    batch.remove(&expiry_key(at, key)[..]);
                }
                if let Some(at) = now {
                    batch.insert(&expiry_key(at, key)[..], &[][..]);
                }
            }
            match entries {
                Some(entries) => batch.insert(&key[..], s.sealer.seal(&BLOCKS, key, entries)?),
                None => batch.remove(&key[..]),
            }
        }
        let history = s.history();
        for (id, (record, changed)) in &mut self.convs {
            if *changed {
                record.pending = None;
                batch.insert(&conv_key(id)[..], history.seal_conversation(record)?);
            }
        }
        s.history
            .apply_batch(batch)
            .map_err(Error::db(HISTORY, "write"))
    }
}
