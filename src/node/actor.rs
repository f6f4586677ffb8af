//! The node actor: the one task that owns the swarm.
//!
//! Its loop waits on four things — a command from a [`NodeHandle`], work
//! the store thread sends back, a network event, the housekeeping tick —
//! and never on the disk. Chat logic runs on the store thread
//! ([`super::worker`]); this task moves bytes and decides nothing about
//! their content beyond the checks gossip needs before it forwards.
//!
//! Direct path: per peer, one batch in flight and a queue behind it; the
//! next batch takes everything queued meanwhile (up to the batch limits),
//! so frames keep their order and batches grow with load. Batches go on a
//! long-lived direct stream to the peer ([`super::links`], served by
//! [`super::inbound`]), or by request-response to a peer without one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{OutboundRequestId, ResponseChannel};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};

mod media;

use super::complaints::Complaints;
use super::config::NodeConfig;
use super::engine::{Engine, GroupKey};
use super::error::NodeError;
use super::events::NodeEvent;
use super::handle::{Command, NodeHandle, NodeInfo, Status};
use super::inbound::{self, Inbound, StreamReply};
use super::links::{EventOf, LinkEvent, Links};
use super::net::direct::{self, Ack, FrameStatus};
use super::net::{
    GossipMessage, Net, NetEvent, Published, RateLimit, RateLimiter, Reason, Topic, Verdict,
};
use super::presence::{self, MAX_CLOCK_SKEW_MS, Tracker};
use super::proto::{Beacon, PresenceState, envelope_checked};
use super::worker::{Job, Out, Outgoing, Purpose, Shared, Worker, now_secs, parse_relay};
use crate::crypto::{DeviceIdentity, Envelope};
use crate::relay::proto::Request;
use crate::relay::stream::MailboxCodec;
use crate::store::Store;

/// Gossip message ids remembered to refuse replays after gossipsub's own
/// duplicate cache has forgotten them.
const SEEN_ENVELOPES: usize = 64 * 1024;
/// The part of `max_backlog_bytes` one peer's direct batches may take.
const PEER_BACKLOG_SHARE: usize = 4;
/// Beacons older than this (or than the presence expiry, if shorter) are
/// not forwarded: inside gossipsub's duplicate window (120 s), so a replay
/// is either a known duplicate or stale.
const STALE_BEACON: Duration = Duration::from_secs(100);
/// Most relays taken from the DHT when none are configured.
const FOUND_RELAYS: usize = 2;
/// How often the DHT is asked for relays while we have none.
const FIND_RELAYS_EVERY: Duration = Duration::from_secs(60);
/// How often our relays are dialled again while not connected.
const RELAY_REDIAL: Duration = Duration::from_secs(5);
/// How long after a circuit reservation closed it is asked for again.
const CIRCUIT_RETRY: Duration = Duration::from_secs(30);
/// Most peers whose direct-request budget is tracked.
const DIRECT_RATE_PEERS: usize = 4096;
/// The budget of direct batches from devices not known as contacts, all
/// together (counted under our own peer id).
const STRANGER_RATE: RateLimit = RateLimit {
    burst: 64,
    per_second: 32,
};
/// A group message's signature, as the network task can check it.
enum Signed {
    /// Under a member's key we hold, and its signature holds.
    Holds,
    /// Under a member's key we hold, and its signature does not hold.
    Forged,
    /// Under no key we hold.
    Unknown,
}

/// Group messages under a sender key not known here that one peer may
/// bring us (forwarded and read); past it they are neither: the check of
/// their signature is left to members that have the key, and a real one
/// reaches its members by its author's 1:1 copy.
const UNKNOWN_KEY_RATE: RateLimit = RateLimit {
    burst: 64,
    per_second: 16,
};
/// Largest direct batch taken from such a device (bytes of frames).
const STRANGER_BATCH: usize = 64 * 1024;

/// The node: see [`Node::spawn`].
#[derive(Debug)]
pub struct Node;

impl Node {
    /// Opens the store in `config.data_dir`, starts the swarm, the store
    /// thread and the actor task. Returns the handle and the event stream.
    /// Must run inside a tokio runtime.
    pub async fn spawn(
        config: NodeConfig,
    ) -> Result<(NodeHandle, mpsc::Receiver<NodeEvent>), NodeError> {
        let path = config.data_dir.clone();
        let key = config.key.clone();
        let now = now_secs();
        // Opening sled and loading keys may take a while: not on this task.
        let engine = tokio::task::spawn_blocking(move || -> Result<Engine, NodeError> {
            let store = Arc::new(Store::open(&path, &key)?);
            let engine = Engine::open(store, now)?;
            engine.store().flush()?;
            Ok(engine)
        })
        .await
        .map_err(|_| NodeError::Stopped)??;
        // A copy of the identity key for signing presence on this task.
        let identity = DeviceIdentity::from_secret_bytes(&engine.identity().to_secret_bytes())?;
        let mailbox_id = engine.mailbox_id();
        let keypair = identity.to_libp2p()?;
        let mut net = Net::start(keypair, &config.net)?;
        let inbox = net.inbox_topic(&mailbox_id);
        net.subscribe(&inbox)?;
        net.subscribe(&Topic::Presence)?;
        let group_topics: HashSet<[u8; 32]> = engine.group_topics().into_iter().collect();
        let group_keys: HashMap<[u8; 32], Vec<GroupKey>> =
            engine.group_keys().into_iter().collect();
        for t in &group_topics {
            net.subscribe(&Topic::Group(*t))?;
        }

        let (cmd_tx, cmd_rx) = mpsc::channel(config.command_capacity.max(1));
        let (ev_tx, ev_rx) = mpsc::channel(config.event_capacity.max(1));
        let (job_tx, job_rx) = std_mpsc::channel();
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (stopped_tx, stopped_rx) = watch::channel(false);
        let shared = Arc::new(Shared::default());
        let worker = Worker::new(
            engine,
            job_rx,
            out_tx,
            ev_tx.clone(),
            shared.clone(),
            &config,
        );
        let mut relays = HashMap::new();
        for addr in &config.relays {
            match parse_relay(addr) {
                Some((peer, addrs)) => {
                    for a in &addrs {
                        net.add_address(&peer, a.clone());
                    }
                    if let Err(e) = net.dial_peer(peer, addrs.clone()) {
                        debug!(%peer, error = %e, "dialling our relay");
                    }
                    net.protect(peer);
                    relays.insert(peer, addrs);
                }
                None => warn!(%addr, "relay address without /p2p/<peer id>; ignored"),
            }
        }
        // Named after the device (its identity key's first bytes), so logs
        // of several nodes in one process tell them apart.
        let thread_name = format!(
            "store-{}",
            crate::store::hex(&identity.public().signing[..4])
        );
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                worker.run();
                // The engine and its store are dropped by now.
                let _ = stopped_tx.send(true);
            })
            .map_err(NodeError::Thread)?;

        let info = Arc::new(NodeInfo {
            peer_id: net.local_peer_id(),
            identity: identity.public().signing,
            mailbox_id,
        });
        let (links, link_events) = Links::new(
            net.stream_control(),
            (crate::relay::stream::PROTOCOL, MailboxCodec),
            config.net.mailbox_timeout,
        );
        let direct_codec = direct::StreamCodec {
            limits: config.net.direct_limits,
        };
        let (direct_links, direct_events) = Links::new(
            net.stream_control(),
            (direct::STREAM_PROTOCOL, direct_codec),
            config.net.direct_timeout,
        );
        let (inbound_tx, inbound) = mpsc::unbounded_channel();
        inbound::accept(
            &mut net.stream_control(),
            (config.net.direct_limits, config.net.stream_idle_timeout),
            inbound_tx,
        )
        .map_err(|e| NodeError::Net(super::net::NetError::Behaviour(e.to_string())))?;
        let actor = Actor {
            tracker: Tracker::new(config.presence.expiry),
            presence: PresenceState::Online,
            hidden: config.presence.hidden,
            direct_rate: RateLimiter::new(
                RateLimit {
                    burst: config.direct_rate.saturating_mul(2),
                    per_second: config.direct_rate,
                },
                DIRECT_RATE_PEERS,
            ),
            stranger_rate: RateLimiter::new(STRANGER_RATE, 1),
            unknown_key_rate: RateLimiter::new(UNKNOWN_KEY_RATE, DIRECT_RATE_PEERS),
            links,
            link_events,
            link_in_flight: HashMap::new(),
            direct_links,
            direct_events,
            direct_in_flight: HashMap::new(),
            inbound,
            cfg: config,
            net,
            identity,
            mailbox_id,
            cmds: cmd_rx,
            jobs: job_tx,
            outs: out_rx,
            events: ev_tx,
            shared,
            peers: HashMap::new(),
            queues: HashMap::new(),
            in_flight: HashMap::new(),
            busy: HashSet::new(),
            responses: HashMap::new(),
            peer_backlog: HashMap::new(),
            next_token: 0,
            seen: SeenSet::default(),
            held_back: SeenSet::default(),
            complaints: Complaints::default(),
            last_beacon_ms: 0,
            relays,
            circuits: HashMap::new(),
            circuit_retry: HashMap::new(),
            mailbox_in_flight: HashMap::new(),
            last_redial: Instant::now(),
            last_relay_search: None,
            group_topics,
            group_keys,
            media: media::MediaLinks::default(),
        };
        let task = tokio::spawn(actor.run());
        let handle = NodeHandle::new(cmd_tx, info, task.abort_handle(), stopped_rx);
        Ok((handle, ev_rx))
    }
}

/// A bounded set of recently seen gossip ids.
#[derive(Default)]
struct SeenSet {
    set: HashSet<[u8; 32]>,
    order: VecDeque<[u8; 32]>,
}

impl SeenSet {
    /// Records `id`; `false` if it was already there.
    fn insert(&mut self, id: [u8; 32]) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > SEEN_ENVELOPES
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }

    /// Forgets `id` if it is there; whether it was. Its place in the
    /// order goes too (searched from the newest end, where an id just
    /// inserted is), so that the id inserted again is not evicted early.
    fn remove(&mut self, id: &[u8; 32]) -> bool {
        if !self.set.remove(id) {
            return false;
        }
        if let Some(i) = self.order.iter().rposition(|x| x == id) {
            self.order.remove(i);
        }
        true
    }
}

/// Where the ack of a batch a peer sent us goes.
enum Responder {
    /// It came by request-response.
    Request(ResponseChannel<Ack>),
    /// It came on the peer's direct stream.
    Stream(StreamReply),
}

struct Actor {
    cfg: NodeConfig,
    net: Net,
    identity: DeviceIdentity,
    mailbox_id: [u8; 32],
    cmds: mpsc::Receiver<Command>,
    jobs: std_mpsc::Sender<Job>,
    outs: mpsc::UnboundedReceiver<Out>,
    events: mpsc::Sender<NodeEvent>,
    shared: Arc<Shared>,
    /// Contacts' devices by peer id.
    peers: HashMap<PeerId, [u8; 32]>,
    /// Frames waiting for the peer's in-flight request to finish.
    queues: HashMap<PeerId, VecDeque<Outgoing>>,
    in_flight: HashMap<OutboundRequestId, (PeerId, Vec<Option<u64>>)>,
    busy: HashSet<PeerId>,
    /// Batches handed to the store thread, by token: where the answer
    /// goes, whose batch it is and its bytes.
    responses: HashMap<u64, (Responder, PeerId, usize)>,
    /// Bytes of each peer's batches waiting for the store thread (see
    /// [`PEER_BACKLOG_SHARE`]); an entry only while some wait.
    peer_backlog: HashMap<PeerId, usize>,
    next_token: u64,
    seen: SeenSet,
    /// Group messages seen so far only with the "reached all" flag, which
    /// is outside the signature: the first copy without it is forwarded
    /// (and not handled again), so a carrier that sets the flag cannot
    /// stop the others forwarding.
    held_back: SeenSet,
    tracker: Tracker,
    presence: PresenceState,
    hidden: bool,
    direct_rate: RateLimiter,
    /// One budget for the direct batches of every device that is not (or
    /// not yet, here) a contact: see [`Actor::direct_batch`].
    stranger_rate: RateLimiter,
    /// Per peer: group messages under keys not known here
    /// ([`UNKNOWN_KEY_RATE`]).
    unknown_key_rate: RateLimiter,
    complaints: Complaints,
    last_beacon_ms: u64,
    /// Our relays and their addresses.
    relays: HashMap<PeerId, Vec<Multiaddr>>,
    /// Circuit reservations asked of our relays (their listeners), so
    /// that peers reach us through them when nothing can dial us.
    circuits: HashMap<PeerId, ListenerId>,
    /// Not before this is a reservation asked again of a relay whose last
    /// one closed (refused, or its connection dropped).
    circuit_retry: HashMap<PeerId, Instant>,
    mailbox_in_flight: HashMap<OutboundRequestId, (PeerId, Purpose)>,
    /// Deposits on our mailbox streams to relays.
    links: Links<MailboxCodec>,
    link_events: mpsc::UnboundedReceiver<EventOf<MailboxCodec>>,
    link_in_flight: HashMap<u64, (PeerId, Purpose)>,
    /// Direct batches on our direct streams to peers.
    direct_links: Links<direct::StreamCodec>,
    direct_events: mpsc::UnboundedReceiver<EventOf<direct::StreamCodec>>,
    direct_in_flight: HashMap<u64, (PeerId, Vec<Option<u64>>)>,
    /// Batches peers sent on their direct streams to us.
    inbound: mpsc::UnboundedReceiver<Inbound>,
    last_redial: Instant,
    /// When the DHT was last asked for relays.
    last_relay_search: Option<Instant>,
    /// The topics of the groups we are in.
    group_topics: HashSet<[u8; 32]>,
    /// The sender keys the store thread holds for each group's members:
    /// a group message under one of them is forwarded only if its
    /// signature holds.
    group_keys: HashMap<[u8; 32], Vec<GroupKey>>,
    /// Media chunks being fetched and served.
    media: media::MediaLinks,
}

impl Actor {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(self.cfg.tick);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut heartbeat = tokio::time::interval(self.cfg.presence.heartbeat);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = self.cmds.recv() => match cmd {
                    Some(Command::Shutdown { reply }) => {
                        self.shutdown().await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(cmd) => self.command(cmd),
                    // Every handle dropped: stop as on shutdown.
                    None => {
                        self.shutdown().await;
                        return;
                    }
                },
                out = self.outs.recv() => match out {
                    Some(out) => self.out(out),
                    // The store thread stopped (its store failed): nothing
                    // can be stored or acknowledged any more, so stop too.
                    None => {
                        tracing::error!("store thread gone; node stopping");
                        return;
                    }
                },
                ev = self.net.next_event() => self.net_event(ev),
                Some(ev) = self.link_events.recv() => self.link_event(ev),
                Some(ev) = self.direct_events.recv() => self.direct_link_event(ev),
                Some(ev) = self.inbound.recv() => self.inbound(ev),
                _ = tick.tick() => {
                    self.links.close_idle(Instant::now());
                    self.direct_links.close_idle(Instant::now());
                    self.redial_relays();
                    self.search_relays();
                    self.job(Job::Tick);
                    for e in self.tracker.expire(Instant::now()) {
                        self.emit(e);
                    }
                }
                _ = heartbeat.tick() => self.beacon(),
            }
        }
    }

    fn job(&self, job: Job) {
        let bytes = job.network_bytes();
        self.shared.backlog.fetch_add(1, Ordering::Relaxed);
        self.shared
            .backlog_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        if self.jobs.send(job).is_err() {
            self.shared.backlog.fetch_sub(1, Ordering::Relaxed);
            self.shared
                .backlog_bytes
                .fetch_sub(bytes, Ordering::Relaxed);
            debug!("store thread gone");
        }
    }

    /// The store thread is behind: `max_backlog` jobs or
    /// `max_backlog_bytes` of network input wait for it.
    fn overloaded(&self) -> bool {
        self.shared.backlog.load(Ordering::Relaxed) >= self.cfg.max_backlog
            || self.shared.backlog_bytes.load(Ordering::Relaxed) >= self.cfg.max_backlog_bytes
    }

    fn emit(&self, e: NodeEvent) {
        if self.events.try_send(e).is_err() {
            debug!("event stream full or closed; dropped a network event");
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Send { to, bodies, reply } => self.job(Job::Send { to, bodies, reply }),
            Command::AddContact { code, name, reply } => {
                let addrs = with_peer(&self.net.listen_addrs(), self.net.local_peer_id());
                self.job(Job::AddContact {
                    code,
                    name,
                    addrs,
                    reply,
                })
            }
            Command::Requests(job) => self.job(Job::Requests(job)),
            Command::Devices(mut job) => {
                // Where we listen: in the link code, or the invite that
                // goes with a request to join.
                if let super::worker::DevicesJob::Link { addrs, .. }
                | super::worker::DevicesJob::Join { addrs, .. } = &mut job
                {
                    *addrs = with_peer(&self.net.listen_addrs(), self.net.local_peer_id());
                }
                self.job(Job::Devices(job))
            }
            Command::Invite { reply } => {
                let addrs = with_peer(&self.net.listen_addrs(), self.net.local_peer_id());
                self.job(Job::Invite { addrs, reply });
            }
            Command::MarkRead { with, reply } => self.job(Job::MarkRead { with, reply }),
            Command::ClearHistory { with, reply } => self.job(Job::ClearHistory { with, reply }),
            Command::DeleteMessage {
                with,
                message,
                reply,
            } => self.job(Job::DeleteMessage {
                with,
                message,
                reply,
            }),
            Command::Media(m) => self.job(Job::Media(m)),
            Command::History {
                with,
                before,
                limit,
                reply,
            } => self.job(Job::History {
                with,
                before,
                limit,
                reply,
            }),
            Command::Conversations { reply } => self.job(Job::Conversations { reply }),
            Command::CreateGroup {
                name,
                me_name,
                members,
                retention,
                reply,
            } => {
                let addrs = with_peer(&self.net.listen_addrs(), self.net.local_peer_id());
                self.job(Job::CreateGroup {
                    name,
                    me_name,
                    members,
                    retention,
                    addrs,
                    reply,
                });
            }
            Command::ChangeGroup {
                group,
                change,
                reply,
            } => self.job(Job::ChangeGroup {
                group,
                change,
                reply,
            }),
            Command::SetRetention {
                contact,
                secs,
                reply,
            } => self.job(Job::SetRetention {
                contact,
                secs,
                reply,
            }),
            Command::GroupSend {
                group,
                bodies,
                reply,
            } => self.job(Job::GroupSend {
                group,
                bodies,
                reply,
            }),
            Command::Groups { reply } => self.job(Job::Groups { reply }),
            Command::Contacts { reply } => self.job(Job::Contacts { reply }),
            Command::RemoveContact { key, reply } => self.job(Job::RemoveContact { key, reply }),
            Command::Export { with, path, reply } => self.job(Job::Export { with, path, reply }),
            Command::VerifyContact {
                key,
                verified,
                reply,
            } => self.job(Job::VerifyContact {
                key,
                verified,
                reply,
            }),
            Command::Queued { reply } => self.job(Job::Queued { reply }),
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.net.listen_addrs());
            }
            Command::Dial { addr, reply } => {
                let _ = reply.send(self.net.dial(addr).map_err(Into::into));
            }
            Command::SetPresence { state, reply } => {
                if state != self.presence {
                    self.presence = state;
                    self.beacon();
                }
                let _ = reply.send(());
            }
            Command::HidePresence { hidden, reply } => {
                if hidden && !self.hidden {
                    // Say goodbye once, then stay silent.
                    self.publish_beacon(PresenceState::Offline);
                }
                self.hidden = hidden;
                if !hidden {
                    self.beacon();
                }
                let _ = reply.send(());
            }
            Command::Presence { contact, reply } => {
                let _ = reply.send(self.tracker.get(&contact).map(|s| (s.state, s.at_ms)));
            }
            Command::Status { reply } => {
                let _ = reply.send(Status {
                    connected: self.net.swarm().connected_peers().copied().collect(),
                    listen: self.net.listen_addrs(),
                    presence: self.presence,
                    hidden: self.hidden,
                    relays: self.relays.keys().copied().collect(),
                });
            }
            Command::Shutdown { .. } => {}
        }
    }

    fn beacon(&mut self) {
        if !self.hidden {
            self.publish_beacon(self.presence);
        }
    }

    fn publish_beacon(&mut self, state: PresenceState) {
        // Strictly increasing, so two beacons in the same millisecond
        // (online, then hidden) keep their order at every receiver.
        self.last_beacon_ms = presence::now_ms().max(self.last_beacon_ms + 1);
        let b = Beacon::new(&self.identity, state, self.last_beacon_ms);
        match self.net.publish(&Topic::Presence, b.to_bytes()) {
            Ok(p) => debug!(?state, outcome = ?p, "presence beacon"),
            Err(e) => warn!(error = %e, "presence beacon not published"),
        }
    }

    fn out(&mut self, out: Out) {
        match out {
            Out::Direct { peer, frames } => {
                self.queues.entry(peer).or_default().extend(frames);
                self.pump(peer);
            }
            Out::Publish {
                mailbox,
                envelope,
                pos,
            } => {
                let topic = self.net.inbox_topic(&mailbox);
                let outcome = self.net.publish(&topic, envelope);
                match (&outcome, pos) {
                    (Ok(Published::Sent(_)), Some(pos)) => self.job(Job::Published(vec![pos])),
                    (Ok(Published::Sent(_)), None) => {}
                    // Not out: the outbox retries queued messages after
                    // their backoff; receipts are sent again when the
                    // peer retries the message they answer.
                    (Ok(p), _) => debug!(outcome = ?p, "envelope not published now"),
                    (Err(e), _) => warn!(error = %e, "envelope not published"),
                }
            }
            Out::Respond { token, statuses } => {
                if let Some((responder, peer, bytes)) = self.responses.remove(&token) {
                    if let std::collections::hash_map::Entry::Occupied(mut e) =
                        self.peer_backlog.entry(peer)
                    {
                        *e.get_mut() = e.get().saturating_sub(bytes);
                        if *e.get() == 0 {
                            e.remove();
                        }
                    }
                    self.respond(responder, Ack { statuses });
                }
            }
            Out::FetchMedia {
                message,
                peer,
                names,
            } => self.fetch_media(message, peer, names),
            Out::ServeMedia { token, chunk } => self.serve_media(token, chunk),
            Out::Mailbox {
                relay,
                addrs,
                request,
                purpose,
            } => {
                for a in addrs {
                    self.net.add_address(&relay, a);
                }
                self.send_mailbox(relay, request, purpose);
            }
            Out::Subscribe { topic } => {
                if self.group_topics.insert(topic)
                    && let Err(e) = self.net.subscribe(&Topic::Group(topic))
                {
                    warn!(error = %e, "joining a group's topic");
                }
            }
            Out::GroupKeys { group, keys } => {
                if keys.is_empty() {
                    self.group_keys.remove(&group);
                } else {
                    self.group_keys.insert(group, keys);
                }
            }
            Out::Unsubscribe { topic } => {
                if self.group_topics.remove(&topic) {
                    self.net.unsubscribe(&Topic::Group(topic));
                }
            }
            Out::GroupPublish {
                topic,
                message,
                members,
            } => {
                // Flood publishing sends it to every peer on the topic: if
                // every other member is one, nobody needs to forward it.
                let on_topic: HashSet<PeerId> = self
                    .net
                    .topic_peers(&Topic::Group(topic))
                    .into_iter()
                    .collect();
                let reached_all = members
                    .iter()
                    .all(|p| p.is_some_and(|p| on_topic.contains(&p)));
                let frame = super::groups::gossip_frame(&message, reached_all);
                // Ours too, so a copy coming back is known (by the signed
                // message: the frame's flag is not signed).
                self.seen.insert(Envelope::hash(&message));
                match self.net.publish(&Topic::Group(topic), frame) {
                    Ok(p) => debug!(outcome = ?p, reached_all, "group message published"),
                    // Each member's copy waits in the outbox for its
                    // acknowledgement: the fallback sends it 1:1.
                    Err(e) => debug!(error = %e, "group message not published"),
                }
            }
            Out::Forget { key, peer } => {
                self.peers.remove(&peer);
                if !self.relays.contains_key(&peer) {
                    self.net.unprotect(&peer);
                }
                self.tracker.unwatch(&key);
            }
            Out::Contact { key, peer, addrs } => {
                self.peers.insert(peer, key);
                // Its connections are never closed to make room.
                self.net.protect(peer);
                self.tracker.watch(key);
                if !self.net.is_connected(&peer) && !addrs.is_empty() {
                    for a in &addrs {
                        self.net.add_address(&peer, a.clone());
                    }
                    if let Err(e) = self.net.dial_peer(peer, addrs) {
                        debug!(%peer, error = %e, "dialling a contact");
                    }
                }
            }
        }
    }

    /// Sends a mailbox request: a deposit on the relay's mailbox stream,
    /// anything else (or a deposit to a relay without the stream protocol)
    /// by request-response.
    fn send_mailbox(&mut self, relay: PeerId, request: Request, purpose: Purpose) {
        let request = match request {
            Request::Deposit(_) => match self.links.send(relay, request) {
                Ok(id) => {
                    self.link_in_flight.insert(id, (relay, purpose));
                    return;
                }
                Err(back) => *back,
            },
            other => other,
        };
        let id = self.net.send_mailbox(&relay, request);
        self.mailbox_in_flight.insert(id, (relay, purpose));
    }

    fn link_event(&mut self, ev: EventOf<MailboxCodec>) {
        match ev {
            LinkEvent::Answer {
                peer: relay,
                id,
                answer,
            } => {
                if let Some((relay, purpose)) = self.link_in_flight.remove(&id) {
                    self.job(Job::Mailbox {
                        relay,
                        purpose,
                        answer,
                    });
                } else {
                    debug!(%relay, id, "an answer on a mailbox stream to nothing sent");
                }
            }
            LinkEvent::Unsupported {
                peer: relay,
                requests,
            } => {
                debug!(%relay, "relay without mailbox streams; request-response it is");
                self.links.unsupported(relay);
                for (id, request) in requests {
                    if let Some((relay, purpose)) = self.link_in_flight.remove(&id) {
                        self.send_mailbox(relay, request, purpose);
                    }
                }
            }
            LinkEvent::Closed { peer, generation } => self.links.closed(peer, generation),
        }
    }

    fn direct_link_event(&mut self, ev: EventOf<direct::StreamCodec>) {
        match ev {
            LinkEvent::Answer { peer, id, answer } => {
                let Some((_, positions)) = self.direct_in_flight.remove(&id) else {
                    return;
                };
                match answer {
                    Ok(ack) => self.direct_acked(peer, positions, ack),
                    Err(error) => self.direct_failed(peer, positions, &error),
                }
            }
            LinkEvent::Unsupported { peer, requests } => {
                debug!(%peer, "peer without direct streams; request-response it is");
                self.direct_links.unsupported(peer);
                for (id, batch) in requests {
                    if let Some((peer, positions)) = self.direct_in_flight.remove(&id) {
                        self.send_direct_request(peer, batch, positions);
                    }
                }
            }
            LinkEvent::Closed { peer, generation } => self.direct_links.closed(peer, generation),
        }
    }

    /// A batch a peer sent on its direct stream to us.
    fn inbound(&mut self, ev: Inbound) {
        match ev {
            Inbound::Batch { peer, batch, reply } => {
                self.direct_batch(peer, batch.frames, Responder::Stream(reply))
            }
            Inbound::Refused { peer, why } => {
                if let Some(skipped) =
                    self.complaints
                        .note(&peer, "direct stream refused", Instant::now())
                {
                    warn!(%peer, skipped, %why, "direct stream refused");
                }
            }
        }
    }

    /// With no relay configured or found yet, asks the DHT for some (at
    /// most every [`FIND_RELAYS_EVERY`]).
    fn search_relays(&mut self) {
        if !self.cfg.find_relays
            || !self.relays.is_empty()
            || self
                .last_relay_search
                .is_some_and(|t| t.elapsed() < FIND_RELAYS_EVERY)
        {
            return;
        }
        self.last_relay_search = Some(Instant::now());
        self.net.find_relays();
    }

    /// Takes relays the DHT named as ours (up to [`FOUND_RELAYS`]).
    fn relays_found(&mut self, found: Vec<PeerId>) {
        let me = self.net.local_peer_id();
        let mut new = Vec::new();
        for peer in found {
            if self.relays.len() >= FOUND_RELAYS || peer == me || self.relays.contains_key(&peer) {
                continue;
            }
            info!(relay = %peer, "relay found in the DHT");
            let addrs = self.net.known_addresses(&peer);
            if let Err(e) = self.net.dial_peer(peer, addrs.clone()) {
                debug!(%peer, error = %e, "dialling a found relay");
            }
            if addrs.is_empty() {
                // Its address, for our invites and for redialling.
                self.net.find_peer(peer);
            }
            self.net.protect(peer);
            self.relays.insert(peer, addrs.clone());
            new.push((peer, addrs));
        }
        if !new.is_empty() {
            self.job(Job::RelaysFound(new.iter().map(|(p, _)| *p).collect()));
            for (relay, addrs) in new {
                if !addrs.is_empty() {
                    self.job(Job::RelayAddrs { relay, addrs });
                }
                if self.net.is_connected(&relay) {
                    self.job(Job::RelayUp(relay));
                }
                self.emit(NodeEvent::RelayFound { relay });
            }
        }
    }

    /// Dials our relays that are not connected (at most every few seconds).
    fn redial_relays(&mut self) {
        if self.last_redial.elapsed() < RELAY_REDIAL {
            return;
        }
        self.last_redial = Instant::now();
        for (peer, addrs) in &self.relays {
            if !self.net.is_connected(peer)
                && let Err(e) = self.net.dial_peer(*peer, addrs.clone())
            {
                debug!(%peer, error = %e, "dialling our relay");
            }
        }
        let connected: Vec<PeerId> = self
            .relays
            .keys()
            .filter(|p| self.net.is_connected(p))
            .copied()
            .collect();
        for relay in connected {
            self.reserve(relay, None);
        }
    }

    /// Asks `relay` (one of ours, connected) for a circuit reservation
    /// unless one is held or asked for, or the last one closed lately.
    /// `seen`: the address we reached it at, if its own are not known.
    fn reserve(&mut self, relay: PeerId, seen: Option<&Multiaddr>) {
        if !self.cfg.reserve_circuits
            || self.circuits.contains_key(&relay)
            || self
                .circuit_retry
                .get(&relay)
                .is_some_and(|t| Instant::now() < *t)
        {
            return;
        }
        let known = self.relays.get(&relay).and_then(|a| a.first()).cloned();
        let Some(addr) = known
            .or_else(|| self.net.known_addresses(&relay).into_iter().next())
            .or_else(|| seen.cloned())
        else {
            return;
        };
        match self.net.reserve_on(relay, &addr) {
            Ok(listener) => {
                debug!(%relay, "asking our relay for a circuit reservation");
                self.circuits.insert(relay, listener);
            }
            Err(e) => {
                debug!(%relay, error = %e, "circuit reservation not asked");
                self.circuit_retry
                    .insert(relay, Instant::now() + CIRCUIT_RETRY);
            }
        }
    }

    /// Sends the next batch to `peer` if none is in flight.
    fn pump(&mut self, peer: PeerId) {
        if self.busy.contains(&peer) {
            return;
        }
        let limits = self.cfg.net.direct_limits;
        // A batch the peer would refuse fails alone; the next goes on.
        loop {
            let Some(queue) = self.queues.get_mut(&peer) else {
                return;
            };
            let mut frames = Vec::new();
            let mut positions = Vec::new();
            let mut bytes = 0usize;
            while let Some((_, f)) = queue.front() {
                if frames.len() >= limits.max_frames
                    || (!frames.is_empty() && bytes + f.len() > limits.max_batch_bytes)
                {
                    break;
                }
                let Some((pos, f)) = queue.pop_front() else {
                    break;
                };
                bytes += f.len();
                frames.push(f);
                positions.push(pos);
            }
            if queue.is_empty() {
                self.queues.remove(&peer);
            }
            if frames.is_empty() {
                return;
            }
            let batch = direct::Batch::new(frames);
            // What the peer would refuse fails here, as request-response's
            // send does, rather than break the stream.
            if let Err(e) = batch.check(&limits) {
                warn!(%peer, error = %e, "direct batch not sent");
                self.failed(positions);
                continue;
            }
            self.busy.insert(peer);
            match self.direct_links.send(peer, batch) {
                Ok(id) => {
                    self.direct_in_flight.insert(id, (peer, positions));
                }
                Err(batch) => self.send_direct_request(peer, *batch, positions),
            }
            return;
        }
    }

    /// Sends `batch` to `peer` by request-response (a peer without direct
    /// streams).
    fn send_direct_request(
        &mut self,
        peer: PeerId,
        batch: direct::Batch,
        positions: Vec<Option<u64>>,
    ) {
        match self.net.send_direct(&peer, batch) {
            Ok(id) => {
                self.busy.insert(peer);
                self.in_flight.insert(id, (peer, positions));
            }
            Err(e) => {
                warn!(%peer, error = %e, "direct batch not sent");
                self.busy.remove(&peer);
                self.failed(positions);
            }
        }
    }

    /// `peer` answered a batch of ours.
    fn direct_acked(&mut self, peer: PeerId, positions: Vec<Option<u64>>, ack: Ack) {
        self.busy.remove(&peer);
        let mut acked = Vec::new();
        let mut failed = Vec::new();
        for (i, pos) in positions.into_iter().enumerate() {
            match (ack.statuses.get(i), pos) {
                (Some(FrameStatus::Accepted | FrameStatus::Duplicate), Some(p)) => acked.push(p),
                (_, Some(p)) => failed.push(Some(p)),
                (_, None) => {}
            }
        }
        if !acked.is_empty() {
            self.job(Job::Acked(acked));
        }
        self.failed(failed);
        self.pump(peer);
    }

    /// A batch of ours to `peer` got no answer.
    fn direct_failed(&mut self, peer: PeerId, positions: Vec<Option<u64>>, error: &str) {
        debug!(%peer, %error, "direct batch failed");
        self.busy.remove(&peer);
        self.failed(positions);
        self.pump(peer);
    }

    /// Answers a batch a peer sent us.
    fn respond(&mut self, responder: Responder, ack: Ack) {
        match responder {
            Responder::Request(channel) => {
                if self.net.respond_direct(channel, ack).is_err() {
                    debug!("direct ack not sent: the peer's stream closed");
                }
            }
            Responder::Stream(reply) => reply.send(ack),
        }
    }

    /// A batch `peer` sent us (by request or on its stream), answered
    /// through `responder`.
    fn direct_batch(&mut self, peer: PeerId, frames: Vec<Vec<u8>>, responder: Responder) {
        // Only contacts write to us directly, and the store thread refuses
        // the rest; but it may know a contact a moment before this task
        // does (one just added, a group's new member), so a device not
        // known here gets through only small batches, within one budget
        // shared by all such devices: strangers cannot fill the store
        // thread's queue.
        if !self.peers.contains_key(&peer)
            && (frames.iter().map(Vec::len).sum::<usize>() > STRANGER_BATCH
                || !self
                    .stranger_rate
                    .allow(&self.net.local_peer_id(), Instant::now()))
        {
            if let Some(skipped) = self.complaints.note(
                &peer,
                "direct batch from a device that is not a contact",
                Instant::now(),
            ) {
                warn!(%peer, frames = frames.len(), skipped, "direct batch from a device that is not a contact");
            }
            self.respond(responder, Ack::all(FrameStatus::Rejected, frames.len()));
            return;
        }
        if !self.direct_rate.allow(&peer, Instant::now()) {
            if let Some(skipped) = self.complaints.note(
                &peer,
                "direct requests over the peer's rate; refused",
                Instant::now(),
            ) {
                warn!(%peer, skipped, "direct requests over the peer's rate; refused");
            }
            self.respond(responder, Ack::all(FrameStatus::Rejected, frames.len()));
            return;
        }
        if self.overloaded() {
            // No answer: the peer's request fails (a stream's batch is
            // answered Rejected when its reply is dropped) and it retries.
            debug!(%peer, "store thread behind; direct batch dropped");
            return;
        }
        // One peer may fill only a share of the store thread's queue, so
        // that a contact sending large batches as fast as it can does not
        // crowd out the others; dropped like an overload.
        let bytes: usize = frames.iter().map(Vec::len).sum();
        let waiting = self.peer_backlog.get(&peer).copied().unwrap_or(0);
        // (A peer with nothing waiting always gets one batch in, whatever
        // the settings, or one batch over the share would shut it out.)
        if waiting > 0
            && waiting.saturating_add(bytes) > self.cfg.max_backlog_bytes / PEER_BACKLOG_SHARE
        {
            debug!(%peer, waiting, "the peer's share of the store thread's queue is full; direct batch dropped");
            return;
        }
        *self.peer_backlog.entry(peer).or_default() += bytes;
        let token = self.next_token;
        self.next_token += 1;
        self.responses.insert(token, (responder, peer, bytes));
        self.job(Job::Direct {
            peer,
            frames,
            token,
        });
    }

    fn failed(&self, positions: Vec<Option<u64>>) {
        let p: Vec<u64> = positions.into_iter().flatten().collect();
        if !p.is_empty() {
            self.job(Job::Failed(p));
        }
    }

    fn net_event(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::Listening { addr } => {
                info!(%addr, "listening");
                self.emit(NodeEvent::Listening { addr });
            }
            NetEvent::Connected { peer, addr } => {
                if let Ok(mut c) = self.shared.connected.write() {
                    c.insert(peer);
                }
                if self.peers.contains_key(&peer) {
                    self.job(Job::PeerUp(peer));
                }
                if self.relays.contains_key(&peer) {
                    self.job(Job::RelayUp(peer));
                    if !addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
                        self.reserve(peer, Some(&addr));
                    }
                }
                self.emit(NodeEvent::Connected { peer });
            }
            NetEvent::Disconnected { peer } => {
                if let Ok(mut c) = self.shared.connected.write() {
                    c.remove(&peer);
                }
                if let Some(q) = self.queues.remove(&peer) {
                    self.failed(q.into_iter().map(|(p, _)| p).collect());
                }
                // Its rate bucket stays (the limiter is bounded): a peer
                // does not get a fresh burst by reconnecting.
                if self.relays.contains_key(&peer) {
                    self.job(Job::RelayDown(peer));
                }
                self.emit(NodeEvent::Disconnected { peer });
            }
            // A new subscriber hears us at once, not at the next heartbeat:
            // a contact at most once a second, anyone else at most once a
            // quarter of the heartbeat (a peer that subscribes again and
            // again must not make every node beacon each second).
            NetEvent::Subscribed {
                topic: Topic::Presence,
                peer,
            } if self
                .last_beacon_ms
                .saturating_add(if self.peers.contains_key(&peer) {
                    1000
                } else {
                    u64::try_from(self.cfg.presence.heartbeat.as_millis() / 4).unwrap_or(u64::MAX)
                })
                <= presence::now_ms() =>
            {
                self.beacon()
            }
            NetEvent::Gossip(msg) => self.gossip(msg),
            NetEvent::DirectRequest {
                peer,
                batch,
                channel,
            } => self.direct_batch(peer, batch.frames, Responder::Request(channel)),
            NetEvent::DirectAck { peer, request, ack } => {
                if let Some((_, positions)) = self.in_flight.remove(&request) {
                    self.direct_acked(peer, positions, ack);
                }
            }
            // A node holds nobody's mail: say so rather than let the
            // request time out.
            NetEvent::MailboxRequest { channel, .. } => {
                let refused =
                    crate::relay::proto::Response::Refused(crate::relay::proto::Refusal::NotRelay);
                let _ = self.net.respond_mailbox(channel, refused);
            }
            NetEvent::Bootstrapped { ok: true } => {
                self.last_relay_search = None;
                self.search_relays();
            }
            NetEvent::RelaysFound { relays } => self.relays_found(relays),
            NetEvent::RelayReserved { relay } => {
                info!(%relay, "reachable through our relay's circuit");
                self.circuit_retry.remove(&relay);
                self.emit(NodeEvent::RelayReserved { relay });
            }
            NetEvent::ListenerClosed { listener } => {
                let closed: Vec<PeerId> = self
                    .circuits
                    .iter()
                    .filter(|(_, l)| **l == listener)
                    .map(|(p, _)| *p)
                    .collect();
                for relay in closed {
                    // Asked again once connected, not at once: a relay that
                    // refuses is not asked in a loop.
                    debug!(%relay, "circuit reservation closed");
                    self.circuits.remove(&relay);
                    self.circuit_retry
                        .insert(relay, Instant::now() + CIRCUIT_RETRY);
                }
            }
            NetEvent::PeerFound { peer, addrs } if self.relays.contains_key(&peer) => {
                for a in &addrs {
                    self.net.add_address(&peer, a.clone());
                }
                if !self.net.is_connected(&peer)
                    && let Err(e) = self.net.dial_peer(peer, addrs.clone())
                {
                    debug!(%peer, error = %e, "dialling a found relay");
                }
                self.relays.insert(peer, addrs.clone());
                self.job(Job::RelayAddrs { relay: peer, addrs });
            }
            NetEvent::MediaRequest {
                peer,
                name,
                channel,
            } => self.media_request(peer, name, channel),
            NetEvent::MediaAnswer {
                request, answer, ..
            } => self.media_answer(request, Some(answer)),
            NetEvent::MediaFailed { request, .. } => self.media_answer(request, None),
            NetEvent::MailboxResponse {
                request, response, ..
            } => {
                if let Some((relay, purpose)) = self.mailbox_in_flight.remove(&request) {
                    self.job(Job::Mailbox {
                        relay,
                        purpose,
                        answer: Ok(response),
                    });
                }
            }
            NetEvent::MailboxFailed { request, error, .. } => {
                if let Some((relay, purpose)) = self.mailbox_in_flight.remove(&request) {
                    self.job(Job::Mailbox {
                        relay,
                        purpose,
                        answer: Err(error.to_string()),
                    });
                }
            }
            NetEvent::DirectFailed {
                peer,
                request,
                error,
            } => {
                if let Some((_, positions)) = self.in_flight.remove(&request) {
                    self.direct_failed(peer, positions, &error.to_string());
                }
            }
            _ => {}
        }
    }

    fn gossip(&mut self, msg: GossipMessage) {
        let verdict = self.net.check_gossip(&msg).and_then(|| match msg.topic {
            Topic::Inbox(_) => self.check_envelope(&msg.topic, &msg.data),
            Topic::Presence => self.check_beacon(&msg.data),
            Topic::Group(t) => self.check_group_message(&t, &msg.data, &msg.source),
        });
        // Refusals and a peer over its rate are logged (at most once a
        // period per peer and kind, see `Complaints`).
        let complaint = match &verdict {
            Verdict::Reject(reason) => Some(("gossip refused", reason)),
            Verdict::Ignore(reason @ Reason::RateLimited) => {
                Some(("gossip over the peer's rate", reason))
            }
            _ => None,
        };
        if let Some((what, reason)) = complaint
            && let Some(skipped) = self.complaints.note(&msg.source, what, Instant::now())
        {
            warn!(peer = %msg.source, topic = %msg.topic, ?reason, skipped, "{what}");
        }
        self.net.report_gossip(&msg.id, &msg.source, verdict);
    }

    fn check_envelope(&mut self, topic: &Topic, data: &[u8]) -> Verdict {
        let env = match envelope_checked(data, now_secs()) {
            Ok(env) => env,
            // Both depend on our clock as much as on the envelope: no
            // blame on whoever forwarded it.
            Err(crate::crypto::Error::Malformed {
                what: "envelope (expired)",
            }) => return Verdict::Ignore(Reason::Application("expired envelope")),
            Err(crate::crypto::Error::Malformed {
                what: "envelope (expiry too far ahead)",
            }) => return Verdict::Ignore(Reason::Application("envelope expiring too far ahead")),
            Err(_) => return Verdict::Reject(Reason::Application("malformed envelope")),
        };
        // Only on its mailbox's shard (so the shards split the load; a
        // node with another shard count is not blamed).
        if self.net.inbox_topic(&env.mailbox_id) != *topic {
            return Verdict::Ignore(Reason::Application("envelope on another inbox shard"));
        }
        // Known by its mailbox and what is sealed: the envelope id and
        // expiry around them are not authenticated, and a copy with either
        // changed is no new message (the recipient would answer it again).
        // The mailbox is in it, or a copy sent to another mailbox first
        // would make the real one look like a replay.
        let known = {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            h.update(env.mailbox_id);
            h.update(&env.sealed);
            h.finalize().into()
        };
        if !self.seen.insert(known) {
            return Verdict::Ignore(Reason::Application("replayed envelope"));
        }
        if env.mailbox_id == self.mailbox_id {
            if self.overloaded() {
                // The sender's outbox publishes it again (the same bytes):
                // not seen, so that copy is taken.
                self.seen.remove(&known);
                return Verdict::Ignore(Reason::Application("store thread behind"));
            }
            self.job(Job::Envelope(env));
        }
        Verdict::Accept
    }

    /// A group message is forwarded if it is well formed, belongs to the
    /// topic it came on, is new, and its author did not reach every member
    /// itself; the store thread decrypts it (and checks its signature) if
    /// we are in that group.
    fn check_group_message(&mut self, topic: &[u8; 32], data: &[u8], source: &PeerId) -> Verdict {
        if !self.group_topics.contains(topic) {
            return Verdict::Ignore(Reason::Application("not our group"));
        }
        let Some((reached_all, message)) = super::groups::gossip_unframe(data) else {
            return Verdict::Reject(Reason::Application("malformed group gossip"));
        };
        let Ok(msg) = crate::crypto::SenderKeyMessage::from_bytes(message) else {
            return Verdict::Reject(Reason::Application("malformed group message"));
        };
        if &super::groups::topic_id(&msg.group_id) != topic {
            return Verdict::Reject(Reason::Application("group message on another topic"));
        }
        // Known by the signed message, not the frame around it.
        let known = Envelope::hash(message);
        if !self.seen.insert(known) {
            if !reached_all && self.held_back.remove(&known) {
                // Held back only because its first copy said every member
                // had it (a flag anyone carrying it may set): this one
                // does not, so it goes on, already handled here.
                return match self.forwardable(&msg) {
                    Signed::Forged => {
                        Verdict::Reject(Reason::Application("group message with a bad signature"))
                    }
                    Signed::Holds | Signed::Unknown => Verdict::Accept,
                };
            }
            return Verdict::Ignore(Reason::Application("replayed group message"));
        }
        // Checked only if it is to go on: one its author flagged as
        // reaching every member is checked by the store thread alone.
        if !reached_all {
            match self.forwardable(&msg) {
                Signed::Forged => {
                    // Not forwarded, but still read: a member may have
                    // passed off a key under another's key id, and the
                    // store thread tries every key with that id.
                    if !self.overloaded() {
                        self.job(Job::GroupMessage(message.to_vec()));
                    }
                    return Verdict::Reject(Reason::Application(
                        "group message with a bad signature",
                    ));
                }
                Signed::Unknown if !self.unknown_key_rate.allow(source, Instant::now()) => {
                    // Group messages under keys not known here, past the
                    // peer's budget for them.
                    return Verdict::Ignore(Reason::RateLimited);
                }
                Signed::Holds | Signed::Unknown => {}
            }
        }
        if self.overloaded() {
            // Its author's outbox sends it 1:1 when no receipt comes.
            return Verdict::Ignore(Reason::Application("store thread behind"));
        }
        self.job(Job::GroupMessage(message.to_vec()));
        if reached_all {
            self.held_back.insert(known);
            return Verdict::Ignore(Reason::Application("every member has it from its author"));
        }
        Verdict::Accept
    }

    /// What a group message's signature says: under a key we know, whether
    /// its owner's signature holds; or that the key is not known here (its
    /// distribution still on its way, or no such key).
    fn forwardable(&self, msg: &crate::crypto::SenderKeyMessage) -> Signed {
        let Some(keys) = self.group_keys.get(&msg.group_id) else {
            return Signed::Unknown;
        };
        let mut under = keys
            .iter()
            .filter(|(id, _, _)| *id == msg.key_id)
            .peekable();
        if under.peek().is_none() {
            return Signed::Unknown;
        }
        if under.any(|(_, owner, key)| msg.verify_signature(owner, key).is_ok()) {
            Signed::Holds
        } else {
            Signed::Forged
        }
    }

    fn check_beacon(&mut self, data: &[u8]) -> Verdict {
        let Ok(b) = Beacon::from_bytes(data) else {
            return Verdict::Reject(Reason::Application("bad presence beacon"));
        };
        let now = presence::now_ms();
        if b.at_ms > now.saturating_add(MAX_CLOCK_SKEW_MS) {
            return Verdict::Reject(Reason::Application("presence beacon from the future"));
        }
        // Older than a contact's expiry: it says nothing about now (and may
        // be a replay from past gossipsub's duplicate window).
        let window = self.cfg.presence.expiry.min(STALE_BEACON);
        let expiry_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        if b.at_ms.saturating_add(expiry_ms) < now {
            return Verdict::Ignore(Reason::Application("stale presence beacon"));
        }
        if b.device == self.identity.public().signing {
            return Verdict::Ignore(Reason::Application("our own beacon"));
        }
        let shown = self.tracker.on_beacon(&b, Instant::now());
        tracing::trace!(state = ?b.state, at_ms = b.at_ms, changed = shown.is_some(), "beacon");
        if let Some(e) = shown {
            self.emit(e);
        }
        Verdict::Accept
    }

    /// Whether something we sent waits for its answer: a direct batch, or
    /// a frame left with a relay (fetches, which wait at the relay, do not
    /// count).
    fn sending(&self) -> bool {
        !self.busy.is_empty()
            || !self.queues.is_empty()
            || !self.link_in_flight.is_empty()
            || self
                .mailbox_in_flight
                .values()
                .any(|(_, purpose)| matches!(purpose, Purpose::Deposit { .. } | Purpose::Forward))
    }

    /// Says goodbye, lets the store thread finish and flush, stops.
    async fn shutdown(&mut self) {
        let deadline = tokio::time::Instant::now() + self.cfg.shutdown_timeout;
        if !self.hidden {
            self.publish_beacon(PresenceState::Offline);
        }
        // The store thread handles what is queued before it, flushes and
        // exits; the handle waits for that.
        self.job(Job::Stop);
        // Keep the swarm moving until the store thread is done, what it
        // handed over has been answered, and a moment more (gossip has no
        // answer), so that the goodbye and what its last rounds send
        // (answers, receipts held back to go together, replies) leave. A
        // batch waits behind the one in flight to its peer, so answers to
        // ours are taken; new work from peers is not.
        let grace = Duration::from_millis(200);
        let mut worker_done = false;
        let mut quiet_since: Option<tokio::time::Instant> = None;
        loop {
            if worker_done && !self.sending() {
                let since = *quiet_since.get_or_insert_with(tokio::time::Instant::now);
                if since + grace <= tokio::time::Instant::now() {
                    break;
                }
            } else {
                quiet_since = None;
            }
            let wake = quiet_since.map_or(deadline, |q| (q + grace).min(deadline));
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = tokio::time::sleep_until(wake) => {}
                out = self.outs.recv(), if !worker_done => match out {
                    Some(
                        out @ (Out::Respond { .. }
                        | Out::Direct { .. }
                        | Out::Publish { .. }
                        | Out::GroupPublish { .. }
                        | Out::Mailbox { .. }),
                    ) => self.out(out),
                    Some(_) => {}
                    None => worker_done = true,
                },
                ev = self.net.next_event() => {
                    // Answers to what we sent; not new work while stopping.
                    if let ev @ (NetEvent::DirectAck { .. }
                    | NetEvent::DirectFailed { .. }
                    | NetEvent::Disconnected { .. }
                    | NetEvent::MailboxResponse { .. }
                    | NetEvent::MailboxFailed { .. }
                    | NetEvent::MailboxRequest { .. }) = ev
                    {
                        self.net_event(ev);
                    }
                }
                Some(ev) = self.direct_events.recv() => self.direct_link_event(ev),
                Some(ev) = self.link_events.recv() => self.link_event(ev),
            }
        }
        info!(peer = %self.net.local_peer_id(), "node stopped");
    }
}

impl std::fmt::Debug for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Actor")
            .field("net", &self.net)
            .finish_non_exhaustive()
    }
}

/// Listening addresses as text, with our peer id (for invites).
fn with_peer(addrs: &[Multiaddr], peer: PeerId) -> Vec<String> {
    addrs
        .iter()
        .map(|a| match a.iter().last() {
            // A circuit listen address names us already.
            Some(Protocol::P2p(p)) if p == peer => a.to_string(),
            _ => a.clone().with(Protocol::P2p(peer)).to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An id forgotten (an envelope for us that the store thread had no
    /// room for) is taken again, and keeps one place in the order.
    #[test]
    fn a_seen_id_forgotten_is_taken_again() {
        let mut seen = SeenSet::default();
        assert!(seen.insert([1; 32]));
        assert!(!seen.insert([1; 32]), "a replay");
        assert!(seen.remove(&[1; 32]));
        assert!(!seen.remove(&[1; 32]));
        assert!(seen.insert([1; 32]), "its copy is taken");
        assert_eq!(seen.order.len(), 1);
    }
}
