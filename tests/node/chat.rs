//! Two nodes talking.

use std::time::Duration;

use meshchat::node::engine::EngineError;
use meshchat::node::{NodeError, NodeEvent};
use meshchat::store::DeliveryState;

use crate::common::{TestNode, befriend, message, receipt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_exchange_messages_both_ways_with_delivered_and_read_receipts() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = TestNode::start_in("alice", da.path(), 1).await;
    let mut b = TestNode::start_in("bob", db.path(), 2).await;
    befriend(&mut a, &mut b).await;

    let sent = a.handle.send(b.key(), b"hello bob".to_vec()).await.unwrap();
    let got = message(&mut b, b"hello bob").await;
    assert_eq!(got.sender, a.key());
    receipt(&mut a, sent, DeliveryState::Delivered).await;
    assert!(b.handle.mark_read(a.key()).await.unwrap());
    receipt(&mut a, sent, DeliveryState::Read).await;

    let reply = b.handle.send(a.key(), b"hi alice".to_vec()).await.unwrap();
    let back = message(&mut a, b"hi alice").await;
    // A reply sorts after what it answers.
    assert!(back.lamport > got.lamport);
    receipt(&mut b, reply, DeliveryState::Delivered).await;
    assert!(a.handle.mark_read(b.key()).await.unwrap());
    receipt(&mut b, reply, DeliveryState::Read).await;

    // Both histories hold both messages, newest first, with their states.
    let page = a.handle.history(b.key(), None, 10).await.unwrap();
    let bodies: Vec<&[u8]> = page.messages.iter().map(|m| m.body.as_slice()).collect();
    assert_eq!(bodies, vec![&b"hi alice"[..], &b"hello bob"[..]]);
    assert_eq!(page.messages[1].state, DeliveryState::Read);
    let page = b.handle.history(a.key(), None, 10).await.unwrap();
    assert_eq!(page.messages[0].state, DeliveryState::Read);
    // Read receipts wait in the outbox until acknowledged. One batch is in
    // flight per peer and acks are handled in order, so once a later
    // message is delivered, every earlier receipt has left the queue.
    let last = a.handle.send(b.key(), b"last".to_vec()).await.unwrap();
    receipt(&mut a, last, DeliveryState::Delivered).await;
    assert_eq!(a.handle.queued().await.unwrap(), 0);
    assert_eq!(b.handle.queued().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_gets_what_was_sent_meanwhile_and_continues_the_session() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = TestNode::start_in("alice", da.path(), 3).await;
    let mut b = TestNode::start_in("bob", db.path(), 4).await;
    befriend(&mut a, &mut b).await;
    let first = a.handle.send(b.key(), b"before".to_vec()).await.unwrap();
    message(&mut b, b"before").await;
    receipt(&mut a, first, DeliveryState::Delivered).await;

    let (b_peer, b_key, b_seed) = (b.peer(), b.key(), 4);
    b.handle.shutdown(Duration::from_secs(10)).await.unwrap();
    drop(b);
    a.wait("bob's disconnection", |e| match e {
        NodeEvent::Disconnected { peer } if *peer == b_peer => Some(()),
        _ => None,
    })
    .await;
    // Sent while bob is away: stored and queued until he is back.
    let meanwhile = a.handle.send(b_key, b"while away".to_vec()).await.unwrap();
    assert_eq!(a.handle.queued().await.unwrap(), 1);

    // Bob comes back on a new port and dials alice (her address is in his
    // contact record); the queued message follows at once.
    let mut b = TestNode::start_in("bob", db.path(), b_seed).await;
    assert_eq!(b.key(), b_key);
    message(&mut b, b"while away").await;
    receipt(&mut a, meanwhile, DeliveryState::Delivered).await;

    // The same sessions go on both ways.
    let after = a.handle.send(b_key, b"after".to_vec()).await.unwrap();
    message(&mut b, b"after").await;
    receipt(&mut a, after, DeliveryState::Delivered).await;
    b.handle.send(a.key(), b"back".to_vec()).await.unwrap();
    message(&mut a, b"back").await;
    let page = b.handle.history(a.key(), None, 10).await.unwrap();
    let bodies: Vec<&[u8]> = page.messages.iter().map(|m| m.body.as_slice()).collect();
    assert_eq!(
        bodies,
        vec![
            &b"back"[..],
            &b"after"[..],
            &b"while away"[..],
            &b"before"[..]
        ]
    );
}

/// A node stopped at once (no clean stop, so its sessions were last saved
/// with their sending chains reserved ahead) comes back on those sessions:
/// its next messages jump over the keys it never used, and both sides read
/// each other as before, each message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_comes_back_on_its_saved_sessions_and_both_sides_read_on() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = TestNode::start_in("alice", da.path(), 7).await;
    let mut b = TestNode::start_in("bob", db.path(), 8).await;
    befriend(&mut a, &mut b).await;
    // Both sides send, so both have a sending chain saved on disk; alice's
    // later messages leave before their rounds' flushes.
    let mut before = Vec::new();
    for body in [&b"one"[..], b"two", b"three"] {
        let sent = a.handle.send(b.key(), body.to_vec()).await.unwrap();
        message(&mut b, body).await;
        receipt(&mut a, sent, DeliveryState::Delivered).await;
        before.push(body);
    }
    let reply = b.handle.send(a.key(), b"reply".to_vec()).await.unwrap();
    message(&mut a, b"reply").await;
    receipt(&mut b, reply, DeliveryState::Delivered).await;
    for body in [&b"four"[..], b"five"] {
        let sent = a.handle.send(b.key(), body.to_vec()).await.unwrap();
        message(&mut b, body).await;
        receipt(&mut a, sent, DeliveryState::Delivered).await;
        before.push(body);
    }

    let (a_peer, a_key) = (a.peer(), a.key());
    a.handle.kill();
    a.handle
        .wait_stopped(Duration::from_secs(10))
        .await
        .unwrap();
    drop(a);
    b.wait("alice's disconnection", |e| match e {
        NodeEvent::Disconnected { peer } if *peer == a_peer => Some(()),
        _ => None,
    })
    .await;

    let mut a = TestNode::start_in("alice", da.path(), 7).await;
    assert_eq!(a.key(), a_key);
    a.connected_to(b.peer()).await;
    let after = a.handle.send(b.key(), b"after".to_vec()).await.unwrap();
    message(&mut b, b"after").await;
    receipt(&mut a, after, DeliveryState::Delivered).await;
    let back = b.handle.send(a_key, b"back".to_vec()).await.unwrap();
    message(&mut a, b"back").await;
    receipt(&mut b, back, DeliveryState::Delivered).await;
    let again = a.handle.send(b.key(), b"again".to_vec()).await.unwrap();
    message(&mut b, b"again").await;
    receipt(&mut a, again, DeliveryState::Delivered).await;

    // Bob's history holds each of alice's messages once.
    let page = b.handle.history(a_key, None, 20).await.unwrap();
    let mut from_alice: Vec<&[u8]> = page
        .messages
        .iter()
        .filter(|m| m.sender == a_key)
        .map(|m| m.body.as_slice())
        .collect();
    from_alice.reverse();
    let mut want = before;
    want.extend([&b"after"[..], b"again"]);
    assert_eq!(from_alice, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_arrive_exactly_once_and_in_order() {
    const N: usize = 1000;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = TestNode::start_in("alice", da.path(), 5).await;
    let mut b = TestNode::start_in("bob", db.path(), 6).await;
    befriend(&mut a, &mut b).await;
    let (handle, to) = (a.handle.clone(), b.key());
    let sender = tokio::spawn(async move {
        for i in 0..N {
            handle
                .send(to, format!("m{i:04}").into_bytes())
                .await
                .unwrap();
        }
    });
    let mut got = Vec::with_capacity(N);
    while got.len() < N {
        let body = b
            .wait("the next message", |e| match e {
                NodeEvent::Message { message, .. } => Some(message.body.clone()),
                _ => None,
            })
            .await;
        got.push(String::from_utf8(body).unwrap());
    }
    sender.await.unwrap();
    let want: Vec<String> = (0..N).map(|i| format!("m{i:04}")).collect();
    assert_eq!(got, want);
    // Every message acknowledged, nothing left to retry, and no second
    // copy: the history holds exactly N, and no more message events come
    // while alice's outbox drains.
    let mut left = a.handle.queued().await.unwrap();
    while left > 0 {
        a.wait("a delivered receipt", |e| match e {
            NodeEvent::Receipt { .. } => Some(()),
            _ => None,
        })
        .await;
        left = a.handle.queued().await.unwrap();
    }
    let mut stored = 0;
    let mut cursor = None;
    loop {
        let page = b.handle.history(a.key(), cursor, 200).await.unwrap();
        stored += page.messages.len();
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(stored, N);
    while let Ok(e) = b.events.try_recv() {
        assert!(!matches!(e, NodeEvent::Message { .. }), "extra {e:?}");
    }
}

/// A burst that fails part way (here its second chunk holds a body over
/// the limit) names what its earlier chunks stored and queued, so that the
/// caller does not send those again; they are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_that_fails_part_way_names_what_was_sent() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = TestNode::start_in("alice", da.path(), 7).await;
    let mut b = TestNode::start_in("bob", db.path(), 8).await;
    befriend(&mut a, &mut b).await;
    let mut bodies: Vec<Vec<u8>> = (0..1024).map(|i| format!("b{i:04}").into_bytes()).collect();
    bodies.push(vec![b'x'; 70_000]);
    let err = a.handle.send_many(b.key(), bodies).await.unwrap_err();
    let NodeError::PartlySent { sent, error } = err else {
        panic!("not a partial send: {err}");
    };
    assert_eq!(sent.len(), 1024);
    assert!(
        matches!(*error, NodeError::Engine(EngineError::BodyTooLarge { .. })),
        "{error}"
    );
    // Only those were written, and they arrive.
    let first = a.handle.history(b.key(), None, 1000).await.unwrap();
    let rest = a.handle.history(b.key(), first.next, 1000).await.unwrap();
    assert_eq!(first.messages.len() + rest.messages.len(), 1024);
    assert!(rest.next.is_none());
    let mut got = 0;
    while got < 1024 {
        b.wait("the burst's messages", |e| match e {
            NodeEvent::Message { .. } => Some(()),
            _ => None,
        })
        .await;
        got += 1;
    }
    // An empty first chunk's error is the error itself.
    let err = a
        .handle
        .send_many(b.key(), vec![vec![b'x'; 70_000]])
        .await
        .unwrap_err();
    assert!(
        matches!(err, NodeError::Engine(EngineError::BodyTooLarge { .. })),
        "{err}"
    );
}
