use super::*;

fn ids(seed: u64) -> (DeviceIdentity, DeviceIdentity, DeviceIdentity) {
    let mut r = rng(seed);
    (
        DeviceIdentity::generate(&mut r),
        DeviceIdentity::generate(&mut r),
        DeviceIdentity::generate(&mut r),
    )
}

#[test]
fn seal_and_open_authenticates_the_sender() {
    let (alice, bob, _) = ids(30);
    let mut r = rng(31);
    let content = SealedContent::new(ContentKind::Ratchet, b"ratchet bytes".to_vec());
    let sealed = seal(
        &alice,
        &bob.public().dh,
        &content,
        &mut SealCache::default(),
        &mut r,
    )
    .unwrap();
    let opened = open(&bob, &sealed, &mut SealCache::default()).unwrap();
    assert_eq!(opened.sender, *alice.public());
    assert_eq!(opened.content, content);
    // With a warm cache on both sides the result is the same.
    let mut ca = SealCache::default();
    let mut cb = SealCache::default();
    for i in 0..3 {
        let c = SealedContent::new(ContentKind::Prekey, vec![i; 100]);
        let s = seal(&alice, &bob.public().dh, &c, &mut ca, &mut r).unwrap();
        assert_eq!(open(&bob, &s, &mut cb).unwrap().content, c);
    }
}

#[test]
fn a_forged_inner_sender_is_detected() {
    let (alice, bob, mallory) = ids(32);
    let mut r = rng(33);
    // Mallory builds a seal whose certificate names Alice, but she can only
    // compute the static layer with her own key.
    let fake = DeviceIdentity::forged_for_tests(&mallory, alice.public().clone());
    let content = SealedContent::new(ContentKind::Ratchet, b"evil".to_vec());
    let forged = seal(
        &fake,
        &bob.public().dh,
        &content,
        &mut SealCache::default(),
        &mut r,
    )
    .unwrap();
    let mut cache = SealCache::default();
    assert_eq!(
        open(&bob, &forged, &mut cache).unwrap_err(),
        Error::ForgedSender
    );
    // A forgery does not enter the cache; the real sender does, and with
    // Alice cached the forgery still fails.
    assert_eq!(format!("{cache:?}"), "SealCache(0 peers)");
    let real = seal(
        &alice,
        &bob.public().dh,
        &content,
        &mut SealCache::default(),
        &mut r,
    )
    .unwrap();
    assert_eq!(
        open(&bob, &real, &mut cache).unwrap().sender,
        *alice.public()
    );
    assert_eq!(format!("{cache:?}"), "SealCache(1 peers)");
    assert_eq!(
        open(&bob, &forged, &mut cache).unwrap_err(),
        Error::ForgedSender
    );
    assert_eq!(
        open(&bob, &real, &mut cache).unwrap().sender,
        *alice.public()
    );
    // A certificate whose identity binding is broken is rejected as well.
    let mut bad_public = alice.public().clone();
    bad_public.dh = mallory.public().dh;
    let fake = DeviceIdentity::forged_for_tests(&mallory, bad_public);
    let sealed = seal(
        &fake,
        &bob.public().dh,
        &SealedContent::new(ContentKind::Ratchet, vec![]),
        &mut SealCache::default(),
        &mut r,
    )
    .unwrap();
    assert!(matches!(
        open(&bob, &sealed, &mut SealCache::default()),
        Err(Error::BadSignature { .. })
    ));
}

#[test]
fn only_the_recipient_opens_and_every_bit_matters() {
    let (alice, bob, carol) = ids(34);
    let mut r = rng(35);
    let sealed = seal(
        &alice,
        &bob.public().dh,
        &SealedContent::new(ContentKind::Ratchet, b"x".to_vec()),
        &mut SealCache::default(),
        &mut r,
    )
    .unwrap();
    assert!(open(&carol, &sealed, &mut SealCache::default()).is_err());
    // Flip a sample of bits everywhere (every bit of the header part).
    for i in (0..sealed.len() * 8).filter(|i| *i < 400 * 8 || i % 61 == 0) {
        let mut s = sealed.clone();
        s[i / 8] ^= 1 << (i % 8);
        assert!(
            open(&bob, &s, &mut SealCache::default()).is_err(),
            "bit {i}"
        );
    }
}

#[test]
fn padding_hides_lengths_in_buckets() {
    assert_eq!(pad(b"").unwrap().len(), 256);
    assert_eq!(pad(&[1; 255]).unwrap().len(), 256);
    assert_eq!(pad(&[1; 256]).unwrap().len(), 512);
    assert_eq!(pad(&[0; 1000]).unwrap().len(), 1024);
    assert!(pad(&vec![0; limits::MAX_BUCKET]).is_err());
    for len in [0usize, 1, 200, 255, 256, 4000] {
        let content: Vec<u8> = (0..len).map(|i| (i % 7) as u8).collect();
        assert_eq!(unpad(&pad(&content).unwrap()).unwrap(), &content[..]);
    }
    assert_eq!(unpad(&[0; 256]), Err(Error::BadPadding));
    assert_eq!(unpad(&[1, 2, 3, 0]), Err(Error::BadPadding));
    // Sealed sizes for 200-byte and 10-byte messages are the same.
    let (alice, bob, _) = ids(36);
    let mut r = rng(37);
    let a = seal(
        &alice,
        &bob.public().dh,
        &SealedContent::new(ContentKind::Ratchet, vec![0; 10]),
        &mut SealCache::default(),
        &mut r,
    )
    .unwrap();
    let b = seal(
        &alice,
        &bob.public().dh,
        &SealedContent::new(ContentKind::Ratchet, vec![0; 200]),
        &mut SealCache::default(),
        &mut r,
    )
    .unwrap();
    assert_eq!(a.len(), b.len());
}

#[test]
fn envelope_decoder_bounds() {
    let env = Envelope::new([1; 32], [2; 16], 99, vec![3; 100]);
    let bytes = env.to_bytes();
    assert_eq!(Envelope::from_bytes(&bytes).unwrap(), env);
    let mut t = bytes.clone();
    t.push(0);
    assert!(matches!(
        Envelope::from_bytes(&t),
        Err(Error::TrailingBytes { .. })
    ));
    let mut v = bytes.clone();
    v[0] = 9;
    assert!(matches!(
        Envelope::from_bytes(&v),
        Err(Error::UnknownVersion { got: 9, .. })
    ));
    assert!(matches!(
        Envelope::from_bytes(&vec![1; limits::MAX_ENVELOPE + 1]),
        Err(Error::TooLarge { .. })
    ));
    // A length prefix claiming 4 GiB of sealed bytes in a short frame.
    let mut huge = vec![1u8];
    huge.extend_from_slice(&[0; 32 + 16]);
    huge.push(1);
    huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert!(matches!(
        Envelope::from_bytes(&huge),
        Err(Error::Malformed { .. })
    ));
    for cut in 0..bytes.len() {
        assert!(Envelope::from_bytes(&bytes[..cut]).is_err());
    }
    let (_, bob, _) = ids(38);
    assert!(open(&bob, &[1; 20], &mut SealCache::default()).is_err());
    assert!(open(&bob, &[], &mut SealCache::default()).is_err());
    let mut s = vec![2u8; 200];
    assert!(matches!(
        open(&bob, &s, &mut SealCache::default()),
        Err(Error::UnknownVersion { .. })
    ));
    s[0] = 1;
    s[33] = 0xff;
    assert!(matches!(
        open(&bob, &s, &mut SealCache::default()),
        Err(Error::Malformed { .. })
    ));
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let mut r = rng(39);
    let id = DeviceIdentity::generate(&mut r);
    let secret_bytes = id.to_secret_bytes();
    let pre = PrekeyStore::new(&id, 0, &mut r);
    let Pair { alice, .. } = pair(39);
    let sk = SenderKey::new([1; 32], 0, &mut r);
    let dist = sk.distribution();
    let (ks, key) = Keystore::create(b"pw", KdfParams::INSECURE_FAST, &mut r).unwrap();
    let mk = MailboxKey::generate(&mut r);
    let x = X3dhOutput {
        shared_secret: Secret32::new([0xAB; 32]),
        associated_data: [0; 64],
    };
    let dumps = [
        format!("{id:?}"),
        format!("{pre:?}"),
        format!("{alice:?}"),
        format!("{sk:?}"),
        format!("{dist:?}"),
        format!("{key:?}"),
        format!("{mk:?}"),
        format!("{x:?}"),
        format!("{:?}", Secret32::new([0xAB; 32])),
        format!("{:?}", MessageKey::new([0xAB; 32])),
        format!("{ks:?}"),
    ];
    let alice_state = alice.to_bytes();
    let secrets: Vec<Vec<u8>> = vec![
        secret_bytes[1..33].to_vec(),
        secret_bytes[33..65].to_vec(),
        vec![0xAB; 32],
        mk.seed().expose().to_vec(),
        alice_state[65..97].to_vec(),
    ];
    for d in &dumps {
        for s in &secrets {
            for form in [::hex::encode(s), format!("{:?}", s), ::hex::encode(&s[..8])] {
                assert!(!d.contains(&form), "secret leaked in {d}");
            }
        }
        assert!(!d.contains("171, 171"), "secret bytes in {d}");
    }
}

#[test]
fn the_largest_message_fits_every_envelope_form() {
    let (alice, bob, _) = ids(40);
    let mut r = rng(41);
    let Pair { alice: mut a, .. } = pair(41);
    let pt = vec![0x5a; limits::MAX_PLAINTEXT];
    let m = a.encrypt(&pt).unwrap().to_bytes();
    let initial = InitialMessage {
        ephemeral: [1; 32],
        signed_prekey_id: u32::MAX,
        one_time_prekey_id: Some(u32::MAX),
    };
    let mut sk = SenderKey::new([1; 32], 0, &mut r);
    let bodies = [
        (ContentKind::Ratchet, m.clone()),
        (
            ContentKind::Prekey,
            PrekeyMessage::new(initial, m).to_bytes(),
        ),
        (
            ContentKind::SenderKey,
            sk.encrypt(&[0x01; 32], &pt).unwrap().to_bytes(),
        ),
    ];
    for (kind, body) in bodies {
        let sealed = seal(
            &alice,
            &bob.public().dh,
            &SealedContent::new(kind, body.clone()),
            &mut SealCache::default(),
            &mut r,
        )
        .unwrap();
        let env = Envelope::new([0; 32], [0; 16], u64::MAX, sealed);
        let env = Envelope::from_bytes(&env.to_bytes()).unwrap();
        assert_eq!(
            open(&bob, &env.sealed, &mut SealCache::default())
                .unwrap()
                .content
                .body,
            body
        );
    }
}

#[test]
fn non_canonical_encodings_are_rejected() {
    // expires_at = 3 encoded as the over-long varint 0x83 0x00.
    let env = Envelope::new([1; 32], [2; 16], 3, vec![9]);
    let good = env.to_bytes();
    let mut long = good[..49].to_vec();
    long.extend_from_slice(&[0x83, 0x00]);
    long.extend_from_slice(&good[50..]);
    assert!(matches!(
        Envelope::from_bytes(&long),
        Err(Error::Malformed { .. })
    ));
    assert_eq!(Envelope::from_bytes(&good).unwrap(), env);
}
