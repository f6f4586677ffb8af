//! Message blocks: consecutive messages of one conversation sealed together.
//!
//! A conversation's messages, in sort-key order, are cut into blocks of at
//! most [`MAX_BLOCK_MESSAGES`] messages and about [`TARGET_BLOCK_BYTES`]
//! bytes (a single larger message is a block of its own). A block is stored
//! under `m ‖ sort key of its first message`, so the block that holds — or
//! would hold — a message is the last block whose key is at or below the
//! message's sort key. One sealed record per block instead of per message
//! makes a page of 50 cost three or four record reads and decryptions, and
//! keeps sled's tree (and its memory) about ten times smaller.
//!
//! [`Staged`] is a history write in progress: blocks and conversations are
//! read once, changed in memory, and written back as one sled batch, which
//! sled applies atomically (all or nothing, also across a crash). Writers
//! are serialised by the store's history lock; readers need no lock, as
//! every record they read is a consistent version.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::codec::{TreeSpec, hex};
use super::conversations::{ConvRecord, Pending};
use super::keys::{
    BLOCK_KEY_LEN, BlockKey, MESSAGE_KEY_LEN, block_first, block_key, block_prefix, message_key,
};
use super::tail::TailOp;
use super::{DeliveryState, Direction, Error, Store, StoredMessage};

/// Most messages in one block.
pub(crate) const MAX_BLOCK_MESSAGES: usize = 16;
/// A block takes another message only while its encoding stays under this.
pub(crate) const TARGET_BLOCK_BYTES: usize = 6 * 1024;
/// Largest message body stored (media is stored elsewhere).
pub(crate) const MAX_BODY: usize = 64 * 1024;
/// Encoded size of an entry beyond its body, at most: ids, clocks, state,
/// expiry and length prefixes.
const ENTRY_OVERHEAD: usize = 32 + 16 + 3 * 10 + 2 + 5;

/// Most messages per conversation a write may add as single sled writes
/// (see `Staged::commit`); larger writes go in one batch. Bounds the note a
/// conversation record carries about its last write.
pub(crate) const MAX_PENDING_ADDED: usize = 4;

/// The `history` tree: conversations, blocks and expiry entries (see `keys`).
pub(crate) const HISTORY: &str = "history";

/// Blocks: either up to `TARGET_BLOCK_BYTES` of entries, or one entry.
pub(crate) const BLOCKS: TreeSpec = TreeSpec {
    name: HISTORY,
    max_plain: MAX_BODY + ENTRY_OVERHEAD + TARGET_BLOCK_BYTES + 8,
};

/// One message inside a block; the conversation is in the block's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub(crate) lamport: u64,
    pub(crate) sender: [u8; 32],
    pub(crate) msg_id: [u8; 16],
    pub(crate) sent_at: u64,
    #[serde(with = "serde_bytes")]
    pub(crate) body: Vec<u8>,
    pub(crate) state: DeliveryState,
    pub(crate) expires_at: Option<u64>,
}

impl Entry {
    pub(crate) fn from_message(m: &StoredMessage) -> Self {
        Self {
            lamport: m.lamport,
            sender: m.sender,
            msg_id: m.msg_id,
            sent_at: m.sent_at,
            body: m.body.clone(),
            state: m.state,
            expires_at: m.expires_at,
        }
    }

    pub(crate) fn into_message(self, conv_id: [u8; 32]) -> StoredMessage {
        StoredMessage {
            msg_id: self.msg_id,
            conv_id,
            sender: self.sender,
            lamport: self.lamport,
            sent_at: self.sent_at,
            body: self.body,
            state: self.state,
            expires_at: self.expires_at,
        }
    }

    /// The position inside a conversation: (Lamport clock, sender, id).
    pub(crate) fn order(&self) -> (u64, &[u8; 32], &[u8; 16]) {
        (self.lamport, &self.sender, &self.msg_id)
    }

    pub(crate) fn sort_key(&self, conv_id: &[u8; 32]) -> [u8; MESSAGE_KEY_LEN] {
        message_key(conv_id, self.lamport, &self.sender, &self.msg_id)
    }

    pub(super) fn size(&self) -> usize {
        self.body.len() + ENTRY_OVERHEAD
    }
}

/// The conversation a block key belongs to.
pub(crate) fn block_conv(key: &[u8]) -> Option<[u8; 32]> {
    key.get(1..33).and_then(|c| c.try_into().ok())
}

fn as_block_key(key: &[u8]) -> Result<BlockKey, Error> {
    key.try_into().map_err(|_| Error::Malformed {
        tree: HISTORY,
        key: hex(key),
        what: format!("block key is {} bytes, expected {BLOCK_KEY_LEN}", key.len()),
    })
}

/// Opens a sealed block and checks that it is one: non-empty, in order, and
/// starting with the message its key names.
pub(crate) fn open_block(s: &Store, key: &[u8], sealed: &[u8]) -> Result<Vec<Entry>, Error> {
    let key = as_block_key(key)?;
    let entries: Vec<Entry> = s.sealer.open(&BLOCKS, &key, sealed)?;
    let conv = block_conv(&key).unwrap_or_default();
    let in_order = entries.windows(2).all(|w| w[0].order() < w[1].order());
    match entries.first() {
        Some(first) if in_order && first.sort_key(&conv) == block_first(&key) => Ok(entries),
        _ => Err(Error::Malformed {
            tree: HISTORY,
            key: hex(&key),
            what: "block is empty, out of order, or does not start at its key".into(),
        }),
    }
}

/// Earliest expiry among a block's messages.
pub(super) fn earliest_expiry(entries: &[Entry]) -> Option<u64> {
    entries.iter().filter_map(|e| e.expires_at).min()
}

/// Cuts sorted entries into blocks: each takes entries while it stays under
/// both limits, and always at least one.
fn cut(entries: Vec<Entry>) -> Vec<Vec<Entry>> {
    let mut out: Vec<Vec<Entry>> = Vec::new();
    let mut bytes = 0;
    for e in entries {
        let fits = out.last().is_some_and(|b| {
            b.len() < MAX_BLOCK_MESSAGES && bytes + e.size() <= TARGET_BLOCK_BYTES
        });
        if !fits {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += e.size();
        if let Some(b) = out.last_mut() {
            b.push(e);
        }
    }
    out
}

fn fits_one_more(entries: &[Entry], e: &Entry) -> bool {
    entries.len() < MAX_BLOCK_MESSAGES
        && entries.iter().map(Entry::size).sum::<usize>() + e.size() <= TARGET_BLOCK_BYTES
}

/// A history write in progress (see the module documentation).
pub(crate) struct Staged<'s> {
    pub(super) store: &'s Store,
    /// Tail records to write or delete.
    pub(super) tail: BTreeMap<BlockKey, TailOp>,
    /// Blocks to write (`Some`) or delete (`None`).
    pub(super) blocks: BTreeMap<BlockKey, Option<Vec<Entry>>>,
    /// The earliest expiry of each block as it was on disk when read.
    pub(super) read_expiry: HashMap<BlockKey, Option<u64>>,
    /// Conversation records read or created, and whether they changed.
    pub(super) convs: HashMap<[u8; 32], (ConvRecord, bool)>,
    /// Conversations whose newest message was purged: their copy of it is
    /// re-read from the blocks before the commit.
    pub(super) stale_newest: HashSet<[u8; 32]>,
    /// Counters of each conversation record as read, and the messages this
    /// write adds to it (for [`ConvRecord::pending`]).
    pub(super) journal: HashMap<[u8; 32], Pending>,
    /// Block values read from disk while locating them, not yet opened.
    fetched: HashMap<BlockKey, sled::IVec>,
    /// Other keys to delete in the same batch.
    pub(super) removals: Vec<sled::IVec>,
    /// Other keys to write in the same batch (after the deletions).
    pub(super) inserts: Vec<(sled::IVec, sled::IVec)>,
    /// Messages are deleted (a purge, a clear, a delete): the write goes
    /// as one batch (see `Staged::commit`).
    pub(super) deletes_messages: bool,
}

impl<'s> Staged<'s> {
    pub(crate) fn new(store: &'s Store) -> Self {
        Self {
            store,
            tail: BTreeMap::new(),
            blocks: BTreeMap::new(),
            read_expiry: HashMap::new(),
            convs: HashMap::new(),
            stale_newest: HashSet::new(),
            journal: HashMap::new(),
            fetched: HashMap::new(),
            removals: Vec::new(),
            inserts: Vec::new(),
            deletes_messages: false,
        }
    }

    /// Deletes `key` (an expiry entry, a tombstone) in the same batch.
    pub(crate) fn remove_key(&mut self, key: sled::IVec) {
        self.removals.push(key);
    }

    /// Writes `value` at `key` (a tombstone) in the same batch.
    pub(crate) fn insert_key(&mut self, key: &[u8], value: &[u8]) {
        self.inserts.push((key.into(), value.into()));
    }

    /// The conversation record, read once per write (created if new),
    /// marked as changed.
    pub(super) fn record_mut(&mut self, conv_id: &[u8; 32]) -> Result<&mut ConvRecord, Error> {
        self.load_record(conv_id)?;
        match self.convs.get_mut(conv_id) {
            Some((record, changed)) => {
                *changed = true;
                Ok(record)
            }
            None => Err(Error::UnknownConversation {
                conv_id: hex(conv_id),
            }),
        }
    }

    pub(super) fn load_record(&mut self, conv_id: &[u8; 32]) -> Result<(), Error> {
        if !self.convs.contains_key(conv_id) {
            let record = self
                .store
                .history()
                .conv_record(conv_id)?
                .unwrap_or_else(|| ConvRecord::new(*conv_id));
            self.journal.insert(
                *conv_id,
                Pending {
                    before: record.counters(),
                    added: Vec::new(),
                },
            );
            self.convs.insert(*conv_id, (record, false));
        }
        Ok(())
    }

    /// The conversation's retention period, if it is temporary.
    pub(crate) fn retention(&mut self, conv_id: &[u8; 32]) -> Result<Option<u64>, Error> {
        self.load_record(conv_id)?;
        Ok(self.convs.get(conv_id).and_then(|(r, _)| r.conv.retention))
    }

    /// Accounts for a newly inserted message in its conversation record.
    pub(crate) fn note_inserted(
        &mut self,
        msg: &StoredMessage,
        direction: Direction,
    ) -> Result<(), Error> {
        if let Some(j) = self.journal.get_mut(&msg.conv_id) {
            j.added.push((
                (msg.lamport, msg.sender, msg.msg_id),
                direction == Direction::Incoming,
                msg.sent_at,
            ));
        }
        let record = self.record_mut(&msg.conv_id)?;
        record.conv.record(msg, direction);
        let entry = Entry::from_message(msg);
        if record
            .newest
            .as_ref()
            .is_none_or(|n| n.order() < entry.order())
        {
            record.newest = Some(entry);
        }
        Ok(())
    }

    /// The last block of `conv_id` whose key is within `range` on disk or
    /// staged, newest staged state winning.
    pub(super) fn last_block_in(
        &mut self,
        conv_id: &[u8; 32],
        upper: &BlockKey,
        inclusive: bool,
    ) -> Result<Option<BlockKey>, Error> {
        let lo = block_prefix(conv_id);
        let staged = self
            .blocks
            .range(..=*upper)
            .rev()
            .filter(|(k, _)| inclusive || *k != upper)
            .take_while(|(k, _)| k.starts_with(&lo))
            .find(|(_, v)| v.is_some())
            .map(|(k, _)| *k);
        let tree = &self.store.history;
        let iter = if inclusive {
            tree.range(&lo[..]..=&upper[..])
        } else {
            tree.range(&lo[..]..&upper[..])
        };
        let mut on_disk = None;
        for item in iter.rev() {
            let (k, v) = item.map_err(Error::db(HISTORY, "scan"))?;
            let k = as_block_key(&k)?;
            // A block deleted in this write no longer counts.
            if matches!(self.blocks.get(&k), Some(None)) {
                continue;
            }
            if !self.blocks.contains_key(&k) {
                self.fetched.insert(k, v);
            }
            on_disk = Some(k);
            break;
        }
        Ok(staged.max(on_disk))
    }

    /// The first block of `conv_id` (on disk or staged).
    fn first_block(&self, conv_id: &[u8; 32]) -> Result<Option<BlockKey>, Error> {
        let lo = block_prefix(conv_id);
        let mut hi = [0xffu8; BLOCK_KEY_LEN];
        hi[..33].copy_from_slice(&lo);
        let start = block_key(&message_key(conv_id, 0, &[0; 32], &[0; 16]));
        let staged = self
            .blocks
            .range(start..)
            .take_while(|(k, _)| k.starts_with(&lo))
            .find(|(_, v)| v.is_some())
            .map(|(k, _)| *k);
        let mut on_disk = None;
        for item in self.store.history.range(&lo[..]..=&hi[..]) {
            let (k, _) = item.map_err(Error::db(HISTORY, "scan"))?;
            let k = as_block_key(&k)?;
            if matches!(self.blocks.get(&k), Some(None)) {
                continue;
            }
            on_disk = Some(k);
            break;
        }
        Ok(match (staged, on_disk) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// Takes a block out of the working set for changing, reading it from
    /// disk the first time.
    pub(super) fn take(&mut self, key: &BlockKey) -> Result<Vec<Entry>, Error> {
        if let Some(staged) = self.blocks.get_mut(key) {
            return staged.take().ok_or_else(|| Error::Malformed {
                tree: HISTORY,
                key: hex(key),
                what: "block taken twice".into(),
            });
        }
        let sealed = match self.fetched.remove(key) {
            Some(v) => Some(v),
            None => self
                .store
                .history
                .get(key)
                .map_err(Error::db(HISTORY, "read"))?,
        };
        let sealed = sealed.ok_or_else(|| Error::Malformed {
            tree: HISTORY,
            key: hex(key),
            what: "block vanished during a write".into(),
        })?;
        let entries = open_block(self.store, key, &sealed)?;
        self.read_expiry.insert(*key, earliest_expiry(&entries));
        self.blocks.insert(*key, None);
        Ok(entries)
    }

    /// Puts changed entries back, re-cut into blocks keyed by their first
    /// messages. `old` is the key they were taken from.
    fn put(&mut self, conv_id: &[u8; 32], old: BlockKey, entries: Vec<Entry>) {
        for chunk in cut(entries) {
            if let Some(first) = chunk.first() {
                let key = block_key(&first.sort_key(conv_id));
                self.blocks.insert(key, Some(chunk));
            }
        }
        // `old` stays staged as a deletion unless a chunk took its key.
        self.blocks.entry(old).or_insert(None);
    }

    /// Stages sorted entries, all newer than every block of the
    /// conversation, as new blocks.
    pub(super) fn add_blocks(&mut self, conv_id: &[u8; 32], entries: Vec<Entry>) {
        for chunk in cut(entries) {
            if let Some(first) = chunk.first() {
                self.blocks
                    .insert(block_key(&first.sort_key(conv_id)), Some(chunk));
            }
        }
    }

    /// Adds a message to its conversation's blocks. Returns `false` if a
    /// message with the same sort key (conversation, Lamport clock, sender
    /// and id) is already in a block: a duplicate, left as it is.
    pub(super) fn insert_into_blocks(
        &mut self,
        conv_id: &[u8; 32],
        entry: Entry,
    ) -> Result<bool, Error> {
        let sort = entry.sort_key(conv_id);
        match self.last_block_in(conv_id, &block_key(&sort), true)? {
            Some(key) => {
                let was_staged = self.blocks.contains_key(&key);
                let mut entries = self.take(&key)?;
                match entries.binary_search_by(|e| e.order().cmp(&entry.order())) {
                    Ok(_) => {
                        self.untake(key, entries, was_staged, false);
                        Ok(false)
                    }
                    Err(at) => {
                        entries.insert(at, entry);
                        self.put(conv_id, key, entries);
                        Ok(true)
                    }
                }
            }
            // It sorts before every block of the conversation: it joins the
            // first block (re-keyed) if that has room, or starts its own.
            None => {
                match self.first_block(conv_id)? {
                    Some(first) => {
                        let mut entries = self.take(&first)?;
                        if fits_one_more(&entries, &entry) {
                            entries.insert(0, entry);
                            self.put(conv_id, first, entries);
                        } else {
                            self.blocks.insert(first, Some(entries));
                            self.blocks.insert(block_key(&sort), Some(vec![entry]));
                        }
                    }
                    None => {
                        self.blocks.insert(block_key(&sort), Some(vec![entry]));
                    }
                }
                Ok(true)
            }
        }
    }

    /// Moves the stored message with this sort key forward to `state`.
    /// Returns `None` if there is no such message, else whether it changed.
    pub(crate) fn set_state(
        &mut self,
        sort: &[u8; MESSAGE_KEY_LEN],
        state: DeliveryState,
    ) -> Result<Option<bool>, Error> {
        let conv: [u8; 32] = sort[..32].try_into().unwrap_or_default();
        let found = if self.in_tail(&conv, sort)? {
            self.set_tail_state(sort, state)?
        } else {
            self.set_block_state(&conv, sort, state)?
        };
        if found == Some(true) {
            self.load_record(&conv)?;
            let is_newest = self.convs.get(&conv).is_some_and(|(r, _)| {
                r.newest
                    .as_ref()
                    .is_some_and(|n| &n.sort_key(&conv) == sort)
            });
            if is_newest && let Some(n) = self.record_mut(&conv)?.newest.as_mut() {
                n.state = state;
            }
        }
        Ok(found)
    }

    fn set_block_state(
        &mut self,
        conv: &[u8; 32],
        sort: &[u8; MESSAGE_KEY_LEN],
        state: DeliveryState,
    ) -> Result<Option<bool>, Error> {
        let conv = *conv;
        let Some(key) = self.last_block_in(&conv, &block_key(sort), true)? else {
            return Ok(None);
        };
        let was_staged = self.blocks.contains_key(&key);
        let mut entries = self.take(&key)?;
        let found = entries
            .iter_mut()
            .find(|e| &e.sort_key(&conv) == sort)
            .map(|e| {
                let forward = state > e.state;
                if forward {
                    e.state = state;
                }
                forward
            });
        self.untake(key, entries, was_staged, found == Some(true));
        Ok(found)
    }

    /// Returns a block taken with [`Self::take`] unchanged in place, or as a
    /// write if it changed or was already staged.
    pub(super) fn untake(
        &mut self,
        key: BlockKey,
        entries: Vec<Entry>,
        was_staged: bool,
        changed: bool,
    ) {
        if changed || was_staged {
            self.blocks.insert(key, Some(entries));
        } else {
            self.blocks.remove(&key);
            self.read_expiry.remove(&key);
        }
    }

    /// Removes the message at `sort` wherever it is (tail or block);
    /// returns it, or `None` if no such message is stored.
    pub(crate) fn remove_message(
        &mut self,
        sort: &[u8; MESSAGE_KEY_LEN],
    ) -> Result<Option<Entry>, Error> {
        let conv: [u8; 32] = sort[..32].try_into().unwrap_or_default();
        let gone = std::cell::RefCell::new(None);
        let this = |e: &Entry| {
            let hit = &e.sort_key(&conv) == sort;
            if hit {
                *gone.borrow_mut() = Some(e.clone());
            }
            hit
        };
        if self.in_tail(&conv, sort)? {
            self.remove_tail_where(&super::keys::tail_key(sort), this)?;
        } else if let Some(key) = self.last_block_in(&conv, &block_key(sort), true)? {
            self.remove_where(&key, this)?;
        }
        Ok(gone.into_inner())
    }

    /// Removes, from the block at `key`, every message `drop` selects;
    /// returns how many. A block left empty is deleted.
    pub(crate) fn remove_where(
        &mut self,
        key: &BlockKey,
        drop: impl Fn(&Entry) -> bool,
    ) -> Result<usize, Error> {
        let conv = block_conv(key).unwrap_or_default();
        let mut entries = self.take(key)?;
        // `drop` is asked once per message (it may note what it drops).
        let mut gone = Vec::new();
        entries.retain(|e| {
            let d = drop(e);
            if d {
                gone.push(e.sort_key(&conv));
            }
            !d
        });
        let removed = gone.len();
        self.put(&conv, *key, entries);
        if removed > 0 {
            self.deletes_messages = true;
            self.load_record(&conv)?;
            if self
                .convs
                .get(&conv)
                .and_then(|(r, _)| r.newest.as_ref())
                .is_some_and(|n| gone.contains(&n.sort_key(&conv)))
            {
                self.stale_newest.insert(conv);
            }
        }
        Ok(removed)
    }
}
