//! Relay mode (`meshchat relay`): store-and-forward mailboxes for offline
//! devices on `/meshchat/mailbox/1`, prekey bundle hosting, and the
//! circuit-relay v2 server.
//!
//! Parts:
//! - [`proto`]: the wire messages of the mailbox protocol: deposits
//!   answered by signed custody receipts, fetches and acks signed with the
//!   mailbox key, refusals with a reason;
//! - [`codec`]: its request-response codec (length-prefixed, bounded before
//!   allocation), spoken by every node's swarm (`node::net`): a node that
//!   is not a relay answers `Refused(NotRelay)`;
//! - [`stream`]: the same requests pipelined on one long-lived stream per
//!   depositor (`/meshchat/mailbox-stream/1`), which nodes deposit on;
//! - [`service`]: the mailbox service over the store, under the operator's
//!   limits (retention, per-mailbox count and bytes, envelope size, disk
//!   budget, per-peer deposit rate), refusing replayed or stale owner
//!   requests;
//! - [`server`]: the relay itself — the swarm's task, the store thread and
//!   the sync thread that makes writes durable before custody receipts;
//! - [`operator`], [`http`], [`metrics`]: configuration (TOML, flags,
//!   environment), the metrics endpoint and its counters.

pub mod codec;
pub mod http;
pub mod metrics;
pub mod operator;
pub mod proto;
pub mod server;
pub mod service;
pub mod stream;

pub use server::{MAX_WAIT, Relay, RelayConfig, RelayError, RelayHandle};
