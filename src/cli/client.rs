//! The commands that talk to a running daemon over its local API.

use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use serde_json::Value;

use super::{CliError, DirArg, OutArg};
use crate::api::client::{ClientError, Events};
use crate::api::{self, Client, Request};

/// `meshchat id`.
#[derive(Debug, clap::Args)]
pub(super) struct IdArgs {
    #[command(flatten)]
    dir: DirArg,
    #[command(flatten)]
    out: OutArg,
    /// Print the invite code without its QR code.
    #[arg(long, env = "MESHCHAT_NO_QR", value_parser = clap::builder::BoolishValueParser::new())]
    no_qr: bool,
}

/// `meshchat contacts …`.
#[derive(Debug, clap::Subcommand)]
pub(super) enum ContactsCmd {
    /// Adds a contact from its invite code (`-` reads the code from stdin).
    Add {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        out: OutArg,
        /// What to call the contact.
        name: String,
        /// Its invite code (from `meshchat id` on its device), or `-`.
        code: String,
        /// The name is taken by a contact whose key changed: accept the new
        /// key (compare fingerprints with that person first).
        #[arg(long, env = "MESHCHAT_ACCEPT_NEW_KEY", value_parser = clap::builder::BoolishValueParser::new())]
        accept_new_key: bool,
    },
    /// Lists contacts with presence and safety numbers.
    List {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        out: OutArg,
    },
    /// Records that you compared safety numbers with a contact.
    Verify {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        out: OutArg,
        /// The contact: name or identity key.
        contact: String,
        /// Take a verification back.
        #[arg(long, env = "MESHCHAT_UNDO", value_parser = clap::builder::BoolishValueParser::new())]
        undo: bool,
    },
    /// Forgets a contact (the conversation stays).
    Remove {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        out: OutArg,
        /// The contact: name or identity key.
        contact: String,
    },
    /// Lists contact requests: devices that added your invite and that you
    /// have not added.
    Requests {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        out: OutArg,
    },
    /// Accepts a contact request (compare its fingerprint with its owner
    /// first): it becomes a contact, and what it sent is shown.
    Accept {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        out: OutArg,
        /// Its identity key (from `meshchat contacts requests`).
        identity: String,
        /// What to call the contact.
        name: String,
    },
    /// Declines a contact request: what it sent is dropped, and it asks no
    /// more (until you add its invite).
    Decline {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        out: OutArg,
        /// Its identity key.
        identity: String,
    },
}

/// `meshchat group …`.
#[derive(Debug, clap::Subcommand)]
pub(super) enum DevicesCmd {
    /// Lists this account's devices (`*`: the one holding the account key).
    List {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        out: OutArg,
    },
    /// Names this device (at most 64 bytes; "" for none): its account's
    /// device list is signed again and sent to every contact.
    Name {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        out: OutArg,
        /// The name ("laptop").
        name: String,
    },
    /// Prints a link code for a new device to join this account (only on
    /// the account's first device; usable once, for ten minutes). Whoever
    /// holds the code can join: give it to the new device only.
    Link {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        out: OutArg,
    },
    /// Removes a device from this account (only on the account's first
    /// device; a lost or stolen one, say): every contact is sent the list
    /// without it and stops writing to it, and the device is told.
    Remove {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        out: OutArg,
        /// The device: its name in `meshchat devices list`, or its
        /// identity key.
        device: String,
    },
    /// Joins the account whose first device printed `code` (run on a new
    /// device, with no contacts and no groups), and waits until that
    /// device has added this one.
    Join {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        out: OutArg,
        /// The link code (`meshchat-link:…`; `-` reads it from stdin, which
        /// keeps it out of the process list and the shell's history).
        code: String,
        /// This device's name in the account ("laptop").
        #[arg(long)]
        name: String,
        /// Longest wait for the first device's answer, in seconds.
        #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=600))]
        timeout: u64,
    },
}

#[derive(Debug, clap::Subcommand)]
pub(super) enum GroupCmd {
    /// Creates a group with contacts; you are its first admin.
    Create {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        out: OutArg,
        /// The group's name.
        name: String,
        /// Contacts to add (names or identity keys).
        #[arg(required = true)]
        members: Vec<String>,
        /// Make it temporary: messages disappear this many seconds after
        /// they are sent, on every member's device and relay.
        #[arg(long, env = "MESHCHAT_RETENTION", value_parser = clap::value_parser!(u64).range(1..=crate::node::engine::MAX_RETENTION))]
        retention: Option<u64>,
        /// The name you go by in the group.
        #[arg(long = "as", env = "MESHCHAT_GROUP_NAME", default_value = "me")]
        as_name: String,
    },
    /// Adds a contact to a group (admins).
    Add {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        out: OutArg,
        /// The group: name or id.
        group: String,
        /// The contact: name or identity key.
        contact: String,
        /// As an admin.
        #[arg(long, env = "MESHCHAT_ADMIN", value_parser = clap::builder::BoolishValueParser::new())]
        admin: bool,
    },
    /// Removes a member (admins); everyone left changes keys.
    Remove {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        out: OutArg,
        /// The group: name or id.
        group: String,
        /// The member: name or identity key.
        member: String,
    },
    /// Renames a group (admins).
    Rename {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        out: OutArg,
        /// The group: name or id.
        group: String,
        /// Its new name.
        name: String,
    },
    /// Makes a member an admin, or a member again (admins).
    Role {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        out: OutArg,
        /// The group: name or id.
        group: String,
        /// The member: name or identity key.
        member: String,
        /// `admin` or `member`.
        #[arg(value_parser = ["admin", "member"])]
        role: String,
    },
    /// Leaves a group.
    Leave {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        out: OutArg,
        /// The group: name or id.
        group: String,
    },
    /// Lists groups with their members.
    List {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        out: OutArg,
    },
    /// Writes a message to a group (as `meshchat send GROUP TEXT`).
    Send(SendArgs),
}

/// `meshchat send`.
#[derive(Debug, clap::Args)]
pub(super) struct SendArgs {
    #[command(flatten)]
    dir: DirArg,
    #[command(flatten)]
    out: OutArg,
    /// The contact: name or identity key.
    to: String,
    /// The text (`-` reads it from stdin).
    #[arg(required_unless_present = "file")]
    text: Option<String>,
    /// Instead of text: send this file (at most 32 MiB); the contact's
    /// device fetches it from this one.
    #[arg(long, env = "MESHCHAT_FILE", conflicts_with = "text")]
    file: Option<std::path::PathBuf>,
    /// The file's media type (`image/png`…), with --file.
    #[arg(long, env = "MESHCHAT_MIME", requires = "file")]
    mime: Option<String>,
    /// Wait until the message is `sent`, `stored` (at a relay),
    /// `delivered` or `read`.
    #[arg(long, env = "MESHCHAT_WAIT")]
    wait: Option<String>,
    /// Longest wait, in seconds (at most a day).
    #[arg(long, env = "MESHCHAT_TIMEOUT", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout: u64,
}

/// `meshchat history`.
#[derive(Debug, clap::Args)]
pub(super) struct HistoryArgs {
    #[command(flatten)]
    dir: DirArg,
    #[command(flatten)]
    out: OutArg,
    /// The contact: name or identity key.
    with: String,
    /// Older messages: the cursor printed with the previous page.
    #[arg(long, env = "MESHCHAT_BEFORE")]
    before: Option<String>,
    /// How many messages (1 to 500).
    #[arg(long, env = "MESHCHAT_LIMIT", default_value_t = 20,
          value_parser = clap::value_parser!(u16).range(1..=500))]
    limit: u16,
}

/// A command with only the common flags.
#[derive(Debug, clap::Args)]
pub(super) struct PlainArgs {
    #[command(flatten)]
    pub(super) dir: DirArg,
    #[command(flatten)]
    pub(super) out: OutArg,
}

/// `meshchat export`.
#[derive(Debug, clap::Args)]
pub(super) struct ExportArgs {
    #[command(flatten)]
    dir: DirArg,
    #[command(flatten)]
    out: OutArg,
    /// The contact or group whose conversation to export (decrypted, as
    /// JSON).
    with: Option<String>,
    /// Instead: a backup of the whole store, still encrypted (it restores
    /// only with this device's keystore and passphrase).
    #[arg(long, env = "MESHCHAT_BACKUP", value_parser = clap::builder::BoolishValueParser::new(), conflicts_with = "with")]
    backup: bool,
    /// The file to write (it must not exist; created owner-only).
    #[arg(long, short, env = "MESHCHAT_OUTPUT")]
    output: std::path::PathBuf,
}

/// `meshchat read`.
#[derive(Debug, clap::Args)]
pub(super) struct ReadArgs {
    #[command(flatten)]
    dir: DirArg,
    #[command(flatten)]
    out: OutArg,
    /// The contact: name or identity key.
    with: String,
}

/// `meshchat clear`.
#[derive(Debug, clap::Args)]
pub(super) struct ClearArgs {
    #[command(flatten)]
    dir: DirArg,
    #[command(flatten)]
    out: OutArg,
    /// The contact or group: name, identity key or group id.
    with: String,
    /// Do not ask for confirmation (needed when not on a terminal).
    #[arg(long, short = 'y')]
    yes: bool,
}

/// `meshchat delete`.
#[derive(Debug, clap::Args)]
pub(super) struct DeleteArgs {
    #[command(flatten)]
    dir: DirArg,
    #[command(flatten)]
    out: OutArg,
    /// The contact or group: name, identity key or group id.
    with: String,
    /// The message id (as `history --json` shows it).
    id: String,
    /// Its sender's identity key, when messages of more than one sender
    /// carry that id (the answer says so).
    #[arg(long)]
    from: Option<String>,
}

/// `meshchat temporary`.
#[derive(Debug, clap::Args)]
pub(super) struct TemporaryArgs {
    #[command(flatten)]
    dir: DirArg,
    #[command(flatten)]
    out: OutArg,
    /// The contact or group: name or id.
    with: String,
    /// Seconds messages live after sending, or `off` to keep them.
    #[arg(value_parser = parse_retention)]
    seconds: Retention,
}

/// A retention as typed: seconds, or `off`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Retention(Option<u64>);

fn parse_retention(s: &str) -> Result<Retention, String> {
    if s == "off" {
        return Ok(Retention(None));
    }
    match s.parse::<u64>() {
        Ok(n) if (1..=crate::node::engine::MAX_RETENTION).contains(&n) => Ok(Retention(Some(n))),
        _ => Err(format!(
            "seconds from 1 to {}, or off",
            crate::node::engine::MAX_RETENTION
        )),
    }
}

fn connect(dir: &DirArg) -> Result<Client, CliError> {
    let dir = dir.resolve()?;
    Client::connect(&dir.join(api::SOCKET)).map_err(from_client)
}

/// The exit a client error maps to (3 when no daemon runs).
pub(super) fn from_client(e: ClientError) -> CliError {
    match e {
        ClientError::NoDaemon(_) => CliError::no_daemon(e.into()),
        e => CliError::failed(e.into()),
    }
}

fn call(dir: &DirArg, req: &Request) -> Result<Value, CliError> {
    connect(dir)?.call(req).map_err(from_client)
}

/// Calls the daemon; with `--json`, prints the answer for scripts and
/// gives `None` (the caller prints nothing more).
fn ask(dir: &DirArg, out: &OutArg, req: &Request) -> Result<Option<Value>, CliError> {
    let v = call(dir, req)?;
    if out.json {
        super::print_json(&v);
        return Ok(None);
    }
    Ok(Some(v))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// Text from a contact, made safe to print on a terminal: control
/// characters (escape sequences could clear the screen, fake lines or
/// reach the clipboard) and the marks that reorder or break a line
/// (direction overrides and isolates, line and paragraph separators) are
/// shown as `\u{fffd}`.
fn clean(v: &Value) -> String {
    s(v).chars().map(shown).collect()
}

/// `c` as a terminal may show it (see [`clean`]).
pub(super) fn shown(c: char) -> char {
    let reorders = matches!(c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}');
    if c.is_control() || reorders {
        '\u{fffd}'
    } else {
        c
    }
}

/// `meshchat id`.
pub(super) fn id(args: IdArgs) -> Result<(), CliError> {
    let Some(v) = ask(&args.dir, &args.out, &Request::Id {})? else {
        return Ok(());
    };
    println!("peer id:     {}", s(&v["peer_id"]));
    println!("fingerprint: {}", s(&v["fingerprint"]));
    println!("invite code (give it to a contact: `meshchat contacts add <name> <code>`):");
    println!("{}", s(&v["invite"]));
    if !args.no_qr {
        match qrcode::QrCode::with_error_correction_level(s(&v["invite"]), qrcode::EcLevel::L) {
            Ok(qr) => println!(
                "{}",
                qr.render::<qrcode::render::unicode::Dense1x2>()
                    .quiet_zone(true)
                    .build()
            ),
            Err(e) => println!("(no QR code: {e})"),
        }
    }
    Ok(())
}

/// `meshchat contacts …`.
pub(super) fn contacts(cmd: ContactsCmd) -> Result<(), CliError> {
    match cmd {
        ContactsCmd::Add {
            dir,
            out,
            name,
            code,
            accept_new_key,
        } => {
            let code = code_arg(code)?;
            let v = call(
                &dir,
                &Request::AddContact {
                    name,
                    code,
                    accept_new_key,
                },
            )?;
            if out.json {
                super::print_json(&v);
            } else {
                println!("Added {}.", s(&v["name"]));
                println!("  safety number: {}", s(&v["safety_number"]));
                println!(
                    "Compare it with {} in person or on a call, then `meshchat contacts verify {}`.",
                    s(&v["name"]),
                    s(&v["name"])
                );
            }
        }
        ContactsCmd::List { dir, out } => {
            let Some(v) = ask(&dir, &out, &Request::Contacts {})? else {
                return Ok(());
            };
            let list = v.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("No contacts yet: `meshchat contacts add <name> <invite code>`.");
            }
            for c in list {
                println!(
                    "{:<20} {:<8} {:<10} {}{}",
                    s(&c["name"]),
                    s(&c["presence"]),
                    if c["verified"] == true {
                        "verified"
                    } else {
                        "unverified"
                    },
                    s(&c["safety_number"]),
                    if c["from_group"] == true {
                        "  (from a group)"
                    } else {
                        ""
                    }
                );
                // Worth a line only when the account has more than this
                // device, or named it.
                let devices = c["devices"]["devices"].as_array().map_or(0, Vec::len);
                let named = c["devices"]["devices"][0]["name"] != "";
                if devices > 1 || (devices == 1 && named) {
                    print_devices(&c["devices"], "    ");
                }
            }
        }
        ContactsCmd::Verify {
            dir,
            out,
            contact,
            undo,
        } => {
            let v = call(
                &dir,
                &Request::VerifyContact {
                    contact,
                    verified: !undo,
                },
            )?;
            if out.json {
                super::print_json(&v);
            } else if undo {
                println!("{} is no longer marked verified.", s(&v["name"]));
            } else {
                println!("{} is marked verified.", s(&v["name"]));
            }
        }
        ContactsCmd::Requests { dir, out } => {
            let Some(v) = ask(&dir, &out, &Request::Requests {})? else {
                return Ok(());
            };
            let list = v.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("No contact requests.");
            }
            for r in list {
                println!("{}", s(&r["identity"]));
                println!("  fingerprint: {}", s(&r["fingerprint"]));
                println!("  messages waiting: {}", r["held"]);
            }
        }
        ContactsCmd::Accept {
            dir,
            out,
            identity,
            name,
        } => {
            let v = call(&dir, &Request::AcceptRequest { identity, name })?;
            if out.json {
                super::print_json(&v);
            } else {
                println!("Added {}.", s(&v["name"]));
                println!("  safety number: {}", s(&v["safety_number"]));
            }
        }
        ContactsCmd::Decline { dir, out, identity } => {
            let v = call(&dir, &Request::DeclineRequest { identity })?;
            if out.json {
                super::print_json(&v);
            } else {
                println!("Declined {}.", s(&v["identity"]));
            }
        }
        ContactsCmd::Remove { dir, out, contact } => {
            let v = call(&dir, &Request::RemoveContact { contact })?;
            if out.json {
                super::print_json(&v);
            } else {
                println!("Removed {}; the conversation stays.", s(&v["name"]));
            }
        }
    }
    Ok(())
}

/// `meshchat group …`.
pub(super) fn devices(cmd: DevicesCmd) -> Result<(), CliError> {
    let (dir, out, req) = match cmd {
        DevicesCmd::List { dir, out } => (dir, out, Request::Devices {}),
        DevicesCmd::Name { dir, out, name } => (dir, out, Request::NameDevice { name }),
        DevicesCmd::Remove { dir, out, device } => (dir, out, Request::RemoveDevice { device }),
        DevicesCmd::Link { dir, out } => {
            let Some(v) = ask(&dir, &out, &Request::LinkDevice {})? else {
                return Ok(());
            };
            println!("{}", s(&v["code"]));
            eprintln!(
                "On the new device, within {} minutes: meshchat devices join - --name <its name>, and paste the code",
                v["expires_in"].as_u64().unwrap_or(0) / 60
            );
            return Ok(());
        }
        DevicesCmd::Join {
            dir,
            out,
            code,
            name,
            timeout,
        } => return join(&dir, &out, code, name, Duration::from_secs(timeout)),
    };
    let Some(v) = ask(&dir, &out, &req)? else {
        return Ok(());
    };
    print_devices(&v, "");
    Ok(())
}

/// A code as given, or (`-`) read from stdin (where the process list
/// and the shell's history do not show it).
fn code_arg(code: String) -> Result<String, CliError> {
    if code != "-" {
        return Ok(code);
    }
    let mut c = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut c)
        .map_err(|e| CliError::failed(anyhow!("reading the code from stdin: {e}")))?;
    Ok(c)
}

/// `meshchat devices join`: asks, then waits for `account_joined`.
fn join(
    dir: &DirArg,
    out: &OutArg,
    code: String,
    name: String,
    bound: Duration,
) -> Result<(), CliError> {
    let code = code_arg(code)?;
    // Subscribe before asking, so that the answer cannot slip past.
    let mut events = connect(dir)?.subscribe().map_err(from_client)?;
    call(dir, &Request::JoinAccount { code, name })?;
    let deadline = Instant::now() + bound;
    let not_yet = |why: String| {
        CliError::not_that_far(anyhow!(
            "{why}; this device asks again each time it connects to the account's device, until the code ends (`meshchat devices list` shows the account once it has answered)"
        ))
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(not_yet(format!(
                "no answer within {} s: the account's device may be offline, or the code used, mistyped or ended",
                bound.as_secs()
            )));
        }
        events
            .set_timeout(Some(left))
            .map_err(|e| not_yet(e.to_string()))?;
        match events.next_event() {
            Ok(e) if s(&e["type"]) == "account_joined" => break,
            Ok(_) => {}
            Err(ClientError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(not_yet(e.to_string())),
        }
    }
    let Some(v) = ask(dir, out, &Request::Devices {})? else {
        return Ok(());
    };
    println!("Joined the account. Its devices:");
    print_devices(&v, "  ");
    Ok(())
}

/// An account's device list (a `DevicesView`), one device a line.
fn print_devices(v: &Value, indent: &str) {
    let account = s(&v["account"]);
    for d in v["devices"].as_array().into_iter().flatten() {
        let name = clean(&d["name"]);
        println!(
            "{indent}{} {:<20} {}",
            if s(&d["identity"]) == account {
                "*"
            } else {
                " "
            },
            if name.is_empty() { "(unnamed)" } else { &name },
            s(&d["identity"])
        );
    }
}

pub(super) fn group(cmd: GroupCmd) -> Result<(), CliError> {
    let (dir, out, req) = match cmd {
        GroupCmd::Send(args) => return send(args),
        GroupCmd::List { dir, out } => {
            let Some(v) = ask(&dir, &out, &Request::Groups {})? else {
                return Ok(());
            };
            let list = v.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("No groups yet: `meshchat group create <name> <contact>…`.");
            }
            for g in list {
                let members: Vec<String> = g["members"]
                    .as_array()
                    .map(|m| {
                        m.iter()
                            .map(|m| match s(&m["role"]) {
                                "admin" => format!("{} (admin)", clean(&m["name"])),
                                _ => clean(&m["name"]),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let state = match (g["joined"] == true, g["retention"].as_u64()) {
                    (false, _) => " [left]".to_owned(),
                    (true, Some(r)) => format!(" [messages disappear after {r} s]"),
                    (true, None) => String::new(),
                };
                println!("{}{state}: {}", clean(&g["name"]), members.join(", "));
            }
            return Ok(());
        }
        GroupCmd::Create {
            dir,
            out,
            name,
            members,
            retention,
            as_name,
        } => (
            dir,
            out,
            Request::CreateGroup {
                name,
                members,
                retention,
                as_name: Some(as_name),
            },
        ),
        GroupCmd::Add {
            dir,
            out,
            group,
            contact,
            admin,
        } => (
            dir,
            out,
            Request::GroupAdd {
                group,
                contact,
                admin,
            },
        ),
        GroupCmd::Remove {
            dir,
            out,
            group,
            member,
        } => (dir, out, Request::GroupRemove { group, member }),
        GroupCmd::Rename {
            dir,
            out,
            group,
            name,
        } => (dir, out, Request::GroupRename { group, name }),
        GroupCmd::Role {
            dir,
            out,
            group,
            member,
            role,
        } => (
            dir,
            out,
            Request::GroupRole {
                group,
                member,
                admin: role == "admin",
            },
        ),
        GroupCmd::Leave { dir, out, group } => (dir, out, Request::GroupLeave { group }),
    };
    let Some(v) = ask(&dir, &out, &req)? else {
        return Ok(());
    };
    match req {
        Request::CreateGroup { name, .. } => println!(
            "Created {}; its members hear of it as their devices come online.",
            clean(&Value::String(name))
        ),
        Request::GroupAdd { .. } => println!("Added {}.", clean(&v["added"])),
        Request::GroupRemove { .. } => println!(
            "Removed {}; each member changes its key when it learns of this, and from then on it cannot read what that member sends.",
            clean(&v["removed"])
        ),
        Request::GroupRename { .. } => println!("Renamed to {}.", clean(&v["name"])),
        Request::GroupRole { admin: true, .. } => {
            println!("{} is now an admin.", clean(&v["member"]));
        }
        Request::GroupRole { .. } => println!("{} is a member again.", clean(&v["member"])),
        _ => println!("You left the group."),
    }
    Ok(())
}

/// The order of delivery states.
fn rank(state: &str) -> Option<u8> {
    Some(match state {
        "pending" => 0,
        "sent" => 1,
        "stored_at_relay" | "stored" => 2,
        "delivered" => 3,
        "read" => 4,
        _ => return None,
    })
}

/// `meshchat send`.
pub(super) fn send(args: SendArgs) -> Result<(), CliError> {
    let wanted = match args.wait.as_deref() {
        None => None,
        Some(w @ ("sent" | "stored" | "delivered" | "read")) => rank(w),
        Some(other) => {
            return Err(CliError::usage(anyhow!(
                "--wait is sent, stored, delivered or read, not {other}"
            )));
        }
    };
    let request = match (args.text, args.file) {
        (_, Some(file)) => {
            let path = std::path::absolute(&file)
                .map_err(|e| CliError::failed(anyhow!("{}: {e}", file.display())))?;
            Request::SendFile {
                to: args.to,
                path: utf8_path(&path)?,
                mime: args.mime,
            }
        }
        (Some(text), None) => Request::Send {
            to: args.to,
            text: read_text(text)?,
        },
        (None, None) => return Err(CliError::usage(anyhow!("give a text or --file"))),
    };
    // Subscribe before sending, so no receipt can slip past.
    let mut events = match wanted {
        Some(_) => Some(connect(&args.dir)?.subscribe().map_err(from_client)?),
        None => None,
    };
    let v = call(&args.dir, &request)?;
    let id = s(&v["id"]).to_owned();
    let mut state = s(&v["state"]).to_owned();
    // A group message is answered "sent": `--wait sent` is met at once.
    if let (Some(want), Some(ev)) = (wanted, events.as_mut())
        && rank(&state).is_none_or(|r| r < want)
    {
        state = wait_state(ev, &id, want, Duration::from_secs(args.timeout))?;
    }
    if args.out.json {
        super::print_json(&serde_json::json!({ "id": id, "state": state }));
    } else {
        println!("{} {id}", tick(&state));
    }
    Ok(())
}

/// The text to send: as given, or (`-`) from stdin, within a message's
/// length.
fn read_text(text: String) -> Result<String, CliError> {
    Ok(if text == "-" {
        // Read past the limit (and a few newlines that are trimmed), so
        // that longer text is refused rather than cut short.
        let cap = crate::node::proto::MAX_BODY + 64;
        let mut raw = Vec::new();
        std::io::stdin()
            .take(cap as u64)
            .read_to_end(&mut raw)
            .map_err(|e| CliError::failed(anyhow!("reading the text from stdin: {e}")))?;
        // The length first: a cut at the cap may fall inside a character.
        if raw.len() >= cap {
            return Err(CliError::failed(anyhow!(
                "the text on stdin is longer than a message may be ({} bytes); nothing was sent",
                crate::node::proto::MAX_BODY
            )));
        }
        let t = String::from_utf8(raw).map_err(|_| {
            CliError::failed(anyhow!("the text on stdin is not UTF-8; nothing was sent"))
        })?;
        t.trim_end_matches('\n').to_owned()
    } else {
        text
    })
}

/// `meshchat save`.
#[derive(Debug, clap::Args)]
pub(super) struct SaveArgs {
    #[command(flatten)]
    dir: DirArg,
    #[command(flatten)]
    out: OutArg,
    /// The contact or group the message is in.
    with: String,
    /// The message's id (as `history` shows it).
    id: String,
    /// The file to write (it must not exist; created owner-only).
    #[arg(long, short, env = "MESHCHAT_OUTPUT")]
    output: std::path::PathBuf,
    /// Its sender's identity key, when messages of more than one sender
    /// carry that id (the answer says so).
    #[arg(long)]
    from: Option<String>,
}

/// A path as the local API takes it (UTF-8), or a clear error: never
/// another name than the one given.
fn utf8_path(path: &std::path::Path) -> Result<String, CliError> {
    path.to_str().map(str::to_owned).ok_or_else(|| {
        CliError::failed(anyhow!(
            "{}: not a UTF-8 path; the local API takes UTF-8 paths only",
            path.display()
        ))
    })
}

/// `meshchat save`: a media message's file, once it is all here.
pub(super) fn save(args: SaveArgs) -> Result<(), CliError> {
    let path = std::path::absolute(&args.output)
        .map_err(|e| CliError::failed(anyhow!("{}: {e}", args.output.display())))?;
    let v = call(
        &args.dir,
        &Request::SaveFile {
            with: args.with,
            id: args.id,
            path: utf8_path(&path)?,
            from: args.from,
        },
    )?;
    if args.out.json {
        super::print_json(&v);
    } else {
        println!("Saved {} bytes to {}.", v["written"], path.display());
    }
    Ok(())
}

/// Reads events until the message `id` reaches rank `want`.
fn wait_state(ev: &mut Events, id: &str, want: u8, bound: Duration) -> Result<String, CliError> {
    let deadline = Instant::now() + bound;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(CliError::not_that_far(anyhow!(
                "not that far within {} s (the message stays queued and is retried)",
                bound.as_secs()
            )));
        }
        // The message is written already: whatever goes wrong from here
        // says so (exit 4), so that a script does not send it again.
        let lost = |e: ClientError| {
            CliError::not_that_far(anyhow!(
                "stopped waiting ({e}); the message {id} is written and stays queued"
            ))
        };
        ev.set_timeout(Some(left)).map_err(lost)?;
        let e = match ev.next_event() {
            Ok(e) => e,
            Err(ClientError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(lost(e)),
        };
        if s(&e["id"]) != id {
            continue;
        }
        match s(&e["type"]) {
            "receipt" if rank(s(&e["state"])).is_some_and(|r| r >= want) => {
                return Ok(s(&e["state"]).to_owned());
            }
            "expired" => {
                return Err(CliError::not_that_far(anyhow!(
                    "the message expired undelivered"
                )));
            }
            "group_expired" => {
                return Err(CliError::not_that_far(anyhow!(
                    "the message expired before reaching {}",
                    clean(&e["contact"])
                )));
            }
            "relay_refused" => eprintln!(
                "meshchat: relay {} refused to hold it: {} (other paths and relays are still tried)",
                s(&e["relay"]),
                s(&e["reason"])
            ),
            _ => {}
        }
    }
}

fn tick(state: &str) -> &'static str {
    match state {
        "pending" => "… pending  ",
        "sent" => "✓ sent     ",
        "stored_at_relay" => "✓ at relay ",
        "delivered" => "✓✓ delivered",
        "read" => "✓✓ read    ",
        _ => "?",
    }
}

/// `meshchat history`.
pub(super) fn history(args: HistoryArgs) -> Result<(), CliError> {
    let Some(v) = ask(
        &args.dir,
        &args.out,
        &Request::History {
            with: args.with.clone(),
            before: args.before,
            limit: Some(usize::from(args.limit)),
        },
    )?
    else {
        return Ok(());
    };
    let messages = v["messages"].as_array().cloned().unwrap_or_default();
    if messages.is_empty() {
        println!("No messages with {}.", args.with);
    }
    for m in messages.iter().rev() {
        let when = super::utc(m["sent_at"].as_u64().unwrap_or(0));
        let state = if m["direction"] == "out" {
            tick(s(&m["state"]))
        } else {
            ""
        };
        println!(
            "{when}  {:<12} {}  {state}",
            clean(&m["from"]),
            clean(&m["text"])
        );
    }
    if let Some(next) = v["next"].as_str() {
        println!("(older: meshchat history {} --before {next})", args.with);
    }
    Ok(())
}

/// `meshchat chats`.
pub(super) fn chats(args: PlainArgs) -> Result<(), CliError> {
    let Some(v) = ask(&args.dir, &args.out, &Request::Chats {})? else {
        return Ok(());
    };
    let list = v.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("No conversations yet.");
    }
    for c in list {
        let unread = c["unread"].as_u64().unwrap_or(0);
        // A group: its size where a contact shows presence.
        let state = match c["members"].as_u64() {
            Some(n) => format!("group/{}", n),
            None => s(&c["presence"]).to_string(),
        };
        let temporary = match c["retention"].as_u64() {
            Some(secs) => format!("[disappear after {secs} s]  "),
            None => String::new(),
        };
        println!(
            "{:<20} {:<8} {:>4} unread  {temporary}{}",
            clean(&c["with"]),
            state,
            unread,
            clean(&c["last"]["text"])
        );
    }
    Ok(())
}

/// `meshchat read`.
pub(super) fn read(args: ReadArgs) -> Result<(), CliError> {
    let v = call(
        &args.dir,
        &Request::MarkRead {
            with: args.with.clone(),
        },
    )?;
    if args.out.json {
        super::print_json(&v);
    } else if v["marked"] == true {
        println!("Marked the conversation with {} read.", args.with);
    } else {
        println!("Nothing unread with {}.", args.with);
    }
    Ok(())
}

/// `meshchat clear`: asks first, on a terminal, unless `--yes`.
pub(super) fn clear(args: ClearArgs) -> Result<(), CliError> {
    if !args.yes {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            return Err(CliError::usage(anyhow::anyhow!(
                "clearing deletes every message with {} from this device: pass --yes to confirm",
                args.with
            )));
        }
        eprint!(
            "Delete every message with {} from this device? Type yes: ",
            args.with
        );
        let mut answer = String::new();
        std::io::stdin()
            .read_line(&mut answer)
            .map_err(|e| CliError::failed(e.into()))?;
        if answer.trim() != "yes" {
            return Err(CliError::failed(anyhow::anyhow!(
                "not confirmed; nothing deleted"
            )));
        }
    }
    let v = call(
        &args.dir,
        &Request::ClearHistory {
            with: args.with.clone(),
        },
    )?;
    if args.out.json {
        super::print_json(&v);
    } else {
        println!(
            "Deleted {} messages with {}.",
            v["cleared"].as_u64().unwrap_or(0),
            args.with
        );
    }
    Ok(())
}

/// `meshchat delete`.
pub(super) fn delete(args: DeleteArgs) -> Result<(), CliError> {
    let v = call(
        &args.dir,
        &Request::DeleteMessage {
            with: args.with.clone(),
            id: args.id.clone(),
            from: args.from.clone(),
        },
    )?;
    if args.out.json {
        super::print_json(&v);
    } else if v["deleted"] == true {
        println!("Deleted the message from this device.");
    } else {
        println!("No such message here.");
    }
    Ok(())
}

/// `meshchat temporary`.
pub(super) fn temporary(args: TemporaryArgs) -> Result<(), CliError> {
    let v = call(
        &args.dir,
        &Request::Retention {
            with: args.with.clone(),
            secs: args.seconds.0,
        },
    )?;
    if args.out.json {
        super::print_json(&v);
    } else {
        match args.seconds.0 {
            Some(s) => println!(
                "Messages with {} written from now on disappear {s} seconds after they are sent, on every device and relay.",
                args.with
            ),
            None => println!("Messages with {} written from now on are kept.", args.with),
        }
    }
    Ok(())
}

/// `meshchat export`.
pub(super) fn export(args: ExportArgs) -> Result<(), CliError> {
    if args.with.is_none() && !args.backup {
        return Err(CliError::usage(anyhow!(
            "name a contact to export its conversation, or pass --backup"
        )));
    }
    let path = std::path::absolute(&args.output)
        .map_err(|e| CliError::failed(anyhow!("{}: {e}", args.output.display())))?;
    let v = call(
        &args.dir,
        &Request::Export {
            with: args.with,
            path: utf8_path(&path)?,
        },
    )?;
    if args.out.json {
        super::print_json(&v);
    } else if args.backup {
        println!(
            "Backed up {} records to {} (encrypted; restores only with this keystore).",
            v["written"],
            path.display()
        );
    } else {
        println!(
            "Exported {} messages to {} (decrypted: keep it safe).",
            v["written"],
            path.display()
        );
    }
    Ok(())
}

/// `meshchat status`.
pub(super) fn status(args: PlainArgs) -> Result<(), CliError> {
    let Some(v) = ask(&args.dir, &args.out, &Request::Status {})? else {
        return Ok(());
    };
    println!("peer id:   {}", s(&v["peer_id"]));
    println!(
        "presence:  {}{}",
        s(&v["presence"]),
        if v["hidden"] == true { " (hidden)" } else { "" }
    );
    println!("queued:    {} message(s)", v["queued"]);
    for a in v["listen"].as_array().into_iter().flatten() {
        println!("listening: {}", s(a));
    }
    for r in v["relays"].as_array().into_iter().flatten() {
        let up = if r["connected"] == true {
            "connected"
        } else {
            "not connected"
        };
        println!("relay:     {} ({up})", s(&r["peer_id"]));
    }
    let peers = v["connected"].as_array().cloned().unwrap_or_default();
    println!("connected: {} peer(s)", peers.len());
    for p in peers {
        println!("  {}", s(&p));
    }
    Ok(())
}

/// `meshchat events`: one JSON line per event until interrupted; once
/// the daemon has subscribed (nothing that happens later is missed), one
/// line on stderr says so.
pub(super) fn events(args: PlainArgs) -> Result<(), CliError> {
    use std::io::Write;
    let mut ev = connect(&args.dir)?.subscribe().map_err(from_client)?;
    eprintln!("listening for events (one JSON line each; Ctrl-C stops)");
    let mut out = std::io::stdout();
    loop {
        let e = ev.next_event().map_err(from_client)?;
        let line = serde_json::to_string(&e).unwrap_or_default();
        // A reader that went away (`| head`) ends this quietly.
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contacts_text_cannot_drive_the_terminal() {
        let v = serde_json::json!("hi\u{1b}]52;c;ZXZpbA==\u{7}\u{1b}[2J\r\nfake line");
        let shown = clean(&v);
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(shown.starts_with("hi\u{fffd}]52;c;"), "{shown:?}");
    }

    #[test]
    fn a_contacts_text_cannot_reorder_a_line() {
        let v = serde_json::json!(
            "pay \u{202E}001$\u{202C} now\u{2028}ok \u{2067}x\u{2069} \u{1F468}\u{200D}\u{1F469}"
        );
        assert_eq!(
            clean(&v),
            "pay \u{fffd}001$\u{fffd} now\u{fffd}ok \u{fffd}x\u{fffd} \u{1F468}\u{200D}\u{1F469}"
        );
    }
}
