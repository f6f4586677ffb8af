//! Group chat in the engine: membership logs, sender keys, group messages
//! and their receipts.
//!
//! - A group's membership is its operation log ([`super::super::groups`]),
//!   kept one record per operation. Operations and sender keys travel as
//!   queued 1:1 payloads (retried, through relays if need be), so they
//!   arrive even at members who are away.
//! - A group message is encrypted once with the author's sender key and
//!   published on the group's topic. For each other member the outbox also
//!   keeps it, due only after [`GROUP_FALLBACK`]: a member's delivered
//!   receipt removes its entry; a member that did not answer in time gets
//!   the same message 1:1, by the ladder (direct, mesh, relays).
//! - Receipts from members are counted per message (a [`Tally`]): the
//!   author sees "delivered to N of M", "read by N of M"; the message is
//!   `delivered` (or `read`) once every member at sending time is.

use std::collections::{HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::{Due, Engine, EngineError, Event, Recent};
use crate::crypto::{
    self, SenderKey, SenderKeyDistribution, SenderKeyMessage, SenderKeyReceiver, wire,
};
use crate::node::groups::{self, Change, Log, MemberCard, Op, Role, View};
use crate::node::proto::{Chat, MAX_BODY, MAX_PAYLOAD, Payload, ReceiptKind};
use crate::node::retry::{self, Meta};
use crate::node::state::Queued;
use crate::store::{Appended, DeliveryState, Direction, Kind, MessageRef, StoredMessage};

/// How long a member has to acknowledge a group message from the topic
/// before it is sent to that member 1:1 (seconds).
pub const GROUP_FALLBACK: u64 = 3;
/// A sender key is replaced after this long (seconds)...
pub(crate) const ROTATE_AFTER: u64 = 7 * 24 * 3600;
/// ...or after this many messages.
pub(crate) const ROTATE_EVERY: u32 = 10_000;
/// How long delivered receipts for group messages gather before they go,
/// one payload per author for everything it wrote meanwhile: a member's
/// receipts leave the moment the message spreads, and cost one 1:1
/// message per author per period however busy the group.
pub const GROUP_RECEIPT_DELAY: std::time::Duration = std::time::Duration::from_millis(300);
/// Up to this much more, drawn at random each time: members who got a
/// message at the same moment do not all answer at the same moment.
pub const GROUP_RECEIPT_JITTER: std::time::Duration = std::time::Duration::from_millis(300);
/// Group messages read per group whose receipt can be sent again when a
/// copy comes again (kept in memory, newest).
const MAX_READ_IDS: usize = 4096;
/// Group messages held per group while their sender key has not arrived.
const MAX_PENDING: usize = 256;
/// Sender keys held while the group or its member is not known yet (a new
/// member may hear from every other member before it hears of the group);
/// past this many, more are refused and their senders try again later.
const MAX_EARLY_KEYS: usize = 4 * groups::MAX_MEMBERS;
/// ...and at most this many from one contact (a member's key for each of
/// several groups still on their way here).
const MAX_EARLY_FROM_ONE: usize = 16;
const EARLY_PREFIX: &[u8] = b"early:";
/// Sender keys kept per member (the current one and the one before, for
/// messages still on their way).
const KEYS_PER_MEMBER: usize = 2;
/// Groups this device has operations for but is not in yet (a long log
/// comes in several payloads; the one that adds this device may not be the
/// first).
const MAX_LIMBO_GROUPS: usize = 8;
/// Most bytes of operations held for one such group (as many as a log
/// takes)...
const MAX_LIMBO_BYTES: usize = groups::MAX_LOG_BYTES;
/// ...and for all of them together (the oldest group goes first).
const MAX_LIMBO_TOTAL: usize = 2 * MAX_LIMBO_BYTES;
/// Most of those groups one contact's payloads brought (within
/// [`MAX_LIMBO_BYTES`] together): past it, that contact's oldest goes, so
/// one contact cannot push out the groups others are bringing.
const MAX_LIMBO_FROM_ONE: usize = 3;
/// Most groups one contact may have added this device to that it is still
/// in or was removed from by another (not those it left): past it, a
/// further group that contact adds it to is not joined (any contact can
/// add us to a group, and each brings up to 99 contacts and a log of its
/// own).
#[cfg(not(test))]
const MAX_GROUPS_FROM_ONE: usize = 100;
#[cfg(test)]
const MAX_GROUPS_FROM_ONE: usize = 3;
/// Most groups that others added this device to that it is in at once.
const MAX_GROUPS_JOINED: usize = 1_000;
/// How long a contact a group made stays once it is in no group of this
/// device's, while something queued for it waits (the operation that
/// removed it, say): then what waits is given up, like an expired
/// message, and the contact goes. A day for the removed device to come
/// online and hear of it; a made-up member never does.
pub(crate) const ORPHAN_GRACE: u64 = 24 * 3600;
const OWN_KEY: &[u8] = b"own";

/// Whether `key` names a `SenderKeys` record of this device's own key
/// (group id ‖ own identity ‖ `own`).
pub(crate) fn is_own_key_record(key: &[u8], me: &[u8; 32]) -> bool {
    key.len() == 64 + OWN_KEY.len() && key[32..64] == me[..] && key.ends_with(OWN_KEY)
}
const LIMBO_PREFIX: &[u8] = b"limbo:";
const VIA_PREFIX: &[u8] = b"via:";
/// A contact that a group made (`made:` ‖ its key, in the `groups` tree).
const MADE_PREFIX: &[u8] = b"made:";
/// A group this device was removed from and then let go (`letgo:` ‖ group
/// id, in the `groups` tree).
const LET_GO_PREFIX: &[u8] = b"letgo:";
const TALLY_PREFIX: &[u8] = b"tally:";
const TALLY_VERSION: u8 = 1;

/// A message as a receipt names it: Lamport clock and id.
type Acked = (u64, [u8; 16]);
/// A frame for a contact: its identity key and the frame.
pub(crate) type Addressed = ([u8; 32], Vec<u8>);

/// A change a user asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupChange {
    /// Add a contact as a member.
    Add {
        /// The contact.
        contact: [u8; 32],
        /// Admin or member.
        role: Role,
    },
    /// Remove a member.
    Remove {
        /// Its identity key.
        member: [u8; 32],
    },
    /// Leave the group.
    Leave,
    /// Make a member an admin, or a member again.
    SetRole {
        /// Its identity key.
        member: [u8; 32],
        /// The role.
        role: Role,
    },
    /// Rename it.
    Rename {
        /// The new name.
        name: String,
    },
    /// Make messages sent from now on disappear after `secs` (None: keep).
    Retention {
        /// Seconds.
        secs: Option<u64>,
    },
}

/// A group as the user sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// Its id (also its conversation id).
    pub id: [u8; 32],
    /// Its name.
    pub name: String,
    /// Members: identity key, name, role.
    pub members: Vec<([u8; 32], String, Role)>,
    /// Retention of new messages (seconds).
    pub retention: Option<u64>,
    /// Whether this device is a member (false after leaving or removal).
    pub joined: bool,
}

/// A group message to publish on its group's topic.
#[derive(Debug, Clone)]
pub struct ToPublish {
    /// The topic id.
    pub topic: [u8; 32],
    /// The group message.
    pub message: Vec<u8>,
    /// The other members when it was written (publishing reaches them all
    /// if each is a peer on the topic).
    pub members: Vec<[u8; 32]>,
}

/// A contact that only groups made, forgotten with the last of them
/// ([`Engine::forget_orphans`]): the node keeps it as a former contact, so
/// that what it writes later comes as a contact request. Also a device
/// removed from an account ([`Engine::forget_unlinked`],
/// [`super::Event::ContactDeviceRemoved`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forgotten {
    /// Its identity key.
    pub key: [u8; 32],
    /// The name it had.
    pub name: String,
    /// Its keys.
    pub identity: crate::crypto::PublicIdentity,
    /// Its invite as the contact record had it.
    pub invite: Option<crate::node::state::Invite>,
}

/// What a group operation or message asks the node to do next.
#[derive(Debug, Default)]
pub struct GroupEffects {
    /// Queued 1:1 frames to send now.
    pub due: Vec<Due>,
    /// Unqueued 1:1 frames (receipts): contact and frame.
    pub replies: Vec<([u8; 32], Vec<u8>)>,
    /// Group messages to publish.
    pub publish: Vec<ToPublish>,
    /// Topics to join.
    pub subscribe: Vec<[u8; 32]>,
    /// Topics to leave.
    pub unsubscribe: Vec<[u8; 32]>,
    /// Members who became contacts (the node learns how to reach them).
    pub new_contacts: Vec<[u8; 32]>,
    /// For the user.
    pub events: Vec<Event>,
}

impl GroupEffects {
    pub(crate) fn extend(&mut self, other: Self) {
        self.due.extend(other.due);
        self.replies.extend(other.replies);
        self.publish.extend(other.publish);
        self.subscribe.extend(other.subscribe);
        self.unsubscribe.extend(other.unsubscribe);
        self.new_contacts.extend(other.new_contacts);
        self.events.extend(other.events);
    }
}

/// One group on this device.
pub(crate) struct GroupSlot {
    log: Log,
    own: Option<SenderKey>,
    /// Per member, its sender keys (newest last).
    receivers: HashMap<[u8; 32], Vec<SenderKeyReceiver>>,
    /// Messages whose sender key has not arrived: bytes and the contact
    /// that sent them 1:1 (None: from the topic).
    pending: VecDeque<Vec<u8>>,
    /// Messages read lately, by sender, key id and position in its chain:
    /// a copy that comes again (the author's 1:1 copy by the mesh or a
    /// relay, its receipt lost) is answered again.
    read: Recent<([u8; 32], u32, u32), Acked>,
    /// The contact whose payload made this device a member (None: we made
    /// the group, or it was joined before this was kept).
    via: Option<[u8; 32]>,
    /// Removed by another, and then let go by the person (it leaves the
    /// bound of [`Engine::too_many_groups`]).
    let_go: bool,
}

impl GroupSlot {
    fn new(group: [u8; 32]) -> Self {
        Self {
            log: Log::new(group),
            own: None,
            receivers: HashMap::new(),
            pending: VecDeque::new(),
            read: Recent::new(MAX_READ_IDS),
            via: None,
            let_go: false,
        }
    }
}

/// The groups of a device.
#[derive(Default)]
pub(crate) struct Groups {
    slots: HashMap<[u8; 32], GroupSlot>,
    /// Sender keys that came before their group or member did.
    early: VecDeque<([u8; 32], Vec<u8>)>,
    /// Delivered receipts not sent yet, per group and author.
    acks: HashMap<([u8; 32], [u8; 32]), Vec<Acked>>,
    /// Operations of groups that do not (yet) make this device a member,
    /// oldest group first; kept on disk too, since the payloads that
    /// brought them were acknowledged.
    limbo: VecDeque<([u8; 32], Vec<Op>)>,
    /// The contact whose payload first brought each group in `limbo`
    /// (in memory only: after a restart, held groups are nobody's).
    limbo_via: HashMap<[u8; 32], [u8; 32]>,
    /// Groups whose members' sender keys changed since
    /// [`Engine::take_changed_group_keys`] was last called.
    keys_changed: HashSet<[u8; 32]>,
    /// Contacts made from a member's card that the person has not taken
    /// up (added by an invite, accepted, verified, written to): forgotten
    /// once no group this device is in has them, so that an admin adding
    /// and removing members cannot grow this device's contacts without
    /// end. On disk as `made:` ‖ key.
    made: HashSet<[u8; 32]>,
    /// Those of `made` that left a group this device is in (or were in one
    /// it left), to forget once no group it is in has them and nothing is
    /// queued for them any more (what was queued — the operation that
    /// removed them, say — goes first). Found again at the start.
    orphans: HashSet<[u8; 32]>,
    /// A membership changed since `orphans` was last checked against the
    /// groups (checking costs a pass over every member of every group).
    orphans_unchecked: bool,
    /// When each of `orphans` was first found one (since the start): after
    /// [`ORPHAN_GRACE`], what is still queued for it is given up.
    orphaned_at: HashMap<[u8; 32], u64>,
}

/// A member's sender key as a forwarding node checks messages with it:
/// key id, member, public signing key.
pub type GroupKey = (u32, [u8; 32], [u8; 32]);

/// Who has a group message of ours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Tally {
    version: u8,
    group: [u8; 32],
    lamport: u64,
    /// The other members when it was sent.
    members: Vec<[u8; 32]>,
    delivered: Vec<bool>,
    read: Vec<bool>,
}

impl Tally {
    const MAX: usize = 64 + groups::MAX_MEMBERS * 40;

    fn counts(&self) -> (u32, u32) {
        let n = |v: &[bool]| u32::try_from(v.iter().filter(|b| **b).count()).unwrap_or(u32::MAX);
        (n(&self.delivered), n(&self.read))
    }
}

fn sender_key_record(group: &[u8; 32], member: &[u8], key_id: Option<u32>) -> Vec<u8> {
    let mut k = Vec::with_capacity(72);
    k.extend_from_slice(group);
    k.extend_from_slice(member);
    match key_id {
        Some(id) => k.extend_from_slice(&id.to_be_bytes()),
        None => k.extend_from_slice(OWN_KEY),
    }
    k
}

/// Characters that show nothing (zero-width, joiners, direction marks and
/// overrides, the byte-order mark, the soft hyphen): a name with them looks
/// like the name without them.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}'
        | '\u{17B5}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2028}'..='\u{2029}' | '\u{2060}'..='\u{206F}' | '\u{3164}'
        | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}' | '\u{E0000}'..='\u{E007F}')
}

/// A name as it looks: without invisible characters, spaces at its ends.
pub(crate) fn visible_name(name: &str) -> String {
    name.chars()
        .filter(|c| !invisible(*c) && !c.is_control())
        .collect::<String>()
        .trim()
        .to_owned()
}

fn via_record(group: &[u8; 32]) -> Vec<u8> {
    [VIA_PREFIX, group.as_slice()].concat()
}

/// The 32-byte key after `prefix` in a record's key of exactly that
/// length (`via:`, `made:`, `letgo:`).
fn key_after(key: &[u8], prefix: &[u8]) -> Option<[u8; 32]> {
    key.strip_prefix(prefix)?.try_into().ok()
}

fn let_go_record(group: &[u8; 32]) -> Vec<u8> {
    [LET_GO_PREFIX, group.as_slice()].concat()
}

fn made_record(contact: &[u8; 32]) -> Vec<u8> {
    [MADE_PREFIX, contact.as_slice()].concat()
}

fn op_record(group: &[u8; 32], op: &[u8; 32]) -> Vec<u8> {
    [group.as_slice(), op.as_slice()].concat()
}

/// Where a sender key that came early waits: sender, group, key id.
fn early_record(from: &[u8; 32], d: &SenderKeyDistribution) -> Vec<u8> {
    [
        EARLY_PREFIX,
        from.as_slice(),
        d.group_id.as_slice(),
        &d.key_id.to_be_bytes(),
    ]
    .concat()
}

fn limbo_record(group: &[u8; 32], op: &[u8; 32]) -> Vec<u8> {
    [LIMBO_PREFIX, group.as_slice(), op.as_slice()].concat()
}

fn refused(what: &str) -> EngineError {
    EngineError::Group(what.to_owned())
}

/// Splits encoded operations into batches that fit a payload.
fn op_batches(ops: Vec<Vec<u8>>) -> Vec<Vec<serde_bytes::ByteBuf>> {
    let mut out = Vec::new();
    let mut batch = Vec::new();
    let mut size = 0;
    for op in ops {
        if !batch.is_empty() && size + op.len() + 8 > MAX_PAYLOAD - 256 {
            out.push(std::mem::take(&mut batch));
            size = 0;
        }
        size += op.len() + 8;
        batch.push(serde_bytes::ByteBuf::from(op));
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}

impl Engine {
    /// The name a contact that a group introduces gets here: its card's
    /// name as it looks ([`visible_name`]), unless that is empty, shaped
    /// like a key or group id (64 hex digits), or already another
    /// contact's or a group's (as it looks). Then the start of its key
    /// follows it ("bob (1a2b3c4d)"), so that nobody who can put a card in
    /// a group passes someone off under a name this device already uses.
    pub(super) fn introduced_name(&self, card: &str, key: &[u8; 32]) -> String {
        let name = visible_name(card);
        let key_like = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
        let taken = self
            .contacts
            .iter()
            .any(|(k, c)| k != key && visible_name(&c.name) == name)
            || self
                .groups
                .slots
                .values()
                .any(|g| visible_name(&g.log.view().name) == name);
        if !name.is_empty() && !key_like && !taken {
            return name;
        }
        // Within the 64 bytes a name may have at the API.
        let mut end = name.len().min(64 - " (12345678)".len());
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        format!("{} ({})", &name[..end], crate::crypto::hex8(&key[..4]))
            .trim_start()
            .to_owned()
    }

    /// Loads groups and sender keys from the store.
    pub(super) fn load_groups(&mut self) -> Result<(), EngineError> {
        let mut logs: HashMap<[u8; 32], Vec<Op>> = HashMap::new();
        let mut via: HashMap<[u8; 32], [u8; 32]> = HashMap::new();
        let mut let_go: HashSet<[u8; 32]> = HashSet::new();
        for (key, bytes) in self.store.records(Kind::Groups)?.scan(b"")? {
            if let Some(g) = key_after(&key, LET_GO_PREFIX) {
                let_go.insert(g);
                continue;
            }
            if let Some(k) = key_after(&key, MADE_PREFIX) {
                self.groups.made.insert(k);
                continue;
            }
            if let Some(g) = key_after(&key, VIA_PREFIX) {
                if let Ok(from) = <[u8; 32]>::try_from(bytes.as_slice()) {
                    via.insert(g, from);
                }
                continue;
            }
            if key.len() == LIMBO_PREFIX.len() + 64 && key.starts_with(LIMBO_PREFIX) {
                if let Ok(op) = Op::from_bytes(&bytes) {
                    match self.groups.limbo.iter_mut().find(|(g, _)| *g == op.group) {
                        Some((_, ops)) => ops.push(op),
                        None => self.groups.limbo.push_back((op.group, vec![op])),
                    }
                }
                continue;
            }
            if key.len() != 64 {
                continue;
            }
            let Ok(op) = Op::from_bytes(&bytes) else {
                continue;
            };
            logs.entry(op.group).or_default().push(op);
        }
        // Each log in one go: one fold, not one per operation.
        for (group, ops) in logs {
            let slot = self
                .groups
                .slots
                .entry(group)
                .or_insert_with(|| GroupSlot::new(group));
            slot.via = via.get(&group).copied();
            slot.let_go = let_go.contains(&group);
            // What is on disk was taken under the rules of its time (a log
            // of more bytes than is taken now, say); past the count bound,
            // the log keeps what it has.
            if slot.log.restore(ops.iter().cloned()).is_err() {
                for op in ops {
                    let _ = slot.log.restore([op]);
                }
            }
        }
        self.groups.orphans = self.made_not_in_a_group();
        let me = self.me.public().signing;
        for (key, bytes) in self.store.records(Kind::SenderKeys)?.scan(b"")? {
            if key.starts_with(EARLY_PREFIX) {
                if key.len() == EARLY_PREFIX.len() + 68
                    && let Ok(from) = <[u8; 32]>::try_from(&key[EARLY_PREFIX.len()..][..32])
                {
                    self.groups.early.push_back((from, bytes));
                }
                continue;
            }
            let Ok(group) = <[u8; 32]>::try_from(&key[..key.len().min(32)]) else {
                continue;
            };
            let Some(slot) = self.groups.slots.get_mut(&group) else {
                continue;
            };
            if is_own_key_record(&key, &me) {
                slot.own = Some(SenderKey::from_bytes(&bytes)?);
            } else if key.len() == 68
                && let Ok(member) = <[u8; 32]>::try_from(&key[32..64])
            {
                let r = SenderKeyReceiver::from_bytes(&bytes)?;
                slot.receivers.entry(member).or_default().push(r);
            }
        }
        // Oldest first, as `on_sender_key` keeps them (they were read in
        // the order of their key ids).
        for slot in self.groups.slots.values_mut() {
            for keys in slot.receivers.values_mut() {
                keys.sort_by_key(SenderKeyReceiver::generation);
            }
        }
        Ok(())
    }

    /// The sender keys held for `group`'s members, ours included (a
    /// forgery under our own key is not forwarded either).
    fn group_keys_of(&self, group: &[u8; 32]) -> Vec<GroupKey> {
        let me = self.me.public().signing;
        self.groups.slots.get(group).map_or_else(Vec::new, |slot| {
            let own = slot.own.as_ref().map(|k| {
                let d = k.distribution();
                (d.key_id, me, d.signing_key)
            });
            slot.receivers
                .iter()
                .flat_map(|(member, keys)| {
                    keys.iter().map(|k| (k.key_id(), *member, *k.signing_key()))
                })
                .chain(own)
                .collect()
        })
    }

    /// The sender keys held for every group's members (for the network
    /// task, which checks group messages' signatures before forwarding).
    pub fn group_keys(&self) -> Vec<([u8; 32], Vec<GroupKey>)> {
        self.groups
            .slots
            .keys()
            .map(|g| (*g, self.group_keys_of(g)))
            .filter(|(_, keys)| !keys.is_empty())
            .collect()
    }

    /// The groups whose members' sender keys changed since the last call,
    /// with the keys now held.
    pub fn take_changed_group_keys(&mut self) -> Vec<([u8; 32], Vec<GroupKey>)> {
        let changed = std::mem::take(&mut self.groups.keys_changed);
        changed
            .into_iter()
            .map(|g| (g, self.group_keys_of(&g)))
            .collect()
    }

    /// Every group this device knows, joined or not.
    pub fn groups(&self) -> Vec<GroupInfo> {
        let me = self.me.public().signing;
        let mut out: Vec<GroupInfo> = self
            .groups
            .slots
            .iter()
            .map(|(id, slot)| {
                let v = slot.log.view();
                GroupInfo {
                    id: *id,
                    name: v.name.clone(),
                    members: v
                        .members
                        .iter()
                        .map(|m| (m.key, m.card.name.clone(), m.role))
                        .collect(),
                    retention: v.retention,
                    joined: v.is_member(&me),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        out
    }

    /// The topic ids of the groups this device is in.
    pub fn group_topics(&self) -> Vec<[u8; 32]> {
        let me = self.me.public().signing;
        self.groups
            .slots
            .iter()
            .filter(|(_, s)| s.log.view().is_member(&me))
            .map(|(g, _)| groups::topic_id(g))
            .collect()
    }

    fn view(&self, group: &[u8; 32]) -> Result<&View, EngineError> {
        self.groups
            .slots
            .get(group)
            .map(|s| s.log.view())
            .ok_or(EngineError::UnknownGroup)
    }

    fn my_card(&self, addrs: Vec<String>, name: &str, now: u64) -> Result<MemberCard, EngineError> {
        Ok(MemberCard {
            invite: self.invite(addrs, now)?,
            name: name.to_owned(),
        })
    }

    fn contact_card(&self, key: &[u8; 32]) -> Result<MemberCard, EngineError> {
        let c = self.contacts.get(key).ok_or(EngineError::UnknownContact)?;
        Ok(MemberCard {
            invite: self.contact_invite(key)?,
            name: c.name.clone(),
        })
    }

    /// What the contact `key` is known by, as an invite: its bundle
    /// without the one-time prekey a fetched bundle may hold (ours to use
    /// once, not anyone else's), its addresses, and the newest list held
    /// of its account.
    /// Whether a group made the contact `key` (and the person never took
    /// it up).
    pub(crate) fn is_group_made(&self, key: &[u8; 32]) -> bool {
        self.groups.made.contains(key)
    }

    pub(crate) fn contact_invite(
        &self,
        key: &[u8; 32],
    ) -> Result<crate::node::state::Invite, EngineError> {
        let c = self.contacts.get(key).ok_or(EngineError::UnknownContact)?;
        let mut bundle = c.bundle.clone();
        bundle.one_time = None;
        Ok(
            crate::node::state::Invite::new(bundle, c.addrs.clone()).with_devices(
                self.lists
                    .get(&self.account_of(key))
                    .map_or_else(|| c.devices.clone(), |l| l.list().to_bytes()),
                Vec::new(),
            ),
        )
    }

    /// Creates a group named `name` with the contacts `members`; this
    /// device is its first admin and goes by `me_name` in it.
    pub fn create_group(
        &mut self,
        name: &str,
        me_name: &str,
        members: &[[u8; 32]],
        retention: Option<u64>,
        addrs: Vec<String>,
        now: u64,
    ) -> Result<([u8; 32], GroupEffects), EngineError> {
        if members.len() + 1 > groups::MAX_MEMBERS {
            return Err(refused("more members than a group holds"));
        }
        let mut nonce = [0u8; 16];
        rand::Rng::fill_bytes(&mut self.rng, &mut nonce);
        let birth = Op::new(
            &self.me,
            [0; 32],
            1,
            Change::Create {
                name: name.to_owned(),
                nonce,
                card: self.my_card(addrs, me_name, now)?,
                retention,
            },
        );
        // Checked as any receiver will check it (name, retention).
        let birth = Op::from_bytes(&birth.bytes).map_err(|e| refused(&e.to_string()))?;
        let group = birth.group;
        let mut ops = vec![birth];
        let mut seen = HashSet::new();
        for (i, key) in members.iter().enumerate() {
            if key == &self.me.public().signing || !seen.insert(*key) {
                continue;
            }
            ops.push(Op::new(
                &self.me,
                group,
                2 + i as u64,
                Change::Add {
                    card: self.contact_card(key)?,
                    role: Role::Member,
                },
            ));
        }
        // Chosen by the person: its contacts, if a group had made them.
        for key in members {
            self.adopt(key)?;
        }
        self.groups.slots.insert(group, GroupSlot::new(group));
        let effects = self.apply_ops(group, ops, true, now)?;
        Ok((group, effects))
    }

    /// Makes a change to a group this device is in.
    pub fn change_group(
        &mut self,
        group: &[u8; 32],
        change: GroupChange,
        now: u64,
    ) -> Result<GroupEffects, EngineError> {
        let me = self.me.public().signing;
        let view = self.view(group)?;
        let Some(member) = view.member(&me) else {
            // Removed by another: leaving lets the group go, so that it no
            // longer counts against the contact that brought it.
            if matches!(change, GroupChange::Leave) {
                self.let_go(group)?;
                return Ok(GroupEffects::default());
            }
            return Err(refused("not a member of this group"));
        };
        let admin = member.role == Role::Admin;
        let change = match change {
            GroupChange::Leave => Change::Leave,
            _ if !admin => return Err(refused("only an admin can do that")),
            GroupChange::Add { contact, role } => {
                if view.is_member(&contact) {
                    return Err(refused("already a member"));
                }
                if view.members.len() >= groups::MAX_MEMBERS {
                    return Err(refused("the group is full"));
                }
                let card = self.contact_card(&contact)?;
                // Chosen by the person: its contact, if a group made it.
                self.adopt(&contact)?;
                Change::Add { card, role }
            }
            GroupChange::Remove { member } => {
                if !view.is_member(&member) {
                    return Err(refused("not a member of this group"));
                }
                Change::Remove { member }
            }
            GroupChange::SetRole { member, role } => {
                if !view.is_member(&member) {
                    return Err(refused("not a member of this group"));
                }
                // A group left without an admin makes its first member one
                // (`View::apply`): the only admin, if it is that member,
                // would be made admin again by its own step down.
                let admins = view.members.iter().filter(|m| m.role == Role::Admin);
                if role != Role::Admin
                    && admins.clone().count() == 1
                    && admins.clone().all(|m| m.key == member)
                    && view.members.first().is_some_and(|m| m.key == member)
                {
                    return Err(refused(
                        "the group's only admin cannot step down: it would be made admin again, \
                         as the group's first member; make another member admin first",
                    ));
                }
                Change::SetRole { member, role }
            }
            GroupChange::Rename { name } => Change::Rename { name },
            GroupChange::Retention { secs } => Change::Retention { secs },
        };
        let lamport = self
            .groups
            .slots
            .get(group)
            .map_or(1, |s| s.log.next_lamport());
        // A peer's clock is its own to choose: one at the top leaves no
        // room after it. A change made there would tie with it and sort
        // by a random id (an addition and a removal could swap), so none
        // is made.
        if lamport == u64::MAX {
            return Err(refused(
                "this group's clock is used up (a member sent an operation at its highest value); \
                 no change can be ordered after it: create a new group",
            ));
        }
        let op = Op::new(&self.me, *group, lamport, change);
        let op = Op::from_bytes(&op.bytes).map_err(|e| refused(&e.to_string()))?;
        self.apply_ops(*group, vec![op], true, now)
    }

    /// Takes operations into a group's log (ours, or received) and does
    /// what the change means for this device: join the topic, hand out
    /// sender keys, rotate ours after a removal, leave the topic.
    fn apply_ops(
        &mut self,
        group: [u8; 32],
        ops: Vec<Op>,
        ours: bool,
        now: u64,
    ) -> Result<GroupEffects, EngineError> {
        let me = self.me.public().signing;
        let mut fx = GroupEffects::default();
        let slot = self
            .groups
            .slots
            .get_mut(&group)
            .ok_or(EngineError::UnknownGroup)?;
        let before = slot.log.view().clone();
        let fresh: Vec<Op> = ops.into_iter().filter(|o| !slot.log.has(&o.id)).collect();
        if fresh.is_empty() {
            return Ok(fx);
        }
        slot.log
            .insert(fresh.clone())
            .map_err(|e| refused(&e.to_string()))?;
        let after = slot.log.view().clone();
        let records = self.store.records(Kind::Groups)?;
        for op in &fresh {
            records.put(&op_record(&group, &op.id), &op.bytes)?;
        }
        let was_in = before.is_member(&me);
        let is_in = after.is_member(&me);
        let topic = groups::topic_id(&group);
        // Members this device has no contact for become contacts, so
        // sessions can be set up with them; not once it is out of the
        // group (whoever removed it could go on adding throwaway members
        // to a group it no longer reads, each one a contact here).
        for m in &after.members {
            if is_in && m.key != me && !self.contacts.contains_key(&m.key) {
                let mut invite = m.card.invite.clone();
                invite.bundle.one_time = None;
                let name = self.introduced_name(&m.card.name, &m.key);
                let mut added = self.put_contact(&invite, &name);
                if let Err(EngineError::Crypto(crypto::Error::DeviceList { reason })) = &added {
                    // The list beside a card is not signed by its member
                    // (whoever added the card chose it): without it, the
                    // member is reachable as a device of its own.
                    tracing::warn!(
                        reason,
                        "a group member's device list refused; added without it"
                    );
                    let alone = crate::node::state::Invite::new(
                        invite.bundle.clone(),
                        invite.addrs.clone(),
                    );
                    added = self.put_contact(&alone, &name);
                }
                match added {
                    Ok(_) => {
                        self.store
                            .records(Kind::Groups)?
                            .put(&made_record(&m.key), &[])?;
                        self.groups.made.insert(m.key);
                        fx.new_contacts.push(m.key);
                    }
                    Err(EngineError::Store(e)) => return Err(e.into()),
                    // A card whose keys no session can use (signed by its
                    // member, so in the log): that member is in the group
                    // but cannot be written to; the others can.
                    Err(e) => tracing::warn!(error = %e, "a group member's card is not usable"),
                }
            }
        }
        let joined: Vec<[u8; 32]> = after
            .members
            .iter()
            .filter(|m| m.key != me && !before.is_member(&m.key))
            .map(|m| m.key)
            .collect();
        let left: Vec<[u8; 32]> = before
            .members
            .iter()
            .filter(|m| m.key != me && !after.is_member(&m.key))
            .map(|m| m.key)
            .collect();
        // Contacts this group made that may no longer be in any group here.
        let out_of_it: Vec<[u8; 32]> = if was_in && !is_in {
            before.members.iter().map(|m| m.key).collect()
        } else {
            left.clone()
        };
        for k in out_of_it {
            if self.groups.made.contains(&k) {
                self.groups.orphans.insert(k);
            }
        }
        self.groups.orphans_unchecked = true;
        // Who hears about the new operations: ours go to everyone in the
        // group before or after them.
        if ours {
            let bytes: Vec<Vec<u8>> = fresh.iter().map(|o| o.bytes.clone()).collect();
            let mut to: Vec<[u8; 32]> = before
                .members
                .iter()
                .chain(after.members.iter())
                .map(|m| m.key)
                .filter(|k| k != &me && !joined.contains(k))
                .collect();
            to.sort_unstable();
            to.dedup();
            for k in to {
                fx.due
                    .extend(self.queue_ops(&k, &group, bytes.clone(), now)?);
            }
        }
        // A new member hears every operation from its author (so it learns
        // the group), and from every other member that member's own (so it
        // hears what another admin did meanwhile).
        if is_in && !joined.is_empty() {
            let slot = self
                .groups
                .slots
                .get(&group)
                .ok_or(EngineError::UnknownGroup)?;
            let all: Vec<Vec<u8>> = slot.log.ops().map(|o| o.bytes.clone()).collect();
            let mine: Vec<Vec<u8>> = slot
                .log
                .ops()
                .filter(|o| o.author == me)
                .map(|o| o.bytes.clone())
                .collect();
            for k in &joined {
                let send = if ours { all.clone() } else { mine.clone() };
                fx.due.extend(self.queue_ops(k, &group, send, now)?);
            }
        }
        // Operations learnt from others go on to the members this device
        // added (who may have joined after their authors sent them), those
        // the operations remove among them: a member removed by an admin
        // who was itself removed at the same time may have let that admin
        // go as a contact (one only the group made) before its copy came,
        // and would not read it.
        if is_in && !ours {
            let bytes: Vec<Vec<u8>> = fresh.iter().map(|o| o.bytes.clone()).collect();
            let added: Vec<[u8; 32]> = after
                .members
                .iter()
                .filter(|m| m.added_by == me && m.key != me && !joined.contains(&m.key))
                .map(|m| m.key)
                .collect();
            for k in added {
                fx.due
                    .extend(self.queue_ops(&k, &group, bytes.clone(), now)?);
            }
            // A member it added that these remove gets the removal only
            // (not what else they change: it is out).
            let removed: Vec<[u8; 32]> = left
                .iter()
                .filter_map(|k| before.member(k))
                .filter(|m| m.added_by == me)
                .map(|m| m.key)
                .collect();
            for k in removed {
                let removal: Vec<Vec<u8>> = fresh
                    .iter()
                    .filter(
                        |o| matches!(&o.change, groups::Change::Remove { member } if *member == k),
                    )
                    .map(|o| o.bytes.clone())
                    .collect();
                if !removal.is_empty() {
                    fx.due.extend(self.queue_ops(&k, &group, removal, now)?);
                }
            }
        }
        if is_in && !was_in {
            fx.subscribe.push(topic);
        }
        if was_in && !is_in {
            fx.unsubscribe.push(topic);
            if let Some(slot) = self.groups.slots.get_mut(&group) {
                slot.own = None;
                slot.receivers.clear();
                self.groups.keys_changed.insert(group);
            }
            let keys = self.store.records(Kind::SenderKeys)?;
            for (k, _) in keys.scan(&group)? {
                keys.remove(&k)?;
            }
        }
        if is_in {
            for k in &left {
                if let Some(slot) = self.groups.slots.get_mut(&group) {
                    slot.receivers.remove(k);
                    self.groups.keys_changed.insert(group);
                }
                let keys = self.store.records(Kind::SenderKeys)?;
                for (rk, _) in keys.scan(&[group.as_slice(), k.as_slice()].concat())? {
                    keys.remove(&rk)?;
                }
            }
            let rotate = !left.is_empty()
                || self
                    .groups
                    .slots
                    .get(&group)
                    .is_some_and(|s| s.own.is_none());
            if rotate {
                // A removed member's copy of our key reads nothing we
                // send from now on; the others get the new one.
                fx.due.extend(self.new_sender_key(&group, now)?);
            } else {
                // New members get our current key.
                for k in &joined {
                    fx.due.push(self.queue_own_key(k, &group, now)?);
                }
            }
            // Keys that came before this member was known.
            fx.extend(self.retry_early_keys(now)?);
        }
        fx.events.push(Event::GroupChanged { group });
        Ok(fx)
    }

    /// Queues our sender key for `group` to the member `to`.
    fn queue_own_key(
        &mut self,
        to: &[u8; 32],
        group: &[u8; 32],
        now: u64,
    ) -> Result<Due, EngineError> {
        let distribution = self
            .groups
            .slots
            .get(group)
            .and_then(|s| s.own.as_ref())
            .ok_or(refused("no sender key"))?
            .distribution()
            .to_bytes()
            .to_vec();
        self.queue(to, group, None, now, |id| Payload::SenderKey {
            id,
            distribution,
        })
    }

    /// Queues again, under its id (`id`, its outbox entry's), a sender key
    /// distribution (`payload`) that expired unacknowledged for `to` while
    /// group messages for it are still queued (see [`Engine::expire`]);
    /// not if `to` left.
    pub(crate) fn requeue_distribution(
        &mut self,
        id: [u8; 16],
        to: &[u8; 32],
        group: &[u8; 32],
        payload: Vec<u8>,
        now: u64,
    ) -> Result<(), EngineError> {
        if !self.view(group).is_ok_and(|v| v.is_member(to)) {
            return Ok(());
        }
        // Due at the next retry pass, not encrypted here.
        let until = now.saturating_add(self.ttl);
        self.queue_as(id, to, group, None, payload, now, now + 1, until)?;
        Ok(())
    }

    /// Queues operations for the member `to` (in as many payloads as
    /// they need).
    fn queue_ops(
        &mut self,
        to: &[u8; 32],
        group: &[u8; 32],
        ops: Vec<Vec<u8>>,
        now: u64,
    ) -> Result<Vec<Due>, EngineError> {
        let mut due = Vec::new();
        for ops in op_batches(ops) {
            due.push(self.queue(to, group, None, now, |id| Payload::GroupOps { id, ops })?);
        }
        Ok(due)
    }

    /// A new sender key for `group`, stored and queued for every other
    /// member.
    fn new_sender_key(&mut self, group: &[u8; 32], now: u64) -> Result<Vec<Due>, EngineError> {
        let me = self.me.public().signing;
        let slot = self
            .groups
            .slots
            .get_mut(group)
            .ok_or(EngineError::UnknownGroup)?;
        let key = match &slot.own {
            Some(old) => old.rotate(now, &mut self.rng),
            None => SenderKey::new(*group, now, &mut self.rng),
        };
        self.store
            .records(Kind::SenderKeys)?
            .put(&sender_key_record(group, &me, None), &key.to_bytes())?;
        slot.own = Some(key);
        self.groups.keys_changed.insert(*group);
        let members: Vec<[u8; 32]> = slot
            .log
            .view()
            .members
            .iter()
            .map(|m| m.key)
            .filter(|k| k != &me)
            .collect();
        let mut due = Vec::with_capacity(members.len());
        for k in members {
            due.push(self.queue_own_key(&k, group, now)?);
        }
        Ok(due)
    }

    /// Queues the payload `build` makes with its outbox id for the member
    /// `to` (retried until acknowledged or expired); returns the frame to
    /// send now.
    pub(super) fn queue(
        &mut self,
        to: &[u8; 32],
        conv: &[u8; 32],
        lamport: Option<u64>,
        now: u64,
        build: impl FnOnce([u8; 16]) -> Payload,
    ) -> Result<Due, EngineError> {
        let mut id = [0u8; 16];
        rand::Rng::fill_bytes(&mut self.rng, &mut id);
        let payload = build(id).to_bytes();
        self.queue_as(id, to, conv, lamport, payload, now, now, now + self.ttl)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn queue_as(
        &mut self,
        msg_id: [u8; 16],
        to: &[u8; 32],
        conv: &[u8; 32],
        lamport: Option<u64>,
        payload: Vec<u8>,
        now: u64,
        due_at: u64,
        expires_at: u64,
    ) -> Result<Due, EngineError> {
        let queued = Queued::new(*conv, lamport, None, payload.clone());
        let entry = self
            .store
            .outbox()
            .push(msg_id, *to, queued.to_bytes(), now, expires_at)?;
        self.schedule.insert(
            entry.seq,
            Meta {
                msg_id,
                recipient: *to,
                conv_id: *conv,
                lamport: lamport.unwrap_or(0),
                seq: 0,
                attempts: 0,
                next_at: due_at.max(now + retry::backoff(0)),
                expires_at: entry.expires_at,
            },
        );
        let frame = if due_at > now {
            Vec::new()
        } else {
            match self.encrypt(to, &payload) {
                Ok(frame) => frame,
                Err(EngineError::Store(e)) => return Err(e.into()),
                // This one member cannot be written to now (no contact,
                // or no session can be set up with its keys): its entry
                // waits in the outbox and is tried again later (and
                // expires in time); the other members' go, and the change
                // that queued it stands.
                Err(e) => {
                    tracing::warn!(error = %e, pos = entry.seq, "queued for a member, not sent now");
                    self.schedule
                        .reschedule(entry.seq, now + retry::MAX_RETRY, true);
                    Vec::new()
                }
            }
        };
        Ok(Due {
            pos: entry.seq,
            to: *to,
            frame,
        })
    }

    /// Sends messages to a group: one encryption each with our sender key,
    /// published on the group's topic, and kept for each other member
    /// until it acknowledges (see [`GROUP_FALLBACK`]).
    pub fn group_send(
        &mut self,
        group: &[u8; 32],
        bodies: Vec<Vec<u8>>,
        now: u64,
    ) -> Result<(Vec<MessageRef>, GroupEffects), EngineError> {
        if let Some(b) = bodies.iter().find(|b| b.len() > MAX_BODY) {
            return Err(EngineError::BodyTooLarge {
                len: b.len(),
                max: MAX_BODY,
            });
        }
        let me = self.me.public().signing;
        let view = self.view(group)?.clone();
        if !view.is_member(&me) {
            return Err(refused("not a member of this group"));
        }
        let mut fx = GroupEffects::default();
        let stale = self.groups.slots.get(group).is_none_or(|s| {
            s.own.as_ref().is_none_or(|k| {
                now.saturating_sub(k.created_at) >= ROTATE_AFTER || k.iteration >= ROTATE_EVERY
            })
        });
        if stale {
            fx.due.extend(self.new_sender_key(group, now)?);
        }
        let others: Vec<[u8; 32]> = view
            .members
            .iter()
            .map(|m| m.key)
            .filter(|k| k != &me)
            .collect();
        let topic = groups::topic_id(group);
        let mut state = self.conv_state(group)?;
        let mut stored = Vec::with_capacity(bodies.len());
        let mut sealed = Vec::with_capacity(bodies.len());
        for body in bodies {
            state.lamport = state.lamport.saturating_add(1);
            let seq = state.next_seq;
            state.next_seq += 1;
            let mut msg_id = [0u8; 16];
            rand::Rng::fill_bytes(&mut self.rng, &mut msg_id);
            let expires_at = view.retention.map(|r| now.saturating_add(r));
            let chat = Chat {
                msg_id,
                lamport: state.lamport,
                seq,
                sent_at: now,
                expires_at,
                reply_to: None,
                body: body.clone(),
            };
            let own = self
                .groups
                .slots
                .get_mut(group)
                .and_then(|s| s.own.as_mut())
                .ok_or(refused("no sender key"))?;
            let msg = own
                .encrypt(&me, &Payload::Chat(chat).to_bytes())?
                .to_bytes();
            stored.push(StoredMessage {
                msg_id,
                conv_id: *group,
                sender: me,
                lamport: state.lamport,
                sent_at: now,
                body,
                state: DeliveryState::Sent,
                expires_at,
            });
            sealed.push(msg);
        }
        if let Some(own) = self.groups.slots.get(group).and_then(|s| s.own.as_ref()) {
            self.store
                .records(Kind::SenderKeys)?
                .put(&sender_key_record(group, &me, None), &own.to_bytes())?;
        }
        self.put_conv_state(group, &state)?;
        self.store
            .history()
            .append_batch(&stored, Direction::Outgoing)?;
        let store = self.store.clone();
        let tallies = store.records(Kind::Groups)?;
        let mut refs = Vec::with_capacity(stored.len());
        for (msg, bytes) in stored.iter().zip(sealed) {
            let tally = Tally {
                version: TALLY_VERSION,
                group: *group,
                lamport: msg.lamport,
                members: others.clone(),
                delivered: vec![false; others.len()],
                read: vec![false; others.len()],
            };
            tallies.put(&tally_key(&msg.msg_id), &wire::encode(&tally))?;
            let expires = msg
                .expires_at
                .map_or(now + self.ttl, |at| at.min(now + self.ttl));
            let payload = Payload::Group {
                message: bytes.clone(),
            }
            .to_bytes();
            for k in &others {
                self.queue_as(
                    msg.msg_id,
                    k,
                    group,
                    Some(msg.lamport),
                    payload.clone(),
                    now,
                    now + GROUP_FALLBACK,
                    expires,
                )?;
            }
            fx.publish.push(ToPublish {
                topic,
                message: bytes,
                members: others.clone(),
            });
            refs.push(msg.reference());
        }
        Ok((refs, fx))
    }

    /// Handles group messages (from the topic, or sent 1:1 by `via`).
    /// Returns per message whether it was taken (stored, already stored,
    /// or waiting for its sender key when it came from the topic).
    pub fn group_messages(
        &mut self,
        messages: &[(Vec<u8>, Option<[u8; 32]>)],
        now: u64,
    ) -> Result<(Vec<bool>, GroupEffects), EngineError> {
        let me = self.me.public().signing;
        let mut fx = GroupEffects::default();
        let mut taken = Vec::with_capacity(messages.len());
        let mut incoming: Vec<StoredMessage> = Vec::new();
        // Per (group, sender): the messages to acknowledge.
        let mut receipts: HashMap<([u8; 32], [u8; 32]), Vec<Acked>> = HashMap::new();
        let mut touched: HashSet<([u8; 32], [u8; 32])> = HashSet::new();
        let mut states: HashMap<[u8; 32], crate::node::state::ConvState> = HashMap::new();
        for (bytes, via) in messages {
            let Ok(msg) = SenderKeyMessage::from_bytes(bytes) else {
                taken.push(false);
                continue;
            };
            let group = msg.group_id;
            let Some(slot) = self.groups.slots.get_mut(&group) else {
                taken.push(false);
                continue;
            };
            if !slot.log.view().is_member(&me) {
                taken.push(false);
                continue;
            }
            let mut opened = None;
            for (member, keys) in slot.receivers.iter_mut() {
                for r in keys.iter_mut().rev() {
                    if r.key_id() != msg.key_id {
                        continue;
                    }
                    // Its signature names the member it is from: a key
                    // passed off by another member opens nothing.
                    match r.decrypt(member, &msg) {
                        Ok(plain) => opened = Some((*member, Ok(plain))),
                        Err(crypto::Error::Duplicate { .. }) => {
                            opened = Some((*member, Err(())));
                        }
                        Err(_) => continue,
                    }
                    break;
                }
                if opened.is_some() {
                    break;
                }
            }
            let Some((sender, plain)) = opened else {
                tracing::debug!(
                    key_id = msg.key_id,
                    from_topic = via.is_none(),
                    "group message waits for its sender key"
                );
                // No key for it yet: from the topic it waits (the author's
                // 1:1 copy is the durable one); sent 1:1, the author keeps
                // it and tries again.
                if via.is_none() {
                    if slot.pending.len() >= MAX_PENDING {
                        slot.pending.pop_front();
                    }
                    slot.pending.push_back(bytes.clone());
                }
                taken.push(via.is_none());
                continue;
            };
            touched.insert((group, sender));
            let id = (sender, msg.key_id, msg.iteration);
            let Ok(plain) = plain else {
                // Already read: acknowledge again (the receipt may have
                // been lost), if it is one of the recent ones.
                if let Some(acked) = self.groups.slots.get(&group).and_then(|s| s.read.get(&id)) {
                    receipts.entry((group, sender)).or_default().push(acked);
                }
                taken.push(true);
                continue;
            };
            let Ok(Payload::Chat(chat)) = Payload::from_bytes(&plain) else {
                taken.push(false);
                continue;
            };
            taken.push(true);
            if let Some(slot) = self.groups.slots.get_mut(&group) {
                slot.read.insert(id, (chat.lamport, chat.msg_id));
            }
            receipts
                .entry((group, sender))
                .or_default()
                .push((chat.lamport, chat.msg_id));
            if chat.expires_at.is_some_and(|at| at <= now) {
                continue;
            }
            let state = match states.entry(group) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(self.conv_state(&group)?),
            };
            super::witness_clock(&mut state.lamport, chat.lamport);
            incoming.push(StoredMessage {
                msg_id: chat.msg_id,
                conv_id: group,
                sender,
                lamport: chat.lamport,
                sent_at: chat.sent_at,
                body: chat.body,
                state: DeliveryState::Delivered,
                expires_at: super::retention::received_expiry(
                    chat.expires_at,
                    self.groups
                        .slots
                        .get(&group)
                        .and_then(|s| s.log.view().retention),
                    now,
                ),
            });
        }
        for (group, sender) in &touched {
            self.save_receivers(group, sender)?;
        }
        for (group, state) in &states {
            self.put_conv_state(group, state)?;
        }
        let stored = self
            .store
            .history()
            .append_batch(&incoming, Direction::Incoming)?;
        for (msg, outcome) in incoming.into_iter().zip(stored) {
            if outcome == Appended::Inserted {
                fx.events.push(Event::MessageReceived(msg));
            }
        }
        // Receipts wait to go with the next ones (see
        // `GROUP_RECEIPT_DELAY`); a full payload goes at once.
        for ((group, sender), messages) in receipts {
            if !self.contacts.contains_key(&sender) {
                continue;
            }
            let held = self.groups.acks.entry((group, sender)).or_default();
            held.extend(messages);
            if held.len() >= crate::node::proto::MAX_RECEIPTS {
                let full = std::mem::take(held);
                self.groups.acks.remove(&(group, sender));
                let frames = self.delivered_frames(group, sender, &full)?;
                fx.replies.extend(frames);
            }
        }
        Ok((taken, fx))
    }

    /// Whether delivered receipts for group messages wait to be sent.
    pub fn has_group_receipts(&self) -> bool {
        !self.groups.acks.is_empty()
    }

    /// The delivered receipts for group messages held so far: author and
    /// frame (the sessions moved on; the caller writes before sending).
    pub(crate) fn take_group_receipts(&mut self) -> Result<Vec<Addressed>, EngineError> {
        let held: Vec<_> = self.groups.acks.drain().collect();
        let mut out = Vec::new();
        for ((group, sender), messages) in held {
            // An author no longer a contact (removed meanwhile) gets
            // none; the others theirs.
            if self.contacts.contains_key(&sender) {
                out.extend(self.delivered_frames(group, sender, &messages)?);
            }
        }
        Ok(out)
    }

    /// Delivered receipts for `sender`'s `messages`, 1:1 frames of at most
    /// `MAX_RECEIPTS` each (sent once: a lost one is made good when a copy
    /// of the message comes again).
    fn delivered_frames(
        &mut self,
        group: [u8; 32],
        sender: [u8; 32],
        messages: &[Acked],
    ) -> Result<Vec<Addressed>, EngineError> {
        let mut out = Vec::new();
        for chunk in messages.chunks(crate::node::proto::MAX_RECEIPTS) {
            let receipt = Payload::GroupReceipts {
                group,
                kind: ReceiptKind::Delivered,
                messages: chunk.to_vec(),
            };
            out.push((sender, self.encrypt(&sender, &receipt.to_bytes())?));
        }
        Ok(out)
    }

    /// Marks a group's conversation read: each author of the messages
    /// read gets one read receipt for them (1:1, like a delivered one),
    /// queued like a 1:1 read receipt, so that an author away now gets it
    /// later. `false` if nothing was unread.
    pub fn mark_group_read(
        &mut self,
        group: &[u8; 32],
        now: u64,
    ) -> Result<(bool, GroupEffects), EngineError> {
        let me = self.me.public().signing;
        let unread = usize::try_from(self.store.history().mark_read(group)?).unwrap_or(usize::MAX);
        let mut fx = GroupEffects::default();
        if unread == 0 {
            return Ok((false, fx));
        }
        let want = unread.min(crate::node::proto::MAX_RECEIPTS);
        let mut by_sender: HashMap<[u8; 32], Vec<Acked>> = HashMap::new();
        for r in self.take_unread(group, want, |m| m.sender != me)? {
            by_sender
                .entry(r.sender)
                .or_default()
                .push((r.lamport, r.msg_id));
        }
        for (sender, messages) in by_sender {
            if !self.contacts.contains_key(&sender) {
                continue;
            }
            let conv = self.conv_with_device(&sender);
            for chunk in messages.chunks(crate::node::proto::MAX_RECEIPTS) {
                let receipt = Payload::GroupReceipts {
                    group: *group,
                    kind: ReceiptKind::Read,
                    messages: chunk.to_vec(),
                };
                fx.due
                    .push(self.queue_receipt(&sender, conv, receipt.to_bytes(), now)?);
            }
        }
        Ok((true, fx))
    }

    fn save_receivers(&self, group: &[u8; 32], member: &[u8; 32]) -> Result<(), EngineError> {
        let Some(keys) = self
            .groups
            .slots
            .get(group)
            .and_then(|s| s.receivers.get(member))
        else {
            return Ok(());
        };
        let records = self.store.records(Kind::SenderKeys)?;
        for r in keys {
            records.put(
                &sender_key_record(group, member, Some(r.key_id())),
                &r.to_bytes(),
            )?;
        }
        Ok(())
    }

    /// Group operations sent by the contact `from`.
    pub(super) fn on_group_ops(
        &mut self,
        from: &[u8; 32],
        ops: &[serde_bytes::ByteBuf],
        now: u64,
    ) -> Result<GroupEffects, EngineError> {
        let mut by_group: HashMap<[u8; 32], Vec<Op>> = HashMap::new();
        for b in ops {
            let op = Op::from_bytes(b)?;
            by_group.entry(op.group).or_default().push(op);
        }
        let several = by_group.len() > 1;
        let mut fx = GroupEffects::default();
        for (group, ops) in by_group {
            let ops = if self.groups.slots.contains_key(&group) {
                if !self.counts_as_joined_again(&group, &ops, from)? {
                    continue;
                }
                ops
            } else {
                match self.limbo(group, ops, from)? {
                    Some(all) => all,
                    None => continue,
                }
            };
            match self.apply_ops(group, ops, false, now) {
                Ok(f) => fx.extend(f),
                // One group's refusal (its log is full) in a payload of
                // several: the others' changes are taken already, and
                // their effects (topics, events, frames) must not be lost
                // with it. Our own payloads carry one group each. Any
                // other error fails the payload, as for one group.
                Err(e @ EngineError::Group(_)) if several => tracing::warn!(
                    group = %crate::store::hex(&group[..4]),
                    error = %e,
                    "operations of one group in a payload of several refused"
                ),
                Err(e) => return Err(e),
            }
        }
        Ok(fx)
    }

    /// Whether the operations `ops` of a group this device has may be
    /// taken. A group it left (or was removed from) that they add it to
    /// again counts as a new one: against the bounds of
    /// [`Self::too_many_groups`], and as brought by `from` (on disk too).
    /// Past a bound they are not taken, and a warning is logged.
    fn counts_as_joined_again(
        &mut self,
        group: &[u8; 32],
        ops: &[Op],
        from: &[u8; 32],
    ) -> Result<bool, EngineError> {
        let me = self.me.public().signing;
        let Some(slot) = self.groups.slots.get(group) else {
            return Ok(true);
        };
        if slot.log.view().is_member(&me) || !ops.iter().any(|o| o.member == Some(me)) {
            return Ok(true);
        }
        let mut trial = slot.log.clone();
        if trial.insert(ops.iter().cloned()).is_err() || !trial.view().is_member(&me) {
            return Ok(true);
        }
        if let Some(why) = self.too_many_groups(from) {
            tracing::warn!(
                from = %crate::store::hex(&from[..4]),
                "a group we were added to again is not joined: {why}"
            );
            return Ok(false);
        }
        let records = self.store.records(Kind::Groups)?;
        records.put(&via_record(group), from)?;
        records.remove(&let_go_record(group))?;
        if let Some(slot) = self.groups.slots.get_mut(group) {
            slot.via = Some(*from);
            slot.let_go = false;
        }
        Ok(true)
    }

    /// Operations of a group this device does not have. With those held
    /// from before, if they make it a member: all of them, and the group
    /// is created. Otherwise they are held (on disk, for the few most
    /// recent such groups, within [`MAX_LIMBO_BYTES`] each and
    /// [`MAX_LIMBO_TOTAL`] together) until the operation that adds this
    /// device comes: a long log arrives in several payloads, in any order.
    /// Nobody else's group is kept beyond that.
    ///
    /// Each payload costs what it brings: the held operations are folded
    /// into a trial log only once one of them adds this device (nothing
    /// else can make it a member), and a fold checks no signature again
    /// ([`Op::member`]).
    fn limbo(
        &mut self,
        group: [u8; 32],
        ops: Vec<Op>,
        from: &[u8; 32],
    ) -> Result<Option<Vec<Op>>, EngineError> {
        let me = self.me.public().signing;
        let via = self.groups.limbo_via.remove(&group).unwrap_or(*from);
        let mut held = match self.groups.limbo.iter().position(|(g, _)| *g == group) {
            Some(i) => self
                .groups
                .limbo
                .remove(i)
                .map(|(_, o)| o)
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let mut known: HashSet<[u8; 32]> = held.iter().map(|o| o.id).collect();
        let fresh: Vec<Op> = ops.into_iter().filter(|o| known.insert(o.id)).collect();
        let records = self.store.records(Kind::Groups)?;
        let bytes = |ops: &[Op]| ops.iter().map(|o| o.bytes.len()).sum::<usize>();
        let first_new = held.len();
        held.extend(fresh);
        let adds_me = |o: &Op| matches!(o.change, Change::Add { .. }) && o.member == Some(me);
        if held.len() <= groups::MAX_OPS && held.iter().any(adds_me) {
            let mut trial = Log::new(group);
            if trial.insert(held.iter().cloned()).is_ok() && trial.view().is_member(&me) {
                for op in &held[..first_new] {
                    records.remove(&limbo_record(&group, &op.id))?;
                }
                if let Some(why) = self.too_many_groups(from) {
                    tracing::warn!(
                        from = %crate::store::hex(&from[..4]),
                        "a group we were added to is not joined: {why}"
                    );
                    return Ok(None);
                }
                records.put(&via_record(&group), from)?;
                let mut slot = GroupSlot::new(group);
                slot.via = Some(*from);
                self.groups.slots.insert(group, slot);
                return Ok(Some(held));
            }
        }
        if held.len() > groups::MAX_OPS || bytes(&held) > MAX_LIMBO_BYTES {
            // Too much to hold for a group this device is not in: nothing
            // of it is kept.
            for op in &held[..first_new] {
                records.remove(&limbo_record(&group, &op.id))?;
            }
            return Ok(None);
        }
        for op in &held[first_new..] {
            records.put(&limbo_record(&group, &op.id), &op.bytes)?;
        }
        self.groups.limbo.push_back((group, held));
        self.groups.limbo_via.insert(group, via);
        // The contact's own oldest go first while it holds too many.
        loop {
            let theirs: Vec<usize> = (0..self.groups.limbo.len())
                .filter(|&i| self.groups.limbo_via.get(&self.groups.limbo[i].0) == Some(&via))
                .collect();
            let held_bytes: usize = theirs.iter().map(|&i| bytes(&self.groups.limbo[i].1)).sum();
            if theirs.len() <= MAX_LIMBO_FROM_ONE && held_bytes <= MAX_LIMBO_BYTES {
                break;
            }
            self.drop_limbo(theirs[0])?;
        }
        let total =
            |l: &VecDeque<([u8; 32], Vec<Op>)>| l.iter().map(|(_, o)| bytes(o)).sum::<usize>();
        while self.groups.limbo.len() > MAX_LIMBO_GROUPS
            || (self.groups.limbo.len() > 1 && total(&self.groups.limbo) > MAX_LIMBO_TOTAL)
        {
            self.drop_limbo(0)?;
        }
        Ok(None)
    }

    /// Forgets the held group at `index` of the limbo, on disk too.
    fn drop_limbo(&mut self, index: usize) -> Result<(), EngineError> {
        if let Some((old, ops)) = self.groups.limbo.remove(index) {
            self.groups.limbo_via.remove(&old);
            let records = self.store.records(Kind::Groups)?;
            for op in &ops {
                records.remove(&limbo_record(&old, &op.id))?;
            }
        }
        Ok(())
    }

    /// Why a group that the contact `from` brings this device into is not
    /// joined, if it is not: see [`MAX_GROUPS_FROM_ONE`] (counted by the
    /// contact whose payload made us a member, not by the identity the log
    /// names, which a contact can make afresh for each group) and
    /// [`MAX_GROUPS_JOINED`].
    ///
    /// A group counts while this device is in it, added by another, and
    /// after another removed it: its log stays here, and a contact that
    /// adds this device to groups and removes it again must not get
    /// around the bound. Leaving frees the place (the person chose it).
    fn too_many_groups(&self, from: &[u8; 32]) -> Option<&'static str> {
        let me = self.me.public().signing;
        let joined: Vec<&GroupSlot> = self
            .groups
            .slots
            .values()
            .filter(|s| match s.log.view().member(&me) {
                Some(m) => m.added_by != me,
                None => {
                    s.via.is_some()
                        && !s.let_go
                        && !s
                            .log
                            .ops()
                            .any(|o| o.author == me && matches!(o.change, Change::Leave))
                }
            })
            .collect();
        if joined.len() >= MAX_GROUPS_JOINED {
            Some("this device is in too many groups that others added it to")
        } else if joined
            .iter()
            .filter(|s| s.via.as_ref() == Some(from))
            .count()
            >= MAX_GROUPS_FROM_ONE
        {
            Some("that contact has brought this device into too many groups")
        } else {
            None
        }
    }

    /// A sender key sent by the contact `from`.
    pub(super) fn on_sender_key(
        &mut self,
        from: &[u8; 32],
        distribution: &[u8],
        now: u64,
    ) -> Result<GroupEffects, EngineError> {
        let d = SenderKeyDistribution::from_bytes(distribution)?;
        if !self.knows_sender(from, &d) {
            tracing::debug!(
                from = %crate::store::hex(&from[..4]),
                key_id = d.key_id,
                "sender key before its group or member"
            );
            // Kept (on disk: the payload is acknowledged) until the group
            // or the member is known; past the bound, refused.
            let record = early_record(from, &d);
            let records = self.store.records(Kind::SenderKeys)?;
            if records.get(&record)?.is_none() {
                if self.groups.early.len() >= MAX_EARLY_KEYS {
                    return Err(refused("too many sender keys waiting for their group"));
                }
                // One contact cannot take every place for good.
                if self.groups.early.iter().filter(|(f, _)| f == from).count() >= MAX_EARLY_FROM_ONE
                {
                    return Err(refused("too many sender keys from this contact waiting"));
                }
                records.put(&record, distribution)?;
                self.groups.early.push_back((*from, distribution.to_vec()));
            }
            return Ok(GroupEffects::default());
        }
        let group = d.group_id;
        let Some(slot) = self.groups.slots.get_mut(&group) else {
            return Ok(GroupEffects::default());
        };
        // A member may pass another's distribution off as its own: it is
        // kept for that member, and opens nothing, as every group message's
        // signature names its author (see `crypto::sender_key`).
        let keys = slot.receivers.entry(*from).or_default();
        if keys.iter().any(|k| k.key_id() == d.key_id) {
            return Ok(GroupEffects::default());
        }
        // Kept oldest first, by generation. A key older than every kept one
        // when they fill their places has been replaced twice since (it came
        // late, by another path): it would push out a newer one.
        if keys.len() >= KEYS_PER_MEMBER
            && keys.first().is_some_and(|k| d.generation < k.generation())
        {
            tracing::debug!(
                from = %crate::store::hex(&from[..4]),
                key_id = d.key_id,
                "sender key older than the ones kept; dropped"
            );
            return Ok(GroupEffects::default());
        }
        tracing::debug!(
            from = %crate::store::hex(&from[..4]),
            key_id = d.key_id,
            "sender key"
        );
        let at = keys
            .iter()
            .position(|k| k.generation() > d.generation)
            .unwrap_or(keys.len());
        keys.insert(at, SenderKeyReceiver::from_distribution(&d));
        let records = self.store.records(Kind::SenderKeys)?;
        while keys.len() > KEYS_PER_MEMBER {
            let old = keys.remove(0);
            records.remove(&sender_key_record(&group, from, Some(old.key_id())))?;
        }
        self.groups.keys_changed.insert(group);
        self.save_receivers(&group, from)?;
        // Messages that waited for this key.
        let waiting: Vec<(Vec<u8>, Option<[u8; 32]>)> = self
            .groups
            .slots
            .get_mut(&group)
            .map(|s| s.pending.drain(..).map(|b| (b, None)).collect())
            .unwrap_or_default();
        if waiting.is_empty() {
            return Ok(GroupEffects::default());
        }
        let (taken, fx) = self.group_messages(&waiting, now)?;
        // Those still without a key wait again (group_messages put them
        // back); the rest are done.
        let _ = taken;
        Ok(fx)
    }

    /// Whether `from` is a member of the group `d` is for, in our view.
    fn knows_sender(&self, from: &[u8; 32], d: &SenderKeyDistribution) -> bool {
        self.groups
            .slots
            .get(&d.group_id)
            .is_some_and(|s| s.log.view().is_member(from))
    }

    /// Takes the early sender keys whose group and member are known now;
    /// the others keep waiting, in memory and on disk as they were.
    fn retry_early_keys(&mut self, now: u64) -> Result<GroupEffects, EngineError> {
        let early: Vec<([u8; 32], Vec<u8>)> = self.groups.early.drain(..).collect();
        let store = self.store.clone();
        let records = store.records(Kind::SenderKeys)?;
        let mut fx = GroupEffects::default();
        for (from, d) in early {
            let Ok(dist) = SenderKeyDistribution::from_bytes(&d) else {
                continue;
            };
            if !self.knows_sender(&from, &dist) {
                self.groups.early.push_back((from, d));
                continue;
            }
            records.remove(&early_record(&from, &dist))?;
            match self.on_sender_key(&from, &d, now) {
                Ok(f) => fx.extend(f),
                Err(EngineError::Store(e)) => return Err(e.into()),
                // A key that no longer fits is dropped, not the change.
                Err(_) => {}
            }
        }
        Ok(fx)
    }

    /// Receipts from the member `from` for our group messages.
    pub(super) fn on_group_receipts(
        &mut self,
        from: &[u8; 32],
        group: &[u8; 32],
        kind: ReceiptKind,
        messages: &[(u64, [u8; 16])],
    ) -> Result<Vec<Event>, EngineError> {
        let mut events = Vec::new();
        for &(lamport, msg_id) in messages {
            // A read receipt says delivered too (the delivered one may
            // have been lost): either ends the member's fallback copy.
            if let Some(pos) = self.schedule.find(&msg_id, from) {
                self.schedule.remove(pos);
                self.store.outbox().ack(pos)?;
            }
            events.extend(self.count_receipt(group, lamport, &msg_id, from, kind)?);
        }
        Ok(events)
    }

    /// Counts `from`'s receipt for our group message `msg_id`; the event
    /// for the user when a count changed.
    pub(super) fn count_receipt(
        &mut self,
        group: &[u8; 32],
        lamport: u64,
        msg_id: &[u8; 16],
        from: &[u8; 32],
        kind: ReceiptKind,
    ) -> Result<Vec<Event>, EngineError> {
        let records = self.store.records(Kind::Groups)?;
        let Some(bytes) = records.get(&tally_key(msg_id))? else {
            return Ok(Vec::new());
        };
        let mut t: Tally = wire::decode(&bytes, "group tally", TALLY_VERSION, Tally::MAX)?;
        if &t.group != group || t.lamport != lamport {
            return Ok(Vec::new());
        }
        if t.delivered.len() != t.members.len() || t.read.len() != t.members.len() {
            // Not a tally this code writes: it counts nothing more, and
            // the receipts that come keep their other effects.
            tracing::warn!("group tally without a mark per member; dropped");
            records.remove(&tally_key(msg_id))?;
            return Ok(Vec::new());
        }
        let Some(i) = t.members.iter().position(|m| m == from) else {
            return Ok(Vec::new());
        };
        let changed = match kind {
            ReceiptKind::Delivered => !std::mem::replace(&mut t.delivered[i], true),
            ReceiptKind::Read => {
                let d = !std::mem::replace(&mut t.delivered[i], true);
                !std::mem::replace(&mut t.read[i], true) || d
            }
        };
        if !changed {
            return Ok(Vec::new());
        }
        let (delivered, read) = t.counts();
        let members = u32::try_from(t.members.len()).unwrap_or(u32::MAX);
        if read == members {
            // Read by everyone: nothing left to count.
            records.remove(&tally_key(msg_id))?;
        } else {
            records.put(&tally_key(msg_id), &wire::encode(&t))?;
        }
        let message = MessageRef {
            conv_id: *group,
            lamport,
            sender: self.me.public().signing,
            msg_id: *msg_id,
        };
        let mut events = vec![Event::GroupReceipt {
            message,
            delivered,
            read,
            members,
        }];
        let whole = if read == members {
            Some(DeliveryState::Read)
        } else if delivered == members {
            Some(DeliveryState::Delivered)
        } else {
            None
        };
        if let Some(state) = whole {
            events.extend(self.set_states(&[(message, state)])?);
        }
        Ok(events)
    }

    /// Whether the queued entry `m` is the fallback copy of one of our
    /// group messages whose member has not acknowledged it (its tally
    /// still says so).
    pub(super) fn group_copy_unacknowledged(&self, m: &Meta) -> Result<bool, EngineError> {
        if m.seq != 0 || m.lamport == 0 || !self.is_group(&m.conv_id) {
            return Ok(false);
        }
        let Some(bytes) = self
            .store
            .records(Kind::Groups)?
            .get(&tally_key(&m.msg_id))?
        else {
            return Ok(false);
        };
        let Ok(t) = wire::decode::<Tally>(&bytes, "group tally", TALLY_VERSION, Tally::MAX) else {
            return Ok(false);
        };
        Ok(t.group == m.conv_id
            && t.lamport == m.lamport
            && t.members
                .iter()
                .zip(&t.delivered)
                .any(|(k, d)| k == &m.recipient && !d))
    }

    /// The other members of the group `conv` (none if it is not one).
    pub(crate) fn other_members(&self, conv: &[u8; 32]) -> Vec<[u8; 32]> {
        let me = self.me.public().signing;
        self.groups
            .slots
            .get(conv)
            .map(|slot| {
                slot.log
                    .view()
                    .members
                    .iter()
                    .map(|m| m.key)
                    .filter(|k| k != &me)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether `conv` is a group's conversation.
    pub(crate) fn is_group(&self, conv: &[u8; 32]) -> bool {
        self.groups.slots.contains_key(conv)
    }

    /// Whether a group made the contact `key` and the person has not
    /// taken it up.
    pub fn made_by_a_group(&self, key: &[u8; 32]) -> bool {
        self.groups.made.contains(key)
    }

    /// Marks the contact `key` as one groups keep: it goes when it is in
    /// no group this device is in any more ([`Self::forget_orphans`]).
    pub(super) fn mark_made(&mut self, key: &[u8; 32]) -> Result<(), EngineError> {
        if self.groups.made.insert(*key) {
            self.store
                .records(Kind::Groups)?
                .put(&made_record(key), &[])?;
        }
        Ok(())
    }

    /// The contact `key` is no longer one a group made: the person took
    /// it up (added it by an invite, accepted, verified, wrote to it, set
    /// its timer, chose it for a group), or it is gone.
    pub(crate) fn adopt(&mut self, key: &[u8; 32]) -> Result<(), EngineError> {
        self.groups.orphans.remove(key);
        if self.groups.made.remove(key) {
            self.store
                .records(Kind::Groups)?
                .remove(&made_record(key))?;
        }
        Ok(())
    }

    /// Contacts groups made that no group this device is in has.
    fn made_not_in_a_group(&self) -> HashSet<[u8; 32]> {
        let me = self.me.public().signing;
        let mut in_groups: HashSet<[u8; 32]> = HashSet::new();
        for slot in self.groups.slots.values() {
            let view = slot.log.view();
            if view.is_member(&me) {
                in_groups.extend(view.members.iter().map(|m| m.key));
            }
        }
        self.groups
            .made
            .iter()
            .filter(|k| !in_groups.contains(*k))
            .copied()
            .collect()
    }

    /// Removes the contacts that groups made and that no group this
    /// device is in has any more, once nothing is queued for them;
    /// returns them (the node stops tracking them). Their conversations
    /// and sessions stay, as for any removed contact. Cheap when there are
    /// none, or when no membership changed since the last call (called
    /// every tick). A store error is logged and ends the pass; what was
    /// removed before it is returned, with the names they had.
    pub fn forget_orphans(&mut self, now: u64) -> (Vec<Forgotten>, Vec<Event>) {
        let mut events = Vec::new();
        if self.groups.orphans.is_empty() {
            self.groups.orphaned_at.clear();
            return (Vec::new(), events);
        }
        if std::mem::take(&mut self.groups.orphans_unchecked) {
            let out = self.made_not_in_a_group();
            // Back in a group (or no longer made by one): not orphans.
            self.groups.orphans.retain(|k| out.contains(k));
        }
        let orphans = &self.groups.orphans;
        self.groups.orphaned_at.retain(|k, _| orphans.contains(k));
        for k in orphans {
            self.groups.orphaned_at.entry(*k).or_insert(now);
        }
        // Not while our delivered receipts for its group messages wait to
        // go, nor while it is bringing this device into a group whose
        // operations are still coming in; and not while something is
        // queued for it, until that is given up after `ORPHAN_GRACE`.
        let ready: Vec<([u8; 32], bool)> = self
            .groups
            .orphans
            .iter()
            .filter(|k| {
                !self.groups.acks.keys().any(|(_, author)| author == *k)
                    && !self.groups.limbo_via.values().any(|via| via == *k)
            })
            .filter_map(|k| {
                if !self.schedule.has_any_for(k) {
                    return Some((*k, false));
                }
                let since = self.groups.orphaned_at.get(k).copied().unwrap_or(now);
                (now >= since.saturating_add(ORPHAN_GRACE)).then_some((*k, true))
            })
            .collect();
        let mut gone = Vec::new();
        for (k, overdue) in ready {
            if overdue {
                match self.give_up_queued_for(&k) {
                    Ok(ev) => events.extend(ev),
                    Err(e) => {
                        tracing::warn!(error = %e, "giving up what waits for a contact groups made");
                        break;
                    }
                }
            }
            let was = self.contacts.get(&k).map(|c| Forgotten {
                key: k,
                name: c.name.clone(),
                identity: c.identity.clone(),
                invite: self.contact_invite(&k).ok(),
            });
            // `remove_contact` forgets the mark as well.
            let r = match self.remove_contact(&k) {
                Ok(true) => {
                    gone.extend(was);
                    Ok(())
                }
                Ok(false) => self.adopt(&k),
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, "forgetting a contact groups made");
                break;
            }
        }
        (gone, events)
    }

    /// Gives up everything queued for `to`, as if it had expired (the
    /// same events).
    pub(super) fn give_up_queued_for(&mut self, to: &[u8; 32]) -> Result<Vec<Event>, EngineError> {
        let mut events = Vec::new();
        for pos in self.schedule.queued_for(to, |_| true) {
            let Some(m) = self.schedule.remove(pos) else {
                continue;
            };
            self.store.outbox().ack(pos)?;
            events.extend(self.given_up(&m)?);
        }
        Ok(events)
    }

    /// The group `group`, which another removed this device from, is let
    /// go: it no longer counts against the contact that brought it.
    fn let_go(&mut self, group: &[u8; 32]) -> Result<(), EngineError> {
        self.store
            .records(Kind::Groups)?
            .put(&let_go_record(group), &[])?;
        if let Some(slot) = self.groups.slots.get_mut(group) {
            slot.let_go = true;
        }
        Ok(())
    }

    /// The groups this device administers where a device of `account`
    /// (a member whose account that is) is a member and `device` is not:
    /// where a device the account added belongs too (docs/devices.md, §3).
    pub fn groups_missing_device(&self, account: &[u8; 32], device: &[u8; 32]) -> Vec<[u8; 32]> {
        self.administered(|view| {
            !view.is_member(device)
                && view
                    .members
                    .iter()
                    .any(|m| m.key == *account || self.account_of(&m.key) == *account)
        })
    }

    /// The groups this device administers that have `device` as a member.
    pub fn groups_holding(&self, device: &[u8; 32]) -> Vec<[u8; 32]> {
        self.administered(|view| view.is_member(device))
    }

    /// The groups where this device is an admin and `pick` holds.
    fn administered(&self, pick: impl Fn(&View) -> bool) -> Vec<[u8; 32]> {
        let me = self.me.public().signing;
        let mut out: Vec<[u8; 32]> = self
            .groups
            .slots
            .iter()
            .filter(|(_, slot)| {
                let view = slot.log.view();
                view.member(&me).is_some_and(|m| m.role == Role::Admin) && pick(view)
            })
            .map(|(g, _)| *g)
            .collect();
        out.sort_unstable();
        out
    }

    /// Whether `key` is a member of a group this device is in.
    pub(super) fn in_a_group_with(&self, key: &[u8; 32]) -> bool {
        let me = self.me.public().signing;
        self.groups.slots.values().any(|slot| {
            let view = slot.log.view();
            view.is_member(&me) && view.is_member(key)
        })
    }

    /// Whether `contact` and this device are members of one group that
    /// another member brought `contact` into: it learns our card from that
    /// group's log (from whoever added it), so it needs no introduction.
    /// A member we added ourselves may not have us as a contact: it hears
    /// of the group only from us.
    pub(crate) fn knows_us_from_a_group(&self, contact: &[u8; 32]) -> bool {
        let me = self.me.public().signing;
        self.groups.slots.values().any(|s| {
            let view = s.log.view();
            view.is_member(&me) && view.member(contact).is_some_and(|m| m.added_by != me)
        })
    }
}

fn tally_key(msg_id: &[u8; 16]) -> Vec<u8> {
    [TALLY_PREFIX, msg_id.as_slice()].concat()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::crypto::{KdfParams, Keystore};
    use crate::store::Store;

    struct Devices {
        _dirs: Vec<tempfile::TempDir>,
        engines: Vec<Engine>,
        keys: Vec<[u8; 32]>,
        /// Group messages published, not yet handed out: (author, topic, bytes).
        published: Vec<(usize, [u8; 32], Vec<u8>)>,
        /// Frames in flight, in order: from, to, frame, outbox position.
        wire: VecDeque<(usize, usize, Vec<u8>, Option<u64>)>,
        events: Vec<Vec<Event>>,
    }

    impl Devices {
        /// `n` devices; device 0 knows everyone, the others only device 0.
        fn new(n: usize) -> Self {
            Self::new_ordered(n, false)
        }

        /// [`Self::new`], with device 0 the one of the highest identity key
        /// if `highest_first`.
        fn new_ordered(n: usize, highest_first: bool) -> Self {
            let mut dirs = Vec::new();
            let mut engines = Vec::new();
            for i in 0..n {
                let dir = tempfile::tempdir().unwrap();
                let mut rng = StdRng::seed_from_u64(i as u64);
                let key = Keystore::create(b"pw", KdfParams::INSECURE_FAST, &mut rng)
                    .unwrap()
                    .1;
                let store = Arc::new(Store::open(dir.path(), &key).unwrap());
                engines.push(Engine::open(store, 100).unwrap());
                dirs.push(dir);
            }
            if highest_first {
                let top = (0..n)
                    .max_by_key(|&i| engines[i].me.public().signing)
                    .unwrap_or(0);
                engines.swap(0, top);
                dirs.swap(0, top);
            }
            let keys: Vec<[u8; 32]> = engines.iter().map(|e| e.me.public().signing).collect();
            for i in 1..n {
                let inv = engines[i].invite(vec![], 100).unwrap();
                engines[0].add_contact(&inv, &format!("m{i}")).unwrap();
                let inv0 = engines[0].invite(vec![], 100).unwrap();
                engines[i].add_contact(&inv0, "admin").unwrap();
            }
            Self {
                _dirs: dirs,
                engines,
                keys,
                published: Vec::new(),
                wire: VecDeque::new(),
                events: vec![Vec::new(); n],
            }
        }

        /// `n` devices, and the group device 0 created with all the
        /// others, formed (every frame delivered).
        fn formed(n: usize) -> (Self, [u8; 32]) {
            let mut d = Self::new(n);
            let (group, fx) = d.team();
            d.effects(0, fx);
            d.run(true, &[]);
            (d, group)
        }

        /// Device 0 creates the group "team" with every other device.
        fn team(&mut self) -> ([u8; 32], GroupEffects) {
            let members = self.keys[1..].to_vec();
            self.engines[0]
                .create_group("team", "admin", &members, None, vec![], 100)
                .unwrap()
        }

        fn index(&self, key: &[u8; 32]) -> usize {
            self.keys.iter().position(|k| k == key).unwrap()
        }

        fn effects(&mut self, from: usize, fx: GroupEffects) {
            for d in fx.due {
                if !d.frame.is_empty() {
                    let to = self.index(&d.to);
                    self.wire.push_back((from, to, d.frame, Some(d.pos)));
                }
            }
            for (to, frame) in fx.replies {
                let to = self.index(&to);
                self.wire.push_back((from, to, frame, None));
            }
            for p in fx.publish {
                self.published.push((from, p.topic, p.message));
            }
            self.events[from].extend(fx.events);
        }

        /// Delivers frames directly until nothing is left; `deliver_topic`
        /// also hands published group messages to every other device.
        fn run(&mut self, deliver_topic: bool, skip: &[usize]) {
            // A frame from a device its recipient does not know yet is
            // refused, and its sender's outbox tries again later: here it
            // goes to the back of the line (a bounded number of times).
            let mut refused = 0;
            loop {
                if let Some((from, to, frame, pos)) = self.wire.pop_front() {
                    if skip.contains(&to) {
                        continue;
                    }
                    let from_key = self.keys[from];
                    let h = match self.engines[to].receive(
                        &from_key,
                        std::slice::from_ref(&frame),
                        200,
                        true,
                    ) {
                        Err(EngineError::UnknownSender) if refused < 1000 => {
                            refused += 1;
                            self.wire.push_back((from, to, frame, pos));
                            continue;
                        }
                        r => r.unwrap(),
                    };
                    self.events[to].extend(h.events);
                    for r in h.replies {
                        self.wire.push_back((to, from, r, None));
                    }
                    // The transport ack.
                    if let (Some(pos), [true]) = (pos, h.accepted.as_slice()) {
                        let ev = self.engines[from].delivered_direct(&[pos]).unwrap();
                        self.events[from].extend(ev);
                    }
                    self.effects(to, h.group);
                    continue;
                }
                if deliver_topic && let Some((author, topic, bytes)) = self.published.pop() {
                    for i in 0..self.engines.len() {
                        if i == author || skip.contains(&i) {
                            continue;
                        }
                        if !self.engines[i].group_topics().contains(&topic) {
                            continue;
                        }
                        let (taken, fx) = self.engines[i]
                            .group_messages(&[(bytes.clone(), None)], 200)
                            .unwrap();
                        assert_eq!(taken, vec![true]);
                        self.effects(i, fx);
                    }
                    continue;
                }
                // Receipts held back to go together: now.
                let mut more = false;
                for i in 0..self.engines.len() {
                    if skip.contains(&i) {
                        continue;
                    }
                    for (to, frame) in self.engines[i].take_group_receipts().unwrap() {
                        let to = self.index(&to);
                        self.wire.push_back((i, to, frame, None));
                        more = true;
                    }
                }
                if !more {
                    break;
                }
            }
        }

        /// Device `i`'s operations of `group`, as they travel.
        fn log(&self, i: usize, group: &[u8; 32]) -> Vec<Op> {
            self.engines[i].groups.slots[group]
                .log
                .ops()
                .cloned()
                .collect()
        }

        fn received(&self, i: usize) -> Vec<Vec<u8>> {
            self.events[i]
                .iter()
                .filter_map(|e| match e {
                    Event::MessageReceived(m) => Some(m.body.clone()),
                    _ => None,
                })
                .collect()
        }
    }

    /// Operations as a `GroupOps` payload carries them.
    fn bytes(ops: &[Op]) -> Vec<serde_bytes::ByteBuf> {
        ops.iter()
            .map(|o| serde_bytes::ByteBuf::from(o.bytes.clone()))
            .collect()
    }

    #[test]
    fn a_group_forms_and_every_member_reads_every_message_once() {
        let (mut d, group) = Devices::formed(4);
        // Everyone holds the same view; members became each other's contacts.
        let view = d.engines[0].groups()[0].clone();
        assert_eq!(view.members.len(), 4);
        for i in 1..4 {
            assert_eq!(d.engines[i].groups(), vec![view.clone()]);
            for j in 1..4 {
                if i != j {
                    assert!(d.engines[i].contacts.contains_key(&d.keys[j]));
                }
            }
        }
        // Every member sends; everyone else reads it once.
        for i in 0..4 {
            let (refs, fx) = d.engines[i]
                .group_send(&group, vec![format!("from {i}").into_bytes()], 200)
                .unwrap();
            assert_eq!(refs.len(), 1);
            d.effects(i, fx);
            d.run(true, &[]);
        }
        for i in 0..4 {
            let mut got = d.received(i);
            got.sort();
            let want: Vec<Vec<u8>> = (0..4)
                .filter(|j| *j != i)
                .map(|j| format!("from {j}").into_bytes())
                .collect();
            assert_eq!(got, want, "device {i}");
        }
        // The author heard from all three members: delivered to 3 of 3,
        // and the message is delivered; no fallback copy is left queued.
        let last = d.events[0]
            .iter()
            .filter_map(|e| match e {
                Event::GroupReceipt {
                    delivered, members, ..
                } => Some((*delivered, *members)),
                _ => None,
            })
            .max()
            .unwrap();
        assert_eq!(last, (3, 3));
        assert!(d.events[0].iter().any(|e| matches!(
            e,
            Event::Receipt {
                state: DeliveryState::Delivered,
                ..
            }
        )));
        assert_eq!(d.engines[0].queued(), 0);
        // Everyone reads: the first message reads "read by 3 of 3".
        for i in 1..4 {
            let (marked, fx) = d.engines[i].mark_group_read(&group, 200).unwrap();
            assert!(marked);
            d.effects(i, fx);
            d.run(true, &[]);
        }
        let read = d.events[0]
            .iter()
            .filter_map(|e| match e {
                Event::GroupReceipt { read, .. } => Some(*read),
                _ => None,
            })
            .max();
        assert_eq!(read, Some(3));
        assert!(d.events[0].iter().any(|e| matches!(
            e,
            Event::Receipt {
                state: DeliveryState::Read,
                ..
            }
        )));
    }

    /// A member learns every other from the group's log, except those it
    /// brought in itself: only they may not have it as a contact, and
    /// need its introduction.
    #[test]
    fn only_the_members_a_device_added_itself_need_its_introduction() {
        let (d, _group) = Devices::formed(4);
        for i in 0..4 {
            for j in 0..4 {
                if i == j {
                    continue;
                }
                // Device 0 created the group and added the others.
                let added_by_i = i == 0;
                assert_eq!(
                    d.engines[i].knows_us_from_a_group(&d.keys[j]),
                    !added_by_i,
                    "device {i} about {j}"
                );
            }
        }
        let stranger = [9u8; 32];
        assert!(!d.engines[1].knows_us_from_a_group(&stranger));
    }

    #[test]
    fn a_read_receipt_for_an_author_away_reaches_it_later() {
        let (mut d, group) = Devices::formed(3);
        let (_, fx) = d.engines[0]
            .group_send(&group, vec![b"read me".to_vec()], 200)
            .unwrap();
        d.effects(0, fx);
        d.run(true, &[]);
        let most_read = |events: &[Event]| {
            events
                .iter()
                .filter_map(|e| match e {
                    Event::GroupReceipt { read, .. } => Some(*read),
                    _ => None,
                })
                .max()
        };
        assert_eq!(most_read(&d.events[0]), Some(0));
        // The author is away while both members read: their receipts wait.
        for i in 1..3 {
            let before = d.engines[i].queued();
            let (marked, fx) = d.engines[i].mark_group_read(&group, 300).unwrap();
            assert!(marked);
            d.effects(i, fx);
            d.run(true, &[0]);
            assert_eq!(d.engines[i].queued(), before + 1);
        }
        assert_eq!(most_read(&d.events[0]), Some(0));
        // The author is back; each member's outbox tries again.
        for i in 1..3 {
            for due in d.engines[i].due(400, 16).unwrap() {
                let to = d.index(&due.to);
                d.wire.push_back((i, to, due.frame, Some(due.pos)));
            }
        }
        d.run(true, &[]);
        assert_eq!(most_read(&d.events[0]), Some(2));
        for i in 1..3 {
            assert_eq!(d.engines[i].queued(), 0);
        }
    }

    /// A member passes another member's sender key on as its own: it is
    /// not taken, so that member's messages still open as that member's.
    #[test]
    fn a_member_cannot_pass_off_another_members_sender_key_as_its_own() {
        let (mut d, group) = Devices::formed(3);
        let (thief, carol) = (d.keys[1], d.keys[2]);
        let theirs = d.engines[2].groups.slots[&group]
            .own
            .as_ref()
            .unwrap()
            .distribution();
        // Device 0 has not got carol's key yet (as a new member may not),
        // and the thief's copy of it comes first: kept, as the thief's.
        d.engines[0]
            .groups
            .slots
            .get_mut(&group)
            .unwrap()
            .receivers
            .remove(&carol);
        let fx = d.engines[0]
            .on_sender_key(&thief, &theirs.to_bytes(), 200)
            .unwrap();
        assert!(fx.due.is_empty() && fx.events.is_empty());
        // Carol's message does not open as the thief's.
        let (_, fx) = d.engines[2]
            .group_send(&group, vec![b"from carol".to_vec()], 300)
            .unwrap();
        d.effects(2, fx);
        d.run(true, &[]);
        let shown = |d: &Devices| {
            d.events[0]
                .iter()
                .filter_map(|e| match e {
                    Event::MessageReceived(m) if m.body == b"from carol" => Some(m.sender),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        assert!(shown(&d).is_empty());
        // Carol's own copy of her key comes: her message opens, as hers.
        let fx = d.engines[0]
            .on_sender_key(&carol, &theirs.to_bytes(), 400)
            .unwrap();
        d.effects(0, fx);
        d.run(true, &[]);
        assert_eq!(shown(&d), vec![carol]);
    }

    /// A payload mixing the operations of two groups, one of which this
    /// device refuses (its log is full): the other group's change and its
    /// effects are kept.
    #[test]
    fn one_groups_refusal_does_not_lose_another_groups_effects() {
        let mut d = Devices::new(3);
        let carol = d.keys[2];
        let (full, _) = d.engines[0]
            .create_group("full", "admin", &[carol], None, vec![], 100)
            .unwrap();
        let log = d.log(0, &full);
        let joined = d.engines[2]
            .on_group_ops(&d.keys[0], &bytes(&log), 100)
            .unwrap();
        assert_eq!(joined.subscribe, vec![groups::topic_id(&full)]);
        // Enough renames to overflow the log, signed by its admin.
        let renames = |d: &Devices, from: u64| -> Vec<Op> {
            (from..from + groups::MAX_OPS as u64)
                .map(|i| {
                    let name = format!("n{i}");
                    Op::new(&d.engines[0].me, full, i, Change::Rename { name })
                })
                .collect()
        };
        let (team, _) = d.team();
        let mut mixed = d.log(0, &team);
        mixed.extend(renames(&d, 1_000));
        let fx = d.engines[2]
            .on_group_ops(&d.keys[0], &bytes(&mixed), 200)
            .unwrap();
        assert_eq!(fx.subscribe, vec![groups::topic_id(&team)]);
        assert!(
            d.engines[2].groups.slots[&team]
                .log
                .view()
                .is_member(&carol)
        );
        // The same refusal alone is still an error.
        let alone = renames(&d, 9_000);
        assert!(
            d.engines[2]
                .on_group_ops(&d.keys[0], &bytes(&alone), 300)
                .is_err()
        );
    }

    /// The only admin stepping down would be made admin again (a group
    /// without one makes its first member admin): refused, with what to do
    /// instead; once another member is admin, it steps down.
    #[test]
    fn the_only_admin_is_told_to_make_another_admin_before_stepping_down() {
        let (mut d, group) = Devices::formed(3);
        let me = d.keys[0];
        let step_down = GroupChange::SetRole {
            member: me,
            role: Role::Member,
        };
        let e = d.engines[0].change_group(&group, step_down.clone(), 200);
        assert!(
            matches!(&e, Err(EngineError::Group(why)) if why.contains("make another member admin")),
            "{e:?}"
        );
        let promote = GroupChange::SetRole {
            member: d.keys[1],
            role: Role::Admin,
        };
        d.engines[0].change_group(&group, promote, 200).unwrap();
        d.engines[0].change_group(&group, step_down, 200).unwrap();
        let view = d.engines[0].groups.slots[&group].log.view().clone();
        assert_eq!(view.member(&me).unwrap().role, Role::Member);
        assert_eq!(view.member(&d.keys[1]).unwrap().role, Role::Admin);
    }

    /// A member's kept sender keys are its two newest by generation, in
    /// whatever order their distributions come and across a restart (they
    /// are read back in the order of their random key ids).
    #[test]
    fn a_members_two_newest_sender_keys_are_kept_whatever_their_order() {
        let (mut d, group) = Devices::formed(3);
        let bob = d.keys[1];
        let first = d.engines[1].groups.slots[&group].own.clone().unwrap();
        let mut rng = StdRng::seed_from_u64(9);
        // Three rotations; the last two with key ids in the reverse order
        // of their age, so that reading them back by id gets them wrong.
        let second = first.rotate(300, &mut rng);
        let (third, fourth) = loop {
            let third = second.rotate(300, &mut rng);
            let fourth = third.rotate(300, &mut rng);
            if fourth.key_id() < third.key_id() {
                break (third, fourth);
            }
        };
        let kept = |d: &Devices| -> Vec<u32> {
            d.engines[0].groups.slots[&group].receivers[&bob]
                .iter()
                .map(SenderKeyReceiver::key_id)
                .collect()
        };
        let give = |d: &mut Devices, k: &SenderKey| {
            let fx = d.engines[0]
                .on_sender_key(&bob, &k.distribution().to_bytes(), 400)
                .unwrap();
            d.effects(0, fx);
        };
        assert_eq!(kept(&d), [first.key_id()]);
        // The third comes before the second: the second still finds its
        // place, and the first goes.
        give(&mut d, &third);
        give(&mut d, &second);
        assert_eq!(kept(&d), [second.key_id(), third.key_id()]);
        // The first, come again late, pushes nothing out.
        give(&mut d, &first);
        assert_eq!(kept(&d), [second.key_id(), third.key_id()]);
        // The fourth pushes out the second, the oldest.
        give(&mut d, &fourth);
        assert_eq!(kept(&d), [third.key_id(), fourth.key_id()]);
        // Read back after a restart: still oldest first, and the next
        // rotation pushes out the third, not the fourth.
        let store = d.engines[0].store.clone();
        d.engines[0] = Engine::open(store, 400).unwrap();
        assert_eq!(kept(&d), [third.key_id(), fourth.key_id()]);
        let fifth = fourth.rotate(300, &mut rng);
        give(&mut d, &fifth);
        assert_eq!(kept(&d), [fourth.key_id(), fifth.key_id()]);
    }

    /// A member's delivered receipt is lost (they are held in memory a
    /// moment before they go): its read receipt alone ends the author's
    /// fallback copy for it, which would otherwise be sent again.
    #[test]
    fn a_read_receipt_alone_ends_a_members_fallback_copy() {
        let (mut d, group) = Devices::formed(3);
        let before = d.engines[0].queued();
        let (refs, fx) = d.engines[0]
            .group_send(&group, vec![b"hello".to_vec()], 200)
            .unwrap();
        drop(fx);
        let m = &refs[0];
        assert_eq!(d.engines[0].queued(), before + 2, "one fallback per member");
        let member = d.keys[1];
        d.engines[0]
            .on_group_receipts(&member, &group, ReceiptKind::Read, &[(m.lamport, m.msg_id)])
            .unwrap();
        assert_eq!(d.engines[0].queued(), before + 1);
    }

    /// One contact can put us in only so many groups; the others' groups
    /// are still joined.
    #[test]
    fn one_contact_puts_this_device_in_so_many_groups_at_most() {
        let mut d = Devices::new(3);
        let (one, two) = (d.keys[1], d.keys[2]);
        for i in 0..=MAX_GROUPS_FROM_ONE {
            let (_, fx) = d.engines[0]
                .create_group(&format!("g{i}"), "admin", &[one, two], None, vec![], 100)
                .unwrap();
            d.effects(0, fx);
            d.run(false, &[]);
        }
        let joined = |e: &Engine| e.groups().iter().filter(|g| g.joined).count();
        assert_eq!(joined(&d.engines[1]), MAX_GROUPS_FROM_ONE);
        assert_eq!(joined(&d.engines[2]), MAX_GROUPS_FROM_ONE);
        // Device 2 adds 1 to a group of its own: joined.
        let (_, fx) = d.engines[2]
            .create_group("mine", "two", &[one], None, vec![], 100)
            .unwrap();
        d.effects(2, fx);
        d.run(false, &[]);
        assert_eq!(joined(&d.engines[1]), MAX_GROUPS_FROM_ONE + 1);
    }

    /// The bound counts the contact that brings the group, not the
    /// identity its log names (a contact can make one afresh per group),
    /// and it holds across a restart.
    #[test]
    fn the_group_bound_counts_the_contact_that_brings_them() {
        let mut d = Devices::new(4);
        let one = d.keys[1];
        let invite = d.engines[1].invite(vec![], 100).unwrap();
        for maker in [2, 3] {
            d.engines[maker].add_contact(&invite, "one").unwrap();
        }
        // Device 0 hands device 1 groups that devices 2 and 3 made, in
        // turn: two identities in the logs, one contact bringing them.
        let mut groups = Vec::new();
        for i in 0..=MAX_GROUPS_FROM_ONE {
            let maker = 2 + i % 2;
            let (g, _) = d.engines[maker]
                .create_group(&format!("g{i}"), "admin", &[one], None, vec![], 100)
                .unwrap();
            groups.push((maker, g));
        }
        let joined = |e: &Engine| e.groups().iter().filter(|g| g.joined).count();
        let bring = |d: &mut Devices, (maker, g): (usize, [u8; 32])| {
            let ops = bytes(&d.log(maker, &g));
            let from = d.keys[0];
            d.engines[1].on_group_ops(&from, &ops, 200).unwrap();
        };
        for &g in &groups[..MAX_GROUPS_FROM_ONE] {
            bring(&mut d, g);
        }
        assert_eq!(joined(&d.engines[1]), MAX_GROUPS_FROM_ONE);
        // After a restart the count is the same.
        let store = d.engines[1].store.clone();
        d.engines[1] = Engine::open(store, 200).unwrap();
        bring(&mut d, groups[MAX_GROUPS_FROM_ONE]);
        assert_eq!(joined(&d.engines[1]), MAX_GROUPS_FROM_ONE);
    }

    /// Contacts a group made go when no group here has them any more,
    /// unless the person took them up; the mark survives a restart.
    #[test]
    fn contacts_only_groups_made_go_with_the_last_of_them() {
        let (mut d, group) = Devices::formed(4);
        let (admin, two, three) = (d.keys[0], d.keys[2], d.keys[3]);
        let made = |e: &Engine| {
            let mut m: Vec<[u8; 32]> = e.groups.made.iter().copied().collect();
            m.sort_unstable();
            m
        };
        let mut both = vec![two, three];
        both.sort_unstable();
        assert_eq!(made(&d.engines[1]), both, "the group made them");
        assert!(d.engines[1].forget_orphans(200).0.is_empty());
        let store = d.engines[1].store.clone();
        d.engines[1] = Engine::open(store, 200).unwrap();
        assert_eq!(made(&d.engines[1]), both, "after a restart");
        // Device 1 writes to 3: its contact now.
        d.engines[1]
            .send_many(&three, vec![b"hi".to_vec()], 200, |_| {})
            .unwrap();
        assert_eq!(made(&d.engines[1]), vec![two]);
        // Device 1 writes to the group while 2 is away: its copy for 2
        // stays queued.
        let (_, fx) = d.engines[1]
            .group_send(&group, vec![b"all".to_vec()], 200)
            .unwrap();
        d.effects(1, fx);
        d.run(true, &[2]);
        assert!(d.engines[1].schedule.has_any_for(&two));
        // The admin removes 2: device 1 forgets it once nothing is queued
        // for it any more, or a day after it left the last group with
        // something still queued (here, that copy, which 2, away, never
        // acknowledges).
        let fx = d.engines[0]
            .change_group(&group, GroupChange::Remove { member: two }, 200)
            .unwrap();
        d.effects(0, fx);
        d.run(true, &[2]);
        assert!(d.engines[1].forget_orphans(200).0.is_empty());
        assert!(d.engines[1].contacts.contains_key(&two));
        // A restart in between finds it again (and counts the day anew).
        let store = d.engines[1].store.clone();
        d.engines[1] = Engine::open(store, 200).unwrap();
        assert!(d.engines[1].forget_orphans(300).0.is_empty());
        let nearly = 300 + ORPHAN_GRACE - 1;
        assert!(d.engines[1].forget_orphans(nearly).0.is_empty());
        assert!(d.engines[1].schedule.has_any_for(&two));
        let (gone, given_up) = d.engines[1].forget_orphans(nearly + 1);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].key, two);
        assert!(
            matches!(given_up[..], [Event::GroupExpired { member, .. }] if member == two),
            "{given_up:?}"
        );
        assert!(!d.engines[1].schedule.has_any_for(&two));
        assert!(!d.engines[1].contacts.contains_key(&two));
        assert!(made(&d.engines[1]).is_empty());
        // The admin removes 1: the contacts it took up, and the one it
        // added itself, stay.
        let fx = d.engines[0]
            .change_group(&group, GroupChange::Remove { member: d.keys[1] }, 300)
            .unwrap();
        d.effects(0, fx);
        d.run(true, &[]);
        assert!(d.engines[1].forget_orphans(300).0.is_empty());
        assert!(d.engines[1].contacts.contains_key(&three));
        assert!(d.engines[1].contacts.contains_key(&admin));
    }

    /// Two admins at once: the creator removes the second admin while
    /// that admin removes a member, whose removal comes first in the
    /// order. The member hears the creator's operations first and forgets
    /// the second admin (a contact only the group made); that admin's own
    /// copy of the removal then comes from a stranger and is not read.
    /// The member still learns that it is out: the creator passes the
    /// operations it learns on to the members it added, those they remove
    /// among them.
    #[test]
    fn a_member_removed_by_an_admin_removed_at_once_hears_it_from_who_added_it() {
        // The creator has the highest key: the second admin's removal, at
        // the same clock, comes first.
        let mut d = Devices::new_ordered(4, true);
        let (group, fx) = d.team();
        d.effects(0, fx);
        d.run(true, &[]);
        let (b, c) = (1, 2);
        assert!(d.keys[b] < d.keys[0]);
        let (bk, ck) = (d.keys[b], d.keys[c]);
        let fx = d.engines[0]
            .change_group(
                &group,
                GroupChange::SetRole {
                    member: bk,
                    role: Role::Admin,
                },
                200,
            )
            .unwrap();
        d.effects(0, fx);
        d.run(true, &[]);
        let fx_a = d.engines[0]
            .change_group(&group, GroupChange::Remove { member: bk }, 201)
            .unwrap();
        let fx_b = d.engines[b]
            .change_group(&group, GroupChange::Remove { member: ck }, 201)
            .unwrap();
        d.effects(0, fx_a);
        // b's copy for c is held back until c has forgotten b.
        let mut held = Vec::new();
        for due in fx_b.due {
            if due.to == ck {
                held.push(due.frame);
            } else {
                d.wire
                    .push_back((b, d.index(&due.to), due.frame, Some(due.pos)));
            }
        }
        d.run(true, &[]);
        let (gone, _) = d.engines[c].forget_orphans(202);
        let gone: Vec<[u8; 32]> = gone.iter().map(|g| g.key).collect();
        assert!(gone.contains(&bk), "c forgot the second admin");
        for frame in held {
            assert!(matches!(
                d.engines[c].receive(&bk, &[frame], 203, true),
                Err(EngineError::UnknownSender)
            ));
        }
        let joined = |e: &Engine| e.groups().iter().find(|g| g.id == group).unwrap().joined;
        assert!(!joined(&d.engines[b]), "the second admin is out");
        assert!(
            !joined(&d.engines[c]),
            "the member it removed knows it is out"
        );
        let members = |e: &Engine| {
            let mut m: Vec<[u8; 32]> = e
                .groups()
                .iter()
                .find(|g| g.id == group)
                .unwrap()
                .members
                .iter()
                .map(|m| m.0)
                .collect();
            m.sort_unstable();
            m
        };
        let view = members(&d.engines[0]);
        assert!(!view.contains(&bk) && !view.contains(&ck));
        for i in (1..4).filter(|&i| i != b && i != c) {
            assert_eq!(members(&d.engines[i]), view);
        }
    }

    /// A contact a group made stays while our delivered receipts for its
    /// group messages wait to go; an author removed meanwhile by the
    /// person costs the other authors none of theirs.
    #[test]
    fn receipts_waiting_for_a_made_contact_hold_it_and_go_to_the_others() {
        let (mut d, group) = Devices::formed(4);
        let (two, three) = (d.keys[2], d.keys[3]);
        for author in [2, 3] {
            let (_, sent) = d.engines[author]
                .group_send(&group, vec![b"x".to_vec()], 200)
                .unwrap();
            let bytes = sent.publish[0].message.clone();
            let (taken, _) = d.engines[1].group_messages(&[(bytes, None)], 200).unwrap();
            assert_eq!(taken, vec![true]);
        }
        // The admin removes 2; device 1 hears of it (and nothing else).
        let fx = d.engines[0]
            .change_group(&group, GroupChange::Remove { member: two }, 200)
            .unwrap();
        d.effects(0, fx);
        let admin = d.keys[0];
        for (from, to, frame, _) in std::mem::take(&mut d.wire) {
            if to == 1 {
                assert_eq!(from, 0);
                d.engines[1].receive(&admin, &[frame], 200, true).unwrap();
            }
        }
        assert!(!d.engines[1].groups()[0].members.iter().any(|m| m.0 == two));
        assert!(!d.engines[1].schedule.has_any_for(&two));
        assert!(
            d.engines[1].forget_orphans(200).0.is_empty(),
            "a receipt waits"
        );
        assert!(d.engines[1].contacts.contains_key(&two));
        // The person removes 3 meanwhile: 2 still gets its receipt.
        assert!(d.engines[1].remove_contact(&three).unwrap());
        let receipts = d.engines[1].take_group_receipts().unwrap();
        assert_eq!(
            receipts.iter().map(|(to, _)| *to).collect::<Vec<_>>(),
            vec![two]
        );
        let (gone, _) = d.engines[1].forget_orphans(200);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].key, two);
        assert!(gone[0].invite.is_some(), "kept as a former contact");
    }

    /// Choosing a contact a group made, for a group of one's own or a
    /// timer, makes it the person's.
    #[test]
    fn a_contact_chosen_for_a_group_or_a_timer_is_the_persons() {
        let (mut d, _) = Devices::formed(4);
        let (two, three) = (d.keys[2], d.keys[3]);
        assert!(d.engines[1].groups.made.contains(&two));
        d.engines[1]
            .create_group("own", "one", &[two], None, vec![], 200)
            .unwrap();
        assert!(!d.engines[1].groups.made.contains(&two));
        assert!(d.engines[1].groups.made.contains(&three));
        d.engines[1].set_retention(&three, Some(3600), 200).unwrap();
        assert!(d.engines[1].groups.made.is_empty());
    }

    /// A contact that adds this device to groups and removes it again
    /// does not get around the bound, and a group this device was removed
    /// from makes no more contacts here.
    #[test]
    fn groups_this_device_was_removed_from_still_count() {
        let mut d = Devices::new(4);
        let me = d.keys[2];
        let joined = |e: &Engine| e.groups().iter().filter(|g| g.joined).count();
        let bring = |d: &mut Devices, g: &[u8; 32], now: u64| {
            let ops = bytes(&d.log(0, g));
            let from = d.keys[0];
            d.engines[2].on_group_ops(&from, &ops, now).unwrap();
        };
        let mut groups = Vec::new();
        for i in 0..MAX_GROUPS_FROM_ONE {
            let (g, _) = d.engines[0]
                .create_group(&format!("g{i}"), "admin", &[me], None, vec![], 100)
                .unwrap();
            bring(&mut d, &g, 100);
            d.engines[0]
                .change_group(&g, GroupChange::Remove { member: me }, 200)
                .unwrap();
            bring(&mut d, &g, 200);
            groups.push(g);
        }
        assert_eq!(joined(&d.engines[2]), 0, "removed from every one");
        let (another, _) = d.engines[0]
            .create_group("another", "admin", &[me], None, vec![], 300)
            .unwrap();
        bring(&mut d, &another, 300);
        assert_eq!(joined(&d.engines[2]), 0, "past the bound: not joined");
        // The person lets go of one it was removed from: room for another.
        d.engines[2]
            .change_group(&groups[1], GroupChange::Leave, 300)
            .unwrap();
        let store = d.engines[2].store.clone();
        d.engines[2] = Engine::open(store, 300).unwrap();
        bring(&mut d, &another, 300);
        assert_eq!(joined(&d.engines[2]), 1, "let go: joined");
        // A member added to a group this device is out of: no contact.
        let stranger = d.keys[3];
        let contacts = d.engines[2].contacts().count();
        d.engines[0]
            .change_group(
                &groups[0],
                GroupChange::Add {
                    contact: stranger,
                    role: Role::Member,
                },
                400,
            )
            .unwrap();
        bring(&mut d, &groups[0], 400);
        assert!(
            d.engines[2].groups.slots[&groups[0]]
                .log
                .view()
                .is_member(&stranger)
        );
        assert_eq!(d.engines[2].contacts().count(), contacts);
        assert!(!d.engines[2].contacts.contains_key(&stranger));
    }

    /// A group this device left and that a contact adds it to again counts
    /// as a new one against that contact's bound.
    #[test]
    fn a_group_this_device_is_added_to_again_counts_anew() {
        let mut d = Devices::new(3);
        let me = d.keys[2];
        let joined = |e: &Engine| e.groups().iter().filter(|g| g.joined).count();
        let bring = |d: &mut Devices, g: &[u8; 32]| {
            let ops = bytes(&d.log(0, g));
            let from = d.keys[0];
            d.engines[2].on_group_ops(&from, &ops, 200).unwrap();
        };
        let mut groups = Vec::new();
        for i in 0..MAX_GROUPS_FROM_ONE {
            let (g, _) = d.engines[0]
                .create_group(&format!("g{i}"), "admin", &[me], None, vec![], 100)
                .unwrap();
            bring(&mut d, &g);
            groups.push(g);
        }
        assert_eq!(joined(&d.engines[2]), MAX_GROUPS_FROM_ONE);
        // Device 2 leaves the first; device 0 hears of it.
        let first = groups[0];
        d.engines[2]
            .change_group(&first, GroupChange::Leave, 300)
            .unwrap();
        let left = bytes(&d.log(2, &first));
        d.engines[0].on_group_ops(&me, &left, 300).unwrap();
        // Room for one more from device 0.
        let (another, _) = d.engines[0]
            .create_group("another", "admin", &[me], None, vec![], 300)
            .unwrap();
        bring(&mut d, &another);
        assert_eq!(joined(&d.engines[2]), MAX_GROUPS_FROM_ONE);
        // Device 0 adds device 2 to the first again: past the bound, not
        // joined.
        d.engines[0]
            .change_group(
                &first,
                GroupChange::Add {
                    contact: me,
                    role: Role::Member,
                },
                400,
            )
            .unwrap();
        bring(&mut d, &first);
        assert_eq!(joined(&d.engines[2]), MAX_GROUPS_FROM_ONE);
        assert!(!d.engines[2].groups.slots[&first].log.view().is_member(&me));
        // Once device 2 leaves another of them, the same addition is taken.
        d.engines[2]
            .change_group(&another, GroupChange::Leave, 500)
            .unwrap();
        bring(&mut d, &first);
        assert!(d.engines[2].groups.slots[&first].log.view().is_member(&me));
        assert_eq!(joined(&d.engines[2]), MAX_GROUPS_FROM_ONE);
    }

    /// A member sends an operation at the highest clock (it changes
    /// nothing: not an admin). It does not use the clock up: the admin's
    /// next change is made, at the clock after its own last one.
    #[test]
    fn a_member_cannot_use_a_groups_clock_up() {
        let (mut d, group) = Devices::formed(3);
        let top = Op::new(
            &d.engines[1].me,
            group,
            u64::MAX,
            Change::Rename {
                name: "mine".into(),
            },
        );
        let fx = d.engines[0]
            .on_group_ops(&d.keys[1], &[serde_bytes::ByteBuf::from(top.bytes)], 200)
            .unwrap();
        d.effects(0, fx);
        let fx = d.engines[0]
            .change_group(
                &group,
                GroupChange::Rename {
                    name: "ours".into(),
                },
                300,
            )
            .unwrap();
        d.effects(0, fx);
        assert_eq!(d.engines[0].view(&group).unwrap().name, "ours");
    }

    /// An admin adds a member whose card is signed but whose keys no
    /// session can use: the addition stands (every device folds the log
    /// alike), that member cannot be written to, and the group goes on
    /// for everyone else.
    #[test]
    fn a_member_card_with_unusable_keys_does_not_stop_the_group() {
        let (mut d, group) = Devices::formed(3);
        // Device x's invite, its signed prekey swapped for a point of small
        // order and signed again by x.
        let dir = tempfile::tempdir().unwrap();
        let mut rng = StdRng::seed_from_u64(99);
        let key = Keystore::create(b"pw", KdfParams::INSECURE_FAST, &mut rng)
            .unwrap()
            .1;
        let x = Engine::open(Arc::new(Store::open(dir.path(), &key).unwrap()), 100).unwrap();
        let mut invite = x.invite(vec![], 100).unwrap();
        let mut body: crate::crypto::BundleBody =
            wire::decode(&invite.bundle.body, "bundle body", 1, 1 << 16).unwrap();
        body.signed_prekey = [0; 32];
        body.signed_prekey_sig = x.me.sign(
            crate::crypto::labels::SIG_SIGNED_PREKEY,
            &[&body.signed_prekey_id.to_be_bytes(), &[0; 32]],
        );
        invite.bundle.body = wire::encode(&body);
        invite.bundle.body_sig =
            x.me.sign(crate::crypto::labels::SIG_BUNDLE, &[&invite.bundle.body]);
        assert!(invite.bundle.verify().is_err());
        let card = MemberCard {
            invite,
            name: "x".into(),
        };
        let x_key = card.key().unwrap();
        let lamport = d.engines[0].groups.slots[&group].log.next_lamport();
        let add = Op::new(
            &d.engines[0].me,
            group,
            lamport,
            Change::Add {
                card,
                role: Role::Member,
            },
        );
        // Member 1 takes the addition from the admin.
        let fx = d.engines[1]
            .on_group_ops(&d.keys[0], &[serde_bytes::ByteBuf::from(add.bytes)], 200)
            .unwrap();
        assert!(
            d.engines[1].groups.slots[&group]
                .log
                .view()
                .is_member(&x_key)
        );
        assert!(d.engines[1].contact(&x_key).is_none());
        assert!(
            fx.due
                .iter()
                .all(|due| due.to != x_key || due.frame.is_empty())
        );
        d.effects(1, fx);
        d.run(true, &[]);
        // And the group goes on.
        let (_, fx) = d.engines[1]
            .group_send(&group, vec![b"still here".to_vec()], 300)
            .unwrap();
        d.effects(1, fx);
        d.run(true, &[]);
        assert_eq!(d.received(0), vec![b"still here".to_vec()]);
        assert_eq!(d.received(2), vec![b"still here".to_vec()]);
    }

    #[test]
    fn a_tally_without_a_mark_per_member_is_dropped_not_a_panic() {
        let (mut d, group) = Devices::formed(2);
        let (refs, _) = d.engines[0]
            .group_send(&group, vec![b"counted".to_vec()], 200)
            .unwrap();
        let m = &refs[0];
        let records = d.engines[0].store.records(Kind::Groups).unwrap();
        let key = tally_key(&m.msg_id);
        let bytes = records.get(&key).unwrap().expect("a tally");
        let mut t: Tally = wire::decode(&bytes, "group tally", TALLY_VERSION, Tally::MAX).unwrap();
        t.delivered.clear();
        records.put(&key, &wire::encode(&t)).unwrap();
        drop(records);
        let member = d.keys[1];
        let counted = d.engines[0].count_receipt(
            &group,
            m.lamport,
            &m.msg_id,
            &member,
            ReceiptKind::Delivered,
        );
        assert_eq!(counted.unwrap(), Vec::new());
        let records = d.engines[0].store.records(Kind::Groups).unwrap();
        assert!(records.get(&key).unwrap().is_none());
    }

    #[test]
    fn a_removed_member_cannot_read_later_messages() {
        let (mut d, group) = Devices::formed(3);
        let removed = d.keys[2];
        let fx = d.engines[0]
            .change_group(&group, GroupChange::Remove { member: removed }, 200)
            .unwrap();
        d.effects(0, fx);
        d.run(true, &[]);
        assert!(!d.engines[2].groups()[0].joined);
        assert!(d.engines[2].group_topics().is_empty());
        // Member 1 sends after the removal; the removed device gets the
        // bytes anyway and cannot read them.
        let (_, fx) = d.engines[1]
            .group_send(&group, vec![b"after".to_vec()], 300)
            .unwrap();
        let bytes = fx.publish[0].message.clone();
        d.effects(1, fx);
        d.run(true, &[]);
        assert_eq!(d.received(0), vec![b"after".to_vec()]);
        let (taken, fx) = d.engines[2].group_messages(&[(bytes, None)], 300).unwrap();
        assert_eq!(taken, vec![false]);
        assert!(fx.events.is_empty());
        assert!(d.received(2).is_empty());
    }

    #[test]
    fn a_message_ahead_of_its_sender_key_waits_for_it() {
        let (mut d, group) = Devices::formed(3);
        // Admin removes 2: everyone rotates. Admin's new key is queued for
        // 1; the message on the topic reaches 1 first.
        let fx = d.engines[0]
            .change_group(&group, GroupChange::Remove { member: d.keys[2] }, 200)
            .unwrap();
        let keys_for_1: Vec<(usize, usize, Vec<u8>, Option<u64>)> = fx
            .due
            .iter()
            .filter(|x| x.to == d.keys[1] && !x.frame.is_empty())
            .map(|x| (0, 1, x.frame.clone(), Some(x.pos)))
            .collect();
        let (_, sent) = d.engines[0]
            .group_send(&group, vec![b"early".to_vec()], 200)
            .unwrap();
        let bytes = sent.publish[0].message.clone();
        let (taken, fx1) = d.engines[1].group_messages(&[(bytes, None)], 200).unwrap();
        assert_eq!(taken, vec![true]);
        assert!(fx1.events.is_empty());
        // Then the operations and key arrive: the message is read.
        d.wire.extend(keys_for_1);
        d.run(false, &[2]);
        assert_eq!(d.received(1), vec![b"early".to_vec()]);
    }

    /// A sender key's distribution expires before messages sent under that
    /// key later (up to `ROTATE_AFTER` later): while a member away that
    /// long still has such messages queued, the distribution is queued
    /// again, and the member reads them on its return.
    #[test]
    fn a_member_away_past_its_key_distribution_still_reads_what_came_after() {
        let (mut d, group) = Devices::formed(3);
        // Admin removes 2 and rotates; 1 is away and gets nothing.
        let fx = d.engines[0]
            .change_group(&group, GroupChange::Remove { member: d.keys[2] }, 200)
            .unwrap();
        d.effects(0, fx);
        d.wire.clear();
        d.published.clear();
        // Six days later, a message under the new key; still away.
        let later = 200 + 6 * 24 * 3600;
        let (_, fx) = d.engines[0]
            .group_send(&group, vec![b"later".to_vec()], later)
            .unwrap();
        d.effects(0, fx);
        d.wire.clear();
        d.published.clear();
        // Retried all that time, every five minutes, and lost.
        let back = 200 + crate::node::engine::MESSAGE_TTL + 1;
        let mut t = later;
        while t < back {
            for x in d.engines[0].due(t, 512).unwrap() {
                d.engines[0].attempted(x.pos, t, None);
            }
            t += 300;
        }
        // The distribution (queued at 200) expires; the message's copy
        // (queued six days later) does not.
        d.engines[0].expire(back).unwrap();
        // 1 comes back: what is due reaches it, in a few rounds, the
        // message before the key (it is refused then, and must be sent
        // again in a frame 1 can still read).
        let mut at = back + 10;
        for _ in 0..4 {
            let due = d.engines[0].due(at, 512).unwrap();
            for x in due.into_iter().rev().filter(|x| x.to == d.keys[1]) {
                d.engines[0].attempted(x.pos, at, None);
                d.wire.push_back((0, 1, x.frame, Some(x.pos)));
            }
            d.run(false, &[2]);
            at += 600;
        }
        assert!(
            d.received(1).contains(&b"later".to_vec()),
            "{:?}",
            d.received(1)
        );
    }

    /// A member that never acknowledged a group message is named when its
    /// copy expires; the member that had it is not.
    #[test]
    fn a_group_message_that_expires_for_a_member_names_that_member() {
        let (mut d, group) = Devices::formed(3);
        let (refs, fx) = d.engines[0]
            .group_send(&group, vec![b"hello".to_vec()], 200)
            .unwrap();
        d.effects(0, fx);
        d.run(true, &[2]);
        assert_eq!(d.received(1), vec![b"hello".to_vec()]);
        assert_eq!(d.engines[0].queued(), 1, "the copy for 2 is left");
        let end = 200 + crate::node::engine::MESSAGE_TTL + 1;
        assert!(d.engines[0].expire(end - 2).unwrap().is_empty());
        let events = d.engines[0].expire(end).unwrap();
        assert_eq!(
            events,
            vec![Event::GroupExpired {
                message: refs[0],
                member: d.keys[2],
            }]
        );
        assert_eq!(d.engines[0].queued(), 0);
    }

    #[test]
    fn the_operation_that_adds_this_device_may_come_before_the_rest() {
        let mut d = Devices::new(3);
        let (group, _) = d.team();
        let ops = d.log(0, &group);
        let key_2 = d.keys[2];
        let (ours, rest): (Vec<Op>, Vec<Op>) =
            ops.into_iter().partition(|o| o.member == Some(key_2));
        assert_eq!(ours.len(), 1);
        // The addition alone folds to nothing: held.
        let fx = d.engines[2]
            .on_group_ops(&d.keys[0], &bytes(&ours), 100)
            .unwrap();
        assert!(fx.subscribe.is_empty());
        assert_eq!(d.engines[2].groups.limbo.len(), 1);
        // The creation and the other member: joined, with everyone.
        let fx = d.engines[2]
            .on_group_ops(&d.keys[0], &bytes(&rest), 100)
            .unwrap();
        assert_eq!(fx.subscribe, vec![groups::topic_id(&group)]);
        assert_eq!(d.engines[2].groups()[0].members.len(), 3);
        assert!(d.engines[2].groups.limbo.is_empty());
    }

    #[test]
    fn a_log_in_several_payloads_joins_whatever_their_order_and_a_restart_between() {
        let mut d = Devices::new(3);
        let (group, _) = d.team();
        let ops = d.log(0, &group);
        let key_2 = d.keys[2];
        let adds_2 = |o: &Op| matches!(&o.change, Change::Add { card, .. } if card.key().ok() == Some(key_2));
        let (ours, rest): (Vec<Op>, Vec<Op>) = ops.into_iter().partition(|o| adds_2(o));
        assert_eq!(ours.len(), 1);
        // The creation and the other member first: held, not joined.
        let fx = d.engines[2]
            .on_group_ops(&d.keys[0], &bytes(&rest), 100)
            .unwrap();
        assert!(fx.subscribe.is_empty());
        assert!(d.engines[2].group_topics().is_empty());
        // A restart in between: what was held is on disk.
        let store = d.engines[2].store.clone();
        d.engines[2] = Engine::open(store, 100).unwrap();
        // Then the operation that adds this device: joined, every member.
        let fx = d.engines[2]
            .on_group_ops(&d.keys[0], &bytes(&ours), 100)
            .unwrap();
        assert_eq!(fx.subscribe, vec![groups::topic_id(&group)]);
        let info = d.engines[2].groups();
        assert_eq!(info.len(), 1);
        assert!(info[0].joined);
        assert_eq!(info[0].members.len(), 3);
        // Nothing left held.
        assert!(d.engines[2].groups.limbo.is_empty());
        let held = d.engines[2]
            .store
            .records(Kind::Groups)
            .unwrap()
            .scan(LIMBO_PREFIX)
            .unwrap();
        assert!(held.is_empty());
        // A group that never adds this device is not kept beyond the few
        // most recent ones (brought here by as many contacts).
        for i in 0..MAX_LIMBO_GROUPS + 2 {
            let (other, _) = d.engines[0]
                .create_group(&format!("g{i}"), "admin", &[d.keys[1]], None, vec![], 100)
                .unwrap();
            let ops = d.log(0, &other);
            d.engines[2]
                .on_group_ops(&[100 + i as u8; 32], &bytes(&ops), 100)
                .unwrap();
        }
        assert_eq!(d.engines[2].groups.limbo.len(), MAX_LIMBO_GROUPS);
        assert_eq!(d.engines[2].groups().len(), 1);
    }

    /// One contact sending the logs of many groups that never add this
    /// device pushes out its own held groups, not the one another contact
    /// is still bringing in.
    #[test]
    fn one_contact_cannot_push_out_a_group_another_is_bringing_in() {
        let mut d = Devices::new(3);
        let (group, _) = d.team();
        let (ours, rest): (Vec<Op>, Vec<Op>) = d
            .log(0, &group)
            .into_iter()
            .partition(|o| o.member == Some(d.keys[2]));
        // The first part from device 0: held.
        d.engines[2]
            .on_group_ops(&d.keys[0], &bytes(&rest), 100)
            .unwrap();
        // Device 1 floods groups that do not add device 2.
        for i in 0..MAX_LIMBO_GROUPS + 2 {
            let (other, _) = d.engines[1]
                .create_group(&format!("junk{i}"), "x", &[d.keys[0]], None, vec![], 100)
                .unwrap();
            let ops = d.log(1, &other);
            d.engines[2]
                .on_group_ops(&d.keys[1], &bytes(&ops), 100)
                .unwrap();
        }
        assert_eq!(d.engines[2].groups.limbo.len(), 1 + MAX_LIMBO_FROM_ONE);
        // The rest of the real group comes: joined.
        let fx = d.engines[2]
            .on_group_ops(&d.keys[0], &bytes(&ours), 100)
            .unwrap();
        assert_eq!(fx.subscribe, vec![groups::topic_id(&group)]);
        assert_eq!(d.engines[2].groups.limbo.len(), MAX_LIMBO_FROM_ONE);
    }

    /// A contact sending keys of groups that never come takes a few of the
    /// places held for early keys, not all of them.
    #[test]
    fn one_contact_holds_only_so_many_early_sender_keys() {
        let mut d = Devices::new(3);
        let mut rng = StdRng::seed_from_u64(5);
        let key_for = |g: u8, rng: &mut StdRng| {
            crate::crypto::SenderKey::new([g; 32], 100, rng)
                .distribution()
                .to_bytes()
                .to_vec()
        };
        for g in 0..MAX_EARLY_FROM_ONE as u8 {
            let dist = key_for(g, &mut rng);
            d.engines[0].on_sender_key(&d.keys[1], &dist, 200).unwrap();
        }
        let one_more = key_for(200, &mut rng);
        let e = d.engines[0].on_sender_key(&d.keys[1], &one_more, 200);
        assert!(e.is_err());
        assert_eq!(d.engines[0].groups.early.len(), MAX_EARLY_FROM_ONE);
        // Another contact's still find room.
        d.engines[0]
            .on_sender_key(&d.keys[2], &one_more, 200)
            .unwrap();
        assert_eq!(d.engines[0].groups.early.len(), MAX_EARLY_FROM_ONE + 1);
    }

    #[test]
    fn a_sender_key_ahead_of_its_group_waits_for_it_across_a_restart() {
        let mut d = Devices::new(3);
        let (group, fx) = d.team();
        // Device 2 hears nothing of the group yet; device 1 is in it.
        d.effects(0, fx);
        d.run(true, &[2]);
        let dist = d.engines[1].groups.slots[&group]
            .own
            .as_ref()
            .unwrap()
            .distribution()
            .to_bytes()
            .to_vec();
        let fx = d.engines[2].on_sender_key(&d.keys[1], &dist, 200).unwrap();
        assert!(fx.events.is_empty());
        assert_eq!(d.engines[2].groups.early.len(), 1);
        // A restart: the key waits on disk.
        let store = d.engines[2].store.clone();
        d.engines[2] = Engine::open(store, 200).unwrap();
        assert_eq!(d.engines[2].groups.early.len(), 1);
        // The group arrives: the key is taken, and device 1's messages read.
        let ops = bytes(&d.log(0, &group));
        d.engines[2].on_group_ops(&d.keys[0], &ops, 200).unwrap();
        assert!(d.engines[2].groups.early.is_empty());
        let (_, sent) = d.engines[1]
            .group_send(&group, vec![b"hello".to_vec()], 200)
            .unwrap();
        let bytes = sent.publish[0].message.clone();
        let (taken, fx) = d.engines[2].group_messages(&[(bytes, None)], 200).unwrap();
        assert_eq!(taken, vec![true]);
        assert!(
            fx.events
                .iter()
                .any(|e| matches!(e, Event::MessageReceived(m) if m.body == b"hello"))
        );
        let left = d.engines[2]
            .store
            .records(Kind::SenderKeys)
            .unwrap()
            .scan(EARLY_PREFIX)
            .unwrap();
        assert!(left.is_empty());
    }

    #[test]
    fn a_copy_that_comes_again_is_acknowledged_again() {
        let mut d = Devices::new(2);
        let (group, fx) = d.engines[0]
            .create_group("pair", "admin", &[d.keys[1]], None, vec![], 100)
            .unwrap();
        d.effects(0, fx);
        d.run(true, &[]);
        let (_, sent) = d.engines[0]
            .group_send(&group, vec![b"once".to_vec()], 200)
            .unwrap();
        let bytes = sent.publish[0].message.clone();
        let (taken, _) = d.engines[1]
            .group_messages(&[(bytes.clone(), None)], 200)
            .unwrap();
        assert_eq!(taken, vec![true]);
        // The receipt is lost on the way.
        assert_eq!(d.engines[1].take_group_receipts().unwrap().len(), 1);
        // The author's 1:1 copy comes by the mesh: acknowledged again, and
        // the author counts it.
        let (taken, _) = d.engines[1]
            .group_messages(&[(bytes, Some(d.keys[0]))], 200)
            .unwrap();
        assert_eq!(taken, vec![true]);
        let again = d.engines[1].take_group_receipts().unwrap();
        assert_eq!(again.len(), 1);
        let h = d.engines[0]
            .receive(&d.keys[1], &[again[0].1.clone()], 200, false)
            .unwrap();
        assert!(h.events.iter().any(|e| matches!(
            e,
            Event::GroupReceipt {
                delivered: 1,
                members: 1,
                ..
            }
        )));
    }
}
