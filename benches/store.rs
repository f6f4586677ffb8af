//! Store benchmark: the encrypted sled store against SQLite, the reference
//! that mobile messengers use, on the same workload in the same run.
//!
//! Run: `cargo bench --bench store` (about three minutes on a 2-vCPU machine;
//! the fixtures reach a million messages, so this is a plain binary rather
//! than a criterion harness). `STORE_BENCH_QUICK=1` runs the same phases at
//! a hundredth of the size, as a smoke test.
//!
//! The workload: 200 conversations of 10 messages each, then one conversation
//! grown in batches of 100 to 10k, 100k and 1M messages of 150–250-byte
//! bodies. At each size: single-message inserts into another ("live")
//! conversation, not durable and durable per message; durable batches; a walk
//! over the whole big conversation by pages of 50; 1,000 pages of 50 from
//! random positions of that walk plus the newest page; the conversation list,
//! bare and with each conversation's newest message.
//!
//! Each engine runs in its own child process (this binary re-executed), so
//! the resident memory reported for one is not mixed with the other's:
//! - `sled`: the store, through its public API (`meshchat::store`);
//! - `sqlite`: rusqlite (bundled SQLite), WAL, plaintext, a messenger's schema;
//! - `sled-reopen`: the store holding 1M messages, reopened in a fresh
//!   process (open time, cold pages, memory).
//!
//! The parent prints a table and one JSON line (`STORE_BENCH_JSON {...}`).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meshchat::crypto::{DataKey, KdfParams, Keystore};
use meshchat::store::{Conversation, Cursor, DeliveryState, Direction, Store, StoredMessage};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};

const SEED: u64 = 0x6d65_7368;
const BATCH: usize = 100;
const PAGE: usize = 50;
const OTHER_CONVS: usize = 200;
const OTHER_MSGS: usize = 10;
const CHILD_FLAG: &str = "--store-bench-child";

// ---------------------------------------------------------------------------
// Scale

#[derive(Debug, Clone, Copy)]
struct Scale {
    stages: [usize; 3],
    single_fast: usize,
    single_durable: usize,
    batch_durable: usize,
    random_pages: usize,
    warmup_pages: usize,
    newest_reps: usize,
    list_reps: usize,
}

fn scale() -> Scale {
    if std::env::var_os("STORE_BENCH_QUICK").is_some() {
        Scale {
            stages: [1_000, 3_000, 10_000],
            single_fast: 200,
            single_durable: 50,
            batch_durable: 5,
            random_pages: 100,
            warmup_pages: 10,
            newest_reps: 20,
            list_reps: 20,
        }
    } else {
        Scale {
            stages: [10_000, 100_000, 1_000_000],
            single_fast: 3_000,
            single_durable: 1_000,
            batch_durable: 30,
            random_pages: 1_000,
            warmup_pages: 100,
            newest_reps: 200,
            list_reps: 500,
        }
    }
}

// ---------------------------------------------------------------------------
// Workload: deterministic, so every child process generates the same messages.

struct Workload {
    rng: StdRng,
    main: [u8; 32],
    live: [u8; 32],
    others: Vec<[u8; 32]>,
    me: [u8; 32],
    peer: [u8; 32],
    main_lamport: u64,
    live_lamport: u64,
    live_count: u64,
    clock: u64,
}

impl Workload {
    fn new() -> Self {
        let mut rng = StdRng::seed_from_u64(SEED);
        let main = rng.random();
        let live = rng.random();
        let others = (0..OTHER_CONVS).map(|_| rng.random()).collect();
        let me = rng.random();
        let peer = rng.random();
        Self {
            rng,
            main,
            live,
            others,
            me,
            peer,
            main_lamport: 0,
            live_lamport: 0,
            live_count: 0,
            clock: 1_700_000_000,
        }
    }

    fn message(&mut self, conv_id: [u8; 32], lamport: u64, sender: [u8; 32]) -> StoredMessage {
        const LETTERS: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz .,e a";
        let len = self.rng.random_range(150..=250);
        let mut body = vec![0u8; len];
        self.rng.fill(&mut body[..]);
        for b in &mut body {
            *b = LETTERS[usize::from(*b & 31)];
        }
        self.clock += 1;
        StoredMessage {
            msg_id: self.rng.random(),
            conv_id,
            sender,
            lamport,
            sent_at: self.clock,
            body,
            state: DeliveryState::Pending,
            expires_at: None,
        }
    }

    fn other_batch(&mut self, i: usize) -> Vec<StoredMessage> {
        let conv = self.others[i];
        (1..=OTHER_MSGS as u64)
            .map(|l| self.message(conv, l, self.peer))
            .collect()
    }

    fn main_batch(&mut self, n: usize) -> Vec<StoredMessage> {
        (0..n)
            .map(|_| {
                self.main_lamport += 1;
                self.message(self.main, self.main_lamport, self.peer)
            })
            .collect()
    }

    /// One live-chat message, alternately written here and received.
    fn live_message(&mut self) -> (StoredMessage, Direction) {
        self.live_lamport += 1;
        self.live_count += 1;
        if self.live_count.is_multiple_of(2) {
            (
                self.message(self.live, self.live_lamport, self.me),
                Direction::Outgoing,
            )
        } else {
            (
                self.message(self.live, self.live_lamport, self.peer),
                Direction::Incoming,
            )
        }
    }

    fn live_batch(&mut self, n: usize) -> Vec<StoredMessage> {
        (0..n)
            .map(|_| {
                self.live_lamport += 1;
                self.message(self.live, self.live_lamport, self.peer)
            })
            .collect()
    }
}

fn data_key() -> DataKey {
    let mut rng = StdRng::seed_from_u64(SEED);
    Keystore::create(b"pw", KdfParams::INSECURE_FAST, &mut rng)
        .unwrap()
        .1
}

// ---------------------------------------------------------------------------
// Engines

trait Engine {
    type Cursor: Clone;
    fn append_batch(&mut self, msgs: &[StoredMessage], dir: Direction);
    fn append_one(&mut self, msg: &StoredMessage, dir: Direction);
    /// Selects per-commit durability (SQLite's `synchronous`); sled ignores it.
    fn set_durable(&mut self, durable: bool);
    /// The point after which everything written is on disk (sled's `flush`);
    /// SQLite with `synchronous = FULL` is durable at each commit already.
    fn durable_point(&mut self);
    fn page(
        &mut self,
        conv: &[u8; 32],
        before: Option<&Self::Cursor>,
    ) -> (Vec<StoredMessage>, Option<Self::Cursor>);
    fn list(&mut self) -> Vec<Conversation>;
    /// The list as a chat client shows it: each conversation with its
    /// newest message.
    fn summaries(&mut self) -> Vec<(Conversation, Option<StoredMessage>)>;
    fn extra(&mut self) -> Value {
        Value::Null
    }
}

struct SledEngine {
    store: Store,
}

impl Engine for SledEngine {
    type Cursor = Cursor;

    fn append_batch(&mut self, msgs: &[StoredMessage], dir: Direction) {
        self.store.history().append_batch(msgs, dir).unwrap();
    }

    fn append_one(&mut self, msg: &StoredMessage, dir: Direction) {
        self.store.history().append(msg, dir).unwrap();
    }

    fn set_durable(&mut self, _durable: bool) {}

    fn durable_point(&mut self) {
        self.store.flush().unwrap();
    }

    fn page(
        &mut self,
        conv: &[u8; 32],
        before: Option<&Cursor>,
    ) -> (Vec<StoredMessage>, Option<Cursor>) {
        let p = self.store.history().page(conv, before, PAGE).unwrap();
        (p.messages, p.next)
    }

    fn list(&mut self) -> Vec<Conversation> {
        self.store.history().list_conversations().unwrap()
    }

    fn summaries(&mut self) -> Vec<(Conversation, Option<StoredMessage>)> {
        self.store
            .history()
            .summaries()
            .unwrap()
            .into_iter()
            .map(|s| (s.conversation, s.last))
            .collect()
    }
}

/// The SQLite reference: what a messenger keeps, in plaintext.
struct SqliteEngine {
    conn: Connection,
}

type SqlCursor = (i64, [u8; 32], [u8; 16]);

const SQL_SCHEMA: &str = "
CREATE TABLE messages (
    conv_id    BLOB NOT NULL,
    lamport    INTEGER NOT NULL,
    sender     BLOB NOT NULL,
    msg_id     BLOB NOT NULL,
    body       BLOB NOT NULL,
    state      INTEGER NOT NULL,
    sent_at    INTEGER NOT NULL,
    expires_at INTEGER
);
-- Deduplication by the same key as the store's (conversation, Lamport
-- clock, sender, id), which is also the index pages are read from.
CREATE UNIQUE INDEX messages_by_conv ON messages (conv_id, lamport, sender, msg_id);
CREATE TABLE conversations (
    conv_id         BLOB PRIMARY KEY,
    title           TEXT NOT NULL,
    last_message_at INTEGER NOT NULL,
    last_lamport    INTEGER NOT NULL,
    unread          INTEGER NOT NULL,
    retention       INTEGER
);
CREATE INDEX conversations_by_activity
    ON conversations (last_message_at DESC, last_lamport DESC, conv_id);
";
const SQL_RETENTION: &str = "SELECT retention FROM conversations WHERE conv_id = ?1";
const SQL_INSERT: &str = "INSERT OR IGNORE INTO messages \
    (conv_id, lamport, sender, msg_id, body, state, sent_at, expires_at) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
const SQL_CONV: &str = "INSERT INTO conversations \
    (conv_id, title, last_message_at, last_lamport, unread, retention) \
    VALUES (?1, '', ?2, ?3, ?4, NULL) \
    ON CONFLICT (conv_id) DO UPDATE SET \
    last_message_at = max(last_message_at, excluded.last_message_at), \
    last_lamport = max(last_lamport, excluded.last_lamport), \
    unread = unread + excluded.unread";
const SQL_PAGE_COLS: &str =
    "SELECT msg_id, conv_id, sender, lamport, sent_at, body, state, expires_at FROM messages";
const SQL_PAGE_NEWEST: &str = "WHERE conv_id = ?1 \
    ORDER BY lamport DESC, sender DESC, msg_id DESC LIMIT 51";
const SQL_PAGE_BEFORE: &str = "WHERE conv_id = ?1 AND (lamport, sender, msg_id) < (?2, ?3, ?4) \
    ORDER BY lamport DESC, sender DESC, msg_id DESC LIMIT 51";
/// The conversation list with each conversation's newest message, in one
/// query as a messenger would write it.
const SQL_SUMMARIES: &str = "SELECT c.conv_id, c.title, c.last_message_at, c.last_lamport, \
    c.unread, c.retention, \
    m.msg_id, m.conv_id, m.sender, m.lamport, m.sent_at, m.body, m.state, m.expires_at \
    FROM conversations c LEFT JOIN messages m ON m.rowid = ( \
        SELECT rowid FROM messages WHERE conv_id = c.conv_id \
        ORDER BY lamport DESC, sender DESC, msg_id DESC LIMIT 1) \
    ORDER BY c.last_message_at DESC, c.last_lamport DESC, c.conv_id";
const SQL_LIST: &str = "SELECT conv_id, title, last_message_at, last_lamport, unread, retention \
    FROM conversations ORDER BY last_message_at DESC, last_lamport DESC, conv_id";

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap()
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap()
}

impl SqliteEngine {
    fn open(path: &Path) -> Self {
        let conn = Connection::open(path).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        conn.execute_batch("PRAGMA synchronous = NORMAL;").unwrap();
        conn.execute_batch(SQL_SCHEMA).unwrap();
        Self { conn }
    }

    /// The same work as the store's append: read the conversation's
    /// retention, insert unless the id exists, update the conversation.
    fn insert(conn: &Connection, msgs: &[StoredMessage], dir: Direction) {
        let mut seen: Vec<[u8; 32]> = Vec::new();
        let mut retention = conn.prepare_cached(SQL_RETENTION).unwrap();
        let mut ins = conn.prepare_cached(SQL_INSERT).unwrap();
        let mut conv = conn.prepare_cached(SQL_CONV).unwrap();
        let unread = i64::from(dir == Direction::Incoming);
        for m in msgs {
            if !seen.contains(&m.conv_id) {
                let r: Option<Option<i64>> = retention
                    .query_row([m.conv_id], |r| r.get(0))
                    .optional()
                    .unwrap();
                black_box(r);
                seen.push(m.conv_id);
            }
            let n = ins
                .execute(params![
                    m.conv_id,
                    i(m.lamport),
                    m.sender,
                    m.msg_id,
                    m.body,
                    m.state as i64,
                    i(m.sent_at),
                    m.expires_at.map(i),
                ])
                .unwrap();
            if n == 1 {
                conv.execute(params![m.conv_id, i(m.sent_at), i(m.lamport), unread])
                    .unwrap();
            }
        }
    }

    fn row_to_message(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
        Self::message_at(r, 0)
    }

    /// A message from the eight columns starting at `at`.
    fn message_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<StoredMessage> {
        Ok(StoredMessage {
            msg_id: r.get(at)?,
            conv_id: r.get(at + 1)?,
            sender: r.get(at + 2)?,
            lamport: u(r.get(at + 3)?),
            sent_at: u(r.get(at + 4)?),
            body: r.get(at + 5)?,
            state: match r.get::<_, i64>(at + 6)? {
                0 => DeliveryState::Pending,
                1 => DeliveryState::Sent,
                2 => DeliveryState::StoredAtRelay,
                3 => DeliveryState::Delivered,
                _ => DeliveryState::Read,
            },
            expires_at: r.get::<_, Option<i64>>(at + 7)?.map(u),
        })
    }

    fn conversation(r: &rusqlite::Row<'_>) -> rusqlite::Result<Conversation> {
        Ok(Conversation {
            id: r.get(0)?,
            title: r.get(1)?,
            last_message_at: u(r.get(2)?),
            last_lamport: u(r.get(3)?),
            unread: u32::try_from(r.get::<_, i64>(4)?).unwrap(),
            retention: r.get::<_, Option<i64>>(5)?.map(u),
        })
    }
}

impl Engine for SqliteEngine {
    type Cursor = SqlCursor;

    fn append_batch(&mut self, msgs: &[StoredMessage], dir: Direction) {
        let tx = self.conn.transaction().unwrap();
        Self::insert(&tx, msgs, dir);
        tx.commit().unwrap();
    }

    fn append_one(&mut self, msg: &StoredMessage, dir: Direction) {
        // Message and conversation update in one transaction, one commit.
        self.append_batch(std::slice::from_ref(msg), dir);
    }

    fn set_durable(&mut self, durable: bool) {
        let mode = if durable { "FULL" } else { "NORMAL" };
        self.conn
            .execute_batch(&format!("PRAGMA synchronous = {mode};"))
            .unwrap();
    }

    fn durable_point(&mut self) {}

    fn page(
        &mut self,
        conv: &[u8; 32],
        before: Option<&SqlCursor>,
    ) -> (Vec<StoredMessage>, Option<SqlCursor>) {
        let mut rows: Vec<StoredMessage> = match before {
            None => {
                let mut st = self
                    .conn
                    .prepare_cached(&format!("{SQL_PAGE_COLS} {SQL_PAGE_NEWEST}"))
                    .unwrap();
                st.query_map(params![conv], Self::row_to_message)
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap()
            }
            Some((lamport, sender, msg_id)) => {
                let mut st = self
                    .conn
                    .prepare_cached(&format!("{SQL_PAGE_COLS} {SQL_PAGE_BEFORE}"))
                    .unwrap();
                st.query_map(params![conv, lamport, sender, msg_id], Self::row_to_message)
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap()
            }
        };
        let more = rows.len() > PAGE;
        rows.truncate(PAGE);
        let next = if more {
            rows.last().map(|m| (i(m.lamport), m.sender, m.msg_id))
        } else {
            None
        };
        (rows, next)
    }

    fn list(&mut self) -> Vec<Conversation> {
        let mut st = self.conn.prepare_cached(SQL_LIST).unwrap();
        st.query_map([], Self::conversation)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn summaries(&mut self) -> Vec<(Conversation, Option<StoredMessage>)> {
        let mut st = self.conn.prepare_cached(SQL_SUMMARIES).unwrap();
        st.query_map([], |r| {
            let last = match r.get::<_, Option<Vec<u8>>>(6)? {
                Some(_) => Some(Self::message_at(r, 6)?),
                None => None,
            };
            Ok((Self::conversation(r)?, last))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    fn extra(&mut self) -> Value {
        let plan = |sql: &str, params: &[&dyn rusqlite::ToSql]| -> String {
            let mut st = self
                .conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap();
            st.query_map(params, |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
                .join("; ")
        };
        let c = [0u8; 32];
        let page = plan(
            &format!("{SQL_PAGE_COLS} {SQL_PAGE_BEFORE}"),
            &[&c, &0i64, &c, &[0u8; 16]],
        );
        let list = plan(SQL_LIST, &[]);
        let summaries = plan(SQL_SUMMARIES, &[]);
        let version: String = self
            .conn
            .query_row("SELECT sqlite_version()", [], |r| r.get(0))
            .unwrap();
        json!({
            "sqlite_version": version,
            "plan_page": page,
            "plan_list": list,
            "plan_summaries": summaries,
        })
    }
}

// ---------------------------------------------------------------------------
// Measurement helpers

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn latency(mut v: Vec<Duration>) -> Value {
    v.sort_unstable();
    let n = v.len();
    let at = |q: usize| v[(n * q / 100).min(n - 1)];
    let total: Duration = v.iter().sum();
    json!({
        "n": n,
        "p50_us": round(us(at(50)), 1),
        "p99_us": round(us(at(99)), 1),
        "mean_us": round(us(total) / n as f64, 1),
        "max_us": round(us(v[n - 1]), 1),
    })
}

fn rate(n: usize, d: Duration) -> Value {
    json!({
        "n": n,
        "seconds": round(d.as_secs_f64(), 3),
        "per_s": round(n as f64 / d.as_secs_f64(), 0),
        "us_per_msg": round(us(d) / n as f64, 2),
    })
}

/// (VmRSS, VmHWM) in MiB.
fn memory() -> Value {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .map_or(-1.0, |kb| round(kb / 1024.0, 1))
    };
    json!({ "rss_mib": field("VmRSS:"), "hwm_mib": field("VmHWM:") })
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return std::fs::metadata(path).map_or(0, |m| m.len());
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                dir_size(&p)
            } else {
                e.metadata().map_or(0, |m| m.len())
            }
        })
        .sum()
}

fn mib(bytes: u64) -> f64 {
    round(bytes as f64 / (1024.0 * 1024.0), 1)
}

/// FNV-1a over message ids, to check both engines hold the same history.
fn fnv(hash: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *hash ^= u64::from(*b);
        *hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

fn progress(role: &str, what: &str, t0: Instant) {
    eprintln!(
        "[store bench {role} +{:6.1}s] {what}",
        t0.elapsed().as_secs_f64()
    );
}

/// Pages through a whole conversation, newest first; returns every `next`
/// cursor handed out, the total time in `page`, the message count and a
/// hash of the ids in order.
fn walk<E: Engine>(e: &mut E, conv: &[u8; 32], expect: usize) -> (Vec<E::Cursor>, Value, u64) {
    let mut cursors = Vec::with_capacity(expect / PAGE + 1);
    let mut hash = FNV_START;
    let mut seen = 0usize;
    let mut spent = Duration::ZERO;
    let mut before: Option<E::Cursor> = None;
    let mut last_lamport = u64::MAX;
    for _ in 0..=expect / PAGE + 1 {
        let t = Instant::now();
        let (msgs, next) = e.page(conv, before.as_ref());
        spent += t.elapsed();
        for m in &msgs {
            assert!(m.lamport < last_lamport, "pages out of order");
            last_lamport = m.lamport;
            fnv(&mut hash, &m.msg_id);
        }
        seen += msgs.len();
        match next {
            Some(c) => {
                cursors.push(c.clone());
                before = Some(c);
            }
            None => break,
        }
    }
    assert_eq!(seen, expect, "walk saw every message once");
    let pages = cursors.len() + 1;
    let stats = json!({
        "pages": pages,
        "seconds": round(spent.as_secs_f64(), 3),
        "mean_us": round(us(spent) / pages as f64, 1),
    });
    (cursors, stats, hash)
}

/// The random-position page measurement shared by every reader: a warm-up,
/// then `n` pages from cursors picked with a seed fixed per stage size, so
/// every reader measures the same positions; `set` picks another set of
/// positions from the same distribution (for a second measurement on the
/// same files that must not find the first one's pages cached).
fn random_pages<C>(
    cursors: &[C],
    stage: usize,
    set: u64,
    sc: &Scale,
    mut page: impl FnMut(&C) -> usize,
) -> Value {
    let seed = SEED ^ stage as u64 ^ (set << 40);
    let mut warm = StdRng::seed_from_u64(seed ^ 0xfeed);
    for _ in 0..sc.warmup_pages {
        black_box(page(&cursors[warm.random_range(0..cursors.len())]));
    }
    let mut pick = StdRng::seed_from_u64(seed);
    let lat = (0..sc.random_pages)
        .map(|_| {
            let c = &cursors[pick.random_range(0..cursors.len())];
            let t = Instant::now();
            let n = page(c);
            let d = t.elapsed();
            assert!(n > 0);
            d
        })
        .collect();
    latency(lat)
}

// ---------------------------------------------------------------------------
// The workload, for either engine

fn run<E: Engine>(role: &str, e: &mut E, path: &Path, sc: &Scale) -> Value {
    let t0 = Instant::now();
    let mut w = Workload::new();
    let t = Instant::now();
    for c in 0..OTHER_CONVS {
        let b = w.other_batch(c);
        e.append_batch(&b, Direction::Incoming);
    }
    e.durable_point();
    let setup = t.elapsed();
    progress(role, "200 conversations written", t0);

    let mut stages = Vec::new();
    let mut filled = 0usize;
    for &target in &sc.stages {
        // Grow the big conversation in batches of 100 (one transaction each).
        let mut fill = Duration::ZERO;
        let from = filled;
        while filled < target {
            let k = BATCH.min(target - filled);
            let b = w.main_batch(k);
            let t = Instant::now();
            e.append_batch(&b, Direction::Incoming);
            fill += t.elapsed();
            filled += k;
        }
        let t = Instant::now();
        e.durable_point();
        let fill_flush = t.elapsed();
        let mem_fill = memory();
        progress(role, &format!("filled to {target}"), t0);

        // Live chat: one message per append, not durable per message.
        e.set_durable(false);
        let single_fast: Vec<Duration> = (0..sc.single_fast)
            .map(|_| {
                let (m, d) = w.live_message();
                let t = Instant::now();
                e.append_one(&m, d);
                t.elapsed()
            })
            .collect();
        e.durable_point();
        // Live chat, durable before each message is acknowledged.
        e.set_durable(true);
        let single_durable: Vec<Duration> = (0..sc.single_durable)
            .map(|_| {
                let (m, d) = w.live_message();
                let t = Instant::now();
                e.append_one(&m, d);
                e.durable_point();
                t.elapsed()
            })
            .collect();
        let mut batch_durable = Duration::ZERO;
        for _ in 0..sc.batch_durable {
            let b = w.live_batch(BATCH);
            let t = Instant::now();
            e.append_batch(&b, Direction::Incoming);
            e.durable_point();
            batch_durable += t.elapsed();
        }
        e.set_durable(false);
        progress(role, &format!("{target}: inserts measured"), t0);

        // Pages of 50 in the big conversation.
        let main = w.main;
        let (cursors, walk_stats, walk_hash) = walk(e, &main, target);
        let newest: Vec<Duration> = (0..sc.newest_reps)
            .map(|_| {
                let t = Instant::now();
                let (m, _) = e.page(&main, None);
                let d = t.elapsed();
                assert_eq!(m.len(), PAGE);
                d
            })
            .collect();
        let random = random_pages(&cursors, target, 0, sc, |c| e.page(&main, Some(c)).0.len());
        drop(cursors);

        // The conversation list.
        let mut list_hash = FNV_START;
        let list: Vec<Duration> = (0..sc.list_reps)
            .map(|_| {
                let t = Instant::now();
                let l = e.list();
                let d = t.elapsed();
                assert_eq!(l.len(), OTHER_CONVS + 2);
                list_hash = FNV_START;
                for c in &l {
                    fnv(&mut list_hash, &c.id);
                    fnv(&mut list_hash, &c.unread.to_be_bytes());
                }
                d
            })
            .collect();
        let mut summary_hash = FNV_START;
        let summaries: Vec<Duration> = (0..sc.list_reps)
            .map(|_| {
                let t = Instant::now();
                let l = e.summaries();
                let d = t.elapsed();
                assert_eq!(l.len(), OTHER_CONVS + 2);
                summary_hash = FNV_START;
                for (c, last) in &l {
                    fnv(&mut summary_hash, &c.id);
                    fnv(&mut summary_hash, &last.as_ref().unwrap().msg_id);
                }
                d
            })
            .collect();
        progress(role, &format!("{target}: reads measured"), t0);

        stages.push(json!({
            "messages_in_conversation": target,
            "fill_batched": rate(target - from, fill),
            "fill_flush_ms": round(us(fill_flush) / 1e3, 1),
            "single_not_durable": latency(single_fast.clone()),
            "single_not_durable_rate": rate(single_fast.len(), single_fast.iter().sum()),
            "single_durable": latency(single_durable.clone()),
            "single_durable_rate": rate(single_durable.len(), single_durable.iter().sum()),
            "batch_durable_rate": rate(sc.batch_durable * BATCH, batch_durable),
            "walk": walk_stats,
            "walk_hash": format!("{walk_hash:016x}"),
            "page_newest": latency(newest),
            "page_random": random,
            "list": latency(list),
            "list_hash": format!("{list_hash:016x}"),
            "summaries": latency(summaries),
            "summaries_hash": format!("{summary_hash:016x}"),
            "memory_after_fill": mem_fill,
            "memory_after_reads": memory(),
            "disk_mib": mib(dir_size(path)),
        }));
    }
    json!({
        "setup_seconds": round(setup.as_secs_f64(), 3),
        "stages": stages,
        "memory_end": memory(),
        "extra": e.extra(),
        "total_seconds": round(t0.elapsed().as_secs_f64(), 1),
    })
}

// ---------------------------------------------------------------------------
// Children

fn child_sled(dir: &Path, sc: &Scale) -> Value {
    let path = dir.join("sled");
    let mut e = SledEngine {
        store: Store::open(&path, &data_key()).unwrap(),
    };
    run("sled", &mut e, &path, sc)
}

fn child_sqlite(dir: &Path, sc: &Scale) -> Value {
    let path = dir.join("sqlite");
    std::fs::create_dir_all(&path).unwrap();
    let mut e = SqliteEngine::open(&path.join("messages.db"));
    run("sqlite", &mut e, &path, sc)
}

/// The store with its final size reopened in a fresh process: what an app
/// restart sees (sled recovery, cold cache), and its memory under reads.
fn child_sled_reopen(dir: &Path, sc: &Scale) -> Value {
    let t0 = Instant::now();
    let path = dir.join("sled");
    let key = data_key();
    let mem_before = memory();
    let t = Instant::now();
    let store = Store::open(&path, &key).unwrap();
    let open = t.elapsed();
    let mem_open = memory();
    progress("sled-reopen", "opened", t0);
    let mut e = SledEngine { store };
    let w = Workload::new();
    let target = sc.stages[2];
    let t = Instant::now();
    let l = e.list();
    let first_list = t.elapsed();
    assert_eq!(l.len(), OTHER_CONVS + 2);
    let t = Instant::now();
    let (first, _) = e.page(&w.main, None);
    let first_page = t.elapsed();
    assert_eq!(first.len(), PAGE);
    let (cursors, walk_stats, walk_hash) = walk(&mut e, &w.main, target);
    let mem_walk = memory();
    let random = random_pages(&cursors, target, 0, sc, |c| {
        e.page(&w.main, Some(c)).0.len()
    });
    drop(cursors);
    let list: Vec<Duration> = (0..sc.list_reps)
        .map(|_| {
            let t = Instant::now();
            black_box(e.list());
            t.elapsed()
        })
        .collect();
    progress("sled-reopen", "done", t0);
    json!({
        "open_ms": round(us(open) / 1e3, 1),
        "first_list_us": round(us(first_list), 1),
        "first_page_us": round(us(first_page), 1),
        "walk": walk_stats,
        "walk_hash": format!("{walk_hash:016x}"),
        "page_random": random,
        "list": latency(list),
        "memory_before_open": mem_before,
        "memory_after_open": mem_open,
        "memory_after_walk": mem_walk,
        "memory_end": memory(),
    })
}

fn spawn(role: &str, dir: &Path, extra: &[&str]) -> Value {
    let out = Command::new(std::env::current_exe().unwrap())
        .arg(CHILD_FLAG)
        .arg(role)
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "child {role} failed: {}", out.status);
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.lines().last().unwrap();
    serde_json::from_str(line).unwrap()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn f(v: &Value, path: &str) -> f64 {
    path.split('.')
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_f64)
        .unwrap_or(f64::NAN)
}

fn size_label(n: usize) -> String {
    if n >= 1_000_000 {
        format!("{}M", n / 1_000_000)
    } else {
        format!("{}k", n / 1_000)
    }
}

fn report(sc: &Scale, sled: &Value, sqlite: &Value, reopen: &Value) {
    println!();
    println!("meshchat store (sled, every record encrypted) vs SQLite (WAL, plaintext)");
    println!(
        "ratio column: ours/sqlite (rates: above 1 is faster; latencies and sizes: below 1 is better)"
    );
    println!(
        "{:<44} {:>12} {:>12} {:>10}",
        "", "ours", "sqlite", "ours/sqlite"
    );
    let row = |label: &str, a: f64, b: f64| {
        println!("{label:<44} {a:>12.1} {b:>12.1} {:>10.2}", a / b);
    };
    for (k, &n) in sc.stages.iter().enumerate() {
        let a = &sled["stages"][k];
        let b = &sqlite["stages"][k];
        println!("--- {} messages in the conversation ---", size_label(n));
        for (label, path) in [
            ("insert, batched fill (msg/s)", "fill_batched.per_s"),
            (
                "insert, single, not durable (msg/s)",
                "single_not_durable_rate.per_s",
            ),
            (
                "insert, single, durable (msg/s)",
                "single_durable_rate.per_s",
            ),
            (
                "insert, batch of 100, durable (msg/s)",
                "batch_durable_rate.per_s",
            ),
            ("single not durable p50 (µs)", "single_not_durable.p50_us"),
            ("single not durable p99 (µs)", "single_not_durable.p99_us"),
            ("single durable p50 (µs)", "single_durable.p50_us"),
            ("page of 50, newest, p50 (µs)", "page_newest.p50_us"),
            ("page of 50, random, p50 (µs)", "page_random.p50_us"),
            ("page of 50, random, p99 (µs)", "page_random.p99_us"),
            ("page of 50, walk mean (µs)", "walk.mean_us"),
            ("conversation list (202), p50 (µs)", "list.p50_us"),
            ("conversation list (202), p99 (µs)", "list.p99_us"),
            ("list with newest message, p50 (µs)", "summaries.p50_us"),
            ("list with newest message, p99 (µs)", "summaries.p99_us"),
            ("RSS after fill (MiB)", "memory_after_fill.rss_mib"),
            ("peak RSS so far (MiB)", "memory_after_reads.hwm_mib"),
            ("on disk (MiB)", "disk_mib"),
        ] {
            row(label, f(a, path), f(b, path));
        }
        let same = a["walk_hash"] == b["walk_hash"]
            && a["list_hash"] == b["list_hash"]
            && a["summaries_hash"] == b["summaries_hash"];
        println!("same history and list in both engines: {same}");
    }
    let big = size_label(sc.stages[2]);
    println!("--- store reopened in a fresh process at {big} ---");
    println!(
        "open {:.1} ms, first list {:.1} µs, first page {:.1} µs, walk {:.2} s",
        f(reopen, "open_ms"),
        f(reopen, "first_list_us"),
        f(reopen, "first_page_us"),
        f(reopen, "walk.seconds"),
    );
    println!(
        "page random p50 {:.1} µs p99 {:.1} µs; list p50 {:.1} µs; RSS after walk {:.1} MiB, peak {:.1} MiB",
        f(reopen, "page_random.p50_us"),
        f(reopen, "page_random.p99_us"),
        f(reopen, "list.p50_us"),
        f(reopen, "memory_after_walk.rss_mib"),
        f(reopen, "memory_end.hwm_mib"),
    );
    println!(
        "sled run {:.0} s, SQLite run {:.0} s",
        f(sled, "total_seconds"),
        f(sqlite, "total_seconds")
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let sc = scale();
    if let Some(pos) = args.iter().position(|a| a == CHILD_FLAG) {
        let role = args[pos + 1].as_str();
        let dir = PathBuf::from(&args[pos + 2]);
        let out = match role {
            "sled" => child_sled(&dir, &sc),
            "sqlite" => child_sqlite(&dir, &sc),
            "sled-reopen" => child_sled_reopen(&dir, &sc),
            other => {
                eprintln!("unknown child role {other}");
                std::process::exit(2);
            }
        };
        println!("{out}");
        return;
    }
    let t0 = Instant::now();
    let load_start = loadavg();
    let tmp = tempfile::Builder::new()
        .prefix("meshchat-store-bench")
        .tempdir()
        .unwrap();
    eprintln!(
        "[store bench] fixtures in {}, load average {load_start}",
        tmp.path().display()
    );
    let sled = spawn("sled", tmp.path(), &[]);
    let reopen = spawn("sled-reopen", tmp.path(), &[]);
    let sqlite = spawn("sqlite", tmp.path(), &[]);
    report(&sc, &sled, &sqlite, &reopen);
    let all = json!({
        "bench": "store",
        "scale": format!("{sc:?}"),
        "load_average_start": load_start,
        "load_average_end": loadavg(),
        "total_seconds": round(t0.elapsed().as_secs_f64(), 1),
        "ours": sled,
        "sqlite": sqlite,
        "ours_reopened": reopen,
        "ratios_ours_over_sqlite": ratios(&sc, &sled, &sqlite),
    });
    println!("STORE_BENCH_JSON {all}");
}

fn ratios(sc: &Scale, sled: &Value, sqlite: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for (k, &n) in sc.stages.iter().enumerate() {
        let a = &sled["stages"][k];
        let b = &sqlite["stages"][k];
        let mut m = serde_json::Map::new();
        for path in [
            "fill_batched.per_s",
            "single_not_durable_rate.per_s",
            "single_durable_rate.per_s",
            "batch_durable_rate.per_s",
            "page_newest.p50_us",
            "page_random.p50_us",
            "page_random.p99_us",
            "list.p50_us",
            "summaries.p50_us",
        ] {
            m.insert(path.into(), json!(round(f(a, path) / f(b, path), 3)));
        }
        out.insert(size_label(n), Value::Object(m));
    }
    Value::Object(out)
}
