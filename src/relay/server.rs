//! The relay: one task owns the swarm (mailbox protocol, circuit-relay
//! server, Kademlia, identify, ping), one thread owns the mail spool and
//! the mailbox [`Service`], and a second thread makes its writes durable.
//!
//! One round of the store thread: take every request waiting (up to
//! [`MAX_ROUND`]) and answer each through the service. Answers that tell
//! of no write (a fetch, a refusal) leave at once; a fetch may so hand out
//! mail whose deposit is still being synced, which costs nothing: its
//! sender has no receipt yet and keeps it queued, and the owner dedups.
//! Answers that tell of a write (custody receipts, acks) leave only after
//! the sync thread's `fdatasync` — a custody receipt never leaves before
//! its envelopes are on disk. The store thread hands the file to sync over
//! first and signs the round's receipts while the sync thread waits on the
//! disk, then hands the answers over and takes the next round; rounds that
//! queue meanwhile share the next `fdatasync`.
//!
//! A fetch that finds nothing and asks to wait is held; a deposit for its
//! mailbox answers it in the same round, so an online owner gets new mail
//! at once without polling.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use libp2p::request_response::ResponseChannel;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::MissedTickBehavior;
use tracing::{debug, error, info, warn};

use super::codec::Inbound;
use super::metrics::Metrics;
use super::proto::{MAX_REQUEST, Refusal, Request, Response};
use super::service::{Limits, Outgoing, Service};
use super::stream;
use crate::crypto::{DataKey, DeviceIdentity};
use crate::node::net::direct::{Ack, FrameStatus};
use crate::node::net::{
    Net, NetConfig, NetEvent, RateLimiter, RelayServerConfig, RelayServerEvent,
};
use crate::store::{self, Kind, Spool, Store};

/// Longest a fetch may wait for mail (below the clients' request timeout).
pub const MAX_WAIT: Duration = Duration::from_secs(25);
/// Most requests answered per store round (one flush).
const MAX_ROUND: usize = 1024;
/// Fetches one mailbox may have waiting at once (see `Keeper::run`).
pub const MAX_PARKED_PER_MAILBOX: usize = 4;
/// Longest one tick spends purging expired envelopes.
const PURGE_BUDGET: Duration = Duration::from_millis(50);
/// Most requests waiting for the store thread before new ones are refused
/// (`RateLimited`: the client retries later)...
const MAX_BACKLOG: usize = 8192;
/// ...and most envelope bytes in them.
const MAX_BACKLOG_BYTES: usize = 128 * 1024 * 1024;

/// Requests sent to the store thread and not yet taken by a round: how
/// many, and the envelope bytes they hold ([`Job::bytes`]).
#[derive(Debug, Default)]
struct Backlog {
    jobs: AtomicUsize,
    bytes: AtomicUsize,
}
/// How often the relay re-announces itself in the DHT.
const ADVERTISE_EVERY: Duration = Duration::from_secs(600);
/// Where the relay's identity key lives in its store.
const IDENTITY_KEY: &[u8] = b"relay-identity";
/// Where the mail spool lives, inside the relay's data directory.
pub const SPOOL_DIR: &str = "spool";

/// Errors starting or running a relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The store failed.
    #[error("relay store: {0}")]
    Store(#[from] store::Error),
    /// Keys failed.
    #[error("relay keys: {0}")]
    Crypto(#[from] crate::crypto::Error),
    /// The network layer failed.
    #[error("relay network: {0}")]
    Net(#[from] crate::node::net::NetError),
    /// The store thread could not start.
    #[error("relay store thread: {0}")]
    Thread(std::io::Error),
    /// The relay has stopped.
    #[error("the relay has stopped")]
    Stopped,
}

/// Configuration of a relay.
#[derive(Clone)]
pub struct RelayConfig {
    /// Where the store lives (created if missing).
    pub data_dir: PathBuf,
    /// The key that opens the store.
    pub key: DataKey,
    /// Transports and protocols; `relay_server` holds the circuit limits.
    pub net: NetConfig,
    /// Mailbox limits.
    pub limits: Limits,
    /// How often expired envelopes are dropped.
    pub purge_every: Duration,
    /// Longest a fetch may wait for mail (capped at [`MAX_WAIT`]).
    pub max_wait: Duration,
    /// Addresses others reach this relay at (its public addresses).
    pub external: Vec<Multiaddr>,
    /// Also take each listen address as reachable (loopback, LANs).
    pub announce_listen: bool,
    /// Announce this relay in the DHT.
    pub advertise: bool,
    /// Longest a graceful shutdown takes.
    pub shutdown_timeout: Duration,
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConfig")
            .field("data_dir", &self.data_dir)
            .field("net", &self.net)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl RelayConfig {
    /// Defaults for a relay on every interface.
    pub fn new(data_dir: impl Into<PathBuf>, key: DataKey) -> Self {
        Self {
            data_dir: data_dir.into(),
            key,
            net: NetConfig {
                relay_server: Some(RelayServerConfig::default()),
                serve_mailboxes: true,
                ..NetConfig::default()
            },
            limits: Limits::default(),
            purge_every: Duration::from_secs(60),
            max_wait: MAX_WAIT,
            external: Vec::new(),
            announce_listen: false,
            advertise: true,
            shutdown_timeout: Duration::from_secs(5),
        }
    }

    /// Loopback only, listen addresses taken as reachable: tests, benchmarks
    /// and the demo.
    pub fn loopback(data_dir: impl Into<PathBuf>, key: DataKey) -> Self {
        let mut c = Self::new(data_dir, key);
        c.net = NetConfig {
            relay_server: Some(RelayServerConfig::default()),
            serve_mailboxes: true,
            ..NetConfig::loopback()
        };
        c.announce_listen = true;
        c
    }
}

/// A running relay.
#[derive(Debug, Clone)]
pub struct RelayHandle {
    cmds: mpsc::Sender<Cmd>,
    peer_id: PeerId,
    identity: [u8; 32],
    metrics: Arc<Metrics>,
    stopped: watch::Receiver<bool>,
    abort: tokio::task::AbortHandle,
    addrs: watch::Receiver<Vec<Multiaddr>>,
    held: watch::Receiver<u64>,
}

enum Cmd {
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    Shutdown(oneshot::Sender<()>),
}

impl RelayHandle {
    /// The relay's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The relay's identity key (custody receipts verify against it).
    pub fn identity(&self) -> [u8; 32] {
        self.identity
    }

    /// Its counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Waits until it listens, and returns its addresses.
    pub async fn listening(&self) -> Result<Vec<Multiaddr>, RelayError> {
        let mut rx = self.addrs.clone();
        let addrs = rx
            .wait_for(|a| !a.is_empty())
            .await
            .map_err(|_| RelayError::Stopped)?;
        Ok(addrs.clone())
    }

    /// The number of envelopes held, updated after every store round
    /// (wait on it with [`watch::Receiver::wait_for`]).
    pub fn held(&self) -> watch::Receiver<u64> {
        self.held.clone()
    }

    /// Addresses it listens on (empty until the first is up).
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, RelayError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::ListenAddrs(tx))
            .await
            .map_err(|_| RelayError::Stopped)?;
        rx.await.map_err(|_| RelayError::Stopped)
    }

    /// Stops: answers nothing new, flushes, closes the store, within
    /// `bound` (then the task is aborted).
    pub async fn shutdown(&self, bound: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.cmds.send(Cmd::Shutdown(tx)).await.is_ok() {
            let _ = tokio::time::timeout(bound, rx).await;
        }
        self.abort.abort();
        let _ = tokio::time::timeout(bound, self.wait_stopped()).await;
    }

    /// Stops at once, as a crash would (nothing is flushed beyond what
    /// was already promised).
    pub fn kill(&self) {
        self.abort.abort();
    }

    /// Waits until the store is closed.
    pub async fn wait_stopped(&self) {
        let mut rx = self.stopped.clone();
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// The relay: see [`Relay::spawn`].
#[derive(Debug)]
pub struct Relay;

impl Relay {
    /// Opens the store, starts the swarm, the store thread and the task.
    /// Must run inside a tokio runtime.
    pub async fn spawn(cfg: RelayConfig) -> Result<RelayHandle, RelayError> {
        let path = cfg.data_dir.clone();
        let key = cfg.key.clone();
        let limits = cfg.limits;
        let metrics = Arc::new(Metrics::default());
        let m = metrics.clone();
        let (store, service, identity) = tokio::task::spawn_blocking(
            move || -> Result<(Arc<Store>, Service, DeviceIdentity), RelayError> {
                let store = Arc::new(Store::open(&path, &key)?);
                let ids = store.records(Kind::Identity)?;
                let identity = match ids.get(IDENTITY_KEY)? {
                    Some(bytes) => DeviceIdentity::from_secret_bytes(&bytes)?,
                    None => {
                        let id = DeviceIdentity::generate(&mut rand::rng());
                        ids.put(IDENTITY_KEY, &id.to_secret_bytes())?;
                        store.flush()?;
                        id
                    }
                };
                let copy = DeviceIdentity::from_secret_bytes(&identity.to_secret_bytes())?;
                let spool = Spool::open(path.join(SPOOL_DIR), &key)?;
                let service = Service::new(spool, store.clone(), copy, limits, m)?;
                Ok((store, service, identity))
            },
        )
        .await
        .map_err(|_| RelayError::Stopped)??;
        let mut net = Net::start(identity.to_libp2p()?, &cfg.net)?;
        for a in &cfg.external {
            net.add_external_address(a.clone());
        }
        if cfg.advertise
            && let Err(e) = net.advertise_relay()
        {
            warn!(error = %e, "not announced in the DHT");
        }
        let peer_id = net.local_peer_id();

        let (job_tx, job_rx) = std_mpsc::channel();
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (stopped_tx, stopped_rx) = watch::channel(false);
        let backlog = Arc::new(Backlog::default());
        let (held_tx, held_rx) = watch::channel(Metrics::get(&metrics.envelopes));
        let (addrs_tx, addrs_rx) = watch::channel(Vec::new());
        let (sync_tx, sync_rx) = std_mpsc::channel();
        let failed = Arc::new(AtomicBool::new(false));
        let syncer = Syncer {
            rounds: sync_rx,
            outs: out_tx.clone(),
            held: held_tx,
            failed: failed.clone(),
        };
        let syncing = std::thread::Builder::new()
            .name("meshchat-relay-sync".into())
            .spawn(move || syncer.run())
            .map_err(RelayError::Thread)?;
        let keeper = Keeper {
            syncs: sync_tx,
            failed,
            _store: store,
            service,
            jobs: job_rx,
            outs: out_tx,
            parked: HashMap::new(),
            purge_every: cfg.purge_every,
            last_purge: None,
            backlog: backlog.clone(),
        };
        std::thread::Builder::new()
            .name("meshchat-relay-store".into())
            .spawn(move || {
                keeper.run();
                // The keeper is gone, and with it the sync channel: the
                // sync thread answers what it holds and ends.
                let _ = syncing.join();
                let _ = stopped_tx.send(true);
            })
            .map_err(RelayError::Thread)?;
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let gate = Arc::new(Gate {
            jobs: job_tx,
            backlog,
            max_wait: cfg.max_wait.min(MAX_WAIT),
            metrics: metrics.clone(),
            deposits: Mutex::new(RateLimiter::new(limits.deposit_rate, limits.rate_peers)),
            owners: Mutex::new(RateLimiter::new(limits.owner_rate, limits.rate_peers)),
            complaints: Mutex::default(),
        });
        let incoming = net
            .stream_control()
            .accept(stream::PROTOCOL)
            .map_err(|e| RelayError::Net(crate::node::net::NetError::Behaviour(e.to_string())))?;
        let accepting = {
            let serving = gate.clone();
            let refusing = gate.clone();
            let idle = cfg.net.stream_idle_timeout;
            tokio::spawn(stream::accept(
                incoming,
                move |peer, s| serve_stream(serving.clone(), peer, s, idle),
                move |peer| refusing.complain(&peer, "too many mailbox streams; refused"),
            ))
        };
        info!(%peer_id, "relay started");
        let actor = Actor {
            cfg,
            net,
            cmds: cmd_rx,
            gate,
            outs: out_rx,
            metrics: metrics.clone(),
            responses: HashMap::new(),
            next_token: 0,
            addrs: addrs_tx,
        };
        let task = tokio::spawn(async move {
            actor.run().await;
            accepting.abort();
        });
        Ok(RelayHandle {
            cmds: cmd_tx,
            peer_id,
            identity: identity.public().signing,
            metrics,
            stopped: stopped_rx,
            abort: task.abort_handle(),
            addrs: addrs_rx,
            held: held_rx,
        })
    }
}

enum Job {
    Request {
        peer: PeerId,
        request: Box<Request>,
        reply: Reply,
        max_wait: Duration,
    },
    Tick,
    Stop,
}

impl Job {
    /// Envelope bytes it holds (a deposit's; other requests are small).
    fn bytes(&self) -> usize {
        match self {
            Self::Request { request, .. } => match request.as_ref() {
                Request::Deposit(envs) => envs.iter().map(|e| e.len()).sum(),
                _ => 0,
            },
            _ => 0,
        }
    }
}

enum Out {
    Respond { token: u64, response: Response },
}

/// Where a request's answer goes.
enum Reply {
    /// Through the swarm's task, to a request-response channel.
    Token(u64),
    /// Straight to the writer of the mailbox stream it came on.
    Stream(stream::Responder<Response>),
}

impl Reply {
    /// Sends `response` to a stream's writer (a token reply is dropped:
    /// only the stream tasks call this).
    fn send_stream(self, response: Response) {
        if let Self::Stream(r) = self {
            r.send(response);
        }
    }

    /// Sends `response` where it is awaited (a closed stream or a gone
    /// task takes nothing: its peer left).
    fn send(self, outs: &mpsc::UnboundedSender<Out>, response: Response) {
        match self {
            Self::Token(token) => {
                let _ = outs.send(Out::Respond { token, response });
            }
            Self::Stream(r) => r.send(response),
        }
    }
}

struct Parked {
    reply: Reply,
    after: Option<u64>,
    limit: usize,
    until: Instant,
}

/// The store thread.
struct Keeper {
    /// Kept open (and locked) while the thread runs.
    _store: Arc<Store>,
    service: Service,
    jobs: std_mpsc::Receiver<Job>,
    outs: mpsc::UnboundedSender<Out>,
    parked: HashMap<[u8; 32], Vec<Parked>>,
    purge_every: Duration,
    last_purge: Option<Instant>,
    backlog: Arc<Backlog>,
    syncs: std_mpsc::Sender<ToSync>,
    /// Set by the sync thread when a sync failed: stop without answering.
    failed: Arc<AtomicBool>,
}

/// What the store thread hands the sync thread, two messages per round
/// that wrote: first [`ToSync::Sync`], as soon as the round's writes are
/// done, then [`ToSync::Answers`], once its custody receipts are signed.
/// The sync thread waits on the disk while the store thread signs.
enum ToSync {
    /// The file to `fdatasync` (None: the round wrote nothing to the
    /// spool since the last sync).
    Sync(Option<Arc<std::fs::File>>),
    /// The round's answers that tell of a write (custody receipts, acks),
    /// to send once its sync is done, and the envelopes held after it.
    Answers {
        answers: Vec<(Reply, Response)>,
        held: u64,
    },
}

/// The sync thread: syncs what store rounds wrote and only then sends
/// their answers. Rounds that queue up while it waits on the disk are
/// covered by one `fdatasync` (their writes all came before it began).
struct Syncer {
    rounds: std_mpsc::Receiver<ToSync>,
    outs: mpsc::UnboundedSender<Out>,
    held: watch::Sender<u64>,
    failed: Arc<AtomicBool>,
}

/// Syncs each distinct file once. `false` if a sync failed.
fn sync_files<'a>(files: impl IntoIterator<Item = &'a Arc<std::fs::File>>) -> bool {
    let started = Instant::now();
    let mut synced: Vec<&Arc<std::fs::File>> = Vec::new();
    for file in files {
        if synced.iter().any(|f| Arc::ptr_eq(f, file)) {
            continue;
        }
        if let Err(e) = file.sync_data() {
            error!(error = %e, "relay store flush failed; stopping without answering");
            return false;
        }
        synced.push(file);
    }
    tracing::trace!(
        files = synced.len(),
        sync_us = started.elapsed().as_micros() as u64,
        "store sync"
    );
    true
}

/// Sends answers whose writes are on disk, then publishes the envelopes
/// held after the last of them.
fn answer(
    rounds: Vec<(Vec<(Reply, Response)>, u64)>,
    outs: &mpsc::UnboundedSender<Out>,
    held: &watch::Sender<u64>,
) {
    let mut last = None;
    for (answers, now_held) in rounds {
        for (reply, response) in answers {
            reply.send(outs, response);
        }
        last = Some(now_held);
    }
    if let Some(now_held) = last {
        held.send_if_modified(|n| std::mem::replace(n, now_held) != now_held);
    }
}

impl Syncer {
    fn run(self) {
        // Every `Answers` comes after its round's `Sync` on the channel, so
        // once the files of every `Sync` taken so far are synced, every
        // `Answers` taken so far may leave.
        while let Ok(first) = self.rounds.recv() {
            let mut files = Vec::new();
            let mut rounds = Vec::new();
            for message in std::iter::once(first).chain(self.rounds.try_iter()) {
                match message {
                    ToSync::Sync(file) => files.extend(file),
                    ToSync::Answers { answers, held } => rounds.push((answers, held)),
                }
            }
            if !sync_files(&files) {
                self.failed.store(true, Ordering::Release);
                return;
            }
            if self.failed.load(Ordering::Acquire) {
                error!("relay store failed; its last rounds are not answered");
                return;
            }
            answer(rounds, &self.outs, &self.held);
        }
    }
}

impl Keeper {
    fn run(mut self) {
        while let Ok(first) = self.jobs.recv() {
            if self.failed.load(Ordering::Acquire) {
                return;
            }
            let mut jobs = vec![first];
            while jobs.len() < MAX_ROUND {
                match self.jobs.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            let n = jobs.len();
            let bytes: usize = jobs.iter().map(Job::bytes).sum();
            let started = Instant::now();
            let mut answers = Vec::with_capacity(n);
            let mut flush = false;
            // Each mailbox once, however many deposits of the round woke it.
            let mut woke = std::collections::HashSet::new();
            let mut stop = false;
            let now = crate::node::now_secs();
            for job in jobs {
                match job {
                    Job::Request {
                        peer,
                        request,
                        reply,
                        max_wait,
                    } => match self.service.handle_unsigned(&peer, *request, now) {
                        Ok(a) => {
                            flush |= a.flush;
                            woke.extend(a.woke);
                            match a.park {
                                Some(p) => {
                                    let wait =
                                        Duration::from_secs(u64::from(p.wait_secs)).min(max_wait);
                                    let list = self.parked.entry(p.mailbox).or_default();
                                    // A few per mailbox (one per device that
                                    // reads it is all an owner needs): past
                                    // that the oldest is answered empty, and
                                    // asks again, so that a deposit never
                                    // wakes more than this many.
                                    if list.len() >= MAX_PARKED_PER_MAILBOX {
                                        let oldest = list.remove(0);
                                        answer_empty(&self.service, &self.outs, oldest);
                                    }
                                    list.push(Parked {
                                        reply,
                                        after: p.after,
                                        limit: p.limit,
                                        until: Instant::now() + wait,
                                    });
                                }
                                // An answer that tells of no write (a
                                // fetch, a refusal) leaves at once; one
                                // that does waits for the sync below.
                                None if !a.flush => {
                                    reply.send(&self.outs, self.service.finish(a.response));
                                }
                                None => answers.push((reply, a.response)),
                            }
                        }
                        Err(e) => {
                            error!(error = %e, "relay store failed; stopping without answering");
                            return self.fail();
                        }
                    },
                    Job::Tick => match self.tick(now) {
                        Ok(purged) => flush |= purged,
                        Err(e) => {
                            error!(error = %e, "relay store failed; stopping");
                            return self.fail();
                        }
                    },
                    Job::Stop => stop = true,
                }
            }
            let handled = started.elapsed();
            self.backlog.jobs.fetch_sub(n, Ordering::Relaxed);
            self.backlog.bytes.fetch_sub(bytes, Ordering::Relaxed);
            // Fetches waiting on a mailbox that just got mail are answered
            // now: a fetch answer tells of no write.
            for mailbox in woke {
                if let Err(e) = self.wake(&mailbox, now) {
                    error!(error = %e, "relay store failed; stopping");
                    return self.fail();
                }
            }
            let waiting: usize = self.parked.values().map(Vec::len).sum();
            self.service
                .metrics()
                .waiting_fetches
                .store(waiting as u64, Ordering::Relaxed);
            tracing::trace!(
                jobs = n,
                handled_us = handled.as_micros() as u64,
                flush,
                "store round"
            );
            // A round that wrote: its custody receipts are signed and its
            // answers leave once its writes are on disk.
            if flush && !self.finish_round(answers) {
                return;
            }
            if stop {
                return;
            }
        }
    }

    /// The store failed: the sync thread answers nothing more, not even
    /// rounds whose files it syncs without an error (a failed write-back
    /// may have been reported to this thread's sync instead).
    fn fail(&self) {
        self.failed.store(true, Ordering::Release);
    }

    /// Hands a round that wrote to the sync thread: first the file to
    /// sync, so that the sync thread starts on the disk at once, then the
    /// round's answers once this thread has signed its custody receipts.
    /// The signatures so cost the depositor no time when the disk is the
    /// slower of the two. `false` if the sync thread is gone.
    fn finish_round(&mut self, answers: Vec<(Reply, Outgoing)>) -> bool {
        let file = match self.service.take_unsynced() {
            Ok(f) => f,
            Err(e) => {
                error!(error = %e, "relay store failed; stopping without answering");
                self.fail();
                return false;
            }
        };
        if self.syncs.send(ToSync::Sync(file)).is_err() {
            return false;
        }
        let answers = self.sign(answers);
        let held = Metrics::get(&self.service.metrics().envelopes);
        self.syncs.send(ToSync::Answers { answers, held }).is_ok()
    }

    fn sign(&self, answers: Vec<(Reply, Outgoing)>) -> Vec<(Reply, Response)> {
        answers
            .into_iter()
            .map(|(reply, out)| (reply, self.service.finish(out)))
            .collect()
    }

    /// Answers the fetches waiting on `mailbox` that now have mail.
    fn wake(&mut self, mailbox: &[u8; 32], now: u64) -> Result<(), store::Error> {
        let Some(list) = self.parked.remove(mailbox) else {
            return Ok(());
        };
        let mut still = Vec::new();
        for p in list {
            let r = self.service.mail(mailbox, p.after, p.limit, now)?;
            match &r {
                Response::Mail { items, .. } if items.is_empty() => still.push(p),
                _ => {
                    self.service.count_fetch(&r);
                    p.reply.send(&self.outs, r);
                }
            }
        }
        if !still.is_empty() {
            self.parked.insert(*mailbox, still);
        }
        Ok(())
    }

    /// Ends waits that are over (an empty answer: the owner asks again),
    /// reclaims spool space and purges when due. Returns whether anything
    /// was written.
    fn tick(&mut self, now: u64) -> Result<bool, store::Error> {
        let t = Instant::now();
        for list in self.parked.values_mut() {
            let (over, still): (Vec<_>, Vec<_>) =
                std::mem::take(list).into_iter().partition(|p| p.until <= t);
            *list = still;
            for p in over {
                answer_empty(&self.service, &self.outs, p);
            }
        }
        self.parked.retain(|_, list| !list.is_empty());
        let compacted = self.service.compact()?;
        if self
            .last_purge
            .is_some_and(|l| t.duration_since(l) < self.purge_every)
        {
            return Ok(compacted);
        }
        // Batch after batch while full ones come (after a long stop, say),
        // within a budget; what is left goes at the next tick, not a
        // minute later.
        let mut purged = 0;
        let mut done = false;
        let started = Instant::now();
        loop {
            let n = self.service.purge(now)?;
            purged += n;
            if n < super::service::PURGE_BATCH {
                done = true;
                break;
            }
            if started.elapsed() >= PURGE_BUDGET {
                break;
            }
        }
        if done {
            self.last_purge = Some(t);
        }
        if purged > 0 {
            info!(purged, "expired envelopes dropped");
        }
        Ok(compacted || purged > 0)
    }
}

/// Answers a waiting fetch with no mail (its wait is over, or a newer one
/// took its place): its owner asks again.
fn answer_empty(service: &Service, outs: &mpsc::UnboundedSender<Out>, p: Parked) {
    let response = Response::Mail {
        items: Vec::new(),
        more: false,
    };
    service.count_fetch(&response);
    p.reply.send(outs, response);
}

/// The way into the store thread, shared by the swarm's task and the
/// tasks serving mailbox streams.
struct Gate {
    jobs: std_mpsc::Sender<Job>,
    /// Requests sent to the store thread and not yet taken by a round.
    backlog: Arc<Backlog>,
    max_wait: Duration,
    metrics: Arc<Metrics>,
    /// Deposit and owner requests per peer, checked here so that a
    /// flood is refused before it queues for the store thread (the
    /// service applies the same rates, and the byte rate, behind).
    deposits: Mutex<RateLimiter>,
    owners: Mutex<RateLimiter>,
    complaints: Mutex<crate::node::complaints::Complaints>,
}

impl Gate {
    fn job(&self, job: Job) {
        let bytes = job.bytes();
        self.backlog.jobs.fetch_add(1, Ordering::Relaxed);
        self.backlog.bytes.fetch_add(bytes, Ordering::Relaxed);
        if self.jobs.send(job).is_err() {
            self.backlog.jobs.fetch_sub(1, Ordering::Relaxed);
            self.backlog.bytes.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    fn complain(&self, peer: &PeerId, what: &'static str) {
        let mut complaints = self
            .complaints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(skipped) = complaints.note(peer, what, Instant::now()) {
            warn!(%peer, skipped, "{what}");
        }
    }

    /// Counts and logs a request that is not one (`why`, for the log).
    fn malformed(&self, peer: &PeerId, why: &str) {
        Metrics::add(&self.metrics.bad_requests, 1);
        self.metrics.refused(Refusal::Malformed);
        let mut complaints = self
            .complaints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(skipped) = complaints.note(peer, "malformed mailbox request", Instant::now()) {
            warn!(%peer, %why, skipped, "malformed mailbox request");
        }
    }

    /// Hands `request` to the store thread, or returns the reply with the
    /// reason it is refused at the door: over the peer's rate, or the
    /// store thread too far behind.
    fn admit(&self, peer: PeerId, request: Request, reply: Reply) -> Result<(), (Reply, Refusal)> {
        let limiter = match &request {
            Request::Deposit(_) => &self.deposits,
            Request::Fetch(_)
            | Request::Ack(_)
            | Request::PublishPrekeys(_)
            | Request::FetchPrekeys { .. } => &self.owners,
        };
        let allowed = limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .allow(&peer, Instant::now());
        if !allowed {
            self.metrics.refused(Refusal::RateLimited);
            self.complain(&peer, "mailbox requests over the peer's rate; refused");
            return Err((reply, Refusal::RateLimited));
        }
        if self.backlog.jobs.load(Ordering::Relaxed) >= MAX_BACKLOG
            || self.backlog.bytes.load(Ordering::Relaxed) >= MAX_BACKLOG_BYTES
        {
            self.metrics.refused(Refusal::RateLimited);
            return Err((reply, Refusal::RateLimited));
        }
        self.job(Job::Request {
            peer,
            request: Box::new(request),
            reply,
            max_wait: self.max_wait,
        });
        Ok(())
    }
}

/// Counts a mailbox stream closed when dropped.
struct OpenGauge(Arc<Metrics>);

impl Drop for OpenGauge {
    fn drop(&mut self) {
        Metrics::sub(&self.0.mailbox_streams_open, 1);
    }
}

/// Serves one mailbox stream (see [`super::stream`]) until the peer
/// closes it and every answer is written, or its framing breaks. A request
/// that is well framed but does not decode is answered
/// `Refused(Malformed)` and the stream goes on.
async fn serve_stream(gate: Arc<Gate>, peer: PeerId, s: libp2p::Stream, idle: Duration) {
    Metrics::add(&gate.metrics.mailbox_streams, 1);
    Metrics::add(&gate.metrics.mailbox_streams_open, 1);
    let _open = OpenGauge(gate.metrics.clone());
    let how = stream::Serving {
        window: stream::STREAM_WINDOW,
        max_request: MAX_REQUEST,
        idle,
    };
    let served = stream::serve(
        s,
        how,
        |response: &Response| Ok(response.to_bytes()),
        |_, bytes, responder| {
            // Answered even if the store thread never gets to it (a
            // stop, a store failure): the client does not wait out its
            // timeout, and tries again.
            let reply = Reply::Stream(responder.or_else(Response::Refused(Refusal::RateLimited)));
            match Request::from_bytes(&bytes) {
                Ok(request) => {
                    if let Err((reply, why)) = gate.admit(peer, request, reply) {
                        reply.send_stream(Response::Refused(why));
                    }
                }
                Err(e) => {
                    gate.malformed(&peer, &e.to_string());
                    reply.send_stream(Response::Refused(Refusal::Malformed));
                }
            }
            Ok(true)
        },
    )
    .await;
    match served {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            gate.malformed(&peer, &e.to_string());
        }
        Err(e) => debug!(%peer, error = %e, "mailbox stream cut"),
    }
}

struct Actor {
    cfg: RelayConfig,
    net: Net,
    cmds: mpsc::Receiver<Cmd>,
    gate: Arc<Gate>,
    outs: mpsc::UnboundedReceiver<Out>,
    metrics: Arc<Metrics>,
    responses: HashMap<u64, ResponseChannel<Response>>,
    next_token: u64,
    addrs: watch::Sender<Vec<Multiaddr>>,
}

impl Actor {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut advertise = tokio::time::interval(ADVERTISE_EVERY);
        advertise.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = self.cmds.recv() => match cmd {
                    Some(Cmd::ListenAddrs(reply)) => {
                        let _ = reply.send(self.net.listen_addrs());
                    }
                    Some(Cmd::Shutdown(reply)) => {
                        self.shutdown().await;
                        let _ = reply.send(());
                        return;
                    }
                    None => {
                        self.shutdown().await;
                        return;
                    }
                },
                out = self.outs.recv() => match out {
                    Some(Out::Respond { token, response }) => self.respond(token, response),
                    None => {
                        error!("relay store thread gone; relay stopping");
                        return;
                    }
                },
                ev = self.net.next_event() => self.net_event(ev),
                _ = tick.tick() => self.job(Job::Tick),
                _ = advertise.tick() => {
                    if self.cfg.advertise && let Err(e) = self.net.advertise_relay() {
                        debug!(error = %e, "DHT announcement");
                    }
                }
            }
        }
    }

    fn job(&self, job: Job) {
        self.gate.job(job);
    }

    fn respond(&mut self, token: u64, response: Response) {
        if let Some(channel) = self.responses.remove(&token)
            && self.net.respond_mailbox(channel, response).is_err()
        {
            debug!("mailbox answer not sent: the peer's stream closed");
        }
    }

    fn complain(&self, peer: &PeerId, what: &'static str) {
        self.gate.complain(peer, what);
    }

    fn net_event(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::Listening { addr } => {
                info!(%addr, "listening");
                if self.cfg.announce_listen {
                    self.net.add_external_address(addr.clone());
                }
                self.addrs.send_modify(|a| a.push(addr));
            }
            NetEvent::Connected { .. } => Metrics::add(&self.metrics.peers, 1),
            NetEvent::Disconnected { .. } => Metrics::sub(&self.metrics.peers, 1),
            NetEvent::MailboxRequest {
                peer,
                request: Inbound::Malformed(why),
                channel,
            } => {
                self.gate.malformed(&peer, &why);
                let _ = self
                    .net
                    .respond_mailbox(channel, Response::Refused(Refusal::Malformed));
            }
            NetEvent::MailboxRequest {
                peer,
                request: Inbound::Request(request),
                channel,
            } => {
                let token = self.next_token;
                self.next_token += 1;
                if let Err((_, why)) = self.gate.admit(peer, request, Reply::Token(token)) {
                    let _ = self.net.respond_mailbox(channel, Response::Refused(why));
                    return;
                }
                self.responses.insert(token, channel);
            }
            NetEvent::MailboxInboundFailed { closed: true, .. } => {}
            NetEvent::MailboxInboundFailed { peer, .. } => {
                Metrics::add(&self.metrics.bad_requests, 1);
                self.complain(
                    &peer,
                    "mailbox request failed (malformed, too large or cut)",
                );
            }
            NetEvent::DirectRequest { batch, channel, .. } => {
                // A relay carries no chats of its own.
                let ack = Ack::all(FrameStatus::Rejected, batch.frames.len());
                let _ = self.net.respond_direct(channel, ack);
            }
            NetEvent::MediaRequest { channel, .. } => {
                // Nor anyone's files.
                let _ = self
                    .net
                    .respond_media(channel, crate::node::net::media::ChunkAnswer::NotHere);
            }
            NetEvent::RelayServer(e) => match e {
                RelayServerEvent::ReservationAccepted { peer } => {
                    debug!(%peer, "reservation");
                    Metrics::add(&self.metrics.reservations, 1);
                }
                RelayServerEvent::CircuitOpened { src, dst } => {
                    debug!(%src, %dst, "circuit opened");
                    Metrics::add(&self.metrics.circuits, 1);
                    Metrics::add(&self.metrics.circuits_open, 1);
                }
                RelayServerEvent::CircuitClosed { src, dst } => {
                    debug!(%src, %dst, "circuit closed");
                    Metrics::sub(&self.metrics.circuits_open, 1);
                }
            },
            NetEvent::Gossip(msg) => {
                // Not subscribed to anything: nothing of ours to check.
                self.net.report_gossip(
                    &msg.id,
                    &msg.source,
                    crate::node::net::Verdict::Ignore(crate::node::net::Reason::Application(
                        "relays do not carry gossip",
                    )),
                );
            }
            _ => {}
        }
    }

    /// Stops taking requests, lets the store thread finish what it has
    /// (answering it) and flush, then stops.
    async fn shutdown(&mut self) {
        self.job(Job::Stop);
        let deadline = tokio::time::Instant::now() + self.cfg.shutdown_timeout;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                out = self.outs.recv() => match out {
                    Some(Out::Respond { token, response }) => self.respond(token, response),
                    None => break,
                },
                ev = self.net.next_event() => {
                    if let NetEvent::MailboxRequest { .. } = ev {
                        continue;
                    }
                }
            }
        }
        // Let the last answers leave.
        let grace = tokio::time::Instant::now() + Duration::from_millis(100);
        while tokio::time::Instant::now() < grace {
            tokio::select! {
                _ = tokio::time::sleep_until(grace) => break,
                _ = self.net.next_event() => {}
            }
        }
        info!(peer = %self.net.local_peer_id(), "relay stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the sync thread does with one round's answers, the store
    /// having failed (`failed`) or not.
    fn answered(failed: bool) -> Vec<u64> {
        let (to_sync, rounds) = std_mpsc::channel();
        let (outs, mut sent) = mpsc::unbounded_channel();
        let (held, _) = watch::channel(0);
        let syncer = Syncer {
            rounds,
            outs,
            held,
            failed: Arc::new(AtomicBool::new(failed)),
        };
        to_sync.send(ToSync::Sync(None)).unwrap();
        to_sync
            .send(ToSync::Answers {
                answers: vec![(Reply::Token(7), Response::Acked(1))],
                held: 0,
            })
            .unwrap();
        drop(to_sync);
        syncer.run();
        let mut tokens = Vec::new();
        while let Ok(Out::Respond { token, .. }) = sent.try_recv() {
            tokens.push(token);
        }
        tokens
    }

    /// Once the store thread failed, rounds it handed over are not
    /// answered, even when their own sync reports no error: a failed
    /// write-back may have been reported to the store thread's sync.
    #[test]
    fn after_a_store_failure_the_sync_thread_answers_nothing() {
        assert_eq!(answered(false), vec![7]);
        assert!(answered(true).is_empty());
    }
}
