//! Message blocks against a model: random appends (out of order, repeated,
//! large), receipts, purges and page walks give exactly what a sorted map
//! of the same messages gives, and the blocks keep their invariants.

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};

use super::fresh;
use crate::store::blocks::{MAX_BLOCK_MESSAGES, TARGET_BLOCK_BYTES, open_block};
use crate::store::keys::{BLOCK_PREFIX, EXPIRY_PREFIX, TAIL_PREFIX};
use crate::store::tail::{TAIL_MAX, open_tail};
use crate::store::{
    Appended, Cursor, DeliveryState, Direction, History, MessageRef, Store, StoredMessage,
};

type Order = (u64, [u8; 32], [u8; 16]);
type Model = BTreeMap<([u8; 32], u64, [u8; 32], [u8; 16]), StoredMessage>;

fn model_key(m: &StoredMessage) -> ([u8; 32], u64, [u8; 32], [u8; 16]) {
    (m.conv_id, m.lamport, m.sender, m.msg_id)
}

const RETENTION: u64 = 150;
const STATES: [DeliveryState; 5] = [
    DeliveryState::Pending,
    DeliveryState::Sent,
    DeliveryState::StoredAtRelay,
    DeliveryState::Delivered,
    DeliveryState::Read,
];

fn random_message(rng: &mut StdRng) -> StoredMessage {
    let lamport = rng.random_range(0..300);
    let len = match rng.random_range(0..20) {
        0 => rng.random_range(3_000..9_000),
        _ => rng.random_range(0..300),
    };
    let mut body = vec![0u8; len];
    rng.fill_bytes(&mut body);
    StoredMessage {
        msg_id: [rng.random_range(0..40u8); 16],
        conv_id: [rng.random_range(0..3u8); 32],
        sender: [rng.random_range(0..3u8); 32],
        lamport,
        sent_at: 1_000 + lamport,
        body,
        state: STATES[rng.random_range(0..3)],
        expires_at: rng
            .random_bool(0.2)
            .then(|| 1_000 + rng.random_range(0..400)),
    }
}

fn walk(h: &History<'_>, conv: &[u8; 32], limit: usize) -> Vec<StoredMessage> {
    let mut out = Vec::new();
    let mut cursor: Option<Cursor> = None;
    loop {
        let page = h.page(conv, cursor.as_ref(), limit).unwrap();
        assert!(page.messages.len() <= limit);
        assert!(page.next.is_none() || page.messages.len() == limit);
        out.extend(page.messages);
        match page.next {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

fn expected_walk(model: &Model, conv: &[u8; 32]) -> Vec<StoredMessage> {
    model
        .values()
        .filter(|m| &m.conv_id == conv)
        .rev()
        .cloned()
        .collect()
}

/// Every block: opens, is non-empty and sorted, starts at its key, stays
/// within the size limits (or is one message), does not overlap the next
/// block of its conversation; the expiry entries are exactly each block's
/// earliest expiry.
fn check_invariants(store: &Store) {
    let mut want_expiry = BTreeSet::new();
    let mut last: Option<([u8; 32], Order)> = None;
    let mut block_last: BTreeMap<[u8; 32], ((), Order)> = BTreeMap::new();
    for item in store.history.scan_prefix([BLOCK_PREFIX]) {
        let (key, sealed) = item.unwrap();
        let entries = open_block(store, &key, &sealed).unwrap();
        assert!(!entries.is_empty());
        let bytes: usize = entries.iter().map(|e| e.body.len() + 85).sum();
        assert!(
            entries.len() == 1
                || (entries.len() <= MAX_BLOCK_MESSAGES && bytes <= TARGET_BLOCK_BYTES),
            "block of {} messages, {bytes} bytes",
            entries.len()
        );
        let conv: [u8; 32] = key[1..33].try_into().unwrap();
        if let (Some((c, prev_last)), Some(first)) = (last, entries.first())
            && c == conv
        {
            assert!(prev_last < (first.lamport, first.sender, first.msg_id));
        }
        let end = entries.last().unwrap();
        last = Some((conv, (end.lamport, end.sender, end.msg_id)));
        block_last.insert(conv, ((), (end.lamport, end.sender, end.msg_id)));
        if let Some(at) = entries.iter().filter_map(|e| e.expires_at).min() {
            let mut x = vec![EXPIRY_PREFIX];
            x.extend_from_slice(&at.to_be_bytes());
            x.extend_from_slice(&key);
            want_expiry.insert(x);
        }
    }
    // The tail: newer than every block of its conversation, counted right,
    // never a full block's worth.
    let mut tails: BTreeMap<[u8; 32], Vec<Order>> = BTreeMap::new();
    for item in store.history.scan_prefix([TAIL_PREFIX]) {
        let (key, sealed) = item.unwrap();
        let e = open_tail(store, &key, &sealed).unwrap();
        let conv: [u8; 32] = key[1..33].try_into().unwrap();
        tails
            .entry(conv)
            .or_default()
            .push((e.lamport, e.sender, e.msg_id));
        if let Some(at) = e.expires_at {
            let mut x = vec![EXPIRY_PREFIX];
            x.extend_from_slice(&at.to_be_bytes());
            x.extend_from_slice(&key);
            want_expiry.insert(x);
        }
    }
    for (conv, orders) in &tails {
        let record = store.history().conv_record(conv).unwrap().unwrap();
        assert_eq!(record.tail_len as usize, orders.len());
        assert!(record.tail_len < TAIL_MAX);
        if let Some(end) = record.blocks_end {
            assert!(orders.iter().all(|o| *o > end));
        }
        if let Some((_, last)) = block_last.get(conv) {
            assert!(orders.iter().all(|o| o > last));
        }
    }
    let have: BTreeSet<Vec<u8>> = store
        .history
        .scan_prefix([EXPIRY_PREFIX])
        .map(|kv| kv.unwrap().0.to_vec())
        .collect();
    assert_eq!(have, want_expiry);
}

/// The conversation list's copy of each conversation's newest message is
/// the newest message.
fn check_newest(h: &History<'_>, model: &Model) {
    for summary in h.summaries().unwrap() {
        let id = summary.conversation.id;
        let newest = model.values().rev().find(|m| m.conv_id == id);
        assert_eq!(summary.last.as_ref(), newest, "conversation {}", id[0]);
    }
}

#[test]
fn blocks_match_a_sorted_map_under_random_writes() {
    for seed in 0..8 {
        let (_dir, store) = fresh();
        let h = store.history();
        h.upsert_conversation(&[2; 32], "temporary", Some(RETENTION))
            .unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut model = Model::new();
        // Purged while their sender's clock gave them more time: refused
        // when they come again (see `tombstones`).
        let mut tombs = BTreeSet::new();
        let mut now = 1_000;
        for _ in 0..300 {
            match rng.random_range(0..10) {
                0..=5 => {
                    let batch: Vec<_> = (0..rng.random_range(1..25))
                        .map(|_| random_message(&mut rng))
                        .collect();
                    let got = h.append_batch(&batch, Direction::Incoming).unwrap();
                    for (m, outcome) in batch.iter().zip(got) {
                        let mut m = m.clone();
                        if m.conv_id == [2; 32] {
                            let r = m.sent_at + RETENTION;
                            m.expires_at = Some(m.expires_at.map_or(r, |e| e.min(r)));
                        }
                        let new =
                            !model.contains_key(&model_key(&m)) && !tombs.contains(&model_key(&m));
                        assert_eq!(
                            outcome,
                            if new {
                                Appended::Inserted
                            } else {
                                Appended::Duplicate
                            }
                        );
                        if new {
                            model.insert(model_key(&m), m);
                        }
                    }
                }
                6 => {
                    let changes: Vec<(MessageRef, DeliveryState)> = (0..rng.random_range(1..10))
                        .map(|_| {
                            let r =
                                match model.values().nth(rng.random_range(0..model.len().max(1))) {
                                    Some(m) if rng.random_bool(0.8) => m.reference(),
                                    _ => random_message(&mut rng).reference(),
                                };
                            (r, STATES[rng.random_range(0..5)])
                        })
                        .collect();
                    let got = h.set_states(&changes).unwrap();
                    for ((r, state), outcome) in changes.iter().zip(got) {
                        let key = (r.conv_id, r.lamport, r.sender, r.msg_id);
                        let want = model.get_mut(&key).map(|m| {
                            let forward = *state > m.state;
                            if forward {
                                m.state = *state;
                            }
                            forward
                        });
                        assert_eq!(outcome, want);
                    }
                }
                7 => {
                    now += rng.random_range(0..60);
                    let before = model.len();
                    model.retain(|k, m| {
                        let stays = m.expires_at.is_none_or(|at| at > now);
                        if !stays
                            && m.conv_id == [2; 32]
                            && m.sent_at + RETENTION > now + crate::store::CLOCK_SLACK
                        {
                            tombs.insert(*k);
                        }
                        stays
                    });
                    assert!(tombs.len() <= crate::store::MAX_TOMBSTONES);
                    assert_eq!(h.purge_expired(now).unwrap(), before - model.len());
                }
                8 => {
                    let conv = [rng.random_range(0..3u8); 32];
                    let limit = rng.random_range(1..40);
                    assert_eq!(walk(&h, &conv, limit), expected_walk(&model, &conv));
                    check_newest(&h, &model);
                }
                _ => {
                    let probe = match model.values().nth(rng.random_range(0..model.len().max(1))) {
                        Some(m) if rng.random_bool(0.7) => m.clone(),
                        _ => random_message(&mut rng),
                    };
                    assert_eq!(
                        h.get(&probe.reference()).unwrap().as_ref(),
                        model.get(&model_key(&probe))
                    );
                }
            }
        }
        check_invariants(&store);
        check_newest(&h, &model);
        for c in 0..3u8 {
            assert_eq!(
                walk(&h, &[c; 32], 50),
                expected_walk(&model, &[c; 32]),
                "seed {seed}"
            );
        }
        let mut exported = Vec::new();
        let n = h.export_json(&[1; 32], &mut exported).unwrap_or(0);
        assert_eq!(n, model.values().filter(|m| m.conv_id == [1; 32]).count());
    }
}

#[test]
fn live_appends_fill_blocks_and_a_page_reads_few_of_them() {
    let (_dir, store) = fresh();
    let h = store.history();
    for i in 0..1_000u64 {
        let mut m = super::msg(5, i, (i % 2) as u8, 0, &[7; 200]);
        m.msg_id[..8].copy_from_slice(&i.to_be_bytes());
        h.append(&m, Direction::Incoming).unwrap();
    }
    // Appends at the end go to the tail and move into full blocks.
    let blocks = store.history.scan_prefix([BLOCK_PREFIX]).count();
    assert_eq!(blocks, 1_000 / MAX_BLOCK_MESSAGES);
    let tail = store.history.scan_prefix([TAIL_PREFIX]).count();
    assert_eq!(tail, 1_000 % MAX_BLOCK_MESSAGES);
    check_invariants(&store);
}

#[test]
fn a_conversation_record_ahead_of_its_messages_is_repaired_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let key = super::data_key(1);
    let first = super::msg(4, 1, 1, 1, b"first");
    let second = super::msg(4, 2, 2, 2, b"second");
    {
        let store = Store::open(dir.path(), &key).unwrap();
        let h = store.history();
        h.append(&first, Direction::Incoming).unwrap();
        h.append(&second, Direction::Incoming).unwrap();
        // A single-message append writes its conversation record first; a
        // crash right after it leaves the record counting a message whose
        // own record never reached the disk.
        let tail = crate::store::keys::tail_key(&second.reference().sort_key());
        store.history.remove(tail).unwrap();
        let ahead = h.conv_record(&[4; 32]).unwrap().unwrap();
        assert_eq!((ahead.conv.unread, ahead.tail_len), (2, 2));
        store.flush().unwrap();
    }
    let store = Store::open(dir.path(), &key).unwrap();
    let h = store.history();
    let record = h.conv_record(&[4; 32]).unwrap().unwrap();
    assert_eq!((record.conv.unread, record.tail_len), (1, 1));
    assert_eq!(record.conv.last_lamport, 1);
    assert_eq!(record.pending, None);
    assert_eq!(h.summaries().unwrap()[0].last.as_ref(), Some(&first));
    assert_eq!(walk(&h, &[4; 32], 10), vec![first]);
    check_invariants(&store);
}

#[test]
fn a_move_into_a_block_cut_short_is_repaired_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let key = super::data_key(1);
    let msgs: Vec<_> = (1..=TAIL_MAX as u64)
        .map(|i| super::msg(6, i, 1, i as u8, b"m"))
        .collect();
    {
        let store = Store::open(dir.path(), &key).unwrap();
        let h = store.history();
        for m in &msgs[..msgs.len() - 1] {
            h.append(m, Direction::Incoming).unwrap();
        }
        let conv_key = crate::store::keys::conv_key(&[6; 32]);
        let record = store.history.get(conv_key).unwrap().unwrap();
        let tail: Vec<_> = store
            .history
            .scan_prefix([TAIL_PREFIX])
            .map(|kv| kv.unwrap())
            .collect();
        assert_eq!(tail.len(), msgs.len() - 1);
        // The last append moves the tail into a block...
        h.append(msgs.last().unwrap(), Direction::Incoming).unwrap();
        assert_eq!(store.history.scan_prefix([TAIL_PREFIX]).count(), 0);
        // ...and a crash right after the block was written would have left
        // the old conversation record and the tail records.
        store.history.insert(conv_key, record).unwrap();
        for (k, v) in tail {
            store.history.insert(k, v).unwrap();
        }
        store.flush().unwrap();
    }
    let store = Store::open(dir.path(), &key).unwrap();
    let h = store.history();
    let mut want = msgs.clone();
    want.reverse();
    assert_eq!(walk(&h, &[6; 32], 7), want);
    assert_eq!(store.history.scan_prefix([TAIL_PREFIX]).count(), 0);
    assert_eq!(h.summaries().unwrap()[0].last.as_ref(), msgs.last());
    check_invariants(&store);
}

#[test]
fn a_large_batch_into_one_conversation_is_stored_whole() {
    let (_dir, store) = fresh();
    let h = store.history();
    let batch: Vec<_> = (0..500u64)
        .map(|i| {
            let mut m = super::msg(8, i, (i % 2) as u8, 0, &[9; 300]);
            m.msg_id[..8].copy_from_slice(&i.to_be_bytes());
            m
        })
        .collect();
    let got = h.append_batch(&batch, Direction::Incoming).unwrap();
    assert!(got.iter().all(|a| *a == Appended::Inserted));
    assert_eq!(walk(&h, &[8; 32], 50).len(), 500);
    assert_eq!(h.conversation(&[8; 32]).unwrap().unwrap().unread, 500);
    check_invariants(&store);
}
