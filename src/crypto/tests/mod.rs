//! Unit tests of the crypto core. Every RNG here is seeded.

mod decoders;
mod envelope;
mod group;
mod interop;
mod kat;
mod keystore;
mod prekeys;
mod ratchet;
mod snapshots;

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;

pub(super) fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

pub(super) fn hex(s: &str) -> Vec<u8> {
    ::hex::decode(s).expect("hex")
}

pub(super) fn hex32(s: &str) -> [u8; 32] {
    hex(s).try_into().expect("32 bytes")
}

/// Two devices with a fresh session, Alice having initiated from Bob's bundle.
pub(super) struct Pair {
    pub(super) alice: Session,
    pub(super) bob: Session,
}

pub(super) fn pair(seed: u64) -> Pair {
    let mut r = rng(seed);
    let alice_id = DeviceIdentity::generate(&mut r);
    let bob_id = DeviceIdentity::generate(&mut r);
    let mut bob_pre = PrekeyStore::new(&bob_id, 1_000, &mut r);
    bob_pre.generate_one_time(&bob_id, 4, 0, &mut r);
    let bundle = bob_pre
        .bundle(&bob_id, [7; 32], &[], 1_000, true)
        .unwrap()
        .verify()
        .unwrap();
    let (x_a, initial, spk) = initiate(&alice_id, &bundle, &mut r).unwrap();
    let mut alice = Session::initiator(&x_a, spk, Some(initial), &mut r).unwrap();
    let (x_b, spk_secret) = respond(&bob_id, &bob_pre, alice_id.public(), &initial).unwrap();
    assert_eq!(x_a.shared_secret, x_b.shared_secret);
    assert_eq!(x_a.associated_data, x_b.associated_data);
    let mut bob = Session::responder(&x_b, &spk_secret, Some(initial.ephemeral));
    // Bob cannot send before he has heard from Alice.
    assert!(!bob.can_send());
    let first = alice.encrypt(b"hello").unwrap();
    assert_eq!(bob.decrypt(&first, &mut r).unwrap(), b"hello");
    Pair { alice, bob }
}
