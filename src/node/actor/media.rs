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

/// One media message being fetched.
struct Fetch {
    peer: PeerId,
    queue: VecDeque<[u8; 32]>,
    in_flight: usize,
    /// A chunk did not come: ask for no more this time.
    failed: bool,
}

#[derive(Default)]
pub(super) struct MediaLinks {
    fetches: HashMap<[u8; 16], Fetch>,
    requests: HashMap<OutboundRequestId, ([u8; 16], [u8; 32])>,
    serving: HashMap<u64, ResponseChannel<ChunkAnswer>>,
    next_token: u64,
}

impl Actor {
    /// The store thread wants these chunks of `msg_id` from `peer`.
    pub(super) fn fetch_media(&mut self, msg_id: [u8; 16], peer: PeerId, names: Vec<[u8; 32]>) {
        let m = &mut self.media;
        if m.fetches.contains_key(&msg_id) || m.fetches.len() >= MAX_FETCHES {
            // Its turn comes at a later tick.
            self.job(Job::Media(MediaJob::Stalled { msg_id }));
            return;
        }
        m.fetches.insert(
            msg_id,
            Fetch {
                peer,
                queue: names.into(),
                in_flight: 0,
                failed: false,
            },
        );
        self.pump_media(msg_id);
    }

    fn pump_media(&mut self, msg_id: [u8; 16]) {
        let Some(f) = self.media.fetches.get_mut(&msg_id) else {
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
            self.media.requests.insert(id, (msg_id, name));
            f.in_flight += 1;
        }
        if f.in_flight == 0 {
            // Over: the store thread counts what came (the chunks went
            // ahead of this) and tries again later if that is not all.
            self.media.fetches.remove(&msg_id);
            self.job(Job::Media(MediaJob::Stalled { msg_id }));
        }
    }

    /// A chunk came, or did not (`None`).
    pub(super) fn media_answer(&mut self, request: OutboundRequestId, chunk: Option<Vec<u8>>) {
        let Some((msg_id, name)) = self.media.requests.remove(&request) else {
            return;
        };
        if let Some(f) = self.media.fetches.get_mut(&msg_id) {
            f.in_flight = f.in_flight.saturating_sub(1);
            match chunk {
                Some(chunk) => self.job(Job::Media(MediaJob::Chunk {
                    msg_id,
                    name,
                    chunk,
                })),
                None => f.failed = true,
            }
        }
        self.pump_media(msg_id);
    }

    /// A peer asks for a chunk: contacts only, a bounded number waiting.
    pub(super) fn media_request(
        &mut self,
        peer: PeerId,
        name: [u8; 32],
        channel: ResponseChannel<ChunkAnswer>,
    ) {
        if !self.peers.contains_key(&peer)
            || self.media.serving.len() >= MAX_SERVING
            || self.overloaded()
        {
            debug!(%peer, "media request answered empty");
            let _ = self.net.respond_media(channel, None);
            return;
        }
        let token = self.media.next_token;
        self.media.next_token = token.wrapping_add(1);
        self.media.serving.insert(token, channel);
        self.job(Job::Media(MediaJob::Serve { token, name }));
    }

    /// The store thread's answer to a chunk request.
    pub(super) fn serve_media(&mut self, token: u64, chunk: Option<Vec<u8>>) {
        if let Some(channel) = self.media.serving.remove(&token)
            && self.net.respond_media(channel, chunk).is_err()
        {
            debug!("media answer not sent: the asker's stream closed");
        }
    }
}
