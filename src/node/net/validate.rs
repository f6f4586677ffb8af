//! Gossip validation: the cheap checks every received message passes before
//! the application looks at it, and the per-peer rate limit.
//!
//! gossipsub runs with `validate_messages()`, so nothing is forwarded until
//! the node reports a [`Verdict`]. [`GossipValidator::check`] gives the
//! network-level verdict (rate, size, version); the node adds its own checks
//! (envelope expiry, signatures) and reports the combined result through
//! [`super::Net::validate_gossip`].

use std::collections::HashMap;
use std::time::Instant;

use libp2p::PeerId;
use libp2p::gossipsub::MessageAcceptance;

use super::topic::{Topic, TopicKind};
use crate::crypto::limits::{MAX_ENVELOPE, MAX_GROUP_MESSAGE_LEN};

/// Default cap of a presence beacon.
pub const DEFAULT_MAX_PRESENCE: usize = 4 * 1024;
/// Default number of peers whose rate-limit state is kept.
pub const DEFAULT_RATE_PEERS: usize = 1024;
// Every connected peer can keep its own bucket.
const _: () = assert!(super::config::DEFAULT_MAX_INBOUND as usize <= DEFAULT_RATE_PEERS);

/// Why a message was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// The forwarding peer is over its message budget.
    RateLimited,
    /// Longer than its topic allows.
    TooLarge {
        /// Its length.
        len: usize,
        /// The topic's limit.
        max: usize,
    },
    /// No bytes at all.
    Empty,
    /// The first byte is a version we do not speak.
    UnknownVersion(u8),
    /// The topic is not one of ours.
    UnknownTopic,
    /// The node's own check failed (e.g. an expired envelope).
    Application(&'static str),
}

/// The outcome of validating one gossip message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver it and forward it.
    Accept,
    /// Drop it: it breaks the protocol (with peer scoring, the forwarder is
    /// penalised).
    Reject(Reason),
    /// Drop it without blame (rate limits, versions from the future,
    /// expired content).
    Ignore(Reason),
}

impl Verdict {
    /// Whether the message is accepted.
    pub fn is_accept(&self) -> bool {
        matches!(self, Self::Accept)
    }

    /// `self`, or `then()` when `self` accepts.
    pub fn and_then(self, then: impl FnOnce() -> Verdict) -> Verdict {
        match self {
            Self::Accept => then(),
            other => other,
        }
    }

    /// The gossipsub form.
    pub fn acceptance(&self) -> MessageAcceptance {
        match self {
            Self::Accept => MessageAcceptance::Accept,
            Self::Reject(_) => MessageAcceptance::Reject,
            Self::Ignore(_) => MessageAcceptance::Ignore,
        }
    }
}

/// A token bucket: `burst` messages at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Bucket size (messages).
    pub burst: u32,
    /// Refill rate (messages per second).
    pub per_second: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        // A peer forwards everyone's traffic, not only its own: generous
        // for chat and presence on a ~100-node mesh, tight for a flood.
        Self {
            burst: 500,
            per_second: 100,
        }
    }
}

/// Per-kind size limits and the expected version byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GossipLimits {
    /// The first byte of every meshchat gossip payload.
    pub version: u8,
    /// Largest presence beacon.
    pub max_presence: usize,
    /// Largest inbox message (a sealed envelope).
    pub max_inbox: usize,
    /// Largest group message.
    pub max_group: usize,
}

impl Default for GossipLimits {
    fn default() -> Self {
        Self {
            version: 1,
            max_presence: DEFAULT_MAX_PRESENCE,
            max_inbox: MAX_ENVELOPE,
            // A group message behind its two-byte header (version, flags).
            max_group: MAX_ENVELOPE.max(MAX_GROUP_MESSAGE_LEN + 2),
        }
    }
}

impl GossipLimits {
    /// The size limit of a kind of topic.
    pub fn max_for(&self, kind: TopicKind) -> usize {
        match kind {
            TopicKind::Presence => self.max_presence,
            TopicKind::Inbox => self.max_inbox,
            TopicKind::Group => self.max_group,
        }
    }

    /// The largest payload on any topic.
    pub fn max_any(&self) -> usize {
        self.max_presence.max(self.max_inbox).max(self.max_group)
    }
}

const MILLI: u64 = 1000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Thousandths of a message.
    tokens: u64,
    last: Instant,
}

/// Token buckets for at most `capacity` peers. When a new peer arrives at
/// capacity, the least recently seen one is forgotten, so a stream of fresh
/// peer ids costs bounded memory (each new peer starts with a full bucket;
/// peer ids here are those of live connections, themselves bounded).
#[derive(Debug)]
pub struct RateLimiter {
    rate: RateLimit,
    capacity: usize,
    buckets: HashMap<PeerId, Bucket>,
}

impl RateLimiter {
    /// A limiter applying `rate` to each of at most `capacity` peers.
    pub fn new(rate: RateLimit, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            rate,
            capacity,
            buckets: HashMap::with_capacity(capacity.min(DEFAULT_RATE_PEERS)),
        }
    }

    /// Spends one message of `peer`'s budget; `false` if there is none left.
    pub fn allow(&mut self, peer: &PeerId, now: Instant) -> bool {
        self.allow_n(peer, 1, now)
    }

    /// Spends `n` units of `peer`'s budget at once; `false` (and nothing
    /// spent) if fewer are left. More than the burst is never allowed.
    pub fn allow_n(&mut self, peer: &PeerId, n: u32, now: Instant) -> bool {
        let cost = u64::from(n) * MILLI;
        let full = u64::from(self.rate.burst) * MILLI;
        if !self.buckets.contains_key(peer) && self.buckets.len() >= self.capacity {
            self.evict_oldest();
        }
        let bucket = self.buckets.entry(*peer).or_insert(Bucket {
            tokens: full,
            last: now,
        });
        let elapsed_ms = now.saturating_duration_since(bucket.last).as_millis();
        let elapsed_ms = u64::try_from(elapsed_ms).unwrap_or(u64::MAX);
        // per_second messages per second = per_second thousandths per ms.
        let refill = elapsed_ms.saturating_mul(u64::from(self.rate.per_second));
        bucket.tokens = bucket.tokens.saturating_add(refill).min(full);
        bucket.last = bucket.last.max(now);
        if bucket.tokens >= cost {
            bucket.tokens -= cost;
            true
        } else {
            false
        }
    }

    /// Peers currently tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no peer is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Forgets a peer (e.g. when it disconnects).
    pub fn forget(&mut self, peer: &PeerId) {
        self.buckets.remove(peer);
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .buckets
            .iter()
            .min_by_key(|(_, b)| b.last)
            .map(|(p, _)| *p);
        if let Some(peer) = oldest {
            self.buckets.remove(&peer);
        }
    }
}

/// The network-level checks for received gossip.
#[derive(Debug)]
pub struct GossipValidator {
    limits: GossipLimits,
    limiter: RateLimiter,
}

impl GossipValidator {
    /// A validator with these limits and per-peer rate.
    pub fn new(limits: GossipLimits, rate: RateLimit, rate_peers: usize) -> Self {
        Self {
            limits,
            limiter: RateLimiter::new(rate, rate_peers),
        }
    }

    /// The size limits in force.
    pub fn limits(&self) -> &GossipLimits {
        &self.limits
    }

    /// The rate limiter (to forget disconnected peers).
    pub fn limiter_mut(&mut self) -> &mut RateLimiter {
        &mut self.limiter
    }

    /// Checks, in order: the topic is ours, the forwarding peer `source` has
    /// budget left (every message spends one unit, valid or not), the size
    /// is within the topic's limit, and the version byte is known.
    pub fn check(
        &mut self,
        source: &PeerId,
        topic: Option<&Topic>,
        data: &[u8],
        now: Instant,
    ) -> Verdict {
        let Some(topic) = topic else {
            return Verdict::Reject(Reason::UnknownTopic);
        };
        if !self.limiter.allow(source, now) {
            return Verdict::Ignore(Reason::RateLimited);
        }
        let max = self.limits.max_for(topic.kind());
        if data.len() > max {
            return Verdict::Reject(Reason::TooLarge {
                len: data.len(),
                max,
            });
        }
        match data.first() {
            None => Verdict::Reject(Reason::Empty),
            // A newer version is not an offence: drop it without blame.
            Some(&v) if v != self.limits.version => Verdict::Ignore(Reason::UnknownVersion(v)),
            Some(_) => Verdict::Accept,
        }
    }
}
