//! The node: one tokio task owns the libp2p swarm; a cloneable handle and
//! an event stream are the only way in. Transports, discovery, gossip
//! topics and the direct path live in [`net`]; what nodes say to each other
//! above libp2p is in [`proto`], what a node keeps about its contacts and
//! conversations in [`state`]. The outbox and its retries, presence and
//! receipts build on them, on [`crate::crypto`] (sessions, envelopes) and on
//! [`crate::store`].

pub mod engine;
pub mod net;
pub mod proto;
pub mod sessions;
pub mod state;
