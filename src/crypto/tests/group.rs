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

#[test]
fn a_rotation_is_a_later_generation_even_when_the_clock_goes_back() {
    let mut r = rng(24);
    let gid = [8; 32];
    let first = SenderKey::new(gid, 1_000, &mut r);
    assert_eq!(first.generation(), 1_000);
    let second = first.rotate(2_000, &mut r);
    assert_eq!(second.generation(), 2_000);
    let third = second.rotate(500, &mut r);
    assert_eq!(third.generation(), 2_001);
    // Carried by the distribution and the saved states.
    let dist = SenderKeyDistribution::from_bytes(&third.distribution().to_bytes()).unwrap();
    assert_eq!(dist.generation, 2_001);
    let recv = SenderKeyReceiver::from_distribution(&dist);
    assert_eq!(
        SenderKeyReceiver::from_bytes(&recv.to_bytes())
            .unwrap()
            .generation(),
        2_001
    );
    assert_eq!(
        SenderKey::from_bytes(&third.to_bytes())
            .unwrap()
            .generation(),
        2_001
    );
}

/// Version 1 encodings are version 2's without the generation, which is
/// their last field: still read, a distribution and a receiver at
/// generation 0, a sender key at its `created_at`.
#[test]
fn version_1_sender_keys_and_distributions_are_still_read() {
    let mut r = rng(25);
    let gid = [9; 32];
    // Generation 5 is one byte of postcard varint at the end.
    let mut alice = SenderKey::new(gid, 5, &mut r);
    let v1 = |bytes: &[u8]| -> Vec<u8> {
        assert_eq!(bytes[0], 2);
        assert_eq!(*bytes.last().unwrap(), 5);
        let mut b = bytes[..bytes.len() - 1].to_vec();
        b[0] = 1;
        b
    };
    let dist = SenderKeyDistribution::from_bytes(&v1(&alice.distribution().to_bytes())).unwrap();
    assert_eq!(dist.generation, 0);
    assert_eq!(dist.key_id, alice.key_id());
    let mut bob = SenderKeyReceiver::from_distribution(&dist);
    let m = alice.encrypt(&OWNER, b"old format").unwrap();
    let mut saved = v1(&SenderKey::from_bytes(&alice.to_bytes()).unwrap().to_bytes());
    let mut alice = SenderKey::from_bytes(&saved).unwrap();
    assert_eq!(alice.generation(), 5);
    assert_eq!(bob.decrypt(&OWNER, &m).unwrap(), b"old format");
    let receiver = bob.to_bytes();
    let mut old = receiver[..receiver.len() - 1].to_vec();
    old[0] = 1;
    let mut bob = SenderKeyReceiver::from_bytes(&old).unwrap();
    assert_eq!(bob.generation(), 0);
    let m = alice.encrypt(&OWNER, b"after").unwrap();
    assert_eq!(bob.decrypt(&OWNER, &m).unwrap(), b"after");
    // An unknown version is refused.
    saved[0] = 3;
    assert!(matches!(
        SenderKey::from_bytes(&saved),
        Err(Error::UnknownVersion { .. })
    ));
}
