//! `meshchat chat`: the terminal chat, a client of the running daemon.
//!
//! One thread reads the daemon's events and hands them to this loop, which
//! waits for a key or an event, asks the daemon what the key needs, and
//! redraws.

use std::sync::mpsc;
use std::time::Duration;

use anyhow::anyhow;
use ratatui::crossterm::event::{self, Event, KeyEventKind};
use serde_json::Value;

use super::CliError;
use super::client::PlainArgs;
use super::tui::{Action, App};
use crate::api::client::ClientError;
use crate::api::{self, Client, Request};

/// How often the loop looks for events between keys.
const POLL: Duration = Duration::from_millis(50);
/// The longest between two draws when nothing happens (for the times shown).
const REDRAW_EVERY: Duration = Duration::from_secs(1);
/// A page of history.
const PAGE: usize = 100;
/// Longest wait for one answer from the daemon. The terminal is in raw
/// mode, so Ctrl-C cannot interrupt a call: a daemon that does not answer
/// (busy writing a large export, say) ends the chat with an error rather
/// than freezing it.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

enum Input {
    Event(Value),
    Gone(String),
}

/// Runs the terminal chat until Esc or Ctrl-C.
pub(super) fn run(args: PlainArgs) -> Result<(), CliError> {
    let dir = args.dir.resolve()?;
    let socket = dir.join(api::SOCKET);
    let fail = super::client::from_client;
    let mut client = Client::connect(&socket).map_err(fail)?;
    client.set_timeout(Some(CALL_TIMEOUT)).map_err(fail)?;
    let mut events = Client::connect(&socket)
        .and_then(Client::subscribe)
        .map_err(fail)?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        loop {
            match events.next_event() {
                Ok(e) => {
                    if tx.send(Input::Event(e)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Input::Gone(e.to_string()));
                    return;
                }
            }
        }
    });
    let mut app = App::default();
    refresh(&mut client, &mut app).map_err(fail)?;
    if let Some(name) = app.current().map(str::to_owned) {
        act(&mut client, &mut app, Action::Open(name)).map_err(fail)?;
    }
    let mut terminal = ratatui::try_init()
        .map_err(|e| CliError::failed(anyhow!("setting up the terminal: {e}")))?;
    let result = (|| -> Result<(), CliError> {
        // Drawn when something changed (a key, a resize, an event), and
        // once a second for what shows the time: not 20 times a second
        // over a long conversation.
        let mut dirty = true;
        let mut drawn = std::time::Instant::now();
        loop {
            if dirty || drawn.elapsed() >= REDRAW_EVERY {
                terminal
                    .draw(|f| app.render(f))
                    .map_err(|e| CliError::failed(e.into()))?;
                dirty = false;
                drawn = std::time::Instant::now();
            }
            while let Ok(input) = rx.try_recv() {
                dirty = true;
                match input {
                    Input::Event(e) => {
                        let a = app.on_event(&e);
                        // A new group, a renamed one, or the first chat.
                        if e["type"] == "group_changed"
                            || (e["type"] == "message" && app.current().is_none())
                        {
                            refresh(&mut client, &mut app).map_err(fail)?;
                        }
                        act(&mut client, &mut app, a).map_err(fail)?;
                    }
                    Input::Gone(why) => {
                        return Err(CliError::failed(anyhow!("the daemon went away: {why}")));
                    }
                }
            }
            if !event::poll(POLL).map_err(|e| CliError::failed(e.into()))? {
                continue;
            }
            dirty = true;
            match event::read().map_err(|e| CliError::failed(e.into()))? {
                Event::Key(k) if k.kind == KeyEventKind::Press => match app.on_key(k) {
                    Action::Quit => return Ok(()),
                    a => act(&mut client, &mut app, a).map_err(fail)?,
                },
                _ => {}
            }
        }
    })();
    let _ = ratatui::try_restore();
    result
}

/// Reloads the conversation list.
fn refresh(client: &mut Client, app: &mut App) -> Result<(), ClientError> {
    let contacts = client.call(&Request::Contacts {})?;
    let groups = client.call(&Request::Groups {})?;
    let chats = client.call(&Request::Chats {})?;
    app.set_chats(&contacts, &groups, &chats);
    Ok(())
}

/// What a line starts with to send a file instead of text.
const FILE_COMMAND: &str = "/file ";

/// `/file PATH`: sends the file at `path` (relative to where the chat
/// runs) and shows its line.
fn send_file(
    client: &mut Client,
    app: &mut App,
    to: String,
    path: &str,
) -> Result<(), ClientError> {
    let path = match std::path::absolute(path) {
        Ok(p) => p,
        Err(e) => {
            app.notice = Some(format!("{path}: {e}"));
            return Ok(());
        }
    };
    let Some(utf8) = path.to_str() else {
        app.notice = Some(format!("{}: not a UTF-8 path", path.display()));
        return Ok(());
    };
    let v = client.call(&Request::SendFile {
        to,
        path: utf8.to_owned(),
        mime: None,
    })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let size = std::fs::metadata(&path).map_or(0, |m| m.len());
    app.sent(
        v["id"].as_str().unwrap_or(""),
        &format!("[file] {name} ({size} bytes)"),
        v["state"].as_str().unwrap_or("pending"),
        crate::node::now_secs(),
    );
    Ok(())
}

/// What a line starts with to save a file that came.
const SAVE_COMMAND: &str = "/save ";

/// `/save PATH`: writes the last file that came whole (else the newest
/// file in the open conversation) to a new file at `path` (relative to
/// where the chat runs).
fn save_file(client: &mut Client, app: &mut App, path: &str) -> Result<(), ClientError> {
    let Some(file) = app.to_save() else {
        app.notice = Some("No file to save here yet.".into());
        return Ok(());
    };
    let path = match std::path::absolute(path) {
        Ok(p) => p,
        Err(e) => {
            app.notice = Some(format!("{path}: {e}"));
            return Ok(());
        }
    };
    let Some(utf8) = path.to_str() else {
        app.notice = Some(format!("{}: not a UTF-8 path", path.display()));
        return Ok(());
    };
    let v = match client.call(&Request::SaveFile {
        with: file.with,
        id: file.id,
        path: utf8.to_owned(),
        // The sender named: in a group, another member's message may
        // carry the same id.
        from: Some(file.from).filter(|k| !k.is_empty()),
    }) {
        Err(ClientError::Api(e)) => {
            app.notice = Some(format!("Not saved: {}", e.message));
            return Ok(());
        }
        v => v?,
    };
    app.input.clear();
    app.notice = Some(format!(
        "Saved {} bytes to {}",
        v["written"].as_u64().unwrap_or(0),
        path.display()
    ));
    Ok(())
}

/// A line that is a command (`/file PATH`, `/save PATH`): the command and
/// its argument.
fn command(text: &str) -> Option<(&'static str, &str)> {
    [FILE_COMMAND, SAVE_COMMAND].into_iter().find_map(|c| {
        let word = c.trim_end();
        let rest = text.strip_prefix(word)?;
        (rest.is_empty() || rest.starts_with(' ')).then(|| (word, rest.trim()))
    })
}

/// Does what an action asks of the daemon. A refusal is shown on the
/// notice line; only a lost daemon ends the chat.
fn act(client: &mut Client, app: &mut App, a: Action) -> Result<(), ClientError> {
    let r = match a {
        Action::None | Action::Quit => Ok(()),
        Action::Open(name) => history(client, app, name, None),
        Action::LoadMore { name, before } => history(client, app, name, Some(before)),
        Action::MarkRead(name) => client.call(&Request::MarkRead { with: name }).map(drop),
        Action::Request {
            identity,
            name: Some(name),
        } => client
            .call(&Request::AcceptRequest {
                identity,
                name: name.clone(),
            })
            .map(|_| app.answered(format!("{name} is a contact now; what they sent follows."))),
        Action::Request {
            identity,
            name: None,
        } => client
            .call(&Request::DeclineRequest { identity })
            .map(|_| app.answered("Declined.".into())),
        Action::Send { to, text } if command(&text).is_some() => {
            match command(&text) {
                Some((_, "")) | None => {
                    app.notice = Some("/file PATH sends the file at PATH; /save PATH saves the last file that came".into());
                    Ok(())
                }
                Some((c, path)) if c == FILE_COMMAND.trim_end() => send_file(client, app, to, path),
                Some((_, path)) => save_file(client, app, path),
            }
        }
        Action::Send { to, text } => client
            .call(&Request::Send {
                to,
                text: text.clone(),
            })
            .map(|v| {
                let now = crate::node::now_secs();
                app.sent(
                    v["id"].as_str().unwrap_or(""),
                    &text,
                    v["state"].as_str().unwrap_or("pending"),
                    now,
                );
            }),
    };
    match r {
        Err(ClientError::Api(e)) => {
            app.notice = Some(e.message);
            Ok(())
        }
        other => other,
    }
}

fn history(
    client: &mut Client,
    app: &mut App,
    name: String,
    before: Option<String>,
) -> Result<(), ClientError> {
    let older = before.is_some();
    let page = client.call(&Request::History {
        with: name.clone(),
        before,
        limit: Some(PAGE),
    })?;
    app.set_page(&page, older);
    if !older {
        client.call(&Request::MarkRead { with: name })?;
    }
    Ok(())
}
