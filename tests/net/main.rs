//! Multi-node tests of the network layer (`meshchat::node::net`): real
//! swarms on 127.0.0.1 with port 0, driven together by one harness that
//! waits on their events with timeouts and never sleeps.
//!
//! - `direct`: TCP and QUIC connections, `/meshchat/direct/1` batches.
//! - `gossip`: the A–B–C line, publish outcomes.
//! - `kad`: bootstrap and peer lookup.
//! - `limits`: the cap on incoming connections from one address, and
//!   making room near the total cap.
//! - `mdns`: discovery between two network namespaces (needs root; skips
//!   itself with a reason otherwise).
//! - `relay`: a circuit-relay reservation and a batch sent through it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

mod direct;
mod gossip;
mod kad;
mod limits;
mod mailbox;
mod mdns;
mod relay;
