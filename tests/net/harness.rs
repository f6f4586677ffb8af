//! Starts nodes and drives them all at once until a condition holds.

use std::time::Duration;

use libp2p::futures::future::select_all;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, identity::Keypair};
use meshchat::crypto::DeviceIdentity;
use meshchat::node::net::{Net, NetConfig, NetEvent};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// How long any one wait may take before the test fails.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// The libp2p key of a device identity made from a seeded RNG.
pub(crate) fn keypair(seed: u64) -> Keypair {
    DeviceIdentity::generate(&mut StdRng::seed_from_u64(seed))
        .to_libp2p()
        .unwrap()
}

/// Loopback, TCP only.
pub(crate) fn tcp_only() -> NetConfig {
    let mut cfg = NetConfig::loopback();
    cfg.listen
        .retain(|a| a.iter().any(|p| matches!(p, Protocol::Tcp(_))));
    cfg
}

/// Loopback, QUIC only.
pub(crate) fn quic_only() -> NetConfig {
    let mut cfg = NetConfig::loopback();
    cfg.listen
        .retain(|a| a.iter().any(|p| matches!(p, Protocol::QuicV1)));
    cfg
}

/// `addr/p2p/peer`.
pub(crate) fn with_peer(addr: &Multiaddr, peer: PeerId) -> Multiaddr {
    addr.clone().with(Protocol::P2p(peer))
}

/// A set of nodes driven together.
pub(crate) struct Nodes {
    pub(crate) nets: Vec<Net>,
}

impl Nodes {
    /// Starts one node per `(seed, config)` and waits until each listens
    /// on every address it was given.
    pub(crate) async fn start(specs: Vec<(u64, NetConfig)>) -> Self {
        let wanted: Vec<usize> = specs.iter().map(|(_, c)| c.listen.len()).collect();
        let nets = specs
            .into_iter()
            .map(|(seed, cfg)| Net::start(keypair(seed), &cfg).unwrap())
            .collect();
        let mut nodes = Self { nets };
        while !nodes
            .nets
            .iter()
            .zip(&wanted)
            .all(|(n, w)| n.listen_addrs().len() >= *w)
        {
            nodes.until("listen addresses", |_, _, _| Some(())).await;
        }
        nodes
    }

    /// Peer id of node `i`.
    pub(crate) fn id(&self, i: usize) -> PeerId {
        self.nets[i].local_peer_id()
    }

    /// First listen address of node `i` matching `pred`, with its peer id.
    pub(crate) fn addr(&self, i: usize, pred: impl Fn(&Multiaddr) -> bool) -> Multiaddr {
        let addr = self.nets[i]
            .listen_addrs()
            .into_iter()
            .find(|a| pred(a))
            .expect("a matching listen address");
        with_peer(&addr, self.id(i))
    }

    /// Drives every node and hands each event to `f` with the node's index
    /// and the node itself, until `f` returns `Some`. Fails after [`WAIT`].
    pub(crate) async fn until<T>(
        &mut self,
        what: &str,
        mut f: impl FnMut(usize, &mut Net, NetEvent) -> Option<T>,
    ) -> T {
        let run = async {
            loop {
                let (event, i) = {
                    let events = self.nets.iter_mut().map(|n| Box::pin(n.next_event()));
                    let (event, i, _) = select_all(events).await;
                    (event, i)
                };
                if let Some(done) = f(i, &mut self.nets[i], event) {
                    return done;
                }
            }
        };
        match tokio::time::timeout(WAIT, run).await {
            Ok(done) => done,
            Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
        }
    }

    /// Drives every node (events are dropped) until `done` holds for the
    /// nodes' state. Fails after [`WAIT`].
    pub(crate) async fn until_state(&mut self, what: &str, done: impl Fn(&[Net]) -> bool) {
        while !done(&self.nets) {
            self.until(what, |_, _, _| Some(())).await;
        }
    }

    /// Node `from` dials node `to` at `addr` and both see the connection.
    pub(crate) async fn connect(&mut self, from: usize, to: usize, addr: Multiaddr) {
        self.nets[from].dial(addr).unwrap();
        let (a, b) = (self.id(from), self.id(to));
        let mut seen = (false, false);
        self.until("connection", |i, _, event| {
            if let NetEvent::Connected { peer, .. } = event {
                if i == from && peer == b {
                    seen.0 = true;
                }
                if i == to && peer == a {
                    seen.1 = true;
                }
            }
            (seen.0 && seen.1).then_some(())
        })
        .await;
    }
}
