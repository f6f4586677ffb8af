//! The `conversations` tree: `conv_id` → sealed [`Conversation`], kept up to
//! date by [`History::append`] and read as the conversation list.

use serde::{Deserialize, Serialize};
use sled::transaction::ConflictableTransactionError as TxError;

use super::codec::{TreeSpec, hex};
use super::{Direction, Error, History, StoredMessage};

/// Longest conversation title, in bytes of UTF-8.
pub(crate) const MAX_TITLE: usize = 256;

pub(crate) const CONVERSATIONS: TreeSpec = TreeSpec {
    name: "conversations",
    max_plain: MAX_TITLE + 96,
};

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
        self.store
            .conversations
            .get(conv_id)
            .map_err(Error::db(CONVERSATIONS.name, "read"))?
            .map(|sealed| self.open_conversation(conv_id, &sealed))
            .transpose()
    }

    /// Every conversation, most recent activity first (by `last_message_at`,
    /// then `last_lamport`; ties by id).
    pub fn list_conversations(&self) -> Result<Vec<Conversation>, Error> {
        let mut out = Vec::new();
        for item in self.store.conversations.iter() {
            let (key, sealed) = item.map_err(Error::db(CONVERSATIONS.name, "scan"))?;
            out.push(self.open_conversation(&key, &sealed)?);
        }
        out.sort_by(|a, b| {
            (b.last_message_at, b.last_lamport)
                .cmp(&(a.last_message_at, a.last_lamport))
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(out)
    }

    /// The conversation list as a chat client shows it: every conversation,
    /// most recent activity first, each with its newest message (if any is
    /// still stored) and its unread count.
    pub fn summaries(&self) -> Result<Vec<Summary>, Error> {
        self.list_conversations()?
            .into_iter()
            .map(|conversation| {
                let last = self.page(&conversation.id, None, 1)?.messages.pop();
                Ok(Summary { conversation, last })
            })
            .collect()
    }

    /// Sets a conversation's title and retention, creating it if needed and
    /// keeping its activity and unread count. Returns the updated record. A
    /// title over [`Self::MAX_TITLE`] bytes is [`Error::TooLarge`].
    pub fn upsert_conversation(
        &self,
        conv_id: &[u8; 32],
        title: &str,
        retention: Option<u64>,
    ) -> Result<Conversation, Error> {
        if title.len() > MAX_TITLE {
            return Err(Error::TooLarge {
                tree: CONVERSATIONS.name,
                key: hex(conv_id),
                len: title.len(),
                max: MAX_TITLE,
            });
        }
        self.store
            .conversations
            .transaction(|c| {
                let mut conv = match c.get(conv_id)? {
                    Some(v) => self
                        .open_conversation(conv_id, &v)
                        .map_err(TxError::Abort)?,
                    None => Conversation::new(*conv_id),
                };
                title.clone_into(&mut conv.title);
                conv.retention = retention;
                let sealed = self.seal_conversation(&conv).map_err(TxError::Abort)?;
                c.insert(&conv_id[..], sealed)?;
                Ok(conv)
            })
            .map_err(Error::from_tx(CONVERSATIONS.name, "upsert"))
    }

    /// Clears a conversation's unread count. Returns how many messages were
    /// unread; an unknown id is [`Error::UnknownConversation`].
    pub fn mark_read(&self, conv_id: &[u8; 32]) -> Result<u32, Error> {
        self.store
            .conversations
            .transaction(|c| {
                let sealed = c.get(conv_id)?.ok_or_else(|| {
                    TxError::Abort(Error::UnknownConversation {
                        conv_id: hex(conv_id),
                    })
                })?;
                let mut conv = self
                    .open_conversation(conv_id, &sealed)
                    .map_err(TxError::Abort)?;
                let was = conv.unread;
                if was != 0 {
                    conv.unread = 0;
                    let sealed = self.seal_conversation(&conv).map_err(TxError::Abort)?;
                    c.insert(&conv_id[..], sealed)?;
                }
                Ok(was)
            })
            .map_err(Error::from_tx(CONVERSATIONS.name, "mark read"))
    }

    pub(super) fn open_conversation(
        &self,
        key: &[u8],
        sealed: &[u8],
    ) -> Result<Conversation, Error> {
        self.store.sealer.open(&CONVERSATIONS, key, sealed)
    }

    pub(super) fn seal_conversation(&self, conv: &Conversation) -> Result<Vec<u8>, Error> {
        self.store.sealer.seal(&CONVERSATIONS, &conv.id, conv)
    }
}
