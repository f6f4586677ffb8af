use super::{data_key, fresh};
use crate::crypto::{DeviceIdentity, Session};
use crate::store::{Kind, Store};

#[test]
fn records_round_trip_per_kind_and_stay_apart() {
    let (_dir, store) = fresh();
    for kind in Kind::ALL {
        let r = store.records(kind).unwrap();
        r.put(b"alice", format!("{kind:?}").as_bytes()).unwrap();
    }
    for kind in Kind::ALL {
        let r = store.records(kind).unwrap();
        assert_eq!(
            r.get(b"alice").unwrap().unwrap(),
            format!("{kind:?}").into_bytes()
        );
        assert!(r.get(b"bob").unwrap().is_none());
    }
    let contacts = store.records(Kind::Contacts).unwrap();
    contacts.put(b"group1/a", b"1").unwrap();
    contacts.put(b"group1/b", b"2").unwrap();
    contacts.put(b"group2/a", b"3").unwrap();
    let scanned = contacts.scan(b"group1/").unwrap();
    assert_eq!(
        scanned,
        vec![
            (b"group1/a".to_vec(), b"1".to_vec()),
            (b"group1/b".to_vec(), b"2".to_vec())
        ]
    );
    assert!(contacts.remove(b"group1/a").unwrap());
    assert!(!contacts.remove(b"group1/a").unwrap());
    assert!(contacts.put(b"", b"x").is_err());
    assert!(contacts.put(&[1; 200], b"x").is_err());
    assert!(
        store
            .records(Kind::Identity)
            .unwrap()
            .put(b"me", &vec![0; 10_000])
            .is_err()
    );
}

#[test]
fn a_ratchet_session_and_identity_survive_a_restart() {
    use rand::SeedableRng;
    let dir = tempfile::tempdir().unwrap();
    let key = data_key(1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let id = DeviceIdentity::generate(&mut rng);
    let x = crate::crypto::X3dhOutput {
        shared_secret: crate::crypto::Secret32::new([3; 32]),
        associated_data: [4; 64],
    };
    let bob_ratchet = DeviceIdentity::generate(&mut rng).public().dh;
    let mut alice = Session::initiator(&x, bob_ratchet, None, &mut rng).unwrap();
    let sent = alice.encrypt(b"before restart").unwrap();
    {
        let store = Store::open(dir.path(), &key).unwrap();
        store
            .records(Kind::Sessions)
            .unwrap()
            .put(b"bob", &alice.to_bytes())
            .unwrap();
        store
            .records(Kind::Identity)
            .unwrap()
            .put(b"device", &id.to_secret_bytes())
            .unwrap();
        store.flush().unwrap();
    }
    let store = Store::open(dir.path(), &key).unwrap();
    let bytes = store
        .records(Kind::Sessions)
        .unwrap()
        .get(b"bob")
        .unwrap()
        .unwrap();
    let mut again = Session::from_bytes(&bytes).unwrap();
    let next = again.encrypt(b"after restart").unwrap();
    // The saved sending chain is reserved ahead of the live one.
    assert_eq!(sent.header.n, 0);
    assert_eq!(
        next.header.n,
        crate::crypto::limits::SEND_RESERVE,
        "no message number reused"
    );
    let stored = store
        .records(Kind::Identity)
        .unwrap()
        .get(b"device")
        .unwrap()
        .unwrap();
    assert_eq!(
        DeviceIdentity::from_secret_bytes(&stored).unwrap().public(),
        id.public()
    );
}
