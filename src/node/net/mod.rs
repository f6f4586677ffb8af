//! The libp2p network layer: one swarm with every protocol a node speaks.
//!
//! What it owns: the [`Swarm`](libp2p::Swarm) and its [`Behaviour`]
//! (connection limits, gossipsub, `/meshchat/direct/1`, identify, ping,
//! Kademlia, AutoNAT, relay client, DCUtR, optional mDNS), the gossip rate
//! limiter, and the wire layout of the direct protocol. What it does not:
//! sessions, envelopes, the outbox, receipts, presence — the node actor
//! builds those on [`Net`].
//!
//! Who talks to it: only the node actor, from its one task. It awaits
//! [`Net::next_event`] in its `select!` loop (cancel-safe) and calls the
//! `Net` methods (dial, publish, send a direct batch, subscribe, Kademlia)
//! in between. Nothing here spawns a task; dropping the `Net` closes every
//! connection and listener.
//!
//! Transports: TCP (Noise, Yamux) and QUIC v1, behind DNS resolution and
//! the circuit-relay client transport. Gossip is anonymous and validated by
//! the application before it is forwarded; see [`gossipsub_config`].
//!
//! ```no_run
//! use meshchat::node::net::direct::{Ack, FrameStatus};
//! use meshchat::node::net::{Net, NetConfig, NetError, NetEvent, Topic, Verdict};
//!
//! async fn run(keypair: libp2p::identity::Keypair) -> Result<(), NetError> {
//!     let mut net = Net::start(keypair, &NetConfig::default())?;
//!     net.subscribe(&Topic::Presence)?;
//!     loop {
//!         match net.next_event().await {
//!             NetEvent::Gossip(msg) => {
//!                 // Network checks, then ours; gossipsub forwards only on Accept.
//!                 net.validate_gossip(&msg, |_payload| Verdict::Accept);
//!             }
//!             NetEvent::DirectRequest { batch, channel, .. } => {
//!                 let ack = Ack::all(FrameStatus::Accepted, batch.frames.len());
//!                 net.respond_direct(channel, ack)?;
//!             }
//!             _ => {}
//!         }
//!     }
//! }
//! ```

mod behaviour;
mod config;
pub mod direct;
mod driver;
mod error;
mod events;
pub mod media;
pub mod per_ip;
mod prune;
mod topic;
mod validate;

pub use behaviour::{
    Behaviour, BehaviourEvent, IDENTIFY_PROTOCOL, KAD_PROTOCOL, MAX_CONTROL_BYTES, MAX_IHAVE_IDS,
    RELAY_PROVIDER_KEY, build_swarm, gossipsub_config,
};
pub use config::{
    DEFAULT_DIRECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAILBOX_TIMEOUT, DEFAULT_MAX_INBOUND,
    DEFAULT_MAX_INBOUND_PER_IP, DEFAULT_PRUNE_GRACE, NetConfig, RelayServerConfig,
};
pub use driver::{Net, Published};
pub use error::{DirectError, NetError};
pub use events::{GossipMessage, NetEvent, RelayServerEvent};
pub use topic::{Topic, TopicKind, inbox_shard};
pub use validate::{
    DEFAULT_MAX_PRESENCE, DEFAULT_RATE_PEERS, GossipLimits, GossipValidator, RateLimit,
    RateLimiter, Reason, Verdict,
};

#[cfg(test)]
mod tests;
