//! The store thread: the [`Engine`] runs here, away from the swarm's task,
//! and commits in groups.
//!
//! One round: take every job waiting (up to [`MAX_ROUND`]), handle them all,
//! flush the store once, and only then answer — the handle's callers, the
//! peers waiting for a direct ack, the event stream. Nothing anyone is told
//! about is ahead of the disk. A flush that fails stops the node: nothing
//! is acknowledged, peers keep their copies and retry.
//!
//! One thing leaves before the flush: a new message to a connected contact
//! whose key no restart can use again ([`super::engine::Sent::early`]),
//! handed to the swarm's task as soon as it is encrypted, so that it
//! travels while its round is written and goes to disk. Its caller still
//! hears "sent" after the flush.
//!
//! A round that tells nobody anything but "delivered" (a direct ack, a
//! receipt) does not flush: that event reports what is on the contact's
//! disk, not ours. Its writes (the outbox entry gone, the state moved on)
//! go to disk with the next round's flush, or after [`FLUSH_DEFER`] at the
//! latest (sooner if the event stream is full); a crash before that only
//! makes the message go out again, and the contact, which has it,
//! acknowledges it again. The sender's own flush is then off the path of
//! a receipt. "Read" is not deferred: a contact sends it once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, mpsc as std_mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use super::complaints::Complaints;
use super::engine::{
    Engine, EngineError, Event, Forgotten, GROUP_RECEIPT_DELAY, GROUP_RECEIPT_JITTER, GroupChange,
    GroupEffects, GroupInfo, Handled, Joined, Opened, Sent, check_intro,
};
use super::error::NodeError;
use super::events::NodeEvent;
use super::handle::{ContactInfo, ContactRequest, DevicesInfo};
use super::media::MediaJob;
use super::net::direct::FrameStatus;
use super::proto::Frame;
use super::requests::{
    Introduced, Requests, declined_key, former_key, held_key, held_prefix, request_key,
};
use super::state::{Invite, LinkCode};
use crate::crypto::{Envelope, PublicIdentity, fingerprint, safety_number};
use crate::relay::proto::{self as mailbox, MAX_ACK, Owner, Refusal, Request, Response, Signed};
use crate::store::{Cursor, DeliveryState, Kind, MessageRef, Page, Summary};

mod media;
mod relayed;

/// Most jobs handled in one round (one flush).
pub(crate) const MAX_ROUND: usize = 1024;
/// Most queued messages re-sent per tick.
pub(crate) const RETRY_BATCH: usize = 512;
/// Longest the writes of rounds that told nobody anything needing them
/// on disk (see the module's documentation) wait for a flush.
const FLUSH_DEFER: Duration = Duration::from_millis(20);
/// How long a message handed to a direct connection waits before the
/// schedule tries it again (seconds). The swarm's task reports every such
/// frame back — acknowledged, refused, or failed with its connection or
/// request — so this only covers a report lost with the task itself; it
/// is long so that a long queue behind a slow peer is not sent twice.
pub(crate) const DIRECT_WAIT: u64 = super::retry::MAX_RETRY;

type Reply<T> = oneshot::Sender<Result<T, NodeError>>;
/// One caller's messages and where their references go.
type SendCall = (Vec<Vec<u8>>, Reply<Vec<MessageRef>>);

/// A frame with its outbox position (None: not queued, e.g. a receipt).
pub(crate) type Outgoing = (Option<u64>, Vec<u8>);

/// Most envelopes asked for in one fetch from our relays.
const FETCH_LIMIT: u16 = 1024;
/// Frames of one contact from a fetch handled in one call (and answered
/// by one delivered receipt).
const RECEIVE_CHUNK: usize = 256;
/// How often a contact not heard from since the start is introduced to
/// us again while messages to it are retried (seconds).
const INTRO_EVERY: u64 = 2;
/// How long after dialling a new fellow group member what we queue for
/// it waits for that connection rather than going sealed on the mesh
/// (seconds). A group's members meet all at once: sealed, their first
/// frames to each other would flood every member's inbox topic.
const DIAL_GRACE: u64 = 10;
/// Most contacts remembered as being dialled (a group's members at most,
/// in practice).
const MAX_DIALLING: usize = 1024;
/// How long a fetch waits at the relay for new mail (seconds).
const FETCH_WAIT: u16 = 20;
/// After a fetch failed, how long before the tick asks again (seconds).
const FETCH_RETRY: u64 = 5;
/// Seconds before a fetch the relay refused (for another reason than its
/// load) is asked again.
const FETCH_REFUSED_RETRY: u64 = 60;
/// Seconds a session we started may go unanswered before the contact's
/// relay is asked for a fresher bundle; the wait doubles after each ask,
/// up to the signed prekey's rotation period (each ask takes one of the
/// contact's one-time prekeys at the relay).
const BUNDLE_ASK_FIRST: u64 = 3600;
const BUNDLE_ASK_MAX: u64 = crate::crypto::limits::SIGNED_PREKEY_ROTATION_SECS;
/// Seconds between publishing our prekeys again to a relay we stay
/// connected to.
const REPUBLISH_EVERY: u64 = 24 * 3600;
/// When a relay of ours holds fewer one-time prekeys than this...
const ONE_TIME_LOW: u32 = 10;
/// ...this many new ones are published to it.
const ONE_TIME_TOP_UP: usize = 20;

/// What a mailbox request to a relay was for.
#[derive(Debug, Clone)]
pub(crate) enum Purpose {
    /// Fetching our own mail (the fetch's number, see `Relays::fetching`).
    Fetch { id: u64 },
    /// Deleting fetched mail: these sequence numbers.
    Ack { seqs: Vec<u64> },
    /// Holding the queued message at `pos` for its recipient `to`.
    Deposit {
        pos: u64,
        to: [u8; 32],
        envelope: Vec<u8>,
    },
    /// Holding chunks of the file the queued message at `pos` carries,
    /// for its recipient (envelopes with these digests).
    Chunks { pos: u64, digests: Vec<[u8; 32]> },
    /// Holding an unqueued frame (a receipt) for its recipient: sent once.
    Forward,
    /// Publishing our prekeys (`topped_up`: with new one-time prekeys).
    Publish { topped_up: bool },
    /// Fetching the prekeys of the contact whose identity key this is.
    Prekeys { contact: [u8; 32] },
}

/// What the person does with contact requests.
pub(crate) enum RequestJob {
    List {
        reply: Reply<Vec<ContactRequest>>,
    },
    Accept {
        key: [u8; 32],
        name: String,
        reply: Reply<()>,
    },
    Decline {
        key: [u8; 32],
        reply: Reply<()>,
    },
}

/// This account's device list: read, or this device named.
pub(crate) enum DevicesJob {
    List {
        reply: Reply<DevicesInfo>,
    },
    Name {
        name: String,
        reply: Reply<DevicesInfo>,
    },
    /// A link code for a new device (see `Engine::link_code`).
    Link {
        addrs: Vec<String>,
        reply: Reply<String>,
    },
    /// Remove a device from this account (see `Engine::remove_device`).
    Remove {
        device: [u8; 32],
        reply: Reply<DevicesInfo>,
    },
    /// Join the account of the device that made `code`.
    Join {
        code: String,
        name: String,
        addrs: Vec<String>,
        reply: Reply<[u8; 32]>,
    },
}

/// A request to join an account, sent to its first device each time it
/// connects until it answers with the list or the code ends.
struct Joining {
    key: [u8; 32],
    peer: PeerId,
    frame: Vec<u8>,
    until: u64,
    /// When it last went out (0: not yet).
    sent_at: u64,
}

/// How often a request to join goes again while connected and unanswered
/// (its one batch may have been refused in a flood of strangers' batches).
const JOIN_AGAIN: u64 = 15;

/// Work for the store thread.
pub(crate) enum Job {
    Send {
        to: [u8; 32],
        bodies: Vec<Vec<u8>>,
        reply: Reply<Vec<MessageRef>>,
    },
    AddContact {
        code: String,
        name: String,
        /// Where we listen, for the introduction that goes to it.
        addrs: Vec<String>,
        reply: Reply<[u8; 32]>,
    },
    Requests(RequestJob),
    Devices(DevicesJob),
    Invite {
        addrs: Vec<String>,
        reply: Reply<String>,
    },
    MarkRead {
        with: [u8; 32],
        reply: Reply<bool>,
    },
    ClearHistory {
        with: [u8; 32],
        reply: Reply<usize>,
    },
    DeleteMessage {
        with: [u8; 32],
        message: MessageRef,
        reply: Reply<bool>,
    },
    History {
        with: [u8; 32],
        before: Option<Cursor>,
        limit: usize,
        reply: Reply<Page>,
    },
    Conversations {
        reply: Reply<Vec<Summary>>,
    },
    CreateGroup {
        name: String,
        me_name: String,
        members: Vec<[u8; 32]>,
        retention: Option<u64>,
        addrs: Vec<String>,
        reply: Reply<[u8; 32]>,
    },
    ChangeGroup {
        group: [u8; 32],
        change: GroupChange,
        reply: Reply<()>,
    },
    SetRetention {
        contact: [u8; 32],
        secs: Option<u64>,
        reply: Reply<()>,
    },
    GroupSend {
        group: [u8; 32],
        bodies: Vec<Vec<u8>>,
        reply: Reply<Vec<MessageRef>>,
    },
    Groups {
        reply: Reply<Vec<GroupInfo>>,
    },
    /// A message from a group's topic (checked for its form).
    GroupMessage(Vec<u8>),
    Contacts {
        reply: Reply<Vec<ContactInfo>>,
    },
    VerifyContact {
        key: [u8; 32],
        verified: bool,
        reply: Reply<()>,
    },
    RemoveContact {
        key: [u8; 32],
        reply: Reply<()>,
    },
    Export {
        with: Option<[u8; 32]>,
        path: std::path::PathBuf,
        reply: Reply<u64>,
    },
    Queued {
        reply: Reply<usize>,
    },
    /// A direct batch from `peer`; answered with [`Out::Respond`].
    Direct {
        peer: PeerId,
        frames: Vec<Vec<u8>>,
        token: u64,
    },
    /// An envelope for our mailbox, from the mesh.
    Envelope(Envelope),
    /// Direct acks: these outbox positions are delivered.
    Acked(Vec<u64>),
    /// Direct attempts that failed.
    Failed(Vec<u64>),
    /// Published on the mesh.
    Published(Vec<u64>),
    /// A contact's device connected.
    PeerUp(PeerId),
    /// One of our relays connected: fetch our mail.
    RelayUp(PeerId),
    /// One of our relays disconnected.
    RelayDown(PeerId),
    /// Relays found in the DHT become ours (and our invites name them).
    RelaysFound(Vec<PeerId>),
    /// Where one of our relays listens (our invites name it).
    RelayAddrs {
        relay: PeerId,
        addrs: Vec<Multiaddr>,
    },
    /// A relay answered (or did not) a mailbox request.
    Mailbox {
        relay: PeerId,
        purpose: Purpose,
        answer: Result<Response, String>,
    },
    /// Sending, fetching, serving and reading media.
    Media(MediaJob),
    /// Retries and expiries.
    Tick,
    /// Flush and stop.
    Stop,
}

impl Job {
    /// Bytes of network input this job holds (counted in
    /// [`Shared::backlog_bytes`] while it waits).
    pub(crate) fn network_bytes(&self) -> usize {
        match self {
            Self::Direct { frames, .. } => frames.iter().map(Vec::len).sum(),
            Self::Envelope(env) => env.sealed.len(),
            Self::GroupMessage(bytes) => bytes.len(),
            Self::Media(MediaJob::Chunk { chunk, .. }) => chunk.len(),
            _ => 0,
        }
    }
}

/// What the store thread asks the swarm's task to do.
#[derive(Debug)]
pub(crate) enum Out {
    /// Send these frames to `peer` (each with its outbox position, if any).
    Direct { peer: PeerId, frames: Vec<Outgoing> },
    /// Join a group's topic.
    Subscribe { topic: [u8; 32] },
    /// The sender keys now held for a group's members (the network task
    /// checks group messages' signatures with them before forwarding).
    GroupKeys {
        group: [u8; 32],
        keys: Vec<super::engine::GroupKey>,
    },
    /// Leave a group's topic.
    Unsubscribe { topic: [u8; 32] },
    /// Publish a group message on a group's topic.
    GroupPublish {
        topic: [u8; 32],
        message: Vec<u8>,
        /// The other members' peers (`None`: one not known).
        members: Vec<Option<PeerId>>,
    },
    /// Publish an envelope on the inbox topic of `mailbox`.
    Publish {
        mailbox: [u8; 32],
        envelope: Vec<u8>,
        pos: Option<u64>,
    },
    /// Answer the direct batch `token`.
    Respond {
        token: u64,
        statuses: Vec<FrameStatus>,
    },
    /// A contact (at start or just added): watch its presence, dial it.
    Contact {
        key: [u8; 32],
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    },
    /// A contact removed: stop watching it.
    Forget { key: [u8; 32], peer: PeerId },
    /// Fetch these chunks of the media message `message` from `peer`.
    FetchMedia {
        message: MessageRef,
        peer: PeerId,
        names: Vec<[u8; 32]>,
    },
    /// Answer the media request `token` (`None`: not here).
    ServeMedia { token: u64, chunk: Option<Vec<u8>> },
    /// A request to a relay (dialled at `addrs` if not connected).
    Mailbox {
        relay: PeerId,
        addrs: Vec<Multiaddr>,
        request: Request,
        purpose: Purpose,
    },
}

/// Shared between the swarm's task and the store thread.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Peers with an open connection (the path choice reads it).
    pub connected: RwLock<HashSet<PeerId>>,
    /// Jobs sent and not yet handled.
    pub backlog: AtomicUsize,
    /// Bytes of network input in them ([`Job::network_bytes`]).
    pub backlog_bytes: AtomicUsize,
}

impl Shared {
    fn is_connected(&self, peer: &PeerId) -> bool {
        self.connected
            .read()
            .map(|c| c.contains(peer))
            .unwrap_or(false)
    }
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Everything one round produced, released after the flush.
#[derive(Default)]
struct Round {
    replies: Vec<Box<dyn FnOnce() + Send>>,
    direct: HashMap<PeerId, Vec<Outgoing>>,
    outs: Vec<Out>,
    events: Vec<NodeEvent>,
    stop: bool,
    /// Something was written: flush before answering. A round of reads
    /// and idle ticks does not touch the disk.
    dirty: bool,
    /// Contacts this round has already routed a frame to (it leaves after
    /// the flush): a later message to them must not overtake it.
    routed: HashSet<[u8; 32]>,
    /// Events before this one have had their media messages recorded
    /// for fetching (`media_received`).
    media_seen: usize,
    /// A contact request (and what it holds), or a file chunk, could not
    /// be written: the mail being taken from a relay is not acknowledged.
    unkept: bool,
}

impl Round {
    fn reply<T: Send + 'static>(&mut self, to: Reply<T>, value: Result<T, NodeError>) {
        self.replies.push(Box::new(move || {
            let _ = to.send(value);
        }));
    }

    /// Whether this round tells anyone something that the disk must hold
    /// first: an answer, a frame or an ack for a peer, a command to the
    /// swarm's task, or an event other than a contact's "delivered".
    ///
    /// "Delivered" reports what is on the contact's disk (it acknowledged
    /// after its flush); should our record of it be lost, the message goes
    /// again and is acknowledged again. Not so "read", which a contact
    /// sends once (a read receipt on the mesh is not retried), nor a
    /// group's receipt counts, which carry reads too: those wait for the
    /// flush. A round that tells nothing at all (a stranger's envelope
    /// held, a piece of a file, a contact's note that missing messages
    /// will not come) needs no flush either: each of those comes again.
    fn needs_disk(&self) -> bool {
        self.stop
            || !self.replies.is_empty()
            || !self.direct.is_empty()
            || !self.outs.is_empty()
            || !self.events.iter().all(|e| {
                matches!(
                    e,
                    NodeEvent::Receipt {
                        state: DeliveryState::Delivered,
                        ..
                    }
                )
            })
    }
}

pub(crate) struct Worker {
    engine: Engine,
    jobs: std_mpsc::Receiver<Job>,
    outs: mpsc::UnboundedSender<Out>,
    events: mpsc::Sender<NodeEvent>,
    shared: Arc<Shared>,
    peers: HashMap<PeerId, [u8; 32]>,
    peer_of: HashMap<[u8; 32], PeerId>,
    /// Fingerprint and safety number per contact key (one entry per
    /// contact at most).
    numbers: HashMap<[u8; 32], (String, String)>,
    complaints: Complaints,
    relays: Relays,
    media: media::MediaState,
    /// Devices that introduced themselves and are not contacts.
    requests: Requests,
    /// When we last introduced ourselves to each contact not heard from
    /// since the start (one entry per contact at most).
    intro_at: HashMap<[u8; 32], u64>,
    /// Fellow group members being dialled (new contacts, with addresses,
    /// not connected), since when; until connected, a queued frame's
    /// direct batch to it fails, or [`DIAL_GRACE`] later.
    dialling: HashMap<[u8; 32], u64>,
    /// This device's request to join an account, while it waits.
    joining: Option<Joining>,
}

/// The custody of one queued message's envelope at relays.
#[derive(Debug, Default)]
struct Held {
    /// The relays that took custody of it.
    relays: HashSet<PeerId>,
    /// When the latest custody receipt came (Unix seconds).
    at: u64,
    /// How many times it was deposited again since.
    again: u32,
}

/// The store thread's side of the relay rung.
#[derive(Default)]
struct Relays {
    /// Our relays: where our mail waits while we are away.
    ours: HashSet<PeerId>,
    /// Ours that are connected now.
    up: HashSet<PeerId>,
    /// Ours with a fetch outstanding (its number: an answer to an older
    /// one, sent before the relay went down and came back, is not followed
    /// by another fetch), and where the next fetch starts.
    fetching: HashMap<PeerId, u64>,
    /// The number of the next fetch.
    next_fetch: u64,
    /// Ours that hold file chunks we left unacknowledged for want of room
    /// in the media budget.
    chunks_left: HashSet<PeerId>,
    /// Those of them to read again from the start, room being made: the
    /// fetch after the outstanding one's answer starts there.
    reread: HashSet<PeerId>,
    cursor: HashMap<PeerId, u64>,
    /// Mail taken whose acknowledgement failed (the relay overloaded,
    /// say), acknowledged again with the next fetch's answer: otherwise it
    /// would stay there, counting against our mailbox's quota, until we
    /// reconnect (at most [`MAX_ACK`] per relay).
    unacked: HashMap<PeerId, Vec<u64>>,
    /// The last refusal told of, per relay and kind of request (fetch,
    /// ack, publish), until one of that kind goes through.
    refused: HashMap<(PeerId, &'static str), Refusal>,
    /// When we last published our prekeys to each of ours.
    published: HashMap<PeerId, u64>,
    /// Contacts whose session we started and they have not answered: when
    /// their relay is next asked for a bundle, and the wait after that.
    awaiting: HashMap<[u8; 32], (u64, u64)>,
    /// When a failed fetch may be asked again (Unix seconds).
    retry_at: HashMap<PeerId, u64>,
    /// Queued messages and the relays that took custody of them.
    held: HashMap<u64, Held>,
    /// Deposits in flight.
    depositing: HashSet<(u64, PeerId)>,
    /// The chunks of files deposited with their messages.
    chunks: relayed::RelayedChunks,
    /// A contact's relays, from its bundle: at least this many copies.
    copies: usize,
    /// Seconds a custody is trusted before the message is deposited
    /// again (doubled at each time).
    redeposit_after: u64,
    /// Ours found in the DHT, with their addresses once known.
    named: HashMap<PeerId, Vec<Multiaddr>>,
    /// Ours from the configuration, as written.
    configured: Vec<String>,
}

/// A relay named in a bundle or config: its peer id and address (without
/// the `/p2p` suffix; empty if it was only a peer id).
/// An engine call on a contact that answers whether there was one.
fn found(r: Result<bool, EngineError>) -> Result<(), NodeError> {
    match r {
        Ok(true) => Ok(()),
        Ok(false) => Err(NodeError::UnknownContact),
        Err(e) => Err(e.into()),
    }
}

/// Writes a new file at `path` (owner-only) with `fill`, whole or not at
/// all ([`crate::store::write_private`]). An existing `path` is refused.
fn write_new(
    path: &std::path::Path,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<u64, crate::store::Error>,
) -> Result<u64, NodeError> {
    let exists = || {
        NodeError::Export(format!(
            "{} exists already; nothing written",
            path.display()
        ))
    };
    // Checked first so that no export is made for nothing; the write
    // itself refuses a file made meanwhile.
    if path.exists() {
        return Err(exists());
    }
    crate::store::write_private_new(path, |out| fill(out).map_err(std::io::Error::other)).map_err(
        |e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => exists(),
            _ => NodeError::Export(format!("{}: {e}", path.display())),
        },
    )
}

pub(crate) fn parse_relay(addr: &Multiaddr) -> Option<(PeerId, Vec<Multiaddr>)> {
    let mut bare = addr.clone();
    match bare.pop() {
        Some(libp2p::multiaddr::Protocol::P2p(id)) => {
            let addrs = if bare.is_empty() { vec![] } else { vec![bare] };
            Some((id, addrs))
        }
        _ => None,
    }
}

/// The Ed25519 key behind a peer id (a relay signs custody receipts with it).
fn peer_key(peer: &PeerId) -> Option<[u8; 32]> {
    let key = libp2p::identity::PublicKey::try_decode_protobuf(peer.as_ref().digest()).ok()?;
    Some(key.try_into_ed25519().ok()?.to_bytes())
}

impl Worker {
    pub(crate) fn new(
        mut engine: Engine,
        jobs: std_mpsc::Receiver<Job>,
        outs: mpsc::UnboundedSender<Out>,
        events: mpsc::Sender<NodeEvent>,
        shared: Arc<Shared>,
        cfg: &super::NodeConfig,
    ) -> Self {
        engine.set_relays(cfg.relays.iter().map(ToString::to_string).collect());
        engine.set_message_ttl(cfg.message_ttl.as_secs());
        let mut w = Self {
            engine,
            jobs,
            outs,
            events,
            shared,
            peers: HashMap::new(),
            peer_of: HashMap::new(),
            numbers: HashMap::new(),
            complaints: Complaints::default(),
            media: media::MediaState::new(cfg.media_budget),
            requests: Requests::default(),
            intro_at: HashMap::new(),
            joining: None,
            dialling: HashMap::new(),
            relays: Relays {
                ours: cfg
                    .relays
                    .iter()
                    .filter_map(|a| parse_relay(a).map(|(p, _)| p))
                    .collect(),
                copies: cfg.relay_copies.max(1),
                redeposit_after: cfg.redeposit_after.as_secs().max(1),
                configured: cfg.relays.iter().map(ToString::to_string).collect(),
                ..Relays::default()
            },
        };
        let keys: Vec<[u8; 32]> = w.engine.contacts().map(|c| c.identity.signing).collect();
        for key in keys {
            w.announce_contact(&key);
        }
        w.load_requests();
        w
    }

    /// The contact requests and declined devices kept in the store; what
    /// does not read is deleted.
    fn load_requests(&mut self) {
        let r = self
            .engine
            .store()
            .records(Kind::Requests)
            .and_then(|records| {
                let bad = self.requests.load(records.scan(&[])?);
                if !bad.is_empty() {
                    warn!(
                        records = bad.len(),
                        "contact request records that do not read; deleted"
                    );
                }
                for k in bad {
                    records.remove(&k)?;
                }
                Ok(())
            });
        if let Err(e) = r {
            warn!(error = %e, "contact requests not read");
        }
    }

    /// Writes to the requests tree in this round; `false` (logged as
    /// `what`) if the store failed.
    fn write_requests(
        &self,
        what: &str,
        round: &mut Round,
        write: impl FnOnce(&crate::store::Records<'_>) -> Result<(), crate::store::Error>,
    ) -> bool {
        round.dirty = true;
        let r = self
            .engine
            .store()
            .records(Kind::Requests)
            .and_then(|r| write(&r));
        if let Err(e) = &r {
            warn!(error = %e, "{what} not written");
        }
        r.is_ok()
    }

    /// Writes `key`'s request as it is now (or that none waits: then what
    /// it held goes too), and with `declined` that it was declined at that
    /// time (or, `None`, that it is not), in this round.
    fn keep_request(&self, key: &[u8; 32], declined: Option<Option<u64>>, round: &mut Round) {
        let kept = self.write_requests("a contact request", round, |records| {
            match self.requests.record(key) {
                Some(bytes) => records.put(&request_key(key), &bytes)?,
                None => {
                    records.remove(&request_key(key))?;
                    for (k, _) in records.scan(&held_prefix(key))? {
                        records.remove(&k)?;
                    }
                }
            }
            // A contact again (or forgotten to make room).
            if !self.requests.is_former(key) {
                records.remove(&former_key(key))?;
            }
            match declined {
                Some(Some(at)) => records.put(&declined_key(key), &at.to_be_bytes())?,
                Some(None) => {
                    records.remove(&declined_key(key))?;
                }
                None => {}
            }
            Ok(())
        });
        round.unkept |= !kept;
    }

    /// Remembers the removed contact `identity` (written in this round),
    /// so that its envelopes, if it writes again, make a request.
    fn keep_former(
        &mut self,
        identity: PublicIdentity,
        invite: Invite,
        now: u64,
        round: &mut Round,
    ) {
        let key = identity.signing;
        let forgotten = self.requests.removed(identity, invite, now);
        self.write_requests("a removed contact", round, |records| {
            if let Some(bytes) = self.requests.former_record(&key) {
                records.put(&former_key(&key), &bytes)?;
            }
            if let Some(old) = forgotten {
                records.remove(&former_key(&old))?;
            }
            Ok(())
        });
    }

    /// Writes an envelope `key`'s request now holds, at its place `n`.
    fn keep_held(&self, key: &[u8; 32], n: usize, envelope: &[u8], round: &mut Round) {
        let kept = self.write_requests(
            "an envelope held with a contact request",
            round,
            |records| records.put(&held_key(key, n), envelope),
        );
        round.unkept |= !kept;
    }

    /// Tells the engine which relays our invites and bundles name: the
    /// configured ones, then those found in the DHT (with an address when
    /// known, else by peer id alone).
    fn name_relays(&mut self) {
        let mut names = self.relays.configured.clone();
        for (peer, addrs) in &self.relays.named {
            let p = libp2p::multiaddr::Protocol::P2p(*peer);
            match addrs.first() {
                Some(a) => names.push(a.clone().with(p).to_string()),
                None => names.push(Multiaddr::empty().with(p).to_string()),
            }
        }
        self.engine.set_relays(names);
    }

    /// `key` became a contact (its invite added, or its request
    /// accepted): it is dialled, its bundle fetched, and what it sent
    /// while it was a stranger read.
    fn new_contact(&mut self, key: &[u8; 32], now: u64, round: &mut Round) {
        self.announce_contact(key);
        self.fetch_prekeys(key, round);
        self.forget_request(key, now, round);
    }

    /// `key` is a contact now: its request (if one waits) goes, and what
    /// it held is read; it is declined no more.
    fn forget_request(&mut self, key: &[u8; 32], now: u64, round: &mut Round) {
        let request = self.requests.forget(key);
        self.keep_request(key, Some(None), round);
        if let Some(request) = request {
            self.envelopes(request.held, now, round);
        }
    }

    /// Introduces us to the contact `to` (sealed: only it learns who we
    /// are), on the mesh. Not at its relays: what a relay keeps for a
    /// contact that is away is a session set-up, which carries our invite
    /// (see `Engine::seal`).
    fn introduce(&mut self, to: &[u8; 32], now: u64, round: &mut Round) {
        match self.engine.intro(to, now) {
            Ok((mailbox, envelope)) => {
                round.outs.push(Out::Publish {
                    mailbox,
                    envelope,
                    pos: None,
                });
                self.introduced_at(to, now);
            }
            Err(e) => warn!(error = %e, "introduction not sealed"),
        }
    }

    /// Notes that `to` was introduced to us at `now` (or needed no
    /// introduction then): not again before [`INTRO_EVERY`].
    fn introduced_at(&mut self, to: &[u8; 32], now: u64) {
        if self.intro_at.len() >= 4096 {
            self.intro_at.clear();
        }
        self.intro_at.insert(*to, now);
    }

    /// A device that is not a contact introduced itself. Returns whether
    /// its request waits now (what else the envelope carries is then kept
    /// with it).
    fn introduced(
        &mut self,
        from: PublicIdentity,
        invite: Invite,
        now: u64,
        round: &mut Round,
    ) -> bool {
        let identity = from.signing;
        // Checked only when it may change something: a device declined,
        // or waiting with these addresses already, costs no signature
        // check each time it introduces itself again.
        if self.requests.is_declined(&identity) {
            return false;
        }
        if !self.requests.unchanged(&identity, &invite.addrs)
            && let Err(e) = check_intro(&from, &invite)
        {
            debug!(error = %e, "an introduction that does not check; dropped");
            return false;
        }
        match self.requests.introduce(from.clone(), invite, now) {
            Introduced::New(fingerprint) => {
                self.keep_request(&identity, None, round);
                round.events.push(NodeEvent::ContactRequest {
                    identity,
                    fingerprint,
                });
            }
            Introduced::Again(true) => self.keep_request(&identity, None, round),
            Introduced::Again(false) => {}
            Introduced::Declined => return false,
            Introduced::Full => {
                // Throttled like a peer's complaints: strangers are cheap.
                if let Ok(me) = self.engine.identity().peer_id()
                    && let Some(skipped) =
                        self.complaints.note(&me, "requests full", Instant::now())
                {
                    warn!(skipped, "a contact request refused: too many are waiting");
                }
                return false;
            }
        }
        true
    }

    fn request_job(&mut self, job: RequestJob, now: u64, round: &mut Round) {
        match job {
            RequestJob::List { reply } => {
                let list = self
                    .requests
                    .list()
                    .into_iter()
                    .map(|r| ContactRequest {
                        identity: r.identity.signing,
                        peer_id: r.identity.peer_id().ok(),
                        fingerprint: r.fingerprint.clone(),
                        received_at: r.received_at,
                        held: r.held.len(),
                    })
                    .collect();
                round.reply(reply, Ok(list));
            }
            RequestJob::Accept { key, name, reply } => {
                let Some(request) = self.requests.take(&key) else {
                    round.reply(reply, Err(NodeError::UnknownContact));
                    return;
                };
                // A contact already (a group made it one) stays as it is,
                // the person's own from now on.
                if self.engine.contact(&key).is_some() {
                    if let Err(e) = self.engine.adopt(&key) {
                        self.requests.restore(request);
                        round.reply(reply, Err(e.into()));
                        return;
                    }
                    self.forget_request(&key, now, round);
                } else {
                    if let Err(e) = self.engine.add_contact(&request.invite, &name) {
                        // It stays waiting, to accept again.
                        self.requests.restore(request);
                        round.reply(reply, Err(e.into()));
                        return;
                    }
                    self.new_contact(&key, now, round);
                    // It learns that we accepted: what it has queued for
                    // us comes now rather than at its next retry.
                    self.introduce(&key, now, round);
                }
                self.envelopes(request.held, now, round);
                round.reply(reply, Ok(()));
            }
            RequestJob::Decline { key, reply } => {
                let r = match self.requests.decline(&key) {
                    Some(forgotten) => {
                        self.keep_request(&key, Some(Some(now)), round);
                        if let Some(old) = forgotten {
                            self.keep_request(&old, Some(None), round);
                        }
                        Ok(())
                    }
                    None => Err(NodeError::UnknownContact),
                };
                round.reply(reply, r);
            }
        }
    }

    /// Tells the actor about the contact `key` (its peer id and
    /// addresses), which dials it and tracks its presence; whether it is
    /// to be dialled (it has addresses and is not connected).
    fn announce_contact(&mut self, key: &[u8; 32]) -> bool {
        let Some(c) = self.engine.contact(key) else {
            return false;
        };
        let Ok(peer) = c.identity.peer_id() else {
            return false;
        };
        let addrs: Vec<Multiaddr> = c.addrs.iter().filter_map(|a| a.parse().ok()).collect();
        self.peers.insert(peer, *key);
        self.peer_of.insert(*key, peer);
        // What the actor does with it: dials it if it has addresses and
        // is not connected.
        let dials = !addrs.is_empty() && !self.shared.is_connected(&peer);
        let _ = self.outs.send(Out::Contact {
            key: *key,
            peer,
            addrs,
        });
        dials
    }

    /// The contact `key` is gone: the actor stops dialling it and
    /// tracking its presence. At once, as `Out::Contact` is sent: the
    /// swarm's task sees additions and removals in the order they happen.
    fn forget_peer(&mut self, key: [u8; 32]) {
        if let Some(peer) = self.peer_of.remove(&key) {
            self.peers.remove(&peer);
            let _ = self.outs.send(Out::Forget { key, peer });
        }
    }

    /// The engine forgot the contact `gone`: the node stops tracking it,
    /// and (when `former`) keeps it as a former contact, as for one the
    /// person removes, so that what it writes from now on is a contact
    /// request, not dropped. Returns its name.
    fn forgotten(&mut self, gone: Forgotten, former: bool, now: u64, round: &mut Round) -> String {
        round.dirty = true;
        self.forget_peer(gone.key);
        if former && let Some(invite) = gone.invite {
            self.keep_former(gone.identity, invite, now, round);
        }
        gone.name
    }

    /// The new contact `key` (a fellow group member) is being dialled:
    /// what we queue for it waits for that connection for a while (see
    /// [`DIAL_GRACE`]).
    fn await_dial(&mut self, key: &[u8; 32], now: u64) {
        if self.dialling.len() >= MAX_DIALLING {
            self.dialling
                .retain(|_, at| now < at.saturating_add(DIAL_GRACE));
        }
        if self.dialling.len() < MAX_DIALLING {
            self.dialling.insert(*key, now);
        }
    }

    /// Runs rounds until told to stop or the swarm's task is gone.
    pub(crate) fn run(mut self) {
        // When the group receipts waiting go (together, after
        // `GROUP_RECEIPT_DELAY` and a random part of `GROUP_RECEIPT_JITTER`).
        let mut acks_due: Option<Instant> = None;
        // Since when writes wait for a flush that was put off (see the
        // module's documentation).
        let mut owed: Option<Instant> = None;
        loop {
            let wake = match (acks_due, owed.map(|t| t + FLUSH_DEFER)) {
                (Some(a), Some(f)) => Some(a.min(f)),
                (a, f) => a.or(f),
            };
            let first = match wake {
                None => match self.jobs.recv() {
                    Ok(j) => Some(j),
                    Err(_) => return self.flush_owed(owed),
                },
                Some(t) => {
                    let left = t.saturating_duration_since(Instant::now());
                    match self.jobs.recv_timeout(left) {
                        Ok(j) => Some(j),
                        Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                        Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                            return self.flush_owed(owed);
                        }
                    }
                }
            };
            let mut jobs: Vec<Job> = first.into_iter().collect();
            while !jobs.is_empty() && jobs.len() < MAX_ROUND {
                match self.jobs.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            let n = jobs.len();
            let bytes: usize = jobs.iter().map(Job::network_bytes).sum();
            let mut round = Round::default();
            let mut sends: Vec<SendCall> = Vec::new();
            let mut sends_to = [0u8; 32];
            for job in jobs {
                // Consecutive sends to one contact become one batch: one
                // write each for its counters, history and session.
                if let Job::Send { to, bodies, reply } = job {
                    if !sends.is_empty() && to != sends_to {
                        self.send(&sends_to, std::mem::take(&mut sends), &mut round);
                    }
                    sends_to = to;
                    sends.push((bodies, reply));
                    continue;
                }
                if !sends.is_empty() {
                    self.send(&sends_to, std::mem::take(&mut sends), &mut round);
                }
                self.handle(job, &mut round);
            }
            if !sends.is_empty() {
                self.send(&sends_to, sends, &mut round);
            }
            if self.engine.has_group_receipts() {
                let due = *acks_due.get_or_insert_with(|| {
                    let jitter = GROUP_RECEIPT_JITTER.mul_f64(rand::random::<f64>());
                    Instant::now() + GROUP_RECEIPT_DELAY + jitter
                });
                if Instant::now() >= due || round.stop {
                    acks_due = None;
                    let now = now_secs();
                    match self.engine.take_group_receipts() {
                        Ok(frames) => {
                            round.dirty = true;
                            for (to, frame) in frames {
                                self.route(&to, frame, None, now, &mut round);
                            }
                        }
                        Err(e) => warn!(error = %e, "group receipts not sent"),
                    }
                }
            } else {
                acks_due = None;
            }
            self.media_received(now_secs(), &mut round);
            for (group, keys) in self.engine.take_changed_group_keys() {
                round.outs.push(Out::GroupKeys { group, keys });
            }
            // The last round before a clean stop: sessions are written as
            // they are, not reserved ahead (nothing is encrypted after it).
            if round.stop {
                match self.engine.save_sessions_exact() {
                    Ok(()) => round.dirty = true,
                    Err(e) => warn!(error = %e, "sessions not saved exactly at stop"),
                }
            }
            if round.dirty || owed.is_some() {
                let late = owed.is_some_and(|t| t.elapsed() >= FLUSH_DEFER);
                if round.needs_disk() || late {
                    if let Err(e) = self.flush() {
                        error!(error = %e, "store flush failed; stopping the node without acknowledging");
                        return;
                    }
                    owed = None;
                } else if round.dirty {
                    owed.get_or_insert_with(Instant::now);
                }
            }
            self.shared.backlog.fetch_sub(n, Ordering::Relaxed);
            self.shared
                .backlog_bytes
                .fetch_sub(bytes, Ordering::Relaxed);
            for r in round.replies {
                r();
            }
            for (peer, frames) in round.direct {
                let _ = self.outs.send(Out::Direct { peer, frames });
            }
            for o in round.outs {
                let _ = self.outs.send(o);
            }
            for e in round.events {
                let e = match self.events.try_send(e) {
                    Ok(()) => continue,
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        debug!("event stream closed");
                        continue;
                    }
                    Err(mpsc::error::TrySendError::Full(e)) => e,
                };
                // The consumer is behind: this waits for it (back-pressure
                // all the way to the peers, which retry), but writes whose
                // flush was put off go to disk first, however long it is.
                if owed.take().is_some()
                    && let Err(e) = self.flush()
                {
                    error!(error = %e, "store flush failed; stopping the node");
                    return;
                }
                if self.events.blocking_send(e).is_err() {
                    debug!("event stream closed");
                }
            }
            if round.stop {
                return;
            }
        }
    }

    /// Flushes the store; the sessions saved before are on disk then.
    fn flush(&mut self) -> Result<(), crate::store::Error> {
        self.engine.store().flush()?;
        self.engine.flushed();
        Ok(())
    }

    /// On the way out without a stop (the swarm's task is gone): writes
    /// whose flush was put off go to disk.
    fn flush_owed(&mut self, owed: Option<Instant>) {
        if owed.is_some()
            && let Err(e) = self.flush()
        {
            error!(error = %e, "store flush failed at exit");
        }
    }

    fn handle(&mut self, job: Job, round: &mut Round) {
        let now = now_secs();
        // Reads and schedule-only changes write nothing; ticks and peers
        // coming up write only when something was due (see `retry`).
        if !matches!(
            job,
            Job::History { .. }
                | Job::Conversations { .. }
                | Job::Groups { .. }
                | Job::Contacts { .. }
                | Job::Requests(RequestJob::List { .. })
                | Job::Devices(DevicesJob::List { .. })
                | Job::Export { .. }
                | Job::Queued { .. }
                | Job::Failed(_)
                | Job::Tick
                | Job::PeerUp(_)
                | Job::RelayUp(_)
                | Job::RelayDown(_)
                | Job::RelaysFound(_)
                | Job::RelayAddrs { .. }
                | Job::Mailbox { .. }
                | Job::Media(
                    MediaJob::Read { .. }
                        | MediaJob::Serve { .. }
                        | MediaJob::Ended { .. }
                        | MediaJob::Chunk { .. }
                )
        ) {
            round.dirty = true;
        }
        match job {
            Job::Send { to, bodies, reply } => self.send(&to, vec![(bodies, reply)], round),
            Job::AddContact {
                code,
                name,
                addrs,
                reply,
            } => {
                self.engine.set_listen(addrs);
                let r = Invite::from_code(&code)
                    .map_err(EngineError::from)
                    .and_then(|inv| self.engine.add_contact(&inv, &name));
                if let Ok(key) = &r {
                    self.new_contact(key, now, round);
                    // It may not have added us: it learns who we are.
                    self.introduce(key, now, round);
                }
                round.reply(reply, r.map_err(Into::into));
            }
            Job::Requests(job) => self.request_job(job, now, round),
            Job::Devices(DevicesJob::List { reply }) => {
                round.reply(reply, Ok(DevicesInfo::of(self.engine.device_list())));
            }
            Job::Devices(DevicesJob::Name { name, reply }) => {
                let r = self.engine.name_device(&name, now).map(|due| {
                    round.dirty = true;
                    self.route_due(due, now, round);
                    DevicesInfo::of(self.engine.device_list())
                });
                round.reply(reply, r.map_err(Into::into));
            }
            Job::Devices(DevicesJob::Remove { device, reply }) => {
                let r = self
                    .engine
                    .remove_device(&device, now)
                    .map(|(due, events)| {
                        round.dirty = true;
                        self.route_due(due, now, round);
                        self.events(events, &[0; 32], round);
                        DevicesInfo::of(self.engine.device_list())
                    });
                if r.is_ok() {
                    self.remove_from_groups(&device, now, round);
                }
                round.reply(reply, r.map_err(Into::into));
            }
            Job::Devices(DevicesJob::Link { addrs, reply }) => {
                self.engine.set_listen(addrs.clone());
                let r = self.engine.link_code(addrs, now).map(|c| c.to_code());
                round.reply(reply, r.map_err(Into::into));
            }
            Job::Devices(DevicesJob::Join {
                code,
                name,
                addrs,
                reply,
            }) => {
                self.engine.set_listen(addrs);
                let r = LinkCode::from_code(&code)
                    .map_err(EngineError::from)
                    .and_then(|c| Ok((self.engine.join(&c, &name, now)?, c.expires_at)));
                let r = r.map(|(joined, until)| {
                    round.dirty = true;
                    match joined {
                        Joined::Already(key) => {
                            self.announce_contact(&key);
                            let list = self.engine.device_list();
                            round.events.push(NodeEvent::AccountJoined {
                                account: *list.account(),
                                serial: list.serial(),
                            });
                            key
                        }
                        Joined::Asked { first: key, frame } => {
                            self.announce_contact(&key);
                            if let Some(&peer) = self.peer_of.get(&key) {
                                self.joining = Some(Joining {
                                    key,
                                    peer,
                                    frame,
                                    until,
                                    sent_at: 0,
                                });
                                self.ask_to_join(now, round);
                            }
                            key
                        }
                    }
                });
                round.reply(reply, r.map_err(Into::into));
            }
            Job::Invite { addrs, reply } => {
                self.engine.set_listen(addrs.clone());
                let r = self.engine.invite(addrs, now).map(|i| i.to_code());
                round.reply(reply, r.map_err(Into::into));
            }
            Job::MarkRead { with, reply } if self.engine.is_group(&with) => {
                match self.engine.mark_group_read(&with, now) {
                    Ok((marked, fx)) => {
                        self.group_effects(fx, now, round);
                        round.reply(reply, Ok(marked));
                    }
                    Err(e) => round.reply(reply, Err(e.into())),
                }
            }
            Job::MarkRead { with, reply } => match self.engine.mark_read(&with, now) {
                Ok(due) => {
                    let marked = !due.is_empty();
                    self.route_due(due, now, round);
                    round.reply(reply, Ok(marked));
                }
                Err(e) => round.reply(reply, Err(e.into())),
            },
            Job::ClearHistory { with, reply } => {
                let r = match self.engine.conversation_with(&with) {
                    None => Err(NodeError::UnknownContact),
                    Some(conv) => match self.engine.store().history().clear(
                        &conv,
                        now,
                        &self.engine.identity().public().signing,
                    ) {
                        // A conversation with no message yet has nothing
                        // to clear.
                        Err(crate::store::Error::UnknownConversation { .. }) => Ok(0),
                        r => r.map_err(Into::into),
                    },
                };
                if let Ok(messages) = r {
                    // Its files are fetched no more; the reply waits for
                    // the round's flush.
                    self.media_purged();
                    round.dirty = true;
                    round.events.push(NodeEvent::Cleared { with, messages });
                }
                round.reply(reply, r);
            }
            Job::DeleteMessage {
                with,
                message,
                reply,
            } => {
                let r = match self.engine.conversation_with(&with) {
                    Some(conv) if conv == message.conv_id => {
                        let mine = self.engine.identity().public().signing;
                        self.engine.store().history().delete(&message, now, &mine)
                    }
                    _ => Ok(false),
                };
                if matches!(r, Ok(true)) {
                    self.media_purged();
                    round.dirty = true;
                    round.events.push(NodeEvent::Deleted { with, message });
                }
                round.reply(reply, r.map_err(Into::into));
            }
            Job::History {
                with,
                before,
                limit,
                reply,
            } => {
                let r = match self.engine.conversation_with(&with) {
                    None => Err(NodeError::UnknownContact),
                    Some(conv) => self
                        .engine
                        .store()
                        .history()
                        .page(&conv, before.as_ref(), limit)
                        .map_err(Into::into),
                };
                round.reply(reply, r);
            }
            Job::CreateGroup {
                name,
                me_name,
                members,
                retention,
                addrs,
                reply,
            } => {
                let r = self
                    .engine
                    .create_group(&name, &me_name, &members, retention, addrs, now);
                let r = r.map(|(group, fx)| {
                    self.group_effects(fx, now, round);
                    group
                });
                round.reply(reply, r.map_err(Into::into));
            }
            Job::ChangeGroup {
                group,
                change,
                reply,
            } => {
                let r = self.engine.change_group(&group, change, now);
                let r = r.map(|fx| self.group_effects(fx, now, round));
                round.reply(reply, r.map_err(Into::into));
            }
            Job::SetRetention {
                contact,
                secs,
                reply,
            } => {
                let r = self.engine.set_retention(&contact, secs, now);
                let r = r.map(|(due, event)| {
                    round.dirty = true;
                    self.route_due(due, now, round);
                    self.events(vec![event], &contact, round);
                });
                round.reply(reply, r.map_err(Into::into));
            }
            Job::GroupSend {
                group,
                bodies,
                reply,
            } => {
                let r = self.engine.group_send(&group, bodies, now);
                let r = r.map(|(refs, fx)| {
                    self.group_effects(fx, now, round);
                    refs
                });
                round.reply(reply, r.map_err(Into::into));
            }
            Job::Groups { reply } => round.reply(reply, Ok(self.engine.groups())),
            Job::GroupMessage(bytes) => match self.engine.group_messages(&[(bytes, None)], now) {
                Ok((_, fx)) => self.group_effects(fx, now, round),
                Err(e) => warn!(error = %e, "group message"),
            },
            Job::Conversations { reply } => {
                let r = self.engine.store().history().summaries();
                round.reply(reply, r.map_err(Into::into));
            }
            Job::Queued { reply } => round.reply(reply, Ok(self.engine.queued())),
            Job::Contacts { reply } => {
                let me = self.engine.identity().public().clone();
                let numbers = &mut self.numbers;
                // Fingerprints cost thousands of hash rounds each: worked
                // out once per contact key, then kept.
                numbers.retain(|k, _| self.engine.contact(k).is_some());
                let list = self
                    .engine
                    .contacts()
                    .map(|c| {
                        let (fp, safety) = numbers
                            .entry(c.identity.signing)
                            .or_insert_with(|| {
                                (fingerprint(&c.identity), safety_number(&me, &c.identity))
                            })
                            .clone();
                        ContactInfo {
                            identity: c.identity.signing,
                            peer_id: c.identity.peer_id().ok(),
                            name: c.name.clone(),
                            conversation: self.engine.conv_with_device(&c.identity.signing),
                            fingerprint: fp,
                            verified: c.verified,
                            safety_number: safety,
                            devices: self
                                .engine
                                .contact_list(&self.engine.account_of(&c.identity.signing))
                                .map(DevicesInfo::of),
                            from_group: self.engine.made_by_a_group(&c.identity.signing),
                        }
                    })
                    .collect();
                round.reply(reply, Ok(list));
            }
            Job::Export { with, path, reply } => {
                let r = match with {
                    Some(key) => match self.engine.conversation_with(&key) {
                        None => Err(NodeError::UnknownContact),
                        Some(conv) => write_new(&path, |out| {
                            self.engine
                                .store()
                                .history()
                                .export_json(&conv, out)
                                .map(|n| n as u64)
                        }),
                    },
                    None => write_new(&path, |out| self.engine.store().backup(out)),
                };
                round.reply(reply, r);
            }
            Job::RemoveContact { key, reply } => {
                let former = self
                    .engine
                    .contact(&key)
                    .map(|c| c.identity.clone())
                    .zip(self.engine.contact_invite(&key).ok());
                let r = found(self.engine.remove_contact(&key));
                if r.is_ok() {
                    self.forget_peer(key);
                }
                if r.is_ok()
                    && let Some((identity, invite)) = former
                {
                    self.keep_former(identity, invite, now, round);
                }
                round.reply(reply, r);
            }
            Job::VerifyContact {
                key,
                verified,
                reply,
            } => {
                round.reply(reply, found(self.engine.set_verified(&key, verified)));
            }
            Job::Direct {
                peer,
                frames,
                token,
            } => self.direct(peer, &frames, token, now, round),
            Job::Envelope(env) => self.envelope(env, now, round),
            Job::Acked(positions) => match self.engine.delivered_direct(&positions) {
                Ok(ev) => self.events(ev, &[0; 32], round),
                Err(e) => warn!(error = %e, "recording direct acks"),
            },
            Job::Failed(positions) => {
                // A contact being dialled that the direct link could not
                // reach: its retries go by the mesh from now on.
                for pos in &positions {
                    if let Some(to) = self.engine.recipient_of(*pos) {
                        self.dialling.remove(&to);
                    }
                }
                self.engine.failed(&positions, now);
            }
            Job::Published(positions) => match self.engine.published(&positions) {
                Ok(ev) => self.events(ev, &[0; 32], round),
                Err(e) => warn!(error = %e, "recording published messages"),
            },
            Job::PeerUp(peer) => {
                if let Some(key) = self.peers.get(&peer).copied() {
                    self.dialling.remove(&key);
                    // No session yet: ask the device itself for a bundle
                    // with a one-time prekey, so the session we start
                    // has one (if we write first before it comes, the
                    // invite's bundle serves, without).
                    // Also when our session is one it never answered:
                    // it may have been set up from a signed prekey the
                    // device has since replaced (see `take_bundle`).
                    if !self.engine.has_session(&key) || self.engine.awaiting_answer(&key) {
                        round
                            .direct
                            .entry(peer)
                            .or_default()
                            .push((None, Frame::BundleRequest.to_bytes()));
                    }
                    self.engine.peer_up(&key, now);
                    self.retry(now, round);
                }
                if self.joining.as_ref().is_some_and(|j| j.peer == peer) {
                    self.ask_to_join(now, round);
                }
                self.media_peer_up(&peer, now, round);
            }
            Job::Media(m) => self.media_job(m, now, round),
            Job::RelayUp(relay) => {
                if self.relays.ours.contains(&relay) {
                    self.relays.up.insert(relay);
                    self.relays.cursor.remove(&relay);
                    // Everything comes again from the start, and is
                    // acknowledged then.
                    self.relays.unacked.remove(&relay);
                    self.relays.retry_at.remove(&relay);
                    self.fetch(relay, 0, now, round);
                    self.publish_prekeys(relay, 0, now, round);
                }
            }
            Job::RelaysFound(found) => {
                for relay in found {
                    if self.relays.ours.insert(relay) {
                        self.relays.named.insert(relay, Vec::new());
                    }
                }
                self.name_relays();
            }
            Job::RelayAddrs { relay, addrs } => {
                if self.relays.ours.contains(&relay) {
                    self.relays.named.insert(relay, addrs);
                    self.name_relays();
                }
            }
            Job::RelayDown(relay) => {
                self.relays.up.remove(&relay);
                self.relays.fetching.remove(&relay);
            }
            Job::Mailbox {
                relay,
                purpose,
                answer,
            } => self.mailbox_answer(relay, purpose, answer, now, round),
            Job::Tick => {
                if self
                    .joining
                    .as_ref()
                    .is_some_and(|j| now >= j.sent_at.saturating_add(JOIN_AGAIN))
                {
                    self.ask_to_join(now, round);
                }
                self.load_wanted_media(round);
                self.fetch_media(now, None, round);
                let up: Vec<PeerId> = self
                    .relays
                    .up
                    .iter()
                    .filter(|r| !self.relays.fetching.contains_key(r))
                    .filter(|r| self.relays.retry_at.get(r).is_none_or(|&t| t <= now))
                    .copied()
                    .collect();
                for relay in up {
                    self.fetch(relay, FETCH_WAIT, now, round);
                }
                // Our bundle again, daily, at relays we stay connected to:
                // a relay drops the prekeys of a mailbox not published for
                // twice its retention.
                let stale: Vec<PeerId> = self
                    .relays
                    .up
                    .iter()
                    .filter(|r| {
                        self.relays
                            .published
                            .get(r)
                            .is_some_and(|&at| now >= at.saturating_add(REPUBLISH_EVERY))
                    })
                    .copied()
                    .collect();
                // A new signed prekey weekly (replaced ones are kept for
                // their grace period): our relays get the new bundle, after
                // this round's flush has put its secret on disk.
                let rotated = match self.engine.rotate_prekeys(now) {
                    Ok((written, made)) => {
                        round.dirty |= written;
                        made
                    }
                    Err(e) => {
                        warn!(error = %e, "rotating our signed prekey");
                        false
                    }
                };
                let stale = if rotated {
                    self.relays.up.iter().copied().collect()
                } else {
                    stale
                };
                for relay in stale {
                    self.publish_prekeys(relay, 0, now, round);
                }
                self.ask_for_fresher_bundles(now, round);
                let (forgotten, given_up) = self.engine.forget_orphans(now);
                round.dirty |= !given_up.is_empty();
                self.events(given_up, &[0; 32], round);
                for gone in forgotten {
                    debug!(
                        contact = %crate::store::hex(&gone.key[..4]),
                        "a contact only groups made left the last of them: forgotten"
                    );
                    let room = self.requests.has_room_for_made();
                    let contact = gone.key;
                    let name = self.forgotten(gone, room, now, round);
                    round
                        .events
                        .push(NodeEvent::ContactForgotten { contact, name });
                }
                // Devices removed from this account, once told.
                let (forgotten, given_up) = self.engine.forget_unlinked(now);
                round.dirty |= !given_up.is_empty();
                self.events(given_up, &[0; 32], round);
                for gone in forgotten {
                    info!(
                        device = %crate::store::hex(&gone.key[..4]),
                        "a device removed from this account is no longer a contact"
                    );
                    let contact = gone.key;
                    let name = self.forgotten(gone, true, now, round);
                    round.events.push(NodeEvent::ContactDeviceRemoved {
                        contact,
                        account: *self.engine.device_list().account(),
                        name,
                    });
                }
                let engine = &self.engine;
                self.relays
                    .held
                    .retain(|pos, _| engine.attempts(*pos).is_some());
                self.relays
                    .chunks
                    .retain(now, |pos| engine.attempts(pos).is_some());
                self.pump_chunks(now, round);
                // Temporary messages whose time is up leave the history.
                match self.engine.store().history().purge_expired(now) {
                    Ok(0) => {}
                    Ok(messages) => {
                        self.media_purged();
                        round.dirty = true;
                        round.events.push(NodeEvent::Disappeared { messages });
                    }
                    Err(e) => warn!(error = %e, "deleting expired messages"),
                }
                match self.engine.expire(now) {
                    Ok(ev) => {
                        round.dirty |= !ev.is_empty();
                        self.events(ev, &[0; 32], round)
                    }
                    Err(e) => warn!(error = %e, "expiring queued messages"),
                }
                self.retry(now, round);
            }
            Job::Stop => round.stop = true,
        }
    }

    /// Writes the messages of several callers to one contact in one batch
    /// (a caller whose own messages are refused is answered alone).
    fn send(&mut self, to: &[u8; 32], callers: Vec<SendCall>, round: &mut Round) {
        round.dirty = true;
        let now = now_secs();
        let mut bodies = Vec::new();
        let mut replies = Vec::new();
        for (b, reply) in callers {
            if let Some(big) = b.iter().find(|b| b.len() > super::proto::MAX_BODY) {
                let e = EngineError::BodyTooLarge {
                    len: big.len(),
                    max: super::proto::MAX_BODY,
                };
                round.reply(reply, Err(e.into()));
                continue;
            }
            replies.push((b.len(), reply));
            bodies.extend(b);
        }
        if replies.is_empty() {
            return;
        }
        // A frame whose key no restart can use again leaves as soon as it
        // is encrypted, while this round's writes are made and go to disk,
        // unless something for the same contact already waits for them.
        let early_to = self
            .peer_of
            .get(to)
            .copied()
            .filter(|p| self.shared.is_connected(p) && !round.routed.contains(to));
        let outs = &self.outs;
        let leave = |sent: &[Sent]| {
            let Some(peer) = early_to else { return };
            let frames: Vec<Outgoing> = sent
                .iter()
                .filter(|s| s.early)
                .map(|s| (Some(s.pos), s.frame.clone()))
                .collect();
            if !frames.is_empty() {
                let _ = outs.send(Out::Direct { peer, frames });
            }
        };
        match self.engine.send_many(to, bodies, now, leave) {
            Ok(sent) => {
                let mut refs = Vec::with_capacity(sent.len());
                for s in sent {
                    refs.push(s.message);
                    if s.early && early_to.is_some() {
                        self.engine.attempted(s.pos, now, Some(DIRECT_WAIT));
                    } else {
                        self.route(to, s.frame, Some(s.pos), now, round);
                    }
                    // The other devices of the contact's account.
                    self.route_due(s.copies, now, round);
                }
                let mut refs = refs.into_iter();
                for (n, reply) in replies {
                    round.reply(reply, Ok(refs.by_ref().take(n).collect()));
                }
            }
            Err(e) => {
                let text = e.to_string();
                let mut first = Some(e);
                for (_, reply) in replies {
                    let err = match first.take() {
                        Some(e) => e.into(),
                        None => NodeError::Batch(text.clone()),
                    };
                    round.reply(reply, Err(err));
                }
            }
        }
    }

    fn retry(&mut self, now: u64, round: &mut Round) {
        match self.engine.due(now, RETRY_BATCH) {
            Ok(due) => {
                // A fresh frame moved its session on, and was kept in its
                // outbox entry: both written (a kept frame sent again
                // writes nothing, but the round is rarely only those).
                round.dirty |= !due.is_empty();
                for d in due {
                    self.route(&d.to, d.frame, Some(d.pos), now, round);
                }
            }
            Err(e) => warn!(error = %e, "preparing retries"),
        }
    }

    fn direct(
        &mut self,
        peer: PeerId,
        frames: &[Vec<u8>],
        token: u64,
        now: u64,
        round: &mut Round,
    ) {
        let refuse = |round: &mut Round| {
            round.outs.push(Out::Respond {
                token,
                statuses: vec![FrameStatus::Rejected; frames.len()],
            })
        };
        let Some(from) = self.peers.get(&peer).copied() else {
            if self.link_request(peer, frames, token, now, round) {
                return;
            }
            // A removed contact writing again: a request (its frames are
            // refused until it is accepted; its node sends them again).
            if let Some(key) = peer_key(&peer)
                && let Some((identity, invite)) = self.requests.former(&key)
            {
                self.introduced(identity, invite, now, round);
                refuse(round);
                return;
            }
            if let Some(skipped) = self.complaints.note(
                &peer,
                "direct batch from a device that is not a contact",
                Instant::now(),
            ) {
                warn!(%peer, frames = frames.len(), skipped, "direct batch from a device that is not a contact");
            }
            refuse(round);
            return;
        };
        match self.engine.receive(&from, frames, now, true) {
            Ok(h) => {
                let rejected = h.accepted.iter().filter(|a| !**a).count();
                if rejected > 0
                    && let Some(skipped) = self.complaints.note(
                        &peer,
                        "refused frames in a direct batch",
                        Instant::now(),
                    )
                {
                    warn!(%peer, rejected, skipped, "refused frames in a direct batch");
                }
                round.outs.push(Out::Respond {
                    token,
                    statuses: h
                        .accepted
                        .iter()
                        .map(|&a| FrameStatus::from_accepted(a))
                        .collect(),
                });
                self.handled(&from, h, now, round);
            }
            Err(e) => {
                if let Some(skipped) =
                    self.complaints
                        .note(&peer, "direct batch refused", Instant::now())
                {
                    warn!(%peer, error = %e, skipped, "direct batch refused");
                }
                refuse(round);
            }
        }
    }

    /// Sends the request to join (`Worker::joining`) to the account's
    /// first device if connected to it; forgets it once the code ended.
    fn ask_to_join(&mut self, now: u64, round: &mut Round) {
        let Some(j) = self.joining.take_if(|j| j.until <= now) else {
            if let Some(j) = self.joining.as_mut()
                && self.shared.is_connected(&j.peer)
            {
                j.sent_at = now;
                round
                    .direct
                    .entry(j.peer)
                    .or_default()
                    .push((None, j.frame.clone()));
            }
            return;
        };
        tracing::info!(
            account = %crate::store::hex(&j.key[..4]),
            "the link code ended before the account's device answered"
        );
    }

    /// Routes queued frames (an empty one: nothing could be encrypted for
    /// its contact yet; it goes at a retry).
    fn route_due(&mut self, due: Vec<super::engine::Due>, now: u64, round: &mut Round) {
        for d in due {
            if !d.frame.is_empty() {
                self.route(&d.to, d.frame, Some(d.pos), now, round);
            }
        }
    }

    /// A direct batch from a device that is not a contact: if it carries a
    /// [`Frame::Link`], the request is checked against the link code
    /// waiting, if any, and answered (`true`); the batch's other frames
    /// are refused (its node sends them again once it is a contact).
    fn link_request(
        &mut self,
        peer: PeerId,
        frames: &[Vec<u8>],
        token: u64,
        now: u64,
        round: &mut Round,
    ) -> bool {
        let Some((i, req)) =
            frames
                .iter()
                .enumerate()
                .find_map(|(i, f)| match Frame::from_bytes(f) {
                    Ok(Frame::Link(req)) => Some((i, req)),
                    _ => None,
                })
        else {
            return false;
        };
        let Some(key) = peer_key(&peer) else {
            return false;
        };
        let mut statuses = vec![FrameStatus::Rejected; frames.len()];
        match self.engine.accept_link(&key, &req, now) {
            Ok((due, event)) => {
                round.dirty = true;
                statuses[i] = FrameStatus::from_accepted(true);
                tracing::info!(device = %crate::store::hex(&key[..4]), name = %req.name, "a device joined this account");
                self.new_contact(&key, now, round);
                self.route_due(due, now, round);
                self.events(vec![event], &key, round);
                let account = *self.engine.device_list().account();
                self.add_to_account_groups(&key, &account, now, round);
            }
            Err(e) => {
                // Made a contact before a later step failed: known here too.
                if self.engine.contact(&key).is_some() {
                    self.new_contact(&key, now, round);
                }
                if let Some(skipped) =
                    self.complaints
                        .note(&peer, "a link request refused", Instant::now())
                {
                    warn!(%peer, error = %e, skipped, "a link request refused");
                }
            }
        }
        round.outs.push(Out::Respond { token, statuses });
        true
    }

    /// Sends a frame to the contact `to`: directly when connected (or, for
    /// a queued frame, while a new fellow group member is being dialled),
    /// else sealed on the mesh. `pos` is its outbox position (None: not
    /// queued).
    fn route(
        &mut self,
        to: &[u8; 32],
        frame: Vec<u8>,
        pos: Option<u64>,
        now: u64,
        round: &mut Round,
    ) {
        round.routed.insert(*to);
        // A contact we have not heard from may not have added us: what we
        // send it is refused until it accepts our request, so it is
        // introduced to us again now and then (on the mesh only; what
        // waits at its relays is a set-up carrying our invite). Not a
        // fellow group member that another member added: it has our card
        // from the group's log (and a group's members, meeting all at
        // once, would flood the mesh with introductions).
        if pos.is_some()
            && !self.engine.heard_since_start(to)
            && self
                .intro_at
                .get(to)
                .is_none_or(|&at| now >= at.saturating_add(INTRO_EVERY))
        {
            if self.engine.knows_us_from_a_group(to) {
                // Asked again in INTRO_EVERY, not on every frame.
                self.introduced_at(to, now);
            } else {
                self.introduce(to, now, round);
            }
        }
        let peer = self.peer_of.get(to).copied();
        let connected = peer.is_some_and(|p| self.shared.is_connected(&p));
        // A queued frame to a fellow member being dialled: the direct link
        // waits for the connection. If it does not come, the link fails
        // (which ends the wait) or the attempt is due again after the
        // grace; either way the retry goes by whatever path is open then.
        // What is not queued goes sealed: it would not be sent again.
        let dialling = !connected
            && pos.is_some()
            && self
                .dialling
                .get(to)
                .is_some_and(|&at| now < at.saturating_add(DIAL_GRACE));
        if let Some(peer) = peer.filter(|_| connected || dialling) {
            if let Some(pos) = pos {
                let wait = if dialling { DIAL_GRACE } else { DIRECT_WAIT };
                self.engine.attempted(pos, now, Some(wait));
            }
            round.direct.entry(peer).or_default().push((pos, frame));
            return;
        }
        // A queued message's envelope expires with it; a receipt lives as
        // long as a message would.
        let expires = pos
            .and_then(|p| self.engine.expiry_of(p))
            .unwrap_or(now + super::engine::MESSAGE_TTL);
        debug!(
            to = %crate::store::hex(&to[..4]),
            ?pos,
            known = peer.is_some(),
            "sealed for the mesh"
        );
        match self.engine.seal(to, &frame, expires, now) {
            Ok((mailbox, envelope)) => {
                match pos {
                    Some(pos) => {
                        // A retry: the mesh did not bring a receipt in
                        // time, so the same envelope goes to the
                        // contact's relays. (A group message's first
                        // attempt here is already one: the group's topic
                        // brought no receipt.)
                        if self.engine.wants_relay(pos) {
                            self.deposit(to, pos, &envelope, now, round);
                        } else if self.engine.is_read_receipt(pos) {
                            // Done once the mesh takes it, though no peer
                            // that took it may keep it for the contact: a
                            // copy waits at the contact's relay too, as a
                            // delivered receipt's does.
                            self.forward(to, &envelope, round);
                        }
                        self.engine.attempted(pos, now, None);
                    }
                    // A receipt is not retried: it also waits at the
                    // contact's relays, in case the mesh cannot reach it.
                    None => self.forward(to, &envelope, round),
                }
                round.outs.push(Out::Publish {
                    mailbox,
                    envelope,
                    pos,
                });
            }
            Err(e) => warn!(error = %e, "sealing a message for the mesh"),
        }
    }

    /// Deposits the envelope of the queued message `pos` with the relays
    /// of `to` that do not hold it yet, until at least `copies` do.
    fn deposit(&mut self, to: &[u8; 32], pos: u64, envelope: &[u8], now: u64, round: &mut Round) {
        // A custody trusted long enough: the copy may be gone (fetched and
        // not readable by its device), so this retry's envelope goes to
        // the relays again, less and less often.
        let after = self.relays.redeposit_after;
        if let Some(h) = self.relays.held.get_mut(&pos)
            && now
                >= h.at
                    .saturating_add(after.saturating_mul(1 << h.again.min(8)))
        {
            debug!(
                pos,
                again = h.again + 1,
                "a message held at relays this long is deposited again"
            );
            h.relays.clear();
            h.again += 1;
            h.at = now;
            self.relays.chunks.again(pos);
        }
        let held = self.relays.held.get(&pos).map_or(0, |h| h.relays.len());
        if held >= self.relays.copies {
            return;
        }
        for text in self.engine.contact_relays(to) {
            let Some((relay, addrs)) = text.parse().ok().as_ref().and_then(parse_relay) else {
                continue;
            };
            let holds = self
                .relays
                .held
                .get(&pos)
                .is_some_and(|h| h.relays.contains(&relay));
            if holds || !self.relays.depositing.insert((pos, relay)) {
                continue;
            }
            round.outs.push(Out::Mailbox {
                relay,
                addrs,
                request: Request::Deposit(vec![serde_bytes::ByteBuf::from(envelope.to_vec())]),
                purpose: Purpose::Deposit {
                    pos,
                    to: *to,
                    envelope: envelope.to_vec(),
                },
            });
        }
    }

    /// Hands an unqueued envelope (a receipt) to the first of `to`'s
    /// relays, once.
    fn forward(&mut self, to: &[u8; 32], envelope: &[u8], round: &mut Round) {
        if let Some((relay, addrs)) = first_relay(&self.engine.contact_relays(to)) {
            round.outs.push(Out::Mailbox {
                relay,
                addrs,
                request: Request::Deposit(vec![serde_bytes::ByteBuf::from(envelope.to_vec())]),
                purpose: Purpose::Forward,
            });
        }
    }

    /// Publishes our bundle, and `count` new one-time prekeys, to one of
    /// our relays (sent after the round's flush, so the secrets of what
    /// it hands out are on our disk).
    fn publish_prekeys(&mut self, relay: PeerId, count: usize, now: u64, round: &mut Round) {
        let Some(key) = peer_key(&relay) else {
            return;
        };
        let (bundle, one_time) = match self.engine.prekeys_for_relay(count, now) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "no prekeys to publish");
                return;
            }
        };
        round.dirty |= !one_time.is_empty();
        self.relays.published.insert(relay, now);
        let mailbox_key = self.engine.mailbox_key();
        let owner = Owner::new(mailbox_key, key, now, &mut rand::rng());
        round.outs.push(Out::Mailbox {
            relay,
            addrs: Vec::new(),
            request: Request::PublishPrekeys(Box::new(Signed::new(
                mailbox_key,
                mailbox::Publish {
                    owner,
                    bundle,
                    one_time,
                },
            ))),
            purpose: Purpose::Publish {
                topped_up: count > 0,
            },
        });
    }

    /// Asks the first relay a new contact names for its prekeys: a bundle
    /// with a one-time prekey, so a session we start before we ever reach
    /// the device directly has one.
    fn fetch_prekeys(&mut self, contact: &[u8; 32], round: &mut Round) {
        let Some(bundle) = self.engine.contact_bundle(contact) else {
            return;
        };
        if let Some((relay, addrs)) = first_relay(&bundle.relays) {
            round.outs.push(Out::Mailbox {
                relay,
                addrs,
                request: Request::FetchPrekeys {
                    mailbox: bundle.mailbox_id,
                },
                purpose: Purpose::Prekeys { contact: *contact },
            });
        }
    }

    /// A session we started that a contact has not answered for an hour
    /// may have started from a signed prekey it has since forgotten (an
    /// old invite's, a group card's): its relay's bundle, asked for while
    /// that lasts (after an hour, then after twice as long each time, up
    /// to a week), starts it again if newer (see [`Engine::take_bundle`]).
    /// A device we reach directly is also asked on each connection.
    fn ask_for_fresher_bundles(&mut self, now: u64, round: &mut Round) {
        let waiting = self.engine.awaiting_answers();
        self.relays.awaiting.retain(|k, _| waiting.contains(k));
        for key in waiting {
            match self.relays.awaiting.get(&key).copied() {
                None => {
                    let first = (now.saturating_add(BUNDLE_ASK_FIRST), BUNDLE_ASK_FIRST);
                    self.relays.awaiting.insert(key, first);
                }
                Some((at, wait)) if now >= at => {
                    let wait = wait.saturating_mul(2).min(BUNDLE_ASK_MAX);
                    self.relays
                        .awaiting
                        .insert(key, (now.saturating_add(wait), wait));
                    self.fetch_prekeys(&key, round);
                }
                Some(_) => {}
            }
        }
    }

    /// Asks one of our relays for our mail after the cursor, waiting up
    /// to `wait` seconds for some if none is there.
    fn fetch(&mut self, relay: PeerId, wait: u16, now: u64, round: &mut Round) {
        let Some(key) = peer_key(&relay) else {
            return;
        };
        let mailbox_key = self.engine.mailbox_key();
        let owner = Owner::new(mailbox_key, key, now, &mut rand::rng());
        let request = Request::Fetch(Signed::new(
            mailbox_key,
            mailbox::Fetch {
                owner,
                after: self.relays.cursor.get(&relay).copied(),
                limit: FETCH_LIMIT,
                wait_secs: wait,
            },
        ));
        let id = self.relays.next_fetch;
        self.relays.next_fetch = id.wrapping_add(1);
        self.relays.fetching.insert(relay, id);
        round.outs.push(Out::Mailbox {
            relay,
            addrs: Vec::new(),
            request,
            purpose: Purpose::Fetch { id },
        });
    }

    /// Tells of a relay's refusal of one of our own requests, once per
    /// reason: the same refusal again (a fetch refused every few seconds)
    /// is not news until a request of that kind has gone through.
    fn mailbox_refused(
        &mut self,
        relay: PeerId,
        request: &'static str,
        reason: Refusal,
        round: &mut Round,
    ) {
        if self.relays.refused.insert((relay, request), reason) != Some(reason) {
            round.events.push(NodeEvent::MailboxRefused {
                relay,
                request,
                reason,
            });
        }
    }

    fn mailbox_answer(
        &mut self,
        relay: PeerId,
        purpose: Purpose,
        answer: Result<Response, String>,
        now: u64,
        round: &mut Round,
    ) {
        match (purpose, answer) {
            (Purpose::Fetch { id }, Ok(Response::Mail { items, more })) => {
                // The mail of an older fetch is taken all the same; only
                // the newest one's answer is followed by another fetch.
                let newest = self.relays.fetching.get(&relay) == Some(&id);
                if newest {
                    self.relays.fetching.remove(&relay);
                }
                self.relays.refused.remove(&(relay, "fetch"));
                let n = items.len();
                let mut seqs_kept = true;
                let mut seqs = Vec::with_capacity(n);
                let mut mail = Vec::with_capacity(n);
                let mut chunks = Vec::new();
                for item in items {
                    seqs.push(item.seq);
                    // An older fetch's answer moves no cursor: the newest
                    // may read from the start (after a reconnect).
                    if newest {
                        self.relays.cursor.insert(
                            relay,
                            item.seq
                                .max(self.relays.cursor.get(&relay).copied().unwrap_or(0)),
                        );
                    }
                    match Envelope::from_bytes(&item.envelope) {
                        Ok(env) if env.mailbox_id == self.engine.mailbox_id() => {
                            match crate::crypto::media::relayed_chunk(&env.sealed) {
                                None => mail.push(env),
                                Some(Ok(chunk)) => chunks.push((item.seq, chunk.to_vec())),
                                Some(Err(e)) => {
                                    debug!(%relay, error = %e, "a malformed file chunk at a relay; dropped")
                                }
                            }
                        }
                        _ => debug!(%relay, "unreadable mail at a relay; dropped"),
                    }
                }
                if !mail.is_empty() || !chunks.is_empty() {
                    round.dirty = true;
                    round.unkept = false;
                    self.envelopes(mail, now, round);
                    if !chunks.is_empty() {
                        // After the messages that name them (a file sent
                        // while we were away comes in the same pages).
                        self.media_received(now, round);
                        let left = self.relayed_chunks(chunks, round);
                        if !left.is_empty() {
                            // Not kept here: the relay keeps them, and they
                            // come again when this mailbox is next read
                            // from its start (at the next connection, or
                            // once room is made).
                            seqs.retain(|s| !left.contains(s));
                            self.relays.chunks_left.insert(relay);
                        }
                    }
                    if round.unkept {
                        // Envelopes held with a request, or chunks, are
                        // not on our disk: the relay keeps this batch,
                        // fetched again from the start.
                        warn!(%relay, "mail not acknowledged: what it holds could not be written");
                        self.relays.cursor.remove(&relay);
                        seqs.clear();
                        seqs_kept = false;
                    }
                }
                if !seqs.is_empty() {
                    round.events.push(NodeEvent::Drained {
                        relay,
                        envelopes: n,
                    });
                }
                // With what an earlier acknowledgement failed to delete.
                if let Some(mut again) = self.relays.unacked.remove(&relay) {
                    let room = MAX_ACK.saturating_sub(seqs.len());
                    if again.len() > room {
                        let rest = again.split_off(room);
                        self.relays.unacked.insert(relay, rest);
                    }
                    seqs.extend(again);
                }
                if !seqs.is_empty()
                    && let Some(key) = peer_key(&relay)
                {
                    let mailbox_key = self.engine.mailbox_key();
                    let owner = Owner::new(mailbox_key, key, now, &mut rand::rng());
                    // Sent after this round's flush: what was taken
                    // is on our disk before the relay deletes it; what
                    // was refused, its sender still holds (its outbox
                    // sends it again until a receipt comes).
                    round.outs.push(Out::Mailbox {
                        relay,
                        addrs: Vec::new(),
                        request: Request::Ack(Signed::new(
                            mailbox_key,
                            mailbox::Ack {
                                owner,
                                seqs: seqs.clone(),
                            },
                        )),
                        purpose: Purpose::Ack { seqs },
                    });
                }
                if newest && self.relays.reread.remove(&relay) {
                    // Room was made since this fetch went: the next one
                    // reads from the start.
                    self.relays.cursor.remove(&relay);
                }
                if newest && self.relays.up.contains(&relay) {
                    // More at once only after a page that brought some and
                    // was kept: a relay saying "more" with nothing, or a
                    // page we could not write, is asked again later, not
                    // in a loop.
                    if !seqs_kept {
                        // The tick asks again (see the fetch failures).
                        self.relays.retry_at.insert(relay, now + FETCH_RETRY);
                    } else {
                        self.fetch(
                            relay,
                            if more && n > 0 { 0 } else { FETCH_WAIT },
                            now,
                            round,
                        );
                    }
                }
            }
            (Purpose::Fetch { id }, other) if self.relays.fetching.get(&relay) != Some(&id) => {
                debug!(%relay, answer = ?other.map(|r| short(&r)), "an older fetch of our mail ended");
            }
            (Purpose::Fetch { .. }, other) => {
                self.relays.fetching.remove(&relay);
                // A refusal that asking again soon will not change (our
                // clock, the wrong relay) is told, and asked again less often.
                let wait = match &other {
                    Ok(Response::Refused(why)) => {
                        self.mailbox_refused(relay, "fetch", *why, round);
                        if *why == Refusal::RateLimited {
                            FETCH_RETRY
                        } else {
                            FETCH_REFUSED_RETRY
                        }
                    }
                    _ => FETCH_RETRY,
                };
                self.relays.retry_at.insert(relay, now + wait);
                warn!(%relay, answer = ?other.map(|r| short(&r)), "fetching our mail failed");
            }
            (Purpose::Ack { .. }, Ok(Response::Acked(_))) => {
                self.relays.refused.remove(&(relay, "ack"));
            }
            (Purpose::Ack { seqs }, other) => {
                // Sent again with the next fetch's answer (and the mail
                // comes again after a reconnect: stored once).
                debug!(%relay, answer = ?other.as_ref().map(short), "ack at our relay failed");
                if let Ok(Response::Refused(why)) = &other {
                    self.mailbox_refused(relay, "ack", *why, round);
                }
                if self.relays.up.contains(&relay) {
                    let unacked = self.relays.unacked.entry(relay).or_default();
                    let room = MAX_ACK.saturating_sub(unacked.len());
                    unacked.extend(seqs.into_iter().take(room));
                }
            }
            (Purpose::Forward, answer) => {
                debug!(%relay, answer = ?answer.map(|r| short(&r)), "receipt left at a relay");
            }
            (Purpose::Publish { topped_up }, Ok(Response::Published(left))) => {
                self.relays.refused.remove(&(relay, "publish"));
                debug!(%relay, left, "prekeys held at our relay");
                round.events.push(NodeEvent::PrekeysPublished {
                    relay,
                    one_time: left,
                });
                if !topped_up && left < ONE_TIME_LOW {
                    self.publish_prekeys(relay, ONE_TIME_TOP_UP, now, round);
                }
            }
            (Purpose::Publish { .. }, other) => {
                if let Ok(Response::Refused(why)) = &other {
                    self.mailbox_refused(relay, "publish", *why, round);
                }
                warn!(%relay, answer = ?other.map(|r| short(&r)), "publishing our prekeys failed");
            }
            (Purpose::Prekeys { contact }, Ok(Response::Prekeys(Some(bundle)))) => {
                let one_time = bundle.one_time.is_some();
                match self.engine.take_bundle(&contact, bundle, now) {
                    Ok(restarted) => {
                        round.dirty = true;
                        if restarted {
                            self.retry(now, round);
                        }
                        round.events.push(NodeEvent::ContactPrekeys {
                            contact,
                            relay,
                            one_time,
                        });
                    }
                    Err(e) => {
                        warn!(%relay, error = %e, "a contact's relay served a bundle not of it")
                    }
                }
            }
            (Purpose::Prekeys { .. }, other) => {
                debug!(%relay, answer = ?other.map(|r| short(&r)), "no prekeys from a contact's relay");
            }
            (Purpose::Chunks { pos, digests }, answer) => {
                self.chunks_answer(pos, relay, digests, answer, now, round);
            }
            (Purpose::Deposit { pos, to, envelope }, answer) => {
                self.relays.depositing.remove(&(pos, relay));
                match answer {
                    Ok(Response::Custody(receipt)) => {
                        let valid = peer_key(&relay).is_some_and(|k| {
                            receipt.verify(&k, std::slice::from_ref(&envelope)).is_ok()
                        });
                        if !valid {
                            warn!(%relay, "custody receipt does not verify; not counted");
                            return;
                        }
                        let h = self.relays.held.entry(pos).or_default();
                        h.relays.insert(relay);
                        h.at = now;
                        // A file's message is held whole once its chunks
                        // are too.
                        if self.deposit_chunks(pos, relay, &to, &envelope, now, round) {
                            return;
                        }
                        match self.engine.stored_at_relay(pos) {
                            Ok(ev) => {
                                round.dirty |= !ev.is_empty();
                                self.events(ev, &[0; 32], round);
                            }
                            Err(e) => warn!(error = %e, "recording custody"),
                        }
                    }
                    Ok(Response::Refused(reason)) => {
                        warn!(%relay, %reason, "relay refused a deposit");
                        if let Some(message) = self
                            .engine
                            .message_ref(pos)
                            .or_else(|| self.engine.group_message_ref(pos))
                        {
                            round.events.push(NodeEvent::RelayRefused {
                                message,
                                relay,
                                reason,
                            });
                        }
                    }
                    other => {
                        debug!(%relay, answer = ?other.map(|r| short(&r)), "deposit failed")
                    }
                }
            }
        }
    }

    /// An envelope for our mailbox (from the mesh or a relay).
    fn envelope(&mut self, env: Envelope, now: u64, round: &mut Round) {
        self.envelopes(vec![env], now, round);
    }

    /// Envelopes for us (mail fetched from a relay, or one from the mesh):
    /// each contact's frames handled together,
    /// in the order they came, so that a contact gets one delivered
    /// receipt for a batch of its messages, not one each.
    fn envelopes(&mut self, envs: Vec<Envelope>, now: u64, round: &mut Round) {
        let mut by_sender: Vec<([u8; 32], Vec<Vec<u8>>)> = Vec::new();
        let mut strangers = Vec::new();
        let mut introduced = Vec::new();
        for env in envs {
            match self.engine.open_envelope(&env) {
                Ok(Opened::Frame { from, frame }) => {
                    match by_sender.iter_mut().find(|(f, _)| *f == from) {
                        Some((_, frames)) => frames.push(frame),
                        None => by_sender.push((from, vec![frame])),
                    }
                }
                Ok(Opened::Intro {
                    from,
                    invite,
                    carries,
                }) => {
                    let key = from.signing;
                    if self.introduced(from, *invite, now, round) {
                        introduced.push(key);
                        if carries {
                            strangers.push((key, env));
                        }
                    }
                }
                // Kept after this batch's introductions, which may come
                // after them in it.
                Ok(Opened::Stranger(from)) => strangers.push((from, env)),
                // A contact that accepted our request (or added us):
                // what it refused so far is due again.
                Ok(Opened::Known(from)) => {
                    if self.engine.heard_from(&from, now) {
                        self.retry(now, round);
                    }
                }
                // Not ours after all, or not from a contact: forwarded
                // anyway (gossip), nothing else to do.
                Err(e) => debug!(error = %e, "envelope not opened"),
            }
        }
        for (from, env) in strangers {
            // A removed contact writing again (in the session it still
            // has: no invite comes with it) is a request, from what it was
            // known by.
            if let Some((identity, invite)) = self.requests.former(&from) {
                self.introduced(identity, invite, now, round);
            }
            match self.requests.hold(&from, &env) {
                Some(n) => self.keep_held(&from, n, &env.to_bytes(), round),
                None => debug!("an envelope from a device that is not a contact; dropped"),
            }
        }
        for (from, frames) in by_sender {
            for chunk in frames.chunks(RECEIVE_CHUNK) {
                match self.engine.receive(&from, chunk, now, false) {
                    Ok(h) => self.handled(&from, h, now, round),
                    Err(e) => warn!(error = %e, frames = chunk.len(), "mail refused"),
                }
            }
        }
        self.accept_listed(&introduced, now, round);
    }

    /// The requests of `keys` from devices that the newest list of a
    /// contact's account names are accepted at once: that account vouches
    /// for them (docs/devices.md, "Contact requests and devices"). Each
    /// becomes a contact of its own ("alice laptop"), and what it sent is
    /// read.
    fn accept_listed(&mut self, keys: &[[u8; 32]], now: u64, round: &mut Round) {
        for key in keys {
            // Most requests are of devices no list names: no signature
            // checked for those, however often they introduce themselves.
            if !self.engine.is_listed(key) {
                continue;
            }
            let Some(request) = self.requests.take(key) else {
                continue;
            };
            // One the person removed or declined stays for the person.
            if self.requests.is_former(key) || self.requests.is_declined(key) {
                self.requests.restore(request);
                continue;
            }
            let Some(name) = self.engine.listed_device_name(&request.invite) else {
                self.requests.restore(request);
                continue;
            };
            if let Err(e) = self.engine.add_contact(&request.invite, &name) {
                if let Ok(peer) = request.identity.peer_id()
                    && let Some(skipped) = self.complaints.note(
                        &peer,
                        "a device of a contact's account not added",
                        Instant::now(),
                    )
                {
                    warn!(error = %e, skipped, "a device of a contact's account not added");
                }
                self.requests.restore(request);
                continue;
            }
            round.dirty = true;
            tracing::info!(contact = %crate::store::hex(&key[..4]), %name, "a device of a contact's account is a contact now");
            let account = self.engine.account_of(key);
            self.new_contact(key, now, round);
            self.introduce(key, now, round);
            round.events.push(NodeEvent::ContactDevice {
                contact: *key,
                account,
                name,
            });
            self.add_to_account_groups(key, &account, now, round);
            self.envelopes(request.held, now, round);
        }
    }

    /// Groups follow accounts (docs/devices.md, §3): `device`, a device
    /// that `account` added and a contact here now, is added to every
    /// group this device administers that has a device of that account.
    /// (Another admin may add it too: an addition of a member is taken
    /// once.)
    fn add_to_account_groups(
        &mut self,
        device: &[u8; 32],
        account: &[u8; 32],
        now: u64,
        round: &mut Round,
    ) {
        for group in self.engine.groups_missing_device(account, device) {
            let change = GroupChange::Add {
                contact: *device,
                role: crate::node::groups::Role::Member,
            };
            self.follow_account(&group, change, now, round);
        }
    }

    /// Groups follow accounts: `device`, which its account removed, is
    /// removed from every group this device administers.
    fn remove_from_groups(&mut self, device: &[u8; 32], now: u64, round: &mut Round) {
        for group in self.engine.groups_holding(device) {
            let change = GroupChange::Remove { member: *device };
            self.follow_account(&group, change, now, round);
        }
    }

    fn follow_account(
        &mut self,
        group: &[u8; 32],
        change: GroupChange,
        now: u64,
        round: &mut Round,
    ) {
        match self.engine.change_group(group, change, now) {
            Ok(fx) => {
                info!(group = %crate::store::hex(&group[..4]), "a group follows a change of a member's account");
                self.group_effects(fx, now, round);
            }
            Err(e) => {
                warn!(group = %crate::store::hex(&group[..4]), error = %e, "a group not changed with a member's account")
            }
        }
    }

    /// What frames the contact `from` sent (directly or sealed) gave:
    /// events, replies, group effects; and if it took any, what it refused
    /// before may be due again.
    fn handled(&mut self, from: &[u8; 32], h: Handled, now: u64, round: &mut Round) {
        let took = h.accepted.iter().any(|a| *a);
        // Contacts the account shared with this device (reachable now, and
        // told who this device is: they take it in as the account's), and
        // devices a contact's account added that wait as requests.
        let (mut shared, mut added, mut removed) = (Vec::new(), Vec::new(), Vec::new());
        let mut unlisted = Vec::new();
        for e in &h.events {
            match e {
                Event::ContactDeviceRemoved { gone, .. } => removed.push((**gone).clone()),
                Event::AccountJoined { .. } => self.joining = None,
                Event::AccountContacts { added: keys } => shared.extend_from_slice(keys),
                Event::DevicesChanged(c) => {
                    added.extend(
                        c.added
                            .iter()
                            .filter(|k| self.requests.is_waiting(k))
                            .copied(),
                    );
                    unlisted.extend_from_slice(&c.removed);
                }
                _ => {}
            }
        }
        self.events(h.events, from, round);
        for gone in removed {
            // Its event (`ContactDeviceRemoved`) went with the others. Kept
            // as a former contact only while that pushes out none the
            // person removed: an account can add and remove devices.
            let room = self.requests.has_room_for_made();
            self.forgotten(gone, room, now, round);
        }
        for r in h.replies {
            self.route(from, r, None, now, round);
        }
        self.group_effects(h.group, now, round);
        if (took && self.engine.heard_from(from, now)) || h.restarted {
            self.retry(now, round);
        }
        for device in unlisted {
            self.remove_from_groups(&device, now, round);
        }
        self.accept_listed(&added, now, round);
        for key in shared {
            self.new_contact(&key, now, round);
            self.introduce(&key, now, round);
        }
    }

    /// Does what a group change or message asks: new members become
    /// reachable contacts, queued and reply frames are routed, group
    /// messages published, topics joined or left.
    fn group_effects(&mut self, fx: GroupEffects, now: u64, round: &mut Round) {
        round.dirty = true;
        for key in &fx.new_contacts {
            if self.announce_contact(key) {
                self.await_dial(key, now);
            }
            // A request it sent waits for the person still (accepting it
            // makes the contact theirs); otherwise what was declined or
            // removed of it is forgotten.
            if !self.requests.is_waiting(key) {
                self.forget_request(key, now, round);
            }
        }
        self.route_due(fx.due, now, round);
        for (to, frame) in fx.replies {
            self.route(&to, frame, None, now, round);
        }
        for topic in fx.subscribe {
            round.outs.push(Out::Subscribe { topic });
        }
        for topic in fx.unsubscribe {
            round.outs.push(Out::Unsubscribe { topic });
        }
        for p in fx.publish {
            // Their peers, to tell whether publishing reaches them all (a
            // member with no known peer id cannot be reached directly).
            let members = p
                .members
                .iter()
                .map(|k| self.peer_of.get(k).copied())
                .collect();
            round.outs.push(Out::GroupPublish {
                topic: p.topic,
                message: p.message,
                members,
            });
        }
        // Group events name no single sender: messages carry theirs.
        for e in fx.events {
            let from = match &e {
                Event::MessageReceived(m) => m.sender,
                _ => [0; 32],
            };
            self.events(vec![e], &from, round);
        }
    }

    fn events(&self, events: Vec<Event>, from: &[u8; 32], round: &mut Round) {
        for e in events {
            round.events.push(match e {
                Event::MessageReceived(message) => NodeEvent::Message {
                    from: *from,
                    message,
                },
                Event::Receipt { message, state } => NodeEvent::Receipt { message, state },
                Event::Expired { message } => NodeEvent::Expired { message },
                Event::GroupExpired { message, member } => {
                    NodeEvent::GroupExpired { message, member }
                }
                Event::GroupReceipt {
                    message,
                    delivered,
                    read,
                    members,
                } => NodeEvent::GroupReceipt {
                    message,
                    delivered,
                    read,
                    members,
                },
                Event::GroupChanged { group } => NodeEvent::GroupChanged { group },
                Event::RetentionChanged { conv, secs } => NodeEvent::RetentionChanged {
                    conversation: conv,
                    contact: *from,
                    secs,
                },
                Event::DevicesChanged(change) => NodeEvent::DevicesChanged {
                    contact: *from,
                    change,
                },
                Event::DevicesConflict { account, serial } => NodeEvent::DevicesConflict {
                    contact: *from,
                    account,
                    serial,
                },
                Event::DeviceLinked { device, name } => NodeEvent::DeviceLinked { device, name },
                Event::AccountContacts { added } => NodeEvent::AccountContacts { added },
                Event::AccountJoined { account, serial } => {
                    NodeEvent::AccountJoined { account, serial }
                }
                Event::DeviceUnlinked { device, name } => {
                    NodeEvent::DeviceUnlinked { device, name }
                }
                Event::ContactDeviceRemoved { account, gone } => NodeEvent::ContactDeviceRemoved {
                    contact: gone.key,
                    account,
                    name: gone.name,
                },
                Event::AccountLeft { account, serial } => {
                    NodeEvent::AccountLeft { account, serial }
                }
            });
        }
    }
}

/// The first relay of a bundle's list that parses.
fn first_relay(relays: &[String]) -> Option<(PeerId, Vec<Multiaddr>)> {
    relays
        .iter()
        .find_map(|t| t.parse().ok().as_ref().and_then(parse_relay))
}

/// A response in a few words, for logs (mail is not logged).
fn short(r: &Response) -> String {
    match r {
        Response::Custody(_) => "custody".into(),
        Response::Refused(reason) => format!("refused: {reason}"),
        Response::Mail { items, more } => format!("{} envelopes, more: {more}", items.len()),
        Response::Acked(n) => format!("acked {n}"),
        Response::Published(n) => format!("prekeys held, {n} one-time"),
        Response::Prekeys(b) => {
            format!("prekeys: {}", if b.is_some() { "a bundle" } else { "none" })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(state: DeliveryState) -> NodeEvent {
        let message = MessageRef {
            conv_id: [1; 32],
            lamport: 1,
            sender: [2; 32],
            msg_id: [3; 16],
        };
        NodeEvent::Receipt { message, state }
    }

    #[test]
    fn only_a_contact_s_delivered_goes_out_before_the_flush() {
        let mut round = Round::default();
        assert!(!round.needs_disk(), "nothing to tell");
        round.events.push(receipt(DeliveryState::Delivered));
        round.events.push(receipt(DeliveryState::Delivered));
        assert!(!round.needs_disk(), "what the contact's disk holds");
        round.events.push(receipt(DeliveryState::Sent));
        assert!(round.needs_disk(), "\"sent\" is about our own disk");

        // A read receipt comes once: our record of it waits for the disk.
        let mut round = Round::default();
        round.events.push(receipt(DeliveryState::Read));
        assert!(round.needs_disk());
        let mut round = Round::default();
        let NodeEvent::Receipt { message, .. } = receipt(DeliveryState::Read) else {
            unreachable!()
        };
        round.events.push(NodeEvent::GroupReceipt {
            message,
            delivered: 1,
            read: 1,
            members: 2,
        });
        assert!(round.needs_disk(), "a group's counts carry reads");

        let mut round = Round::default();
        round.events.push(receipt(DeliveryState::StoredAtRelay));
        assert!(round.needs_disk());

        let mut round = Round::default();
        round.events.push(receipt(DeliveryState::Delivered));
        let (tx, _rx) = oneshot::channel::<Result<(), NodeError>>();
        round.reply(tx, Ok(()));
        assert!(round.needs_disk(), "an answer to a caller");

        let mut round = Round::default();
        round.outs.push(Out::Subscribe { topic: [4; 32] });
        assert!(round.needs_disk(), "a command to the swarm's task");

        let mut round = Round::default();
        round.direct.insert(PeerId::random(), Vec::new());
        assert!(round.needs_disk(), "a frame or an ack for a peer");

        let round = Round {
            stop: true,
            ..Round::default()
        };
        assert!(round.needs_disk(), "the last round");
    }
}
