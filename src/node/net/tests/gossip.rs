//! Topics and shards, the gossip validator and its rate limiter, and the
//! gossipsub configuration.

use std::time::{Duration, Instant};

use libp2p::PeerId;
use proptest::prelude::*;

use crate::node::net::*;

proptest! {
    #[test]
    fn shards_are_in_range(id in any::<[u8; 32]>(), shards in any::<u16>()) {
        let shard = inbox_shard(&id, shards);
        prop_assert!(shard < shards.max(1));
        prop_assert_eq!(Topic::inbox_for(&id, shards), Topic::Inbox(shard));
    }

    #[test]
    fn topic_parse_never_panics(s in ".{0,120}") {
        if let Some(topic) = Topic::parse(&s) {
            prop_assert_eq!(topic.to_string(), s);
        }
    }
}

#[test]
fn topic_names() {
    assert_eq!(Topic::Presence.to_string(), "meshchat/1/presence");
    assert_eq!(Topic::Inbox(3).to_string(), "meshchat/1/inbox/3");
    let mut id = [0u8; 32];
    id[0] = 0xab;
    id[31] = 0x01;
    let group = Topic::Group(id);
    let name = group.to_string();
    assert_eq!(
        name,
        "meshchat/1/group/ab00000000000000000000000000000000000000000000000000000000000001"
    );
    for topic in [Topic::Presence, Topic::Inbox(0), Topic::Inbox(65535), group] {
        assert_eq!(Topic::parse(&topic.to_string()), Some(topic));
        assert_eq!(Topic::from_hash(&topic.hash()), Some(topic));
    }
    for bad in [
        "meshchat/1/inbox/",
        "meshchat/1/inbox/01",
        "meshchat/1/inbox/+1",
        "meshchat/1/inbox/65536",
        "meshchat/2/presence",
        &name.to_uppercase(),
        &name[..name.len() - 1],
    ] {
        assert_eq!(Topic::parse(bad), None, "{bad}");
    }
}

#[test]
fn inbox_shard_uses_the_leading_bytes() {
    let mut id = [0xee; 32];
    id[..8].copy_from_slice(&5u64.to_be_bytes());
    assert_eq!(inbox_shard(&id, 4), 1);
    assert_eq!(inbox_shard(&id, 1), 0);
    assert_eq!(inbox_shard(&id, 0), 0);
    assert_eq!(inbox_shard(&id, 3), 2);
}

fn peer(n: u8) -> PeerId {
    let key = libp2p::identity::Keypair::ed25519_from_bytes([n; 32]).unwrap();
    key.public().to_peer_id()
}

fn envelope_like(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    v[0] = 1;
    v
}

#[test]
fn a_flooding_peer_is_cut_off_while_others_pass() {
    let rate = RateLimit {
        burst: 10,
        per_second: 5,
    };
    let mut v = GossipValidator::new(GossipLimits::default(), rate, 16);
    let (flooder, quiet) = (peer(1), peer(2));
    let inbox = Topic::Inbox(0);
    let t0 = Instant::now();
    let msg = envelope_like(300);
    let verdicts: Vec<_> = (0..100)
        .map(|_| v.check(&flooder, Some(&inbox), &msg, t0))
        .collect();
    assert!(verdicts[..10].iter().all(Verdict::is_accept));
    assert!(
        verdicts[10..]
            .iter()
            .all(|v| *v == Verdict::Ignore(Reason::RateLimited))
    );
    // Another peer is unaffected, at the same instant.
    for _ in 0..10 {
        assert_eq!(v.check(&quiet, Some(&inbox), &msg, t0), Verdict::Accept);
    }
    // The flooder earns 5 messages per second back, no more.
    let t1 = t0 + Duration::from_secs(1);
    let refilled = (0..20)
        .filter(|_| v.check(&flooder, Some(&inbox), &msg, t1).is_accept())
        .count();
    assert_eq!(refilled, 5);
    // And never more than the burst, however long it waited.
    let t2 = t1 + Duration::from_secs(3600);
    let refilled = (0..100)
        .filter(|_| v.check(&flooder, Some(&inbox), &msg, t2).is_accept())
        .count();
    assert_eq!(refilled, 10);
}

#[test]
fn rate_limiter_memory_is_bounded() {
    let rate = RateLimit {
        burst: 1,
        per_second: 1,
    };
    let mut limiter = RateLimiter::new(rate, 8);
    let t0 = Instant::now();
    let first = peer(0);
    assert!(limiter.allow(&first, t0));
    assert!(!limiter.allow(&first, t0));
    for n in 1..=200u8 {
        let t = t0 + Duration::from_millis(u64::from(n));
        assert!(limiter.allow(&peer(n), t));
        assert!(limiter.len() <= 8);
    }
    // The least recently seen peer was forgotten first.
    assert_eq!(limiter.len(), 8);
    assert!(limiter.allow(&first, t0 + Duration::from_millis(201)));
}

#[test]
fn validator_checks_size_version_and_topic() {
    let limits = GossipLimits::default();
    let mut v = GossipValidator::new(limits, RateLimit::default(), 16);
    let p = peer(3);
    let now = Instant::now();
    let inbox = Topic::Inbox(0);
    assert_eq!(
        v.check(&p, Some(&inbox), &envelope_like(limits.max_inbox), now),
        Verdict::Accept
    );
    assert_eq!(
        v.check(&p, Some(&inbox), &envelope_like(limits.max_inbox + 1), now),
        Verdict::Reject(Reason::TooLarge {
            len: limits.max_inbox + 1,
            max: limits.max_inbox
        })
    );
    assert_eq!(
        v.check(
            &p,
            Some(&Topic::Presence),
            &envelope_like(limits.max_presence + 1),
            now
        ),
        Verdict::Reject(Reason::TooLarge {
            len: limits.max_presence + 1,
            max: limits.max_presence
        })
    );
    assert_eq!(
        v.check(&p, Some(&inbox), &[], now),
        Verdict::Reject(Reason::Empty)
    );
    assert_eq!(
        v.check(&p, Some(&inbox), &[9, 0, 0], now),
        Verdict::Ignore(Reason::UnknownVersion(9))
    );
    assert_eq!(
        v.check(&p, None, &[1], now),
        Verdict::Reject(Reason::UnknownTopic)
    );
    let expired = Verdict::Ignore(Reason::Application("expired"));
    assert_eq!(Verdict::Accept.and_then(|| expired), expired);
    assert_eq!(
        Verdict::Reject(Reason::Empty).and_then(|| Verdict::Accept),
        Verdict::Reject(Reason::Empty)
    );
}

#[test]
fn gossipsub_config_fits_the_largest_envelope() {
    let cfg = NetConfig::loopback();
    let gs = gossipsub_config(&cfg).unwrap();
    assert!(gs.max_transmit_size() > crate::crypto::limits::MAX_ENVELOPE);
    assert!(gs.validate_messages());
    assert!(gs.mesh_outbound_min() <= gs.mesh_n_low());
    assert!(gs.mesh_n_low() <= gs.mesh_n() && gs.mesh_n() <= gs.mesh_n_high());
    // The message id is the SHA-256 of the data, whoever sends it.
    let message = libp2p::gossipsub::Message {
        source: None,
        data: b"hello".to_vec(),
        sequence_number: None,
        topic: Topic::Presence.hash(),
    };
    let expected: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(b"hello").into();
    assert_eq!(gs.message_id(&message).0, expected.to_vec());
}
