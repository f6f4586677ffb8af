use super::*;

#[test]
fn members_read_each_message_once_in_any_order() {
    let mut r = rng(20);
    let gid = [3; 32];
    let mut alice = SenderKey::new(gid, 0, &mut r);
    let dist = SenderKeyDistribution::from_bytes(&alice.distribution().to_bytes()).unwrap();
    let mut bob = SenderKeyReceiver::from_distribution(&dist);
    let msgs: Vec<_> = (0..10)
        .map(|i| alice.encrypt(format!("g{i}").as_bytes()).unwrap())
        .collect();
    for i in [5, 0, 9, 1, 2, 3, 4, 8, 7, 6] {
        let m = SenderKeyMessage::from_bytes(&msgs[i].to_bytes()).unwrap();
        assert_eq!(bob.decrypt(&m).unwrap(), format!("g{i}").into_bytes());
        assert!(matches!(bob.decrypt(&m), Err(Error::Duplicate { .. })));
    }
    // Saved and reloaded, still no replay.
    let mut bob = SenderKeyReceiver::from_bytes(&bob.to_bytes()).unwrap();
    assert!(bob.decrypt(&msgs[4]).is_err());
    let mut alice = SenderKey::from_bytes(&alice.to_bytes()).unwrap();
    let next = alice.encrypt(b"next").unwrap();
    assert_eq!(next.iteration, 10);
    assert_eq!(bob.decrypt(&next).unwrap(), b"next");
}

#[test]
fn removed_member_cannot_read_after_rotation() {
    let mut r = rng(21);
    let gid = [4; 32];
    let mut alice = SenderKey::new(gid, 0, &mut r);
    let mut bob = SenderKeyReceiver::from_distribution(&alice.distribution());
    let mut carol = SenderKeyReceiver::from_distribution(&alice.distribution());
    let before = alice.encrypt(b"before").unwrap();
    assert_eq!(carol.decrypt(&before).unwrap(), b"before");
    assert_eq!(bob.decrypt(&before).unwrap(), b"before");
    // Carol is removed: Alice rotates and distributes only to Bob.
    let mut alice = alice.rotate(10, &mut r);
    let mut bob_new = SenderKeyReceiver::from_distribution(&alice.distribution());
    let after = alice.encrypt(b"after").unwrap();
    assert!(matches!(
        carol.decrypt(&after),
        Err(Error::UnknownSenderKey { .. })
    ));
    // Even forcing Carol's old state onto the new key id fails: the chain
    // and signing key are new and unrelated.
    let mut forced = after.clone();
    forced.key_id = carol.key_id();
    assert!(carol.decrypt(&forced).is_err());
    assert_eq!(bob_new.decrypt(&after).unwrap(), b"after");
    assert!(bob.decrypt(&after).is_err());
}

#[test]
fn forged_or_altered_group_messages_are_rejected() {
    let mut r = rng(22);
    let gid = [5; 32];
    let mut alice = SenderKey::new(gid, 0, &mut r);
    let mut bob = SenderKeyReceiver::from_distribution(&alice.distribution());
    let m = alice.encrypt(b"signed").unwrap();
    let bytes = m.to_bytes();
    for i in 0..bytes.len() * 8 {
        let mut b = bytes.clone();
        b[i / 8] ^= 1 << (i % 8);
        if let Ok(bad) = SenderKeyMessage::from_bytes(&b) {
            assert!(bob.decrypt(&bad).is_err(), "bit {i} accepted");
        }
    }
    // A member who knows the chain key but not the signing key cannot
    // impersonate Alice.
    let mut mallory = alice.clone();
    mallory.signing = Secret32::random(&mut r);
    let forged = mallory.encrypt(b"forged").unwrap();
    assert!(matches!(
        bob.decrypt(&forged),
        Err(Error::BadSignature { .. })
    ));
    assert_eq!(bob.decrypt(&m).unwrap(), b"signed");
    // Wrong group, huge iteration.
    let mut other =
        SenderKeyReceiver::from_distribution(&SenderKey::new([6; 32], 0, &mut r).distribution());
    assert!(other.decrypt(&m).is_err());
    let mut far = alice.clone();
    far.iteration = 5000;
    let far_msg = far.encrypt(b"far").unwrap();
    assert!(matches!(
        bob.decrypt(&far_msg),
        Err(Error::GapTooBig { .. })
    ));
}

#[test]
fn group_decoders_bound_input() {
    assert!(matches!(
        SenderKeyMessage::from_bytes(&[1; 10]),
        Err(Error::Truncated { .. })
    ));
    assert!(matches!(
        SenderKeyMessage::from_bytes(&vec![1; 1 << 20]),
        Err(Error::TooLarge { .. })
    ));
    let mut m = vec![2u8; 200];
    m[0] = 2;
    assert!(matches!(
        SenderKeyMessage::from_bytes(&m),
        Err(Error::UnknownVersion { .. })
    ));
    assert!(SenderKeyDistribution::from_bytes(&[1, 2, 3]).is_err());
}
