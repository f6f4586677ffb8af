//! Crash durability of the store: a child process appends and flushes
//! messages until it is killed with SIGKILL at seeded-random moments; after
//! every kill the database is reopened and every message the child reported
//! as flushed must be present and intact, and the store must be consistent.
//!
//! The child is this test binary run again with `--ignored --exact
//! crash_child` and
//! [`CHILD_DIR_ENV`] set. It reports its progress on stdout, one line per
//! event: `ready`, `appended <n>`, `flushing <n>`, `flushed <n>`, where `<n>`
//! is the number of messages of its round appended so far; `flushed <n>` is
//! printed only after [`Store::flush`] returned `Ok`, so messages `0..n` of
//! that round are the ones reported as durable. The parent kills it after a
//! seeded-random event (`ready`, the n-th `appended`, `flushing` or `flushed`
//! line), which lands the kill in the middle of a batch, during a flush, or
//! just after one.
//!
//! Reproduce a run with `MESHCHAT_CRASH_SEED=<seed>` (printed in the summary);
//! `MESHCHAT_CRASH_ROUNDS=<n>` runs a longer soak.

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use meshchat::crypto::{DataKey, KdfParams, Keystore};
use meshchat::store::{Appended, Cursor, DeliveryState, Direction, Store, StoredMessage};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

mod parent;
mod verify;

use parent::{KillAt, run_child};
use verify::verify;

/// Set (to the test's temporary directory) only in the child process.
const CHILD_DIR_ENV: &str = "MESHCHAT_CRASH_CHILD_DIR";
/// The child's round number (selects its message ids).
const CHILD_ROUND_ENV: &str = "MESHCHAT_CRASH_CHILD_ROUND";
/// Messages the child appends between two flushes.
const CHILD_BATCH_ENV: &str = "MESHCHAT_CRASH_CHILD_BATCH";
/// Overrides the parent's seed.
const SEED_ENV: &str = "MESHCHAT_CRASH_SEED";
/// Overrides the number of rounds.
const ROUNDS_ENV: &str = "MESHCHAT_CRASH_ROUNDS";

const DEFAULT_SEED: u64 = 0x6d65_7368_6368_6174;
const DEFAULT_ROUNDS: u32 = 40;

/// The child stops by itself after this many messages...
const CHILD_MAX_MESSAGES: u64 = 20_000;
/// ...or after this long, whichever comes first.
const CHILD_MAX_RUNTIME: Duration = Duration::from_secs(30);
/// The parent gives up on a child that prints nothing for this long.
const LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// Messages are spread over this many conversations.
const CONVERSATIONS: u64 = 3;
/// Lamport clocks of round `r` start at `r * LAMPORT_PER_ROUND`, so later
/// rounds sort after earlier ones.
const LAMPORT_PER_ROUND: u64 = 1_000_000;
/// SIGKILL's number (9 on every Unix), as [`ExitStatusExt::signal`] gives it.
const SIGKILL: i32 = 9;
const OWN: [u8; 32] = [0xA1; 32];
const PEER: [u8; 32] = [0xB2; 32];

const _: () = assert!(CHILD_MAX_MESSAGES < LAMPORT_PER_ROUND);

fn db_path(dir: &Path) -> PathBuf {
    dir.join("db")
}

fn keystore_path(dir: &Path) -> PathBuf {
    dir.join("keystore")
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn msg_id(round: u32, counter: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(b"crsh");
    id[4..8].copy_from_slice(&round.to_be_bytes());
    id[8..].copy_from_slice(&counter.to_be_bytes());
    id
}

/// `(round, counter)` of an id made by [`msg_id`].
fn decode_id(id: &[u8; 16]) -> Option<(u32, u64)> {
    if &id[..4] != b"crsh" {
        return None;
    }
    let round = u32::from_be_bytes(id[4..8].try_into().ok()?);
    let counter = u64::from_be_bytes(id[8..].try_into().ok()?);
    Some((round, counter))
}

fn conv_id(k: u64) -> [u8; 32] {
    let mut id = [0xC0; 32];
    id[31] = u8::try_from(k).unwrap();
    id
}

/// Message `counter` of round `round`, exactly as the child appends it.
/// Bodies are pseudo-random, mostly under 512 bytes, one in 64 between 8 and
/// 40 KiB.
fn expected(round: u32, counter: u64) -> (StoredMessage, Direction) {
    let mut state = (u64::from(round) << 32) ^ counter ^ 0x5EED;
    let h = splitmix64(&mut state);
    let len = if h.is_multiple_of(64) {
        8 * 1024 + (h >> 8) % (32 * 1024)
    } else {
        (h >> 8) % 512
    };
    let len = usize::try_from(len).unwrap();
    let mut body = Vec::with_capacity(len + 8);
    while body.len() < len {
        body.extend_from_slice(&splitmix64(&mut state).to_le_bytes());
    }
    body.truncate(len);
    let direction = if counter.is_multiple_of(2) {
        Direction::Outgoing
    } else {
        Direction::Incoming
    };
    let lamport = u64::from(round) * LAMPORT_PER_ROUND + counter;
    let msg = StoredMessage {
        msg_id: msg_id(round, counter),
        conv_id: conv_id((u64::from(round) + counter) % CONVERSATIONS),
        sender: match direction {
            Direction::Outgoing => OWN,
            Direction::Incoming | Direction::Copied => PEER,
        },
        lamport,
        sent_at: 1_700_000_000 + lamport,
        body,
        state: DeliveryState::Pending,
        expires_at: counter.is_multiple_of(5).then_some(1_800_000_000 + lamport),
    };
    (msg, direction)
}

fn env_parse<T: std::str::FromStr>(name: &str) -> Option<T> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} does not parse")),
    )
}

fn unlock_key(dir: &Path) -> DataKey {
    let bytes = std::fs::read(keystore_path(dir)).unwrap();
    Keystore::from_bytes(&bytes).unwrap().unlock(b"pw").unwrap()
}

// ---------------------------------------------------------------- child ----

/// The child process: does nothing unless [`CHILD_DIR_ENV`] is set (the
/// parent runs it with `--ignored`; it is no test of its own).
#[test]
#[ignore = "the crash test's child process, run by its parent"]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let round: u32 = env_parse(CHILD_ROUND_ENV).unwrap();
    let batch: u64 = env_parse(CHILD_BATCH_ENV).unwrap();
    assert!(batch > 0);
    let store = Store::open(db_path(&dir), &unlock_key(&dir)).unwrap();
    let history = store.history();
    let mut out = std::io::stdout().lock();
    let mut report = |event: &str, n: Option<u64>| {
        match n {
            Some(n) => writeln!(out, "{event} {n}"),
            None => writeln!(out, "{event}"),
        }
        .unwrap();
        out.flush().unwrap();
    };
    // The harness may have printed `test crash_child ... ` without a newline.
    report("", None);
    report("ready", None);
    let started = Instant::now();
    let mut counter = 0;
    while counter < CHILD_MAX_MESSAGES && started.elapsed() < CHILD_MAX_RUNTIME {
        for _ in 0..batch {
            let (msg, direction) = expected(round, counter);
            assert_eq!(history.append(&msg, direction).unwrap(), Appended::Inserted);
            counter += 1;
            report("appended", Some(counter));
        }
        report("flushing", Some(counter));
        store.flush().unwrap();
        report("flushed", Some(counter));
    }
}

#[derive(Debug, Default)]
struct Tally {
    kills_by_kind: [u64; 4],
    flushed_after_kill: u64,
    survivors: u64,
    rounds_with_survivors: u64,
    max_survivors: u64,
    holes: u64,
    vanished: u64,
    pages: usize,
    child_time: Duration,
    verify_time: Duration,
}

#[test]
fn flushed_writes_survive_sigkill() {
    let seed: u64 = env_parse(SEED_ENV).unwrap_or(DEFAULT_SEED);
    let rounds: u32 = env_parse(ROUNDS_ENV).unwrap_or(DEFAULT_ROUNDS);
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let (keystore, key) = Keystore::create(b"pw", KdfParams::INSECURE_FAST, &mut rng).unwrap();
    std::fs::write(keystore_path(tmp.path()), keystore.to_bytes()).unwrap();

    let mut flushed = Vec::new();
    let mut appended = Vec::new();
    let mut batches = Vec::new();
    let mut tally = Tally::default();
    // Unreported survivors seen at some reopen, to notice one vanishing later.
    let mut survivors_seen: BTreeSet<(u32, u64)> = BTreeSet::new();

    for round in 0..rounds {
        let batch = rng.random_range(1..=6u64);
        let target = KillAt::random(&mut rng, batch);
        let t = Instant::now();
        let run = run_child(tmp.path(), round, batch, target);
        tally.child_time += t.elapsed();
        tally.kills_by_kind[target.kind()] += 1;
        tally.flushed_after_kill += run.flushed_after_kill;
        flushed.push(run.flushed);
        appended.push(run.appended);
        batches.push(batch);

        let t = Instant::now();
        let check = verify(tmp.path(), &key, &flushed, &appended, &batches, &mut rng);
        tally.verify_time += t.elapsed();
        tally.pages += check.pages;

        let this_round = check.present.get(&round);
        let survivors = this_round.map_or(0, |p| p.range(run.flushed..).count() as u64);
        tally.survivors += survivors;
        tally.max_survivors = tally.max_survivors.max(survivors);
        if survivors > 0 {
            tally.rounds_with_survivors += 1;
        }
        // A round's messages should survive as a prefix: a hole is a later
        // write kept while an earlier one was lost.
        if let Some(p) = this_round {
            let top = p.last().copied().unwrap_or(0);
            tally.holes += top + 1 - p.len() as u64;
            survivors_seen.extend(p.range(run.flushed..).map(|&c| (round, c)));
        }
        survivors_seen.retain(|&(r, c)| {
            let still = check.present.get(&r).is_some_and(|p| p.contains(&c));
            if !still {
                tally.vanished += 1;
            }
            still
        });

        if !check.losses.is_empty() || !check.corruption.is_empty() {
            summary(
                seed,
                round + 1,
                &flushed,
                check.losses.len(),
                &tally,
                started.elapsed(),
            );
            let shown = |v: &[String]| {
                v.iter()
                    .take(20)
                    .map(|s| format!("\n    {s}"))
                    .collect::<String>()
            };
            panic!(
                "round {round} (seed {seed}, batch {batch}, killed at {target:?}, child \
                 reported flushed {} / appended {}): {} reported-flushed messages lost, \
                 {} inconsistencies{}{}",
                run.flushed,
                run.appended,
                check.losses.len(),
                check.corruption.len(),
                shown(&check.losses),
                shown(&check.corruption),
            );
        }
    }
    summary(seed, rounds, &flushed, 0, &tally, started.elapsed());
    // Guards against a silently empty run (say, progress lines no longer
    // recognised): most rounds must have had flushes to check.
    let reported: u64 = flushed.iter().sum();
    assert!(
        reported >= u64::from(rounds),
        "only {reported} messages reported flushed in {rounds} rounds"
    );
}

fn summary(seed: u64, rounds: u32, flushed: &[u64], lost: usize, tally: &Tally, elapsed: Duration) {
    let reported: u64 = flushed.iter().sum();
    let [ready, appended, flushing, after_flush] = tally.kills_by_kind;
    eprintln!(
        "store_crash: seed {seed}, {rounds} rounds in {:.1} s (children {:.1} s, \
         verification {:.1} s)\n  \
         SIGKILL after: ready {ready}, an append {appended}, the start of a flush \
         {flushing}, a flush {after_flush}\n  \
         messages reported flushed: {reported}; `flushed` lines that arrived after \
         the kill was decided: {}\n  \
         unreported survivors: {} in {} rounds (at most {} in one); holes: {}; \
         survivors that vanished later: {}\n  \
         pages walked: {}; reported-flushed messages lost: {lost}",
        elapsed.as_secs_f64(),
        tally.child_time.as_secs_f64(),
        tally.verify_time.as_secs_f64(),
        tally.flushed_after_kill,
        tally.survivors,
        tally.rounds_with_survivors,
        tally.max_survivors,
        tally.holes,
        tally.vanished,
        tally.pages,
    );
}
