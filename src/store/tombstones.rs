//! Tombstones: what a message deleted or cleared here leaves behind, so
//! that a copy of it sent again is not stored again.
//!
//! A contact that has not yet heard our acknowledgement of a message sends
//! it again, encrypted afresh; the history stores one copy of a message
//! (same conversation, Lamport clock, sender and id), but once the user
//! has deleted it there is no copy to match, and it would come back. So a
//! deletion writes, in the same atomic batch, a tombstone per message:
//! `d ‖ conv_id ‖ tag` → `until`, where the tag is a keyed digest of the
//! message's sort key ([`super::codec::Sealer::tombstone_tag`]), and an
//! expiry entry `y ‖ until ‖ conv_id ‖ tag` that the purge walks. An
//! incoming message whose tombstone is stored is a duplicate: not stored,
//! no event, acknowledged as usual (its sender must stop sending it).
//!
//! The purge leaves one too for a message of a temporary conversation
//! whose sender's clock runs ahead of ours by more than [`CLOCK_SLACK`]:
//! the node keeps such a message no longer than the retention from when
//! it came, and a copy sent again would still be within the sender's
//! time, so it would come back.
//!
//! Bounds: a tombstone lives [`TOMBSTONE_LIFE`], longer than any contact
//! sends a message again (an envelope may expire at most
//! `node::proto::MAX_ENVELOPE_AHEAD` after it is made); a conversation
//! keeps at most [`MAX_TOMBSTONES`], the newest messages of a clear and
//! the latest deletions first.
//!
//! What a tombstone shows on disk without the key: that some message of
//! that conversation was deleted, and (in its expiry entry) when, to the
//! second. Not which message.

use super::blocks::{HISTORY, Staged};
use super::keys::{
    MESSAGE_KEY_LEN, TOMB_EXPIRY_KEY_LEN, TOMB_EXPIRY_PREFIX, TOMB_KEY_LEN, TOMB_PREFIX,
    TOMB_TAG_LEN, message_key, tomb_expiry_key, tomb_key, tomb_prefix,
};
use super::{Error, History, StoredMessage};

/// How long a tombstone is kept, in seconds: 16 days, a day more than a
/// contact's copy of a message can live (14 days, plus a day allowed for
/// its clock).
pub const TOMBSTONE_LIFE: u64 = 16 * 24 * 3600;

/// Most tombstones one conversation keeps.
pub const MAX_TOMBSTONES: usize = 1024;

/// How far ahead of ours a sender's clock may give a purged message more
/// time without its leaving a tombstone (seconds): a copy sent again
/// comes back for at most this long.
pub const CLOCK_SLACK: u64 = 60;

impl Staged<'_> {
    /// Whether `msg` was deleted here (its tombstone is stored).
    pub(crate) fn tombstoned(&self, msg: &StoredMessage) -> Result<bool, Error> {
        if !self.store.has_tombstones(&msg.conv_id) {
            return Ok(false);
        }
        let sort = msg.reference().sort_key();
        let key = tomb_key(&msg.conv_id, &self.store.sealer.tombstone_tag(&sort));
        self.store
            .history
            .contains_key(key)
            .map_err(Error::db(HISTORY, "read"))
    }
}

/// The least byte string above every string that starts with `prefix`;
/// `None` if there is none (all bytes 0xff).
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut next = prefix.to_vec();
    while let Some(last) = next.pop() {
        if last < 0xff {
            next.push(last + 1);
            return Some(next);
        }
    }
    None
}

impl super::Store {
    /// Whether conversation `conv_id` may have tombstones.
    fn has_tombstones(&self, conv_id: &[u8; 32]) -> bool {
        self.tombstoned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(conv_id)
    }

    fn note_tombstones(&self, conv_id: &[u8; 32]) {
        self.tombstoned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(*conv_id);
    }
}

impl History<'_> {
    /// Notes, on open, which conversations have tombstones (one seek per
    /// conversation).
    pub(crate) fn find_tombstoned(&self) -> Result<(), Error> {
        let mut from = vec![TOMB_PREFIX];
        loop {
            let Some(item) = self.store.history.range(&from[..]..).next() else {
                return Ok(());
            };
            let (key, _) = item.map_err(Error::db(HISTORY, "scan"))?;
            if key.first() != Some(&TOMB_PREFIX) {
                return Ok(());
            }
            // The next conversation's prefix (past every key of this one,
            // whatever its length), or past this key if it is too short.
            let prefix = match key.get(..33) {
                Some(p) => {
                    let mut conv = [0u8; 32];
                    conv.copy_from_slice(&p[1..]);
                    self.store.note_tombstones(&conv);
                    p.to_vec()
                }
                None => key.to_vec(),
            };
            match successor(&prefix) {
                Some(next) if next > from => from = next,
                _ => return Ok(()),
            }
        }
    }

    /// Stages tombstones for the messages `sorts` names (the newest
    /// [`MAX_TOMBSTONES`] of them) of conversation `conv_id`, living
    /// until `now + TOMBSTONE_LIFE`. In the same write: the conversation's
    /// tombstones whose time is up go, and the oldest go while it would
    /// keep more than [`MAX_TOMBSTONES`]. A tombstone whose value does not
    /// read as a time goes too (logged).
    pub(crate) fn stage_tombstones(
        &self,
        staged: &mut Staged<'_>,
        conv_id: &[u8; 32],
        mut sorts: Vec<[u8; MESSAGE_KEY_LEN]>,
        now: u64,
    ) -> Result<(), Error> {
        if sorts.is_empty() {
            return Ok(());
        }
        sorts.sort_unstable_by(|a, b| b.cmp(a));
        sorts.dedup();
        sorts.truncate(MAX_TOMBSTONES);
        self.store.note_tombstones(conv_id);
        let until = now.saturating_add(TOMBSTONE_LIFE);
        let sealer = &self.store.sealer;
        let new: std::collections::HashSet<[u8; TOMB_TAG_LEN]> =
            sorts.iter().map(|s| sealer.tombstone_tag(s)).collect();
        // The conversation's tombstones now: kept while live and not
        // renewed, the latest first, as many as leave room for the new.
        let mut kept: Vec<([u8; TOMB_KEY_LEN], u64)> = Vec::new();
        for item in self.store.history.scan_prefix(tomb_prefix(conv_id)) {
            let (key, value) = item.map_err(Error::db(HISTORY, "scan"))?;
            let Ok(key) = <[u8; TOMB_KEY_LEN]>::try_from(&key[..]) else {
                tracing::warn!("a tombstone with a key of the wrong length is removed");
                staged.remove_key(key);
                continue;
            };
            let Ok(at) = <[u8; 8]>::try_from(&value[..]).map(u64::from_be_bytes) else {
                tracing::warn!("a tombstone whose time does not read is removed");
                staged.remove_key(sled::IVec::from(&key[..]));
                continue;
            };
            let mut tag = [0u8; TOMB_TAG_LEN];
            tag.copy_from_slice(&key[33..]);
            let renewed = new.contains(&tag);
            if at <= now || renewed {
                if !renewed {
                    staged.remove_key(sled::IVec::from(&key[..]));
                }
                if at != until {
                    staged.remove_key(sled::IVec::from(&tomb_expiry_key(at, &key)[..]));
                }
                continue;
            }
            kept.push((key, at));
        }
        kept.sort_by_key(|&(_, at)| std::cmp::Reverse(at));
        for (key, at) in kept.into_iter().skip(MAX_TOMBSTONES - new.len()) {
            staged.remove_key(sled::IVec::from(&key[..]));
            staged.remove_key(sled::IVec::from(&tomb_expiry_key(at, &key)[..]));
        }
        for tag in &new {
            let key = tomb_key(conv_id, tag);
            staged.insert_key(&key[..], &until.to_be_bytes()[..]);
            staged.insert_key(&tomb_expiry_key(until, &key)[..], &[][..]);
        }
        Ok(())
    }

    /// The sort keys of the newest `n` messages of `conv_id` not written
    /// by `mine`, newest first: those a clear leaves tombstones for. As
    /// many as can be read when a record does not open (logged); fewer
    /// than `n` if the conversation has no more, or a record in the way
    /// does not open.
    pub(crate) fn newest_sorts(
        &self,
        conv_id: &[u8; 32],
        n: usize,
        mine: &[u8; 32],
    ) -> Result<Vec<[u8; MESSAGE_KEY_LEN]>, Error> {
        let mut out = Vec::new();
        let mut before = None;
        while out.len() < n {
            let page = match self.page(conv_id, before.as_ref(), Self::MAX_PAGE) {
                Ok(page) => page,
                Err(e) if e.is_damaged_record() => {
                    tracing::warn!(error = %e, "a record that does not open leaves no tombstones for its messages");
                    break;
                }
                Err(e) => return Err(e),
            };
            out.extend(
                page.messages
                    .iter()
                    .filter(|m| &m.sender != mine)
                    .map(|m| message_key(conv_id, m.lamport, &m.sender, &m.msg_id))
                    .take(n - out.len()),
            );
            match page.next {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        Ok(out)
    }

    /// Deletes the tombstones whose time is at or before `now` (in atomic
    /// steps of up to [`Self::PURGE_STEP`]) and returns how many. An
    /// expiry entry whose tombstone was renewed since goes alone.
    pub fn purge_tombstones(&self, now: u64) -> Result<usize, Error> {
        let mut end = [0xffu8; TOMB_EXPIRY_KEY_LEN];
        end[0] = TOMB_EXPIRY_PREFIX;
        end[1..9].copy_from_slice(&now.to_be_bytes());
        let mut purged = 0;
        loop {
            let _writer = self.store.lock_history();
            let mut staged = Staged::new(self.store);
            let mut due = 0;
            for item in self
                .store
                .history
                .range(&[TOMB_EXPIRY_PREFIX][..]..=&end[..])
            {
                let (ykey, _) = item.map_err(Error::db(HISTORY, "scan"))?;
                due += 1;
                if let Some(at) = ykey.get(1..9).and_then(|b| <[u8; 8]>::try_from(b).ok())
                    && ykey.len() == TOMB_EXPIRY_KEY_LEN
                {
                    let mut key = [0u8; TOMB_KEY_LEN];
                    key[0] = TOMB_PREFIX;
                    key[1..].copy_from_slice(&ykey[9..]);
                    let value = self
                        .store
                        .history
                        .get(key)
                        .map_err(Error::db(HISTORY, "read"))?;
                    // Only the tombstone this entry was written with (or
                    // one whose time does not read, which no entry names).
                    if value.is_some_and(|v| v[..] == at[..] || v.len() != 8) {
                        staged.remove_key(sled::IVec::from(&key[..]));
                        purged += 1;
                    }
                } else {
                    tracing::warn!("a tombstone expiry entry of the wrong length is removed");
                }
                staged.remove_key(ykey);
                if due == Self::PURGE_STEP {
                    break;
                }
            }
            if due == 0 {
                return Ok(purged);
            }
            staged.commit()?;
        }
    }
}
