//! The store thread's side of media (see [`crate::node::media`]).

use std::collections::HashMap;

use libp2p::PeerId;
use tracing::{debug, warn};

use super::{Out, Round, Worker};
use crate::crypto::media::{Manifest, chunk_name};
use crate::node::NodeEvent;
use crate::node::error::NodeError;
use crate::node::media::{FETCH_AGAIN, MediaFile, MediaJob};
use crate::store::{MessageRef, media_id};

/// Most wanted media messages loaded at start.
const MAX_WANTED: usize = 4096;
const WANT_VERSION: u8 = 1;

/// A media message whose chunks are being fetched.
pub(super) struct Wanted {
    message: MessageRef,
    manifest: Manifest,
    /// The id its chunks are kept under.
    owner: [u8; 16],
    /// Chunks not here yet.
    missing: usize,
    /// A fetch is running.
    active: bool,
    /// When the last fetch ended without every chunk (Unix seconds).
    stalled_at: Option<u64>,
}

/// Wanted media messages (loaded from the store at the first tick).
#[derive(Default)]
pub(super) struct MediaState {
    wanted: HashMap<[u8; 16], Wanted>,
    loaded: bool,
}

fn encode_want(m: &MessageRef) -> Vec<u8> {
    let mut v = Vec::with_capacity(73);
    v.push(WANT_VERSION);
    v.extend_from_slice(&m.conv_id);
    v.extend_from_slice(&m.lamport.to_be_bytes());
    v.extend_from_slice(&m.sender);
    v
}

fn decode_want(msg_id: [u8; 16], v: &[u8]) -> Option<MessageRef> {
    if v.len() != 73 || v[0] != WANT_VERSION {
        return None;
    }
    Some(MessageRef {
        conv_id: v[1..33].try_into().ok()?,
        lamport: u64::from_be_bytes(v[33..41].try_into().ok()?),
        sender: v[41..73].try_into().ok()?,
        msg_id,
    })
}

impl Worker {
    pub(super) fn media_job(&mut self, job: MediaJob, now: u64, round: &mut Round) {
        match job {
            MediaJob::Put {
                owner,
                chunks,
                reply,
            } => {
                let r = self.engine.store().media().and_then(|m| {
                    chunks
                        .iter()
                        .try_for_each(|(name, chunk)| m.put_chunk(&owner, name, chunk))
                });
                round.reply(reply, r.map_err(Into::into));
            }
            MediaJob::Forget { body } => {
                let id = media_id(&body);
                if let Err(e) = self
                    .engine
                    .store()
                    .media()
                    .and_then(|m| m.forget(&body, &id))
                {
                    warn!(error = %e, "chunks of an unsent media message left");
                }
            }
            MediaJob::Read { message, reply } => {
                let r = self.read_media(&message);
                round.reply(reply, r);
            }
            MediaJob::Chunk {
                msg_id,
                name,
                chunk,
            } => self.media_chunk(msg_id, &name, &chunk, round),
            MediaJob::Stalled { msg_id } => {
                if let Some(w) = self.media.wanted.get_mut(&msg_id) {
                    w.active = false;
                    w.stalled_at = Some(now);
                }
            }
            MediaJob::Serve { token, name } => {
                let chunk = match self.engine.store().media().and_then(|m| m.chunk(&name)) {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(error = %e, "reading a media chunk to serve");
                        None
                    }
                };
                round.outs.push(Out::ServeMedia { token, chunk });
            }
        }
    }

    fn read_media(&self, message: &MessageRef) -> Result<MediaFile, NodeError> {
        let store = self.engine.store();
        let Some(stored) = store.history().get(message)? else {
            return Err(NodeError::Media("no such message".into()));
        };
        let manifest = match Manifest::from_body(&stored.body) {
            None => return Err(NodeError::Media("not a media message".into())),
            Some(m) => m?,
        };
        let media = store.media()?;
        let mut data = Vec::with_capacity(usize::try_from(manifest.size).unwrap_or(0));
        let mut missing = 0;
        for (i, name) in manifest.chunks.iter().enumerate() {
            match media.chunk(name)? {
                Some(c) if missing == 0 => data.extend(manifest.open_chunk(i, &c)?),
                Some(_) => {}
                None => missing += 1,
            }
        }
        if missing > 0 {
            return Err(NodeError::Media(format!(
                "{missing} of its {} chunks are not here yet",
                manifest.chunks.len()
            )));
        }
        Ok(MediaFile {
            name: manifest.name.clone(),
            mime: manifest.mime.clone(),
            data,
        })
    }

    /// Media messages this round stored: wanted from now on (written with
    /// the round), and fetched.
    pub(super) fn media_received(&mut self, now: u64, round: &mut Round) {
        let found: Vec<MessageRef> = round
            .events
            .iter()
            .filter_map(|e| match e {
                NodeEvent::Message { message, .. } if crate::store::is_media(&message.body) => {
                    Some(MessageRef {
                        conv_id: message.conv_id,
                        lamport: message.lamport,
                        sender: message.sender,
                        msg_id: message.msg_id,
                    })
                }
                _ => None,
            })
            .collect();
        for message in found {
            if self.media.wanted.contains_key(&message.msg_id) {
                continue;
            }
            if let Err(e) = self.want_media(message, true, round) {
                warn!(error = %e, "a media message not recorded for fetching");
            }
        }
        if !round.events.is_empty() {
            self.fetch_media(now, None, round);
        }
    }

    /// Starts following `message`; `record`: write it as wanted.
    fn want_media(
        &mut self,
        message: MessageRef,
        record: bool,
        round: &mut Round,
    ) -> Result<(), NodeError> {
        let store = self.engine.store();
        let media = store.media()?;
        let Some(stored) = store.history().get(&message)? else {
            media.unwant(&message.msg_id)?;
            return Ok(());
        };
        let manifest = match Manifest::from_body(&stored.body) {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                debug!(error = %e, "a media message whose manifest does not decode");
                media.unwant(&message.msg_id)?;
                return Ok(());
            }
            None => return Ok(()),
        };
        let mut missing = 0;
        for name in &manifest.chunks {
            if !media.has_chunk(name)? {
                missing += 1;
            }
        }
        if missing == 0 {
            if !record {
                media.unwant(&message.msg_id)?;
                round.dirty = true;
            }
            round.events.push(NodeEvent::MediaReady { message });
            return Ok(());
        }
        if record {
            media.want(&message.msg_id, &encode_want(&message))?;
            round.dirty = true;
        }
        self.media.wanted.insert(
            message.msg_id,
            Wanted {
                message,
                owner: media_id(&stored.body),
                manifest,
                missing,
                active: false,
                stalled_at: None,
            },
        );
        Ok(())
    }

    /// Asks the swarm's task to fetch what is missing of wanted media that
    /// is not being fetched: all that is due, or (`only`) that of one
    /// author, whose device just connected.
    pub(super) fn fetch_media(&mut self, now: u64, only: Option<&[u8; 32]>, round: &mut Round) {
        let store = self.engine.store();
        let Ok(media) = store.media() else {
            return;
        };
        for (msg_id, w) in self.media.wanted.iter_mut() {
            if w.active {
                continue;
            }
            let due = match only {
                Some(author) => &w.message.sender == author,
                None => w
                    .stalled_at
                    .is_none_or(|at| now.saturating_sub(at) >= FETCH_AGAIN),
            };
            let Some(peer) = self.peer_of.get(&w.message.sender).copied() else {
                continue;
            };
            if !due {
                continue;
            }
            let names: Vec<[u8; 32]> = w
                .manifest
                .chunks
                .iter()
                .filter(|n| !media.has_chunk(n).unwrap_or(false))
                .copied()
                .collect();
            w.active = true;
            round.outs.push(Out::FetchMedia {
                msg_id: *msg_id,
                peer,
                names,
            });
        }
    }

    /// Loads the wanted media messages a previous run left (once).
    pub(super) fn load_wanted_media(&mut self, round: &mut Round) {
        if self.media.loaded {
            return;
        }
        self.media.loaded = true;
        let wanted = match self
            .engine
            .store()
            .media()
            .and_then(|m| m.wanted(MAX_WANTED))
        {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "reading the media still to fetch");
                return;
            }
        };
        for (msg_id, v) in wanted {
            let Some(message) = decode_want(msg_id, &v) else {
                let _ = self.engine.store().media().and_then(|m| m.unwant(&msg_id));
                continue;
            };
            if let Err(e) = self.want_media(message, false, round) {
                warn!(error = %e, "a media message still to fetch");
            }
        }
    }

    fn media_chunk(&mut self, msg_id: [u8; 16], name: &[u8; 32], chunk: &[u8], round: &mut Round) {
        let Some(w) = self.media.wanted.get_mut(&msg_id) else {
            return;
        };
        if chunk_name(chunk) != *name || !w.manifest.chunks.contains(name) {
            debug!("a media chunk that is not the one asked for");
            return;
        }
        let media = match self.engine.store().media() {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "keeping a media chunk");
                return;
            }
        };
        match media.has_chunk(name) {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                warn!(error = %e, "keeping a media chunk");
                return;
            }
        }
        if let Err(e) = media.put_chunk(&w.owner, name, chunk) {
            warn!(error = %e, "keeping a media chunk");
            return;
        }
        round.dirty = true;
        w.missing = w.missing.saturating_sub(1);
        if w.missing == 0 {
            let message = w.message;
            self.media.wanted.remove(&msg_id);
            if let Err(e) = media.unwant(&msg_id) {
                warn!(error = %e, "a fetched media message still marked wanted");
            }
            round.events.push(NodeEvent::MediaReady { message });
        }
    }

    /// The device of `peer` connected: fetch what its author sent.
    pub(super) fn media_peer_up(&mut self, peer: &PeerId, now: u64, round: &mut Round) {
        if let Some(key) = self.peers.get(peer).copied() {
            self.fetch_media(now, Some(&key), round);
        }
    }
}
