use super::*;
use crate::crypto::limits::{RECORD_NONCE_ROOM, RECORD_OVERHEAD};

#[test]
fn unlock_with_right_passphrase_and_clear_error_with_wrong_one() {
    let mut r = rng(40);
    let (ks, key) = Keystore::create(b"correct horse", KdfParams::INSECURE_FAST, &mut r).unwrap();
    let ks = Keystore::from_bytes(&ks.to_bytes()).unwrap();
    let sealed = key.seal_record(b"messages/k1", b"hello", &mut r);
    let again = ks.unlock(b"correct horse").unwrap();
    assert_eq!(
        again.open_record(b"messages/k1", &sealed).unwrap(),
        b"hello"
    );
    let err = ks.unlock(b"battery staple").unwrap_err();
    assert_eq!(err, Error::WrongPassphrase);
    assert!(err.to_string().contains("wrong passphrase"));
    // Changing the passphrase keeps the same database key.
    let ks2 = ks
        .change_passphrase(b"correct horse", b"new", KdfParams::INSECURE_FAST, &mut r)
        .unwrap();
    assert!(ks2.unlock(b"correct horse").is_err());
    assert_eq!(
        ks2.unlock(b"new")
            .unwrap()
            .open_record(b"messages/k1", &sealed)
            .unwrap(),
        b"hello"
    );
}

#[test]
fn records_are_bound_to_their_place() {
    let mut r = rng(41);
    let (_, key) = Keystore::create(b"pw", KdfParams::INSECURE_FAST, &mut r).unwrap();
    let sealed = key.seal_record(b"messages/k1", b"hello", &mut r);
    assert!(
        key.open_record(b"messages/k2", &sealed).is_err(),
        "moved record must fail"
    );
    assert!(
        key.open_record(b"contacts/k1", &sealed).is_err(),
        "swapped tree must fail"
    );
    let mut flipped = sealed.clone();
    flipped[30] ^= 1;
    assert!(key.open_record(b"messages/k1", &flipped).is_err());
    assert!(key.open_record(b"messages/k1", &sealed[..10]).is_err());
    let (_, other) = Keystore::create(b"pw", KdfParams::INSECURE_FAST, &mut r).unwrap();
    assert!(other.open_record(b"messages/k1", &sealed).is_err());
    assert!(!sealed.windows(5).any(|w| w == b"hello"));
}

#[test]
fn a_record_sealed_in_place_opens_like_any_other() {
    let mut r = rng(43);
    let (_, key) = Keystore::create(b"pw", KdfParams::INSECURE_FAST, &mut r).unwrap();
    let plaintext = b"a record sealed where it lies".repeat(20);
    let mut record = vec![0xee; RECORD_NONCE_ROOM];
    record.extend_from_slice(&plaintext);
    key.seal_record_in_place(b"spool\0k", &mut record, &mut r);
    assert_eq!(record.len(), plaintext.len() + RECORD_OVERHEAD);
    assert_eq!(key.open_record(b"spool\0k", &record).unwrap(), plaintext);
    assert!(key.open_record(b"spool\0j", &record).is_err());
    assert!(!record.windows(8).any(|w| w == &plaintext[..8]));
    // The same plaintext sealed by copy opens the same, under its own nonce.
    let copied = key.seal_record(b"spool\0k", &plaintext, &mut r);
    assert_eq!(key.open_record(b"spool\0k", &copied).unwrap(), plaintext);
    assert_ne!(copied[..RECORD_NONCE_ROOM], record[..RECORD_NONCE_ROOM]);
    // No room for the nonce: nothing is sealed, nothing is left.
    let mut short = vec![1u8; RECORD_NONCE_ROOM - 1];
    key.seal_record_in_place(b"spool\0k", &mut short, &mut r);
    assert!(short.is_empty());
}

#[test]
fn hostile_keystore_files_are_rejected_before_any_work() {
    let mut r = rng(42);
    let (ks, _) = Keystore::create(b"pw", KdfParams::INSECURE_FAST, &mut r).unwrap();
    // Parameters demanding 4 TiB of memory would be a denial of service.
    let mut evil = ks.clone();
    evil.params.m_cost_kib = u32::MAX;
    assert!(matches!(
        Keystore::from_bytes(&evil.to_bytes()),
        Err(Error::KdfParams(_))
    ));
    // Just over the 1 GiB cap: refused too.
    let mut evil = ks.clone();
    evil.params.m_cost_kib = KdfParams::MAX_M_COST_KIB + 1;
    assert!(matches!(
        Keystore::from_bytes(&evil.to_bytes()),
        Err(Error::KdfParams(_))
    ));
    assert_eq!(KdfParams::MAX_M_COST_KIB, 1024 * 1024);
    let mut evil = ks.clone();
    evil.params.t_cost = 1_000_000;
    assert!(matches!(
        Keystore::from_bytes(&evil.to_bytes()),
        Err(Error::KdfParams(_))
    ));
    let bytes = ks.to_bytes();
    let mut v = bytes.clone();
    v[0] = 7;
    assert!(matches!(
        Keystore::from_bytes(&v),
        Err(Error::UnknownVersion { got: 7, .. })
    ));
    let mut t = bytes.clone();
    t.push(0);
    assert!(matches!(
        Keystore::from_bytes(&t),
        Err(Error::TrailingBytes { .. })
    ));
    for cut in 0..bytes.len() {
        assert!(Keystore::from_bytes(&bytes[..cut]).is_err());
    }
    // Lowering the stored cost is detected (parameters are bound as AD).
    let (ks, _) = Keystore::create(
        b"pw",
        KdfParams {
            m_cost_kib: 128,
            t_cost: 2,
            p_cost: 1,
        },
        &mut r,
    )
    .unwrap();
    let mut weaker = ks.clone();
    weaker.params.t_cost = 1;
    assert_eq!(weaker.unlock(b"pw").unwrap_err(), Error::WrongPassphrase);
}
