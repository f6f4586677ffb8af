//! Temporary 1:1 chats: the setting reaches the other side, and messages
//! of either side disappear on both devices and at the relay when their
//! time is up.

use std::time::Duration;

use meshchat::node::NodeEvent;
use meshchat::relay::metrics::Metrics;

use crate::common::{TestNode, WAIT, befriend, config, message};
use crate::{TestRelay, relay_config};

/// Waits until `node` hears that its chat with `contact` keeps messages
/// `secs` seconds.
async fn retention(node: &mut TestNode, contact: [u8; 32], secs: Option<u64>) {
    node.wait("the retention", |e| match e {
        NodeEvent::RetentionChanged {
            contact: c,
            secs: s,
            ..
        } if *c == contact && *s == secs => Some(()),
        _ => None,
    })
    .await;
}

/// Waits until none of `bodies` is in `node`'s history with `contact`.
async fn gone(node: &mut TestNode, contact: [u8; 32], bodies: &[&[u8]]) {
    loop {
        let page = node.handle.history(contact, None, 50).await.unwrap();
        if page
            .messages
            .iter()
            .all(|m| !bodies.contains(&m.body.as_slice()))
        {
            return;
        }
        node.wait("messages to disappear", |e| {
            matches!(e, NodeEvent::Disappeared { .. }).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_chat_disappears_on_both_devices_and_the_relay() {
    // Long enough for a message to reach the relay and be seen there on a
    // busy machine.
    const RETENTION: u64 = 15;
    let dr = tempfile::tempdir().unwrap();
    let r = TestRelay::start(relay_config(dr.path(), 821)).await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = TestNode::start_in("alice", da.path(), 822).await;
    let b_config = || {
        let mut cfg = config(db.path(), 823);
        cfg.relays = vec![r.addr.clone()];
        cfg
    };
    let mut b = TestNode::start_with("bob", b_config()).await;
    befriend(&mut a, &mut b).await;
    let (ka, kb) = (a.key(), b.key());

    // Alice makes the chat temporary; bob's device hears of it.
    a.handle.set_retention(kb, Some(RETENTION)).await.unwrap();
    retention(&mut a, kb, Some(RETENTION)).await;
    retention(&mut b, ka, Some(RETENTION)).await;
    // Out of bounds is refused.
    assert!(a.handle.set_retention(kb, Some(0)).await.is_err());

    // Bob's messages are temporary too, and carry their end.
    let from_bob: &[u8] = b"bob: this too will pass";
    b.handle.send(ka, from_bob.to_vec()).await.unwrap();
    let got = message(&mut a, from_bob).await;
    assert_eq!(got.expires_at, Some(got.sent_at + RETENTION));

    // Bob leaves; alice's next message waits at his relay with its end.
    b.handle.shutdown(Duration::from_secs(10)).await.unwrap();
    drop(b);
    let from_alice: &[u8] = b"alice: self-destructs";
    a.handle.send(kb, from_alice.to_vec()).await.unwrap();
    let mut held = r.handle.held();
    tokio::time::timeout(WAIT, held.wait_for(|h| *h >= 1))
        .await
        .expect("the relay holds bob's copy")
        .unwrap();

    // Then both are gone from alice's device, and the relay drops its copy.
    gone(&mut a, kb, &[from_bob, from_alice]).await;
    tokio::time::timeout(WAIT, async {
        while Metrics::get(&r.handle.metrics().expired_envelopes) == 0 {
            held.changed().await.unwrap();
        }
    })
    .await
    .expect("the relay purged bob's copy");

    // Bob, back: his own message went while he was away, alice's never
    // comes. He makes the chat permanent again; alice's next one stays.
    let mut b = TestNode::start_with("bob", b_config()).await;
    gone(&mut b, ka, &[from_bob, from_alice]).await;
    b.handle.set_retention(ka, None).await.unwrap();
    retention(&mut a, kb, None).await;
    a.handle.send(kb, b"kept".to_vec()).await.unwrap();
    let kept = message(&mut b, b"kept").await;
    assert_eq!(kept.expires_at, None);
    let page = b.handle.history(ka, None, 50).await.unwrap();
    assert!(page.messages.iter().all(|m| m.body != from_alice));
}
