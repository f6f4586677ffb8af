//! The node's chat logic, without the network: keys, contacts, sessions,
//! history and receipts over the store. The actor feeds it frames that
//! arrived and sends the frames it returns; everything here is synchronous
//! and runs on the store's thread, never on the swarm's.
//!
//! Durability: every method leaves its writes in the store unflushed; the
//! caller flushes once per round of work before it acknowledges anything
//! or shows "sent" (group commit).

use std::collections::HashMap;
use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::proto::{Chat, Frame, MsgRef, Payload, ReceiptKind, conversation_id};
use super::sessions::Sessions;
use super::state::{Contact, ConvState, Invite, Queued, SeqCheck};
use crate::crypto::{self, DeviceIdentity, MailboxKey, PrekeyStore, Secret32};
use crate::store::{
    self, Appended, DeliveryState, Direction, Kind, MessageRef, Store, StoredMessage,
};

const IDENTITY_KEY: &[u8] = b"device";
const MAILBOX_KEY: &[u8] = b"mailbox";
const PREKEYS_KEY: &[u8] = b"store";
const CONV_PREFIX: &[u8] = b"conv:";
/// At most one request to resend missing messages per conversation in this
/// many seconds.
pub const RESEND_EVERY: u64 = 30;
/// How long a queued message is retried before the sender is told it
/// expired undelivered (seconds).
pub const MESSAGE_TTL: u64 = 14 * 24 * 3600;

/// What can go wrong in the chat logic.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A cryptographic check or decode failed.
    #[error(transparent)]
    Crypto(#[from] crypto::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// A frame from a device that is not a contact.
    #[error("frame from a device that is not a contact")]
    UnknownSender,
    /// Sending to a device that is not a contact.
    #[error("no contact with that identity key")]
    UnknownContact,
}

/// Something the user should hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new message arrived (stored).
    MessageReceived(StoredMessage),
    /// One of our messages moved forward.
    Receipt {
        /// The message.
        message: MessageRef,
        /// Its new state.
        state: DeliveryState,
    },
}

/// What handling a batch of frames from one device produced.
#[derive(Debug, Default)]
pub struct Handled {
    /// Per frame: whether it was accepted (stored or already stored).
    pub accepted: Vec<bool>,
    /// Events for the user.
    pub events: Vec<Event>,
    /// Frames to send back to the same device (receipts).
    pub replies: Vec<Vec<u8>>,
}

/// The chat logic of one device.
pub struct Engine {
    store: Arc<Store>,
    me: DeviceIdentity,
    mailbox: MailboxKey,
    prekeys: PrekeyStore,
    sessions: Sessions,
    contacts: HashMap<[u8; 32], Contact>,
    rng: StdRng,
}

impl Engine {
    /// Loads the device's keys and contacts from the store, creating the
    /// keys on first use (and storing them: flush before relying on them).
    pub fn open(store: Arc<Store>, now: u64) -> Result<Self, EngineError> {
        let mut rng = StdRng::from_rng(&mut rand::rng());
        let ids = store.records(Kind::Identity)?;
        let me = match ids.get(IDENTITY_KEY)? {
            Some(bytes) => DeviceIdentity::from_secret_bytes(&bytes)?,
            None => {
                let id = DeviceIdentity::generate(&mut rng);
                ids.put(IDENTITY_KEY, &id.to_secret_bytes())?;
                id
            }
        };
        let mailbox = match ids.get(MAILBOX_KEY)? {
            Some(bytes) => {
                let seed: [u8; 32] =
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| crypto::Error::Malformed {
                            what: "stored mailbox key",
                        })?;
                MailboxKey::from_seed(Secret32::new(seed))
            }
            None => {
                let key = MailboxKey::generate(&mut rng);
                ids.put(MAILBOX_KEY, key.seed().expose())?;
                key
            }
        };
        let pk = store.records(Kind::Prekeys)?;
        let prekeys = match pk.get(PREKEYS_KEY)? {
            Some(bytes) => PrekeyStore::from_bytes(&bytes)?,
            None => {
                let p = PrekeyStore::new(&me, now, &mut rng);
                pk.put(PREKEYS_KEY, &p.to_bytes())?;
                p
            }
        };
        let mut contacts = HashMap::new();
        for (key, bytes) in store.records(Kind::Contacts)?.scan(b"")? {
            if let Ok(k) = <[u8; 32]>::try_from(key.as_slice()) {
                contacts.insert(k, Contact::from_bytes(&bytes)?);
            }
        }
        let mut sessions = Sessions::new();
        for (key, bytes) in store.records(Kind::Sessions)?.scan(b"")? {
            if let Ok(k) = <[u8; 32]>::try_from(key.as_slice()) {
                sessions.load(k, &bytes)?;
            }
        }
        Ok(Self {
            store,
            me,
            mailbox,
            prekeys,
            sessions,
            contacts,
            rng,
        })
    }

    /// This device's identity.
    pub fn identity(&self) -> &DeviceIdentity {
        &self.me
    }

    /// An invite to hand out (addresses where this device listens).
    pub fn invite(&self, addrs: Vec<String>, now: u64) -> Result<Invite, EngineError> {
        let bundle = self
            .prekeys
            .bundle(&self.me, self.mailbox.id().0, &[], now, false)?;
        Ok(Invite::new(bundle, addrs))
    }

    /// Adds (or updates) the contact an invite names, after checking every
    /// signature in it. Returns its identity key.
    pub fn add_contact(&mut self, invite: &Invite, name: &str) -> Result<[u8; 32], EngineError> {
        let verified = invite.bundle.verify()?;
        let identity = verified.body.identity.clone();
        let contact = Contact::new(invite, identity.clone(), verified.body.mailbox_id, name);
        self.store
            .records(Kind::Contacts)?
            .put(&identity.signing, &contact.to_bytes())?;
        self.contacts.insert(identity.signing, contact);
        Ok(identity.signing)
    }

    /// The contact with this identity key.
    pub fn contact(&self, key: &[u8; 32]) -> Option<&Contact> {
        self.contacts.get(key)
    }

    fn conv_state(&self, conv: &[u8; 32]) -> Result<ConvState, EngineError> {
        let key = [CONV_PREFIX, conv.as_slice()].concat();
        Ok(match self.store.records(Kind::Contacts)?.get(&key)? {
            Some(b) => ConvState::from_bytes(&b)?,
            None => ConvState::default(),
        })
    }

    fn put_conv_state(&self, conv: &[u8; 32], s: &ConvState) -> Result<(), EngineError> {
        let key = [CONV_PREFIX, conv.as_slice()].concat();
        self.store
            .records(Kind::Contacts)?
            .put(&key, &s.to_bytes())?;
        Ok(())
    }

    fn save_session(&self, peer: &[u8; 32]) -> Result<(), EngineError> {
        if let Some(bytes) = self.sessions.to_record(peer) {
            self.store.records(Kind::Sessions)?.put(peer, &bytes)?;
        }
        Ok(())
    }

    /// Writes a message to `to`: stores it (pending), queues it in the
    /// outbox and returns its reference and the frame to send now.
    pub fn send(
        &mut self,
        to: &[u8; 32],
        body: Vec<u8>,
        now: u64,
    ) -> Result<(MessageRef, Vec<u8>), EngineError> {
        let contact = self.contacts.get(to).ok_or(EngineError::UnknownContact)?;
        let conv = conversation_id(self.me.public(), &contact.identity);
        let mut state = self.conv_state(&conv)?;
        // Saturating: a peer's Lamport clock is its own to choose.
        state.lamport = state.lamport.saturating_add(1);
        let seq = state.next_seq;
        state.next_seq += 1;
        let mut msg_id = [0u8; 16];
        rand::Rng::fill_bytes(&mut self.rng, &mut msg_id);
        let chat = Chat {
            msg_id,
            lamport: state.lamport,
            seq,
            sent_at: now,
            expires_at: None,
            reply_to: None,
            body,
        };
        let stored = StoredMessage {
            msg_id,
            conv_id: conv,
            sender: self.me.public().signing,
            lamport: chat.lamport,
            sent_at: now,
            body: chat.body.clone(),
            state: DeliveryState::Pending,
            expires_at: None,
        };
        let payload = Payload::Chat(chat).to_bytes();
        self.store.history().append(&stored, Direction::Outgoing)?;
        self.put_conv_state(&conv, &state)?;
        let queued = Queued::new(conv, Some(stored.lamport), Some(seq), payload.clone());
        self.store
            .outbox()
            .push(msg_id, *to, queued.to_bytes(), now, now + MESSAGE_TTL)?;
        let frame = self.encrypt(to, &payload)?;
        Ok((stored.reference(), frame))
    }

    fn encrypt(&mut self, to: &[u8; 32], payload: &[u8]) -> Result<Vec<u8>, EngineError> {
        let contact = self.contacts.get(to).ok_or(EngineError::UnknownContact)?;
        let frame = self.sessions.encrypt(
            &self.me,
            &contact.identity,
            &contact.bundle,
            payload,
            &mut self.rng,
        )?;
        self.save_session(to)?;
        Ok(frame.to_bytes())
    }

    /// Handles a batch of frames from the device `from` (authenticated by
    /// the connection).
    pub fn receive(
        &mut self,
        from: &[u8; 32],
        frames: &[Vec<u8>],
        now: u64,
    ) -> Result<Handled, EngineError> {
        let contact = self
            .contacts
            .get(from)
            .cloned()
            .ok_or(EngineError::UnknownSender)?;
        let conv = conversation_id(self.me.public(), &contact.identity);
        let mut out = Handled::default();
        let mut delivered = Vec::new();
        let mut resend = Vec::new();
        let mut incoming = Vec::new();
        let mut state = self.conv_state(&conv)?;
        let mut decrypted_any = false;
        for bytes in frames {
            let plain = match Frame::from_bytes(bytes) {
                Ok(Frame::Ratchet(b)) => self.sessions.decrypt_ratchet(from, &b, &mut self.rng),
                Ok(Frame::Prekey(b)) => self.sessions.decrypt_prekey(
                    &self.me,
                    &mut self.prekeys,
                    &contact.identity,
                    &b,
                    &mut self.rng,
                ),
                Ok(_) | Err(_) => {
                    out.accepted.push(false);
                    continue;
                }
            };
            let payload = match plain.map(|d| Payload::from_bytes(&d.plaintext)) {
                Ok(Ok(p)) => p,
                // A message already decrypted (a retry of the same bytes).
                Err(crypto::Error::Duplicate { .. }) => {
                    out.accepted.push(true);
                    continue;
                }
                _ => {
                    out.accepted.push(false);
                    continue;
                }
            };
            decrypted_any = true;
            match payload {
                Payload::Chat(chat) if chat.expires_at.is_some_and(|at| at <= now) => {
                    // A temporary message that expired on the way: nothing
                    // to keep, nothing to retry.
                }
                Payload::Chat(chat) => {
                    let msg = StoredMessage {
                        msg_id: chat.msg_id,
                        conv_id: conv,
                        sender: *from,
                        lamport: chat.lamport,
                        sent_at: chat.sent_at,
                        body: chat.body,
                        state: DeliveryState::Delivered,
                        expires_at: chat.expires_at,
                    };
                    state.lamport = state.lamport.max(msg.lamport);
                    if let SeqCheck::Gap { missing_from } = state.accept_seq(chat.seq)
                        && now.saturating_sub(state.resend_asked_at) >= RESEND_EVERY
                    {
                        state.resend_asked_at = now;
                        let ask = Payload::Resend { from: missing_from };
                        resend.push(ask.to_bytes());
                    }
                    delivered.push((msg.lamport, msg.msg_id));
                    incoming.push(msg);
                }
                Payload::Receipts { kind, messages } => {
                    let new_state = match kind {
                        ReceiptKind::Delivered => DeliveryState::Delivered,
                        ReceiptKind::Read => DeliveryState::Read,
                    };
                    let me = self.me.public().signing;
                    let refs: Vec<(MessageRef, DeliveryState)> = messages
                        .iter()
                        .map(|&(lamport, msg_id)| {
                            let r = MessageRef {
                                conv_id: conv,
                                lamport,
                                sender: me,
                                msg_id,
                            };
                            (r, new_state)
                        })
                        .collect();
                    let changed = self.store.history().set_states(&refs)?;
                    for ((r, s), c) in refs.iter().zip(changed) {
                        self.store.outbox().ack_message(&r.msg_id, from)?;
                        if c == Some(true) {
                            out.events.push(Event::Receipt {
                                message: *r,
                                state: *s,
                            });
                        }
                    }
                }
                Payload::Resend { .. } => {}
            }
            out.accepted.push(true);
        }
        // One write each for the batch: the session, the counters, the messages.
        if decrypted_any {
            self.save_session(from)?;
        }
        self.put_conv_state(&conv, &state)?;
        let stored = self
            .store
            .history()
            .append_batch(&incoming, Direction::Incoming)?;
        for (msg, outcome) in incoming.into_iter().zip(stored) {
            if outcome == Appended::Inserted {
                out.events.push(Event::MessageReceived(msg));
            }
        }
        for ask in resend {
            out.replies.push(self.encrypt(from, &ask)?);
        }
        if !delivered.is_empty() {
            let receipt = Payload::Receipts {
                kind: ReceiptKind::Delivered,
                messages: delivered,
            };
            out.replies.push(self.encrypt(from, &receipt.to_bytes())?);
        }
        Ok(out)
    }

    /// Marks a conversation with `with` read: returns the read receipt to
    /// send for the messages received since the last time.
    pub fn mark_read(&mut self, with: &[u8; 32]) -> Result<Option<Vec<u8>>, EngineError> {
        let contact = self.contacts.get(with).ok_or(EngineError::UnknownContact)?;
        let conv = conversation_id(self.me.public(), &contact.identity);
        let unread = self.store.history().mark_read(&conv).unwrap_or(0);
        if unread == 0 {
            return Ok(None);
        }
        let page = self.store.history().page(
            &conv,
            None,
            usize::try_from(unread).unwrap_or(usize::MAX),
        )?;
        let messages: Vec<(u64, [u8; 16])> = page
            .messages
            .iter()
            .filter(|m| &m.sender == with)
            .map(|m| (m.lamport, m.msg_id))
            .collect();
        let receipt = Payload::Receipts {
            kind: ReceiptKind::Read,
            messages,
        };
        Ok(Some(self.encrypt(with, &receipt.to_bytes())?))
    }

    /// The reference of a received message, as a reply would quote it.
    pub fn quote(msg: &StoredMessage) -> MsgRef {
        MsgRef {
            lamport: msg.lamport,
            sender: msg.sender,
            msg_id: msg.msg_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{KdfParams, Keystore};

    fn store(dir: &std::path::Path) -> Arc<Store> {
        let mut rng = StdRng::seed_from_u64(9);
        let key = Keystore::create(b"pw", KdfParams::INSECURE_FAST, &mut rng)
            .unwrap()
            .1;
        Arc::new(Store::open(dir, &key).unwrap())
    }

    /// Two devices in temporary directories that know each other.
    struct Pair {
        _dirs: (tempfile::TempDir, tempfile::TempDir),
        a: Engine,
        b: Engine,
        a_key: [u8; 32],
        b_key: [u8; 32],
    }

    fn pair() -> Pair {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut a = Engine::open(store(da.path()), 100).unwrap();
        let mut b = Engine::open(store(db.path()), 100).unwrap();
        let b_key = a
            .add_contact(&b.invite(vec![], 100).unwrap(), "bob")
            .unwrap();
        let a_key = b
            .add_contact(&a.invite(vec![], 100).unwrap(), "alice")
            .unwrap();
        Pair {
            _dirs: (da, db),
            a,
            b,
            a_key,
            b_key,
        }
    }

    #[test]
    fn two_devices_exchange_messages_with_delivered_and_read_receipts() {
        let Pair {
            _dirs,
            mut a,
            mut b,
            a_key,
            b_key,
        } = pair();

        let (sent, frame) = a.send(&b_key, b"hello bob".to_vec(), 101).unwrap();
        let got = b
            .receive(&a_key, std::slice::from_ref(&frame), 102)
            .unwrap();
        assert_eq!(got.accepted, vec![true]);
        let [Event::MessageReceived(m)] = got.events.as_slice() else {
            panic!("{:?}", got.events)
        };
        assert_eq!(m.body, b"hello bob");
        // The same frame again: accepted, nothing new.
        let again = b.receive(&a_key, &[frame], 103).unwrap();
        assert_eq!(again.accepted, vec![true]);
        assert!(again.events.is_empty());

        let back = a.receive(&b_key, &got.replies, 104).unwrap();
        assert_eq!(
            back.events,
            vec![Event::Receipt {
                message: sent,
                state: DeliveryState::Delivered
            }]
        );
        assert!(a.store.outbox().is_empty());

        let read = b.mark_read(&a_key).unwrap().unwrap();
        let back = a.receive(&b_key, &[read], 105).unwrap();
        assert_eq!(
            back.events,
            vec![Event::Receipt {
                message: sent,
                state: DeliveryState::Read
            }]
        );
        assert_eq!(
            a.store.history().get(&sent).unwrap().unwrap().state,
            DeliveryState::Read
        );
    }

    #[test]
    fn a_restarted_device_continues_the_same_session() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut a = Engine::open(store(da.path()), 100).unwrap();
        let b_key;
        let a_key;
        {
            let mut b = Engine::open(store(db.path()), 100).unwrap();
            b_key = a
                .add_contact(&b.invite(vec![], 100).unwrap(), "bob")
                .unwrap();
            a_key = b
                .add_contact(&a.invite(vec![], 100).unwrap(), "alice")
                .unwrap();
            let (_, f) = a.send(&b_key, b"one".to_vec(), 101).unwrap();
            let got = b.receive(&a_key, &[f], 102).unwrap();
            a.receive(&b_key, &got.replies, 103).unwrap();
            b.store.flush().unwrap();
        }
        let mut b = Engine::open(store(db.path()), 200).unwrap();
        assert_eq!(b.identity().public().signing, b_key);
        let (_, f) = a.send(&b_key, b"two".to_vec(), 201).unwrap();
        let got = b.receive(&a_key, &[f], 202).unwrap();
        assert!(matches!(
            got.events.as_slice(),
            [Event::MessageReceived(m)] if m.body == b"two"
        ));
        let (_, r) = b.send(&a_key, b"three".to_vec(), 203).unwrap();
        let back = a.receive(&b_key, &[r], 204).unwrap();
        assert!(matches!(
            back.events.as_slice(),
            [Event::MessageReceived(m)] if m.body == b"three"
        ));
    }

    #[test]
    fn a_gap_in_sequence_numbers_asks_for_a_resend() {
        let Pair {
            _dirs,
            mut a,
            mut b,
            a_key,
            b_key,
        } = pair();
        let (_, f1) = a.send(&b_key, b"1".to_vec(), 101).unwrap();
        let (_, _lost) = a.send(&b_key, b"2".to_vec(), 101).unwrap();
        let (_, f3) = a.send(&b_key, b"3".to_vec(), 101).unwrap();
        b.receive(&a_key, &[f1], 102).unwrap();
        let got = b.receive(&a_key, &[f3], 103).unwrap();
        // A resend request and the delivered receipt.
        assert_eq!(got.replies.len(), 2);
        let back = a.receive(&b_key, &got.replies, 104).unwrap();
        assert_eq!(back.accepted, vec![true, true]);
    }

    #[test]
    fn a_peer_clock_at_its_maximum_does_not_break_sending() {
        let Pair {
            _dirs,
            mut a,
            mut b,
            a_key,
            b_key,
        } = pair();
        let conv = conversation_id(a.identity().public(), b.identity().public());
        let mut state = b.conv_state(&conv).unwrap();
        state.lamport = u64::MAX;
        b.put_conv_state(&conv, &state).unwrap();
        let (sent, f) = b.send(&a_key, b"still works".to_vec(), 101).unwrap();
        assert_eq!(sent.lamport, u64::MAX);
        let got = a.receive(&b_key, &[f], 102).unwrap();
        assert_eq!(got.events.len(), 1);
    }

    #[test]
    fn strangers_and_garbage_are_refused() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut a = Engine::open(store(da.path()), 100).unwrap();
        let mut b = Engine::open(store(db.path()), 100).unwrap();
        let b_key = a
            .add_contact(&b.invite(vec![], 100).unwrap(), "bob")
            .unwrap();
        let (_, f) = a.send(&b_key, b"hi".to_vec(), 101).unwrap();
        let a_key = a.identity().public().signing;
        assert!(matches!(
            b.receive(&a_key, &[f], 102),
            Err(EngineError::UnknownSender)
        ));
        b.add_contact(&a.invite(vec![], 100).unwrap(), "alice")
            .unwrap();
        let got = b.receive(&a_key, &[vec![1, 2, 3], vec![]], 103).unwrap();
        assert_eq!(got.accepted, vec![false, false]);
    }
}
