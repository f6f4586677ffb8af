//! The node: one tokio task owns the libp2p swarm; a cloneable handle and
//! an event stream are the only way in. Transports, discovery, gossip
//! topics and the direct path live in [`net`]; the outbox and its retries,
//! presence and receipts build on it, on [`crate::crypto`] (sessions,
//! envelopes) and on [`crate::store`].

pub mod net;
