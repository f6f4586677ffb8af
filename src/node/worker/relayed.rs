//! Files for a device that is away. When a relay takes custody of a 1:1
//! media message, the sender deposits the file's encrypted chunks at that
//! relay too, in the recipient's mailbox
//! ([`crate::crypto::media::relayed_chunk_envelope`]); the message shows
//! "stored at relay" only once all of them are held there. The recipient
//! takes them from its mailbox with the rest of its mail, after the
//! message that names them, so a file comes whole while its author is
//! away too.
//!
//! A group file goes the same way to each member whose copy of the
//! message a relay took (members that were away when it was sent), as
//! far as [`GROUP_FILE_BUDGET`] allows per message: past it, members get
//! the file from one another, as before.

use std::collections::{HashMap, HashSet, VecDeque};

use libp2p::PeerId;
use tracing::{debug, warn};

use super::{Out, Purpose, Round, Worker, peer_key};
use crate::crypto::Envelope;
use crate::crypto::media::{MAX_CHUNKS, MAX_RELAYED, Manifest, chunk_name, relayed_chunk_envelope};
use crate::node::NodeEvent;
use crate::relay::proto::{Refusal, Request, Response, envelope_digest};
use crate::store::MessageRef;

/// Chunks per deposit request (each about 64 KiB).
pub(super) const CHUNK_BATCH: usize = 8;
/// Chunk deposits running at once; the others wait their turn.
pub(super) const MAX_CHUNK_DEPOSITS: usize = 4;
/// After a deposit that failed (or the relay was too busy for): when it
/// is tried again (seconds), doubled at each failure in a row up to
/// 2⁸ times.
pub(super) const CHUNKS_AGAIN: u64 = 30;
/// Most chunk deposits waiting; past it the oldest is dropped (the
/// message's next custody starts it again).
const MAX_WAITING: usize = 1024;
/// Most bytes of chunks one group message's file is deposited as, over
/// all its members' mailboxes: eight of the largest files (about 256 MiB;
/// a 5 MiB photo reaches 51 mailboxes, a 32 MiB file 8).
pub(super) const GROUP_FILE_BUDGET: u64 = 8 * MAX_CHUNKS as u64 * MAX_RELAYED as u64;
/// Most group messages whose deposits are counted at once; past it, the
/// one that expires first is forgotten.
const MAX_GROUP_FILES: usize = 1024;

/// One file's chunks going to one relay.
pub(super) struct ChunkDeposit {
    message: MessageRef,
    /// The recipient's mailbox and the message envelope's expiry.
    mailbox: [u8; 32],
    expires_at: u64,
    names: Vec<[u8; 32]>,
    /// The first chunk not held by the relay yet.
    next: usize,
    /// Not sent before this (Unix seconds).
    not_before: u64,
    /// Failures in a row.
    failures: u32,
    /// A group message's file (counted against its budget).
    group: bool,
}

impl ChunkDeposit {
    /// What its chunks count against a group file's budget.
    fn bytes(&self) -> u64 {
        (self.names.len() as u64).saturating_mul(MAX_RELAYED as u64)
    }
}

/// Chunk deposits, by outbox position and relay.
#[derive(Default)]
pub(super) struct RelayedChunks {
    running: HashMap<(u64, PeerId), ChunkDeposit>,
    waiting: VecDeque<((u64, PeerId), ChunkDeposit)>,
    /// Held whole by these relays (until the message leaves the outbox,
    /// or is deposited again).
    done: HashSet<(u64, PeerId)>,
    /// Group messages: what their files' deposits count against
    /// [`GROUP_FILE_BUDGET`].
    group_spent: HashMap<MessageRef, GroupSpent>,
}

/// One group message's file at relays.
#[derive(Default)]
struct GroupSpent {
    /// The mailboxes (at a relay) counted, with the bytes of chunks
    /// deposited or on their way to each: a deposit there again (a
    /// custody renewed, a restart) counts nothing more.
    mailboxes: HashMap<(PeerId, [u8; 32]), u64>,
    /// When the message expires.
    until: u64,
}

impl GroupSpent {
    /// Bytes of chunks deposited or on their way, over all its mailboxes.
    fn bytes(&self) -> u64 {
        self.mailboxes.values().sum()
    }
}

impl RelayedChunks {
    /// Forgets deposits whose message expired, and which relays hold the
    /// files of messages no longer queued. A deposit goes on after its
    /// message was delivered: the message came through a relay, so its
    /// device may have no other way to the file.
    pub(super) fn retain(&mut self, now: u64, queued: impl Fn(u64) -> bool) {
        self.running.retain(|_, j| j.expires_at > now);
        self.waiting.retain(|(_, j)| j.expires_at > now);
        self.done.retain(|(pos, _)| queued(*pos));
        self.group_spent.retain(|_, g| g.until > now);
    }

    /// Counts a group message's file going to a mailbox at a relay (`at`;
    /// `bytes` of chunks), unless counted already; `false` (nothing
    /// counted) past [`GROUP_FILE_BUDGET`].
    fn spend_group(
        &mut self,
        message: MessageRef,
        at: (PeerId, [u8; 32]),
        bytes: u64,
        expires_at: u64,
    ) -> bool {
        let spent = match self.group_spent.get(&message) {
            Some(g) if g.mailboxes.contains_key(&at) => return true,
            Some(g) => g.bytes(),
            None => 0,
        };
        if spent.saturating_add(bytes) > GROUP_FILE_BUDGET {
            return false;
        }
        if !self.group_spent.contains_key(&message)
            && self.group_spent.len() >= MAX_GROUP_FILES
            && let Some(first) = self
                .group_spent
                .iter()
                .min_by_key(|(_, g)| g.until)
                .map(|(m, _)| *m)
        {
            self.group_spent.remove(&first);
        }
        let g = self.group_spent.entry(message).or_default();
        g.mailboxes.insert(at, bytes);
        g.until = g.until.max(expires_at);
        true
    }

    /// A group file's deposit at `relay` that stops (refused, dropped,
    /// its chunks not here): the chunks it did not deposit count no more,
    /// and if it deposited none, neither does the mailbox.
    fn refund_group(&mut self, job: &ChunkDeposit, relay: PeerId) {
        let at = (relay, job.mailbox);
        let deposited = (job.next as u64).saturating_mul(MAX_RELAYED as u64);
        if let Some(g) = self.group_spent.get_mut(&job.message)
            && let Some(counted) = g.mailboxes.get_mut(&at)
        {
            *counted = (*counted).min(deposited);
            if job.next == 0 {
                g.mailboxes.remove(&at);
            }
        }
    }

    /// Deposits for messages no longer stored here (cleared, deleted,
    /// purged) go: their chunks went with them.
    pub(super) fn forget_gone(&mut self, stored: impl Fn(&MessageRef) -> bool) {
        self.running.retain(|_, j| stored(&j.message));
        self.waiting.retain(|(_, j)| stored(&j.message));
        self.group_spent.retain(|m, _| stored(m));
    }

    /// The message at `pos` is deposited afresh: its chunks go again too.
    pub(super) fn again(&mut self, pos: u64) {
        self.done.retain(|(p, _)| *p != pos);
    }
}

impl Worker {
    /// `relay` took custody of the queued message at `pos` (its
    /// `envelope`, for contact `to`): if it is a file whose chunks the
    /// relay does not hold yet (a group's within its budget), they are
    /// deposited there, and `true` says that "stored at relay" waits for
    /// them (or that the message could not be read to tell).
    pub(super) fn deposit_chunks(
        &mut self,
        pos: u64,
        relay: PeerId,
        to: &[u8; 32],
        envelope: &[u8],
        now: u64,
        round: &mut Round,
    ) -> bool {
        let key = (pos, relay);
        let chunks = &self.relays.chunks;
        if chunks.done.contains(&key) {
            return false;
        }
        if chunks.running.contains_key(&key) || chunks.waiting.iter().any(|(k, _)| *k == key) {
            return true;
        }
        let (message, group) = match self.engine.message_ref(pos) {
            Some(m) => (m, false),
            None => match self.engine.group_message_ref(pos) {
                Some(m) => (m, true),
                None => return false,
            },
        };
        if !group && self.engine.conversation_with(to) != Some(message.conv_id) {
            return false;
        }
        let body = match self.engine.store().history().get(&message) {
            Ok(Some(m)) => m.body,
            Ok(None) => return false,
            // It may be a file: not "stored at relay" until it is known
            // (the message is deposited again later, and read again then).
            Err(e) => {
                warn!(error = %e, "reading a queued message; not counted as stored at the relay");
                return true;
            }
        };
        let manifest = match Manifest::from_body(&body) {
            Some(Ok(m)) if !m.chunks.is_empty() => m,
            _ => return false,
        };
        let Ok(env) = Envelope::from_bytes(envelope) else {
            return false;
        };
        let job = ChunkDeposit {
            message,
            mailbox: env.mailbox_id,
            expires_at: env.expires_at,
            names: manifest.chunks.clone(),
            next: 0,
            not_before: 0,
            failures: 0,
            group,
        };
        // Past its budget, a group file's members fetch it from one
        // another.
        if group
            && !self.relays.chunks.spend_group(
                message,
                (relay, job.mailbox),
                job.bytes(),
                job.expires_at,
            )
        {
            debug!(%relay, "a group file past its relay budget; members serve it");
            return false;
        }
        let chunks = &mut self.relays.chunks;
        if chunks.waiting.len() >= MAX_WAITING
            && let Some(((_, dropped_at), dropped)) = chunks.waiting.pop_front()
            && dropped.group
        {
            chunks.refund_group(&dropped, dropped_at);
        }
        let waiting = &mut chunks.waiting;
        waiting.push_back((key, job));
        self.pump_chunks(now, round);
        true
    }

    /// Starts waiting chunk deposits that are due, as far as there is room.
    pub(super) fn pump_chunks(&mut self, now: u64, round: &mut Round) {
        let mut left = self.relays.chunks.waiting.len();
        while left > 0 && self.relays.chunks.running.len() < MAX_CHUNK_DEPOSITS {
            left -= 1;
            let Some((key, job)) = self.relays.chunks.waiting.pop_front() else {
                return;
            };
            if job.expires_at <= now {
                continue;
            }
            if job.not_before > now {
                self.relays.chunks.waiting.push_back((key, job));
                continue;
            }
            self.send_chunks(key, job, round);
        }
    }

    /// The envelopes of `job`'s next batch, read from the store; `None`
    /// (logged) if a chunk is not here or cannot be read.
    fn chunk_envelopes(&self, job: &ChunkDeposit, relay: PeerId) -> Option<Vec<Vec<u8>>> {
        let end = (job.next + CHUNK_BATCH).min(job.names.len());
        let mut envelopes = Vec::with_capacity(end - job.next);
        let media = match self.engine.store().media() {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "reading a file's chunks to deposit");
                return None;
            }
        };
        for name in &job.names[job.next..end] {
            let chunk = match media.chunk(name) {
                Ok(Some(c)) => c,
                other => {
                    warn!(%relay, error = ?other.err(), "a chunk of a file to deposit is not here; not deposited");
                    return None;
                }
            };
            match relayed_chunk_envelope(job.mailbox, job.expires_at, &chunk) {
                Ok(e) => envelopes.push(e),
                Err(e) => {
                    warn!(error = %e, "a chunk of a file to deposit");
                    return None;
                }
            }
        }
        Some(envelopes)
    }

    /// Sends the next batch of `job`'s chunks to its relay (or gives the
    /// job up if they cannot be read here).
    fn send_chunks(&mut self, key: (u64, PeerId), job: ChunkDeposit, round: &mut Round) {
        let (pos, relay) = key;
        let Some(envelopes) = self.chunk_envelopes(&job, relay) else {
            if job.group {
                self.relays.chunks.refund_group(&job, relay);
            }
            return;
        };
        let digests = envelopes.iter().map(|e| envelope_digest(e)).collect();
        round.outs.push(Out::Mailbox {
            relay,
            addrs: Vec::new(),
            request: Request::Deposit(
                envelopes
                    .into_iter()
                    .map(serde_bytes::ByteBuf::from)
                    .collect(),
            ),
            purpose: Purpose::Chunks { pos, digests },
        });
        self.relays.chunks.running.insert(key, job);
    }

    /// The relay's answer to a batch of chunks.
    pub(super) fn chunks_answer(
        &mut self,
        pos: u64,
        relay: PeerId,
        digests: Vec<[u8; 32]>,
        answer: Result<Response, String>,
        now: u64,
        round: &mut Round,
    ) {
        let key = (pos, relay);
        let Some(mut job) = self.relays.chunks.running.remove(&key) else {
            return;
        };
        match answer {
            Ok(Response::Custody(receipt))
                if peer_key(&relay)
                    .is_some_and(|k| receipt.verify_digests(&k, &digests).is_ok()) =>
            {
                job.failures = 0;
                job.next += digests.len();
                if job.next < job.names.len() {
                    self.send_chunks(key, job, round);
                } else {
                    debug!(%relay, chunks = job.names.len(), "a file held at a relay");
                    self.relays.chunks.done.insert(key);
                    match self.engine.stored_at_relay(pos) {
                        Ok(ev) => {
                            round.dirty |= !ev.is_empty();
                            self.events(ev, &[0; 32], round);
                        }
                        Err(e) => warn!(error = %e, "recording custody"),
                    }
                }
            }
            Ok(Response::Refused(reason)) if reason != Refusal::RateLimited => {
                warn!(%relay, %reason, "relay refused a file's chunks");
                if job.group {
                    self.relays.chunks.refund_group(&job, relay);
                }
                round.events.push(NodeEvent::RelayRefused {
                    message: job.message,
                    relay,
                    reason,
                });
            }
            other => {
                debug!(%relay, answer = ?other.map(|r| super::short(&r)), "depositing a file's chunks failed");
                job.not_before = now + (CHUNKS_AGAIN << job.failures.min(8));
                job.failures = job.failures.saturating_add(1);
                self.relays.chunks.waiting.push_back((key, job));
            }
        }
        self.pump_chunks(now, round);
    }

    /// Chunks taken from our mailbox, each with its place there (after
    /// the messages of the same page, so that a file that came with them
    /// is wanted): each is kept if a file followed here names it. One the
    /// store fails to keep marks the round `unkept`, so the page is not
    /// acknowledged. Returns the places of those not kept for want of
    /// room in the media budget: left at the relay.
    pub(super) fn relayed_chunks(
        &mut self,
        chunks: Vec<(u64, Vec<u8>)>,
        round: &mut Round,
    ) -> Vec<u64> {
        let mut left = Vec::new();
        if chunks.is_empty() {
            return left;
        }
        self.load_wanted_media(round);
        // Whether wanted files wait on disk beyond those followed (taken
        // now: keeping a chunk may settle a file and clear it).
        let all_followed = self.media_loaded();
        // Each 64 KiB chunk hashed once here.
        let named: Vec<(u64, [u8; 32], Vec<u8>)> = chunks
            .into_iter()
            .map(|(seq, c)| (seq, chunk_name(&c), c))
            .collect();
        let names: HashSet<[u8; 32]> = named.iter().map(|(_, n, _)| *n).collect();
        let wanted_by = self.media_wanting(&names);
        let mut touched = HashSet::new();
        for (seq, name, chunk) in named {
            match wanted_by.get(&name) {
                Some(message) => {
                    match self.media_chunk(*message, &name, &chunk, round) {
                        Ok(true) => {}
                        Ok(false) => left.push(seq),
                        Err(e) => {
                            // Not acknowledged: the relay hands it over again.
                            warn!(error = %e, "a file chunk from a relay not kept");
                            round.unkept = true;
                        }
                    }
                    touched.insert(*message);
                }
                // Wanted files beyond those followed may name it: left at
                // the relay until the mailbox is read again.
                None if !all_followed => left.push(seq),
                None => debug!("a chunk from a relay that no file here wants"),
            }
        }
        for message in touched {
            self.settle(message, round);
        }
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: u8) -> MessageRef {
        MessageRef {
            conv_id: [1; 32],
            lamport: u64::from(n),
            sender: [2; 32],
            msg_id: [n; 16],
        }
    }

    fn at(n: u8) -> (PeerId, [u8; 32]) {
        (PeerId::random(), [n; 32])
    }

    fn job(message: MessageRef, mailbox: [u8; 32], chunks: usize) -> ChunkDeposit {
        ChunkDeposit {
            message,
            mailbox,
            expires_at: 100,
            names: vec![[0; 32]; chunks],
            next: 0,
            not_before: 0,
            failures: 0,
            group: true,
        }
    }

    /// A group file is deposited for as many mailboxes as its budget
    /// covers (eight of the largest files); a mailbox counted once counts
    /// nothing more; a deposit that stops gives back what it did not
    /// deposit (once), and its mailbox if it deposited nothing; another file
    /// has a budget of its own; when too many files are counted, the one
    /// that expires first is forgotten, and what has expired goes.
    #[test]
    fn a_group_file_goes_to_relays_as_far_as_its_budget() {
        let mut c = RelayedChunks::default();
        let largest = job(message(1), [0; 32], MAX_CHUNKS).bytes();
        assert_eq!(GROUP_FILE_BUDGET, 8 * largest);
        let mailboxes: Vec<_> = (0..9).map(at).collect();
        for (n, m) in mailboxes[..8].iter().enumerate() {
            assert!(c.spend_group(message(1), *m, largest, 100), "mailbox {n}");
        }
        assert!(
            c.spend_group(message(1), mailboxes[3], largest, 100),
            "counted already"
        );
        assert!(
            !c.spend_group(message(1), mailboxes[8], largest, 100),
            "past the budget"
        );
        let refused = job(message(1), mailboxes[2].1, MAX_CHUNKS);
        c.refund_group(&refused, mailboxes[2].0);
        c.refund_group(&refused, mailboxes[2].0);
        assert!(
            c.spend_group(message(1), mailboxes[8], largest, 100),
            "room given back once"
        );
        assert!(!c.spend_group(message(1), mailboxes[2], largest, 100));
        // Refused half way: the half deposited stays counted, and so does
        // the mailbox.
        let mut half = job(message(1), mailboxes[5].1, MAX_CHUNKS);
        half.next = MAX_CHUNKS / 2;
        c.refund_group(&half, mailboxes[5].0);
        c.refund_group(&half, mailboxes[5].0);
        assert_eq!(
            c.group_spent[&message(1)].bytes(),
            7 * largest + largest / 2
        );
        assert!(
            c.spend_group(message(1), mailboxes[5], largest, 100),
            "counted still"
        );
        assert!(!c.spend_group(message(1), at(9), largest, 100));
        assert!(c.spend_group(message(1), at(9), largest / 2, 100));

        assert!(c.spend_group(message(2), at(1), GROUP_FILE_BUDGET, 50));
        assert!(!c.spend_group(message(3), at(1), GROUP_FILE_BUDGET + 1, 100));
        assert!(!c.group_spent.contains_key(&message(3)), "nothing counted");

        for n in 0..MAX_GROUP_FILES as u64 {
            let mut m = message(4);
            m.lamport = 1000 + n;
            assert!(c.spend_group(m, at(4), 1, 200 + n));
        }
        assert_eq!(c.group_spent.len(), MAX_GROUP_FILES);
        assert!(
            !c.group_spent.contains_key(&message(2)),
            "the one expiring first is forgotten"
        );
        c.forget_gone(|m| m.lamport != 1000);
        assert_eq!(c.group_spent.len(), MAX_GROUP_FILES - 1, "a message gone");
        c.retain(200 + MAX_GROUP_FILES as u64, |_| true);
        assert!(c.group_spent.is_empty());
    }
}
