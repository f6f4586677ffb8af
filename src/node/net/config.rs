//! [`NetConfig`]: everything the network layer is told by the node.

use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use super::direct;
use super::validate::{DEFAULT_RATE_PEERS, GossipLimits, RateLimit};

/// Default idle-connection timeout. libp2p's own default (10 s) drops a
/// connection that only gossipsub uses as soon as the peer leaves our mesh;
/// a minute keeps direct-path peers connected between messages.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default [`NetConfig::stream_idle_timeout`].
const DEFAULT_STREAM_IDLE: Duration = Duration::from_secs(120);
/// Default timeout of a direct request (after it, the outbox retries the
/// frames with backoff, by the mesh if the peer is gone).
pub const DEFAULT_DIRECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Default timeout of a mailbox request: above the longest wait a relay
/// grants a fetch ([`crate::relay::MAX_WAIT`]).
pub const DEFAULT_MAILBOX_TIMEOUT: Duration = Duration::from_secs(60);

/// Limits of the circuit-relay v2 server a relay runs for peers behind NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayServerConfig {
    /// Reservations held at once.
    pub max_reservations: usize,
    /// Reservations one peer may hold.
    pub max_reservations_per_peer: usize,
    /// Circuits open at once.
    pub max_circuits: usize,
    /// Circuits one peer may have open.
    pub max_circuits_per_peer: usize,
    /// Longest a circuit stays open.
    pub max_circuit_duration: Duration,
    /// Most bytes relayed per circuit (each way).
    pub max_circuit_bytes: u64,
}

impl Default for RelayServerConfig {
    /// libp2p's defaults, which keep a circuit short (2 min, 128 KiB): long
    /// enough for two peers to exchange messages or hole-punch.
    fn default() -> Self {
        Self {
            max_reservations: 128,
            max_reservations_per_peer: 4,
            max_circuits: 16,
            max_circuits_per_peer: 4,
            max_circuit_duration: Duration::from_secs(120),
            max_circuit_bytes: 128 * 1024,
        }
    }
}

/// Default cap on established incoming connections; the gossip rate
/// limiter tracks more peers than this ([`super::DEFAULT_RATE_PEERS`]).
pub const DEFAULT_MAX_INBOUND: u32 = 512;

/// Default cap on incoming connections from one IP address: room for a
/// few devices behind one NAT (each may hold up to four connections).
pub const DEFAULT_MAX_INBOUND_PER_IP: u32 = 32;

/// Default [`NetConfig::prune_grace`].
pub const DEFAULT_PRUNE_GRACE: Duration = Duration::from_secs(60);

/// Configuration of the swarm and its protocols.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Addresses to listen on (TCP and/or QUIC).
    pub listen: Vec<Multiaddr>,
    /// Discover peers on the local network with mDNS. Off by default: it
    /// multicasts on every interface.
    pub mdns: bool,
    /// Kademlia bootstrap peers, dialled at start.
    pub bootstrap: Vec<(PeerId, Multiaddr)>,
    /// Circuit relays to hold a reservation on; each address ends in
    /// `/p2p/<relay peer id>`.
    pub relays: Vec<Multiaddr>,
    /// How long a connection with no protocol in use stays open.
    pub idle_connection_timeout: Duration,
    /// Number of inbox shards (`meshchat/1/inbox/{0..n}`); 1 on a LAN.
    pub inbox_shards: u16,
    /// Per-peer budget for gossip messages forwarded to us.
    pub gossip_rate: RateLimit,
    /// How many peers' rate-limit state is kept.
    pub gossip_rate_peers: usize,
    /// Gossip payload limits per topic kind.
    pub gossip_limits: GossipLimits,
    /// Limits of `/meshchat/direct/1` batches.
    pub direct_limits: direct::Limits,
    /// Timeout of one direct request.
    pub direct_timeout: Duration,
    /// Most established incoming connections (outgoing ones are ours).
    pub max_inbound_connections: u32,
    /// Most incoming connections from one IP address, in their handshake
    /// or established (relayed ones are not counted).
    pub max_inbound_per_ip: u32,
    /// When the incoming connections near their cap, close the newest of
    /// those older than this to unprotected peers outside our gossip
    /// meshes ([`super::Net::protect`]); `None`: never (a relay).
    pub prune_grace: Option<Duration>,
    /// Serve Kademlia queries (server mode). Off: libp2p decides from
    /// whether we have a confirmed external address (client otherwise).
    pub kad_server: bool,
    /// Timeout of one mailbox request (fetches may wait for mail).
    pub mailbox_timeout: Duration,
    /// Run a circuit-relay v2 server with these limits (relay mode).
    pub relay_server: Option<RelayServerConfig>,
    /// Read mailbox requests of any size (relay mode); otherwise only
    /// small ones, answered `NotRelay`.
    pub serve_mailboxes: bool,
    /// A stream we serve (mailbox or direct) on which no whole request
    /// arrives for this long is read no more: what it sent is answered,
    /// then it is closed; one whose peer takes no answer for this long is
    /// cut. Above the 60 s after which our own side lets an unused stream
    /// go.
    pub stream_idle_timeout: Duration,
}

impl Default for NetConfig {
    /// All interfaces, any port, TCP and QUIC; mDNS off.
    fn default() -> Self {
        Self::listening_on([0, 0, 0, 0])
    }
}

impl NetConfig {
    /// Loopback only, any port, TCP and QUIC: for tests and local demos.
    /// Every peer comes from the one address here, so the per-address cap
    /// is the total cap (a hundred-member group on one host must connect).
    pub fn loopback() -> Self {
        Self {
            max_inbound_per_ip: DEFAULT_MAX_INBOUND,
            ..Self::listening_on([127, 0, 0, 1])
        }
    }

    /// TCP and QUIC on `ip`, any port, otherwise defaults.
    pub fn listening_on(ip: [u8; 4]) -> Self {
        let ip = Protocol::Ip4(ip.into());
        Self {
            listen: vec![
                Multiaddr::empty().with(ip.clone()).with(Protocol::Tcp(0)),
                Multiaddr::empty()
                    .with(ip)
                    .with(Protocol::Udp(0))
                    .with(Protocol::QuicV1),
            ],
            mdns: false,
            bootstrap: Vec::new(),
            relays: Vec::new(),
            idle_connection_timeout: DEFAULT_IDLE_TIMEOUT,
            inbox_shards: 1,
            gossip_rate: RateLimit::default(),
            gossip_rate_peers: DEFAULT_RATE_PEERS,
            gossip_limits: GossipLimits::default(),
            direct_limits: direct::Limits::default(),
            direct_timeout: DEFAULT_DIRECT_TIMEOUT,
            max_inbound_connections: DEFAULT_MAX_INBOUND,
            max_inbound_per_ip: DEFAULT_MAX_INBOUND_PER_IP,
            prune_grace: Some(DEFAULT_PRUNE_GRACE),
            kad_server: true,
            mailbox_timeout: DEFAULT_MAILBOX_TIMEOUT,
            relay_server: None,
            serve_mailboxes: false,
            stream_idle_timeout: DEFAULT_STREAM_IDLE,
        }
    }
}
