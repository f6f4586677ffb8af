//! The local API over its real Unix socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;

use serde_json::{Value, json};

use crate::{Device, WAIT};

struct Conn {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Conn {
    fn open(dev: &Device) -> Self {
        let w = UnixStream::connect(dev.dir.join("api.sock")).unwrap();
        w.set_read_timeout(Some(WAIT)).unwrap();
        Self {
            r: BufReader::new(w.try_clone().unwrap()),
            w,
        }
    }

    fn line(&mut self, bytes: &[u8]) -> Value {
        self.w.write_all(bytes).unwrap();
        self.w.write_all(b"\n").unwrap();
        self.read()
    }

    fn read(&mut self) -> Value {
        let mut s = String::new();
        self.r.read_line(&mut s).unwrap();
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("not JSON ({e}): {s:?}"))
    }
}

#[test]
fn the_socket_is_owner_only_and_bad_requests_get_clear_errors() {
    let root = tempfile::tempdir().unwrap();
    let mut alice = Device::init(root.path(), "alice");
    alice.start(&[]);
    let mode = std::fs::metadata(alice.dir.join("api.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let dir_mode = std::fs::metadata(&alice.dir).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o777, 0o700, "{dir_mode:o}");

    let mut c = Conn::open(&alice);
    // Each mistake is answered and the connection goes on.
    for (bad, says) in [
        (&b"{\"op\":\"send\",\"to\":"[..], "malformed request"),
        (b"[1,2,3]", "malformed request"),
        (b"{\"op\":\"launch\"}", "unknown variant"),
        (b"{\"op\":\"send\",\"to\":\"bob\"}", "missing field `text`"),
        (b"{\"op\":\"status\",\"extra\":1}", "unknown field"),
        (b"\xff\xfe", "malformed request"),
    ] {
        let a = c.line(bad);
        assert_eq!(a["error"]["kind"], "bad_request", "{a}");
        let msg = a["error"]["message"].as_str().unwrap();
        assert!(msg.contains(says), "{msg:?} does not say {says:?}");
    }
    let a = c.line(br#"{"op":"send","to":"bob","text":"hi"}"#);
    assert_eq!(a["error"]["kind"], "unknown_contact", "{a}");
    let a = c.line(br#"{"op":"history","with":"bob","limit":0}"#);
    assert_eq!(a["error"]["kind"], "unknown_contact", "{a}");
    let own = c.line(br#"{"op":"id"}"#)["ok"]["invite"].clone();
    let a = c.line(
        serde_json::to_string(&json!({"op":"add_contact","name":"me","code":own}))
            .unwrap()
            .as_bytes(),
    );
    assert_eq!(a["error"]["kind"], "bad_request", "{a}");
    let a = c.line(br#"{"op":"set_presence","state":"asleep"}"#);
    assert_eq!(a["error"]["kind"], "bad_request", "{a}");
    let a = c.line(br#"{"op":"status"}"#);
    assert_eq!(a["ok"]["queued"], 0, "{a}");

    // A line past the bound: refused, and the connection closed.
    let mut big = Conn::open(&alice);
    let line = vec![b'x'; 600 * 1024];
    let a = big.line(&line);
    assert_eq!(a["error"]["kind"], "bad_request", "{a}");
    let mut rest = String::new();
    match big.r.read_line(&mut rest) {
        // Closed, or reset because the rest of the line was never read.
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("still open: {other:?} {rest:?}"),
    }

    // An event stream says so; the other connection still answers.
    let mut ev = Conn::open(&alice);
    assert_eq!(ev.line(br#"{"op":"events"}"#)["ok"], "subscribed");
    c.line(br#"{"op":"set_presence","state":"away"}"#);
    assert_eq!(c.line(br#"{"op":"status"}"#)["ok"]["presence"], "away");
    alice.stop();
}
