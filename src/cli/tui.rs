//! The terminal chat's state and drawing (`meshchat chat`); the loop that
//! feeds it keys and API events is in `chat.rs`.
//!
//! Nothing here does I/O: keys and events go in, [`Action`]s for the API
//! come out, and [`App::render`] draws a frame. That is what the snapshot
//! tests drive.

use std::collections::HashMap;

use ratatui::Frame;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, List, ListItem, ListState, Paragraph};
use serde_json::Value;

/// Receipts for messages not shown yet, kept until they are.
const EARLY_RECEIPTS: usize = 256;
/// Messages kept per open conversation (older ones reload on scroll-up).
const MAX_SHOWN: usize = 2000;
/// Width of the conversation list.
const LIST_WIDTH: u16 = 22;

/// One conversation in the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Chat {
    pub(super) name: String,
    /// What the API calls it: the contact's identity key, or the group's
    /// id (hex).
    pub(super) target: String,
    pub(super) group: bool,
    pub(super) unread: u64,
    pub(super) presence: String,
}

/// One message in the open conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Msg {
    pub(super) id: String,
    pub(super) from: String,
    /// Its writer's identity key (hex).
    pub(super) sender: String,
    pub(super) out: bool,
    pub(super) text: String,
    pub(super) state: String,
    pub(super) sent_at: u64,
    /// In a group: members who have it, who read it, of how many.
    pub(super) counts: Option<(u64, u64, u64)>,
    /// A file message.
    pub(super) media: bool,
}

impl Msg {
    /// From the API's message view.
    pub(super) fn of(v: &Value) -> Self {
        let s = |k: &str| v[k].as_str().unwrap_or("").to_owned();
        Self {
            id: s("id"),
            from: s("from"),
            sender: s("sender"),
            out: v["direction"] == "out",
            text: s("text"),
            state: s("state"),
            sent_at: v["sent_at"].as_u64().unwrap_or(0),
            counts: None,
            media: v["media"].is_object(),
        }
    }
}

/// What the loop should ask the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Action {
    /// Nothing.
    None,
    /// Leave.
    Quit,
    /// Load the newest page of `name` and mark it read.
    Open(String),
    /// Load the page before `before`.
    LoadMore { name: String, before: String },
    /// Send `text` to `to`.
    Send { to: String, text: String },
    /// Mark `name` read (a message arrived while it is open).
    MarkRead(String),
    /// Accept the contact request of `identity` as `name` (`Some`), or
    /// decline it (`None`).
    Request {
        identity: String,
        name: Option<String>,
    },
}

/// The terminal chat's state.
#[derive(Debug, Default)]
pub(super) struct App {
    pub(super) chats: Vec<Chat>,
    pub(super) selected: usize,
    /// The open conversation, oldest first.
    pub(super) messages: Vec<Msg>,
    /// The cursor of the page before the oldest shown; `None`: all shown.
    pub(super) older: Option<String>,
    /// Lines scrolled up from the newest.
    pub(super) scroll: usize,
    pub(super) input: String,
    /// The bottom line: new mail elsewhere, errors.
    pub(super) notice: Option<String>,
    early: HashMap<String, String>,
    /// Group receipt counts for messages not shown yet.
    early_counts: HashMap<String, (u64, u64, u64)>,
    /// Live messages pushed the oldest shown out: the page cursor no
    /// longer fits, so scrolling past the top reloads instead.
    trimmed: bool,
    /// How far up the last frame could scroll (lines).
    max_scroll: std::cell::Cell<usize>,
    /// The last file that came whole.
    ready: Option<ToSave>,
    /// The identity key (hex) of the last contact request shown, for
    /// `/accept NAME` and `/decline`.
    pub(super) request: Option<String>,
}

/// The tick shown after one of our messages.
pub(super) fn tick(state: &str) -> &'static str {
    match state {
        "pending" => "…",
        "sent" => "✓",
        "stored_at_relay" => "✓ relay",
        "delivered" => "✓✓",
        "read" => "✓✓ read",
        _ => "",
    }
}

/// What follows one of our messages: its tick, or in a group until
/// everyone has it, how many members have it and read it.
fn mark(m: &Msg) -> String {
    match m.counts {
        Some((delivered, read, members))
            if read < members && !(delivered == members && read == 0) =>
        {
            let mut t = format!("✓ {delivered}/{members}");
            if read > 0 {
                t.push_str(&format!(" read {read}"));
            }
            t
        }
        _ => tick(&m.state).to_owned(),
    }
}

fn dot(presence: &str) -> Span<'static> {
    match presence {
        "online" => Span::styled("●", Style::new().fg(Color::Green)),
        "away" => Span::styled("●", Style::new().fg(Color::Yellow)),
        _ => Span::styled("○", Style::new().fg(Color::DarkGray)),
    }
}

/// `HH:MM` (UTC) of a Unix time.
fn clock(secs: u64) -> String {
    format!("{:02}:{:02}", secs % 86_400 / 3600, secs % 3600 / 60)
}

/// A file `/save` can write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ToSave {
    /// Its conversation, as the API names it.
    pub(super) with: String,
    /// Its message's id (hex).
    pub(super) id: String,
    /// Its sender's identity key (hex): in a group, another member may
    /// send a message under the same id.
    pub(super) from: String,
}

impl App {
    /// The file `/save` keeps: the last that came whole, else the newest
    /// file shown in the open conversation.
    pub(super) fn to_save(&self) -> Option<ToSave> {
        self.ready.clone().or_else(|| {
            let m = self.messages.iter().rev().find(|m| m.media)?;
            Some(ToSave {
                with: self.current()?.to_owned(),
                id: m.id.clone(),
                from: m.sender.clone(),
            })
        })
    }

    /// The open conversation as the API names it (a contact's identity
    /// key, a group's id; a contact's name where no key was given).
    pub(super) fn current(&self) -> Option<&str> {
        self.chats.get(self.selected).map(|c| c.target.as_str())
    }

    /// The list from the daemon's contacts, groups and chats; keeps the
    /// selection.
    pub(super) fn set_chats(&mut self, contacts: &Value, groups: &Value, chats: &Value) {
        let keep = self.current().map(str::to_owned);
        let s = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_owned();
        let mut list: Vec<Chat> = contacts
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| Chat {
                name: s(c, "name"),
                // By key: a name another contact or a group may share.
                target: Some(s(c, "identity"))
                    .filter(|k| !k.is_empty())
                    .unwrap_or_else(|| s(c, "name")),
                group: false,
                unread: 0,
                presence: c["presence"].as_str().unwrap_or("offline").to_owned(),
            })
            .collect();
        list.extend(
            groups
                .as_array()
                .into_iter()
                .flatten()
                .filter(|g| g["joined"] != false)
                .map(|g| Chat {
                    name: s(g, "name"),
                    target: s(g, "id"),
                    group: true,
                    unread: 0,
                    presence: String::new(),
                }),
        );
        for c in chats.as_array().into_iter().flatten() {
            let found = match c["group"].as_str() {
                Some(id) => list.iter_mut().find(|x| x.group && x.target == id),
                // By key where the daemon gives it (two contacts may share
                // a name), else by name.
                None => list.iter_mut().find(|x| {
                    !x.group
                        && match c["identity"].as_str() {
                            Some(k) => x.target == k,
                            None => c["with"] == x.name.as_str(),
                        }
                }),
            };
            if let Some(chat) = found {
                chat.unread = c["unread"].as_u64().unwrap_or(0);
            }
        }
        // Conversations with unread mail first, then by name.
        list.sort_by(|a, b| {
            (b.unread > 0)
                .cmp(&(a.unread > 0))
                .then(a.name.cmp(&b.name))
        });
        self.chats = list;
        self.selected = keep
            .and_then(|k| self.chats.iter().position(|c| c.target == k))
            .unwrap_or(0);
    }

    /// A page loaded for the open conversation: the newest (`append` false)
    /// or an older one, put before what is shown.
    pub(super) fn set_page(&mut self, page: &Value, older: bool) {
        let mut msgs: Vec<Msg> = page["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .map(Msg::of)
            .collect();
        msgs.reverse();
        if older {
            msgs.append(&mut self.messages);
        } else {
            self.scroll = 0;
        }
        self.messages = msgs;
        self.older = page["next"].as_str().map(str::to_owned);
        self.trimmed = false;
        for m in &mut self.messages {
            if let Some(s) = self.early.remove(&m.id) {
                m.state = s;
            }
            if let Some(c) = self.early_counts.remove(&m.id) {
                m.counts = Some(c);
            }
        }
        if let Some(c) = self.chats.get_mut(self.selected) {
            c.unread = 0;
        }
    }

    /// Our message just written.
    pub(super) fn sent(&mut self, id: &str, text: &str, state: &str, now: u64) {
        let state = self.early.remove(id).unwrap_or_else(|| state.to_owned());
        let counts = self.early_counts.remove(id);
        self.input.clear();
        self.push(Msg {
            id: id.to_owned(),
            from: "me".into(),
            // Not needed: only files that came are saved from the chat.
            sender: String::new(),
            out: true,
            text: text.to_owned(),
            state,
            sent_at: now,
            counts,
            media: false,
        });
        self.scroll = 0;
    }

    fn push(&mut self, m: Msg) {
        // A message that came both live and with a page is shown once.
        if self.messages.iter().any(|x| x.id == m.id) {
            return;
        }
        self.messages.push(m);
        if self.messages.len() > MAX_SHOWN {
            let cut = self.messages.len() - MAX_SHOWN;
            self.messages.drain(..cut);
            self.older = None;
            self.trimmed = true;
        }
    }

    /// An event from the daemon.
    pub(super) fn on_event(&mut self, e: &Value) -> Action {
        let s = |k: &str| e[k].as_str().unwrap_or("");
        match s("type") {
            "message" => {
                let from = s("contact").to_owned();
                // A group message belongs to the group, not its writer;
                // a 1:1 one to its writer's key.
                let (target, name, group) = match e["group"].as_str() {
                    Some(id) => (id.to_owned(), s("group_name").to_owned(), true),
                    None => match e["message"]["sender"].as_str() {
                        Some(key) => (key.to_owned(), from.clone(), false),
                        None => (from.clone(), from.clone(), false),
                    },
                };
                if self.current() == Some(target.as_str()) {
                    self.push(Msg::of(&e["message"]));
                    return Action::MarkRead(target);
                }
                match self
                    .chats
                    .iter_mut()
                    .find(|c| c.group == group && c.target == target)
                {
                    Some(c) => c.unread += 1,
                    None => self.chats.push(Chat {
                        name: name.clone(),
                        target,
                        group,
                        unread: 1,
                        presence: if group {
                            String::new()
                        } else {
                            "offline".into()
                        },
                    }),
                }
                let text: String = e["message"]["text"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(60)
                    .collect();
                self.notice = Some(if group {
                    format!("New message from {from} in {name}: {text}")
                } else {
                    format!("New message from {from}: {text}")
                });
            }
            "group_receipt" => {
                let n = |k: &str| e[k].as_u64().unwrap_or(0);
                let counts = (n("delivered"), n("read"), n("members"));
                match self.messages.iter_mut().find(|m| m.id == s("id")) {
                    Some(m) => m.counts = Some(counts),
                    None => {
                        if self.early_counts.len() >= EARLY_RECEIPTS {
                            self.early_counts.clear();
                        }
                        self.early_counts.insert(s("id").to_owned(), counts);
                    }
                }
            }
            "receipt" => {
                let (id, state) = (s("id"), s("state"));
                match self.messages.iter_mut().find(|m| m.id == id) {
                    Some(m) => m.state = state.to_owned(),
                    None => {
                        if self.early.len() >= EARLY_RECEIPTS {
                            self.early.clear();
                        }
                        self.early.insert(id.to_owned(), state.to_owned());
                    }
                }
            }
            "expired" => {
                if let Some(m) = self.messages.iter_mut().find(|m| m.id == s("id")) {
                    m.state = "expired".into();
                }
                self.notice = Some("A message expired undelivered.".into());
            }
            "group_expired" => {
                self.notice = Some(format!(
                    "A group message expired before reaching {}.",
                    s("contact")
                ));
            }
            "media_held" => {
                self.notice = Some(format!(
                    "A file from {} ({} KiB) waits: this device's media budget is full; delete files to make room.",
                    s("contact"),
                    e["needs"].as_u64().unwrap_or(0) / 1024
                ));
            }
            "media_ready" => {
                // Named by key or id: names may repeat or hold spaces.
                let target = match e["group"].as_str() {
                    Some(g) => g.to_owned(),
                    None => s("identity").to_owned(),
                };
                // In a group, another member may use the same id.
                let from = match e["group"].as_str() {
                    Some(_) => format!(" --from {}", s("identity")),
                    None => String::new(),
                };
                self.notice = Some(format!(
                    "A file from {} came: /save FILE, or meshchat save {target} {}{from} -o FILE",
                    s("contact"),
                    s("id")
                ));
                self.ready = Some(ToSave {
                    with: target,
                    id: s("id").to_owned(),
                    from: s("identity").to_owned(),
                });
            }
            "presence" => {
                // By key: two contacts may share a name.
                let who = |c: &Chat| {
                    !c.group
                        && match e["identity"].as_str() {
                            Some(key) => c.target == key,
                            None => c.name == s("contact"),
                        }
                };
                if let Some(c) = self.chats.iter_mut().find(|c| who(c)) {
                    c.presence = s("state").to_owned();
                }
            }
            // Cleared or deleted here (by `meshchat clear`, say): the open
            // conversation is read again or loses the message.
            "cleared" => {
                let target = e["group"].as_str().or(e["identity"].as_str());
                if self.ready.as_ref().map(|r| r.with.as_str()) == target {
                    self.ready = None;
                }
                if let Some(t) = target
                    && self.current() == Some(t)
                {
                    return Action::Open(t.to_owned());
                }
            }
            "deleted" => {
                if self.ready.as_ref().is_some_and(|r| r.id == s("id")) {
                    self.ready = None;
                }
                self.messages.retain(|m| m.id != s("id"));
            }
            "contact_forgotten" => {
                let name: String = s("with").chars().map(super::client::shown).collect();
                self.notice = Some(format!(
                    "{name} is in none of your groups any more and was removed from your contacts"
                ));
            }
            "relay_refused" => {
                self.notice = Some(format!("A relay refused a message: {}", s("reason")));
            }
            "devices_changed" => {
                let name_of = |key: &Value| {
                    e["devices"]["devices"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|d| d["identity"] == *key)
                        .and_then(|d| d["name"].as_str())
                        .filter(|n| !n.is_empty())
                        .unwrap_or("a device")
                        .chars()
                        .map(super::client::shown)
                        .collect::<String>()
                };
                let mut said = Vec::new();
                for (what, verb) in [("added", "added"), ("renamed", "named")] {
                    for k in e[what].as_array().into_iter().flatten() {
                        said.push(format!("{verb} {}", name_of(k)));
                    }
                }
                let removed = e["removed"].as_array().map_or(0, Vec::len);
                if removed > 0 {
                    said.push(format!("removed {removed}"));
                }
                if !said.is_empty() {
                    self.notice = Some(format!("{}'s devices: {}", s("with"), said.join(", ")));
                }
            }
            "device_linked" => {
                let name: String = s("name").chars().map(super::client::shown).collect();
                let fingerprint: String = s("identity").chars().take(8).collect();
                self.notice = Some(format!(
                    "A new device joined your account: {name} ({fingerprint}…)"
                ));
            }
            "contact_device" => {
                let name: String = s("with").chars().map(super::client::shown).collect();
                self.notice = Some(format!(
                    "{name} is a contact now: a device of a contact's account"
                ));
            }
            "account_contacts" => {
                let n = e["contacts"].as_array().map_or(0, Vec::len);
                self.notice = Some(format!("{n} contacts came from your account"));
            }
            "account_joined" => {
                self.notice = Some("This device joined your account.".to_owned());
            }
            "device_unlinked" => {
                let name: String = s("name").chars().map(super::client::shown).collect();
                let fingerprint: String = s("identity").chars().take(8).collect();
                self.notice = Some(format!(
                    "{name} ({fingerprint}…) was removed from your account; your contacts are told"
                ));
            }
            "contact_device_removed" => {
                let name: String = s("with").chars().map(super::client::shown).collect();
                self.notice = Some(format!(
                    "{name} was removed from its account and is no longer a contact"
                ));
            }
            "account_left" => {
                self.notice = Some(
                    "Your account's first device removed this device: it is an account of its own now."
                        .to_owned(),
                );
            }
            "devices_conflict" => {
                let name: String = s("with").chars().map(super::client::shown).collect();
                self.notice = Some(format!(
                    "{name}'s account signed two device lists as one: compare safety numbers again"
                ));
            }
            "contact_request" => {
                let fingerprint: String = s("fingerprint").chars().take(11).collect();
                self.request = Some(s("identity").to_owned());
                self.notice = Some(format!(
                    "A contact request ({fingerprint}…): /accept NAME or /decline"
                ));
            }
            _ => {}
        }
        Action::None
    }

    /// A key press.
    pub(super) fn on_key(&mut self, k: KeyEvent) -> Action {
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        match k.code {
            KeyCode::Esc => Action::Quit,
            KeyCode::Char('c' | 'd') if ctrl => Action::Quit,
            KeyCode::Tab | KeyCode::BackTab | KeyCode::Down | KeyCode::Up
                if !self.chats.is_empty()
                    && (matches!(k.code, KeyCode::Tab | KeyCode::BackTab) || ctrl) =>
            {
                let n = self.chats.len();
                self.selected = match k.code {
                    KeyCode::Tab | KeyCode::Down => (self.selected + 1) % n,
                    _ => (self.selected + n - 1) % n,
                };
                self.notice = None;
                Action::Open(self.chats[self.selected].target.clone())
            }
            KeyCode::PageUp | KeyCode::Up => {
                let max = self.max_scroll.get();
                let at_top = self.scroll >= max;
                self.scroll = (self.scroll + if k.code == KeyCode::Up { 1 } else { 10 }).min(max);
                match (&self.older, self.current()) {
                    // At the top already: load the page before.
                    (Some(before), Some(name)) if at_top || self.scroll >= max => {
                        Action::LoadMore {
                            name: name.to_owned(),
                            before: before.clone(),
                        }
                    }
                    (None, Some(name)) if self.trimmed && at_top => Action::Open(name.to_owned()),
                    _ => Action::None,
                }
            }
            KeyCode::PageDown | KeyCode::Down => {
                let step = if k.code == KeyCode::Down { 1 } else { 10 };
                self.scroll = self.scroll.saturating_sub(step);
                Action::None
            }
            KeyCode::Enter => {
                let text = self.input.trim().to_owned();
                if let Some(a) = self.request_command(&text) {
                    return a;
                }
                match self.current() {
                    // The input is cleared once the daemon took the text
                    // (`sent`): a refused one stays to be mended.
                    Some(to) if !text.is_empty() => Action::Send {
                        to: to.to_owned(),
                        text,
                    },
                    _ => Action::None,
                }
            }
            KeyCode::Backspace => {
                self.input.pop();
                Action::None
            }
            KeyCode::Char(c) if !ctrl => {
                if self.input.len() < crate::node::proto::MAX_BODY {
                    self.input.push(c);
                }
                Action::None
            }
            _ => Action::None,
        }
    }

    /// `/accept NAME` or `/decline` for the last contact request shown
    /// (with no conversation open too: it may be the first contact).
    fn request_command(&mut self, text: &str) -> Option<Action> {
        let (word, rest) = text.split_once(' ').unwrap_or((text, ""));
        let name = match word {
            "/accept" => Some(rest.trim().to_owned()),
            "/decline" => None,
            _ => return None,
        };
        let Some(identity) = self.request.clone() else {
            self.notice = Some("No contact request to answer.".into());
            return Some(Action::None);
        };
        if name.as_deref() == Some("") {
            self.notice = Some("/accept NAME: the name to give the contact".into());
            return Some(Action::None);
        }
        Some(Action::Request { identity, name })
    }

    /// The last contact request was answered.
    pub(super) fn answered(&mut self, notice: String) {
        self.request = None;
        self.input.clear();
        self.notice = Some(notice);
    }

    /// Draws the whole screen.
    pub(super) fn render(&self, f: &mut Frame<'_>) {
        let [main, input, notice] = Layout::vertical([
            Constraint::Min(3),
            Constraint::Length(3),
            Constraint::Length(1),
        ])
        .areas(f.area());
        let [list, view] =
            Layout::horizontal([Constraint::Length(LIST_WIDTH), Constraint::Min(10)]).areas(main);
        self.render_list(f, list);
        self.render_messages(f, view);
        let title = match self.chats.get(self.selected) {
            Some(c) => format!(
                " to {} · Enter send · Tab next · PgUp older · Esc quit ",
                c.name
            ),
            None => " Esc quit ".to_owned(),
        };
        f.render_widget(
            Paragraph::new(format!("> {}", self.input)).block(Block::bordered().title(title)),
            input,
        );
        if let Some(n) = &self.notice {
            f.render_widget(
                Paragraph::new(n.as_str()).style(Style::new().add_modifier(Modifier::BOLD)),
                notice,
            );
        }
    }

    fn render_list(&self, f: &mut Frame<'_>, area: Rect) {
        let width = usize::from(area.width.saturating_sub(2));
        let items: Vec<ListItem<'_>> = self
            .chats
            .iter()
            .map(|c| {
                let count = if c.unread > 0 {
                    c.unread.to_string()
                } else {
                    String::new()
                };
                let room = width.saturating_sub(3 + count.len());
                let name: String = c.name.chars().take(room).collect();
                let pad = room.saturating_sub(name.chars().count());
                ListItem::new(Line::from(vec![
                    if c.group {
                        Span::raw("#")
                    } else {
                        dot(&c.presence)
                    },
                    Span::raw(format!(" {name}{} ", " ".repeat(pad))),
                    Span::styled(count, Style::new().add_modifier(Modifier::BOLD)),
                ]))
            })
            .collect();
        let mut state = ListState::default().with_selected(Some(self.selected));
        f.render_stateful_widget(
            List::new(items)
                .block(Block::bordered().title(" Chats "))
                .highlight_style(Style::new().add_modifier(Modifier::REVERSED)),
            area,
            &mut state,
        );
    }

    fn render_messages(&self, f: &mut Frame<'_>, area: Rect) {
        let Some(c) = self.chats.get(self.selected) else {
            f.render_widget(
                Paragraph::new(
                    "No contacts yet.\n\nAdd one from another terminal:\n  meshchat contacts add <name> <invite code>",
                )
                .block(Block::bordered()),
                area,
            );
            return;
        };
        let title = if c.group {
            Line::raw(format!(" # {} ", c.name))
        } else {
            Line::from(vec![
                Span::raw(" "),
                dot(&c.presence),
                Span::raw(format!(" {} ({}) ", c.name, c.presence)),
            ])
        };
        let width = usize::from(area.width.saturating_sub(2)).max(10);
        let height = usize::from(area.height.saturating_sub(2));
        let mut lines: Vec<Line<'_>> = Vec::new();
        if self.older.is_some() {
            lines.push(Line::styled(
                "  ↑ older messages (PgUp)",
                Style::new().fg(Color::DarkGray),
            ));
        }
        for m in &self.messages {
            let head = format!("{} {}: ", clock(m.sent_at), m.from);
            let t = if m.out { mark(m) } else { String::new() };
            // Direction marks could reorder what the line appears to say.
            let body: Vec<char> = format!("{head}{}", m.text)
                .chars()
                .map(super::client::shown)
                .collect();
            let room = width.saturating_sub(t.chars().count() + 1).max(1);
            let chunks: Vec<String> = body.chunks(room).map(|c| c.iter().collect()).collect();
            let last = chunks.len().saturating_sub(1);
            for (i, chunk) in chunks.into_iter().enumerate() {
                if i == last && !t.is_empty() {
                    let pad = room.saturating_sub(chunk.chars().count());
                    let style = if m.state == "read" {
                        Style::new().fg(Color::Cyan)
                    } else {
                        Style::new()
                    };
                    lines.push(Line::from(vec![
                        Span::raw(format!("{chunk}{} ", " ".repeat(pad))),
                        Span::styled(t.clone(), style),
                    ]));
                } else {
                    lines.push(Line::raw(chunk));
                }
            }
        }
        // The newest at the bottom, `scroll` lines up from there.
        let max_scroll = lines.len().saturating_sub(height);
        self.max_scroll.set(max_scroll);
        let top = max_scroll.saturating_sub(self.scroll.min(max_scroll));
        let shown: Vec<Line<'_>> = lines.into_iter().skip(top).take(height).collect();
        f.render_widget(
            Paragraph::new(shown).block(Block::bordered().title(title)),
            area,
        );
    }
}

#[cfg(test)]
mod tests {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use ratatui::crossterm::event::{KeyEvent, KeyModifiers};
    use serde_json::json;

    use super::*;

    fn screen(app: &App, w: u16, h: u16) -> Vec<String> {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| app.render(f)).unwrap();
        let buf = t.backend().buffer().clone();
        (0..h)
            .map(|y| {
                (0..w)
                    .map(|x| buf[(x, y)].symbol().to_owned())
                    .collect::<String>()
                    .trim_end()
                    .to_owned()
            })
            .collect()
    }

    fn msg(id: &str, out: bool, text: &str, state: &str, at: u64) -> Value {
        json!({
            "id": id, "direction": if out { "out" } else { "in" },
            "from": if out { "me" } else { "bob" }, "text": text,
            "state": state, "sent_at": at,
        })
    }

    fn app() -> App {
        let mut app = App::default();
        app.set_chats(
            &json!([
                {"name": "bob", "presence": "online"},
                {"name": "carol", "presence": "offline"},
                {"name": "dave", "presence": "away"},
            ]),
            &json!([]),
            &json!([{"with": "carol", "unread": 3}]),
        );
        app
    }

    fn key(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    #[test]
    fn the_main_screen_at_80_by_24() {
        let mut app = app();
        // Carol has unread mail: first. Open bob.
        assert_eq!(app.current(), Some("carol"));
        assert_eq!(app.on_key(key(KeyCode::Tab)), Action::Open("bob".into()));
        app.set_page(
            &json!({"messages": [
                msg("5", true, "read already", "read", 3900),
                msg("4", true, "you there?", "stored_at_relay", 3840),
                msg("3", true, "on its way", "sent", 3780),
                msg("2", false, "hi alice", "", 3720),
                msg("1", true, "hello bob", "delivered", 3660),
            ], "next": "cursor-1"}),
            false,
        );
        for c in "typing…".chars() {
            app.on_key(key(KeyCode::Char(c)));
        }
        let got = screen(&app, 80, 24);
        let want = [
            "┌ Chats ─────────────┐┌ ● bob (online) ────────────────────────────────────────┐",
            "│○ carol            3││  ↑ older messages (PgUp)                               │",
            "│● bob               ││01:01 me: hello bob                                   ✓✓│",
            "│● dave              ││01:02 bob: hi alice                                     │",
            "│                    ││01:03 me: on its way                                   ✓│",
            "│                    ││01:04 me: you there?                             ✓ relay│",
            "│                    ││01:05 me: read already                           ✓✓ read│",
            "│                    ││                                                        │",
        ];
        for (i, w) in want.iter().enumerate() {
            assert_eq!(&got[i], w, "line {i}:\n{}", got.join("\n"));
        }
        assert_eq!(
            got[20],
            "┌ to bob · Enter send · Tab next · PgUp older · Esc quit ──────────────────────┐"
        );
        assert_eq!(
            got[21],
            "│> typing…                                                                     │"
        );
        assert_eq!(got.len(), 24);
    }

    #[test]
    fn receipts_move_ticks_and_mail_elsewhere_is_announced() {
        let mut app = app();
        app.on_key(key(KeyCode::Tab));
        app.set_page(&json!({"messages": [], "next": null}), false);
        for c in "ping".chars() {
            app.on_key(key(KeyCode::Char(c)));
        }
        assert_eq!(
            app.on_key(key(KeyCode::Enter)),
            Action::Send {
                to: "bob".into(),
                text: "ping".into()
            }
        );
        // Kept until the daemon takes it (a refusal leaves it to mend).
        assert_eq!(app.input, "ping");
        // A receipt that overtakes the send's answer is kept for it.
        app.on_event(&json!({"type": "receipt", "id": "77", "state": "sent"}));
        app.sent("77", "ping", "pending", 0);
        assert!(app.input.is_empty());
        let line = &screen(&app, 80, 24)[1];
        assert!(
            line.contains("00:00 me: ping") && line.ends_with(" ✓│"),
            "{line}"
        );
        app.on_event(&json!({"type": "receipt", "id": "77", "state": "delivered"}));
        assert!(screen(&app, 80, 24)[1].ends_with(" ✓✓│"));

        // Mail for the open chat is shown and marked read; elsewhere it
        // counts and is announced.
        let a = app.on_event(&json!({"type": "message", "contact": "bob",
            "message": msg("8", false, "pong", "", 60)}));
        assert_eq!(a, Action::MarkRead("bob".into()));
        // The same message again (live and in a page): shown once.
        app.on_event(&json!({"type": "message", "contact": "bob",
            "message": msg("8", false, "pong", "", 60)}));
        assert_eq!(app.messages.iter().filter(|m| m.id == "8").count(), 1);
        let a = app.on_event(&json!({"type": "message", "contact": "dave",
            "message": msg("9", false, "lunch?", "", 60)}));
        assert_eq!(a, Action::None);
        let got = screen(&app, 80, 24);
        assert!(got[2].contains("00:01 bob: pong"), "{}", got.join("\n"));
        assert!(got[3].starts_with("│● dave             1│"), "{}", got[3]);
        assert_eq!(got[23], "New message from dave: lunch?");
        app.on_event(
            &json!({"type": "presence", "contact": "bob", "state": "away", "last_seen_ms": 1}),
        );
        assert!(screen(&app, 80, 24)[0].contains("bob (away)"));
        // A request, answered from the input line.
        for c in "/accept".chars() {
            app.on_key(key(KeyCode::Char(c)));
        }
        assert_eq!(app.on_key(key(KeyCode::Enter)), Action::None);
        assert_eq!(app.notice.as_deref(), Some("No contact request to answer."));
        app.on_event(
            &json!({"type": "devices_changed", "with": "bob", "identity": "b1",
            "devices": {"account": "b1", "serial": 2, "devices": [
                {"identity": "b1", "name": "phone\u{202e}", "added_at": 1}]},
            "added": [], "removed": [], "renamed": ["b1"]}),
        );
        assert_eq!(
            screen(&app, 80, 24)[23],
            "bob's devices: named phone\u{fffd}"
        );
        app.on_event(&json!({"type": "device_linked", "identity": "0a1b2c3d4e5f",
            "name": "laptop\u{1b}[2J"}));
        assert_eq!(
            screen(&app, 80, 24)[23],
            "A new device joined your account: laptop\u{fffd}[2J (0a1b2c3d…)"
        );
        app.on_event(
            &json!({"type": "devices_conflict", "with": "bob", "identity": "b1",
            "account": "b1", "serial": 2}),
        );
        assert_eq!(
            screen(&app, 80, 24)[23],
            "bob's account signed two device lists as one: compare safety numbers again"
        );
        app.on_event(&json!({"type": "contact_request", "identity": "ab",
            "fingerprint": "12345 67890 13579 24680"}));
        assert_eq!(
            screen(&app, 80, 24)[23],
            "A contact request (12345 67890…): /accept NAME or /decline"
        );
        assert_eq!(app.on_key(key(KeyCode::Enter)), Action::None);
        assert!(app.notice.as_deref().unwrap().starts_with("/accept NAME"));
        for c in " erin".chars() {
            app.on_key(key(KeyCode::Char(c)));
        }
        assert_eq!(
            app.on_key(key(KeyCode::Enter)),
            Action::Request {
                identity: "ab".into(),
                name: Some("erin".into())
            }
        );
        app.input = "/decline".into();
        assert_eq!(
            app.on_key(key(KeyCode::Enter)),
            Action::Request {
                identity: "ab".into(),
                name: None
            }
        );
        app.answered("Declined.".into());
        assert!(app.input.is_empty());
        assert_eq!(app.on_key(key(KeyCode::Enter)), Action::None);
    }

    /// `/save` names the file's sender: in a group, another member may
    /// send a message under the same id.
    #[test]
    fn the_file_to_save_names_its_sender() {
        let mut app = App::default();
        app.set_chats(
            &json!([{"name": "bob", "identity": "b1", "presence": "online"}]),
            &json!([]),
            &json!([]),
        );
        assert_eq!(app.to_save(), None);
        let mut shown = msg("f1", false, "[file scan.png]", "", 10);
        shown["sender"] = json!("b1");
        shown["media"] = json!({"name": "scan.png"});
        app.on_event(&json!({"type": "message", "contact": "bob", "message": shown}));
        assert_eq!(
            app.to_save(),
            Some(ToSave {
                with: "b1".into(),
                id: "f1".into(),
                from: "b1".into()
            })
        );
        app.on_event(&json!({"type": "media_ready", "id": "f2", "with": "g",
            "contact": "carol", "identity": "c3", "group": "g"}));
        assert!(
            app.notice
                .as_deref()
                .unwrap()
                .ends_with("meshchat save g f2 --from c3 -o FILE"),
            "{:?}",
            app.notice
        );
        assert_eq!(
            app.to_save(),
            Some(ToSave {
                with: "g".into(),
                id: "f2".into(),
                from: "c3".into()
            })
        );
        app.on_event(&json!({"type": "media_held", "id": "f3", "with": "bob",
            "contact": "bob", "identity": "b1", "needs": 2_097_152, "free": 0}));
        assert!(app.notice.as_deref().unwrap().contains("(2048 KiB) waits"));
    }

    #[test]
    fn two_contacts_of_one_name_are_two_chats_by_key() {
        let mut app = App::default();
        app.set_chats(
            &json!([
                {"name": "bob", "identity": "b1", "presence": "online"},
                {"name": "bob", "identity": "b2", "presence": "offline"},
            ]),
            &json!([]),
            &json!([]),
        );
        assert_eq!(app.current(), Some("b1"));
        // A message from the second bob counts in the second chat, not in
        // the open one.
        let mut m = msg("1", false, "it's me", "", 60);
        m["sender"] = json!("b2");
        let a = app.on_event(&json!({"type": "message", "contact": "bob", "message": m}));
        assert_eq!(a, Action::None);
        assert!(app.messages.is_empty());
        let unread: Vec<u64> = app.chats.iter().map(|c| c.unread).collect();
        assert_eq!(unread, vec![0, 1]);
        // The second bob's presence is the second chat's.
        app.on_event(
            &json!({"type": "presence", "contact": "bob", "identity": "b2",
            "state": "away", "last_seen_ms": 1}),
        );
        let shown: Vec<&str> = app.chats.iter().map(|c| c.presence.as_str()).collect();
        assert_eq!(shown, vec!["online", "away"]);
    }

    #[test]
    fn scrolling_up_past_the_top_loads_the_older_page() {
        let mut app = app();
        app.on_key(key(KeyCode::Tab));
        let page: Vec<Value> = (0..30)
            .rev()
            .map(|i| msg(&i.to_string(), false, &format!("line {i}"), "", 60 * i))
            .collect();
        app.set_page(&json!({"messages": page, "next": "c30"}), false);
        let got = screen(&app, 80, 24);
        // The newest at the bottom of the view.
        assert!(got[18].contains("line 29"), "{}", got.join("\n"));
        assert_eq!(app.on_key(key(KeyCode::PageUp)), Action::None);
        assert!(screen(&app, 80, 24)[18].contains("line 19"));
        // Reaching the top asks for the page before.
        assert_eq!(
            app.on_key(key(KeyCode::PageUp)),
            Action::LoadMore {
                name: "bob".into(),
                before: "c30".into()
            }
        );
        app.set_page(
            &json!({"messages": [msg("x", false, "the very first", "", 0)], "next": null}),
            true,
        );
        assert_eq!(app.messages.len(), 31);
        // Scrolling down never goes below the newest line.
        for _ in 0..10 {
            app.on_key(key(KeyCode::PageDown));
        }
        assert_eq!(app.scroll, 0);
        assert!(screen(&app, 80, 24)[18].contains("line 29"));
        for _ in 0..10 {
            app.on_key(key(KeyCode::PageUp));
        }
        assert_eq!(app.messages[0].text, "the very first");
        let top = screen(&app, 80, 24);
        assert!(top[1].contains("the very first"), "{}", top.join("\n"));
    }

    #[test]
    fn with_no_contacts_it_says_how_to_add_one() {
        let app = App::default();
        let got = screen(&app, 80, 24).join("\n");
        assert!(got.contains("No contacts yet."), "{got}");
        assert!(
            got.contains("meshchat contacts add <name> <invite code>"),
            "{got}"
        );
        assert_eq!(App::default().current(), None);
        let mut app = App {
            input: "x".into(),
            ..App::default()
        };
        assert_eq!(app.on_key(key(KeyCode::Enter)), Action::None);
        assert_eq!(app.on_key(key(KeyCode::Esc)), Action::Quit);
    }

    #[test]
    fn a_group_is_a_chat_of_its_own_with_counts_of_who_has_read() {
        let mut app = App::default();
        app.set_chats(
            &json!([{"name": "bob", "presence": "online"}]),
            &json!([
                {"id": "aa11", "name": "team", "joined": true, "members": []},
                {"id": "bb22", "name": "old", "joined": false, "members": []},
            ]),
            &json!([{"with": "team", "group": "aa11", "unread": 2}]),
        );
        // Unread first; a group is named by its id towards the API; a
        // group this device left is not listed.
        assert_eq!(app.chats.len(), 2);
        assert_eq!(app.current(), Some("aa11"));
        app.set_page(&json!({"messages": [], "next": null}), false);
        // Bob writes in the group: shown there, not in bob's chat.
        let mut m = msg("1", false, "hi team", "", 60);
        m["from"] = json!("bob");
        let a = app.on_event(&json!({"type": "message", "contact": "bob",
            "group": "aa11", "group_name": "team", "message": m}));
        assert_eq!(a, Action::MarkRead("aa11".into()));
        // Ours, then members' receipts: counts until everyone has read.
        app.sent("2", "hello all", "sent", 120);
        app.on_event(&json!({"type": "group_receipt", "id": "2",
            "delivered": 2, "read": 1, "members": 3}));
        let got = screen(&app, 80, 24);
        assert!(got[0].contains(" # team "), "{}", got.join("\n"));
        assert!(got[1].starts_with("│# team"), "{}", got[1]);
        assert!(got[1].contains("00:01 bob: hi team"), "{}", got.join("\n"));
        assert!(got[2].contains("00:02 me: hello all"), "{}", got[2]);
        assert!(got[2].ends_with(" ✓ 2/3 read 1│"), "{}", got[2]);
        app.on_event(&json!({"type": "group_receipt", "id": "2",
            "delivered": 3, "read": 3, "members": 3}));
        app.on_event(&json!({"type": "receipt", "id": "2", "state": "read"}));
        assert!(screen(&app, 80, 24)[2].ends_with(" ✓✓ read│"));
        // A group message while another chat is open: counted there.
        assert_eq!(app.on_key(key(KeyCode::Tab)), Action::Open("bob".into()));
        let a = app.on_event(&json!({"type": "message", "contact": "bob",
            "group": "aa11", "group_name": "team", "message": msg("3", false, "later", "", 180)}));
        assert_eq!(a, Action::None);
        assert_eq!(app.chats.iter().find(|c| c.group).unwrap().unread, 1);
        assert_eq!(
            app.notice.as_deref(),
            Some("New message from bob in team: later")
        );
    }
}
