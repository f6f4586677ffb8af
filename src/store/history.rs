//! Message history: appends, delivery states, pages and the purge.
//!
//! Messages live in blocks (see `blocks`) in the `history` tree, next to
//! their conversation records and the expiry entries; every write is one
//! atomic sled batch, so a crash leaves a write fully applied or not at all.

use serde::{Deserialize, Serialize};

use super::blocks::{self, BLOCKS, HISTORY, MAX_BODY, Staged, block_conv, open_block};
use super::codec::hex;
use super::keys::TAIL_PREFIX;
use super::keys::{
    BlockKey, Cursor, EXPIRY_KEY_LEN, EXPIRY_PREFIX, MESSAGE_KEY_LEN, block_first, block_key,
    block_prefix, key_conv_id, message_key, tail_prefix,
};
use super::tail;
use super::{Error, Store};

/// Where a message stands on its way to the recipient. States only move
/// forward: `Pending < Sent < StoredAtRelay < Delivered < Read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DeliveryState {
    /// Written locally, not yet handed to any transport.
    Pending,
    /// Handed to a peer connection.
    Sent,
    /// A relay took custody of it.
    StoredAtRelay,
    /// The recipient's device confirmed receipt.
    Delivered,
    /// The recipient read it.
    Read,
}

/// Whether a message was received or written on this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From a peer: counts towards the conversation's unread messages.
    Incoming,
    /// Written here.
    Outgoing,
    /// Written on another device of this account and copied here: not
    /// unread, and, like a peer's, not stored again once deleted here.
    Copied,
}

/// The outcome of [`History::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// The message is new and was stored.
    Inserted,
    /// A message with this id is already stored; nothing changed.
    Duplicate,
}

/// One message as kept on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Random id chosen by the sender; unique per message.
    pub msg_id: [u8; 16],
    /// The conversation it belongs to.
    pub conv_id: [u8; 32],
    /// The sender's identity.
    pub sender: [u8; 32],
    /// Lamport clock of the conversation when it was written.
    pub lamport: u64,
    /// Sender's wall clock, seconds since the Unix epoch.
    pub sent_at: u64,
    /// Decrypted content, at most `History::MAX_BODY` bytes.
    pub body: Vec<u8>,
    /// Delivery progress (meaningful for outgoing messages).
    pub state: DeliveryState,
    /// When it is to be purged, seconds since the Unix epoch.
    pub expires_at: Option<u64>,
}

/// Names one stored message: everything its sender chose and
/// authenticated about its place in a conversation. Receipts and replies
/// refer to messages by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageRef {
    /// The conversation.
    pub conv_id: [u8; 32],
    /// Its Lamport clock.
    pub lamport: u64,
    /// Its sender's identity.
    pub sender: [u8; 32],
    /// Its id.
    pub msg_id: [u8; 16],
}

impl MessageRef {
    pub(crate) fn sort_key(&self) -> [u8; MESSAGE_KEY_LEN] {
        message_key(&self.conv_id, self.lamport, &self.sender, &self.msg_id)
    }
}

impl StoredMessage {
    /// The reference that names this message.
    pub fn reference(&self) -> MessageRef {
        MessageRef {
            conv_id: self.conv_id,
            lamport: self.lamport,
            sender: self.sender,
            msg_id: self.msg_id,
        }
    }
}

/// One page of a conversation, newest message first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The messages, newest first.
    pub messages: Vec<StoredMessage>,
    /// Where the next (older) page starts; `None` when this page reaches the
    /// beginning of the conversation.
    pub next: Option<Cursor>,
}

/// Message history and conversations of a [`Store`].
#[derive(Debug, Clone, Copy)]
pub struct History<'a> {
    pub(super) store: &'a Store,
}

impl<'a> History<'a> {
    /// Largest message body accepted by [`Self::append`].
    pub const MAX_BODY: usize = MAX_BODY;
    /// Most messages one [`Self::page`] returns.
    pub const MAX_PAGE: usize = 1000;
    /// Most blocks one atomic step of [`Self::purge_expired`] rewrites.
    pub const PURGE_STEP: usize = 256;

    pub(super) fn new(store: &'a Store) -> Self {
        Self { store }
    }

    /// Stores a message unless it is already stored, and updates its
    /// conversation (created if new): last activity, Lamport clock, and for
    /// [`Direction::Incoming`] the unread count. All in one atomic write. A
    /// body over [`Self::MAX_BODY`] is [`Error::TooLarge`].
    ///
    /// A message is a duplicate when one with the same [`MessageRef`] —
    /// conversation, Lamport clock, sender and id, all chosen and
    /// authenticated by its sender — is stored: a copy delivered twice (by
    /// two paths, or retried) carries the same four. Another sender's
    /// message that reuses the id is a different message and is kept. An
    /// incoming message deleted here ([`Self::delete`], [`Self::clear`]) is
    /// a duplicate too while its tombstone lasts (see `tombstones`).
    ///
    /// If the conversation is temporary (has a retention period), the
    /// message expires at `sent_at + retention` or its own `expires_at`,
    /// whichever comes first; [`Self::purge_expired`] removes it then.
    pub fn append(&self, msg: &StoredMessage, direction: Direction) -> Result<Appended, Error> {
        let mut out = self.append_batch(std::slice::from_ref(msg), direction)?;
        out.pop().ok_or(Error::Malformed {
            tree: HISTORY,
            key: hex(&msg.msg_id),
            what: "empty batch result".into(),
        })
    }

    /// [`Self::append`] for many messages in one atomic write: all are
    /// stored (or found to be duplicates) or, on error, none. Returns one
    /// outcome per message, in order; a repeat within the batch is a
    /// duplicate too.
    pub fn append_batch(
        &self,
        msgs: &[StoredMessage],
        direction: Direction,
    ) -> Result<Vec<Appended>, Error> {
        for msg in msgs {
            if msg.body.len() > MAX_BODY {
                return Err(Error::TooLarge {
                    tree: HISTORY,
                    key: hex(&message_key(
                        &msg.conv_id,
                        msg.lamport,
                        &msg.sender,
                        &msg.msg_id,
                    )),
                    len: msg.body.len(),
                    max: MAX_BODY,
                });
            }
        }
        let _writer = self.store.lock_history();
        let mut staged = Staged::new(self.store);
        let mut out = Vec::with_capacity(msgs.len());
        for msg in msgs {
            // A message deleted here and sent again stays deleted.
            if direction != Direction::Outgoing && staged.tombstoned(msg)? {
                out.push(Appended::Duplicate);
                continue;
            }
            let retention = staged.retention(&msg.conv_id)?;
            let mut msg = std::borrow::Cow::Borrowed(msg);
            if let Some(r) = retention {
                let by_retention = msg.sent_at.saturating_add(r);
                let own = msg.expires_at;
                msg.to_mut().expires_at = Some(own.map_or(by_retention, |e| e.min(by_retention)));
            }
            if staged.insert(&msg)? {
                staged.note_inserted(&msg, direction)?;
                out.push(Appended::Inserted);
            } else {
                out.push(Appended::Duplicate);
            }
        }
        staged.commit()?;
        Ok(out)
    }

    /// Deletes every message whose expiry is at or before `now` (seconds
    /// since the Unix epoch) and returns how many. The node calls this from
    /// a timer; tests call it with a chosen `now`. Works in atomic steps of
    /// up to [`Self::PURGE_STEP`] blocks, so an interruption leaves every
    /// message either fully present or fully gone. Tombstones whose time is
    /// up go first ([`Self::purge_tombstones`]; not counted).
    ///
    /// A message of a temporary conversation that goes while its sender's
    /// clock gives it more than [`super::CLOCK_SLACK`] longer (a clock
    /// ahead of ours: the node keeps a message no longer than the
    /// retention from when it came) leaves a tombstone, so that a copy
    /// its sender sends again is not stored again.
    pub fn purge_expired(&self, now: u64) -> Result<usize, Error> {
        self.purge_tombstones(now)?;
        let mut end = [0xffu8; EXPIRY_KEY_LEN];
        end[0] = EXPIRY_PREFIX;
        end[1..9].copy_from_slice(&now.to_be_bytes());
        let mut purged = 0;
        loop {
            let _writer = self.store.lock_history();
            // An entry that cannot be handled (a malformed key, a block
            // that does not open) is removed alone and logged: left, it
            // would come first at every step and stop every later expiry.
            let in_the_way = match self.due_expiries(&end)? {
                (_, Some(bad)) => bad,
                (due, None) if due.is_empty() => return Ok(purged),
                (due, None) => match self.purge_step(&due, now)? {
                    Ok(n) => {
                        purged += n;
                        continue;
                    }
                    Err(bad) => bad,
                },
            };
            let (xkey, e) = in_the_way;
            tracing::error!(error = %e, "an expiry entry that cannot be handled is removed; its messages stay");
            let mut staged = Staged::new(self.store);
            staged.remove_key(xkey);
            staged.commit()?;
        }
    }

    /// Up to [`Self::PURGE_STEP`] expiry entries due by `end`, with their
    /// block keys; stops at a malformed one, returned apart.
    #[allow(clippy::type_complexity)]
    fn due_expiries(
        &self,
        end: &[u8; EXPIRY_KEY_LEN],
    ) -> Result<(Vec<(sled::IVec, BlockKey)>, Option<(sled::IVec, Error)>), Error> {
        let mut due = Vec::new();
        for item in self.store.history.range(&[EXPIRY_PREFIX][..]..=&end[..]) {
            let (xkey, _) = item.map_err(Error::db(HISTORY, "scan"))?;
            let Some(block) = xkey.get(9..).and_then(|k| BlockKey::try_from(k).ok()) else {
                let what = format!(
                    "expiry key is {} bytes, expected {EXPIRY_KEY_LEN}",
                    xkey.len()
                );
                let key = hex(&xkey);
                let e = Error::Malformed {
                    tree: HISTORY,
                    key,
                    what,
                };
                return Ok((due, Some((xkey, e))));
            };
            due.push((xkey, block));
            if due.len() == Self::PURGE_STEP {
                break;
            }
        }
        Ok((due, None))
    }

    /// Removes what `due` names as expired at `now`, in one atomic batch;
    /// how many messages went, or the entry whose block does not open
    /// (nothing is written then).
    fn purge_step(
        &self,
        due: &[(sled::IVec, BlockKey)],
        now: u64,
    ) -> Result<Result<usize, (sled::IVec, Error)>, Error> {
        let s = self.store;
        let mut staged = Staged::new(s);
        let mut done = std::collections::HashSet::new();
        let mut purged = 0;
        // Media messages that go: their chunks go after the commit.
        let media = std::cell::RefCell::new(std::collections::HashMap::new());
        // Messages that go while their sender's clock still gives them
        // time: tombstones, so that a copy sent again stays gone.
        let tombs = std::cell::RefCell::new(std::collections::HashMap::new());
        let expired = |conv: [u8; 32], retention: Option<u64>, e: &blocks::Entry| {
            let gone = e.expires_at.is_some_and(|at| at <= now);
            if gone
                && retention.is_some_and(|r| {
                    e.sent_at.saturating_add(r) > now.saturating_add(super::CLOCK_SLACK)
                })
            {
                tombs
                    .borrow_mut()
                    .entry(conv)
                    .or_insert_with(Vec::new)
                    .push(e.sort_key(&conv));
            }
            if gone && super::media::is_media(&e.body) {
                let r = MessageRef {
                    conv_id: conv,
                    lamport: e.lamport,
                    sender: e.sender,
                    msg_id: e.msg_id,
                };
                media.borrow_mut().insert(r, e.body.clone());
            }
            gone
        };
        for (xkey, block) in due {
            // Every due entry goes: a block keeps an entry only for an
            // expiry after `now`, which the commit writes anew.
            staged.remove_key(xkey.clone());
            if !done.insert(*block) {
                // A second entry for a block this step handled.
                continue;
            }
            // Block and tail keys alike: a prefix byte, then a message's
            // sort key, which starts with its conversation.
            let conv = blocks::block_conv(block).unwrap_or_default();
            // Read once per step, with the record the removal updates.
            let retention = match staged.retention(&conv) {
                Ok(r) => r,
                Err(e) if e.is_damaged_record() => None,
                Err(e) => return Err(e),
            };
            let removed = if block[0] == TAIL_PREFIX {
                staged.remove_tail_where(block, |e| expired(conv, retention, e))
            } else if s
                .history
                .contains_key(block)
                .map_err(Error::db(HISTORY, "read"))?
            {
                staged.remove_where(block, |e| expired(conv, retention, e))
            } else {
                Ok(0)
            };
            match removed {
                Ok(n) => purged += n,
                Err(e) if e.is_damaged_record() => return Ok(Err((xkey.clone(), e))),
                Err(e) => return Err(e),
            }
        }
        for (conv, sorts) in tombs.into_inner() {
            self.stage_tombstones(&mut staged, &conv, sorts, now)?;
        }
        staged.commit()?;
        self.forget_media(media.into_inner())?;
        Ok(Ok(purged))
    }

    /// After the commit that deleted them: the chunks and wanted records
    /// of media messages that went.
    fn forget_media(
        &self,
        media: std::collections::HashMap<MessageRef, Vec<u8>>,
    ) -> Result<(), Error> {
        if media.is_empty() {
            return Ok(());
        }
        let m = self.store.media()?;
        for (r, body) in &media {
            // The message is gone whatever happens here; a chunk left
            // behind cannot be read without it.
            if let Err(e) = m.forget_chunks(body, &r.sender).and_then(|_| m.unwant(r)) {
                tracing::warn!(error = %e, "chunks of a deleted media message left");
            }
        }
        Ok(())
    }

    /// Deletes every message of conversation `conv_id` stored now, with
    /// the chunks of its files, and returns how many. The conversation
    /// itself stays (its title, retention, and the sessions and groups
    /// it belongs to), with no unread message. Works in atomic steps of
    /// up to [`Self::PURGE_STEP`] records, like the purge: a crash leaves
    /// each message fully present or fully gone, and clearing again
    /// finishes. A record that does not open is deleted as it is. An
    /// unknown id is [`Error::UnknownConversation`].
    ///
    /// The newest [`super::MAX_TOMBSTONES`] messages not written by
    /// `mine` (this device's identity) leave tombstones, each in the step
    /// that deletes it, at `now`, so that a contact sending one of them
    /// again does not bring it back; so does one that arrives during the
    /// clear, newer than those (or any, if the conversation had fewer).
    pub fn clear(&self, conv_id: &[u8; 32], now: u64, mine: &[u8; 32]) -> Result<usize, Error> {
        if self.conv_record(conv_id)?.is_none() {
            return Err(Error::UnknownConversation {
                conv_id: hex(conv_id),
            });
        }
        let mut cleared = 0;
        // The oldest message that leaves a tombstone (by sort key); `None`
        // when fewer than the cap were found: every contact's message.
        let mut from: Option<Option<[u8; MESSAGE_KEY_LEN]>> = None;
        loop {
            let _writer = self.store.lock_history();
            let keys = self.records_of(conv_id)?;
            if keys.is_empty() {
                break;
            }
            let from = match from {
                Some(f) => f,
                None => {
                    let newest = self.newest_sorts(conv_id, super::MAX_TOMBSTONES, mine)?;
                    *from.insert(
                        (newest.len() == super::MAX_TOMBSTONES)
                            .then(|| newest.last().copied())
                            .flatten(),
                    )
                }
            };
            let mut staged = Staged::new(self.store);
            let media = std::cell::RefCell::new(std::collections::HashMap::new());
            let tombs = std::cell::RefCell::new(Vec::new());
            let all = |e: &blocks::Entry| {
                if super::media::is_media(&e.body) {
                    let r = MessageRef {
                        conv_id: *conv_id,
                        lamport: e.lamport,
                        sender: e.sender,
                        msg_id: e.msg_id,
                    };
                    media.borrow_mut().insert(r, e.body.clone());
                }
                let sort = e.sort_key(conv_id);
                if &e.sender != mine && from.is_none_or(|f| sort >= f) {
                    tombs.borrow_mut().push(sort);
                }
                true
            };
            for key in &keys {
                let removed = if key[0] == TAIL_PREFIX {
                    staged.remove_tail_where(key, all)
                } else {
                    staged.remove_where(key, all)
                };
                match removed {
                    Ok(n) => cleared += n,
                    Err(e) if e.is_damaged_record() => {
                        tracing::warn!(error = %e, "a history record that does not open is deleted with its conversation");
                        staged.remove_key(sled::IVec::from(&key[..]));
                    }
                    Err(e) => return Err(e),
                }
            }
            self.stage_tombstones(&mut staged, conv_id, tombs.into_inner(), now)?;
            staged.commit()?;
            self.forget_media(media.into_inner())?;
        }
        self.mark_read(conv_id)?;
        Ok(cleared)
    }

    /// Deletes the message `r` (and the chunks of the file it carries, if
    /// any) in one atomic write, with a tombstone made at `now` (unless
    /// `mine`, this device's identity, wrote it) so that a copy sent again
    /// is not stored again; `false` if it is not stored. A contact's
    /// message not marked read lowers the unread count by one.
    pub fn delete(&self, r: &MessageRef, now: u64, mine: &[u8; 32]) -> Result<bool, Error> {
        let entry = {
            let _writer = self.store.lock_history();
            let mut staged = Staged::new(self.store);
            let sort = r.sort_key();
            let Some(entry) = staged.remove_message(&sort)? else {
                return Ok(false);
            };
            if &r.sender != mine {
                self.stage_tombstones(&mut staged, &r.conv_id, vec![sort], now)?;
                // A contact's message not read yet was counted unread; a
                // copy of what another device of this account wrote (the
                // one message from another sender stored `Sent`) was not.
                if entry.state < DeliveryState::Read && entry.state != DeliveryState::Sent {
                    let record = staged.record_mut(&r.conv_id)?;
                    record.conv.unread = record.conv.unread.saturating_sub(1);
                }
            }
            staged.commit()?;
            entry
        };
        if super::media::is_media(&entry.body) {
            self.forget_media([(*r, entry.body)].into_iter().collect())?;
        }
        Ok(true)
    }

    /// Up to [`Self::PURGE_STEP`] keys of the tail records and blocks of
    /// `conv_id`.
    fn records_of(&self, conv_id: &[u8; 32]) -> Result<Vec<BlockKey>, Error> {
        let mut keys = Vec::new();
        for prefix in [tail_prefix(conv_id), block_prefix(conv_id)] {
            for item in self.store.history.scan_prefix(prefix) {
                let (key, _) = item.map_err(Error::db(HISTORY, "scan"))?;
                let key = BlockKey::try_from(&key[..]).map_err(|_| Error::Malformed {
                    tree: HISTORY,
                    key: hex(&key),
                    what: format!("a history record's key is {} bytes", key.len()),
                })?;
                keys.push(key);
                if keys.len() == Self::PURGE_STEP {
                    return Ok(keys);
                }
            }
        }
        Ok(keys)
    }

    /// The stored message `r` names, if any.
    pub fn get(&self, r: &MessageRef) -> Result<Option<StoredMessage>, Error> {
        let sort = r.sort_key();
        if let Some(e) = tail::get_tail(self.store, &sort)? {
            return Ok(Some(e.into_message(r.conv_id)));
        }
        Ok(self
            .find_in_blocks(&r.conv_id, &sort)?
            .map(|e| e.into_message(r.conv_id)))
    }

    /// The message at `sort` if a block of `conv_id` holds it.
    pub(crate) fn find_in_blocks(
        &self,
        conv_id: &[u8; 32],
        sort: &[u8; MESSAGE_KEY_LEN],
    ) -> Result<Option<blocks::Entry>, Error> {
        let lo = block_prefix(conv_id);
        let hi = block_key(sort);
        let Some(item) = self.store.history.range(&lo[..]..=&hi[..]).next_back() else {
            return Ok(None);
        };
        let (key, sealed) = item.map_err(Error::db(HISTORY, "read"))?;
        let entries = open_block(self.store, &key, &sealed)?;
        Ok(entries.into_iter().find(|e| &e.sort_key(conv_id) == sort))
    }

    /// Moves a message's delivery state forward. Returns `true` if it changed,
    /// `false` if the message was already at `state` or further (a late or
    /// repeated receipt). An unknown message is [`Error::UnknownMessage`].
    pub fn set_state(&self, r: &MessageRef, state: DeliveryState) -> Result<bool, Error> {
        let mut out = self.set_states(&[(*r, state)])?;
        match out.pop() {
            Some(Some(changed)) => Ok(changed),
            _ => Err(Error::UnknownMessage {
                msg_id: hex(&r.msg_id),
            }),
        }
    }

    /// [`Self::set_state`] for many messages (a batch of receipts) in one
    /// atomic write. For each: `Some(changed)`, or `None` if no such message
    /// is stored (an unknown message is not an error here: a batch of
    /// receipts may name messages already purged).
    pub fn set_states(
        &self,
        changes: &[(MessageRef, DeliveryState)],
    ) -> Result<Vec<Option<bool>>, Error> {
        let _writer = self.store.lock_history();
        let mut staged = Staged::new(self.store);
        let mut out = Vec::with_capacity(changes.len());
        for (r, state) in changes {
            out.push(staged.set_state(&r.sort_key(), *state)?);
        }
        staged.commit()?;
        Ok(out)
    }

    /// Up to `limit` messages of `conv_id` (clamped to `1..=MAX_PAGE`),
    /// newest first, strictly older than `before` (or the newest ones if
    /// `before` is `None`). Following `next` until it is `None` visits every
    /// message exactly once; messages appended meanwhile with a later Lamport
    /// clock sort above the first page and do not shift later ones.
    pub fn page(
        &self,
        conv_id: &[u8; 32],
        before: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page, Error> {
        let limit = limit.clamp(1, Self::MAX_PAGE);
        let mut upper = match before {
            None => None,
            Some(cursor) => {
                let found = key_conv_id(cursor.key());
                if &found != conv_id {
                    return Err(Error::CursorConversation {
                        expected: hex(conv_id),
                        found: hex(&found),
                    });
                }
                Some(*cursor.key())
            }
        };
        let mut messages = Vec::with_capacity(limit.min(64));
        let mut more = false;
        // The tail first: it is newer than every block.
        tail::scan_tail_rev(self.store, conv_id, upper.as_ref(), |e| {
            if messages.len() == limit {
                more = true;
                return false;
            }
            messages.push(e.into_message(*conv_id));
            true
        })?;
        if let Some(m) = messages.last() {
            upper = Some(message_key(conv_id, m.lamport, &m.sender, &m.msg_id));
        }
        if messages.len() == limit && !more {
            more = self.any_block_below(conv_id, upper.as_ref())?;
        }
        // Then the blocks, newest first: each step reads the block just
        // below `upper`. (One lookup per block: sled's reverse iteration
        // costs more per step than a fresh lookup.)
        while !more
            && messages.len() < limit
            && let Some((key, entries)) = self.block_below(conv_id, upper.as_ref())?
        {
            let first = block_first(&key);
            for e in entries.into_iter().rev() {
                let sort = e.sort_key(conv_id);
                if upper.is_some_and(|u| sort >= u) {
                    continue;
                }
                if messages.len() == limit {
                    more = true;
                    break;
                }
                messages.push(e.into_message(*conv_id));
            }
            if more {
                break;
            }
            upper = Some(first);
            if messages.len() == limit {
                more = self.any_block_below(conv_id, upper.as_ref())?;
            }
        }
        let next = if more {
            messages
                .last()
                .map(|m| Cursor::from_key(message_key(conv_id, m.lamport, &m.sender, &m.msg_id)))
        } else {
            None
        };
        Ok(Page { messages, next })
    }

    /// The cursor of the page that starts after `m` (older than it): for a
    /// caller that hands out only the front of a page.
    pub fn cursor_after(m: &StoredMessage) -> Cursor {
        Cursor::from_key(message_key(&m.conv_id, m.lamport, &m.sender, &m.msg_id))
    }

    /// Calls `each` with every message of `conv_id`, oldest first, reading
    /// one block at a time.
    pub(crate) fn for_each_oldest_first(
        &self,
        conv_id: &[u8; 32],
        mut each: impl FnMut(StoredMessage) -> Result<(), Error>,
    ) -> Result<usize, Error> {
        let lo = block_prefix(conv_id);
        let mut n = 0;
        for item in self.store.history.scan_prefix(lo) {
            let (key, sealed) = item.map_err(Error::db(HISTORY, "scan"))?;
            for e in open_block(self.store, &key, &sealed)? {
                each(e.into_message(*conv_id))?;
                n += 1;
            }
        }
        tail::scan_tail(self.store, conv_id, |e| {
            n += 1;
            each(e.into_message(*conv_id))
        })?;
        Ok(n)
    }

    /// Whether `conv_id` has a block with a key below `upper` (without
    /// opening it).
    fn any_block_below(
        &self,
        conv_id: &[u8; 32],
        upper: Option<&[u8; MESSAGE_KEY_LEN]>,
    ) -> Result<bool, Error> {
        Ok(self.raw_block_below(conv_id, upper)?.is_some())
    }

    /// The newest block record of `conv_id` with a key below `upper` (any
    /// block if `None`), still sealed.
    fn raw_block_below(
        &self,
        conv_id: &[u8; 32],
        upper: Option<&[u8; MESSAGE_KEY_LEN]>,
    ) -> Result<Option<(sled::IVec, sled::IVec)>, Error> {
        let lo = block_prefix(conv_id);
        let item = match upper {
            Some(u) => self
                .store
                .history
                .range(&lo[..]..&block_key(u)[..])
                .next_back(),
            None => self.store.history.scan_prefix(lo).next_back(),
        };
        item.transpose().map_err(Error::db(HISTORY, "scan"))
    }

    /// The newest block of `conv_id` with a key below `upper` (any block if
    /// `None`), opened.
    fn block_below(
        &self,
        conv_id: &[u8; 32],
        upper: Option<&[u8; MESSAGE_KEY_LEN]>,
    ) -> Result<Option<(BlockKey, Vec<blocks::Entry>)>, Error> {
        let Some((key, sealed)) = self.raw_block_below(conv_id, upper)? else {
            return Ok(None);
        };
        debug_assert_eq!(block_conv(&key).as_ref(), Some(conv_id));
        let entries = open_block(self.store, &key, &sealed)?;
        let key = key.as_ref().try_into().map_err(|_| Error::Malformed {
            tree: BLOCKS.name,
            key: hex(&key),
            what: "block key has the wrong length".into(),
        })?;
        Ok(Some((key, entries)))
    }
}
