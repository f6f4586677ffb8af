//! Conversation records: `c ‖ conv_id` in the `history` tree → sealed
//! [`Conversation`], kept up to date by [`History::append`] and read as the
//! conversation list.

use serde::{Deserialize, Serialize};

use super::blocks::{BLOCKS, Entry, HISTORY};
use super::codec::{TreeSpec, hex};
use super::keys::{CONV_PREFIX, conv_key};
use super::{Direction, Error, History, StoredMessage};

/// Longest conversation title, in bytes of UTF-8.
pub(crate) const MAX_TITLE: usize = 256;

/// Conversation records: the conversation and a copy of its newest message.
pub(crate) const CONVERSATIONS: TreeSpec = TreeSpec {
    name: HISTORY,
    max_plain: MAX_TITLE + 96 + BLOCKS.max_plain + PENDING_MAX,
};

/// Room for a [`Pending`] (see `blocks::MAX_PENDING_ADDED`).
const PENDING_MAX: usize = 32 + 2 * super::blocks::MAX_PENDING_ADDED * 80;

/// What a conversation record holds: the conversation, and a copy of its
/// newest stored message, so the conversation list reads one record per
/// conversation. History writes keep the copy current (appends, delivery
/// states, purges).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ConvRecord {
    pub(crate) conv: Conversation,
    pub(crate) newest: Option<Entry>,
    /// (Lamport clock, sender, id) at or above every message in a block:
    /// messages above it are in the tail, messages at or below it in blocks.
    pub(crate) blocks_end: Option<(u64, [u8; 32], [u8; 16])>,
    /// How many tail records the conversation has.
    pub(crate) tail_len: u32,
    /// Set by a write made of single sled writes (see `Staged::commit`),
    /// which writes this record first: what the counters were before it
    /// and which messages it adds, so that the repair on open can recount
    /// if a crash kept this record but lost some of those messages.
    pub(crate) pending: Option<Pending>,
}

/// A message a [`Pending`] write adds: its position (Lamport clock,
/// sender, id), whether it is incoming, and its `sent_at`.
pub(crate) type Added = ((u64, [u8; 32], [u8; 16]), bool, u64);

/// See [`ConvRecord::pending`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Pending {
    /// `(unread, last_lamport, last_message_at)` before the write.
    pub(crate) before: (u32, u64, u64),
    /// The messages it adds.
    pub(crate) added: Vec<Added>,
}

impl ConvRecord {
    pub(crate) fn new(id: [u8; 32]) -> Self {
        Self {
            conv: Conversation::new(id),
            newest: None,
            blocks_end: None,
            tail_len: 0,
            pending: None,
        }
    }

    /// The counters a [`Pending`] snapshots.
    pub(crate) fn counters(&self) -> (u32, u64, u64) {
        (
            self.conv.unread,
            self.conv.last_lamport,
            self.conv.last_message_at,
        )
    }
}

/// A conversation's summary, as the conversation list shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    /// Its id (the `conv_id` of its messages).
    pub id: [u8; 32],
    /// Name shown to the user; empty until set.
    pub title: String,
    /// Latest `sent_at` among its messages, seconds since the Unix epoch.
    pub last_message_at: u64,
    /// Highest Lamport clock among its messages.
    pub last_lamport: u64,
    /// Incoming messages since it was last marked read.
    pub unread: u32,
    /// Disappearing-message lifetime in seconds; `None` keeps messages.
    pub retention: Option<u64>,
}

impl Conversation {
    /// An empty conversation with this id.
    pub(crate) fn new(id: [u8; 32]) -> Self {
        Self {
            id,
            title: String::new(),
            last_message_at: 0,
            last_lamport: 0,
            unread: 0,
            retention: None,
        }
    }

    /// Accounts for a newly stored message.
    pub(crate) fn record(&mut self, msg: &StoredMessage, direction: Direction) {
        self.last_message_at = self.last_message_at.max(msg.sent_at);
        self.last_lamport = self.last_lamport.max(msg.lamport);
        if direction == Direction::Incoming {
            self.unread = self.unread.saturating_add(1);
        }
    }
}

/// One row of the conversation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The conversation (title, activity, unread count, retention).
    pub conversation: Conversation,
    /// Its newest stored message.
    pub last: Option<StoredMessage>,
}

impl History<'_> {
    /// Longest conversation title accepted, in bytes.
    pub const MAX_TITLE: usize = MAX_TITLE;

    /// The conversation with this id, if any message or setting created it.
    pub fn conversation(&self, conv_id: &[u8; 32]) -> Result<Option<Conversation>, Error> {
        Ok(self.conv_record(conv_id)?.map(|r| r.conv))
    }

    pub(crate) fn conv_record(&self, conv_id: &[u8; 32]) -> Result<Option<ConvRecord>, Error> {
        let key = conv_key(conv_id);
        self.store
            .history
            .get(key)
            .map_err(Error::db(HISTORY, "read"))?
            .map(|sealed| self.open_conversation(&key, &sealed))
            .transpose()
    }

    fn records(&self) -> Result<Vec<ConvRecord>, Error> {
        let mut out = Vec::new();
        for item in self.store.history.scan_prefix([CONV_PREFIX]) {
            let (key, sealed) = item.map_err(Error::db(HISTORY, "scan"))?;
            match self.open_conversation(&key, &sealed) {
                Ok(record) => out.push(record),
                // One damaged record leaves the others listed (it is
                // logged, and reading that conversation says what is wrong).
                Err(e) if e.is_damaged_record() => {
                    tracing::error!(error = %e, "a conversation record that does not open is left out of the list");
                }
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| {
            let (a, b) = (&a.conv, &b.conv);
            (b.last_message_at, b.last_lamport)
                .cmp(&(a.last_message_at, a.last_lamport))
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(out)
    }

    /// Every conversation, most recent activity first (by `last_message_at`,
    /// then `last_lamport`; ties by id).
    pub fn list_conversations(&self) -> Result<Vec<Conversation>, Error> {
        Ok(self.records()?.into_iter().map(|r| r.conv).collect())
    }

    /// The conversation list as a chat client shows it: every conversation,
    /// most recent activity first, each with its newest message (if any is
    /// still stored) and its unread count.
    pub fn summaries(&self) -> Result<Vec<Summary>, Error> {
        Ok(self
            .records()?
            .into_iter()
            .map(|r| Summary {
                last: r.newest.map(|e| e.into_message(r.conv.id)),
                conversation: r.conv,
            })
            .collect())
    }

    /// Sets a conversation's title and retention, creating it if needed and
    /// keeping its activity and unread count. Returns the updated record. A
    /// title over [`Self::MAX_TITLE`] bytes is [`Error::TooLarge`].
    ///
    /// A new retention applies to messages appended from now on.
    pub fn upsert_conversation(
        &self,
        conv_id: &[u8; 32],
        title: &str,
        retention: Option<u64>,
    ) -> Result<Conversation, Error> {
        if title.len() > MAX_TITLE {
            return Err(Error::TooLarge {
                tree: HISTORY,
                key: hex(&conv_key(conv_id)),
                len: title.len(),
                max: MAX_TITLE,
            });
        }
        let _writer = self.store.lock_history();
        let mut record = self
            .conv_record(conv_id)?
            .unwrap_or_else(|| ConvRecord::new(*conv_id));
        title.clone_into(&mut record.conv.title);
        record.conv.retention = retention;
        record.pending = None;
        self.write_conversation(&record)?;
        Ok(record.conv)
    }

    /// Clears a conversation's unread count. Returns how many messages were
    /// unread; an unknown id is [`Error::UnknownConversation`].
    pub fn mark_read(&self, conv_id: &[u8; 32]) -> Result<u32, Error> {
        Ok(self.change_unread(conv_id, |_| 0)?.0)
    }

    /// Lowers a conversation's unread count by `n` (messages read on
    /// another device of this account); returns the count now. An unknown
    /// id is [`Error::UnknownConversation`].
    pub fn lower_unread(&self, conv_id: &[u8; 32], n: u32) -> Result<u32, Error> {
        Ok(self.change_unread(conv_id, |was| was.saturating_sub(n))?.1)
    }

    /// Sets a conversation's unread count to `to(count)`: the counts before
    /// and after.
    fn change_unread(
        &self,
        conv_id: &[u8; 32],
        to: impl FnOnce(u32) -> u32,
    ) -> Result<(u32, u32), Error> {
        let _writer = self.store.lock_history();
        let mut record = self
            .conv_record(conv_id)?
            .ok_or_else(|| Error::UnknownConversation {
                conv_id: hex(conv_id),
            })?;
        let was = record.conv.unread;
        let now = to(was);
        if now != was {
            record.conv.unread = now;
            // The messages a pending write adds must not be counted again
            // by a repair: the count is the reader's now.
            record.pending = None;
            self.write_conversation(&record)?;
        }
        Ok((was, now))
    }

    fn write_conversation(&self, record: &ConvRecord) -> Result<(), Error> {
        let sealed = self.seal_conversation(record)?;
        self.store
            .history
            .insert(conv_key(&record.conv.id), sealed)
            .map_err(Error::db(HISTORY, "write"))?;
        Ok(())
    }

    pub(super) fn open_conversation(&self, key: &[u8], sealed: &[u8]) -> Result<ConvRecord, Error> {
        let record: ConvRecord = self.store.sealer.open(&CONVERSATIONS, key, sealed)?;
        if key != conv_key(&record.conv.id) {
            return Err(Error::Malformed {
                tree: HISTORY,
                key: hex(key),
                what: "conversation record names another conversation".into(),
            });
        }
        Ok(record)
    }

    pub(super) fn seal_conversation(&self, record: &ConvRecord) -> Result<Vec<u8>, Error> {
        self.store
            .sealer
            .seal(&CONVERSATIONS, &conv_key(&record.conv.id), record)
    }
}
