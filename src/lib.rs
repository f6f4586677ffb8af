//! meshchat: a peer-to-peer mesh chat node with relay fallback.
//!
//! - [`crypto`]: identities, X3DH, Double Ratchet, Sender Keys, sealed
//!   envelopes, keys at rest. Pure library code, no I/O.
//! - [`cli`]: the command line (the only code that prints for people).
//! - [`store`]: the encrypted sled store: message history, conversations.
//! - [`node`]: the node: one task owns the libp2p swarm ([`node::net`]),
//!   the chat logic runs on a store thread; a handle and an event stream
//!   are the way in ([`node::Node::spawn`]).
//! - [`relay`]: relay mode; so far the mailbox protocol's wire messages.

pub mod api;
pub mod cli;
pub mod crypto;
pub mod node;
pub mod relay;
pub mod store;
