//! The swarm task's side of media: fetching chunks a few at a time, and
//! answering contacts' requests (see [`crate::node::media`]).

use std::collections::{HashMap, VecDeque};

use libp2p::PeerId;
use libp2p::request_response::{OutboundRequestId, ResponseChannel};
use tracing::debug;

use super::Actor;
use crate::node::media::{FETCH_WINDOW, MAX_FETCHES, MAX_SERVING, MediaJob};
use crate::node::net::media::ChunkAnswer;
use crate::node::worker::Job;
use crate::store::MessageRef;

/// One media message being fetched.
struct Fetch {
    peer: PeerId,
    queue: VecDeque<[u8; 32]>,
    in_flight: usize,
    /// A chunk did not come: ask for no more this time.
    failed: bool,
    /// The author said it was busy.
    busy: bool,
}

#[derive(Default)]
pub(super) struct MediaLinks {
    fetches: HashMap<MessageRef, Fetch>,
    requests: HashMap<OutboundRequestId, (MessageRef, [u8; 32])>,
    serving: HashMap<u64, ResponseChannel<ChunkAnswer>>,
    next_token: u64,
}

impl Actor {
    /// The store thread wants these chunks of `message` from `peer`.
    pub(super) fn fetch_media(&mut self, message: MessageRef, peer: PeerId, names: Vec<[u8; 32]>) {
        let m = &mut self.media;
        if m.fetches.contains_key(&message) {
            // Already under way (its end is reported then).
            return;
        }
        if m.fetches.len() >= MAX_FETCHES {
            // Its turn comes a moment later.
            self.job(Job::Media(MediaJob::Ended {
                message,
                busy: true,
            }));
            return;
        }
        m.fetches.insert(
            message,
            Fetch {
                peer,
                queue: names.into(),
                in_flight: 0,
                failed: false,
                busy: false,
            },
        );
        self.pump_media(message);
    }

    fn pump_media(&mut self, message: MessageRef) {
        let Some(f) = self.media.fetches.get_mut(&message) else {
            return;
        };
        if f.failed {
            f.queue.clear();
        }
        while f.in_flight < FETCH_WINDOW {
            let Some(name) = f.queue.pop_front() else {
                break;
            };
            let id = self.net.send_media(&f.peer, name);
            self.media.requests.insert(id, (message, name));
            f.in_flight += 1;
        }
        if f.in_flight == 0 {
            // Over: the store thread counts what came (the chunks went
            // ahead of this) and goes on later if that is not all.
            let busy = f.busy;
            self.media.fetches.remove(&message);
            self.job(Job::Media(MediaJob::Ended { message, busy }));
        }
    }

    /// An answer to one of our chunk requests (`None`: no answer).
    pub(super) fn media_answer(&mut self, request: OutboundRequestId, answer: Option<ChunkAnswer>) {
        let Some((message, name)) = self.media.requests.remove(&request) else {
            return;
        };
        if let Some(f) = self.media.fetches.get_mut(&message) {
            f.in_flight = f.in_flight.saturating_sub(1);
            match answer {
                Some(ChunkAnswer::Here(chunk)) => self.job(Job::Media(MediaJob::Chunk {
                    message,
                    name,
                    chunk,
                })),
                Some(ChunkAnswer::Busy) => {
                    f.failed = true;
                    f.busy = true;
                }
                Some(ChunkAnswer::NotHere) | None => f.failed = true,
            }
        }
        self.pump_media(message);
    }

    /// A peer asks for a chunk: contacts only, a bounded number waiting.
    pub(super) fn media_request(
        &mut self,
        peer: PeerId,
        name: [u8; 32],
        channel: ResponseChannel<ChunkAnswer>,
    ) {
        let answer = if !self.peers.contains_key(&peer) {
            ChunkAnswer::NotHere
        } else if self.media.serving.len() >= MAX_SERVING || self.overloaded() {
            ChunkAnswer::Busy
        } else {
            let token = self.media.next_token;
            self.media.next_token = token.wrapping_add(1);
            self.media.serving.insert(token, channel);
            self.job(Job::Media(MediaJob::Serve { token, name }));
            return;
        };
        debug!(%peer, ?answer, "media request answered at once");
        let _ = self.net.respond_media(channel, answer);
    }

    /// The store thread's answer to a chunk request.
    pub(super) fn serve_media(&mut self, token: u64, chunk: Option<Vec<u8>>) {
        let answer = match chunk {
            Some(c) => ChunkAnswer::Here(c),
            None => ChunkAnswer::NotHere,
        };
        if let Some(channel) = self.media.serving.remove(&token)
            && self.net.respond_media(channel, answer).is_err()
        {
            debug!("media answer not sent: the asker's stream closed");
        }
    }
}
