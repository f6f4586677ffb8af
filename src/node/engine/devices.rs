//! Device lists (docs/devices.md): this account's, which this device
//! signs and sends to every contact when it changes, and each contact
//! account's newest, taken from its invites and its `Devices` payloads.

use std::collections::HashMap;

use super::{DEVICE_LIST_KEY, DevicesChange, Due, Engine, EngineError, Event};
use crate::crypto::{self, DeviceList, ListUpdate, VerifiedDeviceList};
use crate::node::proto::{Payload, conversation_id};
use crate::store::Kind;

pub(super) fn refused(reason: &'static str) -> EngineError {
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
    pub(super) fn set_own_list(
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
            // Queued with the conversation's clock, like a retention
            // setting: an entry without one is taken for a read receipt,
            // which goes out once and is not retried.
            let mut state = self.conv_state(&conv)?;
            state.lamport = state.lamport.saturating_add(1);
            let lamport = state.lamport;
            self.put_conv_state(&conv, &state)?;
            let list = bytes.clone();
            due.push(
                self.queue(&key, &conv, Some(lamport), now, |id| Payload::Devices {
                    id,
                    list,
                    bundles: Vec::new(),
                })?,
            );
        }
        Ok(due)
    }

    /// The account the contact device `key` belongs to (itself if it
    /// came with no list).
    pub fn account_of(&self, key: &[u8; 32]) -> [u8; 32] {
        self.accounts.get(key).copied().unwrap_or(*key)
    }

    /// The newest device list held of `account`.
    pub fn contact_list(&self, account: &[u8; 32]) -> Option<&VerifiedDeviceList> {
        self.lists.get(account)
    }

    /// Keeps `list` as the newest of its account (in memory and in its
    /// record).
    pub(super) fn keep_list(&mut self, list: VerifiedDeviceList) -> Result<(), EngineError> {
        self.store
            .records(Kind::Contacts)?
            .put(&list_record(list.account()), &list.list().to_bytes())?;
        self.lists.insert(*list.account(), list);
        Ok(())
    }

    /// Refuses a list that names a contact device known in another
    /// account, or the account key of another account held: each device
    /// consented to it (`DeviceMembership`), but one that consented to two
    /// accounts stays in the first.
    pub(super) fn check_list_devices(&self, list: &VerifiedDeviceList) -> Result<(), EngineError> {
        for d in list.devices() {
            let k = &d.identity.signing;
            let elsewhere = self.accounts.get(k).is_some_and(|a| a != list.account())
                || (k != list.account() && self.lists.contains_key(k));
            if elsewhere {
                return Err(refused("a list naming a device of another account"));
            }
        }
        Ok(())
    }

    /// The contact `from` sent its account's device list. Kept if it is
    /// newer than the one held ([`Event::DevicesChanged`]); one that says
    /// something else than the list held under the same serial is not
    /// kept, and reported ([`Event::DevicesConflict`]); `Err` (a crypto
    /// error) if it is not a valid list naming `from` with its keys, or
    /// names a device known in another account.
    pub(super) fn on_devices(
        &mut self,
        from: &[u8; 32],
        bytes: &[u8],
    ) -> Result<Option<Event>, EngineError> {
        let list = DeviceList::from_bytes(bytes)?.verify()?;
        let contact = self.contacts.get(from).ok_or(EngineError::UnknownContact)?;
        if !list.names(&contact.identity) {
            return Err(refused("a list that does not name the device that sent it"));
        }
        self.check_list_devices(&list)?;
        let account = *list.account();
        let held = self.lists.get(&account);
        if let Some(held) = held
            && held.serial() == list.serial()
            && held.list() != list.list()
        {
            tracing::warn!(
                account = %crate::store::hex(&account[..4]),
                serial = list.serial(),
                "a contact's account signed two different device lists with one serial; the one held is kept"
            );
            return Ok(Some(Event::DevicesConflict {
                account,
                serial: list.serial(),
            }));
        }
        let (added, removed) = match held {
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
        let renamed = held.map_or_else(Vec::new, |held| {
            list.devices()
                .iter()
                .filter(|d| {
                    held.device(&d.identity.signing)
                        .is_some_and(|h| h.name != d.name)
                })
                .map(|d| d.identity.signing)
                .collect()
        });
        let change = DevicesChange {
            account,
            serial: list.serial(),
            devices: list.devices().to_vec(),
            added,
            removed,
            renamed,
        };
        self.keep_list(list)?;
        if let Some(c) = self.contacts.get_mut(from) {
            c.devices = bytes.to_vec();
            self.store
                .records(Kind::Contacts)?
                .put(from, &c.to_bytes())?;
        }
        self.accounts.insert(*from, account);
        Ok(Some(Event::DevicesChanged(change)))
    }
}

/// The record of an account's newest device list, among the contacts.
fn list_record(account: &[u8; 32]) -> Vec<u8> {
    [LIST_PREFIX, account.as_slice()].concat()
}

const LIST_PREFIX: &[u8] = b"list:";

/// The newest device list held of each account (from their records, and
/// from contacts' records made before those), and the account of each
/// contact device whose record has a list.
pub(super) fn load_lists(
    store: &crate::store::Store,
    contacts: &std::collections::HashMap<[u8; 32], crate::node::state::Contact>,
) -> Result<ListsHeld, EngineError> {
    let records = store.records(Kind::Contacts)?;
    let mut lists: HashMap<[u8; 32], VerifiedDeviceList> = HashMap::new();
    for (key, bytes) in records.scan(LIST_PREFIX)? {
        match DeviceList::from_bytes(&bytes).and_then(|l| l.verify()) {
            Ok(list) if key[LIST_PREFIX.len()..] == list.account()[..] => {
                lists.insert(*list.account(), list);
            }
            _ => tracing::warn!("an unreadable device list record; ignored"),
        }
    }
    let mut accounts = HashMap::new();
    for (key, c) in contacts {
        let Some(list) = c.device_list() else {
            continue;
        };
        accounts.insert(*key, *list.account());
        let newer = lists
            .get(list.account())
            .is_none_or(|held| held.serial() < list.serial());
        if newer {
            records.put(&list_record(list.account()), &list.list().to_bytes())?;
            lists.insert(*list.account(), list);
        }
    }
    Ok((lists, accounts))
}

/// What [`load_lists`] finds.
pub(super) type ListsHeld = (
    HashMap<[u8; 32], VerifiedDeviceList>,
    HashMap<[u8; 32], [u8; 32]>,
);
