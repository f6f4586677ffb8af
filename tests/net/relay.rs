//! The relay client: a reservation on a circuit relay, then a direct batch
//! to the reserved node through the relay.

use libp2p::futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, Swarm, SwarmBuilder, noise, relay, tcp, yamux};
use meshchat::node::net::direct::{Ack, Batch, FrameStatus};
use meshchat::node::net::{Net, NetEvent};

use super::harness::{Nodes, WAIT, keypair, tcp_only, with_peer};

/// A bare circuit-relay server (the real one lives in relay mode).
#[derive(NetworkBehaviour)]
struct Server {
    relay: relay::Behaviour,
}

/// A relay server listening on loopback, with that address confirmed as
/// external (a relay accepts reservations only once it has one).
async fn relay_server() -> (Swarm<Server>, Multiaddr) {
    let mut swarm = SwarmBuilder::with_existing_identity(keypair(40))
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|key| Server {
            relay: relay::Behaviour::new(key.public().to_peer_id(), relay::Config::default()),
        })
        .unwrap()
        .build();
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let addr = tokio::time::timeout(WAIT, async {
        loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                return address;
            }
        }
    })
    .await
    .unwrap();
    swarm.add_external_address(addr.clone());
    let id = *swarm.local_peer_id();
    (swarm, with_peer(&addr, id))
}

#[tokio::test]
async fn reservation_then_direct_batch_through_the_relay() {
    let (mut server, relay_addr) = relay_server().await;
    // Nobody else drives the relay: a task does, until the test ends.
    let serving = tokio::spawn(async move {
        loop {
            server.select_next_some().await;
        }
    });

    let mut a_cfg = tcp_only();
    a_cfg.relays = vec![relay_addr.clone()];
    let mut nodes = Nodes::start(vec![(41, a_cfg), (42, tcp_only())]).await;
    let (a, b) = (nodes.id(0), nodes.id(1));
    let relay_id = match relay_addr.iter().last() {
        Some(Protocol::P2p(id)) => id,
        _ => panic!("relay address without peer id"),
    };
    nodes
        .until("reservation", |i, _, event| match event {
            NetEvent::RelayReserved { relay } if i == 0 => {
                assert_eq!(relay, relay_id);
                Some(())
            }
            _ => None,
        })
        .await;

    // B reaches A only through the relay's circuit address.
    let circuit = relay_addr
        .clone()
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(a));
    nodes.nets[1].dial(circuit).unwrap();
    nodes
        .until("relayed connection", |i, _, event| match event {
            NetEvent::Connected { peer, addr } if i == 1 && peer == a => {
                assert!(addr.iter().any(|p| p == Protocol::P2pCircuit), "{addr}");
                Some(())
            }
            _ => None,
        })
        .await;
    let sent = nodes.nets[1]
        .send_direct(&a, Batch::new(vec![b"via relay".to_vec()]))
        .unwrap();
    let ack = nodes
        .until(
            "ack through the relay",
            |i, net: &mut Net, event| match event {
                NetEvent::DirectRequest {
                    peer,
                    batch,
                    channel,
                } if i == 0 => {
                    assert_eq!(peer, b);
                    net.respond_direct(
                        channel,
                        Ack::all(FrameStatus::Accepted, batch.frames.len()),
                    )
                    .unwrap();
                    None
                }
                NetEvent::DirectAck { request, ack, .. } if i == 1 && request == sent => Some(ack),
                NetEvent::DirectFailed { error, .. } => panic!("direct failed: {error}"),
                _ => None,
            },
        )
        .await;
    assert_eq!(ack.statuses, [FrameStatus::Accepted]);
    serving.abort();
}
