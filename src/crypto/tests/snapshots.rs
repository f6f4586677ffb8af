//! Byte-exact snapshots of every wire type. A change here is a protocol
//! change: bump the version byte and update docs/protocol.md.

use sha2::{Digest, Sha256};

use super::*;

fn fixed_identity(n: u8) -> DeviceIdentity {
    DeviceIdentity::from_secrets(&Secret32::new([n; 32]), &Secret32::new([n + 1; 32]))
}

#[track_caller]
fn pin(name: &str, bytes: &[u8], want: &str) {
    let got = if bytes.len() <= 96 {
        ::hex::encode(bytes)
    } else {
        format!(
            "{} bytes sha256={}",
            bytes.len(),
            ::hex::encode(Sha256::digest(bytes))
        )
    };
    assert_eq!(got, want, "snapshot {name} changed");
}

#[test]
fn envelope_bytes() {
    let env = Envelope::new(
        [0x11; 32],
        [0x22; 16],
        1_800_000_000,
        vec![0xAA, 0xBB, 0xCC],
    );
    pin(
        "envelope",
        &env.to_bytes(),
        "0111111111111111111111111111111111111111111111111111111111111111112222222222222222222222222222222280a4a7da0603aabbcc",
    );
}

#[test]
fn ratchet_message_bytes() {
    let m = RatchetMessage {
        header: Header {
            dh: [0x33; 32],
            pn: 7,
            n: 0x01020304,
        },
        ciphertext: vec![0x44; 16],
    };
    pin(
        "ratchet message",
        &m.to_bytes(),
        "013333333333333333333333333333333333333333333333333333333333333333000000070102030444444444444444444444444444444444",
    );
    assert_eq!(RatchetMessage::from_bytes(&m.to_bytes()).unwrap(), m);
}

#[test]
fn prekey_message_bytes() {
    let initial = InitialMessage {
        ephemeral: [0x55; 32],
        signed_prekey_id: 3,
        one_time_prekey_id: Some(300),
    };
    let m = PrekeyMessage::new(initial, vec![0x66; 4]);
    pin(
        "prekey message",
        &m.to_bytes(),
        "0155555555555555555555555555555555555555555555555555555555555555550301ac020466666666",
    );
    assert_eq!(PrekeyMessage::from_bytes(&m.to_bytes()).unwrap(), m);
}

#[test]
fn group_message_bytes() {
    let mut r = rng(50);
    let mut sk = SenderKey::new([0x77; 32], 0, &mut r);
    let m = sk.encrypt(&[0x01; 32], b"group").unwrap();
    pin(
        "group message",
        &m.to_bytes(),
        "126 bytes sha256=d5ca7d5ca8c79499fdb7a4fd1581462cbbb5ae7626e7fc78e52c62a66e034fc8",
    );
    pin(
        "sender key distribution",
        &sk.distribution().to_bytes(),
        "104 bytes sha256=cf42d851a3b7f36a2c6c0dfad3584352ec42abf2b741050751bab80a4a708ecd",
    );
}

#[test]
fn identity_and_bundle_bytes() {
    let id = fixed_identity(1);
    pin(
        "public identity",
        &id.public().to_bytes(),
        "129 bytes sha256=66b90efe0d462d2f063919f294524ffb2bf23f160c9e11db86ebd3be496966f9",
    );
    let mut r = rng(51);
    let mut pre = PrekeyStore::new(&id, 1_700_000_000, &mut r);
    pre.generate_one_time(&id, 2, 0, &mut r);
    let bundle = pre
        .bundle(
            &id,
            [0x88; 32],
            &["/ip4/127.0.0.1/tcp/4001".into()],
            1_700_000_000,
            true,
        )
        .unwrap();
    pin(
        "prekey bundle",
        &bundle.to_bytes(),
        "454 bytes sha256=946a95d5c304fa757e1643707686133625e62f8a711787f229630f2a91e5911d",
    );
    assert_eq!(
        PrekeyBundle::from_bytes(&bundle.to_bytes()).unwrap(),
        bundle
    );
}

#[test]
fn sealed_and_keystore_bytes() {
    let (alice, bob) = (fixed_identity(1), fixed_identity(3));
    let mut r = rng(52);
    let sealed = seal(
        &alice,
        &bob.public().dh,
        &SealedContent::new(ContentKind::Ratchet, b"hi".to_vec()),
        &mut SealCache::default(),
        &mut r,
    )
    .unwrap();
    pin(
        "sealed",
        &sealed,
        "453 bytes sha256=106a1471043a0837f7f6de6e010f24c63c5b043bd807071d4e8e1d77ce4ffb65",
    );
    let (ks, _) = Keystore::create(b"pw", KdfParams::INSECURE_FAST, &mut r).unwrap();
    pin(
        "keystore",
        &ks.to_bytes(),
        "01400101e2a4632ca3ad4e22aceefc0306957acef2957a6d49f1797b53e89b7d3b09c295fcd516682feeb72d300a4673700e3eaa381e99fabd668e08d49e6748bca3ca92ca772765cda95a15409b40ddee6f95b9332576b79871ec67f9",
    );
    pin(
        "mailbox id",
        &MailboxKey::from_seed(Secret32::new([9; 32])).id().0,
        "aff05b58b7af8f0a495d3bbe1d0241d97c3b7402ed8a427aba4aa0ab22960de7",
    );
}
