//! The harness of the node tests: real nodes (real libp2p on 127.0.0.1 with
//! port 0, real sled in temporary directories) and waits on their events
//! with timeouts. Nothing here sleeps.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use meshchat::crypto::{DataKey, KdfParams, Keystore};
use meshchat::node::{Node, NodeConfig, NodeEvent, NodeHandle, PresenceConfig};
use meshchat::store::{DeliveryState, MessageRef, StoredMessage};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::mpsc;

/// How long any one wait may take before the test fails.
pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// Everything every node of this test binary logged (all levels of
/// `meshchat`, info and above of the rest).
pub(crate) fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        // MESHCHAT_TEST_LOG=1: also print everything (to debug a test).
        let echo = std::env::var_os("MESHCHAT_TEST_LOG").is_some();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info,meshchat=trace")
            .with_ansi(false)
            .with_writer(move || LogWriter(sink.clone(), echo))
            .try_init();
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>, bool);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        if self.1 {
            std::io::stderr().write_all(buf)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether `needle` occurs in `hay`.
pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Whether any file under `dir` contains `needle`.
pub(crate) fn dir_contains(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let path = e.unwrap().path();
        if path.is_dir() {
            dir_contains(&path, needle)
        } else {
            contains(&std::fs::read(&path).unwrap_or_default(), needle)
        }
    })
}

/// The store key of test node `seed` (fast KDF, seeded).
pub(crate) fn key(seed: u64) -> DataKey {
    let mut rng = StdRng::seed_from_u64(seed);
    Keystore::create(b"test", KdfParams::INSECURE_FAST, &mut rng)
        .unwrap()
        .1
}

/// Loopback, TCP only, mDNS off, fast ticks and presence.
pub(crate) fn config(dir: &Path, seed: u64) -> NodeConfig {
    let mut cfg = NodeConfig::loopback(dir, key(seed));
    cfg.net
        .listen
        .retain(|a| a.iter().any(|p| matches!(p, Protocol::Tcp(_))));
    cfg.tick = Duration::from_millis(100);
    cfg.presence = PresenceConfig {
        heartbeat: Duration::from_millis(300),
        expiry: Duration::from_millis(1500),
        hidden: false,
    };
    cfg
}

/// One running node and its events.
pub(crate) struct TestNode {
    pub(crate) name: &'static str,
    pub(crate) handle: NodeHandle,
    pub(crate) events: mpsc::Receiver<NodeEvent>,
    pub(crate) dir: PathBuf,
    pub(crate) seed: u64,
    pub(crate) addr: Multiaddr,
}

impl TestNode {
    /// Starts a node in `dir` and waits until it listens.
    pub(crate) async fn start_in(name: &'static str, dir: &Path, seed: u64) -> Self {
        Self::start_with(name, config(dir, seed)).await
    }

    /// Starts a node with this configuration and waits until it listens.
    pub(crate) async fn start_with(name: &'static str, cfg: NodeConfig) -> Self {
        logs();
        let dir = cfg.data_dir.clone();
        let listens = !cfg.net.listen.is_empty();
        let (handle, mut events) = Node::spawn(cfg).await.unwrap();
        let addr = if listens {
            let addr = wait_on(&mut events, name, "a listen address", |e| match e {
                NodeEvent::Listening { addr } => Some(addr.clone()),
                _ => None,
            })
            .await;
            addr.with(Protocol::P2p(handle.info().peer_id))
        } else {
            Multiaddr::empty()
        };
        Self {
            name,
            handle,
            events,
            dir,
            seed: 0,
            addr,
        }
    }

    /// Starts a node that listens nowhere (as behind a NAT): it can dial
    /// out, nobody can dial it.
    pub(crate) async fn start_unreachable(name: &'static str, dir: &Path, seed: u64) -> Self {
        let mut cfg = config(dir, seed);
        cfg.net.listen.clear();
        Self::start_with(name, cfg).await
    }

    /// This node's identity key.
    pub(crate) fn key(&self) -> [u8; 32] {
        self.handle.info().identity
    }

    /// Its peer id.
    pub(crate) fn peer(&self) -> PeerId {
        self.handle.info().peer_id
    }

    /// Waits (at most [`WAIT`]) for an event `pick` accepts; others are
    /// dropped.
    pub(crate) async fn wait<T>(
        &mut self,
        what: &str,
        pick: impl FnMut(&NodeEvent) -> Option<T>,
    ) -> T {
        // Named with its peer id too: the logs of a failed run name peers.
        let name = format!("{} ({})", self.name, self.handle.info().peer_id);
        wait_on(&mut self.events, &name, what, pick).await
    }

    /// Its invite code without addresses (the mesh must find it).
    pub(crate) async fn invite_without_addrs(&self) -> String {
        let code = self.handle.invite().await.unwrap();
        let inv = meshchat::node::state::Invite::from_code(&code).unwrap();
        inv.without_addrs().to_code()
    }

    /// Waits until connected to `peer`.
    pub(crate) async fn connected_to(&mut self, peer: PeerId) {
        if self
            .handle
            .status()
            .await
            .unwrap()
            .connected
            .contains(&peer)
        {
            return;
        }
        self.wait("a connection", |e| match e {
            NodeEvent::Connected { peer: p } if *p == peer => Some(()),
            _ => None,
        })
        .await
    }
}

/// Waits on an event stream for an event `pick` accepts.
pub(crate) async fn wait_on<T>(
    events: &mut mpsc::Receiver<NodeEvent>,
    name: &str,
    what: &str,
    mut pick: impl FnMut(&NodeEvent) -> Option<T>,
) -> T {
    let found = tokio::time::timeout(WAIT, async {
        while let Some(e) = events.recv().await {
            if let Some(t) = pick(&e) {
                return Some(t);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(t)) => t,
        Ok(None) => panic!("{name}: event stream ended while waiting for {what}"),
        Err(_) => panic!("{name}: no {what} within {WAIT:?}"),
    }
}

/// Makes `a` and `b` contacts of each other with full invites (so they
/// dial each other) and waits until they are connected.
pub(crate) async fn befriend(a: &mut TestNode, b: &mut TestNode) {
    let code_b = b.handle.invite().await.unwrap();
    let code_a = a.handle.invite().await.unwrap();
    a.handle.add_contact(&code_b, b.name).await.unwrap();
    b.handle.add_contact(&code_a, a.name).await.unwrap();
    let (pa, pb) = (a.peer(), b.peer());
    a.connected_to(pb).await;
    b.connected_to(pa).await;
}

/// Makes `a` and `b` contacts of each other without telling either where
/// the other listens.
pub(crate) async fn befriend_unconnected(a: &TestNode, b: &TestNode) {
    let code_b = b.invite_without_addrs().await;
    let code_a = a.invite_without_addrs().await;
    a.handle.add_contact(&code_b, b.name).await.unwrap();
    b.handle.add_contact(&code_a, a.name).await.unwrap();
}

/// Connects `a` to `b` (dialled by `a`) and waits on both sides.
pub(crate) async fn connect(a: &mut TestNode, b: &mut TestNode) {
    a.handle.dial(b.addr.clone()).await.unwrap();
    let (pa, pb) = (a.peer(), b.peer());
    a.connected_to(pb).await;
    b.connected_to(pa).await;
}

/// Waits until `message` reaches `state`.
pub(crate) async fn receipt(node: &mut TestNode, message: MessageRef, state: DeliveryState) {
    receipts(node, &[message], state).await
}

/// Waits until every one of `messages` reaches `state`, in any order.
pub(crate) async fn receipts(node: &mut TestNode, messages: &[MessageRef], state: DeliveryState) {
    let mut left: Vec<MessageRef> = messages.to_vec();
    node.wait("receipts", |e| match e {
        NodeEvent::Receipt {
            message: m,
            state: s,
        } if *s == state => {
            left.retain(|x| x != m);
            left.is_empty().then_some(())
        }
        _ => None,
    })
    .await
}

/// Waits until `node` has every chunk of the media message `id`.
pub(crate) async fn media_ready(node: &mut TestNode, id: [u8; 16]) -> MessageRef {
    node.wait("the media ready", |e| match e {
        NodeEvent::MediaReady { message } if message.msg_id == id => Some(*message),
        _ => None,
    })
    .await
}

/// Waits for a message with this body.
pub(crate) async fn message(node: &mut TestNode, body: &[u8]) -> StoredMessage {
    node.wait("a message", |e| match e {
        NodeEvent::Message { message, .. } if message.body == body => Some(message.clone()),
        _ => None,
    })
    .await
}

/// Waits for messages with these bodies, in any order.
pub(crate) async fn messages(node: &mut TestNode, bodies: &[Vec<u8>]) {
    let mut left: Vec<Vec<u8>> = bodies.to_vec();
    node.wait("messages", |e| match e {
        NodeEvent::Message { message, .. } => {
            left.retain(|b| *b != message.body);
            left.is_empty().then_some(())
        }
        _ => None,
    })
    .await
}

/// Waits for the contact request of `from` on `node`; its fingerprint.
pub(crate) async fn contact_request(node: &mut TestNode, from: [u8; 32]) -> String {
    node.wait("a contact request", |e| match e {
        NodeEvent::ContactRequest {
            identity,
            fingerprint,
        } if *identity == from => Some(fingerprint.clone()),
        _ => None,
    })
    .await
}
