//! Crypto micro-benchmarks: the per-message cost of 1:1 and group chat, the
//! session set-up, and unlocking the keystore — with the raw primitives they
//! are built from measured in the same run as the reference.
//!
//! Run: `cargo bench --bench crypto`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use meshchat::crypto::{
    Aead, ContentKind, DeviceIdentity, KdfParams, Keystore, PrekeyStore, RatchetMessage, SealCache,
    SealedContent, SenderKey, SenderKeyReceiver, Session, initiate, open, respond, seal,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

const MSG: [u8; 200] = [0x61; 200];

struct Pair {
    alice: DeviceIdentity,
    bob: DeviceIdentity,
    a: Session,
    b: Session,
}

fn pair(rng: &mut StdRng) -> Pair {
    let alice = DeviceIdentity::generate(rng);
    let bob = DeviceIdentity::generate(rng);
    let mut pre = PrekeyStore::new(&bob, 0, rng);
    pre.generate_one_time(&bob, 1, 0, rng);
    let bundle = pre
        .bundle(&bob, [0; 32], &[], 0, true)
        .unwrap()
        .verify()
        .unwrap();
    let (x, initial, spk) = initiate(&alice, &bundle, rng).unwrap();
    let mut a = Session::initiator(&x, spk, Some(initial), rng).unwrap();
    let (xb, spk_secret) = respond(&bob, &pre, alice.public(), &initial).unwrap();
    let mut b = Session::responder(&xb, &spk_secret, Some(initial.ephemeral));
    let first = a.encrypt(b"hi").unwrap();
    b.decrypt(&first, rng).unwrap();
    Pair { alice, bob, a, b }
}

fn one_to_one(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let mut g = c.benchmark_group("1:1 message (200 B)");

    // Sender: ratchet-encrypt, then seal to the recipient (warm static-DH cache).
    let mut p = pair(&mut rng);
    let mut cache = SealCache::default();
    g.bench_function("seal + ratchet-encrypt", |bch| {
        bch.iter(|| {
            let m = p.a.encrypt(&MSG).unwrap();
            let content = SealedContent::new(ContentKind::Ratchet, m.to_bytes());
            black_box(seal(&p.alice, &p.bob.public().dh, &content, &mut cache, &mut rng).unwrap())
        })
    });
    // Recipient: open the seal, then ratchet-decrypt, in order.
    g.bench_function("open + ratchet-decrypt", |bch| {
        bch.iter_custom(|iters| {
            let mut rng = StdRng::seed_from_u64(iters);
            let mut p = pair(&mut rng);
            let mut send_cache = SealCache::default();
            let mut recv_cache = SealCache::default();
            let sealed: Vec<Vec<u8>> = (0..iters)
                .map(|_| {
                    let m = p.a.encrypt(&MSG).unwrap();
                    let content = SealedContent::new(ContentKind::Ratchet, m.to_bytes());
                    seal(
                        &p.alice,
                        &p.bob.public().dh,
                        &content,
                        &mut send_cache,
                        &mut rng,
                    )
                    .unwrap()
                })
                .collect();
            // Warm the recipient's cache as a running node would have it.
            let start = Instant::now();
            for s in &sealed {
                let opened = open(&p.bob, s, &mut recv_cache).unwrap();
                let m = RatchetMessage::from_bytes(&opened.content.body).unwrap();
                black_box(p.b.decrypt(&m, &mut rng).unwrap());
            }
            start.elapsed()
        })
    });
    // The direct path between two connected devices skips the seal.
    let mut p = pair(&mut rng);
    g.bench_function("ratchet-encrypt only (direct path)", |bch| {
        bch.iter(|| black_box(p.a.encrypt(&MSG).unwrap()))
    });
    g.bench_function("ratchet-decrypt only (direct path)", |bch| {
        bch.iter_custom(|iters| {
            let mut rng = StdRng::seed_from_u64(iters);
            let mut p = pair(&mut rng);
            let msgs: Vec<_> = (0..iters).map(|_| p.a.encrypt(&MSG).unwrap()).collect();
            let start = Instant::now();
            for m in &msgs {
                black_box(p.b.decrypt(m, &mut rng).unwrap());
            }
            start.elapsed()
        })
    });
    // Reference primitives in the same run.
    let aead = Aead::derive(&[7; 32], b"bench");
    g.bench_function("reference: raw ChaCha20-Poly1305 seal", |bch| {
        bch.iter(|| black_box(aead.seal(&MSG, b"ad")))
    });
    let s = x25519_dalek::StaticSecret::random_from_rng(&mut rng);
    let pk = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::random_from_rng(&mut rng));
    g.bench_function("reference: one X25519 DH", |bch| {
        bch.iter(|| black_box(s.diffie_hellman(&pk)))
    });
    g.finish();
}

fn group(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(2);
    let mut g = c.benchmark_group("group message (200 B)");
    let mut sk = SenderKey::new([1; 32], 0, &mut rng);
    g.bench_function("sender-key encrypt + sign", |bch| {
        bch.iter(|| black_box(sk.encrypt(&[0x01; 32], &MSG).unwrap()))
    });
    g.bench_function("sender-key verify + decrypt", |bch| {
        bch.iter_custom(|iters| {
            let mut rng = StdRng::seed_from_u64(iters);
            let mut sk = SenderKey::new([1; 32], 0, &mut rng);
            let mut rx = SenderKeyReceiver::from_distribution(&sk.distribution());
            let msgs: Vec<_> = (0..iters)
                .map(|_| sk.encrypt(&[0x01; 32], &MSG).unwrap())
                .collect();
            let start = Instant::now();
            for m in &msgs {
                black_box(rx.decrypt(&[0x01; 32], m).unwrap());
            }
            start.elapsed()
        })
    });
    g.finish();
}

fn setup(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(3);
    let mut g = c.benchmark_group("session set-up");
    let alice = DeviceIdentity::generate(&mut rng);
    let bob = DeviceIdentity::generate(&mut rng);
    let mut pre = PrekeyStore::new(&bob, 0, &mut rng);
    pre.generate_one_time(&bob, 1, 0, &mut rng);
    let bundle = pre.bundle(&bob, [0; 32], &[], 0, true).unwrap();
    g.bench_function(
        "x3dh initiate (verify bundle, 4 DH, first ratchet step)",
        |bch| {
            bch.iter(|| {
                let v = bundle.verify().unwrap();
                let (x, initial, spk) = initiate(&alice, &v, &mut rng).unwrap();
                black_box(Session::initiator(&x, spk, Some(initial), &mut rng).unwrap())
            })
        },
    );
    let v = bundle.verify().unwrap();
    let (_, initial, _) = initiate(&alice, &v, &mut rng).unwrap();
    g.bench_function("x3dh respond (4 DH)", |bch| {
        bch.iter(|| black_box(respond(&bob, &pre, alice.public(), &initial).unwrap()))
    });
    g.finish();

    let mut g = c.benchmark_group("keystore");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    let (ks, _) = Keystore::create(b"a passphrase", KdfParams::DEFAULT, &mut rng).unwrap();
    g.bench_function("unlock (Argon2id 64 MiB, t=3, p=1)", |bch| {
        bch.iter(|| black_box(ks.unlock(b"a passphrase").unwrap()))
    });
    g.finish();
}

criterion_group!(benches, one_to_one, group, setup);
criterion_main!(benches);
