//! meshchat: a peer-to-peer mesh chat node with relay fallback.
//!
//! - [`crypto`]: identities, X3DH, Double Ratchet, Sender Keys, sealed
//!   envelopes, keys at rest. Pure library code, no I/O.
//! - [`cli`]: the command line (the only code that prints for people).
//!
//! The node actor (`node`), the encrypted store (`store`) and the relay
//! (`relay`) build on `crypto`; see `docs/architecture.md`.

pub mod cli;
pub mod crypto;
