//! The libp2p node: one task owns the swarm; a cloneable [`NodeHandle`]
//! and an event stream are the only way in.

pub mod proto;
pub mod state;
