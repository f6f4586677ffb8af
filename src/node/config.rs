//! [`NodeConfig`]: what a node is started with.

use std::path::PathBuf;
use std::time::Duration;

use libp2p::Multiaddr;

use super::net::NetConfig;
use crate::crypto::DataKey;

/// Presence settings.
#[derive(Debug, Clone, Copy)]
pub struct PresenceConfig {
    /// A beacon is re-sent this often while nothing changes.
    pub heartbeat: Duration,
    /// A contact with no beacon for this long is shown offline.
    pub expiry: Duration,
    /// Send no presence at all (others see us offline).
    pub hidden: bool,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(60),
            expiry: Duration::from_secs(180),
            hidden: false,
        }
    }
}

/// The default [`NodeConfig::media_budget`]: 2 GiB.
pub const DEFAULT_MEDIA_BUDGET: u64 = 2 << 30;

/// Configuration of one node.
#[derive(Clone)]
pub struct NodeConfig {
    /// Where the store lives (created if missing).
    pub data_dir: PathBuf,
    /// The key that opens the store (from the keystore).
    pub key: DataKey,
    /// Transports, discovery and gossip.
    pub net: NetConfig,
    /// Presence.
    pub presence: PresenceConfig,
    /// How often queued messages are retried, expiries checked and
    /// presence timed out.
    pub tick: Duration,
    /// Longest a graceful shutdown takes.
    pub shutdown_timeout: Duration,
    /// Bound of the event stream; the store thread waits when it is full.
    pub event_capacity: usize,
    /// Bound of the command queue of the handle.
    pub command_capacity: usize,
    /// Most jobs waiting for the store thread before new network input is
    /// refused (the peer retries later).
    pub max_backlog: usize,
    /// Most bytes of network input (direct batches, envelopes, group
    /// messages) waiting for the store thread before more is refused.
    pub max_backlog_bytes: usize,
    /// Direct requests one peer may send per second (sustained; bursts
    /// of up to twice this).
    pub direct_rate: u32,
    /// Our relays (each `…/p2p/<relay peer id>`): they hold our mail
    /// while we are offline, and our invites name them. Empty: found in
    /// the DHT if `find_relays`.
    pub relays: Vec<Multiaddr>,
    /// Look for relays in the DHT when none are configured.
    pub find_relays: bool,
    /// Ask our relays for a circuit reservation, so that devices that
    /// cannot dial this one connect to it through them. Off: the relays
    /// only hold our mail.
    pub reserve_circuits: bool,
    /// How many of a contact's relays a message is deposited with (at
    /// most as many as it lists).
    pub relay_copies: usize,
    /// How long a relay's custody of a message is trusted before the next
    /// retry deposits it again (doubling each time, up to 256×): the
    /// device it waits for may have fetched the copy and been unable to
    /// read it (a session replaced meanwhile, say), and then the relay no
    /// longer holds it.
    pub redeposit_after: Duration,
    /// How long a message is retried before the sender is told it
    /// expired undelivered.
    pub message_ttl: Duration,
    /// Most bytes of media chunks this device keeps before it stops
    /// fetching other people's files (its own sends are not held back):
    /// a file that would not fit waits, and the user hears
    /// [`super::NodeEvent::MediaHeld`], until deletions make room.
    pub media_budget: u64,
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("data_dir", &self.data_dir)
            .field("net", &self.net)
            .field("presence", &self.presence)
            .field("tick", &self.tick)
            .finish_non_exhaustive()
    }
}

impl NodeConfig {
    /// Defaults for a user's node: all interfaces, mDNS on.
    pub fn new(data_dir: impl Into<PathBuf>, key: DataKey) -> Self {
        Self {
            data_dir: data_dir.into(),
            key,
            net: NetConfig {
                mdns: true,
                ..NetConfig::default()
            },
            presence: PresenceConfig::default(),
            tick: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(5),
            event_capacity: 64 * 1024,
            command_capacity: 1024,
            max_backlog: 4096,
            max_backlog_bytes: 64 * 1024 * 1024,
            direct_rate: 2000,
            relays: Vec::new(),
            find_relays: true,
            reserve_circuits: true,
            relay_copies: 2,
            redeposit_after: Duration::from_secs(600),
            message_ttl: Duration::from_secs(super::engine::MESSAGE_TTL),
            media_budget: DEFAULT_MEDIA_BUDGET,
        }
    }

    /// Loopback only, mDNS off: tests, benchmarks and the demo.
    pub fn loopback(data_dir: impl Into<PathBuf>, key: DataKey) -> Self {
        Self {
            net: NetConfig::loopback(),
            ..Self::new(data_dir, key)
        }
    }
}
