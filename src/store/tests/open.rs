//! Opening: creation, reopening, wrong key, schema version.

use super::{data_key, msg, raw_sled};
use crate::store::{Direction, Error, SCHEMA_VERSION, Store};

#[test]
fn reopen_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let key = data_key(1);
    {
        let store = Store::open(dir.path(), &key).unwrap();
        let h = store.history();
        h.append(&msg(1, 1, 2, 3, b"hello"), Direction::Incoming)
            .unwrap();
        h.upsert_conversation(&[1; 32], "friends", Some(3600))
            .unwrap();
        store.flush().unwrap();
    }
    let store = Store::open(dir.path(), &key).unwrap();
    let h = store.history();
    let got = h.get(&msg(1, 1, 2, 3, b"").reference()).unwrap().unwrap();
    assert_eq!(got, msg(1, 1, 2, 3, b"hello"));
    let convs = h.list_conversations().unwrap();
    assert_eq!(convs.len(), 1);
    assert_eq!(convs[0].title, "friends");
    assert_eq!(convs[0].unread, 1);
    assert_eq!(convs[0].retention, Some(3600));
}

#[test]
fn wrong_key_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), &data_key(1)).unwrap();
        store
            .history()
            .append(&msg(1, 1, 2, 3, b"hello"), Direction::Outgoing)
            .unwrap();
        store.flush().unwrap();
    }
    let err = Store::open(dir.path(), &data_key(2)).unwrap_err();
    match &err {
        Error::WrongKey { path } => assert_eq!(path, dir.path()),
        other => panic!("expected WrongKey, got {other:?}"),
    }
    assert!(err.to_string().contains(&dir.path().display().to_string()));
    // The right key still opens it.
    let store = Store::open(dir.path(), &data_key(1)).unwrap();
    assert!(
        store
            .history()
            .get(&msg(1, 1, 2, 3, b"").reference())
            .unwrap()
            .is_some()
    );
}

#[test]
fn unknown_schema_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let key = data_key(1);
    drop(Store::open(dir.path(), &key).unwrap());
    {
        let db = raw_sled(dir.path());
        let meta = db.open_tree("meta").unwrap();
        meta.insert("schema_version", &(SCHEMA_VERSION + 1).to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let err = Store::open(dir.path(), &key).unwrap_err();
    assert!(
        matches!(&err, Error::UnknownSchema { found, supported, .. }
            if *found == SCHEMA_VERSION + 1 && *supported == SCHEMA_VERSION),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains(&dir.path().display().to_string()), "{text}");
    assert!(text.contains("move the directory aside"), "{text}");
}

#[test]
fn damaged_meta_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let key = data_key(1);
    drop(Store::open(dir.path(), &key).unwrap());
    {
        let db = raw_sled(dir.path());
        db.open_tree("meta").unwrap().remove("key_check").unwrap();
        db.flush().unwrap();
    }
    assert!(matches!(
        Store::open(dir.path(), &key),
        Err(Error::CorruptMeta { .. })
    ));
}

#[test]
fn second_open_of_a_locked_store_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let key = data_key(1);
    let _first = Store::open(dir.path(), &key).unwrap();
    match Store::open(dir.path(), &key) {
        Err(Error::Open { path, .. }) => assert_eq!(path, dir.path()),
        other => panic!("expected Open error, got {other:?}"),
    }
}
