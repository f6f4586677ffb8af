//! Device lists (docs/devices.md): this account's, which this device
//! signs and sends to every contact when it changes, and each contact
//! account's newest, taken from its invites and its `Devices` payloads.

use super::{DEVICE_LIST_KEY, DevicesChange, Due, Engine, EngineError};
use crate::crypto::{self, DeviceList, ListUpdate, VerifiedDeviceList};
use crate::node::proto::{Payload, conversation_id};
use crate::store::Kind;

fn refused(reason: &'static str) -> EngineError {
    crypto::Error::DeviceList { reason }.into()
}

impl Engine {
    /// Names this device `name` in its account's list: the list is signed
    /// again (its serial one higher), kept, and queued for every contact
    /// (retried until each acknowledges it). Nothing is sent when the
    /// name is the one it has.
    pub fn name_device(&mut self, name: &str, now: u64) -> Result<Vec<Due>, EngineError> {
        let me = self.me.public().signing;
        if self.devices.device(&me).is_some_and(|d| d.name == name) {
            return Ok(Vec::new());
        }
        if *self.devices.account() != me {
            return Err(refused("only the account's first device changes its list"));
        }
        let list = self.devices.renamed(&self.me, &me, name)?.verify()?;
        self.set_own_list(list, now)
    }

    /// Keeps `list` as this account's, and queues it for every contact.
    fn set_own_list(
        &mut self,
        list: VerifiedDeviceList,
        now: u64,
    ) -> Result<Vec<Due>, EngineError> {
        let bytes = list.list().to_bytes();
        self.store
            .records(Kind::Identity)?
            .put(DEVICE_LIST_KEY, &bytes)?;
        self.devices = list;
        // Invites from now on carry the new list.
        self.unasked = None;
        let contacts: Vec<([u8; 32], [u8; 32])> = self
            .contacts
            .iter()
            .map(|(k, c)| (*k, conversation_id(self.me.public(), &c.identity)))
            .collect();
        let mut due = Vec::with_capacity(contacts.len());
        for (key, conv) in contacts {
            let list = bytes.clone();
            due.push(self.queue(&key, &conv, None, now, |id| Payload::Devices {
                id,
                list,
                bundles: Vec::new(),
            })?);
        }
        Ok(due)
    }

    /// The account the contact device `key` belongs to, as the lists held
    /// say (itself if none names it).
    pub fn account_of(&self, key: &[u8; 32]) -> [u8; 32] {
        self.lists
            .values()
            .find(|l| l.device(key).is_some())
            .map_or(*key, |l| *l.account())
    }

    /// The newest device list held of `account`.
    pub fn contact_list(&self, account: &[u8; 32]) -> Option<&VerifiedDeviceList> {
        self.lists.get(account)
    }

    /// The contact `from` sent its account's device list. Kept if it is
    /// newer than the one held (and then with every contact device it
    /// names); `Err` (a crypto error) if it is not a valid list naming
    /// `from` with its keys, or is of another account than the one
    /// `from` is known in, or says something else than the list held
    /// under the same serial.
    pub(super) fn on_devices(
        &mut self,
        from: &[u8; 32],
        bytes: &[u8],
    ) -> Result<Option<DevicesChange>, EngineError> {
        let list = DeviceList::from_bytes(bytes)?.verify()?;
        let contact = self.contacts.get(from).ok_or(EngineError::UnknownContact)?;
        if list.device(from).map(|d| &d.identity) != Some(&contact.identity) {
            return Err(refused("a list that does not name the device that sent it"));
        }
        let known = self.account_of(from);
        if self.lists.contains_key(&known) && known != *list.account() {
            return Err(refused("a list of another account than the device's"));
        }
        let account = *list.account();
        let (added, removed) = match self.lists.get(&account) {
            Some(held) => match held.update(&list)? {
                ListUpdate::Newer { added, removed } => {
                    (added.into_iter().map(|d| d.signing).collect(), removed)
                }
                ListUpdate::Same | ListUpdate::Older => return Ok(None),
            },
            // Its first list: every device but the one it came from is
            // news.
            None => (
                list.devices()
                    .iter()
                    .map(|d| d.identity.signing)
                    .filter(|k| k != from)
                    .collect(),
                Vec::new(),
            ),
        };
        let renamed = match self.lists.get(&account) {
            Some(held) => list
                .devices()
                .iter()
                .filter(|d| {
                    held.device(&d.identity.signing)
                        .is_some_and(|h| h.name != d.name)
                })
                .map(|d| d.identity.signing)
                .collect(),
            None => Vec::new(),
        };
        // Kept with every contact device it names, so the newest comes
        // back at the start whichever of them is read first.
        let records = self.store.records(Kind::Contacts)?;
        for (key, c) in &mut self.contacts {
            if list.device(key).map(|d| &d.identity) == Some(&c.identity) {
                c.devices = bytes.to_vec();
                records.put(key, &c.to_bytes())?;
            }
        }
        let change = DevicesChange {
            account,
            serial: list.serial(),
            devices: list.devices().to_vec(),
            added,
            removed,
            renamed,
        };
        self.lists.insert(account, list);
        Ok(Some(change))
    }
}
