//! Temporary 1:1 chats: how long a conversation's messages live.
//!
//! Either side sets it; the setting travels to the other side as a queued
//! payload (retried, through relays if need be) carrying the
//! conversation's Lamport clock, and both keep the newest by (clock,
//! author), so two changes at once end the same on both devices. Each
//! message then carries its own expiry: the recipient's device deletes it
//! then, whatever its own setting, and the envelope expires with it so
//! relays drop it at the same time.

use serde::{Deserialize, Serialize};

use super::{Due, Engine, EngineError, Event};
use crate::crypto::wire;
use crate::node::proto::Payload;
use crate::store::Kind;

const RETENTION_PREFIX: &[u8] = b"retention:";
const RETENTION_VERSION: u8 = 1;
/// The longest retention (a year, in seconds); longer is "keep".
pub const MAX_RETENTION: u64 = 366 * 24 * 3600;

/// A conversation's retention and the change that set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Setting {
    version: u8,
    /// Seconds after sending; `None`: kept.
    secs: Option<u64>,
    /// The conversation's clock at the change.
    lamport: u64,
    /// Who changed it.
    author: [u8; 32],
}

impl Setting {
    const MAX: usize = 64;
}

fn record(conv: &[u8; 32]) -> Vec<u8> {
    [RETENTION_PREFIX, conv.as_slice()].concat()
}

fn check(secs: Option<u64>) -> Result<(), EngineError> {
    match secs {
        Some(s) if s == 0 || s > MAX_RETENTION => {
            Err(EngineError::BadRetention { max: MAX_RETENTION })
        }
        _ => Ok(()),
    }
}

impl Engine {
    fn setting(&self, conv: &[u8; 32]) -> Result<Option<Setting>, EngineError> {
        match self.store.records(Kind::Contacts)?.get(&record(conv))? {
            Some(b) => Ok(Some(wire::decode(
                &b,
                "retention",
                RETENTION_VERSION,
                Setting::MAX,
            )?)),
            None => Ok(None),
        }
    }

    /// The history keeps the retention too: it applies it to every message
    /// appended from now on (one that arrives late, written before the
    /// change, included), and lists it with the conversation.
    fn mirror(&self, conv: &[u8; 32], secs: Option<u64>) -> Result<(), EngineError> {
        let history = self.store.history();
        let title = history
            .conversation(conv)?
            .map(|c| c.title)
            .unwrap_or_default();
        history.upsert_conversation(conv, &title, secs)?;
        Ok(())
    }

    /// How long messages of the 1:1 conversation `conv` live (seconds);
    /// `None`: kept.
    pub fn retention(&self, conv: &[u8; 32]) -> Result<Option<u64>, EngineError> {
        Ok(self.setting(conv)?.and_then(|s| s.secs))
    }

    /// Makes the conversation with `contact` temporary (`Some(secs)`) or
    /// permanent again, for messages written from now on by either side.
    /// Returns the frame telling the contact, queued until acknowledged,
    /// and the event for this device's user.
    pub fn set_retention(
        &mut self,
        contact: &[u8; 32],
        secs: Option<u64>,
        now: u64,
    ) -> Result<(Vec<Due>, Event), EngineError> {
        check(secs)?;
        if !self.contacts.contains_key(contact) {
            return Err(EngineError::UnknownContact);
        }
        let conv = self.conv_with_device(contact);
        // The person's contact now, if a group made it.
        self.adopt(contact)?;
        let mut state = self.conv_state(&conv)?;
        state.lamport = state.lamport.saturating_add(1);
        let lamport = state.lamport;
        let setting = Setting {
            version: RETENTION_VERSION,
            secs,
            lamport,
            author: self.me.public().signing,
        };
        self.store
            .records(Kind::Contacts)?
            .put(&record(&conv), &wire::encode(&setting))?;
        self.mirror(&conv, secs)?;
        self.put_conv_state(&conv, &state)?;
        // Queued with its clock: unlike a read receipt (clock 0), it waits
        // for its delivered receipt, wherever it went out. To every device
        // of the contact's account here: they share the conversation.
        let mut devices: Vec<[u8; 32]> = self
            .contacts
            .keys()
            .filter(|k| *k == contact || self.conv_with_device(k) == conv)
            .copied()
            .collect();
        devices.sort_unstable();
        let mut due = Vec::with_capacity(devices.len());
        for device in devices {
            due.push(self.queue(&device, &conv, Some(lamport), now, |id| {
                Payload::Retention { id, secs, lamport }
            })?);
        }
        Ok((due, Event::RetentionChanged { conv, secs }))
    }

    /// The contact `from` changed the retention of our conversation: kept
    /// if it is newer than what we have. The event if it changed.
    pub(super) fn on_retention(
        &mut self,
        from: &[u8; 32],
        conv: &[u8; 32],
        secs: Option<u64>,
        lamport: u64,
    ) -> Result<Option<Event>, EngineError> {
        if check(secs).is_err() {
            return Ok(None);
        }
        let old = self.setting(conv)?;
        if old.is_some_and(|o| (o.lamport, o.author) >= (lamport, *from)) {
            return Ok(None);
        }
        let setting = Setting {
            version: RETENTION_VERSION,
            secs,
            lamport,
            author: *from,
        };
        self.store
            .records(Kind::Contacts)?
            .put(&record(conv), &wire::encode(&setting))?;
        self.mirror(conv, secs)?;
        Ok((old.and_then(|o| o.secs) != secs)
            .then_some(Event::RetentionChanged { conv: *conv, secs }))
    }
}

/// When a received message goes by this device's clock: at its own expiry,
/// and, in a temporary conversation, at most `retention` from now. The
/// store counts the retention from the message's `sent_at`, which is the
/// sender's clock: a peer whose clock runs ahead (or that lies) must not
/// keep a temporary chat's message here for longer than the retention.
pub(super) fn received_expiry(
    expires_at: Option<u64>,
    retention: Option<u64>,
    now: u64,
) -> Option<u64> {
    match retention {
        Some(r) => {
            let latest = now.saturating_add(r);
            Some(expires_at.map_or(latest, |e| e.min(latest)))
        }
        None => expires_at,
    }
}
