//! The serving side of `/meshchat/direct-stream/1`: the long-lived streams
//! on which peers send us their direct batches back to back (the sending
//! side is a [`super::links::Links`]).
//!
//! Each stream has a reading half, which decodes every batch (bounded by
//! the node's direct [`Limits`] before anything is allocated) and hands it
//! to the swarm's task as an [`Inbound::Batch`], and a writing half, which
//! writes each [`Ack`] as the store thread finishes its batch. The swarm's
//! task treats a batch as it treats one that came by request-response: the
//! same per-peer rate, the same store thread.
//!
//! Bounds: at most [`STREAM_WINDOW`] batches of a stream unanswered (the
//! reader stops reading, and the peer's writes then wait), at most
//! [`MAX_STREAMS_PER_PEER`] streams per peer. A stream whose framing or
//! batch does not decode is closed and the peer noted.

use std::sync::Arc;

use libp2p::futures::StreamExt;
use libp2p::futures::io::{AsyncReadExt, AsyncWriteExt};
use libp2p::{PeerId, Stream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::debug;

use super::net::direct::{Ack, Batch, FrameStatus, Limits, STREAM_PROTOCOL};
use crate::relay::stream::{self, MAX_STREAMS_PER_PEER, OpenStreams, StreamSlot};

/// Most batches of one stream read and not yet answered.
pub(crate) const STREAM_WINDOW: usize = 8;
/// Most bytes of acks gathered into one write.
const WRITE_CHUNK: usize = 64 * 1024;

/// What the streams' tasks hand the swarm's task.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A batch to take, answered through `reply`.
    Batch {
        peer: PeerId,
        batch: Batch,
        reply: StreamReply,
    },
    /// A stream closed for what it sent.
    Refused { peer: PeerId, why: String },
}

/// Where the ack of one batch goes. Dropped unanswered, it answers every
/// frame `Rejected` (the sender then retries them later), so a stream
/// never waits on a batch that was lost on the way.
#[derive(Debug)]
pub(crate) struct StreamReply {
    id: u64,
    frames: usize,
    to: Option<mpsc::UnboundedSender<Answer>>,
    permit: Option<OwnedSemaphorePermit>,
}

type Answer = (u64, Ack, Option<OwnedSemaphorePermit>);

impl StreamReply {
    /// Sends `ack` (it is written once every ack before it is).
    pub(crate) fn send(mut self, ack: Ack) {
        if let Some(to) = self.to.take() {
            let _ = to.send((self.id, ack, self.permit.take()));
        }
    }
}

impl Drop for StreamReply {
    fn drop(&mut self) {
        if let Some(to) = self.to.take() {
            let ack = Ack::all(FrameStatus::Rejected, self.frames);
            let _ = to.send((self.id, ack, self.permit.take()));
        }
    }
}

/// Takes the direct streams peers open to us, through `control`, for as
/// long as the returned task runs; each stream's batches go to
/// `to_actor`.
pub(crate) fn accept(
    control: &mut libp2p_stream::Control,
    limits: Limits,
    to_actor: mpsc::UnboundedSender<Inbound>,
) -> Result<tokio::task::JoinHandle<()>, libp2p_stream::AlreadyRegistered> {
    let mut incoming = control.accept(STREAM_PROTOCOL)?;
    Ok(tokio::spawn(async move {
        let streams = Arc::new(OpenStreams::default());
        while let Some((peer, s)) = incoming.next().await {
            match streams.take(peer) {
                Some(slot) => {
                    tokio::spawn(serve(peer, s, slot, limits, to_actor.clone()));
                }
                None => {
                    let why = format!("more than {MAX_STREAMS_PER_PEER} direct streams");
                    let _ = to_actor.send(Inbound::Refused { peer, why });
                }
            }
        }
    }))
}

/// Serves one stream until the peer closes it and every ack is written,
/// or until what it sends does not decode.
async fn serve(
    peer: PeerId,
    s: Stream,
    slot: StreamSlot,
    limits: Limits,
    to_actor: mpsc::UnboundedSender<Inbound>,
) {
    let _slot = slot;
    let (mut rd, mut wr) = s.split();
    let (to_writer, mut answers) = mpsc::unbounded_channel::<Answer>();
    let window = Arc::new(Semaphore::new(STREAM_WINDOW));
    let writer = async move {
        let mut buf = Vec::new();
        while let Some((id, ack, permit)) = answers.recv().await {
            buf.clear();
            stream::push_frame(&mut buf, id, &ack.encode(&limits)?)?;
            let mut permits = vec![permit];
            while buf.len() < WRITE_CHUNK
                && let Ok((id, ack, permit)) = answers.try_recv()
            {
                stream::push_frame(&mut buf, id, &ack.encode(&limits)?)?;
                permits.push(permit);
            }
            wr.write_all(&buf).await?;
            wr.flush().await?;
            // The window opens only now.
            drop(permits);
        }
        wr.close().await
    };
    let reader = {
        let to_actor = to_actor.clone();
        async move {
            loop {
                let Ok(permit) = window.clone().acquire_owned().await else {
                    return Ok(());
                };
                let Some((id, bytes)) =
                    stream::read_frame(&mut rd, limits.max_batch_message()).await?
                else {
                    return std::io::Result::Ok(());
                };
                let batch = Batch::decode(&bytes, &limits)?;
                let reply = StreamReply {
                    id,
                    frames: batch.frames.len(),
                    to: Some(to_writer.clone()),
                    permit: Some(permit),
                };
                if to_actor
                    .send(Inbound::Batch { peer, batch, reply })
                    .is_err()
                {
                    // The node is stopping.
                    return Ok(());
                }
            }
        }
    };
    tokio::pin!(writer);
    tokio::select! {
        read = reader => match read {
            // The peer sent all it had: finish its acks.
            Ok(()) => {
                if let Err(e) = writer.await {
                    debug!(%peer, error = %e, "direct stream closed before its acks");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                let _ = to_actor.send(Inbound::Refused { peer, why: e.to_string() });
            }
            Err(e) => debug!(%peer, error = %e, "direct stream cut"),
        },
        written = &mut writer => {
            if let Err(e) = written {
                debug!(%peer, error = %e, "direct stream closed before its acks");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(id: u64, frames: usize) -> (StreamReply, mpsc::UnboundedReceiver<Answer>) {
        let (to, rx) = mpsc::unbounded_channel();
        let reply = StreamReply {
            id,
            frames,
            to: Some(to),
            permit: None,
        };
        (reply, rx)
    }

    #[test]
    fn a_reply_is_answered_once_and_a_dropped_one_refuses_every_frame() {
        let (r, mut rx) = reply(7, 3);
        r.send(Ack::all(FrameStatus::Accepted, 3));
        let (id, ack, _) = rx.try_recv().unwrap();
        assert_eq!((id, ack), (7, Ack::all(FrameStatus::Accepted, 3)));
        // Sent once: nothing more when it is dropped after sending.
        assert!(rx.try_recv().is_err());

        let (r, mut rx) = reply(8, 2);
        drop(r);
        let (id, ack, _) = rx.try_recv().unwrap();
        assert_eq!((id, ack), (8, Ack::all(FrameStatus::Rejected, 2)));
        assert!(rx.try_recv().is_err());
    }
}
