//! The user's side, through the real binary: `meshchat init`, `run`,
//! `id`, `contacts`, `send`, `history`, `events`, a relay started by
//! `meshchat relay`, and the local API over its real Unix socket. Every
//! process listens on 127.0.0.1 (port 0) with mDNS off, in temporary
//! directories; every wait is on a line of output, bounded.
//!
//! - `chat`: two daemons and a relay; a message both ways with its state;
//!   the recipient's daemon stopped, mail waits at the relay, and arrives
//!   when it is back; a file sent with `send --file` and written out with
//!   `save`; a contact request listed and accepted.
//! - `mistakes`: a mangled invite code, an unknown contact, a second
//!   daemon, a wrong passphrase, no daemon — one line and a non-zero exit
//!   each, nothing changed.
//! - `api`: the socket's permissions, malformed and unknown requests, an
//!   oversized line, the event stream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/exit.rs"]
mod exit;

mod api;
mod chat;
mod group;
mod mistakes;
mod tui;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest any one step may take.
pub(crate) const WAIT: Duration = Duration::from_secs(60);
/// The passphrase every test keystore uses.
pub(crate) const PASSPHRASE: &str = "correct horse battery";

/// `meshchat` with a clean environment: no inherited MESHCHAT_* settings.
pub(crate) fn meshchat() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_meshchat"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("MESHCHAT_") {
            c.env_remove(k);
        }
    }
    c.env("MESHCHAT_LOG", "warn").stdin(Stdio::null());
    c
}

/// A child process whose stdout (and stderr) lines arrive on channels; it
/// is killed when dropped.
pub(crate) struct Proc {
    pub(crate) child: Child,
    out: mpsc::Receiver<String>,
    err: mpsc::Receiver<String>,
}

fn lines(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

impl Proc {
    pub(crate) fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = lines(child.stdout.take().unwrap());
        let err = lines(child.stderr.take().unwrap());
        Self { child, out, err }
    }

    /// The next stdout line, parsed as JSON.
    pub(crate) fn next_json(&self, what: &str) -> Value {
        let line = self
            .out
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("no {what} (stderr: {})", self.stderr_so_far()));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {line}"))
    }

    /// Waits for a JSON stdout line that `pick` accepts.
    pub(crate) fn wait_json(&self, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .out
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {what} (stderr: {})", self.stderr_so_far()));
            let v: Value = serde_json::from_str(&line).unwrap();
            if pick(&v) {
                return v;
            }
        }
    }

    /// The fields of the first stderr line (JSON log) with each of these
    /// messages, in whatever order they come.
    pub(crate) fn wait_logs(&self, messages: &[&str]) -> Vec<Value> {
        let mut found: Vec<Option<Value>> = vec![None; messages.len()];
        let deadline = Instant::now() + WAIT;
        while found.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .err
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no log lines {messages:?}"));
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            for (i, m) in messages.iter().enumerate() {
                if found[i].is_none() && v["fields"]["message"] == *m {
                    found[i] = Some(v["fields"].clone());
                }
            }
        }
        found.into_iter().flatten().collect()
    }

    /// Waits for a stderr line that `pick` accepts.
    pub(crate) fn wait_stderr(&self, what: &str, pick: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .err
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {what} on stderr"));
            if pick(&line) {
                return;
            }
        }
    }

    /// `meshchat events` running, once it says it is subscribed (an event
    /// after this is not missed).
    pub(crate) fn events(mut cmd: Command) -> Self {
        cmd.arg("events");
        let p = Self::spawn(cmd);
        p.wait_stderr("the events subscription", |l| {
            l.starts_with("listening for events")
        });
        p
    }

    fn stderr_so_far(&self) -> String {
        self.err.try_iter().collect::<Vec<_>>().join("\n")
    }

    /// SIGTERM, then the exit code.
    pub(crate) fn terminate(mut self) -> Option<i32> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        exit::wait_for_exit(&mut self.child, WAIT)
            .expect("did not exit after SIGTERM")
            .code()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One device: its data directory and, while it runs, its daemon.
pub(crate) struct Device {
    pub(crate) dir: PathBuf,
    pub(crate) daemon: Option<Proc>,
}

impl Device {
    /// `meshchat init` in `root/name`.
    pub(crate) fn init(root: &Path, name: &str) -> Self {
        let dir = root.join(name);
        // `--json` by its environment twin, set as the guide says.
        let out = Self::cmd_in(&dir)
            .arg("init")
            .env("MESHCHAT_JSON", "1")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v["peer_id"].as_str().unwrap().starts_with("12D3KooW"));
        Self { dir, daemon: None }
    }

    fn cmd_in(dir: &Path) -> Command {
        let mut c = meshchat();
        c.env("MESHCHAT_DATA_DIR", dir)
            .env("MESHCHAT_PASSPHRASE", PASSPHRASE);
        c
    }

    /// `meshchat` for this device.
    pub(crate) fn cmd(&self) -> Command {
        Self::cmd_in(&self.dir)
    }

    /// `meshchat run` on loopback, mDNS off, with these relays; returns
    /// once its API serves.
    pub(crate) fn start(&mut self, relays: &[String]) {
        let args: Vec<&str> = relays
            .iter()
            .flat_map(|r| ["--relay", r.as_str()])
            .collect();
        self.start_with(&args);
    }

    /// `meshchat run` on loopback, mDNS off, with more arguments; returns
    /// its ready line once its API serves.
    pub(crate) fn start_with(&mut self, args: &[&str]) -> Value {
        let mut c = self.cmd();
        c.args(["run", "--json", "--no-mdns"]);
        c.args(["--listen", "/ip4/127.0.0.1/tcp/0"]).args(args);
        let p = Proc::spawn(c);
        let ready = p.next_json("the daemon's ready line");
        assert_eq!(ready["ready"], true, "{ready}");
        self.daemon = Some(p);
        ready
    }

    /// Stops the daemon with SIGTERM; it exits 0.
    pub(crate) fn stop(&mut self) {
        let p = self.daemon.take().expect("running");
        assert_eq!(p.terminate(), Some(0));
    }

    /// Runs a command to completion.
    pub(crate) fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs a `--json` command that must succeed; its output.
    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let out = self.cmd().args(args).arg("--json").output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "meshchat {args:?}: {}",
            stderr(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "meshchat {args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// This device's invite code.
    pub(crate) fn invite(&self) -> String {
        self.json(&["id"])["invite"].as_str().unwrap().to_owned()
    }
}

/// Alice and Bob, each a running daemon (no relay) and each the other's
/// contact, in `root`.
pub(crate) fn two_contacts(root: &Path) -> (Device, Device) {
    let mut alice = Device::init(root, "alice");
    let mut bob = Device::init(root, "bob");
    alice.start(&[]);
    bob.start(&[]);
    alice.json(&["contacts", "add", "bob", &bob.invite()]);
    bob.json(&["contacts", "add", "alice", &alice.invite()]);
    (alice, bob)
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A relay run by `meshchat relay`; its address ends in `/p2p/<id>`.
pub(crate) fn start_relay(root: &Path) -> (Proc, String) {
    let mut c = meshchat();
    c.env("MESHCHAT_PASSPHRASE", PASSPHRASE)
        .env("MESHCHAT_LOG", "info")
        .args(["relay", "--data-dir"])
        .arg(root.join("relay"))
        .args([
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-advertise",
            "--metrics",
            "off",
            "--log-format",
            "json",
        ]);
    let p = Proc::spawn(c);
    let logs = p.wait_logs(&["listening", "relay running"]);
    let addr = logs[0]["addr"].as_str().unwrap().to_owned();
    let peer = logs[1]["peer_id"].as_str().unwrap().to_owned();
    (p, format!("{addr}/p2p/{peer}"))
}

/// A command's failure: exit `code`, one line on stderr that contains
/// `says`, nothing on stdout.
pub(crate) fn assert_refused(out: &Output, code: i32, says: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("meshchat: "), "{err}");
    assert!(err.contains(says), "{err:?} does not say {says:?}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
