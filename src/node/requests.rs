//! Contact requests: devices that added our invite and introduced
//! themselves ([`crate::crypto::ContentKind::Intro`], or a session set-up
//! with their invite beside it, `Introduced`) while we have not added
//! theirs. Each waits, with the first envelopes it sent us, until the
//! person accepts it (it becomes a contact and those envelopes are read)
//! or declines it.
//!
//! Everything here is fed by strangers, so everything is bounded: how many
//! requests, how much each holds, how many declined devices are
//! remembered. The store thread keeps each request and each declined
//! device in the store as well ([`Requests::record`]), written in the
//! round that changed it: envelopes kept with a request were taken from a
//! relay, which deletes them once that round is on disk.

use std::collections::{HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::crypto::{Envelope, PublicIdentity, fingerprint, wire};

use super::state::Invite;

/// The most requests waiting; past it new ones are refused (those waiting
/// stay: a flood of strangers cannot push out a request already shown).
pub const MAX_REQUESTS: usize = 64;
/// The most envelopes one request holds.
pub const MAX_HELD: usize = 64;
/// The most bytes of envelopes one request holds.
pub const MAX_HELD_BYTES: usize = 256 * 1024;
/// The most declined devices remembered (oldest forgotten first).
pub const MAX_DECLINED: usize = 1024;
/// The most removed contacts remembered (oldest forgotten first): one
/// that writes again is a request.
pub const MAX_FORMER: usize = 1024;
/// The largest stored record: an envelope a request holds (a request's
/// own record, its identity and invite, is under 10 KiB).
pub const RECORD_MAX: usize = crate::crypto::limits::MAX_ENVELOPE + 1024;

const RECORD_VERSION: u8 = 1;
/// Record key prefixes: a request, a declined device, an envelope a
/// request holds, a removed contact.
const WAITING: u8 = 0;
const DECLINED: u8 = 1;
const HELD: u8 = 2;
const FORMER: u8 = 3;

/// A request as stored (what it holds is stored beside it, one record per
/// envelope, so holding one writes only that envelope).
#[derive(Serialize, Deserialize)]
struct RequestRecord {
    version: u8,
    identity: PublicIdentity,
    #[serde(with = "serde_bytes")]
    invite: Vec<u8>,
    received_at: u64,
}

/// The store key of `key`'s request.
pub fn request_key(key: &[u8; 32]) -> Vec<u8> {
    [&[WAITING][..], key].concat()
}

/// The store key of `key` as a declined device.
pub fn declined_key(key: &[u8; 32]) -> Vec<u8> {
    [&[DECLINED][..], key].concat()
}

/// A request's record, or a removed contact's (`at`: when it came, or
/// when it was removed).
fn encode_record(identity: &PublicIdentity, invite: &Invite, at: u64) -> Vec<u8> {
    wire::encode(&RequestRecord {
        version: RECORD_VERSION,
        identity: identity.clone(),
        invite: invite.to_bytes(),
        received_at: at,
    })
}

/// The store key of `key` as a removed contact.
pub fn former_key(key: &[u8; 32]) -> Vec<u8> {
    [&[FORMER][..], key].concat()
}

/// The prefix of the store keys of what `key`'s request holds.
pub fn held_prefix(key: &[u8; 32]) -> Vec<u8> {
    [&[HELD][..], key].concat()
}

/// The store key of the `n`th envelope (from 0, in arrival order) that
/// `key`'s request holds.
pub fn held_key(key: &[u8; 32], n: usize) -> Vec<u8> {
    let n = u16::try_from(n).unwrap_or(u16::MAX);
    [&held_prefix(key)[..], &n.to_be_bytes()].concat()
}

/// A device that wants to be a contact.
#[derive(Debug, Clone)]
pub struct Request {
    /// Its identity keys.
    pub identity: PublicIdentity,
    /// Their fingerprint (worked out once: it costs thousands of hashes).
    pub fingerprint: String,
    /// Its invite, checked.
    pub invite: Invite,
    /// When its introduction first came (Unix seconds).
    pub received_at: u64,
    /// Envelopes it sent us, oldest first.
    pub held: Vec<Envelope>,
    held_bytes: usize,
}

impl Request {
    fn new(identity: PublicIdentity, invite: Invite, received_at: u64) -> Self {
        Self {
            fingerprint: fingerprint(&identity),
            identity,
            invite,
            received_at,
            held: Vec::new(),
            held_bytes: 0,
        }
    }
}

/// What an introduction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Introduced {
    /// A new request, with the device's fingerprint: show it.
    New(String),
    /// A request already waiting. `true`: its invite is the newer one
    /// now (it names addresses, and other ones); `false`: nothing changed.
    Again(bool),
    /// The person declined this device: ignored.
    Declined,
    /// [`MAX_REQUESTS`] are waiting: refused.
    Full,
}

/// The requests waiting, and the devices declined.
#[derive(Debug, Default)]
pub struct Requests {
    waiting: HashMap<[u8; 32], Request>,
    declined: HashSet<[u8; 32]>,
    declined_order: VecDeque<[u8; 32]>,
    /// Removed contacts: their identity and invite (as the contact was
    /// kept), and when they were removed.
    former: HashMap<[u8; 32], (PublicIdentity, Invite, u64)>,
    former_order: VecDeque<[u8; 32]>,
}

impl Requests {
    /// The introduction of `identity` with its checked `invite`.
    pub fn introduce(&mut self, identity: PublicIdentity, invite: Invite, now: u64) -> Introduced {
        let key = identity.signing;
        if self.declined.contains(&key) {
            return Introduced::Declined;
        }
        if let Some(r) = self.waiting.get_mut(&key) {
            // Taken only for new addresses (a node that restarted names
            // none until asked for an invite): its bundle is needed only
            // to start a session, and accepting fetches a fresh one. So a
            // device introducing itself again and again does not make the
            // request be written again and again.
            if invite.addrs.is_empty() || invite.addrs == r.invite.addrs {
                return Introduced::Again(false);
            }
            r.invite = invite;
            return Introduced::Again(true);
        }
        if self.waiting.len() >= MAX_REQUESTS {
            return Introduced::Full;
        }
        let request = Request::new(identity, invite, now);
        let fingerprint = request.fingerprint.clone();
        self.waiting.insert(key, request);
        Introduced::New(fingerprint)
    }

    /// Whether a request of `key` waits for the person.
    pub fn is_waiting(&self, key: &[u8; 32]) -> bool {
        self.waiting.contains_key(key)
    }

    /// Whether `key` was declined.
    pub fn is_declined(&self, key: &[u8; 32]) -> bool {
        self.declined.contains(key)
    }

    /// Whether an introduction of `key` naming `addrs` would change
    /// nothing: a request of it waits, and `addrs` are none or its own.
    pub fn unchanged(&self, key: &[u8; 32], addrs: &[String]) -> bool {
        self.waiting
            .get(key)
            .is_some_and(|r| addrs.is_empty() || r.invite.addrs == addrs)
    }

    /// Keeps `env`, from the device `from`, with its request; returns its
    /// place among what the request holds (for [`held_key`]). `None`
    /// (dropped) if it has none, its request holds all it may, or holds
    /// that envelope already (its copy from the mesh and from a relay).
    pub fn hold(&mut self, from: &[u8; 32], env: &Envelope) -> Option<usize> {
        let r = self.waiting.get_mut(from)?;
        let len = env.sealed.len();
        if r.held.len() >= MAX_HELD
            || r.held_bytes + len > MAX_HELD_BYTES
            || r.held.iter().any(|h| h.envelope_id == env.envelope_id)
        {
            return None;
        }
        r.held_bytes += len;
        r.held.push(env.clone());
        Some(r.held.len() - 1)
    }

    /// The requests waiting, oldest first.
    pub fn list(&self) -> Vec<&Request> {
        let mut all: Vec<&Request> = self.waiting.values().collect();
        all.sort_by_key(|r| (r.received_at, r.identity.signing));
        all
    }

    /// Takes the request of `key` to accept it.
    pub fn take(&mut self, key: &[u8; 32]) -> Option<Request> {
        self.waiting.remove(key)
    }

    /// Puts back a request taken to accept it, whose acceptance failed.
    pub fn restore(&mut self, request: Request) {
        self.waiting.insert(request.identity.signing, request);
    }

    /// Declines the request of `key`: what it held goes, and its later
    /// introductions are ignored (a removed contact is forgotten as
    /// such). `None` if no request of it waits; else
    /// the declined device forgotten to make room, if one was.
    pub fn decline(&mut self, key: &[u8; 32]) -> Option<Option<[u8; 32]>> {
        self.waiting.remove(key)?;
        // A removed contact declined is a declined device like any other
        // (its record goes with the request's).
        if self.former.remove(key).is_some() {
            self.former_order.retain(|k| k != key);
        }
        Some(self.remember_declined(*key))
    }

    fn remember_declined(&mut self, key: [u8; 32]) -> Option<[u8; 32]> {
        if !self.declined.insert(key) {
            return None;
        }
        self.declined_order.push_back(key);
        if self.declined_order.len() > MAX_DECLINED {
            let old = self.declined_order.pop_front()?;
            self.declined.remove(&old);
            return Some(old);
        }
        None
    }

    /// The contact `identity` was removed: remembered with its `invite`,
    /// so that if it writes again it is a request (not dropped unseen: it
    /// still has a session with us, so its envelopes carry no invite).
    /// Returns a removed contact forgotten to make room (delete its
    /// record).
    pub fn removed(
        &mut self,
        identity: PublicIdentity,
        invite: Invite,
        now: u64,
    ) -> Option<[u8; 32]> {
        let key = identity.signing;
        self.former_order.retain(|k| *k != key);
        self.former_order.push_back(key);
        self.former.insert(key, (identity, invite, now));
        if self.former.len() > MAX_FORMER {
            let old = self.former_order.pop_front()?;
            self.former.remove(&old);
            return Some(old);
        }
        None
    }

    /// Whether a contact that groups made, now forgotten, may be kept as
    /// a former one: only in the first half of the list, and never by
    /// pushing out another, so that made-up group members cannot crowd
    /// out the contacts the person removed.
    pub fn has_room_for_made(&self) -> bool {
        self.former.len() < MAX_FORMER / 2
    }

    /// What a removed contact `key` was known by, if it was removed and
    /// no request of it waits.
    pub fn former(&self, key: &[u8; 32]) -> Option<(PublicIdentity, Invite)> {
        if self.waiting.contains_key(key) {
            return None;
        }
        self.former
            .get(key)
            .map(|(i, inv, _)| (i.clone(), inv.clone()))
    }

    /// Whether `key` is remembered as a removed contact.
    pub fn is_former(&self, key: &[u8; 32]) -> bool {
        self.former.contains_key(key)
    }

    /// The stored form of the removed contact `key`, if remembered.
    pub fn former_record(&self, key: &[u8; 32]) -> Option<Vec<u8>> {
        let (identity, invite, at) = self.former.get(key)?;
        Some(encode_record(identity, invite, *at))
    }

    /// The stored form of `key`'s request (`None`: none waits).
    pub fn record(&self, key: &[u8; 32]) -> Option<Vec<u8>> {
        let r = self.waiting.get(key)?;
        Some(encode_record(&r.identity, &r.invite, r.received_at))
    }

    /// Requests, what they hold, and declined devices as stored (records
    /// in key order; the value of a declined device is when it was
    /// declined, u64 BE; an envelope held is stored as sent). Records that
    /// do not read are skipped and returned by key, to delete; so are
    /// requests past [`MAX_REQUESTS`] and envelopes past a request's
    /// bounds or of no request.
    pub fn load(&mut self, records: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<Vec<u8>> {
        let mut bad = Vec::new();
        let mut declined: Vec<(u64, [u8; 32])> = Vec::new();
        let mut waiting: Vec<Request> = Vec::new();
        let mut held: Vec<([u8; 32], Vec<u8>, Vec<u8>)> = Vec::new();
        let mut former: Vec<Request> = Vec::new();
        for (k, v) in records {
            if k.first() == Some(&HELD) && k.len() == 1 + 32 + 2 {
                let mut key = [0; 32];
                key.copy_from_slice(&k[1..33]);
                held.push((key, k, v));
                continue;
            }
            let Some(key) = k.get(1..).and_then(|b| <[u8; 32]>::try_from(b).ok()) else {
                bad.push(k);
                continue;
            };
            match k[0] {
                DECLINED => match <[u8; 8]>::try_from(v.as_slice()) {
                    Ok(at) => declined.push((u64::from_be_bytes(at), key)),
                    Err(_) => bad.push(k),
                },
                WAITING => match Self::read(&v) {
                    Some(r) if r.identity.signing == key => waiting.push(r),
                    _ => bad.push(k),
                },
                FORMER => match Self::read(&v) {
                    Some(r) if r.identity.signing == key => former.push(r),
                    _ => bad.push(k),
                },
                _ => bad.push(k),
            }
        }
        // The oldest requests, should there be more than may wait.
        waiting.sort_by_key(|r| (r.received_at, r.identity.signing));
        for r in waiting {
            let key = r.identity.signing;
            if self.waiting.len() < MAX_REQUESTS {
                self.waiting.insert(key, r);
            } else {
                bad.push(request_key(&key));
            }
        }
        former.sort_by_key(|r| (r.received_at, r.identity.signing));
        for r in former {
            if let Some(old) = self.removed(r.identity, r.invite, r.received_at) {
                bad.push(former_key(&old));
            }
        }
        declined.sort();
        for (_, key) in declined {
            if let Some(old) = self.remember_declined(key) {
                bad.push(declined_key(&old));
            }
        }
        // Key order is arrival order within a request. Places must follow
        // on from 0 (the next one held is stored at the next place); after
        // one that does not read, the rest of that request's go too.
        for (key, k, v) in held {
            let kept = self.waiting.get_mut(&key).is_some_and(|r| {
                let Ok(env) = Envelope::from_bytes(&v) else {
                    return false;
                };
                let len = env.sealed.len();
                let place = usize::from(u16::from_be_bytes([k[33], k[34]]));
                if place != r.held.len()
                    || r.held.len() >= MAX_HELD
                    || r.held_bytes + len > MAX_HELD_BYTES
                {
                    return false;
                }
                r.held_bytes += len;
                r.held.push(env);
                true
            });
            if !kept {
                bad.push(k);
            }
        }
        bad
    }

    fn read(bytes: &[u8]) -> Option<Request> {
        let r: RequestRecord =
            wire::decode(bytes, "contact request", RECORD_VERSION, RECORD_MAX).ok()?;
        let invite = Invite::from_bytes(&r.invite).ok()?;
        Some(Request::new(r.identity, invite, r.received_at))
    }

    /// `key` became a contact by other means (the person added its
    /// invite): no request of it waits, it is not declined any more, nor
    /// a removed contact.
    pub fn forget(&mut self, key: &[u8; 32]) -> Option<Request> {
        if self.declined.remove(key) {
            self.declined_order.retain(|k| k != key);
        }
        if self.former.remove(key).is_some() {
            self.former_order.retain(|k| k != key);
        }
        self.waiting.remove(key)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::crypto::{DeviceIdentity, PrekeyStore};

    fn stranger(rng: &mut StdRng) -> (PublicIdentity, Invite) {
        let id = DeviceIdentity::generate(rng);
        let prekeys = PrekeyStore::new(&id, 0, rng);
        let bundle = prekeys.bundle(&id, [1; 32], &[], 0, false).unwrap();
        (id.public().clone(), Invite::new(bundle, Vec::new()))
    }

    fn envelope(n: u8, len: usize) -> Envelope {
        Envelope::new([0; 32], [n; 16], 100, vec![n; len])
    }

    /// A removed contact is remembered (bounded, oldest forgotten first,
    /// read back from its records) until a request of it waits, it is
    /// declined, or it is a contact again.
    #[test]
    fn removed_contacts_are_remembered_within_bounds() {
        let mut rng = StdRng::seed_from_u64(11);
        let mut r = Requests::default();
        let (a, a_inv) = stranger(&mut rng);
        let (b, b_inv) = stranger(&mut rng);
        assert_eq!(r.removed(a.clone(), a_inv.clone(), 5), None);
        assert_eq!(r.removed(b.clone(), b_inv.clone(), 6), None);
        let (who, invite) = r.former(&a.signing).unwrap();
        assert_eq!((who, invite), (a.clone(), a_inv.clone()));
        // Read back from its records, and garbage under its prefix skipped.
        let mut again = Requests::default();
        let bad = again.load(vec![
            (former_key(&a.signing), r.former_record(&a.signing).unwrap()),
            (former_key(&[7; 32]), vec![1, 2, 3]),
        ]);
        assert_eq!(bad, vec![former_key(&[7; 32])]);
        assert!(again.former(&a.signing).is_some());
        // A request of it waiting: not made again from the record.
        r.introduce(a.clone(), a_inv, 7);
        assert!(r.former(&a.signing).is_none());
        // Declined: forgotten as a removed contact.
        r.decline(&a.signing).unwrap();
        assert!(r.former_record(&a.signing).is_none());
        // A contact again: forgotten.
        r.forget(&b.signing);
        assert!(r.former(&b.signing).is_none());
        // The oldest goes first past the bound.
        let mut forgotten = None;
        for n in 0..=MAX_FORMER as u64 {
            let (x, x_inv) = stranger(&mut rng);
            let out = r.removed(x.clone(), x_inv, 10 + n);
            if n == 0 {
                forgotten = Some(x.signing);
            }
            if n == MAX_FORMER as u64 {
                assert_eq!(out, forgotten);
            } else {
                assert_eq!(out, None);
            }
        }
    }

    /// Requests are bounded in number and in what each holds; a request
    /// already waiting stays when the rest are full; a declined device is
    /// ignored until it is made a contact some other way.
    #[test]
    fn requests_are_bounded_and_declined_devices_stay_declined() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut r = Requests::default();
        let devices: Vec<_> = (0..=MAX_REQUESTS).map(|_| stranger(&mut rng)).collect();
        for (i, (id, inv)) in devices.iter().take(MAX_REQUESTS).enumerate() {
            assert!(matches!(
                r.introduce(id.clone(), inv.clone(), i as u64),
                Introduced::New(_)
            ));
        }
        let (late, late_invite) = devices[MAX_REQUESTS].clone();
        assert_eq!(
            r.introduce(late.clone(), late_invite.clone(), 99),
            Introduced::Full
        );
        let (first, first_invite) = devices[0].clone();
        assert_eq!(
            r.introduce(first.clone(), first_invite.clone(), 99),
            Introduced::Again(false)
        );
        let mut elsewhere = first_invite.clone();
        elsewhere.addrs = vec!["/ip4/127.0.0.1/tcp/9".into()];
        assert_eq!(
            r.introduce(first.clone(), elsewhere.clone(), 99),
            Introduced::Again(true)
        );
        assert_eq!(
            r.introduce(first.clone(), first_invite.clone(), 99),
            Introduced::Again(false)
        );
        assert_eq!(r.list()[0].invite.addrs, elsewhere.addrs);
        assert_eq!(r.list().len(), MAX_REQUESTS);
        assert_eq!(r.list()[0].identity, first);
        assert_eq!(r.list()[0].received_at, 0);

        // Held: at most MAX_HELD envelopes and MAX_HELD_BYTES.
        for n in 0..MAX_HELD {
            assert!(r.hold(&first.signing, &envelope(n as u8, 100)).is_some());
        }
        assert!(r.hold(&first.signing, &envelope(0, 100)).is_none());
        let second = devices[1].0.signing;
        assert!(
            r.hold(&second.clone(), &envelope(1, MAX_HELD_BYTES - 10))
                .is_some()
        );
        assert!(r.hold(&second, &envelope(2, 11)).is_none());
        assert!(
            r.hold(&second, &envelope(1, 1)).is_none(),
            "a copy of one held"
        );
        assert!(r.hold(&second, &envelope(3, 10)).is_some());
        assert!(
            r.hold(&late.signing, &envelope(4, 1)).is_none(),
            "no request, nothing held"
        );

        // Declined: the request and what it held go; it is ignored after.
        assert!(r.decline(&first.signing).is_some());
        assert!(r.decline(&first.signing).is_none());
        assert_eq!(
            r.introduce(first.clone(), first_invite.clone(), 100),
            Introduced::Declined
        );
        assert!(r.hold(&first.signing, &envelope(5, 1)).is_none());
        // There is room again for the one refused.
        assert!(matches!(
            r.introduce(late, late_invite, 100),
            Introduced::New(_)
        ));
        // Added as a contact by the person: declined no more.
        assert!(r.forget(&first.signing).is_none());
        r.take(&devices[2].0.signing).unwrap();
        assert!(matches!(
            r.introduce(first, first_invite, 101),
            Introduced::New(_)
        ));
        let taken = r.take(&second).unwrap();
        assert_eq!(taken.held.len(), 2);
    }

    /// What is stored reads back the same: requests with what they hold,
    /// declined devices (the newest MAX_DECLINED of them); records that do
    /// not read, or are filed under another key, are named to delete.
    #[test]
    fn stored_requests_and_declined_devices_read_back() {
        let mut rng = StdRng::seed_from_u64(9);
        let mut r = Requests::default();
        let (a, a_inv) = stranger(&mut rng);
        let (b, b_inv) = stranger(&mut rng);
        let (c, c_inv) = stranger(&mut rng);
        r.introduce(a.clone(), a_inv, 5);
        r.introduce(b.clone(), b_inv, 6);
        r.introduce(c.clone(), c_inv, 7);
        assert!(r.hold(&a.signing, &envelope(1, 40)).is_some());
        assert!(r.hold(&a.signing, &envelope(2, 50)).is_some());
        r.decline(&c.signing).unwrap();
        assert!(r.record(&c.signing).is_none());
        let mut records = vec![
            (held_key(&a.signing, 0), envelope(1, 40).to_bytes()),
            (held_key(&a.signing, 1), envelope(2, 50).to_bytes()),
            // Of no request, and past a gap.
            (held_key(&c.signing, 0), envelope(3, 10).to_bytes()),
            (held_key(&b.signing, 1), envelope(4, 10).to_bytes()),
            (request_key(&a.signing), r.record(&a.signing).unwrap()),
            (request_key(&b.signing), r.record(&b.signing).unwrap()),
            (declined_key(&c.signing), 3u64.to_be_bytes().to_vec()),
            // Garbage, a request filed under another device's key, a
            // declined time that is not 8 bytes, a key of another length.
            (request_key(&[9; 32]), vec![1, 2, 3]),
            (request_key(&c.signing), r.record(&b.signing).unwrap()),
            (declined_key(&[8; 32]), vec![0; 7]),
            (vec![WAITING, 1, 2], Vec::new()),
        ];
        // More declined devices than are remembered, older than `c`.
        for n in 0..MAX_DECLINED as u64 {
            let mut k = [7; 32];
            k[..8].copy_from_slice(&n.to_be_bytes());
            records.push((declined_key(&k), 1u64.to_be_bytes().to_vec()));
        }
        let mut back = Requests::default();
        let bad = back.load(records);
        assert_eq!(
            bad.len(),
            7,
            "four unreadable, the oldest declined one, two held envelopes out of place"
        );
        assert!(bad.contains(&held_key(&c.signing, 0)));
        assert!(bad.contains(&held_key(&b.signing, 1)));
        assert!(bad.contains(&request_key(&c.signing)));
        let mut oldest = [7; 32];
        oldest[..8].copy_from_slice(&0u64.to_be_bytes());
        assert!(bad.contains(&declined_key(&oldest)));
        let listed: Vec<_> = back
            .list()
            .iter()
            .map(|q| (q.identity.signing, q.received_at, q.held.len()))
            .collect();
        assert_eq!(listed, vec![(a.signing, 5, 2), (b.signing, 6, 0)]);
        assert_eq!(
            back.take(&a.signing).unwrap().held,
            r.take(&a.signing).unwrap().held
        );
        assert_eq!(
            back.introduce(c, stranger(&mut rng).1, 9),
            Introduced::Declined
        );
    }

    /// Only the most recent MAX_DECLINED declined devices are remembered.
    #[test]
    fn the_oldest_declined_device_is_forgotten_first() {
        let mut rng = StdRng::seed_from_u64(8);
        let mut r = Requests::default();
        let (first, first_invite) = stranger(&mut rng);
        r.introduce(first.clone(), first_invite.clone(), 0);
        r.decline(&first.signing);
        let (id, inv) = stranger(&mut rng);
        for n in 0..MAX_DECLINED {
            // Distinct keys without making a thousand identities.
            let mut id = id.clone();
            id.signing[..8].copy_from_slice(&(n as u64).to_be_bytes());
            r.introduce(id.clone(), inv.clone(), 1);
            assert!(r.decline(&id.signing).is_some());
        }
        assert!(matches!(
            r.introduce(first, first_invite, 2),
            Introduced::New(_)
        ));
    }
}
