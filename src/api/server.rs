//! The daemon's side of the local API: a Unix socket, one task per client.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, broadcast, mpsc};
use tracing::{debug, warn};

use super::proto::{
    Answer, ApiError, ContactView, DEFAULT_PAGE, DevicesView, ErrorKind, EventView, GroupView,
    MAX_LINE, MAX_PAGE, MessageView, PAGE_BYTES, PageView, Request, SentView, hex, presence_name,
    unhex32,
};
use crate::crypto;
use crate::node::engine::{GroupChange, GroupInfo, MAX_RETENTION};
use crate::node::groups::Role;
use crate::node::groups::{MAX_GROUP_NAME, MAX_MEMBER_NAME};
use crate::node::state::Invite;
use crate::node::{ContactInfo, NodeError, NodeEvent, NodeHandle, PresenceState};

use crate::store::{Cursor, History};

/// What `send`, `history` and `read` name: a contact or a group.
enum Target {
    Contact([u8; 32]),
    Group([u8; 32]),
}

impl Target {
    /// The key the node's handle takes for it.
    fn key(&self) -> [u8; 32] {
        match self {
            Self::Contact(k) | Self::Group(k) => *k,
        }
    }
}

/// Most clients served at once; more are told so and closed.
pub const MAX_CLIENTS: usize = 64;
/// Events held for a slow event-stream client before it misses some.
const EVENT_BACKLOG: usize = 4096;
/// Longest a client may leave a write unread (an answer, or an event on
/// its stream).
pub(crate) const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Pause after a failed accept (out of file descriptors, say) before the
/// next, so the loop does not spin.
pub(crate) const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);
/// After refusing an over-long line: how long, and how much of the rest,
/// is read and dropped before closing.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);
const DRAIN_BYTES: u64 = 4 * 1024 * 1024;
/// Longest contact name, in bytes.
pub const MAX_NAME: usize = 64;

/// The API over a running node: answers requests, fans events out.
#[derive(Clone)]
pub struct Api {
    node: NodeHandle,
    events: broadcast::Sender<NodeEvent>,
    /// Contact names by identity key, for events.
    names: Arc<RwLock<HashMap<[u8; 32], String>>>,
    /// Group names by group id (also their conversation ids).
    group_names: Arc<RwLock<HashMap<[u8; 32], String>>>,
    /// The identity keys of this account's other devices (messages they
    /// wrote are this account's).
    own: Arc<RwLock<Vec<[u8; 32]>>>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").finish_non_exhaustive()
    }
}

impl Api {
    /// Takes the node and its event stream (a task forwards the events to
    /// every subscribed client). Must run inside a tokio runtime.
    pub async fn new(node: NodeHandle, mut events: mpsc::Receiver<NodeEvent>) -> Self {
        let (tx, _) = broadcast::channel(EVENT_BACKLOG);
        let api = Self {
            node,
            events: tx.clone(),
            names: Arc::default(),
            group_names: Arc::default(),
            own: Arc::default(),
        };
        api.refresh_names().await;
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                // No subscriber is fine: nobody is listening.
                let _ = tx.send(e);
            }
        });
        api
    }

    /// The node's events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    /// The node's events from now on, as the API shows them.
    pub(crate) fn feed(&self) -> Feed {
        Feed {
            api: self.clone(),
            rx: self.subscribe(),
            held: None,
        }
    }

    async fn refresh_names(&self) {
        if let Ok(list) = self.node.contacts().await
            && let Ok(mut names) = self.names.write()
        {
            *names = list.into_iter().map(|c| (c.identity, c.name)).collect();
        }
        if let Ok(list) = self.node.groups().await
            && let Ok(mut names) = self.group_names.write()
        {
            *names = list.into_iter().map(|g| (g.id, g.name)).collect();
        }
        self.refresh_own().await;
    }

    async fn refresh_own(&self) {
        if let Ok(list) = self.node.devices().await
            && let Ok(mut own) = self.own.write()
        {
            *own = list.devices.into_iter().map(|d| d.identity).collect();
        }
    }

    /// Whether `key` is this device's, or another device's of its account.
    pub(crate) fn mine(&self, key: &[u8; 32]) -> bool {
        *key == self.me() || self.own.read().is_ok_and(|o| o.contains(key))
    }

    /// The group whose conversation `conv` is: id (hex) and name.
    pub(crate) fn group_of(&self, conv: &[u8; 32]) -> Option<(String, String)> {
        let names = self.group_names.read().ok()?;
        names.get(conv).map(|n| (hex(conv), n.clone()))
    }

    /// This device's identity key.
    pub(crate) fn me(&self) -> [u8; 32] {
        self.node.info().identity
    }

    /// Whether `key` is a contact known by name.
    pub(crate) fn knows(&self, key: &[u8; 32]) -> bool {
        self.names.read().is_ok_and(|n| n.contains_key(key))
    }

    pub(crate) fn name_of(&self, key: &[u8; 32]) -> String {
        self.names
            .read()
            .ok()
            .and_then(|n| n.get(key).cloned())
            .unwrap_or_else(|| hex(key))
    }

    /// Answers one request (anything but `events`).
    pub async fn answer(&self, req: Request) -> Result<serde_json::Value, ApiError> {
        use serde_json::json;
        let me = self.node.info().identity;
        match req {
            Request::Id {} => {
                let code = self.node.invite().await.map_err(failed)?;
                let info = self.node.info();
                Ok(json!({
                    "peer_id": info.peer_id.to_string(),
                    "identity": hex(&info.identity),
                    "fingerprint": crypto::fingerprint(&invite_identity(&code)?),
                    "invite": code,
                }))
            }
            Request::Contacts {} => {
                let mut list = self.node.contacts().await.map_err(failed)?;
                list.sort_by(|a, b| a.name.cmp(&b.name));
                let mut out = Vec::with_capacity(list.len());
                for c in &list {
                    let p = self.node.presence(c.identity).await.map_err(failed)?;
                    out.push(ContactView::of(c, p));
                }
                Ok(json!(out))
            }
            Request::AddContact {
                name,
                code,
                accept_new_key,
            } => {
                let name = contact_name(&name)?;
                let identity = invite_identity(code.trim())?;
                if identity.signing == me {
                    return Err(bad("that is this device's own invite code"));
                }
                let contacts = self.node.contacts().await.map_err(failed)?;
                let replaced = contacts
                    .iter()
                    .find(|c| c.name == name && c.identity != identity.signing);
                if let Some(old) = replaced
                    && !accept_new_key
                {
                    return Err(ApiError::new(
                        ErrorKind::KeyChanged,
                        format!(
                            "{name} has a new key: fingerprint {} (was {}); compare it with {name} and add again accepting the new key",
                            crypto::fingerprint(&identity),
                            old.fingerprint,
                        ),
                    ));
                }
                // The new key first: if that fails, the old contact stays.
                let key = self
                    .node
                    .add_contact(code.trim(), &name)
                    .await
                    .map_err(failed)?;
                if let Some(old) = replaced
                    && let Err(e) = self.node.remove_contact(old.identity).await
                {
                    // Half done: say which half, and how to finish.
                    self.refresh_names().await;
                    return Err(ApiError::new(
                        ErrorKind::Failed,
                        format!(
                            "{name}'s new key was added, but forgetting the old one failed ({e}); remove it with: meshchat contacts remove {}",
                            hex(&old.identity)
                        ),
                    ));
                }
                self.added(key).await
            }
            Request::Devices {} => {
                let d = self.node.devices().await.map_err(failed)?;
                Ok(json!(DevicesView::of(&d)))
            }
            Request::LinkDevice {} => {
                let code = self.node.link_device().await.map_err(failed)?;
                Ok(json!({
                    "code": code,
                    "expires_in": crate::node::LINK_CODE_LIFE,
                }))
            }
            Request::JoinAccount { code, name } => {
                let name = name.trim();
                if name.len() > crypto::MAX_DEVICE_NAME || name.chars().any(char::is_control) {
                    return Err(bad(format!(
                        "a device name is at most {} bytes of printable text",
                        crypto::MAX_DEVICE_NAME
                    )));
                }
                let first = self.node.join_account(&code, name).await.map_err(failed)?;
                Ok(json!({ "first_device": hex(&first) }))
            }
            Request::RemoveDevice { device } => {
                let list = self.node.devices().await.map_err(failed)?;
                let key = unhex32(&device)
                    .filter(|k| list.devices.iter().any(|d| d.identity == *k))
                    .or(one(
                        list.devices.iter().filter(|d| d.name == device),
                        &device,
                        "device",
                    )?
                    .map(|d| d.identity))
                    .ok_or_else(|| {
                        bad(format!(
                            "no device {device:?} in this account (`meshchat devices list`)"
                        ))
                    })?;
                let d = self.node.remove_device(key).await.map_err(failed)?;
                Ok(json!(DevicesView::of(&d)))
            }
            Request::NameDevice { name } => {
                let name = name.trim();
                if name.len() > crypto::MAX_DEVICE_NAME || name.chars().any(char::is_control) {
                    return Err(bad(format!(
                        "a device name is at most {} bytes of printable text",
                        crypto::MAX_DEVICE_NAME
                    )));
                }
                let d = self.node.name_device(name).await.map_err(failed)?;
                Ok(json!(DevicesView::of(&d)))
            }
            Request::VerifyContact { contact, verified } => {
                let c = self.contact(&contact).await?;
                self.node
                    .verify_contact(c.identity, verified)
                    .await
                    .map_err(failed)?;
                Ok(json!({ "name": c.name, "verified": verified }))
            }
            Request::Requests {} => {
                let list = self.node.requests().await.map_err(failed)?;
                let out: Vec<_> = list
                    .iter()
                    .map(|r| {
                        json!({
                            "identity": hex(&r.identity),
                            "peer_id": r.peer_id.map(|p| p.to_string()),
                            "fingerprint": r.fingerprint,
                            "received_at": r.received_at,
                            "held": r.held,
                        })
                    })
                    .collect();
                Ok(json!(out))
            }
            Request::AcceptRequest { identity, name } => {
                let name = contact_name(&name)?;
                let key =
                    unhex32(&identity).ok_or_else(|| bad("an identity key is 64 hex digits"))?;
                let contacts = self.node.contacts().await.map_err(failed)?;
                if contacts.iter().any(|c| c.name == name) {
                    return Err(bad(format!("{name} is the name of another contact")));
                }
                self.node
                    .accept_request(key, &name)
                    .await
                    .map_err(no_request)?;
                self.added(key).await
            }
            Request::DeclineRequest { identity } => {
                let key =
                    unhex32(&identity).ok_or_else(|| bad("an identity key is 64 hex digits"))?;
                self.node.decline_request(key).await.map_err(no_request)?;
                Ok(json!({ "identity": identity }))
            }
            Request::RemoveContact { contact } => {
                let c = self.contact(&contact).await?;
                self.node.remove_contact(c.identity).await.map_err(failed)?;
                self.refresh_names().await;
                Ok(json!({ "name": c.name }))
            }
            Request::Send { to, text } => {
                if text.is_empty() {
                    return Err(bad("an empty message"));
                }
                if text.as_bytes().starts_with(crate::crypto::media::BODY_TAG) {
                    return Err(bad("a text may not start as a file's message does"));
                }
                if text.len() > crate::node::proto::MAX_BODY {
                    return Err(bad(format!(
                        "a message is at most {} bytes",
                        crate::node::proto::MAX_BODY
                    )));
                }
                // A group message is stored and published at once (its
                // receipts count members); a 1:1 message waits for a path.
                let (r, state) = match self.target(&to).await? {
                    Target::Contact(key) => {
                        (self.node.send(key, text.into_bytes()).await, "pending")
                    }
                    Target::Group(id) => {
                        (self.node.send_group(id, text.into_bytes()).await, "sent")
                    }
                };
                let r = r.map_err(failed)?;
                Ok(json!(SentView {
                    id: hex(&r.msg_id),
                    state: state.into(),
                }))
            }
            Request::SendFile { to, path, mime } => {
                let file = read_media_file(&path, mime.unwrap_or_default()).await?;
                let (r, state) = match self.target(&to).await? {
                    Target::Contact(key) => (self.node.send_media(key, file).await, "pending"),
                    Target::Group(id) => (self.node.send_group_media(id, file).await, "sent"),
                };
                let r = r.map_err(failed)?;
                Ok(json!(SentView {
                    id: hex(&r.msg_id),
                    state: state.into(),
                }))
            }
            Request::SaveFile {
                with,
                id,
                path,
                from,
            } => {
                let path = std::path::PathBuf::from(path);
                if !path.is_absolute() {
                    return Err(bad("the path to save to must be absolute"));
                }
                let id: [u8; 16] = crate::store::unhex(&id)
                    .and_then(|v| v.try_into().ok())
                    .ok_or_else(|| bad(format!("not a message id: {id}")))?;
                let with = self.target(&with).await?.key();
                let message = self.find_message(with, &id, sender(from)?).await?;
                let file = self.node.media(message).await.map_err(failed)?;
                let written = file.data.len();
                let target = path.clone();
                tokio::task::spawn_blocking(move || {
                    crate::store::write_private_new(&target, |out| {
                        std::io::Write::write_all(out, &file.data)
                    })
                })
                .await
                .map_err(|e| ApiError::new(ErrorKind::Failed, e.to_string()))?
                .map_err(|e| {
                    ApiError::new(
                        ErrorKind::Failed,
                        format!("{}: {e}; nothing written", path.display()),
                    )
                })?;
                Ok(json!({ "path": path, "written": written }))
            }
            Request::History {
                with,
                before,
                limit,
            } => {
                let with = self.target(&with).await?.key();
                let before = match before {
                    Some(b) => Some(
                        Cursor::parse(&b).map_err(|_| bad(format!("not a history cursor: {b}")))?,
                    ),
                    None => None,
                };
                let limit = limit.unwrap_or(DEFAULT_PAGE);
                if limit == 0 || limit > MAX_PAGE {
                    return Err(bad(format!("limit is 1 to {MAX_PAGE}")));
                }
                let page = self
                    .node
                    .history(with, before, limit)
                    .await
                    .map_err(failed)?;
                // Who wrote each: a contact's name (in a group, any
                // member's), else its key.
                let names: HashMap<[u8; 32], String> = self
                    .node
                    .contacts()
                    .await
                    .map_err(failed)?
                    .into_iter()
                    .map(|c| (c.identity, c.name))
                    .collect();
                let name_of = |k: &[u8; 32]| names.get(k).cloned().unwrap_or_else(|| hex(k));
                // Which of them this account's devices wrote, as of now.
                self.refresh_own().await;
                // At most about PAGE_BYTES of text in one answer (what a
                // contact writes can grow sixfold as JSON): the rest comes
                // with the next page, from the last message given.
                let mut bytes = 0;
                let mut cut = None;
                let mut messages = Vec::new();
                for m in &page.messages {
                    if bytes >= PAGE_BYTES {
                        cut = Some(History::cursor_after(&page.messages[messages.len() - 1]));
                        break;
                    }
                    bytes += m.body.len();
                    messages.push(MessageView::of(m, &|k| self.mine(k), &name_of(&m.sender)));
                }
                let next = cut.or(page.next);
                Ok(json!(PageView {
                    messages,
                    next: next.map(|c| c.as_str().to_owned()),
                }))
            }
            Request::Chats {} => {
                self.refresh_own().await;
                let contacts = self.node.contacts().await.map_err(failed)?;
                let summaries = self.node.conversations().await.map_err(failed)?;
                let groups = self.node.groups().await.map_err(failed)?;
                let mut out = Vec::new();
                for s in summaries {
                    if let Some(g) = groups.iter().find(|g| g.id == s.conversation.id) {
                        let from = s.last.as_ref().map(|m| self.name_of(&m.sender));
                        out.push(json!({
                            "with": g.name,
                            "group": hex(&g.id),
                            "members": g.members.len(),
                            "joined": g.joined,
                            "retention": g.retention,
                            "unread": s.conversation.unread,
                            "last_message_at": s.conversation.last_message_at,
                            "last": s.last.as_ref().map(|m| MessageView::of(m, &|k| self.mine(k), from.as_deref().unwrap_or(""))),
                        }));
                        continue;
                    }
                    let Some(c) = contacts
                        .iter()
                        .find(|c| c.conversation == s.conversation.id)
                    else {
                        continue;
                    };
                    let p = self.node.presence(c.identity).await.map_err(failed)?;
                    out.push(json!({
                        "with": c.name,
                        "identity": hex(&c.identity),
                        "unread": s.conversation.unread,
                        "last_message_at": s.conversation.last_message_at,
                        "retention": s.conversation.retention,
                        "presence": presence_name(p.map_or(PresenceState::Offline, |p| p.0)),
                        "last": s.last.as_ref().map(|m| MessageView::of(m, &|k| self.mine(k), &c.name)),
                    }));
                }
                Ok(json!(out))
            }
            Request::MarkRead { with } => {
                let with = self.target(&with).await?.key();
                let marked = self.node.mark_read(with).await.map_err(failed)?;
                Ok(json!({ "marked": marked }))
            }
            Request::ClearHistory { with } => {
                let with = self.target(&with).await?.key();
                let cleared = self.node.clear_history(with).await.map_err(failed)?;
                Ok(json!({ "cleared": cleared }))
            }
            Request::DeleteMessage { with, id, from } => {
                let id: [u8; 16] = crate::store::unhex(&id)
                    .and_then(|v| v.try_into().ok())
                    .ok_or_else(|| bad(format!("not a message id: {id}")))?;
                let with = self.target(&with).await?.key();
                let message = self.find_message(with, &id, sender(from)?).await?;
                let deleted = self
                    .node
                    .delete_message(with, message)
                    .await
                    .map_err(failed)?;
                Ok(json!({ "deleted": deleted }))
            }
            Request::SetPresence { state } => {
                let state = match state.as_str() {
                    "online" => PresenceState::Online,
                    "away" => PresenceState::Away,
                    other => return Err(bad(format!("presence is online or away, not {other}"))),
                };
                self.node.set_presence(state).await.map_err(failed)?;
                Ok(json!({ "presence": presence_name(state) }))
            }
            Request::Export { with, path } => {
                let path = std::path::PathBuf::from(path);
                if !path.is_absolute() {
                    return Err(bad("the export path must be absolute"));
                }
                let key = match with {
                    Some(w) => Some(match self.target(&w).await? {
                        Target::Contact(key) => key,
                        Target::Group(id) => id,
                    }),
                    None => None,
                };
                let n = self.node.export(key, path.clone()).await.map_err(failed)?;
                Ok(json!({ "path": path, "written": n, "backup": key.is_none() }))
            }
            Request::Groups {} => {
                let groups = self.node.groups().await.map_err(failed)?;
                Ok(json!(groups.iter().map(GroupView::of).collect::<Vec<_>>()))
            }
            Request::CreateGroup {
                name,
                members,
                retention,
                as_name,
            } => {
                check_name(&name, "a group's name", MAX_GROUP_NAME)?;
                if let Some(me) = &as_name {
                    check_name(me, "your name in the group", MAX_MEMBER_NAME)?;
                }
                check_retention(retention)?;
                // The others and us: checked before any lookup.
                if members.len() >= crate::node::groups::MAX_MEMBERS {
                    return Err(bad(format!(
                        "a group has at most {} members",
                        crate::node::groups::MAX_MEMBERS
                    )));
                }
                let mut keys = Vec::with_capacity(members.len());
                for m in &members {
                    keys.push(self.contact(m).await?.identity);
                }
                let me = as_name.unwrap_or_else(|| "me".into());
                let id = self
                    .node
                    .create_group(&name, &me, keys, retention)
                    .await
                    .map_err(failed)?;
                Ok(json!({ "id": hex(&id), "name": name }))
            }
            Request::GroupAdd {
                group,
                contact,
                admin,
            } => {
                let g = self.group(&group).await?;
                let c = self.contact(&contact).await?;
                let role = if admin { Role::Admin } else { Role::Member };
                let change = GroupChange::Add {
                    contact: c.identity,
                    role,
                };
                self.node.change_group(g.id, change).await.map_err(failed)?;
                Ok(json!({ "group": hex(&g.id), "added": c.name }))
            }
            Request::GroupRemove { group, member } => {
                let g = self.group(&group).await?;
                let (key, name) = member_of(&g, &member)?;
                let change = GroupChange::Remove { member: key };
                self.node.change_group(g.id, change).await.map_err(failed)?;
                Ok(json!({ "group": hex(&g.id), "removed": name }))
            }
            Request::GroupRename { group, name } => {
                check_name(&name, "a group's name", MAX_GROUP_NAME)?;
                let g = self.group(&group).await?;
                let change = GroupChange::Rename { name: name.clone() };
                self.node.change_group(g.id, change).await.map_err(failed)?;
                Ok(json!({ "group": hex(&g.id), "name": name }))
            }
            Request::GroupRole {
                group,
                member,
                admin,
            } => {
                let g = self.group(&group).await?;
                let (key, name) = member_of(&g, &member)?;
                let role = if admin { Role::Admin } else { Role::Member };
                let change = GroupChange::SetRole { member: key, role };
                self.node.change_group(g.id, change).await.map_err(failed)?;
                let role = if admin { "admin" } else { "member" };
                Ok(json!({ "group": hex(&g.id), "member": name, "role": role }))
            }
            Request::GroupLeave { group } => {
                let g = self.group(&group).await?;
                self.node
                    .change_group(g.id, GroupChange::Leave)
                    .await
                    .map_err(failed)?;
                Ok(json!({ "group": hex(&g.id), "left": true }))
            }
            Request::Retention { with, secs } => {
                check_retention(secs)?;
                match self.target(&with).await? {
                    Target::Contact(key) => self.node.set_retention(key, secs).await,
                    Target::Group(id) => {
                        self.node
                            .change_group(id, GroupChange::Retention { secs })
                            .await
                    }
                }
                .map_err(failed)?;
                Ok(json!({ "with": with, "retention": secs }))
            }
            Request::Status {} => {
                let s = self.node.status().await.map_err(failed)?;
                let queued = self.node.queued().await.map_err(failed)?;
                let info = self.node.info();
                Ok(json!({
                    "peer_id": info.peer_id.to_string(),
                    "identity": hex(&info.identity),
                    "connected": s.connected.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "listen": s.listen.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "presence": presence_name(s.presence),
                    "hidden": s.hidden,
                    "relays": s.relays.iter().map(|r| json!({
                        "peer_id": r.to_string(),
                        "connected": s.connected.contains(r),
                    })).collect::<Vec<_>>(),
                    "queued": queued,
                }))
            }
            Request::Events {} => Err(bad("events is answered by the connection")),
        }
    }

    /// A conversation by key or name: a contact's key, then its name, then
    /// a group's id, then its name (no contact's name is 64 hex digits:
    /// the API refuses one, a group's introduction tags one). A name that
    /// more than one contact (or, with no contact, more than one group)
    /// has is refused rather than guessed.
    /// The message `id` in the conversation with `with` (a contact's key or
    /// a group's id), looked for among its newest [`FIND_WITHIN`].
    /// The contact `key`, just added: names refreshed, its view.
    async fn added(&self, key: [u8; 32]) -> Result<serde_json::Value, ApiError> {
        self.refresh_names().await;
        let list = self.node.contacts().await.map_err(failed)?;
        let c = list
            .iter()
            .find(|c| c.identity == key)
            .ok_or_else(|| ApiError::new(ErrorKind::Failed, "the contact vanished"))?;
        Ok(serde_json::json!(ContactView::of(c, None)))
    }

    /// The message `id` among the newest [`FIND_WITHIN`] of the
    /// conversation with `with`, from `from` if given. Another sender may
    /// send a message under an id it has seen (the history keeps both):
    /// an id that messages of more than one sender carry is refused
    /// unless `from` says whose is meant, so that a save or a delete
    /// never takes one for the other.
    async fn find_message(
        &self,
        with: [u8; 32],
        id: &[u8; 16],
        from: Option<[u8; 32]>,
    ) -> Result<crate::store::MessageRef, ApiError> {
        let mut before = None;
        let mut seen = 0;
        let mut found: Vec<crate::store::MessageRef> = Vec::new();
        while seen < FIND_WITHIN {
            let page = self
                .node
                .history(with, before, MAX_PAGE)
                .await
                .map_err(failed)?;
            seen += page.messages.len();
            found.extend(
                page.messages
                    .iter()
                    .filter(|m| &m.msg_id == id && from.is_none_or(|f| m.sender == f))
                    .map(|m| m.reference()),
            );
            // Named with its sender: the first is the one.
            if from.is_some() && !found.is_empty() {
                break;
            }
            match page.next {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        one_message(&found, id)
    }

    async fn target(&self, who: &str) -> Result<Target, ApiError> {
        // Groups are listed only when no contact is meant: a send to a
        // contact does not build every group's member list.
        let contacts = self.node.contacts().await.map_err(failed)?;
        let key = unhex32(who);
        if let Some(k) = key
            && contacts.iter().any(|c| c.identity == k)
        {
            return Ok(Target::Contact(k));
        }
        if let Some(c) = one(contacts.iter().filter(|c| c.name == who), who, "contact")? {
            return Ok(Target::Contact(c.identity));
        }
        let groups = self.node.groups().await.map_err(failed)?;
        if let Some(k) = key
            && groups.iter().any(|g| g.id == k)
        {
            return Ok(Target::Group(k));
        }
        one(groups.iter().filter(|g| g.name == who), who, "group")?
            .map(|g| Target::Group(g.id))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::UnknownContact,
                    format!("no contact or group {who:?}"),
                )
            })
    }

    /// A group by id or name (see [`Self::target`]).
    async fn group(&self, which: &str) -> Result<GroupInfo, ApiError> {
        let list = self.node.groups().await.map_err(failed)?;
        let id = unhex32(which);
        if let Some(g) = list.iter().find(|g| Some(g.id) == id) {
            return Ok(g.clone());
        }
        one(list.into_iter().filter(|g| g.name == which), which, "group")?
            .ok_or_else(|| ApiError::new(ErrorKind::UnknownGroup, format!("no group {which:?}")))
    }

    /// The contact `who` names: its identity key in hex, or its name (see
    /// [`Self::target`]).
    async fn contact(&self, who: &str) -> Result<ContactInfo, ApiError> {
        let list = self.node.contacts().await.map_err(failed)?;
        let key = unhex32(who);
        if let Some(c) = list.iter().find(|c| Some(c.identity) == key) {
            return Ok(c.clone());
        }
        one(list.into_iter().filter(|c| c.name == who), who, "contact")?
            .ok_or_else(|| ApiError::new(ErrorKind::UnknownContact, format!("no contact {who:?}")))
    }
}

/// The one item a name matches (None: none), or a clear refusal when it
/// matches several: a name is never resolved by chance.
fn one<T>(
    mut matches: impl Iterator<Item = T>,
    name: &str,
    what: &str,
) -> Result<Option<T>, ApiError> {
    let first = matches.next();
    if first.is_some() && matches.next().is_some() {
        let listed = if what == "device" {
            "`meshchat devices list`"
        } else {
            "`meshchat contacts list`, `meshchat group list`"
        };
        return Err(bad(format!(
            "more than one {what} is named {name:?}: name it by its key or id ({listed})"
        )));
    }
    Ok(first)
}

/// One client's view of the node's events (socket or WebSocket).
pub(crate) struct Feed {
    api: Api,
    rx: broadcast::Receiver<NodeEvent>,
    /// An event waiting for contact names to load; kept if the caller
    /// gives up on [`Self::next`] meanwhile, so nothing is lost.
    held: Option<NodeEvent>,
}

impl Feed {
    /// The next event the API carries; `None` once the node's events
    /// end. Cancel-safe.
    pub(crate) async fn next(&mut self) -> Option<EventView> {
        loop {
            let e = match self.held.take() {
                Some(e) => e,
                None => match self.rx.recv().await {
                    Ok(e) => e,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        return Some(EventView::Lagged { missed });
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            // A contact added meanwhile, or a group joined or renamed:
            // names are loaded again.
            let unknown = matches!(&e, NodeEvent::Message { from, .. } if !self.api.knows(from))
                || matches!(
                    &e,
                    NodeEvent::GroupChanged { .. }
                        | NodeEvent::DevicesChanged { .. }
                        | NodeEvent::DeviceLinked { .. }
                        | NodeEvent::DeviceUnlinked { .. }
                        | NodeEvent::AccountJoined { .. }
                        | NodeEvent::AccountLeft { .. }
                );
            let e = if unknown {
                // A contact added meanwhile has a name by now.
                self.held = Some(e);
                self.api.refresh_names().await;
                match self.held.take() {
                    Some(e) => e,
                    None => continue,
                }
            } else {
                e
            };
            if let Some(v) = self.view(&e) {
                return Some(v);
            }
        }
    }

    fn view(&self, e: &NodeEvent) -> Option<EventView> {
        EventView::of(e, &|k| self.api.mine(k), &|k| self.api.name_of(k), &|c| {
            self.api.group_of(c)
        })
    }
}

/// A member of `g` named by its name in the group or its identity key
/// (hex): its key and name.
fn member_of(g: &GroupInfo, member: &str) -> Result<([u8; 32], String), ApiError> {
    let key = unhex32(member);
    let found = match g.members.iter().find(|(k, _, _)| Some(*k) == key) {
        Some(m) => Some(m),
        None => one(
            g.members.iter().filter(|(_, n, _)| n == member),
            member,
            "member",
        )?,
    };
    found
        .map(|(k, n, _)| (*k, n.clone()))
        .ok_or_else(|| bad(format!("no member {member:?} in {:?}", g.name)))
}

/// How far back `save_file` looks for a message.
const FIND_WITHIN: usize = 10_000;

/// The file at `path` for `send_file`: an absolute path to a regular file
/// of at most [`crate::crypto::media::MAX_MEDIA`] bytes, whose name (and
/// the given type) a manifest can carry.
async fn read_media_file(
    path: &str,
    mime: String,
) -> Result<crate::node::media::MediaFile, ApiError> {
    use crate::crypto::media::{check_mime, check_name};
    let path = std::path::PathBuf::from(path);
    if !path.is_absolute() {
        return Err(bad("the file's path must be absolute"));
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| bad("the path names no file (or its name is not UTF-8)"))?
        .to_owned();
    check_name(&name).map_err(|e| bad(e.to_string()))?;
    check_mime(&mime).map_err(|e| bad(e.to_string()))?;
    let data = tokio::task::spawn_blocking(move || read_bounded(&path))
        .await
        .map_err(|e| ApiError::new(ErrorKind::Failed, e.to_string()))??;
    Ok(crate::node::media::MediaFile { name, mime, data })
}

/// The message meant among `found` (those carrying `id`): refused when
/// none is, or when they are of more than one sender.
fn one_message(
    found: &[crate::store::MessageRef],
    id: &[u8; 16],
) -> Result<crate::store::MessageRef, ApiError> {
    let mut senders: Vec<[u8; 32]> = found.iter().map(|m| m.sender).collect();
    senders.sort_unstable();
    senders.dedup();
    match (found.first(), senders.len()) {
        (None, _) => Err(bad(format!(
            "no message {} among the newest {FIND_WITHIN} of that conversation",
            hex(id)
        ))),
        (Some(m), 1) => Ok(*m),
        (Some(_), n) => Err(bad(format!(
            "messages of {n} senders carry the id {} ({}): say whose with `from`",
            hex(id),
            senders
                .iter()
                .map(|k| hex(k))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// A request's `from` (a sender's identity key, hex).
fn sender(from: Option<String>) -> Result<Option<[u8; 32]>, ApiError> {
    from.map(|f| unhex32(&f).ok_or_else(|| bad(format!("not an identity key: {f}"))))
        .transpose()
}

/// A regular file's bytes, at most [`crate::crypto::media::MAX_MEDIA`].
fn read_bounded(path: &std::path::Path) -> Result<Vec<u8>, ApiError> {
    use crate::crypto::media::MAX_MEDIA;
    use std::io::Read;
    let unreadable = |e: std::io::Error| bad(format!("{}: {e}", path.display()));
    // Looked at before it is opened: opening a FIFO would wait for a
    // writer, and opening a device can do something.
    if !std::fs::metadata(path).map_err(unreadable)?.is_file() {
        return Err(bad(format!("{} is not a regular file", path.display())));
    }
    let f = std::fs::File::open(path).map_err(unreadable)?;
    let meta = f.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(bad(format!("{} is not a regular file", path.display())));
    }
    if meta.len() > MAX_MEDIA {
        return Err(bad(format!(
            "{} is {} bytes; a file is at most {MAX_MEDIA}",
            path.display(),
            meta.len()
        )));
    }
    // Read with a bound: the file may have grown since.
    let mut data = Vec::new();
    f.take(MAX_MEDIA + 1)
        .read_to_end(&mut data)
        .map_err(unreadable)?;
    if data.len() as u64 > MAX_MEDIA {
        return Err(bad(format!(
            "{} grew past {MAX_MEDIA} bytes while it was read",
            path.display()
        )));
    }
    Ok(data)
}

/// A contact's name as given: trimmed, 1 to `MAX_NAME` bytes of printable
/// text, and not an identity key (names and keys both name contacts).
fn contact_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim().to_owned();
    if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(bad(format!(
            "a contact name is 1 to {MAX_NAME} bytes of printable text"
        )));
    }
    if unhex32(&name).is_some() {
        return Err(bad("a contact name cannot be an identity key"));
    }
    Ok(name)
}

/// [`failed`], where a missing contact is a missing request.
fn no_request(e: NodeError) -> ApiError {
    match e {
        NodeError::UnknownContact => ApiError::new(
            ErrorKind::UnknownContact,
            "no contact request from that device",
        ),
        e => failed(e),
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::BadRequest, message)
}

fn failed(e: NodeError) -> ApiError {
    match e {
        NodeError::UnknownContact => ApiError::new(ErrorKind::UnknownContact, e.to_string()),
        NodeError::Stopped => ApiError::new(ErrorKind::Stopped, e.to_string()),
        e => ApiError::new(ErrorKind::Failed, e.to_string()),
    }
}

/// The identity an invite code names, after checking its signatures.
fn invite_identity(code: &str) -> Result<crypto::PublicIdentity, ApiError> {
    let bad_invite = |e: crypto::Error| {
        ApiError::new(
            ErrorKind::BadInvite,
            format!("not a valid invite code ({e})"),
        )
    };
    let invite = Invite::from_code(code).map_err(bad_invite)?;
    let verified = invite.verify().map_err(bad_invite)?;
    Ok(verified.bundle.body.identity)
}

/// Binds the API socket at `path`, owner-only. A file left there by a
/// daemon that is gone is replaced: the caller holds the data directory's
/// lock, so no live daemon owns it. The directory it is in is made
/// owner-only first (with a warning if it was not): the socket takes its
/// mode from the umask until it is set, and the directory is what keeps
/// everyone else out meanwhile.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            let mode = format!("{:o}", mode & 0o777);
            match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
                Ok(()) => {
                    warn!(dir = %dir.display(), %mode, "the data directory was open to others; made owner-only")
                }
                Err(e) => {
                    warn!(dir = %dir.display(), %mode, error = %e, "the data directory is open to others and could not be made owner-only")
                }
            }
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves clients until the listener fails or the task is dropped.
pub async fn serve(listener: UnixListener, api: Api) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "local API: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let api = api.clone();
                tokio::spawn(async move {
                    client(api, stream).await;
                    drop(permit);
                });
            }
            Err(_) => {
                tokio::spawn(async move {
                    let mut s = stream;
                    let e = ApiError::new(
                        ErrorKind::Failed,
                        format!("too many clients (at most {MAX_CLIENTS})"),
                    );
                    let _ = write_answer(&mut s, &Answer::Error(e)).await;
                });
            }
        }
    }
}

async fn client(api: Api, stream: UnixStream) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_line(&mut r, &mut line).await {
            Ok(Line::End) => return,
            Ok(Line::TooLong) => {
                let e = bad(format!("a request line is at most {MAX_LINE} bytes"));
                let _ = write_answer(&mut w, &Answer::Error(e)).await;
                let _ = w.shutdown().await;
                // Take what is left of the line (bounded), so the client
                // finishes writing and reads the answer.
                let _ = tokio::time::timeout(
                    DRAIN_TIME,
                    tokio::io::copy(&mut (&mut r).take(DRAIN_BYTES), &mut tokio::io::sink()),
                )
                .await;
                return;
            }
            Ok(Line::Some) => {}
            Err(e) => {
                debug!(error = %e, "local API: read failed");
                return;
            }
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        let answer = match serde_json::from_slice::<Request>(text) {
            Err(e) => Answer::Error(bad(format!("malformed request: {e}"))),
            Ok(Request::Events {}) => {
                // Subscribed before the client hears so: nothing it waits
                // for after this answer can slip past.
                let feed = api.feed();
                if answered(&mut w, &Answer::Ok(serde_json::json!("subscribed"))).await {
                    stream_events(feed, r, &mut w).await;
                }
                return;
            }
            Ok(req) => match api.answer(req).await {
                Ok(v) => Answer::Ok(v),
                Err(e) => Answer::Error(e),
            },
        };
        if !answered(&mut w, &answer).await {
            return;
        }
    }
}

/// Writes an answer within [`WRITE_TIMEOUT`]: a client that sends
/// requests and never reads what comes back does not keep its task, and
/// its place among [`MAX_CLIENTS`], for good. `false`: the connection is
/// to be closed.
async fn answered(w: &mut (impl AsyncWrite + Unpin), a: &Answer) -> bool {
    match tokio::time::timeout(WRITE_TIMEOUT, write_answer(w, a)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            debug!(error = %e, "local API: write failed");
            false
        }
        Err(_) => {
            debug!("local API: an answer left unread; the connection is closed");
            false
        }
    }
}

/// Sends events until the client goes away: its end of the socket closes
/// (noticed at once, not at the next event) or a write stalls.
async fn stream_events(
    mut feed: Feed,
    mut r: impl AsyncRead + Unpin,
    w: &mut (impl AsyncWrite + Unpin),
) {
    let mut scratch = [0u8; 256];
    loop {
        let view = tokio::select! {
            v = feed.next() => match v {
                Some(v) => v,
                None => return,
            },
            // Anything the client sends now is ignored; its end closing
            // ends the stream.
            n = r.read(&mut scratch) => match n {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
        };
        let value = serde_json::to_value(&view).unwrap_or_default();
        match tokio::time::timeout(WRITE_TIMEOUT, write_answer(w, &Answer::Event(value))).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

enum Line {
    Some,
    End,
    TooLong,
}

/// Reads one line into `buf`, never more than [`MAX_LINE`] bytes.
async fn read_line(
    r: &mut (impl AsyncRead + Unpin + AsyncBufReadExt),
    buf: &mut Vec<u8>,
) -> std::io::Result<Line> {
    let n = (&mut *r)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', buf)
        .await?;
    if n == 0 {
        return Ok(Line::End);
    }
    if buf.last() != Some(&b'\n') && buf.len() > MAX_LINE {
        return Ok(Line::TooLong);
    }
    Ok(Line::Some)
}

async fn write_answer(w: &mut (impl AsyncWrite + Unpin), a: &Answer) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(a).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await
}

/// Refuses a name members could not take: empty, longer than `max` bytes,
/// or with control characters (what [`crate::node::groups`] checks).
fn check_name(name: &str, what: &str, max: usize) -> Result<(), ApiError> {
    if name.trim().is_empty() {
        return Err(bad(format!("{what} is empty")));
    }
    if name.len() > max || name.chars().any(char::is_control) {
        return Err(bad(format!(
            "{what} is longer than {max} bytes or has control characters"
        )));
    }
    Ok(())
}

/// A retention the API takes: 1 s to [`MAX_RETENTION`], or none.
fn check_retention(secs: Option<u64>) -> Result<(), ApiError> {
    match secs {
        Some(s) if !(1..=MAX_RETENTION).contains(&s) => Err(bad(format!(
            "a retention is 1 to {MAX_RETENTION} seconds, or none"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_two_members_share_is_refused_and_a_key_still_names_one() {
        let (bob, impostor) = ([1u8; 32], [2u8; 32]);
        let g = GroupInfo {
            id: [3; 32],
            name: "team".into(),
            members: vec![
                (bob, "bob".into(), Role::Member),
                (impostor, "bob".into(), Role::Member),
            ],
            retention: None,
            joined: true,
        };
        let e = member_of(&g, "bob").unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(e.message.contains("more than one member"), "{}", e.message);
        let by_key = member_of(&g, &hex::encode(impostor)).unwrap();
        assert_eq!(by_key.0, impostor);
        assert!(member_of(&g, "carol").is_err());
        assert_eq!(one([7].into_iter(), "x", "contact").unwrap(), Some(7));
        assert_eq!(one(std::iter::empty::<u8>(), "x", "contact").unwrap(), None);
    }

    /// Another sender may reuse an id it saw (the history keeps both): a
    /// save or delete by that id alone is refused then, and names the
    /// senders; `from` picks one.
    #[test]
    fn an_id_of_two_senders_is_refused_without_from() {
        let m = |sender: u8, lamport: u64| crate::store::MessageRef {
            conv_id: [9; 32],
            lamport,
            sender: [sender; 32],
            msg_id: [5; 16],
        };
        let (carol, mallory) = (m(1, 10), m(2, 11));
        assert_eq!(one_message(&[carol], &[5; 16]).unwrap(), carol);
        let e = one_message(&[mallory, carol], &[5; 16]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(e.message.contains("2 senders"), "{}", e.message);
        assert!(e.message.contains(&hex(&[1; 32])), "{}", e.message);
        assert!(one_message(&[], &[5; 16]).is_err());
        assert_eq!(sender(Some(hex(&[2; 32]))).unwrap(), Some([2; 32]));
        assert!(sender(Some("zz".into())).is_err());
    }

    /// An answer the client leaves unread closes the connection after
    /// `WRITE_TIMEOUT`; one it reads goes.
    #[tokio::test(start_paused = true)]
    async fn an_answer_left_unread_closes_the_connection() {
        let big = Answer::Ok(serde_json::json!("x".repeat(64 * 1024)));
        let (mut ours, _theirs) = tokio::io::duplex(1024);
        // Nobody reads: given up (in paused time, at once).
        assert!(!answered(&mut ours, &big).await);
        // Read: it goes.
        let (mut ours, theirs) = tokio::io::duplex(1024);
        let reader = tokio::spawn(async move {
            let mut theirs = theirs;
            let mut got = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut theirs, &mut got).await;
            got.len()
        });
        assert!(answered(&mut ours, &big).await);
        drop(ours);
        assert!(reader.await.unwrap() > 64 * 1024);
    }

    #[tokio::test]
    async fn the_socket_and_its_directory_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = data.join("api.sock");
        let _listener = bind(&socket).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&socket), 0o600);
    }
}
