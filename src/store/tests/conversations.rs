//! The conversation list: activity order, unread counts, settings.

use super::{fresh, msg};
use crate::store::{Direction, Error, History};

#[test]
fn list_sorted_by_last_activity_with_unread_counts() {
    let (_dir, store) = fresh();
    let h = store.history();
    // sent_at = 1_700_000_000 + lamport (see `msg`).
    h.append(&msg(1, 10, 2, 1, b"a"), Direction::Incoming)
        .unwrap();
    h.append(&msg(2, 20, 2, 2, b"b"), Direction::Incoming)
        .unwrap();
    h.append(&msg(2, 21, 9, 3, b"c"), Direction::Outgoing)
        .unwrap();
    h.append(&msg(3, 5, 2, 4, b"d"), Direction::Incoming)
        .unwrap();
    h.append(&msg(3, 6, 2, 5, b"e"), Direction::Incoming)
        .unwrap();

    let list = h.list_conversations().unwrap();
    let ids: Vec<u8> = list.iter().map(|c| c.id[0]).collect();
    assert_eq!(ids, vec![2, 1, 3]);
    let unread: Vec<u32> = list.iter().map(|c| c.unread).collect();
    assert_eq!(unread, vec![1, 1, 2]);
    assert_eq!(list[0].last_lamport, 21);
    assert_eq!(list[0].last_message_at, 1_700_000_021);

    // New activity in 3 moves it to the top; an older late message doesn't
    // lower last activity.
    h.append(&msg(3, 50, 2, 6, b"f"), Direction::Incoming)
        .unwrap();
    h.append(&msg(3, 1, 2, 7, b"late"), Direction::Incoming)
        .unwrap();
    let list = h.list_conversations().unwrap();
    assert_eq!(list[0].id, [3; 32]);
    assert_eq!(list[0].last_lamport, 50);
    assert_eq!(list[0].unread, 4);
}

#[test]
fn mark_read_clears_unread() {
    let (_dir, store) = fresh();
    let h = store.history();
    for i in 0..3 {
        h.append(&msg(1, u64::from(i), 2, i, b"x"), Direction::Incoming)
            .unwrap();
    }
    assert_eq!(h.mark_read(&[1; 32]).unwrap(), 3);
    assert_eq!(h.mark_read(&[1; 32]).unwrap(), 0);
    assert_eq!(h.conversation(&[1; 32]).unwrap().unwrap().unread, 0);
    h.append(&msg(1, 9, 2, 9, b"y"), Direction::Incoming)
        .unwrap();
    assert_eq!(h.conversation(&[1; 32]).unwrap().unwrap().unread, 1);
    assert!(matches!(
        h.mark_read(&[8; 32]),
        Err(Error::UnknownConversation { .. })
    ));
}

#[test]
fn upsert_keeps_activity_and_unread() {
    let (_dir, store) = fresh();
    let h = store.history();
    let created = h.upsert_conversation(&[4; 32], "new group", None).unwrap();
    assert_eq!(created.unread, 0);
    assert_eq!(created.last_lamport, 0);
    h.append(&msg(4, 3, 2, 1, b"x"), Direction::Incoming)
        .unwrap();
    let updated = h
        .upsert_conversation(&[4; 32], "renamed", Some(86_400))
        .unwrap();
    assert_eq!(updated.title, "renamed");
    assert_eq!(updated.retention, Some(86_400));
    assert_eq!(updated.unread, 1);
    assert_eq!(updated.last_lamport, 3);
    assert_eq!(h.conversation(&[4; 32]).unwrap(), Some(updated));
    let long = "t".repeat(History::MAX_TITLE + 1);
    assert!(matches!(
        h.upsert_conversation(&[4; 32], &long, None),
        Err(Error::TooLarge {
            tree: "history",
            ..
        })
    ));
    assert!(
        h.upsert_conversation(&[4; 32], &"t".repeat(History::MAX_TITLE), None)
            .is_ok()
    );
}

#[test]
fn summaries_show_the_newest_message_and_unread_count() {
    let (_dir, store) = fresh();
    let h = store.history();
    h.append(&msg(1, 1, 2, 1, b"old"), Direction::Incoming)
        .unwrap();
    h.append(&msg(1, 5, 2, 2, b"newest"), Direction::Incoming)
        .unwrap();
    h.append(&msg(1, 3, 2, 3, b"late but older"), Direction::Incoming)
        .unwrap();
    h.upsert_conversation(&[2; 32], "empty", None).unwrap();
    let rows = h.summaries().unwrap();
    let row = rows.iter().find(|r| r.conversation.id == [1; 32]).unwrap();
    assert_eq!(row.last.as_ref().unwrap().body, b"newest");
    assert_eq!(row.conversation.unread, 3);
    let empty = rows.iter().find(|r| r.conversation.id == [2; 32]).unwrap();
    assert!(empty.last.is_none());
}
