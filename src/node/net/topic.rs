//! Gossip topics: names, parsing, and the inbox shard of a mailbox.
//!
//! ```text
//! meshchat/1/presence          signed presence beacons
//! meshchat/1/inbox/{shard}     sealed envelopes; shard = mailbox id mod shards
//! meshchat/1/group/{hex 32}    sender-key group messages; the id is derived
//!                              from the group id and does not name it
//! ```

use std::fmt;

use libp2p::gossipsub::{IdentTopic, TopicHash};

const PRESENCE: &str = "meshchat/1/presence";
const INBOX_PREFIX: &str = "meshchat/1/inbox/";
const GROUP_PREFIX: &str = "meshchat/1/group/";
/// Longest topic string we ever parse (the group topic).
const MAX_TOPIC_LEN: usize = GROUP_PREFIX.len() + 64;

/// A meshchat gossip topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Presence beacons.
    Presence,
    /// One shard of the envelope inbox.
    Inbox(u16),
    /// A group's topic, by its 32-byte topic id.
    Group([u8; 32]),
}

/// What a topic carries, for per-kind limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicKind {
    /// [`Topic::Presence`].
    Presence,
    /// [`Topic::Inbox`].
    Inbox,
    /// [`Topic::Group`].
    Group,
}

impl Topic {
    /// The inbox topic for `mailbox_id` among `shards` shards.
    pub fn inbox_for(mailbox_id: &[u8; 32], shards: u16) -> Self {
        Self::Inbox(inbox_shard(mailbox_id, shards))
    }

    /// What this topic carries.
    pub fn kind(&self) -> TopicKind {
        match self {
            Self::Presence => TopicKind::Presence,
            Self::Inbox(_) => TopicKind::Inbox,
            Self::Group(_) => TopicKind::Group,
        }
    }

    /// The gossipsub topic (its hash is the topic string).
    pub fn ident(&self) -> IdentTopic {
        IdentTopic::new(self.to_string())
    }

    /// The gossipsub topic hash.
    pub fn hash(&self) -> TopicHash {
        self.ident().hash()
    }

    /// Parses a topic string; `None` for anything that is not ours.
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() > MAX_TOPIC_LEN {
            return None;
        }
        if s == PRESENCE {
            return Some(Self::Presence);
        }
        if let Some(shard) = s.strip_prefix(INBOX_PREFIX) {
            // Only the canonical decimal form (no sign, no leading zeros).
            let canonical = !shard.is_empty()
                && shard.bytes().all(|b| b.is_ascii_digit())
                && (shard == "0" || !shard.starts_with('0'));
            return canonical
                .then(|| shard.parse().ok())
                .flatten()
                .map(Self::Inbox);
        }
        if let Some(hex) = s.strip_prefix(GROUP_PREFIX) {
            return parse_hex32(hex).map(Self::Group);
        }
        None
    }

    /// Parses a gossipsub topic hash (our hashes are the topic strings).
    pub fn from_hash(hash: &TopicHash) -> Option<Self> {
        Self::parse(hash.as_str())
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Presence => f.write_str(PRESENCE),
            Self::Inbox(shard) => write!(f, "{INBOX_PREFIX}{shard}"),
            Self::Group(id) => {
                f.write_str(GROUP_PREFIX)?;
                id.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
    }
}

/// The inbox shard of a mailbox: the first 8 bytes of its id (a SHA-256
/// output, so uniform) as a big-endian number, modulo `shards`. Zero shards
/// count as one.
pub fn inbox_shard(mailbox_id: &[u8; 32], shards: u16) -> u16 {
    let shards = u64::from(shards.max(1));
    let mut head = [0u8; 8];
    head.copy_from_slice(&mailbox_id[..8]);
    // The remainder is below `shards`, itself a u16.
    (u64::from_be_bytes(head) % shards) as u16
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *slot = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
    }
    Some(out)
}

/// Lowercase only: one topic string per group.
fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}
