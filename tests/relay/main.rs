//! Relay tests (`meshchat::relay`): real relays and nodes on 127.0.0.1
//! (port 0) with real sled stores in temporary directories.
//!
//! - `offline`: mail for an offline device waits at its relays (one of
//!   them down) and arrives when it returns; the sender sees "stored at
//!   relay", then "delivered"; a relay restarted with mail loses none.
//! - `limits`: refusals (quota, size) reach the sender; expired mail is
//!   purged and the sender told; a fetch without the mailbox key is
//!   refused.
//! - `hostile`: garbage, huge length prefixes and floods from one peer.
//! - `groups`: group traffic for members who are away; temporary groups.
//! - `temporary`: temporary 1:1 chats, on both devices and the relay.
//! - `circuit`: devices that listen nowhere reach each other through a
//!   relay's circuit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/exit.rs"]
mod exit;

mod circuit;
mod cli;
mod groups;
mod hostile;
mod limits;
mod offline;
mod temporary;

use std::path::Path;
use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use meshchat::relay::{Relay, RelayConfig, RelayHandle};

use common::{WAIT, key};

/// One running relay.
pub(crate) struct TestRelay {
    pub(crate) handle: RelayHandle,
    /// Its address, ending in `/p2p/<peer id>`.
    pub(crate) addr: Multiaddr,
}

/// Loopback, TCP only, purging every second.
pub(crate) fn relay_config(dir: &Path, seed: u64) -> RelayConfig {
    let mut cfg = RelayConfig::loopback(dir, key(seed));
    cfg.net
        .listen
        .retain(|a| a.iter().any(|p| matches!(p, Protocol::Tcp(_))));
    cfg.purge_every = Duration::from_secs(1);
    cfg.advertise = false;
    cfg
}

impl TestRelay {
    pub(crate) async fn start(cfg: RelayConfig) -> Self {
        common::logs();
        let handle = Relay::spawn(cfg).await.unwrap();
        let addrs = tokio::time::timeout(WAIT, handle.listening())
            .await
            .expect("relay listening")
            .unwrap();
        let addr = addrs[0].clone().with(Protocol::P2p(handle.peer_id()));
        Self { handle, addr }
    }

    /// The address it listens on, without the peer id (to restart on it).
    pub(crate) fn bare_addr(&self) -> Multiaddr {
        let mut a = self.addr.clone();
        a.pop();
        a
    }

    /// Waits until it holds exactly `n` envelopes.
    pub(crate) async fn holds(&self, n: u64) {
        let mut held = self.handle.held();
        tokio::time::timeout(WAIT, held.wait_for(|h| *h == n))
            .await
            .unwrap_or_else(|_| panic!("relay never held {n} envelopes"))
            .unwrap();
    }
}

/// A bare mailbox client: the network layer alone, no node.
pub(crate) struct Client {
    pub(crate) net: meshchat::node::net::Net,
}

impl Client {
    /// Connected to `relay`.
    pub(crate) async fn connect(relay: &TestRelay, seed: u8) -> Self {
        Self::connect_to(&relay.addr, relay.handle.peer_id(), seed).await
    }

    /// Connected to the relay `peer` at `addr`.
    pub(crate) async fn connect_to(addr: &Multiaddr, peer: libp2p::PeerId, seed: u8) -> Self {
        use meshchat::node::net::{Net, NetConfig, NetEvent};
        let keypair = libp2p::identity::Keypair::ed25519_from_bytes([seed; 32]).unwrap();
        let mut cfg = NetConfig::loopback();
        cfg.listen.clear();
        let mut net = Net::start(keypair, &cfg).unwrap();
        net.dial(addr.clone()).unwrap();
        tokio::time::timeout(WAIT, async {
            loop {
                if let NetEvent::Connected { peer: p, .. } = net.next_event().await
                    && p == peer
                {
                    return;
                }
            }
        })
        .await
        .expect("client connected to the relay");
        Self { net }
    }

    /// Sends `request` to `relay` and waits for its answer.
    pub(crate) async fn ask(
        &mut self,
        relay: libp2p::PeerId,
        request: meshchat::relay::proto::Request,
    ) -> meshchat::relay::proto::Response {
        use meshchat::node::net::NetEvent;
        let id = self.net.send_mailbox(&relay, request);
        tokio::time::timeout(WAIT, async {
            loop {
                match self.net.next_event().await {
                    NetEvent::MailboxResponse {
                        request, response, ..
                    } if request == id => return response,
                    NetEvent::MailboxFailed { request, error, .. } if request == id => {
                        panic!("mailbox request failed: {error}")
                    }
                    _ => {}
                }
            }
        })
        .await
        .expect("an answer from the relay")
    }
}
