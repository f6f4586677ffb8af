//! The network layer's error types. Messages carry the numbers involved.

use libp2p::{Multiaddr, PeerId};

/// Everything that can go wrong while building or driving the swarm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The Noise handshake configuration could not be built from the key.
    #[error("noise configuration: {0}")]
    Noise(String),
    /// The system DNS configuration could not be read.
    #[error("DNS resolver configuration: {0}")]
    Dns(#[source] std::io::Error),
    /// A sub-behaviour could not be constructed.
    #[error("network behaviour: {0}")]
    Behaviour(String),
    /// The gossipsub configuration was rejected.
    #[error("gossipsub configuration: {0}")]
    GossipConfig(String),
    /// mDNS could not start (sockets, interfaces).
    #[error("mDNS: {0}")]
    Mdns(#[source] std::io::Error),
    /// A listen address was refused by every transport.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// What the transport said.
        reason: String,
    },
    /// A dial could not even be started.
    #[error("cannot dial {target}: {reason}")]
    Dial {
        /// The peer or address dialled.
        target: String,
        /// What the swarm said.
        reason: String,
    },
    /// A relay address must end in `/p2p/<relay peer id>`.
    #[error("relay address {0} does not name the relay's peer id (/p2p/...)")]
    RelayWithoutPeerId(Multiaddr),
    /// A message is larger than its topic allows.
    #[error("gossip message too large for {topic}: {len} bytes, max {max}")]
    GossipTooLarge {
        /// The topic.
        topic: String,
        /// Message length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Publishing failed for a reason other than "nobody to send to".
    #[error("publish on {topic}: {reason}")]
    Publish {
        /// The topic.
        topic: String,
        /// What gossipsub said.
        reason: String,
    },
    /// Subscribing to a topic failed.
    #[error("subscribe to {topic}: {reason}")]
    Subscribe {
        /// The topic.
        topic: String,
        /// What gossipsub said.
        reason: String,
    },
    /// A direct batch breaks the protocol's limits (checked before sending).
    #[error("direct batch to {peer}: {source}")]
    Direct {
        /// The intended recipient.
        peer: PeerId,
        /// The broken limit.
        #[source]
        source: DirectError,
    },
    /// The peer's request stream is gone, so the ack cannot be sent.
    #[error("direct ack not sent: the request's stream is closed")]
    ResponseChannelClosed,
    /// Kademlia knows no peer to bootstrap from.
    #[error("kademlia bootstrap: no known peers")]
    NoKnownPeers,
    /// The DHT refused a record.
    #[error("kademlia: {0}")]
    Dht(String),
}

/// A `/meshchat/direct/1` frame that breaks the protocol or its limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DirectError {
    /// The version byte names a version this code does not speak.
    #[error("{what}: unknown version {got}, expected {expected}")]
    UnknownVersion {
        /// Request or ack.
        what: &'static str,
        /// The version received.
        got: u8,
        /// The version supported.
        expected: u8,
    },
    /// A batch holds no frames.
    #[error("direct request: empty batch")]
    Empty,
    /// More frames than a batch (or ack) may hold.
    #[error("{what}: {count} frames, max {max}")]
    TooManyFrames {
        /// Request or ack.
        what: &'static str,
        /// The count announced.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// One frame's length prefix is over the per-frame limit.
    #[error("direct request: frame {index} is {len} bytes, max {max}")]
    FrameTooLarge {
        /// Position in the batch.
        index: usize,
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The frames add up to more than a batch may carry.
    #[error("direct request: batch of at least {total} bytes, max {max}")]
    BatchTooLarge {
        /// Bytes announced so far.
        total: usize,
        /// The limit.
        max: usize,
    },
    /// An ack names a status this code does not know.
    #[error("direct ack: unknown frame status {0}")]
    UnknownStatus(u8),
    /// The stream ended inside a frame.
    #[error("{what} truncated")]
    Truncated {
        /// Request or ack.
        what: &'static str,
    },
    /// Bytes follow a complete frame.
    #[error("{what}: trailing bytes after the last frame")]
    TrailingBytes {
        /// Request or ack.
        what: &'static str,
    },
    /// The stream failed while reading or writing.
    #[error("{what}: i/o error: {kind:?}")]
    Io {
        /// Request or ack.
        what: &'static str,
        /// The I/O error kind.
        kind: std::io::ErrorKind,
    },
}

impl From<DirectError> for std::io::Error {
    fn from(e: DirectError) -> Self {
        match e {
            DirectError::Io { kind, .. } => std::io::Error::new(kind, e),
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other),
        }
    }
}
