//! Every decoder fed arbitrary bytes returns an error or a value, never
//! panics, and never allocates beyond its bound.

use proptest::prelude::*;

use super::*;

fn all_decoders(bytes: &[u8], recipient: &DeviceIdentity) {
    let _ = Envelope::from_bytes(bytes);
    let _ = RatchetMessage::from_bytes(bytes);
    let _ = SenderKeyMessage::from_bytes(bytes);
    let _ = SenderKeyDistribution::from_bytes(bytes);
    let _ = PrekeyMessage::from_bytes(bytes);
    if let Ok(b) = PrekeyBundle::from_bytes(bytes) {
        let _ = b.verify();
    }
    let _ = PublicIdentity::from_bytes(bytes);
    let _ = Keystore::from_bytes(bytes);
    let _ = Session::from_bytes(bytes);
    let _ = SenderKey::from_bytes(bytes);
    let _ = SenderKeyReceiver::from_bytes(bytes);
    let _ = PrekeyStore::from_bytes(bytes);
    let _ = DeviceIdentity::from_secret_bytes(bytes);
    let _ = open(recipient, bytes, &mut SealCache::default());
    let _ = unpad(bytes);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, rng_seed: proptest::test_runner::RngSeed::Fixed(11), ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let id = DeviceIdentity::from_secrets(&Secret32::new([1; 32]), &Secret32::new([2; 32]));
        all_decoders(&bytes, &id);
        // Also with each plausible version byte in front.
        for v in [0u8, 1, 2, 255] {
            let mut b = bytes.clone();
            b.insert(0, v);
            all_decoders(&b, &id);
        }
    }

    #[test]
    fn mutated_valid_frames_never_panic(flips in proptest::collection::vec((any::<u16>(), any::<u8>()), 1..8), pick in 0usize..5) {
        let mut r = rng(70);
        let id = DeviceIdentity::generate(&mut r);
        let Pair { mut alice, .. } = pair(71);
        let mut sk = SenderKey::new([1; 32], 0, &mut r);
        let mut pre = PrekeyStore::new(&id, 0, &mut r);
        pre.generate_one_time(&id, 1, 0, &mut r);
        let frames = [
            Envelope::new([1; 32], [2; 16], 3, vec![4; 64]).to_bytes(),
            alice.encrypt(b"x").unwrap().to_bytes(),
            sk.encrypt(&[0x01; 32], b"y").unwrap().to_bytes(),
            pre.bundle(&id, [0; 32], &[], 0, true).unwrap().to_bytes(),
            seal(&id, &id.public().dh, &SealedContent::new(ContentKind::Ratchet, vec![1; 10]), &mut SealCache::default(), &mut r).unwrap(),
        ];
        let mut f = frames[pick].clone();
        for (pos, val) in flips {
            let i = pos as usize % f.len();
            f[i] = val;
        }
        all_decoders(&f, &id);
    }
}
