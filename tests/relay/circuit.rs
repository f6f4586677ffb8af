//! Devices that listen nowhere (as behind a NAT) reach each other through
//! a relay's circuit.

use libp2p::multiaddr::Protocol;
use meshchat::node::NodeEvent;
use meshchat::node::state::Invite;
use meshchat::store::DeliveryState;

use crate::common::{TestNode, befriend, config, message, receipt};
use crate::{TestRelay, relay_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_listens_nowhere_is_reached_through_its_relays_circuit() {
    let dr = tempfile::tempdir().unwrap();
    let r = TestRelay::start(relay_config(dr.path(), 211)).await;
    let (da, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut cfg = config(dc.path(), 213);
    cfg.net.listen.clear();
    cfg.relays = vec![r.addr.clone()];
    let mut c = TestNode::start_with("carol", cfg).await;
    let relay = r.handle.peer_id();
    // The reservation, and the circuit address it gives (in either order).
    let (mut reserved, mut listening) = (false, false);
    c.wait("a circuit reservation and its address", |e| {
        match e {
            NodeEvent::RelayReserved { relay: at } if *at == relay => reserved = true,
            NodeEvent::Listening { addr }
                if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) =>
            {
                listening = true
            }
            _ => {}
        }
        (reserved && listening).then_some(())
    })
    .await;
    // Her invite names the way in: the relay's circuit.
    let code = c.handle.invite().await.unwrap();
    let invite = Invite::from_code(&code).unwrap();
    assert!(
        invite
            .addrs
            .iter()
            .any(|a| a.contains(&relay.to_string()) && a.contains("/p2p-circuit/")),
        "{:?}",
        invite.addrs
    );

    // Alice listens nowhere either: the only way between them is the
    // circuit, and they connect and chat directly over it.
    let mut a = TestNode::start_unreachable("alice", da.path(), 212).await;
    befriend(&mut a, &mut c).await;
    let body = b"through the relay's circuit".to_vec();
    let sent = a.handle.send(c.key(), body.clone()).await.unwrap();
    let got = message(&mut c, &body).await;
    assert_eq!(got.sender, a.key());
    receipt(&mut a, sent, DeliveryState::Delivered).await;
}
