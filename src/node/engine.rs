//! The node's chat logic, without the network: keys, contacts, sessions,
//! history and receipts over the store. The actor feeds it frames that
//! arrived and sends the frames it returns; everything here is synchronous
//! and runs on the store's thread, never on the swarm's.
//!
//! Durability: every method leaves its writes in the store unflushed; the
//! caller flushes once per round of work before it acknowledges anything
//! or shows "sent" (group commit).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::StdRng;

mod devices;
pub use devices::{Joined, LINK_CODE_LIFE};
mod group_chat;
mod retention;

pub use group_chat::{
    Forgotten, GROUP_FALLBACK, GROUP_RECEIPT_DELAY, GROUP_RECEIPT_JITTER, GroupChange,
    GroupEffects, GroupInfo, GroupKey,
};
pub use retention::MAX_RETENTION;

use super::proto::{Chat, Frame, MsgRef, Payload, ReceiptKind, conversation_of};
use super::retry::{self, Meta, Schedule};
use super::sessions::Sessions;
use super::state::{Contact, ConvState, Introduced, Invite, Queued, SentFrame, SeqCheck};
use crate::crypto::{
    self, ContentKind, DeviceIdentity, Envelope, MailboxKey, PrekeyStore, SealCache, SealedContent,
    Secret32,
};
use crate::store::{
    self, Appended, DeliveryState, Direction, Kind, MessageRef, Store, StoredMessage,
};

const IDENTITY_KEY: &[u8] = b"device";
const MAILBOX_KEY: &[u8] = b"mailbox";
/// How far ahead a device restored from a backup moves its account's
/// list's serial (one change a second for twelve days).
const RESTORE_SERIAL_STEP: u64 = 1 << 20;
/// How far ahead a device restored from a backup moves the ids of the
/// prekeys it makes (a top-up of one-time prekeys a minute for two years).
const RESTORE_PREKEY_ID_STEP: u32 = 1 << 20;
/// This account's device list, in the identity records.
const DEVICE_LIST_KEY: &[u8] = b"device-list";
/// Identity record: the account this device asked to join (`Engine::join`)
/// and has not joined yet.
const JOINING_KEY: &[u8] = b"joining";
const PREKEYS_KEY: &[u8] = b"store";
/// While a restore is dealt with: the prekey counter the backup brought.
const RESTORE_BASE_KEY: &[u8] = b"restore-base";
const CONV_PREFIX: &[u8] = b"conv:";
/// At most one request to resend missing messages per conversation in this
/// many seconds.
pub const RESEND_EVERY: u64 = 30;
/// How long a queued message is retried before the sender is told it
/// expired undelivered (seconds).
pub const MESSAGE_TTL: u64 = 14 * 24 * 3600;

/// How often a contact's frames may make what it refused before due
/// again (seconds).
pub const HEARD_EVERY: u64 = 5;

/// How many messages past those it wants a mark-read looks through for
/// messages not read yet (see `Engine::take_unread`).
pub const UNREAD_SCAN_SLACK: usize = 4096;

/// How far ahead of a conversation's Lamport clock a peer's clock may move
/// it. No honest device gets 2³² events ahead; one that claims more (up to
/// `u64::MAX`, where every later message would tie) does not move the
/// clock, and a setting that claims it is refused.
pub const MAX_CLOCK_AHEAD: u64 = 1 << 32;

/// Takes a peer's clock `theirs` into ours, within [`MAX_CLOCK_AHEAD`].
/// The sequence numbers of a 1:1 conversation with one device: its own
/// record's (`pair`, see `Engine::seq_state`), or else the conversation's.
fn seqs<'a>(state: &'a mut ConvState, pair: &'a mut Option<ConvState>) -> &'a mut ConvState {
    match pair {
        Some(p) => p,
        None => state,
    }
}

pub(crate) fn witness_clock(ours: &mut u64, theirs: u64) {
    if theirs <= ours.saturating_add(MAX_CLOCK_AHEAD) {
        *ours = (*ours).max(theirs);
    } else {
        tracing::debug!(
            ours = *ours,
            theirs,
            "a peer's clock too far ahead is not taken"
        );
    }
}

/// A store restored from a backup is an older copy of this device: its
/// sessions' sending chains and its own sender keys stand where they stood
/// then, and continuing from them would encrypt again under message keys
/// already used (and the contacts would take the frames for copies of
/// what they read). They are dropped, durably, before anything is loaded:
/// every contact gets a new session at the next message (the contact takes
/// it over its old one), and every group a new sender key at the next
/// send. Other members' keys are kept (reading with an older state risks
/// nothing: the history keeps one copy of each message).
fn forget_sending_state(store: &Store, me: &DeviceIdentity) -> Result<(), EngineError> {
    let sessions = store.records(Kind::Sessions)?;
    let mut dropped = 0usize;
    for (key, bytes) in sessions.scan(b"")? {
        let Ok(peer) = <[u8; 32]>::try_from(key.as_slice()) else {
            continue;
        };
        // The set-ups seen from that contact stay, so that one captured
        // before cannot be replayed to set up a session again.
        if let Some(seen) = super::sessions::seen_of_record(&bytes) {
            sessions.put(&super::sessions::seen_record_key(&peer), &seen)?;
        }
        dropped += usize::from(sessions.remove(&key)?);
    }
    let keys = store.records(Kind::SenderKeys)?;
    for (key, _) in keys.scan(b"")? {
        if group_chat::is_own_key_record(&key, &me.public().signing) {
            dropped += usize::from(keys.remove(&key)?);
        }
    }
    // The mark stays until every contact is asked again (see
    // `Engine::ask_again_after_restore`); the drops are on disk first.
    store.flush()?;
    tracing::warn!(
        dropped,
        "restored from a backup: sessions and own sender keys dropped; contacts and groups get new ones"
    );
    Ok(())
}

/// Most fresh frames that retries to one contact may make, in one session,
/// beyond the one each queued entry needs, before the contact is heard
/// from again (a frame of its read, or a direct ack). Every fresh frame
/// takes a message key, and a contact reads nothing more than `MAX_SKIP`
/// (1,000) keys ahead of the last it read: with this bound, retries to a
/// contact that is away add at most this many to the messages written
/// meanwhile, however many are queued and however long it stays away.
pub const RETRY_KEY_BUDGET: u32 = 256;

/// Frames read from contacts whose delivered receipt can be sent again
/// when the same frame comes again (in memory, newest, all contacts
/// together).
const MAX_READ_FRAMES: usize = 8192;

/// A map that keeps its newest `cap` entries: past that, the entry
/// inserted first goes. Used for what was read lately, so that another
/// copy of it is answered with the same receipt.
#[derive(Debug)]
pub(crate) struct Recent<K, V> {
    map: HashMap<K, V>,
    order: std::collections::VecDeque<K>,
    cap: usize,
}

impl<K: Copy + Eq + std::hash::Hash, V: Copy> Recent<K, V> {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: std::collections::VecDeque::new(),
            cap,
        }
    }

    /// Inserts or replaces `key` (a replaced entry keeps its place).
    pub(crate) fn insert(&mut self, key: K, value: V) {
        if self.map.insert(key, value).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    pub(crate) fn get(&self, key: &K) -> Option<V> {
        self.map.get(key).copied()
    }

    /// Removes `key`, returning its value.
    pub(crate) fn take(&mut self, key: &K) -> Option<V> {
        let value = self.map.remove(key)?;
        self.order.retain(|k| k != key);
        Some(value)
    }

    /// Keeps only the entries `keep` chooses.
    pub(crate) fn retain(&mut self, keep: impl Fn(&K) -> bool) {
        self.map.retain(|k, _| keep(k));
        self.order.retain(|k| keep(k));
    }
}

/// A 1:1 frame read, as [`Engine::read_frames`] knows it: its sender and
/// the SHA-256 of its bytes.
type FrameKey = ([u8; 32], [u8; 32]);

fn frame_key(from: &[u8; 32], frame: &[u8]) -> FrameKey {
    use sha2::Digest as _;
    (*from, sha2::Sha256::digest(frame).into())
}

/// Checks the invite `from` introduced itself with: every signature in
/// it, and that its keys are those of the device that sealed it.
pub fn check_intro(from: &crypto::PublicIdentity, invite: &Invite) -> Result<(), EngineError> {
    let verified = invite.verify()?;
    if verified.bundle.body.identity != *from {
        return Err(crypto::Error::ForgedSender.into());
    }
    Ok(())
}

/// How long the invite sent unasked (in introductions and beside
/// set-ups) is reused before it is made again (seconds).
const UNASKED_INVITE_LIFE: u64 = 60;

/// What an envelope addressed to us held ([`Engine::open_envelope`]).
#[derive(Debug)]
pub enum Opened {
    /// A frame from the contact `from`.
    Frame {
        /// The contact.
        from: [u8; 32],
        /// The frame, for [`Engine::receive`].
        frame: Vec<u8>,
    },
    /// The introduction of a device that is not a contact: its invite,
    /// decoded but not verified (see [`check_intro`]).
    Intro {
        /// The device (authenticated by the seal).
        from: crypto::PublicIdentity,
        /// Its invite.
        invite: Box<Invite>,
        /// Whether the envelope carries a frame too (a session set-up),
        /// to read if the device becomes a contact.
        carries: bool,
    },
    /// Something else from the device with this key, not a contact.
    Stranger([u8; 32]),
    /// An introduction from a contact: nothing to do.
    Known([u8; 32]),
}

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
    /// An envelope sealed by a device that is not a contact, or whose
    /// certificate does not match the contact's keys.
    #[error("envelope from a device that is not a contact")]
    UnknownEnvelopeSender,
    /// A message body over the limit.
    #[error("message body of {len} bytes is over the limit of {max}")]
    BodyTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// No group with that id on this device.
    #[error("no group with that id")]
    UnknownGroup,
    /// A group change or message that cannot be made, and why.
    #[error("{0}")]
    Group(String),
    /// A retention out of bounds.
    #[error("a retention is 1 to {max} seconds")]
    BadRetention {
        /// The longest (seconds).
        max: u64,
    },
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
    /// One of our messages reached its expiry undelivered: it is no longer
    /// retried.
    Expired {
        /// The message.
        message: MessageRef,
    },
    /// One of our group messages expired before the member `member`
    /// acknowledged it: its copy is no longer retried, and the message
    /// stays short of delivered.
    GroupExpired {
        /// The message.
        message: MessageRef,
        /// The member (identity key).
        member: [u8; 32],
    },
    /// A member's receipt for one of our group messages: how many of the
    /// other members (as they were when it was sent) have it and have
    /// read it.
    GroupReceipt {
        /// The message.
        message: MessageRef,
        /// Members whose devices stored it.
        delivered: u32,
        /// Members who read it.
        read: u32,
        /// Members it went to.
        members: u32,
    },
    /// A group's members, name or retention changed (or this device
    /// joined or left it).
    GroupChanged {
        /// The group.
        group: [u8; 32],
    },
    /// A 1:1 conversation became temporary, or permanent again (either
    /// side changed it).
    RetentionChanged {
        /// The conversation.
        conv: [u8; 32],
        /// Seconds messages live from now on; `None`: kept.
        secs: Option<u64>,
    },
    /// A contact's account has a new device list.
    DevicesChanged(DevicesChange),
    /// A contact's account signed two different device lists with one
    /// serial, which its own device never does: its account key is used
    /// elsewhere (stolen, or a copy of the device runs). The list held is
    /// kept; the person should compare safety numbers again.
    DevicesConflict {
        /// The account.
        account: [u8; 32],
        /// The serial both lists carry.
        serial: u64,
    },
    /// A new device joined this account with a link code made here.
    DeviceLinked {
        /// Its identity key.
        device: [u8; 32],
        /// The name it is listed under.
        name: String,
    },
    /// Contacts the account's first device shared with this device
    /// (which joined the account) are contacts here now.
    AccountContacts {
        /// Their identity keys.
        added: Vec<[u8; 32]>,
    },
    /// This device joined the account `account` (its first device sent
    /// the list naming it).
    AccountJoined {
        /// The account.
        account: [u8; 32],
        /// Its list's serial.
        serial: u64,
    },
    /// This account's first device removed the device `device` from the
    /// account ([`Engine::remove_device`]): the new list goes to every
    /// contact, the removed device among them, which stops being a
    /// contact here once that is done ([`Engine::forget_unlinked`]).
    DeviceUnlinked {
        /// Its identity key.
        device: [u8; 32],
        /// The name it was listed under.
        name: String,
    },
    /// A contact's account no longer lists the device `gone`, which was
    /// a contact here: it is not one any more (what was queued for it is
    /// given up), and what it writes from now on is a contact request.
    ContactDeviceRemoved {
        /// The account.
        account: [u8; 32],
        /// The device, as its contact record had it.
        gone: Box<Forgotten>,
    },
    /// The account's first device removed this device from the account:
    /// it is an account of its own again (with a list of its own), and
    /// the account's contacts no longer take it for the account's.
    AccountLeft {
        /// The account it was in.
        account: [u8; 32],
        /// The serial of the list without it.
        serial: u64,
    },
}

/// What a contact's new device list changed ([`Event::DevicesChanged`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicesChange {
    /// The account (its first device's signing key).
    pub account: [u8; 32],
    /// The list's serial.
    pub serial: u64,
    /// Every device the list names.
    pub devices: Vec<crypto::DeviceEntry>,
    /// Devices it adds (signing keys).
    pub added: Vec<[u8; 32]>,
    /// Devices it removes.
    pub removed: Vec<[u8; 32]>,
    /// Devices it names otherwise.
    pub renamed: Vec<[u8; 32]>,
}

/// A message written by [`Engine::send`].
#[derive(Debug)]
pub struct Sent {
    /// The message as history names it.
    pub message: MessageRef,
    /// Its outbox position (transport acks and failures name it).
    pub pos: u64,
    /// The frame to send now.
    pub frame: Vec<u8>,
    /// Whether the frame may leave before the store is flushed: its
    /// message key can never be used again, even if the node stops before
    /// the flush (see `Session::sent_key_is_durable`). Its message, queue
    /// entry and session state are still not on disk until the flush.
    pub early: bool,
    /// Its copies for the other devices of the contact's account (each
    /// with its own outbox entry), to send after the flush.
    pub copies: Vec<Due>,
}

/// A queued message due for another attempt.
#[derive(Debug)]
pub struct Due {
    /// Its outbox position.
    pub pos: u64,
    /// The recipient device.
    pub to: [u8; 32],
    /// A frame carrying it: the one its last retry sent, or a fresh one
    /// (see [`Engine::due`]).
    pub frame: Vec<u8>,
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
    /// What group payloads among the frames ask for.
    pub group: GroupEffects,
    /// A session was started afresh ([`Engine::take_bundle`]), or a frame
    /// moved this device to another session with the sender (two set-ups
    /// crossed and the sender's won): what is queued for the sender is due
    /// now, in the session both hold.
    pub restarted: bool,
}

/// Most new sessions (each an X3DH agreement, several Diffie-Hellman
/// operations) one contact may set up with us per minute; past it, a set-up
/// is refused before any agreement and the contact sends it again later.
/// An honest device sets up one when it first writes, reinstalls or
/// restarts without its sessions, so a contact cannot keep the store
/// thread busy with agreements.
pub const MAX_SETUPS_PER_MINUTE: u32 = 16;

/// The chat logic of one device.
pub struct Engine {
    store: Arc<Store>,
    me: DeviceIdentity,
    /// This device's account's device list: made at the first start
    /// with this device alone, signed by it (the account key).
    devices: crypto::VerifiedDeviceList,
    mailbox: MailboxKey,
    prekeys: PrekeyStore,
    sessions: Sessions,
    contacts: HashMap<[u8; 32], Contact>,
    /// The newest device list held of each contact's account that sent
    /// one, by account key (verified once, when it came or at the start).
    lists: HashMap<[u8; 32], crypto::VerifiedDeviceList>,
    /// The account of each contact device that came with a list (its
    /// invite's, or the last it sent); a contact without one is an
    /// account of its own.
    accounts: HashMap<[u8; 32], [u8; 32]>,
    seal_cache: SealCache,
    schedule: Schedule,
    /// When each contact last made failed messages due again
    /// ([`Engine::heard_from`]); one entry per contact at most.
    heard_at: HashMap<[u8; 32], u64>,
    /// Where this device listens, as last told: the addresses of the
    /// invites that go beside set-ups and in introductions.
    listen: Vec<String>,
    /// The encoded invite sent unasked, and when it was made: made again
    /// after [`UNASKED_INVITE_LIFE`] or when our addresses or relays change
    /// (each costs a signature, and it goes with every sealed set-up).
    unasked: Option<(u64, Vec<u8>)>,
    /// Fresh frames retries made for each contact since it was last heard
    /// from (a frame of its read, or a direct ack), in the session of that
    /// base key: see [`RETRY_KEY_BUDGET`]. One entry per contact at most.
    /// A contact not heard from since this engine started has none, and
    /// counts as having used its budget: a restart must not grant another
    /// (the count is not stored).
    retry_keys: HashMap<[u8; 32], ([u8; 32], u32)>,
    /// When each contact's last `Resend` request was answered: at most one
    /// per [`RESEND_EVERY`] (as the asking side does), or a contact could
    /// make every queued message due again at each of its frames. One entry
    /// per contact at most.
    resend_answered: HashMap<[u8; 32], u64>,
    /// How many times each contact was heard from since the start (see
    /// [`Engine::due`]); one entry per contact at most.
    heard_gen: HashMap<[u8; 32], u64>,
    /// For each outbox position whose frame was kept since the start, its
    /// contact's `heard_gen` then (a frame kept before the start counts
    /// as 0). Trimmed to the schedule's positions as it grows.
    kept_at: HashMap<u64, u64>,
    /// The one-time prekey last handed to each contact that asked for our
    /// bundle directly: handed again while unused, so that asking again
    /// and again cannot use up the prekeys kept for everyone.
    handed_one_time: HashMap<[u8; 32], u32>,
    /// Session set-ups taken from each contact in the current minute (the
    /// minute, and how many): see [`MAX_SETUPS_PER_MINUTE`].
    setups: HashMap<[u8; 32], (u64, u32)>,
    /// 1:1 frames read lately and their receipts, so that another copy of
    /// one (the same envelope left at two relays and published on the
    /// mesh) is answered with the same receipt, in case the first was
    /// lost. The copy no longer decrypts: its message key is gone. (A retry
    /// by the sender is a fresh frame, answered like any other.)
    read_frames: Recent<FrameKey, (u64, [u8; 16])>,
    rng: StdRng,
    /// How long a message is retried (seconds).
    ttl: u64,
    /// Our relays, as listed in our bundles (`/…/p2p/<relay>`).
    relays: Vec<String>,
    /// Groups, their logs and sender keys.
    groups: group_chat::Groups,
    /// The link code made last, until used or ended (in memory only).
    link: Option<devices::PendingLink>,
    /// The account this device asked to join and has not joined yet (also
    /// in the identity records): the only other account whose list it
    /// takes as its own, while it has no contacts of its own and no group.
    joining: Option<[u8; 32]>,
    /// Devices removed from this account that are contacts here still,
    /// with when (also in the identity records): each is forgotten once
    /// the list telling it is no longer queued for it.
    unlinked: HashMap<[u8; 32], u64>,
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
        let mut devices = match ids.get(DEVICE_LIST_KEY)? {
            Some(bytes) => {
                let list = crypto::DeviceList::from_bytes(&bytes)?.verify()?;
                if !list.names(me.public()) {
                    return Err(devices::refused(
                        "the stored list does not name this device",
                    ));
                }
                list
            }
            // A new account, or one made before accounts had lists: this
            // device alone, named later.
            None => {
                let list = crypto::DeviceList::first(&me, "", now)?.verify()?;
                ids.put(DEVICE_LIST_KEY, &list.list().to_bytes())?;
                list
            }
        };
        let pk = store.records(Kind::Prekeys)?;
        let mut prekeys = match pk.get(PREKEYS_KEY)? {
            Some(bytes) => PrekeyStore::from_bytes(&bytes)?,
            None => {
                let p = PrekeyStore::new(&me, now, &mut rng);
                pk.put(PREKEYS_KEY, &p.to_bytes())?;
                p
            }
        };
        let restored = store.restored()?;
        if !restored {
            // Left by a start that ended between clearing the restore
            // mark and this record: a later restore must not take it.
            pk.remove(RESTORE_BASE_KEY)?;
        }
        if restored {
            forget_sending_state(&store, &me)?;
            // Prekeys made since the backup (and published to relays) had
            // higher ids: new ones must not take those ids again. The step
            // is taken from the counter the backup brought, kept until the
            // restore is dealt with, so that a start that fails after this
            // and is tried again does not take it twice.
            let base = match pk.get(RESTORE_BASE_KEY)? {
                Some(b) => <[u8; 4]>::try_from(b.as_slice())
                    .map(u32::from_be_bytes)
                    .unwrap_or(prekeys.next_id()),
                None => {
                    let b = prekeys.next_id();
                    pk.put(RESTORE_BASE_KEY, &b.to_be_bytes())?;
                    b
                }
            };
            let first = base.checked_add(RESTORE_PREKEY_ID_STEP).unwrap_or_else(|| {
                tracing::warn!(base, "prekey ids run out: new ones may repeat old ids");
                u32::MAX
            });
            prekeys.advance_ids_to(first);
            pk.put(PREKEYS_KEY, &prekeys.to_bytes())?;
            // Lists signed since the backup was made had higher serials:
            // the next ones must come after them, or contacts would take
            // them for old ones (or for two lists with one serial).
            if *devices.account() == me.public().signing {
                devices = devices.advanced(&me, RESTORE_SERIAL_STEP)?.verify()?;
                ids.put(DEVICE_LIST_KEY, &devices.list().to_bytes())?;
            }
        }
        let mut contacts = HashMap::new();
        for (key, bytes) in store.records(Kind::Contacts)?.scan(b"")? {
            if let Ok(k) = <[u8; 32]>::try_from(key.as_slice()) {
                contacts.insert(k, Contact::from_bytes(&bytes)?);
            }
        }
        let (lists, accounts) = devices::load_lists(&store, &contacts, devices.account())?;
        let joining =
            match ids.get(JOINING_KEY)? {
                Some(b) => Some(<[u8; 32]>::try_from(b.as_slice()).map_err(|_| {
                    crypto::Error::Malformed {
                        what: "stored joining record",
                    }
                })?),
                None => None,
            };
        let unlinked = devices::load_unlinked(&ids)?;
        let mut sessions = Sessions::new();
        for (key, bytes) in store.records(Kind::Sessions)?.scan(b"")? {
            if let Ok(k) = <[u8; 32]>::try_from(key.as_slice()) {
                sessions.load(k, &bytes)?;
            } else if let Some(k) = key
                .strip_prefix(b"seen:".as_slice())
                .and_then(|k| <[u8; 32]>::try_from(k).ok())
            {
                sessions.load_seen(k, &bytes)?;
            }
        }
        let mut schedule = Schedule::default();
        for entry in store.outbox().all()? {
            let Ok(q) = Queued::from_bytes(&entry.envelope) else {
                // Unreadable (a future format): leave it, never send it.
                continue;
            };
            schedule.insert(
                entry.seq,
                Meta {
                    msg_id: entry.msg_id,
                    recipient: entry.recipient,
                    conv_id: q.conv_id,
                    lamport: q.lamport.unwrap_or(0),
                    seq: q.seq.unwrap_or(0),
                    attempts: entry.attempts,
                    next_at: now,
                    expires_at: entry.expires_at,
                },
            );
        }
        let mut engine = Self {
            store,
            me,
            devices,
            mailbox,
            prekeys,
            sessions,
            contacts,
            lists,
            accounts,
            seal_cache: SealCache::default(),
            schedule,
            heard_at: HashMap::new(),
            listen: Vec::new(),
            unasked: None,
            retry_keys: HashMap::new(),
            resend_answered: HashMap::new(),
            heard_gen: HashMap::new(),
            kept_at: HashMap::new(),
            handed_one_time: HashMap::new(),
            setups: HashMap::new(),
            read_frames: Recent::new(MAX_READ_FRAMES),
            rng,
            ttl: MESSAGE_TTL,
            relays: Vec::new(),
            groups: group_chat::Groups::default(),
            link: None,
            joining,
            unlinked,
        };
        engine.load_groups()?;
        if restored {
            engine.ask_again_after_restore(now)?;
            engine.store.clear_restored()?;
            engine
                .store
                .records(Kind::Prekeys)?
                .remove(RESTORE_BASE_KEY)?;
            engine.store.flush()?;
        }
        Ok(engine)
    }

    /// After a restore: queues for every contact a request to send again
    /// what came after the last message this copy of the store has from
    /// it. It goes in a new session, which the contact takes over its old
    /// one, so the contact's messages are read again without this device
    /// writing first; and what it still has queued comes again at once
    /// (what it no longer has, it says is gone).
    fn ask_again_after_restore(&mut self, now: u64) -> Result<(), EngineError> {
        let contacts: Vec<[u8; 32]> = self.contacts.keys().copied().collect();
        for key in contacts {
            let conv = self.conv_with_device(&key);
            let from = match self.seq_state(&conv, &key)? {
                Some(pair) => pair.peer_contiguous,
                None => self.conv_state(&conv)?.peer_contiguous,
            }
            .saturating_add(1);
            let payload = Payload::Resend { from }.to_bytes();
            self.queue_unsent(&key, conv, payload, now, now)?;
        }
        Ok(())
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// This device's mailbox id (its inbox topic and relay mailbox).
    pub fn mailbox_id(&self) -> [u8; 32] {
        self.mailbox.id().0
    }

    /// Every contact.
    pub fn contacts(&self) -> impl Iterator<Item = &Contact> {
        self.contacts.values()
    }

    /// When the queued message at `pos` expires (Unix seconds).
    pub fn expiry_of(&self, pos: u64) -> Option<u64> {
        self.schedule.get(pos).map(|m| m.expires_at)
    }

    /// The recipient of the queued message at `pos`, if still queued.
    pub fn recipient_of(&self, pos: u64) -> Option<[u8; 32]> {
        self.schedule.get(pos).map(|m| m.recipient)
    }

    /// Number of messages still owed to someone.
    pub fn queued(&self) -> usize {
        self.schedule.len()
    }

    /// This device's identity.
    pub fn identity(&self) -> &DeviceIdentity {
        &self.me
    }

    /// An invite to hand out (addresses where this device listens).
    pub fn invite(&self, addrs: Vec<String>, now: u64) -> Result<Invite, EngineError> {
        let bundle =
            self.prekeys
                .bundle(&self.me, self.mailbox.id().0, &self.relays, now, false)?;
        Ok(Invite::new(bundle, addrs).with_devices(self.devices.list().to_bytes(), Vec::new()))
    }

    /// This device's account's device list.
    pub fn device_list(&self) -> &crypto::VerifiedDeviceList {
        &self.devices
    }

    /// Adds (or updates) the contact an invite names, after checking every
    /// signature in it, as the person asks: a contact a group made is the
    /// person's from then on. Returns its identity key.
    pub fn add_contact(&mut self, invite: &Invite, name: &str) -> Result<[u8; 32], EngineError> {
        let key = self.put_contact(invite, name)?;
        self.adopt(&key)?;
        // A contact of its own: this device is in use as its own account,
        // and a join asked for before is off.
        if self.joining.is_some_and(|a| self.account_of(&key) != a) {
            self.set_joining(None)?;
        }
        Ok(key)
    }

    /// [`Self::add_contact`], whoever asks (a group adding a member's card
    /// too).
    pub(crate) fn put_contact(
        &mut self,
        invite: &Invite,
        name: &str,
    ) -> Result<[u8; 32], EngineError> {
        let verified = invite.verify()?;
        let identity = verified.bundle.body.identity.clone();
        let mut contact = Contact::new(
            invite,
            identity.clone(),
            verified.bundle.body.mailbox_id,
            name,
        );
        let device = identity.signing;
        // An invite without a list (version 1) of a device known in an
        // account is of that account still.
        let known = self.accounts.get(&device).copied();
        let account = match (&verified.list, known) {
            (None, Some(k)) => k,
            _ => verified.account(),
        };
        if known.is_some_and(|k| k != account) {
            return Err(devices::refused("the device is known in another account"));
        }
        let mut newer = verified.list;
        if let Some(list) = &newer {
            self.check_list_devices(list)?;
        }
        if let Some(held) = self.held_list(&account) {
            match newer.as_ref().map(|l| held.update(l)).transpose()? {
                Some(crypto::ListUpdate::Newer { .. }) => {}
                Some(crypto::ListUpdate::Same) => newer = None,
                // No list, or an older one than held (an old invite): the
                // device must still be in the newest.
                None | Some(crypto::ListUpdate::Older) => {
                    if !held.names(&identity) {
                        return Err(devices::refused("the device was removed from its account"));
                    }
                    newer = None;
                }
            }
        }
        // The same key again (a new name, new addresses): a comparison
        // already made still holds.
        contact.verified = self
            .contacts
            .get(&identity.signing)
            .is_some_and(|c| c.verified);
        if let Some(list) = newer {
            // This account's own, or the one it asked to join: its own
            // list (a no-op for another account's).
            self.own_list_from(&list, None)?;
            self.keep_list(list)?;
        }
        // The record keeps the newest list it is known by.
        if let Some(held) = self.held_list(&account).map(|h| h.list().to_bytes()) {
            contact.devices = held;
            self.accounts.insert(device, account);
        }
        self.store
            .records(Kind::Contacts)?
            .put(&identity.signing, &contact.to_bytes())?;
        self.contacts.insert(identity.signing, contact);
        Ok(identity.signing)
    }

    /// Forgets a contact: its record goes, its conversation and sessions
    /// stay in the store. Messages still queued for it are no longer
    /// routed and expire. `false` if there was no such contact.
    pub fn remove_contact(&mut self, key: &[u8; 32]) -> Result<bool, EngineError> {
        if self.contacts.remove(key).is_none() {
            return Ok(false);
        }
        self.accounts.remove(key);
        self.heard_at.remove(key);
        self.retry_keys.remove(key);
        self.resend_answered.remove(key);
        self.heard_gen.remove(key);
        self.handed_one_time.remove(key);
        self.setups.remove(key);
        self.read_frames.retain(|(peer, _)| peer != key);
        self.store.records(Kind::Contacts)?.remove(key)?;
        // Not marked as a group's any more either.
        self.adopt(key)?;
        Ok(true)
    }

    /// Marks a contact's safety number as compared (or not). `false` if
    /// there is no such contact.
    pub fn set_verified(&mut self, key: &[u8; 32], verified: bool) -> Result<bool, EngineError> {
        let Some(contact) = self.contacts.get_mut(key) else {
            return Ok(false);
        };
        if contact.verified != verified {
            contact.verified = verified;
            self.store
                .records(Kind::Contacts)?
                .put(key, &contact.to_bytes())?;
        }
        self.adopt(key)?;
        Ok(true)
    }

    /// Sets how long new messages are retried before they expire: at most
    /// [`MESSAGE_TTL`] (others refuse envelopes that expire later).
    pub fn set_message_ttl(&mut self, secs: u64) {
        self.ttl = secs.clamp(1, MESSAGE_TTL);
    }

    /// Sets the relays our invites and bundles name (each ending in
    /// `/p2p/<relay peer id>`).
    pub fn set_relays(&mut self, relays: Vec<String>) {
        if relays != self.relays {
            self.unasked = None;
        }
        self.relays = relays;
    }

    /// Our mailbox key (fetches and acks at our relays are signed with it).
    pub fn mailbox_key(&self) -> &MailboxKey {
        &self.mailbox
    }

    /// A contact's bundle, verified (None if unknown or unreadable).
    pub fn contact_bundle(&self, key: &[u8; 32]) -> Option<crypto::BundleBody> {
        self.contacts
            .get(key)
            .and_then(|c| c.bundle.verify().ok())
            .map(|v| v.body)
    }

    /// The relays a contact's bundle names (empty if none or unreadable).
    pub fn contact_relays(&self, key: &[u8; 32]) -> Vec<String> {
        self.contact_bundle(key)
            .map(|b| b.relays)
            .unwrap_or_default()
    }

    /// Attempts so far of the queued message at `pos` (None: not queued).
    pub fn attempts(&self, pos: u64) -> Option<u32> {
        self.schedule.get(pos).map(|m| m.attempts)
    }

    /// The history reference of the queued chat message at `pos`.
    pub fn message_ref(&self, pos: u64) -> Option<MessageRef> {
        self.schedule
            .get(pos)
            .filter(|m| m.is_chat())
            .map(|m| self.outgoing_ref(m))
    }

    /// The group message the queued entry at `pos` carries to one member
    /// (its copy for that member), if it is one. Group entries have no
    /// sequence number of their own and no delivery state: the message's
    /// tally has (see `group_chat`).
    pub fn group_message_ref(&self, pos: u64) -> Option<MessageRef> {
        self.schedule
            .get(pos)
            .filter(|m| m.seq == 0 && m.lamport != 0 && self.is_group(&m.conv_id))
            .map(|m| self.outgoing_ref(m))
    }

    /// A relay took custody of the message at `pos`: it shows "stored at
    /// relay" (unless it is further already). It stays queued: the
    /// recipient's receipt ends it.
    pub fn stored_at_relay(&mut self, pos: u64) -> Result<Vec<Event>, EngineError> {
        match self.message_ref(pos) {
            Some(r) => self.set_states(&[(r, DeliveryState::StoredAtRelay)]),
            None => Ok(Vec::new()),
        }
    }

    /// The contact with this identity key.
    pub fn contact(&self, key: &[u8; 32]) -> Option<&Contact> {
        self.contacts.get(key)
    }

    /// The id of the conversation with `with`: a contact (1:1) or a group
    /// (its id).
    pub fn conversation_with(&self, with: &[u8; 32]) -> Option<[u8; 32]> {
        if self.is_group(with) {
            return Some(*with);
        }
        self.contacts
            .contains_key(with)
            .then(|| self.conv_with_device(with))
    }

    /// The 1:1 conversation with the contact device `device`: made from
    /// this device's account and that device's account (docs/devices.md,
    /// §3), so that whatever any device of an account writes to a contact,
    /// or is written from it, is one conversation. For an account of one
    /// device, and for an account's first device, it is the conversation
    /// of the two devices, as it always was.
    pub(crate) fn conv_with_device(&self, device: &[u8; 32]) -> [u8; 32] {
        conversation_of(self.devices.account(), &self.account_of(device))
    }

    /// The sequence numbers between this device and `device` in `conv`,
    /// when `device` is not its account's first device (a record of its
    /// own, `conv:` ‖ conv ‖ device); `None` for the first device, whose
    /// numbers are in the conversation's own record with its clock (as
    /// before accounts had several devices).
    fn seq_state(
        &self,
        conv: &[u8; 32],
        device: &[u8; 32],
    ) -> Result<Option<ConvState>, EngineError> {
        if self.account_of(device) == *device {
            return Ok(None);
        }
        let key = [CONV_PREFIX, conv.as_slice(), device.as_slice()].concat();
        Ok(Some(
            match self.store.records(Kind::Contacts)?.get(&key)? {
                Some(b) => ConvState::from_bytes(&b)?,
                None => ConvState::default(),
            },
        ))
    }

    /// Writes what [`Self::seq_state`] read, if it was a record of its own.
    fn put_seq_state(
        &self,
        conv: &[u8; 32],
        device: &[u8; 32],
        pair: Option<&ConvState>,
    ) -> Result<(), EngineError> {
        if let Some(p) = pair {
            let key = [CONV_PREFIX, conv.as_slice(), device.as_slice()].concat();
            self.store
                .records(Kind::Contacts)?
                .put(&key, &p.to_bytes())?;
        }
        Ok(())
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

    fn save_prekeys(&self) -> Result<(), EngineError> {
        self.store
            .records(Kind::Prekeys)?
            .put(PREKEYS_KEY, &self.prekeys.to_bytes())?;
        Ok(())
    }

    /// Whether a session with `peer` exists (else the first message starts
    /// one from the contact's bundle).
    pub fn has_session(&self, peer: &[u8; 32]) -> bool {
        self.sessions.has(peer)
    }

    /// A bundle for the contact `from`, which asked over a direct
    /// connection, with a one-time prekey for it: the one it was handed
    /// before if still unused, else a new one (none if the store already
    /// holds the most it keeps). The caller writes the prekeys (`receive`
    /// does).
    fn bundle_for_contact(
        &mut self,
        from: &[u8; 32],
        now: u64,
    ) -> Result<crypto::PrekeyBundle, EngineError> {
        let mut bundle =
            self.prekeys
                .bundle(&self.me, self.mailbox.id().0, &self.relays, now, false)?;
        // The one handed to this contact before, if still unused and made
        // after the current signed prekey: an unused one-time prekey is
        // kept only until the signed prekeys it can have gone out with are
        // forgotten (`PrekeyStore::retire_one_time`), which counts on this.
        let spk_made = self.prekeys.current().map_or(0, |s| s.created_at);
        let unused = self.handed_one_time.get(from).and_then(|&id| {
            let made = self.prekeys.one_time_made(id)?;
            (made >= spk_made).then(|| self.prekeys.one_time_public(id))?
        });
        bundle.one_time = match unused {
            Some(opk) => Some(opk),
            None => {
                let opk = self
                    .prekeys
                    .generate_one_time(&self.me, 1, now, &mut self.rng)
                    .pop();
                if let Some(o) = &opk {
                    self.handed_one_time.insert(*from, o.id);
                }
                opk
            }
        };
        Ok(bundle)
    }

    /// Our bundle for our relays (without a one-time prekey) and `count`
    /// new one-time prekeys for them to hand out (fewer if the store
    /// already holds the most it keeps). New secrets are written to the
    /// store; the caller flushes before publishing them.
    pub fn prekeys_for_relay(
        &mut self,
        count: usize,
        now: u64,
    ) -> Result<(crypto::PrekeyBundle, Vec<crypto::OneTimePublic>), EngineError> {
        let bundle =
            self.prekeys
                .bundle(&self.me, self.mailbox.id().0, &self.relays, now, false)?;
        let one_time = self
            .prekeys
            .generate_one_time(&self.me, count, now, &mut self.rng);
        if !one_time.is_empty() {
            self.save_prekeys()?;
        }
        Ok((bundle, one_time))
    }

    /// Takes a bundle a contact sent in answer to our request (or that
    /// its relay served): if no session exists yet, the first message will
    /// use it (and its one-time prekey). If we started a session the
    /// contact never answered, from a signed prekey it has since replaced,
    /// a new one starts from this bundle and what is queued for the
    /// contact is due at once, encrypted in it
    /// ([`Sessions::restart_stale`]); then it returns true. Its identity
    /// must be the contact's.
    pub fn take_bundle(
        &mut self,
        from: &[u8; 32],
        bundle: crypto::PrekeyBundle,
        now: u64,
    ) -> Result<bool, EngineError> {
        let verified = bundle.verify()?;
        let contact = self
            .contacts
            .get_mut(from)
            .ok_or(EngineError::UnknownSender)?;
        if verified.body.identity != contact.identity {
            return Err(crypto::Error::Malformed {
                what: "prekey bundle (of another device)",
            }
            .into());
        }
        if self.sessions.has(from)
            && !self
                .sessions
                .restart_stale(&self.me, &contact.identity, &bundle, &mut self.rng)?
        {
            return Ok(false);
        }
        contact.bundle = bundle;
        let bytes = contact.to_bytes();
        self.store.records(Kind::Contacts)?.put(from, &bytes)?;
        if !self.sessions.has(from) {
            return Ok(false);
        }
        self.save_session(from)?;
        self.schedule.due_now_for(from, now);
        Ok(true)
    }

    /// The contacts with a session we started that they have not
    /// answered yet.
    pub fn awaiting_answers(&self) -> HashSet<[u8; 32]> {
        self.sessions
            .peers()
            .filter(|p| self.contacts.contains_key(*p) && self.sessions.unanswered(p))
            .copied()
            .collect()
    }

    /// Whether we started a session with `peer` that it has not answered
    /// yet (then a fresh bundle from it is worth asking for: see
    /// [`Self::take_bundle`]).
    pub fn awaiting_answer(&self, peer: &[u8; 32]) -> bool {
        self.sessions.unanswered(peer)
    }

    /// Makes a new signed prekey when the current one is older than the
    /// rotation period, forgets replaced ones past their grace period and
    /// one-time prekeys nobody used within their lifetime (written to the
    /// store). Returns whether anything was written, and whether a new
    /// signed prekey was made (our relays should then get the new bundle).
    pub fn rotate_prekeys(&mut self, now: u64) -> Result<(bool, bool), EngineError> {
        let before = self.prekeys.signed_count();
        let made = self.prekeys.rotate_if_due(&self.me, now, &mut self.rng);
        let retired = self.prekeys.retire_one_time(now);
        let written = made || retired || self.prekeys.signed_count() != before;
        if written {
            self.save_prekeys()?;
        }
        Ok((written, made))
    }

    fn save_session(&mut self, peer: &[u8; 32]) -> Result<(), EngineError> {
        if let Some(bytes) = self.sessions.to_record(peer) {
            self.store.records(Kind::Sessions)?.put(peer, &bytes)?;
            // Only a stored record may later count as on disk.
            self.sessions.note_stored(peer);
        }
        Ok(())
    }

    /// Writes a message to `to`: stores it (pending), queues it in the
    /// outbox and returns its reference and the frame to send now.
    pub fn send(&mut self, to: &[u8; 32], body: Vec<u8>, now: u64) -> Result<Sent, EngineError> {
        let mut sent = self.send_many(to, vec![body], now, |_| {})?;
        sent.pop().ok_or(EngineError::UnknownContact)
    }

    /// Writes several messages to `to` in this order, with one write each
    /// for the conversation's counters, the history and the session (the
    /// outbox takes one entry per message). All or none: a body over the
    /// limit refuses the whole batch before anything is written.
    ///
    /// The messages are encrypted before anything is written, and `leave`
    /// sees them then: a frame marked [`Sent::early`] may go out while the
    /// writes are made and flushed. If a write then fails, the call fails
    /// although such a frame may have left (as when the node stops before
    /// the flush: the caller is never told "sent", and no key is used twice).
    pub fn send_many(
        &mut self,
        to: &[u8; 32],
        bodies: Vec<Vec<u8>>,
        now: u64,
        leave: impl FnOnce(&[Sent]),
    ) -> Result<Vec<Sent>, EngineError> {
        if let Some(b) = bodies.iter().find(|b| b.len() > super::proto::MAX_BODY) {
            return Err(EngineError::BodyTooLarge {
                len: b.len(),
                max: super::proto::MAX_BODY,
            });
        }
        if !self.contacts.contains_key(to) {
            return Err(EngineError::UnknownContact);
        }
        let conv = self.conv_with_device(to);
        let me = self.me.public().signing;
        // Written to: the person's contact now, if a group made it.
        self.adopt(to)?;
        // Every device of the contact's account that is a contact here gets
        // its copy (docs/devices.md, §3): `to` first, then the others.
        let recipients = self.account_devices(to);
        let mut state = self.conv_state(&conv)?;
        let mut pairs = Vec::with_capacity(recipients.len());
        for device in &recipients {
            pairs.push(self.seq_state(&conv, device)?);
        }
        // A temporary conversation: each message carries its end.
        let expires_at = self.retention(&conv)?.map(|secs| now.saturating_add(secs));
        let positions = self
            .store
            .outbox()
            .positions(bodies.len().saturating_mul(recipients.len()))?;
        let mut positions = positions.into_iter();
        let mut stored = Vec::with_capacity(bodies.len());
        // Per copy: its message (index into `stored`), device, number,
        // payload and position.
        let mut copies = Vec::with_capacity(bodies.len() * recipients.len());
        let mut out: Vec<Sent> = Vec::with_capacity(bodies.len());
        for body in bodies {
            // Saturating: a peer's Lamport clock is its own to choose.
            state.lamport = state.lamport.saturating_add(1);
            let mut msg_id = [0u8; 16];
            rand::Rng::fill_bytes(&mut self.rng, &mut msg_id);
            let msg = StoredMessage {
                msg_id,
                conv_id: conv,
                sender: me,
                lamport: state.lamport,
                sent_at: now,
                body: body.clone(),
                state: DeliveryState::Pending,
                expires_at,
            };
            // One reserved position per copy.
            let at: Vec<u64> = positions.by_ref().take(recipients.len()).collect();
            for ((device, pair), pos) in recipients.iter().zip(pairs.iter_mut()).zip(at) {
                let numbers = seqs(&mut state, pair);
                let seq = numbers.next_seq;
                numbers.next_seq += 1;
                let chat = Chat {
                    msg_id,
                    lamport: msg.lamport,
                    seq,
                    sent_at: now,
                    expires_at,
                    reply_to: None,
                    body: body.clone(),
                };
                let payload = Payload::Chat(chat).to_bytes();
                let (frame, early) = match self.encrypt_unsaved(device, &payload) {
                    Ok(f) => f,
                    // Another device of the account that cannot be
                    // written to now: its entry waits and is tried again
                    // (and expires in time); the message goes to the rest.
                    Err(e) if device != to && !matches!(e, EngineError::Store(_)) => {
                        tracing::warn!(error = %e, "a copy for a device of the contact's account not sent now");
                        (Vec::new(), false)
                    }
                    Err(e) => return Err(e),
                };
                if device == to {
                    out.push(Sent {
                        message: msg.reference(),
                        pos,
                        frame,
                        early,
                        copies: Vec::new(),
                    });
                } else if let Some(sent) = out.last_mut() {
                    sent.copies.push(Due {
                        pos,
                        to: *device,
                        frame,
                    });
                }
                copies.push((stored.len(), *device, seq, payload, pos));
            }
            stored.push(msg);
        }
        leave(&out);
        // The outbox entries first: sled keeps a prefix of the writes
        // across a crash, and a message in the outbox without its history
        // entry still reaches its contact, while one in history without
        // its outbox entry would stay pending for good, never retried.
        // The first attempt's frame is not kept with the entry (it would
        // double what the sending path writes): the first retry encrypts
        // afresh and keeps its frame (see `due`).
        // If a later write fails, the entries already pushed are taken out
        // again: the caller hears the send failed, and nothing of it may be
        // retried under numbers the next send takes again.
        let mut pushed = Vec::with_capacity(copies.len());
        let written: Result<(), EngineError> = 'write: {
            for (i, device, seq, payload, pos) in copies {
                let msg = &stored[i];
                let queued = Queued::new(conv, Some(msg.lamport), Some(seq), payload);
                let entry = match self.store.outbox().push_at(
                    pos,
                    msg.msg_id,
                    device,
                    queued.to_bytes(),
                    now,
                    expires_at.map_or(now + self.ttl, |at| at.min(now + self.ttl)),
                ) {
                    Ok(entry) => entry,
                    Err(e) => break 'write Err(e.into()),
                };
                pushed.push(entry.seq);
                self.schedule.insert(
                    entry.seq,
                    Meta {
                        msg_id: msg.msg_id,
                        recipient: device,
                        conv_id: conv,
                        lamport: msg.lamport,
                        seq,
                        attempts: 0,
                        next_at: now + retry::backoff(0),
                        expires_at: entry.expires_at,
                    },
                );
            }
            // The counters before the history: if the history write fails,
            // the numbers taken are skipped (the contact asks for them and
            // hears they are gone), never taken again by the next send.
            if let Err(e) = self.put_conv_state(&conv, &state) {
                break 'write Err(e);
            }
            for (device, pair) in recipients.iter().zip(&pairs) {
                if let Err(e) = self.put_seq_state(&conv, device, pair.as_ref()) {
                    break 'write Err(e);
                }
            }
            self.store
                .history()
                .append_batch(&stored, Direction::Outgoing)
                .map(drop)
                .map_err(EngineError::from)
        };
        if let Err(e) = written {
            for pos in pushed {
                self.schedule.remove(pos);
                if let Err(undo) = self.store.outbox().ack(pos) {
                    tracing::error!(error = %undo, pos, "a failed send's outbox entry not removed");
                }
            }
            return Err(e);
        }
        for device in &recipients {
            self.save_session(device)?;
        }
        self.copy_to_own_devices(to, &conv, &stored, &mut out, now);
        Ok(out)
    }

    /// Queues for each other device of this account that is a contact
    /// here a copy of each message written to `to` ([`Payload::Sent`]),
    /// added to its [`Sent::copies`]: that device files it in its own
    /// conversation with `to`'s account. A copy that cannot be queued is
    /// logged and left out: the message itself stands.
    fn copy_to_own_devices(
        &mut self,
        to: &[u8; 32],
        conv: &[u8; 32],
        stored: &[StoredMessage],
        out: &mut [Sent],
        now: u64,
    ) {
        let me = self.me.public().signing;
        let own: Vec<[u8; 32]> = self
            .own_devices()
            .into_iter()
            .filter(|k| *k != me && self.contacts.contains_key(k))
            .collect();
        let peer = self.account_of(to);
        // A chat with this account's own devices: they each have theirs.
        if own.is_empty() || peer == *self.devices.account() {
            return;
        }
        let mut written = Vec::new();
        for (sent, msg) in out.iter_mut().zip(stored) {
            for device in &own {
                let chat = Chat {
                    msg_id: msg.msg_id,
                    lamport: msg.lamport,
                    seq: 0,
                    sent_at: msg.sent_at,
                    expires_at: msg.expires_at,
                    reply_to: None,
                    body: msg.body.clone(),
                };
                let mut id = [0u8; 16];
                rand::Rng::fill_bytes(&mut self.rng, &mut id);
                let payload = Payload::Sent { id, peer, chat }.to_bytes();
                // A temporary message's copy lives no longer than it.
                let until = msg
                    .expires_at
                    .map_or(now + self.ttl, |at| at.min(now + self.ttl));
                // Queued not due yet (no frame made there): encrypted
                // here, each session written once for the batch.
                let queued = self.queue_as(
                    id,
                    device,
                    conv,
                    Some(msg.lamport),
                    payload.clone(),
                    now,
                    now + 1,
                    until,
                );
                let mut due = match queued {
                    Ok(due) => due,
                    Err(e) => {
                        tracing::warn!(error = %e, "a copy for another device of this account not queued");
                        continue;
                    }
                };
                match self.encrypt_unsaved(device, &payload) {
                    Ok((frame, _)) => {
                        due.frame = frame;
                        if !written.contains(device) {
                            written.push(*device);
                        }
                    }
                    // Its entry waits, and is tried again later.
                    Err(e) => {
                        tracing::warn!(error = %e, "a copy for another device of this account not sent now")
                    }
                }
                sent.copies.push(due);
            }
        }
        for device in written {
            if let Err(e) = self.save_session(&device) {
                // Nothing leaves in a session not written: those copies
                // wait for their retry.
                tracing::warn!(error = %e, "a session with another device of this account not written");
                for d in out.iter_mut().flat_map(|s| s.copies.iter_mut()) {
                    if d.to == device {
                        d.frame = Vec::new();
                    }
                }
            }
        }
    }

    /// The identity keys of this account's devices, this one among them
    /// (its list always names it).
    fn own_devices(&self) -> Vec<[u8; 32]> {
        self.devices
            .devices()
            .iter()
            .map(|d| d.identity.signing)
            .collect()
    }

    /// The conversation with the account `peer`, named in a copy or a read
    /// mark from `from`: `None` (refused) unless `from` is another device
    /// of this account and `peer` another account.
    fn own_device_conversation(&self, from: &[u8; 32], peer: &[u8; 32]) -> Option<[u8; 32]> {
        let own = self.devices.account();
        (*from != self.me.public().signing && self.devices.device(from).is_some() && peer != own)
            .then(|| conversation_of(own, peer))
    }

    /// The contact `to` and every other contact device of its account
    /// (sorted), `to` first: the devices a message written to it goes to.
    fn account_devices(&self, to: &[u8; 32]) -> Vec<[u8; 32]> {
        let account = self.account_of(to);
        let mut others: Vec<[u8; 32]> = self
            .accounts
            .iter()
            .filter(|(k, a)| **a == account && *k != to && self.contacts.contains_key(*k))
            .map(|(k, _)| *k)
            .collect();
        if account != *to && self.contacts.contains_key(&account) && !others.contains(&account) {
            others.push(account);
        }
        others.sort_unstable();
        let mut all = Vec::with_capacity(1 + others.len());
        all.push(*to);
        all.extend(others);
        all
    }

    fn outgoing_ref(&self, m: &Meta) -> MessageRef {
        MessageRef {
            conv_id: m.conv_id,
            lamport: m.lamport,
            sender: self.me.public().signing,
            msg_id: m.msg_id,
        }
    }

    /// Whether the queued message at `pos` should also go to its
    /// recipient's relays now: a retry (the mesh brought no receipt), or a
    /// group message for a member that did not acknowledge it from the
    /// group's topic.
    pub fn wants_relay(&self, pos: u64) -> bool {
        self.schedule
            .get(pos)
            .is_some_and(|m| m.attempts >= 1 || (m.lamport != 0 && self.is_group(&m.conv_id)))
    }

    /// Whether the queued entry at `pos` is a 1:1 read receipt, which is
    /// done once the mesh takes it (see [`Engine::published`]).
    pub fn is_read_receipt(&self, pos: u64) -> bool {
        self.schedule
            .get(pos)
            .is_some_and(|m| m.is_receipt() && !self.is_group(&m.conv_id))
    }

    /// Records that the message at `pos` went out; the next attempt waits
    /// `wait` seconds (a direct ack or failure moves it sooner).
    pub fn attempted(&mut self, pos: u64, now: u64, wait: Option<u64>) {
        let attempts = self.schedule.get(pos).map_or(0, |m| m.attempts);
        let at = now + wait.unwrap_or_else(|| retry::backoff(attempts));
        self.schedule.reschedule(pos, at, true);
    }

    /// Marks messages that went out by the mesh as sent (if still pending).
    /// A read receipt that reached the mesh is done: nothing acknowledges
    /// a receipt, so that is as far as it can be followed. Everything else
    /// queued waits for its delivered receipt.
    pub fn published(&mut self, positions: &[u64]) -> Result<Vec<Event>, EngineError> {
        let mut refs = Vec::new();
        for &pos in positions {
            match self.schedule.get(pos) {
                Some(m) if m.is_chat() => refs.push((self.outgoing_ref(m), DeliveryState::Sent)),
                // A read receipt is done; group payloads and settings wait
                // for their acknowledgement.
                Some(m) if m.is_receipt() && !self.is_group(&m.conv_id) => {
                    self.schedule.remove(pos);
                    self.store.outbox().ack(pos)?;
                }
                Some(_) => {}
                None => {}
            }
        }
        self.set_states(&refs)
    }

    fn set_states(
        &mut self,
        refs: &[(MessageRef, DeliveryState)],
    ) -> Result<Vec<Event>, EngineError> {
        if refs.is_empty() {
            return Ok(Vec::new());
        }
        let changed = self.store.history().set_states(refs)?;
        Ok(refs
            .iter()
            .zip(changed)
            .filter(|(_, c)| *c == Some(true))
            .map(|((r, s), _)| Event::Receipt {
                message: *r,
                state: *s,
            })
            .collect())
    }

    /// The recipient's device took these messages over a direct connection
    /// (authenticated by its identity key, flushed before it answered):
    /// they are delivered and leave the outbox.
    pub fn delivered_direct(&mut self, positions: &[u64]) -> Result<Vec<Event>, EngineError> {
        let mut refs = Vec::with_capacity(positions.len());
        let mut group = Vec::new();
        for &pos in positions {
            if let Some(m) = self.schedule.remove(pos) {
                // Heard from (it read what it acknowledges).
                self.heard_now(&m.recipient);
                self.store.outbox().ack(pos)?;
                if m.is_chat() {
                    refs.push((self.outgoing_ref(&m), DeliveryState::Delivered));
                } else if m.lamport != 0 && self.is_group(&m.conv_id) {
                    // A group message a member took 1:1.
                    group.extend(self.count_receipt(
                        &m.conv_id,
                        m.lamport,
                        &m.msg_id,
                        &m.recipient,
                        ReceiptKind::Delivered,
                    )?);
                }
            }
        }
        let mut events = self.set_states(&refs)?;
        events.extend(group);
        Ok(events)
    }

    /// A direct attempt failed (no connection, timeout, refused): retry
    /// after the backoff, by whatever path is open then.
    pub fn failed(&mut self, positions: &[u64], now: u64) {
        for &pos in positions {
            let attempts = self.schedule.get(pos).map_or(0, |m| m.attempts);
            self.schedule
                .reschedule(pos, now + retry::backoff(attempts.saturating_sub(1)), false);
        }
    }

    /// Everything queued for `to` is due now (it just connected).
    pub fn peer_up(&mut self, to: &[u8; 32], now: u64) {
        self.schedule.due_now_for(to, now);
    }

    /// The contact `from` just sent us something we took: what it refused
    /// before, waiting now for a long backoff, is due again (see
    /// [`Schedule::due_now_failed`]), at most once per [`HEARD_EVERY`]
    /// per contact. Whether anything became due.
    pub fn heard_from(&mut self, from: &[u8; 32], now: u64) -> bool {
        if self
            .heard_at
            .get(from)
            .is_some_and(|&at| now < at.saturating_add(HEARD_EVERY))
        {
            return false;
        }
        self.heard_at.insert(*from, now);
        self.schedule.due_now_failed(from, now)
    }

    /// Up to `limit` queued messages due at `now`, each with a frame to
    /// send. An entry with no frame kept for the contact's current session
    /// (its first retry, or the session changed; or a kept set-up frame
    /// once the session is answered) encrypts afresh and keeps the frame
    /// in its outbox entry. One with a kept frame sends it again,
    /// unchanged, unless the contact was heard from since that frame was
    /// made (it is reading, and may have read the frame and refused what
    /// it carried: a group message before its key, say), or at attempt
    /// counts that are a power of two from 2 on (2, 4, 8 …); then it
    /// encrypts afresh, as long as retries to that contact have made fewer
    /// than [`RETRY_KEY_BUDGET`] fresh frames since it was last heard from.
    ///
    /// Each fresh frame takes a message key. Were every retry to take one,
    /// a contact away for a few days (a retry every five minutes) would
    /// come back more than `MAX_SKIP` keys behind, refuse the next frame
    /// and every later one (nothing moves this device to a new sending
    /// chain). Fresh frames are still needed now and then, because a copy
    /// of a frame the recipient already decrypted is acknowledged only
    /// once, if at all (see `receive`).
    ///
    /// The sessions are written before the kept frames: a crash between
    /// the two must not leave a frame kept whose message key a restarted
    /// session would use again.
    pub fn due(&mut self, now: u64, limit: usize) -> Result<Vec<Due>, EngineError> {
        let mut out = Vec::new();
        let mut encrypted = std::collections::HashSet::new();
        let mut keep: Vec<crate::store::OutboxEntry> = Vec::new();
        for pos in self.schedule.due(now, limit) {
            let mut entry = match self.store.outbox().get(pos) {
                Ok(Some(e)) => e,
                Ok(None) => {
                    self.schedule.remove(pos);
                    self.kept_at.remove(&pos);
                    continue;
                }
                // Damaged on disk since the start: left there, like one
                // found damaged at the start, and not retried.
                Err(e) if e.is_damaged_record() => {
                    tracing::warn!(pos, error = %e, "a queued message that does not open is left in the outbox");
                    self.schedule.remove(pos);
                    self.kept_at.remove(&pos);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let Ok(mut queued) = Queued::from_bytes(&entry.envelope) else {
                self.schedule.remove(pos);
                self.kept_at.remove(&pos);
                continue;
            };
            let attempts = self.schedule.get(pos).map_or(0, |m| m.attempts);
            tracing::debug!(
                to = %crate::store::hex(&entry.recipient[..4]),
                pos,
                attempts,
                "due"
            );
            let to = entry.recipient;
            let current = self.sessions.current_base_key(&to);
            let spent = match (self.retry_keys.get(&to), current) {
                (Some((session, n)), Some(c)) if *session == c => *n,
                // Not heard from since the start, or in another session.
                _ => RETRY_KEY_BUDGET,
            };
            let heard = self.heard_gen.get(&to).copied().unwrap_or(0);
            let heard_since = heard > self.kept_at.get(&pos).copied().unwrap_or(0);
            let refresh = spent < RETRY_KEY_BUDGET
                && (heard_since || (attempts >= 2 && attempts.is_power_of_two()));
            let answered = !self.sessions.unanswered(&to);
            if let Some(sent) = queued.sent.take().filter(|s| {
                Some(s.session) == current
                    && !refresh
                    && !(answered && matches!(Frame::from_bytes(&s.frame), Ok(Frame::Prekey(_))))
            }) {
                tracing::debug!(pos, "kept frame again");
                out.push(Due {
                    pos,
                    to,
                    frame: sent.frame,
                });
                continue;
            }
            match self.encrypt_unsaved(&to, &queued.payload) {
                Ok((frame, _)) => {
                    encrypted.insert(to);
                    if let Some(session) = self.sessions.current_base_key(&to) {
                        if let Some((s, n)) = self.retry_keys.get_mut(&to)
                            && *s == session
                        {
                            *n = n.saturating_add(1);
                        }
                        queued.sent = Some(SentFrame {
                            session,
                            frame: frame.clone(),
                        });
                        entry.envelope = queued.to_bytes();
                        keep.push(entry);
                        self.kept_at.insert(pos, heard);
                    }
                    out.push(Due { pos, to, frame });
                }
                // The contact was removed, or this one entry cannot be
                // encrypted: it waits (and expires in time); the others go.
                Err(e) => {
                    tracing::warn!(error = %e, pos, "queued message not re-sent");
                    self.schedule.reschedule(pos, now + retry::MAX_RETRY, true)
                }
            }
        }
        for to in &encrypted {
            self.save_session(to)?;
        }
        for entry in &keep {
            self.store.outbox().rewrite(entry)?;
        }
        // Positions acknowledged or expired meanwhile.
        if self.kept_at.len() > 2 * self.schedule.len() + 1024 {
            let schedule = &self.schedule;
            self.kept_at.retain(|p, _| schedule.get(*p).is_some());
        }
        Ok(out)
    }

    /// Whether `contact` was heard from (a frame of its read, or a direct
    /// ack) since this engine started.
    pub fn heard_since_start(&self, contact: &[u8; 32]) -> bool {
        self.heard_gen.contains_key(contact)
    }

    /// `contact` was just heard from: retries to it may make up to
    /// [`RETRY_KEY_BUDGET`] fresh frames again, in its current session.
    fn heard_now(&mut self, contact: &[u8; 32]) {
        *self.heard_gen.entry(*contact).or_default() += 1;
        match self.sessions.current_base_key(contact) {
            Some(session) => {
                self.retry_keys.insert(*contact, (session, 0));
            }
            None => {
                self.retry_keys.remove(contact);
            }
        }
    }

    /// Removes the messages whose expiry passed and tells the user.
    pub fn expire(&mut self, now: u64) -> Result<Vec<Event>, EngineError> {
        let mut events = Vec::new();
        // Copies of one message for several devices may expire together:
        // its sender hears it once.
        let mut told = HashSet::new();
        for (pos, m) in self.schedule.take_expired(now) {
            // A sender key's distribution can expire before group messages
            // sent under that key (they are written up to `ROTATE_AFTER`
            // later): while the member still has such messages queued, it
            // is queued again, or they could never be read.
            let again =
                if m.is_receipt() && self.schedule.has_messages_for(&m.recipient, &m.conv_id) {
                    self.store
                        .outbox()
                        .get(pos)
                        // Damaged: expired all the same (the user hears it).
                        .or_else(|e| {
                            if e.is_damaged_record() {
                                Ok(None)
                            } else {
                                Err(e)
                            }
                        })?
                        .and_then(|e| Queued::from_bytes(&e.envelope).ok())
                        .filter(|q| {
                            matches!(
                                Payload::from_bytes(&q.payload),
                                Ok(Payload::SenderKey { .. })
                            )
                        })
                } else {
                    None
                };
            self.store.outbox().ack(pos)?;
            if let Some(q) = again {
                self.requeue_distribution(m.msg_id, &m.recipient, &m.conv_id, q.payload, now)?;
            }
            if !m.is_chat() || told.insert(m.msg_id) {
                events.extend(self.given_up(&m)?);
            }
        }
        Ok(events)
    }

    /// What the sender hears of the queued entry `m`, given up (expired,
    /// or dropped with its recipient): a chat message expired, or a group
    /// copy its member never acknowledged; nothing for other entries.
    pub(super) fn given_up(&self, m: &Meta) -> Result<Option<Event>, EngineError> {
        Ok(if m.is_chat() {
            // A copy for one device of the contact's account: expired only
            // when no other copy is still on its way and none arrived.
            let message = self.outgoing_ref(m);
            // (This entry is out of the schedule already.)
            let others_queued = self.schedule.has_msg(&m.msg_id);
            let arrived = || -> Result<bool, EngineError> {
                Ok(self.store.history().get(&message)?.is_some_and(|h| {
                    matches!(h.state, DeliveryState::Delivered | DeliveryState::Read)
                }))
            };
            (!others_queued && !arrived()?).then_some(Event::Expired { message })
        } else if self.group_copy_unacknowledged(m)? {
            Some(Event::GroupExpired {
                message: self.outgoing_ref(m),
                member: m.recipient,
            })
        } else {
            None
        })
    }

    /// Seals a frame for `to` into an envelope for the mesh (or a relay):
    /// returns the recipient's mailbox id and the encoded envelope.
    ///
    /// A session set-up goes with our invite beside it
    /// (`ContentKind::Introduced`), when there is room: the contact may
    /// not have added us, and then sees a contact request (a set-up is
    /// what a device sends until the contact first answers).
    pub fn seal(
        &mut self,
        to: &[u8; 32],
        frame: &[u8],
        expires_at: u64,
        now: u64,
    ) -> Result<([u8; 32], Vec<u8>), EngineError> {
        let content = match Frame::from_bytes(frame)? {
            Frame::Ratchet(body) => SealedContent::new(ContentKind::Ratchet, body),
            Frame::Prekey(body) => {
                let invite = self.unasked_invite(now)?;
                let both = Introduced::new(invite, body.clone()).to_bytes();
                let introduced = SealedContent::new(ContentKind::Introduced, both);
                match self.seal_content(to, &introduced, expires_at) {
                    // No room beside the largest messages: the set-up alone.
                    Err(EngineError::Crypto(crypto::Error::TooLarge { .. })) => {
                        SealedContent::new(ContentKind::Prekey, body)
                    }
                    done => return done,
                }
            }
            _ => {
                return Err(crypto::Error::Malformed {
                    what: "frame to seal (not a message)",
                }
                .into());
            }
        };
        self.seal_content(to, &content, expires_at)
    }

    /// Seals `content` for the contact `to` in an envelope expiring at
    /// `expires_at`: its mailbox id and the encoded envelope.
    fn seal_content(
        &mut self,
        to: &[u8; 32],
        content: &SealedContent,
        expires_at: u64,
    ) -> Result<([u8; 32], Vec<u8>), EngineError> {
        let contact = self.contacts.get(to).ok_or(EngineError::UnknownContact)?;
        let sealed = crypto::seal(
            &self.me,
            &contact.identity.dh,
            content,
            &mut self.seal_cache,
            &mut self.rng,
        )?;
        let mut id = [0u8; 16];
        rand::Rng::fill_bytes(&mut self.rng, &mut id);
        let env = Envelope::new(contact.mailbox_id, id, expires_at, sealed);
        Ok((contact.mailbox_id, env.to_bytes()))
    }

    /// Where this device listens (with `/p2p/<peer id>`), for the invites
    /// it sends unasked.
    pub fn set_listen(&mut self, addrs: Vec<String>) {
        if addrs != self.listen {
            self.unasked = None;
        }
        self.listen = addrs;
    }

    /// Our encoded invite with where we listen, as sent unasked (see
    /// `unasked`).
    fn unasked_invite(&mut self, now: u64) -> Result<Vec<u8>, EngineError> {
        if let Some((made, bytes)) = &self.unasked
            && now < made.saturating_add(UNASKED_INVITE_LIFE)
        {
            return Ok(bytes.clone());
        }
        let bytes = self.invite(self.listen.clone(), now)?.to_bytes();
        self.unasked = Some((now, bytes.clone()));
        Ok(bytes)
    }

    /// Seals our invite (with where we listen) for the contact `to`: the
    /// introduction that shows it a contact request if it has not added
    /// us. Returns its mailbox id and the encoded envelope.
    pub fn intro(&mut self, to: &[u8; 32], now: u64) -> Result<([u8; 32], Vec<u8>), EngineError> {
        let invite = self.unasked_invite(now)?;
        let content = SealedContent::new(ContentKind::Intro, invite);
        self.seal_content(to, &content, now + self.ttl)
    }

    /// Opens an envelope addressed to this device: a frame from a contact,
    /// ready for [`Engine::receive`]; the introduction of a device that is
    /// not a contact (its invite decoded, to check with [`check_intro`]);
    /// or anything else from such a device.
    pub fn open_envelope(&mut self, env: &Envelope) -> Result<Opened, EngineError> {
        let opened = crypto::open(&self.me, &env.sealed, &mut self.seal_cache)?;
        let from = opened.sender.signing;
        match self.contacts.get(&from) {
            Some(c) if c.identity == opened.sender => {}
            Some(_) => return Err(EngineError::UnknownEnvelopeSender),
            None if matches!(
                opened.content.kind,
                ContentKind::Intro | ContentKind::Introduced
            ) =>
            {
                let carries = opened.content.kind == ContentKind::Introduced;
                let invite = if carries {
                    Invite::from_bytes(&Introduced::from_bytes(&opened.content.body)?.invite)?
                } else {
                    Invite::from_bytes(&opened.content.body)?
                };
                return Ok(Opened::Intro {
                    from: opened.sender,
                    invite: Box::new(invite),
                    carries,
                });
            }
            None => return Ok(Opened::Stranger(from)),
        }
        let frame = match opened.content.kind {
            // From a contact: it knows us already.
            ContentKind::Intro => return Ok(Opened::Known(from)),
            ContentKind::Introduced => {
                Frame::Prekey(Introduced::from_bytes(&opened.content.body)?.frame)
            }
            ContentKind::Ratchet => Frame::Ratchet(opened.content.body),
            ContentKind::Prekey => Frame::Prekey(opened.content.body),
            _ => {
                return Err(crypto::Error::Malformed {
                    what: "envelope content (not a 1:1 message)",
                }
                .into());
            }
        };
        Ok(Opened::Frame {
            from,
            frame: frame.to_bytes(),
        })
    }

    fn encrypt(&mut self, to: &[u8; 32], payload: &[u8]) -> Result<Vec<u8>, EngineError> {
        let (frame, _) = self.encrypt_unsaved(to, payload)?;
        self.save_session(to)?;
        Ok(frame)
    }

    /// Encrypts without writing the session: the caller saves it once
    /// after a batch. Also says whether the frame may leave before the
    /// flush (see [`Sent::early`]).
    fn encrypt_unsaved(
        &mut self,
        to: &[u8; 32],
        payload: &[u8],
    ) -> Result<(Vec<u8>, bool), EngineError> {
        let contact = self.contacts.get(to).ok_or(EngineError::UnknownContact)?;
        let (frame, early) = self.sessions.encrypt(
            &self.me,
            &contact.identity,
            &contact.bundle,
            payload,
            &mut self.rng,
        )?;
        Ok((frame.to_bytes(), early))
    }

    /// To call once the store was flushed: the session states saved
    /// before it are on disk.
    pub fn flushed(&mut self) {
        self.sessions.mark_saved_durable();
    }

    /// Before a clean stop (then flush): writes every session with its
    /// live sending chain rather than the chain reserved ahead, so that
    /// the restarted node continues where it stopped and its contacts
    /// skip no message keys. Nothing encrypted afterwards may be sent.
    pub fn save_sessions_exact(&mut self) -> Result<(), EngineError> {
        // From here on nothing is encrypted, whether the writes succeed
        // or not.
        self.sessions.stop();
        let records = self.store.records(Kind::Sessions)?;
        for peer in self.sessions.peers() {
            if let Some(bytes) = self.sessions.to_record_exact(peer) {
                records.put(peer, &bytes)?;
            }
        }
        Ok(())
    }

    /// Handles a batch of frames from the device `from` (authenticated by
    /// the connection).
    ///
    /// `direct`: the frames came over a direct connection with the sender,
    /// whose transport ack (sent after the caller flushes) already tells it
    /// they are delivered; otherwise a delivered receipt is returned.
    pub fn receive(
        &mut self,
        from: &[u8; 32],
        frames: &[Vec<u8>],
        now: u64,
        direct: bool,
    ) -> Result<Handled, EngineError> {
        let contact = self
            .contacts
            .get(from)
            .cloned()
            .ok_or(EngineError::UnknownSender)?;
        let conv = self.conv_with_device(from);
        let mut out = Handled::default();
        let mut delivered = Vec::new();
        let mut resend = Vec::new();
        let mut gone = Vec::new();
        let mut incoming = Vec::new();
        // Copies of what another device of this account sent.
        let mut copies = Vec::new();
        let mut state = self.conv_state(&conv)?;
        let mut pair = self.seq_state(&conv, from)?;
        let mut decrypted_any = false;
        let mut prekeys_changed = false;
        let mut answered_bundle = false;
        let mut switched = false;
        let mut retention_cache: Option<Option<u64>> = None;
        // Frames read, remembered as such only once everything they
        // carried is written: a copy of one that failed to be stored must
        // not be answered "delivered" (the sender's next fresh frame brings
        // the message again).
        let mut read_now = Vec::new();
        // What is left of this contact's session set-ups (each an X3DH
        // agreement) in the current minute.
        let window = now / 60;
        let spent = match self.setups.get(from) {
            Some(&(w, n)) if w == window => n,
            _ => 0,
        };
        let mut setups = MAX_SETUPS_PER_MINUTE.saturating_sub(spent);
        let left_before = setups;
        for bytes in frames {
            let plain = match Frame::from_bytes(bytes) {
                Ok(Frame::Ratchet(b)) => self.sessions.decrypt_ratchet(from, &b, &mut self.rng),
                Ok(Frame::Prekey(b)) => {
                    let before = self.prekeys.one_time_count();
                    let r = self.sessions.decrypt_prekey(
                        &self.me,
                        &mut self.prekeys,
                        &contact.identity,
                        &b,
                        (&mut self.rng, &mut setups),
                    );
                    // Counted at once: a later error in this batch does
                    // not give the set-up back.
                    if setups != left_before {
                        self.setups
                            .insert(*from, (window, spent + (left_before - setups)));
                    }
                    prekeys_changed |= self.prekeys.one_time_count() != before;
                    r
                }
                // Only over a direct connection: the bundle is handed to
                // the device at the other end of it, nobody else.
                // One answer per batch: a contact cannot drain the
                // one-time prekeys by repeating the request.
                Ok(Frame::BundleRequest) if direct && !answered_bundle => {
                    answered_bundle = true;
                    match self.bundle_for_contact(from, now) {
                        Ok(b) => {
                            prekeys_changed = true;
                            out.replies.push(Frame::Bundle(b).to_bytes());
                            out.accepted.push(true);
                        }
                        Err(_) => out.accepted.push(false),
                    }
                    continue;
                }
                Ok(Frame::Bundle(b)) if direct => {
                    let taken = self.take_bundle(from, b, now);
                    out.restarted |= matches!(taken, Ok(true));
                    out.accepted.push(taken.is_ok());
                    continue;
                }
                Ok(_) | Err(_) => {
                    out.accepted.push(false);
                    continue;
                }
            };
            // Decrypted means the session moved on: it is written even if
            // what it carried turns out unusable.
            decrypted_any |= plain.is_ok();
            switched |= plain.as_ref().is_ok_and(|d| d.switched);
            let payload = match plain.map(|d| Payload::from_bytes(&d.plaintext)) {
                Ok(Ok(p)) => p,
                // A message already decrypted (the same bytes again: its
                // relay copy after the mesh's, say): its receipt again, if
                // it was one of the latest read, and only once, so that
                // nobody can replay an old envelope to learn, from the
                // answer, whether we are online.
                // A copy of a frame not among those is refused: it was
                // read longer ago, or what it carried was refused (a group
                // message before its key, say) and the sender, which sends
                // a kept frame again (see `due`), must not take it for
                // delivered. Its next fresh frame is read like any other
                // (the history keeps one copy).
                Err(crypto::Error::Duplicate { .. }) => {
                    let again = self.read_frames.take(&frame_key(from, bytes));
                    out.accepted.push(again.is_some());
                    delivered.extend(again);
                    continue;
                }
                Err(e) => {
                    tracing::debug!(
                        from = %crate::store::hex(&from[..4]),
                        error = %e,
                        "frame not decrypted"
                    );
                    out.accepted.push(false);
                    continue;
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "payload not decoded");
                    out.accepted.push(false);
                    continue;
                }
            };
            decrypted_any = true;
            let acked_before = delivered.len();
            // For a chat message, the conversation's retention, read once
            // per batch (until a setting in the batch changes it).
            let retention = match (&payload, retention_cache) {
                (Payload::Chat(_), None) => *retention_cache.insert(self.retention(&conv)?),
                (_, cached) => cached.flatten(),
            };
            match payload {
                Payload::Chat(chat)
                    if chat
                        .expires_at
                        .into_iter()
                        .chain(retention.map(|r| chat.sent_at.saturating_add(r)))
                        .any(|at| at <= now) =>
                {
                    // A temporary message that expired on the way (by its
                    // own time, or by the conversation's retention, as the
                    // store would purge it at once: a copy sent again after
                    // the first was purged does not come back): nothing to
                    // keep, nothing to retry. Its number still counts, or
                    // every later message would look like a gap. It reached
                    // this device, and the sender hears so by either path
                    // (the direct ack says it already), or it would retry
                    // until its own expiry and call it undelivered.
                    seqs(&mut state, &mut pair).accept_seq(chat.seq);
                    delivered.push((chat.lamport, chat.msg_id));
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
                        expires_at: retention::received_expiry(chat.expires_at, retention, now),
                    };
                    witness_clock(&mut state.lamport, msg.lamport);
                    let numbers = seqs(&mut state, &mut pair);
                    if let SeqCheck::Gap { missing_from } = numbers.accept_seq(chat.seq)
                        && now.saturating_sub(numbers.resend_asked_at) >= RESEND_EVERY
                    {
                        numbers.resend_asked_at = now;
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
                    for (r, _) in &refs {
                        if let Some(pos) = self.schedule.find(&r.msg_id, from) {
                            self.schedule.remove(pos);
                            self.store.outbox().ack(pos)?;
                        }
                    }
                    out.events.extend(self.set_states(&refs)?);
                }
                Payload::Resend { .. }
                    if self
                        .resend_answered
                        .get(from)
                        .is_some_and(|at| now.saturating_sub(*at) < RESEND_EVERY) =>
                {
                    tracing::debug!(
                        "a resend request sooner than RESEND_EVERY after the last is not answered"
                    );
                }
                Payload::Resend { from: first } => {
                    self.resend_answered.insert(*from, now);
                    // What we no longer have (expired, or delivered after
                    // all) is said to be gone, or the peer would ask for it
                    // at every message for good.
                    let until = self
                        .schedule
                        .due_again(from, &conv, first, now)
                        .unwrap_or(seqs(&mut state, &mut pair).next_seq);
                    // One answer per batch, however many requests it held.
                    if first < until && gone.is_empty() {
                        gone.push(Payload::Gone { from: first, until }.to_bytes());
                    }
                }
                Payload::Gone { from: first, until } => {
                    if seqs(&mut state, &mut pair).skip(first, until) {
                        tracing::info!(
                            peer = %crate::store::hex(&from[..4]),
                            first,
                            until,
                            "the peer's missing messages will not come (expired on its side)"
                        );
                    }
                }
                Payload::GroupOps { id, ops } => match self.on_group_ops(from, &ops, now) {
                    Ok(fx) => {
                        out.group.extend(fx);
                        delivered.push((0, id));
                    }
                    Err(EngineError::Crypto(_) | EngineError::Group(_)) => {
                        out.accepted.push(false);
                        continue;
                    }
                    Err(e) => return Err(e),
                },
                Payload::SenderKey { id, distribution } => {
                    match self.on_sender_key(from, &distribution, now) {
                        Ok(fx) => {
                            out.group.extend(fx);
                            delivered.push((0, id));
                        }
                        Err(EngineError::Crypto(_) | EngineError::Group(_)) => {
                            out.accepted.push(false);
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Payload::Group { message } => {
                    let (taken, fx) = self.group_messages(&[(message, Some(*from))], now)?;
                    out.group.extend(fx);
                    out.accepted.push(taken.first().copied().unwrap_or(false));
                    continue;
                }
                Payload::GroupReceipts {
                    group,
                    kind,
                    messages,
                } => {
                    let events = self.on_group_receipts(from, &group, kind, &messages)?;
                    out.events.extend(events);
                }
                Payload::Retention { lamport, .. }
                    if lamport > state.lamport.saturating_add(MAX_CLOCK_AHEAD) =>
                {
                    // It would win over every later change, ours included.
                    tracing::debug!(lamport, "a retention setting from too far ahead refused");
                    out.accepted.push(false);
                    continue;
                }
                Payload::Retention { id, secs, lamport } => {
                    retention_cache = None;
                    state.lamport = state.lamport.max(lamport);
                    out.events
                        .extend(self.on_retention(from, &conv, secs, lamport)?);
                    delivered.push((0, id));
                }
                Payload::AccountContacts { id, contacts } => {
                    match self.on_account_contacts(from, contacts) {
                        Ok(news) => {
                            out.events.extend(news);
                            delivered.push((0, id));
                        }
                        Err(EngineError::Crypto(e)) => {
                            tracing::debug!(error = %e, "shared contacts refused");
                            out.accepted.push(false);
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Payload::Sent { id, peer, chat } => {
                    let Some(copy_conv) = self.own_device_conversation(from, &peer) else {
                        tracing::debug!(
                            "a copy of a sent message not from a device of this account refused"
                        );
                        out.accepted.push(false);
                        continue;
                    };
                    if copy_conv == conv {
                        witness_clock(&mut state.lamport, chat.lamport);
                    } else {
                        let mut st = self.conv_state(&copy_conv)?;
                        witness_clock(&mut st.lamport, chat.lamport);
                        self.put_conv_state(&copy_conv, &st)?;
                    }
                    let retention = self.retention(&copy_conv)?;
                    let expires_at = retention::received_expiry(chat.expires_at, retention, now);
                    // One whose time is up on the way: nothing to keep.
                    if expires_at.is_none_or(|at| at > now) {
                        copies.push(StoredMessage {
                            msg_id: chat.msg_id,
                            conv_id: copy_conv,
                            sender: *from,
                            lamport: chat.lamport,
                            sent_at: chat.sent_at,
                            body: chat.body,
                            state: DeliveryState::Sent,
                            expires_at,
                        });
                    }
                    delivered.push((0, id));
                }
                Payload::ReadUpTo { peer, lamport } => {
                    let Some(read_conv) = self.own_device_conversation(from, &peer) else {
                        tracing::debug!("a read mark not from a device of this account refused");
                        out.accepted.push(false);
                        continue;
                    };
                    self.read_elsewhere(&read_conv, lamport)?;
                }
                Payload::Devices { id, list, .. } => match self.on_devices(from, &list, now) {
                    Ok(news) => {
                        out.events.extend(news);
                        delivered.push((0, id));
                    }
                    Err(EngineError::Crypto(e)) => {
                        tracing::warn!(error = %e, "a contact's device list refused");
                        out.accepted.push(false);
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            }
            if let Some(&acked) = delivered.get(acked_before) {
                read_now.push((frame_key(from, bytes), acked));
            }
            out.accepted.push(true);
        }
        // One write each for the batch: the session, the counters, the messages.
        if decrypted_any {
            self.save_session(from)?;
            // Heard from: retries may make fresh frames for it again.
            self.heard_now(from);
        }
        if switched {
            // Frames we sent in the session left behind are refused (or
            // were): everything queued goes again, in this one.
            self.schedule.due_now_for(from, now);
            out.restarted = true;
        }
        if prekeys_changed {
            self.save_prekeys()?;
        }
        self.put_conv_state(&conv, &state)?;
        self.put_seq_state(&conv, from, pair.as_ref())?;
        for (messages, direction) in [(incoming, Direction::Incoming), (copies, Direction::Copied)]
        {
            if messages.is_empty() {
                continue;
            }
            let stored = self.store.history().append_batch(&messages, direction)?;
            for (msg, outcome) in messages.into_iter().zip(stored) {
                if outcome == Appended::Inserted {
                    out.events.push(Event::MessageReceived(msg));
                }
            }
        }
        for reply in resend.into_iter().chain(gone) {
            out.replies.push(self.encrypt(from, &reply)?);
        }
        if !delivered.is_empty() && !direct {
            let receipt = Payload::Receipts {
                kind: ReceiptKind::Delivered,
                messages: delivered,
            };
            out.replies.push(self.encrypt(from, &receipt.to_bytes())?);
        }
        for (key, acked) in read_now {
            self.read_frames.insert(key, acked);
        }
        Ok(out)
    }

    /// Marks the conversation with `with` read: queues the read receipts
    /// for the messages received since the last time, one for each device
    /// that wrote some of them (in the outbox, so each is retried until it
    /// reaches its device or the mesh), and returns them with their frames
    /// to send now. Messages of a device that is no contact any more are
    /// marked read without a receipt.
    pub fn mark_read(&mut self, with: &[u8; 32], now: u64) -> Result<Vec<Due>, EngineError> {
        if !self.contacts.contains_key(with) {
            return Err(EngineError::UnknownContact);
        }
        let conv = self.conv_with_device(with);
        let unread = usize::try_from(self.store.history().mark_read(&conv)?).unwrap_or(usize::MAX);
        if unread == 0 {
            return Ok(Vec::new());
        }
        // The messages not read yet, newest first (ours in between do not
        // count), at most one receipt's worth.
        let want = unread.min(super::proto::MAX_RECEIPTS);
        // Not the copies of what this account's devices wrote.
        let own = self.own_devices();
        let mut by_author = std::collections::BTreeMap::new();
        let mut newest = None;
        for r in self.take_unread(&conv, want, |m| !own.contains(&m.sender))? {
            newest = newest.max(Some(r.lamport));
            by_author
                .entry(r.sender)
                .or_insert_with(Vec::new)
                .push((r.lamport, r.msg_id));
        }
        let mut due = Vec::with_capacity(by_author.len() + own.len());
        // This account's other devices mark the same messages read.
        let peer = self.account_of(with);
        if let Some(lamport) = newest
            && peer != *self.devices.account()
        {
            let mark = Payload::ReadUpTo { peer, lamport }.to_bytes();
            for device in own
                .iter()
                .filter(|k| self.contacts.contains_key(*k))
                .copied()
                .collect::<Vec<_>>()
            {
                due.push(self.queue_receipt(&device, conv, mark.clone(), now)?);
            }
        }
        for (author, messages) in by_author {
            if !self.contacts.contains_key(&author) {
                continue;
            }
            let receipt = Payload::Receipts {
                kind: ReceiptKind::Read,
                messages,
            };
            due.push(self.queue_receipt(&author, conv, receipt.to_bytes(), now)?);
        }
        Ok(due)
    }

    /// Another device of this account read the conversation `conv` up to
    /// the clock `lamport`: the messages of other senders at or below it
    /// that are unread here are marked read, and the unread count lowered
    /// by as many (no receipt: that device sent them).
    fn read_elsewhere(&mut self, conv: &[u8; 32], lamport: u64) -> Result<(), EngineError> {
        let (unread, newest) = match self.store.history().conversation(conv)? {
            Some(c) if c.unread > 0 => (c.unread, c.last_lamport),
            _ => return Ok(()),
        };
        let own = self.own_devices();
        // As many as one read receipt names, as `mark_read` marks.
        let want = usize::try_from(unread)
            .unwrap_or(usize::MAX)
            .min(super::proto::MAX_RECEIPTS);
        if lamport >= newest {
            // Read there up to the newest message here: all read, as
            // `mark_read` leaves it.
            self.take_unread(conv, want, |m| !own.contains(&m.sender))?;
            self.store.history().mark_read(conv)?;
            return Ok(());
        }
        let read = self.take_unread(conv, want, |m| {
            !own.contains(&m.sender) && m.lamport <= lamport
        })?;
        if !read.is_empty() {
            let n = u32::try_from(read.len()).unwrap_or(u32::MAX);
            self.store.history().lower_unread(conv, n)?;
        }
        Ok(())
    }

    /// Up to `want` of the messages of `conv` that `theirs` selects and
    /// that are not read yet, newest first, now marked read in history (so
    /// that each is named by one read receipt, whatever order they came
    /// in). Looks at no more than `want` + [`UNREAD_SCAN_SLACK`] messages.
    pub(crate) fn take_unread(
        &mut self,
        conv: &[u8; 32],
        want: usize,
        theirs: impl Fn(&StoredMessage) -> bool,
    ) -> Result<Vec<MessageRef>, EngineError> {
        let mut found = Vec::with_capacity(want.min(1024));
        let mut seen = 0usize;
        let mut cursor = None;
        let bound = want.saturating_add(UNREAD_SCAN_SLACK);
        'pages: while found.len() < want && seen < bound {
            let page =
                self.store
                    .history()
                    .page(conv, cursor.as_ref(), store::History::MAX_PAGE)?;
            for m in &page.messages {
                seen += 1;
                if theirs(m) && m.state != DeliveryState::Read {
                    found.push(m.reference());
                    if found.len() == want {
                        break 'pages;
                    }
                }
                if seen >= bound {
                    break 'pages;
                }
            }
            match page.next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let read: Vec<(MessageRef, DeliveryState)> =
            found.iter().map(|r| (*r, DeliveryState::Read)).collect();
        if !read.is_empty() {
            self.store.history().set_states(&read)?;
        }
        Ok(found)
    }

    /// Queues a receipt for `to` (in the outbox, so that it is retried until
    /// it reaches the contact or the mesh, and dropped quietly when it
    /// expires) and returns it, encrypted, to send now.
    pub(crate) fn queue_receipt(
        &mut self,
        to: &[u8; 32],
        conv: [u8; 32],
        payload: Vec<u8>,
        now: u64,
    ) -> Result<Due, EngineError> {
        let pos = self.queue_unsent(to, conv, payload.clone(), now, now + retry::backoff(0))?;
        let frame = self.encrypt(to, &payload)?;
        Ok(Due {
            pos,
            to: *to,
            frame,
        })
    }

    /// Queues `payload` for `to` with no clock and no sequence number (a
    /// receipt, a resend request), due at `next_at`; its outbox position.
    fn queue_unsent(
        &mut self,
        to: &[u8; 32],
        conv: [u8; 32],
        payload: Vec<u8>,
        now: u64,
        next_at: u64,
    ) -> Result<u64, EngineError> {
        let mut id = [0u8; 16];
        rand::Rng::fill_bytes(&mut self.rng, &mut id);
        let queued = Queued::new(conv, None, None, payload);
        let entry = self
            .store
            .outbox()
            .push(id, *to, queued.to_bytes(), now, now + self.ttl)?;
        self.schedule.insert(
            entry.seq,
            Meta {
                msg_id: id,
                recipient: *to,
                conv_id: conv,
                lamport: 0,
                seq: 0,
                attempts: 0,
                next_at,
                expires_at: entry.expires_at,
            },
        );
        Ok(entry.seq)
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
    use crate::node::engine::devices::Joined;
    use crate::node::proto::conversation_id;
    use crate::node::state::LinkCode;

    /// The data key of every store of these tests.
    fn data_key() -> crate::crypto::DataKey {
        let mut rng = StdRng::seed_from_u64(9);
        Keystore::create(b"pw", KdfParams::INSECURE_FAST, &mut rng)
            .unwrap()
            .1
    }

    fn store(dir: &std::path::Path) -> Arc<Store> {
        Arc::new(Store::open(dir, &data_key()).unwrap())
    }

    /// A store restored from `backup` into a new directory (kept alive by
    /// the first value), not opened by an engine yet.
    fn restored_store(backup: &[u8]) -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("store");
        let store = Store::restore(&mut &backup[..], &target, &data_key()).unwrap();
        (dir, Arc::new(store))
    }

    /// Two devices in temporary directories that know each other.
    struct Pair {
        _dirs: (tempfile::TempDir, tempfile::TempDir),
        a: Engine,
        b: Engine,
        a_key: [u8; 32],
        b_key: [u8; 32],
    }

    /// A pair whose session is set up (b wrote first: the first frames of
    /// a session are set-ups), and a's side of the chat temporary (60 s,
    /// at 100) without b knowing.
    fn temporary_pair() -> Pair {
        let mut p = pair();
        let hello = p.b.send(&p.a_key, b"hello".to_vec(), 100).unwrap();
        p.a.receive(&p.b_key, &[hello.frame], 100, true).unwrap();
        p.a.set_retention(&p.b_key, Some(60), 100).unwrap();
        p
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

    /// Both write once and read each other (a's session answered, each
    /// acknowledged): the start of the retry tests.
    fn talk(a: &mut Engine, b: &mut Engine, a_key: &[u8; 32], b_key: &[u8; 32]) {
        let hi = a.send(b_key, b"hi".to_vec(), 100).unwrap();
        b.receive(a_key, &[hi.frame], 100, true).unwrap();
        let back = b.send(a_key, b"back".to_vec(), 100).unwrap();
        a.receive(b_key, &[back.frame], 100, true).unwrap();
        a.delivered_direct(&[hi.pos]).unwrap();
        b.delivered_direct(&[back.pos]).unwrap();
    }

    /// A contact keeps its account's newest device list, across a
    /// restart: an invite of a device that list no longer names (an old
    /// invite, with the older list) is refused; the account's own device
    /// with an older list is taken and keeps the newer list.
    #[test]
    fn a_device_removed_from_its_account_cannot_be_added_with_an_old_invite() {
        let dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
        let mut m = Engine::open(store(dirs[0].path()), 100).unwrap();
        let mut a = Engine::open(store(dirs[1].path()), 100).unwrap();
        let b = Engine::open(store(dirs[2].path()), 100).unwrap();
        assert_eq!(a.device_list().serial(), 1);
        assert_eq!(a.device_list().account(), &a.me.public().signing);
        let two = a
            .devices
            .with_device(
                &a.me,
                &crypto::DeviceMembership::new(&b.me, &a.me.public().signing),
                "laptop",
                100,
            )
            .unwrap();
        let three = two
            .verify()
            .unwrap()
            .without_device(&a.me, &b.me.public().signing)
            .unwrap();
        a.devices = three.verify().unwrap();
        let a_key = m
            .add_contact(&a.invite(vec![], 100).unwrap(), "ann")
            .unwrap();
        let old_b = b
            .invite(vec![], 100)
            .unwrap()
            .with_devices(two.to_bytes(), Vec::new());
        assert!(old_b.verify().is_ok(), "its signatures hold");
        let refused = |m: &mut Engine| {
            matches!(
                m.add_contact(&old_b, "ann's laptop"),
                Err(EngineError::Crypto(crypto::Error::DeviceList { .. }))
            )
        };
        assert!(refused(&mut m));
        drop(m);
        let mut m = Engine::open(store(dirs[0].path()), 100).unwrap();
        assert_eq!(m.lists[&a_key].serial(), 3);
        assert!(refused(&mut m));
        let old_a = a
            .invite(vec![], 100)
            .unwrap()
            .with_devices(two.to_bytes(), Vec::new());
        assert_eq!(m.add_contact(&old_a, "ann").unwrap(), a_key);
        assert_eq!(m.contacts[&a_key].device_list().unwrap().serial(), 3);
        assert!(!m.contacts.contains_key(&b.me.public().signing));
    }

    /// Two different lists of one account under one serial: the second
    /// is acknowledged (it is not sent again) but not kept, and the
    /// person is told.
    #[test]
    fn a_second_list_under_the_same_serial_is_reported_and_not_kept() {
        let mut p = pair();
        let before = p.a.devices.clone();
        let due = p.a.name_device("phone", 100).unwrap();
        let got =
            p.b.receive(&p.a_key, &[due[0].frame.clone()], 100, true)
                .unwrap();
        assert!(matches!(got.events[..], [Event::DevicesChanged(_)]));
        // The account key signs another list with the same serial.
        p.a.devices = before;
        let other = p.a.name_device("tablet", 100).unwrap();
        assert_eq!(p.a.device_list().serial(), 2);
        let got =
            p.b.receive(&p.a_key, &[other[0].frame.clone()], 100, true)
                .unwrap();
        assert_eq!(got.accepted, vec![true]);
        assert_eq!(
            got.events,
            vec![Event::DevicesConflict {
                account: p.a_key,
                serial: 2
            }]
        );
        let held = p.b.contact_list(&p.a_key).unwrap();
        assert_eq!(held.device(&p.a_key).unwrap().name, "phone");
        // Also across a restart.
        let a_key = p.a_key;
        drop(p.b);
        let b = Engine::open(store(p._dirs.1.path()), 100).unwrap();
        let held = b.contact_list(&a_key).unwrap();
        assert_eq!(held.device(&a_key).unwrap().name, "phone");
    }

    /// A device named anew sends its account's list to every contact,
    /// which keeps it (across a restart) and says what changed; the same
    /// list again, an older one, or a list that does not name its sender
    /// change nothing.
    #[test]
    fn a_contact_learns_the_new_name_of_a_device() {
        let mut p = pair();
        assert!(
            p.a.name_device("", 100).unwrap().is_empty(),
            "its name already"
        );
        let due = p.a.name_device("phone", 100).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].to, p.b_key);
        // Retried until acknowledged: not taken for a read receipt, which
        // is dropped once it went out on the mesh.
        assert!(!p.a.is_read_receipt(due[0].pos));
        p.a.published(&[due[0].pos]).unwrap();
        assert!(p.a.expiry_of(due[0].pos).is_some(), "still queued");
        assert_eq!(p.a.device_list().serial(), 2);
        let first =
            p.b.receive(&p.a_key, &[due[0].frame.clone()], 100, true)
                .unwrap();
        assert_eq!(first.accepted, vec![true]);
        let Some(Event::DevicesChanged(change)) = first.events.first() else {
            panic!("no change: {:?}", first.events);
        };
        assert_eq!(
            (change.account, change.serial, change.renamed.clone()),
            (p.a_key, 2, vec![p.a_key])
        );
        assert!(change.added.is_empty() && change.removed.is_empty());
        assert_eq!(change.devices[0].name, "phone");
        // A later name; then the earlier list comes again (a retry).
        let old = due[0].frame.clone();
        let later = p.a.name_device("laptop", 100).unwrap();
        p.b.receive(&p.a_key, &[later[0].frame.clone()], 100, true)
            .unwrap();
        let again = p.b.receive(&p.a_key, &[old], 100, true).unwrap();
        assert!(again.events.is_empty());
        assert_eq!(
            again.accepted,
            vec![true],
            "acknowledged, so it is not sent again"
        );
        assert_eq!(p.b.contact_list(&p.a_key).unwrap().serial(), 3);
        // A list of another account, naming only its own device.
        let other = DeviceIdentity::generate(&mut rand::rng());
        let foreign = crypto::DeviceList::first(&other, "x", 100)
            .unwrap()
            .to_bytes();
        let frame =
            p.a.encrypt(
                &p.b_key,
                &Payload::Devices {
                    id: [7; 16],
                    list: foreign,
                    bundles: Vec::new(),
                }
                .to_bytes(),
            )
            .unwrap();
        let refused = p.b.receive(&p.a_key, &[frame], 100, true).unwrap();
        assert_eq!(refused.accepted, vec![false]);
        // Kept with the contact: the same after a restart.
        let Pair {
            _dirs, b, a_key, ..
        } = p;
        drop(b);
        let b = Engine::open(store(_dirs.1.path()), 100).unwrap();
        let list = b.contact_list(&a_key).unwrap();
        assert_eq!(
            (list.serial(), list.devices()[0].name.as_str()),
            (3, "laptop")
        );
        assert_eq!(b.account_of(&a_key), a_key);
    }

    /// A device in two accounts (it consented to both) stays in the one
    /// it is known in: a list of the other naming it is refused, and the
    /// account it is known by keeps its list.
    #[test]
    fn a_list_naming_a_device_of_another_account_is_refused() {
        let dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
        let mut b = Engine::open(store(dirs[0].path()), 100).unwrap();
        let mut m = Engine::open(store(dirs[1].path()), 100).unwrap();
        let c = Engine::open(store(dirs[2].path()), 100).unwrap();
        let c_key = b
            .add_contact(&c.invite(vec![], 100).unwrap(), "carol")
            .unwrap();
        let m_key = b
            .add_contact(&m.invite(vec![], 100).unwrap(), "mel")
            .unwrap();
        m.add_contact(&b.invite(vec![], 100).unwrap(), "bob")
            .unwrap();
        let with_c = m
            .devices
            .with_device(
                &m.me,
                &crypto::DeviceMembership::new(&c.me, &m_key),
                "carol's phone",
                100,
            )
            .unwrap()
            .verify()
            .unwrap();
        let due = m.set_own_list(with_c.clone(), 100).unwrap();
        let got = b
            .receive(&m_key, &[due[0].frame.clone()], 100, true)
            .unwrap();
        assert_eq!(got.accepted, vec![false]);
        assert_eq!(b.account_of(&c_key), c_key);
        assert_eq!(b.contact_list(&m_key).unwrap().serial(), 1);
        // Nor through an invite: carol's bundle beside mel's list.
        let forged = c
            .invite(vec![], 100)
            .unwrap()
            .with_devices(with_c.list().to_bytes(), Vec::new());
        assert!(forged.verify().is_ok(), "every signature holds");
        assert!(matches!(
            b.add_contact(&forged, "carol"),
            Err(EngineError::Crypto(crypto::Error::DeviceList { .. }))
        ));
        assert_eq!(b.contacts[&c_key].device_list().unwrap().account(), &c_key);
    }

    /// A device restored from a backup signs its next lists far ahead of
    /// the backup's, so that contacts holding a list it signed since do
    /// not take them for old ones.
    /// The request a new device `n` sends with `code`.
    fn link_request(n: &mut Engine, code: &LinkCode, now: u64) -> crate::node::proto::LinkRequest {
        let Joined::Asked { frame, .. } = n.join(code, "laptop", now).unwrap() else {
            panic!("not asked")
        };
        match Frame::from_bytes(&frame) {
            Ok(Frame::Link(req)) => req,
            other => panic!("not a link request: {other:?}"),
        }
    }

    /// A new device joins an account with a link code: the account's
    /// first device checks its request and lists it, every contact (the
    /// new device among them) is sent the new list, and the new device
    /// takes it as its own, also after a restart; its invites then file
    /// it under the account. A request without the code's secret leaves
    /// the code waiting; a code is used once.
    #[test]
    fn a_new_device_joins_an_account_with_a_link_code() {
        let mut p = pair();
        let dn = tempfile::tempdir().unwrap();
        let mut n = Engine::open(store(dn.path()), 100).unwrap();
        let n_key = n.me.public().signing;
        let code = p.a.link_code(vec![], 100).unwrap();
        assert!(p.a.link_waiting(100));
        let code = LinkCode::from_code(&code.to_code()).unwrap();
        let req = link_request(&mut n, &code, 110);
        assert_eq!(
            n.contacts().map(|c| c.identity.signing).collect::<Vec<_>>(),
            vec![p.a_key]
        );

        let mut wrong = req.clone();
        wrong.mac[0] ^= 1;
        assert!(p.a.accept_link(&n_key, &wrong, 111).is_err());
        // The proof names the device: another device cannot use it.
        assert!(p.a.accept_link(&p.b_key, &req, 111).is_err());
        assert!(p.a.link_waiting(111), "not used up by a wrong proof");

        let (due, event) = p.a.accept_link(&n_key, &req, 112).unwrap();
        assert_eq!(
            event,
            Event::DeviceLinked {
                device: n_key,
                name: "laptop".into()
            }
        );
        assert!(!p.a.link_waiting(112));
        assert!(p.a.accept_link(&n_key, &req, 112).is_err(), "used once");
        assert_eq!(p.a.device_list().serial(), 2);
        assert_eq!(p.a.device_list().device(&n_key).unwrap().name, "laptop");
        assert!(p.a.contact(&n_key).is_some());

        let to: HashSet<[u8; 32]> = due.iter().map(|d| d.to).collect();
        assert_eq!(to, HashSet::from([p.b_key, n_key]));
        let mut at_n = Vec::new();
        for d in &due {
            if d.to == p.b_key {
                let got =
                    p.b.receive(&p.a_key, std::slice::from_ref(&d.frame), 113, true)
                        .unwrap();
                let [Event::DevicesChanged(change)] = &got.events[..] else {
                    panic!("{:?}", got.events)
                };
                assert_eq!(change.added, vec![n_key]);
            } else {
                let got = n
                    .receive(&p.a_key, std::slice::from_ref(&d.frame), 113, true)
                    .unwrap();
                assert_eq!(got.accepted, vec![true]);
                at_n.extend(got.events);
            }
        }
        assert!(at_n.contains(&Event::AccountJoined {
            account: p.a_key,
            serial: 2
        }));
        // The account's contacts came with it: bob, under alice's name for
        // him (the laptop writes to him as a device of her account).
        assert!(at_n.contains(&Event::AccountContacts {
            added: vec![p.b_key]
        }));
        assert_eq!(n.contact(&p.b_key).map(|c| c.name.as_str()), Some("bob"));
        assert_eq!(n.device_list().account(), &p.a_key);
        assert!(
            n.name_device("tablet", 114).is_err(),
            "only the first device signs"
        );
        assert!(n.link_code(vec![], 114).is_err());
        // Bob takes the new device's invite as one of alice's account: a
        // contact without a request, named after her.
        let invite = n.invite(vec![], 114).unwrap();
        assert_eq!(
            p.b.listed_device_name(&invite).as_deref(),
            Some("alice laptop")
        );
        assert_eq!(p.b.add_contact(&invite, "alice laptop").unwrap(), n_key);
        assert_eq!(p.b.account_of(&n_key), p.a_key);
        drop(n);
        let n = Engine::open(store(dn.path()), 115).unwrap();
        assert_eq!(n.device_list().account(), &p.a_key);
        assert_eq!(n.device_list().serial(), 2);
    }

    /// An ended code is refused on both sides; a device with contacts of
    /// its own, or the account's own device, does not join; a name with
    /// control characters is refused.
    #[test]
    fn a_link_code_that_ended_or_a_device_in_use_does_not_join() {
        let mut p = pair();
        let dn = tempfile::tempdir().unwrap();
        let mut n = Engine::open(store(dn.path()), 100).unwrap();
        let n_key = n.me.public().signing;
        let code = p.a.link_code(vec![], 100).unwrap();
        let end = 100 + LINK_CODE_LIFE;
        assert!(n.join(&code, "laptop", end).is_err());
        assert_eq!(n.contacts().count(), 0, "nothing added");
        let req = link_request(&mut n, &code, 101);
        assert!(p.a.accept_link(&n_key, &req, end).is_err());
        assert!(!p.a.link_waiting(end));
        assert_eq!(p.a.device_list().serial(), 1);

        let code = p.a.link_code(vec![], 200).unwrap();
        assert!(p.a.join(&code, "again", 200).is_err(), "its own code");
        // Bob has a contact of his own (carol): he stays his own account.
        let dc = tempfile::tempdir().unwrap();
        let carol = Engine::open(store(dc.path()), 200).unwrap();
        p.b.add_contact(&carol.invite(vec![], 200).unwrap(), "carol")
            .unwrap();
        assert!(p.b.join(&code, "bob", 200).is_err());

        let mut req = link_request(&mut n, &code, 201);
        req.name = "lap\u{1b}top".into();
        assert!(p.a.accept_link(&n_key, &req, 201).is_err());
        assert_eq!(p.a.device_list().serial(), 1);
    }

    /// A device takes another account's list naming it only while it
    /// has asked to join that account and has no contact of its own: one
    /// that gave up and was put to use stays its own account, whatever
    /// the first device signs later with the consent it was sent.
    #[test]
    fn a_device_in_use_is_not_moved_into_an_account_it_once_asked_to_join() {
        let mut p = pair();
        let (dn, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut n = Engine::open(store(dn.path()), 100).unwrap();
        let carol = Engine::open(store(dc.path()), 100).unwrap();
        let n_key = n.me.public().signing;
        let code = p.a.link_code(vec![], 100).unwrap();
        let req = link_request(&mut n, &code, 101);
        // The person gives up and adds a contact of its own.
        n.add_contact(&carol.invite(vec![], 102).unwrap(), "carol")
            .unwrap();
        let (due, _) = p.a.accept_link(&n_key, &req, 103).unwrap();
        let to_n = due.iter().find(|d| d.to == n_key).unwrap();
        let got = n
            .receive(&p.a_key, std::slice::from_ref(&to_n.frame), 104, true)
            .unwrap();
        assert!(
            !got.events
                .iter()
                .any(|e| matches!(e, Event::AccountJoined { .. }))
        );
        assert_eq!(n.device_list().account(), &n_key);
        // Also after a restart.
        drop(n);
        let n = Engine::open(store(dn.path()), 105).unwrap();
        assert_eq!(n.device_list().account(), &n_key);
    }

    /// Asking again with a code whose invite already names this device
    /// (the answer to the first request got lost in a crash) joins at
    /// once; a later list of the account is taken even when held already.
    #[test]
    fn a_join_asked_again_after_the_account_listed_the_device_joins_at_once() {
        let mut p = pair();
        let dn = tempfile::tempdir().unwrap();
        let mut n = Engine::open(store(dn.path()), 100).unwrap();
        let n_key = n.me.public().signing;
        let code = p.a.link_code(vec![], 100).unwrap();
        let req = link_request(&mut n, &code, 101);
        p.a.accept_link(&n_key, &req, 102).unwrap();
        // The list never reached n; a second code carries it.
        let again = p.a.link_code(vec![], 103).unwrap();
        match n.join(&again, "laptop", 104).unwrap() {
            Joined::Already(first) => assert_eq!(first, p.a_key),
            other => panic!("{other:?}"),
        }
        assert_eq!(n.device_list().account(), &p.a_key);
        assert_eq!(n.device_list().serial(), 2);
        // The account's next list (a device renamed) is n's too, and the
        // contact's copy is not kept beside n's own.
        let due = p.a.name_device("phone", 105).unwrap();
        let to_n = due.iter().find(|d| d.to == n_key).unwrap();
        n.receive(&p.a_key, std::slice::from_ref(&to_n.frame), 106, true)
            .unwrap();
        assert_eq!(n.device_list().serial(), 3);
        assert!(n.contact_list(&p.a_key).is_none());
    }

    /// The account's first device removes a linked device: the list
    /// without it goes to every contact, the removed device among them.
    /// Bob drops it as a contact (what he had queued for it is given up),
    /// the removed device becomes an account of its own (also after a
    /// restart), and the first device forgets it once the list is
    /// acknowledged (also across a restart). Only the first device
    /// removes, and never itself.
    #[test]
    fn a_device_removed_from_its_account_is_told_and_dropped_by_its_contacts() {
        let Pair {
            _dirs,
            mut a,
            mut b,
            a_key,
            b_key,
        } = pair();
        let (dn, mut n) = linked_laptop(&mut a, &mut b, 100);
        let n_key = n.me.public().signing;
        let to_n = b.send(&n_key, b"to the laptop".to_vec(), 105).unwrap();

        assert!(
            n.remove_device(&a_key, 106).is_err(),
            "not the first device"
        );
        assert!(a.remove_device(&a_key, 106).is_err(), "never itself");
        assert!(a.remove_device(&b_key, 106).is_err(), "not listed");
        let (due, events) = a.remove_device(&n_key, 106).unwrap();
        assert!(events.contains(&Event::DeviceUnlinked {
            device: n_key,
            name: "laptop".into()
        }));
        assert_eq!(a.device_list().serial(), 3);
        assert!(a.device_list().device(&n_key).is_none());
        assert!(a.remove_device(&n_key, 106).is_err(), "removed already");
        let to: HashSet<[u8; 32]> = due.iter().map(|d| d.to).collect();
        assert_eq!(to, HashSet::from([b_key, n_key]));
        // Told first: a contact still, across a restart.
        assert!(a.forget_unlinked(107).0.is_empty());
        drop(a);
        let mut a = Engine::open(store(_dirs.0.path()), 107).unwrap();
        assert!(a.contact(&n_key).is_some());

        let at_b = due.iter().find(|d| d.to == b_key).unwrap();
        let got = b
            .receive(&a_key, std::slice::from_ref(&at_b.frame), 108, true)
            .unwrap();
        assert!(matches!(&got.events[0], Event::DevicesChanged(c) if c.removed == vec![n_key]));
        assert!(got.events.iter().any(|e| matches!(
            e,
            Event::ContactDeviceRemoved { account, gone } if *account == a_key && gone.key == n_key
        )));
        // Its copy is given up; the one for Alice's phone still goes, so
        // the message has not expired.
        assert!(!got.events.contains(&Event::Expired {
            message: to_n.message
        }));
        assert_eq!(
            to_n.copies.iter().map(|d| d.to).collect::<Vec<_>>(),
            vec![a_key]
        );
        assert!(b.contact(&n_key).is_none());
        assert_eq!(b.queued(), 1);
        // What the node keeps of it as a former contact verifies: the
        // invite without the list that no longer names it.
        let Some(Event::ContactDeviceRemoved { gone, .. }) = got
            .events
            .iter()
            .find(|e| matches!(e, Event::ContactDeviceRemoved { .. }))
        else {
            panic!("{:?}", got.events)
        };
        let kept = gone.invite.as_ref().unwrap().verify().unwrap();
        assert!(kept.list.is_none());
        assert!(check_intro(&gone.identity, gone.invite.as_ref().unwrap()).is_ok());
        // An invite of the device carrying the old list no longer files it
        // under the account.
        let old = n.invite(vec![], 108).unwrap();
        assert_eq!(b.listed_device_name(&old), None);
        assert!(b.add_contact(&old, "alice laptop").is_err());

        let at_n = due.iter().find(|d| d.to == n_key).unwrap();
        let got = n
            .receive(&a_key, std::slice::from_ref(&at_n.frame), 109, true)
            .unwrap();
        assert!(got.events.contains(&Event::AccountLeft {
            account: a_key,
            serial: 3
        }));
        assert_eq!(n.device_list().account(), &n_key);
        assert_eq!(n.device_list().devices().len(), 1);
        assert_eq!(n.device_list().device(&n_key).unwrap().name, "laptop");
        assert_eq!(n.contact_list(&a_key).map(|l| l.serial()), Some(3));
        drop(n);
        let n = Engine::open(store(dn.path()), 110).unwrap();
        assert_eq!(n.device_list().account(), &n_key);
        // Its own invites carry its own list: bob may add it as anyone.
        let own = n.invite(vec![], 110).unwrap();
        assert_eq!(own.verify().unwrap().account(), n_key);

        // The laptop acknowledged the list: the first device forgets it.
        a.delivered_direct(&[at_n.pos]).unwrap();
        let (gone, _) = a.forget_unlinked(111);
        assert_eq!(gone.iter().map(|g| g.key).collect::<Vec<_>>(), vec![n_key]);
        assert!(a.contact(&n_key).is_none());
        drop(a);
        let mut a = Engine::open(store(_dirs.0.path()), 112).unwrap();
        assert!(a.forget_unlinked(112).0.is_empty());
        assert!(a.contact(&n_key).is_none());
    }

    /// Alice's laptop joins her account (a's), and Bob (b) takes it in
    /// as "alice laptop" from its invite. Returns its directory and
    /// engine.
    fn linked_laptop(a: &mut Engine, b: &mut Engine, now: u64) -> (tempfile::TempDir, Engine) {
        let (a_key, b_key) = (a.me.public().signing, b.me.public().signing);
        let dn = tempfile::tempdir().unwrap();
        let mut n = Engine::open(store(dn.path()), now).unwrap();
        let n_key = n.me.public().signing;
        let code = a.link_code(vec![], now).unwrap();
        let req = link_request(&mut n, &code, now + 1);
        let (due, _) = a.accept_link(&n_key, &req, now + 2).unwrap();
        for d in &due {
            let to = if d.to == b_key { &mut *b } else { &mut n };
            to.receive(&a_key, std::slice::from_ref(&d.frame), now + 3, true)
                .unwrap();
        }
        assert_eq!(n.device_list().account(), &a_key);
        b.add_contact(&n.invite(vec![], now + 4).unwrap(), "alice laptop")
            .unwrap();
        assert_eq!(b.account_of(&n_key), a_key);
        (dn, n)
    }

    /// One conversation per account (docs/devices.md, §3): Bob files what
    /// Alice's phone and her laptop write in one conversation, counting
    /// each device's numbers apart; the laptop files its chat with Bob
    /// under Alice's account, the same conversation as her phone's, and
    /// each of her devices files a copy of what the other wrote. What
    /// Bob writes to either goes to both (delivered when the first has it,
    /// expired only when none did). Bob reading it sends a read receipt to
    /// each device that wrote, and a retention setting goes to both.
    #[test]
    fn a_contacts_devices_write_into_one_conversation() {
        let Pair {
            _dirs,
            mut a,
            mut b,
            a_key,
            b_key,
        } = pair();
        let (_dn, mut n) = linked_laptop(&mut a, &mut b, 100);
        let n_key = n.me.public().signing;
        let conv = b.conversation_with(&a_key).unwrap();
        assert_eq!(conv, conversation_id(a.me.public(), b.me.public()));
        assert_eq!(b.conversation_with(&n_key), Some(conv));
        assert_eq!(n.conversation_with(&b_key), Some(conv));
        assert_eq!(a.conversation_with(&b_key), Some(conv));

        let p1 = a.send(&b_key, b"one from the phone".to_vec(), 110).unwrap();
        let p2 = a.send(&b_key, b"two from the phone".to_vec(), 110).unwrap();
        let l1 = n
            .send(&b_key, b"one from the laptop".to_vec(), 110)
            .unwrap();
        let got = b.receive(&n_key, &[l1.frame], 111, true).unwrap();
        assert!(got.replies.is_empty(), "no resend asked");
        let got = b.receive(&a_key, &[p1.frame, p2.frame], 111, true).unwrap();
        assert!(got.replies.is_empty(), "no resend asked");
        // What each of Alice's devices writes to Bob, the other files in
        // the same conversation as hers.
        assert_eq!(
            l1.copies.iter().map(|d| d.to).collect::<Vec<_>>(),
            vec![a_key]
        );
        let got = a
            .receive(&n_key, &[l1.copies[0].frame.clone()], 111, true)
            .unwrap();
        assert!(
            matches!(&got.events[..], [Event::MessageReceived(m)]
                if m.conv_id == conv && m.sender == n_key && m.msg_id == l1.message.msg_id),
            "{:?}",
            got.events
        );
        assert_eq!(
            p1.copies.iter().map(|d| d.to).collect::<Vec<_>>(),
            vec![n_key]
        );
        let got = n
            .receive(&a_key, &[p1.copies[0].frame.clone()], 111, true)
            .unwrap();
        assert!(
            matches!(&got.events[..], [Event::MessageReceived(m)]
                if m.conv_id == conv && m.sender == a_key && m.body == b"one from the phone"),
            "{:?}",
            got.events
        );
        // Bob is no device of Alice's: a copy from him is refused.
        let chat = Chat {
            msg_id: [7; 16],
            lamport: 50,
            seq: 0,
            sent_at: 111,
            expires_at: None,
            reply_to: None,
            body: b"forged".to_vec(),
        };
        let forged = b
            .queue(&n_key, &conv, Some(50), 111, |id| Payload::Sent {
                id,
                peer: b_key,
                chat,
            })
            .unwrap();
        let got = n.receive(&b_key, &[forged.frame], 111, true).unwrap();
        assert_eq!(got.accepted, vec![false]);
        // (The forged entry is Bob's own: it goes.)
        b.delivered_direct(&[forged.pos]).unwrap();
        let page = b.store().history().page(&conv, None, 10).unwrap();
        let mut senders: Vec<[u8; 32]> = page.messages.iter().map(|m| m.sender).collect();
        senders.sort_unstable();
        let mut want = vec![a_key, a_key, n_key];
        want.sort_unstable();
        assert_eq!(senders, want);
        // Each device's numbers apart: the phone's in the conversation's
        // record, the laptop's in its own.
        assert_eq!(b.conv_state(&conv).unwrap().peer_contiguous, 2);
        assert_eq!(
            b.seq_state(&conv, &n_key)
                .unwrap()
                .map(|s| s.peer_contiguous),
            Some(1)
        );
        assert_eq!(b.seq_state(&conv, &a_key).unwrap(), None);

        // Bob writes to "alice laptop": each of her devices gets its copy,
        // filed in the conversation with him.
        let r = b.send(&n_key, b"to both".to_vec(), 112).unwrap();
        assert_eq!(
            r.copies.iter().map(|d| d.to).collect::<Vec<_>>(),
            vec![a_key]
        );
        let got = n.receive(&b_key, &[r.frame], 113, true).unwrap();
        assert!(
            matches!(&got.events[..], [Event::MessageReceived(m)] if m.conv_id == conv),
            "{:?}",
            got.events
        );
        let got = a
            .receive(&b_key, &[r.copies[0].frame.clone()], 113, true)
            .unwrap();
        assert!(
            matches!(&got.events[..], [Event::MessageReceived(m)]
                if m.conv_id == conv && m.msg_id == r.message.msg_id),
            "{:?}",
            got.events
        );
        // The laptop reads Bob's message: its read receipt goes to Bob
        // only, though a newer copy of what the phone wrote is there.
        let later = a
            .send(&b_key, b"later from the phone".to_vec(), 113)
            .unwrap();
        let copy = later.copies.iter().find(|d| d.to == n_key).unwrap();
        n.receive(&a_key, std::slice::from_ref(&copy.frame), 113, true)
            .unwrap();
        let read = n.mark_read(&b_key, 113).unwrap();
        let to: HashSet<[u8; 32]> = read.iter().map(|d| d.to).collect();
        assert_eq!(
            to,
            HashSet::from([b_key, a_key]),
            "Bob's receipt, and the phone's mark"
        );
        // The phone had Bob's message unread: the laptop's mark reads it
        // there too.
        let unread = |e: &Engine| {
            e.store()
                .history()
                .conversation(&conv)
                .unwrap()
                .map(|c| c.unread)
        };
        assert_eq!(unread(&a), Some(1));
        let mark = read.iter().find(|d| d.to == a_key).unwrap();
        let got = a
            .receive(&n_key, std::slice::from_ref(&mark.frame), 113, true)
            .unwrap();
        assert_eq!(got.accepted, vec![true]);
        assert!(got.replies.is_empty(), "no mark back");
        assert_eq!(unread(&a), Some(0));
        let bobs = a.store().history().get(&r.message).unwrap().unwrap();
        assert_eq!(bobs.state, DeliveryState::Read);
        // A mark below a newer message leaves that one unread; Bob
        // cannot send one.
        let newer = b.send(&a_key, b"newer".to_vec(), 113).unwrap();
        a.receive(&b_key, &[newer.frame], 113, true).unwrap();
        assert_eq!(unread(&a), Some(1));
        let old_mark = Payload::ReadUpTo {
            peer: b_key,
            lamport: r.message.lamport,
        }
        .to_bytes();
        let again = n
            .queue_receipt(&a_key, conv, old_mark.clone(), 113)
            .unwrap();
        a.receive(&n_key, &[again.frame], 113, true).unwrap();
        assert_eq!(unread(&a), Some(1));
        let forged = b.queue_receipt(&a_key, conv, old_mark, 113).unwrap();
        let got = a.receive(&b_key, &[forged.frame], 113, true).unwrap();
        assert_eq!(got.accepted, vec![false]);
        // A chat with one's own device makes no copies.
        assert!(
            n.send(&a_key, b"to my phone".to_vec(), 113)
                .unwrap()
                .copies
                .is_empty()
        );
        // Delivered when the first device has it; the other copy expiring
        // says nothing. A message none of them took expires once.
        let events = b.delivered_direct(&[r.pos]).unwrap();
        assert_eq!(
            events,
            vec![Event::Receipt {
                message: r.message,
                state: DeliveryState::Delivered
            }]
        );
        let lost = b.send(&a_key, b"to nobody".to_vec(), 112).unwrap();
        assert_eq!(lost.copies.len(), 1);
        let expired = b.expire(112 + MESSAGE_TTL + 1).unwrap();
        let told = |m: &MessageRef| {
            expired
                .iter()
                .filter(|e| matches!(e, Event::Expired { message } if message == m))
                .count()
        };
        assert_eq!(told(&r.message), 0);
        assert_eq!(told(&lost.message), 1);

        let due = b.mark_read(&a_key, 114).unwrap();
        let to: HashSet<[u8; 32]> = due.iter().map(|d| d.to).collect();
        assert_eq!(to, HashSet::from([a_key, n_key]));
        let (due, _) = b.set_retention(&n_key, Some(3600), 115).unwrap();
        let to: HashSet<[u8; 32]> = due.iter().map(|d| d.to).collect();
        assert_eq!(to, HashSet::from([a_key, n_key]));
    }

    /// A joining device that hears of its removal before its addition
    /// (the lists crossed) does not join: the older list naming it is
    /// not taken over the newer one held.
    #[test]
    fn a_join_whose_removal_came_first_does_not_join() {
        let mut p = pair();
        let dn = tempfile::tempdir().unwrap();
        let mut n = Engine::open(store(dn.path()), 100).unwrap();
        let n_key = n.me.public().signing;
        let code = p.a.link_code(vec![], 100).unwrap();
        let req = link_request(&mut n, &code, 101);
        let (added, _) = p.a.accept_link(&n_key, &req, 102).unwrap();
        let (removed, _) = p.a.remove_device(&n_key, 103).unwrap();
        let frame = |due: &[Due]| due.iter().find(|d| d.to == n_key).unwrap().frame.clone();
        let (added, removed) = (frame(&added), frame(&removed));
        n.receive(&p.a_key, &[removed], 104, true).unwrap();
        let got = n.receive(&p.a_key, &[added], 105, true).unwrap();
        assert!(
            !got.events
                .iter()
                .any(|e| matches!(e, Event::AccountJoined { .. }))
        );
        assert_eq!(n.device_list().account(), &n_key);
        assert_eq!(n.contact_list(&p.a_key).map(|l| l.serial()), Some(3));
    }

    /// A removed device in a group with a contact stays that contact's
    /// contact, no longer filed under the account and kept only as groups
    /// keep one; a list that comes again (the same serial) changes
    /// nothing more.
    #[test]
    fn a_removed_device_in_a_group_stays_while_the_group_has_it() {
        let Pair {
            _dirs,
            mut a,
            mut b,
            a_key,
            b_key,
        } = pair();
        let (_dn, n) = linked_laptop(&mut a, &mut b, 100);
        let n_key = n.me.public().signing;
        b.create_group("team", "bob", &[n_key], None, vec![], 105)
            .unwrap();
        let (due, _) = a.remove_device(&n_key, 106).unwrap();
        let at_b = due.iter().find(|d| d.to == b_key).unwrap();
        let got = b
            .receive(&a_key, std::slice::from_ref(&at_b.frame), 107, true)
            .unwrap();
        assert!(
            !got.events
                .iter()
                .any(|e| matches!(e, Event::ContactDeviceRemoved { .. }))
        );
        assert!(b.contact(&n_key).is_some());
        assert_eq!(b.account_of(&n_key), n_key, "not filed under alice's");
        assert!(b.made_by_a_group(&n_key));
        let again = b
            .receive(&a_key, std::slice::from_ref(&at_b.frame), 108, true)
            .unwrap();
        assert!(again.events.is_empty(), "{:?}", again.events);
        assert!(b.contact(&n_key).is_some());
    }

    #[test]
    fn a_restored_device_moves_its_list_ahead() {
        let Pair { _dirs, mut a, .. } = pair();
        let mut backup = Vec::new();
        a.store.backup(&mut backup).unwrap();
        a.name_device("phone", 100).unwrap();
        assert_eq!(a.device_list().serial(), 2);
        drop(a);
        let (_restored_dir, store) = restored_store(&backup);
        let a = Engine::open(store.clone(), 102).unwrap();
        assert_eq!(a.device_list().serial(), 1 + RESTORE_SERIAL_STEP);
        drop(a);
        // Only once: the next start is not a restore.
        let a = Engine::open(store, 103).unwrap();
        assert_eq!(a.device_list().serial(), 1 + RESTORE_SERIAL_STEP);
    }

    /// An introduction stands for the device that sealed it: its own
    /// invite reads as such (alone, or beside a session set-up); another
    /// device's invite sealed by a third is refused; from a contact, an
    /// introduction is nothing more, and a set-up beside one reads.
    #[test]
    fn an_introduction_names_the_device_that_sealed_it() {
        let dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
        let mut m = Engine::open(store(dirs[0].path()), 100).unwrap();
        let mut c = Engine::open(store(dirs[1].path()), 100).unwrap();
        let x = Engine::open(store(dirs[2].path()), 100).unwrap();
        let c_key = m
            .add_contact(&c.invite(vec![], 100).unwrap(), "carol")
            .unwrap();
        let m_public = m.identity().public().clone();
        let open = |c: &mut Engine, env: &[u8]| {
            c.open_envelope(&Envelope::from_bytes(env).unwrap())
                .unwrap()
        };

        let (_, env) = m.intro(&c_key, 100).unwrap();
        let Opened::Intro {
            from,
            invite,
            carries: false,
        } = open(&mut c, &env)
        else {
            panic!("not an introduction alone");
        };
        assert_eq!(from, m_public);
        check_intro(&from, &invite).unwrap();

        let sent = m.send(&c_key, b"hi carol".to_vec(), 100).unwrap();
        let (_, setup) = m.seal(&c_key, &sent.frame, 200, 100).unwrap();
        let Opened::Intro {
            from,
            invite,
            carries: true,
        } = open(&mut c, &setup)
        else {
            panic!("not a set-up with an introduction");
        };
        check_intro(&from, &invite).unwrap();

        // x's invite, sealed by m.
        let forged = SealedContent::new(
            ContentKind::Intro,
            x.invite(vec![], 100).unwrap().to_bytes(),
        );
        let sealed = crypto::seal(
            &m.me,
            &c.identity().public().dh,
            &forged,
            &mut SealCache::default(),
            &mut rand::rng(),
        )
        .unwrap();
        let env = Envelope::new(c.mailbox_id(), [7; 16], 200, sealed).to_bytes();
        let Opened::Intro { from, invite, .. } = open(&mut c, &env) else {
            panic!("not an introduction");
        };
        assert!(matches!(
            check_intro(&from, &invite),
            Err(EngineError::Crypto(crypto::Error::ForgedSender))
        ));

        // Carol adds m: its introduction is nothing more, its set-up reads.
        let m_key = c
            .add_contact(&m.invite(vec![], 100).unwrap(), "mallory")
            .unwrap();
        assert!(matches!(open(&mut c, &env), Opened::Known(k) if k == m_key));
        let Opened::Frame { from, frame } = open(&mut c, &setup) else {
            panic!("a contact's set-up is a frame");
        };
        let h = c.receive(&from, &[frame], 100, false).unwrap();
        assert_eq!(h.accepted, vec![true]);
    }

    /// A message the conversation's retention has already ended (sent
    /// before its sender knew of the setting, and arriving late, or sent
    /// again after the first copy was purged) is not stored again; its
    /// number still counts, so the next one is in order.
    #[test]
    fn a_message_past_the_conversations_retention_is_not_stored_again() {
        let Pair {
            _dirs,
            mut a,
            mut b,
            a_key,
            b_key,
        } = temporary_pair();
        let late = b.send(&a_key, b"late".to_vec(), 100).unwrap();
        let got = a
            .receive(&b_key, std::slice::from_ref(&late.frame), 200, false)
            .unwrap();
        assert_eq!(got.accepted, vec![true]);
        // By the mesh, a delivered receipt says so, as the direct ack does.
        assert_eq!(got.replies.len(), 1);
        let events = b.receive(&a_key, &got.replies, 201, false).unwrap().events;
        assert!(events.iter().any(|e| matches!(
            e,
            Event::Receipt { message, state: DeliveryState::Delivered } if *message == late.message
        )));
        assert!(
            !got.events
                .iter()
                .any(|e| matches!(e, Event::MessageReceived(m) if m.body == b"late"))
        );
        let next = b.send(&a_key, b"next".to_vec(), 200).unwrap();
        let got = a.receive(&b_key, &[next.frame], 201, true).unwrap();
        assert!(
            got.events
                .iter()
                .any(|e| matches!(e, Event::MessageReceived(m) if m.body == b"next"))
        );
        assert!(got.replies.is_empty(), "no resend asked: no gap");
    }

    /// A contact away for days: every retry of a queued message must not
    /// take a new message key, or the first frame it reads on its return
    /// is more than `MAX_SKIP` keys ahead and refused, and so is every
    /// later one (nothing moves the sender to a new chain).
    #[test]
    fn a_contact_away_through_many_retries_still_reads_what_comes() {
        let Pair {
            _dirs,
            mut a,
            mut b,
            a_key,
            b_key,
        } = pair();
        talk(&mut a, &mut b, &a_key, &b_key);
        let away = a.send(&b_key, b"away".to_vec(), 101).unwrap();
        a.attempted(away.pos, 101, None);
        let mut last = away.frame;
        let mut fresh = 0;
        for i in 0..1_100u64 {
            let at = 1_000 + i * 300;
            let due = a.due(at, 1).unwrap();
            assert_eq!(due.len(), 1);
            fresh += usize::from(due[0].frame != last);
            last = due[0].frame.clone();
            a.attempted(away.pos, at, None);
        }
        assert_eq!(fresh, 11, "attempts 1 (no frame kept yet), 2, 4, 8 … 1024");
        let got = b.receive(&a_key, &[last], 400_000, true).unwrap();
        assert_eq!(got.accepted, vec![true]);
        assert!(
            got.events
                .iter()
                .any(|e| matches!(e, Event::MessageReceived(m) if m.body == b"away"))
        );
        let next = a.send(&b_key, b"next".to_vec(), 400_001).unwrap();
        let got = b.receive(&a_key, &[next.frame], 400_001, true).unwrap();
        assert_eq!(got.accepted, vec![true]);
    }

    /// Many messages queued for a contact away for days: the retries of all
    /// of them together make at most `RETRY_KEY_BUDGET` fresh frames
    /// beyond one each, so the contact reads them all on its return, and
    /// what comes next.
    #[test]
    fn many_messages_queued_for_a_contact_away_for_days_are_all_read() {
        const N: usize = 200;
        let Pair {
            _dirs: (da, _db),
            mut a,
            mut b,
            a_key,
            b_key,
        } = pair();
        talk(&mut a, &mut b, &a_key, &b_key);
        for i in 0..N {
            let m = a.send(&b_key, format!("m{i}").into_bytes(), 101).unwrap();
            a.attempted(m.pos, 101, None);
        }
        let mut last;
        let mut fresh = std::collections::HashSet::new();
        // Four stretches of retries, with a restart between each (the
        // count of fresh frames is not stored: a restart must not allow
        // more).
        for stretch in 0..4u64 {
            for k in 0..275u64 {
                let at = 1_000 + (stretch * 275 + k) * 300;
                last = a.due(at, 512).unwrap();
                assert_eq!(last.len(), N);
                for d in &last {
                    fresh.insert(d.frame.clone());
                    a.attempted(d.pos, at, None);
                }
            }
            a.store.flush().unwrap();
            drop(a);
            a = Engine::open(store(da.path()), 1_000 + (stretch + 1) * 275 * 300).unwrap();
        }
        last = a.due(400_000, 512).unwrap();
        assert!(
            fresh.len() <= N + RETRY_KEY_BUDGET as usize,
            "{} fresh frames",
            fresh.len()
        );
        let frames: Vec<Vec<u8>> = last.into_iter().map(|d| d.frame).collect();
        let got = b.receive(&a_key, &frames, 400_000, true).unwrap();
        assert_eq!(got.accepted, vec![true; N]);
        let read = got
            .events
            .iter()
            .filter(|e| matches!(e, Event::MessageReceived(_)))
            .count();
        assert_eq!(read, N);
        let next = a.send(&b_key, b"next".to_vec(), 400_001).unwrap();
        let got = b.receive(&a_key, &[next.frame], 400_001, true).unwrap();
        assert_eq!(got.accepted, vec![true]);
    }

    /// Once the contact is heard from after a kept frame was made, the next
    /// retry encrypts afresh (it may have read that frame and refused what
    /// it carried); until then, and after, the kept frame goes again.
    #[test]
    fn a_contact_heard_from_since_a_frame_was_kept_gets_a_fresh_one() {
        let Pair {
            _dirs,
            mut a,
            mut b,
            a_key,
            b_key,
        } = pair();
        talk(&mut a, &mut b, &a_key, &b_key);
        let m = a.send(&b_key, b"m".to_vec(), 100).unwrap();
        a.attempted(m.pos, 100, None);
        let mut at = 1_000;
        let mut next = |a: &mut Engine| {
            at += 1_000;
            let due = a.due(at, 1).unwrap();
            assert_eq!(due.len(), 1);
            a.attempted(due[0].pos, at, None);
            due[0].frame.clone()
        };
        let frames: Vec<Vec<u8>> = (1..=5).map(|_| next(&mut a)).collect();
        assert_eq!(frames[2], frames[1], "attempt 3: kept");
        assert_eq!(frames[4], frames[3], "attempt 5: kept");
        // b writes: a hears from it.
        let more = b.send(&a_key, b"more".to_vec(), 200).unwrap();
        a.receive(&b_key, &[more.frame], 200, true).unwrap();
        let sixth = next(&mut a);
        assert_ne!(sixth, frames[4], "attempt 6: heard since, afresh");
        assert_eq!(next(&mut a), sixth, "attempt 7: kept");
    }

    /// A message deleted here before its sender heard our acknowledgement
    /// comes again, encrypted afresh: it is acknowledged (so the sender
    /// stops) but not stored again and not shown; a later message is.
    #[test]
    fn a_message_deleted_before_its_sender_heard_of_it_does_not_come_back() {
        let Pair {
            _dirs,
            mut a,
            mut b,
            a_key,
            b_key,
        } = pair();
        talk(&mut a, &mut b, &a_key, &b_key);
        let m = a.send(&b_key, b"delete me".to_vec(), 100).unwrap();
        a.attempted(m.pos, 100, None);
        let got = b
            .receive(&a_key, std::slice::from_ref(&m.frame), 100, true)
            .unwrap();
        assert!(matches!(&got.events[..], [Event::MessageReceived(_)]));
        // The ack is lost; b deletes the message, then writes.
        let stored = b.store.history().get(&m.message).unwrap().expect("stored");
        let mine = b.identity().public().signing;
        assert!(
            b.store
                .history()
                .delete(&stored.reference(), 150, &mine)
                .unwrap()
        );
        let more = b.send(&a_key, b"more".to_vec(), 200).unwrap();
        a.receive(&b_key, &[more.frame], 200, true).unwrap();
        // a tries again, afresh since it heard from b.
        let due = a.due(10_000, 1).unwrap();
        assert_eq!(due.len(), 1);
        assert_ne!(due[0].frame, m.frame, "a fresh encryption");
        let again = b
            .receive(&a_key, &[due[0].frame.clone()], 10_000, true)
            .unwrap();
        assert_eq!(again.accepted, vec![true], "acknowledged");
        assert!(again.events.is_empty(), "shown again: {:?}", again.events);
        assert!(b.store.history().get(&m.message).unwrap().is_none());
        let next = a.send(&b_key, b"next".to_vec(), 10_001).unwrap();
        let got = b.receive(&a_key, &[next.frame], 10_001, true).unwrap();
        assert!(matches!(&got.events[..], [Event::MessageReceived(_)]));
    }

    /// A device restored from a backup does not continue the sessions it
    /// had then (their message keys were used since): it starts new ones,
    /// and the contact reads what it writes, and answers.
    /// A device restored from a backup has no session its contacts still
    /// write in; it asks each of them, in a new session, to send again
    /// what it has not got, so a contact's messages are read again without
    /// this device writing first.
    #[test]
    fn a_restored_device_asks_its_contacts_again_and_reads_them_without_writing_first() {
        let Pair {
            _dirs,
            mut a,
            mut b,
            a_key,
            b_key,
        } = pair();
        talk(&mut a, &mut b, &a_key, &b_key);
        let mut backup = Vec::new();
        a.store.backup(&mut backup).unwrap();
        drop(a);
        let (_restored_dir, store) = restored_store(&backup);
        let mut a = Engine::open(store, 102).unwrap();
        // b writes in the session it had: a holds none now.
        let old = b.send(&a_key, b"are you there?".to_vec(), 102).unwrap();
        let got = a.receive(&b_key, &[old.frame], 102, true).unwrap();
        assert_eq!(got.accepted, vec![false]);
        // a's request goes out at once, in a new session b takes.
        let due = a.due(102, 10).unwrap();
        assert_eq!(due.len(), 1, "one request per contact");
        let got = b
            .receive(&a_key, &[due[0].frame.clone()], 103, true)
            .unwrap();
        assert_eq!(got.accepted, vec![true]);
        a.delivered_direct(&[due[0].pos]).unwrap();
        assert_eq!(a.queued(), 0);
        // b sends again what a did not take, in that session: read.
        let again: Vec<Vec<u8>> = b
            .due(104, 10)
            .unwrap()
            .into_iter()
            .map(|d| d.frame)
            .collect();
        assert_eq!(again.len(), 1);
        let got = a.receive(&b_key, &again, 104, true).unwrap();
        assert!(
            got.events
                .iter()
                .any(|e| matches!(e, Event::MessageReceived(m) if m.body == b"are you there?")),
            "{:?}",
            got.events
        );
    }

    /// A device restored from a backup makes its next prekeys under ids
    /// far above any it made since the backup: a relay holds (or handed
    /// out) those with other keys, and takes no id at or below them.
    #[test]
    fn a_restored_device_makes_prekeys_under_new_ids() {
        let Pair { _dirs, mut b, .. } = pair();
        let mut backup = Vec::new();
        b.store.backup(&mut backup).unwrap();
        // Published after the backup: lost with the device.
        let (_, before) = b.prekeys_for_relay(20, 101).unwrap();
        let highest = before.iter().map(|k| k.id).max().unwrap();
        drop(b);
        let (_restored_dir, store) = restored_store(&backup);
        let mut b = Engine::open(store, 102).unwrap();
        let (_, after) = b.prekeys_for_relay(20, 103).unwrap();
        assert!(
            after.iter().all(|k| k.id > highest),
            "ids made again: {:?} after {highest}",
            after.iter().map(|k| k.id).collect::<Vec<_>>()
        );
        // The step is on disk: not taken again at the next start.
        let next = b.prekeys.next_id();
        let store = b.store.clone();
        drop(b);
        let b = Engine::open(store, 104).unwrap();
        assert_eq!(b.prekeys.next_id(), next);
    }

    /// A restored device's start that fails after the prekey step (here a
    /// damaged contact record) and is tried again takes the step once.
    #[test]
    fn a_restore_tried_again_steps_the_prekey_ids_once() {
        let Pair {
            _dirs, b, a_key, ..
        } = pair();
        let mut backup = Vec::new();
        b.store.backup(&mut backup).unwrap();
        drop(b);
        let (_restored_dir, store) = restored_store(&backup);
        let base = PrekeyStore::from_bytes(
            &store
                .records(Kind::Prekeys)
                .unwrap()
                .get(PREKEYS_KEY)
                .unwrap()
                .unwrap(),
        )
        .unwrap()
        .next_id();
        store.damage_record_for_tests(Kind::Contacts, &a_key);
        assert!(Engine::open(store.clone(), 102).is_err());
        assert!(
            store.restored().unwrap(),
            "the restore is still to deal with"
        );
        // Mended (the contact dropped), the start goes through.
        store
            .records(Kind::Contacts)
            .unwrap()
            .remove(&a_key)
            .unwrap();
        let b = Engine::open(store.clone(), 103).unwrap();
        assert!(!store.restored().unwrap());
        assert_eq!(b.prekeys.next_id(), base + RESTORE_PREKEY_ID_STEP);
        assert!(
            store
                .records(Kind::Prekeys)
                .unwrap()
                .get(RESTORE_BASE_KEY)
                .unwrap()
                .is_none(),
            "the base outlived the restore"
        );
    }

    /// A device restored from a backup drops its sessions, but not the
    /// set-ups it had seen: one captured before (its prekeys are back with
    /// the backup) is refused as a replay, not taken as a new session.
    #[test]
    fn a_restored_device_refuses_a_replayed_set_up_it_had_seen() {
        let Pair {
            _dirs,
            mut a,
            mut b,
            a_key,
            b_key,
        } = pair();
        let first = a.send(&b_key, b"hi".to_vec(), 100).unwrap();
        assert!(matches!(
            Frame::from_bytes(&first.frame).unwrap(),
            Frame::Prekey(_)
        ));
        let got = b
            .receive(&a_key, std::slice::from_ref(&first.frame), 100, true)
            .unwrap();
        assert_eq!(got.accepted, vec![true]);
        let r = b.send(&a_key, b"hello".to_vec(), 101).unwrap();
        a.receive(&b_key, &[r.frame], 101, true).unwrap();
        let mut backup = Vec::new();
        b.store.backup(&mut backup).unwrap();
        drop(b);
        let (_restored_dir, store) = restored_store(&backup);
        let mut b = Engine::open(store, 102).unwrap();
        let got = b.receive(&a_key, &[first.frame], 102, true).unwrap();
        assert_eq!(got.accepted, vec![false], "a replay: {:?}", got.events);
        // And after a restart too (what was seen is on disk).
        let store = b.store.clone();
        drop(b);
        let mut b = Engine::open(store, 103).unwrap();
        assert!(!b.sessions.has(&a_key));
        // B's own next message sets up a new session, which a reads.
        let m = b.send(&a_key, b"back".to_vec(), 104).unwrap();
        let got = a.receive(&b_key, &[m.frame], 104, true).unwrap();
        assert_eq!(got.accepted, vec![true]);
    }

    #[test]
    fn a_device_restored_from_a_backup_starts_new_sessions_its_contact_reads() {
        let Pair {
            _dirs,
            mut a,
            mut b,
            a_key,
            b_key,
        } = pair();
        talk(&mut a, &mut b, &a_key, &b_key);
        let mut backup = Vec::new();
        a.store.backup(&mut backup).unwrap();
        // Life goes on after the backup.
        for i in 0..3 {
            let m = a.send(&b_key, format!("a{i}").into_bytes(), 101).unwrap();
            b.receive(&a_key, &[m.frame], 101, true).unwrap();
            let r = b.send(&a_key, format!("b{i}").into_bytes(), 101).unwrap();
            a.receive(&b_key, &[r.frame], 101, true).unwrap();
        }
        // The device is lost and restored from the backup.
        drop(a);
        let (_restored_dir, store) = restored_store(&backup);
        assert!(store.restored().unwrap());
        let mut a = Engine::open(store, 102).unwrap();
        assert!(!a.store.restored().unwrap(), "dealt with once");
        let m = a.send(&b_key, b"after".to_vec(), 102).unwrap();
        let got = b.receive(&a_key, &[m.frame], 102, true).unwrap();
        assert_eq!(got.accepted, vec![true]);
        assert!(
            got.events
                .iter()
                .any(|e| matches!(e, Event::MessageReceived(m) if m.body == b"after")),
            "{:?}",
            got.events
        );
        let r = b.send(&a_key, b"welcome back".to_vec(), 103).unwrap();
        let got = a.receive(&b_key, &[r.frame], 103, true).unwrap();
        assert!(
            got.events
                .iter()
                .any(|e| matches!(e, Event::MessageReceived(m) if m.body == b"welcome back"))
        );
    }

    /// A retry sends the frame an earlier retry sent, also after a restart
    /// (it is kept in the outbox entry).
    #[test]
    fn a_retry_sends_the_frame_it_sent_before_also_after_a_restart() {
        let Pair {
            _dirs: (da, db),
            mut a,
            mut b,
            a_key,
            b_key,
        } = pair();
        // a has heard from b (in this run): its retries may refresh.
        talk(&mut a, &mut b, &a_key, &b_key);
        let first = a.send(&b_key, b"away".to_vec(), 100).unwrap();
        a.attempted(first.pos, 100, None);
        let frame_at = |a: &mut Engine, at: u64| {
            let due = a.due(at, 1).unwrap();
            assert_eq!(due.len(), 1);
            a.attempted(due[0].pos, at, None);
            due[0].frame.clone()
        };
        let one = frame_at(&mut a, 1_000);
        assert_ne!(one, first.frame, "attempt 1: afresh (nothing kept yet)");
        let retry = frame_at(&mut a, 2_000);
        assert_ne!(retry, one, "attempt 2: afresh");
        assert_eq!(frame_at(&mut a, 3_000), retry, "attempt 3: kept");
        a.store.flush().unwrap();
        drop(a);
        let mut a = Engine::open(store(da.path()), 4_000).unwrap();
        assert_eq!(frame_at(&mut a, 4_000), retry, "kept across a restart");
        // Not heard from b since the restart: no fresh frame, even at a
        // power of two.
        assert_eq!(frame_at(&mut a, 5_000), retry, "attempt 1 after it");
        assert_eq!(frame_at(&mut a, 6_000), retry, "attempt 2 after it");
        // What b reads of it.
        drop(b);
        let mut b = Engine::open(store(db.path()), 6_000).unwrap();
        let got = b.receive(&a_key, &[retry], 6_000, true).unwrap();
        assert_eq!(got.accepted, vec![true]);
    }

    /// The same frame again (a relay's copy after the mesh's) is answered
    /// with its receipt once more, then no more: replaying it cannot be
    /// used to ask whether we are online.
    #[test]
    fn a_frame_seen_again_is_answered_once_more_then_not() {
        let Pair {
            _dirs,
            mut a,
            mut b,
            a_key,
            b_key,
        } = pair();
        let f = a.send(&b_key, b"hi".to_vec(), 100).unwrap().frame;
        let replies = |b: &mut Engine, at| {
            b.receive(&a_key, std::slice::from_ref(&f), at, false)
                .unwrap()
                .replies
                .len()
        };
        assert_eq!(replies(&mut b, 101), 1);
        assert_eq!(
            replies(&mut b, 102),
            1,
            "the relay's copy: the receipt again"
        );
        assert_eq!(replies(&mut b, 103), 0);
        assert_eq!(replies(&mut b, 104), 0);
    }

    /// A contact whose clock runs years ahead: its message in a temporary
    /// chat still goes after the retention counted on this device's clock.
    #[test]
    fn a_temporary_message_from_a_clock_far_ahead_still_goes_in_time() {
        let Pair {
            _dirs,
            mut a,
            mut b,
            a_key,
            b_key,
        } = temporary_pair();
        let ahead = b.send(&a_key, b"ahead".to_vec(), 4_000_000_000).unwrap();
        let got = a.receive(&b_key, &[ahead.frame], 200, true).unwrap();
        let stored = got.events.iter().find_map(|e| match e {
            Event::MessageReceived(m) if m.body == b"ahead" => Some(m.expires_at),
            _ => None,
        });
        assert_eq!(stored, Some(Some(260)));
        assert_eq!(a.store.history().purge_expired(259).unwrap(), 0);
        assert_eq!(a.store.history().purge_expired(260).unwrap(), 1);
    }

    /// A temporary-chat setting that went out on the mesh waits for its
    /// delivered receipt (it is left at relays on later attempts); a read
    /// receipt that went out on the mesh is done.
    #[test]
    fn a_setting_that_reached_the_mesh_stays_queued_until_delivered() {
        let Pair {
            _dirs,
            mut a,
            mut b,
            a_key,
            b_key,
        } = pair();
        let (mut due, _) = a.set_retention(&b_key, Some(3600), 101).unwrap();
        assert_eq!(due.len(), 1);
        let due = due.pop().unwrap();
        let queued = a.queued();
        a.published(&[due.pos]).unwrap();
        assert_eq!(a.queued(), queued, "the setting was dropped at the mesh");
        // Its delivered receipt ends it.
        let got = b.receive(&a_key, &[due.frame], 102, false).unwrap();
        a.receive(&b_key, &got.replies, 103, false).unwrap();
        assert_eq!(a.queued(), queued - 1);

        // A read receipt is done once on the mesh.
        let m = b.send(&a_key, b"hello".to_vec(), 104).unwrap();
        a.receive(&b_key, &[m.frame], 105, true).unwrap();
        let receipt = a
            .mark_read(&b_key, 106)
            .unwrap()
            .pop()
            .expect("a read receipt");
        let queued = a.queued();
        a.published(&[receipt.pos]).unwrap();
        assert_eq!(a.queued(), queued - 1);
    }

    #[test]
    fn frames_leave_before_their_writes_and_name_their_queue_entries() {
        let Pair {
            _dirs,
            mut a,
            mut b,
            a_key,
            b_key,
        } = pair();
        // A session both ways, on disk: only then may a frame leave early.
        let hello = a.send(&b_key, b"hello".to_vec(), 101).unwrap();
        assert!(!hello.early, "the first frame of a session waits");
        b.receive(&a_key, &[hello.frame], 102, true).unwrap();
        let reply = b.send(&a_key, b"hi".to_vec(), 102).unwrap();
        a.receive(&b_key, &[reply.frame], 103, true).unwrap();
        a.store().flush().unwrap();
        a.flushed();

        let store = Arc::clone(a.store());
        let mut left = Vec::new();
        let sent = a
            .send_many(&b_key, vec![b"one".to_vec(), b"two".to_vec()], 104, |s| {
                for x in s {
                    assert!(
                        store.outbox().get(x.pos).unwrap().is_none(),
                        "its queue entry was written before the frame left"
                    );
                    left.push((x.pos, x.frame.clone(), x.early));
                }
            })
            .unwrap();
        assert_eq!(left.len(), 2);
        assert!(
            left.iter().all(|l| l.2),
            "keys covered by a saved form on disk"
        );
        assert!(left[0].0 < left[1].0);
        for (s, (pos, frame, _)) in sent.iter().zip(&left) {
            assert_eq!((s.pos, &s.frame), (*pos, frame));
            let entry = store.outbox().get(*pos).unwrap().expect("queued");
            assert_eq!(entry.msg_id, s.message.msg_id);
        }
        let frames: Vec<Vec<u8>> = left.into_iter().map(|l| l.1).collect();
        let got = b.receive(&a_key, &frames, 105, true).unwrap();
        assert_eq!(got.accepted, vec![true, true]);
        // The acknowledgement names positions the outbox knows.
        let positions: Vec<u64> = sent.iter().map(|s| s.pos).collect();
        let events = a.delivered_direct(&positions).unwrap();
        assert_eq!(events.len(), 2);
        assert!(
            positions
                .iter()
                .all(|&p| store.outbox().get(p).unwrap().is_none())
        );
    }

    #[test]
    fn a_second_copy_of_a_frame_whose_receipt_was_lost_is_acknowledged_again() {
        let Pair {
            _dirs,
            mut a,
            mut b,
            a_key,
            b_key,
        } = pair();
        let crate::node::engine::Sent {
            message: sent,
            frame,
            ..
        } = a.send(&b_key, b"are you there".to_vec(), 101).unwrap();
        // Read (from one relay), and its receipt lost on the way back.
        let first = b
            .receive(&a_key, std::slice::from_ref(&frame), 102, false)
            .unwrap();
        assert_eq!(first.replies.len(), 1);
        // The same frame again (from the other relay): it no longer
        // decrypts, and is answered with the receipt again.
        let again = b
            .receive(&a_key, std::slice::from_ref(&frame), 110, false)
            .unwrap();
        assert!(again.events.is_empty());
        let back = a.receive(&b_key, &again.replies, 111, false).unwrap();
        assert_eq!(
            back.events,
            vec![Event::Receipt {
                message: sent,
                state: DeliveryState::Delivered
            }]
        );
        assert!(a.store.outbox().is_empty());
        // A third copy is no longer among the frames read: refused (the
        // sender's next fresh frame is read, and found already stored), by
        // either path; no receipt.
        let direct = b
            .receive(&a_key, std::slice::from_ref(&frame), 112, true)
            .unwrap();
        assert_eq!(direct.accepted, vec![false]);
        assert!(direct.replies.is_empty());
        // A contact removed and added again starts with nothing read.
        let contact = b.contacts[&a_key].clone();
        assert!(b.remove_contact(&a_key).unwrap());
        assert!(b.read_frames.get(&frame_key(&a_key, &frame)).is_none());
        b.contacts.insert(a_key, contact);
    }

    #[test]
    fn frames_read_are_remembered_newest_first_and_bounded() {
        let mut read = Recent::new(MAX_READ_FRAMES);
        let peer = [1u8; 32];
        let key = |n: u64| frame_key(&peer, &n.to_be_bytes());
        for n in 0..=MAX_READ_FRAMES as u64 {
            read.insert(key(n), (n, [0; 16]));
        }
        assert_eq!(read.map.len(), MAX_READ_FRAMES);
        assert_eq!(read.order.len(), MAX_READ_FRAMES);
        assert!(read.get(&key(0)).is_none());
        assert_eq!(read.get(&key(1)), Some((1, [0; 16])));
        // Another contact's identical bytes are another frame.
        assert!(
            read.get(&frame_key(&[2; 32], &1u64.to_be_bytes()))
                .is_none()
        );
        // The same frame again takes no second place.
        read.insert(key(1), (1, [0; 16]));
        assert_eq!(read.order.len(), MAX_READ_FRAMES);
        // Forgetting a contact takes its frames out of both.
        read.retain(|(p, _)| p != &peer);
        assert!(read.map.is_empty());
        assert!(read.order.is_empty());
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

        let crate::node::engine::Sent {
            message: sent,
            frame,
            ..
        } = a.send(&b_key, b"hello bob".to_vec(), 101).unwrap();
        let got = b
            .receive(&a_key, std::slice::from_ref(&frame), 102, false)
            .unwrap();
        assert_eq!(got.accepted, vec![true]);
        let [Event::MessageReceived(m)] = got.events.as_slice() else {
            panic!("{:?}", got.events)
        };
        assert_eq!(m.body, b"hello bob");
        // The same frame again: accepted, nothing new, and the same
        // receipt again (the first may have been lost on the way).
        let again = b.receive(&a_key, &[frame], 103, false).unwrap();
        assert_eq!(again.accepted, vec![true]);
        assert!(again.events.is_empty());
        assert_eq!(again.replies.len(), 1);

        let back = a.receive(&b_key, &got.replies, 104, false).unwrap();
        assert_eq!(
            back.events,
            vec![Event::Receipt {
                message: sent,
                state: DeliveryState::Delivered
            }]
        );
        assert!(a.store.outbox().is_empty());

        let read = b.mark_read(&a_key, 104).unwrap().pop().unwrap();
        // Queued until it reaches the contact or the mesh; a read receipt
        // has no history entry and no state events of its own.
        assert_eq!(b.queued(), 1);
        assert!(b.published(&[read.pos]).unwrap().is_empty());
        assert_eq!(b.queued(), 0);
        assert!(b.mark_read(&a_key, 104).unwrap().is_empty());
        let back = a.receive(&b_key, &[read.frame], 105, false).unwrap();
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
            let f = a.send(&b_key, b"one".to_vec(), 101).unwrap().frame;
            let got = b.receive(&a_key, &[f], 102, false).unwrap();
            a.receive(&b_key, &got.replies, 103, false).unwrap();
            b.store.flush().unwrap();
        }
        let mut b = Engine::open(store(db.path()), 200).unwrap();
        assert_eq!(b.identity().public().signing, b_key);
        let f = a.send(&b_key, b"two".to_vec(), 201).unwrap().frame;
        let got = b.receive(&a_key, &[f], 202, false).unwrap();
        assert!(matches!(
            got.events.as_slice(),
            [Event::MessageReceived(m)] if m.body == b"two"
        ));
        let r = b.send(&a_key, b"three".to_vec(), 203).unwrap().frame;
        let back = a.receive(&b_key, &[r], 204, false).unwrap();
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
        let f1 = a.send(&b_key, b"1".to_vec(), 101).unwrap().frame;
        let _lost = a.send(&b_key, b"2".to_vec(), 101).unwrap().frame;
        let f3 = a.send(&b_key, b"3".to_vec(), 101).unwrap().frame;
        let receipt = b.receive(&a_key, &[f1], 102, false).unwrap().replies;
        a.receive(&b_key, &receipt, 102, false).unwrap();
        let got = b.receive(&a_key, &[f3], 103, false).unwrap();
        // A resend request and the delivered receipt.
        assert_eq!(got.replies.len(), 2);
        let back = a.receive(&b_key, &got.replies, 104, false).unwrap();
        assert_eq!(back.accepted, vec![true, true]);
        // Message 2 is still queued: it is sent again, nothing is gone.
        assert!(back.replies.is_empty());
        let again = a.due(104, 10).unwrap();
        assert_eq!(again.len(), 1);
        let filled = b
            .receive(&a_key, &[again[0].frame.clone()], 105, false)
            .unwrap();
        assert!(matches!(
            filled.events.as_slice(),
            [Event::MessageReceived(m)] if m.body == b"2"
        ));
    }

    /// A contact that asks for resends at every frame is answered once per
    /// `RESEND_EVERY`: its requests cannot make what is queued for it due
    /// again and again.
    #[test]
    fn resend_requests_are_answered_at_most_once_per_interval() {
        let Pair {
            _dirs,
            mut a,
            mut b,
            a_key,
            b_key,
        } = pair();
        let f1 = a.send(&b_key, b"1".to_vec(), 101).unwrap().frame;
        let _lost = a.send(&b_key, b"2".to_vec(), 101).unwrap();
        let receipt = b.receive(&a_key, &[f1], 102, false).unwrap().replies;
        a.receive(&b_key, &receipt, 102, false).unwrap();
        let ask = |b: &mut Engine| {
            b.encrypt(&a_key, &Payload::Resend { from: 2 }.to_bytes())
                .unwrap()
        };
        let f = ask(&mut b);
        a.receive(&b_key, &[f], 104, false).unwrap();
        let again = a.due(104, 10).unwrap();
        assert_eq!(again.len(), 1);
        // Its next retry far off: only a resend request makes it due.
        a.attempted(again[0].pos, 104, Some(1_000));
        for t in 105..104 + RESEND_EVERY {
            let f = ask(&mut b);
            a.receive(&b_key, &[f], t, false).unwrap();
            assert!(a.due(t, 10).unwrap().is_empty(), "at {t}");
        }
        let t = 104 + RESEND_EVERY;
        let f = ask(&mut b);
        a.receive(&b_key, &[f], t, false).unwrap();
        assert_eq!(a.due(t, 10).unwrap().len(), 1);
    }

    #[test]
    fn a_gap_whose_messages_expired_at_their_sender_is_closed_and_not_asked_for_again() {
        let Pair {
            _dirs,
            mut a,
            mut b,
            a_key,
            b_key,
        } = pair();
        let conv = conversation_id(a.identity().public(), b.identity().public());
        let f1 = a.send(&b_key, b"1".to_vec(), 100).unwrap().frame;
        let receipt = b.receive(&a_key, &[f1], 101, false).unwrap().replies;
        a.receive(&b_key, &receipt, 101, false).unwrap();
        let _lost = a.send(&b_key, b"2".to_vec(), 102).unwrap();
        let later = 102 + MESSAGE_TTL;
        assert_eq!(a.expire(later).unwrap().len(), 1);
        let f3 = a.send(&b_key, b"3".to_vec(), later).unwrap().frame;
        let got = b.receive(&a_key, &[f3], later + 1, false).unwrap();
        // A resend request and the delivered receipt.
        assert_eq!(got.replies.len(), 2);
        let back = a.receive(&b_key, &got.replies, later + 2, false).unwrap();
        assert_eq!(back.accepted, vec![true, true]);
        assert_eq!(back.replies.len(), 1, "message 2 is gone");
        let closed = b.receive(&a_key, &back.replies, later + 3, false).unwrap();
        assert_eq!(closed.accepted, vec![true]);
        assert!(closed.replies.is_empty() && closed.events.is_empty());
        let state = b.conv_state(&conv).unwrap();
        assert_eq!((state.peer_contiguous, state.peer_ahead.len()), (3, 0));
        // Long after: the next message shows no gap, so nothing is asked.
        let f4 = a.send(&b_key, b"4".to_vec(), later + 100).unwrap().frame;
        let got = b.receive(&a_key, &[f4], later + 101, false).unwrap();
        assert_eq!(got.replies.len(), 1, "only the delivered receipt");
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
        let crate::node::engine::Sent {
            message: sent,
            frame: f,
            ..
        } = b.send(&a_key, b"still works".to_vec(), 101).unwrap();
        assert_eq!(sent.lamport, u64::MAX);
        let got = a.receive(&b_key, &[f], 102, false).unwrap();
        assert_eq!(got.events.len(), 1);
    }

    /// A send that fails part way (here: the conversation's record does
    /// not open) leaves nothing queued: it is not retried behind the
    /// caller's back, under numbers the next send would take again.
    #[test]
    fn a_send_that_fails_part_way_leaves_nothing_queued() {
        let Pair {
            _dirs,
            mut a,
            b,
            b_key,
            ..
        } = pair();
        let conv = conversation_id(a.identity().public(), b.identity().public());
        a.send(&b_key, b"first".to_vec(), 100).unwrap();
        let (queued, entries) = (a.queued(), a.store.outbox().len());
        a.store.damage_conversation_for_tests(&conv);
        assert!(a.send(&b_key, b"second".to_vec(), 101).is_err());
        assert_eq!(a.queued(), queued);
        assert_eq!(a.store.outbox().len(), entries);
    }

    /// A queued entry that does not open (a damaged disk block) does not
    /// stop the device: it starts with the others queued, and the damaged
    /// one stays on disk as it was.
    #[test]
    fn a_damaged_queued_message_leaves_the_others_and_the_start_alone() {
        let Pair {
            _dirs,
            mut a,
            b_key,
            ..
        } = pair();
        for i in 0..3u8 {
            a.send(&b_key, vec![i], 100).unwrap();
        }
        let seqs: Vec<u64> = a
            .store
            .outbox()
            .all()
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        let entries = seqs.len();
        assert!(entries >= 3);
        a.store.damage_outbox_for_tests(seqs[1]);
        a.store.flush().unwrap();
        drop(a);
        let a = Engine::open(store(_dirs.0.path()), 101).unwrap();
        assert_eq!(a.queued(), entries - 1);
        assert_eq!(a.store.outbox().len(), entries, "the damaged entry went");
    }

    /// A frame whose message could not be stored (here the conversation's
    /// record does not open) is not remembered as read: a copy of it is
    /// refused, not answered "delivered" (the sender's next fresh frame
    /// brings the message again).
    #[test]
    fn a_frame_not_stored_is_not_answered_delivered_when_it_comes_again() {
        let Pair {
            _dirs,
            mut a,
            mut b,
            a_key,
            b_key,
        } = pair();
        let conv = conversation_id(a.identity().public(), b.identity().public());
        let hi = a.send(&b_key, b"hi".to_vec(), 100).unwrap();
        b.store.damage_conversation_for_tests(&conv);
        assert!(
            b.receive(&a_key, std::slice::from_ref(&hi.frame), 100, true)
                .is_err()
        );
        assert!(b.read_frames.get(&frame_key(&a_key, &hi.frame)).is_none());
        // The copy: its key is spent, and it is not among the frames read.
        let again = b.receive(&a_key, &[hi.frame], 101, true);
        assert!(
            matches!(&again, Ok(h) if h.accepted == [false] && h.replies.is_empty()),
            "{again:?}"
        );
    }

    /// A contact whose clock claims the end of time (a bug, or on
    /// purpose) has its message kept, but does not pin our clock there:
    /// our next message still sorts after what we had, and a setting from
    /// that far ahead is refused.
    #[test]
    fn a_peer_clock_far_ahead_does_not_move_ours() {
        let Pair {
            _dirs,
            mut a,
            mut b,
            a_key,
            b_key,
        } = pair();
        let conv = conversation_id(a.identity().public(), b.identity().public());
        let hello = a.send(&b_key, b"hello".to_vec(), 100).unwrap();
        b.receive(&a_key, &[hello.frame], 100, false).unwrap();
        let mut state = b.conv_state(&conv).unwrap();
        state.lamport = u64::MAX - 1;
        b.put_conv_state(&conv, &state).unwrap();
        let far = b.send(&a_key, b"from the future".to_vec(), 101).unwrap();
        assert_eq!(far.message.lamport, u64::MAX);
        let got = a.receive(&b_key, &[far.frame], 102, false).unwrap();
        assert_eq!(got.accepted, vec![true]);
        assert_eq!(got.events.len(), 1, "kept: {:?}", got.events);
        assert_eq!(a.conv_state(&conv).unwrap().lamport, 1);
        let next = a.send(&b_key, b"still in order".to_vec(), 103).unwrap();
        assert_eq!(next.message.lamport, 2);
        // A retention setting from there would beat every later change.
        let setting = Payload::Retention {
            id: [7; 16],
            secs: Some(60),
            lamport: u64::MAX,
        };
        let frame = b.encrypt(&a_key, &setting.to_bytes()).unwrap();
        let got = a.receive(&b_key, &[frame], 104, false).unwrap();
        assert_eq!(got.accepted, vec![false]);
        assert_eq!(a.retention(&conv).unwrap(), None);
    }

    /// Both devices write first at the same moment, twice each. The one
    /// whose set-up loses learns it from the winner's first frame and has
    /// what it queued due at once (not after the backoff), encrypted in
    /// the winner's session: the winner reads all of it.
    #[test]
    fn the_device_whose_set_up_lost_sends_again_at_once() {
        let Pair {
            _dirs,
            a,
            b,
            a_key,
            b_key,
        } = pair();
        let (mut low, mut high, low_key, high_key) = if a_key < b_key {
            (a, b, a_key, b_key)
        } else {
            (b, a, b_key, a_key)
        };
        let from_low = low.send(&high_key, b"low".to_vec(), 1_000).unwrap();
        let high_1 = high.send(&low_key, b"high 1".to_vec(), 1_000).unwrap();
        let high_2 = high.send(&low_key, b"high 2".to_vec(), 1_000).unwrap();
        for s in [&high_1, &high_2] {
            high.attempted(s.pos, 1_000, None);
        }
        // The winner reads the loser's first frame, not its second.
        let got = low
            .receive(&high_key, &[high_1.frame, high_2.frame], 1_000, true)
            .unwrap();
        assert_eq!(got.accepted, vec![true, false]);
        assert!(!got.restarted);
        // The loser takes the winner's set-up: everything it queued is
        // due now.
        assert!(high.due(1_000, 10).unwrap().is_empty());
        let got = high
            .receive(&low_key, &[from_low.frame], 1_000, true)
            .unwrap();
        assert_eq!(got.accepted, vec![true]);
        assert!(got.restarted);
        let again = high.due(1_000, 10).unwrap();
        let mut positions: Vec<u64> = again.iter().map(|d| d.pos).collect();
        positions.sort_unstable();
        assert_eq!(positions, vec![high_1.pos, high_2.pos]);
        let frames: Vec<Vec<u8>> = again.into_iter().map(|d| d.frame).collect();
        let got = low.receive(&high_key, &frames, 1_000, true).unwrap();
        assert_eq!(got.accepted, vec![true, true]);
        let bodies: Vec<&[u8]> = got
            .events
            .iter()
            .filter_map(|e| match e {
                Event::MessageReceived(m) => Some(m.body.as_slice()),
                _ => None,
            })
            .collect();
        assert_eq!(bodies, vec![b"high 2".as_slice()]);
    }

    #[test]
    fn an_undelivered_message_is_retried_with_backoff_then_expires_with_an_event() {
        let Pair {
            _dirs,
            mut a,
            b_key,
            ..
        } = pair();
        let sent = a.send(&b_key, b"lost".to_vec(), 1_000).unwrap();
        // Went out on the mesh: not due again before the backoff.
        a.attempted(sent.pos, 1_000, None);
        assert!(a.due(1_001, 10).unwrap().is_empty());
        let again = a.due(1_000 + retry::backoff(1), 10).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].pos, sent.pos);
        // The first retry is a fresh ciphertext (later ones may send it
        // again: see `due`).
        assert_ne!(again[0].frame, sent.frame);
        assert!(a.expire(1_000 + MESSAGE_TTL - 1).unwrap().is_empty());
        let gone = a.expire(1_000 + MESSAGE_TTL).unwrap();
        assert_eq!(
            gone,
            vec![Event::Expired {
                message: sent.message
            }]
        );
        assert_eq!(a.queued(), 0);
        assert!(a.store.outbox().is_empty());
        assert!(a.due(u64::MAX, 10).unwrap().is_empty());
    }

    #[test]
    fn a_bundle_fetched_directly_gives_the_first_session_a_one_time_prekey() {
        let Pair {
            _dirs,
            mut a,
            mut b,
            a_key,
            b_key,
        } = pair();
        assert!(!a.has_session(&b_key));
        let ask = Frame::BundleRequest.to_bytes();
        // Not inside an envelope: only over a direct connection.
        let by_mesh = b
            .receive(&a_key, std::slice::from_ref(&ask), 101, false)
            .unwrap();
        assert_eq!(by_mesh.accepted, vec![false]);
        let answer = b.receive(&a_key, &[ask], 101, true).unwrap();
        assert_eq!(answer.accepted, vec![true]);
        assert_eq!(b.prekeys.one_time_count(), 1);
        let took = a.receive(&b_key, &answer.replies, 102, true).unwrap();
        assert_eq!(took.accepted, vec![true]);
        assert!(a.contact(&b_key).unwrap().bundle.one_time.is_some());
        // The first message uses that one-time prekey; b uses it up.
        let body = vec![7u8; crate::node::proto::MAX_BODY];
        let first = a.send(&b_key, body.clone(), 103).unwrap();
        let got = b.receive(&a_key, &[first.frame], 104, true).unwrap();
        assert!(matches!(
            got.events.as_slice(),
            [Event::MessageReceived(m)] if m.body == body
        ));
        assert_eq!(b.prekeys.one_time_count(), 0);
        // Written: a restarted b does not get the used prekey back.
        let reopened = PrekeyStore::from_bytes(
            &b.store
                .records(Kind::Prekeys)
                .unwrap()
                .get(PREKEYS_KEY)
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(reopened.one_time_count(), 0);
        // A bundle of someone else's is refused.
        let stranger_dir = tempfile::tempdir().unwrap();
        let stranger = Engine::open(store(stranger_dir.path()), 100).unwrap();
        let foreign = Frame::Bundle(stranger.invite(vec![], 100).unwrap().bundle).to_bytes();
        assert_eq!(
            a.receive(&b_key, &[foreign], 105, true).unwrap().accepted,
            vec![false]
        );
    }

    #[test]
    fn a_session_set_up_from_a_signed_prekey_the_contact_replaced_starts_again() {
        let Pair {
            _dirs,
            mut a,
            mut b,
            a_key,
            b_key,
        } = pair();
        // a holds b's invite of time 100. b makes a new signed prekey each
        // week and forgets a replaced one two weeks after its successor.
        let week = crypto::limits::SIGNED_PREKEY_ROTATION_SECS;
        let old_bundle = b.invite(vec![], 100).unwrap().bundle;
        assert_eq!(b.rotate_prekeys(100).unwrap(), (false, false));
        assert_eq!(b.rotate_prekeys(100 + week).unwrap(), (true, true));
        let now = 100 + week + crypto::limits::SIGNED_PREKEY_GRACE_SECS;
        assert_eq!(b.rotate_prekeys(now).unwrap(), (true, true));
        // a writes from the invite's key, which b no longer has.
        let first = a.send(&b_key, b"hello".to_vec(), now).unwrap();
        let lost = b.receive(&a_key, &[first.frame], now, true).unwrap();
        assert_eq!(lost.accepted, vec![false]);
        assert!(lost.events.is_empty());
        // a asks b for its bundle (as on every connection while b has not
        // answered), starts again from it, and sends the message anew.
        assert!(a.awaiting_answer(&b_key));
        assert!(a.awaiting_answers().contains(&b_key));
        let ask = Frame::BundleRequest.to_bytes();
        let answer = b.receive(&a_key, &[ask], now, true).unwrap();
        let took = a.receive(&b_key, &answer.replies, now, true).unwrap();
        assert!(took.restarted);
        let again = a.due(now, 10).unwrap();
        assert_eq!(again.len(), 1);
        let got = b
            .receive(&a_key, &[again[0].frame.clone()], now, true)
            .unwrap();
        assert!(matches!(
            got.events.as_slice(),
            [Event::MessageReceived(m)] if m.body == b"hello"
        ));
        // An older bundle of b's (the invite's, served again) does not
        // move a back to the key b forgot.
        assert!(a.awaiting_answer(&b_key));
        let old = a.receive(&b_key, &[Frame::Bundle(old_bundle).to_bytes()], now, true);
        assert!(!old.unwrap().restarted);
        // b's first message answers the session.
        let answer = b.send(&a_key, b"hi".to_vec(), now).unwrap();
        let read = a.receive(&b_key, &[answer.frame], now, true).unwrap();
        assert_eq!(read.events.len(), 1);
        assert!(!a.awaiting_answer(&b_key));
        assert!(a.awaiting_answers().is_empty());
    }

    #[test]
    fn a_contact_a_group_introduces_never_takes_a_name_already_used() {
        let Pair {
            _dirs, a, b_key, ..
        } = pair();
        let newcomer = [9u8; 32];
        let tag = crate::crypto::hex8(&newcomer[..4]);
        // Free: kept as it looks.
        assert_eq!(a.introduced_name(" carol\u{200B}", &newcomer), "carol");
        // a's contact "bob", alike or looking alike, and a key-shaped name:
        // the newcomer's key follows.
        for name in ["bob", "bo\u{200D}b", "\u{202E}bob", &hex::encode([7u8; 32])] {
            let got = a.introduced_name(name, &newcomer);
            assert!(got.ends_with(&format!(" ({tag})")), "{name:?} gave {got:?}");
            assert!(got.len() <= 64);
        }
        assert_eq!(a.introduced_name("", &newcomer), format!("({tag})"));
        // bob's own card keeps bob's name.
        assert_eq!(a.introduced_name("bob", &b_key), "bob");
    }

    #[test]
    fn a_contact_sets_up_at_most_so_many_sessions_a_minute() {
        let Pair {
            _dirs,
            mut a,
            mut b,
            a_key,
            b_key,
        } = pair();
        let now = 6_000; // the start of a minute
        let set_up = |a: &mut Engine, b: &mut Engine, at: u64| {
            // a forgets its sessions: its next message sets up another.
            a.sessions = Sessions::new();
            let f = a.send(&b_key, b"hi".to_vec(), at).unwrap().frame;
            b.receive(&a_key, &[f], at, true).unwrap().accepted
        };
        for _ in 0..MAX_SETUPS_PER_MINUTE {
            assert_eq!(set_up(&mut a, &mut b, now), vec![true]);
        }
        // Also in a later batch of the same minute: refused.
        assert_eq!(set_up(&mut a, &mut b, now + 59), vec![false]);
        // The next minute: taken again.
        assert_eq!(set_up(&mut a, &mut b, now + 60), vec![true]);
    }

    #[test]
    fn a_contact_asking_for_our_bundle_again_and_again_gets_one_one_time_prekey() {
        let Pair {
            _dirs,
            mut a,
            mut b,
            a_key,
            b_key,
        } = pair();
        let ask = Frame::BundleRequest.to_bytes();
        let one_time = |b: &mut Engine, at: u64| {
            let answer = b
                .receive(&a_key, std::slice::from_ref(&ask), at, true)
                .unwrap();
            assert_eq!(answer.accepted, vec![true]);
            let [reply] = answer.replies.as_slice() else {
                panic!("one bundle")
            };
            let Ok(Frame::Bundle(bundle)) = Frame::from_bytes(reply) else {
                panic!("a bundle")
            };
            bundle.one_time.expect("with a one-time prekey").id
        };
        // Asked in many batches: the same prekey each time, one used up.
        let first = one_time(&mut b, 101);
        for at in 102..150 {
            assert_eq!(one_time(&mut b, at), first);
        }
        assert_eq!(b.prekeys.one_time_count(), 1);
        // Once a session used it, the next ask gets a new one.
        let took = a
            .receive(
                &b_key,
                &b.receive(&a_key, std::slice::from_ref(&ask), 150, true)
                    .unwrap()
                    .replies,
                150,
                true,
            )
            .unwrap();
        assert_eq!(took.accepted, vec![true]);
        let hello = a.send(&b_key, b"hello".to_vec(), 151).unwrap();
        b.receive(&a_key, &[hello.frame], 152, true).unwrap();
        assert_eq!(b.prekeys.one_time_count(), 0);
        let second = one_time(&mut b, 153);
        assert_ne!(second, first);
        assert_eq!(b.prekeys.one_time_count(), 1);
        // Once the signed prekey is replaced, the unused one made before it
        // is not handed out again (it is forgotten some time later): a new
        // one is, and the old one stays until it is used or retired.
        let week = crate::crypto::limits::SIGNED_PREKEY_ROTATION_SECS;
        assert_eq!(b.rotate_prekeys(153 + week).unwrap(), (true, true));
        let third = one_time(&mut b, 154 + week);
        assert_ne!(third, second);
        assert_eq!(b.prekeys.one_time_count(), 2);
        assert_eq!(one_time(&mut b, 155 + week), third);
        // Nobody used them: each is forgotten once every signed prekey it
        // can have gone out with is (weekly rotations, each replaced key
        // kept two weeks after its successor).
        let mut left = Vec::new();
        for k in 2..=7 {
            b.rotate_prekeys(153 + k * week).unwrap();
            left.push(b.prekeys.one_time_count());
        }
        assert_eq!(left, [2, 2, 2, 1, 0, 0]);
    }

    /// A message that comes late, after a newer one was read, gets its own
    /// read receipt: each read receipt names what was not read before,
    /// not the newest messages.
    #[test]
    fn a_message_that_came_late_is_the_one_the_next_read_receipt_names() {
        let Pair {
            _dirs,
            mut a,
            mut b,
            a_key,
            b_key,
        } = pair();
        let first = a.send(&b_key, b"first".to_vec(), 101).unwrap();
        let second = a.send(&b_key, b"second".to_vec(), 101).unwrap();
        b.receive(&a_key, &[second.frame], 102, true).unwrap();
        let read = b.mark_read(&a_key, 103).unwrap().pop().unwrap();
        let back = a.receive(&b_key, &[read.frame], 103, false).unwrap();
        assert_eq!(
            back.events,
            vec![Event::Receipt {
                message: second.message,
                state: DeliveryState::Read
            }]
        );
        b.receive(&a_key, &[first.frame], 104, true).unwrap();
        let read = b.mark_read(&a_key, 105).unwrap().pop().unwrap();
        let back = a.receive(&b_key, &[read.frame], 105, false).unwrap();
        assert_eq!(
            back.events,
            vec![Event::Receipt {
                message: first.message,
                state: DeliveryState::Read
            }]
        );
        // Both show read in b's history.
        let conv = conversation_id(a.identity().public(), b.identity().public());
        let page = b.store.history().page(&conv, None, 10).unwrap();
        assert!(page.messages.iter().all(|m| m.state == DeliveryState::Read));
    }

    #[test]
    fn a_read_receipt_with_nobody_around_is_retried_then_dropped_quietly() {
        let Pair {
            _dirs,
            mut a,
            mut b,
            a_key,
            b_key,
        } = pair();
        let f = a.send(&b_key, b"read me".to_vec(), 101).unwrap().frame;
        b.receive(&a_key, &[f], 102, true).unwrap();
        let read = b.mark_read(&a_key, 103).unwrap().pop().unwrap();
        // Not published (no peers): due again after the backoff, freshly
        // encrypted, and a direct ack takes it out without any event.
        b.attempted(read.pos, 103, None);
        let again = b.due(103 + retry::backoff(1), 10).unwrap();
        assert_eq!(again.len(), 1);
        assert!(b.delivered_direct(&[again[0].pos]).unwrap().is_empty());
        assert_eq!(b.queued(), 0);
        // One that never gets anywhere expires without an `Expired` event
        // (that event is about the user's own messages).
        b.receive(
            &a_key,
            &[a.send(&b_key, b"2".to_vec(), 104).unwrap().frame],
            104,
            true,
        )
        .unwrap();
        b.mark_read(&a_key, 105).unwrap().pop().unwrap();
        assert!(b.expire(105 + MESSAGE_TTL).unwrap().is_empty());
        assert_eq!(b.queued(), 0);
        assert!(b.store.outbox().is_empty());
    }

    #[test]
    fn strangers_and_garbage_are_refused() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut a = Engine::open(store(da.path()), 100).unwrap();
        let mut b = Engine::open(store(db.path()), 100).unwrap();
        let b_key = a
            .add_contact(&b.invite(vec![], 100).unwrap(), "bob")
            .unwrap();
        let f = a.send(&b_key, b"hi".to_vec(), 101).unwrap().frame;
        let a_key = a.identity().public().signing;
        assert!(matches!(
            b.receive(&a_key, &[f], 102, false),
            Err(EngineError::UnknownSender)
        ));
        b.add_contact(&a.invite(vec![], 100).unwrap(), "alice")
            .unwrap();
        let got = b
            .receive(&a_key, &[vec![1, 2, 3], vec![]], 103, false)
            .unwrap();
        assert_eq!(got.accepted, vec![false, false]);
    }
}
