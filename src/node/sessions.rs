//! Double Ratchet sessions with contacts: which session to encrypt with,
//! which to decrypt with, and what to do when both devices start one.
//!
//! One session per contact device. Sending to a device without a session
//! runs X3DH against its bundle (from the invite, or fetched directly) and
//! attaches the X3DH parameters to every message until the peer answers
//! (a [`Frame::Prekey`]). Receiving a prekey message:
//!
//! - whose base key is the current session's: the peer is still waiting for
//!   an answer and retried; decrypt with the current session;
//! - whose base key was seen before (a replay, or a later message of a
//!   set-up that lost to ours): refused and not acknowledged, so a peer
//!   that sent several messages before adopting our session sends them
//!   again in it;
//! - otherwise a new session from the peer. It replaces ours when ours has
//!   already heard from the peer (the peer started over), or when both
//!   sides started at once and the peer's identity key is the lower one —
//!   both devices apply the same rule, so they settle on the same session.
//!   When ours wins, the peer's message is still read with the new session,
//!   which is then dropped; the peer adopts ours when our message arrives,
//!   and resends what we could not read from its outbox.
//!
//! The session a new one replaces is kept as the previous one, and a
//! message the current session cannot read is tried with it; if it reads
//! it, the two swap. So a set-up that arrives late — after both sides had
//! settled on the other one — and makes one side switch does not leave the
//! two devices on different sessions, each refusing the other for good:
//! the first message of the other side switches it back (or the other side
//! over), and nothing is lost.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::proto::Frame;
use crate::crypto::{
    self, DeviceIdentity, PrekeyBundle, PrekeyMessage, PrekeyStore, PublicIdentity, RatchetMessage,
    Session, initiate, respond, wire,
};

/// How many set-up base keys are remembered per contact, to refuse replays.
pub const SEEN_BASE_KEYS: usize = 64;
/// Version 3: sessions whose set-up binds both signing keys (see
/// `crypto::x3dh`). A version 2 record is read too, but a session of it
/// that is still waiting for its set-up to be answered is dropped: that
/// set-up was keyed without the binding, and no device with it can read it.
const RECORD_VERSION: u8 = 3;
/// Records from before the binding.
const RECORD_VERSION_UNBOUND: u8 = 2;

/// One contact's session and the set-ups already seen from it.
struct Entry {
    session: Session,
    /// The session this one replaced, still read from.
    previous: Option<Session>,
    seen: VecDeque<[u8; 32]>,
}

impl Entry {
    /// Makes `fresh` current, keeping the current one as the previous.
    fn replace(&mut self, fresh: Session) {
        self.previous = Some(std::mem::replace(&mut self.session, fresh));
    }

    /// The previous session becomes current again (it just read a
    /// message), the current one previous.
    fn swap(&mut self) {
        if let Some(p) = self.previous.as_mut() {
            std::mem::swap(&mut self.session, p);
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Record {
    version: u8,
    #[serde(with = "serde_bytes")]
    session: Vec<u8>,
    seen: Vec<[u8; 32]>,
    previous: Option<serde_bytes::ByteBuf>,
}

impl Record {
    /// Wipes the session encodings it holds (root, chain and skipped
    /// message keys) before it is dropped.
    fn wipe(&mut self) {
        use zeroize::Zeroize;
        self.session.zeroize();
        if let Some(p) = self.previous.as_mut() {
            let bytes: &mut Vec<u8> = p;
            bytes.zeroize();
        }
    }
}

/// A record from before sessions kept their previous one.
#[derive(Serialize, Deserialize)]
struct RecordV1 {
    version: u8,
    #[serde(with = "serde_bytes")]
    session: Vec<u8>,
    seen: Vec<[u8; 32]>,
}

/// What decrypting a frame gave.
#[derive(Debug)]
pub struct Decrypted {
    /// The plaintext.
    pub plaintext: Vec<u8>,
    /// Whether it was the contact's set-up and replaced ours (the two
    /// crossed and the contact's won, or the contact started over). What
    /// we sent in ours after its first frame is refused by the contact, so
    /// whatever is queued for it should go again now, in this session.
    /// Not when the previous session becomes current again: that follows
    /// late frames, and each would make everything due again.
    pub switched: bool,
}

/// Sessions with contact devices, keyed by their identity (signing) key.
#[derive(Default)]
pub struct Sessions {
    by_peer: HashMap<[u8; 32], Entry>,
    /// Written with their live chains for a clean stop
    /// ([`Self::to_record_exact`]): nothing may be encrypted any more.
    stopped: bool,
    /// Contacts whose record was stored since the last flush.
    stored: std::collections::HashSet<[u8; 32]>,
    /// Set-up base keys seen from contacts with no session here (their
    /// sessions were dropped after a restore from a backup): a set-up
    /// captured before is still refused as a replay.
    orphan_seen: HashMap<[u8; 32], VecDeque<[u8; 32]>>,
}

/// The record that keeps a contact's seen set-ups when its session is
/// dropped (see [`Sessions::load_seen`]).
#[derive(Serialize, Deserialize)]
struct SeenRecord {
    version: u8,
    seen: Vec<[u8; 32]>,
}

const SEEN_RECORD_VERSION: u8 = 1;

/// The store key of a contact's [`SeenRecord`], beside its session's.
pub fn seen_record_key(peer: &[u8; 32]) -> Vec<u8> {
    [b"seen:".as_slice(), peer.as_slice()].concat()
}

/// The seen set-ups of a session record, as a record of their own: what a
/// device restored from a backup keeps when it drops that session (that of
/// the dropped session itself included: its contact may have moved on
/// from it, and a session made from it again would not match). `None` if
/// the record does not decode.
pub fn seen_of_record(bytes: &[u8]) -> Option<Vec<u8>> {
    let (mut r, _) = decode_record(bytes).ok()?;
    r.wipe();
    Some(wire::encode(&SeenRecord {
        version: SEEN_RECORD_VERSION,
        seen: std::mem::take(&mut r.seen),
    }))
}

/// A session record of any version this code reads, and whether it is
/// from before the identity binding (version 2 or 1).
fn decode_record(bytes: &[u8]) -> Result<(Record, bool), crypto::Error> {
    const MAX: usize = 1024 * 1024;
    match wire::decode(bytes, "session record", RECORD_VERSION, MAX) {
        Ok(r) => Ok((r, false)),
        Err(e) => wire::decode::<Record>(bytes, "session record", RECORD_VERSION_UNBOUND, MAX)
            .or_else(|_| {
                wire::decode::<RecordV1>(bytes, "session record", 1, MAX).map(|old| Record {
                    version: RECORD_VERSION,
                    session: old.session,
                    seen: old.seen,
                    previous: None,
                })
            })
            .map(|r| (r, true))
            .map_err(|_| e),
    }
}

impl Sessions {
    /// No sessions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a session with `peer` exists.
    pub fn has(&self, peer: &[u8; 32]) -> bool {
        self.by_peer.contains_key(peer)
    }

    /// Restores the set-ups seen from `peer` whose session was dropped
    /// ([`seen_of_record`]'s bytes).
    pub fn load_seen(&mut self, peer: [u8; 32], bytes: &[u8]) -> Result<(), crypto::Error> {
        let r: SeenRecord = wire::decode(
            bytes,
            "seen set-ups record",
            SEEN_RECORD_VERSION,
            16 + 33 * SEEN_BASE_KEYS,
        )?;
        if r.seen.len() > SEEN_BASE_KEYS {
            return Err(crypto::Error::TooLarge {
                what: "seen base keys",
                len: r.seen.len(),
                max: SEEN_BASE_KEYS,
            });
        }
        self.orphan_seen.insert(peer, r.seen.into_iter().collect());
        Ok(())
    }

    /// Restores a contact's session from [`Self::to_record`]'s bytes.
    pub fn load(&mut self, peer: [u8; 32], bytes: &[u8]) -> Result<(), crypto::Error> {
        let (mut r, unbound) = decode_record(bytes)?;
        if r.seen.len() > SEEN_BASE_KEYS {
            r.wipe();
            return Err(crypto::Error::TooLarge {
                what: "seen base keys",
                len: r.seen.len(),
                max: SEEN_BASE_KEYS,
            });
        }
        let decoded = Session::from_bytes(&r.session).and_then(|session| {
            let previous = match &r.previous {
                Some(b) => Some(Session::from_bytes(b)?),
                None => None,
            };
            Ok((session, previous))
        });
        r.wipe();
        let (session, mut previous) = decoded?;
        if unbound {
            // A set-up of ours from before the binding, not answered: no
            // peer can read it now. Dropped, the next message sets up anew.
            if previous
                .as_ref()
                .is_some_and(|p| p.pending_initial().is_some())
            {
                previous = None;
            }
            if session.pending_initial().is_some() {
                tracing::info!(
                    peer = %crate::store::hex(&peer[..4]),
                    "an unanswered session set-up from before the identity binding is dropped"
                );
                // The set-ups seen from the peer still count as seen.
                if !r.seen.is_empty() {
                    self.orphan_seen.insert(peer, r.seen.into_iter().collect());
                }
                return Ok(());
            }
        }
        self.by_peer.insert(
            peer,
            Entry {
                session,
                previous,
                seen: r.seen.into_iter().collect(),
            },
        );
        Ok(())
    }

    /// The bytes to store for `peer` (secret: the store seals them).
    pub fn to_record(&self, peer: &[u8; 32]) -> Option<zeroize::Zeroizing<Vec<u8>>> {
        self.record(peer, Session::to_bytes)
    }

    /// [`Self::to_record`] with the live sending chains
    /// ([`Session::to_bytes_exact`]): for the last save before a clean
    /// stop, so that a restart leaves no gap for the peer to skip.
    pub fn to_record_exact(&self, peer: &[u8; 32]) -> Option<zeroize::Zeroizing<Vec<u8>>> {
        self.record(peer, Session::to_bytes_exact)
    }

    /// After the last save before a clean stop: every later
    /// [`Self::encrypt`] fails, as a key past the exact saved counter
    /// could be used again after the restart.
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    fn record(
        &self,
        peer: &[u8; 32],
        encode: fn(&Session) -> zeroize::Zeroizing<Vec<u8>>,
    ) -> Option<zeroize::Zeroizing<Vec<u8>>> {
        self.by_peer.get(peer).map(|e| {
            let mut record = Record {
                version: RECORD_VERSION,
                session: encode(&e.session).to_vec(),
                seen: e.seen.iter().copied().collect(),
                previous: e
                    .previous
                    .as_ref()
                    .map(|p| serde_bytes::ByteBuf::from(encode(p).to_vec())),
            };
            let bytes = zeroize::Zeroizing::new(wire::encode(&record));
            record.wipe();
            bytes
        })
    }

    /// The contacts with a session.
    pub fn peers(&self) -> impl Iterator<Item = &[u8; 32]> {
        self.by_peer.keys()
    }

    /// Encrypts `plaintext` for `peer`, starting a session from `bundle`
    /// if there is none. Returns the frame to send, and whether it may
    /// leave before the session's new state is on disk (its key is behind
    /// a saved form already on disk: see [`Session::sent_key_is_durable`]).
    pub fn encrypt<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        me: &DeviceIdentity,
        peer: &PublicIdentity,
        bundle: &PrekeyBundle,
        plaintext: &[u8],
        rng: &mut R,
    ) -> Result<(Frame, bool), crypto::Error> {
        if self.stopped {
            return Err(crypto::Error::Malformed {
                what: "message after the sessions' last save (the node is stopping)",
            });
        }
        let entry = match self.by_peer.entry(peer.signing) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let verified = bundle.verify()?;
                if verified.body.identity != *peer {
                    return Err(crypto::Error::Malformed {
                        what: "prekey bundle (of another device)",
                    });
                }
                let (agreed, initial, their_ratchet) = initiate(me, &verified, rng)?;
                let session = Session::initiator(&agreed, their_ratchet, Some(initial), rng)?;
                v.insert(Entry {
                    session,
                    previous: None,
                    // What was seen before a restore dropped the last one.
                    seen: self.orphan_seen.remove(&peer.signing).unwrap_or_default(),
                })
            }
        };
        let message = entry.session.encrypt(plaintext)?;
        let durable = entry.session.sent_key_is_durable(&message.header);
        Ok(match entry.session.pending_initial() {
            // The set-up parameters ride along until the peer answers; a
            // session just set up has no saved form on disk, so its first
            // message is never early.
            Some(initial) => (
                Frame::Prekey(PrekeyMessage::new(*initial, message.to_bytes()).to_bytes()),
                durable,
            ),
            None => (Frame::Ratchet(message.to_bytes()), durable),
        })
    }

    /// The base key of the session frames to `peer` are encrypted in now
    /// (`None`: no session, or one from before sessions kept it).
    pub fn current_base_key(&self, peer: &[u8; 32]) -> Option<[u8; 32]> {
        self.by_peer
            .get(peer)
            .and_then(|e| e.session.base_key().copied())
    }

    /// Whether our session with `peer` is one we started and the peer has
    /// not answered yet (its messages still carry the set-up).
    pub fn unanswered(&self, peer: &[u8; 32]) -> bool {
        self.by_peer
            .get(peer)
            .is_some_and(|e| e.session.pending_initial().is_some())
    }

    /// Given a fresher `bundle` of `peer`: if our session with it is one we
    /// started, the peer never answered, from a signed prekey older than
    /// the bundle's, a new session is started from the bundle. The peer
    /// rotates its signed prekeys and forgets old ones after a grace
    /// period, so a set-up from an old one (an old invite's, say) would
    /// never be read. The old session is kept as the previous one, should
    /// the peer answer it after all. Returns whether a new one was started
    /// (queued messages are then encrypted afresh in it).
    pub fn restart_stale<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        me: &DeviceIdentity,
        peer: &PublicIdentity,
        bundle: &PrekeyBundle,
        rng: &mut R,
    ) -> Result<bool, crypto::Error> {
        let Some(entry) = self.by_peer.get_mut(&peer.signing) else {
            return Ok(false);
        };
        let verified = bundle.verify()?;
        if verified.body.identity != *peer {
            return Err(crypto::Error::Malformed {
                what: "prekey bundle (of another device)",
            });
        }
        match entry.session.pending_initial() {
            // Ids only grow: an older bundle served again (by a relay,
            // say) does not move us back.
            Some(i) if verified.body.signed_prekey_id > i.signed_prekey_id => {}
            _ => return Ok(false),
        }
        let (agreed, initial, their_ratchet) = initiate(me, &verified, rng)?;
        entry.replace(Session::initiator(
            &agreed,
            their_ratchet,
            Some(initial),
            rng,
        )?);
        Ok(true)
    }

    /// Tells `peer`'s sessions that the record [`Self::to_record`] just
    /// gave was stored (call only after the write succeeded, with no change
    /// since): see [`Session::note_stored`].
    pub fn note_stored(&mut self, peer: &[u8; 32]) {
        if let Some(e) = self.by_peer.get_mut(peer) {
            e.session.note_stored();
            if let Some(p) = e.previous.as_mut() {
                p.note_stored();
            }
            self.stored.insert(*peer);
        }
    }

    /// Tells the sessions whose records [`Self::note_stored`] noted since
    /// the last call that those records are on disk (the store was
    /// flushed since).
    pub fn mark_saved_durable(&mut self) {
        for peer in self.stored.drain() {
            let Some(e) = self.by_peer.get_mut(&peer) else {
                continue;
            };
            e.session.mark_saved_durable();
            if let Some(p) = e.previous.as_mut() {
                p.mark_saved_durable();
            }
        }
    }

    /// Decrypts a [`Frame::Ratchet`] from `peer`.
    pub fn decrypt_ratchet<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        peer: &[u8; 32],
        bytes: &[u8],
        rng: &mut R,
    ) -> Result<Decrypted, crypto::Error> {
        let entry = self.by_peer.get_mut(peer).ok_or(crypto::Error::Malformed {
            what: "ratchet message (no session with its sender)",
        })?;
        let message = RatchetMessage::from_bytes(bytes)?;
        let plaintext = match entry.session.decrypt(&message, rng) {
            Ok(p) => p,
            Err(e @ crypto::Error::Duplicate { .. }) => return Err(e),
            // Perhaps the session the current one replaced: the peer is
            // still on it. If it reads the message, it is current again.
            Err(e) => match entry.previous.as_mut().map(|p| p.decrypt(&message, rng)) {
                Some(Ok(p)) => {
                    entry.swap();
                    p
                }
                _ => return Err(e),
            },
        };
        Ok(Decrypted {
            plaintext,
            switched: false,
        })
    }

    /// Decrypts a [`Frame::Prekey`] from `peer` (see the module
    /// documentation for which session it ends up in). A one-time prekey
    /// it used is removed from `prekeys` once the message decrypted.
    /// A set-up (one that is not the current or the previous session's,
    /// which costs an X3DH agreement) spends one of `setups`; with none
    /// left it is refused before any agreement, and the peer sends it
    /// again later.
    pub fn decrypt_prekey<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        me: &DeviceIdentity,
        prekeys: &mut PrekeyStore,
        peer: &PublicIdentity,
        bytes: &[u8],
        (rng, setups): (&mut R, &mut u32),
    ) -> Result<Decrypted, crypto::Error> {
        let pm = PrekeyMessage::from_bytes(bytes)?;
        let base = pm.initial.ephemeral;
        let message = RatchetMessage::from_bytes(&pm.message)?;
        if let Some(entry) = self.by_peer.get_mut(&peer.signing) {
            if entry.session.base_key() == Some(&base) {
                let plaintext = entry.session.decrypt(&message, rng)?;
                return Ok(Decrypted {
                    plaintext,
                    switched: false,
                });
            }
            // The set-up of the session we replaced, sent again: the peer
            // is still on it; back to it.
            if let Some(prev) = entry.previous.as_mut()
                && prev.base_key() == Some(&base)
            {
                let plaintext = prev.decrypt(&message, rng)?;
                entry.swap();
                return Ok(Decrypted {
                    plaintext,
                    switched: false,
                });
            }
            if entry.seen.contains(&base) {
                // A set-up already taken over (or a replay): not read, so
                // not acknowledged either. The peer sends its message
                // again, in the session both sides now hold.
                return Err(crypto::Error::Malformed {
                    what: "prekey message of a replaced session",
                });
            }
        }
        if !self.by_peer.contains_key(&peer.signing)
            && self
                .orphan_seen
                .get(&peer.signing)
                .is_some_and(|seen| seen.contains(&base))
        {
            // Seen before the session was dropped (a restore): a replay.
            return Err(crypto::Error::Malformed {
                what: "prekey message of a replaced session",
            });
        }
        if *setups == 0 {
            return Err(crypto::Error::Malformed {
                what: "prekey message: too many session set-ups from this peer for now",
            });
        }
        *setups -= 1;
        let (agreed, ratchet_key) = respond(me, prekeys, peer, &pm.initial)?;
        let mut fresh = Session::responder(&agreed, &ratchet_key, Some(base));
        let plaintext = fresh.decrypt(&message, rng)?;
        if let Some(id) = pm.initial.one_time_prekey_id {
            // Already checked present by `respond`; a second use fails there.
            let _ = prekeys.take_one_time(id);
        }
        let ours_wins = match self.by_peer.get(&peer.signing) {
            // Both started at once: the lower identity key's session wins.
            Some(e) if e.session.pending_initial().is_some() => me.public().signing < peer.signing,
            // Ours has heard from the peer, or there is none: take theirs.
            _ => false,
        };
        let mut switched = false;
        match self.by_peer.get_mut(&peer.signing) {
            None => {
                let mut seen = self.orphan_seen.remove(&peer.signing).unwrap_or_default();
                if seen.len() >= SEEN_BASE_KEYS {
                    seen.pop_front();
                }
                seen.push_back(base);
                self.by_peer.insert(
                    peer.signing,
                    Entry {
                        session: fresh,
                        previous: None,
                        seen,
                    },
                );
            }
            Some(entry) => {
                if entry.seen.len() == SEEN_BASE_KEYS {
                    entry.seen.pop_front();
                }
                entry.seen.push_back(base);
                tracing::debug!(
                    peer = %crate::store::hex(&peer.signing[..4]),
                    ours_wins,
                    "a second session set-up from a contact"
                );
                if !ours_wins {
                    entry.replace(fresh);
                    switched = true;
                }
            }
        }
        Ok(Decrypted {
            plaintext,
            switched,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    struct Device {
        id: DeviceIdentity,
        prekeys: PrekeyStore,
        sessions: Sessions,
    }

    impl Device {
        fn new(rng: &mut StdRng) -> Self {
            let id = DeviceIdentity::generate(rng);
            let prekeys = PrekeyStore::new(&id, 0, rng);
            Self {
                id,
                prekeys,
                sessions: Sessions::new(),
            }
        }

        fn bundle(&self) -> PrekeyBundle {
            self.prekeys
                .bundle(&self.id, [0; 32], &[], 0, false)
                .unwrap()
        }

        fn send(&mut self, to: &Device, text: &[u8], rng: &mut StdRng) -> Frame {
            self.sessions
                .encrypt(&self.id, to.id.public(), &to.bundle(), text, rng)
                .unwrap()
                .0
        }

        fn receive(&mut self, from: &Device, frame: &Frame, rng: &mut StdRng) -> Vec<u8> {
            match frame {
                Frame::Prekey(_) => {
                    self.take_setup(from, frame, &mut { u32::MAX }, rng)
                        .unwrap()
                        .plaintext
                }
                Frame::Ratchet(b) => {
                    self.sessions
                        .decrypt_ratchet(&from.id.public().signing, b, rng)
                        .unwrap()
                        .plaintext
                }
                other => panic!("unexpected {other:?}"),
            }
        }

        /// Reads the set-up frame `f` from `from`, with `left` set-ups
        /// allowed.
        fn take_setup(
            &mut self,
            from: &Device,
            f: &Frame,
            left: &mut u32,
            rng: &mut StdRng,
        ) -> Result<Decrypted, crypto::Error> {
            let Frame::Prekey(bytes) = f else {
                panic!("a set-up message")
            };
            self.sessions.decrypt_prekey(
                &self.id,
                &mut self.prekeys,
                from.id.public(),
                bytes,
                (rng, left),
            )
        }

        /// Replaces the sessions with only `peer`'s, loaded from `record`.
        fn reload(&mut self, peer: [u8; 32], record: &[u8]) {
            let mut reloaded = Sessions::new();
            reloaded.load(peer, record).unwrap();
            self.sessions = reloaded;
        }
    }

    /// A set-up spends one of the peer's allowance; with none left a new
    /// one is refused before any agreement, while the session already set
    /// up still reads.
    #[test]
    fn a_new_session_set_up_spends_the_allowance_and_none_left_refuses_it() {
        let mut rng = StdRng::seed_from_u64(41);
        let mut a = Device::new(&mut rng);
        let mut b = Device::new(&mut rng);
        let first = a.send(&b, b"one", &mut rng);
        let second = a.send(&b, b"two", &mut rng);
        // a loses its sessions and starts another.
        a.sessions = Sessions::new();
        let other = a.send(&b, b"three", &mut rng);
        let take = |b: &mut Device, a: &Device, f: &Frame, left: &mut u32, rng: &mut StdRng| {
            b.take_setup(a, f, left, rng).map(|d| d.plaintext)
        };
        let mut left = 1;
        assert_eq!(
            take(&mut b, &a, &first, &mut left, &mut rng).unwrap(),
            b"one"
        );
        assert_eq!(left, 0);
        assert!(take(&mut b, &a, &other, &mut left, &mut rng).is_err());
        assert_eq!(
            take(&mut b, &a, &second, &mut left, &mut rng).unwrap(),
            b"two"
        );
        let mut left = 1;
        assert_eq!(
            take(&mut b, &a, &other, &mut left, &mut rng).unwrap(),
            b"three"
        );
        assert_eq!(left, 0);
    }

    /// The two devices, the one with the lower identity key first.
    fn lower_first(x: Device, y: Device) -> (Device, Device) {
        if x.id.public().signing < y.id.public().signing {
            (x, y)
        } else {
            (y, x)
        }
    }

    /// Three rounds each way: each reads what the other sends.
    fn talk(a: &mut Device, b: &mut Device, rng: &mut StdRng) {
        for i in 0..3u8 {
            let x = a.send(b, &[i], rng);
            assert_eq!(b.receive(a, &x, rng), [i]);
            let y = b.send(a, &[i, i], rng);
            assert_eq!(a.receive(b, &y, rng), [i, i]);
        }
    }

    #[test]
    fn set_up_then_ratchet_messages_both_ways() {
        let mut rng = StdRng::seed_from_u64(1);
        let (mut a, mut b) = (Device::new(&mut rng), Device::new(&mut rng));
        let f1 = a.send(&b, b"hi", &mut rng);
        assert!(matches!(f1, Frame::Prekey(_)));
        // A retry before any answer carries the same set-up.
        let f2 = a.send(&b, b"again", &mut rng);
        assert_eq!(b.receive(&a, &f1, &mut rng), b"hi");
        assert_eq!(b.receive(&a, &f2, &mut rng), b"again");
        let r = b.send(&a, b"hello", &mut rng);
        assert!(matches!(r, Frame::Ratchet(_)));
        assert_eq!(a.receive(&b, &r, &mut rng), b"hello");
        let f3 = a.send(&b, b"now ratchet", &mut rng);
        assert!(matches!(f3, Frame::Ratchet(_)));
        assert_eq!(b.receive(&a, &f3, &mut rng), b"now ratchet");
    }

    #[test]
    fn a_replayed_set_up_cannot_reset_a_live_session() {
        let mut rng = StdRng::seed_from_u64(2);
        let (mut a, mut b) = (Device::new(&mut rng), Device::new(&mut rng));
        let f1 = a.send(&b, b"hi", &mut rng);
        b.receive(&a, &f1, &mut rng);
        let r = b.send(&a, b"hello", &mut rng);
        a.receive(&b, &r, &mut rng);
        // A fresh set-up from A (it lost its state) is accepted...
        let mut a2 = Device {
            id: DeviceIdentity::from_secret_bytes(&a.id.to_secret_bytes()).unwrap(),
            prekeys: PrekeyStore::new(&a.id, 0, &mut rng),
            sessions: Sessions::new(),
        };
        let g = a2.send(&b, b"restarted", &mut rng);
        assert_eq!(b.receive(&a2, &g, &mut rng), b"restarted");
        // ...but the first set-up, replayed, is refused.
        assert!(b.take_setup(&a, &f1, &mut { u32::MAX }, &mut rng).is_err());
    }

    #[test]
    fn simultaneous_set_ups_settle_on_one_session() {
        let mut rng = StdRng::seed_from_u64(3);
        let (mut a, mut b) = (Device::new(&mut rng), Device::new(&mut rng));
        let fa = a.send(&b, b"from a", &mut rng);
        let fb = b.send(&a, b"from b", &mut rng);
        assert_eq!(b.receive(&a, &fa, &mut rng), b"from a");
        assert_eq!(a.receive(&b, &fb, &mut rng), b"from b");
        // Both now send on the session they settled on; each reads the other.
        talk(&mut a, &mut b, &mut rng);
    }

    /// Two set-ups cross: only the device whose set-up lost learns that it
    /// switched; what it sent in its own session after the first message
    /// is refused, and the same message sent again after the switch is
    /// read.
    #[test]
    fn the_device_whose_set_up_lost_is_told_it_switched() {
        let mut rng = StdRng::seed_from_u64(5);
        // `low` wins: its identity key is the lower.
        let (mut low, mut high) = lower_first(Device::new(&mut rng), Device::new(&mut rng));
        let from_low = low.send(&high, b"low 1", &mut rng);
        let high_1 = high.send(&low, b"high 1", &mut rng);
        let high_2 = high.send(&low, b"high 2", &mut rng);
        let take = |to: &mut Device, from: &Device, f: &Frame, rng: &mut StdRng| {
            to.take_setup(from, f, &mut { u32::MAX }, rng)
        };
        // The winner reads the loser's first message and stays on its own
        // session; the loser's second is refused.
        let read = take(&mut low, &high, &high_1, &mut rng).unwrap();
        assert_eq!(read.plaintext, b"high 1");
        assert!(!read.switched);
        assert!(take(&mut low, &high, &high_2, &mut rng).is_err());
        // The loser takes the winner's set-up and is told it switched.
        let read = take(&mut high, &low, &from_low, &mut rng).unwrap();
        assert_eq!(read.plaintext, b"low 1");
        assert!(read.switched);
        // Sent again now, in the winner's session, it is read.
        let again = high.send(&low, b"high 2", &mut rng);
        assert!(matches!(again, Frame::Ratchet(_)));
        assert_eq!(low.receive(&high, &again, &mut rng), b"high 2");
        talk(&mut low, &mut high, &mut rng);
    }

    #[test]
    fn a_message_is_early_only_after_its_record_was_stored_and_flushed() {
        let mut rng = StdRng::seed_from_u64(8);
        let (mut a, b) = (Device::new(&mut rng), Device::new(&mut rng));
        let key = b.id.public().signing;
        let early = |a: &mut Device, rng: &mut StdRng| {
            a.sessions
                .encrypt(&a.id, b.id.public(), &b.bundle(), b"m", rng)
                .unwrap()
                .1
        };
        assert!(!early(&mut a, &mut rng), "a new session");
        // Flushed without a stored record: still not early.
        assert!(a.sessions.to_record(&key).is_some());
        a.sessions.mark_saved_durable();
        assert!(!early(&mut a, &mut rng));
        // Stored, then flushed: early.
        assert!(a.sessions.to_record(&key).is_some());
        a.sessions.note_stored(&key);
        assert!(!early(&mut a, &mut rng), "stored, not yet flushed");
        a.sessions.mark_saved_durable();
        assert!(early(&mut a, &mut rng));
    }

    #[test]
    fn nothing_is_encrypted_after_the_last_save_before_a_stop() {
        let mut rng = StdRng::seed_from_u64(7);
        let (mut a, b) = (Device::new(&mut rng), Device::new(&mut rng));
        a.send(&b, b"before", &mut rng);
        let key = b.id.public().signing;
        assert!(a.sessions.to_record_exact(&key).is_some());
        a.sessions.stop();
        assert!(
            a.sessions
                .encrypt(&a.id, b.id.public(), &b.bundle(), b"after", &mut rng)
                .is_err()
        );
    }

    #[test]
    fn sessions_survive_a_reload() {
        let mut rng = StdRng::seed_from_u64(4);
        let (mut a, mut b) = (Device::new(&mut rng), Device::new(&mut rng));
        let f = a.send(&b, b"hi", &mut rng);
        b.receive(&a, &f, &mut rng);
        let key = a.id.public().signing;
        let saved = b.sessions.to_record(&key).unwrap();
        b.reload(key, &saved);
        let r = b.send(&a, b"after reload", &mut rng);
        assert_eq!(a.receive(&b, &r, &mut rng), b"after reload");
        assert!(
            Sessions::new()
                .load(key, &saved[..saved.len() - 1])
                .is_err()
        );
    }

    /// The largest record a contact can have — its session and the one it
    /// replaced, both with a full skipped-key store, and every set-up
    /// remembered — still fits the store's sessions tree, and loads.
    #[test]
    fn the_largest_record_fits_the_store() {
        let mut rng = StdRng::seed_from_u64(6);
        let (mut a, mut b) = (Device::new(&mut rng), Device::new(&mut rng));
        let f = a.send(&b, b"hi", &mut rng);
        b.receive(&a, &f, &mut rng);
        // Gaps of just under `MAX_SKIP`, until bob holds the most
        // skipped keys he keeps.
        let key = a.id.public().signing;
        for _ in 0..3 {
            let mut last = None;
            for _ in 0..crypto::limits::MAX_SKIP {
                last = Some(a.send(&b, b"lost", &mut rng));
            }
            b.receive(&a, &last.unwrap(), &mut rng);
        }
        let entry = b.sessions.by_peer.get_mut(&key).unwrap();
        assert_eq!(
            entry.session.skipped_len(),
            crypto::limits::MAX_SKIPPED_TOTAL
        );
        entry.previous = Some(entry.session.clone());
        entry.seen = (0..SEEN_BASE_KEYS).map(|i| [i as u8; 32]).collect();
        let record = b.sessions.to_record(&key).unwrap();
        let max = crate::store::Kind::Sessions.spec().max_plain;
        assert!(record.len() > 256 * 1024, "{} bytes", record.len());
        assert!(record.len() <= max, "{} bytes over {max}", record.len());
        b.reload(key, &record);
        let r = a.send(&b, b"still", &mut rng);
        assert_eq!(b.receive(&a, &r, &mut rng), b"still");
    }

    #[test]
    fn a_late_set_up_does_not_leave_the_two_sides_on_different_sessions() {
        let mut rng = StdRng::seed_from_u64(5);
        // `lo` has the lower identity key: its set-up wins a tie.
        let (mut lo, mut hi) = lower_first(Device::new(&mut rng), Device::new(&mut rng));
        // Both start at once.
        let from_lo = lo.send(&hi, b"lo 1", &mut rng);
        let from_hi = hi.send(&lo, b"hi 1", &mut rng);
        // hi takes lo's set-up (lo's wins) and answers in it; lo hears it.
        assert_eq!(hi.receive(&lo, &from_lo, &mut rng), b"lo 1");
        let answer = hi.send(&lo, b"hi 2", &mut rng);
        assert!(matches!(answer, Frame::Ratchet(_)));
        assert_eq!(lo.receive(&hi, &answer, &mut rng), b"hi 2");
        // hi's first set-up arrives late (a slow path): lo, whose session
        // has heard from hi, takes it as hi starting over.
        assert_eq!(lo.receive(&hi, &from_hi, &mut rng), b"hi 1");
        // The two are now on different sessions; each still reads the
        // other, and they settle on one.
        talk(&mut lo, &mut hi, &mut rng);
        // Also after a reload (the previous session is stored).
        let key = hi.id.public().signing;
        let saved = lo.sessions.to_record(&key).unwrap();
        lo.reload(key, &saved);
        let m = lo.send(&hi, b"after reload", &mut rng);
        assert_eq!(hi.receive(&lo, &m, &mut rng), b"after reload");
    }

    /// A record from before the identity binding: a session it holds that
    /// still waits for its set-up to be answered is dropped (no upgraded
    /// peer can read that set-up); an answered one is kept.
    #[test]
    fn an_unanswered_set_up_from_before_the_binding_is_dropped_an_answered_one_kept() {
        let mut rng = StdRng::seed_from_u64(7);
        let (mut a, mut b) = (Device::new(&mut rng), Device::new(&mut rng));
        let f = a.send(&b, b"hi", &mut rng);
        b.receive(&a, &f, &mut rng);
        let unbound = |d: &Device, peer: &[u8; 32]| {
            let e = &d.sessions.by_peer[peer];
            wire::encode(&Record {
                version: RECORD_VERSION_UNBOUND,
                session: e.session.to_bytes().to_vec(),
                seen: e.seen.iter().copied().collect(),
                previous: None,
            })
        };
        let (a_key, b_key) = (a.id.public().signing, b.id.public().signing);
        assert!(
            a.sessions.by_peer[&b_key]
                .session
                .pending_initial()
                .is_some()
        );
        let old = unbound(&a, &b_key);
        a.reload(b_key, &old);
        assert!(!a.sessions.has(&b_key), "unanswered: dropped");
        let old = unbound(&b, &a_key);
        b.reload(a_key, &old);
        assert!(b.sessions.has(&a_key), "answered: kept");
        let r = b.send(&a, b"still", &mut rng);
        assert!(matches!(r, Frame::Ratchet(_)));
    }

    #[test]
    fn a_record_from_before_previous_sessions_loads() {
        let mut rng = StdRng::seed_from_u64(6);
        let (mut a, mut b) = (Device::new(&mut rng), Device::new(&mut rng));
        let f = a.send(&b, b"hi", &mut rng);
        b.receive(&a, &f, &mut rng);
        let key = a.id.public().signing;
        let e = &b.sessions.by_peer[&key];
        let old = wire::encode(&RecordV1 {
            version: 1,
            session: e.session.to_bytes().to_vec(),
            seen: e.seen.iter().copied().collect(),
        });
        b.reload(key, &old);
        let r = b.send(&a, b"still", &mut rng);
        assert_eq!(a.receive(&b, &r, &mut rng), b"still");
    }
}
