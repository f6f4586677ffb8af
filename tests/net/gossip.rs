//! Gossip across a line of three nodes, and what publish reports.

use libp2p::PeerId;
use libp2p::multiaddr::Protocol;
use meshchat::crypto::Envelope;
use meshchat::node::net::{GossipLimits, NetEvent, Published, Topic, Verdict};
use sha2::{Digest, Sha256};

use super::harness::{Nodes, tcp_only};

/// Waits until, on the line 0–1–2, each end knows the other's subscription.
async fn subscribed(nodes: &mut Nodes, topic: &Topic) {
    let (a, b, c) = (nodes.id(0), nodes.id(1), nodes.id(2));
    let wanted: [(usize, PeerId); 4] = [(0, b), (1, a), (1, c), (2, b)];
    nodes
        .until_state("subscriptions", |nets| {
            wanted
                .iter()
                .all(|(i, peer)| nets[*i].topic_peers(topic).contains(peer))
        })
        .await;
}

#[tokio::test]
async fn line_a_b_c_carries_inbox_gossip_through_b() {
    let mut nodes = Nodes::start(vec![(11, tcp_only()), (12, tcp_only()), (13, tcp_only())]).await;
    let (a, b, c) = (nodes.id(0), nodes.id(1), nodes.id(2));

    let mailbox = [0x42u8; 32];
    let topic = nodes.nets[0].inbox_topic(&mailbox);
    assert_eq!(topic, Topic::Inbox(0));
    let envelope = Envelope::new(mailbox, [7; 16], u64::MAX, vec![0xa5; 600]).to_bytes();

    for net in &mut nodes.nets {
        assert!(net.subscribe(&topic).unwrap());
    }
    // Nobody to send to yet: not sent, not an error.
    assert_eq!(
        nodes.nets[0].publish(&topic, envelope.clone()).unwrap(),
        Published::NoPeers
    );

    let is_tcp = |a: &libp2p::Multiaddr| a.iter().any(|p| matches!(p, Protocol::Tcp(_)));
    let b_addr = nodes.addr(1, is_tcp);
    let c_addr = nodes.addr(2, is_tcp);
    nodes.connect(0, 1, b_addr).await;
    nodes.connect(1, 2, c_addr).await;

    // Wait until every link knows the other end's subscription.
    subscribed(&mut nodes, &topic).await;
    assert!(!nodes.nets[0].is_connected(&c));
    assert!(!nodes.nets[2].is_connected(&a));

    let published = nodes.nets[0].publish(&topic, envelope.clone()).unwrap();
    let expected_id = Sha256::digest(&envelope).to_vec();
    assert_eq!(
        published,
        Published::Sent(libp2p::gossipsub::MessageId::new(&expected_id))
    );
    assert!(published.is_sent());

    let mut b_saw = false;
    let got = nodes
        .until("gossip at C", |i, net, event| {
            let NetEvent::Gossip(msg) = event else {
                return None;
            };
            assert_eq!(msg.id.0, expected_id);
            assert_eq!(msg.topic, topic);
            match i {
                1 => {
                    assert_eq!(msg.source, a);
                    let verdict = net.validate_gossip(&msg, |data| {
                        b_saw = true;
                        assert!(Envelope::from_bytes(data).is_ok());
                        Verdict::Accept
                    });
                    assert_eq!(verdict, Verdict::Accept);
                    None
                }
                2 => {
                    assert_eq!(msg.source, b);
                    assert_eq!(
                        net.validate_gossip(&msg, |_| Verdict::Accept),
                        Verdict::Accept
                    );
                    Some(msg.data)
                }
                _ => panic!("node {i} received its own message"),
            }
        })
        .await;
    assert!(b_saw, "B's validation hook did not see the message");
    assert_eq!(got, envelope);

    // The same bytes again are a duplicate: nothing is sent.
    assert_eq!(
        nodes.nets[0].publish(&topic, envelope).unwrap(),
        Published::Duplicate
    );
    // The largest envelope the inbox allows crosses both hops whole.
    let mut largest = vec![0x5a; GossipLimits::default().max_inbox];
    largest[0] = 1;
    assert!(
        nodes.nets[0]
            .publish(&topic, largest.clone())
            .unwrap()
            .is_sent()
    );
    let got = nodes
        .until("largest envelope at C", |i, net, event| match event {
            NetEvent::Gossip(msg) => {
                assert!(net.validate_gossip(&msg, |_| Verdict::Accept).is_accept());
                (i == 2).then_some(msg.data)
            }
            _ => None,
        })
        .await;
    assert_eq!(got, largest);

    // Over the topic's limit: an error with the numbers in it.
    let err = nodes.nets[0]
        .publish(&Topic::Presence, vec![1; 5000])
        .unwrap_err();
    assert!(err.to_string().contains("5000"), "{err}");
}

#[tokio::test]
async fn a_message_b_ignores_does_not_reach_c() {
    let mut nodes = Nodes::start(vec![(21, tcp_only()), (22, tcp_only()), (23, tcp_only())]).await;

    let topic = Topic::Presence;
    for net in &mut nodes.nets {
        net.subscribe(&topic).unwrap();
    }
    let is_tcp = |a: &libp2p::Multiaddr| a.iter().any(|p| matches!(p, Protocol::Tcp(_)));
    let b_addr = nodes.addr(1, is_tcp);
    let c_addr = nodes.addr(2, is_tcp);
    nodes.connect(0, 1, b_addr).await;
    nodes.connect(1, 2, c_addr).await;
    subscribed(&mut nodes, &topic).await;

    // B refuses the first (a version from the future), accepts the second;
    // C must see only the second.
    nodes.nets[0].publish(&topic, vec![9, 1, 2, 3]).unwrap();
    nodes.nets[0].publish(&topic, vec![1, 4, 5, 6]).unwrap();
    let at_c = nodes
        .until("second message at C", |i, net, event| {
            let NetEvent::Gossip(msg) = event else {
                return None;
            };
            let verdict = net.validate_gossip(&msg, |_| Verdict::Accept);
            if i == 1 && msg.data[0] == 9 {
                assert!(!verdict.is_accept());
            }
            (i == 2).then_some(msg.data)
        })
        .await;
    assert_eq!(at_c, [1, 4, 5, 6]);
}

/// Messages of the largest size, published back to back, followed by
/// small ones: every one arrives. A receiver reads a stream 8 KiB at a
/// time and gossipsub 0.50 checks the length of all it has buffered, not
/// of one message, against its transmit limit; a limit without room for
/// that read made it refuse a largest message followed closely by
/// another, close the stream, and lose what came after.
#[tokio::test]
async fn largest_messages_back_to_back_all_arrive() {
    let mut nodes = Nodes::start(vec![(31, tcp_only()), (32, tcp_only())]).await;
    let b = nodes.id(1);
    let topic = nodes.nets[0].inbox_topic(&[0x43; 32]);
    for net in &mut nodes.nets {
        net.subscribe(&topic).unwrap();
    }
    let is_tcp = |a: &libp2p::Multiaddr| a.iter().any(|p| matches!(p, Protocol::Tcp(_)));
    let b_addr = nodes.addr(1, is_tcp);
    nodes.connect(0, 1, b_addr).await;
    nodes
        .until_state("B's subscription", |nets| {
            nets[0].topic_peers(&topic).contains(&b)
        })
        .await;

    let max = GossipLimits::default().max_inbox;
    let mut sent = std::collections::HashSet::new();
    for n in 0..12u8 {
        let len = if n < 8 { max - usize::from(n) } else { 300 };
        let mut message = vec![0x5a; len];
        message[0] = 1;
        message[1] = n;
        assert!(
            nodes.nets[0]
                .publish(&topic, message.clone())
                .unwrap()
                .is_sent()
        );
        sent.insert(message);
    }
    let mut got = std::collections::HashSet::new();
    nodes
        .until("every message at B", |i, net, event| {
            let NetEvent::Gossip(msg) = event else {
                return None;
            };
            assert_eq!(i, 1, "node {i} received its own message");
            assert!(net.validate_gossip(&msg, |_| Verdict::Accept).is_accept());
            got.insert(msg.data);
            (got.len() == sent.len()).then_some(())
        })
        .await;
    assert_eq!(got, sent);
}
