//! [`NodeHandle`]: the cheap, cloneable way into a running node.
//!
//! Every method sends one command on a bounded queue (waiting when the node
//! is busy) and awaits its answer. A method that returns after a write
//! (send, add a contact, mark read) returns after that write is flushed.

use std::sync::Arc;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

use super::engine::{GroupChange, GroupInfo};
use super::error::NodeError;
use super::proto::PresenceState;
use super::worker::{DevicesJob, RequestJob};
use crate::store::{Cursor, MessageRef, Page, Summary};

type Reply<T> = oneshot::Sender<Result<T, NodeError>>;

/// Messages per command of [`NodeHandle::send_many`].
const SEND_CHUNK: usize = 1024;

pub(crate) enum Command {
    Media(super::media::MediaJob),
    Send {
        to: [u8; 32],
        bodies: Vec<Vec<u8>>,
        reply: Reply<Vec<MessageRef>>,
    },
    AddContact {
        code: String,
        name: String,
        reply: Reply<[u8; 32]>,
    },
    Requests(super::worker::RequestJob),
    Devices(super::worker::DevicesJob),
    Invite {
        reply: Reply<String>,
    },
    MarkRead {
        with: [u8; 32],
        reply: Reply<bool>,
    },
    ClearHistory {
        with: [u8; 32],
        reply: Reply<usize>,
    },
    DeleteMessage {
        with: [u8; 32],
        message: MessageRef,
        reply: Reply<bool>,
    },
    History {
        with: [u8; 32],
        before: Option<Cursor>,
        limit: usize,
        reply: Reply<Page>,
    },
    Conversations {
        reply: Reply<Vec<Summary>>,
    },
    Contacts {
        reply: Reply<Vec<ContactInfo>>,
    },
    VerifyContact {
        key: [u8; 32],
        verified: bool,
        reply: Reply<()>,
    },
    RemoveContact {
        key: [u8; 32],
        reply: Reply<()>,
    },
    Export {
        with: Option<[u8; 32]>,
        path: std::path::PathBuf,
        reply: Reply<u64>,
    },
    Queued {
        reply: Reply<usize>,
    },
    CreateGroup {
        name: String,
        me_name: String,
        members: Vec<[u8; 32]>,
        retention: Option<u64>,
        reply: Reply<[u8; 32]>,
    },
    ChangeGroup {
        group: [u8; 32],
        change: GroupChange,
        reply: Reply<()>,
    },
    GroupSend {
        group: [u8; 32],
        bodies: Vec<Vec<u8>>,
        reply: Reply<Vec<MessageRef>>,
    },
    SetRetention {
        contact: [u8; 32],
        secs: Option<u64>,
        reply: Reply<()>,
    },
    Groups {
        reply: Reply<Vec<GroupInfo>>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Dial {
        addr: Multiaddr,
        reply: Reply<()>,
    },
    SetPresence {
        state: PresenceState,
        reply: oneshot::Sender<()>,
    },
    HidePresence {
        hidden: bool,
        reply: oneshot::Sender<()>,
    },
    Presence {
        contact: [u8; 32],
        reply: oneshot::Sender<Option<(PresenceState, u64)>>,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Who a node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Its libp2p peer id (from its identity key).
    pub peer_id: PeerId,
    /// Its identity key (Ed25519): how contacts name it.
    pub identity: [u8; 32],
    /// Its mailbox id.
    pub mailbox_id: [u8; 32],
}

/// One contact, as a user sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactInfo {
    /// Its identity key (Ed25519).
    pub identity: [u8; 32],
    /// Its libp2p peer id.
    pub peer_id: Option<PeerId>,
    /// What the user calls it.
    pub name: String,
    /// The id of the 1:1 conversation with it.
    pub conversation: [u8; 32],
    /// Its key's fingerprint (changes when its key does).
    pub fingerprint: String,
    /// Whether the user compared safety numbers with it.
    pub verified: bool,
    /// The safety number of this device and that contact: the same on
    /// both sides, compared out of band.
    pub safety_number: String,
    /// Its account's device list, if it sent one.
    pub devices: Option<DevicesInfo>,
    /// A group made it a contact (from a member's card) and the person has
    /// not taken it up (added, accepted, verified, written to it, set its
    /// timer or chosen it for a group): it goes when no group this device
    /// is in has it any more.
    pub from_group: bool,
}

/// One device of an account's device list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Its identity key (Ed25519).
    pub identity: [u8; 32],
    /// What its owner calls it (may be empty).
    pub name: String,
    /// When it was added (Unix seconds, by the account device's clock).
    pub added_at: u64,
}

/// An account's device list as a user sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicesInfo {
    /// The account key (its first device's identity key).
    pub account: [u8; 32],
    /// The list's serial (one higher at each change).
    pub serial: u64,
    /// Its devices, the account's own first.
    pub devices: Vec<DeviceInfo>,
}

impl DevicesInfo {
    pub(crate) fn of(list: &crate::crypto::VerifiedDeviceList) -> Self {
        Self::from_entries(*list.account(), list.serial(), list.devices())
    }

    /// The list of `account` with this `serial` and these devices.
    pub fn from_entries(
        account: [u8; 32],
        serial: u64,
        devices: &[crate::crypto::DeviceEntry],
    ) -> Self {
        Self {
            account,
            serial,
            devices: devices
                .iter()
                .map(|d| DeviceInfo {
                    identity: d.identity.signing,
                    name: d.name.clone(),
                    added_at: d.added_at,
                })
                .collect(),
        }
    }
}

/// A device that added our invite and introduced itself, and is not a
/// contact: it waits for [`NodeHandle::accept_request`] or
/// [`NodeHandle::decline_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactRequest {
    /// Its identity key (Ed25519).
    pub identity: [u8; 32],
    /// Its libp2p peer id.
    pub peer_id: Option<PeerId>,
    /// Its key's fingerprint, to compare out of band before accepting.
    pub fingerprint: String,
    /// When its introduction came (Unix seconds).
    pub received_at: u64,
    /// How many envelopes it sent that wait with it (read on acceptance).
    pub held: usize,
}

/// A snapshot of the node's network state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Peers with an open connection.
    pub connected: Vec<PeerId>,
    /// Addresses it listens on.
    pub listen: Vec<Multiaddr>,
    /// The presence it shows.
    pub presence: PresenceState,
    /// Whether it hides its presence.
    pub hidden: bool,
    /// Our relays (configured or found in the DHT).
    pub relays: Vec<PeerId>,
}

/// A handle on a running node; clone it freely.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    tx: mpsc::Sender<Command>,
    info: Arc<NodeInfo>,
    abort: AbortHandle,
    stopped: watch::Receiver<bool>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl NodeHandle {
    pub(crate) fn new(
        tx: mpsc::Sender<Command>,
        info: Arc<NodeInfo>,
        abort: AbortHandle,
        stopped: watch::Receiver<bool>,
    ) -> Self {
        Self {
            tx,
            info,
            abort,
            stopped,
        }
    }

    /// Who this node is.
    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    async fn ask_plain<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Writes a message to the contact `to`. Returns once it is stored and
    /// queued on disk; delivery follows (watch for receipts).
    pub async fn send(&self, to: [u8; 32], body: Vec<u8>) -> Result<MessageRef, NodeError> {
        let bodies = vec![body];
        let mut refs = self
            .ask(|reply| Command::Send { to, bodies, reply })
            .await?;
        refs.pop().ok_or(NodeError::Stopped)
    }

    /// Writes many messages to `to`, in this order, at once (a burst:
    /// they are queued on disk together and the outbox paces them out).
    /// Returns when all are stored and queued. They are written in chunks
    /// of 1,024, each checked before anything of it is written: if one
    /// fails after others were written, the error is
    /// [`NodeError::PartlySent`], naming those (a caller that sends the
    /// whole burst again would send them twice).
    pub async fn send_many(
        &self,
        to: [u8; 32],
        bodies: Vec<Vec<u8>>,
    ) -> Result<Vec<MessageRef>, NodeError> {
        let mut refs = Vec::with_capacity(bodies.len());
        let mut bodies = bodies.into_iter().peekable();
        while bodies.peek().is_some() {
            let chunk: Vec<Vec<u8>> = bodies.by_ref().take(SEND_CHUNK).collect();
            let got = self
                .ask(|reply| Command::Send {
                    to,
                    bodies: chunk,
                    reply,
                })
                .await;
            match got {
                Ok(got) => refs.extend(got),
                Err(error) if refs.is_empty() => return Err(error),
                Err(error) => {
                    return Err(NodeError::PartlySent {
                        sent: refs,
                        error: Box::new(error),
                    });
                }
            }
        }
        Ok(refs)
    }

    /// This node's invite code (with the addresses it listens on).
    pub async fn invite(&self) -> Result<String, NodeError> {
        self.ask(|reply| Command::Invite { reply }).await
    }

    /// Adds the contact an invite code names; returns its identity key.
    pub async fn add_contact(&self, code: &str, name: &str) -> Result<[u8; 32], NodeError> {
        let (code, name) = (code.to_owned(), name.to_owned());
        self.ask(|reply| Command::AddContact { code, name, reply })
            .await
    }

    /// Marks the conversation with `with` read and sends the read receipt;
    /// `false` if nothing was unread.
    pub async fn mark_read(&self, with: [u8; 32]) -> Result<bool, NodeError> {
        self.ask(|reply| Command::MarkRead { with, reply }).await
    }

    /// Deletes every message of the conversation with `with` (a contact
    /// or a group) from this device, with the files they carried; returns
    /// how many. The contact or group, the conversation's settings and
    /// what is still queued to be sent stay; no receipt is sent. Answers
    /// once the deletion is on disk.
    pub async fn clear_history(&self, with: [u8; 32]) -> Result<usize, NodeError> {
        self.ask(|reply| Command::ClearHistory { with, reply })
            .await
    }

    /// Deletes one message of the conversation with `with` (a contact or
    /// a group) from this device, with the file it carries, if any;
    /// `false` if it is not stored. Nothing is sent: the other devices
    /// keep their copies. Answers once the deletion is on disk.
    pub async fn delete_message(
        &self,
        with: [u8; 32],
        message: MessageRef,
    ) -> Result<bool, NodeError> {
        self.ask(|reply| Command::DeleteMessage {
            with,
            message,
            reply,
        })
        .await
    }

    /// Creates a group named `name` with the contacts `members`; this
    /// device is its first admin and goes by `me_name` in it. Messages
    /// sent to it disappear `retention` seconds after sending, if set.
    /// Returns the group id (also its conversation id) once the group is
    /// on disk; the members hear of it through their outboxes.
    pub async fn create_group(
        &self,
        name: &str,
        me_name: &str,
        members: Vec<[u8; 32]>,
        retention: Option<u64>,
    ) -> Result<[u8; 32], NodeError> {
        self.ask(|reply| Command::CreateGroup {
            name: name.to_owned(),
            me_name: me_name.to_owned(),
            members,
            retention,
            reply,
        })
        .await
    }

    /// Adds, removes, renames, sets retention (admins), or leaves.
    pub async fn change_group(
        &self,
        group: [u8; 32],
        change: GroupChange,
    ) -> Result<(), NodeError> {
        self.ask(|reply| Command::ChangeGroup {
            group,
            change,
            reply,
        })
        .await
    }

    /// Makes the 1:1 conversation with `contact` temporary (messages
    /// written from now on, by either side, disappear `secs` after they
    /// are sent, on both devices and at relays) or, with `None`, permanent
    /// again. The contact is told (queued, like a message). For a group
    /// see [`GroupChange::Retention`].
    pub async fn set_retention(
        &self,
        contact: [u8; 32],
        secs: Option<u64>,
    ) -> Result<(), NodeError> {
        self.ask(|reply| Command::SetRetention {
            contact,
            secs,
            reply,
        })
        .await
    }

    /// Writes a message to a group. Returns once it is stored; it goes out
    /// on the group's topic, and to each member that does not acknowledge
    /// it in time, 1:1.
    pub async fn send_group(
        &self,
        group: [u8; 32],
        body: Vec<u8>,
    ) -> Result<MessageRef, NodeError> {
        let refs = self
            .ask(|reply| Command::GroupSend {
                group,
                bodies: vec![body],
                reply,
            })
            .await?;
        refs.into_iter().next().ok_or(NodeError::Stopped)
    }

    /// Sends a file to the contact `to` (at most
    /// [`crate::crypto::media::MAX_MEDIA`] bytes): its encrypted chunks are
    /// kept here, and a message carrying what opens them goes like any
    /// other. The contact's device fetches the chunks from this one when
    /// it has the message, and says [`super::NodeEvent::MediaReady`].
    pub async fn send_media(
        &self,
        to: [u8; 32],
        file: super::media::MediaFile,
    ) -> Result<MessageRef, NodeError> {
        let body = self.keep_media(file).await?;
        let sent = self.send(to, body.clone()).await;
        self.unkeep_if_failed(&sent, body).await;
        sent
    }

    /// [`NodeHandle::send_media`] to a group: every member fetches the
    /// chunks from this device.
    pub async fn send_group_media(
        &self,
        group: [u8; 32],
        file: super::media::MediaFile,
    ) -> Result<MessageRef, NodeError> {
        let body = self.keep_media(file).await?;
        let sent = self.send_group(group, body.clone()).await;
        self.unkeep_if_failed(&sent, body).await;
        sent
    }

    /// Encrypts `file` (off the async threads) and has its chunks kept;
    /// the body of the message that carries it.
    async fn keep_media(&self, file: super::media::MediaFile) -> Result<Vec<u8>, NodeError> {
        let sealed = tokio::task::spawn_blocking(move || {
            let mut rng = rand::rng();
            crate::crypto::media::Manifest::seal(&file.data, &file.name, &file.mime, &mut rng)
        })
        .await
        .map_err(|e| NodeError::Media(e.to_string()))??;
        let (manifest, chunks) = sealed;
        let body = manifest.to_body();
        let owner = crate::store::media_owner(&body, &self.info.identity);
        let chunks = manifest.chunks.iter().copied().zip(chunks).collect();
        self.ask(|reply| {
            Command::Media(super::media::MediaJob::Put {
                owner,
                chunks,
                reply,
            })
        })
        .await?;
        Ok(body)
    }

    async fn unkeep_if_failed(&self, sent: &Result<MessageRef, NodeError>, body: Vec<u8>) {
        if sent.is_err() {
            let _ = self
                .tx
                .send(Command::Media(super::media::MediaJob::Forget { body }))
                .await;
        }
    }

    /// The file of a media message, once every chunk is here (after
    /// [`super::NodeEvent::MediaReady`], or at once for one this device
    /// sent). Each chunk is checked against the message before it is
    /// decrypted.
    pub async fn media(&self, message: MessageRef) -> Result<super::media::MediaFile, NodeError> {
        self.ask(|reply| Command::Media(super::media::MediaJob::Read { message, reply }))
            .await
    }

    /// The groups this device knows (joined, or left).
    pub async fn groups(&self) -> Result<Vec<GroupInfo>, NodeError> {
        self.ask(|reply| Command::Groups { reply }).await
    }

    /// A page of the conversation with `with`, newest first.
    pub async fn history(
        &self,
        with: [u8; 32],
        before: Option<Cursor>,
        limit: usize,
    ) -> Result<Page, NodeError> {
        self.ask(|reply| Command::History {
            with,
            before,
            limit,
            reply,
        })
        .await
    }

    /// Every conversation with its newest message.
    pub async fn conversations(&self) -> Result<Vec<Summary>, NodeError> {
        self.ask(|reply| Command::Conversations { reply }).await
    }

    /// Every contact, in no particular order.
    pub async fn contacts(&self) -> Result<Vec<ContactInfo>, NodeError> {
        self.ask(|reply| Command::Contacts { reply }).await
    }

    /// The contact requests waiting, oldest first.
    pub async fn requests(&self) -> Result<Vec<ContactRequest>, NodeError> {
        self.ask(|reply| Command::Requests(RequestJob::List { reply }))
            .await
    }

    /// Accepts the request of `key`: it becomes a contact called `name`
    /// (as if its invite were added), and what it sent meanwhile is read.
    /// [`NodeError::UnknownContact`] if no request of it waits.
    pub async fn accept_request(&self, key: [u8; 32], name: &str) -> Result<(), NodeError> {
        let name = name.to_owned();
        self.ask(|reply| Command::Requests(RequestJob::Accept { key, name, reply }))
            .await
    }

    /// Declines the request of `key`: what it sent goes, and its later
    /// introductions are ignored (until its invite is added).
    /// [`NodeError::UnknownContact`] if no request of it waits.
    pub async fn decline_request(&self, key: [u8; 32]) -> Result<(), NodeError> {
        self.ask(|reply| Command::Requests(RequestJob::Decline { key, reply }))
            .await
    }

    /// This account's device list.
    pub async fn devices(&self) -> Result<DevicesInfo, NodeError> {
        self.ask(|reply| Command::Devices(DevicesJob::List { reply }))
            .await
    }

    /// Names this device `name` in its account's device list (at most
    /// [`crate::crypto::MAX_DEVICE_NAME`] bytes): the list is signed again
    /// and sent to every contact. Returns the new list.
    pub async fn name_device(&self, name: &str) -> Result<DevicesInfo, NodeError> {
        let name = name.to_owned();
        self.ask(|reply| Command::Devices(DevicesJob::Name { name, reply }))
            .await
    }

    /// Removes the device `device` (its identity key) from this account
    /// (only on the account's first device): the list without it is
    /// signed and sent to every contact, the removed device among them.
    /// Returns the new list.
    pub async fn remove_device(&self, device: [u8; 32]) -> Result<DevicesInfo, NodeError> {
        self.ask(|reply| Command::Devices(DevicesJob::Remove { device, reply }))
            .await
    }

    /// A link code for a new device to join this account (only on the
    /// account's first device): usable once, for
    /// [`crate::node::LINK_CODE_LIFE`] seconds.
    pub async fn link_device(&self) -> Result<String, NodeError> {
        self.ask(|reply| {
            Command::Devices(DevicesJob::Link {
                addrs: Vec::new(),
                reply,
            })
        })
        .await
    }

    /// Asks to join the account whose first device made the link `code`,
    /// under the name `name`: that device becomes a contact and is sent
    /// the request whenever it is connected, until the code ends. This
    /// device is in the account when [`super::NodeEvent::AccountJoined`] comes
    /// (and [`Self::devices`] shows the account's list). Returns the first
    /// device's identity key. Only a device with no contacts and no groups
    /// joins.
    pub async fn join_account(&self, code: &str, name: &str) -> Result<[u8; 32], NodeError> {
        let (code, name) = (code.to_owned(), name.to_owned());
        self.ask(|reply| {
            Command::Devices(DevicesJob::Join {
                code,
                name,
                addrs: Vec::new(),
                reply,
            })
        })
        .await
    }

    /// Records that the user compared safety numbers with `key` (or takes
    /// that back); flushed before it returns.
    pub async fn verify_contact(&self, key: [u8; 32], verified: bool) -> Result<(), NodeError> {
        self.ask(|reply| Command::VerifyContact {
            key,
            verified,
            reply,
        })
        .await
    }

    /// Forgets a contact (its conversation stays); flushed before it
    /// returns.
    pub async fn remove_contact(&self, key: [u8; 32]) -> Result<(), NodeError> {
        self.ask(|reply| Command::RemoveContact { key, reply })
            .await
    }

    /// Writes the conversation with `with` as JSON (its messages,
    /// decrypted, oldest first) to the new file `path`, owner-only; with
    /// `None`, a backup of the whole store (still encrypted: it restores
    /// only with this keystore). Returns how many messages or records were
    /// written. The file is complete and synced before it gets its name.
    pub async fn export(
        &self,
        with: Option<[u8; 32]>,
        path: std::path::PathBuf,
    ) -> Result<u64, NodeError> {
        self.ask(|reply| Command::Export { with, path, reply })
            .await
    }

    /// How many messages still wait for their recipient.
    pub async fn queued(&self) -> Result<usize, NodeError> {
        self.ask(|reply| Command::Queued { reply }).await
    }

    /// Addresses the node listens on.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NodeError> {
        self.ask_plain(|reply| Command::ListenAddrs { reply }).await
    }

    /// Dials an address.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NodeError> {
        self.ask(|reply| Command::Dial { addr, reply }).await
    }

    /// Shows this presence to contacts (sent at once, then on heartbeat).
    pub async fn set_presence(&self, state: PresenceState) -> Result<(), NodeError> {
        self.ask_plain(|reply| Command::SetPresence { state, reply })
            .await
    }

    /// Hides presence (contacts see offline) or shows it again.
    pub async fn hide_presence(&self, hidden: bool) -> Result<(), NodeError> {
        self.ask_plain(|reply| Command::HidePresence { hidden, reply })
            .await
    }

    /// A contact's presence and last-seen time (Unix ms), if heard.
    pub async fn presence(
        &self,
        contact: [u8; 32],
    ) -> Result<Option<(PresenceState, u64)>, NodeError> {
        self.ask_plain(|reply| Command::Presence { contact, reply })
            .await
    }

    /// Connections, addresses, presence.
    pub async fn status(&self) -> Result<Status, NodeError> {
        self.ask_plain(|reply| Command::Status { reply }).await
    }

    /// Stops the node: tells peers it goes offline, finishes and flushes
    /// the store's work, closes every connection. Returns when the store is
    /// closed (so the data directory can be opened again), or after the
    /// configured bound.
    pub async fn shutdown(&self, bound: Duration) -> Result<(), NodeError> {
        let asked = self.ask_plain(|reply| Command::Shutdown { reply });
        let _ = tokio::time::timeout(bound, asked).await;
        self.wait_stopped(bound).await
    }

    /// Stops the node at once, as a crash or a pulled cable would: no
    /// goodbye to peers. What was acknowledged to callers and peers is on
    /// disk; a contact's "delivered" reported in the last `FLUSH_DEFER`
    /// (20 ms) may not be, and that message then goes to it again.
    pub fn kill(&self) {
        self.abort.abort();
    }

    /// Waits until the store thread has exited and closed the store.
    pub async fn wait_stopped(&self, bound: Duration) -> Result<(), NodeError> {
        let mut rx = self.stopped.clone();
        match tokio::time::timeout(bound, rx.wait_for(|s| *s)).await {
            Ok(Ok(_)) => Ok(()),
            // The sender is dropped only after it sent `true`.
            Ok(Err(_)) => Ok(()),
            Err(_) => Err(NodeError::Stopped),
        }
    }
}
