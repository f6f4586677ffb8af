//! What a relay refuses, and what it drops, and how the sender hears it.

use std::time::Duration;

use meshchat::crypto::{Envelope, MailboxKey};
use meshchat::node::NodeEvent;
use meshchat::relay::metrics::Metrics;
use meshchat::relay::proto::{Fetch, Owner, Refusal, Request, Response, Signed};
use meshchat::store::DeliveryState;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::common::{TestNode, befriend, config, receipt};
use crate::{Client, TestRelay, relay_config};

/// Alice and Carol are contacts; Carol (whose relay is `relay`) has gone
/// away. Returns Alice and Carol's identity key.
async fn carol_away(
    relay: &TestRelay,
    da: &std::path::Path,
    dc: &std::path::Path,
    seed: u64,
    tune: impl FnOnce(&mut meshchat::node::NodeConfig),
) -> (TestNode, [u8; 32]) {
    let mut a_cfg = config(da, seed);
    tune(&mut a_cfg);
    let mut a = TestNode::start_with("alice", a_cfg).await;
    let mut c_cfg = config(dc, seed + 1);
    c_cfg.relays = vec![relay.addr.clone()];
    let mut c = TestNode::start_with("carol", c_cfg).await;
    befriend(&mut a, &mut c).await;
    let key = c.key();
    c.handle.shutdown(Duration::from_secs(10)).await.unwrap();
    (a, key)
}

async fn refused(a: &mut TestNode, sent: meshchat::store::MessageRef) -> Refusal {
    a.wait("a refusal", |e| match e {
        NodeEvent::RelayRefused {
            message, reason, ..
        } if *message == sent => Some(*reason),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_and_an_oversized_envelope_give_the_sender_the_reason() {
    let dr = tempfile::tempdir().unwrap();
    let mut cfg = relay_config(dr.path(), 121);
    cfg.limits.max_count = 1;
    cfg.limits.max_envelope = 2_048;
    let r = TestRelay::start(cfg).await;
    let (da, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut a, carol) = carol_away(&r, da.path(), dc.path(), 122, |_| {}).await;

    let first = a.handle.send(carol, b"first".to_vec()).await.unwrap();
    receipt(&mut a, first, DeliveryState::StoredAtRelay).await;
    let second = a.handle.send(carol, b"second".to_vec()).await.unwrap();
    assert_eq!(refused(&mut a, second).await, Refusal::QuotaFull);
    let big = a.handle.send(carol, vec![b'x'; 8_000]).await.unwrap();
    assert_eq!(refused(&mut a, big).await, Refusal::TooLarge);
    // Refused is not dropped: both stay queued for the other paths.
    assert_eq!(a.handle.queued().await.unwrap(), 3);
    let m = r.handle.metrics();
    assert!(m.refusals(Refusal::QuotaFull) >= 1);
    assert!(m.refusals(Refusal::TooLarge) >= 1);
    assert_eq!(Metrics::get(&m.envelopes), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_mail_is_purged_at_the_relay_and_the_sender_is_told() {
    let dr = tempfile::tempdir().unwrap();
    let r = TestRelay::start(relay_config(dr.path(), 131)).await;
    let (da, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut a, carol) = carol_away(&r, da.path(), dc.path(), 132, |cfg| {
        cfg.message_ttl = Duration::from_secs(6);
    })
    .await;
    let sent = a.handle.send(carol, b"soon gone".to_vec()).await.unwrap();
    receipt(&mut a, sent, DeliveryState::StoredAtRelay).await;
    // Held (counted, whatever the clock has done since)…
    assert_eq!(Metrics::get(&r.handle.metrics().deposited_envelopes), 1);
    // …then dropped at the envelope's own expiry…
    r.holds(0).await;
    assert_eq!(Metrics::get(&r.handle.metrics().expired_envelopes), 1);
    // …and the sender's outbox gives up at the same time and says so.
    a.wait("the expiry", |e| match e {
        NodeEvent::Expired { message } if *message == sent => Some(()),
        _ => None,
    })
    .await;
    assert_eq!(a.handle.queued().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_mailbox_key_reads_a_mailbox() {
    let dr = tempfile::tempdir().unwrap();
    let r = TestRelay::start(relay_config(dr.path(), 141)).await;
    let relay = r.handle.peer_id();
    let mut client = Client::connect(&r, 142).await;
    let mut rng = StdRng::seed_from_u64(143);
    let owner = MailboxKey::generate(&mut rng);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let env = Envelope::new(owner.id().0, [1; 16], now + 3_600, vec![7; 300]).to_bytes();
    let deposit = Request::Deposit(vec![serde_bytes::ByteBuf::from(env.clone())]);
    let Response::Custody(receipt) = client.ask(relay, deposit).await else {
        panic!("no custody")
    };
    receipt
        .verify(&r.handle.identity(), std::slice::from_ref(&env))
        .unwrap();

    let fetch = |signer: &MailboxKey, named: &MailboxKey, rng: &mut StdRng| {
        Request::Fetch(Signed::new(
            signer,
            Fetch {
                owner: Owner::new(named, r.handle.identity(), now, rng),
                after: None,
                limit: 10,
                wait_secs: 0,
            },
        ))
    };
    let thief = MailboxKey::generate(&mut rng);
    // Signed by another key in the owner's name: refused.
    assert_eq!(
        client.ask(relay, fetch(&thief, &owner, &mut rng)).await,
        Response::Refused(Refusal::BadSignature)
    );
    // The thief's own mailbox: empty, nothing of the owner's.
    assert_eq!(
        client.ask(relay, fetch(&thief, &thief, &mut rng)).await,
        Response::Mail {
            items: vec![],
            more: false
        }
    );
    // The owner: its envelope.
    let Response::Mail { items, .. } = client.ask(relay, fetch(&owner, &owner, &mut rng)).await
    else {
        panic!("no mail")
    };
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].envelope, env);
    assert_eq!(r.handle.metrics().refusals(Refusal::BadSignature), 1);
}

/// A device whose relay is a plain node: every request about its own
/// mailbox is refused (not a relay), and the device tells its user which
/// and why, rather than asking again every few seconds in silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_refusing_our_own_requests_is_reported() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let plain = TestNode::start_in("plain", dirs[0].path(), 251).await;
    let mut cfg = config(dirs[1].path(), 252);
    cfg.relays = vec![plain.addr.clone()];
    cfg.reserve_circuits = false;
    let mut a = TestNode::start_with("alice", cfg).await;
    let relay = plain.peer();
    let mut seen = std::collections::HashSet::new();
    a.wait("the fetch and the publish refused", |e| {
        if let NodeEvent::MailboxRefused {
            relay: r,
            request,
            reason,
        } = e
        {
            assert_eq!((*r, *reason), (relay, Refusal::NotRelay));
            seen.insert(*request);
        }
        (seen.contains("fetch") && seen.contains("publish")).then_some(())
    })
    .await;
}

/// The relay refuses the device's acknowledgement (owner requests are
/// limited to one a second here, and the fetch just took it): what the
/// device took is acknowledged again with the next fetch's answer, and
/// the relay lets it go while the device stays connected (before, it
/// stayed until the device reconnected).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_the_relay_refused_is_sent_again() {
    let dr = tempfile::tempdir().unwrap();
    let mut cfg = relay_config(dr.path(), 261);
    cfg.limits.owner_rate = meshchat::node::net::RateLimit {
        burst: 1,
        per_second: 1,
    };
    cfg.max_wait = Duration::from_secs(1);
    let r = TestRelay::start(cfg).await;
    let (da, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut a, carol) = carol_away(&r, da.path(), dc.path(), 262, |_| {}).await;
    let sent = a.handle.send(carol, b"held".to_vec()).await.unwrap();
    receipt(&mut a, sent, DeliveryState::StoredAtRelay).await;
    r.holds(1).await;
    let mut c_cfg = config(dc.path(), 263);
    c_cfg.relays = vec![r.addr.clone()];
    let mut c = TestNode::start_with("carol", c_cfg).await;
    c.wait("the acknowledgement refused", |e| {
        matches!(
            e,
            NodeEvent::MailboxRefused {
                request: "ack",
                reason: Refusal::RateLimited,
                ..
            }
        )
        .then_some(())
    })
    .await;
    r.holds(0).await;
}

/// A mailbox keeps at most `MAX_PARKED_PER_MAILBOX` fetches waiting: one
/// more answers the oldest at once (empty, so its owner asks again), and a
/// deposit then wakes only those kept. So nobody can park thousands of
/// fetches on one mailbox and make every deposit to it cost thousands of
/// lookups on the relay's store thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_keeps_only_a_few_fetches_waiting() {
    use meshchat::node::net::NetEvent;
    use meshchat::relay::server::MAX_PARKED_PER_MAILBOX;
    let dr = tempfile::tempdir().unwrap();
    let r = TestRelay::start(relay_config(dr.path(), 161)).await;
    let relay = r.handle.peer_id();
    let mut client = Client::connect(&r, 162).await;
    let mut rng = StdRng::seed_from_u64(163);
    let owner = MailboxKey::generate(&mut rng);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let extra = 2;
    let mut ids = Vec::new();
    for _ in 0..MAX_PARKED_PER_MAILBOX + extra {
        let fetch = Request::Fetch(Signed::new(
            &owner,
            Fetch {
                owner: Owner::new(&owner, r.handle.identity(), now, &mut rng),
                after: None,
                limit: 10,
                wait_secs: 20,
            },
        ));
        ids.push(client.net.send_mailbox(&relay, fetch));
    }
    // The first to come are answered, empty, while nothing was deposited.
    let mut answered = Vec::new();
    tokio::time::timeout(crate::common::WAIT, async {
        while answered.len() < extra {
            if let NetEvent::MailboxResponse {
                request, response, ..
            } = client.net.next_event().await
            {
                assert_eq!(
                    response,
                    Response::Mail {
                        items: vec![],
                        more: false
                    }
                );
                answered.push(request);
            }
        }
    })
    .await
    .expect("the oldest fetches answered");
    // (Which ones: those that reached the relay first; each request has
    // its own stream, so that need not be the order they were sent in.)
    answered.sort();
    answered.dedup();
    assert_eq!(answered.len(), extra);
    assert!(answered.iter().all(|a| ids.contains(a)));
    // A deposit wakes the others, each with the envelope.
    let env = Envelope::new(owner.id().0, [2; 16], now + 3_600, vec![7; 300]).to_bytes();
    let deposit = Request::Deposit(vec![serde_bytes::ByteBuf::from(env)]);
    let deposit_id = client.net.send_mailbox(&relay, deposit);
    let mut woken = 0;
    let mut custody = false;
    tokio::time::timeout(crate::common::WAIT, async {
        while woken < MAX_PARKED_PER_MAILBOX || !custody {
            if let NetEvent::MailboxResponse {
                request, response, ..
            } = client.net.next_event().await
            {
                if request == deposit_id {
                    assert!(matches!(response, Response::Custody(_)), "{response:?}");
                    custody = true;
                    continue;
                }
                assert!(ids.contains(&request) && !answered.contains(&request));
                let Response::Mail { items, .. } = response else {
                    panic!("not mail: {response:?}")
                };
                assert_eq!(items.len(), 1);
                woken += 1;
            }
        }
    })
    .await
    .expect("the kept fetches woken by the deposit");
}
