//! The local API over HTTP and WebSocket, on a loopback address, for
//! clients that cannot use the Unix socket (programs in other languages,
//! tools like curl). It sends no CORS headers: a web page of another
//! origin cannot call it with the token.
//!
//! Every request carries `Authorization: Bearer <token>`, the token kept
//! in `<data dir>/api-token` (owner-only). Only the header: a token in a
//! URL ends up on command lines (which every local user can read) and in
//! logs, and no browser page may call the API anyway (see the `Origin`
//! check).
//!
//! - `POST /v1` with one request of the socket protocol as its JSON body
//!   ([`super::proto::Request`]) answers `{"ok": …}` with 200, or
//!   `{"error": …}` with a 4xx/5xx status;
//! - `GET /v1/status`, `/v1/contacts`, `/v1/chats` and
//!   `/v1/history/<contact>?before=<cursor>&limit=<n>` are the read-only
//!   requests as plain GETs;
//! - `GET /v1/events` upgrades to a WebSocket that carries one text frame
//!   per event (the same JSON as the socket's event lines).
//!
//! A request must name this server by a loopback name in its `Host`
//! header (`127.0.0.1:PORT`, `[::1]:PORT` or `localhost:PORT`, PORT the
//! bound port), or it is refused with 421; one with an `Origin` header
//! other than `http://` and one of those is refused with 403. A web page
//! reaching the port through DNS rebinding sends its own name in both,
//! so it is turned away before the token is even looked at.
//!
//! One request per connection. Request heads are bounded to 8 KiB and
//! must arrive within [`HEAD_TIMEOUT`] (1 s); bodies are bounded to the
//! socket's line bound and must arrive within [`BODY_TIMEOUT`] (5 s). How
//! many connections are served at once is bounded as [`Waiting`]
//! describes.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tracing::{debug, warn};

use super::proto::{Answer, ApiError, ErrorKind, MAX_LINE, Request, hex};
use super::server::{Api, MAX_CLIENTS, WRITE_TIMEOUT};

/// The token's file name in the data directory.
pub const TOKEN_FILE: &str = "api-token";
/// Largest request head.
const MAX_HEAD: usize = 8 * 1024;
/// Longest a client may take to send its request head. Local clients
/// send it at once; the bound is short because until then the
/// connection is anyone's (see [`Waiting`]).
const HEAD_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest an authenticated client may take to send its request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// Most connections at once that have not yet shown a valid token (see
/// [`Waiting`]).
const MAX_UNPROVEN: usize = 16;
/// After an answer, how long (and how much) of an unread request body is
/// taken and dropped, so that closing does not reset the connection and
/// lose the answer. A refusal (of a connection without a valid token,
/// say) is written and drained within this time in all.
const DRAIN_TIME: Duration = Duration::from_secs(1);
const DRAIN_BYTES: u64 = 1024 * 1024;
/// Largest frame taken from a WebSocket client (it has nothing to say but
/// pings and close).
const MAX_WS_FRAME: u64 = 4 * 1024;
/// RFC 6455's handshake constant.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The token in `dir`, made (32 random bytes, hex, owner-only) if absent.
///
/// A token file that the group or others have any access to is not used:
/// the token in it may have been read (or written) by someone else, so a
/// new one replaces it, owner-only, and a warning is logged. Clients then
/// read the new token from the file.
pub fn token(dir: &Path) -> std::io::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(TOKEN_FILE);
    let existing = std::fs::File::open(&path).and_then(|mut f| {
        let mode = f.metadata()?.permissions().mode();
        let mut t = String::new();
        std::io::Read::read_to_string(&mut f, &mut t)?;
        Ok((mode, t))
    });
    match existing {
        Ok((mode, _)) if mode & 0o077 != 0 => {
            warn!(
                file = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "the API token file was open to other users: it gets a new token, owner-only"
            );
        }
        Ok((_, t)) if t.trim().len() >= 32 => return Ok(t.trim().to_owned()),
        Ok(_) => {}
        // Missing, or not text (damaged): a new one.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidData
            ) => {}
        Err(e) => return Err(e),
    }
    let mut bytes = [0u8; 32];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut bytes);
    let t = hex(&bytes);
    crate::store::write_private(&path, |w| std::io::Write::write_all(w, t.as_bytes()))?;
    Ok(t)
}

/// What every connection of one server shares.
struct Shared {
    api: Api,
    token: String,
    /// The bound port, which the `Host` and `Origin` headers must name.
    port: u16,
    /// The [`MAX_CLIENTS`] slots of connections that showed the token.
    slots: Arc<Semaphore>,
    waiting: Waiting,
}

/// The connections that have not yet shown a valid token, oldest first.
///
/// Anyone on this machine can open connections to the port, so those are
/// kept apart from the owner's clients, in two ways:
///
/// - a new connection first takes one of [`MAX_UNPROVEN`] places here,
///   which it holds while it sends its head (at most [`HEAD_TIMEOUT`])
///   and, if it is refused, while the refusal is written and drained (at
///   most [`DRAIN_TIME`]). When all places are taken, the newcomer takes
///   the oldest one's place and that connection is closed without an
///   answer. Idle connections thus cannot keep a client out: a client
///   that sends its head at once, as local clients do, is read before
///   [`MAX_UNPROVEN`] newer connections could push it out;
/// - only a connection whose head passed every check (its `Host`,
///   `Origin` and token) takes one of the [`MAX_CLIENTS`] slots, and
///   gives up its place here for it; it keeps the slot until it ends (a
///   WebSocket for as long as it is open). With every slot taken, it is
///   answered 503.
///
/// So at most [`MAX_UNPROVEN`] + [`MAX_CLIENTS`] connections are open at
/// once, and connections without the token never take a slot.
struct Waiting {
    queue: Mutex<Queue>,
}

/// The places of [`Waiting`]: each connection's number and the sender
/// whose drop tells it to close.
#[derive(Default)]
struct Queue {
    next: u64,
    places: VecDeque<(u64, oneshot::Sender<()>)>,
}

/// A connection's place in [`Waiting`]; given up when dropped.
struct Place<'a> {
    id: u64,
    waiting: &'a Waiting,
}

impl Waiting {
    fn new() -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
        }
    }

    /// A place for a new connection, pushing out the oldest if all are
    /// taken, and the receiver that ends when this one is pushed out.
    fn enter(&self) -> (u64, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        q.next += 1;
        let id = q.next;
        if q.places.len() >= MAX_UNPROVEN {
            // Dropping its sender closes the oldest connection.
            q.places.pop_front();
        }
        q.places.push_back((id, tx));
        (id, rx)
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut q = self
            .waiting
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        q.places.retain(|(id, _)| *id != self.id);
    }
}

/// Binds `addr` (a loopback address) and serves until the task is
/// dropped. Returns the bound address and the task.
pub async fn serve(
    addr: SocketAddr,
    api: Api,
    token: String,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the HTTP API listens on a loopback address only",
        ));
    }
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let shared = Arc::new(Shared {
        api,
        token,
        port: bound.port(),
        slots: Arc::new(Semaphore::new(MAX_CLIENTS)),
        waiting: Waiting::new(),
    });
    let task = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    debug!(error = %e, "HTTP API accept");
                    tokio::time::sleep(super::server::ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            // The place is taken here, in the order of arrival, not in
            // the spawned task.
            let (id, pushed_out) = shared.waiting.enter();
            let shared = shared.clone();
            tokio::spawn(async move {
                if let Err(e) = connection(stream, &shared, id, pushed_out).await {
                    debug!(error = %e, "HTTP API request");
                }
            });
        }
    });
    Ok((bound, task))
}

/// A parsed request head.
struct Head {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of the header `name`, in order.
    fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then(|| percent_decode(v))
        })
    }
}

fn percent_decode(s: &str) -> String {
    decode(s, true)
}

/// `%XX` escapes decoded; `+` is a space in a query, itself in a path.
fn decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = &b[i + 1..i + 3];
                match std::str::from_utf8(hex)
                    .ok()
                    .filter(|_| hex.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads the head (and whatever of the body came with it).
async fn read_head(stream: &mut (impl AsyncRead + Unpin)) -> Result<(Head, Vec<u8>), u16> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(431);
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(400),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    // The whole head may have come in one read past the bound.
    if end > MAX_HEAD {
        return Err(431);
    }
    let rest = buf.split_off(end + 4);
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| 400u16)?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version)) = (first.next(), first.next(), first.next())
    else {
        return Err(400);
    };
    if !version.starts_with("HTTP/1.") {
        return Err(505);
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    for l in lines {
        let (k, v) = l.split_once(':').ok_or(400u16)?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    Ok((
        Head {
            method: method.to_owned(),
            path: path.to_owned(),
            query: query.to_owned(),
            headers,
        },
        rest,
    ))
}

/// Whether `authority` (a `Host` header, an origin without its scheme)
/// names this server by a loopback name and its port.
fn is_loopback_authority(authority: &str, port: u16) -> bool {
    let Some((host, p)) = authority.rsplit_once(':') else {
        return false;
    };
    p == port.to_string()
        && ["127.0.0.1", "[::1]", "localhost"]
            .iter()
            .any(|h| host.eq_ignore_ascii_case(h))
}

/// Why a head is refused before its request is looked at, if it is: the
/// `Host`, the `Origin` and the token, in that order.
fn check(head: &Head, shared: &Shared) -> Result<(), (u16, ApiError)> {
    let mut hosts = head.headers_named("host");
    let host_ok = hosts
        .next()
        .is_some_and(|h| is_loopback_authority(h, shared.port))
        && hosts.next().is_none();
    if !host_ok {
        return Err((
            421,
            ApiError::new(
                ErrorKind::BadRequest,
                format!(
                    "the Host header must be 127.0.0.1:{p}, [::1]:{p} or localhost:{p}",
                    p = shared.port
                ),
            ),
        ));
    }
    // Browsers send an Origin; other clients do not. Only a page of this
    // very server's origin may call it.
    if head.headers_named("origin").any(|o| {
        !o.strip_prefix("http://")
            .is_some_and(|a| is_loopback_authority(a, shared.port))
    }) {
        return Err((
            403,
            ApiError::new(
                ErrorKind::Unauthorized,
                "requests from web pages of other origins are refused",
            ),
        ));
    }
    // The token, from the header only.
    let offered = head
        .header("authorization")
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_owned());
    let authorised =
        offered.is_some_and(|t| bool::from(t.as_bytes().ct_eq(shared.token.as_bytes())));
    if !authorised {
        return Err((
            401,
            ApiError::new(
                ErrorKind::Unauthorized,
                "a bearer token is required (it is in the data directory's api-token file)",
            ),
        ));
    }
    Ok(())
}

/// Reads a connection's head and checks it: the head, what of the body
/// came with it and the slot taken for it; or `None` once the connection
/// has been refused (and answered).
async fn admit(
    stream: &mut TcpStream,
    shared: &Shared,
) -> std::io::Result<Option<(Head, Vec<u8>, OwnedSemaphorePermit)>> {
    let (status, e) = match tokio::time::timeout(HEAD_TIMEOUT, read_head(stream)).await {
        Err(_) => (
            408,
            ApiError::new(ErrorKind::BadRequest, "the request head took too long"),
        ),
        Ok(Err(status)) => (
            status,
            ApiError::new(ErrorKind::BadRequest, "a malformed HTTP request"),
        ),
        Ok(Ok((head, early))) => match check(&head, shared) {
            Err(refusal) => refusal,
            Ok(()) => match shared.slots.clone().try_acquire_owned() {
                Ok(slot) => return Ok(Some((head, early, slot))),
                Err(_) => (
                    503,
                    ApiError::new(
                        ErrorKind::Failed,
                        format!("too many clients (at most {MAX_CLIENTS})"),
                    ),
                ),
            },
        },
    };
    // The answer and the drain after it, together within DRAIN_TIME.
    match tokio::time::timeout(DRAIN_TIME, respond(stream, status, &Answer::Error(e))).await {
        Ok(r) => r.map(|()| None),
        Err(_) => Ok(None),
    }
}

/// One connection: admitted (or refused) while it holds place `id` in
/// [`Waiting`], closed at once if pushed out of it; then its request.
async fn connection(
    mut stream: TcpStream,
    shared: &Shared,
    id: u64,
    pushed_out: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let place = Place {
        id,
        waiting: &shared.waiting,
    };
    let admitted = tokio::select! {
        a = admit(&mut stream, shared) => a?,
        // A newer connection took the place.
        _ = pushed_out => return Ok(()),
    };
    drop(place);
    let Some((head, early, _slot)) = admitted else {
        return Ok(());
    };
    let api = &shared.api;
    let request = match (head.method.as_str(), head.path.as_str()) {
        ("GET", "/v1/events") => return websocket(stream, &head, api).await,
        ("POST", "/v1") => match body(&mut stream, &head, early).await {
            Ok(b) => serde_json::from_slice::<Request>(&b).map_err(|e| {
                (
                    400,
                    ApiError::new(ErrorKind::BadRequest, format!("malformed request: {e}")),
                )
            }),
            Err(status) => Err((
                status,
                ApiError::new(ErrorKind::BadRequest, reason(status).to_owned()),
            )),
        },
        ("GET", "/v1/status") => Ok(Request::Status {}),
        ("GET", "/v1/contacts") => Ok(Request::Contacts {}),
        ("GET", "/v1/chats") => Ok(Request::Chats {}),
        ("GET", p) if p.starts_with("/v1/history/") => {
            let with = decode(p.get("/v1/history/".len()..).unwrap_or(""), false);
            match head.param("limit").map(|l| l.parse::<usize>()) {
                Some(Err(_)) => Err((
                    400,
                    ApiError::new(ErrorKind::BadRequest, "limit is a number"),
                )),
                limit => Ok(Request::History {
                    with,
                    before: head.param("before"),
                    limit: limit.and_then(Result::ok),
                }),
            }
        }
        (m, "/v1") => Err((
            405,
            ApiError::new(ErrorKind::BadRequest, format!("{m} /v1: use POST")),
        )),
        (m, p)
            if matches!(
                p,
                "/v1/status" | "/v1/contacts" | "/v1/chats" | "/v1/events"
            ) || p.starts_with("/v1/history/") =>
        {
            Err((
                405,
                ApiError::new(ErrorKind::BadRequest, format!("{m} {p}: use GET")),
            ))
        }
        _ => Err((
            404,
            ApiError::new(
                ErrorKind::BadRequest,
                "no such endpoint (POST /v1, GET /v1/status, /v1/contacts, /v1/chats, /v1/history/<contact>, /v1/events)",
            ),
        )),
    };
    let (status, answer) = match request {
        Err((status, e)) => (status, Answer::Error(e)),
        Ok(Request::Events {}) => (
            400,
            Answer::Error(ApiError::new(
                ErrorKind::BadRequest,
                "events come over a WebSocket at GET /v1/events",
            )),
        ),
        Ok(req) => match api.answer(req).await {
            Ok(v) => (200, Answer::Ok(v)),
            Err(e) => (status_of(e.kind), Answer::Error(e)),
        },
    };
    bounded(ANSWER_TIME, respond(&mut stream, status, &answer)).await
}

/// A write to a client, cut after `limit`: a client that stops reading
/// does not hold its slot for good.
async fn bounded(
    limit: Duration,
    write: impl std::future::Future<Output = std::io::Result<()>>,
) -> std::io::Result<()> {
    tokio::time::timeout(limit, write)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// An answer's write, then the drain that follows it.
const ANSWER_TIME: Duration = WRITE_TIMEOUT.saturating_add(DRAIN_TIME);

fn status_of(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::BadRequest | ErrorKind::BadInvite => 400,
        ErrorKind::Unauthorized => 401,
        ErrorKind::UnknownContact | ErrorKind::UnknownGroup => 404,
        ErrorKind::KeyChanged => 409,
        ErrorKind::Stopped => 503,
        ErrorKind::Failed => 500,
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        421 => "Misdirected Request",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Internal Server Error",
    }
}

/// The body: exactly Content-Length bytes, at most [`MAX_LINE`], within
/// [`BODY_TIMEOUT`] (else 408).
async fn body(
    stream: &mut (impl AsyncRead + Unpin),
    head: &Head,
    mut early: Vec<u8>,
) -> Result<Vec<u8>, u16> {
    let len: usize = head
        .header("content-length")
        .ok_or(411u16)?
        .parse()
        .map_err(|_| 400u16)?;
    if len > MAX_LINE {
        return Err(413);
    }
    if early.len() > len {
        return Err(400);
    }
    let mut rest = vec![0u8; len - early.len()];
    tokio::time::timeout(BODY_TIMEOUT, stream.read_exact(&mut rest))
        .await
        .map_err(|_| 408u16)?
        .map_err(|_| 400u16)?;
    early.extend_from_slice(&rest);
    Ok(early)
}

async fn respond(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    status: u16,
    answer: &Answer,
) -> std::io::Result<()> {
    let body = serde_json::to_vec(answer).map_err(std::io::Error::other)?;
    // A 405 names the method that works (every path takes one).
    let allow = match (status, answer) {
        (405, Answer::Error(e)) if e.message.ends_with("use POST") => "Allow: POST\r\n",
        (405, _) => "Allow: GET\r\n",
        _ => "",
    };
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        reason(status),
        body.len() + 1
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&body).await?;
    stream.write_all(b"\n").await?;
    stream.shutdown().await?;
    // Take what is left of the request (bounded), so that closing with
    // unread bytes does not reset the connection before the client has
    // read the answer.
    let mut sink = tokio::io::sink();
    let _ = tokio::time::timeout(
        DRAIN_TIME,
        tokio::io::copy(&mut (&mut *stream).take(DRAIN_BYTES), &mut sink),
    )
    .await;
    Ok(())
}

/// The WebSocket handshake, then one text frame per event until the client
/// closes or falls away.
async fn websocket(mut stream: TcpStream, head: &Head, api: &Api) -> std::io::Result<()> {
    let upgrade = head
        .header("upgrade")
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    let key = head.header("sec-websocket-key");
    let (true, Some(key), Some("13")) = (upgrade, key, head.header("sec-websocket-version")) else {
        let e = ApiError::new(
            ErrorKind::BadRequest,
            "GET /v1/events is a WebSocket (version 13)",
        );
        return bounded(ANSWER_TIME, respond(&mut stream, 426, &Answer::Error(e))).await;
    };
    let accept = base64(&Sha1::digest(format!("{key}{WS_GUID}").as_bytes()));
    let reply = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    bounded(WRITE_TIMEOUT, stream.write_all(reply.as_bytes())).await?;
    let mut feed = api.feed();
    let (mut r, mut w) = stream.into_split();
    let (pong_tx, mut pong_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    // The reader: answers pings, ends on close or anything unexpected.
    let reader = tokio::spawn(async move {
        loop {
            match read_frame(&mut r).await {
                Ok((0x9, payload)) => {
                    if pong_tx.send(payload).await.is_err() {
                        return;
                    }
                }
                Ok((0x8, _)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    let result = async {
        loop {
            tokio::select! {
                v = feed.next() => {
                    let Some(view) = v else {
                        return Ok(());
                    };
                    let text = serde_json::to_vec(&Answer::Event(
                        serde_json::to_value(&view).unwrap_or_default(),
                    ))
                    .map_err(std::io::Error::other)?;
                    bounded(WRITE_TIMEOUT, write_frame(&mut w, 0x1, &text)).await?;
                }
                p = pong_rx.recv() => match p {
                    Some(p) => bounded(WRITE_TIMEOUT, write_frame(&mut w, 0xA, &p)).await?,
                    // The reader ended: the client closed or misbehaved.
                    None => {
                        let _ = bounded(WRITE_TIMEOUT, write_frame(&mut w, 0x8, &1000u16.to_be_bytes())).await;
                        return Ok(());
                    }
                },
            }
        }
    }
    .await;
    reader.abort();
    result
}

/// One client frame: (opcode, unmasked payload). Client frames must be
/// masked and at most [`MAX_WS_FRAME`] long.
async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> std::io::Result<(u8, Vec<u8>)> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let mut h = [0u8; 2];
    r.read_exact(&mut h).await?;
    let opcode = h[0] & 0x0f;
    if h[1] & 0x80 == 0 {
        return Err(bad("an unmasked client frame"));
    }
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).await?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            r.read_exact(&mut b).await?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    if len > MAX_WS_FRAME || (opcode >= 0x8 && len > 125) {
        return Err(bad("a client frame too large"));
    }
    let mut mask = [0u8; 4];
    r.read_exact(&mut mask).await?;
    let mut payload = vec![0u8; usize::try_from(len).map_err(|_| bad("length"))?];
    r.read_exact(&mut payload).await?;
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    Ok((opcode, payload))
}

/// One unmasked, final server frame.
async fn write_frame(
    w: &mut (impl AsyncWrite + Unpin),
    opcode: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => frame.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    w.write_all(&frame).await?;
    w.flush().await
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(char::from(A[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_websocket_accept_key_matches_rfc_6455() {
        // The example handshake of RFC 6455, section 1.3.
        let accept = base64(&Sha1::digest(
            format!("dGhlIHNhbXBsZSBub25jZQ=={WS_GUID}").as_bytes(),
        ));
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(percent_decode("a%20b+c%2"), "a b c%2");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%+f"), "% f");
        assert_eq!(decode("a+b%2Bc", false), "a+b+c");
        assert_eq!(percent_decode("%e2%9c%93"), "✓");
    }

    #[test]
    fn a_damaged_token_file_gets_a_new_token() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKEN_FILE);
        std::fs::write(&path, [0xff, 0xfe, 0x00, 0x80]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let t = token(dir.path()).unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), t);
        // And it is kept from then on.
        assert_eq!(token(dir.path()).unwrap(), t);
    }
}
