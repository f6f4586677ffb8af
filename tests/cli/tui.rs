//! `meshchat chat` in a real pseudo-terminal (80×24): type a message, see
//! its tick turn into "delivered".

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::Instant;

use portable_pty::{CommandBuilder, PtySize, native_pty_system};

use crate::WAIT;

/// The pseudo-terminal's screen, fed from its output.
struct Screen {
    parser: vt100::Parser,
    rx: mpsc::Receiver<Vec<u8>>,
}

impl Screen {
    /// Waits until no line of the screen satisfies `pick`.
    fn wait_gone(&mut self, what: &str, pick: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let contents = self.parser.screen().contents();
            if !contents.lines().any(&pick) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(bytes) => self.parser.process(&bytes),
                Err(_) => panic!("{what} still on the screen:\n{contents}"),
            }
        }
    }

    /// Waits until some line of the screen satisfies `pick`; returns it.
    fn wait_line(&mut self, what: &str, pick: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let contents = self.parser.screen().contents();
            if let Some(l) = contents.lines().find(|l| pick(l)) {
                return l.to_owned();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(bytes) => self.parser.process(&bytes),
                Err(_) => panic!("no {what} on the screen:\n{contents}"),
            }
        }
    }
}

#[test]
fn the_terminal_chat_sends_a_message_and_shows_it_delivered() {
    let root = tempfile::tempdir().unwrap();
    let (mut alice, mut bob) = crate::two_contacts(root.path());

    let pty = native_pty_system()
        .openpty(PtySize {
            rows: 24,
            cols: 80,
            pixel_width: 0,
            pixel_height: 0,
        })
        .unwrap();
    let mut cmd = CommandBuilder::new(env!("CARGO_BIN_EXE_meshchat"));
    cmd.arg("chat");
    cmd.env("MESHCHAT_DATA_DIR", &alice.dir);
    cmd.env("TERM", "xterm-256color");
    let mut child = pty.slave.spawn_command(cmd).unwrap();
    drop(pty.slave);
    let mut reader = pty.master.try_clone_reader().unwrap();
    let mut keys = pty.master.take_writer().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let mut screen = Screen {
        parser: vt100::Parser::new(24.try_into().unwrap(), 80.try_into().unwrap(), 0),
        rx,
    };
    screen.wait_line("bob in the list", |l| {
        l.contains("bob") && l.starts_with("│")
    });

    keys.write_all(b"hello from the terminal\r").unwrap();
    keys.flush().unwrap();
    let line = screen.wait_line("the message delivered", |l| {
        l.contains("me: hello from the terminal") && l.contains("✓✓")
    });
    assert!(!line.contains("read"), "{line}");

    // Bob has it, and reading it turns alice's tick into "read".
    let page = bob.json(&["history", "alice"]);
    assert_eq!(page["messages"][0]["text"], "hello from the terminal");
    bob.json(&["read", "alice"]);
    screen.wait_line("the message read", |l| {
        l.contains("me: hello from the terminal") && l.contains("✓✓ read")
    });

    // And bob's answer appears in the open conversation.
    let answer = bob.json(&["send", "alice", "got it"]);
    screen.wait_line("bob's answer", |l| l.contains("bob: got it"));

    // `/file PATH` sends a file; bob's device fetches it whole.
    let bob_events = crate::Proc::events(bob.cmd());
    let note = root.path().join("note.txt");
    std::fs::write(&note, b"minutes of the meeting").unwrap();
    keys.write_all(format!("/file {}\r", note.display()).as_bytes())
        .unwrap();
    keys.flush().unwrap();
    screen.wait_line("the file delivered", |l| {
        l.contains("me: [file] note.txt (22 bytes)") && l.contains("✓✓")
    });
    let ready = bob_events.wait_json("the file at bob", |e| e["type"] == "media_ready");
    let saved = root.path().join("saved.txt");
    let id = ready["id"].as_str().unwrap();
    bob.json(&["save", "alice", id, "--output", saved.to_str().unwrap()]);
    assert_eq!(std::fs::read(&saved).unwrap(), b"minutes of the meeting");
    // A file from bob: its line, and how to save it.
    std::fs::write(root.path().join("reply.txt"), b"ok").unwrap();
    bob.json(&[
        "send",
        "alice",
        "--file",
        root.path().join("reply.txt").to_str().unwrap(),
    ]);
    screen.wait_line("bob's file", |l| {
        l.contains("bob: [file] reply.txt (2 bytes)")
    });
    let bob_key = alice.json(&["contacts", "list"])[0]["identity"]
        .as_str()
        .unwrap()
        .to_owned();
    screen.wait_line("how to save it", |l| {
        l.contains(&format!("/save FILE, or meshchat save {}", &bob_key[..12]))
    });
    // `/save PATH` keeps the file that came last.
    let kept = root.path().join("kept.txt");
    keys.write_all(format!("/save {}\r", kept.display()).as_bytes())
        .unwrap();
    keys.flush().unwrap();
    screen.wait_line("the file saved", |l| l.contains("Saved 2 bytes to"));
    assert_eq!(std::fs::read(&kept).unwrap(), b"ok");
    // Not over an existing file: the refusal shows, the file stays.
    keys.write_all(format!("/save {}\r", saved.display()).as_bytes())
        .unwrap();
    keys.flush().unwrap();
    screen.wait_line("the refusal", |l| l.contains("Not saved: "));
    assert_eq!(std::fs::read(&saved).unwrap(), b"minutes of the meeting");

    // A message deleted and the chat cleared from elsewhere (the CLI)
    // leave the open conversation too.
    let id = answer["id"].as_str().unwrap();
    alice.json(&["delete", "bob", id]);
    screen.wait_gone("the deleted message", |l| l.contains("bob: got it"));
    screen.wait_line("a message not deleted", |l| {
        l.contains("me: hello from the terminal")
    });
    alice.json(&["clear", "bob", "--yes"]);
    screen.wait_gone("the cleared chat", |l| {
        l.contains("me: hello from the terminal") || l.contains("[file]")
    });

    // Ctrl-C leaves, with exit code 0.
    keys.write_all(b"\x03").unwrap();
    keys.flush().unwrap();
    let pid = child.process_id();
    let status =
        crate::exit::wait_for(pid, || child.wait().unwrap(), WAIT).expect("the chat did not exit");
    assert!(status.success(), "{status:?}");
    alice.stop();
    bob.stop();
}
