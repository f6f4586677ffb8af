//! A cap on incoming connections from one IP address.
//!
//! `connection_limits` counts per peer id and in total; peer ids cost
//! nothing to make, so one host could take every incoming slot with fresh
//! ones. This counts incoming connections (in their handshake or
//! established) by the address they come from (an IPv6 address by its /64
//! prefix) and refuses one more than the cap, before its handshake. Relayed connections are not counted: the
//! address they come from is the relay's, and the relay server has limits
//! of its own.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, ListenFailure, NetworkBehaviour,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};

/// The cap was reached for this address.
#[derive(Debug, thiserror::Error)]
#[error("{ip} has {max} incoming connections already")]
pub struct TooManyFromIp {
    /// The address.
    pub ip: IpAddr,
    /// The cap.
    pub max: u32,
}

/// Counts incoming connections by source address; see the module docs.
pub struct Behaviour {
    max: u32,
    /// Connection → the address it came from (counted ones only).
    from: HashMap<ConnectionId, IpAddr>,
    /// Address → its connections.
    count: HashMap<IpAddr, u32>,
}

impl Behaviour {
    /// At most `max` incoming connections from one address (0: none).
    pub fn new(max: u32) -> Self {
        Self {
            max,
            from: HashMap::new(),
            count: HashMap::new(),
        }
    }

    /// Connections counted from `ip` now.
    pub fn connections_from(&self, ip: &IpAddr) -> u32 {
        self.count.get(ip).copied().unwrap_or(0)
    }

    fn forget(&mut self, id: ConnectionId) {
        if let Some(ip) = self.from.remove(&id)
            && let Some(n) = self.count.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                self.count.remove(&ip);
            }
        }
    }
}

/// The address a connection is counted under: its IPv4 address, or the
/// /64 prefix of its IPv6 address (one host commonly has a whole /64 to
/// pick addresses from); `None` for a relayed connection.
fn source_ip(addr: &Multiaddr) -> Option<IpAddr> {
    if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
        return None;
    }
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6((u128::from(ip) & !u128::from(u64::MAX)).into())),
        _ => None,
    })
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let Some(ip) = source_ip(remote) else {
            return Ok(());
        };
        // Looked up first: a refused address leaves nothing behind.
        if self.connections_from(&ip) >= self.max {
            return Err(ConnectionDenied::new(TooManyFromIp { ip, max: self.max }));
        }
        *self.count.entry(ip).or_default() += 1;
        self.from.insert(id, ip);
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. })
            | FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => {
                self.forget(connection_id)
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_cap_of_zero_refuses_everything_and_remembers_nothing() {
        let mut b = Behaviour::new(0);
        let local = addr("/ip4/127.0.0.1/tcp/1");
        for i in 0..100u8 {
            let from = addr(&format!("/ip4/10.0.0.{i}/tcp/5000"));
            let id = ConnectionId::new_unchecked(usize::from(i));
            assert!(
                b.handle_pending_inbound_connection(id, &local, &from)
                    .is_err()
            );
        }
        assert!(b.count.is_empty() && b.from.is_empty());
    }

    #[test]
    fn counts_by_source_address_and_forgets_closed_ones() {
        let mut b = Behaviour::new(2);
        let local = addr("/ip4/127.0.0.1/tcp/1");
        let a = addr("/ip4/10.0.0.1/tcp/5000");
        let a2 = addr("/ip4/10.0.0.1/tcp/5001");
        let other = addr("/ip6/::1/udp/7/quic-v1");
        let (c1, c2, c3, c4) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
            ConnectionId::new_unchecked(3),
            ConnectionId::new_unchecked(4),
        );
        b.handle_pending_inbound_connection(c1, &local, &a).unwrap();
        b.handle_pending_inbound_connection(c2, &local, &a2)
            .unwrap();
        let refused = b
            .handle_pending_inbound_connection(c3, &local, &a)
            .unwrap_err();
        let why = refused.downcast_ref::<TooManyFromIp>().unwrap();
        assert_eq!(
            why.to_string(),
            "10.0.0.1 has 2 incoming connections already"
        );
        b.handle_pending_inbound_connection(c4, &local, &other)
            .unwrap();
        // IPv6 addresses count by their /64.
        let prefix = "2001:db8:1:2::".parse().unwrap();
        for (i, a) in [
            "/ip6/2001:db8:1:2::1/tcp/1",
            "/ip6/2001:db8:1:2:ffff::9/tcp/1",
        ]
        .iter()
        .enumerate()
        {
            let id = ConnectionId::new_unchecked(10 + i);
            b.handle_pending_inbound_connection(id, &local, &addr(a))
                .unwrap();
        }
        let six = b.handle_pending_inbound_connection(
            ConnectionId::new_unchecked(12),
            &local,
            &addr("/ip6/2001:db8:1:2:abcd::1/udp/1/quic-v1"),
        );
        assert!(six.is_err());
        assert_eq!(b.connections_from(&prefix), 2);
        b.handle_pending_inbound_connection(
            ConnectionId::new_unchecked(13),
            &local,
            &addr("/ip6/2001:db8:1:3::1/tcp/1"),
        )
        .unwrap();
        for i in 10..14 {
            b.forget(ConnectionId::new_unchecked(i));
        }
        // A relayed connection is not counted.
        let relayed = addr(
            "/ip4/10.0.0.1/tcp/4001/p2p/12D3KooWLr1Csb2pZcwnpCR1ZoRkxobM7xeQH8RFMX9wJ3vNeRC5/p2p-circuit",
        );
        b.handle_pending_inbound_connection(c3, &local, &relayed)
            .unwrap();
        assert_eq!(b.connections_from(&"10.0.0.1".parse().unwrap()), 2);
        b.forget(c1);
        b.forget(c1);
        b.forget(c3);
        assert_eq!(b.connections_from(&"10.0.0.1".parse().unwrap()), 1);
        b.handle_pending_inbound_connection(c3, &local, &a).unwrap();
        b.forget(c2);
        b.forget(c3);
        b.forget(c4);
        assert!(b.count.is_empty() && b.from.is_empty());
    }
}
