//! `meshchat demo`: three chat devices and a relay in this process, on
//! 127.0.0.1 only (mDNS off: nothing leaves loopback), in throwaway
//! directories, and a short scripted conversation, narrated.
//!
//! Alice and Carol are behind NAT (they listen nowhere) and reach each
//! other only through Bob, who cannot read what he forwards. Carol's
//! relay holds her mail while she is away and hands it over when she is
//! back.

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use tokio::sync::mpsc;

use crate::crypto::{DataKey, Secret32};
use crate::node::state::Invite;
use crate::node::{Node, NodeConfig, NodeEvent, NodeHandle};
use crate::relay::{Relay, RelayConfig, RelayHandle};
use crate::store::{DeliveryState, MessageRef};

/// The longest any one step may take before the demo gives up.
const STEP: Duration = Duration::from_secs(20);

/// Runs the demo; everything it starts is stopped and its directories
/// removed before it returns.
pub(super) fn run() -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(script())
}

/// Prints one line of the narration, with the time since the start.
struct Narrator(Instant);

impl Narrator {
    fn say(&self, text: &str) {
        println!("[{:5.2} s] {text}", self.0.elapsed().as_secs_f64());
    }
}

struct Device {
    name: &'static str,
    handle: NodeHandle,
    events: mpsc::Receiver<NodeEvent>,
    /// Events a wait passed over, oldest first, for the next waits: the
    /// devices run on their own, so what the script waits for next may
    /// already have happened (carol's prekeys can reach her relay before
    /// her connection to bob is up).
    passed: VecDeque<NodeEvent>,
}

/// The most events a device keeps for later waits (the oldest go first).
const PASSED: usize = 4096;

impl Device {
    async fn start(name: &'static str, cfg: NodeConfig) -> Result<Self> {
        let (handle, events) = Node::spawn(cfg)
            .await
            .with_context(|| format!("starting {name}'s device"))?;
        Ok(Self {
            name,
            handle,
            events,
            passed: VecDeque::new(),
        })
    }

    fn key(&self) -> [u8; 32] {
        self.handle.info().identity
    }

    /// Waits for the first event `pick` accepts, looking first at those
    /// earlier waits passed over (the one it takes is used up).
    async fn wait<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&NodeEvent) -> Option<T>,
    ) -> Result<T> {
        if let Some((i, t)) = self
            .passed
            .iter()
            .enumerate()
            .find_map(|(i, e)| pick(e).map(|t| (i, t)))
        {
            self.passed.remove(i);
            return Ok(t);
        }
        let name = self.name;
        let (events, passed) = (&mut self.events, &mut self.passed);
        within(what, async move {
            while let Some(e) = events.recv().await {
                if let Some(t) = pick(&e) {
                    return Ok(t);
                }
                if passed.len() == PASSED {
                    passed.pop_front();
                }
                passed.push_back(e);
            }
            Err(anyhow!("{name}'s device stopped"))
        })
        .await?
    }

    async fn receipt(&mut self, message: MessageRef, state: DeliveryState) -> Result<()> {
        self.wait("a receipt", |e| match e {
            NodeEvent::Receipt {
                message: m,
                state: s,
            } if *m == message && *s >= state => Some(()),
            _ => None,
        })
        .await
    }

    async fn message(&mut self, body: &[u8]) -> Result<[u8; 32]> {
        self.wait("a message", |e| match e {
            NodeEvent::Message { from, message } if message.body == body => Some(*from),
            _ => None,
        })
        .await
    }

    /// An invite code naming no addresses: the other side learns where
    /// this device is only from the mesh.
    async fn invite(&self) -> Result<String> {
        let code = self.handle.invite().await?;
        let invite = Invite::from_code(&code)?;
        Ok(invite.without_addrs().to_code())
    }
}

/// Runs `step`, or fails after [`STEP`].
async fn within<T>(what: &str, step: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(STEP, step)
        .await
        .map_err(|_| anyhow!("no {what} within {} s", STEP.as_secs()))
}

/// A random key for a throwaway store (no keystore, no passphrase).
fn throwaway_key() -> DataKey {
    let mut bytes = [0u8; 32];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut bytes);
    DataKey::from_secret(Secret32::new(bytes))
}

fn device_config(dir: &Path, key: &DataKey, listen: bool) -> NodeConfig {
    let mut cfg = NodeConfig::loopback(dir, key.clone());
    cfg.net
        .listen
        .retain(|a| listen && a.iter().any(|p| matches!(p, Protocol::Tcp(_))));
    cfg.tick = Duration::from_millis(100);
    // The relay holds mail only: the story shows the mesh carrying what
    // Alice and Carol cannot say to each other directly (with circuits,
    // they would connect through the relay instead).
    cfg.reserve_circuits = false;
    cfg
}

/// Whether any file under `dir` contains `needle`.
fn dir_contains(dir: &Path, needle: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let path = e.path();
        if path.is_dir() {
            dir_contains(&path, needle)
        } else {
            std::fs::read(&path)
                .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        }
    })
}

async fn relay_address(relay: &RelayHandle) -> Result<Multiaddr> {
    let addrs = within("relay address", relay.listening()).await??;
    addrs
        .into_iter()
        .find(|a| a.iter().any(|p| matches!(p, Protocol::Tcp(_))))
        .map(|a| a.with(Protocol::P2p(relay.peer_id())))
        .ok_or_else(|| anyhow!("the relay listens on no TCP address"))
}

async fn script() -> Result<()> {
    let say = Narrator(Instant::now());
    let root = tempfile::tempdir().context("a temporary directory")?;
    let dir = |name: &str| -> PathBuf { root.path().join(name) };
    println!("meshchat demo: three devices and a relay, in this process, on 127.0.0.1 only\n");

    // The relay, and three devices: Bob reachable, Alice and Carol not.
    let relay = Relay::spawn(RelayConfig::loopback(dir("relay"), throwaway_key()))
        .await
        .context("starting the relay")?;
    let relay_addr = relay_address(&relay).await?;
    say.say(&format!("relay up at {relay_addr}"));
    let carol_key = throwaway_key();
    let carol_config = || {
        let mut cfg = device_config(&dir("carol"), &carol_key, false);
        cfg.relays = vec![relay_addr.clone()];
        cfg
    };
    // Both use the same relay (each device picks its own).
    let mut alice_config = device_config(&dir("alice"), &throwaway_key(), false);
    alice_config.relays = vec![relay_addr.clone()];
    let mut alice = Device::start("alice", alice_config).await?;
    let mut bob = Device::start("bob", device_config(&dir("bob"), &throwaway_key(), true)).await?;
    let mut carol = Device::start("carol", carol_config()).await?;
    let bob_addr = bob
        .wait("bob's listen address", |e| match e {
            NodeEvent::Listening { addr } => Some(addr.clone()),
            _ => None,
        })
        .await?
        .with(Protocol::P2p(bob.handle.info().peer_id));
    say.say("alice, bob and carol started; alice and carol are behind NAT (listening nowhere)");

    // Finding each other: both dial bob; carol gives alice her invite code
    // out of band (names and keys only, no address).
    let bob_peer = bob.handle.info().peer_id;
    for d in [&mut alice, &mut carol] {
        d.handle.dial(bob_addr.clone()).await?;
        d.wait("a connection to bob", |e| match e {
            NodeEvent::Connected { peer } if *peer == bob_peer => Some(()),
            _ => None,
        })
        .await?;
    }
    say.say(
        "alice ↔ bob and carol ↔ bob connected: a line, alice and carol cannot reach each other",
    );
    carol
        .wait("carol's prekeys at her relay", |e| match e {
            NodeEvent::PrekeysPublished { one_time, .. } if *one_time > 0 => Some(()),
            _ => None,
        })
        .await?;
    let code_c = carol.invite().await?;
    alice.handle.add_contact(&code_c, "carol").await?;
    say.say(&format!(
        "alice adds carol's invite code ({} characters); carol has not added alice",
        code_c.len(),
    ));

    // 1. Through bob, who forwards what he cannot read; carol sees a
    // contact request first.
    let first = b"Hi Carol! Bob carries this but cannot read it.".to_vec();
    let sent = alice.handle.send(carol.key(), first.clone()).await?;
    let alice_key = alice.key();
    let fingerprint = carol
        .wait("alice's contact request", |e| match e {
            NodeEvent::ContactRequest {
                identity,
                fingerprint,
            } if *identity == alice_key => Some(fingerprint.clone()),
            _ => None,
        })
        .await?;
    carol.handle.accept_request(alice_key, "alice").await?;
    let contacts = carol.handle.contacts().await?;
    let number = contacts
        .iter()
        .find(|c| c.identity == alice_key)
        .map(|c| c.safety_number.clone())
        .ok_or_else(|| anyhow!("alice is not carol's contact after accepting"))?;
    say.say(&format!(
        "carol sees a contact request from fingerprint {fingerprint}, compares it with alice, and accepts; safety number {number}"
    ));
    let from = carol.message(&first).await?;
    anyhow::ensure!(from == alice.key(), "the message came from someone else");
    say.say("carol got alice's message, end-to-end encrypted, across bob (two hops)");
    alice.receipt(sent, DeliveryState::Delivered).await?;
    say.say("alice sees ✓✓ delivered (carol's receipt came back the same way, encrypted too)");
    let bob_chats = bob.handle.conversations().await?.len();
    say.say(&format!(
        "bob holds {bob_chats} conversations; the text on bob's disk: {}",
        if dir_contains(&dir("bob"), &first) {
            "FOUND (a bug)"
        } else {
            "nowhere"
        }
    ));

    // 2. Carol goes away; her relay holds her mail.
    let carol_id = carol.key();
    carol.handle.shutdown(Duration::from_secs(5)).await?;
    drop(carol);
    say.say("carol goes offline");
    let second = b"Are we still on for Thursday?".to_vec();
    let sent = alice.handle.send(carol_id, second.clone()).await?;
    alice.receipt(sent, DeliveryState::StoredAtRelay).await?;
    let mut held = relay.held();
    within("the relay to hold the message", held.wait_for(|n| *n >= 1)).await??;
    say.say(&format!(
        "no one reaches carol: alice deposited the sealed envelope at carol's relay → ✓ stored at relay (custody receipt, signed after fsync); the text in the relay's files: {}",
        if dir_contains(&dir("relay"), &second) { "FOUND (a bug)" } else { "nowhere" }
    ));

    // 3. Carol comes back and drains her mailbox.
    let mut carol = Device::start("carol", carol_config()).await?;
    say.say("carol is back (still behind NAT, not connected to bob: only her relay)");
    let relay_peer = relay.peer_id();
    let (mut got, mut drained) = (false, None);
    let drained = carol
        .wait("carol's mail from her relay", |e| {
            match e {
                NodeEvent::Message { message, .. } if message.body == second => got = true,
                NodeEvent::Drained { relay, envelopes } if *relay == relay_peer => {
                    drained = Some(*envelopes);
                }
                _ => {}
            }
            if got { drained } else { None }
        })
        .await?;
    within("the relay to let go", held.wait_for(|n| *n == 0)).await??;
    say.say(&format!(
        "carol fetched {drained} envelope from her relay (a request signed with her mailbox key), stored it, then acked: the relay deleted it"
    ));
    alice.receipt(sent, DeliveryState::Delivered).await?;
    carol.handle.mark_read(alice.key()).await?;
    alice.receipt(sent, DeliveryState::Read).await?;
    say.say(
        "alice sees ✓✓ delivered, then read: carol's receipts reached her through the relay too",
    );

    for d in [&alice, &bob, &carol] {
        d.handle.shutdown(Duration::from_secs(5)).await?;
    }
    relay.shutdown(Duration::from_secs(5)).await;
    say.say("all stopped; the throwaway directories are removed");
    Ok(())
}
