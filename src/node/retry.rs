//! The outbox's schedule in memory: which queued message is due for its next
//! attempt when, found without scanning the store.
//!
//! The store's `outbox` tree is the durable truth (what is still owed); this
//! index is rebuilt from it on start and decides the pacing. Retry times are
//! not written back: after a restart everything queued is due at once, which
//! is what a user who just came back online wants.

use std::collections::{BTreeSet, HashMap};

/// First wait after a message went out by the mesh with no receipt yet.
pub const FIRST_RETRY: u64 = 2;
/// Longest wait between two attempts.
pub const MAX_RETRY: u64 = 300;

/// What the schedule knows about one queued message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// The message.
    pub msg_id: [u8; 16],
    /// Its recipient device.
    pub recipient: [u8; 32],
    /// Its conversation.
    pub conv_id: [u8; 32],
    /// Its Lamport clock.
    pub lamport: u64,
    /// Its sequence number in the conversation.
    pub seq: u64,
    /// Attempts so far.
    pub attempts: u32,
    /// When it is due next (Unix seconds).
    pub next_at: u64,
    /// When it is given up (Unix seconds).
    pub expires_at: u64,
}

impl Meta {
    /// Whether it is a chat message (sequence numbers start at 1); the
    /// other queued payloads (receipts, settings, group payloads) have no
    /// history entry and no delivery state of their own.
    pub fn is_chat(&self) -> bool {
        self.seq != 0
    }

    /// Whether it has no sequence number and no clock: a read receipt,
    /// or (in a group's conversation) a group payload. A temporary-chat
    /// setting has its clock. Nothing acknowledges a 1:1 read receipt that
    /// went out on the mesh.
    pub fn is_receipt(&self) -> bool {
        self.seq == 0 && self.lamport == 0
    }
}

/// The schedule, keyed by outbox position.
#[derive(Debug, Default)]
pub struct Schedule {
    meta: HashMap<u64, Meta>,
    by_msg: HashMap<([u8; 16], [u8; 32]), u64>,
    /// How many entries each message id has queued (its copies for
    /// several devices).
    copies: HashMap<[u8; 16], u32>,
    /// Positions queued for each recipient (what a recipient coming online
    /// makes due is found without a scan of the whole outbox).
    by_recipient: HashMap<[u8; 32], BTreeSet<u64>>,
    due: BTreeSet<(u64, u64)>,
    expiry: BTreeSet<(u64, u64)>,
}

/// Backoff after `attempts` attempts: 2, 4, 8 … seconds, at most [`MAX_RETRY`].
pub fn backoff(attempts: u32) -> u64 {
    FIRST_RETRY
        .saturating_mul(1u64 << attempts.min(16))
        .min(MAX_RETRY)
}

impl Schedule {
    /// Adds a queued message (outbox position `pos`).
    pub fn insert(&mut self, pos: u64, meta: Meta) {
        self.remove(pos);
        if self
            .by_msg
            .insert((meta.msg_id, meta.recipient), pos)
            .is_none()
        {
            *self.copies.entry(meta.msg_id).or_default() += 1;
        }
        self.by_recipient
            .entry(meta.recipient)
            .or_default()
            .insert(pos);
        self.due.insert((meta.next_at, pos));
        self.expiry.insert((meta.expires_at, pos));
        self.meta.insert(pos, meta);
    }

    /// Removes a message (acknowledged or expired); returns what it was.
    pub fn remove(&mut self, pos: u64) -> Option<Meta> {
        let m = self.meta.remove(&pos)?;
        if self.by_msg.remove(&(m.msg_id, m.recipient)).is_some()
            && let Some(n) = self.copies.get_mut(&m.msg_id)
        {
            *n -= 1;
            if *n == 0 {
                self.copies.remove(&m.msg_id);
            }
        }
        if let Some(queued) = self.by_recipient.get_mut(&m.recipient) {
            queued.remove(&pos);
            if queued.is_empty() {
                self.by_recipient.remove(&m.recipient);
            }
        }
        self.due.remove(&(m.next_at, pos));
        self.expiry.remove(&(m.expires_at, pos));
        Some(m)
    }

    /// The outbox position of `msg_id` to `recipient`, if still queued.
    pub fn find(&self, msg_id: &[u8; 16], recipient: &[u8; 32]) -> Option<u64> {
        self.by_msg.get(&(*msg_id, *recipient)).copied()
    }

    /// Whether any entry of `msg_id` is queued, for any recipient.
    pub fn has_msg(&self, msg_id: &[u8; 16]) -> bool {
        self.copies.contains_key(msg_id)
    }

    /// What is known about position `pos`.
    pub fn get(&self, pos: u64) -> Option<&Meta> {
        self.meta.get(&pos)
    }

    /// Moves `pos` to be due at `at`; counts an attempt if `attempt`.
    pub fn reschedule(&mut self, pos: u64, at: u64, attempt: bool) {
        if let Some(m) = self.meta.get_mut(&pos) {
            self.due.remove(&(m.next_at, pos));
            m.next_at = at;
            if attempt {
                m.attempts = m.attempts.saturating_add(1);
            }
            self.due.insert((at, pos));
        }
    }

    /// Whether anything is queued for `recipient`.
    pub fn has_any_for(&self, recipient: &[u8; 32]) -> bool {
        self.by_recipient
            .get(recipient)
            .is_some_and(|ps| !ps.is_empty())
    }

    /// Whether anything with a clock (a chat or group message) is queued
    /// for `recipient` in the conversation `conv`.
    pub fn has_messages_for(&self, recipient: &[u8; 32], conv: &[u8; 32]) -> bool {
        self.by_recipient.get(recipient).is_some_and(|ps| {
            ps.iter()
                .filter_map(|p| self.meta.get(p))
                .any(|m| &m.conv_id == conv && m.lamport != 0)
        })
    }

    /// Up to `limit` positions due at `now`, oldest due first.
    pub fn due(&self, now: u64, limit: usize) -> Vec<u64> {
        self.due
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(limit)
            .map(|&(_, pos)| pos)
            .collect()
    }

    /// Removes and returns every message whose expiry is at or before `now`.
    pub fn take_expired(&mut self, now: u64) -> Vec<(u64, Meta)> {
        let gone: Vec<u64> = self
            .expiry
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|&(_, pos)| pos)
            .collect();
        gone.into_iter()
            .filter_map(|pos| self.remove(pos).map(|m| (pos, m)))
            .collect()
    }

    /// Makes every message to `recipient` in `conv_id` from sequence number
    /// `from` on due at `now` (the recipient asked for them again); the
    /// lowest sequence number among them, if any.
    pub fn due_again(
        &mut self,
        recipient: &[u8; 32],
        conv_id: &[u8; 32],
        from: u64,
        now: u64,
    ) -> Option<u64> {
        let hit = self.queued_for(recipient, |m| {
            m.is_chat() && &m.conv_id == conv_id && m.seq >= from
        });
        let lowest = hit
            .iter()
            .filter_map(|pos| self.meta.get(pos))
            .map(|m| m.seq)
            .min();
        for pos in hit {
            self.reschedule(pos, now, false);
        }
        lowest
    }

    /// Makes every message to `recipient` due at `now` (it just came online).
    pub fn due_now_for(&mut self, recipient: &[u8; 32], now: u64) {
        self.due_now_where(recipient, now, |m| m.next_at > now);
    }

    /// Makes due at `now` the messages to `recipient` that failed at least
    /// twice and wait longer than [`FIRST_RETRY`]: it just reached us, so
    /// it knows us now (a device refuses frames from devices it does not
    /// know yet, as a new group member does until it hears of the others).
    /// Whether any was.
    pub fn due_now_failed(&mut self, recipient: &[u8; 32], now: u64) -> bool {
        self.due_now_where(recipient, now, |m| {
            m.attempts >= 2 && m.next_at > now + FIRST_RETRY
        })
    }

    /// Makes due at `now` the messages to `recipient` that `pick` chooses;
    /// whether there were any.
    fn due_now_where(
        &mut self,
        recipient: &[u8; 32],
        now: u64,
        pick: impl Fn(&Meta) -> bool,
    ) -> bool {
        let hit = self.queued_for(recipient, pick);
        for &pos in &hit {
            self.reschedule(pos, now, false);
        }
        !hit.is_empty()
    }

    /// The positions queued for `recipient` that `pick` chooses.
    pub fn queued_for(&self, recipient: &[u8; 32], pick: impl Fn(&Meta) -> bool) -> Vec<u64> {
        self.by_recipient
            .get(recipient)
            .into_iter()
            .flatten()
            .filter(|pos| self.meta.get(pos).is_some_and(&pick))
            .copied()
            .collect()
    }

    /// Number of queued messages.
    pub fn len(&self) -> usize {
        self.meta.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(n: u8, next_at: u64, expires_at: u64) -> Meta {
        Meta {
            msg_id: [n; 16],
            recipient: [1; 32],
            conv_id: [2; 32],
            lamport: u64::from(n),
            seq: u64::from(n),
            attempts: 0,
            next_at,
            expires_at,
        }
    }

    #[test]
    fn due_expiry_and_lookups_stay_consistent() {
        let mut s = Schedule::default();
        s.insert(10, meta(1, 5, 100));
        s.insert(11, meta(2, 3, 50));
        s.insert(12, meta(3, 9, 200));
        assert_eq!(s.due(5, 10), vec![11, 10]);
        assert_eq!(s.due(5, 1), vec![11]);
        s.reschedule(11, 20, true);
        assert_eq!(s.due(5, 10), vec![10]);
        assert_eq!(s.get(11).unwrap().attempts, 1);
        assert_eq!(s.find(&[3; 16], &[1; 32]), Some(12));
        let gone = s.take_expired(60);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0, 11);
        assert_eq!(s.find(&[2; 16], &[1; 32]), None);
        assert!(s.due(1000, 10).iter().all(|p| *p != 11));
        s.due_again(&[1; 32], &[2; 32], 3, 7);
        assert_eq!(s.due(7, 10), vec![10, 12]);
        assert_eq!(s.remove(10).unwrap().seq, 1);
        assert_eq!(s.len(), 1);
        // The index by recipient follows: one left, then none.
        assert_eq!(s.by_recipient[&[1; 32]].len(), 1);
        // The same position queued again for someone else moves with it.
        let mut moved = meta(3, 9, 200);
        moved.recipient = [7; 32];
        s.insert(12, moved);
        assert!(!s.by_recipient.contains_key(&[1; 32]));
        s.due_now_for(&[7; 32], 1);
        assert_eq!(s.due(1, 10), vec![12]);
        s.remove(12);
        assert!(s.by_recipient.is_empty());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(0), 2);
        assert_eq!(backoff(1), 4);
        assert_eq!(backoff(3), 16);
        assert_eq!(backoff(40), MAX_RETRY);
    }

    #[test]
    fn what_failed_long_is_due_again_when_its_recipient_is_heard() {
        let mut s = Schedule::default();
        // 10 failed three times and waits long; 11 was just sent; 12 is
        // for someone else.
        s.insert(10, meta(1, 300, 1000));
        for _ in 0..3 {
            s.reschedule(10, 300, true);
        }
        s.insert(11, meta(2, 4, 1000));
        s.reschedule(11, 4, true);
        let mut other = meta(3, 300, 1000);
        other.recipient = [9; 32];
        other.attempts = 5;
        s.insert(12, other);
        assert!(s.due_now_failed(&[1; 32], 1));
        assert_eq!(s.due(1, 10), vec![10]);
        // Nothing more to hurry.
        assert!(!s.due_now_failed(&[1; 32], 1));
        // The other recipient's is untouched until it is heard from.
        assert!(s.due_now_failed(&[9; 32], 1));
        assert_eq!(s.due(1, 10), vec![10, 12]);
    }
}
