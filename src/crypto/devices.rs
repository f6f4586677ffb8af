//! Accounts and their devices: the list of an account's devices, signed as
//! a whole by the account key (the signing key of its first device).
//!
//! A list is checked as a whole ([`DeviceList::verify`]) and replaced as a
//! whole: each change is a new list with a higher serial
//! ([`VerifiedDeviceList::with_device`], [`VerifiedDeviceList::without_device`]),
//! and whoever holds a list takes another one of the same account through
//! [`VerifiedDeviceList::update`], which never goes back to a lower serial.
//! `docs/devices.md` gives the encoding and how the node is to use it.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::identity::verify;
use super::wire::{self, bytes64};
use super::{DeviceIdentity, Error, PublicIdentity, kdf, labels};

/// The most devices an account lists, its first one included.
pub const MAX_DEVICES: usize = 8;
/// The longest device name, in bytes.
pub const MAX_DEVICE_NAME: usize = 64;
/// Encoded list limit (a full list with the longest names is under 1,700
/// bytes).
pub const DEVICE_LIST_MAX: usize = 4096;

const LIST_VERSION: u8 = 1;
const BODY_VERSION: u8 = 1;

/// One device of an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEntry {
    /// Its identity keys.
    pub identity: PublicIdentity,
    /// What its owner calls it ("laptop").
    pub name: String,
    /// When it was added (Unix seconds, the account device's clock).
    pub added_at: u64,
    /// The device's own signature of the account key
    /// (`labels::SIG_DEVICE_OF`): its consent to be in this account, so
    /// that an account cannot claim another's device.
    #[serde(with = "bytes64")]
    pub proof: [u8; 64],
}

/// A device's consent to join an account: its identity and its signature
/// of the account key, which the account's device puts in its list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceMembership {
    /// The joining device's identity.
    pub identity: PublicIdentity,
    /// Its signature over `labels::SIG_DEVICE_OF ‖ account`.
    pub proof: [u8; 64],
}

impl DeviceMembership {
    /// `device`'s consent to be in the account `account`.
    pub fn new(device: &DeviceIdentity, account: &[u8; 32]) -> Self {
        Self {
            identity: device.public().clone(),
            proof: device.sign(labels::SIG_DEVICE_OF, &[account]),
        }
    }
}

/// A joining device's proof that it was given a link code's `secret`:
/// HMAC-SHA256(secret, `labels::LINK` ‖ account ‖ device), over the
/// account it joins and its own signing key, so that the proof names both.
pub fn link_proof(secret: &[u8; 32], account: &[u8; 32], device: &[u8; 32]) -> [u8; 32] {
    kdf::hmac_sha256(secret, &[labels::LINK, account, device].concat())
}

/// Whether `mac` is [`link_proof`] of these (compared in constant time).
pub fn link_proof_holds(
    secret: &[u8; 32],
    account: &[u8; 32],
    device: &[u8; 32],
    mac: &[u8; 32],
) -> bool {
    use subtle::ConstantTimeEq;
    link_proof(secret, account, device).ct_eq(mac).into()
}

/// What the account key signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct DeviceListBody {
    version: u8,
    account: [u8; 32],
    serial: u64,
    devices: Vec<DeviceEntry>,
}

/// A device list as it travels: the encoded body and the account key's
/// signature over exactly those bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceList {
    version: u8,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
    /// Signature over `labels::SIG_DEVICE_LIST ‖ body`.
    #[serde(with = "bytes64")]
    sig: [u8; 64],
}

/// A list whose every rule and signature has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDeviceList {
    list: DeviceList,
    body: DeviceListBody,
}

/// What another list of the same account is, against the one held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListUpdate {
    /// A later list: it replaces the one held.
    Newer {
        /// Devices it lists that the one held does not (by identity).
        added: Vec<PublicIdentity>,
        /// Signing keys of devices the one held lists and it does not.
        removed: Vec<[u8; 32]>,
    },
    /// The list held, again.
    Same,
    /// An earlier list (a replay): ignored.
    Older,
}

fn refused(reason: &'static str) -> Error {
    Error::DeviceList { reason }
}

impl DeviceList {
    /// The list of a new account: its first device alone, serial 1.
    pub fn first(account: &DeviceIdentity, name: &str, now: u64) -> Result<Self, Error> {
        Self::sign(
            account,
            DeviceListBody {
                version: BODY_VERSION,
                account: account.public().signing,
                serial: 1,
                devices: vec![DeviceEntry {
                    identity: account.public().clone(),
                    name: name.to_owned(),
                    added_at: now,
                    proof: DeviceMembership::new(account, &account.public().signing).proof,
                }],
            },
        )
    }

    /// Checks `body` by the rules a reader applies, then signs it.
    fn sign(account: &DeviceIdentity, body: DeviceListBody) -> Result<Self, Error> {
        if body.account != account.public().signing {
            return Err(refused("signed by a key that is not the account's"));
        }
        check_body(&body)?;
        // The rules keep it under DEVICE_LIST_MAX (a test shows the largest).
        let bytes = wire::encode(&body);
        Ok(Self {
            version: LIST_VERSION,
            sig: account.sign(labels::SIG_DEVICE_LIST, &[&bytes]),
            body: bytes,
        })
    }

    /// Encoded form.
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(self)
    }

    /// Decodes (bounded) without verifying.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        wire::decode(bytes, "device list", LIST_VERSION, DEVICE_LIST_MAX)
    }

    /// Checks the versions, the rules of `docs/devices.md` §1 (one to
    /// [`MAX_DEVICES`] devices, the account's own first, none twice,
    /// each identity bound and usable, names bounded) and the account
    /// key's signature.
    pub fn verify(&self) -> Result<VerifiedDeviceList, Error> {
        // `from_bytes` checks it too; a list inside another structure comes
        // here without it.
        if self.version != LIST_VERSION {
            return Err(Error::UnknownVersion {
                what: "device list",
                got: self.version,
                expected: LIST_VERSION,
            });
        }
        let body: DeviceListBody = wire::decode(
            &self.body,
            "device list body",
            BODY_VERSION,
            DEVICE_LIST_MAX,
        )?;
        // The signature first: nothing below is worth doing for a list
        // its account did not sign.
        verify(
            &body.account,
            labels::SIG_DEVICE_LIST,
            &[&self.body],
            &self.sig,
            "device list",
        )?;
        check_body(&body)?;
        Ok(VerifiedDeviceList {
            list: self.clone(),
            body,
        })
    }
}

/// The rules every list meets, checked on signing and on reading.
fn check_body(body: &DeviceListBody) -> Result<(), Error> {
    if body.devices.is_empty() {
        return Err(refused("no devices"));
    }
    if body.devices.len() > MAX_DEVICES {
        return Err(refused("more than MAX_DEVICES devices"));
    }
    if body.devices[0].identity.signing != body.account {
        return Err(refused("its first device is not the account's own"));
    }
    let mut seen = HashSet::with_capacity(body.devices.len());
    for d in &body.devices {
        if !seen.insert(d.identity.signing) {
            return Err(refused("a device listed twice"));
        }
        if d.name.len() > MAX_DEVICE_NAME {
            return Err(refused("a device name over MAX_DEVICE_NAME bytes"));
        }
        d.identity.verify()?;
        kdf::check_public(&d.identity.dh, "device identity key")?;
        verify(
            &d.identity.signing,
            labels::SIG_DEVICE_OF,
            &[&body.account],
            &d.proof,
            "device list",
        )
        .map_err(|_| refused("a device that did not consent to the account"))?;
    }
    Ok(())
}

impl VerifiedDeviceList {
    /// The account key.
    pub fn account(&self) -> &[u8; 32] {
        &self.body.account
    }

    /// Its serial: higher is later.
    pub fn serial(&self) -> u64 {
        self.body.serial
    }

    /// The devices, the account's own first.
    pub fn devices(&self) -> &[DeviceEntry] {
        &self.body.devices
    }

    /// Whether it lists the device `identity` with exactly these keys.
    pub fn names(&self, identity: &PublicIdentity) -> bool {
        self.device(&identity.signing)
            .is_some_and(|d| d.identity == *identity)
    }

    /// The device with signing key `signing`, if listed.
    pub fn device(&self, signing: &[u8; 32]) -> Option<&DeviceEntry> {
        self.body
            .devices
            .iter()
            .find(|d| d.identity.signing == *signing)
    }

    /// The signed list, to send or store.
    pub fn list(&self) -> &DeviceList {
        &self.list
    }

    /// A next list with `identity` added as `name`, signed by `account`
    /// (the holder of the account key).
    pub fn with_device(
        &self,
        account: &DeviceIdentity,
        joining: &DeviceMembership,
        name: &str,
        now: u64,
    ) -> Result<DeviceList, Error> {
        if self.device(&joining.identity.signing).is_some() {
            return Err(refused("the device is listed already"));
        }
        let mut body = self.next()?;
        body.devices.push(DeviceEntry {
            identity: joining.identity.clone(),
            name: name.to_owned(),
            added_at: now,
            proof: joining.proof,
        });
        DeviceList::sign(account, body)
    }

    /// A next list without the device whose signing key is `device`,
    /// signed by `account`. The account's own device cannot be removed.
    pub fn without_device(
        &self,
        account: &DeviceIdentity,
        device: &[u8; 32],
    ) -> Result<DeviceList, Error> {
        if *device == self.body.account {
            return Err(refused("the account's own device cannot be removed"));
        }
        if self.device(device).is_none() {
            return Err(refused("the device is not listed"));
        }
        let mut body = self.next()?;
        body.devices.retain(|d| d.identity.signing != *device);
        DeviceList::sign(account, body)
    }

    /// A next list with the device whose signing key is `device` named
    /// `name`, signed by `account`.
    pub fn renamed(
        &self,
        account: &DeviceIdentity,
        device: &[u8; 32],
        name: &str,
    ) -> Result<DeviceList, Error> {
        let mut body = self.next()?;
        let entry = body
            .devices
            .iter_mut()
            .find(|d| d.identity.signing == *device)
            .ok_or(refused("the device is not listed"))?;
        entry.name = name.to_owned();
        DeviceList::sign(account, body)
    }

    /// The same list with its serial `by` higher, signed by `account`:
    /// what a device restored from a backup signs, so that its later lists
    /// come after any it signed since the backup was made.
    pub fn advanced(&self, account: &DeviceIdentity, by: u64) -> Result<DeviceList, Error> {
        let mut body = self.body.clone();
        body.serial = body
            .serial
            .checked_add(by)
            .ok_or(refused("its serial is at its largest"))?;
        DeviceList::sign(account, body)
    }

    /// This list's body with the serial one higher.
    fn next(&self) -> Result<DeviceListBody, Error> {
        let mut body = self.body.clone();
        body.serial = body
            .serial
            .checked_add(1)
            .ok_or(refused("its serial is at its largest"))?;
        Ok(body)
    }

    /// What `other`, a list that came for the same account, is against this
    /// one. Refused: a list of another account, and one with this list's
    /// serial but other contents (the account key signed two lists with one
    /// serial, which its device never does; this list stays).
    pub fn update(&self, other: &VerifiedDeviceList) -> Result<ListUpdate, Error> {
        if other.body.account != self.body.account {
            return Err(refused("a list of another account"));
        }
        match other.body.serial.cmp(&self.body.serial) {
            std::cmp::Ordering::Less => Ok(ListUpdate::Older),
            std::cmp::Ordering::Equal if other.list == self.list => Ok(ListUpdate::Same),
            std::cmp::Ordering::Equal => Err(refused("two different lists with one serial")),
            std::cmp::Ordering::Greater => {
                let added = other
                    .body
                    .devices
                    .iter()
                    .filter(|d| !self.body.devices.iter().any(|h| h.identity == d.identity))
                    .map(|d| d.identity.clone())
                    .collect();
                let removed = self
                    .body
                    .devices
                    .iter()
                    .filter(|h| !other.body.devices.iter().any(|d| d.identity == h.identity))
                    .map(|h| h.identity.signing)
                    .collect();
                Ok(ListUpdate::Newer { added, removed })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    type Change = Box<dyn FnOnce(&mut DeviceListBody)>;

    fn devices(n: usize, seed: u64) -> Vec<DeviceIdentity> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n).map(|_| DeviceIdentity::generate(&mut rng)).collect()
    }

    /// `list` re-signed by `key` with its body changed by `change`, skipping
    /// the signer's own checks: what a hostile or broken signer could send.
    fn forged(
        list: &VerifiedDeviceList,
        key: &DeviceIdentity,
        change: impl FnOnce(&mut DeviceListBody),
    ) -> DeviceList {
        let mut body = list.body.clone();
        change(&mut body);
        let bytes = wire::encode(&body);
        DeviceList {
            version: LIST_VERSION,
            sig: key.sign(labels::SIG_DEVICE_LIST, &[&bytes]),
            body: bytes,
        }
    }

    /// An account grows from its first device to the most it may list and
    /// back; every list decodes, verifies and names what it should; the
    /// serial goes up by one at each change.
    #[test]
    fn an_account_adds_and_removes_devices_each_change_a_later_list() {
        let d = devices(MAX_DEVICES + 1, 1);
        let first = DeviceList::first(&d[0], "phone", 100).unwrap();
        let mut held = DeviceList::from_bytes(&first.to_bytes())
            .unwrap()
            .verify()
            .unwrap();
        assert_eq!(held.account(), &d[0].public().signing);
        assert_eq!(held.serial(), 1);
        assert_eq!(held.devices()[0].name, "phone");
        for (i, dev) in d.iter().enumerate().take(MAX_DEVICES).skip(1) {
            // The longest names and times: the largest list there can be.
            let name = format!("{i}").repeat(MAX_DEVICE_NAME);
            let next = held
                .with_device(
                    &d[0],
                    &DeviceMembership::new(dev, &d[0].public().signing),
                    &name,
                    u64::MAX - i as u64,
                )
                .unwrap();
            let bytes = next.to_bytes();
            assert!(bytes.len() <= DEVICE_LIST_MAX);
            let next = DeviceList::from_bytes(&bytes).unwrap().verify().unwrap();
            assert_eq!(
                held.update(&next).unwrap(),
                ListUpdate::Newer {
                    added: vec![dev.public().clone()],
                    removed: vec![]
                }
            );
            assert_eq!(next.serial(), held.serial() + 1);
            assert_eq!(
                next.device(&dev.public().signing).unwrap().added_at,
                u64::MAX - i as u64
            );
            held = next;
        }
        assert_eq!(held.devices().len(), MAX_DEVICES);
        assert!(matches!(
            held.with_device(
                &d[0],
                &DeviceMembership::new(&d[MAX_DEVICES], &d[0].public().signing),
                "one too many",
                200
            ),
            Err(Error::DeviceList { .. })
        ));

        let gone = d[3].public().signing;
        let next = held.without_device(&d[0], &gone).unwrap().verify().unwrap();
        assert_eq!(
            held.update(&next).unwrap(),
            ListUpdate::Newer {
                added: vec![],
                removed: vec![gone]
            }
        );
        assert!(next.device(&gone).is_none());
        assert_eq!(next.devices().len(), MAX_DEVICES - 1);
        // Back to an earlier list: ignored; the same one again: nothing new.
        assert_eq!(next.update(&held).unwrap(), ListUpdate::Older);
        assert_eq!(next.update(&next.clone()).unwrap(), ListUpdate::Same);

        // A new name is a later list with the same devices.
        let named = next
            .renamed(&d[0], &d[1].public().signing, "tablet")
            .unwrap()
            .verify()
            .unwrap();
        assert_eq!(
            next.update(&named).unwrap(),
            ListUpdate::Newer {
                added: vec![],
                removed: vec![]
            }
        );
        assert_eq!(named.device(&d[1].public().signing).unwrap().name, "tablet");
        assert!(named.renamed(&d[0], &gone, "x").is_err());
        let long = "x".repeat(MAX_DEVICE_NAME + 1);
        assert!(named.renamed(&d[0], &d[0].public().signing, &long).is_err());
        assert!(
            named
                .renamed(&d[1], &d[1].public().signing, "mine")
                .is_err()
        );
        let ahead = named.advanced(&d[0], 1 << 20).unwrap().verify().unwrap();
        assert_eq!(ahead.serial(), named.serial() + (1 << 20));
        assert_eq!(ahead.devices(), named.devices());
        assert!(ahead.advanced(&d[0], u64::MAX).is_err());
    }

    /// Only the account's key makes a list: another device cannot sign
    /// one, nor pass itself off as the account; the account's own device
    /// stays; a device is not added twice nor removed when absent; names
    /// are bounded.
    #[test]
    fn only_the_account_key_changes_a_list_and_within_its_rules() {
        let d = devices(3, 2);
        let held = DeviceList::first(&d[0], "phone", 1)
            .unwrap()
            .verify()
            .unwrap();
        let refusal = |r: Result<DeviceList, Error>| match r {
            Err(Error::DeviceList { reason }) => reason,
            other => panic!("not refused: {other:?}"),
        };
        // Another device signs a change: refused at signing.
        refusal(held.with_device(
            &d[1],
            &DeviceMembership::new(&d[2], &d[1].public().signing),
            "x",
            2,
        ));
        // And a list it signed itself is refused on reading.
        let by_other = forged(&held, &d[1], |b| b.serial = 9);
        assert!(matches!(by_other.verify(), Err(Error::BadSignature { .. })));
        // It names itself as the account: its list is not the account's.
        let own = forged(&held, &d[1], |b| b.account = d[1].public().signing);
        let err = own.verify().unwrap_err();
        assert!(matches!(err, Error::DeviceList { .. }), "{err:?}");

        refusal(held.without_device(&d[0], &d[0].public().signing));
        refusal(held.without_device(&d[0], &d[1].public().signing));
        let two = held
            .with_device(
                &d[0],
                &DeviceMembership::new(&d[1], &d[0].public().signing),
                "laptop",
                2,
            )
            .unwrap()
            .verify()
            .unwrap();
        refusal(two.with_device(
            &d[0],
            &DeviceMembership::new(&d[1], &d[0].public().signing),
            "again",
            3,
        ));
        refusal(held.with_device(
            &d[0],
            &DeviceMembership::new(&d[2], &d[0].public().signing),
            &"n".repeat(MAX_DEVICE_NAME + 1),
            3,
        ));
        assert!(
            held.with_device(
                &d[0],
                &DeviceMembership::new(&d[2], &d[0].public().signing),
                &"n".repeat(MAX_DEVICE_NAME),
                3
            )
            .is_ok()
        );
    }

    /// Lists signed by the account key but breaking a rule, as a broken or
    /// hostile account device could make them, are refused on reading.
    #[test]
    fn a_signed_list_that_breaks_a_rule_is_refused() {
        let d = devices(3, 3);
        let held = DeviceList::first(&d[0], "phone", 1)
            .unwrap()
            .verify()
            .unwrap()
            .with_device(
                &d[0],
                &DeviceMembership::new(&d[1], &d[0].public().signing),
                "laptop",
                2,
            )
            .unwrap()
            .verify()
            .unwrap();
        let cases: Vec<(&str, Change)> = vec![
            ("empty", Box::new(|b| b.devices.clear())),
            ("account not first", Box::new(|b| b.devices.swap(0, 1))),
            (
                "twice",
                Box::new(|b| {
                    let again = b.devices[1].clone();
                    b.devices.push(again)
                }),
            ),
            (
                "long name",
                Box::new(|b| b.devices[1].name = "n".repeat(MAX_DEVICE_NAME + 1)),
            ),
            (
                "a device that did not consent",
                Box::new(|b| {
                    // Another device's signature in its place.
                    let other = devices(1, 9);
                    b.devices[1].proof = DeviceMembership::new(&other[0], &b.account).proof;
                }),
            ),
            (
                "a device whose consent is for another account",
                Box::new(|b| {
                    // The same seed: the listed device itself.
                    let same = devices(3, 3);
                    b.devices[1].proof = DeviceMembership::new(&same[1], &[7; 32]).proof;
                }),
            ),
            (
                "too many",
                Box::new(|b| {
                    let more = devices(MAX_DEVICES, 4);
                    for m in &more {
                        b.devices.push(DeviceEntry {
                            identity: m.public().clone(),
                            name: String::new(),
                            added_at: 0,
                            proof: DeviceMembership::new(m, &b.account).proof,
                        });
                    }
                }),
            ),
        ];
        for (case, change) in cases {
            let list = forged(&held, &d[0], change);
            let err = DeviceList::from_bytes(&list.to_bytes())
                .and_then(|l| l.verify())
                .unwrap_err();
            assert!(
                matches!(err, Error::DeviceList { .. } | Error::TooLarge { .. }),
                "{case}: {err:?}"
            );
        }
        // A listed identity whose X25519 key its signing key did not sign.
        let list = forged(&held, &d[0], |b| {
            b.devices[1].identity.dh = d[2].public().dh
        });
        assert!(matches!(list.verify(), Err(Error::BadSignature { .. })));
        // The body altered after signing.
        let mut list = held.list().clone();
        let last = list.body.len() - 1;
        list.body[last] ^= 1;
        assert!(list.verify().is_err());
    }

    /// Two different lists of one account with the same serial: the second
    /// is refused, and the one held stays; a list of another account is
    /// refused.
    #[test]
    fn two_lists_with_one_serial_and_lists_of_other_accounts_are_refused() {
        let d = devices(3, 5);
        let held = DeviceList::first(&d[0], "phone", 1)
            .unwrap()
            .verify()
            .unwrap();
        let a = held
            .with_device(
                &d[0],
                &DeviceMembership::new(&d[1], &d[0].public().signing),
                "laptop",
                2,
            )
            .unwrap()
            .verify()
            .unwrap();
        let b = held
            .with_device(
                &d[0],
                &DeviceMembership::new(&d[2], &d[0].public().signing),
                "tablet",
                2,
            )
            .unwrap()
            .verify()
            .unwrap();
        assert_eq!(a.serial(), b.serial());
        assert!(matches!(a.update(&b), Err(Error::DeviceList { .. })));
        let other = DeviceList::first(&d[1], "phone", 1)
            .unwrap()
            .verify()
            .unwrap();
        assert!(matches!(held.update(&other), Err(Error::DeviceList { .. })));
    }

    /// Bytes that are not a list: unknown versions, oversize, truncation
    /// and trailing bytes are refused before anything is checked.
    #[test]
    fn malformed_list_bytes_are_refused() {
        let d = devices(1, 6);
        let bytes = DeviceList::first(&d[0], "phone", 1).unwrap().to_bytes();
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert!(matches!(
            DeviceList::from_bytes(&v2),
            Err(Error::UnknownVersion { .. })
        ));
        assert!(matches!(
            DeviceList::from_bytes(&vec![1; DEVICE_LIST_MAX + 1]),
            Err(Error::TooLarge { .. })
        ));
        assert!(DeviceList::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            DeviceList::from_bytes(&long),
            Err(Error::TrailingBytes { .. })
        ));
        assert!(DeviceList::from_bytes(&[]).is_err());
        // A body with an unknown version inside a well-formed list.
        let mut list = DeviceList::from_bytes(&bytes).unwrap();
        list.body[0] = 2;
        assert!(matches!(list.verify(), Err(Error::UnknownVersion { .. })));
    }
}
