//! The relay's mailbox service: answers [`Request`]s from its spool and
//! store under the operator's [`Limits`]. Synchronous, no network: the
//! relay's store thread ([`super::server`]) feeds it requests, syncs the
//! spool when [`Answer::flush`] says so, and only then sends the response
//! (a custody receipt is a promise that the envelopes are on disk).
//!
//! Prekeys (rare, small) live in the store's `HeldPrekeys` records, and
//! the store is flushed before such a request is answered: a one-time
//! prekey is handed out once, even across a crash.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use libp2p::PeerId;

use super::metrics::Metrics;
use serde::{Deserialize, Serialize};

use super::proto::{
    Custody, CustodyReceipt, MAX_FETCH, MAX_FETCH_BYTES, MAX_HELD_ONE_TIME, MAX_REQUEST_SKEW, Mail,
    Owner, OwnerRequest, Publish, Refusal, Request, Response, Signed, envelope_digest,
};
use crate::crypto::{
    DeviceIdentity, Envelope, MailboxId, OneTimePublic, PrekeyBundle,
    limits::{MAX_ENVELOPE, ONE_TIME_PREKEY_HAND_OUT_SECS},
};
use crate::node::net::{RateLimit, RateLimiter};
use crate::store::{self, Kind, Spool, Store, ToHold, digest_key};

/// Most owner-request nonces remembered (each until twice the clock skew
/// allowed has passed since the time it carries); when full, new owner
/// requests are refused until some age out.
const MAX_NONCES: usize = 300_000;
/// Most of them from one peer: a peer over it is refused (`RateLimited`)
/// until its own age out, and cannot fill the table for everyone (with at
/// most 512 inbound connections, all peers together stay under
/// [`MAX_NONCES`]). A device asks a few times a minute; draining 100,000
/// envelopes takes about 200 requests.
const PEER_NONCES: u32 = 512;
/// Most envelopes dropped per purge call (the store thread purges again at
/// its next tick if more are due).
pub(crate) const PURGE_BATCH: usize = 10_000;

/// What a relay keeps for one mailbox's prekeys.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct HeldPrekeys {
    version: u8,
    /// The latest bundle published (without a one-time prekey).
    bundle: PrekeyBundle,
    /// One-time prekeys not handed out yet, oldest first.
    one_time: Vec<OneTimePublic>,
    /// The highest one-time prekey id ever taken: a later publish adds
    /// only ids above it, so one handed out never comes back.
    max_id: u32,
    /// When the owner last published (Unix seconds): a bundle not
    /// published again for twice the retention goes.
    published_at: u64,
    /// When each of `one_time` was published, in the same order: one is
    /// handed out only within `ONE_TIME_PREKEY_HAND_OUT_SECS` of it, since
    /// its owner forgets it some time later.
    one_time_at: Vec<u64>,
}

const HELD_PREKEYS_VERSION: u8 = 3;

impl HeldPrekeys {
    /// Drops the one-time prekeys published too long ago to be handed out
    /// (their owner forgets them); returns how many.
    fn drop_stale(&mut self, now: u64) -> usize {
        // Oldest first, so they lead.
        let stale = self
            .one_time_at
            .iter()
            .take_while(|at| now.saturating_sub(**at) >= ONE_TIME_PREKEY_HAND_OUT_SECS)
            .count();
        self.one_time.drain(..stale);
        self.one_time_at.drain(..stale);
        stale
    }
}
/// How often held bundles are checked for their age (seconds).
const BUNDLE_CHECK_EVERY: u64 = 3600;
/// Held bundles read per step of that check (each up to 32 KiB).
const BUNDLE_STEP: usize = 256;
/// One-time prekeys handed out per mailbox per hour at most; past that a
/// bundle goes without one (X3DH works without it). Anyone may ask for a
/// bundle, so without this a stranger could take a device's whole pool
/// in a minute, and every new session after would go without one.
const ONE_TIME_PER_HOUR: u32 = 20;
/// Mailboxes whose hand-outs are counted at once (the count is dropped,
/// all of it, past this: a lapse, not a failure).
const ONE_TIME_COUNTED: usize = 65_536;
const HELD_PREKEYS_MAX: usize = 32 * 1024;

/// Decodes a held-prekeys record (None if it does not decode: the next
/// publish replaces it).
/// [`HeldPrekeys`] as version 1 wrote it (no publish time).
#[derive(Deserialize, Serialize)]
struct HeldPrekeysV1 {
    version: u8,
    bundle: PrekeyBundle,
    one_time: Vec<OneTimePublic>,
    max_id: u32,
}

/// [`HeldPrekeys`] as version 2 wrote it (no publish time per one-time
/// prekey).
#[derive(Deserialize, Serialize)]
struct HeldPrekeysV2 {
    version: u8,
    bundle: PrekeyBundle,
    one_time: Vec<OneTimePublic>,
    max_id: u32,
    published_at: u64,
}

/// Decodes held prekeys of any version. A version-1 record has no publish
/// time (0), and the age check stamps it with the time it first sees it.
/// The one-time prekeys of versions 1 and 2 have no publish time of their
/// own: they count as published at 0, so they are not handed out (their
/// owner may have forgotten them), and its next publish brings new ones.
fn decode_held(bytes: &[u8]) -> Option<HeldPrekeys> {
    let what = "held prekeys";
    let decoded = match bytes.first() {
        Some(1) => crate::crypto::wire::decode::<HeldPrekeysV1>(bytes, what, 1, HELD_PREKEYS_MAX)
            .map(|v1| HeldPrekeys {
                version: HELD_PREKEYS_VERSION,
                bundle: v1.bundle,
                one_time_at: vec![0; v1.one_time.len()],
                one_time: v1.one_time,
                max_id: v1.max_id,
                published_at: 0,
            }),
        Some(2) => crate::crypto::wire::decode::<HeldPrekeysV2>(bytes, what, 2, HELD_PREKEYS_MAX)
            .map(|v2| HeldPrekeys {
                version: HELD_PREKEYS_VERSION,
                bundle: v2.bundle,
                one_time_at: vec![0; v2.one_time.len()],
                one_time: v2.one_time,
                max_id: v2.max_id,
                published_at: v2.published_at,
            }),
        _ => crate::crypto::wire::decode::<HeldPrekeys>(
            bytes,
            what,
            HELD_PREKEYS_VERSION,
            HELD_PREKEYS_MAX,
        )
        .and_then(|h| {
            if h.one_time_at.len() == h.one_time.len() {
                Ok(h)
            } else {
                Err(crate::crypto::Error::Malformed { what })
            }
        }),
    };
    decoded
        .map_err(|e| tracing::warn!(error = %e, "held prekeys unreadable; treated as none"))
        .ok()
}

/// What an operator bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest an envelope is held (seconds), and never past its own expiry.
    pub retention_secs: u64,
    /// Most envelopes held for one mailbox.
    pub max_count: u64,
    /// Most bytes held for one mailbox.
    pub max_bytes: u64,
    /// Largest envelope accepted.
    pub max_envelope: usize,
    /// Most envelope bytes held in all; deposits beyond are refused.
    pub disk_budget: u64,
    /// Most mailboxes whose prekeys are held (each at most 32 KiB: a
    /// bundle and [`MAX_HELD_ONE_TIME`] one-time prekeys); a first publish
    /// beyond is refused `DiskFull`.
    pub max_bundles: u64,
    /// Deposit requests one peer may make.
    pub deposit_rate: RateLimit,
    /// Deposited KiB one peer may send.
    pub deposit_kib_rate: RateLimit,
    /// Fetch and ack requests one peer may make.
    pub owner_rate: RateLimit,
    /// Prekey requests (publish and fetch) one peer may make: each one
    /// flushes the store, and each fetch hands out a one-time prekey.
    pub prekey_rate: RateLimit,
    /// How many peers' budgets are tracked.
    pub rate_peers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            retention_secs: 14 * 24 * 3600,
            max_count: 10_000,
            max_bytes: 64 * 1024 * 1024,
            max_envelope: MAX_ENVELOPE,
            disk_budget: 10 * 1024 * 1024 * 1024,
            max_bundles: 50_000,
            deposit_rate: RateLimit {
                burst: 2_000,
                per_second: 1_000,
            },
            deposit_kib_rate: RateLimit {
                burst: 64 * 1024,
                per_second: 16 * 1024,
            },
            owner_rate: RateLimit {
                burst: 2_000,
                per_second: 1_000,
            },
            prekey_rate: RateLimit {
                burst: 20,
                per_second: 2,
            },
            rate_peers: 4096,
        }
    }
}

/// A fetch that found nothing and asked to wait: the store thread holds it
/// and answers when mail for `mailbox` arrives or the wait is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Park {
    /// The owner's mailbox.
    pub mailbox: [u8; 32],
    /// The fetch's cursor.
    pub after: Option<u64>,
    /// The fetch's limit.
    pub limit: usize,
    /// Seconds it asked to wait.
    pub wait_secs: u16,
}

/// The service's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<R = Response> {
    /// What to send back (unless `park` says to wait).
    pub response: R,
    /// Whether the store must be flushed before it is sent.
    pub flush: bool,
    /// Hold the request instead of answering now.
    pub park: Option<Park>,
    /// Mailboxes that got new mail (waiting fetches for them can be
    /// answered after the flush).
    pub woke: Vec<[u8; 32]>,
}

impl<R> Answer<R> {
    fn now(response: R) -> Self {
        Self {
            response,
            flush: false,
            park: None,
            woke: Vec::new(),
        }
    }

    fn map<S>(self, f: impl FnOnce(R) -> S) -> Answer<S> {
        Answer {
            response: f(self.response),
            flush: self.flush,
            park: self.park,
            woke: self.woke,
        }
    }
}

/// An answer before it is sent: ready, or a custody receipt still to be
/// signed ([`Service::finish`]). The relay's store thread signs while its
/// sync thread waits on the disk, so that the signature is not added to
/// the time a depositor waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// Nothing left to do.
    Ready(Response),
    /// A custody receipt to sign.
    Custody(Custody),
}

/// Mailboxes held by a relay.
pub struct Service {
    spool: Spool,
    store: Arc<Store>,
    /// Mailboxes whose prekeys are held.
    bundles: u64,
    identity: DeviceIdentity,
    limits: Limits,
    metrics: Arc<Metrics>,
    deposits: RateLimiter,
    deposit_kib: RateLimiter,
    owners: RateLimiter,
    prekey_requests: RateLimiter,
    /// Nonces remembered: the time each carries and the peer that sent it.
    nonces: HashMap<[u8; 16], (u64, PeerId)>,
    /// The same, by the time they carry (so they age out in that order).
    nonce_order: BTreeSet<(u64, [u8; 16])>,
    /// How many each peer has in the table.
    peer_nonces: HashMap<PeerId, u32>,
    /// One-time prekeys handed out this hour, per mailbox.
    one_time_given: HashMap<[u8; 32], (u64, u32)>,
    /// When held bundles were last checked for their age.
    bundles_checked_at: u64,
    /// Where that check goes on (a walk in steps), if one is on.
    bundle_cursor: Option<Vec<u8>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A service over `spool` (mail) and `store` (prekeys), signing
    /// custody receipts as `identity` and counting into `metrics` (whose
    /// gauges it sets from the spool).
    pub fn new(
        spool: Spool,
        store: Arc<Store>,
        identity: DeviceIdentity,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> Result<Self, store::Error> {
        let bundles = store.records(Kind::HeldPrekeys)?.len() as u64;
        let s = Self {
            spool,
            store,
            bundles,
            identity,
            deposits: RateLimiter::new(limits.deposit_rate, limits.rate_peers),
            deposit_kib: RateLimiter::new(limits.deposit_kib_rate, limits.rate_peers),
            owners: RateLimiter::new(limits.owner_rate, limits.rate_peers),
            prekey_requests: RateLimiter::new(limits.prekey_rate, limits.rate_peers),
            limits,
            metrics,
            nonces: HashMap::new(),
            nonce_order: BTreeSet::new(),
            peer_nonces: HashMap::new(),
            one_time_given: HashMap::new(),
            bundles_checked_at: 0,
            bundle_cursor: None,
        };
        s.refresh_gauges();
        s.metrics
            .prekey_bundles
            .store(s.bundles, std::sync::atomic::Ordering::Relaxed);
        Ok(s)
    }

    /// The metrics it counts into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Makes every change so far durable: the point after which deposits
    /// and acknowledgements may be answered.
    pub fn sync(&mut self) -> Result<(), store::Error> {
        self.spool.sync()
    }

    /// The file to sync before answering for what was written so far, if
    /// anything was (see [`Spool::take_unsynced`]).
    pub fn take_unsynced(&mut self) -> Result<Option<Arc<std::fs::File>>, store::Error> {
        self.spool.take_unsynced()
    }

    /// Reclaims spool space (see [`Spool::compact`]); returns whether it
    /// did anything.
    pub fn compact(&mut self) -> Result<bool, store::Error> {
        self.spool.compact()
    }

    /// The spool it answers from.
    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Sets the held-mail gauges from the spool's totals (called after
    /// every change to what is held).
    pub fn refresh_gauges(&self) {
        let t = self.spool.totals();
        let m = &self.metrics;
        m.mailboxes
            .store(t.mailboxes, std::sync::atomic::Ordering::Relaxed);
        m.envelopes
            .store(t.envelopes, std::sync::atomic::Ordering::Relaxed);
        m.bytes.store(t.bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Answers `request` from `peer` at `now` (Unix seconds). A store
    /// failure is an error: the caller answers nothing, the peer retries.
    pub fn handle(
        &mut self,
        peer: &PeerId,
        request: Request,
        now: u64,
    ) -> Result<Answer, store::Error> {
        let answer = self.handle_unsigned(peer, request, now)?;
        Ok(answer.map(|out| self.finish(out)))
    }

    /// As [`Service::handle`], leaving a custody receipt unsigned: the
    /// caller passes the answer through [`Service::finish`] before sending
    /// it.
    pub fn handle_unsigned(
        &mut self,
        peer: &PeerId,
        request: Request,
        now: u64,
    ) -> Result<Answer<Outgoing>, store::Error> {
        let ready = |r| Answer::now(Outgoing::Ready(r));
        let answer = match request {
            Request::Deposit(envelopes) => self.deposit(peer, envelopes, now)?,
            Request::Fetch(f) => match self.authorize(peer, &f, now) {
                Err(r) => ready(Response::Refused(r)),
                Ok(mailbox) => {
                    let limit = usize::from(f.body.limit).clamp(1, MAX_FETCH);
                    let response = self.mail(&mailbox.0, f.body.after, limit, now)?;
                    let empty =
                        matches!(&response, Response::Mail { items, .. } if items.is_empty());
                    if !(empty && f.body.wait_secs > 0) {
                        self.count_fetch(&response);
                    }
                    let mut a = ready(response);
                    if empty && f.body.wait_secs > 0 {
                        a.park = Some(Park {
                            mailbox: mailbox.0,
                            after: f.body.after,
                            limit,
                            wait_secs: f.body.wait_secs,
                        });
                    }
                    a
                }
            },
            Request::PublishPrekeys(_) | Request::FetchPrekeys { .. }
                if !self.prekey_requests.allow(peer, Instant::now()) =>
            {
                ready(Response::Refused(Refusal::RateLimited))
            }
            Request::PublishPrekeys(p) => match self.authorize(peer, &p, now) {
                Err(r) => ready(Response::Refused(r)),
                Ok(mailbox) => ready(self.publish(&mailbox.0, p.body, now)?),
            },
            Request::FetchPrekeys { mailbox } => {
                if self.owners.allow(peer, Instant::now()) {
                    ready(self.hand_out(&mailbox, now)?)
                } else {
                    ready(Response::Refused(Refusal::RateLimited))
                }
            }
            Request::Ack(a) => match self.authorize(peer, &a, now) {
                Err(r) => ready(Response::Refused(r)),
                Ok(mailbox) => {
                    let removed = self.spool.ack(&mailbox.0, &a.body.seqs)?;
                    Metrics::add(&self.metrics.acked_envelopes, removed.count);
                    self.refresh_gauges();
                    // Even when nothing is removed now: the envelopes may
                    // have gone in an earlier round whose sync is still
                    // under way (an ack sent again), and the answer says
                    // they are gone.
                    Answer {
                        flush: true,
                        ..ready(Response::Acked(
                            u32::try_from(removed.count).unwrap_or(u32::MAX),
                        ))
                    }
                }
            },
        };
        if let Outgoing::Ready(Response::Refused(r)) = &answer.response {
            self.metrics.refused(*r);
        }
        Ok(answer)
    }

    /// The response to send for `out`: a custody receipt is signed here.
    pub fn finish(&self, out: Outgoing) -> Response {
        match out {
            Outgoing::Ready(response) => response,
            Outgoing::Custody(custody) => {
                Response::Custody(CustodyReceipt::sign_custody(&self.identity, custody))
            }
        }
    }

    /// The prekeys held for `mailbox` (None if none, or if the record does
    /// not decode: it is then replaced by the next publish).
    fn held_prekeys(&self, mailbox: &[u8; 32]) -> Result<Option<HeldPrekeys>, store::Error> {
        let bytes = self.store.records(Kind::HeldPrekeys)?.get(mailbox)?;
        Ok(bytes.as_deref().and_then(decode_held))
    }

    /// Writes `held` for `mailbox` and flushes the store.
    fn keep_prekeys(&self, mailbox: &[u8; 32], held: &HeldPrekeys) -> Result<(), store::Error> {
        self.store
            .records(Kind::HeldPrekeys)?
            .put(mailbox, &crate::crypto::wire::encode(held))?;
        self.store.flush()?;
        Ok(())
    }

    /// Holds the bundle and new one-time prekeys `p` for `mailbox` (whose
    /// owner signed the request).
    fn publish(
        &mut self,
        mailbox: &[u8; 32],
        p: Publish,
        now: u64,
    ) -> Result<Response, store::Error> {
        let refused = |r| Ok(Response::Refused(r));
        let Ok(verified) = p.bundle.verify() else {
            return refused(Refusal::BadSignature);
        };
        // The bundle must name this very mailbox, and every one-time
        // prekey be signed by the bundle's identity.
        if verified.body.mailbox_id != *mailbox
            || p.one_time
                .iter()
                .any(|k| verified.check_one_time(k).is_err())
        {
            return refused(Refusal::BadSignature);
        }
        let bytes = self.store.records(Kind::HeldPrekeys)?.get(mailbox)?;
        // Counted by the record's presence, even one that does not decode.
        let new_mailbox = bytes.is_none();
        let held = bytes.as_deref().and_then(decode_held);
        if new_mailbox && self.bundles >= self.limits.max_bundles {
            return refused(Refusal::DiskFull);
        }
        let mut next = match held {
            Some(h) => {
                let old = h.bundle.verify().ok().map(|v| v.body);
                if old
                    .as_ref()
                    .is_some_and(|b| b.created_at > verified.body.created_at)
                {
                    return refused(Refusal::Stale);
                }
                // A new identity on the same mailbox: the old one-time
                // prekeys are of no use to it.
                if old.is_some_and(|b| b.identity == verified.body.identity) {
                    h
                } else {
                    HeldPrekeys {
                        one_time: Vec::new(),
                        one_time_at: Vec::new(),
                        max_id: 0,
                        ..h
                    }
                }
            }
            None => HeldPrekeys {
                version: HELD_PREKEYS_VERSION,
                bundle: p.bundle.clone(),
                one_time: Vec::new(),
                one_time_at: Vec::new(),
                max_id: 0,
                published_at: now,
            },
        };
        next.bundle = p.bundle;
        next.published_at = now;
        next.bundle.one_time = None;
        // The count answered tells the owner whether to send more: the
        // stale ones do not count.
        next.drop_stale(now);
        // Only ids above any taken before: one handed out never returns.
        let mut fresh: Vec<OneTimePublic> = p
            .one_time
            .into_iter()
            .filter(|k| k.id > next.max_id)
            .collect();
        fresh.sort_by_key(|k| k.id);
        fresh.dedup_by_key(|k| k.id);
        for k in fresh {
            if next.one_time.len() >= MAX_HELD_ONE_TIME {
                break;
            }
            next.max_id = next.max_id.max(k.id);
            next.one_time.push(k);
            next.one_time_at.push(now);
        }
        self.keep_prekeys(mailbox, &next)?;
        if new_mailbox {
            self.bundles += 1;
            Metrics::add(&self.metrics.prekey_bundles, 1);
        }
        Ok(Response::Published(
            u32::try_from(next.one_time.len()).unwrap_or(u32::MAX),
        ))
    }

    /// The bundle held for `mailbox`, with the oldest one-time prekey left
    /// (taken out, and the store flushed, before it is answered).
    fn hand_out(&mut self, mailbox: &[u8; 32], now: u64) -> Result<Response, store::Error> {
        let Some(mut held) = self.held_prekeys(mailbox)? else {
            return Ok(Response::Prekeys(None));
        };
        let mut bundle = held.bundle.clone();
        Metrics::add(&self.metrics.prekey_fetches, 1);
        let hour = now / 3600;
        if self.one_time_given.len() >= ONE_TIME_COUNTED
            && !self.one_time_given.contains_key(mailbox)
        {
            self.one_time_given.retain(|_, (h, _)| *h == hour);
            if self.one_time_given.len() >= ONE_TIME_COUNTED {
                self.one_time_given.clear();
            }
        }
        let given = self.one_time_given.entry(*mailbox).or_insert((hour, 0));
        if given.0 != hour {
            *given = (hour, 0);
        }
        let mut changed = held.drop_stale(now) > 0;
        if !held.one_time.is_empty() && given.1 < ONE_TIME_PER_HOUR {
            given.1 += 1;
            bundle.one_time = Some(held.one_time.remove(0));
            held.one_time_at.remove(0);
            changed = true;
            Metrics::add(&self.metrics.one_time_prekeys_handed_out, 1);
        }
        if changed {
            self.keep_prekeys(mailbox, &held)?;
        }
        Ok(Response::Prekeys(Some(bundle)))
    }

    /// Counts a fetch answered with `response` (a held one is counted
    /// when it is answered, not when it starts waiting).
    pub fn count_fetch(&self, response: &Response) {
        if let Response::Mail { items, .. } = response {
            Metrics::add(&self.metrics.fetches, 1);
            Metrics::add(&self.metrics.fetched_envelopes, items.len() as u64);
        }
    }

    /// Mail of `mailbox` after `after`: at most `limit` envelopes and
    /// [`MAX_FETCH_BYTES`] (but at least one), none past its expiry.
    pub fn mail(
        &self,
        mailbox: &[u8; 32],
        after: Option<u64>,
        limit: usize,
        now: u64,
    ) -> Result<Response, store::Error> {
        // One envelope past either bound, to tell whether there is more;
        // nothing beyond it is read.
        let held = self.spool.fetch_within(
            mailbox,
            after,
            (limit.clamp(1, MAX_FETCH) + 1, MAX_FETCH_BYTES),
            now,
        )?;
        let mut items = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        for h in held {
            if items.len() >= limit
                || (!items.is_empty() && bytes + h.envelope.len() > MAX_FETCH_BYTES)
            {
                more = true;
                break;
            }
            bytes += h.envelope.len();
            items.push(Mail {
                seq: h.seq,
                envelope: h.envelope,
            });
        }
        Ok(Response::Mail { items, more })
    }

    fn deposit(
        &mut self,
        peer: &PeerId,
        raw: Vec<serde_bytes::ByteBuf>,
        now: u64,
    ) -> Result<Answer<Outgoing>, store::Error> {
        let refused = |r| Ok(Answer::now(Outgoing::Ready(Response::Refused(r))));
        let total: usize = raw.iter().map(|b| b.len()).sum();
        let kib = u32::try_from(total.div_ceil(1024)).unwrap_or(u32::MAX);
        let t = Instant::now();
        if !self.deposits.allow(peer, t) || !self.deposit_kib.allow_n(peer, kib, t) {
            return refused(Refusal::RateLimited);
        }
        // Every check first: a deposit is taken whole or not at all.
        let mut items = Vec::with_capacity(raw.len());
        let mut digests = Vec::with_capacity(raw.len());
        // Per mailbox: envelopes and bytes added, and whether file chunks
        // are among them.
        let mut per_mailbox: HashMap<[u8; 32], (u64, u64, bool)> = HashMap::new();
        for bytes in raw {
            if bytes.len() > self.limits.max_envelope {
                return refused(Refusal::TooLarge);
            }
            let Ok(env) = Envelope::from_bytes(&bytes) else {
                return refused(Refusal::Malformed);
            };
            if env.expires_at <= now {
                return refused(Refusal::Expired);
            }
            let keep_until = env
                .expires_at
                .min(now.saturating_add(self.limits.retention_secs));
            let digest = envelope_digest(&bytes);
            digests.push(digest);
            let digest = digest_key(&digest);
            let e = per_mailbox.entry(env.mailbox_id).or_default();
            // The same bytes already held (a repeat after a lost receipt)
            // are answered with their receipt again and take no more room.
            // Held by digest, not by envelope id: an id claimed first by
            // other bytes does not keep these out. A copy held for less
            // time than this deposit would be kept (the relay's retention
            // is shorter than the envelope's life, and it came earlier)
            // does not count: the new receipt must not vouch for a copy
            // the next purge drops, so the bytes are held again.
            if !self.spool.holds(&env.mailbox_id, &digest, keep_until) {
                e.0 += 1;
                e.1 += bytes.len() as u64;
                e.2 |= env.sealed.first() == Some(&crate::crypto::media::RELAYED_CHUNK);
            }
            items.push(ToHold {
                mailbox: env.mailbox_id,
                digest,
                expires_at: keep_until,
                envelope: bytes.into_vec(),
            });
        }
        let held = self.spool.totals().bytes;
        let adding: u64 = per_mailbox.values().map(|(_, bytes, _)| bytes).sum();
        if held.saturating_add(adding) > self.limits.disk_budget {
            return refused(Refusal::DiskFull);
        }
        for (mailbox, (count, bytes, files)) in &per_mailbox {
            let stats = self.spool.stats(mailbox);
            // Files fill at most three quarters of a mailbox's bytes: the
            // rest stays for messages.
            let max_bytes = if *files {
                self.limits.max_bytes - self.limits.max_bytes / 4
            } else {
                self.limits.max_bytes
            };
            if stats.count + count > self.limits.max_count || stats.bytes + bytes > max_bytes {
                return refused(Refusal::QuotaFull);
            }
        }
        let done = self.spool.deposit(&items, now)?;
        let m = &self.metrics;
        Metrics::add(&m.deposits, 1);
        Metrics::add(&m.deposited_envelopes, done.new);
        self.refresh_gauges();
        Ok(Answer {
            flush: true,
            // Only a mailbox that got something new wakes its fetches: a
            // repeat of what it holds gives them nothing to take.
            woke: per_mailbox
                .into_iter()
                .filter(|(_, (count, _, _))| *count > 0)
                .map(|(mailbox, _)| mailbox)
                .collect(),
            ..Answer::now(Outgoing::Custody(Custody {
                relay: self.identity.public().signing,
                stored_at: now,
                envelopes: digests,
            }))
        })
    }

    /// Admits an owner's request: within the peer's rate, addressed to us,
    /// fresh, new nonce, a valid signature by a key that owns the mailbox
    /// (whose id it returns). Only then is its nonce remembered.
    fn authorize<T: OwnerRequest>(
        &mut self,
        peer: &PeerId,
        signed: &Signed<T>,
        now: u64,
    ) -> Result<MailboxId, Refusal> {
        if !self.owners.allow(peer, Instant::now()) {
            return Err(Refusal::RateLimited);
        }
        let owner = signed.body.owner();
        self.owner_ok(peer, owner, now)?;
        let mailbox = signed.verify().map_err(|_| Refusal::BadSignature)?;
        self.remember(peer, owner);
        Ok(mailbox)
    }

    /// Freshness of an owner's request: its time near ours, its nonce new.
    fn owner_ok(&mut self, peer: &PeerId, owner: &Owner, now: u64) -> Result<(), Refusal> {
        if owner.relay != self.identity.public().signing {
            return Err(Refusal::WrongRelay);
        }
        if !owner.is_fresh(now) {
            return Err(Refusal::Stale);
        }
        self.forget_nonces(now);
        if self.nonces.contains_key(&owner.nonce) {
            return Err(Refusal::Stale);
        }
        // Forgetting one early would let it be replayed: refuse instead,
        // until the window moves on.
        if self.nonces.len() >= MAX_NONCES
            || self
                .peer_nonces
                .get(peer)
                .is_some_and(|&n| n >= PEER_NONCES)
        {
            return Err(Refusal::RateLimited);
        }
        Ok(())
    }

    /// Remembers a verified request's nonce for the skew window.
    fn remember(&mut self, peer: &PeerId, owner: &Owner) {
        if self.nonces.insert(owner.nonce, (owner.at, *peer)).is_none() {
            self.nonce_order.insert((owner.at, owner.nonce));
            *self.peer_nonces.entry(*peer).or_default() += 1;
        }
    }

    /// Drops nonces whose time is older than the window.
    fn forget_nonces(&mut self, now: u64) {
        while let Some(&(at, nonce)) = self.nonce_order.first() {
            if at.saturating_add(2 * MAX_REQUEST_SKEW) >= now {
                break;
            }
            self.nonce_order.pop_first();
            if let Some((_, peer)) = self.nonces.remove(&nonce)
                && let Some(n) = self.peer_nonces.get_mut(&peer)
            {
                *n -= 1;
                if *n == 0 {
                    self.peer_nonces.remove(&peer);
                }
            }
        }
    }

    /// Drops the prekeys of mailboxes whose owner has not published for
    /// twice the retention (and records that do not open or decode):
    /// otherwise bundles only ever accumulate, and once `max_bundles` is
    /// reached every new device is refused. Walks the records in steps of
    /// [`BUNDLE_STEP`], one step per call, from where the last call
    /// stopped; returns how many went in this step, and whether the walk
    /// is done (it starts again at the next check).
    pub fn expire_bundles(&mut self, now: u64) -> Result<(usize, bool), store::Error> {
        let ttl = self.limits.retention_secs.saturating_mul(2);
        let records = self.store.records(Kind::HeldPrekeys)?;
        let step = records.step(self.bundle_cursor.as_deref(), BUNDLE_STEP)?;
        let done = step.len() < BUNDLE_STEP;
        self.bundle_cursor = if done {
            None
        } else {
            step.last().map(|(k, _)| k.clone())
        };
        let mut gone = 0;
        for (key, value) in step {
            match value.as_deref().and_then(decode_held) {
                // Written before publish times were kept: from now on.
                Some(mut h) if h.published_at == 0 => {
                    h.published_at = now;
                    records.put(&key, &crate::crypto::wire::encode(&h))?;
                }
                Some(h) if h.published_at.saturating_add(ttl) >= now => {}
                _ => {
                    records.remove(&key)?;
                    gone += 1;
                }
            }
        }
        if gone > 0 {
            // Each was counted (by its record's presence).
            self.bundles = self.bundles.saturating_sub(gone as u64);
            self.metrics
                .prekey_bundles
                .store(self.bundles, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                bundles = gone,
                "prekeys of mailboxes not published again dropped"
            );
        }
        Ok((gone, done))
    }

    /// Drops envelopes past their expiry or the retention period (up to
    /// a batch; call again while it returns a full one). Returns how many
    /// (their senders learn it from their own outbox, which gives up at
    /// the same time).
    pub fn purge(&mut self, now: u64) -> Result<usize, store::Error> {
        // One step of the bundles' age check per purge while a walk is
        // on; a walk starts every `BUNDLE_CHECK_EVERY`.
        if self.bundle_cursor.is_some()
            || now >= self.bundles_checked_at.saturating_add(BUNDLE_CHECK_EVERY)
        {
            if self.bundle_cursor.is_none() {
                self.bundles_checked_at = now;
            }
            self.expire_bundles(now)?;
        }
        let gone = self.spool.purge_expired(now, PURGE_BATCH)?;
        Metrics::add(&self.metrics.expired_envelopes, gone.len() as u64);
        self.refresh_gauges();
        Ok(gone.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{KdfParams, Keystore, MailboxKey};
    use crate::relay::proto::{Ack, Fetch, Signed};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    struct Fixture {
        dir: tempfile::TempDir,
        key: crate::crypto::DataKey,
        /// A copy of the relay's identity (to restart the service as it).
        identity: DeviceIdentity,
        service: Service,
        relay: [u8; 32],
        rng: StdRng,
        owner: MailboxKey,
        peer: PeerId,
    }

    fn fixture(limits: Limits) -> Fixture {
        let mut rng = StdRng::seed_from_u64(3);
        let dir = tempfile::tempdir().unwrap();
        let key = Keystore::create(b"r", KdfParams::INSECURE_FAST, &mut rng)
            .unwrap()
            .1;
        let identity = DeviceIdentity::generate(&mut rng);
        let relay = identity.public().signing;
        let owner = MailboxKey::generate(&mut rng);
        let copy = DeviceIdentity::from_secret_bytes(&identity.to_secret_bytes()).unwrap();
        Fixture {
            service: open(dir.path(), &key, copy, limits),
            identity,
            dir,
            key,
            relay,
            rng,
            owner,
            peer: PeerId::random(),
        }
    }

    fn open(
        dir: &std::path::Path,
        key: &crate::crypto::DataKey,
        identity: DeviceIdentity,
        limits: Limits,
    ) -> Service {
        let store = Arc::new(Store::open(dir, key).unwrap());
        let spool = Spool::open(dir.join("spool"), key).unwrap();
        Service::new(spool, store, identity, limits, Arc::default()).unwrap()
    }

    fn envelope(to: &MailboxKey, n: u8, expires_at: u64, len: usize) -> Vec<u8> {
        Envelope::new(to.id().0, [n; 16], expires_at, vec![n; len]).to_bytes()
    }

    fn deposit(list: &[Vec<u8>]) -> Request {
        Request::Deposit(
            list.iter()
                .map(|b| serde_bytes::ByteBuf::from(b.clone()))
                .collect(),
        )
    }

    fn fetch(f: &mut Fixture, now: u64) -> Request {
        let owner = Owner::new(&f.owner, f.relay, now, &mut f.rng);
        Request::Fetch(Signed::new(
            &f.owner,
            Fetch {
                owner,
                after: None,
                limit: 10,
                wait_secs: 0,
            },
        ))
    }

    #[test]
    fn deposit_custody_fetch_ack() {
        let mut f = fixture(Limits::default());
        let mail = vec![
            envelope(&f.owner, 1, 5_000, 300),
            envelope(&f.owner, 2, 5_000, 300),
        ];
        let peer = f.peer;
        let a = f.service.handle(&peer, deposit(&mail), 1_000).unwrap();
        assert!(a.flush);
        let Response::Custody(receipt) = a.response else {
            panic!("{:?}", a.response)
        };
        receipt.verify(&f.relay, &mail).unwrap();

        let req = fetch(&mut f, 1_000);
        let a = f.service.handle(&peer, req.clone(), 1_000).unwrap();
        let Response::Mail { items, more } = a.response else {
            panic!("{:?}", a.response)
        };
        assert!(!more);
        assert_eq!(
            items.iter().map(|m| m.envelope.clone()).collect::<Vec<_>>(),
            mail
        );
        // The same signed request again: a replay.
        assert_eq!(
            f.service.handle(&peer, req, 1_001).unwrap().response,
            Response::Refused(Refusal::Stale)
        );
        let owner = Owner::new(&f.owner, f.relay, 1_002, &mut f.rng);
        let ack = Request::Ack(Signed::new(
            &f.owner,
            Ack {
                owner,
                seqs: items.iter().map(|m| m.seq).collect(),
            },
        ));
        let a = f.service.handle(&peer, ack, 1_002).unwrap();
        assert_eq!(a.response, Response::Acked(2));
        assert!(a.flush);
        let req = fetch(&mut f, 1_003);
        assert_eq!(
            f.service.handle(&peer, req, 1_003).unwrap().response,
            Response::Mail {
                items: vec![],
                more: false
            }
        );
    }

    #[test]
    fn other_bytes_under_an_envelope_id_do_not_keep_the_real_envelope_out() {
        let mut f = fixture(Limits::default());
        let peer = f.peer;
        let real = envelope(&f.owner, 1, 5_000, 300);
        // Someone who saw the id go by deposits other bytes under it first.
        let squatter = Envelope::new(f.owner.id().0, [1; 16], 5_000, vec![7; 300]).to_bytes();
        // The last is a repeat of the real one (its receipt was lost):
        // held once.
        for (mail, held) in [(&squatter, 1), (&real, 2), (&real, 2)] {
            let a = f
                .service
                .handle(&peer, deposit(std::slice::from_ref(mail)), 1_000);
            let Response::Custody(receipt) = a.unwrap().response else {
                panic!("deposit refused")
            };
            receipt
                .verify(&f.relay, std::slice::from_ref(mail))
                .unwrap();
            assert_eq!(f.service.spool().stats(&f.owner.id().0).count, held);
        }
        let req = fetch(&mut f, 1_000);
        let Response::Mail { items, .. } = f.service.handle(&peer, req, 1_000).unwrap().response
        else {
            panic!("fetch refused")
        };
        let got: Vec<Vec<u8>> = items.into_iter().map(|m| m.envelope).collect();
        assert_eq!(got, vec![squatter, real]);
    }

    #[test]
    fn only_the_owner_reads_and_stale_requests_are_refused() {
        let mut f = fixture(Limits::default());
        let peer = f.peer;
        let mail = vec![envelope(&f.owner, 1, 5_000, 300)];
        f.service.handle(&peer, deposit(&mail), 1_000).unwrap();
        // Signed by another key, naming this mailbox's key: refused.
        let other = MailboxKey::generate(&mut f.rng);
        let owner = Owner::new(&f.owner, f.relay, 1_000, &mut f.rng);
        let forged = Request::Fetch(Signed::new(
            &other,
            Fetch {
                owner,
                after: None,
                limit: 10,
                wait_secs: 0,
            },
        ));
        assert_eq!(
            f.service.handle(&peer, forged, 1_000).unwrap().response,
            Response::Refused(Refusal::BadSignature)
        );
        // The other key's own mailbox is empty: it sees nothing of ours.
        let owner = Owner::new(&other, f.relay, 1_000, &mut f.rng);
        let own = Request::Fetch(Signed::new(
            &other,
            Fetch {
                owner,
                after: None,
                limit: 10,
                wait_secs: 0,
            },
        ));
        assert_eq!(
            f.service.handle(&peer, own, 1_000).unwrap().response,
            Response::Mail {
                items: vec![],
                more: false
            }
        );
        // Addressed to another relay (a relay replaying it here).
        let owner = Owner::new(&f.owner, [9; 32], 1_000, &mut f.rng);
        let elsewhere = Request::Fetch(Signed::new(
            &f.owner,
            Fetch {
                owner,
                after: None,
                limit: 10,
                wait_secs: 0,
            },
        ));
        assert_eq!(
            f.service.handle(&peer, elsewhere, 1_000).unwrap().response,
            Response::Refused(Refusal::WrongRelay)
        );
        // Too old.
        let old = fetch(&mut f, 1_000 - MAX_REQUEST_SKEW - 1);
        assert_eq!(
            f.service.handle(&peer, old, 1_000).unwrap().response,
            Response::Refused(Refusal::Stale)
        );
    }

    /// One peer cannot fill the replay memory for everyone: past its share
    /// it is refused while another peer is served, and its share comes back
    /// as its nonces age out (by the time they carry, even one stamped
    /// ahead of the rest).
    #[test]
    fn one_peer_holds_at_most_its_share_of_the_replay_memory() {
        let mut f = fixture(Limits::default());
        let greedy = f.peer;
        let other = PeerId::random();
        let answer = |f: &mut Fixture, peer: &PeerId, at: u64, now: u64| {
            let request = fetch(f, at);
            f.service.handle(peer, request, now).unwrap().response
        };
        let empty = Response::Mail {
            items: vec![],
            more: false,
        };
        // One stamped 200 s ahead, then the rest at the present.
        assert_eq!(answer(&mut f, &greedy, 1_200, 1_000), empty);
        for _ in 1..PEER_NONCES {
            assert_eq!(answer(&mut f, &greedy, 1_000, 1_000), empty);
        }
        assert_eq!(
            answer(&mut f, &greedy, 1_000, 1_000),
            Response::Refused(Refusal::RateLimited)
        );
        assert_eq!(answer(&mut f, &other, 1_000, 1_000), empty);
        // Past the window of those at 1,000 (the one ahead still held).
        let later = 1_000 + 2 * MAX_REQUEST_SKEW + 1;
        assert_eq!(answer(&mut f, &greedy, later, later), empty);
        // Held: the greedy peer's one ahead and its new one; the other
        // peer's aged out with the rest.
        assert_eq!(f.service.peer_nonces.get(&greedy), Some(&2));
        assert!(!f.service.peer_nonces.contains_key(&other));
        assert_eq!(f.service.nonces.len(), 2);
    }

    #[test]
    fn limits_give_the_sender_a_reason_and_keep_nothing() {
        let limits = Limits {
            max_count: 2,
            max_envelope: 1_000,
            retention_secs: 100,
            ..Limits::default()
        };
        let mut f = fixture(limits);
        let peer = f.peer;
        let refused = |f: &mut Fixture, list: &[Vec<u8>]| {
            f.service
                .handle(&peer, deposit(list), 1_000)
                .unwrap()
                .response
        };
        let big = envelope(&f.owner, 1, 5_000, 2_000);
        assert_eq!(
            refused(&mut f, &[big]),
            Response::Refused(Refusal::TooLarge)
        );
        let old = envelope(&f.owner, 2, 999, 100);
        assert_eq!(refused(&mut f, &[old]), Response::Refused(Refusal::Expired));
        assert_eq!(
            refused(&mut f, &[vec![1, 2, 3]]),
            Response::Refused(Refusal::Malformed)
        );
        let three: Vec<Vec<u8>> = (3..6).map(|n| envelope(&f.owner, n, 5_000, 100)).collect();
        assert_eq!(
            refused(&mut f, &three),
            Response::Refused(Refusal::QuotaFull)
        );
        // Nothing of the refused deposits was kept.
        assert_eq!(f.service.spool().stats(&f.owner.id().0).count, 0);
        // Retention: kept at most 100 s even if the envelope says longer.
        let ok = vec![envelope(&f.owner, 7, 5_000, 100)];
        assert!(matches!(refused(&mut f, &ok), Response::Custody(_)));
        assert_eq!(f.service.purge(1_099).unwrap(), 0);
        assert_eq!(f.service.purge(1_100).unwrap(), 1);
        // A full mailbox: a repeat of what it holds (its receipt was
        // lost) gets its receipt again, not QuotaFull; a new one does not.
        let two: Vec<Vec<u8>> = (8..10).map(|n| envelope(&f.owner, n, 5_000, 100)).collect();
        assert!(matches!(refused(&mut f, &two), Response::Custody(_)));
        assert!(matches!(refused(&mut f, &two[..1]), Response::Custody(_)));
        let more = vec![envelope(&f.owner, 10, 5_000, 100)];
        assert_eq!(
            refused(&mut f, &more),
            Response::Refused(Refusal::QuotaFull)
        );
    }

    /// File chunks fill at most three quarters of a mailbox's bytes;
    /// messages still fit in the rest.
    #[test]
    fn files_leave_a_quarter_of_a_mailbox_for_messages() {
        let limits = Limits {
            max_bytes: 8 * 70_000,
            ..Limits::default()
        };
        let mut f = fixture(limits);
        let peer = f.peer;
        let mailbox = f.owner.id().0;
        let chunk = |n: u8| {
            crate::crypto::media::relayed_chunk_envelope(mailbox, 5_000, &[n; 65_000]).unwrap()
        };
        let answer = |f: &mut Fixture, list: &[Vec<u8>]| {
            f.service
                .handle(&peer, deposit(list), 1_000)
                .unwrap()
                .response
        };
        // Six chunks fit under 6/8 of the quota; a seventh does not.
        let six: Vec<Vec<u8>> = (0..6).map(chunk).collect();
        assert!(matches!(answer(&mut f, &six), Response::Custody(_)));
        assert_eq!(
            answer(&mut f, &[chunk(6)]),
            Response::Refused(Refusal::QuotaFull)
        );
        // Messages fill the rest.
        let messages: Vec<Vec<u8>> = (1..=20)
            .map(|n| envelope(&f.owner, n, 5_000, 6_000))
            .collect();
        assert!(matches!(answer(&mut f, &messages), Response::Custody(_)));
    }

    #[test]
    fn a_flooding_depositor_is_rate_limited() {
        let limits = Limits {
            deposit_rate: RateLimit {
                burst: 3,
                per_second: 1,
            },
            ..Limits::default()
        };
        let mut f = fixture(limits);
        let peer = f.peer;
        let mut answers = Vec::new();
        for n in 0..5u8 {
            let mail = vec![envelope(&f.owner, n, 5_000, 100)];
            answers.push(
                f.service
                    .handle(&peer, deposit(&mail), 1_000)
                    .unwrap()
                    .response,
            );
        }
        let limited = answers
            .iter()
            .filter(|r| **r == Response::Refused(Refusal::RateLimited))
            .count();
        assert_eq!(limited, 2);
        // Another peer is not affected.
        let mail = vec![envelope(&f.owner, 9, 5_000, 100)];
        assert!(matches!(
            f.service
                .handle(&PeerId::random(), deposit(&mail), 1_000)
                .unwrap()
                .response,
            Response::Custody(_)
        ));
    }

    /// A device with prekeys publishing to the fixture's relay under the
    /// fixture's mailbox key.
    struct Device {
        identity: DeviceIdentity,
        prekeys: crate::crypto::PrekeyStore,
    }

    impl Device {
        fn new(rng: &mut StdRng) -> Self {
            let identity = DeviceIdentity::generate(rng);
            let prekeys = crate::crypto::PrekeyStore::new(&identity, 100, rng);
            Self { identity, prekeys }
        }

        fn publish(&mut self, f: &mut Fixture, mailbox: [u8; 32], at: u64, keys: usize) -> Request {
            let bundle = self
                .prekeys
                .bundle(&self.identity, mailbox, &[], at, false)
                .unwrap();
            let one_time = self
                .prekeys
                .generate_one_time(&self.identity, keys, at, &mut f.rng);
            let owner = Owner::new(&f.owner, f.relay, at, &mut f.rng);
            Request::PublishPrekeys(Box::new(Signed::new(
                &f.owner,
                Publish {
                    owner,
                    bundle,
                    one_time,
                },
            )))
        }
    }

    fn fetch_prekeys(f: &mut Fixture, at: u64) -> Option<PrekeyBundle> {
        let mailbox = f.owner.id().0;
        match f
            .service
            .handle(&f.peer, Request::FetchPrekeys { mailbox }, at)
            .unwrap()
            .response
        {
            Response::Prekeys(b) => b,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn published_prekeys_are_served_and_each_one_time_prekey_handed_out_once() {
        let mut f = fixture(Limits::default());
        let mut rng = StdRng::seed_from_u64(9);
        let mut device = Device::new(&mut rng);
        let mailbox = f.owner.id().0;
        assert_eq!(fetch_prekeys(&mut f, 1_000), None);
        let publish = device.publish(&mut f, mailbox, 1_000, 2);
        let a = f.service.handle(&f.peer, publish, 1_000).unwrap();
        assert_eq!(a.response, Response::Published(2));
        let first = fetch_prekeys(&mut f, 1_001).unwrap();
        let v = first.verify().unwrap();
        assert_eq!(v.body.identity, *device.identity.public());
        let one = v.one_time.unwrap().id;
        // After a restart, the one handed out stays handed out.
        let Fixture {
            dir,
            key,
            identity,
            service,
            relay,
            rng: frng,
            owner,
            peer,
        } = f;
        drop(service);
        let copy = DeviceIdentity::from_secret_bytes(&identity.to_secret_bytes()).unwrap();
        let mut f = Fixture {
            service: open(dir.path(), &key, copy, Limits::default()),
            identity,
            dir,
            key,
            relay,
            rng: frng,
            owner,
            peer,
        };
        let second = fetch_prekeys(&mut f, 1_002).unwrap();
        let two = second.verify().unwrap().one_time.unwrap().id;
        assert_ne!(one, two);
        // None left: the bundle alone.
        assert_eq!(fetch_prekeys(&mut f, 1_003).unwrap().one_time, None);
        // A later publish adds new ones; ids taken before never return.
        let mut replay = device.publish(&mut f, mailbox, 1_010, 1);
        if let Request::PublishPrekeys(p) = &mut replay {
            let again = p.body.one_time.clone();
            p.body.one_time = vec![first.one_time.clone().unwrap()];
            p.body.one_time.extend(again);
            **p = Signed::new(&f.owner, p.body.clone());
        }
        let a = f.service.handle(&f.peer, replay, 1_010).unwrap();
        assert_eq!(a.response, Response::Published(1));
        let three = fetch_prekeys(&mut f, 1_011).unwrap().one_time.unwrap().id;
        assert!(three > two);
    }

    /// A one-time prekey is handed out only within a fortnight of its
    /// publication (its owner forgets it later), and those of records
    /// written before publish times were kept per key not at all.
    #[test]
    fn a_one_time_prekey_published_too_long_ago_is_not_handed_out() {
        let mut f = fixture(Limits::default());
        let mut rng = StdRng::seed_from_u64(10);
        let mut device = Device::new(&mut rng);
        let mailbox = f.owner.id().0;
        let last = 1_000 + ONE_TIME_PREKEY_HAND_OUT_SECS - 1;
        let publish = device.publish(&mut f, mailbox, 1_000, 2);
        f.service.handle(&f.peer, publish, 1_000).unwrap();
        let id = |b: Option<PrekeyBundle>| b.unwrap().one_time.map(|k| k.id);
        let first = id(fetch_prekeys(&mut f, last)).unwrap();
        let publish = device.publish(&mut f, mailbox, last, 1);
        assert_eq!(
            f.service.handle(&f.peer, publish, last).unwrap().response,
            Response::Published(2)
        );
        // The second of the first two is too old now: the newer one comes.
        let newer = id(fetch_prekeys(&mut f, last + 1)).unwrap();
        assert!(newer > first + 1);
        assert_eq!(id(fetch_prekeys(&mut f, last + 2)), None);
        // Stale ones are not counted in a publish's answer either, so the
        // owner sends more.
        let publish = device.publish(&mut f, mailbox, last + 3, 2);
        f.service.handle(&f.peer, publish, last + 3).unwrap();
        let later = last + 3 + ONE_TIME_PREKEY_HAND_OUT_SECS;
        let publish = device.publish(&mut f, mailbox, later, 0);
        assert_eq!(
            f.service.handle(&f.peer, publish, later).unwrap().response,
            Response::Published(0)
        );
        // A version 2 record (no time per one-time prekey): the bundle is
        // served, its one-time prekeys are not.
        let publish = device.publish(&mut f, mailbox, later + 10, 1);
        f.service.handle(&f.peer, publish, later + 10).unwrap();
        let records = f.service.store.records(Kind::HeldPrekeys).unwrap();
        let held = decode_held(&records.get(&mailbox).unwrap().unwrap()).unwrap();
        assert_eq!(held.one_time.len(), 1);
        let v2 = HeldPrekeysV2 {
            version: 2,
            bundle: held.bundle,
            one_time: held.one_time,
            max_id: held.max_id,
            published_at: held.published_at,
        };
        records
            .put(&mailbox, &crate::crypto::wire::encode(&v2))
            .unwrap();
        assert_eq!(id(fetch_prekeys(&mut f, later + 11)), None);
    }

    #[test]
    fn a_mailboxs_one_time_prekeys_are_handed_out_at_most_twenty_an_hour() {
        let fast = RateLimit {
            burst: 1000,
            per_second: 1000,
        };
        let mut f = fixture(Limits {
            prekey_rate: fast,
            owner_rate: fast,
            ..Limits::default()
        });
        let mut rng = StdRng::seed_from_u64(10);
        let mut device = Device::new(&mut rng);
        let mailbox = f.owner.id().0;
        let hour = 3600 * 500;
        let publish = device.publish(&mut f, mailbox, hour, 30);
        let a = f.service.handle(&f.peer, publish, hour).unwrap();
        assert_eq!(a.response, Response::Published(30));
        let with_one = |f: &mut Fixture, at| fetch_prekeys(f, at).unwrap().one_time.is_some();
        for i in 0..ONE_TIME_PER_HOUR {
            assert!(with_one(&mut f, hour + u64::from(i)), "{i}");
        }
        // The rest of the hour: the bundle alone, the pool kept.
        assert!(!with_one(&mut f, hour + 100));
        assert!(!with_one(&mut f, hour + 3599));
        assert!(with_one(&mut f, hour + 3600));
    }

    #[test]
    fn prekeys_not_published_again_for_twice_the_retention_go() {
        let mut f = fixture(Limits {
            retention_secs: 100,
            max_bundles: 1,
            ..Limits::default()
        });
        let mut rng = StdRng::seed_from_u64(11);
        let mut device = Device::new(&mut rng);
        let mailbox = f.owner.id().0;
        let publish = device.publish(&mut f, mailbox, 1_000, 1);
        assert_eq!(
            f.service.handle(&f.peer, publish, 1_000).unwrap().response,
            Response::Published(1)
        );
        // Published again: its clock starts over.
        let publish = device.publish(&mut f, mailbox, 1_150, 0);
        f.service.handle(&f.peer, publish, 1_150).unwrap();
        assert_eq!(f.service.expire_bundles(1_350).unwrap(), (0, true));
        assert!(fetch_prekeys(&mut f, 1_350).is_some());
        assert_eq!(f.service.expire_bundles(1_351).unwrap(), (1, true));
        assert_eq!(fetch_prekeys(&mut f, 1_352), None);
        // Its place is free: the one bundle allowed can be another's.
        let publish = device.publish(&mut f, mailbox, 1_400, 0);
        assert_eq!(
            f.service.handle(&f.peer, publish, 1_400).unwrap().response,
            Response::Published(0)
        );
        // A record written before publish times were kept (version 1) is
        // served, and its age counts from when the check first sees it.
        let records = f.service.store.records(Kind::HeldPrekeys).unwrap();
        let held = decode_held(&records.get(&mailbox).unwrap().unwrap()).unwrap();
        let v1 = HeldPrekeysV1 {
            version: 1,
            bundle: held.bundle,
            one_time: held.one_time,
            max_id: held.max_id,
        };
        records
            .put(&mailbox, &crate::crypto::wire::encode(&v1))
            .unwrap();
        assert!(fetch_prekeys(&mut f, 5_000).is_some());
        assert_eq!(f.service.expire_bundles(5_000).unwrap(), (0, true));
        assert_eq!(f.service.expire_bundles(5_200).unwrap(), (0, true));
        assert_eq!(f.service.expire_bundles(5_201).unwrap(), (1, true));
    }

    #[test]
    fn prekeys_that_do_not_belong_to_the_signer_are_refused() {
        let mut f = fixture(Limits::default());
        let mut rng = StdRng::seed_from_u64(10);
        let mut device = Device::new(&mut rng);
        let mailbox = f.owner.id().0;
        let refused = |a: Answer| match a.response {
            Response::Refused(r) => r,
            other => panic!("{other:?}"),
        };
        // A bundle naming another mailbox.
        let other = device.publish(&mut f, [7; 32], 1_000, 1);
        let a = f.service.handle(&f.peer, other, 1_000).unwrap();
        assert_eq!(refused(a), Refusal::BadSignature);
        // A one-time prekey signed by someone else.
        let stranger = Device::new(&mut rng);
        let mut forged = device.publish(&mut f, mailbox, 1_000, 0);
        if let Request::PublishPrekeys(p) = &mut forged {
            let mut s = stranger;
            p.body.one_time = s.prekeys.generate_one_time(&s.identity, 1, 1_000, &mut rng);
            **p = Signed::new(&f.owner, p.body.clone());
        }
        let a = f.service.handle(&f.peer, forged, 1_000).unwrap();
        assert_eq!(refused(a), Refusal::BadSignature);
        // Signed by a key that does not own the mailbox.
        let thief = MailboxKey::generate(&mut rng);
        let mut stolen = device.publish(&mut f, mailbox, 1_000, 1);
        if let Request::PublishPrekeys(p) = &mut stolen {
            **p = Signed::new(&thief, p.body.clone());
        }
        let a = f.service.handle(&f.peer, stolen, 1_000).unwrap();
        assert_eq!(refused(a), Refusal::BadSignature);
        assert_eq!(fetch_prekeys(&mut f, 1_001), None);
        // An older bundle than the one held.
        let newer = device.publish(&mut f, mailbox, 1_050, 1);
        let a = f.service.handle(&f.peer, newer, 1_050).unwrap();
        assert_eq!(a.response, Response::Published(1));
        let older = device.publish(&mut f, mailbox, 1_040, 1);
        let a = f.service.handle(&f.peer, older, 1_050).unwrap();
        assert_eq!(refused(a), Refusal::Stale);
        // Each prekey request flushes the store: one peer gets a few.
        let limited = (0..30)
            .filter(|_| {
                let a = f
                    .service
                    .handle(&f.peer, Request::FetchPrekeys { mailbox }, 1_060)
                    .unwrap();
                a.response == Response::Refused(Refusal::RateLimited)
            })
            .count();
        assert!(limited > 0 && limited < 30, "{limited}");
        // The relay's limit on mailboxes with prekeys.
        let mut g = fixture(Limits {
            max_bundles: 0,
            ..Limits::default()
        });
        let m = g.owner.id().0;
        let p = device.publish(&mut g, m, 1_000, 1);
        let a = g.service.handle(&g.peer, p, 1_000).unwrap();
        assert_eq!(refused(a), Refusal::DiskFull);
    }
}
