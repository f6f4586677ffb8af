//! The local API: how the CLI, the terminal chat and scripts talk to a
//! running daemon (`meshchat run`).
//!
//! The daemon listens on a Unix socket in its data directory, owner-only
//! (the directory itself is too), so only the user who runs it can connect.
//! Each request and answer is one line of JSON ([`proto`]); a client may
//! send many requests on one connection, or turn it into a stream of
//! events. [`server`] is the daemon's side, [`client`] a blocking client,
//! [`http`] the same API over HTTP and WebSocket on a loopback address.

pub mod client;
pub mod http;
pub mod proto;
pub mod server;

/// The socket's file name in the data directory.
pub const SOCKET: &str = "api.sock";

pub use client::Client;
pub use proto::{Answer, ApiError, ErrorKind, Request};
pub use server::Api;
