//! meshchat: a peer-to-peer mesh chat node with relay fallback.
//!
//! - [`crypto`]: identities, X3DH, Double Ratchet, Sender Keys, sealed
//!   envelopes, keys at rest. Pure library code, no I/O.
//! - [`cli`]: the command line (the only code that prints for people).
//! - [`store`]: the encrypted sled store: message history, conversations.
//! - [`node`]: the libp2p side: [`node::net`] is the swarm, its protocols
//!   and the direct-path wire format.
//!
//! The node actor and relay mode build on `crypto`, `store` and `node::net`
//! (`src/node/`, `src/relay/`).

pub mod cli;
pub mod crypto;
pub mod node;
pub mod store;
