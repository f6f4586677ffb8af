//! One peer sends everything a broken or malicious peer could while another
//! conversation goes on.

use std::sync::Arc;

use libp2p::PeerId;
use libp2p::futures::{AsyncWriteExt, StreamExt};
use meshchat::crypto::{Envelope, KdfParams, Keystore};
use meshchat::node::engine::{Engine, Event};
use meshchat::node::net::direct::{self, Ack, Batch, FrameStatus, Limits};
use meshchat::node::net::{Net, NetConfig, NetEvent, Published};
use meshchat::node::state::Invite;
use meshchat::node::{NodeEvent, proto::Frame};
use meshchat::relay::stream;
use meshchat::store::{DeliveryState, Store};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::common::{TestNode, WAIT, befriend, logs, receipt};

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

    // Mallory's swarm ignores the protocol limits.
    let mut net_cfg = NetConfig::loopback();
    net_cfg.direct_limits = Limits {
        max_frames: 4096,
        max_frame_len: 1024 * 1024,
        max_batch_bytes: 8 * 1024 * 1024,
    };
    let (mut m, mut net) = mallory(&mut b, dirs[2].path(), 33, &net_cfg).await;
    let now = meshchat_now();
    let bob_invite = Invite::from_code(&b.handle.invite().await.unwrap()).unwrap();
    let bob_mailbox = bob_invite.bundle.verify().unwrap().body.mailbox_id;
    let m_key = m.identity().public().signing;
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
        let (_, env) = m.seal(&b.key(), &frame, now + 600, now).unwrap();
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
    // A flood: direct requests as fast as the swarm takes them (each a new
    // message of hers, which bob takes while she is within her rate and
    // refuses past it), and gossip.
    const FLOOD: usize = 300;
    let flood: Vec<Vec<u8>> = (0..FLOOD)
        .map(|i| {
            m.send(&b.key(), format!("flood {i}").into_bytes(), now)
                .unwrap()
                .frame
        })
        .collect();
    let ids: Vec<_> = flood
        .into_iter()
        .map(|f| net.send_direct(&bp, Batch::new(vec![f])).unwrap())
        .collect();
    for i in 0..1000u32 {
        let _ = net.publish(&inbox, [&[1u8][..], &i.to_be_bytes()].concat());
    }
    let mut outcomes = 0;
    let mut taken = 0;
    let mut refused = 0;
    until(&mut net, "answers to the flood", |e| {
        match e {
            NetEvent::DirectAck { request, ack, .. } if ids.contains(&request) => {
                outcomes += 1;
                if ack.statuses == [FrameStatus::Accepted] {
                    taken += 1;
                } else {
                    refused += 1;
                }
            }
            NetEvent::DirectFailed { request, .. } if ids.contains(&request) => outcomes += 1,
            _ => {}
        }
        (outcomes == FLOOD).then_some(())
    })
    .await;
    // Within her rate (20 a second, bursts of 40) some are taken; past it
    // the rest are refused.
    assert!(taken > 0 && refused > 0, "{taken} taken, {refused} refused");

    // Carol's conversation with bob was not disturbed.
    let from_m = carol_still_chats(&mut b, &mut c, m_key).await;
    // Mallory's messages are in bob's history once each (her real one, and
    // those of the flood he took); bob is up.
    let page = b.handle.history(m_key, None, 1000).await.unwrap();
    assert_eq!(page.messages.len(), 1 + taken);
    let mut bodies: Vec<&[u8]> = page.messages.iter().map(|m| &m.body[..]).collect();
    bodies.sort_unstable();
    bodies.dedup();
    assert_eq!(bodies.len(), 1 + taken);
    assert_eq!(from_m, 1 + taken);
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

/// Carol sends bob a message and waits for his receipt; returns how many
/// messages from `other` bob reported meanwhile.
async fn carol_still_chats(b: &mut TestNode, c: &mut TestNode, other: [u8; 32]) -> usize {
    let to_bob = c
        .handle
        .send(b.key(), b"still here?".to_vec())
        .await
        .unwrap();
    let mut from_other = 0;
    b.wait("carol's message", |e| match e {
        NodeEvent::Message { from, .. } if *from == other => {
            from_other += 1;
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
    from_other
}

/// Mallory: a contact of `b`'s (and `b` of hers) with real keys, on a raw
/// swarm of her own (`net_cfg`), not yet connected to `b`.
async fn mallory(
    b: &mut TestNode,
    dir: &std::path::Path,
    seed: u64,
    net_cfg: &NetConfig,
) -> (Engine, Net) {
    let mut rng = StdRng::seed_from_u64(seed);
    let key = Keystore::create(b"m", KdfParams::INSECURE_FAST, &mut rng)
        .unwrap()
        .1;
    let store = Arc::new(Store::open(dir, &key).unwrap());
    let mut m = Engine::open(store, 1_000).unwrap();
    let bob_invite = Invite::from_code(&b.handle.invite().await.unwrap()).unwrap();
    m.add_contact(&bob_invite, "bob").unwrap();
    b.handle
        .add_contact(
            &m.invite(vec![], meshchat_now()).unwrap().to_code(),
            "mallory",
        )
        .await
        .unwrap();
    let net = Net::start(m.identity().to_libp2p().unwrap(), net_cfg).unwrap();
    (m, net)
}

/// Mallory on a default swarm, connected to `b`.
async fn mallory_connected(b: &mut TestNode, dir: &std::path::Path, seed: u64) -> (Engine, Net) {
    let (m, mut net) = mallory(b, dir, seed, &NetConfig::loopback()).await;
    connect(&mut net, b).await;
    (m, net)
}

/// Dials `b` from `net` and waits for the connection.
async fn connect(net: &mut Net, b: &TestNode) {
    net.dial(b.addr.clone()).unwrap();
    let bp = b.peer();
    until(net, "the connection to bob", |e| match e {
        NetEvent::Connected { peer, .. } if peer == bp => Some(()),
        _ => None,
    })
    .await;
}

/// Polls `net` on a task of its own (its streams need the swarm moving).
fn keep_polling(mut net: Net) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            net.next_event().await;
        }
    })
}

/// Opens a direct stream to `to`.
async fn open_direct(mut control: libp2p_stream::Control, to: PeerId) -> libp2p::Stream {
    tokio::time::timeout(WAIT, control.open_stream(to, direct::STREAM_PROTOCOL))
        .await
        .expect("stream opened in time")
        .expect("bob takes direct streams")
}

async fn next_stream(incoming: &mut libp2p_stream::IncomingStreams) -> (PeerId, libp2p::Stream) {
    tokio::time::timeout(WAIT, incoming.next())
        .await
        .expect("a stream in time")
        .expect("streams still accepted")
}

/// The next frame on a direct stream, or `None` once the node closed it.
async fn stream_ack(s: &mut libp2p::Stream) -> Option<(u64, Ack)> {
    let limits = Limits::default();
    let frame = tokio::time::timeout(WAIT, stream::read_frame(s, limits.max_ack_message()))
        .await
        .expect("an ack or the end in time");
    match frame {
        Ok(Some((id, bytes))) => Some((id, Ack::decode(&bytes, &limits).unwrap())),
        Ok(None) | Err(_) => None,
    }
}

async fn write(s: &mut libp2p::Stream, id: u64, message: &[u8]) -> std::io::Result<()> {
    let mut frame = Vec::new();
    stream::push_frame(&mut frame, id, message)?;
    s.write_all(&frame).await?;
    s.flush().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_streams_carry_batches_and_a_broken_one_is_closed_while_others_chat_on() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut cfg = crate::common::config(dirs[0].path(), 41);
    cfg.direct_rate = 20;
    let mut b = TestNode::start_with("bob", cfg).await;
    let mut c = TestNode::start_in("carol", dirs[1].path(), 42).await;
    befriend(&mut b, &mut c).await;
    let (mut m, mut net) = mallory_connected(&mut b, dirs[2].path(), 43).await;
    let bp = b.peer();
    let m_key = m.identity().public().signing;

    // Mallory's swarm does not take direct streams: bob's message to her
    // comes by request-response instead.
    b.handle
        .send(m_key, b"to a peer without direct streams".to_vec())
        .await
        .unwrap();
    let mut got = false;
    while !got {
        let (frames, channel) = until(&mut net, "bob's direct request", |e| match e {
            NetEvent::DirectRequest {
                peer,
                batch,
                channel,
            } if peer == bp => Some((batch.frames, channel)),
            _ => None,
        })
        .await;
        let handled = m.receive(&b.key(), &frames, meshchat_now(), true).unwrap();
        got = handled.events.iter().any(|e| {
            matches!(e, Event::MessageReceived(msg) if msg.body == b"to a peer without direct streams")
        });
        let statuses = handled
            .accepted
            .iter()
            .map(|&a| FrameStatus::from_accepted(a))
            .collect();
        net.respond_direct(channel, Ack { statuses }).unwrap();
    }

    // From here on mallory's swarm is polled by a task of its own while
    // she writes on streams.
    let control = net.stream_control();
    let polling = keep_polling(net);
    let open = |control: libp2p_stream::Control| open_direct(control, bp);

    // A real message and junk on one stream, back to back: each batch
    // gets its own ack, in the order bob finishes them.
    let mut s = open(control.clone()).await;
    let now = meshchat_now();
    let real = m
        .send(&b.key(), b"mallory, by stream".to_vec(), now)
        .unwrap()
        .frame;
    let limits = Limits::default();
    write(
        &mut s,
        1,
        &Batch::new(vec![real.clone()]).encode(&limits).unwrap(),
    )
    .await
    .unwrap();
    write(
        &mut s,
        2,
        &Batch::new(vec![vec![1, 2, 3]]).encode(&limits).unwrap(),
    )
    .await
    .unwrap();
    let mut got = [stream_ack(&mut s).await, stream_ack(&mut s).await];
    got.sort_by_key(|a| a.as_ref().map(|(id, _)| *id));
    assert_eq!(
        got,
        [
            Some((1, Ack::all(FrameStatus::Accepted, 1))),
            Some((2, Ack::all(FrameStatus::Rejected, 1))),
        ]
    );
    b.wait("mallory's message by stream", |e| match e {
        NodeEvent::Message { from, message, .. }
            if *from == m_key && message.body == b"mallory, by stream" =>
        {
            Some(())
        }
        _ => None,
    })
    .await;

    // A flood on one stream (her real message again): every batch is
    // answered (bob reads at most eight ahead of his acks), as a duplicate
    // taken while she is within her rate and refused past it.
    const FLOOD: u64 = 200;
    let mut flood = open(control.clone()).await;
    let again = Batch::new(vec![real.clone()]).encode(&limits).unwrap();
    for i in 0..FLOOD {
        write(&mut flood, i, &again).await.unwrap();
    }
    let mut answered = std::collections::HashSet::new();
    let (mut taken, mut refused) = (0, 0);
    for _ in 0..FLOOD {
        let (id, ack) = stream_ack(&mut flood).await.expect("an ack per batch");
        match ack.statuses.as_slice() {
            [FrameStatus::Accepted] => taken += 1,
            _ => refused += 1,
        }
        answered.insert(id);
    }
    assert_eq!(answered.len(), FLOOD as usize);
    assert!(taken > 0 && refused > 0, "{taken} taken, {refused} refused");

    // A batch that does not decode, and a length prefix of almost 4 GiB:
    // bob closes each stream without reading (or allocating) more.
    write(&mut s, 3, b"\x09not a batch").await.unwrap();
    assert_eq!(stream_ack(&mut s).await, None, "stream closed by bob");
    let mut huge = open(control.clone()).await;
    huge.write_all(&[0xff, 0xff, 0xff, 0xf0, 0, 1, 2, 3])
        .await
        .unwrap();
    huge.flush().await.unwrap();
    assert_eq!(stream_ack(&mut huge).await, None, "stream closed by bob");

    // At most four streams per peer: the flood's and three more, then a
    // fifth is closed unanswered. Each of the three carries a batch first,
    // so that bob holds all four before the fifth comes (a stream reaches
    // him with its first bytes).
    let batch = Batch::new(vec![vec![5; 32]]).encode(&limits).unwrap();
    let mut four = vec![flood];
    for i in 0..3u64 {
        // Bob counts a stream he closed until his task for it has ended,
        // a moment after the close reaches her: a new stream may be
        // refused in between (on a busy machine). Another is opened until
        // he takes one; each try ends on his answer or his refusal.
        let taken = tokio::time::timeout(WAIT, async {
            loop {
                let mut s = open(control.clone()).await;
                if write(&mut s, i, &batch).await.is_ok()
                    && let Some((id, _)) = stream_ack(&mut s).await
                {
                    assert_eq!(id, i);
                    break s;
                }
            }
        })
        .await;
        four.push(taken.expect("an ack on each of the three"));
    }
    let mut fifth = open(control.clone()).await;
    let _ = write(&mut fifth, 1, &batch).await;
    assert_eq!(stream_ack(&mut fifth).await, None, "fifth stream refused");
    // The four are still served.
    for (i, s) in four.iter_mut().enumerate() {
        write(s, 10 + i as u64, &batch).await.unwrap();
        let (id, _) = stream_ack(s).await.expect("an ack on each of the four");
        assert_eq!(id, 10 + i as u64);
    }

    // Carol's conversation with bob was not disturbed, and bob is up.
    carol_still_chats(&mut b, &mut c, m_key).await;
    let page = b.handle.history(m_key, None, 50).await.unwrap();
    assert_eq!(
        page.messages.len(),
        2,
        "bob's message and mallory's, once each"
    );
    let text = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    let mallory = m
        .identity()
        .to_libp2p()
        .unwrap()
        .public()
        .to_peer_id()
        .to_string();
    for what in [
        "direct stream refused",
        "direct requests over the peer's rate",
    ] {
        assert!(
            text.lines()
                .any(|l| l.contains(what) && l.contains(&mallory)),
            "{what}: logged"
        );
    }
    drop(four);
    polling.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_unanswered_on_a_direct_stream_is_sent_again_on_a_new_one() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut cfg = crate::common::config(dirs[0].path(), 51);
    cfg.net.direct_timeout = std::time::Duration::from_secs(3);
    let mut b = TestNode::start_with("bob", cfg).await;
    let (mut m, mut net) = mallory(&mut b, dirs[1].path(), 52, &NetConfig::loopback()).await;
    let m_key = m.identity().public().signing;
    // Mallory takes direct streams, reads what comes and answers only on
    // the second stream. She takes them before she connects: a device
    // that refuses the protocol when bob first opens one (his bundle
    // request, as soon as they connect) is remembered as one without
    // direct streams, and gets request-response from then on.
    let mut incoming = net
        .stream_control()
        .accept(direct::STREAM_PROTOCOL)
        .unwrap();
    connect(&mut net, &b).await;
    let polling = keep_polling(net);
    let limits = Limits::default();
    let next_batch = |mut s: libp2p::Stream| async move {
        let frame =
            tokio::time::timeout(WAIT, stream::read_frame(&mut s, limits.max_batch_message()))
                .await
                .expect("a batch in time")
                .unwrap()
                .expect("a batch, not the end");
        (s, frame.0, Batch::decode(&frame.1, &limits).unwrap())
    };
    let sent = b
        .handle
        .send(m_key, b"once more, on a new stream".to_vec())
        .await
        .unwrap();
    let (peer, first) = next_stream(&mut incoming).await;
    assert_eq!(peer, b.peer());
    let (first, _, _) = next_batch(first).await;
    // No answer: after the direct timeout the batch fails, bob gives up
    // on that stream and retries the message on a new one.
    let (_, second) = next_stream(&mut incoming).await;
    // Bob has closed his side of the stream he gave up on.
    let mut first = first;
    assert_eq!(
        stream_ack(&mut first).await,
        None,
        "bob closed the old stream"
    );
    let (mut second, id, batch) = next_batch(second).await;
    let handled = m
        .receive(&b.key(), &batch.frames, meshchat_now(), true)
        .unwrap();
    assert!(handled.events.iter().any(|e| {
        matches!(e, Event::MessageReceived(msg) if msg.body == b"once more, on a new stream")
    }));
    let ack = Ack::all(FrameStatus::Accepted, batch.frames.len());
    write(&mut second, id, &ack.encode(&limits).unwrap())
        .await
        .unwrap();
    receipt(&mut b, sent, DeliveryState::Delivered).await;
    polling.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_stream_left_idle_is_answered_then_closed() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut cfg = crate::common::config(dirs[0].path(), 61);
    cfg.net.stream_idle_timeout = std::time::Duration::from_secs(2);
    let mut b = TestNode::start_with("bob", cfg).await;
    let (_m, net) = mallory_connected(&mut b, dirs[1].path(), 62).await;
    let bp = b.peer();
    let control = net.stream_control();
    let polling = keep_polling(net);
    let open = || open_direct(control.clone(), bp);
    let limits = Limits::default();

    // A batch, then silence: its ack comes, then bob closes the stream.
    let mut s = open().await;
    let junk = Batch::new(vec![vec![1, 2, 3]]).encode(&limits).unwrap();
    write(&mut s, 1, &junk).await.unwrap();
    assert_eq!(
        stream_ack(&mut s).await,
        Some((1, Ack::all(FrameStatus::Rejected, 1)))
    );
    assert_eq!(stream_ack(&mut s).await, None, "closed once idle");
    // Nothing at all, or a frame's first bytes only: closed as well.
    let mut silent = open().await;
    assert_eq!(stream_ack(&mut silent).await, None, "closed once idle");
    let mut stalled = open().await;
    stalled.write_all(&[0, 0]).await.unwrap();
    stalled.flush().await.unwrap();
    assert_eq!(stream_ack(&mut stalled).await, None, "closed once idle");
    // Bob still takes streams.
    let mut again = open().await;
    write(&mut again, 2, &junk).await.unwrap();
    assert_eq!(
        stream_ack(&mut again).await,
        Some((2, Ack::all(FrameStatus::Rejected, 1)))
    );
    polling.abort();
}

fn meshchat_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
