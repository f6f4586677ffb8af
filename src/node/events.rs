//! [`NodeEvent`]: what a node tells its user.

use libp2p::{Multiaddr, PeerId};

use super::proto::PresenceState;
use crate::relay::proto::Refusal;
use crate::store::{DeliveryState, MessageRef, StoredMessage};

/// Something the user of a node should hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeEvent {
    /// A message arrived and is stored.
    Message {
        /// The contact that wrote it (identity key).
        from: [u8; 32],
        /// The message.
        message: StoredMessage,
    },
    /// One of our messages moved forward (sent, delivered, read).
    Receipt {
        /// The message.
        message: MessageRef,
        /// Its new state.
        state: DeliveryState,
    },
    /// One of our messages expired undelivered; it is no longer retried.
    Expired {
        /// The message.
        message: MessageRef,
    },
    /// A device that is not a contact added our invite and introduced
    /// itself: a contact request (see [`super::NodeHandle::requests`]).
    ContactRequest {
        /// Its identity key.
        identity: [u8; 32],
        /// Its key's fingerprint.
        fingerprint: String,
    },
    /// A contact's presence changed.
    Presence {
        /// The contact (identity key).
        contact: [u8; 32],
        /// Its state.
        state: PresenceState,
        /// When it was last seen active, Unix milliseconds (its newest beacon).
        last_seen_ms: u64,
    },
    /// The node listens on a new address.
    Listening {
        /// The address.
        addr: Multiaddr,
    },
    /// A connection to a peer opened.
    Connected {
        /// The peer.
        peer: PeerId,
    },
    /// The last connection to a peer closed.
    Disconnected {
        /// The peer.
        peer: PeerId,
    },
    /// A relay refused to hold one of our messages, for this reason (the
    /// message stays queued for the other paths and relays).
    RelayRefused {
        /// The message.
        message: MessageRef,
        /// The relay.
        relay: PeerId,
        /// Why.
        reason: Refusal,
    },
    /// One of our relays refused a request about our own mailbox: to
    /// fetch our mail (`"fetch"`), to delete what we took (`"ack"`), or to
    /// hold our prekeys (`"publish"`). `Stale` here usually means this
    /// device's clock is off by more than five minutes; until it is set
    /// right, mail left at that relay does not reach us.
    MailboxRefused {
        /// The relay.
        relay: PeerId,
        /// Which request.
        request: &'static str,
        /// Why.
        reason: Refusal,
    },
    /// A relay was found in the DHT and is now one of ours.
    RelayFound {
        /// The relay.
        relay: PeerId,
    },
    /// One of our relays holds a circuit reservation for us: peers that
    /// cannot dial this device reach it through that relay.
    RelayReserved {
        /// The relay.
        relay: PeerId,
    },
    /// Mail held for us at a relay was fetched and stored.
    Drained {
        /// The relay.
        relay: PeerId,
        /// Envelopes fetched in this batch.
        envelopes: usize,
    },
    /// One of our relays holds our prekey bundle.
    PrekeysPublished {
        /// The relay.
        relay: PeerId,
        /// One-time prekeys it has left to hand out.
        one_time: u32,
    },
    /// Temporary messages reached the end of their time and were deleted
    /// from this device's history.
    Disappeared {
        /// How many.
        messages: usize,
    },
    /// The conversation with a contact or a group was cleared on this
    /// device ([`super::NodeHandle::clear_history`]).
    Cleared {
        /// The contact's identity key or the group's id.
        with: [u8; 32],
        /// How many messages went.
        messages: usize,
    },
    /// A message was deleted from this device
    /// ([`super::NodeHandle::delete_message`]).
    Deleted {
        /// The contact's identity key or the group's id.
        with: [u8; 32],
        /// The message.
        message: MessageRef,
    },
    /// Every chunk of a media message is here: its file can be read
    /// ([`super::NodeHandle::media`]).
    MediaReady {
        /// The message.
        message: MessageRef,
    },
    /// The file of a media message is not fetched for now: it would take
    /// the media this device keeps past its budget
    /// ([`super::NodeConfig::media_budget`]). It is fetched once deleting
    /// messages with files makes room (chunks of it a relay holds come
    /// then too, when that mailbox is read again from its start). Said
    /// once while the message is followed.
    MediaHeld {
        /// The message.
        message: MessageRef,
        /// Bytes the file still needs (at most).
        needs: u64,
        /// Bytes left in the budget now (files being fetched count as
        /// taken).
        free: u64,
    },
    /// One of our group messages expired before this member's device
    /// acknowledged it: it is no longer sent to that member, and the
    /// message stays short of delivered.
    GroupExpired {
        /// The message.
        message: MessageRef,
        /// The member (identity key).
        member: [u8; 32],
    },
    /// A member's receipt for one of our group messages: how many of the
    /// members it went to have it, and have read it.
    GroupReceipt {
        /// The message.
        message: MessageRef,
        /// Members whose devices stored it.
        delivered: u32,
        /// Members who read it.
        read: u32,
        /// Members it went to (the others, when it was sent).
        members: u32,
    },
    /// A group's members, name or retention changed, or this device
    /// joined or left it.
    GroupChanged {
        /// The group (its id, also its conversation id).
        group: [u8; 32],
    },
    /// A 1:1 conversation became temporary, or permanent again: for
    /// messages written from now on by either side.
    RetentionChanged {
        /// The conversation.
        conversation: [u8; 32],
        /// The contact at the other side.
        contact: [u8; 32],
        /// Seconds messages live; `None`: kept.
        secs: Option<u64>,
    },
    /// A contact that a group made (from a member's card), and that the
    /// person never took up, is in no group this device is in any more:
    /// it is no longer a contact (its conversation stays).
    ContactForgotten {
        /// Its identity key.
        contact: [u8; 32],
        /// The name it had.
        name: String,
    },
    /// A contact's account has a new device list (a device was named
    /// otherwise, added or removed); it came from the device `contact`.
    DevicesChanged {
        /// The contact device that sent it.
        contact: [u8; 32],
        /// What changed.
        change: crate::node::engine::DevicesChange,
    },
    /// A contact's account signed two different device lists with the
    /// same serial (it came from the device `contact`): its account key
    /// signs for someone else too. The list held is kept; the person
    /// should compare safety numbers with that contact again.
    DevicesConflict {
        /// The contact device that sent the second list.
        contact: [u8; 32],
        /// The account.
        account: [u8; 32],
        /// The serial both lists carry.
        serial: u64,
    },
    /// A device that the newest list of a contact's account names
    /// introduced itself, and is a contact now (of its own, named after
    /// that contact and the device): the account vouches for it.
    ContactDevice {
        /// The device's identity key.
        contact: [u8; 32],
        /// The account.
        account: [u8; 32],
        /// The name it was given.
        name: String,
    },
    /// The account's first device shared its contacts with this device
    /// (which joined the account): these are contacts here now, and each
    /// is told who this device is.
    AccountContacts {
        /// Their identity keys.
        added: Vec<[u8; 32]>,
    },
    /// A new device joined this account with a link code made here; it
    /// is a contact now, and every contact is sent the new list.
    DeviceLinked {
        /// Its identity key.
        device: [u8; 32],
        /// The name it is listed under.
        name: String,
    },
    /// This device joined an account: the account's first device sent the
    /// list naming it, which is this device's list from now on.
    AccountJoined {
        /// The account (its first device's identity key).
        account: [u8; 32],
        /// The list's serial.
        serial: u64,
    },
    /// A device was removed from this account here (on its first
    /// device): every contact is sent the list without it, the removed
    /// device too, which stops being a contact here once that is done
    /// ([`NodeEvent::ContactDeviceRemoved`] then).
    DeviceUnlinked {
        /// Its identity key.
        device: [u8; 32],
        /// The name it was listed under.
        name: String,
    },
    /// A contact's account (or this device's own) removed one of its
    /// devices, which was a contact here: it is not one any more (what
    /// was queued for it is given up), and what it writes from now on
    /// comes as a contact request. One in a group with this device stays
    /// a contact.
    ContactDeviceRemoved {
        /// The device's identity key.
        contact: [u8; 32],
        /// The account.
        account: [u8; 32],
        /// The name it had.
        name: String,
    },
    /// The account's first device removed this device from the account:
    /// it is an account of its own again, and the account's contacts no
    /// longer take it for the account's.
    AccountLeft {
        /// The account it was in.
        account: [u8; 32],
        /// The serial of the list without it.
        serial: u64,
    },
    /// A contact's relay served its prekey bundle; the session we start
    /// with it will use that (and its one-time prekey, if it came with
    /// one).
    ContactPrekeys {
        /// The contact (identity key).
        contact: [u8; 32],
        /// The relay.
        relay: PeerId,
        /// Whether a one-time prekey came with it.
        one_time: bool,
    },
}
