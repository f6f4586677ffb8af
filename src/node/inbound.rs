//! The serving side of `/meshchat/direct-stream/1`: the long-lived streams
//! on which peers send us their direct batches back to back (the sending
//! side is a [`super::links::Links`]).
//!
//! Each stream is served by [`stream::serve`]: every batch is decoded
//! (bounded by the node's direct [`Limits`] before anything is allocated)
//! and handed to the swarm's task as an [`Inbound::Batch`], and each
//! [`Ack`] is written as the store thread finishes its batch. The swarm's
//! task treats a batch as it treats one that came by request-response: the
//! same per-peer rate, the same store thread.
//!
//! Bounds: at most [`STREAM_WINDOW`] batches of a stream unanswered (the
//! reader stops reading, and the peer's writes then wait), at most
//! [`stream::MAX_STREAMS_PER_PEER`] streams per peer, read no more once
//! no whole batch has come for the configured idle time
//! (`NetConfig::stream_idle_timeout`). A stream whose framing or batch
//! does not decode is closed and the peer noted.

use libp2p::PeerId;
use tokio::sync::mpsc;
use tracing::debug;

use super::net::direct::{Ack, Batch, FrameStatus, Limits, STREAM_PROTOCOL};
use crate::relay::stream::{self, MAX_STREAMS_PER_PEER, Responder};

/// Most batches of one stream read and not yet answered.
pub(crate) const STREAM_WINDOW: usize = 8;

/// Where the ack of one batch goes. Dropped unanswered, it answers every
/// frame `Rejected` (the sender then retries them later), so a stream
/// never waits on a batch that was lost on the way.
pub(crate) type StreamReply = Responder<Ack>;

/// What the streams' tasks hand the swarm's task.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A batch to take, answered through `reply`.
    Batch {
        peer: PeerId,
        batch: Batch,
        reply: StreamReply,
    },
    /// A stream closed for what it sent, or refused.
    Refused { peer: PeerId, why: String },
}

/// Takes the direct streams peers open to us, through `control`, for as
/// long as the returned task runs; each stream's batches go to
/// `to_actor`.
pub(crate) fn accept(
    control: &mut libp2p_stream::Control,
    (limits, idle): (Limits, std::time::Duration),
    to_actor: mpsc::UnboundedSender<Inbound>,
) -> Result<tokio::task::JoinHandle<()>, libp2p_stream::AlreadyRegistered> {
    let incoming = control.accept(STREAM_PROTOCOL)?;
    let refused = to_actor.clone();
    Ok(tokio::spawn(stream::accept(
        incoming,
        move |peer, s| serve(peer, s, (limits, idle), to_actor.clone()),
        move |peer| {
            let why = format!("more than {MAX_STREAMS_PER_PEER} direct streams");
            let _ = refused.send(Inbound::Refused { peer, why });
        },
    )))
}

/// Serves one stream until the peer closes it and every ack is written,
/// or until what it sends does not decode.
async fn serve(
    peer: PeerId,
    s: libp2p::Stream,
    (limits, idle): (Limits, std::time::Duration),
    to_actor: mpsc::UnboundedSender<Inbound>,
) {
    let how = stream::Serving {
        window: STREAM_WINDOW,
        max_request: limits.max_batch_message(),
        idle,
    };
    let served = stream::serve(
        s,
        how,
        |ack: &Ack| Ok(ack.encode(&limits)?),
        |_, bytes, responder| {
            let batch = Batch::decode(&bytes, &limits)?;
            let reply = responder.or_else(Ack::all(FrameStatus::Rejected, batch.frames.len()));
            // `false` (stop) when the node is stopping.
            Ok(to_actor.send(Inbound::Batch { peer, batch, reply }).is_ok())
        },
    )
    .await;
    match served {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            let _ = to_actor.send(Inbound::Refused {
                peer,
                why: e.to_string(),
            });
        }
        Err(e) => debug!(%peer, error = %e, "direct stream cut"),
    }
}
