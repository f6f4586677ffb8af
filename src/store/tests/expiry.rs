use super::{data_key, fresh, msg};
use crate::store::{Appended, Direction, Store};

#[test]
fn temporary_conversations_expire_and_permanent_ones_keep_everything() {
    let (_dir, store) = fresh();
    let h = store.history();
    h.upsert_conversation(&[1; 32], "temporary", Some(60))
        .unwrap();
    let mut temp: Vec<_> = (0..5)
        .map(|i| msg(1, i, 2, i as u8, b"gone soon"))
        .collect();
    for m in &mut temp {
        m.sent_at = 1_000;
    }
    // One message asks for an earlier expiry of its own.
    temp[0].expires_at = Some(1_010);
    h.append_batch(&temp, Direction::Incoming).unwrap();
    let mut keep: Vec<_> = (0..5)
        .map(|i| msg(2, i, 2, 100 + i as u8, b"kept"))
        .collect();
    for m in &mut keep {
        m.sent_at = 1_000;
    }
    h.append_batch(&keep, Direction::Incoming).unwrap();
    assert_eq!(
        h.get(&temp[1].reference()).unwrap().unwrap().expires_at,
        Some(1_060)
    );

    assert_eq!(h.purge_expired(1_009).unwrap(), 0);
    assert_eq!(h.purge_expired(1_010).unwrap(), 1);
    assert!(h.get(&temp[0].reference()).unwrap().is_none());
    assert_eq!(h.purge_expired(1_059).unwrap(), 0);
    assert_eq!(h.purge_expired(1_060).unwrap(), 4);
    assert!(h.page(&[1; 32], None, 50).unwrap().messages.is_empty());
    for m in &temp {
        assert!(h.get(&m.reference()).unwrap().is_none());
    }
    assert_eq!(h.page(&[2; 32], None, 50).unwrap().messages.len(), 5);
    assert_eq!(
        h.purge_expired(u64::MAX).unwrap(),
        0,
        "permanent chat untouched"
    );
}

#[test]
fn the_expiry_index_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let key = data_key(1);
    let mut m = msg(3, 1, 2, 1, b"x");
    m.expires_at = Some(500);
    {
        let store = Store::open(dir.path(), &key).unwrap();
        store.history().append(&m, Direction::Outgoing).unwrap();
        store.flush().unwrap();
    }
    let store = Store::open(dir.path(), &key).unwrap();
    assert_eq!(store.history().purge_expired(500).unwrap(), 1);
    assert!(store.history().get(&m.reference()).unwrap().is_none());
}

#[test]
fn batches_dedupe_within_and_across() {
    let (_dir, store) = fresh();
    let h = store.history();
    let a = msg(4, 1, 2, 1, b"a");
    let b = msg(4, 2, 2, 2, b"b");
    let out = h
        .append_batch(&[a.clone(), b.clone(), a.clone()], Direction::Incoming)
        .unwrap();
    assert_eq!(
        out,
        vec![Appended::Inserted, Appended::Inserted, Appended::Duplicate]
    );
    let out = h
        .append_batch(&[b, msg(4, 3, 2, 3, b"c")], Direction::Incoming)
        .unwrap();
    assert_eq!(out, vec![Appended::Duplicate, Appended::Inserted]);
    assert_eq!(h.conversation(&[4; 32]).unwrap().unwrap().unread, 3);
    // A batch with one oversized body writes nothing.
    let big = msg(4, 9, 2, 9, &vec![0; crate::store::History::MAX_BODY + 1]);
    assert!(
        h.append_batch(&[msg(4, 8, 2, 8, b"d"), big], Direction::Incoming)
            .is_err()
    );
    assert_eq!(h.page(&[4; 32], None, 50).unwrap().messages.len(), 3);
}

#[test]
fn an_expiry_that_cannot_be_handled_does_not_stop_the_others() {
    let (_dir, store) = fresh();
    let h = store.history();
    for (conv, at) in [(1u8, 1_010), (3, 1_020)] {
        let mut temp: Vec<_> = (0..3)
            .map(|i| msg(conv, i, 2, i as u8, b"gone soon"))
            .collect();
        for m in &mut temp {
            m.expires_at = Some(at);
        }
        h.append_batch(&temp, Direction::Incoming).unwrap();
    }
    // Conversation 1's messages no longer open, and a malformed entry
    // comes first in the expiry index.
    let mut damaged = 0;
    for prefix in [
        crate::store::keys::TAIL_PREFIX,
        crate::store::keys::BLOCK_PREFIX,
    ] {
        let mut start = vec![prefix];
        start.extend_from_slice(&[1; 32]);
        for item in store.history.scan_prefix(&start) {
            let (k, _) = item.unwrap();
            store.history.insert(k, vec![0x5a; 40]).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged > 0);
    let mut odd = vec![crate::store::keys::EXPIRY_PREFIX];
    odd.extend_from_slice(&5u64.to_be_bytes());
    odd.push(1);
    store.history.insert(odd.clone(), vec![]).unwrap();
    // And a second, earlier entry for one of conversation 3's records (as
    // a crash between two writes can leave): handled once.
    let mut later = vec![crate::store::keys::EXPIRY_PREFIX];
    later.extend_from_slice(&1_020u64.to_be_bytes());
    let (k, v) = store.history.scan_prefix(&later).next().unwrap().unwrap();
    let mut twice = k.to_vec();
    twice[1..9].copy_from_slice(&1_015u64.to_be_bytes());
    store.history.insert(twice, v).unwrap();
    // Conversation 3's messages go all the same, and nothing is left in
    // the way of later purges.
    assert_eq!(h.purge_expired(1_020).unwrap(), 3);
    assert_eq!(h.purge_expired(1_020).unwrap(), 0);
    assert!(h.page(&[3; 32], None, 50).unwrap().messages.is_empty());
    assert!(!store.history.contains_key(&odd).unwrap());
    let mut x = vec![crate::store::keys::EXPIRY_PREFIX];
    x.extend_from_slice(&1_010u64.to_be_bytes());
    assert_eq!(store.history.scan_prefix(&x).count(), 0);
}

/// A conversation's newest block that no longer opens does not stop the
/// purge: the expired message above it still goes (it used to fail the
/// whole step when the conversation's newest message was looked up again,
/// and every later purge with it).
#[test]
fn a_damaged_block_under_an_expiring_message_does_not_stop_the_purge() {
    let (_dir, store) = fresh();
    let h = store.history();
    // A full tail moves into a block.
    for i in 0..crate::store::tail::TAIL_MAX as u64 {
        h.append(&msg(5, i, 2, i as u8, b"kept"), Direction::Incoming)
            .unwrap();
    }
    let mut start = vec![crate::store::keys::TAIL_PREFIX];
    start.extend_from_slice(&[5; 32]);
    assert_eq!(store.history.scan_prefix(&start).count(), 0, "tail moved");
    let mut blocks = vec![crate::store::keys::BLOCK_PREFIX];
    blocks.extend_from_slice(&[5; 32]);
    let mut damaged = 0;
    for item in store.history.scan_prefix(&blocks) {
        let (k, _) = item.unwrap();
        store.history.insert(k, vec![0x5a; 40]).unwrap();
        damaged += 1;
    }
    assert!(damaged > 0);
    let mut temp = msg(5, 100, 2, 200, b"gone soon");
    temp.expires_at = Some(2_000);
    h.append(&temp, Direction::Incoming).unwrap();
    // And one in another conversation, due at the same time.
    let mut other = msg(6, 1, 2, 201, b"also gone");
    other.expires_at = Some(2_000);
    h.append(&other, Direction::Incoming).unwrap();
    assert_eq!(h.purge_expired(2_000).unwrap(), 2);
    // (Its damaged block is in the way of reading conversation 5.)
    assert_eq!(store.history.scan_prefix(&start).count(), 0, "gone");
    assert_eq!(h.get(&other.reference()).unwrap(), None);
    assert_eq!(h.purge_expired(3_000).unwrap(), 0);
}

/// Messages that expired unread take their count with them when nothing
/// is left of the conversation: it does not show (and betray) an unread
/// count with no messages.
#[test]
fn a_conversation_whose_messages_all_expired_shows_nothing_unread() {
    let (_dir, store) = fresh();
    let h = store.history();
    let mut temp: Vec<_> = (0..5)
        .map(|i| msg(7, i, 2, i as u8, b"gone soon"))
        .collect();
    for m in &mut temp {
        m.expires_at = Some(1_010);
    }
    h.append_batch(&temp, Direction::Incoming).unwrap();
    assert_eq!(h.conversation(&[7; 32]).unwrap().unwrap().unread, 5);
    assert_eq!(h.purge_expired(1_010).unwrap(), 5);
    assert_eq!(h.conversation(&[7; 32]).unwrap().unwrap().unread, 0);
    // One that comes after counts again.
    h.append(&msg(7, 10, 2, 10, b"new"), Direction::Incoming)
        .unwrap();
    assert_eq!(h.conversation(&[7; 32]).unwrap().unwrap().unread, 1);
}

/// A temporary media message takes its chunks with it when it expires (in
/// the tail and in blocks alike); a chunk another message brought first
/// stays, and so do the chunks of a kept media message.
#[test]
fn an_expired_media_message_takes_its_chunks_with_it() {
    use crate::crypto::media::Manifest;
    use crate::store::media_owner;
    use rand::SeedableRng;

    let (_dir, store) = fresh();
    let h = store.history();
    let media = store.media().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut bodies = Vec::new();
    let mut all_chunks = Vec::new();
    for i in 0..3u8 {
        let (m, chunks) =
            Manifest::seal(&vec![i; 70_000 + usize::from(i)], "f", "", &mut rng).unwrap();
        let body = m.to_body();
        let owner = media_owner(&body, &[2; 32]);
        for (name, c) in m.chunks.iter().zip(&chunks) {
            media.put_chunk(&owner, name, c).unwrap();
        }
        all_chunks.push(m.chunks.clone());
        bodies.push(body);
    }
    // A chunk of message 0 that message 2 names too cannot be taken by
    // message 0's purge when message 2 brought it first: simulated by a
    // chunk stored under another owner.
    let foreign = [0x77; 32];
    media
        .put_chunk(&[9; 16], &foreign, b"someone else's")
        .unwrap();

    let mut temp = msg(1, 1, 2, 1, &bodies[0]);
    temp.expires_at = Some(100);
    let mut temp2 = msg(1, 2, 2, 2, &bodies[1]);
    temp2.expires_at = Some(100);
    let kept = msg(1, 3, 2, 3, &bodies[2]);
    // Many plain messages, so that some of them leave the tail for blocks.
    let mut filler: Vec<_> = (10..200).map(|i| msg(1, i, 2, i as u8, b"text")).collect();
    for m in &mut filler {
        m.expires_at = Some(100);
    }
    h.append(&temp, Direction::Incoming).unwrap();
    h.append_batch(&filler, Direction::Incoming).unwrap();
    h.append(&temp2, Direction::Incoming).unwrap();
    h.append(&kept, Direction::Incoming).unwrap();
    media.want(&temp.reference()).unwrap();
    media.want(&kept.reference()).unwrap();

    assert!(h.purge_expired(100).unwrap() >= 2);
    for name in all_chunks[0].iter().chain(&all_chunks[1]) {
        assert!(
            !media.has_chunk(name).unwrap(),
            "an expired message's chunk stayed"
        );
    }
    for name in &all_chunks[2] {
        assert!(
            media.has_chunk(name).unwrap(),
            "a kept message's chunk went"
        );
    }
    assert!(media.has_chunk(&foreign).unwrap());
    assert_eq!(
        media.wanted(None, 10).unwrap(),
        vec![kept.reference()],
        "the expired message's wanted record stayed, or the kept one's went"
    );
}

/// Two messages carrying the same manifest (a file someone sent again)
/// share its chunks: deleting either leaves the other's file whole, and
/// the chunks go with the last of them.
#[test]
fn messages_sharing_a_file_keep_its_chunks_until_the_last_goes() {
    use crate::crypto::media::Manifest;
    use crate::store::media_owner;
    use rand::SeedableRng;

    let (_dir, store) = fresh();
    let media = store.media().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let (m, chunks) = Manifest::seal(&vec![3; 70_000], "f", "", &mut rng).unwrap();
    let body = m.to_body();
    let (carol, mallory) = ([1; 32], [2; 32]);
    // Mallory's copy came first and brought the chunks; Carol's found
    // them here when it was complete.
    let by_mallory = media_owner(&body, &mallory);
    for (name, c) in m.chunks.iter().zip(&chunks) {
        media.put_chunk(&by_mallory, name, c).unwrap();
    }
    media
        .hold_chunks(&media_owner(&body, &carol), &m.chunks)
        .unwrap();
    assert_eq!(media.forget_chunks(&body, &mallory).unwrap(), 0);
    assert!(
        m.chunks.iter().all(|n| media.has_chunk(n).unwrap()),
        "carol's file went with mallory's copy"
    );
    assert_eq!(media.forget_chunks(&body, &carol).unwrap(), m.chunks.len());
    assert!(!m.chunks.iter().any(|n| media.has_chunk(n).unwrap()));

    // Chunks kept before references were (none): a newer copy's
    // deletion leaves them with the message they are kept under.
    let (m2, chunks2) = Manifest::seal(&vec![4; 70_000], "g", "", &mut rng).unwrap();
    let body2 = m2.to_body();
    let records = store.records(crate::store::Kind::Media).unwrap();
    for (name, c) in m2.chunks.iter().zip(&chunks2) {
        let mut v = media_owner(&body2, &carol).to_vec();
        v.extend_from_slice(c);
        records.put(name, &v).unwrap();
    }
    media
        .hold_chunks(&media_owner(&body2, &mallory), &m2.chunks)
        .unwrap();
    assert_eq!(media.forget_chunks(&body2, &mallory).unwrap(), 0);
    assert!(m2.chunks.iter().all(|n| media.has_chunk(n).unwrap()));
    assert_eq!(
        media.forget_chunks(&body2, &carol).unwrap(),
        m2.chunks.len()
    );
}

/// The count of chunk bytes follows what is kept and what goes, and is
/// counted afresh from the records when it is missing.
#[test]
fn the_media_byte_count_follows_the_chunks() {
    use crate::crypto::media::Manifest;
    use crate::store::media_owner;
    use rand::SeedableRng;

    let (_dir, store) = fresh();
    let media = store.media().unwrap();
    assert_eq!(media.bytes().unwrap(), 0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (m, chunks) = Manifest::seal(&vec![5; 150_000], "f", "", &mut rng).unwrap();
    let body = m.to_body();
    let (carol, mallory) = ([1; 32], [2; 32]);
    let owner = media_owner(&body, &carol);
    for (name, c) in m.chunks.iter().zip(&chunks) {
        media.put_chunk(&owner, name, c).unwrap();
    }
    let kept = media.bytes().unwrap();
    let raw: u64 = chunks.iter().map(|c| c.len() as u64).sum();
    // Each record is the chunk, its owner id and the seal's overhead.
    assert!(
        kept > raw && kept < raw + 200 * chunks.len() as u64,
        "{kept} bytes counted for {raw} bytes of chunks"
    );
    // The same chunks again (another message's copy) take nothing more.
    let copy = media_owner(&body, &mallory);
    for (name, c) in m.chunks.iter().zip(&chunks) {
        media.put_chunk(&copy, name, c).unwrap();
    }
    assert_eq!(media.bytes().unwrap(), kept);

    // Counted afresh when the count is missing: the same figure.
    let records = store.records(crate::store::Kind::Media).unwrap();
    assert!(records.remove(b"size").unwrap());
    assert_eq!(media.bytes().unwrap(), kept);

    // The first copy's deletion frees nothing; the last one's everything.
    media.forget_chunks(&body, &mallory).unwrap();
    assert_eq!(media.bytes().unwrap(), kept);
    media.forget_chunks(&body, &carol).unwrap();
    assert_eq!(media.bytes().unwrap(), 0);
    assert_eq!(
        store.records(crate::store::Kind::Media).unwrap().len(),
        0,
        "a record stayed with no chunk left"
    );

    // A count made afresh while a chunk is written or deleted sees the
    // change once.
    for (name, c) in m.chunks.iter().zip(&chunks) {
        media.put_chunk(&owner, name, c).unwrap();
        assert!(records.remove(b"size").unwrap());
    }
    assert_eq!(media.bytes().unwrap(), kept);
    assert!(records.remove(b"size").unwrap());
    media.forget_chunks(&body, &carol).unwrap();
    assert_eq!(media.bytes().unwrap(), 0);
}
