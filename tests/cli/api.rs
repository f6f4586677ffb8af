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
    // The daemon may answer and close before taking all of it.
    let _ = big.w.write_all(&line).and_then(|()| big.w.write_all(b"\n"));
    let a = big.read();
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

/// One HTTP/1.1 request; the status and the JSON body.
fn http(addr: &str, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> (u16, Value) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    // A server that refuses early may close before taking the body.
    let _ = s.write_all(body);
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// A WebSocket client's handshake; the stream after a 101.
fn websocket(addr: &str, path: &str) -> Result<BufReader<std::net::TcpStream>, String> {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        if l == "\r\n" || l.is_empty() {
            break;
        }
        head.push_str(&l);
    }
    if !head.starts_with("HTTP/1.1 101") {
        return Err(head);
    }
    // RFC 6455's example key and its answer.
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{head}"
    );
    Ok(r)
}

/// The next text frame from the server, as JSON.
fn ws_next(r: &mut BufReader<std::net::TcpStream>) -> Value {
    use std::io::Read;
    let mut h = [0u8; 2];
    r.read_exact(&mut h).unwrap();
    assert_eq!(h[0], 0x81, "a final text frame");
    assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).unwrap();
            usize::from(u16::from_be_bytes(b))
        }
        127 => panic!("a huge frame"),
        n => usize::from(n),
    };
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).unwrap();
    serde_json::from_slice(&payload).unwrap()
}

#[test]
fn http_and_websocket_need_the_token_and_carry_the_same_api() {
    let root = tempfile::tempdir().unwrap();
    let mut alice = Device::init(root.path(), "alice");
    let mut bob = Device::init(root.path(), "bob");
    let ready = alice.start_with(&["--http", "127.0.0.1:0"]);
    let addr = ready["http"].as_str().unwrap().to_owned();
    let token_file = std::path::PathBuf::from(ready["token_file"].as_str().unwrap());
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let token = std::fs::read_to_string(&token_file).unwrap();
    let token = token.trim();
    bob.start(&[]);

    // No token, a wrong one: 401, nothing answered.
    let (status, body) = http(&addr, "GET", "/v1/status", None, b"");
    assert_eq!(status, 401);
    assert_eq!(body["error"]["kind"], "unauthorized");
    let wrong = "0".repeat(token.len());
    assert_eq!(http(&addr, "GET", "/v1/status", Some(&wrong), b"").0, 401);
    assert_eq!(
        http(&addr, "POST", "/v1", None, br#"{"op":"status"}"#).0,
        401
    );
    assert!(
        websocket(&addr, "/v1/events")
            .unwrap_err()
            .starts_with("HTTP/1.1 401")
    );

    // Malformed JSON and unknown things: a clear 4xx.
    let t = Some(token);
    let (status, body) = http(&addr, "POST", "/v1", t, b"{\"op\":");
    assert_eq!(status, 400);
    assert_eq!(body["error"]["kind"], "bad_request");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("malformed request")
    );
    assert_eq!(http(&addr, "POST", "/v1", t, br#"{"op":"fly"}"#).0, 400);
    assert_eq!(http(&addr, "GET", "/v2/anything", t, b"").0, 404);
    assert_eq!(http(&addr, "DELETE", "/v1/status", t, b"").0, 405);
    let (status, body) = http(&addr, "GET", "/v1", t, b"");
    assert_eq!(status, 405);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("use POST"),
        "{body}"
    );
    let (status, body) = http(&addr, "GET", "/v1/history/bob", t, b"");
    assert_eq!(status, 404);
    assert_eq!(body["error"]["kind"], "unknown_contact");
    assert_eq!(http(&addr, "GET", "/v1/history/bob?limit=x", t, b"").0, 400);
    // A body past the bound is refused on its Content-Length alone.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "POST /v1 HTTP/1.1\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n",
        600 * 1024
    )
    .unwrap();
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // The same requests as the socket.
    let (status, body) = http(&addr, "GET", "/v1/status", t, b"");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ok"]["queued"], 0);
    let code = bob.invite();
    let add = serde_json::to_vec(&json!({"op":"add_contact","name":"bob","code":code})).unwrap();
    let (status, body) = http(&addr, "POST", "/v1", t, &add);
    assert_eq!(status, 200, "{body}");
    bob.json(&["contacts", "add", "alice", &alice.invite()]);

    // Live events over a WebSocket: alice hears bob's message.
    let mut ws = websocket(&addr, &format!("/v1/events?token={token}")).unwrap();
    bob.json(&["send", "alice", "over the socket", "--wait", "delivered"]);
    let message = loop {
        let e = ws_next(&mut ws);
        if e["event"]["type"] == "message" {
            break e;
        }
    };
    assert_eq!(message["event"]["contact"], "bob");
    assert_eq!(message["event"]["message"]["text"], "over the socket");
    let (status, body) = http(&addr, "GET", "/v1/chats", t, b"");
    assert_eq!(status, 200);
    assert_eq!(body["ok"][0]["unread"], 1);
    let (status, body) = http(&addr, "GET", "/v1/history/bob?limit=5", t, b"");
    assert_eq!(status, 200);
    assert_eq!(body["ok"]["messages"][0]["text"], "over the socket");

    alice.stop();
    bob.stop();
}
