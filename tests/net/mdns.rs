//! mDNS discovery between two network namespaces joined by a veth pair.
//!
//! mDNS multicasts on every interface, so it never runs on the host
//! network: this test creates two namespaces (`ip netns`, needs root or
//! CAP_NET_ADMIN), links them with a veth pair on 10.213.0.0/24, and runs
//! this test binary again inside each (`--ignored --exact mdns::mdns_child` with
//! [`CHILD_ENV`] set). Each child starts a node with mDNS on and reports on
//! stdout what it discovered and connected to. Without the privileges the
//! test prints why it skipped and passes. The namespaces are removed by a
//! guard, whatever happens.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use meshchat::node::net::{BehaviourEvent, Net, NetConfig, NetEvent};

use super::harness::keypair;

/// Set (to the child's key seed) only in a child process.
const CHILD_ENV: &str = "MESHCHAT_MDNS_CHILD_SEED";
/// Prefix of the lines a child reports on.
const REPORT: &str = "mdns-child:";
/// How long a child lives at most.
const CHILD_LIFETIME: Duration = Duration::from_secs(40);
/// How long the parent waits for both discoveries.
const DISCOVERY_WAIT: Duration = Duration::from_secs(30);

/// Runs a command to completion; its stderr becomes the error.
fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Two namespaces linked by a veth pair; removed on drop.
struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    fn create(tag: &str) -> Result<Self, String> {
        let mut ns = Self { names: Vec::new() };
        let (a, b) = (format!("mc-mdns-{tag}-a"), format!("mc-mdns-{tag}-b"));
        // veth names are limited to 15 bytes.
        let (va, vb) = (format!("mcv{tag}a"), format!("mcv{tag}b"));
        for name in [&a, &b] {
            run(&["ip", "netns", "add", name])?;
            ns.names.push(name.clone());
        }
        run(&[
            "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
        ])?;
        for (name, dev, ip) in [(&a, &va, "10.213.0.1/24"), (&b, &vb, "10.213.0.2/24")] {
            run(&["ip", "link", "set", dev, "netns", name])?;
            run(&["ip", "-n", name, "addr", "add", ip, "dev", dev])?;
            run(&["ip", "-n", name, "link", "set", dev, "up"])?;
            run(&["ip", "-n", name, "link", "set", "lo", "up"])?;
            run(&["ip", "-n", name, "route", "add", "224.0.0.0/4", "dev", dev])?;
        }
        Ok(ns)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it, and so the pair.
        for name in &self.names {
            if let Err(e) = run(&["ip", "netns", "del", name]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Kills a child we started (by its own handle) on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn why_not_root() -> Option<String> {
    let out = Command::new("id").arg("-u").output().ok()?;
    let uid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (uid != "0").then(|| format!("not root (uid {uid})"))
}

#[test]
fn discovers_peer_in_other_namespace() {
    if Command::new("ip").arg("-V").output().is_err() {
        println!("skipped: cannot create network namespaces (no `ip` command)");
        return;
    }
    if let Some(reason) = why_not_root() {
        println!("skipped: cannot create network namespaces ({reason})");
        return;
    }
    let tag = (std::process::id() % 100_000).to_string();
    let namespaces = match Namespaces::create(&tag) {
        Ok(ns) => ns,
        Err(reason) => {
            println!("skipped: cannot create network namespaces ({reason})");
            return;
        }
    };

    let exe = std::env::current_exe().unwrap();
    let exe = exe.to_str().unwrap();
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let mut children = Vec::new();
    for (i, ns) in namespaces.names.iter().enumerate() {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, exe])
            .args([
                "--ignored",
                "--exact",
                "mdns::mdns_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, (100 + i).to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest may print "test ... " on the same line first.
                if let Some((_, report)) = line.split_once(REPORT) {
                    let _ = tx.send((i, report.trim().to_owned()));
                }
            }
        });
        children.push(Reaped(child));
    }
    drop(tx);

    let expected: Vec<PeerId> = (0..2)
        .map(|i| keypair(100 + i).public().to_peer_id())
        .collect();
    let mut discovered = [false; 2];
    let mut connected = [false; 2];
    let deadline = Instant::now() + DISCOVERY_WAIT;
    while !(discovered.iter().all(|d| *d) && connected.iter().all(|c| *c)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let (i, report) = match rx.recv_timeout(left) {
            Ok(got) => got,
            Err(e) => panic!(
                "mDNS: discovered {discovered:?}, connected {connected:?} when waiting ended ({e:?})"
            ),
        };
        println!("child {i}: {report}");
        let other = expected[1 - i].to_string();
        let mut words = report.split(' ');
        match (words.next(), words.next()) {
            (Some("discovered"), Some(peer)) if peer == other => discovered[i] = true,
            (Some("connected"), Some(peer)) if peer == other => connected[i] = true,
            (Some("error"), _) => panic!("child {i}: {report}"),
            _ => {}
        }
    }
    drop(children);
    drop(namespaces);
}

/// The node inside a namespace; does nothing unless [`CHILD_ENV`] is set
/// (the parent runs it with `--ignored`; it is no test of its own).
#[test]
#[ignore = "the mDNS test's child process, run by its parent inside a namespace"]
fn mdns_child() {
    let Ok(seed) = std::env::var(CHILD_ENV) else {
        return;
    };
    let seed: u64 = seed.parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut cfg = NetConfig::default();
        cfg.listen.truncate(1); // TCP on 0.0.0.0: the namespace's veth and lo
        cfg.mdns = true;
        let mut net = match Net::start(keypair(seed), &cfg) {
            Ok(net) => net,
            Err(e) => {
                println!("{REPORT} error {e}");
                return;
            }
        };
        println!("{REPORT} peer {}", net.local_peer_id());
        let _ = tokio::time::timeout(CHILD_LIFETIME, async {
            loop {
                // Driven by hand to report dial errors too (on failure the
                // parent's output shows them).
                let event = net.swarm_mut().select_next_some().await;
                match &event {
                    SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                        println!(
                            "{REPORT} dial-error {peer_id:?} {}",
                            error.to_string().replace('\n', " | ")
                        );
                    }
                    SwarmEvent::IncomingConnectionError {
                        error,
                        send_back_addr,
                        ..
                    } => {
                        println!("{REPORT} incoming-error {send_back_addr} {error}");
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Mdns(
                        libp2p::mdns::Event::Discovered(found),
                    )) => println!("{REPORT} mdns {found:?}"),
                    _ => {}
                }
                let Some(event) = net.on_swarm_event(event) else {
                    continue;
                };
                match event {
                    NetEvent::Discovered { peers } => {
                        for peer in peers {
                            println!("{REPORT} discovered {peer}");
                        }
                    }
                    NetEvent::Connected { peer, addr } => {
                        println!("{REPORT} connected {peer} {addr}");
                    }
                    _ => {}
                }
            }
        })
        .await;
    });
}
