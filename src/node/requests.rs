//! Contact requests: devices that added our invite and introduced
//! themselves ([`crate::crypto::ContentKind::Intro`]) while we have not
//! added theirs. Each waits, with the first envelopes it sent us, until the
//! person accepts it (it becomes a contact and those envelopes are read)
//! or declines it.
//!
//! Everything here is fed by strangers, so everything is bounded: how many
//! requests, how much each holds, how many declined devices are
//! remembered. Requests live in memory: after a restart a request comes
//! again with its sender's next retry, and what it held with it (the
//! sender keeps every message until it is delivered).

use std::collections::{HashMap, HashSet, VecDeque};

use crate::crypto::{Envelope, PublicIdentity};

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

/// A device that wants to be a contact.
#[derive(Debug, Clone)]
pub struct Request {
    /// Its identity keys.
    pub identity: PublicIdentity,
    /// Its invite, checked.
    pub invite: Invite,
    /// When its introduction first came (Unix seconds).
    pub received_at: u64,
    /// Envelopes it sent us, oldest first.
    pub held: Vec<Envelope>,
    held_bytes: usize,
}

/// What an introduction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Introduced {
    /// A new request: show it.
    New,
    /// A request already waiting (its invite is the newer one now).
    Again,
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
}

impl Requests {
    /// The introduction of `identity` with its checked `invite`.
    pub fn introduce(&mut self, identity: PublicIdentity, invite: Invite, now: u64) -> Introduced {
        let key = identity.signing;
        if self.declined.contains(&key) {
            return Introduced::Declined;
        }
        if let Some(r) = self.waiting.get_mut(&key) {
            // The newer bundle; addresses kept if it names none (a node
            // that restarted names none until asked for an invite).
            let addrs = if invite.addrs.is_empty() {
                std::mem::take(&mut r.invite.addrs)
            } else {
                invite.addrs
            };
            r.invite = Invite::new(invite.bundle, addrs);
            return Introduced::Again;
        }
        if self.waiting.len() >= MAX_REQUESTS {
            return Introduced::Full;
        }
        self.waiting.insert(
            key,
            Request {
                identity,
                invite,
                received_at: now,
                held: Vec::new(),
                held_bytes: 0,
            },
        );
        Introduced::New
    }

    /// Keeps `env`, from the device `from`, with its request. `false`
    /// (dropped) if it has none, or its request holds all it may.
    pub fn hold(&mut self, from: &[u8; 32], env: Envelope, len: usize) -> bool {
        let Some(r) = self.waiting.get_mut(from) else {
            return false;
        };
        if r.held.len() >= MAX_HELD || r.held_bytes + len > MAX_HELD_BYTES {
            return false;
        }
        r.held_bytes += len;
        r.held.push(env);
        true
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
    /// introductions are ignored. `false` if no request of it waits.
    pub fn decline(&mut self, key: &[u8; 32]) -> bool {
        if self.waiting.remove(key).is_none() {
            return false;
        }
        if self.declined.insert(*key) {
            self.declined_order.push_back(*key);
            if self.declined_order.len() > MAX_DECLINED
                && let Some(old) = self.declined_order.pop_front()
            {
                self.declined.remove(&old);
            }
        }
        true
    }

    /// `key` became a contact by other means (the person added its
    /// invite): no request of it waits, and it is not declined any more.
    pub fn forget(&mut self, key: &[u8; 32]) -> Option<Request> {
        if self.declined.remove(key) {
            self.declined_order.retain(|k| k != key);
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

    /// Requests are bounded in number and in what each holds; a request
    /// already waiting stays when the rest are full; a declined device is
    /// ignored until it is made a contact some other way.
    #[test]
    fn requests_are_bounded_and_declined_devices_stay_declined() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut r = Requests::default();
        let devices: Vec<_> = (0..=MAX_REQUESTS).map(|_| stranger(&mut rng)).collect();
        for (i, (id, inv)) in devices.iter().take(MAX_REQUESTS).enumerate() {
            assert_eq!(
                r.introduce(id.clone(), inv.clone(), i as u64),
                Introduced::New
            );
        }
        let (late, late_invite) = devices[MAX_REQUESTS].clone();
        assert_eq!(
            r.introduce(late.clone(), late_invite.clone(), 99),
            Introduced::Full
        );
        let (first, first_invite) = devices[0].clone();
        assert_eq!(
            r.introduce(first.clone(), first_invite.clone(), 99),
            Introduced::Again
        );
        assert_eq!(r.list().len(), MAX_REQUESTS);
        assert_eq!(r.list()[0].identity, first);
        assert_eq!(r.list()[0].received_at, 0);

        // Held: at most MAX_HELD envelopes and MAX_HELD_BYTES.
        for n in 0..MAX_HELD {
            assert!(r.hold(&first.signing, envelope(n as u8, 16), 100));
        }
        assert!(!r.hold(&first.signing, envelope(0, 16), 100));
        let second = devices[1].0.signing;
        assert!(r.hold(&second.clone(), envelope(1, 16), MAX_HELD_BYTES - 10));
        assert!(!r.hold(&second, envelope(2, 16), 11));
        assert!(r.hold(&second, envelope(3, 16), 10));
        assert!(
            !r.hold(&late.signing, envelope(4, 16), 1),
            "no request, nothing held"
        );

        // Declined: the request and what it held go; it is ignored after.
        assert!(r.decline(&first.signing));
        assert!(!r.decline(&first.signing));
        assert_eq!(
            r.introduce(first.clone(), first_invite.clone(), 100),
            Introduced::Declined
        );
        assert!(!r.hold(&first.signing, envelope(5, 16), 1));
        // There is room again for the one refused.
        assert_eq!(r.introduce(late, late_invite, 100), Introduced::New);
        // Added as a contact by the person: declined no more.
        assert!(r.forget(&first.signing).is_none());
        r.take(&devices[2].0.signing).unwrap();
        assert_eq!(r.introduce(first, first_invite, 101), Introduced::New);
        let taken = r.take(&second).unwrap();
        assert_eq!(taken.held.len(), 2);
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
            assert!(r.decline(&id.signing));
        }
        assert_eq!(r.introduce(first, first_invite, 2), Introduced::New);
    }
}
