//! The store thread's side of media (see [`crate::node::media`]).

use std::collections::HashMap;

use libp2p::PeerId;
use tracing::{debug, warn};

use super::{Out, Round, Worker};
use crate::crypto::media::{MAX_CHUNKS, MAX_SEALED_CHUNK, Manifest, chunk_name};
use crate::node::NodeEvent;
use crate::node::error::NodeError;
use crate::node::media::{BUSY_AGAIN, FETCH_AGAIN, MAX_FETCHES, MAX_FOLLOWED, MediaFile, MediaJob};
use crate::store::{Media, MessageRef, media_owner};

/// A media message whose chunks are being fetched.
pub(super) struct Wanted {
    manifest: Manifest,
    /// The owner id its chunks are kept under.
    owner: [u8; 16],
    /// A fetch is running.
    active: bool,
    /// Not fetched again before this (Unix seconds).
    retry_at: u64,
    /// Fetches started: a group's file is asked of another member each
    /// time its author is not connected.
    attempts: u32,
    /// Fetches that failed since the last wait: the next source is asked
    /// at once until every one was.
    tried: u32,
    /// A device that may have it connected while a fetch ran: asked at
    /// once when that fetch ends.
    again: bool,
    /// Room in the media budget set aside for the chunks the running
    /// fetch brings (0 when none runs).
    reserved: u64,
    /// The user heard that it waits for room.
    told: bool,
}

/// The wanted media messages followed now: at most [`MAX_FOLLOWED`]; the
/// others wait on disk.
pub(super) struct MediaState {
    wanted: HashMap<MessageRef, Wanted>,
    /// The followed ones are all there are on disk (read since the last
    /// time some were left there).
    loaded: bool,
    /// Most bytes of chunks kept before other people's files wait.
    budget: u64,
}

/// How far past the media budget chunks that a relay held for this
/// device may take it: one largest file, or an eighth of the budget if
/// that is less.
fn relayed_slack(budget: u64) -> u64 {
    (MAX_CHUNKS as u64 * CHUNK_COST).min(budget / 8)
}

/// What one missing chunk is counted as against the budget: its largest
/// sealed record (the chunk, its owner id, the seal).
const CHUNK_COST: u64 = (MAX_SEALED_CHUNK + 16 + 64) as u64;

impl MediaState {
    pub(super) fn new(budget: u64) -> Self {
        Self {
            wanted: HashMap::new(),
            loaded: false,
            budget,
        }
    }
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
                let me = self.engine.identity().public().signing;
                match self
                    .engine
                    .store()
                    .media()
                    .and_then(|m| m.forget_chunks(&body, &me))
                {
                    Ok(0) => {}
                    Ok(_) => self.media_room_made(),
                    Err(e) => warn!(error = %e, "chunks of an unsent media message left"),
                }
            }
            MediaJob::Read { message, reply } => {
                let r = self.read_media(&message);
                round.reply(reply, r);
            }
            MediaJob::Chunk {
                message,
                name,
                chunk,
            } => {
                // A chunk from a peer: asked for again if not kept.
                if let Err(e) = self.media_chunk(message, &name, &chunk, round) {
                    warn!(error = %e, "keeping a media chunk");
                }
            }
            MediaJob::Ended { message, busy } => {
                let sources = self.media_sources(&message).len() as u32;
                if let Some(w) = self.media.wanted.get_mut(&message) {
                    w.active = false;
                    // What did not come takes no room any more.
                    w.reserved = 0;
                    w.tried = w.tried.saturating_add(1);
                    w.retry_at = if busy {
                        now + BUSY_AGAIN
                    } else if std::mem::take(&mut w.again) {
                        w.tried = 0;
                        now
                    } else if w.tried < sources {
                        // Another member may have it: asked at the next tick.
                        now
                    } else {
                        w.tried = 0;
                        now + FETCH_AGAIN
                    };
                }
                // Done if every chunk is here now (some may have been here
                // already, brought by another message).
                self.settle(message, round);
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
        let missing = missing(&media, &manifest)?.len();
        if missing > 0 {
            return Err(NodeError::Media(format!(
                "{missing} of its {} pieces are not here yet",
                manifest.chunks.len()
            )));
        }
        let mut data = Vec::with_capacity(usize::try_from(manifest.size).unwrap_or(0));
        for (i, name) in manifest.chunks.iter().enumerate() {
            let Some(c) = media.chunk(name)? else {
                return Err(NodeError::Media("a piece went while it was read".into()));
            };
            data.extend(manifest.open_chunk(i, &c)?);
        }
        Ok(MediaFile {
            name: manifest.name.clone(),
            mime: manifest.mime.clone(),
            data,
        })
    }

    /// Media messages this round stored (since the last call): wanted
    /// from now on (written with the round), and fetched.
    pub(super) fn media_received(&mut self, now: u64, round: &mut Round) {
        let seen = round.media_seen.min(round.events.len());
        round.media_seen = round.events.len();
        let found: Vec<MessageRef> = round.events[seen..]
            .iter()
            .filter_map(|e| match e {
                NodeEvent::Message { message, .. } if crate::store::is_media(&message.body) => {
                    Some(message.reference())
                }
                _ => None,
            })
            .collect();
        if found.is_empty() {
            return;
        }
        let media = match self.engine.store().media() {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "media messages not recorded for fetching");
                return;
            }
        };
        for message in &found {
            match media.want(message) {
                Ok(()) => round.dirty = true,
                Err(e) => warn!(error = %e, "a media message not recorded for fetching"),
            }
        }
        // Followed at once, before older ones if there is no room: their
        // chunks may come from a relay in the same page of mail, and one
        // not followed would be dropped. An older one that gives way waits
        // on disk for its turn.
        for message in &found {
            if self.media.wanted.contains_key(message) {
                continue;
            }
            if self.media.wanted.len() >= MAX_FOLLOWED {
                let idle = self
                    .media
                    .wanted
                    .iter()
                    .find(|(m, w)| !w.active && !found.contains(m))
                    .map(|(m, _)| *m);
                match idle {
                    Some(m) => {
                        self.media.wanted.remove(&m);
                    }
                    None => break,
                }
            }
            if let Err(e) = self.follow(*message, round) {
                warn!(error = %e, "a media message to fetch");
            }
        }
        // The rest from the disk, as far as there is room.
        self.media.loaded = false;
        self.load_wanted_media(round);
        self.fetch_media(now, None, round);
    }

    /// Follows the wanted media messages on disk, as many as there is
    /// room for.
    pub(super) fn load_wanted_media(&mut self, round: &mut Round) {
        if self.media.loaded {
            return;
        }
        let mut after: Option<MessageRef> = None;
        while self.media.wanted.len() < MAX_FOLLOWED {
            let page = match self
                .engine
                .store()
                .media()
                .and_then(|m| m.wanted(after.as_ref(), 256))
            {
                Ok(p) => p,
                Err(e) => {
                    warn!(error = %e, "reading the media still to fetch");
                    return;
                }
            };
            let Some(last) = page.last().copied() else {
                self.media.loaded = true;
                return;
            };
            for message in page {
                if self.media.wanted.len() >= MAX_FOLLOWED {
                    return;
                }
                if self.media.wanted.contains_key(&message) {
                    continue;
                }
                if let Err(e) = self.follow(message, round) {
                    warn!(error = %e, "a media message still to fetch");
                }
            }
            after = Some(last);
        }
    }

    /// Starts following the wanted media message `message`.
    fn follow(&mut self, message: MessageRef, round: &mut Round) -> Result<(), NodeError> {
        let store = self.engine.store();
        let media = store.media()?;
        let body = store.history().get(&message)?.map(|m| m.body);
        let manifest = match body.as_deref().map(Manifest::from_body) {
            Some(Some(Ok(m))) => m,
            other => {
                if let Some(Some(Err(e))) = other {
                    debug!(error = %e, "a media message whose manifest does not decode");
                }
                // Gone, or nothing to fetch.
                media.unwant(&message)?;
                round.dirty = true;
                return Ok(());
            }
        };
        let owner = media_owner(body.as_deref().unwrap_or_default(), &message.sender);
        self.media.wanted.insert(
            message,
            Wanted {
                manifest,
                owner,
                active: false,
                retry_at: 0,
                attempts: 0,
                tried: 0,
                again: false,
                reserved: 0,
                told: false,
            },
        );
        Ok(())
    }

    /// Bytes left in the media budget (raised by `beyond`): what the
    /// chunks kept and the room set aside for running fetches leave.
    fn media_room(&self, media: &Media<'_>, beyond: u64) -> Result<u64, crate::store::Error> {
        let set_aside: u64 = self.media.wanted.values().map(|w| w.reserved).sum();
        Ok(self
            .media
            .budget
            .saturating_add(beyond)
            .saturating_sub(media.bytes()?.saturating_add(set_aside)))
    }

    /// Whether one more chunk of `message` that came unasked (a relay
    /// held it for this device) may be kept: while the chunks kept and the
    /// room set aside stay within the budget plus [`relayed_slack`], so
    /// that a file deposited for this device comes whole even when it
    /// takes the store a little past the budget. If not, the user hears
    /// (once) that its file waits, with what the file still needs.
    fn relayed_fits(
        &mut self,
        media: &Media<'_>,
        message: &MessageRef,
        round: &mut Round,
    ) -> Result<bool, crate::store::Error> {
        if CHUNK_COST <= self.media_room(media, relayed_slack(self.media.budget))? {
            return Ok(true);
        }
        if let Some(w) = self.media.wanted.get(message)
            && !w.told
        {
            let needs = (missing(media, &w.manifest)?.len() as u64).saturating_mul(CHUNK_COST);
            let free = self.media_room(media, 0)?;
            self.tell_held(message, needs, free, round);
        }
        Ok(false)
    }

    /// Whether `needs` bytes of chunks for `message` fit in the media
    /// budget now; if not, the user hears (once) that its file waits.
    fn media_fits(
        &mut self,
        media: &Media<'_>,
        message: &MessageRef,
        needs: u64,
        round: &mut Round,
    ) -> Result<bool, crate::store::Error> {
        let free = self.media_room(media, 0)?;
        if needs <= free {
            return Ok(true);
        }
        self.tell_held(message, needs, free, round);
        Ok(false)
    }

    /// The user hears (once while it is followed) that `message`'s file
    /// waits for room: it still needs `needs` bytes, `free` are left.
    fn tell_held(&mut self, message: &MessageRef, needs: u64, free: u64, round: &mut Round) {
        if let Some(w) = self.media.wanted.get_mut(message)
            && !std::mem::replace(&mut w.told, true)
        {
            debug!(needs, free, "a media file waits for room in the budget");
            round.events.push(NodeEvent::MediaHeld {
                message: *message,
                needs,
                free,
            });
        }
    }

    /// If every chunk of `message` is here: it is no longer wanted, and
    /// the user hears so.
    pub(super) fn settle(&mut self, message: MessageRef, round: &mut Round) {
        let Some(w) = self.media.wanted.get(&message) else {
            return;
        };
        let media = match self.engine.store().media() {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "checking a media message's chunks");
                return;
            }
        };
        if !missing(&media, &w.manifest).is_ok_and(|m| m.is_empty()) {
            return;
        }
        // Some may have come with another message (the same file sent
        // again): this one holds them too, so that deleting that one
        // leaves this one whole.
        if let Err(e) = media.hold_chunks(&w.owner, &w.manifest.chunks) {
            warn!(error = %e, "a media message's hold on its chunks");
            return;
        }
        self.media.wanted.remove(&message);
        self.media.loaded = false;
        if let Err(e) = media.unwant(&message) {
            warn!(error = %e, "a fetched media message still marked wanted");
        }
        round.dirty = true;
        round.events.push(NodeEvent::MediaReady { message });
    }

    /// Asks the swarm's task to fetch what is missing of followed media
    /// that is not being fetched: all that is due, or (`only`) what the
    /// device that just connected may have: what its owner wrote, or what
    /// was written in a group it is in.
    pub(super) fn fetch_media(&mut self, now: u64, only: Option<&[u8; 32]>, round: &mut Round) {
        // No more than the swarm's task takes at once: the rest wait for
        // their turn rather than bounce.
        if let Some(key) = only {
            // A fetch running now goes on; the device that connected is
            // asked when it ends.
            for (m, w) in self.media.wanted.iter_mut() {
                if w.active
                    && (&m.sender == key || self.engine.other_members(&m.conv_id).contains(key))
                {
                    w.again = true;
                }
            }
        }
        let running = self.media.wanted.values().filter(|w| w.active).count();
        let slots = MAX_FETCHES.saturating_sub(running);
        let due: Vec<MessageRef> = self
            .media
            .wanted
            .iter()
            .filter(|(m, w)| {
                !w.active
                    && match only {
                        Some(key) => {
                            &m.sender == key || self.engine.other_members(&m.conv_id).contains(key)
                        }
                        None => w.retry_at <= now,
                    }
            })
            .map(|(m, _)| *m)
            .take(slots)
            .collect();
        let preferred = only.and_then(|k| self.peer_of.get(k).copied());
        let mut complete = Vec::new();
        {
            let store = self.engine.store().clone();
            let Ok(media) = store.media() else {
                return;
            };
            for message in due {
                // Whole already (another message brought the rest)? Then
                // no source is needed.
                let Some(w) = self.media.wanted.get(&message) else {
                    continue;
                };
                let names = match missing(&media, &w.manifest) {
                    Ok(n) => n,
                    Err(e) => {
                        warn!(error = %e, "checking a media message's chunks");
                        continue;
                    }
                };
                if names.is_empty() {
                    complete.push(message);
                    continue;
                }
                let attempts = w.attempts;
                // The author if it is connected, else the device that just
                // connected, else the next in turn.
                let author_up = self
                    .peer_of
                    .get(&message.sender)
                    .is_some_and(|p| self.shared.is_connected(p));
                let source = match preferred {
                    Some(p) if !author_up => Some(p),
                    _ => self.media_source(&message, attempts),
                };
                let Some(peer) = source else {
                    // Asked when a device that may have it connects
                    // (`only`), and otherwise at the next wait's end: its
                    // chunks are not looked up at every tick.
                    if let Some(w) = self.media.wanted.get_mut(&message) {
                        w.retry_at = now + FETCH_AGAIN;
                    }
                    continue;
                };
                let needs = (names.len() as u64).saturating_mul(CHUNK_COST);
                match self.media_fits(&media, &message, needs, round) {
                    Ok(true) => {}
                    Ok(false) => {
                        // Looked at again at the next wait's end.
                        if let Some(w) = self.media.wanted.get_mut(&message) {
                            w.retry_at = now + FETCH_AGAIN;
                        }
                        continue;
                    }
                    Err(e) => {
                        warn!(error = %e, "reading the size of the media kept");
                        continue;
                    }
                }
                let Some(w) = self.media.wanted.get_mut(&message) else {
                    continue;
                };
                w.attempts = w.attempts.wrapping_add(1);
                w.active = true;
                w.reserved = needs;
                round.outs.push(Out::FetchMedia {
                    message,
                    peer,
                    names,
                });
            }
        }
        for message in complete {
            self.settle(message, round);
        }
    }

    /// Whom to ask for the chunks of `message`: its author's device if it
    /// is connected; else, in a group, in turn (one more at each attempt)
    /// the author's (dialled) and each other member's that is connected.
    fn media_source(&self, message: &MessageRef, attempts: u32) -> Option<PeerId> {
        let candidates = self.media_sources(message);
        if candidates.is_empty() {
            return None;
        }
        candidates
            .get(attempts as usize % candidates.len())
            .copied()
    }

    /// The devices that may have the chunks of `message`: its author's
    /// alone if it is connected; else the author's and the connected ones
    /// of the group's other members.
    fn media_sources(&self, message: &MessageRef) -> Vec<PeerId> {
        let author = self.peer_of.get(&message.sender).copied();
        if author.is_some_and(|p| self.shared.is_connected(&p)) {
            return author.into_iter().collect();
        }
        author
            .into_iter()
            .chain(
                self.engine
                    .other_members(&message.conv_id)
                    .iter()
                    .filter(|k| *k != &message.sender)
                    .filter_map(|k| self.peer_of.get(k).copied())
                    .filter(|p| self.shared.is_connected(p)),
            )
            .collect()
    }

    /// Keeps a chunk of a file we are fetching (one not asked for, or
    /// of a message purged meanwhile, is dropped); `Ok(false)` when it
    /// came unasked (from a relay) and there is no room for it in the
    /// media budget: the caller leaves it where it came from. `Err` only
    /// when the store could not keep it.
    pub(super) fn media_chunk(
        &mut self,
        message: MessageRef,
        name: &[u8; 32],
        chunk: &[u8],
        round: &mut Round,
    ) -> Result<bool, crate::store::Error> {
        let Some(w) = self.media.wanted.get(&message) else {
            return Ok(true);
        };
        if chunk_name(chunk) != *name || !w.manifest.chunks.contains(name) {
            debug!("a media chunk that is not the one asked for");
            return Ok(true);
        }
        let owner = w.owner;
        let last = w.manifest.chunks.last() == Some(name);
        // A running fetch set room aside for what it brings.
        let asked = w.active && w.reserved > 0;
        let store = self.engine.store().clone();
        let media = store.media()?;
        // A message purged meanwhile takes nothing more.
        if !media.is_wanted(&message)? {
            self.media.wanted.remove(&message);
            return Ok(true);
        }
        let new = !media.has_chunk(name)?;
        if new && !asked && !self.relayed_fits(&media, &message, round)? {
            return Ok(false);
        }
        media.put_chunk(&owner, name, chunk)?;
        if new && let Some(w) = self.media.wanted.get_mut(&message) {
            w.reserved = w.reserved.saturating_sub(CHUNK_COST);
        }
        round.dirty = true;
        if last {
            // Likely the last asked for: settled now rather than when the
            // fetch ends.
            self.settle(message, round);
        }
        Ok(true)
    }

    /// Messages were deleted or purged: those of them still followed are
    /// followed no more, and files that waited for room are tried again.
    pub(super) fn media_purged(&mut self) {
        let Ok(media) = self.engine.store().media() else {
            return;
        };
        self.media
            .wanted
            .retain(|m, _| media.is_wanted(m).unwrap_or(true));
        self.media_room_made();
        let history = self.engine.store().history();
        self.relays
            .chunks
            .forget_gone(|m| !matches!(history.get(m), Ok(None)));
    }

    /// Chunks may have gone: if there is room now, files that waited for
    /// it are looked at again at the next tick, and the relays holding
    /// chunks left for want of room are read again from the start (by the
    /// fetch after the outstanding one, or the next one the tick makes).
    pub(super) fn media_room_made(&mut self) {
        let store = self.engine.store().clone();
        let room = store
            .media()
            .and_then(|m| self.media_room(&m, relayed_slack(self.media.budget)));
        match room {
            Ok(r) if r >= CHUNK_COST => {}
            Ok(_) => return,
            Err(e) => warn!(error = %e, "reading the size of the media kept"),
        }
        for w in self.media.wanted.values_mut() {
            if w.told {
                w.retry_at = 0;
            }
        }
        for relay in std::mem::take(&mut self.relays.chunks_left) {
            self.relays.cursor.remove(&relay);
            if self.relays.fetching.contains_key(&relay) {
                self.relays.reread.insert(relay);
            }
        }
    }

    /// Whether every wanted file on disk is followed.
    pub(super) fn media_loaded(&self) -> bool {
        self.media.loaded
    }

    /// Which followed file each of `names` belongs to.
    pub(super) fn media_wanting(
        &self,
        names: &std::collections::HashSet<[u8; 32]>,
    ) -> HashMap<[u8; 32], MessageRef> {
        let mut out = HashMap::new();
        for (m, w) in &self.media.wanted {
            for name in w.manifest.chunks.iter().filter(|n| names.contains(*n)) {
                out.insert(*name, *m);
            }
        }
        out
    }

    /// The device of `peer` connected: fetch what it may have.
    pub(super) fn media_peer_up(&mut self, peer: &PeerId, now: u64, round: &mut Round) {
        if let Some(key) = self.peers.get(peer).copied() {
            self.fetch_media(now, Some(&key), round);
        }
    }
}

/// The names of `manifest`'s chunks that are not here.
fn missing(media: &Media<'_>, manifest: &Manifest) -> Result<Vec<[u8; 32]>, crate::store::Error> {
    let mut out = Vec::new();
    for name in &manifest.chunks {
        if !media.has_chunk(name)? {
            out.push(*name);
        }
    }
    Ok(out)
}
