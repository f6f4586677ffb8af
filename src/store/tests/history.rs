//! History: ordering, deduplication, delivery states, pagination.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::{data_key, fresh, msg};
use crate::store::{
    Appended, Cursor, DeliveryState, Direction, Error, History, Page, Store, StoredMessage,
};

/// The time of the tests' deletions.
const NOW: u64 = 1_700_100_000;
/// The identity of the device that deletes (no test message is its own
/// unless a test says so).
const MINE: [u8; 32] = [0xaa; 32];

fn sort_key(m: &StoredMessage) -> (u64, [u8; 32], [u8; 16]) {
    (m.lamport, m.sender, m.msg_id)
}

/// Every message of `conv` by following cursors through their text form.
fn all_pages(h: &History<'_>, conv: &[u8; 32], limit: usize) -> Vec<StoredMessage> {
    let mut out = Vec::new();
    let mut cursor: Option<Cursor> = None;
    loop {
        let Page { messages, next } = h.page(conv, cursor.as_ref(), limit).unwrap();
        assert!(messages.len() <= limit);
        out.extend(messages);
        match next {
            Some(c) => cursor = Some(Cursor::parse(c.as_str()).unwrap()),
            None => return out,
        }
    }
}

/// A media message from sender 2 in conversation 1 (a file of 70,000
/// bytes of `fill`), and its sealed chunks.
fn file_message(
    seed: u64,
    fill: u8,
    lamport: u64,
) -> (crate::crypto::media::Manifest, Vec<Vec<u8>>, StoredMessage) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (m, chunks) =
        crate::crypto::media::Manifest::seal(&[fill; 70_000], "f.bin", "", &mut rng).unwrap();
    let file = msg(1, lamport, 2, 0xf1, &m.to_body());
    (m, chunks, file)
}

/// Keeps `chunks` of `file` in `store`, as a device that fetched them.
fn keep_chunks(
    store: &Store,
    m: &crate::crypto::media::Manifest,
    chunks: &[Vec<u8>],
    file: &StoredMessage,
) {
    let media = store.media().unwrap();
    let owner = crate::store::media_owner(&file.body, &file.sender);
    for (name, c) in m.chunks.iter().zip(chunks) {
        media.put_chunk(&owner, name, c).unwrap();
    }
}

#[test]
fn ordered_by_lamport_then_sender_then_id() {
    let (_dir, store) = fresh();
    let h = store.history();
    let mut msgs = vec![
        msg(1, 2, 5, 1, b"a"),
        msg(1, 2, 3, 9, b"b"),
        msg(1, 2, 3, 4, b"c"),
        msg(1, 1, 9, 8, b"d"),
        msg(1, 300, 0, 0, b"e"),
        msg(1, 256, 1, 2, b"f"),
    ];
    for m in &msgs {
        assert_eq!(
            h.append(m, Direction::Incoming).unwrap(),
            Appended::Inserted
        );
    }
    // Another conversation's messages do not leak into the page.
    h.append(&msg(2, 5, 1, 50, b"other"), Direction::Incoming)
        .unwrap();
    h.append(&msg(0, 5, 1, 51, b"other"), Direction::Incoming)
        .unwrap();
    msgs.sort_by_key(sort_key);
    msgs.reverse();
    let page = h.page(&[1; 32], None, 100).unwrap();
    assert_eq!(page.messages, msgs);
    assert_eq!(page.next, None);
}

#[test]
fn append_dedupes_by_message_reference() {
    let (_dir, store) = fresh();
    let h = store.history();
    let m = msg(1, 1, 2, 3, b"once");
    assert_eq!(
        h.append(&m, Direction::Incoming).unwrap(),
        Appended::Inserted
    );
    assert_eq!(
        h.append(&m, Direction::Incoming).unwrap(),
        Appended::Duplicate
    );
    // Same sender, position and id, other contents (a copy re-sent after
    // an edit would be a new message): still a duplicate, original kept.
    let copy = msg(1, 1, 2, 3, b"twice");
    assert_eq!(
        h.append(&copy, Direction::Incoming).unwrap(),
        Appended::Duplicate
    );
    // In one batch, with the same message twice.
    let next = msg(1, 2, 2, 4, b"next");
    assert_eq!(
        h.append_batch(
            &[next.clone(), m.clone(), next.clone()],
            Direction::Incoming
        )
        .unwrap(),
        vec![Appended::Inserted, Appended::Duplicate, Appended::Duplicate]
    );
    // Another sender reusing the id cannot shadow the first message.
    let other = msg(1, 1, 9, 3, b"other sender");
    assert_eq!(
        h.append(&other, Direction::Incoming).unwrap(),
        Appended::Inserted
    );
    let page = h.page(&[1; 32], None, 10).unwrap();
    assert_eq!(page.messages, vec![next, other, m.clone()]);
    assert_eq!(h.get(&m.reference()).unwrap(), Some(m));
    assert_eq!(h.conversation(&[1; 32]).unwrap().unwrap().unread, 3);
}

#[test]
fn delivery_state_never_goes_backwards() {
    let dir = tempfile::tempdir().unwrap();
    let key = data_key(1);
    let id = msg(1, 1, 2, 3, b"").reference();
    {
        let store = Store::open(dir.path(), &key).unwrap();
        let h = store.history();
        h.append(&msg(1, 1, 2, 3, b"x"), Direction::Outgoing)
            .unwrap();
        assert!(h.set_state(&id, DeliveryState::Delivered).unwrap());
        assert!(!h.set_state(&id, DeliveryState::Sent).unwrap());
        assert!(!h.set_state(&id, DeliveryState::StoredAtRelay).unwrap());
        assert!(!h.set_state(&id, DeliveryState::Delivered).unwrap());
        assert_eq!(h.get(&id).unwrap().unwrap().state, DeliveryState::Delivered);
        assert!(h.set_state(&id, DeliveryState::Read).unwrap());
        assert!(!h.set_state(&id, DeliveryState::Pending).unwrap());
        assert!(matches!(
            h.set_state(&msg(1, 1, 2, 7, b"").reference(), DeliveryState::Read),
            Err(Error::UnknownMessage { .. })
        ));
        store.flush().unwrap();
    }
    let store = Store::open(dir.path(), &key).unwrap();
    let got = store.history().get(&id).unwrap().unwrap();
    assert_eq!(got.state, DeliveryState::Read);
    assert_eq!(got.body, b"x");
    use DeliveryState::*;
    assert!(
        Pending < Sent && Sent < StoredAtRelay && StoredAtRelay < Delivered && Delivered < Read
    );
}

fn random_history(h: &History<'_>, rng: &mut StdRng, n: u8) -> Vec<StoredMessage> {
    let mut all = Vec::new();
    for id in 0..n {
        let m = msg(
            1,
            rng.random_range(0..20),
            rng.random_range(0..4),
            id,
            &[id],
        );
        h.append(&m, Direction::Incoming).unwrap();
        all.push(m);
    }
    all.sort_by_key(sort_key);
    all.reverse();
    all
}

#[test]
fn pages_join_to_the_full_history() {
    let (_dir, store) = fresh();
    let h = store.history();
    let mut rng = StdRng::seed_from_u64(42);
    let all = random_history(&h, &mut rng, 60);
    for limit in [1, 2, 7, 59, 60, 61, 1000] {
        assert_eq!(all_pages(&h, &[1; 32], limit), all, "limit {limit}");
    }
    // An exact multiple of the page size ends without an empty page.
    let first = h.page(&[1; 32], None, 60).unwrap();
    assert_eq!(first.next, None);
    // Limit 0 is clamped to 1.
    assert_eq!(h.page(&[1; 32], None, 0).unwrap().messages.len(), 1);
    // An empty conversation is one empty page.
    let empty = h.page(&[9; 32], None, 10).unwrap();
    assert!(empty.messages.is_empty() && empty.next.is_none());
}

/// A caller that hands out only the front of a page (the API, for size)
/// goes on from the last message it gave: nothing skipped or repeated.
#[test]
fn a_page_cut_short_goes_on_from_its_last_message() {
    let (_dir, store) = fresh();
    let h = store.history();
    let mut rng = StdRng::seed_from_u64(7);
    let all = random_history(&h, &mut rng, 40);
    let mut out = Vec::new();
    let mut cursor: Option<Cursor> = None;
    loop {
        let page = h.page(&[1; 32], cursor.as_ref(), 10).unwrap();
        // Hand out three of each ten.
        let given: Vec<StoredMessage> = page.messages.into_iter().take(3).collect();
        let Some(last) = given.last() else { break };
        cursor = Some(History::cursor_after(last));
        out.extend(given);
    }
    assert_eq!(out, all);
}

#[test]
fn pages_join_while_newer_messages_arrive() {
    let (_dir, store) = fresh();
    let h = store.history();
    let mut rng = StdRng::seed_from_u64(7);
    let before = random_history(&h, &mut rng, 50);
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut next_id = 100u8;
    loop {
        let page = h.page(&[1; 32], cursor.as_ref(), 6).unwrap();
        seen.extend(page.messages);
        // Two newer messages land between every pair of pages.
        for _ in 0..2 {
            let m = msg(1, 1000 + u64::from(next_id), 1, next_id, b"new");
            h.append(&m, Direction::Incoming).unwrap();
            next_id += 1;
        }
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, before);
    // The newer ones are all above, on a fresh first page.
    let fresh = all_pages(&h, &[1; 32], 13);
    assert_eq!(fresh.len(), before.len() + usize::from(next_id - 100));
    assert_eq!(&fresh[fresh.len() - before.len()..], &before[..]);
}

#[test]
fn cursor_from_another_conversation_is_refused() {
    let (_dir, store) = fresh();
    let h = store.history();
    for i in 0..3 {
        h.append(&msg(1, u64::from(i), 2, i, b"x"), Direction::Incoming)
            .unwrap();
    }
    let next = h.page(&[1; 32], None, 1).unwrap().next.unwrap();
    assert!(matches!(
        h.page(&[2; 32], Some(&next), 1),
        Err(Error::CursorConversation { .. })
    ));
    assert!(matches!(
        Cursor::parse("not a cursor"),
        Err(Error::BadCursor { .. })
    ));
}

#[test]
fn oversized_body_is_refused_and_nothing_written() {
    let (_dir, store) = fresh();
    let h = store.history();
    let ok = msg(1, 1, 2, 3, &vec![7; History::MAX_BODY]);
    assert_eq!(
        h.append(&ok, Direction::Incoming).unwrap(),
        Appended::Inserted
    );
    let big = msg(1, 2, 2, 4, &vec![7; History::MAX_BODY + 1]);
    assert!(matches!(
        h.append(&big, Direction::Incoming),
        Err(Error::TooLarge {
            tree: "history",
            ..
        })
    ));
    assert_eq!(h.get(&big.reference()).unwrap(), None);
    assert_eq!(h.page(&[1; 32], None, 10).unwrap().messages.len(), 1);
}

/// Clearing a conversation deletes every message in it (blocks and tail,
/// over several steps), the chunks and wanted records of its files, and
/// its unread count; other conversations are untouched, the conversation
/// goes on taking new messages, and all of it holds after a reopen.
#[test]
fn clearing_a_conversation_deletes_its_messages_and_files_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (m, chunks, file) = file_message(11, 7, 7000);
    let check = |store: &Store| {
        let h = store.history();
        assert!(all_pages(&h, &[1; 32], 100).is_empty());
        assert!(h.get(&file.reference()).unwrap().is_none());
        let conv = h
            .conversation(&[1; 32])
            .unwrap()
            .expect("the conversation stays");
        assert_eq!(conv.unread, 0);
        assert_eq!(all_pages(&h, &[3; 32], 100).len(), 300);
        let media = store.media().unwrap();
        for name in &m.chunks {
            assert!(
                !media.has_chunk(name).unwrap(),
                "a cleared file's chunk stayed"
            );
        }
        assert!(media.wanted(None, 10).unwrap().is_empty());
        let listed = h.summaries().unwrap();
        let row = listed
            .iter()
            .find(|s| s.conversation.id == [1; 32])
            .unwrap();
        assert!(row.last.is_none(), "the list still shows a cleared message");
    };
    {
        let store = Store::open(dir.path(), &data_key(1)).unwrap();
        let h = store.history();
        keep_chunks(&store, &m, &chunks, &file);
        let media = store.media().unwrap();
        // Enough messages for blocks and a tail, and for more records than
        // one step takes.
        let cleared: Vec<_> = (1..=6000u64)
            .map(|i| msg(1, i, 2, 0, &i.to_be_bytes()))
            .map(|mut m| {
                m.msg_id[..8].copy_from_slice(&m.lamport.to_be_bytes());
                m
            })
            .collect();
        for batch in cleared.chunks(500) {
            h.append_batch(batch, Direction::Incoming).unwrap();
        }
        h.append(&file, Direction::Incoming).unwrap();
        media.want(&file.reference()).unwrap();
        let other: Vec<_> = (1..=300u64)
            .map(|i| msg(3, i, 2, i as u8, b"kept"))
            .collect();
        h.append_batch(&other, Direction::Incoming).unwrap();
        assert_eq!(h.conversation(&[1; 32]).unwrap().unwrap().unread, 6001);

        assert_eq!(h.clear(&[1; 32], NOW, &MINE).unwrap(), 6001);
        check(&store);
        store.flush().unwrap();
    }
    let store = Store::open(dir.path(), &data_key(1)).unwrap();
    check(&store);

    // New messages come after the clear, below and above the old clock.
    let h = store.history();
    let low = msg(1, 5, 2, 0xa1, b"new, with an old clock");
    let high = msg(1, 9000, 2, 0xa2, b"new");
    h.append_batch(&[low.clone(), high.clone()], Direction::Incoming)
        .unwrap();
    let now: Vec<_> = all_pages(&h, &[1; 32], 100)
        .into_iter()
        .map(|m| m.msg_id)
        .collect();
    assert_eq!(now, vec![high.msg_id, low.msg_id]);
    assert_eq!(h.conversation(&[1; 32]).unwrap().unwrap().unread, 2);

    assert!(matches!(
        h.clear(&[9; 32], NOW, &MINE),
        Err(Error::UnknownConversation { .. })
    ));

    // Sent again, the newest 1,024 cleared (the file and the newest 1,023
    // of the others, each tombstoned in the step that deleted it) stay
    // gone; the older ones are stored again.
    let again: Vec<_> = (1..=6000u64)
        .map(|i| msg(1, i, 2, 0, &i.to_be_bytes()))
        .map(|mut m| {
            m.msg_id[..8].copy_from_slice(&m.lamport.to_be_bytes());
            m
        })
        .collect();
    let mut outcomes = Vec::new();
    for batch in again.chunks(500) {
        outcomes.extend(h.append_batch(batch, Direction::Incoming).unwrap());
    }
    let stored_again = outcomes
        .iter()
        .take_while(|o| **o == Appended::Inserted)
        .count();
    assert_eq!(stored_again, 6000 - (crate::store::MAX_TOMBSTONES - 1));
    assert!(
        outcomes[stored_again..]
            .iter()
            .all(|o| *o == Appended::Duplicate)
    );
    assert_eq!(
        h.append(&file, Direction::Incoming).unwrap(),
        Appended::Duplicate
    );
}

/// Deleting one message takes it alone (from a block or the tail), with
/// the chunks of its file; the conversation's newest message follows, and
/// a message not stored is `false`.
#[test]
fn deleting_a_message_takes_it_alone_and_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let (m, chunks, file) = file_message(12, 3, 150);
    let all: Vec<_> = (1..=200u64)
        .map(|i| msg(1, i, 2, i as u8, &i.to_be_bytes()))
        .collect();
    let old = all[10].clone();
    let newest = all[199].clone();
    {
        let store = Store::open(dir.path(), &data_key(1)).unwrap();
        let h = store.history();
        keep_chunks(&store, &m, &chunks, &file);
        let media = store.media().unwrap();
        h.append_batch(&all, Direction::Incoming).unwrap();
        h.append(&file, Direction::Incoming).unwrap();
        media.want(&file.reference()).unwrap();

        assert!(
            h.delete(&old.reference(), NOW, &MINE).unwrap(),
            "in a block"
        );
        assert!(
            h.delete(&newest.reference(), NOW, &MINE).unwrap(),
            "the newest, in the tail"
        );
        assert!(h.delete(&file.reference(), NOW, &MINE).unwrap(), "a file");
        assert!(
            !h.delete(&old.reference(), NOW, &MINE).unwrap(),
            "already gone"
        );
        for name in &m.chunks {
            assert!(!media.has_chunk(name).unwrap());
        }
        assert!(media.wanted(None, 10).unwrap().is_empty());
        store.flush().unwrap();
    }
    let store = Store::open(dir.path(), &data_key(1)).unwrap();
    let h = store.history();
    let left: Vec<_> = all_pages(&h, &[1; 32], 37)
        .into_iter()
        .map(|m| m.lamport)
        .collect();
    let expected: Vec<u64> = (1..=199u64).rev().filter(|l| *l != 11).collect();
    assert_eq!(left, expected);
    let row = h.summaries().unwrap();
    assert_eq!(row[0].last.as_ref().unwrap().lamport, 199);
}

/// A conversation emptied by a clear, a delete or a purge while its few
/// messages are all in the tail shows nothing unread, also after a
/// reopen (the deletions are not written as single writes whose repair
/// record would bring the old count back).
#[test]
fn an_emptied_conversation_stays_with_nothing_unread_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let three = |conv: u8| -> Vec<StoredMessage> {
        (1..=3u64)
            .map(|i| {
                let mut m = msg(conv, i, 2, i as u8, b"unread");
                m.expires_at = Some(100);
                m
            })
            .collect()
    };
    {
        let store = Store::open(dir.path(), &data_key(1)).unwrap();
        let h = store.history();
        for conv in [1, 2, 3] {
            h.append_batch(&three(conv), Direction::Incoming).unwrap();
            assert_eq!(h.conversation(&[conv; 32]).unwrap().unwrap().unread, 3);
        }
        assert_eq!(h.clear(&[1; 32], NOW, &MINE).unwrap(), 3);
        for m in three(2) {
            assert!(h.delete(&m.reference(), NOW, &MINE).unwrap());
        }
        // Conversation 3 expires.
        assert_eq!(h.purge_expired(100).unwrap(), 9 - 6);
        for conv in [1, 2, 3] {
            assert_eq!(h.conversation(&[conv; 32]).unwrap().unwrap().unread, 0);
        }
        store.flush().unwrap();
    }
    let store = Store::open(dir.path(), &data_key(1)).unwrap();
    let h = store.history();
    for conv in [1, 2, 3] {
        assert_eq!(
            h.conversation(&[conv; 32]).unwrap().unwrap().unread,
            0,
            "conversation {conv}"
        );
    }
    // Fewer than MAX_TOMBSTONES cleared or deleted: each left one.
    for m in three(1).iter().chain(&three(2)) {
        assert_eq!(
            h.append(m, Direction::Incoming).unwrap(),
            Appended::Duplicate
        );
    }
}

/// A message deleted or cleared here and then sent again (its sender had
/// not heard our acknowledgement, and encrypted it afresh) is not stored
/// again while its tombstone lasts, also after a reopen: a clear leaves
/// tombstones for its newest `MAX_TOMBSTONES` messages, a delete for its
/// one, the conversation keeps at most `MAX_TOMBSTONES`, and the purge
/// takes them when their time is up. A message written here is not
/// refused by a tombstone.
#[test]
fn a_deleted_message_sent_again_stays_deleted_while_its_tombstone_lasts() {
    use crate::store::{MAX_TOMBSTONES, TOMBSTONE_LIFE};
    let dir = tempfile::tempdir().unwrap();
    let older = 76u64;
    let all: Vec<_> = (1..=MAX_TOMBSTONES as u64 + older)
        .map(|i| {
            let mut m = msg(1, i, 2, 0, &i.to_be_bytes());
            m.msg_id[..8].copy_from_slice(&i.to_be_bytes());
            m
        })
        .collect();
    let inserted = |out: &[Appended]| out.iter().filter(|o| **o == Appended::Inserted).count();
    let first = all[0].clone();
    {
        let store = Store::open(dir.path(), &data_key(1)).unwrap();
        let h = store.history();
        h.append_batch(&all, Direction::Incoming).unwrap();
        assert_eq!(h.clear(&[1; 32], NOW, &MINE).unwrap(), all.len());
        let again = h.append_batch(&all, Direction::Incoming).unwrap();
        assert_eq!(
            again[..older as usize],
            vec![Appended::Inserted; older as usize][..],
            "older than the newest {MAX_TOMBSTONES}: no tombstone"
        );
        assert_eq!(inserted(&again), older as usize);
        assert_eq!(
            h.conversation(&[1; 32]).unwrap().unwrap().unread,
            older as u32
        );
        // One of those deleted, a second later.
        assert!(h.delete(&first.reference(), NOW + 1, &MINE).unwrap());
        store.flush().unwrap();
    }
    let store = Store::open(dir.path(), &data_key(1)).unwrap();
    let h = store.history();
    assert_eq!(
        h.append(&first, Direction::Incoming).unwrap(),
        Appended::Duplicate
    );
    // The conversation keeps MAX_TOMBSTONES: the delete's took the place
    // of one of the clear's (the earliest to go; all go at the same time).
    assert_eq!(
        inserted(&h.append_batch(&all, Direction::Incoming).unwrap()),
        1,
        "every other copy refused after a reopen"
    );
    assert_eq!(all_pages(&h, &[1; 32], 100).len(), older as usize);
    // A message written here is never refused, and deleting one of ours
    // leaves no tombstone (it comes back from nobody): the cap is kept
    // for what contacts sent.
    let mut own = first.clone();
    own.conv_id = [5; 32];
    own.sender = MINE;
    h.append(&own, Direction::Outgoing).unwrap();
    assert!(h.delete(&own.reference(), NOW, &MINE).unwrap());
    assert_eq!(
        h.append(&own, Direction::Outgoing).unwrap(),
        Appended::Inserted
    );
    assert!(h.delete(&own.reference(), NOW, &MINE).unwrap());
    assert_eq!(
        h.append(&own, Direction::Incoming).unwrap(),
        Appended::Inserted
    );

    // The clear's tombstones go at their time, the delete's a second later.
    assert_eq!(h.purge_expired(NOW + TOMBSTONE_LIFE - 1).unwrap(), 0);
    assert_eq!(
        inserted(&h.append_batch(&all, Direction::Incoming).unwrap()),
        0
    );
    assert_eq!(h.purge_expired(NOW + TOMBSTONE_LIFE).unwrap(), 0);
    let back = h.append_batch(&all, Direction::Incoming).unwrap();
    assert_eq!(inserted(&back), MAX_TOMBSTONES - 1, "the clear's");
    assert_eq!(
        h.append(&first, Direction::Incoming).unwrap(),
        Appended::Duplicate
    );
    assert_eq!(h.purge_expired(NOW + 1 + TOMBSTONE_LIFE).unwrap(), 0);
    assert_eq!(
        h.append(&first, Direction::Incoming).unwrap(),
        Appended::Inserted
    );
    assert_eq!(all_pages(&h, &[1; 32], 100).len(), all.len());
}

/// In a temporary conversation, a message whose sender's clock runs more
/// than `CLOCK_SLACK` ahead of ours is kept no longer than the retention
/// from when it came (the node caps its expiry), and when the purge takes
/// it, it leaves a tombstone: a copy sent again stays gone. One whose
/// sender's clock is about right leaves none (a copy sent again is past
/// its time by the sender's clock, and the node refuses it for that).
#[test]
fn a_purged_message_whose_senders_clock_runs_ahead_stays_gone() {
    use crate::store::CLOCK_SLACK;
    let (_dir, store) = fresh();
    let h = store.history();
    let retention = 600;
    h.upsert_conversation(&[1; 32], "", Some(retention))
        .unwrap();
    let came = NOW;
    let with_clock = |ahead: u64, id: u8| {
        let mut m = msg(1, u64::from(id), 2, id, b"temporary");
        m.sent_at = came + ahead;
        m.expires_at = Some(came + retention);
        m
    };
    let ahead = with_clock(3600, 1);
    let about_right = with_clock(CLOCK_SLACK, 2);
    h.append_batch(&[ahead.clone(), about_right.clone()], Direction::Incoming)
        .unwrap();
    assert_eq!(h.purge_expired(came + retention - 1).unwrap(), 0);
    assert_eq!(h.purge_expired(came + retention).unwrap(), 2);
    assert_eq!(
        h.append(&ahead, Direction::Incoming).unwrap(),
        Appended::Duplicate
    );
    assert_eq!(
        h.append(&about_right, Direction::Incoming).unwrap(),
        Appended::Inserted
    );
    assert!(h.get(&ahead.reference()).unwrap().is_none());
}

/// Deleting a contact's message not marked read lowers the unread count
/// by one, also after a reopen; a message read, or one of ours, leaves it
/// as it is.
#[test]
fn deleting_an_unread_message_lowers_the_unread_count() {
    let dir = tempfile::tempdir().unwrap();
    let theirs: Vec<_> = (1..=5u64).map(|i| msg(1, i, 2, i as u8, b"hi")).collect();
    let mut ours = msg(1, 6, 0, 6, b"mine");
    ours.sender = MINE;
    {
        let store = Store::open(dir.path(), &data_key(1)).unwrap();
        let h = store.history();
        h.append_batch(&theirs, Direction::Incoming).unwrap();
        h.append(&ours, Direction::Outgoing).unwrap();
        let unread = |h: &History<'_>| h.conversation(&[1; 32]).unwrap().unwrap().unread;
        assert_eq!(unread(&h), 5);
        assert!(h.delete(&theirs[4].reference(), NOW, &MINE).unwrap());
        assert_eq!(unread(&h), 4);
        h.set_state(&theirs[0].reference(), DeliveryState::Read)
            .unwrap();
        assert!(h.delete(&theirs[0].reference(), NOW, &MINE).unwrap());
        assert!(h.delete(&ours.reference(), NOW, &MINE).unwrap());
        assert_eq!(unread(&h), 4, "a message read, and one of ours");
        assert!(h.delete(&theirs[2].reference(), NOW, &MINE).unwrap());
        assert_eq!(unread(&h), 3);
        store.flush().unwrap();
    }
    let store = Store::open(dir.path(), &data_key(1)).unwrap();
    let h = store.history();
    assert_eq!(h.conversation(&[1; 32]).unwrap().unwrap().unread, 3);
    assert_eq!(all_pages(&h, &[1; 32], 10).len(), 2);
}

/// A copy of what another device of this account wrote is not unread, is
/// not counted when deleted, and once deleted is not stored again while
/// its tombstone lasts, like a contact's message.
#[test]
fn a_copy_from_another_device_is_not_unread_and_stays_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &data_key(1)).unwrap();
    let h = store.history();
    let theirs = msg(1, 1, 2, 0, b"from the contact");
    let mut copy = msg(1, 2, 3, 0, b"from my other device");
    copy.state = crate::store::DeliveryState::Sent;
    h.append(&theirs, Direction::Incoming).unwrap();
    assert_eq!(
        h.append(&copy, Direction::Copied).unwrap(),
        Appended::Inserted
    );
    assert_eq!(h.conversation(&[1; 32]).unwrap().unwrap().unread, 1);
    assert!(h.delete(&copy.reference(), NOW, &MINE).unwrap());
    assert_eq!(h.conversation(&[1; 32]).unwrap().unwrap().unread, 1);
    assert_eq!(
        h.append(&copy, Direction::Copied).unwrap(),
        Appended::Duplicate
    );
    assert_eq!(
        h.append(&theirs, Direction::Incoming).unwrap(),
        Appended::Duplicate
    );
}
