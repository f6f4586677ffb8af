//! The local API's messages: one JSON object per line, each way.
//!
//! A client writes a request such as `{"op":"send","to":"bob","text":"hi"}`
//! and reads exactly one answer line for it, in order:
//! `{"ok": …}` or `{"error": {"kind": "…", "message": "…"}}`. After
//! `{"op":"events"}` the connection carries events instead, one
//! `{"event": …}` line each, until the client goes away.

use serde::{Deserialize, Serialize};

use crate::node::{ContactInfo, NodeEvent, PresenceState};
pub(crate) use crate::store::hex;
use crate::store::{DeliveryState, StoredMessage, unhex};

/// Longest request line accepted, in bytes (a message body of 64 KiB, JSON
/// escaped, fits).
pub const MAX_LINE: usize = 512 * 1024;
/// Most messages one history request returns.
pub const MAX_PAGE: usize = 500;
/// Message text in one history answer, about (a page stops at the message
/// that passes it; the next page goes on from there).
pub const PAGE_BYTES: usize = 2 * 1024 * 1024;
/// A history page when the request names no limit.
pub const DEFAULT_PAGE: usize = 50;

/// A request to the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Requests without fields are empty structs so that unknown fields are
// refused for them too.
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Who this device is, and its invite code.
    Id {},
    /// Every contact.
    Contacts {},
    /// Adds the contact an invite code names, under `name`.
    AddContact {
        /// What to call it.
        name: String,
        /// Its invite code.
        code: String,
        /// Accept a new key for a name already in use.
        #[serde(default)]
        accept_new_key: bool,
    },
    /// Records that the safety numbers were compared (or takes it back).
    VerifyContact {
        /// The contact: its name or identity key (hex).
        contact: String,
        /// `false` takes a verification back.
        #[serde(default = "yes")]
        verified: bool,
    },
    /// The contact requests waiting: devices that added this device's
    /// invite and are not contacts.
    Requests {},
    /// Accepts a contact request: the device becomes a contact called
    /// `name`, and what it sent meanwhile is read.
    AcceptRequest {
        /// Its identity key (hex).
        identity: String,
        /// What to call it.
        name: String,
    },
    /// Declines a contact request: what it sent is dropped, and its later
    /// introductions are ignored.
    DeclineRequest {
        /// Its identity key (hex).
        identity: String,
    },
    /// This account's device list.
    Devices {},
    /// A link code for a new device to join this account (only on the
    /// account's first device; usable once, for ten minutes).
    LinkDevice {},
    /// Joins the account whose first device made the link `code`, under
    /// the name `name` (only on a device with no contacts and no groups).
    /// The answer comes at once; the `account_joined` event when the
    /// account's device has added this one.
    JoinAccount {
        /// The link code (`meshchat-link:…`).
        code: String,
        /// This device's name in the account's list.
        name: String,
    },
    /// Removes a device from this account (only on its first device):
    /// every contact is sent the list without it, the removed device too.
    RemoveDevice {
        /// The device: its name in the list or its identity key (hex).
        device: String,
    },
    /// Names this device in its account's device list; every contact is
    /// sent the new list.
    NameDevice {
        /// The name (at most 64 bytes of printable text; empty: none).
        name: String,
    },
    /// Forgets a contact (the conversation stays).
    RemoveContact {
        /// The contact: its name or identity key (hex).
        contact: String,
    },
    /// Writes a message.
    Send {
        /// The contact: name or identity key (hex).
        to: String,
        /// The text.
        text: String,
    },
    /// Sends a file (at most 32 MiB) that the daemon reads from `path`.
    SendFile {
        /// The contact or group: name or identity key / id (hex).
        to: String,
        /// An absolute path to a regular file; its name goes with it.
        path: String,
        /// Its media type (`image/png`…); none by default.
        #[serde(default)]
        mime: Option<String>,
    },
    /// Writes the file of a media message to a new file at `path`.
    SaveFile {
        /// The contact or group the message is in.
        with: String,
        /// The message id (hex).
        id: String,
        /// An absolute path; the file must not exist.
        path: String,
        /// Its sender's identity key (hex): needed when messages of more
        /// than one sender carry that id.
        #[serde(default)]
        from: Option<String>,
    },
    /// A page of a conversation, newest first.
    History {
        /// The contact: name or identity key (hex).
        with: String,
        /// A cursor from the previous page's `next`.
        #[serde(default)]
        before: Option<String>,
        /// How many messages (default 50, at most 500).
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Every conversation with its newest message and unread count.
    Chats {},
    /// Marks a conversation read (sends the read receipt).
    MarkRead {
        /// The contact: name or identity key (hex).
        with: String,
    },
    /// Deletes every message of a conversation from this device, with
    /// the files they carried (no receipt is sent; the contact or group
    /// stays).
    ClearHistory {
        /// The contact or group: name or identity key / id (hex).
        with: String,
    },
    /// Deletes one message from this device (with its file, if any).
    DeleteMessage {
        /// The contact or group the message is in.
        with: String,
        /// The message id (hex).
        id: String,
        /// Its sender's identity key (hex): needed when messages of more
        /// than one sender carry that id.
        #[serde(default)]
        from: Option<String>,
    },
    /// Shows this presence to contacts: `online` or `away`.
    SetPresence {
        /// `online` or `away`.
        state: String,
    },
    /// Writes a conversation as JSON (decrypted), or with no `with` a
    /// backup of the whole store (encrypted), to a new file.
    Export {
        /// The contact or group: name, identity key or group id (hex);
        /// none for a backup.
        #[serde(default)]
        with: Option<String>,
        /// An absolute path; the file must not exist.
        path: String,
    },
    /// Connections, addresses, presence, queue.
    Status {},
    /// The groups this device knows (joined or left).
    Groups {},
    /// Creates a group with these contacts (names or identity keys); this
    /// device is its first admin.
    CreateGroup {
        /// The group's name.
        name: String,
        /// Contacts to add.
        members: Vec<String>,
        /// Messages disappear this many seconds after sending.
        #[serde(default)]
        retention: Option<u64>,
        /// The name this device goes by in the group (default: "me").
        #[serde(default, rename = "as")]
        as_name: Option<String>,
    },
    /// Adds a contact to a group (admins only).
    GroupAdd {
        /// The group (name or id).
        group: String,
        /// The contact (name or identity key).
        contact: String,
        /// Make it an admin.
        #[serde(default)]
        admin: bool,
    },
    /// Removes a member from a group (admins only).
    GroupRemove {
        /// The group (name or id).
        group: String,
        /// The member (name or identity key).
        member: String,
    },
    /// Renames a group (admins only).
    GroupRename {
        /// The group (name or id).
        group: String,
        /// Its new name.
        name: String,
    },
    /// Makes a member an admin, or a member again (admins only).
    GroupRole {
        /// The group (name or id).
        group: String,
        /// The member (name or identity key).
        member: String,
        /// `true`: admin; `false`: member.
        admin: bool,
    },
    /// Leaves a group.
    GroupLeave {
        /// The group (name or id).
        group: String,
    },
    /// Makes a chat temporary (messages written from now on disappear
    /// `secs` seconds after sending, on every device and relay) or, with
    /// no `secs`, permanent again. For a group: admins only.
    Retention {
        /// The contact or group (name or id).
        with: String,
        /// Seconds; absent or null: keep messages.
        #[serde(default)]
        secs: Option<u64>,
    },
    /// Turns this connection into a stream of events.
    Events {},
}

fn yes() -> bool {
    true
}

/// What a request was refused for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Not JSON, not a known request, or a field out of bounds.
    BadRequest,
    /// No contact by that name or key.
    UnknownContact,
    /// No group by that name or id.
    UnknownGroup,
    /// The invite code does not decode or its signatures do not verify.
    BadInvite,
    /// The name belongs to a contact with another key; accept explicitly.
    KeyChanged,
    /// No token, or the wrong one (HTTP only).
    Unauthorized,
    /// The node has stopped.
    Stopped,
    /// Anything else (the message says what).
    Failed,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What kind of refusal.
    pub kind: ErrorKind,
    /// One line for a human.
    pub message: String,
}

impl ApiError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

/// One answer line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// The request's result.
    Ok(serde_json::Value),
    /// Why it was refused.
    Error(ApiError),
    /// One event (after `events`).
    Event(serde_json::Value),
}

/// 32 bytes from 64 hex digits.
pub fn unhex32(text: &str) -> Option<[u8; 32]> {
    unhex(text)?.try_into().ok()
}

/// The state's name on the API.
pub fn state_name(s: DeliveryState) -> &'static str {
    match s {
        DeliveryState::Pending => "pending",
        DeliveryState::Sent => "sent",
        DeliveryState::StoredAtRelay => "stored_at_relay",
        DeliveryState::Delivered => "delivered",
        DeliveryState::Read => "read",
    }
}

/// The presence's name on the API.
pub fn presence_name(s: PresenceState) -> &'static str {
    match s {
        PresenceState::Online => "online",
        PresenceState::Away => "away",
        PresenceState::Offline => "offline",
    }
}

/// A message as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView {
    /// Its id (hex).
    pub id: String,
    /// `in` (from the contact) or `out` (written here).
    pub direction: String,
    /// Who wrote it: `me` or the contact's name.
    pub from: String,
    /// The writer's identity key (hex).
    pub sender: String,
    /// Its place in the conversation (Lamport clock).
    pub lamport: u64,
    /// The writer's clock when written, Unix seconds.
    pub sent_at: u64,
    /// The text (invalid UTF-8 replaced); for a file, a line naming it.
    pub text: String,
    /// The file a media message carries (`save_file` writes it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<Box<MediaView>>,
    /// For messages written here: pending, sent, stored_at_relay,
    /// delivered, read.
    pub state: String,
    /// When it disappears, Unix seconds (temporary chats).
    pub expires_at: Option<u64>,
}

impl MessageView {
    /// The view of `m`; `mine` tells the identity keys of this account's
    /// devices (this one's, and those whose copies it files), `contact`
    /// is the name of the other side.
    pub fn of(m: &StoredMessage, mine: &dyn Fn(&[u8; 32]) -> bool, contact: &str) -> Self {
        let out = mine(&m.sender);
        let media = match crate::crypto::media::Manifest::from_body(&m.body) {
            None => None,
            Some(Ok(f)) => Some(Box::new(MediaView {
                name: f.name.clone(),
                mime: f.mime.clone(),
                size: f.size,
            })),
            Some(Err(_)) => Some(Box::new(MediaView {
                name: String::new(),
                mime: String::new(),
                size: 0,
            })),
        };
        let text = match &media {
            None => String::from_utf8_lossy(&m.body).into_owned(),
            Some(f) if f.name.is_empty() && f.size == 0 => "[a file that cannot be read]".into(),
            Some(f) => format!("[file] {} ({} bytes)", f.name, f.size),
        };
        Self {
            id: hex(&m.msg_id),
            direction: if out { "out" } else { "in" }.into(),
            from: if out { "me".into() } else { contact.into() },
            sender: hex(&m.sender),
            lamport: m.lamport,
            sent_at: m.sent_at,
            text,
            media,
            state: state_name(m.state).into(),
            expires_at: m.expires_at,
        }
    }
}

/// The file of a media message, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaView {
    /// Its name, as its sender gave it (no directories).
    pub name: String,
    /// Its media type (may be empty).
    pub mime: String,
    /// Its length in bytes.
    pub size: u64,
}

/// A group as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    /// Its id (hex; also names it in send, history and read).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Whether this device is in it (false after leaving or removal).
    pub joined: bool,
    /// Messages disappear this many seconds after sending (temporary).
    pub retention: Option<u64>,
    /// Its members.
    pub members: Vec<MemberView>,
}

/// A group member as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// Its name in the group.
    pub name: String,
    /// Its identity key (hex).
    pub identity: String,
    /// admin or member.
    pub role: String,
}

impl GroupView {
    /// The view of `g`.
    pub fn of(g: &crate::node::engine::GroupInfo) -> Self {
        Self {
            id: hex(&g.id),
            name: g.name.clone(),
            joined: g.joined,
            retention: g.retention,
            members: g
                .members
                .iter()
                .map(|(key, name, role)| MemberView {
                    name: name.clone(),
                    identity: hex(key),
                    role: match role {
                        crate::node::groups::Role::Admin => "admin",
                        crate::node::groups::Role::Member => "member",
                    }
                    .into(),
                })
                .collect(),
        }
    }
}

/// A contact as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactView {
    /// What the user calls it.
    pub name: String,
    /// Its identity key (hex).
    pub identity: String,
    /// Its libp2p peer id.
    pub peer_id: Option<String>,
    /// Whether the safety numbers were compared.
    pub verified: bool,
    /// The safety number to compare.
    pub safety_number: String,
    /// online, away or offline.
    pub presence: String,
    /// Its newest presence beacon, Unix milliseconds.
    pub last_seen_ms: Option<u64>,
    /// Its account's devices, if it sent its device list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<DevicesView>,
    /// A group made it a contact, and it goes when no group this device
    /// is in has it any more (until the person takes it up).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_group: bool,
}

/// One device of an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceView {
    /// Its identity key (hex).
    pub identity: String,
    /// What its owner calls it (may be empty).
    pub name: String,
    /// When it was added, Unix seconds.
    pub added_at: u64,
}

/// An account's device list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesView {
    /// The account key (hex): its first device's identity key.
    pub account: String,
    /// The list's serial: one higher at each change.
    pub serial: u64,
    /// Its devices, the account's own first.
    pub devices: Vec<DeviceView>,
}

impl DevicesView {
    /// The view of `d`.
    pub fn of(d: &crate::node::DevicesInfo) -> Self {
        Self {
            account: hex(&d.account),
            serial: d.serial,
            devices: d
                .devices
                .iter()
                .map(|x| DeviceView {
                    identity: hex(&x.identity),
                    name: x.name.clone(),
                    added_at: x.added_at,
                })
                .collect(),
        }
    }
}

impl ContactView {
    /// The view of `c` with its presence, if heard.
    pub fn of(c: &ContactInfo, presence: Option<(PresenceState, u64)>) -> Self {
        Self {
            name: c.name.clone(),
            identity: hex(&c.identity),
            peer_id: c.peer_id.map(|p| p.to_string()),
            verified: c.verified,
            safety_number: c.safety_number.clone(),
            presence: presence_name(presence.map_or(PresenceState::Offline, |p| p.0)).into(),
            last_seen_ms: presence.map(|p| p.1),
            devices: c.devices.as_ref().map(DevicesView::of),
            from_group: c.from_group,
        }
    }
}

/// A page of history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageView {
    /// Newest first.
    pub messages: Vec<MessageView>,
    /// The cursor for the next (older) page; `None` at the beginning.
    pub next: Option<String>,
}

/// What `send` answers: the new message, stored and queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentView {
    /// Its id (hex): receipts name it.
    pub id: String,
    /// Its state now.
    pub state: String,
}

/// An event as the API shows it. `contact` fields hold the contact's
/// name (or its hex key if it is not a contact).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventView {
    /// A message arrived.
    Message {
        /// From whom.
        contact: String,
        /// The group it was written in (hex id); absent for 1:1.
        #[serde(skip_serializing_if = "Option::is_none")]
        group: Option<String>,
        /// That group's name.
        #[serde(skip_serializing_if = "Option::is_none")]
        group_name: Option<String>,
        /// The message.
        message: MessageView,
    },
    /// One of our messages moved on.
    Receipt {
        /// Its id (hex).
        id: String,
        /// Its new state.
        state: String,
    },
    /// One of our messages expired undelivered.
    Expired {
        /// Its id (hex).
        id: String,
    },
    /// A device that is not a contact added this device's invite and
    /// asks to become one (`requests`, `accept_request`, `decline_request`).
    ContactRequest {
        /// Its identity key (hex).
        identity: String,
        /// Its key's fingerprint, to compare with its owner.
        fingerprint: String,
    },
    /// A contact's presence changed.
    Presence {
        /// Whose: the name.
        contact: String,
        /// Whose: the identity key (hex), which two contacts never share.
        identity: String,
        /// online, away or offline.
        state: String,
        /// Its newest beacon, Unix milliseconds.
        last_seen_ms: u64,
    },
    /// A relay refused to hold one of our messages.
    RelayRefused {
        /// The message (hex id).
        id: String,
        /// The relay's peer id.
        relay: String,
        /// Why.
        reason: String,
    },
    /// One of our relays refused a request about our own mailbox.
    MailboxRefused {
        /// The relay's peer id.
        relay: String,
        /// fetch, ack or publish.
        request: String,
        /// Why, by name (`stale`: this device's clock is likely off).
        reason: String,
    },
    /// Mail held at a relay was fetched.
    Drained {
        /// The relay's peer id.
        relay: String,
        /// How many envelopes.
        envelopes: usize,
    },
    /// A connection opened.
    Connected {
        /// The peer id.
        peer: String,
    },
    /// The last connection to a peer closed.
    Disconnected {
        /// The peer id.
        peer: String,
    },
    /// Every piece of a media message's file is here (`save_file` now
    /// writes it).
    MediaReady {
        /// The message id (hex).
        id: String,
        /// The conversation: the contact's name, or the group's id (hex).
        with: String,
        /// Who sent the file: its name.
        contact: String,
        /// Who sent the file: its identity key (hex).
        identity: String,
        /// The group's id (hex); absent for 1:1.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
    },
    /// A media message's file is not fetched for now: the media kept on
    /// this device would pass its budget. It is fetched once deletions
    /// make room (what a relay holds of it too).
    MediaHeld {
        /// The message id (hex).
        id: String,
        /// The conversation: the contact's name, or the group's id (hex).
        with: String,
        /// Who sent the file: its name.
        contact: String,
        /// Who sent the file: its identity key (hex).
        identity: String,
        /// The group's id (hex); absent for 1:1.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
        /// Bytes the file still needs (at most).
        needs: u64,
        /// Bytes left in the budget.
        free: u64,
    },
    /// One of our group messages expired before a member's device had it.
    GroupExpired {
        /// The message id (hex).
        id: String,
        /// The group id (hex).
        group: String,
        /// The member: its name.
        contact: String,
        /// The member: its identity key (hex).
        identity: String,
    },
    /// A member's receipt moved the count for one of our group messages.
    GroupReceipt {
        /// The message id (hex).
        id: String,
        /// Members whose devices have it.
        delivered: u32,
        /// Members who read it.
        read: u32,
        /// Members it went to.
        members: u32,
    },
    /// A group changed (members, name, retention) or we joined or left it.
    GroupChanged {
        /// The group id (hex).
        group: String,
    },
    /// A 1:1 chat became temporary or permanent again (either side).
    RetentionChanged {
        /// The contact.
        with: String,
        /// Seconds messages live from now on; null: kept.
        secs: Option<u64>,
    },
    /// A contact that a group made is in no group of ours any more, and
    /// is no longer a contact (the person never took it up).
    ContactForgotten {
        /// The name it had.
        with: String,
        /// Its identity key (hex).
        identity: String,
    },
    /// A contact's account has a new device list: a device was named
    /// otherwise, added or removed.
    DevicesChanged {
        /// The contact that sent it.
        with: String,
        /// Its identity key (hex).
        identity: String,
        /// The new list.
        devices: DevicesView,
        /// Identity keys (hex) of devices it adds.
        added: Vec<String>,
        /// Of devices it removes.
        removed: Vec<String>,
        /// Of devices it names otherwise.
        renamed: Vec<String>,
    },
    /// A contact's account signed two different device lists with one
    /// serial: its account key signs for someone else too. The list held
    /// is kept; compare safety numbers with that contact again.
    DevicesConflict {
        /// The contact that sent the second list.
        with: String,
        /// Its identity key (hex).
        identity: String,
        /// The account (hex).
        account: String,
        /// The serial both lists carry.
        serial: u64,
    },
    /// A device of a contact's account (its newest device list names it)
    /// introduced itself and is a contact now.
    ContactDevice {
        /// The name it was given.
        with: String,
        /// Its identity key (hex).
        identity: String,
        /// The account (hex).
        account: String,
    },
    /// The account's first device shared its contacts with this device
    /// (which joined the account): these are contacts now.
    AccountContacts {
        /// Their names.
        contacts: Vec<String>,
        /// Their identity keys (hex).
        identities: Vec<String>,
    },
    /// A new device joined this account with a link code made here.
    DeviceLinked {
        /// Its identity key (hex).
        identity: String,
        /// The name it is listed under.
        name: String,
    },
    /// This device joined an account: its list is the account's now.
    AccountJoined {
        /// The account (hex).
        account: String,
        /// The list's serial.
        serial: u64,
    },
    /// A device was removed from this account here; it stops being a
    /// contact once it has the new list (`contact_device_removed` then).
    DeviceUnlinked {
        /// Its identity key (hex).
        identity: String,
        /// The name it was listed under.
        name: String,
    },
    /// A contact's account (or this one) removed one of its devices,
    /// which is no longer a contact here.
    ContactDeviceRemoved {
        /// The name it had.
        with: String,
        /// Its identity key (hex).
        identity: String,
        /// The account (hex).
        account: String,
    },
    /// The account's first device removed this device: it is an account
    /// of its own again.
    AccountLeft {
        /// The account it was in (hex).
        account: String,
        /// The serial of the list without it.
        serial: u64,
    },
    /// A conversation was cleared on this device.
    Cleared {
        /// The contact's name, or the group's id.
        with: String,
        /// The contact's identity key (hex), for a 1:1 chat.
        identity: Option<String>,
        /// The group's id (hex), for a group.
        group: Option<String>,
        /// How many messages went.
        messages: usize,
    },
    /// A message was deleted on this device.
    Deleted {
        /// The message id (hex).
        id: String,
        /// The contact's name, or the group's id.
        with: String,
        /// The contact's identity key (hex), for a 1:1 chat.
        identity: Option<String>,
        /// The group's id (hex), for a group.
        group: Option<String>,
    },
    /// Temporary messages reached their time and were deleted here.
    Disappeared {
        /// How many.
        messages: usize,
    },
    /// Events were dropped because this client read too slowly.
    Lagged {
        /// How many.
        missed: u64,
    },
}

/// Names the group a conversation id belongs to: its id (hex) and name.
pub type GroupOf<'a> = dyn Fn(&[u8; 32]) -> Option<(String, String)> + 'a;

impl EventView {
    /// The view of `e`, or `None` for events the API does not carry.
    /// `name` names a contact by identity key; `group` gives the id (hex)
    /// and name of the group a conversation id belongs to.
    pub fn of(
        e: &NodeEvent,
        mine: &dyn Fn(&[u8; 32]) -> bool,
        name: &dyn Fn(&[u8; 32]) -> String,
        group: &GroupOf<'_>,
    ) -> Option<Self> {
        // A contact's key or a group's id, as events name it.
        let target = |key: &[u8; 32]| match group(key) {
            Some((id, _)) => (id.clone(), None, Some(id)),
            None => (name(key), Some(hex(key)), None),
        };
        // A media message's file: its id, its conversation (the group's
        // id, or the sender's name), the sender's name and key, and the
        // group's id for a group's file.
        let file = |m: &crate::store::MessageRef| {
            let group = group(&m.conv_id).map(|(id, _)| id);
            let with = group.clone().unwrap_or_else(|| name(&m.sender));
            (hex(&m.msg_id), with, name(&m.sender), hex(&m.sender), group)
        };
        Some(match e {
            NodeEvent::Message { from, message } => {
                let contact = name(from);
                let (group, group_name) = group(&message.conv_id).unzip();
                Self::Message {
                    message: MessageView::of(message, mine, &contact),
                    contact,
                    group,
                    group_name,
                }
            }
            NodeEvent::Receipt { message, state } => Self::Receipt {
                id: hex(&message.msg_id),
                state: state_name(*state).into(),
            },
            NodeEvent::Expired { message } => Self::Expired {
                id: hex(&message.msg_id),
            },
            NodeEvent::ContactRequest {
                identity,
                fingerprint,
            } => Self::ContactRequest {
                identity: hex(identity),
                fingerprint: fingerprint.clone(),
            },
            NodeEvent::Presence {
                contact,
                state,
                last_seen_ms,
            } => Self::Presence {
                contact: name(contact),
                identity: hex(contact),
                state: presence_name(*state).into(),
                last_seen_ms: *last_seen_ms,
            },
            NodeEvent::RelayRefused {
                message,
                relay,
                reason,
            } => Self::RelayRefused {
                id: hex(&message.msg_id),
                relay: relay.to_string(),
                reason: reason.to_string(),
            },
            NodeEvent::MailboxRefused {
                relay,
                request,
                reason,
            } => Self::MailboxRefused {
                relay: relay.to_string(),
                request: (*request).into(),
                reason: reason.label().into(),
            },
            NodeEvent::Drained { relay, envelopes } => Self::Drained {
                relay: relay.to_string(),
                envelopes: *envelopes,
            },
            NodeEvent::Connected { peer } => Self::Connected {
                peer: peer.to_string(),
            },
            NodeEvent::Disconnected { peer } => Self::Disconnected {
                peer: peer.to_string(),
            },
            NodeEvent::GroupReceipt {
                message,
                delivered,
                read,
                members,
            } => Self::GroupReceipt {
                id: hex(&message.msg_id),
                delivered: *delivered,
                read: *read,
                members: *members,
            },
            NodeEvent::GroupExpired { message, member } => Self::GroupExpired {
                id: hex(&message.msg_id),
                group: hex(&message.conv_id),
                contact: name(member),
                identity: hex(member),
            },
            NodeEvent::MediaReady { message } => {
                let (id, with, contact, identity, group) = file(message);
                Self::MediaReady {
                    id,
                    with,
                    contact,
                    identity,
                    group,
                }
            }
            NodeEvent::MediaHeld {
                message,
                needs,
                free,
            } => {
                let (id, with, contact, identity, group) = file(message);
                Self::MediaHeld {
                    id,
                    with,
                    contact,
                    identity,
                    group,
                    needs: *needs,
                    free: *free,
                }
            }
            NodeEvent::GroupChanged { group } => Self::GroupChanged { group: hex(group) },
            NodeEvent::RetentionChanged { contact, secs, .. } => Self::RetentionChanged {
                with: name(contact),
                secs: *secs,
            },
            NodeEvent::ContactForgotten { contact, name } => Self::ContactForgotten {
                with: name.clone(),
                identity: hex(contact),
            },
            NodeEvent::DevicesChanged { contact, change } => Self::DevicesChanged {
                with: name(contact),
                identity: hex(contact),
                devices: DevicesView::of(&crate::node::DevicesInfo::from_entries(
                    change.account,
                    change.serial,
                    &change.devices,
                )),
                added: change.added.iter().map(|k| hex(k)).collect(),
                removed: change.removed.iter().map(|k| hex(k)).collect(),
                renamed: change.renamed.iter().map(|k| hex(k)).collect(),
            },
            NodeEvent::DevicesConflict {
                contact,
                account,
                serial,
            } => Self::DevicesConflict {
                with: name(contact),
                identity: hex(contact),
                account: hex(account),
                serial: *serial,
            },
            NodeEvent::ContactDevice {
                contact,
                account,
                name,
            } => Self::ContactDevice {
                with: name.clone(),
                identity: hex(contact),
                account: hex(account),
            },
            NodeEvent::AccountContacts { added } => Self::AccountContacts {
                contacts: added.iter().map(name).collect(),
                identities: added.iter().map(|k| hex(k)).collect(),
            },
            NodeEvent::DeviceLinked { device, name } => Self::DeviceLinked {
                identity: hex(device),
                name: name.clone(),
            },
            NodeEvent::AccountJoined { account, serial } => Self::AccountJoined {
                account: hex(account),
                serial: *serial,
            },
            NodeEvent::DeviceUnlinked { device, name } => Self::DeviceUnlinked {
                identity: hex(device),
                name: name.clone(),
            },
            NodeEvent::ContactDeviceRemoved {
                contact,
                account,
                name,
            } => Self::ContactDeviceRemoved {
                with: name.clone(),
                identity: hex(contact),
                account: hex(account),
            },
            NodeEvent::AccountLeft { account, serial } => Self::AccountLeft {
                account: hex(account),
                serial: *serial,
            },
            NodeEvent::Disappeared { messages } => Self::Disappeared {
                messages: *messages,
            },
            NodeEvent::Cleared { with, messages } => {
                let (with, identity, group) = target(with);
                Self::Cleared {
                    with,
                    identity,
                    group,
                    messages: *messages,
                }
            }
            NodeEvent::Deleted { with, message } => {
                let (with, identity, group) = target(with);
                Self::Deleted {
                    id: hex(&message.msg_id),
                    with,
                    identity,
                    group,
                }
            }
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_strangers_are_refused() {
        let r: Request = serde_json::from_str(r#"{"op":"send","to":"bob","text":"hi"}"#).unwrap();
        assert_eq!(
            r,
            Request::Send {
                to: "bob".into(),
                text: "hi".into()
            }
        );
        let r: Request = serde_json::from_str(r#"{"op":"history","with":"bob"}"#).unwrap();
        assert!(matches!(r, Request::History { limit: None, .. }));
        for bad in [
            r#"{"op":"launch"}"#,
            r#"{"op":"send","to":"bob"}"#,
            r#"{"op":"send","to":"bob","text":"hi","cc":"eve"}"#,
            r#"{"to":"bob"}"#,
            "[1,2",
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hex_round_trips_and_refuses_bad_digits() {
        let k = [0xa5u8; 32];
        assert_eq!(unhex32(&hex(&k)), Some(k));
        assert_eq!(unhex32("zz"), None);
        assert_eq!(unhex32(&"g".repeat(64)), None);
        assert_eq!(unhex32(&"é".repeat(32)), None);
    }
}
