//! The node's mailbox streams: deposits to a relay travel on one
//! long-lived `/meshchat/mailbox-stream/1` stream per relay
//! ([`crate::relay::stream`]) instead of one request-response exchange
//! each, so a backlog flows to the relay back to back and each custody
//! receipt comes back as soon as the relay has synced.
//!
//! One task per relay opens the stream (dialling the relay if needed) and
//! drives it; its answers come back to the swarm's task as [`LinkEvent`]s.
//! A relay that does not speak the protocol gets its requests back (they
//! go by request-response, as before) and is remembered as such. A link
//! with nothing sent for [`IDLE`] is closed.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tokio::sync::mpsc;

use crate::relay::proto::{Request, Response};
use crate::relay::stream::{self, ClientAnswer};

/// A link with nothing sent for this long is closed (once its answers are
/// in).
pub(crate) const IDLE: Duration = Duration::from_secs(60);
/// Most relays remembered as not speaking the stream protocol.
const MAX_UNSUPPORTED: usize = 1024;

/// What a link's task reports.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    /// The answer to request `id` on `relay`'s link (or why none came).
    Answer {
        relay: PeerId,
        id: u64,
        answer: Result<Response, String>,
    },
    /// `relay` does not speak the stream protocol: these requests were
    /// not sent.
    Unsupported {
        relay: PeerId,
        requests: Vec<(u64, Request)>,
    },
    /// The link `generation` to `relay` ended (every request on it was
    /// answered, one way or the other).
    Closed { relay: PeerId, generation: u64 },
}

struct Link {
    generation: u64,
    requests: mpsc::UnboundedSender<(u64, Request)>,
    last_used: Instant,
}

/// The node's links to relays; owned by the swarm's task.
pub(crate) struct Links {
    control: libp2p_stream::Control,
    links: HashMap<PeerId, Link>,
    unsupported: HashSet<PeerId>,
    to_actor: mpsc::UnboundedSender<LinkEvent>,
    next_id: u64,
    next_generation: u64,
}

impl Links {
    /// Links opened through `control`; their events go to the receiver
    /// returned beside.
    pub(crate) fn new(
        control: libp2p_stream::Control,
    ) -> (Self, mpsc::UnboundedReceiver<LinkEvent>) {
        let (to_actor, events) = mpsc::unbounded_channel();
        let links = Self {
            control,
            links: HashMap::new(),
            unsupported: HashSet::new(),
            to_actor,
            next_id: 0,
            next_generation: 0,
        };
        (links, events)
    }

    /// Sends `request` on `relay`'s link (opening one if needed) and
    /// returns its id, or gives it back if `relay` is known not to speak
    /// the stream protocol. Must run inside a tokio runtime.
    pub(crate) fn send(&mut self, relay: PeerId, request: Request) -> Result<u64, Box<Request>> {
        if self.unsupported.contains(&relay) {
            return Err(Box::new(request));
        }
        let id = self.next_id;
        self.next_id += 1;
        let now = Instant::now();
        let mut item = (id, request);
        if let Some(link) = self.links.get_mut(&relay) {
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
            relay,
            generation,
            rx,
            self.to_actor.clone(),
        ));
        self.links.insert(
            relay,
            Link {
                generation,
                requests,
                last_used: now,
            },
        );
        Ok(id)
    }

    /// Notes that `relay` does not speak the stream protocol.
    pub(crate) fn unsupported(&mut self, relay: PeerId) {
        if self.unsupported.len() >= MAX_UNSUPPORTED {
            self.unsupported.clear();
        }
        self.unsupported.insert(relay);
        self.links.remove(&relay);
    }

    /// Forgets the link `generation` to `relay`, which ended.
    pub(crate) fn closed(&mut self, relay: PeerId, generation: u64) {
        if self
            .links
            .get(&relay)
            .is_some_and(|l| l.generation == generation)
        {
            self.links.remove(&relay);
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
async fn run_link(
    mut control: libp2p_stream::Control,
    relay: PeerId,
    generation: u64,
    mut requests: mpsc::UnboundedReceiver<(u64, Request)>,
    to_actor: mpsc::UnboundedSender<LinkEvent>,
) {
    match control.open_stream(relay, stream::PROTOCOL).await {
        Ok(s) => {
            let (answers_tx, mut answers) = mpsc::unbounded_channel::<ClientAnswer>();
            let forward = async {
                while let Some((id, answer)) = answers.recv().await {
                    let _ = to_actor.send(LinkEvent::Answer { relay, id, answer });
                }
            };
            tokio::join!(stream::run_client(s, requests, answers_tx), forward);
        }
        Err(libp2p_stream::OpenStreamError::UnsupportedProtocol(_)) => {
            requests.close();
            let mut back = Vec::new();
            while let Ok(r) = requests.try_recv() {
                back.push(r);
            }
            let _ = to_actor.send(LinkEvent::Unsupported {
                relay,
                requests: back,
            });
        }
        Err(e) => {
            requests.close();
            let why = format!("mailbox stream not opened: {e}");
            while let Ok((id, _)) = requests.try_recv() {
                let _ = to_actor.send(LinkEvent::Answer {
                    relay,
                    id,
                    answer: Err(why.clone()),
                });
            }
        }
    }
    let _ = to_actor.send(LinkEvent::Closed { relay, generation });
}
