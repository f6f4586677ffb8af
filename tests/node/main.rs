//! Multi-node tests of the node (`meshchat::node`): real nodes on
//! 127.0.0.1 (port 0) with real sled stores in temporary directories,
//! started and watched through the harness in `tests/common`.
//!
//! - `chat`: two nodes both ways with receipts, a restart that continues
//!   the session, 1,000 messages exactly once and in order.
//! - `line`: A–B–C, A and C not connected: delivery through B, which
//!   keeps and logs no plaintext.
//! - `media`: files sent 1:1 and to a group, fetched by the recipients
//!   from the author and read back whole; nothing of them in the clear on
//!   disk; six members fetching one file at once.
//! - `presence`: online → away → offline when heartbeats stop.
//! - `requests`: a device that added our invite is a contact request
//!   until accepted (its message then arrives) or declined; a device
//!   linked to a contact's account gets that account's contacts and is
//!   taken in by them without one; one removed from it is dropped by
//!   them, and told.
//! - `hostile`: malformed, oversized, expired, replayed and flooding
//!   input from one peer while another conversation goes on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

mod chat;
mod group;
mod hostile;
mod interop;
mod line;
mod media;
mod presence;
mod requests;
