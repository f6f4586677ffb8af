use super::{data_key, fresh, msg};
use crate::store::{Direction, Error, Kind, Store};

fn filled() -> (tempfile::TempDir, Store) {
    let (dir, store) = fresh();
    let h = store.history();
    h.upsert_conversation(&[1; 32], "Ward 3 \"night\" shift", Some(3600))
        .unwrap();
    let mut msgs: Vec<_> = (0..120u64)
        .map(|i| msg(1, i, 2, i as u8, format!("note {i}").as_bytes()))
        .collect();
    msgs[7].body = vec![0xff, 0x00, 0xfe];
    h.append_batch(&msgs, Direction::Incoming).unwrap();
    store
        .outbox()
        .push([5; 16], [6; 32], vec![1, 2, 3], 10, 20)
        .unwrap();
    store
        .records(Kind::Contacts)
        .unwrap()
        .put(b"carol", b"contact")
        .unwrap();
    (dir, store)
}

#[test]
fn export_writes_the_whole_history_oldest_first() {
    let (_dir, store) = filled();
    let mut out = Vec::new();
    assert_eq!(
        store.history().export_json(&[1; 32], &mut out).unwrap(),
        120
    );
    let doc: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(doc["format"], "meshchat-export");
    assert_eq!(doc["conversation"]["title"], "Ward 3 \"night\" shift");
    assert_eq!(doc["conversation"]["retention_seconds"], 3600);
    let msgs = doc["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 120);
    assert_eq!(msgs[0]["text"], "note 0");
    assert_eq!(msgs[119]["text"], "note 119");
    assert_eq!(msgs[7]["body_hex"], "ff00fe");
    assert!(msgs[7].get("text").is_none());
    assert!(
        msgs.windows(2)
            .all(|w| w[0]["lamport"].as_u64() < w[1]["lamport"].as_u64())
    );
    assert!(matches!(
        store.history().export_json(&[9; 32], &mut Vec::new()),
        Err(Error::UnknownConversation { .. })
    ));
}

/// A restore cut short once its records are on disk, before the store
/// was first opened, still leaves a store marked restored: its sessions
/// must not send again from the backup's counters.
#[test]
fn a_restore_cut_short_after_its_flush_is_marked_restored() {
    let (_dir, store) = filled();
    let mut backup = Vec::new();
    store.backup(&mut backup).unwrap();
    let target = tempfile::tempdir().unwrap();
    let dest = target.path().join("restored");
    Store::restore_into(&mut backup.as_slice(), &dest).unwrap();
    // The process stops here; the next start opens what is there.
    let opened = Store::open(&dest, &data_key(1)).unwrap();
    assert!(opened.restored().unwrap());
}

#[test]
fn backup_restores_everything_under_the_same_key_only() {
    let (_dir, store) = filled();
    let mut backup = Vec::new();
    let records = store.backup(&mut backup).unwrap();
    // 120 messages in blocks of at most 16, their conversation, and meta.
    assert!(records > 120 / 16 + 1);
    // The backup holds sealed values only.
    assert!(!backup.windows(7).any(|w| w == b"note 11"));

    let target = tempfile::tempdir().unwrap();
    let dest = target.path().join("restored");
    let restored = Store::restore(&mut backup.as_slice(), &dest, &data_key(1)).unwrap();
    // Marked as an older copy of its device, until its owner clears it.
    assert!(restored.restored().unwrap());
    assert!(!store.restored().unwrap());
    let a = store.history().page(&[1; 32], None, 1000).unwrap();
    let b = restored.history().page(&[1; 32], None, 1000).unwrap();
    assert_eq!(a.messages, b.messages);
    assert_eq!(
        restored.history().list_conversations().unwrap(),
        store.history().list_conversations().unwrap()
    );
    assert_eq!(
        restored.outbox().all().unwrap(),
        store.outbox().all().unwrap()
    );
    assert_eq!(
        restored
            .records(Kind::Contacts)
            .unwrap()
            .get(b"carol")
            .unwrap()
            .unwrap(),
        b"contact"
    );
    // New outbox entries sort after restored ones.
    let old_max = restored.outbox().all().unwrap().last().unwrap().seq;
    assert!(
        restored
            .outbox()
            .push([7; 16], [6; 32], vec![], 0, 1)
            .unwrap()
            .seq
            > old_max
    );
    // Positions handed out before their entries are written, too: each
    // above the last entry and the one before it.
    let old_max = restored.outbox().all().unwrap().last().unwrap().seq;
    let positions = restored.outbox().positions(3).unwrap();
    assert!(positions[0] > old_max, "{positions:?} after {old_max}");
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    drop(restored);

    // Another key: refused clearly.
    let dest2 = target.path().join("other-key");
    assert!(matches!(
        Store::restore(&mut backup.as_slice(), &dest2, &data_key(2)),
        Err(Error::WrongKey { .. })
    ));
    // Nothing is left behind: the right key can restore there next.
    assert!(!dest2.exists());
    drop(Store::restore(&mut backup.as_slice(), &dest2, &data_key(1)).unwrap());
    // A non-empty target is refused and left alone.
    assert!(matches!(
        Store::restore(&mut backup.as_slice(), &dest, &data_key(1)),
        Err(Error::Backup(_))
    ));
    assert!(dest.exists());
}

#[test]
fn damaged_or_truncated_backups_are_refused_and_leave_nothing() {
    let (_dir, store) = filled();
    let mut backup = Vec::new();
    store.backup(&mut backup).unwrap();
    let target = tempfile::tempdir().unwrap();
    for (i, pos) in [
        30usize,
        backup.len() / 2,
        backup.len() - 40,
        backup.len() - 1,
    ]
    .into_iter()
    .enumerate()
    {
        let mut bad = backup.clone();
        bad[pos] ^= 0x01;
        let dest = target.path().join(format!("flip{i}"));
        let err = Store::restore(&mut bad.as_slice(), &dest, &data_key(1)).unwrap_err();
        assert!(matches!(err, Error::Backup(_)), "{err}");
        assert!(!dest.exists(), "half-restored directory removed");
    }
    let dest = target.path().join("short");
    assert!(Store::restore(&mut &backup[..backup.len() / 3], &dest, &data_key(1)).is_err());
    assert!(Store::restore(&mut &b"not a backup at all"[..], &dest, &data_key(1)).is_err());
    assert!(!dest.exists());
}
