//! [`NodeError`]: what a node's handle can answer instead of a result.

use super::engine::EngineError;
use super::net::NetError;
use crate::{crypto, store};

/// What can go wrong when using a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The chat logic refused (a bad invite, an unknown contact, …).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// A key or decode error.
    #[error(transparent)]
    Crypto(#[from] crypto::Error),
    /// The network layer failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// No contact with that identity key.
    #[error("no contact with that identity key")]
    UnknownContact,
    /// The node has stopped (shut down, or its store failed).
    #[error("the node has stopped")]
    Stopped,
    /// A batch this request was written with failed (the reason is the
    /// first request's error).
    #[error("the batch this message was written in failed: {0}")]
    Batch(String),
    /// A burst (`NodeHandle::send_many`) failed part way: the messages
    /// named here, the chunks before the failing one, are stored and
    /// queued (they will be delivered); the rest were not written.
    #[error("{} messages were sent before: {error}", sent.len())]
    PartlySent {
        /// The messages stored and queued, in the order given.
        sent: Vec<crate::store::MessageRef>,
        /// Why the rest were not.
        error: Box<NodeError>,
    },
    /// A media message's file could not be read or sent.
    #[error("media: {0}")]
    Media(String),
    /// An export could not be written.
    #[error("export: {0}")]
    Export(String),
    /// The store thread could not be started.
    #[error("could not start the store thread: {0}")]
    Thread(#[source] std::io::Error),
}
