//! The relay's mailbox service: answers [`Request`]s from its store under
//! the operator's [`Limits`]. Synchronous, no network: the relay's actor
//! feeds it requests, flushes the store when [`Answer::flush`] says so, and
//! only then sends the response (a custody receipt is a promise that the
//! envelopes are on disk).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use libp2p::PeerId;

use super::proto::{
    CustodyReceipt, MAX_FETCH, MAX_REQUEST_SKEW, Mail, Owner, OwnerRequest, Refusal, Request,
    Response, Signed, envelope_digest,
};
use crate::crypto::{DeviceIdentity, Envelope, MailboxId, limits::MAX_ENVELOPE};
use crate::node::net::{RateLimit, RateLimiter};
use crate::store::{self, Store};

/// An envelope to hold: its id, when to drop it, its bytes.
type ToHold = ([u8; 16], u64, Vec<u8>);

/// Nonces remembered to refuse replayed owner requests.
const MAX_NONCES: usize = 100_000;

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
    /// Most bytes the store may take on disk; deposits beyond are refused.
    pub disk_budget: u64,
    /// Deposits one peer may make (requests).
    pub deposit_rate: RateLimit,
    /// How many peers' deposit budgets are tracked.
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
            deposit_rate: RateLimit {
                burst: 200,
                per_second: 50,
            },
            rate_peers: 4096,
        }
    }
}

/// The service's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// What to send back.
    pub response: Response,
    /// Whether the store must be flushed before it is sent.
    pub flush: bool,
}

impl Answer {
    fn now(response: Response) -> Self {
        Self {
            response,
            flush: false,
        }
    }

    fn refused(r: Refusal) -> Self {
        Self::now(Response::Refused(r))
    }
}

/// Mailboxes held by a relay.
pub struct Service {
    store: Arc<Store>,
    identity: DeviceIdentity,
    limits: Limits,
    deposits: RateLimiter,
    nonces: HashMap<[u8; 16], u64>,
    nonce_order: VecDeque<([u8; 16], u64)>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A service over `store`, signing custody receipts as `identity`.
    pub fn new(store: Arc<Store>, identity: DeviceIdentity, limits: Limits) -> Self {
        Self {
            store,
            identity,
            deposits: RateLimiter::new(limits.deposit_rate, limits.rate_peers),
            limits,
            nonces: HashMap::new(),
            nonce_order: VecDeque::new(),
        }
    }

    /// Answers `request` from `peer` at `now` (Unix seconds). A store
    /// failure is an error: the caller answers nothing, the peer retries.
    pub fn handle(
        &mut self,
        peer: &PeerId,
        request: Request,
        now: u64,
    ) -> Result<Answer, store::Error> {
        match request {
            Request::Deposit(envelopes) => self.deposit(peer, &envelopes, now),
            Request::Fetch(f) => {
                let mailbox = match self.authorize(&f, now) {
                    Ok(m) => m,
                    Err(r) => return Ok(Answer::refused(r)),
                };
                let limit = usize::from(f.body.limit).clamp(1, MAX_FETCH);
                let mut held = self
                    .store
                    .mailboxes()
                    .fetch(&mailbox.0, f.body.after, limit + 1)?;
                let more = held.len() > limit;
                held.truncate(limit);
                let items = held
                    .into_iter()
                    .map(|h| Mail {
                        seq: h.seq,
                        envelope: h.envelope,
                    })
                    .collect();
                Ok(Answer::now(Response::Mail { items, more }))
            }
            Request::Ack(a) => {
                let mailbox = match self.authorize(&a, now) {
                    Ok(m) => m,
                    Err(r) => return Ok(Answer::refused(r)),
                };
                let n = self.store.mailboxes().ack(&mailbox.0, &a.body.seqs)?;
                Ok(Answer {
                    response: Response::Acked(u32::try_from(n).unwrap_or(u32::MAX)),
                    flush: n > 0,
                })
            }
        }
    }

    fn deposit(
        &mut self,
        peer: &PeerId,
        raw: &[serde_bytes::ByteBuf],
        now: u64,
    ) -> Result<Answer, store::Error> {
        if !self.deposits.allow(peer, Instant::now()) {
            return Ok(Answer::refused(Refusal::RateLimited));
        }
        // Every check first: a deposit is taken whole or not at all.
        let mut by_mailbox: HashMap<[u8; 32], Vec<ToHold>> = HashMap::new();
        let mut digests = Vec::with_capacity(raw.len());
        let mut total = 0u64;
        for bytes in raw {
            if bytes.len() > self.limits.max_envelope {
                return Ok(Answer::refused(Refusal::TooLarge));
            }
            let Ok(env) = Envelope::from_bytes(bytes) else {
                return Ok(Answer::refused(Refusal::Malformed));
            };
            if env.expires_at <= now {
                return Ok(Answer::refused(Refusal::Expired));
            }
            let keep_until = env
                .expires_at
                .min(now.saturating_add(self.limits.retention_secs));
            digests.push(envelope_digest(bytes));
            total += bytes.len() as u64;
            by_mailbox.entry(env.mailbox_id).or_default().push((
                env.envelope_id,
                keep_until,
                bytes.to_vec(),
            ));
        }
        if self.store.size_on_disk()?.saturating_add(total) > self.limits.disk_budget {
            return Ok(Answer::refused(Refusal::DiskFull));
        }
        for (mailbox, items) in &by_mailbox {
            let stats = self.store.mailboxes().stats(mailbox)?;
            let bytes: u64 = items.iter().map(|(_, _, b)| b.len() as u64).sum();
            if stats.count + items.len() as u64 > self.limits.max_count
                || stats.bytes + bytes > self.limits.max_bytes
            {
                return Ok(Answer::refused(Refusal::QuotaFull));
            }
        }
        for (mailbox, items) in &by_mailbox {
            self.store.mailboxes().deposit(mailbox, items, now)?;
        }
        Ok(Answer {
            response: Response::Custody(CustodyReceipt::sign(&self.identity, now, digests)),
            flush: true,
        })
    }

    /// Admits an owner's request: addressed to us, fresh, new nonce, a
    /// valid signature by a key that owns the mailbox (whose id it returns).
    /// Only then is its nonce remembered.
    fn authorize<T: OwnerRequest>(
        &mut self,
        signed: &Signed<T>,
        now: u64,
    ) -> Result<MailboxId, Refusal> {
        let owner = signed.body.owner();
        self.owner_ok(owner, now)?;
        let mailbox = signed.verify().map_err(|_| Refusal::BadSignature)?;
        self.remember(owner);
        Ok(mailbox)
    }

    /// Freshness of an owner's request: its time near ours, its nonce new.
    fn owner_ok(&mut self, owner: &Owner, now: u64) -> Result<(), Refusal> {
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
        Ok(())
    }

    /// Remembers a verified request's nonce for the skew window.
    fn remember(&mut self, owner: &Owner) {
        if self.nonces.len() >= MAX_NONCES
            && let Some((old, _)) = self.nonce_order.pop_front()
        {
            self.nonces.remove(&old);
        }
        self.nonces.insert(owner.nonce, owner.at);
        self.nonce_order.push_back((owner.nonce, owner.at));
    }

    fn forget_nonces(&mut self, now: u64) {
        while let Some(&(nonce, at)) = self.nonce_order.front() {
            if at.saturating_add(2 * MAX_REQUEST_SKEW) >= now {
                break;
            }
            self.nonce_order.pop_front();
            self.nonces.remove(&nonce);
        }
    }

    /// Drops every envelope past its expiry or the retention period.
    /// Returns how many (their senders learn it from their own outbox,
    /// which gives up at the same time).
    pub fn purge(&self, now: u64) -> Result<usize, store::Error> {
        Ok(self.store.mailboxes().purge_expired(now)?.len())
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
        _dir: tempfile::TempDir,
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
        let store = Arc::new(Store::open(dir.path(), &key).unwrap());
        let identity = DeviceIdentity::generate(&mut rng);
        let relay = identity.public().signing;
        let owner = MailboxKey::generate(&mut rng);
        Fixture {
            _dir: dir,
            service: Service::new(store, identity, limits),
            relay,
            rng,
            owner,
            peer: PeerId::random(),
        }
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
        assert_eq!(
            f.service
                .store
                .mailboxes()
                .stats(&f.owner.id().0)
                .unwrap()
                .count,
            0
        );
        // Retention: kept at most 100 s even if the envelope says longer.
        let ok = vec![envelope(&f.owner, 7, 5_000, 100)];
        assert!(matches!(refused(&mut f, &ok), Response::Custody(_)));
        assert_eq!(f.service.purge(1_099).unwrap(), 0);
        assert_eq!(f.service.purge(1_100).unwrap(), 1);
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
}
