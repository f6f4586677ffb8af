//! Which of a peer's identify addresses go into Kademlia.

use libp2p::Multiaddr;

use super::super::events::{Reach, reach, shared};

fn a(s: &str) -> Multiaddr {
    s.parse().unwrap()
}

#[test]
fn addresses_are_told_apart_by_how_far_they_reach() {
    for (addr, r) in [
        ("/ip4/127.0.0.1/tcp/1", Some(Reach::Loopback)),
        ("/ip6/::1/tcp/1", Some(Reach::Loopback)),
        ("/ip4/192.168.1.2/tcp/1", Some(Reach::Private)),
        ("/ip4/10.0.0.1/udp/1/quic-v1", Some(Reach::Private)),
        ("/ip4/172.17.0.1/tcp/1", Some(Reach::Private)),
        ("/ip4/100.64.0.1/tcp/1", Some(Reach::Private)),
        ("/ip4/169.254.1.1/tcp/1", Some(Reach::Private)),
        ("/ip6/fd00::1/tcp/1", Some(Reach::Private)),
        ("/ip6/fe80::1/tcp/1", Some(Reach::Private)),
        ("/ip4/100.128.0.1/tcp/1", Some(Reach::Global)),
        ("/ip4/203.0.113.7/tcp/1", Some(Reach::Global)),
        ("/ip6/2001:db8::1/tcp/1", Some(Reach::Global)),
        ("/dns4/relay.example.org/tcp/4001", Some(Reach::Global)),
        (
            "/ip4/203.0.113.7/tcp/4001/p2p/12D3KooWRM3EvQDVEBjS21WSt398LVY4me8q24921V4AWo2sDh61/p2p-circuit",
            Some(Reach::Global),
        ),
        ("/ip4/0.0.0.0/tcp/1", None),
        ("/ip6/::/tcp/1", None),
        ("/tcp/1", None),
    ] {
        assert_eq!(reach(&a(addr)), r, "{addr}");
    }
}

#[test]
fn a_peer_seen_from_afar_gives_only_its_public_addresses() {
    let addrs = [
        a("/ip4/127.0.0.1/tcp/1"),
        a("/ip4/192.168.1.2/tcp/1"),
        a("/ip4/203.0.113.7/tcp/1"),
        a("/ip4/0.0.0.0/tcp/1"),
    ];
    let kept = |seen| -> Vec<usize> {
        (0..addrs.len())
            .filter(|&i| shared(&addrs[i], seen))
            .collect()
    };
    assert_eq!(kept(Reach::Global), [2]);
    assert_eq!(kept(Reach::Private), [1, 2]);
    assert_eq!(kept(Reach::Loopback), [0, 1, 2]);
}

/// The routing table keeps at most `MAX_KAD_ADDRS` addresses of a peer,
/// the newest: identify pushes with new addresses do not grow it.
#[tokio::test]
async fn the_routing_table_keeps_so_many_addresses_of_a_peer() {
    use super::super::events::MAX_KAD_ADDRS;
    use crate::node::net::{Net, NetConfig};

    let mut net = Net::start(
        libp2p::identity::Keypair::generate_ed25519(),
        &NetConfig::loopback(),
    )
    .unwrap();
    let peer = libp2p::PeerId::random();
    for port in 1..=40u16 {
        net.add_address(&peer, a(&format!("/ip4/203.0.113.7/tcp/{port}")));
    }
    let held: Vec<String> = net
        .known_addresses(&peer)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(held.len(), MAX_KAD_ADDRS, "{held:?}");
    assert!(held.iter().any(|x| x.contains("/tcp/40/")), "{held:?}");
    assert!(!held.iter().any(|x| x.contains("/tcp/1/")), "{held:?}");
}
