//! Our side: real nodes (`Node::spawn`) on 127.0.0.1 with their stores in
//! temporary directories on the disk, every message encrypted, persisted
//! and acknowledged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::futures::StreamExt;
use libp2p::futures::stream;
use libp2p::multiaddr::Protocol;
use meshchat::crypto::{KdfParams, Keystore};
use meshchat::node::{Node, NodeConfig, NodeEvent, NodeHandle};
use meshchat::store::{DeliveryState, MessageRef};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::stats::{latency, rate};

const BODY: usize = 200;
/// Longest any one phase may take before it is reported as timed out.
const PHASE_LIMIT: Duration = Duration::from_secs(900);

/// What a node's event stream showed, with when.
#[derive(Default)]
pub(crate) struct Seen {
    /// Message number (first 8 bytes of the body) → first arrival.
    pub(crate) messages: HashMap<u64, Instant>,
    pub(crate) duplicates: usize,
    /// Group receipts for our messages that reached us.
    pub(crate) group_receipts: usize,
    /// Our messages → when they were reported delivered.
    delivered: HashMap<MessageRef, Instant>,
}

pub(crate) struct Bench {
    pub(crate) handle: NodeHandle,
    pub(crate) seen: Arc<Mutex<Seen>>,
    changed: Arc<Notify>,
    addr: libp2p::Multiaddr,
    _dir: tempfile::TempDir,
}

/// A directory for a node's store: under `MESH_BENCH_DIR` if set, else
/// in the system's temporary directory (on the disk here). Pointing
/// `MESH_BENCH_DIR` at a tmpfs shows what is left of the path without the
/// disk's syncs.
pub(crate) fn store_dir() -> tempfile::TempDir {
    match std::env::var_os("MESH_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    }
}

impl Bench {
    pub(crate) async fn start(seed: u64, listen: bool) -> Self {
        let dir = store_dir();
        let key = Keystore::create(
            b"bench",
            KdfParams::INSECURE_FAST,
            &mut StdRng::seed_from_u64(seed),
        )
        .unwrap()
        .1;
        let mut cfg = NodeConfig::loopback(dir.path(), key);
        cfg.net
            .listen
            .retain(|a| a.iter().any(|p| matches!(p, Protocol::Tcp(_))));
        if !listen {
            cfg.net.listen.clear();
        }
        // MESH_BENCH_KAD_CLIENT=1: the nodes do not serve Kademlia (a
        // diagnostic: no routing tables fill, so no bootstraps follow).
        if std::env::var_os("MESH_BENCH_KAD_CLIENT").is_some() {
            cfg.net.kad_server = false;
        }
        let (handle, mut events) = Node::spawn(cfg).await.unwrap();
        let mut addr = libp2p::Multiaddr::empty();
        if listen {
            while let Some(e) = events.recv().await {
                if let NodeEvent::Listening { addr: a } = e {
                    addr = a.with(Protocol::P2p(handle.info().peer_id));
                    break;
                }
            }
        }
        let seen = Arc::new(Mutex::new(Seen::default()));
        let changed = Arc::new(Notify::new());
        let (s, c) = (seen.clone(), changed.clone());
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                let now = Instant::now();
                {
                    let mut seen = s.lock().unwrap();
                    match e {
                        NodeEvent::Message { message, .. } if message.body.len() >= 8 => {
                            let k = u64::from_be_bytes(message.body[..8].try_into().unwrap());
                            tracing::trace!(target: "mesh_bench", k, "message event");
                            if seen.messages.insert(k, now).is_some() {
                                seen.duplicates += 1;
                            }
                        }
                        NodeEvent::Receipt {
                            message,
                            state: DeliveryState::Delivered,
                        } => {
                            seen.delivered.entry(message).or_insert(now);
                        }
                        NodeEvent::GroupReceipt { .. } => seen.group_receipts += 1,
                        _ => continue,
                    }
                }
                c.notify_waiters();
            }
        });
        Self {
            handle,
            seen,
            changed,
            addr,
            _dir: dir,
        }
    }

    pub(crate) fn key(&self) -> [u8; 32] {
        self.handle.info().identity
    }

    /// Waits until `done` holds for what this node has seen.
    pub(crate) async fn until(&self, done: impl Fn(&Seen) -> bool) -> bool {
        tokio::time::timeout(PHASE_LIMIT, async {
            loop {
                let notified = self.changed.notified();
                if done(&self.seen.lock().unwrap()) {
                    return;
                }
                notified.await;
            }
        })
        .await
        .is_ok()
    }

    pub(crate) async fn stop(self) {
        let _ = self.handle.shutdown(Duration::from_secs(10)).await;
    }
}

pub(crate) fn body(n: u64) -> Vec<u8> {
    let mut v = vec![b'x'; BODY];
    v[..8].copy_from_slice(&n.to_be_bytes());
    v
}

pub(crate) async fn befriend(a: &Bench, b: &Bench, with_addrs: bool) {
    let code = |h: &NodeHandle| {
        let h = h.clone();
        async move {
            let code = h.invite().await.unwrap();
            if with_addrs {
                return code;
            }
            let inv = meshchat::node::state::Invite::from_code(&code).unwrap();
            inv.without_addrs().to_code()
        }
    };
    a.handle
        .add_contact(&code(&b.handle).await, "b")
        .await
        .unwrap();
    b.handle
        .add_contact(&code(&a.handle).await, "a")
        .await
        .unwrap();
}

async fn connected(a: &Bench, peer: libp2p::PeerId) {
    for _ in 0..1000 {
        if a.handle.status().await.unwrap().connected.contains(&peer) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no connection");
}

/// Sends `n` messages one at a time from `a` to `to`, each after the
/// previous one was delivered: one-way (to `rx`'s event) and delivered
/// (to `a`'s receipt) latencies.
async fn one_at_a_time(
    a: &Bench,
    rx: &Bench,
    to: [u8; 32],
    first: u64,
    n: usize,
    warmup: usize,
) -> (Value, Value) {
    let mut one_way = Vec::with_capacity(n);
    let mut round_trip = Vec::with_capacity(n);
    for i in 0..(warmup + n) as u64 {
        let k = first + i;
        let t = Instant::now();
        let r = a.handle.send(to, body(k)).await.unwrap();
        assert!(
            rx.until(|s| s.messages.contains_key(&k)).await,
            "message {k} not delivered"
        );
        assert!(
            a.until(|s| s.delivered.contains_key(&r)).await,
            "no receipt for {k}"
        );
        if i as usize >= warmup {
            one_way.push(rx.seen.lock().unwrap().messages[&k] - t);
            round_trip.push(a.seen.lock().unwrap().delivered[&r] - t);
        }
    }
    (latency(one_way), latency(round_trip))
}

/// Two connected nodes: latency one message at a time, then sustained
/// throughput with `window` sends in flight.
pub(crate) async fn direct(n_latency: usize, total: usize, window: usize) -> Value {
    let a = Bench::start(1, true).await;
    let b = Bench::start(2, true).await;
    befriend(&a, &b, true).await;
    connected(&a, b.handle.info().peer_id).await;
    let (one_way, delivered) = one_at_a_time(&a, &b, b.key(), 0, n_latency, 50).await;

    let first = 1_000_000u64;
    let to = b.key();
    let started = Instant::now();
    let handle = a.handle.clone();
    stream::iter(0..total as u64)
        .for_each_concurrent(window, |i| {
            let h = handle.clone();
            async move {
                h.send(to, body(first + i)).await.unwrap();
            }
        })
        .await;
    let accepted = started.elapsed();
    let arrived = b
        .until(|s| (first..first + total as u64).all(|k| s.messages.contains_key(&k)))
        .await;
    let all_in = started.elapsed();
    let acked = a
        .until(|s| s.delivered.len() >= n_latency + 50 + total)
        .await;
    let all_acked = started.elapsed();
    let dups = b.seen.lock().unwrap().duplicates;
    a.stop().await;
    b.stop().await;
    json!({
        "what": "two nodes, direct path: ratchet-encrypt, persist (flushed) and queue at the sender, deliver, decrypt and persist (flushed) at the recipient, transport ack, delivered reported at the sender (its state goes to disk with the sender's next flush)",
        "latency_one_way": one_way,
        "latency_to_delivered_receipt": delivered,
        "throughput": {
            "messages": total,
            "senders_in_flight": window,
            "all_stored_by_sender_ms": accepted.as_millis(),
            "all_received_msgs_per_s": rate(total, all_in),
            "all_acknowledged_msgs_per_s": rate(total, all_acked),
            "complete": arrived && acked,
            "duplicates_at_recipient": dups,
        },
    })
}

/// A–B–C, A and C listening nowhere: every message crosses B on the mesh
/// (sealed envelope on C's inbox topic), every receipt comes back the same way.
pub(crate) async fn line(n: usize) -> Value {
    let a = Bench::start(11, false).await;
    let b = Bench::start(12, true).await;
    let c = Bench::start(13, false).await;
    befriend(&a, &c, false).await;
    a.handle.dial(b.addr.clone()).await.unwrap();
    c.handle.dial(b.addr.clone()).await.unwrap();
    connected(&a, b.handle.info().peer_id).await;
    connected(&c, b.handle.info().peer_id).await;
    let (one_way, delivered) = one_at_a_time(&a, &c, c.key(), 0, n, 20).await;
    let direct_ac = a
        .handle
        .status()
        .await
        .unwrap()
        .connected
        .contains(&c.handle.info().peer_id);
    a.stop().await;
    b.stop().await;
    c.stop().await;
    json!({
        "what": "three nodes in a line, A and C not connected: seal, publish on C's inbox topic, B validates and forwards, C opens, decrypts, persists and returns a sealed delivered receipt the same way",
        "a_and_c_connected": direct_ac,
        "latency_one_way": one_way,
        "latency_to_delivered_receipt": delivered,
    })
}

/// `n` messages handed to the node at once (`send_many`): all must arrive,
/// each once.
pub(crate) async fn burst(n: usize) -> Value {
    let a = Bench::start(21, true).await;
    let b = Bench::start(22, true).await;
    befriend(&a, &b, true).await;
    connected(&a, b.handle.info().peer_id).await;
    let bodies: Vec<Vec<u8>> = (0..n as u64).map(body).collect();
    let started = Instant::now();
    a.handle.send_many(b.key(), bodies).await.unwrap();
    let stored = started.elapsed();
    let complete = b.until(|s| s.messages.len() >= n).await;
    let arrived = started.elapsed();
    let mut queued = a.handle.queued().await.unwrap();
    while queued > 0 {
        if !a.until(|s| s.delivered.len() >= n).await {
            break;
        }
        queued = a.handle.queued().await.unwrap();
    }
    let acked = started.elapsed();
    let (received, dups) = {
        let s = b.seen.lock().unwrap();
        (s.messages.len(), s.duplicates)
    };
    let in_history = {
        let mut total = 0;
        let mut cursor = None;
        loop {
            let page = b.handle.history(a.key(), cursor, 500).await.unwrap();
            total += page.messages.len();
            match page.next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        total
    };
    a.stop().await;
    b.stop().await;
    json!({
        "what": "a burst handed to the node in one call (send_many): stored and queued, then paced out by the outbox over the direct path",
        "messages": n,
        "all_stored_by_sender_ms": stored.as_millis(),
        "received": received,
        "received_ratio": received as f64 / n as f64,
        "duplicates_at_recipient": dups,
        "in_recipient_history": in_history,
        "sender_queue_left": queued,
        "complete": complete && received == n && in_history == n && queued == 0,
        "all_received_ms": arrived.as_millis(),
        "all_acknowledged_ms": acked.as_millis(),
        "received_msgs_per_s": rate(n, arrived),
    })
}
