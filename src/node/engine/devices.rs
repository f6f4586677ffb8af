//! Device lists (docs/devices.md): this account's, which this device
//! signs and sends to every contact when it changes, and each contact
//! account's newest, taken from its invites and its `Devices` payloads.

use std::collections::HashMap;

use super::{
    DEVICE_LIST_KEY, DevicesChange, Due, Engine, EngineError, Event, Forgotten, JOINING_KEY,
    MESSAGE_TTL,
};
use crate::crypto::{self, DeviceList, DeviceMembership, ListUpdate, Secret32, VerifiedDeviceList};
use crate::node::proto::{Frame, LinkRequest, MAX_SHARED_CONTACTS, Payload, SharedContact};
use crate::node::state::{Invite, LinkCode};
use crate::store::Kind;

/// Most invite bytes in one [`Payload::AccountContacts`] (a payload is at
/// most 64 KiB).
const SHARED_BYTES: usize = 40 * 1024;

/// How long a link code can be used (seconds).
pub const LINK_CODE_LIFE: u64 = 600;

/// What [`Engine::join`] did.
#[derive(Debug)]
pub enum Joined {
    /// The account's first device (a contact now) must get this `Link`
    /// frame, directly.
    Asked {
        /// Its identity key.
        first: [u8; 32],
        /// The encoded frame.
        frame: Vec<u8>,
    },
    /// The code's invite named this device in the account's list already:
    /// it is in the account (the first device's key).
    Already([u8; 32]),
}

/// What a list of this device's own account (or of the one it asked to
/// join) did to it ([`Engine::own_list_from`]).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum OwnList {
    /// Nothing: not a list this device takes as its own.
    Kept,
    /// It is this device's own list now (a later one of its account).
    Taken,
    /// This device joined the account it asked to join.
    Joined,
    /// The account's first device removed this device: it is an account
    /// of its own again.
    Left,
}

/// The link code this device made last, until it is used or ends.
pub(crate) struct PendingLink {
    secret: Secret32,
    expires_at: u64,
}

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

    /// A link code for a new device to join this account (`meshchat
    /// devices link`): this device's invite, a new secret and an end
    /// [`LINK_CODE_LIFE`] from now. Only the account's first device (which
    /// holds the account key) makes one; a new code replaces the one
    /// before, and a code is used once.
    pub fn link_code(&mut self, addrs: Vec<String>, now: u64) -> Result<LinkCode, EngineError> {
        if *self.devices.account() != self.me.public().signing {
            return Err(refused("only the account's first device links devices"));
        }
        if self.devices.devices().len() >= crypto::MAX_DEVICES {
            return Err(refused("the account lists the most devices it may"));
        }
        let invite = self.invite(addrs, now)?;
        let mut secret = [0u8; 32];
        rand::Rng::fill_bytes(&mut self.rng, &mut secret);
        let expires_at = now.saturating_add(LINK_CODE_LIFE);
        let code = LinkCode::new(&invite, secret, expires_at);
        self.link = Some(PendingLink {
            secret: Secret32::new(secret),
            expires_at,
        });
        Ok(code)
    }

    /// Whether a link code made here waits to be used at `now`.
    #[cfg(test)]
    pub(crate) fn link_waiting(&self, now: u64) -> bool {
        self.link.as_ref().is_some_and(|l| now < l.expires_at)
    }

    /// The device `from` (the connection it wrote on authenticates its
    /// key) asks to join this account. It must prove it holds the secret
    /// of the code waiting, before the code ends; then the code is used
    /// up, the device is added to the account's list under the name it
    /// asked for and becomes a contact, and the new list is queued for
    /// every contact, the new device among them (which takes it as its
    /// account's: [`Self::on_devices`]).
    pub fn accept_link(
        &mut self,
        from: &[u8; 32],
        req: &LinkRequest,
        now: u64,
    ) -> Result<(Vec<Due>, Event), EngineError> {
        let account = *self.devices.account();
        let Some(link) = &self.link else {
            return Err(refused("no link code is waiting"));
        };
        if now >= link.expires_at {
            self.link = None;
            return Err(refused("the link code has ended"));
        }
        if !crypto::link_proof_holds(link.secret.expose(), &account, from, &req.mac) {
            // Not used up: someone without the code cannot spoil it.
            return Err(refused("a link request without the code's secret"));
        }
        self.link = None;
        if self.contacts.contains_key(from) || self.accounts.contains_key(from) {
            return Err(refused("the device is a contact already"));
        }
        if req.name.chars().any(char::is_control) {
            return Err(refused("a device name with control characters"));
        }
        let invite = Invite::from_bytes(&req.invite)?;
        let identity = invite.verify()?.bundle.body.identity;
        if identity.signing != *from {
            return Err(refused("a link request with another device's invite"));
        }
        let joining = DeviceMembership {
            identity,
            proof: req.consent,
        };
        let list = self
            .devices
            .with_device(&self.me, &joining, &req.name, now)?
            .verify()?;
        self.check_list_devices(&list)?;
        // Its record: its bundle and addresses, without the list of the
        // account it was alone in.
        let plain = Invite::new(invite.bundle, invite.addrs);
        let key = self.put_contact(&plain, &req.name)?;
        self.adopt(&key)?;
        let before = self.devices.serial();
        let mut due = match self.set_own_list(list, now) {
            Ok(due) => due,
            Err(e) => {
                // Not listed after all: not a contact either, so that the
                // device can join with a new code.
                if self.devices.serial() == before {
                    let _ = self.remove_contact(&key);
                }
                return Err(e);
            }
        };
        // The account's contacts, so that the new device can write to
        // them (they take it in as a device of this account).
        match self.share_contacts(&key, now) {
            Ok(shared) => due.extend(shared),
            Err(e) => {
                tracing::warn!(error = %e, "the account's contacts not queued for its new device")
            }
        }
        Ok((
            due,
            Event::DeviceLinked {
                device: key,
                name: req.name.clone(),
            },
        ))
    }

    /// Removes the device `device` from this account (`meshchat devices
    /// remove`, on the first device): a list without it is signed, kept
    /// and queued for every contact, the removed device among them (which
    /// learns it was removed: [`OwnList::Left`]); whatever else was queued
    /// for it is given up (the events say so). It stays a contact here
    /// until that list is no longer queued for it
    /// ([`Self::forget_unlinked`]).
    pub fn remove_device(
        &mut self,
        device: &[u8; 32],
        now: u64,
    ) -> Result<(Vec<Due>, Vec<Event>), EngineError> {
        if *self.devices.account() != self.me.public().signing {
            return Err(refused("only the account's first device removes devices"));
        }
        let name = self
            .devices
            .device(device)
            .map(|d| d.name.clone())
            .unwrap_or_default();
        // Refuses this device and one not listed.
        let list = self.devices.without_device(&self.me, device)?.verify()?;
        // Recorded first: should what follows fail, the record of a
        // device still listed is dropped (`forget_unlinked`).
        if self.contacts.contains_key(device) {
            self.store
                .records(Kind::Identity)?
                .put(&unlinked_record(device), &now.to_be_bytes())?;
            self.unlinked.insert(*device, now);
        }
        let mut events = self.give_up_queued_for(device)?;
        let due = self.set_own_list(list, now)?;
        events.push(Event::DeviceUnlinked {
            device: *device,
            name,
        });
        Ok((due, events))
    }

    /// Forgets the devices removed from this account whose contact here
    /// has nothing queued any more (the list that tells them was
    /// acknowledged or expired), or whose removal is older than
    /// [`MESSAGE_TTL`] (what is still queued is given up: the events).
    /// Returns them, for the node to stop tracking. Called every tick;
    /// cheap when there are none. A store error is logged and ends the
    /// pass.
    pub fn forget_unlinked(&mut self, now: u64) -> (Vec<Forgotten>, Vec<Event>) {
        let mut gone = Vec::new();
        let mut events = Vec::new();
        if self.unlinked.is_empty() {
            return (gone, events);
        }
        let ready: Vec<[u8; 32]> = self
            .unlinked
            .iter()
            .filter(|(k, since)| {
                // Still listed: its removal failed half-way; nothing to do.
                self.devices.device(k).is_some()
                    || !self.schedule.has_any_for(k)
                    || now >= since.saturating_add(MESSAGE_TTL)
            })
            .map(|(k, _)| *k)
            .collect();
        for k in ready {
            let listed = self.devices.device(&k).is_some();
            match if listed {
                Ok(None)
            } else {
                self.drop_removed_device(&k)
            } {
                Ok(Some((was, given_up))) => {
                    events.extend(given_up);
                    gone.push(was);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "forgetting a device removed from this account");
                    break;
                }
            }
            let r = self
                .store
                .records(Kind::Identity)
                .and_then(|ids| ids.remove(&unlinked_record(&k)));
            if let Err(e) = r {
                tracing::warn!(error = %e, "forgetting a device removed from this account");
                break;
            }
            self.unlinked.remove(&k);
        }
        (gone, events)
    }

    /// Removes the contact `key`, a device its account no longer lists,
    /// giving up what is queued for it: how it was (its invite without the
    /// account's list, which no longer names it: what the node keeps of a
    /// former contact must verify), and the events of what was given up.
    /// `None` if it is no contact, or if it is in a group with this
    /// device: then it stays, no longer filed under the account, as a
    /// contact groups keep, which goes with the last group it shares with
    /// this device ([`Self::forget_orphans`]).
    fn drop_removed_device(
        &mut self,
        key: &[u8; 32],
    ) -> Result<Option<(Forgotten, Vec<Event>)>, EngineError> {
        let Some(c) = self.contacts.get(key) else {
            return Ok(None);
        };
        if self.in_a_group_with(key) {
            tracing::info!(
                device = %crate::store::hex(&key[..4]),
                "a device its account removed stays a contact while it is in a group with this device"
            );
            self.accounts.remove(key);
            if let Some(c) = self.contacts.get_mut(key)
                && !c.devices.is_empty()
            {
                c.devices = Vec::new();
                self.store
                    .records(Kind::Contacts)?
                    .put(key, &c.to_bytes())?;
            }
            self.mark_made(key)?;
            return Ok(None);
        }
        let mut bundle = c.bundle.clone();
        bundle.one_time = None;
        let was = Forgotten {
            key: *key,
            name: c.name.clone(),
            identity: c.identity.clone(),
            invite: Some(Invite::new(bundle, c.addrs.clone())),
        };
        let events = self.give_up_queued_for(key)?;
        self.remove_contact(key)?;
        Ok(Some((was, events)))
    }

    /// Drops the contacts filed under `account` that its list held no
    /// longer names (see [`Self::drop_removed_device`]), but never `from`,
    /// the device that sent the list. Run at every list of the account
    /// that comes, newer or not, so that a pass a store error ended (it is
    /// logged) is finished by the next.
    fn drop_unlisted(&mut self, account: &[u8; 32], from: &[u8; 32]) -> Vec<Event> {
        let Some(list) = self.held_list(account) else {
            return Vec::new();
        };
        let unlisted: Vec<[u8; 32]> = self
            .contacts
            .keys()
            .filter(|k| {
                *k != from && self.accounts.get(*k) == Some(account) && list.device(k).is_none()
            })
            .copied()
            .collect();
        let mut events = Vec::new();
        for key in unlisted {
            match self.drop_removed_device(&key) {
                Ok(Some((gone, given_up))) => {
                    events.extend(given_up);
                    events.push(Event::ContactDeviceRemoved {
                        account: *account,
                        gone: Box::new(gone),
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "dropping a device its account removed");
                    break;
                }
            }
        }
        events
    }

    /// Asks to join the account of the device that made `code` (`meshchat
    /// devices join`, on a new device): that device becomes a contact, and
    /// the request for it is returned with its key, to be sent directly
    /// (the only way a device that is not its contact yet is heard). The
    /// account is recorded as the one asked for: this device takes its
    /// list when it names this device, until this device adds a contact of
    /// its own ([`Self::own_list_from`]). Only a device with no other
    /// contact and no group joins: one in use is known to its contacts as
    /// an account of its own.
    pub fn join(&mut self, code: &LinkCode, name: &str, now: u64) -> Result<Joined, EngineError> {
        let me = self.me.public().signing;
        if now >= code.expires_at {
            return Err(refused("the link code has ended"));
        }
        if *self.devices.account() != me || self.devices.devices().len() > 1 {
            return Err(refused("this device is in an account already"));
        }
        let invite = code.invite()?;
        let verified = invite.verify()?;
        let account = verified.account();
        let first = verified.bundle.body.identity.signing;
        if first != account {
            return Err(refused(
                "a link code not made by its account's first device",
            ));
        }
        if first == me {
            return Err(refused("this device's own link code"));
        }
        if self.contacts.keys().any(|k| *k != first) || !self.groups().is_empty() {
            return Err(refused(
                "only a device with no contacts and no groups joins an account",
            ));
        }
        let called = verified
            .list
            .as_ref()
            .and_then(|l| l.device(&first))
            .map(|d| d.name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "my first device".to_owned());
        // Recorded first: the code's own invite may carry a list naming
        // this device already (a join asked for again), taken at once.
        self.set_joining(Some(account))?;
        let key = self.put_contact(&invite, &called)?;
        self.adopt(&key)?;
        if *self.devices.account() == account {
            return Ok(Joined::Already(key));
        }
        let mine = self.invite(self.listen.clone(), now)?;
        let request = LinkRequest {
            invite: Invite::new(mine.bundle, mine.addrs).to_bytes(),
            consent: DeviceMembership::new(&self.me, &account).proof,
            name: name.to_owned(),
            mac: crypto::link_proof(code.secret(), &account, &me),
        };
        Ok(Joined::Asked {
            first: key,
            frame: Frame::Link(request).to_bytes(),
        })
    }

    /// Queues this account's contacts (those the person took, not the ones
    /// only a group made, nor its own devices) for its device `to`, in
    /// payloads of at most [`MAX_SHARED_CONTACTS`] and about 40 KiB.
    fn share_contacts(&mut self, to: &[u8; 32], now: u64) -> Result<Vec<Due>, EngineError> {
        let own = *self.devices.account();
        let mut shared: Vec<SharedContact> = self
            .contacts
            .iter()
            .filter(|(k, _)| {
                *k != to
                    && !self.is_group_made(k)
                    && self.account_of(k) != own
                    && self.devices.device(k).is_none()
            })
            .filter_map(|(k, c)| {
                let invite = self.contact_invite(k).ok()?.to_bytes();
                Some(SharedContact {
                    name: c.name.clone(),
                    invite,
                })
            })
            .collect();
        shared.sort_by(|a, b| a.name.cmp(&b.name));
        if !self.contacts.contains_key(to) {
            return Ok(Vec::new());
        }
        let conv = self.conv_with_device(to);
        let mut due = Vec::new();
        let mut rest = shared.into_iter().peekable();
        while rest.peek().is_some() {
            let mut chunk = Vec::new();
            let mut bytes = 0;
            while let Some(next) = rest.peek() {
                let size = next.invite.len() + next.name.len();
                if chunk.len() == MAX_SHARED_CONTACTS
                    || (!chunk.is_empty() && bytes + size > SHARED_BYTES)
                {
                    break;
                }
                bytes += size;
                chunk.extend(rest.next());
            }
            let mut state = self.conv_state(&conv)?;
            state.lamport = state.lamport.saturating_add(1);
            let lamport = state.lamport;
            self.put_conv_state(&conv, &state)?;
            due.push(self.queue(to, &conv, Some(lamport), now, |id| {
                Payload::AccountContacts {
                    id,
                    contacts: chunk,
                }
            })?);
        }
        Ok(due)
    }

    /// Contacts the account's device `from` shared with this device, which
    /// joined its account: each becomes a contact here (under the name the
    /// account gave it, made unique), unless it is one already or a device
    /// of this account. `Err` (a crypto error, so the payload is refused)
    /// if `from` is not another device of this device's account.
    pub(super) fn on_account_contacts(
        &mut self,
        from: &[u8; 32],
        contacts: Vec<SharedContact>,
    ) -> Result<Option<Event>, EngineError> {
        let me = self.me.public().signing;
        if *self.devices.account() == me || self.devices.device(from).is_none() || *from == me {
            return Err(refused("contacts shared by a device not of this account"));
        }
        let mut added = Vec::new();
        for shared in contacts {
            let invite = match Invite::from_bytes(&shared.invite)
                .and_then(|i| i.verify().map(|v| (i, v)))
            {
                Ok((invite, verified)) => {
                    let key = verified.bundle.body.identity.signing;
                    if key == me
                        || self.contacts.contains_key(&key)
                        || self.devices.device(&key).is_some()
                    {
                        continue;
                    }
                    (invite, key)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a shared contact's invite does not check; skipped");
                    continue;
                }
            };
            let (invite, key) = invite;
            let name = self.introduced_name(&shared.name, &key);
            match self.put_contact(&invite, &name) {
                Ok(k) => {
                    self.adopt(&k)?;
                    added.push(k);
                }
                Err(EngineError::Store(e)) => return Err(e.into()),
                Err(e) => tracing::warn!(error = %e, "a shared contact not added"),
            }
        }
        Ok((!added.is_empty()).then_some(Event::AccountContacts { added }))
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
            .keys()
            .map(|k| (*k, self.conv_with_device(k)))
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
        // This account's own is kept as this device's (`own_list_from`).
        if list.account() == self.devices.account() {
            return Ok(());
        }
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
    /// names a device known in another account. A list of this device's
    /// own account, or of the account it asked to join, that names this
    /// device becomes its own ([`Event::AccountJoined`] when it joins).
    pub(super) fn on_devices(
        &mut self,
        from: &[u8; 32],
        bytes: &[u8],
        now: u64,
    ) -> Result<Vec<Event>, EngineError> {
        let list = DeviceList::from_bytes(bytes)?.verify()?;
        let contact = self.contacts.get(from).ok_or(EngineError::UnknownContact)?;
        if !list.names(&contact.identity) {
            return Err(refused("a list that does not name the device that sent it"));
        }
        self.check_list_devices(&list)?;
        let account = *list.account();
        let held = self.held_list(&account).cloned();
        if let Some(held) = &held
            && held.serial() == list.serial()
            && held.list() != list.list()
        {
            tracing::warn!(
                account = %crate::store::hex(&account[..4]),
                serial = list.serial(),
                "a contact's account signed two different device lists with one serial; the one held is kept"
            );
            return Ok(vec![Event::DevicesConflict {
                account,
                serial: list.serial(),
            }]);
        }
        let mut events = Vec::new();
        // Before the comparison below returns early: a list held already
        // (from an invite) may be the one that names this device.
        match self.own_list_from(&list, Some(now))? {
            OwnList::Joined => events.push(Event::AccountJoined {
                account,
                serial: list.serial(),
            }),
            OwnList::Left => events.push(Event::AccountLeft {
                account,
                serial: list.serial(),
            }),
            OwnList::Kept | OwnList::Taken => {}
        }
        let (added, removed) = match &held {
            Some(held) => match held.update(&list)? {
                ListUpdate::Newer { added, removed } => {
                    (added.into_iter().map(|d| d.signing).collect(), removed)
                }
                ListUpdate::Same | ListUpdate::Older => {
                    events.extend(self.drop_unlisted(&account, from));
                    return Ok(events);
                }
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
        let renamed = held.as_ref().map_or_else(Vec::new, |held| {
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
        // Devices the account removed are not taken for it any more: a
        // contact of its own made of one goes (a lost or stolen phone
        // stops getting what this device writes).
        events.extend(self.drop_unlisted(&account, from));
        events.insert(0, Event::DevicesChanged(change));
        Ok(events)
    }

    /// Whether a list held of a contact's account names the device `key`
    /// (a lookup, no signature checked: see [`Self::listed_device_name`]).
    pub fn is_listed(&self, key: &[u8; 32]) -> bool {
        self.lists.values().any(|l| l.device(key).is_some())
    }

    /// The name to make the device of `invite` a contact under when the
    /// newest list held of the account its invite names lists it with
    /// these very keys, and the person took that account as a contact
    /// (not one only a group made): the account vouches for it (each of
    /// its devices consented) — "alice laptop". `None` for any other
    /// device, or a contact already.
    pub fn listed_device_name(&self, invite: &Invite) -> Option<String> {
        let verified = invite.verify().ok()?;
        let identity = &verified.bundle.body.identity;
        let key = identity.signing;
        if self.contacts.contains_key(&key) {
            return None;
        }
        let account = verified.account();
        let list = self.lists.get(&account)?;
        if !list.names(identity) {
            return None;
        }
        let (_, contact) = self
            .contacts
            .iter()
            .filter(|(k, _)| self.account_of(k) == account && !self.is_group_made(k))
            .min_by_key(|(k, _)| **k != account)?;
        let device = list.device(&key).map(|d| d.name.as_str()).unwrap_or("");
        let device = if device.is_empty() { "device" } else { device };
        Some(self.introduced_name(&format!("{} {device}", contact.name), &key))
    }

    /// The newest list held of `account`: this device's own for its own
    /// account, else a contact account's.
    pub(super) fn held_list(&self, account: &[u8; 32]) -> Option<&VerifiedDeviceList> {
        if account == self.devices.account() {
            Some(&self.devices)
        } else {
            self.lists.get(account)
        }
    }

    /// Takes `list` as this device's own when it is a later list of its
    /// own account that names it, or a list naming it of the account it
    /// asked to join ([`Self::join`]: the only other account it consented
    /// to), while it has no contact outside that list and no group. A
    /// later list of its own account that does not name it (the first
    /// device removed it) makes it an account of its own again, when
    /// `now` is given ([`OwnList::Left`]).
    pub(super) fn own_list_from(
        &mut self,
        list: &VerifiedDeviceList,
        now: Option<u64>,
    ) -> Result<OwnList, EngineError> {
        let me = self.me.public();
        let account = *list.account();
        let joins = *self.devices.account() != account;
        if account == me.signing {
            return Ok(OwnList::Kept);
        }
        if joins {
            let alone = self.contacts.keys().all(|k| list.device(k).is_some())
                && self.groups().is_empty()
                && self.devices.devices().len() == 1;
            // Not an older list than one held (which may remove it).
            let older = self
                .lists
                .get(&account)
                .is_some_and(|h| h.serial() > list.serial());
            if self.joining != Some(account) || !alone || !list.names(me) || older {
                return Ok(OwnList::Kept);
            }
        } else if list.serial() <= self.devices.serial() {
            return Ok(OwnList::Kept);
        } else if !list.names(me) {
            let Some(now) = now else {
                tracing::warn!(
                    serial = list.serial(),
                    "this account's newest device list no longer names this device; the list held is kept"
                );
                return Ok(OwnList::Kept);
            };
            self.leave_account(now)?;
            return Ok(OwnList::Left);
        }
        self.store
            .records(Kind::Identity)?
            .put(DEVICE_LIST_KEY, &list.list().to_bytes())?;
        self.devices = list.clone();
        // Invites from now on carry the account's list.
        self.unasked = None;
        if joins {
            self.set_joining(None)?;
            // One copy of the own list: this device's.
            if self.lists.remove(&account).is_some() {
                self.store
                    .records(Kind::Contacts)?
                    .remove(&list_record(&account))?;
            }
            return Ok(OwnList::Joined);
        }
        Ok(OwnList::Taken)
    }

    /// This device, removed from its account, becomes an account of its
    /// own: a list naming it alone (under the name it had), whose serial
    /// (`now` ahead of 1) comes after any list it signed as an account
    /// before it joined. Its invites carry that list from now on; the
    /// account it left is a contact's account like any other.
    fn leave_account(&mut self, now: u64) -> Result<(), EngineError> {
        let me = self.me.public().signing;
        let name = self
            .devices
            .device(&me)
            .map(|d| d.name.clone())
            .unwrap_or_default();
        let own = DeviceList::first(&self.me, &name, now)?
            .verify()?
            .advanced(&self.me, now)?
            .verify()?;
        self.store
            .records(Kind::Identity)?
            .put(DEVICE_LIST_KEY, &own.list().to_bytes())?;
        self.devices = own;
        self.unasked = None;
        tracing::info!("this account's first device removed this device from the account");
        Ok(())
    }

    /// Records (or clears) the account this device asked to join.
    pub(super) fn set_joining(&mut self, account: Option<[u8; 32]>) -> Result<(), EngineError> {
        let ids = self.store.records(Kind::Identity)?;
        match &account {
            Some(a) => ids.put(JOINING_KEY, a)?,
            None => {
                ids.remove(JOINING_KEY)?;
            }
        }
        self.joining = account;
        Ok(())
    }
}

/// The identity record of a device removed from this account that is a
/// contact still ([`Engine::forget_unlinked`]).
fn unlinked_record(device: &[u8; 32]) -> Vec<u8> {
    [UNLINKED_PREFIX, device.as_slice()].concat()
}

const UNLINKED_PREFIX: &[u8] = b"unlinked:";

/// The devices removed from this account that are contacts still, with
/// when each was removed (an unreadable record is skipped: that contact
/// stays until the person removes it).
pub(super) fn load_unlinked(
    ids: &crate::store::Records<'_>,
) -> Result<HashMap<[u8; 32], u64>, EngineError> {
    let mut out = HashMap::new();
    for (key, value) in ids.scan(UNLINKED_PREFIX)? {
        let device = <[u8; 32]>::try_from(&key[UNLINKED_PREFIX.len()..]);
        let at = <[u8; 8]>::try_from(value.as_slice()).map(u64::from_be_bytes);
        match (device, at) {
            (Ok(d), Ok(at)) => {
                out.insert(d, at);
            }
            _ => tracing::warn!("an unreadable record of a removed device; ignored"),
        }
    }
    Ok(out)
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
    own: &[u8; 32],
) -> Result<ListsHeld, EngineError> {
    let records = store.records(Kind::Contacts)?;
    let mut lists: HashMap<[u8; 32], VerifiedDeviceList> = HashMap::new();
    for (key, bytes) in records.scan(LIST_PREFIX)? {
        match DeviceList::from_bytes(&bytes).and_then(|l| l.verify()) {
            // The own account's list is the device's own record.
            Ok(list) if list.account() == own => {}
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
        if list.account() == own {
            continue;
        }
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
