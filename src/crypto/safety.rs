//! Safety numbers: a short code two people compare (aloud or by QR) to be
//! sure no one sits between their devices.
//!
//! fingerprint(identity) = the first 30 bytes of SHA-512 iterated 5200 times,
//! starting from `"meshchat/1/fingerprint" ‖ signing key ‖ dh key` and
//! hashing `previous ‖ signing key` each round. Each 5-byte chunk becomes a
//! big-endian integer mod 100000, printed as 5 digits: 30 digits per side.
//! The safety number is the two sides' digits, lower first: 60 digits, the
//! same on both devices.

use sha2::{Digest, Sha512};

use super::PublicIdentity;
use super::labels;

const ITERATIONS: usize = 5200;

/// The 30-digit fingerprint of one identity.
pub fn fingerprint(identity: &PublicIdentity) -> String {
    let mut h = Sha512::new();
    h.update(labels::FINGERPRINT);
    h.update(identity.signing);
    h.update(identity.dh);
    let mut digest = h.finalize();
    for _ in 1..ITERATIONS {
        let mut h = Sha512::new();
        h.update(digest);
        h.update(identity.signing);
        digest = h.finalize();
    }
    let mut out = String::with_capacity(30);
    for chunk in digest[..30].chunks(5) {
        let mut v: u64 = 0;
        for &b in chunk {
            v = (v << 8) | u64::from(b);
        }
        out.push_str(&format!("{:05}", v % 100_000));
    }
    out
}

/// The 60-digit safety number of two identities (symmetric).
pub fn safety_number(a: &PublicIdentity, b: &PublicIdentity) -> String {
    let (fa, fb) = (fingerprint(a), fingerprint(b));
    if fa <= fb {
        format!("{fa}{fb}")
    } else {
        format!("{fb}{fa}")
    }
}
