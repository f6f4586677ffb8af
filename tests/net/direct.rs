//! `/meshchat/direct/1` between two real swarms over TCP and QUIC.

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::OutboundFailure;
use meshchat::node::net::direct::{Ack, Batch, FrameStatus, Limits};
use meshchat::node::net::{DirectError, NetConfig, NetError, NetEvent};

use super::harness::{Nodes, quic_only, tcp_only};

fn is_quic(a: &Multiaddr) -> bool {
    a.iter().any(|p| matches!(p, Protocol::QuicV1))
}

fn is_tcp(a: &Multiaddr) -> bool {
    a.iter().any(|p| matches!(p, Protocol::Tcp(_)))
}

/// B dials A, sends a batch; A checks it and acks every frame.
async fn batch_round_trip(cfg: NetConfig, transport: fn(&Multiaddr) -> bool) {
    let mut nodes = Nodes::start(vec![(1, cfg.clone()), (2, cfg)]).await;
    let addr = nodes.addr(0, transport);
    nodes.connect(1, 0, addr).await;

    let frames = vec![b"first".to_vec(), vec![0u8; 70_000], Vec::new()];
    let (a, b) = (nodes.id(0), nodes.id(1));
    let sent = nodes.nets[1]
        .send_direct(&a, Batch::new(frames.clone()))
        .unwrap();
    let ack = nodes
        .until("direct ack", |i, net, event| match event {
            NetEvent::DirectRequest {
                peer,
                batch,
                channel,
            } if i == 0 => {
                assert_eq!(peer, b);
                assert_eq!(batch.frames, frames);
                let mut ack = Ack::all(FrameStatus::Accepted, batch.frames.len());
                ack.statuses[2] = FrameStatus::Rejected;
                net.respond_direct(channel, ack).unwrap();
                None
            }
            NetEvent::DirectAck { peer, request, ack } if i == 1 => {
                assert_eq!((peer, request), (a, sent));
                Some(ack)
            }
            NetEvent::DirectFailed { error, .. } => panic!("direct failed: {error}"),
            _ => None,
        })
        .await;
    assert_eq!(
        ack.statuses,
        [
            FrameStatus::Accepted,
            FrameStatus::Accepted,
            FrameStatus::Rejected
        ]
    );
    assert_eq!(ack.delivered(), 2);
}

#[tokio::test]
async fn tcp_connect_and_direct_batch() {
    batch_round_trip(tcp_only(), is_tcp).await;
}

#[tokio::test]
async fn quic_connect_and_direct_batch() {
    batch_round_trip(quic_only(), is_quic).await;
}

#[tokio::test]
async fn over_limit_batches_are_refused_by_sender_and_receiver() {
    let strict = Limits {
        max_frame_len: 1024,
        ..Limits::default()
    };
    let mut receiver = tcp_only();
    receiver.direct_limits = strict;
    let mut nodes = Nodes::start(vec![(3, receiver), (4, tcp_only())]).await;
    let a = nodes.id(0);

    // The sender refuses what breaks its own limits, before any I/O.
    let mut sender_strict = Nodes::start(vec![(5, {
        let mut c = tcp_only();
        c.direct_limits = strict;
        c
    })])
    .await;
    let err = sender_strict.nets[0]
        .send_direct(&a, Batch::new(vec![vec![0; 2048]]))
        .unwrap_err();
    assert!(
        matches!(
            err,
            NetError::Direct {
                source: DirectError::FrameTooLarge {
                    len: 2048,
                    max: 1024,
                    ..
                },
                ..
            }
        ),
        "{err}"
    );

    // A sender with looser limits gets its request dropped by the receiver,
    // which reads the length prefix and stops there.
    let addr = nodes.addr(0, is_tcp);
    nodes.connect(1, 0, addr).await;
    let sent = nodes.nets[1]
        .send_direct(&a, Batch::new(vec![vec![0; 2048]]))
        .unwrap();
    let failure = nodes
        .until("direct failure", |i, _, event| match event {
            NetEvent::DirectRequest { .. } => panic!("over-limit request delivered"),
            NetEvent::DirectFailed { request, error, .. } if i == 1 && request == sent => {
                Some(error)
            }
            _ => None,
        })
        .await;
    assert!(
        matches!(
            failure,
            OutboundFailure::Io(_) | OutboundFailure::ConnectionClosed
        ),
        "{failure:?}"
    );
}
