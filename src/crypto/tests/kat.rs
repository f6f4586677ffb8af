//! Known-answer tests for every primitive the protocol composes, from the
//! RFCs that define them, run through our own wrappers.

use super::*;
use crate::crypto::kdf::{Aead, chain_step, hkdf, hmac_sha256};

#[test]
fn hkdf_sha256_rfc5869_case_1() {
    let okm: [u8; 42] = hkdf(
        &hex("000102030405060708090a0b0c"),
        &[0x0b; 22],
        &hex("f0f1f2f3f4f5f6f7f8f9"),
    );
    assert_eq!(
        ::hex::encode(okm),
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    );
}

#[test]
fn hmac_sha256_rfc4231_case_1() {
    // HMAC zero-pads short keys, so the 20-byte key padded to 32 is the same key.
    let mut key = [0u8; 32];
    key[..20].copy_from_slice(&[0x0b; 20]);
    assert_eq!(
        ::hex::encode(hmac_sha256(&key, b"Hi There")),
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
    );
}

#[test]
fn chain_step_is_hmac_01_and_02() {
    let ck = Secret32::new([0x42; 32]);
    let (mk, next) = chain_step(&ck);
    assert_eq!(*mk.expose(), hmac_sha256(&[0x42; 32], &[1]));
    assert_eq!(*next.expose(), hmac_sha256(&[0x42; 32], &[2]));
}

#[test]
fn chacha20poly1305_rfc8439_2_8_2() {
    let key: [u8; 32] = hex32("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f");
    let nonce: [u8; 12] = hex("070000004041424344454647").try_into().unwrap();
    let aad = hex("50515253c0c1c2c3c4c5c6c7");
    let pt = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
    let aead = Aead::from_parts(key, nonce);
    let ct = aead.seal(pt, &aad);
    assert_eq!(
        ::hex::encode(&ct),
        "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b6116\
         1ae10b594f09e26a7e902ecbd0600691"
    );
    assert_eq!(aead.open(&ct, &aad, "kat").unwrap(), pt);
}

#[test]
fn x25519_rfc7748_6_1() {
    use x25519_dalek::{PublicKey, StaticSecret};
    let a = StaticSecret::from(hex32(
        "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
    ));
    let b = StaticSecret::from(hex32(
        "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
    ));
    assert_eq!(
        ::hex::encode(PublicKey::from(&a).as_bytes()),
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    );
    assert_eq!(
        ::hex::encode(PublicKey::from(&b).as_bytes()),
        "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    );
    let s = crate::crypto::kdf::dh(&a, &PublicKey::from(&b), "kat").unwrap();
    assert_eq!(
        ::hex::encode(s.expose()),
        "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    );
    // A low-order point gives an all-zero result, which we refuse.
    assert!(matches!(
        crate::crypto::kdf::dh(&a, &PublicKey::from([0u8; 32]), "kat"),
        Err(Error::NonContributory { .. })
    ));
}

#[test]
fn ed25519_rfc8032_test_1_and_libp2p_equivalence() {
    use ed25519_dalek::{Signer, SigningKey};
    let seed = hex32("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
    let sk = SigningKey::from_bytes(&seed);
    assert_eq!(
        ::hex::encode(sk.verifying_key().as_bytes()),
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    );
    let sig = sk.sign(b"");
    assert_eq!(
        ::hex::encode(sig.to_bytes()),
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    );
    // Same seed as a libp2p identity: same public key, same signature.
    let id = DeviceIdentity::from_secrets(&Secret32::new(seed), &Secret32::new([1; 32]));
    let kp = id.to_libp2p().unwrap();
    assert_eq!(kp.sign(b"").unwrap(), sig.to_bytes().to_vec());
    assert_eq!(kp.public().to_peer_id(), id.peer_id().unwrap());
    let back = DeviceIdentity::from_libp2p(&kp, &Secret32::new([1; 32])).unwrap();
    assert_eq!(back.public(), id.public());
}

#[test]
fn argon2id_rfc9106_5_3() {
    use argon2::{Algorithm, Argon2, AssociatedData, ParamsBuilder, Version};
    let params = ParamsBuilder::new()
        .m_cost(32)
        .t_cost(3)
        .p_cost(4)
        .data(AssociatedData::new(&[4; 12]).unwrap())
        .output_len(32)
        .build()
        .unwrap();
    let argon =
        Argon2::new_with_secret(&[3; 8], Algorithm::Argon2id, Version::V0x13, params).unwrap();
    let mut out = [0u8; 32];
    argon
        .hash_password_into(&[1; 32], &[2; 16], &mut out)
        .unwrap();
    assert_eq!(
        ::hex::encode(out),
        "0d640df58d78766c08c037a34a8b53c9d01ef0452d75b65eb52520e96b01e659"
    );
}

#[test]
fn safety_numbers_are_symmetric_and_stable() {
    let a = DeviceIdentity::from_secrets(&Secret32::new([1; 32]), &Secret32::new([2; 32]));
    let b = DeviceIdentity::from_secrets(&Secret32::new([3; 32]), &Secret32::new([4; 32]));
    let ab = safety_number(a.public(), b.public());
    assert_eq!(ab, safety_number(b.public(), a.public()));
    assert_eq!(ab.len(), 60);
    assert!(ab.bytes().all(|c| c.is_ascii_digit()));
    // Pinned: a change here breaks every user's verified contacts.
    assert_eq!(fingerprint(a.public()), SNAPSHOT_FINGERPRINT_A);
    let c = DeviceIdentity::from_secrets(&Secret32::new([3; 32]), &Secret32::new([5; 32]));
    assert_ne!(
        ab,
        safety_number(a.public(), c.public()),
        "a changed identity key changes the number"
    );
}

const SNAPSHOT_FINGERPRINT_A: &str = "696982212396387435618066562707";

mod x25519_equivalence {
    use proptest::prelude::*;
    use x25519_dalek::{PublicKey, StaticSecret};

    use crate::crypto::kdf::dh;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, rng_seed: proptest::test_runner::RngSeed::Fixed(5), ..ProptestConfig::default() })]

        /// Our Edwards-curve computation of X25519 equals the RFC 7748
        /// Montgomery ladder (x25519-dalek) for every key pair.
        #[test]
        fn edwards_dh_equals_the_montgomery_ladder(a in any::<[u8; 32]>(), b in any::<[u8; 32]>()) {
            let (a, b) = (StaticSecret::from(a), StaticSecret::from(b));
            let pb = PublicKey::from(&b);
            let ours = dh(&a, &pb, "test").unwrap();
            prop_assert_eq!(*ours.expose(), a.diffie_hellman(&pb).to_bytes());
            // Public keys with the (ignored) top bit set name the same point.
            let mut high = pb.to_bytes();
            high[31] |= 0x80;
            let ours_high = dh(&a, &PublicKey::from(high), "test").unwrap();
            prop_assert_eq!(*ours_high.expose(), a.diffie_hellman(&PublicKey::from(high)).to_bytes());
        }
    }
}

#[test]
fn public_keys_off_the_curve_are_refused() {
    use curve25519_dalek::montgomery::MontgomeryPoint;
    use x25519_dalek::{PublicKey, StaticSecret};
    let twist: Vec<u8> = (2u8..100)
        .filter(|u| {
            MontgomeryPoint(
                [*u; 1]
                    .iter()
                    .copied()
                    .chain([0; 31])
                    .collect::<Vec<_>>()
                    .try_into()
                    .unwrap(),
            )
            .to_edwards(0)
            .is_none()
        })
        .collect();
    assert!(!twist.is_empty());
    let a = StaticSecret::from([1; 32]);
    for u in twist {
        let mut key = [0u8; 32];
        key[0] = u;
        assert!(matches!(
            crate::crypto::kdf::dh(&a, &PublicKey::from(key), "t"),
            Err(Error::InvalidKey { .. })
        ));
    }
}
