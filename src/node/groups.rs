//! Group membership: a log of signed operations that every member folds in
//! the same order, so concurrent changes converge.
//!
//! A group is born from a [`Change::Create`] operation; its id is a hash of
//! that operation's signed bytes, so nobody can write a second, different
//! birth for the same group. Every later change (add, remove, leave,
//! rename, role, retention) is an [`Op`] signed by the device that made it
//! and stamped with a Lamport clock above every operation that device had
//! seen.
//!
//! **The rule that decides.** A device's view of the group is the fold of
//! every operation it holds, in the order (Lamport clock, author key,
//! operation id). An operation takes effect only if, at its place in that
//! order, its author has the role it needs (admins add, remove, rename and
//! set roles and retention; any member leaves). Two devices that hold the
//! same operations therefore compute the same members, names and roles,
//! whatever order the operations arrived in: two admins who change the
//! group at the same time end with the same list everywhere. When the last
//! admin leaves or is removed, the member who joined first becomes admin.
//!
//! What a device holds grows by exchange: the author sends its operation to
//! every member before and after it, and the whole log to a member it
//! adds; a device that learns of a new member sends that member its own
//! operations; and a device forwards operations it learns from others to
//! the members it added. So a member added by one admin also hears what
//! another admin did meanwhile, whoever learnt of it first.
//!
//! Structural checks (signatures, sizes, a member card's signed bundle)
//! happen once, when an operation is inserted; role checks happen in the
//! fold.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::engine::MAX_RETENTION;
use super::state::Invite;
use crate::crypto::{self, DeviceIdentity, labels, wire};

/// Most members of a group.
pub const MAX_MEMBERS: usize = 100;
/// Most operations a group's log holds; further ones are refused.
pub const MAX_OPS: usize = 4096;
/// Most bytes of operations a group's log holds (its most operations at
/// 2 KiB each, a typical addition's size; a log of the largest, 12 KiB
/// each, would be 48 MiB): further ones are refused.
pub const MAX_LOG_BYTES: usize = MAX_OPS * 2 * 1024;
/// Longest group name (bytes).
pub const MAX_GROUP_NAME: usize = 64;
/// Longest member name (bytes).
pub const MAX_MEMBER_NAME: usize = 64;
/// Largest encoded operation (an add carries a member's invite).
pub const MAX_OP: usize = 12 * 1024;
const OP_VERSION: u8 = 1;
const BODY_VERSION: u8 = 1;

/// What a member may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Adds, removes, renames, sets roles and retention.
    Admin,
    /// Sends, reads, leaves.
    Member,
}

/// How to reach a member and set up a session with it: its invite (a
/// signed bundle with its identity keys, mailbox and relays, plus
/// addresses) and the name it goes by in the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberCard {
    /// The member device's invite.
    pub invite: Invite,
    /// Its name in the group.
    pub name: String,
}

impl MemberCard {
    /// The member's identity (signing) key, from its verified bundle.
    pub fn key(&self) -> Result<[u8; 32], crypto::Error> {
        Ok(self
            .invite
            .bundle
            .verify_signatures()?
            .body
            .identity
            .signing)
    }
}

/// One change to a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// The group's birth: its name, its creator's card (the creator is its
    /// first admin), its retention, and a random nonce that makes its id
    /// unique.
    Create {
        /// The group's name.
        name: String,
        /// Random bytes: two groups never share an id.
        nonce: [u8; 16],
        /// The creator.
        card: MemberCard,
        /// Messages disappear this many seconds after they were sent
        /// (None: kept).
        retention: Option<u64>,
    },
    /// A new member with a role.
    Add {
        /// The member.
        card: MemberCard,
        /// Its role.
        role: Role,
    },
    /// A member removed by an admin.
    Remove {
        /// Its identity key.
        member: [u8; 32],
    },
    /// The author leaves.
    Leave,
    /// A new name.
    Rename {
        /// The name.
        name: String,
    },
    /// A member's new role.
    SetRole {
        /// Its identity key.
        member: [u8; 32],
        /// The role.
        role: Role,
    },
    /// A new retention for messages sent from now on (None: kept).
    Retention {
        /// Seconds.
        secs: Option<u64>,
    },
}

/// The signed part of an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Body {
    version: u8,
    /// The group (all zero in its `Create`, whose hash is the group id).
    group: [u8; 32],
    lamport: u64,
    author: [u8; 32],
    change: Change,
}

/// The encoded, signed form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Signed {
    version: u8,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    sig: Vec<u8>,
}

/// A verified operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// SHA-256 of the signed bytes.
    pub id: [u8; 32],
    /// The group it belongs to.
    pub group: [u8; 32],
    /// Its Lamport clock.
    pub lamport: u64,
    /// The device that made it.
    pub author: [u8; 32],
    /// What it changes.
    pub change: Change,
    /// The identity key of the member card it carries (a creation's or an
    /// addition's), found when its bundle was verified: a fold of the log
    /// checks no signature again.
    pub member: Option<[u8; 32]>,
    /// The exact bytes received (or made), as they travel.
    pub bytes: Vec<u8>,
}

/// The identity key of the member card in `change` (a creation's or an
/// addition's), if it has one and its bundle verifies.
fn card_key(change: &Change) -> Option<[u8; 32]> {
    match change {
        Change::Create { card, .. } | Change::Add { card, .. } => card.key().ok(),
        _ => None,
    }
}

fn hash(label: &[u8], bytes: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(label);
    h.update(bytes);
    h.finalize().into()
}

fn check_name(name: &str, max: usize) -> Result<(), crypto::Error> {
    if name.len() > max || name.chars().any(char::is_control) {
        return Err(crypto::Error::Malformed {
            what: "group operation (name too long or with control characters)",
        });
    }
    Ok(())
}

impl Op {
    /// A new operation on `group` by `me`, signed.
    pub fn new(me: &DeviceIdentity, group: [u8; 32], lamport: u64, change: Change) -> Self {
        let body = wire::encode(&Body {
            version: BODY_VERSION,
            group,
            lamport,
            author: me.public().signing,
            change: change.clone(),
        });
        let sig = me.sign(labels::SIG_GROUP_OP, &[&body]);
        let bytes = wire::encode(&Signed {
            version: OP_VERSION,
            body,
            sig: sig.to_vec(),
        });
        Self {
            id: hash(b"", &bytes),
            group: if matches!(change, Change::Create { .. }) {
                hash(labels::GROUP_ID, &bytes)
            } else {
                group
            },
            lamport,
            author: me.public().signing,
            member: card_key(&change),
            change,
            bytes,
        }
    }

    /// Decodes and checks an operation: sizes, signature, names, and a
    /// member card's bundle and that it belongs to the card's key.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crypto::Error> {
        let signed: Signed = wire::decode(bytes, "group operation", OP_VERSION, MAX_OP)?;
        let body: Body = wire::decode(&signed.body, "group operation body", BODY_VERSION, MAX_OP)?;
        let sig: [u8; 64] =
            signed
                .sig
                .as_slice()
                .try_into()
                .map_err(|_| crypto::Error::Malformed {
                    what: "group operation (signature length)",
                })?;
        crypto::verify_signature(
            &body.author,
            labels::SIG_GROUP_OP,
            &[&signed.body],
            &sig,
            "group operation",
        )?;
        let mut member = None;
        let group = match &body.change {
            Change::Create {
                name,
                card,
                retention,
                ..
            } => {
                check_name(name, MAX_GROUP_NAME)?;
                check_name(&card.name, MAX_MEMBER_NAME)?;
                let key = card.key()?;
                member = Some(key);
                if key != body.author || body.group != [0; 32] {
                    return Err(crypto::Error::Malformed {
                        what: "group creation (card not the author's)",
                    });
                }
                if retention == &Some(0) {
                    return Err(crypto::Error::Malformed {
                        what: "group creation (retention of zero)",
                    });
                }
                hash(labels::GROUP_ID, bytes)
            }
            Change::Add { card, .. } => {
                check_name(&card.name, MAX_MEMBER_NAME)?;
                member = Some(card.key()?);
                body.group
            }
            Change::Rename { name } => {
                check_name(name, MAX_GROUP_NAME)?;
                body.group
            }
            Change::Retention { secs: Some(0) } => {
                return Err(crypto::Error::Malformed {
                    what: "group retention of zero",
                });
            }
            _ => body.group,
        };
        Ok(Self {
            id: hash(b"", bytes),
            group,
            lamport: body.lamport,
            author: body.author,
            change: body.change,
            member,
            bytes: bytes.to_vec(),
        })
    }

    fn order(&self) -> (u64, [u8; 32], [u8; 32]) {
        (self.lamport, self.author, self.id)
    }
}

/// One member as the fold sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its identity key.
    pub key: [u8; 32],
    /// How to reach it.
    pub card: MemberCard,
    /// Its role.
    pub role: Role,
    /// Who added it (the creator: itself).
    pub added_by: [u8; 32],
}

/// A group as one device sees it: the fold of its log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct View {
    /// Its name.
    pub name: String,
    /// Members in the order they joined.
    pub members: Vec<Member>,
    /// Retention of new messages (seconds; None: kept).
    pub retention: Option<u64>,
    /// Its creation was folded in.
    born: bool,
}

impl View {
    /// The member with `key`.
    pub fn member(&self, key: &[u8; 32]) -> Option<&Member> {
        self.members.iter().find(|m| &m.key == key)
    }

    /// Whether `key` is a member.
    pub fn is_member(&self, key: &[u8; 32]) -> bool {
        self.member(key).is_some()
    }

    fn is_admin(&self, key: &[u8; 32]) -> bool {
        self.member(key).is_some_and(|m| m.role == Role::Admin)
    }

    fn remove(&mut self, key: &[u8; 32]) {
        self.members.retain(|m| &m.key != key);
        if !self.members.iter().any(|m| m.role == Role::Admin)
            && let Some(first) = self.members.first_mut()
        {
            first.role = Role::Admin;
        }
    }

    /// Folds `op` in; whether its author was allowed to make it (then it
    /// counts for the clock: see [`Log::next_lamport`]).
    fn apply(&mut self, op: &Op) -> bool {
        let admin = self.is_admin(&op.author);
        let member = self.is_member(&op.author);
        match &op.change {
            // Only the group's own birth (the log takes no other), once.
            Change::Create {
                name,
                card,
                retention,
                ..
            } if !self.born => {
                self.born = true;
                self.name.clone_from(name);
                // At most a year, as the API allows (a modified client
                // could ask for more).
                self.retention = retention.map(|r| r.min(MAX_RETENTION));
                self.members.push(Member {
                    key: op.author,
                    card: card.clone(),
                    role: Role::Admin,
                    added_by: op.author,
                });
            }
            Change::Add { card, role } if admin => {
                if let Some(key) = op.member
                    && !self.is_member(&key)
                    && self.members.len() < MAX_MEMBERS
                {
                    self.members.push(Member {
                        key,
                        card: card.clone(),
                        role: *role,
                        added_by: op.author,
                    });
                }
            }
            Change::Remove { member } if admin => self.remove(member),
            Change::Leave if member => self.remove(&op.author),
            Change::Rename { name } if admin => self.name.clone_from(name),
            Change::SetRole { member, role } if admin => {
                if let Some(m) = self.members.iter_mut().find(|m| &m.key == member) {
                    m.role = *role;
                }
                if !self.members.iter().any(|m| m.role == Role::Admin)
                    && let Some(first) = self.members.first_mut()
                {
                    first.role = Role::Admin;
                }
            }
            Change::Retention { secs } if admin => {
                self.retention = secs.map(|r| r.min(MAX_RETENTION));
            }
            _ => return false,
        }
        true
    }
}

/// Why an operation was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// It belongs to another group.
    #[error("operation for another group")]
    OtherGroup,
    /// The log is full.
    #[error("group log full ({MAX_OPS} operations or {MAX_LOG_BYTES} bytes)")]
    Full,
}

/// A group's operations, and the view they fold to.
#[derive(Debug, Clone)]
pub struct Log {
    group: [u8; 32],
    ops: BTreeMap<(u64, [u8; 32], [u8; 32]), Op>,
    ids: HashSet<[u8; 32]>,
    view: View,
    /// The clock of the last operation the fold let change the group.
    head: u64,
    /// Bytes of its operations.
    bytes: usize,
}

impl Log {
    /// An empty log for `group`.
    pub fn new(group: [u8; 32]) -> Self {
        Self {
            group,
            ops: BTreeMap::new(),
            ids: HashSet::new(),
            view: View::default(),
            head: 0,
            bytes: 0,
        }
    }

    /// The group id.
    pub fn group(&self) -> &[u8; 32] {
        &self.group
    }

    /// The current view.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// The Lamport clock for this device's next operation: one past the
    /// last operation that was allowed to change the group. One that was
    /// not (a member's rename, say) may carry any clock, even 2⁶⁴−1, and
    /// must not use the clock up for everyone else: it sorts after ours
    /// and changes nothing there either.
    pub fn next_lamport(&self) -> u64 {
        self.head.saturating_add(1)
    }

    /// Every operation, in fold order.
    pub fn ops(&self) -> impl Iterator<Item = &Op> {
        self.ops.values()
    }

    /// Whether the log has the operation `id`.
    pub fn has(&self, id: &[u8; 32]) -> bool {
        self.ids.contains(id)
    }

    /// Adds verified operations (those already held are skipped) and folds
    /// again. Returns how many were new. All or nothing: on an error the
    /// log and its view are as they were.
    pub fn insert(&mut self, ops: impl IntoIterator<Item = Op>) -> Result<usize, LogError> {
        self.insert_within(ops, MAX_LOG_BYTES)
    }

    /// [`Self::insert`] for operations read back from disk, taken under the
    /// rules of their time: only the count is bounded.
    pub fn restore(&mut self, ops: impl IntoIterator<Item = Op>) -> Result<usize, LogError> {
        self.insert_within(ops, usize::MAX)
    }

    fn insert_within(
        &mut self,
        ops: impl IntoIterator<Item = Op>,
        max_bytes: usize,
    ) -> Result<usize, LogError> {
        let mut fresh: Vec<Op> = Vec::new();
        let mut ids = HashSet::new();
        let mut bytes = self.bytes;
        for op in ops {
            if op.group != self.group {
                return Err(LogError::OtherGroup);
            }
            if self.ids.contains(&op.id) || !ids.insert(op.id) {
                continue;
            }
            bytes = bytes.saturating_add(op.bytes.len());
            if self.ops.len() + fresh.len() >= MAX_OPS || bytes > max_bytes {
                return Err(LogError::Full);
            }
            fresh.push(op);
        }
        if fresh.is_empty() {
            return Ok(0);
        }
        self.bytes = bytes;
        let new = fresh.len();
        for op in fresh {
            self.ids.insert(op.id);
            self.ops.insert(op.order(), op);
        }
        let mut view = View::default();
        let mut head: u64 = 0;
        for op in self.ops.values() {
            if view.apply(op) {
                head = match op.change {
                    // Anyone may leave, at any clock: a leave moves the
                    // clock one step at most, or a member leaving at
                    // 2⁶⁴−1 would use it up for everyone else.
                    Change::Leave => head.max(op.lamport.min(head.saturating_add(1))),
                    _ => op.lamport,
                };
            }
        }
        self.view = view;
        self.head = head;
        Ok(new)
    }
}

/// The gossip topic id of `group`: derived from it, not naming it.
pub fn topic_id(group: &[u8; 32]) -> [u8; 32] {
    hash(labels::GROUP_TOPIC, group)
}

/// The first byte of what a group's topic carries: this layout's version.
pub const GOSSIP_VERSION: u8 = 1;
/// Bytes before the group message on a group's topic.
pub const GOSSIP_HEADER: usize = 2;
/// Flag: when its author published it, every other member was a peer on
/// the topic, so flood publishing reached each of them: nobody forwards it.
const REACHED_ALL: u8 = 0x01;

/// What goes on a group's topic: `version ‖ flags ‖ group message`.
pub fn gossip_frame(message: &[u8], reached_all: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(GOSSIP_HEADER + message.len());
    out.push(GOSSIP_VERSION);
    out.push(if reached_all { REACHED_ALL } else { 0 });
    out.extend_from_slice(message);
    out
}

/// The "reached every member" flag and the group message of a group
/// topic's payload; `None` for another version, an unknown flag, or
/// nothing after the header.
pub fn gossip_unframe(data: &[u8]) -> Option<(bool, &[u8])> {
    match data {
        [GOSSIP_VERSION, flags, message @ ..]
            if flags & !REACHED_ALL == 0 && !message.is_empty() =>
        {
            Some((flags & REACHED_ALL != 0, message))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::crypto::PrekeyStore;

    struct Device {
        id: DeviceIdentity,
        card: MemberCard,
    }

    fn device(seed: u64, name: &str) -> Device {
        let mut rng = StdRng::seed_from_u64(seed);
        let id = DeviceIdentity::generate(&mut rng);
        let prekeys = PrekeyStore::new(&id, 1, &mut rng);
        let bundle = prekeys
            .bundle(&id, [seed as u8; 32], &[], 1, false)
            .unwrap();
        Device {
            card: MemberCard {
                invite: Invite::new(bundle, Vec::new()),
                name: name.into(),
            },
            id,
        }
    }

    fn create(d: &Device) -> Op {
        Op::new(
            &d.id,
            [0; 32],
            1,
            Change::Create {
                name: "team".into(),
                nonce: [7; 16],
                card: d.card.clone(),
                retention: None,
            },
        )
    }

    /// `d`'s group "team", its creation held.
    fn born(d: &Device) -> ([u8; 32], Log) {
        let birth = create(d);
        let g = birth.group;
        let mut log = Log::new(g);
        log.insert([birth]).unwrap();
        (g, log)
    }

    #[test]
    fn a_log_holds_so_many_bytes_at_most() {
        let admin = device(1, "admin");
        let (g, mut log) = born(&admin);
        let mut big = device(2, "big");
        big.card.invite = Invite::new(
            big.card.invite.bundle.clone(),
            (0..16)
                .map(|i| format!("/dns4/{}{i:02}/tcp/1", "a".repeat(230)))
                .collect(),
        );
        let mut lamport = 2;
        let refused = loop {
            let ops: Vec<Op> = (0..64)
                .map(|i| {
                    let card = big.card.clone();
                    Op::new(
                        &admin.id,
                        g,
                        lamport + i,
                        Change::Add {
                            card,
                            role: Role::Member,
                        },
                    )
                })
                .collect();
            lamport += 64;
            let len = log.ops().count();
            if let Err(e) = log.insert(ops) {
                assert_eq!(log.ops().count(), len, "all or nothing");
                break e;
            }
        };
        assert!(matches!(refused, LogError::Full));
        let held: usize = log.ops().map(|o| o.bytes.len()).sum();
        assert!(held <= MAX_LOG_BYTES);
        assert!(log.ops().count() < MAX_OPS / 2, "the bytes ran out first");
    }

    /// `by` adds `who` with `role`, at the next clock.
    fn add(log: &mut Log, by: &Device, who: &Device, role: Role) {
        let op = Op::new(
            &by.id,
            *log.group(),
            log.next_lamport(),
            Change::Add {
                card: who.card.clone(),
                role,
            },
        );
        log.insert([op]).unwrap();
    }

    fn keys(log: &Log) -> Vec<[u8; 32]> {
        log.view().members.iter().map(|m| m.key).collect()
    }

    #[test]
    fn gossip_frames_round_trip_and_refuse_what_they_do_not_know() {
        let message = [9u8; 130];
        for reached_all in [false, true] {
            let f = gossip_frame(&message, reached_all);
            assert_eq!(f.len(), GOSSIP_HEADER + message.len());
            assert_eq!(gossip_unframe(&f), Some((reached_all, &message[..])));
        }
        let mut other_version = gossip_frame(&message, false);
        other_version[0] = 2;
        assert_eq!(gossip_unframe(&other_version), None);
        let mut unknown_flag = gossip_frame(&message, true);
        unknown_flag[1] = 0x03;
        assert_eq!(gossip_unframe(&unknown_flag), None);
        assert_eq!(gossip_unframe(&[GOSSIP_VERSION, 0]), None);
        assert_eq!(gossip_unframe(&[]), None);
    }

    #[test]
    fn operations_round_trip_and_are_checked() {
        let a = device(1, "a");
        let c = create(&a);
        let back = Op::from_bytes(&c.bytes).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.group, c.group);
        // A flipped bit anywhere is refused.
        for i in [3, c.bytes.len() / 2, c.bytes.len() - 1] {
            let mut bad = c.bytes.clone();
            bad[i] ^= 1;
            assert!(Op::from_bytes(&bad).is_err(), "byte {i}");
        }
        // Oversized input is refused before decoding.
        assert!(Op::from_bytes(&vec![OP_VERSION; MAX_OP + 1]).is_err());
        // A creation whose card is someone else's is refused.
        let b = device(2, "b");
        let forged = Op::new(
            &a.id,
            [0; 32],
            1,
            Change::Create {
                name: "x".into(),
                nonce: [0; 16],
                card: b.card.clone(),
                retention: None,
            },
        );
        assert!(Op::from_bytes(&forged.bytes).is_err());
        // A name with control characters is refused.
        let rename = Op::new(
            &a.id,
            c.group,
            2,
            Change::Rename {
                name: "a\x1b[2Jb".into(),
            },
        );
        assert!(Op::from_bytes(&rename.bytes).is_err());
    }

    /// A card's key is found once, when its operation is made or decoded;
    /// the fold takes it from there (checking no signature again).
    #[test]
    fn an_addition_carries_its_member_key_and_the_fold_uses_it() {
        let (a, b) = (device(1, "a"), device(2, "b"));
        let birth = create(&a);
        assert_eq!(birth.member, Some(a.card.key().unwrap()));
        let g = birth.group;
        let add = Op::new(
            &a.id,
            g,
            2,
            Change::Add {
                card: b.card.clone(),
                role: Role::Member,
            },
        );
        let decoded = Op::from_bytes(&add.bytes).unwrap();
        assert_eq!(decoded.member, Some(b.card.key().unwrap()));
        assert_eq!(decoded, add);
        let mut log = Log::new(g);
        log.insert([birth.clone(), decoded.clone()]).unwrap();
        assert!(log.view().is_member(&b.card.key().unwrap()));
        // Without the key the fold adds nobody: it does not look again.
        let mut unkeyed = decoded;
        unkeyed.member = None;
        let mut log = Log::new(g);
        log.insert([birth, unkeyed]).unwrap();
        assert!(!log.view().is_member(&b.card.key().unwrap()));
    }

    #[test]
    fn admins_change_the_group_and_members_cannot() {
        let (a, b, c) = (device(1, "a"), device(2, "b"), device(3, "c"));
        let (g, mut log) = born(&a);
        add(&mut log, &a, &b, Role::Member);
        assert_eq!(
            keys(&log),
            vec![a.card.key().unwrap(), b.card.key().unwrap()]
        );
        // b is a member, not an admin: its add and rename do nothing.
        let by_b = [
            Op::new(
                &b.id,
                g,
                log.next_lamport(),
                Change::Add {
                    card: c.card.clone(),
                    role: Role::Admin,
                },
            ),
            Op::new(
                &b.id,
                g,
                log.next_lamport(),
                Change::Rename { name: "b's".into() },
            ),
        ];
        assert_eq!(log.insert(by_b).unwrap(), 2);
        assert_eq!(log.view().members.len(), 2);
        assert_eq!(log.view().name, "team");
        // b leaves; then a leaves and nobody is left.
        log.insert([Op::new(&b.id, g, log.next_lamport(), Change::Leave)])
            .unwrap();
        assert_eq!(keys(&log), vec![a.card.key().unwrap()]);
        // An operation of another group is refused.
        let other = create(&b);
        assert_eq!(log.insert([other]), Err(LogError::OtherGroup));
    }

    #[test]
    fn an_operation_its_author_may_not_make_does_not_use_the_clock_up() {
        let (a, b) = (device(1, "a"), device(2, "b"));
        let (g, mut log) = born(&a);
        add(&mut log, &a, &b, Role::Member);
        assert_eq!(log.next_lamport(), 3);
        // b, a member about to be removed, signs a rename at the end of
        // the clock: it is held (every device folds the same log) but it
        // changes nothing, so it does not move the clock.
        let top = Op::new(&b.id, g, u64::MAX, Change::Rename { name: "x".into() });
        assert_eq!(log.insert([top]).unwrap(), 1);
        assert_eq!(log.view().name, "team");
        assert_eq!(log.next_lamport(), 3);
        // a removes b, at a clock that sorts before b's rename.
        let remove = Op::new(
            &a.id,
            g,
            3,
            Change::Remove {
                member: b.card.key().unwrap(),
            },
        );
        log.insert([remove]).unwrap();
        assert_eq!(keys(&log), vec![a.card.key().unwrap()]);
        assert_eq!(log.next_lamport(), 4);
        // A leave by someone who is not a member counts for nothing either.
        let stray = Op::new(&b.id, g, 1_000, Change::Leave);
        log.insert([stray]).unwrap();
        assert_eq!(log.next_lamport(), 4);
        // A member who leaves at the end of the clock moves it one step.
        let c = device(3, "c");
        add(&mut log, &a, &c, Role::Member);
        log.insert([Op::new(&c.id, g, u64::MAX, Change::Leave)])
            .unwrap();
        assert_eq!(keys(&log), vec![a.card.key().unwrap()]);
        assert_eq!(log.next_lamport(), 6);
    }

    #[test]
    fn a_retention_over_a_year_counts_as_a_year_as_the_api_allows() {
        let a = device(1, "a");
        let (g, mut log) = born(&a);
        let long = Op::new(
            &a.id,
            g,
            2,
            Change::Retention {
                secs: Some(u64::MAX),
            },
        );
        log.insert([Op::from_bytes(&long.bytes).unwrap()]).unwrap();
        assert_eq!(log.view().retention, Some(MAX_RETENTION));
    }

    #[test]
    fn the_first_member_becomes_admin_when_the_last_admin_leaves() {
        let (a, b, c) = (device(1, "a"), device(2, "b"), device(3, "c"));
        let (g, mut log) = born(&a);
        for d in [&b, &c] {
            add(&mut log, &a, d, Role::Member);
        }
        log.insert([Op::new(&a.id, g, log.next_lamport(), Change::Leave)])
            .unwrap();
        let v = log.view();
        assert_eq!(v.members[0].key, b.card.key().unwrap());
        assert_eq!(v.members[0].role, Role::Admin);
        assert_eq!(v.members[1].role, Role::Member);
    }

    #[test]
    fn concurrent_changes_by_two_admins_converge_in_any_order() {
        let (a, b, c, d, e) = (
            device(1, "a"),
            device(2, "b"),
            device(3, "c"),
            device(4, "d"),
            device(5, "e"),
        );
        let birth = create(&a);
        let g = birth.group;
        let mut base = Log::new(g);
        base.insert([birth]).unwrap();
        for (dev, role) in [(&b, Role::Admin), (&c, Role::Member), (&d, Role::Member)] {
            let op = Op::new(
                &a.id,
                g,
                base.next_lamport(),
                Change::Add {
                    card: dev.card.clone(),
                    role,
                },
            );
            base.insert([op]).unwrap();
        }
        let l = base.next_lamport();
        // At the same time: a removes b and adds e; b removes c and renames.
        let by_a = vec![
            Op::new(
                &a.id,
                g,
                l,
                Change::Remove {
                    member: b.card.key().unwrap(),
                },
            ),
            Op::new(
                &a.id,
                g,
                l + 1,
                Change::Add {
                    card: e.card.clone(),
                    role: Role::Member,
                },
            ),
        ];
        let by_b = vec![
            Op::new(
                &b.id,
                g,
                l,
                Change::Remove {
                    member: c.card.key().unwrap(),
                },
            ),
            Op::new(&b.id, g, l + 1, Change::Rename { name: "b's".into() }),
        ];
        let all: Vec<Op> = base.ops().cloned().chain(by_a).chain(by_b).collect();
        // Every arrival order folds to the same view.
        let mut views = Vec::new();
        let mut rng = StdRng::seed_from_u64(9);
        for _ in 0..50 {
            let mut ops = all.clone();
            rand::seq::SliceRandom::shuffle(ops.as_mut_slice(), &mut rng);
            let mut log = Log::new(g);
            for op in ops {
                log.insert([op]).unwrap();
            }
            views.push(log.view().clone());
        }
        assert!(views.windows(2).all(|w| w[0] == w[1]));
        // The rule: same clock, so the author key decides which goes first.
        let v = &views[0];
        let (ka, kb) = (a.card.key().unwrap(), b.card.key().unwrap());
        if ka < kb {
            // a's removal of b first: b's later changes do not count.
            assert!(!v.is_member(&kb));
            assert!(v.is_member(&c.card.key().unwrap()));
            assert_eq!(v.name, "team");
        } else {
            // b's removal of c first, then a's removal of b; b's rename at
            // clock l + 1 comes after it was removed at l: no effect.
            assert!(!v.is_member(&c.card.key().unwrap()));
            assert!(!v.is_member(&kb));
            assert_eq!(v.name, "team");
        }
        assert!(v.is_member(&e.card.key().unwrap()));
    }

    #[test]
    fn a_group_holds_at_most_its_member_limit() {
        let a = device(1, "a");
        let birth = create(&a);
        let g = birth.group;
        let mut log = Log::new(g);
        log.insert([birth]).unwrap();
        for i in 0..(MAX_MEMBERS as u64 + 3) {
            let d = device(100 + i, "m");
            let op = Op::new(
                &a.id,
                g,
                log.next_lamport(),
                Change::Add {
                    card: d.card,
                    role: Role::Member,
                },
            );
            log.insert([op]).unwrap();
        }
        assert_eq!(log.view().members.len(), MAX_MEMBERS);
    }
}
