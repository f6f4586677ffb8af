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
use serde_json::{Value, json};

mod measure;
mod report;
mod sqlite;

use measure::*;
use report::{loadavg, ratios, report};
use sqlite::SqliteEngine;

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
