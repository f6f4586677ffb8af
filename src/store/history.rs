//! Message history: the `messages` tree, its `message_index`, and pages.
//!
//! `messages`: `conv_id ‖ lamport ‖ sender ‖ msg_id` (see `keys`) → sealed
//! [`StoredMessage`]. `message_index`: `msg_id` → sealed `messages` key, for
//! deduplication and receipt updates. An append changes `messages`,
//! `message_index` and `conversations` in one sled transaction, so a crash
//! leaves all three or none.

use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::ConflictableTransactionError as TxError;

use super::codec::{TreeSpec, hex};
use super::keys::{Cursor, MESSAGE_KEY_LEN, key_conv_id, message_key, split_message_key};
use super::{Conversation, Error, Store};

/// Largest message body stored (media is stored elsewhere).
pub(crate) const MAX_BODY: usize = 64 * 1024;

pub(crate) const MESSAGES: TreeSpec = TreeSpec {
    name: "messages",
    max_plain: MAX_BODY + 128,
};
/// The expiry index: `expires_at (u64 BE) ‖ messages key` → empty. Keys only
/// repeat what the `messages` keys already show, so it is not encrypted.
pub(crate) const EXPIRY: &str = "expiry";

fn expiry_key(at: u64, key: &[u8; MESSAGE_KEY_LEN]) -> [u8; 8 + MESSAGE_KEY_LEN] {
    let mut out = [0u8; 8 + MESSAGE_KEY_LEN];
    out[..8].copy_from_slice(&at.to_be_bytes());
    out[8..].copy_from_slice(key);
    out
}

pub(crate) const MESSAGE_INDEX: TreeSpec = TreeSpec {
    name: "message_index",
    max_plain: MESSAGE_KEY_LEN + 8,
};

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

/// What a `messages` value holds: the fields its key does not already
/// carry (conversation, Lamport clock, sender and id are in the key).
#[derive(Serialize)]
struct OnDiskRef<'a> {
    sent_at: u64,
    #[serde(with = "serde_bytes")]
    body: &'a [u8],
    state: DeliveryState,
    expires_at: Option<u64>,
}

#[derive(Deserialize)]
struct OnDisk {
    sent_at: u64,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
    state: DeliveryState,
    expires_at: Option<u64>,
}

fn seal_message(
    s: &Store,
    key: &[u8; MESSAGE_KEY_LEN],
    msg: &StoredMessage,
) -> Result<Vec<u8>, Error> {
    let value = OnDiskRef {
        sent_at: msg.sent_at,
        body: &msg.body,
        state: msg.state,
        expires_at: msg.expires_at,
    };
    s.sealer.seal(&MESSAGES, key, &value)
}

fn open_message(
    s: &Store,
    key: &[u8; MESSAGE_KEY_LEN],
    sealed: &[u8],
) -> Result<StoredMessage, Error> {
    let v: OnDisk = s.sealer.open(&MESSAGES, key, sealed)?;
    let (conv_id, lamport, sender, msg_id) = split_message_key(key);
    Ok(StoredMessage {
        msg_id,
        conv_id,
        sender,
        lamport,
        sent_at: v.sent_at,
        body: v.body,
        state: v.state,
        expires_at: v.expires_at,
    })
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

    pub(super) fn new(store: &'a Store) -> Self {
        Self { store }
    }

    /// Stores a message unless one with the same id is already stored, and
    /// updates its conversation (created if new): last activity, Lamport
    /// clock, and for [`Direction::Incoming`] the unread count. All in one
    /// transaction. A body over [`Self::MAX_BODY`] is [`Error::TooLarge`].
    ///
    /// If the conversation is temporary (has a retention period), the
    /// message expires at `sent_at + retention` or its own `expires_at`,
    /// whichever comes first; an expiring message is also entered in the
    /// expiry index that [`Self::purge_expired`] walks.
    pub fn append(&self, msg: &StoredMessage, direction: Direction) -> Result<Appended, Error> {
        let mut out = self.append_batch(std::slice::from_ref(msg), direction)?;
        out.pop().ok_or(Error::Malformed {
            tree: MESSAGES.name,
            key: hex(&msg.msg_id),
            what: "empty batch result".into(),
        })
    }

    /// [`Self::append`] for many messages in one transaction: all are stored
    /// (or found to be duplicates) or, on error, none. Returns one outcome per
    /// message, in order; a repeated id within the batch is a duplicate too.
    pub fn append_batch(
        &self,
        msgs: &[StoredMessage],
        direction: Direction,
    ) -> Result<Vec<Appended>, Error> {
        let s = self.store;
        let mut prepared = Vec::with_capacity(msgs.len());
        let mut retentions = std::collections::HashMap::new();
        for msg in msgs {
            let key = message_key(&msg.conv_id, msg.lamport, &msg.sender, &msg.msg_id);
            if msg.body.len() > MAX_BODY {
                return Err(Error::TooLarge {
                    tree: MESSAGES.name,
                    key: hex(&key),
                    len: msg.body.len(),
                    max: MAX_BODY,
                });
            }
            let retention = match retentions.get(&msg.conv_id) {
                Some(r) => *r,
                None => {
                    let r = self.conversation(&msg.conv_id)?.and_then(|c| c.retention);
                    retentions.insert(msg.conv_id, r);
                    r
                }
            };
            let mut msg = msg.clone();
            if let Some(r) = retention {
                let by_retention = msg.sent_at.saturating_add(r);
                msg.expires_at = Some(msg.expires_at.map_or(by_retention, |e| e.min(by_retention)));
            }
            let sealed_msg = seal_message(s, &key, &msg)?;
            let sealed_idx = s.sealer.seal(&MESSAGE_INDEX, &msg.msg_id, &key.to_vec())?;
            prepared.push((msg, key, sealed_msg, sealed_idx));
        }
        (&s.messages, &s.message_index, &s.conversations, &s.expiry)
            .transaction(|(m, i, c, x)| {
                let mut out = Vec::with_capacity(prepared.len());
                for (msg, key, sealed_msg, sealed_idx) in &prepared {
                    if i.get(msg.msg_id)?.is_some() {
                        out.push(Appended::Duplicate);
                        continue;
                    }
                    m.insert(&key[..], sealed_msg.as_slice())?;
                    i.insert(&msg.msg_id[..], sealed_idx.as_slice())?;
                    if let Some(at) = msg.expires_at {
                        x.insert(&expiry_key(at, key)[..], &[][..])?;
                    }
                    let mut conv = match c.get(msg.conv_id)? {
                        Some(v) => self
                            .open_conversation(&msg.conv_id, &v)
                            .map_err(TxError::Abort)?,
                        None => Conversation::new(msg.conv_id),
                    };
                    conv.record(msg, direction);
                    let sealed = self.seal_conversation(&conv).map_err(TxError::Abort)?;
                    c.insert(&msg.conv_id[..], sealed)?;
                    out.push(Appended::Inserted);
                }
                Ok(out)
            })
            .map_err(Error::from_tx(
                "messages+message_index+conversations+expiry",
                "append",
            ))
    }

    /// Deletes every message whose expiry is at or before `now` (seconds
    /// since the Unix epoch), with its index entry, and returns how many.
    /// The node calls this from a timer; tests call it with a chosen `now`.
    /// Each message goes in its own transaction, so an interruption leaves
    /// every message either fully present or fully gone.
    pub fn purge_expired(&self, now: u64) -> Result<usize, Error> {
        let s = self.store;
        let end = expiry_key(now, &[0xff; MESSAGE_KEY_LEN]);
        let mut purged = 0;
        for item in s.expiry.range(..=&end[..]) {
            let (xkey, _) = item.map_err(Error::db(EXPIRY, "scan"))?;
            let Some(key) = xkey
                .get(8..)
                .and_then(|k| <[u8; MESSAGE_KEY_LEN]>::try_from(k).ok())
            else {
                return Err(Error::Malformed {
                    tree: EXPIRY,
                    key: hex(&xkey),
                    what: format!(
                        "key is {} bytes, expected {}",
                        xkey.len(),
                        8 + MESSAGE_KEY_LEN
                    ),
                });
            };
            let msg_id = &key[72..];
            (&s.messages, &s.message_index, &s.expiry)
                .transaction(|(m, i, x)| {
                    m.remove(&key[..])?;
                    i.remove(msg_id)?;
                    x.remove(&xkey)?;
                    Ok(())
                })
                .map_err(Error::from_tx("messages+message_index+expiry", "purge"))?;
            purged += 1;
        }
        Ok(purged)
    }

    /// The message with this id, if stored.
    pub fn get(&self, msg_id: &[u8; 16]) -> Result<Option<StoredMessage>, Error> {
        let s = self.store;
        let Some(sealed_idx) = s
            .message_index
            .get(msg_id)
            .map_err(Error::db(MESSAGE_INDEX.name, "read"))?
        else {
            return Ok(None);
        };
        let key = self.open_index(msg_id, &sealed_idx)?;
        let sealed = s
            .messages
            .get(key)
            .map_err(Error::db(MESSAGES.name, "read"))?
            .ok_or_else(|| Error::DanglingIndex {
                msg_id: hex(msg_id),
                key: hex(&key),
            })?;
        open_message(s, &key, &sealed).map(Some)
    }

    /// Moves a message's delivery state forward. Returns `true` if it changed,
    /// `false` if the message was already at `state` or further (a late or
    /// repeated receipt). An unknown id is [`Error::UnknownMessage`].
    pub fn set_state(&self, msg_id: &[u8; 16], state: DeliveryState) -> Result<bool, Error> {
        let s = self.store;
        (&s.message_index, &s.messages)
            .transaction(|(i, m)| {
                let sealed_idx = i.get(msg_id)?.ok_or_else(|| {
                    TxError::Abort(Error::UnknownMessage {
                        msg_id: hex(msg_id),
                    })
                })?;
                let key = self
                    .open_index(msg_id, &sealed_idx)
                    .map_err(TxError::Abort)?;
                let sealed = m.get(key)?.ok_or_else(|| {
                    TxError::Abort(Error::DanglingIndex {
                        msg_id: hex(msg_id),
                        key: hex(&key),
                    })
                })?;
                let mut msg = open_message(s, &key, &sealed).map_err(TxError::Abort)?;
                if state <= msg.state {
                    return Ok(false);
                }
                msg.state = state;
                let sealed = seal_message(s, &key, &msg).map_err(TxError::Abort)?;
                m.insert(&key[..], sealed)?;
                Ok(true)
            })
            .map_err(Error::from_tx("message_index+messages", "set state"))
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
        let s = self.store;
        let limit = limit.clamp(1, Self::MAX_PAGE);
        let iter = match before {
            None => s.messages.scan_prefix(conv_id),
            Some(cursor) => {
                let found = key_conv_id(cursor.key());
                if &found != conv_id {
                    return Err(Error::CursorConversation {
                        expected: hex(conv_id),
                        found: hex(&found),
                    });
                }
                s.messages
                    .range(conv_id.as_slice()..cursor.key().as_slice())
            }
        };
        let mut messages = Vec::new();
        let mut last_key = None;
        let mut more = false;
        for item in iter.rev() {
            let (key, sealed) = item.map_err(Error::db(MESSAGES.name, "scan"))?;
            if messages.len() == limit {
                more = true;
                break;
            }
            let key: [u8; MESSAGE_KEY_LEN] =
                key.as_ref().try_into().map_err(|_| Error::Malformed {
                    tree: MESSAGES.name,
                    key: hex(&key),
                    what: format!("key is {} bytes, expected {MESSAGE_KEY_LEN}", key.len()),
                })?;
            messages.push(open_message(s, &key, &sealed)?);
            last_key = Some(key);
        }
        let next = if more {
            last_key.map(Cursor::from_key)
        } else {
            None
        };
        Ok(Page { messages, next })
    }

    fn open_index(&self, msg_id: &[u8; 16], sealed: &[u8]) -> Result<[u8; MESSAGE_KEY_LEN], Error> {
        let key: Vec<u8> = self.store.sealer.open(&MESSAGE_INDEX, msg_id, sealed)?;
        key.as_slice().try_into().map_err(|_| Error::Malformed {
            tree: MESSAGE_INDEX.name,
            key: hex(msg_id),
            what: format!("names a {}-byte key, expected {MESSAGE_KEY_LEN}", key.len()),
        })
    }
}
