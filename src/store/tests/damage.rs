use super::{data_key, msg};
use crate::store::{Direction, Store};

/// Writes a small store and returns its directory.
fn written() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &data_key(1)).unwrap();
    let msgs: Vec<_> = (0..300u64)
        .map(|i| msg(1, i, 2, i as u8, &[7; 300]))
        .collect();
    store
        .history()
        .append_batch(&msgs, Direction::Incoming)
        .unwrap();
    store.flush().unwrap();
    dir
}

/// Everything a user can do with a store, collecting outcomes instead of
/// stopping at the first: whatever the damage, no call may panic.
fn exercise(path: &std::path::Path) -> Vec<String> {
    let mut outcomes = Vec::new();
    match Store::open(path, &data_key(1)) {
        Err(e) => outcomes.push(e.to_string()),
        Ok(store) => {
            let h = store.history();
            if let Err(e) = h.list_conversations() {
                outcomes.push(e.to_string());
            }
            let mut cursor = None;
            loop {
                match h.page(&[1; 32], cursor.as_ref(), 50) {
                    Err(e) => {
                        outcomes.push(e.to_string());
                        break;
                    }
                    Ok(p) => {
                        outcomes.push(format!("page of {}", p.messages.len()));
                        match p.next {
                            Some(c) => cursor = Some(c),
                            None => break,
                        }
                    }
                }
            }
        }
    }
    outcomes
}

#[test]
fn damaged_files_give_clear_errors_never_a_panic() {
    let names = ["db", "conf"];
    for name in names {
        for damage in ["truncate", "flip", "zero", "delete"] {
            let dir = written();
            let file = dir.path().join(name);
            let bytes = std::fs::read(&file).unwrap();
            match damage {
                "truncate" => std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap(),
                "flip" => {
                    let mut b = bytes.clone();
                    for i in (0..b.len()).step_by(97) {
                        b[i] ^= 0x5a;
                    }
                    std::fs::write(&file, b).unwrap();
                }
                "zero" => std::fs::write(&file, vec![0u8; bytes.len()]).unwrap(),
                _ => std::fs::remove_file(&file).unwrap(),
            }
            let outcome = std::panic::catch_unwind(|| exercise(dir.path()));
            let outcomes =
                outcome.unwrap_or_else(|_| panic!("{damage} of {name} made the store panic"));
            // Either the data is all there, or opening says clearly what is
            // wrong — never an empty store in its place.
            let pages: usize = outcomes.iter().filter(|e| e.starts_with("page of")).count();
            let failures: Vec<_> = outcomes
                .iter()
                .filter(|e| !e.starts_with("page of"))
                .collect();
            if failures.is_empty() {
                assert_eq!(
                    pages, 6,
                    "{damage} of {name}: data silently lost: {outcomes:?}"
                );
            } else {
                assert!(
                    failures
                        .iter()
                        .all(|e| e.contains(&dir.path().display().to_string())),
                    "{damage} of {name}: error does not name the store: {failures:?}"
                );
            }
        }
    }
}

/// One conversation record that no longer opens does not keep the store
/// from opening: the other conversations (and everything else) are there,
/// and the damaged one says what is wrong when it is read.
#[test]
fn one_damaged_conversation_record_does_not_keep_the_store_closed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), &data_key(1)).unwrap();
        for conv in [1u8, 2] {
            let msgs: Vec<_> = (0..3u64).map(|i| msg(conv, i, 2, i as u8, b"hi")).collect();
            store
                .history()
                .append_batch(&msgs, Direction::Incoming)
                .unwrap();
        }
        let mut key = vec![crate::store::keys::CONV_PREFIX];
        key.extend_from_slice(&[1; 32]);
        assert!(store.history.contains_key(&key).unwrap());
        store.history.insert(key, vec![0x5a; 60]).unwrap();
        store.flush().unwrap();
    }
    let store = Store::open(dir.path(), &data_key(1)).unwrap();
    let h = store.history();
    assert_eq!(h.page(&[2; 32], None, 10).unwrap().messages.len(), 3);
    assert!(h.conversation(&[1; 32]).is_err());
    // The list shows the others.
    let list = h.list_conversations().unwrap();
    assert_eq!(list.iter().map(|c| c.id).collect::<Vec<_>>(), vec![[2; 32]]);
}
