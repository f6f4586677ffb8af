//! X3DH: the asynchronous key agreement that starts a 1:1 session with a
//! device that may be offline, from its published prekey bundle.
//!
//! ```text
//! DH1 = DH(IK_a, SPK_b)   DH2 = DH(EK_a, IK_b)   DH3 = DH(EK_a, SPK_b)
//! DH4 = DH(EK_a, OPK_b)   (only when a one-time prekey was used)
//! SK  = HKDF-SHA256(salt = 0³², ikm = 0xFF³² ‖ DH1 ‖ DH2 ‖ DH3 [‖ DH4],
//!                   info = "meshchat/1/x3dh", 32 bytes)
//! AD  = IK_a ‖ IK_b       (the X25519 identity public keys)
//! ```

use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::kdf::{dh, hkdf};
use super::prekeys::{PrekeyStore, VerifiedBundle};
use super::wire;
use super::{DeviceIdentity, Error, PublicIdentity, Secret32, labels};

const PREKEY_MESSAGE_VERSION: u8 = 1;

/// The agreed secret and the session's associated data.
#[derive(Clone)]
pub struct X3dhOutput {
    /// SK, the initial root key of the Double Ratchet.
    pub shared_secret: Secret32,
    /// `IK_initiator ‖ IK_responder`, bound into every message of the session.
    pub associated_data: [u8; 64],
}

impl std::fmt::Debug for X3dhOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("X3dhOutput(..)")
    }
}

/// What the initiator tells the responder so it can compute the same secret.
/// The initiator's identity travels in the sealed sender certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitialMessage {
    /// The initiator's ephemeral public key (EK_a), also the session's base key.
    pub ephemeral: [u8; 32],
    /// Which signed prekey of the responder was used.
    pub signed_prekey_id: u32,
    /// Which one-time prekey, if any.
    pub one_time_prekey_id: Option<u32>,
}

/// The first messages of a session, until the initiator hears back: the
/// X3DH parameters plus an encoded ratchet message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrekeyMessage {
    version: u8,
    /// X3DH parameters.
    pub initial: InitialMessage,
    /// An encoded [`super::RatchetMessage`].
    #[serde(with = "serde_bytes")]
    pub message: Vec<u8>,
}

impl PrekeyMessage {
    /// Wraps a ratchet message.
    pub fn new(initial: InitialMessage, message: Vec<u8>) -> Self {
        Self {
            version: PREKEY_MESSAGE_VERSION,
            initial,
            message,
        }
    }

    /// Encoded form.
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(self)
    }

    /// Bounded decode.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        wire::decode(
            bytes,
            "prekey message",
            PREKEY_MESSAGE_VERSION,
            super::ratchet::MAX_MESSAGE_LEN + 64,
        )
    }
}

fn derive(dhs: &[&Secret32]) -> Secret32 {
    let mut ikm = Zeroizing::new(Vec::with_capacity(32 * 5));
    ikm.extend_from_slice(&[0xFF; 32]);
    for d in dhs {
        ikm.extend_from_slice(d.expose());
    }
    Secret32::new(hkdf::<32>(&[0u8; 32], &ikm, labels::X3DH))
}

/// The session's secret bound to both devices' signing keys (initiator
/// first): the X25519 identity keys in the agreement and in `AD` do not
/// name a device on their own, since anyone may sign someone else's X25519
/// key with their own signing key. Without this, a set-up made for such an
/// identity would open as one for the device whose X25519 keys it borrowed.
fn bind_identities(sk: &Secret32, initiator: &[u8; 32], responder: &[u8; 32]) -> Secret32 {
    let mut info = Vec::with_capacity(labels::X3DH_IDENTITIES.len() + 64);
    info.extend_from_slice(labels::X3DH_IDENTITIES);
    info.extend_from_slice(initiator);
    info.extend_from_slice(responder);
    Secret32::new(hkdf::<32>(&[0u8; 32], sk.expose(), &info))
}

fn associated_data(initiator: &[u8; 32], responder: &[u8; 32]) -> [u8; 64] {
    let mut ad = [0u8; 64];
    ad[..32].copy_from_slice(initiator);
    ad[32..].copy_from_slice(responder);
    ad
}

/// The initiator's computation with explicit keys.
pub(crate) fn derive_initiator(
    ik_a: &StaticSecret,
    ek_a: &StaticSecret,
    ik_b: &PublicKey,
    spk_b: &PublicKey,
    opk_b: Option<&PublicKey>,
) -> Result<X3dhOutput, Error> {
    let dh1 = dh(ik_a, spk_b, "x3dh DH1")?;
    let dh2 = dh(ek_a, ik_b, "x3dh DH2")?;
    let dh3 = dh(ek_a, spk_b, "x3dh DH3")?;
    let sk = match opk_b {
        Some(opk) => derive(&[&dh1, &dh2, &dh3, &dh(ek_a, opk, "x3dh DH4")?]),
        None => derive(&[&dh1, &dh2, &dh3]),
    };
    let ik_a_pub = PublicKey::from(ik_a).to_bytes();
    Ok(X3dhOutput {
        shared_secret: sk,
        associated_data: associated_data(&ik_a_pub, ik_b.as_bytes()),
    })
}

/// The responder's computation with explicit keys.
pub(crate) fn derive_responder(
    ik_b: &StaticSecret,
    spk_b: &StaticSecret,
    opk_b: Option<&StaticSecret>,
    ik_a: &PublicKey,
    ek_a: &PublicKey,
) -> Result<X3dhOutput, Error> {
    let dh1 = dh(spk_b, ik_a, "x3dh DH1")?;
    let dh2 = dh(ik_b, ek_a, "x3dh DH2")?;
    let dh3 = dh(spk_b, ek_a, "x3dh DH3")?;
    let sk = match opk_b {
        Some(opk) => derive(&[&dh1, &dh2, &dh3, &dh(opk, ek_a, "x3dh DH4")?]),
        None => derive(&[&dh1, &dh2, &dh3]),
    };
    let ik_b_pub = PublicKey::from(ik_b).to_bytes();
    Ok(X3dhOutput {
        shared_secret: sk,
        associated_data: associated_data(ik_a.as_bytes(), &ik_b_pub),
    })
}

/// Starts a session from a verified bundle. Returns the agreement, the
/// parameters to send along, and the responder's signed prekey (its first
/// ratchet public key).
pub fn initiate<R: rand_core::CryptoRng + ?Sized>(
    ours: &DeviceIdentity,
    bundle: &VerifiedBundle,
    rng: &mut R,
) -> Result<(X3dhOutput, InitialMessage, [u8; 32]), Error> {
    let ek = StaticSecret::random_from_rng(rng);
    let ik_b = bundle.body.identity.dh_key();
    let spk_b = PublicKey::from(bundle.body.signed_prekey);
    let opk_b = bundle.one_time.as_ref().map(|o| PublicKey::from(o.key));
    let mut out = derive_initiator(ours.dh_secret(), &ek, &ik_b, &spk_b, opk_b.as_ref())?;
    out.shared_secret = bind_identities(
        &out.shared_secret,
        &ours.public().signing,
        &bundle.body.identity.signing,
    );
    let initial = InitialMessage {
        ephemeral: PublicKey::from(&ek).to_bytes(),
        signed_prekey_id: bundle.body.signed_prekey_id,
        one_time_prekey_id: bundle.one_time.as_ref().map(|o| o.id),
    };
    Ok((out, initial, bundle.body.signed_prekey))
}

/// The responder's side. Reads (does not consume) the one-time prekey: the
/// caller removes it with [`PrekeyStore::take_one_time`] once the first
/// message has decrypted, so a forged set-up cannot burn prekeys.
/// Returns the agreement and the signed prekey secret (the responder's first
/// ratchet key pair).
pub fn respond(
    ours: &DeviceIdentity,
    prekeys: &PrekeyStore,
    initiator: &PublicIdentity,
    initial: &InitialMessage,
) -> Result<(X3dhOutput, Secret32), Error> {
    let spk = prekeys.signed(initial.signed_prekey_id)?;
    let opk = match initial.one_time_prekey_id {
        Some(id) => Some(prekeys.one_time(id)?.secret()),
        None => None,
    };
    let mut out = derive_responder(
        ours.dh_secret(),
        &spk.secret(),
        opk.as_ref(),
        &initiator.dh_key(),
        &PublicKey::from(initial.ephemeral),
    )?;
    out.shared_secret = bind_identities(
        &out.shared_secret,
        &initiator.signing,
        &ours.public().signing,
    );
    Ok((out, Secret32::new(spk.secret().to_bytes())))
}
