use super::*;
use crate::crypto::limits::SEND_RESERVE;

fn send(s: &mut Session, text: &str) -> RatchetMessage {
    s.encrypt(text.as_bytes()).unwrap()
}

thread_local! {
    // One seeded stream per test thread, so every ratchet step draws new keys.
    static RNG: std::cell::RefCell<rand::rngs::StdRng> = std::cell::RefCell::new(rng(99));
}

fn recv(s: &mut Session, m: &RatchetMessage) -> Result<String, Error> {
    RNG.with(|r| s.decrypt(m, &mut *r.borrow_mut()))
        .map(|b| String::from_utf8(b).unwrap())
}

#[test]
fn both_directions_across_many_ratchet_steps() {
    let Pair { mut alice, mut bob } = pair(1);
    for round in 0..20 {
        for i in 0..3 {
            let m = send(&mut alice, &format!("a{round}.{i}"));
            assert_eq!(recv(&mut bob, &m).unwrap(), format!("a{round}.{i}"));
        }
        let m = send(&mut bob, &format!("b{round}"));
        assert_eq!(recv(&mut alice, &m).unwrap(), format!("b{round}"));
    }
    assert!(
        alice.pending_initial().is_none(),
        "initiator stops sending X3DH data once answered"
    );
}

#[test]
fn out_of_order_lost_and_duplicated_across_steps() {
    let Pair { mut alice, mut bob } = pair(2);
    let a: Vec<_> = (0..5).map(|i| send(&mut alice, &format!("a{i}"))).collect();
    // Out of order within a chain.
    assert_eq!(recv(&mut bob, &a[3]).unwrap(), "a3");
    assert_eq!(recv(&mut bob, &a[1]).unwrap(), "a1");
    // Duplicate of a delivered message.
    assert!(matches!(
        recv(&mut bob, &a[3]),
        Err(Error::Duplicate { .. })
    ));
    // Bob answers: a ratchet step; Alice answers back: another.
    let b0 = send(&mut bob, "b0");
    assert_eq!(recv(&mut alice, &b0).unwrap(), "b0");
    let a5 = send(&mut alice, "a5");
    assert_eq!(recv(&mut bob, &a5).unwrap(), "a5");
    // Late messages from the previous chain still open (skipped keys).
    assert_eq!(recv(&mut bob, &a[0]).unwrap(), "a0");
    assert_eq!(recv(&mut bob, &a[4]).unwrap(), "a4");
    // a2 is lost for good: later traffic is unaffected.
    let b1 = send(&mut bob, "b1");
    let b2 = send(&mut bob, "b2");
    assert_eq!(recv(&mut alice, &b2).unwrap(), "b2");
    assert_eq!(recv(&mut alice, &b1).unwrap(), "b1");
    assert!(matches!(
        recv(&mut alice, &b1),
        Err(Error::Duplicate { .. })
    ));
    // Duplicates from an old chain are recognised without a DH step.
    assert!(matches!(
        recv(&mut alice, &b0),
        Err(Error::Duplicate { .. })
    ));
    assert!(matches!(
        recv(&mut bob, &a[0]),
        Err(Error::Duplicate { .. })
    ));
}

#[test]
fn messages_from_a_previous_chain_arrive_after_the_new_chain() {
    let Pair { mut alice, mut bob } = pair(3);
    let b0 = send(&mut bob, "b0");
    let old: Vec<_> = (0..3)
        .map(|i| send(&mut alice, &format!("old{i}")))
        .collect();
    assert_eq!(recv(&mut alice, &b0).unwrap(), "b0");
    let new = send(&mut alice, "new");
    // Bob sees the new chain first: the header's pn tells him to keep 3 keys
    // of the old chain (the initial chain had 1 message already read).
    assert_eq!(recv(&mut bob, &new).unwrap(), "new");
    for (i, m) in old.iter().enumerate().rev() {
        assert_eq!(recv(&mut bob, m).unwrap(), format!("old{i}"));
    }
    assert_eq!(bob.skipped_len(), 0);
}

#[test]
fn replay_rejected_also_after_save_and_reload() {
    let Pair { mut alice, mut bob } = pair(4);
    let m1 = send(&mut alice, "one");
    let m2 = send(&mut alice, "two");
    let m3 = send(&mut alice, "three");
    assert_eq!(recv(&mut bob, &m2).unwrap(), "two");
    let saved = bob.to_bytes();
    let mut bob = Session::from_bytes(&saved).unwrap();
    assert!(matches!(recv(&mut bob, &m2), Err(Error::Duplicate { .. })));
    assert_eq!(
        recv(&mut bob, &m1).unwrap(),
        "one",
        "skipped key survives reload"
    );
    let saved = bob.to_bytes();
    let mut bob = Session::from_bytes(&saved).unwrap();
    assert!(recv(&mut bob, &m1).is_err());
    assert_eq!(recv(&mut bob, &m3).unwrap(), "three");
    let mut bob = Session::from_bytes(&bob.to_bytes()).unwrap();
    for m in [&m1, &m2, &m3] {
        assert!(recv(&mut bob, m).is_err());
    }
    // And a reloaded sender never reuses a message number: its saved
    // sending chain is ahead of the live one, and the receiver skips over
    // the numbers never used.
    let mut alice = Session::from_bytes(&alice.to_bytes()).unwrap();
    let m4 = send(&mut alice, "four");
    assert_eq!(m4.header.n, SEND_RESERVE);
    assert_eq!(recv(&mut bob, &m4).unwrap(), "four");
}

#[test]
fn the_exact_saved_form_continues_without_a_gap() {
    let Pair { mut alice, mut bob } = pair(12);
    for text in ["one", "two"] {
        let m = send(&mut alice, text);
        assert_eq!(recv(&mut bob, &m).unwrap(), text);
    }
    // After "hello" (0), "one" (1) and "two" (2), the exact form goes on
    // at 3; the usual form at the reserve.
    let mut exact = Session::from_bytes(&alice.to_bytes_exact()).unwrap();
    let mut reserved = Session::from_bytes(&alice.to_bytes()).unwrap();
    let m = send(&mut exact, "three");
    assert_eq!(m.header.n, 3);
    assert_eq!(recv(&mut bob, &m).unwrap(), "three");
    assert_eq!(bob.skipped_len(), 0);
    let m = send(&mut reserved, "far");
    assert_eq!(m.header.n, SEND_RESERVE);
    assert_eq!(recv(&mut bob, &m).unwrap(), "far");
    assert_eq!(bob.skipped_len(), (SEND_RESERVE - 4) as usize);
}

#[test]
fn a_message_may_leave_early_only_behind_a_saved_form_on_disk() {
    let Pair { mut alice, mut bob } = pair(11);
    // Nothing saved on disk yet: no message may leave before the flush.
    let m = send(&mut alice, "first");
    assert!(!alice.sent_key_is_durable(&m.header));
    // Stored, but not yet known to be on disk.
    let _ = alice.to_bytes();
    alice.note_stored();
    let m = send(&mut alice, "second");
    assert!(!alice.sent_key_is_durable(&m.header));
    assert_eq!(recv(&mut bob, &m).unwrap(), "second");
    alice.mark_saved_durable();
    // Now every key up to the saved chain's counter may go, and keeps
    // going while the reserve is renewed ahead of it; the first one past
    // the counter of the form on disk may not.
    let saved_at = SEND_RESERVE;
    let mut n = 3;
    while n < saved_at {
        let m = send(&mut alice, "more");
        assert_eq!(m.header.n, n);
        assert!(alice.sent_key_is_durable(&m.header), "n = {n}");
        assert_eq!(recv(&mut bob, &m).unwrap(), "more");
        n += 1;
    }
    let m = send(&mut alice, "past");
    assert!(!alice.sent_key_is_durable(&m.header));
    // Serialized but never stored: flushing does not make it count.
    let _ = alice.to_bytes();
    alice.mark_saved_durable();
    let m = send(&mut alice, "unstored");
    assert!(!alice.sent_key_is_durable(&m.header));
    // Storing and flushing again covers the next ones.
    let _ = alice.to_bytes();
    alice.note_stored();
    alice.mark_saved_durable();
    let m = send(&mut alice, "again");
    assert!(alice.sent_key_is_durable(&m.header));
    // A new sending chain (after the peer's ratchet step) starts uncovered.
    let b = send(&mut bob, "reply");
    assert_eq!(recv(&mut alice, &b).unwrap(), "reply");
    let m = send(&mut alice, "new chain");
    assert!(!alice.sent_key_is_durable(&m.header));
    let _ = alice.to_bytes();
    alice.note_stored();
    alice.mark_saved_durable();
    let m = send(&mut alice, "covered");
    assert!(alice.sent_key_is_durable(&m.header));
    // A reloaded session has nothing known on disk until it saves.
    let mut reloaded = Session::from_bytes(&alice.to_bytes()).unwrap();
    let m = send(&mut reloaded, "after reload");
    assert!(!reloaded.sent_key_is_durable(&m.header));
}

#[test]
fn huge_message_number_fails_fast_and_changes_nothing() {
    let Pair { mut alice, mut bob } = pair(5);
    let mut m = send(&mut alice, "x");
    let before = bob.to_bytes();
    for n in [u32::MAX, BEYOND_MAX_SKIP, 1_000_000] {
        m.header.n = n;
        let err = recv(&mut bob, &m).unwrap_err();
        assert!(matches!(err, Error::GapTooBig { .. }), "{err:?}");
    }
    // Same through a ratchet step: a new DH key with a huge pn or n.
    let mut forged = m.clone();
    forged.header.dh = [9; 32];
    forged.header.pn = u32::MAX;
    forged.header.n = 0;
    assert!(matches!(
        recv(&mut bob, &forged),
        Err(Error::GapTooBig { .. })
    ));
    assert_eq!(
        *bob.to_bytes(),
        *before,
        "state untouched by rejected headers"
    );
    // A gap right at the limit is fine.
    let max = crate::crypto::limits::MAX_SKIP;
    let msgs: Vec<_> = (0..max).map(|i| send(&mut alice, &i.to_string())).collect();
    let last = msgs.last().unwrap();
    assert_eq!(recv(&mut bob, last).unwrap(), (max - 1).to_string());
}

const BEYOND_MAX_SKIP: u32 = crate::crypto::limits::MAX_SKIP + 2;

#[test]
fn global_cap_on_skipped_keys() {
    let Pair { mut alice, mut bob } = pair(6);
    // Several ratchet steps, each skipping close to the per-chain limit.
    for _ in 0..4 {
        let msgs: Vec<_> = (0..900).map(|i| send(&mut alice, &i.to_string())).collect();
        recv(&mut bob, msgs.last().unwrap()).unwrap();
        let b = send(&mut bob, "ack");
        recv(&mut alice, &b).unwrap();
    }
    assert!(bob.skipped_len() <= crate::crypto::limits::MAX_SKIPPED_TOTAL);
    assert_eq!(bob.skipped_len(), crate::crypto::limits::MAX_SKIPPED_TOTAL);
}

#[test]
fn any_flipped_bit_fails_and_leaves_state_unchanged() {
    let Pair { mut alice, mut bob } = pair(7);
    let m = send(&mut alice, "flip me");
    let bytes = m.to_bytes();
    let before = bob.to_bytes();
    for i in 0..bytes.len() * 8 {
        let mut b = bytes.clone();
        b[i / 8] ^= 1 << (i % 8);
        match RatchetMessage::from_bytes(&b) {
            Err(e) => assert!(matches!(e, Error::UnknownVersion { .. }), "{e:?}"),
            Ok(bad) => assert!(recv(&mut bob, &bad).is_err(), "bit {i} accepted"),
        }
    }
    assert_eq!(*bob.to_bytes(), *before);
    // Associated data: a session with different AD cannot read it.
    let mut other = Session::from_bytes(&bob.to_bytes()).unwrap();
    other.ad[0] ^= 1;
    assert!(recv(&mut other, &m).is_err());
    assert_eq!(recv(&mut bob, &m).unwrap(), "flip me");
}

#[test]
fn leaked_state_cannot_read_the_past_and_heals_after_one_round_trip() {
    let Pair { mut alice, mut bob } = pair(8);
    let past = send(&mut alice, "past secret");
    assert_eq!(recv(&mut bob, &past).unwrap(), "past secret");
    // The attacker copies Bob's whole state now.
    let mut stolen = Session::from_bytes(&bob.to_bytes()).unwrap();
    assert!(
        recv(&mut stolen, &past).is_err(),
        "forward secrecy: past message unreadable"
    );
    // Until Bob takes a fresh DH ratchet step, the thief can follow Alice's
    // messages: they are keyed by ratchet keys it already holds.
    let ping = send(&mut alice, "ping");
    assert_eq!(recv(&mut stolen, &ping).unwrap(), "ping");
    recv(&mut bob, &ping).unwrap();
    let pong = send(&mut bob, "pong");
    recv(&mut alice, &pong).unwrap();
    let heal = send(&mut alice, "heal");
    assert_eq!(recv(&mut stolen, &heal).unwrap(), "heal");
    // One round trip: Bob receives Alice's new ratchet key, answers with a
    // fresh key of his own that the thief never saw, Alice uses it.
    recv(&mut bob, &heal).unwrap();
    let answer = send(&mut bob, "answer");
    recv(&mut alice, &answer).unwrap();
    let future = send(&mut alice, "future secret");
    assert!(
        recv(&mut stolen, &future).is_err(),
        "post-compromise: future unreadable"
    );
    assert_eq!(recv(&mut bob, &future).unwrap(), "future secret");
}

#[test]
fn responder_cannot_send_first_and_oversized_plaintext_is_refused() {
    let mut r = rng(9);
    let x = X3dhOutput {
        shared_secret: Secret32::random(&mut r),
        associated_data: [0; 64],
    };
    let mut bob = Session::responder(&x, &Secret32::random(&mut r), None);
    assert!(bob.encrypt(b"x").is_err());
    let Pair { mut alice, .. } = pair(9);
    let big = vec![0u8; crate::crypto::limits::MAX_PLAINTEXT + 1];
    assert!(matches!(alice.encrypt(&big), Err(Error::TooLarge { .. })));
}

#[test]
fn saved_state_decoder_rejects_garbage() {
    let Pair { alice, .. } = pair(10);
    let good = alice.to_bytes();
    let mut trailing = good.to_vec();
    trailing.push(0);
    assert!(matches!(
        Session::from_bytes(&trailing),
        Err(Error::TrailingBytes { .. })
    ));
    let mut version = good.to_vec();
    version[0] = 2;
    assert!(matches!(
        Session::from_bytes(&version),
        Err(Error::UnknownVersion { .. })
    ));
    for cut in [0, 1, 10, good.len() - 1] {
        assert!(Session::from_bytes(&good[..cut]).is_err());
    }
    assert!(matches!(
        Session::from_bytes(&vec![1u8; 10_000_000]),
        Err(Error::TooLarge { .. })
    ));
}

mod props {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, rng_seed: proptest::test_runner::RngSeed::Fixed(7), ..ProptestConfig::default() })]

        /// Whatever the interleaving of sends, deliveries, drops and
        /// reorderings, no (key, nonce) pair is ever used twice, and every
        /// delivered message decrypts exactly once.
        #[test]
        fn no_key_nonce_pair_repeats(ops in proptest::collection::vec((0u8..4, any::<u8>()), 1..120), seed in any::<u64>()) {
            let Pair { mut alice, mut bob } = pair(seed);
            let mut used = HashSet::new();
            let mut to_bob: Vec<(RatchetMessage, String)> = Vec::new();
            let mut to_alice: Vec<(RatchetMessage, String)> = Vec::new();
            let mut r = rng(seed ^ 1);
            for (i, (op, pick)) in ops.into_iter().enumerate() {
                match op {
                    0 => {
                        let text = format!("a{i}");
                        let (m, aead) = alice.encrypt_inner(text.as_bytes()).unwrap();
                        prop_assert!(used.insert(aead.parts()));
                        to_bob.push((m, text));
                    }
                    1 if bob.can_send() => {
                        let text = format!("b{i}");
                        let (m, aead) = bob.encrypt_inner(text.as_bytes()).unwrap();
                        prop_assert!(used.insert(aead.parts()));
                        to_alice.push((m, text));
                    }
                    2 if !to_bob.is_empty() => {
                        let (m, text) = to_bob.remove(pick as usize % to_bob.len());
                        prop_assert_eq!(bob.decrypt(&m, &mut r).unwrap(), text.into_bytes());
                        prop_assert!(bob.decrypt(&m, &mut r).is_err());
                    }
                    3 if !to_alice.is_empty() => {
                        let (m, text) = to_alice.remove(pick as usize % to_alice.len());
                        prop_assert_eq!(alice.decrypt(&m, &mut r).unwrap(), text.into_bytes());
                        prop_assert!(alice.decrypt(&m, &mut r).is_err());
                    }
                    _ => {}
                }
            }
        }

        /// A sender that lets each message leave before its session state
        /// is on disk when `sent_key_is_durable` allows, as the node does,
        /// with the node's rounds cut into their steps: encrypting a batch
        /// (what may leave early leaves at once) then storing the session
        /// (a failed store sends nothing more of the batch), flushing (what
        /// waited for it leaves), crashing (back to
        /// what is on disk), a clean stop (the exact form, then a restart),
        /// and receiving. No (key, nonce) pair that left is ever used again,
        /// and every message that left decrypts.
        #[test]
        fn a_sender_that_sends_early_and_crashes_never_reuses_a_key(ops in proptest::collection::vec((0u8..8, any::<u8>()), 1..200), seed in any::<u64>()) {
            let Pair { mut alice, mut bob } = pair(seed);
            let mut on_disk = alice.to_bytes();
            alice.note_stored();
            alice.mark_saved_durable();
            let mut stored: Option<zeroize::Zeroizing<Vec<u8>>> = None;
            let mut used = HashSet::new();
            let mut waiting: Vec<(RatchetMessage, Aead, String)> = Vec::new();
            let mut to_bob: Vec<(RatchetMessage, String)> = Vec::new();
            let mut to_alice: Vec<(RatchetMessage, String)> = Vec::new();
            let mut r = rng(seed ^ 2);
            for (i, (op, pick)) in ops.into_iter().enumerate() {
                match op {
                    // A batch of one, or of more than half the reserve,
                    // then the session's store: it succeeds (0, 1) or
                    // fails (2: the batch is dropped unsent).
                    0..=2 => {
                        let k = if op == 1 { 20 } else { 1 };
                        let mut batch = Vec::new();
                        for j in 0..k {
                            let text = format!("a{i}.{j}");
                            let (m, aead) = alice.encrypt_inner(text.as_bytes()).unwrap();
                            if alice.sent_key_is_durable(&m.header) {
                                prop_assert!(used.insert(aead.parts()));
                                to_bob.push((m, text));
                            } else {
                                batch.push((m, aead, text));
                            }
                        }
                        let bytes = alice.to_bytes();
                        if op == 2 {
                            continue;
                        }
                        stored = Some(bytes);
                        alice.note_stored();
                        waiting.extend(batch);
                    }
                    // The flush: what was stored is on disk; the rest leaves.
                    3 => {
                        if let Some(bytes) = stored.take() {
                            on_disk = bytes;
                        }
                        alice.mark_saved_durable();
                        for (m, aead, text) in waiting.drain(..) {
                            prop_assert!(used.insert(aead.parts()));
                            to_bob.push((m, text));
                        }
                    }
                    // A crash: back to what is on disk; what waited for the
                    // flush never left.
                    4 => {
                        alice = Session::from_bytes(&on_disk).unwrap();
                        waiting.clear();
                        stored = None;
                    }
                    // A clean stop: the exact form, flushed; what waited
                    // leaves; then a restart from it.
                    5 => {
                        on_disk = alice.to_bytes_exact();
                        for (m, aead, text) in waiting.drain(..) {
                            prop_assert!(used.insert(aead.parts()));
                            to_bob.push((m, text));
                        }
                        alice = Session::from_bytes(&on_disk).unwrap();
                        stored = None;
                    }
                    6 if !to_bob.is_empty() => {
                        let (m, text) = to_bob.remove(pick as usize % to_bob.len());
                        prop_assert_eq!(bob.decrypt(&m, &mut r).unwrap(), text.into_bytes());
                        if bob.can_send() && pick % 3 == 0 {
                            let text = format!("b{i}");
                            let (m, aead) = bob.encrypt_inner(text.as_bytes()).unwrap();
                            prop_assert!(used.insert(aead.parts()));
                            to_alice.push((m, text));
                        }
                    }
                    // Alice reads a message: stored and flushed before it
                    // counts (the node acks after its flush).
                    7 if !to_alice.is_empty() => {
                        let (m, text) = to_alice.remove(pick as usize % to_alice.len());
                        prop_assert_eq!(alice.decrypt(&m, &mut r).unwrap(), text.into_bytes());
                        on_disk = alice.to_bytes();
                        alice.note_stored();
                        alice.mark_saved_durable();
                        stored = None;
                        for (m, aead, text) in waiting.drain(..) {
                            prop_assert!(used.insert(aead.parts()));
                            to_bob.push((m, text));
                        }
                    }
                    _ => {}
                }
            }
            // Everything that left still decrypts.
            for (m, text) in to_bob {
                prop_assert_eq!(bob.decrypt(&m, &mut r).unwrap(), text.into_bytes());
            }
        }
    }
}
