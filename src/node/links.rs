//! The node's long-lived streams to other peers, one per peer and
//! protocol, on which requests are pipelined instead of one
//! request-response exchange each:
//!
//! - deposits to a relay on `/meshchat/mailbox-stream/1`
//!   ([`crate::relay::stream`]), so a backlog flows to the relay back to
//!   back and each custody receipt comes back as soon as the relay has
//!   synced;
//! - direct batches to a contact on `/meshchat/direct-stream/1`
//!   ([`crate::node::net::direct::StreamCodec`]), which saves opening and
//!   negotiating a substream for every batch.
//!
//! One task per link opens the stream (dialling the peer if needed) and
//! drives it; its answers come back to the swarm's task as [`LinkEvent`]s.
//! A peer that does not speak the protocol gets its requests back (they
//! go by request-response, as before) and is remembered as such. A link
//! with nothing sent for [`IDLE`] is closed.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::{PeerId, StreamProtocol};
use tokio::sync::mpsc;

use crate::relay::stream::{self, ClientAnswer, ClientCodec};

/// A link with nothing sent for this long is closed (once its answers are
/// in).
pub(crate) const IDLE: Duration = Duration::from_secs(60);
/// Most peers remembered as not speaking the stream protocol.
const MAX_UNSUPPORTED: usize = 1024;

/// What a link's task reports.
#[derive(Debug)]
pub(crate) enum LinkEvent<Q, A> {
    /// The answer to request `id` on `peer`'s link (or why none came).
    Answer {
        peer: PeerId,
        id: u64,
        answer: Result<A, String>,
    },
    /// `peer` does not speak the stream protocol: these requests were not
    /// sent.
    Unsupported {
        peer: PeerId,
        requests: Vec<(u64, Q)>,
    },
    /// The link `generation` to `peer` ended (every request on it was
    /// answered, one way or the other).
    Closed { peer: PeerId, generation: u64 },
}

/// The events of links whose messages `C` encodes.
pub(crate) type EventOf<C> = LinkEvent<<C as ClientCodec>::Request, <C as ClientCodec>::Answer>;

struct Link<Q> {
    generation: u64,
    requests: mpsc::UnboundedSender<(u64, Q)>,
    last_used: Instant,
}

/// The node's links of one protocol; owned by the swarm's task.
pub(crate) struct Links<C: ClientCodec> {
    control: libp2p_stream::Control,
    protocol: StreamProtocol,
    codec: C,
    /// Longest a request waits for its answer before its link fails.
    deadline: Duration,
    links: HashMap<PeerId, Link<C::Request>>,
    unsupported: HashSet<PeerId>,
    to_actor: mpsc::UnboundedSender<EventOf<C>>,
    next_id: u64,
    next_generation: u64,
}

impl<C: ClientCodec + Clone> Links<C> {
    /// Links speaking `protocol` with `codec`, opened through `control`,
    /// each failing (every request open on it answered with the error, the
    /// stream dropped) once a request has waited `deadline` for its
    /// answer; their events go to the receiver returned beside.
    pub(crate) fn new(
        control: libp2p_stream::Control,
        (protocol, codec): (StreamProtocol, C),
        deadline: Duration,
    ) -> (Self, mpsc::UnboundedReceiver<EventOf<C>>) {
        let (to_actor, events) = mpsc::unbounded_channel();
        let links = Self {
            control,
            protocol,
            codec,
            deadline,
            links: HashMap::new(),
            unsupported: HashSet::new(),
            to_actor,
            next_id: 0,
            next_generation: 0,
        };
        (links, events)
    }

    /// Sends `request` on `peer`'s link (opening one if needed) and
    /// returns its id, or gives it back if `peer` is known not to speak
    /// the protocol. Must run inside a tokio runtime.
    pub(crate) fn send(
        &mut self,
        peer: PeerId,
        request: C::Request,
    ) -> Result<u64, Box<C::Request>> {
        if self.unsupported.contains(&peer) {
            return Err(Box::new(request));
        }
        let id = self.next_id;
        self.next_id += 1;
        let now = Instant::now();
        let mut item = (id, request);
        if let Some(link) = self.links.get_mut(&peer) {
            match link.requests.send(item) {
                Ok(()) => {
                    link.last_used = now;
                    return Ok(id);
                }
                // Its task ended: open another.
                Err(mpsc::error::SendError(back)) => item = back,
            }
        }
        let (requests, rx) = mpsc::unbounded_channel();
        let _ = requests.send(item);
        let generation = self.next_generation;
        self.next_generation += 1;
        tokio::spawn(run_link(
            self.control.clone(),
            (self.protocol.clone(), self.codec.clone(), self.deadline),
            peer,
            generation,
            rx,
            self.to_actor.clone(),
        ));
        self.links.insert(
            peer,
            Link {
                generation,
                requests,
                last_used: now,
            },
        );
        Ok(id)
    }

    /// Notes that `peer` does not speak the protocol.
    pub(crate) fn unsupported(&mut self, peer: PeerId) {
        if self.unsupported.len() >= MAX_UNSUPPORTED {
            self.unsupported.clear();
        }
        self.unsupported.insert(peer);
        self.links.remove(&peer);
    }

    /// Forgets the link `generation` to `peer`, which ended.
    pub(crate) fn closed(&mut self, peer: PeerId, generation: u64) {
        if self
            .links
            .get(&peer)
            .is_some_and(|l| l.generation == generation)
        {
            self.links.remove(&peer);
        }
    }

    /// Closes links with nothing sent for [`IDLE`] (each finishes its
    /// answers first).
    pub(crate) fn close_idle(&mut self, now: Instant) {
        self.links
            .retain(|_, l| now.saturating_duration_since(l.last_used) < IDLE);
    }
}

/// One link's task: opens the stream, drives it until its requests end
/// and every answer is in (or it fails), and reports.
async fn run_link<C: ClientCodec>(
    mut control: libp2p_stream::Control,
    (protocol, codec, deadline): (StreamProtocol, C, Duration),
    peer: PeerId,
    generation: u64,
    mut requests: mpsc::UnboundedReceiver<(u64, C::Request)>,
    to_actor: mpsc::UnboundedSender<EventOf<C>>,
) {
    match control.open_stream(peer, protocol).await {
        Ok(s) => {
            let (answers_tx, mut answers) = mpsc::unbounded_channel::<ClientAnswer<C::Answer>>();
            let forward = async {
                while let Some((id, answer)) = answers.recv().await {
                    let _ = to_actor.send(LinkEvent::Answer { peer, id, answer });
                }
            };
            tokio::join!(
                stream::run_client(codec, s, deadline, requests, answers_tx),
                forward
            );
        }
        Err(libp2p_stream::OpenStreamError::UnsupportedProtocol(_)) => {
            requests.close();
            let mut back = Vec::new();
            while let Ok(r) = requests.try_recv() {
                back.push(r);
            }
            let _ = to_actor.send(LinkEvent::Unsupported {
                peer,
                requests: back,
            });
        }
        Err(e) => {
            requests.close();
            let why = format!("stream not opened: {e}");
            while let Ok((id, _)) = requests.try_recv() {
                let _ = to_actor.send(LinkEvent::Answer {
                    peer,
                    id,
                    answer: Err(why.clone()),
                });
            }
        }
    }
    let _ = to_actor.send(LinkEvent::Closed { peer, generation });
}
