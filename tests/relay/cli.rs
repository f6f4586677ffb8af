//! `meshchat relay`, the real binary: config file, JSON logs, a deposit
//! over the wire, the metrics endpoint, SIGTERM; and mistakes an operator
//! makes, each a clear message and a non-zero exit. And `meshchat demo`,
//! which runs a relay and three devices in one process.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use meshchat::crypto::{Envelope, MailboxKey};
use meshchat::relay::proto::{Request, Response};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::Client;
use crate::common::WAIT;

fn meshchat() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_meshchat"));
    c.env_remove("MESHCHAT_PASSPHRASE")
        .env_remove("MESHCHAT_DATA_DIR")
        .env("MESHCHAT_LOG", "info");
    c
}

/// The relay's stderr, one parsed JSON line at a time, and those seen.
struct Logs(
    mpsc::Receiver<serde_json::Value>,
    std::cell::RefCell<Vec<serde_json::Value>>,
);

impl Logs {
    fn of(child: &mut Child) -> Self {
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let line = line.unwrap();
                let v: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        Self(rx, Default::default())
    }

    /// Waits for a line (new or already seen) whose message is `message`;
    /// returns its fields.
    fn wait(&self, message: &str) -> serde_json::Value {
        if let Some(v) = self
            .1
            .borrow()
            .iter()
            .find(|v| v["fields"]["message"] == message)
        {
            return v["fields"].clone();
        }
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let v = self
                .0
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no log line {message:?}"));
            if v["fields"]["message"] == message {
                return v["fields"].clone();
            }
            self.1.borrow_mut().push(v);
        }
    }
}

/// A child process killed when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    // A server that kept the connection open fails the test, not hangs it.
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: relay\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_binary_holds_mail_serves_metrics_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pass = dir.path().join("passphrase");
    std::fs::write(&pass, "correct horse\n").unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            r#"
data_dir = "{}"
listen = ["/ip4/127.0.0.1/tcp/0"]
metrics = "127.0.0.1:0"
log_format = "json"
advertise = false

[limits]
max_mailbox_envelopes = 100
"#,
            data.display()
        ),
    )
    .unwrap();
    let mut relay = Running(
        meshchat()
            .args(["relay", "--config"])
            .arg(&config)
            .env("MESHCHAT_PASSPHRASE_FILE", &pass)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let child = &mut relay.0;
    let logs = Logs::of(child);
    let listening: Multiaddr = logs.wait("listening")["addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let peer: libp2p::PeerId = logs.wait("relay running")["peer_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let metrics = logs.wait("serving metrics at /metrics")["bound"]
        .as_str()
        .map(str::to_owned);
    let metrics = metrics.unwrap_or_else(|| panic!("no metrics address"));

    // A deposit over the wire, answered with a verifiable custody receipt.
    let mut client = Client::connect_to(&listening.with(Protocol::P2p(peer)), peer, 171).await;
    let owner = MailboxKey::generate(&mut StdRng::seed_from_u64(172));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let env = Envelope::new(owner.id().0, [3; 16], now + 600, vec![5; 250]).to_bytes();
    let answer = client
        .ask(
            peer,
            Request::Deposit(vec![serde_bytes::ByteBuf::from(env.clone())]),
        )
        .await;
    let Response::Custody(receipt) = answer else {
        panic!("no custody: {answer:?}")
    };
    let key = libp2p::identity::PublicKey::try_decode_protobuf(peer.as_ref().digest())
        .unwrap()
        .try_into_ed25519()
        .unwrap()
        .to_bytes();
    receipt.verify(&key, &[env]).unwrap();

    let text = http_get(&metrics, "/metrics");
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("meshchat_relay_deposits_total 1\n"), "{text}");
    assert!(text.contains("meshchat_relay_envelopes 1\n"), "{text}");
    assert!(http_get(&metrics, "/").starts_with("HTTP/1.1 404"));

    // SIGTERM: a clean stop, exit code 0.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    logs.wait("relay stopped");
    let code = wait_exit(child);
    assert_eq!(code, Some(0));

    // The keystore now exists: a wrong passphrase is refused, nothing
    // changes.
    std::fs::write(&pass, "wrong").unwrap();
    let out = meshchat()
        .args(["relay", "--config"])
        .arg(&config)
        .arg("--passphrase-file")
        .arg(&pass)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wrong passphrase"), "{err}");
}

fn wait_exit(child: &mut Child) -> Option<i32> {
    crate::exit::wait_for_exit(child, WAIT)
        .expect("relay did not exit")
        .code()
}

#[test]
fn operator_mistakes_are_one_clear_line_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\nretention = 3\n",
            dir.path().join("x").display()
        ),
    )
    .unwrap();
    let out = meshchat()
        .args(["relay", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `retention`"), "{err}");

    let out = meshchat()
        .args(["relay", "--data-dir"])
        .arg(dir.path())
        .args(["--listen", "tcp:4001"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen:"));

    let out = meshchat().args(["relay"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no data directory"));

    // No passphrase anywhere: says where to put one; nothing created.
    let data = dir.path().join("fresh");
    let out = meshchat()
        .args(["relay", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--passphrase-file"));
    assert!(!data.exists());
}

#[test]
fn the_demo_tells_its_whole_story_on_loopback_and_exits_cleanly() {
    // The demo bounds each of its steps itself (20 s), so this ends.
    let out = Command::new(env!("CARGO_BIN_EXE_meshchat"))
        .arg("demo")
        .env_remove("MESHCHAT_LOG")
        .output()
        .unwrap();
    let (text, errors) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{text}\n{errors}");
    for step in [
        "on 127.0.0.1 only",
        "carol has not added alice",
        "compares it with alice, and accepts",
        "across bob (two hops)",
        "✓ stored at relay",
        "the relay deleted it",
        "delivered, then read",
        "all stopped",
    ] {
        assert!(text.contains(step), "missing {step:?} in:\n{text}");
    }
    // The text was looked for on bob's disk and in the relay's files.
    assert!(text.contains("the text on bob's disk: nowhere"), "{text}");
    assert!(
        text.contains("the text in the relay's files: nowhere"),
        "{text}"
    );
    assert!(!text.contains("FOUND"), "{text}");
    assert!(!errors.contains("ERROR"), "{errors}");
}
