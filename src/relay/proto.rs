//! `/meshchat/mailbox/1`: what a device and a relay say to each other.
//!
//! - **Deposit**: anyone hands the relay sealed envelopes for a mailbox. The
//!   relay answers, only after they are on its disk, with a
//!   [`CustodyReceipt`] signed by its identity key over the SHA-256 of each
//!   envelope, or with a [`Refusal`] naming the reason.
//! - **Fetch** and **Ack**: only the mailbox owner may read or delete its
//!   mail. Both requests carry the mailbox public key, a time and a random
//!   nonce, signed with the mailbox key ([`labels::SIG_MAILBOX_REQUEST`]);
//!   the relay checks that the key owns the mailbox, that the time is
//!   within [`MAX_REQUEST_SKEW`] of its clock, and that it has not seen the
//!   nonce in that window.
//!
//! Every message starts with a version byte and decodes through the
//! project's bounded decoder; counts and sizes are checked before use.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crypto::limits::MAX_ENVELOPE;
use crate::crypto::wire::bytes64;
use crate::crypto::{
    self, DeviceIdentity, MailboxId, MailboxKey, OneTimePublic, PrekeyBundle, labels, wire,
};

/// The protocol name.
pub const MAILBOX_PROTOCOL: &str = "/meshchat/mailbox/1";
const VERSION: u8 = 1;
/// Most envelopes in one deposit.
pub const MAX_DEPOSIT: usize = 64;
/// Most envelopes in one fetch answer.
pub const MAX_FETCH: usize = 1024;
/// Most envelope bytes in one fetch answer (one envelope is always sent,
/// however large).
pub const MAX_FETCH_BYTES: usize = 1024 * 1024;
/// Most sequence numbers in one ack.
pub const MAX_ACK: usize = 1024;
/// Most one-time prekeys in one publish, and held for one mailbox.
pub const MAX_HELD_ONE_TIME: usize = 100;
/// Largest encoded request (a full deposit).
pub const MAX_REQUEST: usize = MAX_DEPOSIT * (MAX_ENVELOPE + 8) + 1024;
/// Largest encoded response (a full fetch answer: its envelopes, and for
/// each its sequence number and length).
pub const MAX_RESPONSE: usize = MAX_FETCH_BYTES + MAX_FETCH * 16 + 1024;
// The one envelope always sent fits the bound too.
const _: () = assert!(MAX_ENVELOPE <= MAX_FETCH_BYTES);
/// How far a signed request's time may be from the relay's clock (seconds).
pub const MAX_REQUEST_SKEW: u64 = 300;

/// What a mailbox owner signs: which mailbox, for which relay, when, and
/// a nonce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The mailbox public key (its id is derived from it).
    pub mailbox_public: [u8; 32],
    /// The relay the request is for (its identity key): another relay
    /// refuses it, so no relay can replay an owner's request elsewhere.
    pub relay: [u8; 32],
    /// Unix seconds when the request was made.
    pub at: u64,
    /// Random; a relay refuses a nonce it has seen within the skew window.
    pub nonce: [u8; 16],
}

/// A request and the mailbox owner's signature over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed<T> {
    /// The request.
    pub body: T,
    /// Ed25519 by the mailbox key over
    /// `SIG_MAILBOX_REQUEST ‖ kind ‖ the body's encoding` (see
    /// [`OwnerRequest`]).
    #[serde(with = "bytes64")]
    pub sig: [u8; 64],
}

/// Fetch: envelopes after a position, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetch {
    /// Who asks.
    pub owner: Owner,
    /// Only envelopes with a sequence number above this (None: from the start).
    pub after: Option<u64>,
    /// At most this many (clamped to [`MAX_FETCH`]).
    pub limit: u16,
    /// If nothing is waiting, hold the request up to this many seconds
    /// and answer as soon as mail arrives (0: answer at once). The relay
    /// caps it below the request timeout.
    pub wait_secs: u16,
}

/// Ack: the owner has these envelopes; delete them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Who asks.
    pub owner: Owner,
    /// Sequence numbers (at most [`MAX_ACK`]).
    #[serde(deserialize_with = "at_most_ack")]
    pub seqs: Vec<u64>,
}

/// Publish: the owner's prekey bundle (its `mailbox_id` must be the
/// signer's mailbox) and new one-time prekeys to hand out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// Who asks.
    pub owner: Owner,
    /// The bundle (a one-time prekey riding in it is ignored).
    pub bundle: PrekeyBundle,
    /// One-time prekeys to add, each signed by the bundle's identity, all
    /// with ids above any the relay held for this mailbox before (at most
    /// [`MAX_HELD_ONE_TIME`]).
    pub one_time: Vec<OneTimePublic>,
}

/// A request to a relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Envelopes to hold (each an encoded `Envelope`, at most [`MAX_DEPOSIT`]).
    Deposit(#[serde(deserialize_with = "at_most_deposit")] Vec<serde_bytes::ByteBuf>),
    /// Mail for the signer's mailbox.
    Fetch(Signed<Fetch>),
    /// Delete delivered mail.
    Ack(Signed<Ack>),
    /// Hold the signer's prekey bundle and one-time prekeys.
    PublishPrekeys(Box<Signed<Publish>>),
    /// The bundle held for a mailbox, with one one-time prekey that is
    /// then never handed out again (anyone may ask: it is how a contact
    /// opens a session with a device that is offline).
    FetchPrekeys {
        /// The mailbox id (from the device's invite or bundle).
        mailbox: [u8; 32],
    },
}

/// Why a relay refused a request. A sender shows it to the user; none of
/// them is a silent drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The mailbox is at its count or byte quota.
    QuotaFull,
    /// An envelope is over the relay's size limit.
    TooLarge,
    /// An envelope's expiry has passed (or is beyond the relay's retention).
    Expired,
    /// Too many requests from this peer.
    RateLimited,
    /// The relay's disk budget is used up.
    DiskFull,
    /// The signature does not verify or the key does not own the mailbox.
    BadSignature,
    /// The request's time is too far from the relay's clock, or its nonce
    /// was seen already.
    Stale,
    /// The request does not decode or breaks a limit.
    Malformed,
    /// This peer holds no mail (it is not running as a relay).
    NotRelay,
    /// The request is addressed to another relay.
    WrongRelay,
}

impl Refusal {
    /// Every reason, in a fixed order (metrics index by it).
    pub const ALL: [Self; 10] = [
        Self::QuotaFull,
        Self::TooLarge,
        Self::Expired,
        Self::RateLimited,
        Self::DiskFull,
        Self::BadSignature,
        Self::Stale,
        Self::Malformed,
        Self::NotRelay,
        Self::WrongRelay,
    ];

    /// Position in [`Self::ALL`].
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }

    /// A short machine-readable name (metrics labels, JSON).
    pub fn label(self) -> &'static str {
        match self {
            Self::QuotaFull => "quota_full",
            Self::TooLarge => "too_large",
            Self::Expired => "expired",
            Self::RateLimited => "rate_limited",
            Self::DiskFull => "disk_full",
            Self::BadSignature => "bad_signature",
            Self::Stale => "stale",
            Self::Malformed => "malformed",
            Self::NotRelay => "not_relay",
            Self::WrongRelay => "wrong_relay",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::QuotaFull => "the mailbox is full",
            Self::TooLarge => "an envelope is too large",
            Self::Expired => "an envelope has expired",
            Self::RateLimited => "too many requests",
            Self::DiskFull => "the relay's disk budget is used up",
            Self::BadSignature => "the request is not signed by the mailbox owner",
            Self::Stale => "the request is too old or was replayed",
            Self::Malformed => "the request is malformed",
            Self::NotRelay => "this peer is not a relay",
            Self::WrongRelay => "the request is addressed to another relay",
        })
    }
}

/// What the relay signs when it takes envelopes into custody.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Custody {
    /// The relay's identity key (Ed25519; its peer id).
    pub relay: [u8; 32],
    /// Unix seconds when the envelopes were on disk.
    pub stored_at: u64,
    /// SHA-256 of each deposited envelope's bytes, in deposit order.
    #[serde(deserialize_with = "at_most_deposit")]
    pub envelopes: Vec<[u8; 32]>,
}

/// A custody receipt: [`Custody`] and the relay's signature over
/// `SIG_CUSTODY ‖ its encoding`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustodyReceipt {
    /// What is vouched for.
    pub custody: Custody,
    /// The relay's signature.
    #[serde(with = "bytes64")]
    pub sig: [u8; 64],
}

/// One envelope handed to its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mail {
    /// Its position in the mailbox (acks name it).
    pub seq: u64,
    /// The encoded envelope.
    #[serde(with = "serde_bytes")]
    pub envelope: Vec<u8>,
}

/// A relay's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The deposit is on disk.
    Custody(CustodyReceipt),
    /// Nothing was done, for this reason.
    Refused(Refusal),
    /// Mail, oldest first; `more` if the fetch stopped at its limit.
    Mail {
        /// The envelopes.
        #[serde(deserialize_with = "at_most_fetch")]
        items: Vec<Mail>,
        /// Whether more are waiting.
        more: bool,
    },
    /// How many of the acked envelopes were held (and are now deleted).
    Acked(u32),
    /// The bundle is held, with this many one-time prekeys left to hand out.
    Published(u32),
    /// The bundle held for the mailbox asked about, with a one-time
    /// prekey while any is left (None: no bundle is held for it).
    Prekeys(Option<PrekeyBundle>),
}

// Sequences decoded with their bound (see `wire::bounded_seq`): a
// request's few bytes cannot announce millions of elements. The counts are
// checked again after decoding, with errors that name them.
fn at_most_deposit<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    wire::bounded_seq(d, MAX_DEPOSIT)
}

fn at_most_ack<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    wire::bounded_seq(d, MAX_ACK)
}

fn at_most_fetch<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Mail>, D::Error> {
    wire::bounded_seq(d, MAX_FETCH)
}

#[derive(Serialize, Deserialize)]
struct Wire<T> {
    version: u8,
    message: T,
}

/// SHA-256 of an envelope's bytes, as custody receipts name it.
pub fn envelope_digest(envelope: &[u8]) -> [u8; 32] {
    Sha256::digest(envelope).into()
}

impl Request {
    /// Encoded form.
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(&Wire {
            version: VERSION,
            message: self,
        })
    }

    /// Bounded decode; also checks the counts.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crypto::Error> {
        let w: Wire<Self> = wire::decode(bytes, "mailbox request", VERSION, MAX_REQUEST)?;
        let too_many = |what, len, max| Err(crypto::Error::TooLarge { what, len, max });
        match &w.message {
            Self::Deposit(e) if e.is_empty() => Err(crypto::Error::Malformed {
                what: "mailbox deposit (empty)",
            }),
            Self::Deposit(e) if e.len() > MAX_DEPOSIT => {
                too_many("mailbox deposit", e.len(), MAX_DEPOSIT)
            }
            Self::Deposit(e) if e.iter().any(|b| b.len() > MAX_ENVELOPE) => {
                Err(crypto::Error::TooLarge {
                    what: "deposited envelope",
                    len: e.iter().map(|b| b.len()).max().unwrap_or(0),
                    max: MAX_ENVELOPE,
                })
            }
            Self::Ack(a) if a.body.seqs.len() > MAX_ACK => {
                too_many("mailbox ack", a.body.seqs.len(), MAX_ACK)
            }
            Self::PublishPrekeys(p) if p.body.one_time.len() > MAX_HELD_ONE_TIME => too_many(
                "published one-time prekeys",
                p.body.one_time.len(),
                MAX_HELD_ONE_TIME,
            ),
            _ => Ok(w.message),
        }
    }
}

impl Response {
    /// Encoded form.
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(&Wire {
            version: VERSION,
            message: self,
        })
    }

    /// Bounded decode; also checks the counts.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crypto::Error> {
        let w: Wire<Self> = wire::decode(bytes, "mailbox response", VERSION, MAX_RESPONSE)?;
        match &w.message {
            Self::Mail { items, .. } if items.len() > MAX_FETCH => Err(crypto::Error::TooLarge {
                what: "mailbox fetch answer",
                len: items.len(),
                max: MAX_FETCH,
            }),
            Self::Custody(r) if r.custody.envelopes.len() > MAX_DEPOSIT => {
                Err(crypto::Error::TooLarge {
                    what: "custody receipt",
                    len: r.custody.envelopes.len(),
                    max: MAX_DEPOSIT,
                })
            }
            _ => Ok(w.message),
        }
    }
}

/// A request an owner signs; its kind byte is part of what is signed, so
/// a signature made for one kind of request never verifies as another.
pub trait OwnerRequest: Serialize {
    /// The kind byte.
    const KIND: u8;
    /// Who signs it.
    fn owner(&self) -> &Owner;
}

impl OwnerRequest for Fetch {
    const KIND: u8 = 1;
    fn owner(&self) -> &Owner {
        &self.owner
    }
}

impl OwnerRequest for Ack {
    const KIND: u8 = 2;
    fn owner(&self) -> &Owner {
        &self.owner
    }
}

impl OwnerRequest for Publish {
    const KIND: u8 = 3;
    fn owner(&self) -> &Owner {
        &self.owner
    }
}

fn signed_body<T: OwnerRequest>(body: &T) -> Vec<u8> {
    let mut out = vec![T::KIND];
    out.extend_from_slice(&wire::encode(body));
    out
}

impl<T: OwnerRequest> Signed<T> {
    /// Signs `body` with the mailbox key: over `SIG_MAILBOX_REQUEST ‖ kind
    /// ‖ the body's encoding`.
    pub fn new(key: &MailboxKey, body: T) -> Self {
        let sig = key.sign(labels::SIG_MAILBOX_REQUEST, &signed_body(&body));
        Self { body, sig }
    }

    /// Checks the signature and that its key (the body's owner) owns a
    /// mailbox: returns that mailbox's id. Freshness (time and nonce) is
    /// the relay's to check, against its clock and memory.
    pub fn verify(&self) -> Result<MailboxId, crypto::Error> {
        let owner = self.body.owner();
        let id = MailboxId::of(&owner.mailbox_public);
        id.verify_request(
            &owner.mailbox_public,
            labels::SIG_MAILBOX_REQUEST,
            &signed_body(&self.body),
            &self.sig,
        )?;
        Ok(id)
    }
}

impl Owner {
    /// A fresh owner stamp for `key`, addressed to `relay`, at `now`.
    pub fn new<R: rand_core::CryptoRng + ?Sized>(
        key: &MailboxKey,
        relay: [u8; 32],
        now: u64,
        rng: &mut R,
    ) -> Self {
        let mut nonce = [0u8; 16];
        rng.fill_bytes(&mut nonce);
        Self {
            mailbox_public: key.public(),
            relay,
            at: now,
            nonce,
        }
    }

    /// Whether `at` is within [`MAX_REQUEST_SKEW`] of `now`.
    pub fn is_fresh(&self, now: u64) -> bool {
        self.at.abs_diff(now) <= MAX_REQUEST_SKEW
    }
}

impl CustodyReceipt {
    /// The relay `relay` vouches that it holds `envelopes` since `stored_at`.
    pub fn sign(relay: &DeviceIdentity, stored_at: u64, envelopes: Vec<[u8; 32]>) -> Self {
        let custody = Custody {
            relay: relay.public().signing,
            stored_at,
            envelopes,
        };
        Self::sign_custody(relay, custody)
    }

    /// `relay` signs `custody` (whose `relay` field must be its key for
    /// the receipt to verify).
    pub fn sign_custody(relay: &DeviceIdentity, custody: Custody) -> Self {
        let sig = relay.sign(labels::SIG_CUSTODY, &[&wire::encode(&custody)]);
        Self { custody, sig }
    }

    /// Checks the relay's signature, and that the receipt names exactly the
    /// envelopes deposited (by their bytes, in order).
    pub fn verify(&self, relay: &[u8; 32], deposited: &[Vec<u8>]) -> Result<(), crypto::Error> {
        let digests: Vec<[u8; 32]> = deposited.iter().map(|e| envelope_digest(e)).collect();
        self.verify_digests(relay, &digests)
    }

    /// [`Self::verify`] against the envelopes' digests
    /// ([`envelope_digest`]), for a depositor that kept only those.
    pub fn verify_digests(
        &self,
        relay: &[u8; 32],
        deposited: &[[u8; 32]],
    ) -> Result<(), crypto::Error> {
        if &self.custody.relay != relay {
            return Err(crypto::Error::BadSignature {
                what: "custody receipt (from another relay)",
            });
        }
        crypto::verify_signature(
            relay,
            labels::SIG_CUSTODY,
            &[&wire::encode(&self.custody)],
            &self.sig,
            "custody receipt",
        )?;
        if self.custody.envelopes != deposited {
            return Err(crypto::Error::Malformed {
                what: "custody receipt (not for these envelopes)",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const RELAY_OF_TEST: [u8; 32] = [7; 32];

    #[test]
    fn requests_round_trip_and_signatures_bind_the_owner() {
        let mut rng = StdRng::seed_from_u64(5);
        let key = MailboxKey::generate(&mut rng);
        let fetch = Signed::new(
            &key,
            Fetch {
                owner: Owner::new(&key, RELAY_OF_TEST, 1_000, &mut rng),
                after: Some(7),
                limit: 50,
                wait_secs: 0,
            },
        );
        let req = Request::Fetch(fetch.clone());
        assert_eq!(Request::from_bytes(&req.to_bytes()).unwrap(), req);
        assert_eq!(fetch.verify().unwrap(), key.id());
        assert!(fetch.body.owner.is_fresh(1_000 + MAX_REQUEST_SKEW));
        assert!(!fetch.body.owner.is_fresh(1_000 + MAX_REQUEST_SKEW + 1));

        // Changing anything signed breaks it.
        let mut later = fetch.clone();
        later.body.after = Some(0);
        assert!(later.verify().is_err());
        // Another key cannot speak for this mailbox, even with a valid
        // signature of its own.
        let other = MailboxKey::generate(&mut rng);
        let mut forged = Signed::new(&other, fetch.body.clone());
        assert!(forged.verify().is_err());
        forged.body.owner.mailbox_public = other.public();
        assert_ne!(
            forged.verify().ok(),
            Some(key.id()),
            "a request signed by another key must not name this mailbox"
        );
    }

    #[test]
    fn a_signature_for_one_kind_of_request_does_not_verify_as_another() {
        let mut rng = StdRng::seed_from_u64(7);
        let key = MailboxKey::generate(&mut rng);
        let owner = Owner::new(&key, RELAY_OF_TEST, 1_000, &mut rng);
        let fetch = Signed::new(
            &key,
            Fetch {
                owner: owner.clone(),
                after: None,
                limit: 0,
                wait_secs: 0,
            },
        );
        let as_ack = Signed {
            body: Ack {
                owner,
                seqs: vec![],
            },
            sig: fetch.sig,
        };
        assert!(as_ack.verify().is_err());
    }

    #[test]
    fn custody_receipts_verify_only_for_the_relay_and_the_deposit() {
        let mut rng = StdRng::seed_from_u64(6);
        let relay = DeviceIdentity::generate(&mut rng);
        let deposited = vec![vec![1u8; 300], vec![2u8; 400]];
        let digests = deposited.iter().map(|e| envelope_digest(e)).collect();
        let receipt = CustodyReceipt::sign(&relay, 99, digests);
        let key = relay.public().signing;
        receipt.verify(&key, &deposited).unwrap();
        let resp = Response::Custody(receipt.clone());
        assert_eq!(Response::from_bytes(&resp.to_bytes()).unwrap(), resp);
        // Not for another deposit, not from another relay, not altered.
        assert!(receipt.verify(&key, &deposited[..1]).is_err());
        assert!(receipt.verify(&key, &[vec![9; 300], vec![2; 400]]).is_err());
        let other = DeviceIdentity::generate(&mut rng);
        assert!(receipt.verify(&other.public().signing, &deposited).is_err());
        let mut altered = receipt;
        altered.custody.stored_at += 1;
        assert!(altered.verify(&key, &deposited).is_err());
    }

    #[test]
    fn bad_input_is_refused_before_use() {
        let empty = Request::Deposit(Vec::new()).to_bytes();
        assert!(Request::from_bytes(&empty).is_err());
        let many = Request::Deposit(vec![
            serde_bytes::ByteBuf::from(vec![0u8; 8]);
            MAX_DEPOSIT + 1
        ]);
        assert!(Request::from_bytes(&many.to_bytes()).is_err());
        let big = Request::Deposit(vec![serde_bytes::ByteBuf::from(vec![
            0u8;
            MAX_ENVELOPE + 1
        ])]);
        assert!(Request::from_bytes(&big.to_bytes()).is_err());
        let mut wrong_version = Response::Acked(3).to_bytes();
        wrong_version[0] = 2;
        assert!(matches!(
            Response::from_bytes(&wrong_version),
            Err(crypto::Error::UnknownVersion { .. })
        ));
        let mut trailing = Response::Refused(Refusal::QuotaFull).to_bytes();
        trailing.push(0);
        assert!(Response::from_bytes(&trailing).is_err());
        // Millions of empty envelopes announced in a few bytes (each a
        // 24-byte entry once decoded): refused at the count.
        let mut millions = vec![VERSION, 0];
        millions.extend_from_slice(&[0x80, 0x89, 0xfa, 0x01]);
        millions.extend(std::iter::repeat_n(0u8, 4096));
        assert!(Request::from_bytes(&millions).is_err());
        // A length prefix claiming far more than was sent: refused, no
        // allocation of the claimed size.
        let mut huge = vec![VERSION, 0];
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(Request::from_bytes(&huge).is_err());
        assert!(Request::from_bytes(&vec![1u8; MAX_REQUEST + 1]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = Request::from_bytes(&bytes);
            let _ = Response::from_bytes(&bytes);
        }
    }
}
