//! Unit tests of the network layer that need no sockets. Multi-node tests
//! are in `tests/net/`.

mod addrs;
mod codec;
mod gossip;
