//! Encryption at rest: moved records fail, no plaintext reaches the disk.

use std::path::Path;

use super::{data_key, fresh, msg};
use crate::store::{Direction, Error, Store};

/// The `history` records with this one-byte prefix (see `store::keys`).
fn records(store: &Store, prefix: u8) -> Vec<(sled::IVec, sled::IVec)> {
    store
        .history
        .scan_prefix([prefix])
        .map(|kv| kv.unwrap())
        .collect()
}

#[test]
fn swapped_message_records_fail_to_decrypt() {
    let (_dir, store) = fresh();
    let h = store.history();
    // Two conversations, one (tail) record each.
    let a = msg(1, 1, 2, 10, b"first");
    let b = msg(2, 2, 2, 11, b"second");
    h.append(&a, Direction::Incoming).unwrap();
    h.append(&b, Direction::Incoming).unwrap();

    let blocks = records(&store, b't');
    assert_eq!(blocks.len(), 2);
    let ((ka, va), (kb, vb)) = (&blocks[0], &blocks[1]);
    store.history.insert(ka, vb.clone()).unwrap();
    store.history.insert(kb, va.clone()).unwrap();

    assert!(matches!(
        h.get(&a.reference()),
        Err(Error::Decrypt {
            tree: "history",
            ..
        })
    ));
    assert!(matches!(
        h.page(&a.conv_id, None, 10),
        Err(Error::Decrypt {
            tree: "history",
            ..
        })
    ));
}

#[test]
fn record_moved_to_another_key_or_kind_fails() {
    let (_dir, store) = fresh();
    let h = store.history();
    let x = msg(1, 1, 2, 10, b"x");
    h.append(&x, Direction::Incoming).unwrap();
    h.append(&msg(2, 1, 2, 11, b"y"), Direction::Incoming)
        .unwrap();

    // Conversation 1's record copied over conversation 2's.
    let convs = records(&store, b'c');
    assert_eq!(convs.len(), 2);
    store
        .history
        .insert(&convs[1].0, convs[0].1.clone())
        .unwrap();
    assert!(matches!(
        h.conversation(&[2; 32]),
        Err(Error::Decrypt {
            tree: "history",
            ..
        })
    ));
    assert!(h.conversation(&[1; 32]).unwrap().is_some());

    // A conversation record copied over a message block.
    let blocks = records(&store, b't');
    store
        .history
        .insert(&blocks[0].0, convs[0].1.clone())
        .unwrap();
    assert!(matches!(
        h.get(&x.reference()),
        Err(Error::Decrypt {
            tree: "history",
            ..
        })
    ));
}

#[test]
fn oversized_record_on_disk_is_rejected_before_decrypting() {
    let (_dir, store) = fresh();
    let h = store.history();
    let x = msg(1, 1, 2, 10, b"x");
    h.append(&x, Direction::Incoming).unwrap();
    let blocks = records(&store, b't');
    store
        .history
        .insert(&blocks[0].0, vec![0u8; 1 << 20])
        .unwrap();
    assert!(matches!(
        h.get(&x.reference()),
        Err(Error::TooLarge { tree: "history", len, .. }) if len == 1 << 20
    ));
}

fn files_contain(dir: &Path, needle: &[u8]) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    let mut files = 0;
    let mut found = false;
    while let Some(p) = stack.pop() {
        for entry in std::fs::read_dir(&p).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files += 1;
                let bytes = std::fs::read(&path).unwrap();
                found |= bytes.windows(needle.len()).any(|w| w == needle);
            }
        }
    }
    assert!(files > 0, "no files under {}", dir.display());
    found
}

#[test]
fn no_plaintext_on_disk_after_flush() {
    let body = b"canary-body-7f3a9c1e-never-on-disk-in-the-clear";
    let title = b"canary-title-51d0e2b8-secret-group";
    let control = b"control-plaintext-0b6e4d2a-meant-to-be-found";
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), &data_key(1)).unwrap();
        let h = store.history();
        for i in 0..20u8 {
            h.append(&msg(1, u64::from(i), 2, i, body), Direction::Incoming)
                .unwrap();
        }
        h.upsert_conversation(&[1; 32], std::str::from_utf8(title).unwrap(), None)
            .unwrap();
        // Control: a raw plaintext value, to show the scan sees written data.
        store
            .db
            .open_tree("control")
            .unwrap()
            .insert("k", &control[..])
            .unwrap();
        store.flush().unwrap();
        assert!(files_contain(dir.path(), control));
        assert!(!files_contain(dir.path(), body));
        assert!(!files_contain(dir.path(), title));
    }
    // And after close.
    assert!(!files_contain(dir.path(), body));
    assert!(!files_contain(dir.path(), title));
}
