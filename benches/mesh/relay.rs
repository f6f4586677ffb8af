//! The relay, as operators run it (`meshchat relay`, the release binary, in
//! its own process), beside Redis doing a chat history cache's list pattern
//! in the same run:
//!
//! - deposit: `concurrency` envelopes without a custody receipt at any
//!   time, one per request and then up to 16 per request (a client sends
//!   the envelopes it has waiting together), by request-response and
//!   then on one mailbox stream (the node's path, and the figure held
//!   against Redis); each answer is a custody
//!   receipt after the relay's fsync; Redis:
//!   `RPUSH` + `EXPIRE` per envelope, pipelined with the same number in
//!   flight, `appendonly yes`, `appendfsync everysec` (it answers before its
//!   fsync);
//! - drain: a reconnecting owner fetches and acks a mailbox of `drain`
//!   envelopes (pages of up to 1,024 envelopes or 1 MiB, as the node asks
//!   for them; the next fetch sent as each page arrives);
//!   Redis: `LRANGE` pages of 256 over a list of the same size, pipelined;
//! - memory: the relay's resident set with `million` envelopes queued,
//!   and Redis's with the same lists.
//!
//! The deposit, the figure held against Redis, is measured in
//! [`DEPOSIT_ROUNDS`] alternations of ours and Redis's, one right after the
//! other, and each side's median reported with every round's ratio: the
//! machine's speed drifts within minutes, and a comparison of two figures
//! taken minutes apart would measure the drift.
//!
//! Redis comes from the system packages (`scripts/bench-mesh.sh` installs
//! it); without `redis-server` on the PATH its half of the report is null.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libp2p::multiaddr::Protocol;
use libp2p::request_response::OutboundRequestId;
use libp2p::{Multiaddr, PeerId};
use meshchat::crypto::{Envelope, MailboxKey};
use meshchat::node::net::{Net, NetConfig, NetEvent};
use meshchat::relay::proto::{Ack, Fetch, Owner, Request, Response, Signed};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::{Value, json};

use crate::stats::{cpu_of, rate};

/// Sealed body size of a 200-byte message (its padding bucket).
const SEALED: usize = 512;
/// Mailboxes the deposits are spread over.
const MAILBOXES: usize = 1_000;
/// Envelopes per deposit request when filling.
const FILL_BATCH: usize = 64;
/// Most envelopes per deposit request in the timed deposit (the window
/// still bounds how many are without a custody receipt).
const DEPOSIT_BATCH: usize = 16;
/// Alternations of our deposit and Redis's.
const DEPOSIT_ROUNDS: usize = 3;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn envelope(mailbox: &[u8; 32], n: u64) -> Vec<u8> {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.to_be_bytes());
    Envelope::new(*mailbox, id, now() + 3_600, vec![0x5a; SEALED]).to_bytes()
}

/// The relay binary running in its own process.
struct RelayProcess {
    child: Child,
    addr: Multiaddr,
    peer: PeerId,
    key: [u8; 32],
    _dir: tempfile::TempDir,
}

impl RelayProcess {
    fn start(bench_dir: Option<&Path>) -> Self {
        let dir = match bench_dir {
            Some(d) => tempfile::tempdir_in(d).unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        let data = dir.path().join("relay");
        let pass = dir.path().join("passphrase");
        std::fs::write(&pass, "bench").unwrap();
        let config = dir.path().join("relay.toml");
        std::fs::write(
            &config,
            format!(
                r#"data_dir = "{}"
listen = ["/ip4/127.0.0.1/tcp/0"]
log_format = "json"
advertise = false
[limits]
max_mailbox_envelopes = 1000000
max_mailbox_bytes = 4000000000
disk_budget_bytes = 100000000000
deposits_per_second = 1000000
deposit_kib_per_second = 10000000
"#,
                data.display()
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_meshchat"))
            .args(["relay", "--config"])
            .arg(&config)
            .arg("--passphrase-file")
            .arg(&pass)
            .env(
                "MESHCHAT_LOG",
                std::env::var("MESH_BENCH_RELAY_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let (mut addr, mut peer) = (None, None);
        while addr.is_none() || peer.is_none() {
            let line = lines.next().expect("relay exited").unwrap();
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            match v["fields"]["message"].as_str() {
                Some("listening") => {
                    addr = v["fields"]["addr"].as_str().map(|a| a.parse().unwrap())
                }
                Some("relay running") => {
                    peer = v["fields"]["peer_id"].as_str().map(|p| p.parse().unwrap())
                }
                _ => {}
            }
        }
        // Keep draining its log so it never blocks on a full pipe
        // (MESH_BENCH_RELAY_LOG=<filter>: and print it).
        let echo = std::env::var_os("MESH_BENCH_RELAY_LOG").is_some();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                if echo {
                    eprintln!("{l}");
                }
            }
        });
        let peer: PeerId = peer.unwrap();
        let key = libp2p::identity::PublicKey::try_decode_protobuf(peer.as_ref().digest())
            .unwrap()
            .try_into_ed25519()
            .unwrap()
            .to_bytes();
        Self {
            child,
            addr: addr.unwrap(),
            peer,
            key,
            _dir: dir,
        }
    }

    fn rss_bytes(&self) -> u64 {
        rss_of(self.child.id())
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// A client: the network layer alone.
struct Client {
    net: Net,
    relay: PeerId,
}

impl Client {
    async fn connect(relay: &RelayProcess) -> Self {
        let mut cfg = NetConfig::loopback();
        cfg.listen.clear();
        let mut net = Net::start(libp2p::identity::Keypair::generate_ed25519(), &cfg).unwrap();
        net.dial(relay.addr.clone().with(Protocol::P2p(relay.peer)))
            .unwrap();
        loop {
            if let NetEvent::Connected { peer, .. } = net.next_event().await
                && peer == relay.peer
            {
                break;
            }
        }
        Self {
            net,
            relay: relay.peer,
        }
    }

    /// Sends every request, `window` in flight; returns the answers in
    /// request order.
    async fn pipeline(&mut self, requests: Vec<Request>, window: usize) -> Vec<Response> {
        let n = requests.len();
        let mut todo: VecDeque<(usize, Request)> = requests.into_iter().enumerate().collect();
        let mut flying: std::collections::HashMap<OutboundRequestId, usize> = Default::default();
        let mut out: Vec<Option<Response>> = vec![None; n];
        let mut done = 0;
        while done < n {
            while flying.len() < window
                && let Some((i, r)) = todo.pop_front()
            {
                flying.insert(self.net.send_mailbox(&self.relay, r), i);
            }
            match self.net.next_event().await {
                NetEvent::MailboxResponse {
                    request, response, ..
                } => {
                    if let Some(i) = flying.remove(&request) {
                        out[i] = Some(response);
                        done += 1;
                    }
                }
                NetEvent::MailboxFailed { error, .. } => panic!("mailbox request failed: {error}"),
                _ => {}
            }
        }
        out.into_iter().map(Option::unwrap).collect()
    }
}

/// Deposits `total` envelopes spread over `mailboxes`, at most `window`
/// envelopes without a custody receipt at any time, in requests of at most
/// `batch` (a client with envelopes waiting sends them together, up to
/// what the window allows); returns (envelopes/s, every custody receipt
/// valid for exactly its request's envelopes).
///
/// Receipts are verified on another thread, as a node does (its worker
/// verifies, not the task that drives the swarm); the clock stops when the
/// last one is verified.
async fn deposit_rate(
    relay: &RelayProcess,
    client: &mut Client,
    mailboxes: &[[u8; 32]],
    (total, first): (usize, u64),
    window: usize,
    batch: usize,
) -> (f64, bool) {
    let (envs, to_verify, verifier) = deposits_and_verifier(relay, mailboxes, total, first);
    let mut next = 0;
    let mut open = 0;
    let mut flying: std::collections::HashMap<OutboundRequestId, std::ops::Range<usize>> =
        Default::default();
    let mut done = 0;
    let t = Instant::now();
    while done < total {
        while next < total && open < window {
            let n = batch.min(window - open).min(total - next);
            let range = next..next + n;
            let request = Request::Deposit(
                envs[range.clone()]
                    .iter()
                    .map(|e| serde_bytes::ByteBuf::from(e.clone()))
                    .collect(),
            );
            flying.insert(client.net.send_mailbox(&client.relay, request), range);
            next += n;
            open += n;
        }
        match client.net.next_event().await {
            NetEvent::MailboxResponse {
                request, response, ..
            } => {
                if let Some(range) = flying.remove(&request) {
                    open -= range.len();
                    done += range.len();
                    to_verify.send((response, range)).unwrap();
                }
            }
            NetEvent::MailboxFailed { error, .. } => panic!("deposit failed: {error}"),
            _ => {}
        }
    }
    drop(to_verify);
    let valid = verifier.join().unwrap();
    (rate(total, t.elapsed()), valid)
}

/// Envelopes to deposit, and a thread that verifies each custody receipt
/// against exactly its request's envelopes (as a node's worker does, off
/// the task that drives the swarm); it returns whether every one of them
/// was covered by a valid receipt.
#[allow(clippy::type_complexity)]
fn deposits_and_verifier(
    relay: &RelayProcess,
    mailboxes: &[[u8; 32]],
    total: usize,
    first: u64,
) -> (
    std::sync::Arc<Vec<Vec<u8>>>,
    std::sync::mpsc::Sender<(Response, std::ops::Range<usize>)>,
    std::thread::JoinHandle<bool>,
) {
    let envs: std::sync::Arc<Vec<Vec<u8>>> = std::sync::Arc::new(
        (0..total)
            .map(|i| envelope(&mailboxes[i % mailboxes.len()], first + i as u64))
            .collect(),
    );
    let (to_verify, verify_rx) = std::sync::mpsc::channel::<(Response, std::ops::Range<usize>)>();
    let verifier = {
        let envs = envs.clone();
        let key = relay.key;
        std::thread::spawn(move || {
            let mut valid = true;
            let mut verified = 0;
            for (response, range) in verify_rx {
                valid &= match &response {
                    Response::Custody(r) => r.verify(&key, &envs[range.clone()]).is_ok(),
                    _ => false,
                };
                verified += range.len();
            }
            valid && verified == envs.len()
        })
    };
    (envs, to_verify, verifier)
}

/// As [`deposit_rate`], over one mailbox stream
/// (`/meshchat/mailbox-stream/1`, the path a node takes to deposit): the
/// same window and batches, requests written back to back, custody
/// receipts as the relay's sync thread releases them.
async fn deposit_rate_stream(
    relay: &RelayProcess,
    client: &mut Client,
    mailboxes: &[[u8; 32]],
    (total, first): (usize, u64),
    window: usize,
    batch: usize,
) -> (f64, bool, Value) {
    let (envs, to_verify, verifier) = deposits_and_verifier(relay, mailboxes, total, first);
    let mut control = client.net.stream_control();
    let peer = client.relay;
    let mut opening = tokio::spawn(async move {
        control
            .open_stream(peer, meshchat::relay::stream::PROTOCOL)
            .await
    });
    let stream = loop {
        tokio::select! {
            s = &mut opening => break s.unwrap().expect("mailbox stream opens"),
            _ = client.net.next_event() => {}
        }
    };
    let (requests, requests_rx) = tokio::sync::mpsc::unbounded_channel();
    let (answers_tx, mut answers) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(meshchat::relay::stream::run_client(
        meshchat::relay::stream::MailboxCodec,
        stream,
        Duration::from_secs(60),
        requests_rx,
        answers_tx,
    ));
    let mut next = 0;
    let mut open = 0;
    let mut flying: std::collections::HashMap<u64, std::ops::Range<usize>> = Default::default();
    let mut done = 0;
    let mut id = 0u64;
    let cpu = (cpu_of(relay.child.id()), cpu_of(std::process::id()));
    let t = Instant::now();
    while done < total {
        while next < total && open < window {
            let n = batch.min(window - open).min(total - next);
            let range = next..next + n;
            let request = Request::Deposit(
                envs[range.clone()]
                    .iter()
                    .map(|e| serde_bytes::ByteBuf::from(e.clone()))
                    .collect(),
            );
            requests.send((id, request)).unwrap();
            flying.insert(id, range);
            id += 1;
            next += n;
            open += n;
        }
        tokio::select! {
            a = answers.recv() => {
                let (id, answer) = a.expect("stream driver running");
                let response = answer.unwrap_or_else(|e| panic!("deposit failed: {e}"));
                let range = flying.remove(&id).expect("an answer to a request in flight");
                open -= range.len();
                done += range.len();
                to_verify.send((response, range)).unwrap();
            }
            _ = client.net.next_event() => {}
        }
    }
    drop(requests);
    drop(to_verify);
    let valid = verifier.join().unwrap();
    let elapsed = t.elapsed();
    // CPU per envelope, each side (the client's includes checking the
    // receipts), in µs; /proc counts in hundredths of a second.
    let per = |before: f64, after: f64| ((after - before) * 1e7 / total as f64).round() / 10.0;
    let cpu = json!({
        "relay_us_per_envelope": per(cpu.0, cpu_of(relay.child.id())),
        "client_us_per_envelope": per(cpu.1, cpu_of(std::process::id())),
    });
    // The stream closes once its last answer is in.
    let mut driver = driver;
    loop {
        tokio::select! {
            _ = &mut driver => break,
            _ = client.net.next_event() => {}
        }
    }
    (rate(total, elapsed), valid, cpu)
}

/// Fills mailboxes with `total` envelopes in batches (not timed).
async fn fill(client: &mut Client, mailboxes: &[[u8; 32]], total: usize, first: u64) {
    let mut requests = Vec::new();
    let mut batch = Vec::new();
    for i in 0..total {
        let m = &mailboxes[i % mailboxes.len()];
        batch.push(serde_bytes::ByteBuf::from(envelope(m, first + i as u64)));
        if batch.len() == FILL_BATCH {
            requests.push(Request::Deposit(std::mem::take(&mut batch)));
        }
    }
    if !batch.is_empty() {
        requests.push(Request::Deposit(batch));
    }
    for chunk in requests.chunks(2_000) {
        let answers = client.pipeline(chunk.to_vec(), 16).await;
        assert!(answers.iter().all(|a| matches!(a, Response::Custody(_))));
    }
}

/// The owner of `key`'s mailbox (holding `total`) drains it: fetch a
/// page, send its ack and the next fetch at once. Returns envelopes/s.
async fn drain_rate(
    relay: &RelayProcess,
    client: &mut Client,
    key: &MailboxKey,
    total: usize,
) -> f64 {
    let mut rng = StdRng::seed_from_u64(7);
    let mut owner = || Owner::new(key, relay.key, now(), &mut rng);
    let fetch = |after: Option<u64>, owner: Owner| {
        Request::Fetch(Signed::new(
            key,
            Fetch {
                owner,
                after,
                limit: 1024,
                wait_secs: 0,
            },
        ))
    };
    let t = Instant::now();
    let mut got = 0usize;
    let mut acks_open = 0usize;
    let mut fetch_id = Some(client.net.send_mailbox(&client.relay, fetch(None, owner())));
    while fetch_id.is_some() || acks_open > 0 {
        match client.net.next_event().await {
            NetEvent::MailboxResponse {
                request, response, ..
            } if Some(request) == fetch_id => {
                let Response::Mail { items, more } = response else {
                    panic!("fetch refused: {response:?}")
                };
                got += items.len();
                let last = items.last().map(|m| m.seq);
                fetch_id = (more || got < total)
                    .then(|| client.net.send_mailbox(&client.relay, fetch(last, owner())));
                if !items.is_empty() {
                    let seqs = items.iter().map(|m| m.seq).collect();
                    client.net.send_mailbox(
                        &client.relay,
                        Request::Ack(Signed::new(
                            key,
                            Ack {
                                owner: owner(),
                                seqs,
                            },
                        )),
                    );
                    acks_open += 1;
                }
                if items.is_empty() && !more {
                    fetch_id = None;
                }
            }
            NetEvent::MailboxResponse { response, .. } => {
                assert!(matches!(response, Response::Acked(_)), "{response:?}");
                acks_open -= 1;
            }
            NetEvent::MailboxFailed { error, .. } => panic!("drain failed: {error}"),
            _ => {}
        }
    }
    let took = t.elapsed();
    assert_eq!(got, total, "every envelope drained");
    rate(total, took)
}

/// Redis on 127.0.0.1, append-only with `appendfsync everysec`.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start(bench_dir: Option<&Path>) -> Option<Self> {
        let dir = match bench_dir {
            Some(d) => tempfile::tempdir_in(d).ok()?,
            None => tempfile::tempdir().ok()?,
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            .args(["--save", "", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let r = Self {
            child,
            port,
            _dir: dir,
        };
        // Wait until it answers.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut c) = RespConn::connect(r.port)
                && c.pipeline(&[vec![b"PING".to_vec()]], 1).is_ok()
            {
                return Some(r);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn version() -> Option<String> {
        let out = Command::new("redis-server")
            .arg("--version")
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal RESP client: commands out, replies counted (bulk arrays read
/// in full), `window` commands in flight.
struct RespConn {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl RespConn {
    fn connect(port: u16) -> std::io::Result<Self> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        Ok(Self {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }

    fn encode(cmd: &[Vec<u8>], out: &mut Vec<u8>) {
        out.extend_from_slice(format!("*{}\r\n", cmd.len()).as_bytes());
        for part in cmd {
            out.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
            out.extend_from_slice(part);
            out.extend_from_slice(b"\r\n");
        }
    }

    fn line(&mut self) -> std::io::Result<Vec<u8>> {
        let mut l = Vec::new();
        self.r.read_until(b'\n', &mut l)?;
        if l.len() < 3 {
            return Err(std::io::Error::other("short reply"));
        }
        l.truncate(l.len() - 2);
        Ok(l)
    }

    /// Reads one reply; returns how many bulk items it carried.
    fn reply(&mut self) -> std::io::Result<usize> {
        let l = self.line()?;
        let n = |l: &[u8]| -> i64 {
            std::str::from_utf8(&l[1..])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(-1)
        };
        match l[0] {
            b'+' | b':' => Ok(0),
            b'-' => Err(std::io::Error::other(
                String::from_utf8_lossy(&l).into_owned(),
            )),
            b'$' => {
                let len = n(&l);
                if len >= 0 {
                    let mut b = vec![0u8; len as usize + 2];
                    self.r.read_exact(&mut b)?;
                }
                Ok(1)
            }
            b'*' => {
                let k = n(&l).max(0) as usize;
                for _ in 0..k {
                    self.reply()?;
                }
                Ok(k)
            }
            _ => Err(std::io::Error::other("unknown reply")),
        }
    }

    /// Sends every command with at most `window` unanswered; returns the
    /// total bulk items received.
    fn pipeline(&mut self, cmds: &[Vec<Vec<u8>>], window: usize) -> std::io::Result<usize> {
        let mut sent = 0;
        let mut answered = 0;
        let mut items = 0;
        let mut buf = Vec::new();
        while answered < cmds.len() {
            buf.clear();
            while sent < cmds.len() && sent - answered < window {
                Self::encode(&cmds[sent], &mut buf);
                sent += 1;
            }
            if !buf.is_empty() {
                self.w.write_all(&buf)?;
            }
            items += self.reply()?;
            answered += 1;
        }
        Ok(items)
    }

    fn info_rss(&mut self) -> u64 {
        let cmd = [b"INFO".to_vec(), b"memory".to_vec()];
        let mut buf = Vec::new();
        Self::encode(&cmd, &mut buf);
        if self.w.write_all(&buf).is_err() {
            return 0;
        }
        let Ok(l) = self.line() else { return 0 };
        let len: usize = std::str::from_utf8(&l[1..])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut b = vec![0u8; len + 2];
        if self.r.read_exact(&mut b).is_err() {
            return 0;
        }
        String::from_utf8_lossy(&b)
            .lines()
            .find_map(|l| l.strip_prefix("used_memory_rss:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

fn redis_key(m: usize) -> Vec<u8> {
    format!("mailbox:{m}").into_bytes()
}

/// Redis's deposit: RPUSH + EXPIRE per envelope (a deposit is the pair),
/// `window` envelopes in flight; deposits/s.
fn redis_deposit(redis: &Redis, deposits: usize, window: usize) -> f64 {
    let mut c = RespConn::connect(redis.port).unwrap();
    let value = envelope(&[1; 32], 0);
    let cmds: Vec<Vec<Vec<u8>>> = (0..deposits)
        .flat_map(|i| {
            let k = redis_key(i % MAILBOXES);
            [
                vec![b"RPUSH".to_vec(), k.clone(), value.clone()],
                vec![b"EXPIRE".to_vec(), k, b"3600".to_vec()],
            ]
        })
        .collect();
    let t = Instant::now();
    c.pipeline(&cmds, window * 2).unwrap();
    rate(deposits, t.elapsed())
}

/// Redis's drain and memory, after its deposits (`held` envelopes in its
/// lists by then).
fn redis_half(
    redis: &Redis,
    deposit_runs: &[f64],
    held: usize,
    drain: usize,
    million: usize,
) -> Value {
    let mut c = RespConn::connect(redis.port).unwrap();
    let value = envelope(&[1; 32], 0);
    // Drain: LRANGE pages of 256 over one list of `drain`.
    let list = b"mailbox:drain".to_vec();
    let fill: Vec<Vec<Vec<u8>>> = (0..drain)
        .map(|_| vec![b"RPUSH".to_vec(), list.clone(), value.clone()])
        .collect();
    c.pipeline(&fill, 256).unwrap();
    let pages: Vec<Vec<Vec<u8>>> = (0..drain.div_ceil(256))
        .map(|p| {
            vec![
                b"LRANGE".to_vec(),
                list.clone(),
                (p * 256).to_string().into_bytes(),
                (p * 256 + 255).to_string().into_bytes(),
            ]
        })
        .collect();
    let t = Instant::now();
    let items = c.pipeline(&pages, 8).unwrap();
    let drain_rate = rate(items, t.elapsed());
    assert_eq!(items, drain);
    // Memory with `million` envelopes queued (over the same mailboxes).
    let more = million.saturating_sub(held + drain);
    let fill: Vec<Vec<Vec<u8>>> = (0..more)
        .map(|i| vec![b"RPUSH".to_vec(), redis_key(i % MAILBOXES), value.clone()])
        .collect();
    for chunk in fill.chunks(100_000) {
        c.pipeline(chunk, 256).unwrap();
    }
    json!({
        "version": Redis::version(),
        "config": "appendonly yes, appendfsync everysec, save \"\"",
        "deposit_rpush_expire_per_s": median(deposit_runs),
        "deposit_rpush_expire_runs_per_s": deposit_runs,
        "drain_lrange_256_envelopes_per_s": drain_rate,
        "rss_bytes_with_queued": c.info_rss(),
        "queued": million,
    })
}

/// The relay part of the report.
pub(crate) async fn relay(deposits: usize, window: usize, drain: usize, million: usize) -> Value {
    let bench_dir = std::env::var_os("MESH_BENCH_DIR").map(std::path::PathBuf::from);
    let relay = RelayProcess::start(bench_dir.as_deref());
    let mut client = Client::connect(&relay).await;
    let rss_empty = relay.rss_bytes();
    let mut rng = StdRng::seed_from_u64(5);
    let mailboxes: Vec<[u8; 32]> = (0..MAILBOXES)
        .map(|_| MailboxKey::generate(&mut rng).id().0)
        .collect();
    // MESH_BENCH_ONLY=deposit: only the deposit on the mailbox stream (to
    // profile it), no Redis.
    if std::env::var("MESH_BENCH_ONLY").as_deref() == Ok("deposit") {
        let (deposit, valid, cpu) = deposit_rate_stream(
            &relay,
            &mut client,
            &mailboxes,
            (deposits, 2_000_000),
            window,
            DEPOSIT_BATCH,
        )
        .await;
        return json!({
            "concurrency": window,
            "deposits": deposits,
            "deposit_with_custody_per_s": deposit,
            "deposit_cpu": cpu,
            "custody_receipts_valid": valid,
        });
    }
    let redis = if which("redis-server") {
        Redis::start(bench_dir.as_deref())
    } else {
        None
    };
    let (deposit_single, single_valid) =
        deposit_rate(&relay, &mut client, &mailboxes, (deposits, 0), window, 1).await;
    let (deposit_rr, batched_valid) = deposit_rate(
        &relay,
        &mut client,
        &mailboxes,
        (deposits, 1_000_000),
        window,
        DEPOSIT_BATCH,
    )
    .await;
    // The compared figure: ours on the mailbox stream, then Redis's, in
    // turn.
    let mut ours_runs = Vec::new();
    let mut redis_runs = Vec::new();
    let mut ratios = Vec::new();
    let mut stream_valid = true;
    let mut deposit_cpu = Vec::new();
    for round in 0..DEPOSIT_ROUNDS {
        let first = 2_000_000 + (round * deposits) as u64;
        let (ours, valid, cpu) = deposit_rate_stream(
            &relay,
            &mut client,
            &mailboxes,
            (deposits, first),
            window,
            DEPOSIT_BATCH,
        )
        .await;
        stream_valid &= valid;
        ours_runs.push(ours);
        deposit_cpu.push(cpu);
        if let Some(r) = &redis {
            let theirs = redis_deposit(r, deposits, window);
            redis_runs.push(theirs);
            ratios.push((ours / theirs * 100.0).round() / 100.0);
        }
    }

    // Drain: a mailbox of `drain`, its owner reconnecting.
    let owner = MailboxKey::generate(&mut rng);
    fill(&mut client, &[owner.id().0], drain, 10_000_000).await;
    drop(client);
    let mut client = Client::connect(&relay).await;
    let drain_rate = drain_rate(&relay, &mut client, &owner, drain).await;

    // Memory with `million` queued.
    let queued_now = (2 + DEPOSIT_ROUNDS) * deposits;
    fill(
        &mut client,
        &mailboxes,
        million.saturating_sub(queued_now),
        20_000_000,
    )
    .await;
    let rss_full = relay.rss_bytes();
    drop(client);
    drop(relay);

    let redis = match (&redis, which("redis-server")) {
        (Some(r), _) => redis_half(r, &redis_runs, DEPOSIT_ROUNDS * deposits, drain, million),
        (None, true) => json!({"error": "redis-server did not start"}),
        (None, false) => json!(null),
    };
    json!({
        "envelope_bytes": envelope(&[0; 32], 0).len(),
        "concurrency": window,
        "ours": {
            "deposit_with_custody_per_s": median(&ours_runs),
            "deposit_with_custody_runs_per_s": ours_runs,
            "deposit_cpu_runs": deposit_cpu,
            "deposit_batch_max": DEPOSIT_BATCH,
            "deposit_request_response_per_s": deposit_rr,
            "deposit_one_per_request_per_s": deposit_single,
            "custody_receipts_valid": single_valid && batched_valid && stream_valid,
            "drain_envelopes_per_s": drain_rate,
            "drained": drain,
            "rss_bytes_empty": rss_empty,
            "rss_bytes_with_queued": rss_full,
            "queued": million,
        },
        "redis": redis,
        "targets": {
            "drain_min_per_s": 100_000,
            "deposit_over_redis": (!ratios.is_empty()).then(|| median(&ratios)),
            "deposit_over_redis_runs": ratios,
            "deposit_over_redis_min": 0.5,
            "rss_with_queued_max_bytes": 300u64 * 1024 * 1024,
        },
    })
}

/// The median of `xs` (the mean of the middle two for an even count).
fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
}
