use super::*;

/// The identity key of the member whose sender key the tests use.
const OWNER: [u8; 32] = [0xa1; 32];

#[test]
fn members_read_each_message_once_in_any_order() {
    let mut r = rng(20);
    let gid = [3; 32];
    let mut alice = SenderKey::new(gid, 0, &mut r);
    let dist = SenderKeyDistribution::from_bytes(&alice.distribution().to_bytes()).unwrap();
    let mut bob = SenderKeyReceiver::from_distribution(&dist);
    let msgs: Vec<_> = (0..10)
        .map(|i| alice.encrypt(&OWNER, format!("g{i}").as_bytes()).unwrap())
        .collect();
    for i in [5, 0, 9, 1, 2, 3, 4, 8, 7, 6] {
        let m = SenderKeyMessage::from_bytes(&msgs[i].to_bytes()).unwrap();
        assert_eq!(
            bob.decrypt(&OWNER, &m).unwrap(),
            format!("g{i}").into_bytes()
        );
        assert!(matches!(
            bob.decrypt(&OWNER, &m),
            Err(Error::Duplicate { .. })
        ));
    }
    // Saved and reloaded, still no replay.
    let mut bob = SenderKeyReceiver::from_bytes(&bob.to_bytes()).unwrap();
    assert!(bob.decrypt(&OWNER, &msgs[4]).is_err());
    let mut alice = SenderKey::from_bytes(&alice.to_bytes()).unwrap();
    let next = alice.encrypt(&OWNER, b"next").unwrap();
    assert_eq!(next.iteration, 10);
    assert_eq!(bob.decrypt(&OWNER, &next).unwrap(), b"next");
}

#[test]
fn removed_member_cannot_read_after_rotation() {
    let mut r = rng(21);
    let gid = [4; 32];
    let mut alice = SenderKey::new(gid, 0, &mut r);
    let mut bob = SenderKeyReceiver::from_distribution(&alice.distribution());
    let mut carol = SenderKeyReceiver::from_distribution(&alice.distribution());
    let before = alice.encrypt(&OWNER, b"before").unwrap();
    assert_eq!(carol.decrypt(&OWNER, &before).unwrap(), b"before");
    assert_eq!(bob.decrypt(&OWNER, &before).unwrap(), b"before");
    // Carol is removed: Alice rotates and distributes only to Bob.
    let mut alice = alice.rotate(10, &mut r);
    let mut bob_new = SenderKeyReceiver::from_distribution(&alice.distribution());
    let after = alice.encrypt(&OWNER, b"after").unwrap();
    assert!(matches!(
        carol.decrypt(&OWNER, &after),
        Err(Error::UnknownSenderKey { .. })
    ));
    // Even forcing Carol's old state onto the new key id fails: the chain
    // and signing key are new and unrelated.
    let mut forced = after.clone();
    forced.key_id = carol.key_id();
    assert!(carol.decrypt(&OWNER, &forced).is_err());
    assert_eq!(bob_new.decrypt(&OWNER, &after).unwrap(), b"after");
    assert!(bob.decrypt(&OWNER, &after).is_err());
}

#[test]
fn forged_or_altered_group_messages_are_rejected() {
    let mut r = rng(22);
    let gid = [5; 32];
    let mut alice = SenderKey::new(gid, 0, &mut r);
    let mut bob = SenderKeyReceiver::from_distribution(&alice.distribution());
    let m = alice.encrypt(&OWNER, b"signed").unwrap();
    let bytes = m.to_bytes();
    for i in 0..bytes.len() * 8 {
        let mut b = bytes.clone();
        b[i / 8] ^= 1 << (i % 8);
        if let Ok(bad) = SenderKeyMessage::from_bytes(&b) {
            assert!(bob.decrypt(&OWNER, &bad).is_err(), "bit {i} accepted");
        }
    }
    // A member who knows the chain key but not the signing key cannot
    // impersonate Alice.
    let mut mallory = alice.clone();
    mallory.signing = Secret32::random(&mut r);
    let forged = mallory.encrypt(&OWNER, b"forged").unwrap();
    assert!(matches!(
        bob.decrypt(&OWNER, &forged),
        Err(Error::BadSignature { .. })
    ));
    assert_eq!(bob.decrypt(&OWNER, &m).unwrap(), b"signed");
    // A member that passed Alice's distribution off as its own: Alice's
    // messages do not verify as that member's.
    let mut stolen = SenderKeyReceiver::from_distribution(&alice.distribution());
    let next = alice.encrypt(&OWNER, b"alice's").unwrap();
    assert!(matches!(
        stolen.decrypt(&[0xb2; 32], &next),
        Err(Error::BadSignature { .. })
    ));
    assert_eq!(stolen.decrypt(&OWNER, &next).unwrap(), b"alice's");
    // Wrong group, huge iteration.
    let mut other =
        SenderKeyReceiver::from_distribution(&SenderKey::new([6; 32], 0, &mut r).distribution());
    assert!(other.decrypt(&OWNER, &m).is_err());
    let mut far = alice.clone();
    far.iteration = 5000;
    let far_msg = far.encrypt(&OWNER, b"far").unwrap();
    assert!(matches!(
        bob.decrypt(&OWNER, &far_msg),
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
    // Version 1 signed no owner: refused, not misread.
    for version in [1, 3] {
        let mut m = vec![2u8; 200];
        m[0] = version;
        assert!(matches!(
            SenderKeyMessage::from_bytes(&m),
            Err(Error::UnknownVersion { .. })
        ));
    }
    assert!(SenderKeyDistribution::from_bytes(&[1, 2, 3]).is_err());
}
