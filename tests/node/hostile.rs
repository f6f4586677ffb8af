//! One peer sends everything a broken or malicious peer could while another
//! conversation goes on.

use std::sync::Arc;

use libp2p::PeerId;
use meshchat::crypto::{Envelope, KdfParams, Keystore};
use meshchat::node::engine::Engine;
use meshchat::node::net::direct::{Batch, FrameStatus, Limits};
use meshchat::node::net::{Net, NetConfig, NetEvent, Published};
use meshchat::node::state::Invite;
use meshchat::node::{NodeEvent, proto::Frame};
use meshchat::store::Store;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::common::{TestNode, WAIT, befriend, logs};

/// Polls `net` until `pick` accepts an event.
async fn until<T>(net: &mut Net, what: &str, mut pick: impl FnMut(NetEvent) -> Option<T>) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(t) = pick(net.next_event().await) {
                return t;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("hostile peer: no {what} within {WAIT:?}"))
}

/// Sends one batch and waits for its outcome: the statuses, or `None`
/// if the request failed.
async fn request(net: &mut Net, to: PeerId, frames: Vec<Vec<u8>>) -> Option<Vec<FrameStatus>> {
    let id = net.send_direct(&to, Batch::new(frames)).unwrap();
    until(net, "a direct outcome", |e| match e {
        NetEvent::DirectAck { request, ack, .. } if request == id => Some(Some(ack.statuses)),
        NetEvent::DirectFailed { request, .. } if request == id => Some(None),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_peer_is_refused_and_rate_limited_while_others_chat_on() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut cfg = crate::common::config(dirs[0].path(), 31);
    cfg.direct_rate = 20;
    let mut b = TestNode::start_with("bob", cfg).await;
    let mut c = TestNode::start_in("carol", dirs[1].path(), 32).await;
    befriend(&mut b, &mut c).await;

    // Mallory: a contact of bob's with real keys, driving a raw swarm
    // that ignores the protocol limits.
    let mut rng = StdRng::seed_from_u64(33);
    let key = Keystore::create(b"m", KdfParams::INSECURE_FAST, &mut rng)
        .unwrap()
        .1;
    let store = Arc::new(Store::open(dirs[2].path(), &key).unwrap());
    let mut m = Engine::open(store, 1_000).unwrap();
    let now = meshchat_now();
    let bob_invite = Invite::from_code(&b.handle.invite().await.unwrap()).unwrap();
    let bob_mailbox = bob_invite.bundle.verify().unwrap().body.mailbox_id;
    m.add_contact(&bob_invite, "bob").unwrap();
    b.handle
        .add_contact(&m.invite(vec![], now).unwrap().to_code(), "mallory")
        .await
        .unwrap();
    let m_key = m.identity().public().signing;
    let mut net_cfg = NetConfig::loopback();
    net_cfg.direct_limits = Limits {
        max_frames: 4096,
        max_frame_len: 1024 * 1024,
        max_batch_bytes: 8 * 1024 * 1024,
    };
    let mut net = Net::start(m.identity().to_libp2p().unwrap(), &net_cfg).unwrap();
    let inbox = net.inbox_topic(&bob_mailbox);
    net.subscribe(&inbox).unwrap();
    net.dial(b.addr.clone()).unwrap();
    let bp = b.peer();
    until(&mut net, "bob subscribing to his inbox", |e| match e {
        NetEvent::Subscribed { peer, topic } if peer == bp && topic == inbox => Some(()),
        _ => None,
    })
    .await;

    // Bob is not a relay: a mailbox request gets a clear refusal.
    let deposit =
        meshchat::relay::proto::Request::Deposit(vec![serde_bytes::ByteBuf::from(vec![1u8; 10])]);
    let asked = net.send_mailbox(&bp, deposit);
    let answer = until(&mut net, "bob's mailbox answer", |e| match e {
        NetEvent::MailboxResponse {
            request, response, ..
        } if request == asked => Some(response),
        NetEvent::MailboxFailed { request, error, .. } if request == asked => {
            panic!("mailbox request failed: {error}")
        }
        _ => None,
    })
    .await;
    assert_eq!(
        answer,
        meshchat::relay::proto::Response::Refused(meshchat::relay::proto::Refusal::NotRelay)
    );

    // Malformed frames: refused one by one.
    let junk = request(
        &mut net,
        bp,
        vec![
            vec![],
            vec![1, 2, 3],
            Frame::Ratchet(vec![9; 64]).to_bytes(),
        ],
    )
    .await;
    assert_eq!(junk, Some(vec![FrameStatus::Rejected; 3]));
    // A frame over bob's size limit: the request fails, nothing else does.
    assert_eq!(request(&mut net, bp, vec![vec![1; 200 * 1024]]).await, None);
    // A real message, then the same bytes again (a replay): both
    // acknowledged, stored once.
    let frame = m
        .send(&b.key(), b"mallory's one real message".to_vec(), now)
        .unwrap()
        .frame;
    let first = request(&mut net, bp, vec![frame.clone()]).await;
    assert_eq!(first, Some(vec![FrameStatus::Accepted]));
    let again = request(&mut net, bp, vec![frame.clone()]).await;
    assert_eq!(again, Some(vec![FrameStatus::Accepted]));
    // The same message sealed twice (two different envelopes, one ratchet
    // message) on the mesh: opened, recognised, not stored again.
    for _ in 0..2 {
        let (_, env) = m.seal(&b.key(), &frame, now + 600).unwrap();
        assert!(matches!(
            net.publish(&inbox, env).unwrap(),
            Published::Sent(_)
        ));
    }
    // Gossip garbage, an expired envelope, an envelope of the wrong
    // version: refused or ignored, never forwarded.
    let expired = Envelope::new(bob_mailbox, [7; 16], 1, vec![1; 300]).to_bytes();
    for bad in [vec![1; 500], expired, vec![9; 100]] {
        let _ = net.publish(&inbox, bad);
    }
    // A flood: direct requests as fast as the swarm takes them, and gossip.
    const FLOOD: usize = 300;
    let ids: Vec<_> = (0..FLOOD)
        .map(|i| {
            net.send_direct(&bp, Batch::new(vec![vec![i as u8; 32]]))
                .unwrap()
        })
        .collect();
    for i in 0..1000u32 {
        let _ = net.publish(&inbox, [&[1u8][..], &i.to_be_bytes()].concat());
    }
    let mut outcomes = 0;
    let mut refused = 0;
    until(&mut net, "answers to the flood", |e| {
        match e {
            NetEvent::DirectAck { request, .. } if ids.contains(&request) => {
                outcomes += 1;
                refused += 1;
            }
            NetEvent::DirectFailed { request, .. } if ids.contains(&request) => outcomes += 1,
            _ => {}
        }
        (outcomes == FLOOD).then_some(())
    })
    .await;
    assert!(refused > 0);

    // Carol's conversation with bob was not disturbed.
    let to_bob = c
        .handle
        .send(b.key(), b"still here?".to_vec())
        .await
        .unwrap();
    let mut from_m = 0;
    b.wait("carol's message", |e| match e {
        NodeEvent::Message { from, .. } if *from == m_key => {
            from_m += 1;
            None
        }
        NodeEvent::Message { message, .. } if message.body == b"still here?" => Some(()),
        _ => None,
    })
    .await;
    c.wait("bob's receipt", |e| match e {
        NodeEvent::Receipt { message, .. } if *message == to_bob => Some(()),
        _ => None,
    })
    .await;
    // Mallory's message is in bob's history exactly once; bob is up.
    let page = b.handle.history(m_key, None, 50).await.unwrap();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(from_m, 1);
    assert!(
        b.handle
            .status()
            .await
            .unwrap()
            .connected
            .contains(&c.peer())
    );
    let logs = logs();
    let logs = logs.lock().unwrap();
    let mallory = net.local_peer_id().to_string();
    let text = String::from_utf8_lossy(&logs);
    // Logged, and the log itself is not flooded: one line per peer and
    // kind of complaint at first, then at most one per period.
    let lines = |what: &str| {
        text.lines()
            .filter(|l| l.contains(what) && l.contains(&mallory))
            .count()
    };
    assert!(lines("direct requests over the peer's rate") >= 1);
    assert!(lines("gossip refused") >= 1);
    assert!(lines("") < 50, "{} lines about mallory", lines(""));
}

fn meshchat_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
