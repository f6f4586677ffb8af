//! The cap on incoming connections from one IP address, on a real swarm.

use std::time::Duration;

use libp2p::multiaddr::Protocol;
use meshchat::node::net::NetEvent;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::harness::{Nodes, tcp_only};

/// Reads from a connection that never spoke until the other side drops
/// it (end of stream or reset); whatever it writes first is skipped.
async fn dropped(mut s: TcpStream) {
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Whether the other side still holds `s` open (what it wrote is skipped).
fn still_open(s: TcpStream) -> bool {
    use std::io::Read;
    let mut s = s.into_std().unwrap();
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(e) => return e.kind() == std::io::ErrorKind::WouldBlock,
        }
    }
}

#[tokio::test]
async fn a_connection_over_one_addresss_cap_is_refused_and_a_closed_one_frees_its_place() {
    let mut capped = tcp_only();
    capped.max_inbound_per_ip = 3;
    let mut nodes = Nodes::start(vec![(321, capped), (322, tcp_only())]).await;
    let a_addr = nodes.addr(0, |a| a.iter().any(|p| matches!(p, Protocol::Tcp(_))));
    let port = a_addr
        .iter()
        .find_map(|p| match p {
            Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .unwrap();

    // Two connections that never finish their handshake, then a real
    // peer: three from 127.0.0.1, all taken (accepted in that order).
    let held = [
        TcpStream::connect(("127.0.0.1", port)).await.unwrap(),
        TcpStream::connect(("127.0.0.1", port)).await.unwrap(),
    ];
    nodes.connect(1, 0, a_addr.clone()).await;

    // A fourth is dropped before any handshake, while the first two are
    // still waiting for theirs (they would be dropped first, and only
    // after the handshake's timeout, if the fourth had been taken).
    let fourth = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tokio::select! {
        () = dropped(fourth) => {}
        () = nodes.until("the fourth connection refused", |_, _, _| None::<()>) => {}
    }
    for s in held {
        assert!(still_open(s), "a connection within the cap was dropped");
    }

    // The peer leaves; its place is free again, and it comes back.
    let a = nodes.id(0);
    assert!(nodes.nets[1].swarm_mut().disconnect_peer_id(a).is_ok());
    let b = nodes.id(1);
    nodes
        .until("A sees B leave", |i, _, e| {
            matches!(e, NetEvent::Disconnected { peer } if i == 0 && peer == b).then_some(())
        })
        .await;
    nodes.connect(1, 0, a_addr).await;
}

#[tokio::test]
async fn incoming_connections_near_the_cap_make_room_but_not_at_a_contacts_expense() {
    // Cap 4: from the fourth incoming connection on, the newest
    // unprotected one is closed (grace zero), keeping three.
    let mut a = tcp_only();
    a.max_inbound_connections = 4;
    a.prune_grace = Some(Duration::ZERO);
    let mut specs = vec![(331, a)];
    specs.extend((332..336).map(|seed| (seed, tcp_only())));
    let mut nodes = Nodes::start(specs).await;
    let a_addr = nodes.addr(0, |a| a.iter().any(|p| matches!(p, Protocol::Tcp(_))));
    let contact = nodes.id(4);
    nodes.nets[0].protect(contact);
    for i in 1..=3 {
        nodes.connect(i, 0, a_addr.clone()).await;
    }
    // The contact is the fourth: the newest other one makes room.
    nodes.nets[4].dial(a_addr).unwrap();
    let newest = nodes.id(3);
    let mut seen = (false, false);
    nodes
        .until("the contact in, the newest other out", |i, _, e| {
            match e {
                NetEvent::Connected { peer, .. } if i == 0 && peer == contact => seen.0 = true,
                NetEvent::Disconnected { peer } if i == 0 && peer == newest => seen.1 = true,
                NetEvent::Disconnected { peer } if i == 0 => panic!("{peer} was closed"),
                _ => {}
            }
            (seen.0 && seen.1).then_some(())
        })
        .await;
    for i in [1, 2, 4] {
        let peer = nodes.id(i);
        assert!(nodes.nets[0].is_connected(&peer), "node {i} stays");
    }
}
