//! The node: one tokio task owns the libp2p swarm; a cloneable handle and
//! an event stream are the only way in.
//!
//! - [`Node::spawn`] starts it: the store opens on a blocking thread, the
//!   swarm ([`net`]) and the actor task start, and the chat logic
//!   ([`engine`]) moves to the store thread, which commits in groups.
//! - [`NodeHandle`] sends bounded commands and awaits their answers;
//!   [`NodeEvent`]s come on a bounded stream.
//! - What nodes say to each other above libp2p is in [`proto`], what a node
//!   keeps about contacts and conversations in [`state`], the outbox's
//!   schedule in [`retry`], contacts' presence in [`presence`].
//!
//! The delivery ladder: a message goes directly (`/meshchat/direct/1`) to a
//! connected recipient, else sealed on the recipient's inbox topic; the
//! outbox retries with backoff until the recipient acknowledges it or it
//! expires (the user is told). Relays come next, after the mesh.

mod actor;
pub(crate) mod complaints;
pub mod config;
pub mod engine;
pub mod error;
pub mod events;
pub mod groups;
pub mod handle;
mod inbound;
mod links;
pub mod media;
pub mod net;
pub mod presence;
pub mod proto;
pub mod requests;
pub mod retry;
pub mod sessions;
pub mod state;
mod worker;

pub use actor::Node;
pub use config::{DEFAULT_MEDIA_BUDGET, NodeConfig, PresenceConfig};
pub use engine::LINK_CODE_LIFE;
pub use error::NodeError;
pub use events::NodeEvent;
pub use handle::{
    ContactInfo, ContactRequest, DeviceInfo, DevicesInfo, NodeHandle, NodeInfo, Status,
};
pub use proto::PresenceState;
pub(crate) use worker::now_secs;
