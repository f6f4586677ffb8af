//! A js-libp2p node (tests/interop/js/peer.mjs, pinned by its
//! package-lock.json) between two of ours: it connects, identifies, pings
//! and forwards our gossip, with nothing but standard libp2p protocols.
//!
//! Needs Node.js, and the peer's packages installed by `scripts/test.sh`
//! (`npm ci` in tests/interop/js: the test itself reaches nothing off
//! 127.0.0.1). Without a `node` on the PATH the test says so and passes
//! without running; with Node.js but without the packages it fails and
//! says how to install them.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use libp2p::Multiaddr;
use meshchat::node::{NodeEvent, PresenceState};
use serde_json::Value;

use crate::common::{TestNode, WAIT, befriend_unconnected};

/// Kills the child when the test ends, however it ends.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/js")
}

fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits for the first line of the peer's output that `pick` accepts.
fn expect<T>(
    lines: &mpsc::Receiver<Value>,
    what: &str,
    mut pick: impl FnMut(&Value) -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(v) => {
                if let Some(t) = pick(&v) {
                    return t;
                }
            }
            Err(_) => panic!("js peer: no {what} within {WAIT:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_js_libp2p_node_connects_identifies_pings_and_forwards_our_gossip() {
    if !have("node") {
        eprintln!("SKIPPED: Node.js is not installed; the js-libp2p interop test needs it");
        return;
    }
    let dir = js_dir();
    assert!(
        dir.join("node_modules").is_dir(),
        "the js-libp2p peer's packages are not installed in {}: run the tests \
         with scripts/test.sh, which installs them (npm ci)",
        dir.display()
    );
    let mut child = Command::new("node")
        .arg("peer.mjs")
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the js peer");
    let stdout = child.stdout.take().expect("its stdout");
    let _peer = Peer(child);
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if std::env::var_os("MESHCHAT_TEST_LOG").is_some() {
                eprintln!("js peer: {line}");
            }
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && tx.send(v).is_err()
            {
                return;
            }
        }
    });
    let js_addr: Multiaddr = expect(&lines, "ready line", |v| {
        (v["event"] == "ready").then(|| v["addrs"][0].as_str().unwrap().parse().unwrap())
    });

    // Ours listen nowhere: each can only reach the js node, not the other.
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = TestNode::start_unreachable("a", dirs[0].path(), 41).await;
    let mut b = TestNode::start_unreachable("b", dirs[1].path(), 42).await;
    befriend_unconnected(&a, &b).await;
    let js_addr_peer = match js_addr.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(p)) => p,
        _ => panic!("js address without a peer id: {js_addr}"),
    };
    a.handle.dial(js_addr.clone()).await.unwrap();
    b.handle.dial(js_addr).await.unwrap();

    let a_peer = a.peer().to_string();
    let protocols: Vec<String> = expect(&lines, "identify of our node", |v| {
        (v["event"] == "identify" && v["peer"] == a_peer.as_str()).then(|| {
            v["protocols"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_owned())
                .collect()
        })
    });
    for p in [
        "/ipfs/id/1.0.0",
        "/ipfs/ping/1.0.0",
        "/meshsub/1.1.0",
        "/meshchat/direct/1",
    ] {
        assert!(protocols.iter().any(|q| q == p), "{p} not in {protocols:?}");
    }
    expect(&lines, "a ping answered by our node", |v| {
        (v["event"] == "ping" && v["peer"] == a_peer.as_str()).then_some(())
    });
    expect(&lines, "one of our presence beacons", |v| {
        (v["event"] == "gossip" && v["topic"] == "meshchat/1/presence").then_some(())
    });
    // B hears A's presence: only the js node can have forwarded it.
    let ak = a.key();
    b.wait("a's presence through the js node", |e| match e {
        NodeEvent::Presence { contact, state, .. }
            if *contact == ak && *state == PresenceState::Online =>
        {
            Some(())
        }
        _ => None,
    })
    .await;
    let js_peer = js_addr_peer;
    for node in [&a, &b] {
        let connected = node.handle.status().await.unwrap().connected;
        assert!(
            connected.contains(&js_peer),
            "{} lost the js node",
            node.name
        );
    }
    assert!(
        !b.handle
            .status()
            .await
            .unwrap()
            .connected
            .contains(&a.peer())
    );
}
