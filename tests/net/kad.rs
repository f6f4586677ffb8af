//! Kademlia: bootstrapping from a known peer, then finding a third peer.

use libp2p::multiaddr::Protocol;
use meshchat::node::net::NetEvent;

use super::harness::{Nodes, tcp_only};

#[tokio::test]
async fn bootstrap_from_a_then_find_b_by_peer_id() {
    let is_tcp = |a: &libp2p::Multiaddr| a.iter().any(|p| matches!(p, Protocol::Tcp(_)));
    let hub = Nodes::start(vec![(31, tcp_only())]).await;
    let a = hub.id(0);
    let a_addr = hub.nets[0]
        .listen_addrs()
        .into_iter()
        .find(|x| is_tcp(x))
        .unwrap();

    // B and C know only A, through their configuration.
    let mut b_cfg = tcp_only();
    b_cfg.bootstrap = vec![(a, a_addr.clone())];
    let c_cfg = b_cfg.clone();
    let mut more = Nodes::start(vec![(32, b_cfg), (33, c_cfg)]).await;
    let mut nodes = hub;
    nodes.nets.append(&mut more.nets);
    let (b, c) = (nodes.id(1), nodes.id(2));

    let mut done = [false; 3];
    nodes
        .until("bootstraps of B and C", |i, _, event| {
            if let NetEvent::Bootstrapped { ok } = event {
                assert!(ok, "bootstrap of node {i} failed");
                done[i] = true;
            }
            (done[1] && done[2]).then_some(())
        })
        .await;

    // B's routing table holds A at the address it was given.
    let mut table = Vec::new();
    for bucket in nodes.nets[1].swarm_mut().behaviour_mut().kad.kbuckets() {
        for entry in bucket.iter() {
            table.push((
                *entry.node.key.preimage(),
                entry.node.value.clone().into_vec(),
            ));
        }
    }
    assert!(
        table
            .iter()
            .any(|(p, addrs)| *p == a && addrs.iter().any(|x| without_peer(x) == a_addr)),
        "A ({a} at {a_addr}) missing from B routing table: {table:?}"
    );

    // C looks B up by peer id: only A can tell it where B is. A learns B's
    // listen address from identify; retry the lookup until it has.
    nodes.nets[2].find_peer(b);
    let mut attempts = 0;
    let addrs = nodes
        .until("B found by C", |i, net, event| match event {
            NetEvent::PeerFound { peer, addrs } if i == 2 && peer == b => Some(addrs),
            NetEvent::PeerNotFound { peer } if i == 2 && peer == b => {
                attempts += 1;
                assert!(attempts < 20, "B not found after {attempts} lookups");
                net.find_peer(b);
                None
            }
            _ => None,
        })
        .await;
    let b_addrs = nodes.nets[1].listen_addrs();
    assert!(
        addrs.iter().any(|x| b_addrs.contains(&without_peer(x))),
        "found {addrs:?}, B listens on {b_addrs:?}"
    );
    assert_ne!(c, b);
}

/// The address without a trailing `/p2p/...`.
fn without_peer(addr: &libp2p::Multiaddr) -> libp2p::Multiaddr {
    let mut addr = addr.clone();
    if let Some(Protocol::P2p(_)) = addr.iter().last() {
        addr.pop();
    }
    addr
}
