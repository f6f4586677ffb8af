//! The local API over its real Unix socket, and over HTTP and WebSocket.

use std::io::{BufRead, BufReader, Read, Write};
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
    // Group names members could not take are refused up front.
    let long = "x".repeat(65);
    for req in [
        json!({"op":"create_group","name":long,"members":[]}),
        json!({"op":"create_group","name":"a\u{1b}[2J","members":[]}),
        json!({"op":"create_group","name":"ok","members":[],"as":long}),
    ] {
        let a = c.line(serde_json::to_string(&req).unwrap().as_bytes());
        assert_eq!(a["error"]["kind"], "bad_request", "{req}: {a}");
    }
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
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: {}\r\n\r\n",
        body.len()
    );
    raw(addr, &[head.as_bytes(), body].concat())
}

/// Sends `request` as it is; the status and the JSON body of the answer.
fn raw(addr: &str, request: &[u8]) -> (u16, Value) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    // A server that refuses early may close before taking all of it.
    let _ = s.write_all(request);
    answer(s)
}

/// The status and the JSON body of the answer on `s`, read to its end.
fn answer(mut s: std::net::TcpStream) -> (u16, Value) {
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer: {text:?}"));
    let status = head[9..12].parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// A WebSocket client's handshake with the token in its header; the
/// stream after a 101.
fn websocket(
    addr: &str,
    path: &str,
    token: &str,
) -> Result<BufReader<std::net::TcpStream>, String> {
    websocket_with(addr, path, &format!("Authorization: Bearer {token}\r\n"))
}

/// [`websocket`] with more header lines (each ending in CRLF).
fn websocket_with(
    addr: &str,
    path: &str,
    more: &str,
) -> Result<BufReader<std::net::TcpStream>, String> {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{more}Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
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
        websocket_with(&addr, "/v1/events", "")
            .unwrap_err()
            .starts_with("HTTP/1.1 401")
    );
    // Nor in the URL, where command lines and logs would show it.
    assert!(
        websocket_with(&addr, &format!("/v1/events?token={token}"), "")
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
    // A known path with the wrong method: 405, not 404.
    let (status, body) = http(&addr, "POST", "/v1/history/bob", t, b"");
    assert_eq!(status, 405, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("use GET"),
        "{body}"
    );
    // Events only over a WebSocket.
    assert_eq!(http(&addr, "GET", "/v1/events", t, b"").0, 426);
    // Malformed heads, no Content-Length, a head too large, HTTP/2.
    let auth = format!("Host: {addr}\r\nAuthorization: Bearer {token}\r\n");
    assert_eq!(raw(&addr, b"nonsense\r\n\r\n").0, 400);
    assert_eq!(
        raw(&addr, format!("POST /v1 HTTP/1.1\r\n{auth}\r\n").as_bytes()).0,
        411
    );
    let huge = format!(
        "GET /v1/status HTTP/1.1\r\n{auth}X-Filler: {}\r\n\r\n",
        "a".repeat(9 * 1024)
    );
    assert_eq!(raw(&addr, huge.as_bytes()).0, 431);
    assert_eq!(
        raw(
            &addr,
            format!("GET /v1/status HTTP/2.0\r\n{auth}\r\n").as_bytes()
        )
        .0,
        505
    );
    // A body that stops short: 408 once the body's time is up.
    let (status, body) = raw(
        &addr,
        format!("POST /v1 HTTP/1.1\r\n{auth}Content-Length: 100\r\n\r\n{{\"op\"").as_bytes(),
    );
    assert_eq!(status, 408, "{body}");
    // A body past the bound is refused on its Content-Length alone.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "POST /v1 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n",
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
    let mut ws = websocket(&addr, "/v1/events", token).unwrap();
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

/// `meshchat run --http 127.0.0.1:0` for `dev`: the address and the token.
fn start_http(dev: &mut Device) -> (String, String) {
    let ready = dev.start_with(&["--http", "127.0.0.1:0"]);
    let addr = ready["http"].as_str().unwrap().to_owned();
    let file = std::path::PathBuf::from(ready["token_file"].as_str().unwrap());
    let token = std::fs::read_to_string(file).unwrap().trim().to_owned();
    (addr, token)
}

#[test]
fn http_answers_only_to_its_loopback_names_and_origins() {
    let root = tempfile::tempdir().unwrap();
    let mut alice = Device::init(root.path(), "alice");
    let (addr, token) = start_http(&mut alice);
    let port = addr.rsplit_once(':').unwrap().1;
    let get = |more: &str| {
        raw(
            &addr,
            format!("GET /v1/status HTTP/1.1\r\n{more}Authorization: Bearer {token}\r\n\r\n")
                .as_bytes(),
        )
    };

    for host in [
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        format!("localhost:{port}"),
        format!("LocalHost:{port}"),
    ] {
        let (status, body) = get(&format!("Host: {host}\r\n"));
        assert_eq!(status, 200, "{host}: {body}");
    }
    // Another name (DNS rebinding), another port, no port, no Host, two.
    for hosts in [
        format!("Host: attacker.example:{port}\r\n"),
        format!("Host: 127.0.0.1:{}\r\n", port.parse::<u16>().unwrap() ^ 1),
        "Host: 127.0.0.1\r\n".to_owned(),
        "Host: localhost\r\n".to_owned(),
        String::new(),
        format!("Host: 127.0.0.1:{port}\r\nHost: attacker.example:{port}\r\n"),
    ] {
        let (status, body) = get(&hosts);
        assert_eq!(status, 421, "{hosts:?}: {body}");
        assert_eq!(body["error"]["kind"], "bad_request", "{body}");
    }

    // A web page of another origin: refused, with the token or without,
    // over plain HTTP and for a WebSocket.
    let host = format!("Host: {addr}\r\n");
    for origin in [
        "http://attacker.example",
        &format!("http://attacker.example:{port}"),
        &format!("https://127.0.0.1:{port}"),
        &format!("http://127.0.0.1:{port}.attacker.example"),
        "null",
    ] {
        let (status, body) = get(&format!("{host}Origin: {origin}\r\n"));
        assert_eq!(status, 403, "{origin}: {body}");
        assert_eq!(body["error"]["kind"], "unauthorized", "{body}");
        let head = websocket_with(
            &addr,
            "/v1/events",
            &format!("Authorization: Bearer {token}\r\nOrigin: {origin}\r\n"),
        )
        .unwrap_err();
        assert!(head.starts_with("HTTP/1.1 403"), "{origin}: {head}");
    }
    let (status, _) = raw(
        &addr,
        format!(
            "POST /v1 HTTP/1.1\r\n{host}Origin: http://attacker.example\r\nAuthorization: Bearer {token}\r\nContent-Length: 15\r\n\r\n{{\"op\":\"status\"}}"
        )
        .as_bytes(),
    );
    assert_eq!(status, 403);
    // This server's own origins are let through.
    let (status, body) = get(&format!("{host}Origin: http://localhost:{port}\r\n"));
    assert_eq!(status, 200, "{body}");
    websocket_with(
        &addr,
        "/v1/events",
        &format!("Authorization: Bearer {token}\r\nOrigin: http://127.0.0.1:{port}\r\n"),
    )
    .unwrap();
    alice.stop();
}

#[test]
fn idle_connections_do_not_keep_the_owner_out() {
    let root = tempfile::tempdir().unwrap();
    let mut alice = Device::init(root.path(), "alice");
    let (addr, token) = start_http(&mut alice);
    let t = Some(token.as_str());
    let mut ws = websocket(&addr, "/v1/events", &token).unwrap();

    // More connections than the server has room for in all (64 slots and
    // 16 places for those that have not shown the token), none of which
    // says anything; each is accepted before the next connects.
    let idle: Vec<std::net::TcpStream> = (0..100)
        .map(|_| {
            let s = std::net::TcpStream::connect(&addr).unwrap();
            s.set_read_timeout(Some(WAIT)).unwrap();
            s
        })
        .collect();
    // The owner's requests are still answered at once.
    for _ in 0..3 {
        let (status, body) = http(&addr, "GET", "/v1/status", t, b"");
        assert_eq!(status, 200, "{body}");
    }
    // The WebSocket kept its slot: a ping is answered.
    let ws_w = ws.get_mut();
    ws_w.write_all(&[0x89, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2])
        .unwrap();
    let mut pong = [0u8; 4];
    ws.read_exact(&mut pong).unwrap();
    assert_eq!(pong, [0x8a, 2, b'h', b'i']);

    // The oldest idle connections were closed for newer ones, unanswered;
    // the newest is told its head took too long.
    let mut idle = idle.into_iter();
    let mut first = idle.next().unwrap();
    let mut rest = Vec::new();
    match first.read_to_end(&mut rest) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("answered: {other:?} {:?}", String::from_utf8_lossy(&rest)),
    }
    let (status, body) = answer(idle.next_back().unwrap());
    assert_eq!(status, 408, "{body}");
    alice.stop();
}

#[test]
fn a_token_file_others_can_read_gets_a_new_token() {
    let root = tempfile::tempdir().unwrap();
    let mut alice = Device::init(root.path(), "alice");
    let (_, first) = start_http(&mut alice);
    alice.stop();
    // Owner-only: kept from one run to the next.
    let (addr, kept) = start_http(&mut alice);
    assert_eq!(kept, first);
    assert_eq!(http(&addr, "GET", "/v1/status", Some(&first), b"").0, 200);
    alice.stop();

    let file = alice.dir.join("api-token");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (addr, new) = start_http(&mut alice);
    assert_ne!(new, first);
    assert_eq!(new.len(), 64);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    assert_eq!(http(&addr, "GET", "/v1/status", Some(&first), b"").0, 401);
    assert_eq!(http(&addr, "GET", "/v1/status", Some(&new), b"").0, 200);
    alice.stop();
}

#[test]
fn a_daemon_that_cannot_serve_its_http_api_stops_cleanly_and_leaves_no_socket() {
    let root = tempfile::tempdir().unwrap();
    let alice = Device::init(root.path(), "alice");
    // The port is taken by someone else.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = alice
        .cmd()
        .args(["run", "--json", "--no-mdns"])
        .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
        .args(["--http", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    let err = crate::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("serving the HTTP API"), "{err}");
    assert!(!alice.dir.join("api.sock").exists(), "{err}");
    // Stopped as on a signal: the store was flushed and closed, so the
    // same device starts again at once.
    let mut again = alice;
    again.start_with(&[]);
    again.stop();
}
