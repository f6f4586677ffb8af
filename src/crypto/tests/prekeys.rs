use super::*;
use crate::crypto::limits::{SIGNED_PREKEY_GRACE_SECS, SIGNED_PREKEY_ROTATION_SECS};

const DAY: u64 = 86_400;

#[test]
fn signed_prekey_rotates_and_old_one_answers_during_grace() {
    let mut r = rng(60);
    let id = DeviceIdentity::generate(&mut r);
    let t0 = 1_000_000;
    let mut pre = PrekeyStore::new(&id, t0, &mut r);
    let first = pre.current().unwrap().id;
    assert!(!pre.rotate_if_due(&id, t0 + DAY, &mut r));
    let t1 = t0 + SIGNED_PREKEY_ROTATION_SECS;
    assert!(pre.rotate_if_due(&id, t1, &mut r));
    let second = pre.current().unwrap().id;
    assert_ne!(first, second);
    // Within grace the old key still serves set-ups from old bundles.
    assert!(pre.signed(first).is_ok());
    assert!(!pre.rotate_if_due(&id, t1 + DAY, &mut r));
    assert!(pre.signed(first).is_ok());
    // After grace it is gone.
    pre.rotate_if_due(&id, t1 + SIGNED_PREKEY_GRACE_SECS, &mut r);
    assert!(matches!(
        pre.signed(first),
        Err(Error::UnknownPrekey { kind: "signed", .. })
    ));
    assert!(pre.signed(second).is_ok());
    // Saved and reloaded.
    let again = PrekeyStore::from_bytes(&pre.to_bytes()).unwrap();
    assert_eq!(again.current().unwrap().id, pre.current().unwrap().id);
}

#[test]
fn one_time_prekeys_are_used_once_and_bounded() {
    let mut r = rng(61);
    let alice = DeviceIdentity::generate(&mut r);
    let bob = DeviceIdentity::generate(&mut r);
    let mut pre = PrekeyStore::new(&bob, 0, &mut r);
    let made = pre.generate_one_time(&bob, 10_000, 0, &mut r);
    assert_eq!(made.len(), limits::MAX_ONE_TIME_PREKEYS);
    assert_eq!(pre.one_time_count(), limits::MAX_ONE_TIME_PREKEYS);
    let bundle = pre
        .bundle(&bob, [0; 32], &[], 0, true)
        .unwrap()
        .verify()
        .unwrap();
    let (_, initial, _) = initiate(&alice, &bundle, &mut r).unwrap();
    let opk = initial.one_time_prekey_id.unwrap();
    assert!(respond(&bob, &pre, alice.public(), &initial).is_ok());
    pre.take_one_time(opk).unwrap();
    assert!(matches!(
        respond(&bob, &pre, alice.public(), &initial),
        Err(Error::UnknownPrekey {
            kind: "one-time",
            ..
        })
    ));
    assert!(pre.take_one_time(opk).is_err());
}

#[test]
fn bundles_are_signed_end_to_end() {
    let mut r = rng(62);
    let bob = DeviceIdentity::generate(&mut r);
    let mallory = DeviceIdentity::generate(&mut r);
    let mut pre = PrekeyStore::new(&bob, 0, &mut r);
    pre.generate_one_time(&bob, 2, 0, &mut r);
    let relays = vec!["/ip4/127.0.0.1/tcp/1".to_string()];
    let bundle = pre.bundle(&bob, [5; 32], &relays, 0, true).unwrap();
    let v = PrekeyBundle::from_bytes(&bundle.to_bytes())
        .unwrap()
        .verify()
        .unwrap();
    assert_eq!(v.body.identity, *bob.public());
    assert_eq!(v.body.relays, relays);
    // Any change to the signed body fails.
    for i in 0..bundle.body.len() {
        let mut b = bundle.clone();
        b.body[i] ^= 0x01;
        assert!(b.verify().is_err(), "body byte {i}");
    }
    // A relay cannot substitute its own one-time prekey.
    let mut swapped = bundle.clone();
    let mut mal_pre = PrekeyStore::new(&mallory, 0, &mut r);
    let forged = mal_pre.generate_one_time(&mallory, 1, 0, &mut r).remove(0);
    swapped.one_time = Some(forged);
    assert!(matches!(swapped.verify(), Err(Error::BadSignature { .. })));
    // A bundle re-signed by someone else fails the identity binding check.
    let mut other = bundle.clone();
    other.body_sig = [0; 64];
    assert!(other.verify().is_err());
    // Without a one-time prekey the agreement still works (3 DH).
    let plain = pre
        .bundle(&bob, [5; 32], &relays, 0, false)
        .unwrap()
        .verify()
        .unwrap();
    assert!(plain.one_time.is_none());
}

#[test]
fn identity_encoding_and_binding() {
    let mut r = rng(63);
    let id = DeviceIdentity::generate(&mut r);
    let bytes = id.public().to_bytes();
    assert_eq!(PublicIdentity::from_bytes(&bytes).unwrap(), *id.public());
    let mut bad = id.public().clone();
    bad.dh[0] ^= 1;
    assert!(matches!(
        PublicIdentity::from_bytes(&bad.to_bytes()),
        Err(Error::BadSignature { .. })
    ));
    let restored = DeviceIdentity::from_secret_bytes(&id.to_secret_bytes()).unwrap();
    assert_eq!(restored.public(), id.public());
    assert_eq!(restored.peer_id().unwrap(), id.peer_id().unwrap());
    assert!(DeviceIdentity::from_secret_bytes(&[1, 2, 3]).is_err());
}

#[test]
fn mailbox_requests_need_the_mailbox_key() {
    let mut r = rng(64);
    let owner = MailboxKey::generate(&mut r);
    let other = MailboxKey::generate(&mut r);
    let req = b"fetch cursor=0";
    let sig = owner.sign(b"meshchat/1/mailbox/fetch", req);
    let id = owner.id();
    assert!(
        id.verify_request(&owner.public(), b"meshchat/1/mailbox/fetch", req, &sig)
            .is_ok()
    );
    // Another key, even with a valid signature of its own, does not own the mailbox.
    let sig2 = other.sign(b"meshchat/1/mailbox/fetch", req);
    assert!(
        id.verify_request(&other.public(), b"meshchat/1/mailbox/fetch", req, &sig2)
            .is_err()
    );
    // A signature for another request or label does not carry over.
    assert!(
        id.verify_request(
            &owner.public(),
            b"meshchat/1/mailbox/fetch",
            b"fetch cursor=9",
            &sig
        )
        .is_err()
    );
    assert!(
        id.verify_request(&owner.public(), b"meshchat/1/mailbox/ack", req, &sig)
            .is_err()
    );
    assert_eq!(MailboxKey::from_seed(owner.seed().clone()).id(), id);
}

/// A bundle whose keys are signed but cannot take part in an exchange (of
/// small order, or on the curve's twist), or whose version is unknown, is
/// refused by `verify`, wherever it came from.
#[test]
fn a_signed_bundle_with_an_unusable_key_or_an_unknown_version_is_refused() {
    let mut r = rng(64);
    let bob = DeviceIdentity::generate(&mut r);
    let mut pre = PrekeyStore::new(&bob, 0, &mut r);
    pre.generate_one_time(&bob, 1, 0, &mut r);
    let bundle = pre.bundle(&bob, [5; 32], &[], 0, true).unwrap();
    bundle.verify().unwrap();

    // A u-coordinate with no point on the curve (it is on the twist).
    let twist = (2u8..=255)
        .map(|u| {
            let mut k = [0u8; 32];
            k[0] = u;
            k
        })
        .find(|k| {
            curve25519_dalek::montgomery::MontgomeryPoint(*k)
                .to_edwards(0)
                .is_none()
        })
        .unwrap();
    let mut one = [0u8; 32];
    one[0] = 1;
    for (bad, why) in [([0u8; 32], "order 2"), (one, "order 4"), (twist, "twist")] {
        // As the signed prekey, signed by its identity.
        let mut body: BundleBody =
            crate::crypto::wire::decode(&bundle.body, "bundle body", 1, 1 << 16).unwrap();
        body.signed_prekey = bad;
        body.signed_prekey_sig = bob.sign(
            labels::SIG_SIGNED_PREKEY,
            &[&body.signed_prekey_id.to_be_bytes(), &bad],
        );
        let mut b = bundle.clone();
        b.body = crate::crypto::wire::encode(&body);
        b.body_sig = bob.sign(labels::SIG_BUNDLE, &[&b.body]);
        assert!(
            matches!(
                b.verify(),
                Err(Error::NonContributory { .. } | Error::InvalidKey { .. })
            ),
            "signed prekey of {why}"
        );
        // As the one-time prekey.
        let mut b = bundle.clone();
        let opk = b.one_time.as_mut().unwrap();
        opk.key = bad;
        opk.sig = bob.sign(labels::SIG_ONE_TIME_PREKEY, &[&opk.id.to_be_bytes(), &bad]);
        assert!(
            matches!(
                b.verify(),
                Err(Error::NonContributory { .. } | Error::InvalidKey { .. })
            ),
            "one-time prekey of {why}"
        );
    }

    // An unknown version, in a bundle decoded as part of something else
    // (postcard, without `from_bytes`'s check).
    let mut bytes = postcard::to_allocvec(&bundle).unwrap();
    bytes[0] = 2;
    let other: PrekeyBundle = postcard::from_bytes(&bytes).unwrap();
    assert!(matches!(
        other.verify(),
        Err(Error::UnknownVersion { got: 2, .. })
    ));
}

/// A one-time prekey nobody used is forgotten once every signed prekey it
/// can have gone out with is (not by the clock alone: a device that was
/// offline keeps it). One read from a version 1 store (no dates) goes once
/// every signed prekey made before it was read is forgotten.
#[test]
fn unused_one_time_prekeys_go_with_the_signed_prekeys_they_went_out_with() {
    let mut r = rng(65);
    let bob = DeviceIdentity::generate(&mut r);
    let day = 24 * 3600;
    let week = SIGNED_PREKEY_ROTATION_SECS;
    let mut pre = PrekeyStore::new(&bob, 0, &mut r);
    let old = pre.generate_one_time(&bob, 2, day, &mut r);
    let young = pre.generate_one_time(&bob, 1, 3 * week, &mut r);
    assert_eq!(pre.one_time_made(old[0].id), Some(day));
    // One is used: gone, its date with it.
    pre.take_one_time(old[1].id).unwrap();
    assert_eq!(pre.one_time_made(old[1].id), None);
    // Offline for two years, no signed prekey replaced: both kept.
    let mut offline = PrekeyStore::from_bytes(&pre.to_bytes()).unwrap();
    assert!(!offline.retire_one_time(104 * week));
    assert_eq!(offline.one_time_count(), 2);
    // Weekly rotations; a replaced signed prekey is kept two weeks after
    // its successor. The old one-time prekey (day 1) may have gone out
    // with a signed prekey made up to day 16: it goes once the oldest held
    // was made after that (week 3, held alone from week 5); the young one
    // (day 21) once the oldest held was made after day 36 (week 6, from
    // week 8).
    let mut held = Vec::new();
    for k in 1..=9 {
        pre.rotate_if_due(&bob, k * week, &mut r);
        pre.retire_one_time(k * week);
        held.push(pre.one_time_count());
    }
    assert_eq!(held, [2, 2, 2, 2, 1, 1, 1, 0, 0]);
    assert!(pre.one_time_public(young[0].id).is_none());

    // Version 1 is version 2 without the dates, its last field: a store
    // holding one one-time prekey, made into version 1.
    assert_eq!(pre.to_bytes()[0], 2);
    let mut undated = PrekeyStore::new(&bob, 0, &mut r);
    let kept = undated.generate_one_time(&bob, 1, 0, &mut r);
    let mut v1 = undated.to_bytes().to_vec();
    // Its dates map: one entry, id and 0 as varints, after a count of 1.
    let tail = {
        let mut t = vec![1u8];
        t.extend(postcard::to_allocvec(&kept[0].id).unwrap());
        t.push(0);
        t
    };
    assert!(v1.ends_with(&tail));
    v1.truncate(v1.len() - tail.len());
    v1[0] = 1;
    let mut read = PrekeyStore::from_bytes(&v1).unwrap();
    assert_eq!(read.one_time_made(kept[0].id), None);
    // Read at week 50 with a signed prekey from day 0: kept until every
    // signed prekey made before week 50 is forgotten.
    let t0 = 50 * week;
    let mut held = Vec::new();
    for k in 0..=3 {
        read.rotate_if_due(&bob, t0 + k * week, &mut r);
        read.retire_one_time(t0 + k * week);
        held.push(read.one_time_count());
    }
    assert_eq!(held, [1, 1, 1, 0]);
}

/// An identity that claims someone else's X25519 key (it can sign that key
/// with its own signing key, and re-sign that device's signed prekey) gets
/// no session that device opens: the agreement binds both signing keys, so
/// a set-up Alice made for "Eve" does not read as one for Bob, who holds
/// the X25519 keys Eve named.
#[test]
fn a_set_up_for_an_identity_borrowing_another_devices_x25519_key_does_not_open_there() {
    let mut r = rng(71);
    let alice = DeviceIdentity::generate(&mut r);
    let bob = DeviceIdentity::from_secrets(&Secret32::new([1; 32]), &Secret32::new([2; 32]));
    let eve = DeviceIdentity::from_secrets(&Secret32::new([3; 32]), &Secret32::new([2; 32]));
    assert_eq!(eve.public().dh, bob.public().dh);
    assert_ne!(eve.public().signing, bob.public().signing);
    // The same signed prekey, signed by each.
    let bob_pre = PrekeyStore::new(&bob, 0, &mut rng(72));
    let eve_pre = PrekeyStore::new(&eve, 0, &mut rng(72));
    let eves = eve_pre
        .bundle(&eve, [9; 32], &[], 0, false)
        .unwrap()
        .verify()
        .unwrap();
    assert_eq!(eves.body.signed_prekey, bob_pre.current().unwrap().public);
    let (x_a, initial, _) = initiate(&alice, &eves, &mut r).unwrap();
    let (x_b, _) = respond(&bob, &bob_pre, alice.public(), &initial).unwrap();
    assert_ne!(x_a.shared_secret, x_b.shared_secret);
    // With Bob's own bundle, the agreement holds.
    let bobs = bob_pre
        .bundle(&bob, [9; 32], &[], 0, false)
        .unwrap()
        .verify()
        .unwrap();
    let (x_a, initial, _) = initiate(&alice, &bobs, &mut r).unwrap();
    let (x_b, _) = respond(&bob, &bob_pre, alice.public(), &initial).unwrap();
    assert_eq!(x_a.shared_secret, x_b.shared_secret);
}
