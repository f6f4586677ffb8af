//! The relay's mail spool: sealed envelopes held for devices that are
//! offline, in append-only segment files with the index in memory.
//!
//! A relay's work is append, read once, delete — a queue, not a database.
//! So the spool writes every change as a record at the end of the newest
//! segment and makes it durable with one `fdatasync` per store round
//! ([`Spool::sync`]); a custody receipt or an acknowledgement may be sent
//! once a `sync` that followed the change returned.
//!
//! On disk, in the spool directory:
//!
//! - segment files `0000000001.seg`, `0000000002.seg`, … Each starts with
//!   the magic `MCSPOOL` and a format byte, then a sealed header (segment
//!   number, the first sequence number it may use), then records:
//!   `length (u32 LE) ‖ sealed record`.
//! - A record is `Held` (an envelope: mailbox, seq, digest, deposit
//!   time, expiry, bytes) or `Gone` (seqs of a mailbox that were
//!   acknowledged or expired). Each is sealed with the store's data key
//!   and bound to its segment and offset, so a record copied elsewhere
//!   fails to open.
//!
//! In memory: per mailbox, its live envelopes in seq order (where each
//! record is, its digest and expiry, about 48 bytes) and a map from digest
//! to seq for deduplication.
//!
//! The digest is the first 16 bytes of the envelope's SHA-256, given by
//! the caller (the relay computes it for the custody receipt anyway). A
//! deposit repeated after a lost receipt has the same bytes and is held
//! once; another envelope that merely claims the same envelope id is held
//! beside it, so nobody who saw an id go by can keep the real envelope out
//! by depositing something else under it first. (Records written before
//! carry the envelope id in this place: a repeat of one of those is held a
//! second time, and the device drops the copy.) Opening reads every segment once to rebuild
//! it. A torn record at the end of the newest segment (a crash during a
//! write that was never synced, so never acknowledged) is cut off; damage
//! anywhere else is an error and nothing is opened.
//!
//! Space: a segment is deleted when it is the oldest and holds nothing
//! live; when the files hold more than twice the live records (plus one
//! segment), [`Spool::compact`] copies the oldest segment's live records
//! to the end and deletes it. Segments are only ever deleted oldest first,
//! so a `Gone` record never outlives the records it removes.
//!
//! Sequence numbers are drawn from one counter for every mailbox and never
//! go back (each segment header records where the counter stood), so a
//! fetch cursor ("everything after seq n") never skips or repeats.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::{StdRng, SysRng};
use serde::{Deserialize, Serialize};

use super::Error;
use super::codec::{Sealer, TreeSpec};
use crate::crypto::DataKey;
use crate::crypto::limits::{MAX_ENVELOPE, RECORD_OVERHEAD};

/// Segment file magic, then the format byte.
const MAGIC: &[u8; 7] = b"MCSPOOL";
/// The segment format this build reads and writes.
const FORMAT: u8 = 1;
/// Most seqs in one `Gone` record.
const MAX_GONE: usize = 1024;
/// A segment is closed once it grows past this.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Sealed records (tree name in the associated data).
const RECORDS: TreeSpec = TreeSpec {
    name: "spool",
    max_plain: MAX_ENVELOPE + 128 + MAX_GONE * 10,
};
/// Sealed segment headers.
const HEADERS: TreeSpec = TreeSpec {
    name: "spool header",
    max_plain: 32,
};
/// Bytes before the first record: magic, format, header length, header.
const HEADER_MAX: usize = 8 + 4 + HEADERS.max_plain + RECORD_OVERHEAD;
/// Marks a removed slot.
const DEAD: u32 = u32::MAX;
/// A fetch reads neighbouring records together when the gap between
/// them is at most this...
const READ_GAP: u64 = 4096;
/// ...and the whole read at most this.
const READ_SPAN: u64 = 1 << 20;
/// The active segment is extended by this many zero bytes, written (not
/// just reserved), ahead of its records: `fdatasync` after overwriting
/// blocks that already exist has no file size or extent to commit, and
/// costs about two thirds of one after an append on ext4 here. A closed
/// segment is cut back to its records.
const PREALLOCATE: u64 = 1 << 20;
/// Largest segment file opened: a segment is closed once past
/// [`SEGMENT_BYTES`], so it holds one record more at most (far under a
/// MiB), and its zero-filled room ([`PREALLOCATE`]).
const MAX_SEGMENT_FILE: u64 = SEGMENT_BYTES + 2 * PREALLOCATE;
/// How far the sequence counter skips ahead when a spool is opened again:
/// far above what the relay can take between two syncs (its queue holds
/// at most 128 MiB of envelopes).
const SEQ_SKIP_ON_OPEN: u64 = 1 << 32;

/// The spool's key for an envelope: the first 16 bytes of its SHA-256.
pub fn digest_key(sha256: &[u8; 32]) -> [u8; 16] {
    let mut k = [0u8; 16];
    k.copy_from_slice(&sha256[..16]);
    k
}

/// The (seq, digest) of each envelope removed.
type RemovedIds = Vec<(u64, [u8; 16])>;

/// One envelope held for a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Position in its mailbox (grows with each deposit, across mailboxes).
    pub seq: u64,
    /// What repeats of this deposit share: the first 16 bytes of the
    /// envelope's SHA-256.
    pub digest: [u8; 16],
    /// When it was deposited (Unix seconds).
    pub deposited_at: u64,
    /// When it must be dropped (Unix seconds).
    pub expires_at: u64,
    /// The encoded envelope.
    pub envelope: Vec<u8>,
}

/// Counters of one mailbox (for quotas).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailboxStats {
    /// Envelopes held.
    pub count: u64,
    /// Their total size in bytes.
    pub bytes: u64,
}

/// An envelope to hold: for which mailbox, its id, until when, its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToHold {
    /// The recipient's mailbox.
    pub mailbox: [u8; 32],
    /// The first 16 bytes of the envelope's SHA-256 ([`digest_key`]).
    pub digest: [u8; 16],
    /// When it must be dropped (Unix seconds).
    pub expires_at: u64,
    /// The encoded envelope.
    pub envelope: Vec<u8>,
}

/// What a deposit did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deposited {
    /// The seq of each envelope, in the order given (an envelope already
    /// held keeps its first seq).
    pub seqs: Vec<u64>,
    /// Envelopes that were new.
    pub new: u64,
    /// Their bytes.
    pub new_bytes: u64,
}

/// What an acknowledgement removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    /// Envelopes removed.
    pub count: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// An envelope dropped at its expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    /// Its mailbox.
    pub mailbox: [u8; 32],
    /// Its digest (as held).
    pub digest: [u8; 16],
    /// Its size.
    pub bytes: u64,
}

/// Totals over every mailbox (for metrics and the disk budget).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Mailboxes holding at least one envelope.
    pub mailboxes: u64,
    /// Envelopes held.
    pub envelopes: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// A record as written.
#[derive(Serialize)]
enum RecordOut<'a> {
    Held {
        mailbox: &'a [u8; 32],
        seq: u64,
        digest: &'a [u8; 16],
        deposited_at: u64,
        expires_at: u64,
        #[serde(with = "serde_bytes")]
        envelope: &'a [u8],
    },
    Gone {
        mailbox: &'a [u8; 32],
        seqs: &'a [u64],
    },
}

/// A record as read (the same encoding as [`RecordOut`]).
#[derive(Deserialize)]
enum RecordIn {
    Held {
        mailbox: [u8; 32],
        seq: u64,
        digest: [u8; 16],
        deposited_at: u64,
        expires_at: u64,
        #[serde(with = "serde_bytes")]
        envelope: Vec<u8>,
    },
    Gone {
        mailbox: [u8; 32],
        seqs: Vec<u64>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    segment: u32,
    first_seq: u64,
}

/// Where one live envelope is (48 bytes).
#[derive(Debug, Clone, Copy)]
struct Slot {
    seq: u64,
    expires_at: u64,
    digest: [u8; 16],
    /// Segment number, or [`DEAD`] once removed.
    segment: u32,
    /// Offset of the record's length prefix.
    offset: u32,
    /// Length of the sealed record.
    len: u32,
    /// Envelope bytes.
    size: u32,
}

impl Slot {
    fn live(&self) -> bool {
        self.segment != DEAD
    }
}

#[derive(Debug, Default)]
struct Mailbox {
    /// In seq order; removed ones stay (marked dead) until the front is
    /// trimmed or half are dead.
    slots: VecDeque<Slot>,
    dead: usize,
    /// Digest → seq, to hold a repeated deposit once.
    by_digest: HashMap<[u8; 16], u64>,
    count: u64,
    bytes: u64,
}

impl Mailbox {
    fn position(&self, seq: u64) -> Option<usize> {
        let i = self.slots.partition_point(|s| s.seq < seq);
        (self.slots.get(i)?.seq == seq && self.slots[i].live()).then_some(i)
    }

    /// Marks the slot at `i` removed; returns it.
    fn remove(&mut self, i: usize) -> Slot {
        let slot = self.slots[i];
        self.slots[i].segment = DEAD;
        self.dead += 1;
        // A later copy of the same bytes (deposited again to be held
        // longer) keeps its entry.
        if self.by_digest.get(&slot.digest) == Some(&slot.seq) {
            self.by_digest.remove(&slot.digest);
        }
        self.count -= 1;
        self.bytes -= u64::from(slot.size);
        slot
    }

    fn trim(&mut self) {
        while self.slots.front().is_some_and(|s| !s.live()) {
            self.slots.pop_front();
            self.dead -= 1;
        }
        if self.dead > 64 && self.dead * 2 > self.slots.len() {
            self.slots.retain(Slot::live);
            self.dead = 0;
        }
    }
}

#[derive(Debug)]
struct Segment {
    /// What this spool writes, reads and syncs through.
    file: File,
    /// For the active segment only: the same file opened again, for
    /// whoever syncs it on another thread (see [`Spool::take_unsynced`]).
    /// Its own open file: Linux reports a failed write-back once to each
    /// open file that syncs, so an error one sync of `file` took is still
    /// reported to that thread's sync, which then answers nothing.
    sync_handle: Option<Arc<File>>,
    /// Bytes written (the next record goes here).
    len: u64,
    /// The file's length: the active segment is zero-filled ahead of its
    /// records (see [`PREALLOCATE`]).
    allocated: u64,
    /// Live `Held` records in it, and their record bytes.
    live: u64,
    live_bytes: u64,
}

/// The spool of a relay: every mailbox's held envelopes.
pub struct Spool {
    dir: PathBuf,
    sealer: Sealer,
    segments: BTreeMap<u32, Segment>,
    active: u32,
    mailboxes: HashMap<[u8; 32], Mailbox>,
    next_seq: u64,
    totals: Totals,
    /// Written since the last sync.
    dirty: bool,
    /// When the active segment is closed ([`SEGMENT_BYTES`]).
    segment_bytes: u64,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.dir)
            .field("segments", &self.segments.len())
            .field("totals", &self.totals)
            .finish_non_exhaustive()
    }
}

fn io(dir: &Path, what: &str) -> impl FnOnce(std::io::Error) -> Error {
    let path = dir.to_path_buf();
    let what = what.to_owned();
    move |e| Error::Damaged {
        path,
        what: format!("spool: {what}: {e}"),
    }
}

fn damaged(dir: &Path, what: String) -> Error {
    Error::Damaged {
        path: dir.to_path_buf(),
        what: format!("spool: {what}"),
    }
}

fn segment_name(n: u32) -> String {
    format!("{n:010}.seg")
}

fn record_ad(segment: u32, offset: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&segment.to_be_bytes());
    k[4..].copy_from_slice(&offset.to_be_bytes());
    k
}

/// A segment read back at open.
struct Replayed {
    number: u32,
    first_seq: u64,
    /// Where the valid records end.
    end: u64,
    /// The file was longer (a torn tail).
    torn: bool,
    /// It holds no record at all (a header only).
    empty: bool,
}

impl Spool {
    /// Opens (or creates) the spool in `dir` under the store's data key and
    /// rebuilds its index. A spool written under another key fails with
    /// [`Error::WrongKey`]; damage other than a torn tail with
    /// [`Error::Damaged`].
    pub fn open(dir: impl AsRef<Path>, key: &DataKey) -> Result<Self, Error> {
        Self::open_sized(dir, key, SEGMENT_BYTES)
    }

    /// [`Spool::open`] with segments closed past `segment_bytes` (small
    /// ones let tests cover compaction cheaply).
    pub(crate) fn open_sized(
        dir: impl AsRef<Path>,
        key: &DataKey,
        segment_bytes: u64,
    ) -> Result<Self, Error> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(io(&dir, "create the directory"))?;
        // A new spool directory's name is durable before any custody
        // receipt names what is in it.
        if let Some(parent) = dir.parent() {
            super::sync_dir_or_warn(parent);
        }
        let rng = StdRng::try_from_rng(&mut SysRng).map_err(|e| Error::Entropy(e.to_string()))?;
        let mut spool = Self {
            sealer: Sealer::new(key.clone(), rng),
            segments: BTreeMap::new(),
            active: 0,
            mailboxes: HashMap::new(),
            next_seq: 0,
            totals: Totals::default(),
            dirty: false,
            segment_bytes: segment_bytes.clamp(4096, SEGMENT_BYTES),
            dir,
        };
        let mut numbers = Vec::new();
        for entry in std::fs::read_dir(&spool.dir).map_err(io(&spool.dir, "list"))? {
            let entry = entry.map_err(io(&spool.dir, "list"))?;
            let name = entry.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            numbers.push(n);
        }
        numbers.sort_unstable();
        let mut held: HashMap<[u8; 32], Vec<Slot>> = HashMap::new();
        let mut gone: HashMap<[u8; 32], Vec<u64>> = HashMap::new();
        let last = numbers.last().copied();
        // Segments with no record at all (a start's, when nothing came
        // before the next start): deleted once the new segment is made.
        let mut empty = Vec::new();
        for n in numbers {
            let path = spool.dir.join(segment_name(n));
            // Read whole, so bounded first: no segment this spool writes
            // is larger (closed past `SEGMENT_BYTES`, one record over at
            // most, and its zero-filled room).
            let len = std::fs::metadata(&path)
                .map_err(io(&spool.dir, "read a segment"))?
                .len();
            if len > MAX_SEGMENT_FILE {
                return Err(damaged(
                    &spool.dir,
                    format!("segment {n} is {len} bytes, more than any segment this spool writes"),
                ));
            }
            let bytes = std::fs::read(&path).map_err(io(&spool.dir, "read a segment"))?;
            let r = spool.replay(n, &bytes, Some(n) == last, &mut held, &mut gone)?;
            if r.end == 0 {
                // A segment whose creation a crash cut short: no record
                // was ever in it.
                tracing::warn!(segment = %path.display(), "spool: a segment cut short while it was created is removed");
                std::fs::remove_file(&path).map_err(io(&spool.dir, "remove a cut segment"))?;
                continue;
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io(&spool.dir, "open a segment"))?;
            if r.torn {
                tracing::warn!(segment = %path.display(), at = r.end, len = bytes.len(), "spool: a torn record at the end (never acknowledged) is cut off");
                file.set_len(r.end)
                    .map_err(io(&spool.dir, "cut a torn tail"))?;
                file.sync_all().map_err(io(&spool.dir, "cut a torn tail"))?;
            }
            spool.next_seq = spool.next_seq.max(r.first_seq);
            if r.empty {
                empty.push(r.number);
            }
            spool.segments.insert(
                r.number,
                Segment {
                    file,
                    // Every start begins a new active segment.
                    sync_handle: None,
                    len: r.end,
                    allocated: if r.torn { r.end } else { bytes.len() as u64 },
                    live: 0,
                    live_bytes: 0,
                },
            );
        }
        // Build the index: a seq is live if it was held and never gone; a
        // record copied by compaction (and its original, if the crash came
        // before the old segment was deleted) counts once, at its newest
        // place.
        for (mailbox, mut slots) in held {
            slots.sort_by_key(|s| (s.seq, s.segment, s.offset));
            let gone: std::collections::HashSet<u64> = gone
                .remove(&mailbox)
                .map(|g| g.into_iter().collect())
                .unwrap_or_default();
            let mut mb = Mailbox::default();
            for s in slots {
                spool.next_seq = spool.next_seq.max(s.seq + 1);
                if gone.contains(&s.seq) {
                    continue;
                }
                if let Some(prev) = mb.slots.back_mut()
                    && prev.seq == s.seq
                {
                    *prev = s;
                    continue;
                }
                mb.slots.push_back(s);
            }
            for s in &mb.slots {
                mb.by_digest.insert(s.digest, s.seq);
                mb.count += 1;
                mb.bytes += u64::from(s.size);
                if let Some(seg) = spool.segments.get_mut(&s.segment) {
                    seg.live += 1;
                    seg.live_bytes += u64::from(s.len) + 4;
                }
            }
            if mb.count > 0 {
                spool.totals.mailboxes += 1;
                spool.totals.envelopes += mb.count;
                spool.totals.bytes += mb.bytes;
                spool.mailboxes.insert(mailbox, mb);
            }
        }
        if let Some(&n) = spool.segments.keys().next_back() {
            spool.active = n;
            // Sequence numbers handed out by fetches before a crash may
            // belong to records that were never synced, so the counter
            // rebuilt from the records can be behind what a device has
            // seen (and will acknowledge). Every start therefore skips
            // ahead by more than one run can hand out unsynced, and
            // records that in a new segment's header before any number
            // is used.
            spool.next_seq = spool.next_seq.saturating_add(SEQ_SKIP_ON_OPEN);
        }
        spool.roll()?;
        // Only now: the new segment's header carries the counter forward,
        // so nothing is lost with theirs. Deleting them keeps a relay that
        // restarts often from piling up files (and open descriptors).
        if !empty.is_empty() {
            for n in empty {
                spool.segments.remove(&n);
                std::fs::remove_file(spool.dir.join(segment_name(n)))
                    .map_err(io(&spool.dir, "delete an empty segment"))?;
            }
            super::sync_dir(&spool.dir).map_err(io(&spool.dir, "sync the directory"))?;
        }
        Ok(spool)
    }

    /// Reads segment `n` from `bytes` into `held` and `gone`.
    fn replay(
        &self,
        n: u32,
        bytes: &[u8],
        newest: bool,
        held: &mut HashMap<[u8; 32], Vec<Slot>>,
        gone: &mut HashMap<[u8; 32], Vec<u64>>,
    ) -> Result<Replayed, Error> {
        let bad = |what: &str| damaged(&self.dir, format!("segment {n}: {what}"));
        let header_len = bytes
            .get(8..12)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
        // A newest segment of zeros up to its header's size is one whose
        // creation a crash cut short on a file system that kept the size
        // but not the bytes.
        let zeros = newest && bytes.len() < HEADER_MAX && bytes.iter().all(|&b| b == 0);
        let cut = zeros || header_len.is_none_or(|h| 12 + h > bytes.len());
        if cut {
            // Only the newest segment can be cut short inside its header,
            // by a crash while it was being created (before any record).
            if newest && bytes.len() < HEADER_MAX {
                return Ok(Replayed {
                    number: n,
                    first_seq: 0,
                    end: 0,
                    torn: true,
                    empty: true,
                });
            }
            return Err(bad("shorter than its header"));
        }
        if &bytes[..7] != MAGIC {
            return Err(bad("not a spool segment"));
        }
        if bytes[7] != FORMAT {
            return Err(bad(&format!(
                "format {} (this build reads {FORMAT})",
                bytes[7]
            )));
        }
        let hlen = header_len.unwrap_or(0);
        if 12 + hlen > HEADER_MAX {
            return Err(bad("header length"));
        }
        let header: Header = self
            .sealer
            .open(&HEADERS, &n.to_be_bytes(), &bytes[12..12 + hlen])
            .map_err(|e| match e {
                Error::Decrypt { .. } => Error::WrongKey {
                    path: self.dir.clone(),
                },
                e => e,
            })?;
        if header.segment != n {
            return Err(bad("header names another segment"));
        }
        let records_start = 12 + hlen;
        let mut at = records_start;
        let mut torn = false;
        while at < bytes.len() {
            if newest && bytes[at..].iter().all(|&b| b == 0) {
                // The zero-filled room ahead of the records.
                break;
            }
            let rec = match self.record_at(n, at as u64, &bytes[at..]) {
                Ok(r) => r,
                Err(e) if newest => {
                    tracing::debug!(error = %e, "spool: end of the newest segment");
                    torn = true;
                    break;
                }
                Err(e) => return Err(bad(&format!("record at {at}: {e}"))),
            };
            let (record, len) = rec;
            match record {
                RecordIn::Held {
                    mailbox,
                    seq,
                    digest,
                    expires_at,
                    envelope,
                    ..
                } => held.entry(mailbox).or_default().push(Slot {
                    seq,
                    expires_at,
                    digest,
                    segment: n,
                    offset: at as u32,
                    len: len as u32,
                    size: envelope.len() as u32,
                }),
                RecordIn::Gone { mailbox, seqs } => {
                    gone.entry(mailbox).or_default().extend(seqs);
                }
            }
            at += 4 + len;
        }
        Ok(Replayed {
            number: n,
            first_seq: header.first_seq,
            end: at as u64,
            torn,
            empty: at == records_start,
        })
    }

    /// Decodes the record whose length prefix starts `rest` (at `offset`
    /// in segment `n`); returns it and its sealed length.
    fn record_at(&self, n: u32, offset: u64, rest: &[u8]) -> Result<(RecordIn, usize), Error> {
        let bad = |what: &str| damaged(&self.dir, format!("segment {n} at {offset}: {what}"));
        let len_bytes: [u8; 4] = rest
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("cut length"))?;
        let len = u32::from_le_bytes(len_bytes) as usize;
        if len > RECORDS.max_sealed() {
            return Err(bad("record length"));
        }
        let sealed = rest.get(4..4 + len).ok_or_else(|| bad("cut record"))?;
        let record = self.sealer.open(&RECORDS, &record_ad(n, offset), sealed)?;
        Ok((record, len))
    }

    /// Closes the active segment (synced) and starts the next one.
    fn roll(&mut self) -> Result<(), Error> {
        if let Some(old) = self.segments.get_mut(&self.active) {
            if old.allocated > old.len {
                old.file
                    .set_len(old.len)
                    .map_err(io(&self.dir, "cut a closed segment's room"))?;
                old.allocated = old.len;
            }
            old.file
                .sync_all()
                .map_err(io(&self.dir, "sync a segment"))?;
        }
        let n = self
            .segments
            .keys()
            .next_back()
            .map_or(1, |n| n.saturating_add(1));
        let header = self.sealer.seal(
            &HEADERS,
            &n.to_be_bytes(),
            &Header {
                segment: n,
                first_seq: self.next_seq,
            },
        )?;
        let mut bytes = Vec::with_capacity(12 + header.len());
        bytes.extend_from_slice(MAGIC);
        bytes.push(FORMAT);
        bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&header);
        let path = self.dir.join(segment_name(n));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io(&self.dir, "create a segment"))?;
        file.write_all_at(&bytes, 0)
            .map_err(io(&self.dir, "write a segment header"))?;
        file.sync_all()
            .map_err(io(&self.dir, "sync a segment header"))?;
        super::sync_dir(&self.dir).map_err(io(&self.dir, "sync the directory"))?;
        let sync_handle = Some(Arc::new(
            File::open(&path).map_err(io(&self.dir, "open a segment"))?,
        ));
        if let Some(old) = self.segments.get_mut(&self.active) {
            // Closed (and synced above): nobody syncs it again.
            old.sync_handle = None;
        }
        self.segments.insert(
            n,
            Segment {
                file,
                sync_handle,
                len: bytes.len() as u64,
                allocated: bytes.len() as u64,
                live: 0,
                live_bytes: 0,
            },
        );
        self.active = n;
        Ok(())
    }

    /// Appends sealed records to the active segment; `record` is called
    /// with (segment, offset) of each and returns its sealed bytes.
    /// Returns where each went: (segment, offset, sealed length).
    fn append<F>(&mut self, count: usize, mut record: F) -> Result<Vec<(u32, u32, u32)>, Error>
    where
        F: FnMut(&Sealer, usize, u32, u64) -> Result<Vec<u8>, Error>,
    {
        let mut placed = Vec::with_capacity(count);
        let mut buf: Vec<u8> = Vec::new();
        for i in 0..count {
            let start = self.active_len() + buf.len() as u64;
            if start > self.segment_bytes {
                self.write_out(&mut buf)?;
                self.roll()?;
            }
            let offset = self.active_len() + buf.len() as u64;
            let sealed = record(&self.sealer, i, self.active, offset)?;
            if i == 0 {
                // Records of one call are about the same size (and a
                // segment's worth at most is written at once).
                let ahead = count.saturating_mul(4 + sealed.len());
                buf.reserve(ahead.min(usize::try_from(self.segment_bytes).unwrap_or(usize::MAX)));
            }
            buf.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
            buf.extend_from_slice(&sealed);
            placed.push((self.active, offset as u32, sealed.len() as u32));
        }
        self.write_out(&mut buf)?;
        Ok(placed)
    }

    fn active_len(&self) -> u64 {
        self.segments.get(&self.active).map_or(0, |s| s.len)
    }

    fn write_out(&mut self, buf: &mut Vec<u8>) -> Result<(), Error> {
        if buf.is_empty() {
            return Ok(());
        }
        let seg = self
            .segments
            .get_mut(&self.active)
            .ok_or_else(|| damaged(&self.dir, "no active segment".into()))?;
        let end = seg.len + buf.len() as u64;
        if end > seg.allocated {
            let to = end.max(seg.allocated + PREALLOCATE);
            let zeros = vec![0u8; usize::try_from(to - seg.allocated).unwrap_or(0)];
            seg.file
                .write_all_at(&zeros, seg.allocated)
                .map_err(io(&self.dir, "extend a segment"))?;
            seg.allocated = to;
        }
        seg.file
            .write_all_at(buf, seg.len)
            .map_err(io(&self.dir, "append"))?;
        seg.len = end;
        buf.clear();
        self.dirty = true;
        Ok(())
    }

    /// Makes every change so far durable (`fdatasync` of the active
    /// segment; closed ones were synced when closed). The durability point:
    /// only after it returns may a deposit or an acknowledgement be
    /// answered.
    pub fn sync(&mut self) -> Result<(), Error> {
        if !self.dirty {
            return Ok(());
        }
        if let Some(seg) = self.segments.get(&self.active) {
            seg.file.sync_data().map_err(io(&self.dir, "sync"))?;
        }
        self.dirty = false;
        Ok(())
    }

    /// [`Spool::sync`] split in two, so that another thread can wait on
    /// the disk while this one goes on: returns the active segment's file
    /// if anything was written since the last sync (closed segments were
    /// synced when closed), and counts it as synced. Whoever takes it
    /// must `fdatasync` it before answering for anything written so far.
    pub fn take_unsynced(&mut self) -> Result<Option<Arc<File>>, Error> {
        if !self.dirty {
            return Ok(None);
        }
        let Some(seg) = self.segments.get_mut(&self.active) else {
            self.dirty = false;
            return Ok(None);
        };
        let handle = match &seg.sync_handle {
            Some(h) => h.clone(),
            // Not expected (the active segment gets one when it starts).
            None => {
                let path = self.dir.join(segment_name(self.active));
                let h = Arc::new(File::open(&path).map_err(io(&self.dir, "open a segment"))?);
                seg.sync_handle = Some(h.clone());
                h
            }
        };
        self.dirty = false;
        Ok(Some(handle))
    }

    /// Counters of `mailbox` (zero if it holds nothing).
    pub fn stats(&self, mailbox: &[u8; 32]) -> MailboxStats {
        self.mailboxes
            .get(mailbox)
            .map_or_else(MailboxStats::default, |m| MailboxStats {
                count: m.count,
                bytes: m.bytes,
            })
    }

    /// Whether `mailbox` holds an envelope with this digest, to be kept
    /// at least until `until`.
    pub fn holds(&self, mailbox: &[u8; 32], digest: &[u8; 16], until: u64) -> bool {
        self.held_until(mailbox, digest, until).is_some()
    }

    /// The seq of the copy of `digest` held in `mailbox`, if one is held
    /// at least `until` (a copy to expire sooner does not count: the
    /// same bytes deposited again to be held longer are held again).
    fn held_until(&self, mailbox: &[u8; 32], digest: &[u8; 16], until: u64) -> Option<u64> {
        let mb = self.mailboxes.get(mailbox)?;
        let seq = *mb.by_digest.get(digest)?;
        let slot = mb.slots.get(mb.position(seq)?)?;
        (slot.expires_at >= until).then_some(seq)
    }

    /// Totals over every mailbox.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Bytes the segment files take.
    pub fn file_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.len).sum()
    }

    /// Holds every envelope of `items` (written, not yet synced). An
    /// envelope whose digest a mailbox already holds is not stored again.
    pub fn deposit(&mut self, items: &[ToHold], now: u64) -> Result<Deposited, Error> {
        let mut out = Deposited::default();
        // (index into items, seq) of the new ones.
        let mut fresh: Vec<(usize, u64)> = Vec::new();
        let mut seen: HashMap<([u8; 32], [u8; 16]), u64> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let known = self
                .held_until(&item.mailbox, &item.digest, item.expires_at)
                .or_else(|| seen.get(&(item.mailbox, item.digest)).copied());
            if let Some(seq) = known {
                out.seqs.push(seq);
                continue;
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            seen.insert((item.mailbox, item.digest), seq);
            fresh.push((i, seq));
            out.seqs.push(seq);
        }
        let placed = self.append(fresh.len(), |sealer, k, segment, offset| {
            let (i, seq) = fresh[k];
            let item = &items[i];
            sealer.seal(
                &RECORDS,
                &record_ad(segment, offset),
                &RecordOut::Held {
                    mailbox: &item.mailbox,
                    seq,
                    digest: &item.digest,
                    deposited_at: now,
                    expires_at: item.expires_at,
                    envelope: &item.envelope,
                },
            )
        })?;
        for (&(i, seq), (segment, offset, len)) in fresh.iter().zip(placed) {
            let item = &items[i];
            let size = item.envelope.len() as u32;
            let mb = self.mailboxes.entry(item.mailbox).or_default();
            if mb.count == 0 {
                self.totals.mailboxes += 1;
            }
            mb.slots.push_back(Slot {
                seq,
                expires_at: item.expires_at,
                digest: item.digest,
                segment,
                offset,
                len,
                size,
            });
            mb.by_digest.insert(item.digest, seq);
            mb.count += 1;
            mb.bytes += u64::from(size);
            if let Some(seg) = self.segments.get_mut(&segment) {
                seg.live += 1;
                seg.live_bytes += u64::from(len) + 4;
            }
            out.new += 1;
            out.new_bytes += u64::from(size);
        }
        self.totals.envelopes += out.new;
        self.totals.bytes += out.new_bytes;
        Ok(out)
    }

    /// Reads the envelope a slot points at.
    /// Opens the record of `slot` from `buf`, its bytes (length prefix
    /// included) as read from its segment.
    fn held(&self, mailbox: &[u8; 32], slot: &Slot, buf: &[u8]) -> Result<Held, Error> {
        match self.record_at(slot.segment, u64::from(slot.offset), buf)? {
            (
                RecordIn::Held {
                    mailbox: m,
                    seq,
                    digest,
                    deposited_at,
                    expires_at,
                    envelope,
                },
                _,
            ) if &m == mailbox && seq == slot.seq => Ok(Held {
                seq,
                digest,
                deposited_at,
                expires_at,
                envelope,
            }),
            _ => Err(damaged(
                &self.dir,
                format!(
                    "segment {} at {}: not the envelope indexed",
                    slot.segment, slot.offset
                ),
            )),
        }
    }

    /// Reads `slots` (of one segment, in file order, within [`READ_SPAN`])
    /// with one `pread` and opens each.
    fn read_run(
        &self,
        mailbox: &[u8; 32],
        slots: &[&Slot],
        out: &mut Vec<Held>,
    ) -> Result<(), Error> {
        let (Some(first), Some(last)) = (slots.first(), slots.last()) else {
            return Ok(());
        };
        let seg = self
            .segments
            .get(&first.segment)
            .ok_or_else(|| damaged(&self.dir, format!("segment {} missing", first.segment)))?;
        let start = u64::from(first.offset);
        let end = u64::from(last.offset) + u64::from(last.len) + 4;
        let mut buf = vec![0u8; usize::try_from(end - start).unwrap_or(usize::MAX)];
        seg.file
            .read_exact_at(&mut buf, start)
            .map_err(io(&self.dir, "read"))?;
        for slot in slots {
            let from = usize::try_from(u64::from(slot.offset) - start).unwrap_or(usize::MAX);
            let to = from.saturating_add(slot.len as usize + 4);
            let bytes = buf
                .get(from..to)
                .ok_or_else(|| damaged(&self.dir, "a record outside its read".to_string()))?;
            out.push(self.held(mailbox, slot, bytes)?);
        }
        Ok(())
    }

    /// Up to `limit` envelopes of `mailbox` after `after` (or from the
    /// start), oldest first, leaving out any past its expiry at `now` (the
    /// next purge drops those).
    pub fn fetch(
        &self,
        mailbox: &[u8; 32],
        after: Option<u64>,
        limit: usize,
        now: u64,
    ) -> Result<Vec<Held>, Error> {
        self.fetch_within(mailbox, after, (limit, usize::MAX), now)
    }

    /// As [`Self::fetch`], reading no more than it takes to pass
    /// `max_bytes` of envelopes: it stops after the first envelope that
    /// brings the total over (so the caller sees there is more). The sizes
    /// are in the index, so nothing past that is read or decrypted.
    pub fn fetch_within(
        &self,
        mailbox: &[u8; 32],
        after: Option<u64>,
        (limit, max_bytes): (usize, usize),
        now: u64,
    ) -> Result<Vec<Held>, Error> {
        let Some(mb) = self.mailboxes.get(mailbox) else {
            return Ok(Vec::new());
        };
        let start = match after {
            None => 0,
            Some(a) => mb.slots.partition_point(|s| s.seq <= a),
        };
        // Records next to each other in a segment (the usual case: a
        // mailbox's mail arrives in order) are read with one `pread`.
        let mut out = Vec::new();
        let mut run: Vec<&Slot> = Vec::new();
        let mut wanted = 0;
        let mut bytes = 0usize;
        for slot in mb.slots.range(start..) {
            if wanted >= limit || bytes > max_bytes {
                break;
            }
            if !(slot.live() && slot.expires_at > now) {
                continue;
            }
            wanted += 1;
            bytes = bytes.saturating_add(usize::try_from(slot.size).unwrap_or(usize::MAX));
            if let Some(prev) = run.last() {
                let prev_end = u64::from(prev.offset) + u64::from(prev.len) + 4;
                let first = u64::from(run[0].offset);
                let end = u64::from(slot.offset) + u64::from(slot.len) + 4;
                let joins = slot.segment == prev.segment
                    && u64::from(slot.offset) >= prev_end
                    && u64::from(slot.offset) - prev_end <= READ_GAP
                    && end - first <= READ_SPAN;
                if !joins {
                    self.read_run(mailbox, &run, &mut out)?;
                    run.clear();
                }
            }
            run.push(slot);
        }
        self.read_run(mailbox, &run, &mut out)?;
        Ok(out)
    }

    /// Removes `seqs` of `mailbox` (written as `Gone` records, not yet
    /// synced); returns what went, with the digests.
    fn remove(&mut self, mailbox: &[u8; 32], seqs: &[u64]) -> Result<(Removed, RemovedIds), Error> {
        let Some(mb) = self.mailboxes.get_mut(mailbox) else {
            return Ok((Removed::default(), Vec::new()));
        };
        let mut removed = Removed::default();
        let mut gone = Vec::new();
        let mut digests = Vec::new();
        let mut freed: Vec<(u32, u64)> = Vec::new();
        for &seq in seqs {
            if let Some(i) = mb.position(seq) {
                let slot = mb.remove(i);
                removed.count += 1;
                removed.bytes += u64::from(slot.size);
                gone.push(seq);
                digests.push((seq, slot.digest));
                freed.push((slot.segment, u64::from(slot.len) + 4));
            }
        }
        mb.trim();
        if mb.count == 0 {
            self.mailboxes.remove(mailbox);
            if removed.count > 0 {
                self.totals.mailboxes -= 1;
            }
        }
        self.totals.envelopes -= removed.count;
        self.totals.bytes -= removed.bytes;
        for (segment, bytes) in freed {
            if let Some(seg) = self.segments.get_mut(&segment) {
                seg.live -= 1;
                seg.live_bytes -= bytes;
            }
        }
        let chunks: Vec<&[u64]> = gone.chunks(MAX_GONE).collect();
        self.append(chunks.len(), |sealer, k, segment, offset| {
            sealer.seal(
                &RECORDS,
                &record_ad(segment, offset),
                &RecordOut::Gone {
                    mailbox,
                    seqs: chunks[k],
                },
            )
        })?;
        Ok((removed, digests))
    }

    /// Deletes the envelopes with these sequence numbers (the owner has
    /// them now) and says what was removed.
    pub fn ack(&mut self, mailbox: &[u8; 32], seqs: &[u64]) -> Result<Removed, Error> {
        Ok(self.remove(mailbox, seqs)?.0)
    }

    /// Deletes up to `limit` held envelopes whose expiry is at or before
    /// `now`, in all mailboxes, oldest expiry first, and says which.
    pub fn purge_expired(&mut self, now: u64, limit: usize) -> Result<Vec<Expired>, Error> {
        let mut due: Vec<(u64, [u8; 32], u64, u32)> = Vec::new();
        for (mailbox, mb) in &self.mailboxes {
            for s in &mb.slots {
                if s.live() && s.expires_at <= now {
                    due.push((s.expires_at, *mailbox, s.seq, s.size));
                }
            }
        }
        due.sort_unstable();
        due.truncate(limit);
        let mut by_mailbox: BTreeMap<[u8; 32], Vec<u64>> = BTreeMap::new();
        for (_, mailbox, seq, _) in &due {
            by_mailbox.entry(*mailbox).or_default().push(*seq);
        }
        let mut digests: HashMap<([u8; 32], u64), [u8; 16]> = HashMap::new();
        for (mailbox, seqs) in &by_mailbox {
            let (_, gone) = self.remove(mailbox, seqs)?;
            for (seq, digest) in gone {
                digests.insert((*mailbox, seq), digest);
            }
        }
        Ok(due
            .into_iter()
            .filter_map(|(_, mailbox, seq, size)| {
                digests.get(&(mailbox, seq)).map(|digest| Expired {
                    mailbox,
                    digest: *digest,
                    bytes: u64::from(size),
                })
            })
            .collect())
    }

    /// Reclaims space: deletes the oldest segments while they hold nothing
    /// live, and when the files hold more than twice the live records (plus
    /// one segment), copies the oldest segment's live records to the end
    /// and deletes it. Syncs before deleting anything. Returns whether it
    /// did anything.
    pub fn compact(&mut self) -> Result<bool, Error> {
        let live: u64 = self.segments.values().map(|s| s.live_bytes).sum();
        let oldest = self.segments.keys().next().copied();
        let copy = match oldest {
            Some(n) if n != self.active => {
                let seg = &self.segments[&n];
                seg.live > 0 && self.file_bytes() > 2 * live + self.segment_bytes
            }
            _ => false,
        };
        if let (true, Some(n)) = (copy, oldest) {
            self.copy_forward(n)?;
        }
        let mut deleted = false;
        while let Some((&n, seg)) = self.segments.iter().next() {
            if n == self.active || seg.live > 0 {
                break;
            }
            self.sync()?;
            self.segments.remove(&n);
            std::fs::remove_file(self.dir.join(segment_name(n)))
                .map_err(io(&self.dir, "delete a segment"))?;
            deleted = true;
        }
        if deleted {
            super::sync_dir(&self.dir).map_err(io(&self.dir, "sync the directory"))?;
            tracing::debug!(segments = self.segments.len(), "spool: segments deleted");
        }
        Ok(copy || deleted)
    }

    /// Copies segment `n`'s live records to the end of the spool.
    fn copy_forward(&mut self, n: u32) -> Result<(), Error> {
        let mut moving: Vec<([u8; 32], Held)> = Vec::new();
        for (mailbox, mb) in &self.mailboxes {
            for s in &mb.slots {
                if s.live() && s.segment == n {
                    let mut one = Vec::with_capacity(1);
                    self.read_run(mailbox, &[s], &mut one)?;
                    moving.extend(one.into_iter().map(|h| (*mailbox, h)));
                }
            }
        }
        let placed = self.append(moving.len(), |sealer, k, segment, offset| {
            let (mailbox, h) = &moving[k];
            sealer.seal(
                &RECORDS,
                &record_ad(segment, offset),
                &RecordOut::Held {
                    mailbox,
                    seq: h.seq,
                    digest: &h.digest,
                    deposited_at: h.deposited_at,
                    expires_at: h.expires_at,
                    envelope: &h.envelope,
                },
            )
        })?;
        for ((mailbox, h), (segment, offset, len)) in moving.iter().zip(placed) {
            let Some(mb) = self.mailboxes.get_mut(mailbox) else {
                continue;
            };
            let Some(i) = mb.position(h.seq) else {
                continue;
            };
            let old = mb.slots[i];
            mb.slots[i].segment = segment;
            mb.slots[i].offset = offset;
            mb.slots[i].len = len;
            if let Some(seg) = self.segments.get_mut(&old.segment) {
                seg.live -= 1;
                seg.live_bytes -= u64::from(old.len) + 4;
            }
            if let Some(seg) = self.segments.get_mut(&segment) {
                seg.live += 1;
                seg.live_bytes += u64::from(len) + 4;
            }
        }
        tracing::debug!(
            segment = n,
            records = moving.len(),
            "spool: live records copied forward"
        );
        Ok(())
    }
}
