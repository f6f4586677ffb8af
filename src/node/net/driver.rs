//! [`Net`]: the swarm plus the state the network layer keeps beside it. The
//! node actor owns one and calls these methods from its single task.

use std::collections::HashSet;
use std::time::Instant;

use libp2p::futures::StreamExt;
use libp2p::gossipsub::{self, MessageId, PublishError};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId, Swarm, identity, kad};

use super::behaviour::{Behaviour, build_swarm};
use super::events::{GossipMessage, NetEvent};
use super::prune::Pruner;
use super::topic::Topic;
use super::validate::{GossipValidator, Verdict};
use super::{NetConfig, NetError, direct};

/// The outcome of a publish that did not fail outright.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Handed to at least one peer's queue.
    Sent(MessageId),
    /// These exact bytes were published or received within the duplicate
    /// window: nothing was sent now, the mesh already has them.
    Duplicate,
    /// No connected peer is subscribed to the topic (yet): not sent.
    NoPeers,
    /// Every subscribed peer's queue was full: not sent (pace and retry).
    QueuesFull {
        /// Peers that were tried.
        peers: usize,
    },
}

impl Published {
    /// Whether the message left this node now.
    pub fn is_sent(&self) -> bool {
        matches!(self, Self::Sent(_))
    }
}

/// The swarm and its companions.
pub struct Net {
    pub(super) swarm: Swarm<Behaviour>,
    pub(super) validator: GossipValidator,
    direct_limits: direct::Limits,
    inbox_shards: u16,
    /// Closes incoming connections to make room (off on a relay).
    pub(super) pruner: Option<Pruner>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("peer_id", self.swarm.local_peer_id())
            .field("connected", &self.swarm.connected_peers().count())
            .finish_non_exhaustive()
    }
}

impl Net {
    /// Builds the swarm, starts listening on `cfg.listen`, asks each relay
    /// in `cfg.relays` for a reservation, dials the bootstrap peers and
    /// starts a Kademlia bootstrap. Must run inside a tokio runtime.
    pub fn start(keypair: identity::Keypair, cfg: &NetConfig) -> Result<Self, NetError> {
        let swarm = build_swarm(keypair, cfg)?;
        let mut net = Self {
            swarm,
            validator: GossipValidator::new(
                cfg.gossip_limits,
                cfg.gossip_rate,
                cfg.gossip_rate_peers,
            ),
            direct_limits: cfg.direct_limits,
            inbox_shards: cfg.inbox_shards.max(1),
            pruner: cfg
                .prune_grace
                .map(|grace| Pruner::new(cfg.max_inbound_connections, grace)),
        };
        for addr in &cfg.listen {
            net.listen_on(addr.clone())?;
        }
        for relay in &cfg.relays {
            net.listen_via_relay(relay.clone())?;
        }
        for (peer, addr) in &cfg.bootstrap {
            net.add_address(peer, addr.clone());
            net.dial_peer(*peer, vec![addr.clone()])?;
        }
        if !cfg.bootstrap.is_empty() {
            net.bootstrap()?;
        }
        Ok(net)
    }

    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// Never closes `peer`'s connections to make room (a contact, a relay).
    pub fn protect(&mut self, peer: PeerId) {
        if let Some(pruner) = &mut self.pruner {
            pruner.protect(peer);
        }
    }

    /// Undoes [`Self::protect`].
    pub fn unprotect(&mut self, peer: &PeerId) {
        if let Some(pruner) = &mut self.pruner {
            pruner.unprotect(peer);
        }
    }

    /// Closes incoming connections if there are too many (see
    /// [`super::prune`]).
    pub(super) fn prune(&mut self) {
        // Cheap when there is room: this runs on every incoming connection
        // and every refused one.
        let Some(pruner) = self.pruner.as_mut().filter(|p| p.over()) else {
            return;
        };
        let in_mesh: HashSet<PeerId> = self
            .swarm
            .behaviour()
            .gossipsub
            .all_mesh_peers()
            .copied()
            .collect();
        for id in pruner.pick(&in_mesh, Instant::now()) {
            tracing::debug!(connection = %id, "closing an incoming connection to make room");
            self.swarm.close_connection(id);
        }
    }

    /// A handle that opens (and, for a relay, accepts) plain streams of
    /// our own protocols on this swarm's connections.
    pub fn stream_control(&self) -> libp2p_stream::Control {
        self.swarm.behaviour().stream.new_control()
    }

    /// The swarm, for what this wrapper does not cover.
    pub fn swarm(&self) -> &Swarm<Behaviour> {
        &self.swarm
    }

    /// The swarm, mutably.
    pub fn swarm_mut(&mut self) -> &mut Swarm<Behaviour> {
        &mut self.swarm
    }

    /// Addresses we currently listen on.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.swarm.listeners().cloned().collect()
    }

    /// Whether at least one connection to `peer` is open.
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.swarm.is_connected(peer)
    }

    /// Starts listening on one more address.
    pub fn listen_on(&mut self, addr: Multiaddr) -> Result<(), NetError> {
        self.swarm
            .listen_on(addr.clone())
            .map(|_| ())
            .map_err(|e| NetError::Listen {
                addr,
                reason: e.to_string(),
            })
    }

    /// Reserves a slot on a circuit relay (`.../p2p/<relay id>`), so that
    /// peers can reach us through it.
    pub fn listen_via_relay(&mut self, relay: Multiaddr) -> Result<(), NetError> {
        let Some(Protocol::P2p(relay_id)) = relay.iter().last() else {
            return Err(NetError::RelayWithoutPeerId(relay));
        };
        self.reserve_on(relay_id, &relay).map(|_| ())
    }

    /// Asks the relay `relay`, reached at `addr` (with or without its
    /// `/p2p/<id>`), for a circuit reservation; the listener it opens
    /// closes if the relay refuses or its connection drops
    /// ([`NetEvent::ListenerClosed`] names it).
    pub fn reserve_on(
        &mut self,
        relay: PeerId,
        addr: &Multiaddr,
    ) -> Result<libp2p::core::transport::ListenerId, NetError> {
        let mut bare = addr.clone();
        if let Some(Protocol::P2p(_)) = bare.iter().last() {
            bare.pop();
        }
        self.add_address(&relay, bare.clone());
        let circuit = bare.with(Protocol::P2p(relay)).with(Protocol::P2pCircuit);
        self.swarm
            .listen_on(circuit.clone())
            .map_err(|e| NetError::Listen {
                addr: circuit,
                reason: e.to_string(),
            })
    }

    /// Dials an address (its peer id, if any, is checked by the handshake).
    pub fn dial(&mut self, addr: Multiaddr) -> Result<(), NetError> {
        self.swarm.dial(addr.clone()).map_err(|e| NetError::Dial {
            target: addr.to_string(),
            reason: e.to_string(),
        })
    }

    /// Dials `peer` unless already connected or dialling, trying `addrs`
    /// and whatever the behaviours know (Kademlia, mDNS).
    pub fn dial_peer(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<(), NetError> {
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .addresses(addrs)
            .extend_addresses_through_behaviour()
            .build();
        self.dial_with(peer, opts)
    }

    /// Dials a peer found by mDNS. Both ends usually discover each other
    /// at the same moment and dial at once; with libp2p's default of
    /// reusing the listening port for outgoing TCP, the two dials become
    /// one TCP simultaneous open on which both sides start the Noise
    /// handshake as initiator, and both fail ("input error"). A fresh
    /// source port keeps the two dials apart (port reuse only matters for
    /// hole punching, which a LAN does not need).
    pub(super) fn dial_discovered(
        &mut self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    ) -> Result<(), NetError> {
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .addresses(addrs)
            .allocate_new_port()
            .build();
        self.dial_with(peer, opts)
    }

    fn dial_with(&mut self, peer: PeerId, opts: DialOpts) -> Result<(), NetError> {
        match self.swarm.dial(opts) {
            Ok(()) => Ok(()),
            // Already connected or dialling: nothing to do.
            Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => Ok(()),
            Err(e) => Err(NetError::Dial {
                target: peer.to_string(),
                reason: e.to_string(),
            }),
        }
    }

    /// The inbox topic of a mailbox, with this node's shard count.
    pub fn inbox_topic(&self, mailbox_id: &[u8; 32]) -> Topic {
        Topic::inbox_for(mailbox_id, self.inbox_shards)
    }

    /// Subscribes to a topic; `false` if already subscribed.
    pub fn subscribe(&mut self, topic: &Topic) -> Result<bool, NetError> {
        self.swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&topic.ident())
            .map_err(|e| NetError::Subscribe {
                topic: topic.to_string(),
                reason: e.to_string(),
            })
    }

    /// Unsubscribes; `false` if we were not subscribed.
    pub fn unsubscribe(&mut self, topic: &Topic) -> bool {
        self.swarm
            .behaviour_mut()
            .gossipsub
            .unsubscribe(&topic.ident())
    }

    /// Publishes `data` on `topic`. "Not sent" outcomes are values, so the
    /// outbox can retry them; only real failures are errors.
    pub fn publish(&mut self, topic: &Topic, data: Vec<u8>) -> Result<Published, NetError> {
        let max = self.validator.limits().max_for(topic.kind());
        let len = data.len();
        let too_large = || NetError::GossipTooLarge {
            topic: topic.to_string(),
            len,
            max,
        };
        if len > max {
            return Err(too_large());
        }
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic.ident(), data)
        {
            Ok(id) => Ok(Published::Sent(id)),
            Err(PublishError::Duplicate) => Ok(Published::Duplicate),
            Err(PublishError::NoPeersSubscribedToTopic) => Ok(Published::NoPeers),
            Err(PublishError::AllQueuesFull(peers)) => Ok(Published::QueuesFull { peers }),
            Err(PublishError::MessageTooLarge) => Err(too_large()),
            Err(e) => Err(NetError::Publish {
                topic: topic.to_string(),
                reason: e.to_string(),
            }),
        }
    }

    /// The network-level checks (rate, size, version) for a received
    /// message, without reporting anything. See [`Net::validate_gossip`].
    pub fn check_gossip(&mut self, msg: &GossipMessage) -> Verdict {
        self.validator
            .check(&msg.source, Some(&msg.topic), &msg.data, Instant::now())
    }

    /// Validates a received message: the network-level checks, then (if
    /// they pass) the node's own `extra` check on the payload; reports the
    /// verdict to gossipsub (which forwards only accepted messages) and
    /// returns it. Call once per [`NetEvent::Gossip`].
    pub fn validate_gossip(
        &mut self,
        msg: &GossipMessage,
        extra: impl FnOnce(&[u8]) -> Verdict,
    ) -> Verdict {
        let verdict = self.check_gossip(msg).and_then(|| extra(&msg.data));
        self.report_gossip(&msg.id, &msg.source, verdict);
        verdict
    }

    /// Reports a verdict for a received message; `false` if gossipsub no
    /// longer holds it (already reported, or expired from its cache).
    pub fn report_gossip(&mut self, id: &MessageId, source: &PeerId, verdict: Verdict) -> bool {
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(id, source, verdict.acceptance())
    }

    /// Peers we know to be subscribed to `topic`.
    pub fn topic_peers(&self, topic: &Topic) -> Vec<PeerId> {
        let hash = topic.hash();
        self.swarm
            .behaviour()
            .gossipsub
            .all_peers()
            .filter(|(_, topics)| topics.contains(&&hash))
            .map(|(peer, _)| *peer)
            .collect()
    }

    /// Sends a batch on `/meshchat/direct/1`, dialling if needed. The batch
    /// is checked against the protocol limits first; the answer comes as
    /// [`NetEvent::DirectAck`] or [`NetEvent::DirectFailed`].
    pub fn send_direct(
        &mut self,
        peer: &PeerId,
        batch: direct::Batch,
    ) -> Result<OutboundRequestId, NetError> {
        batch
            .check(&self.direct_limits)
            .map_err(|source| NetError::Direct {
                peer: *peer,
                source,
            })?;
        Ok(self.swarm.behaviour_mut().direct.send_request(peer, batch))
    }

    /// Answers a [`NetEvent::DirectRequest`].
    pub fn respond_direct(
        &mut self,
        channel: ResponseChannel<direct::Ack>,
        ack: direct::Ack,
    ) -> Result<(), NetError> {
        self.swarm
            .behaviour_mut()
            .direct
            .send_response(channel, ack)
            .map_err(|_| NetError::ResponseChannelClosed)
    }

    /// Asks `peer` for the media chunk `name` on `/meshchat/media/1`,
    /// dialling if needed; the answer comes as [`NetEvent::MediaAnswer`] or
    /// [`NetEvent::MediaFailed`].
    pub fn send_media(&mut self, peer: &PeerId, name: [u8; 32]) -> OutboundRequestId {
        self.swarm
            .behaviour_mut()
            .media
            .send_request(peer, super::media::ChunkRequest(name))
    }

    /// Answers a [`NetEvent::MediaRequest`].
    pub fn respond_media(
        &mut self,
        channel: ResponseChannel<super::media::ChunkAnswer>,
        answer: super::media::ChunkAnswer,
    ) -> Result<(), NetError> {
        self.swarm
            .behaviour_mut()
            .media
            .send_response(channel, answer)
            .map_err(|_| NetError::ResponseChannelClosed)
    }

    /// Sends a request on `/meshchat/mailbox/1`, dialling if needed; the
    /// answer comes as [`NetEvent::MailboxResponse`] or
    /// [`NetEvent::MailboxFailed`].
    pub fn send_mailbox(
        &mut self,
        peer: &PeerId,
        request: crate::relay::proto::Request,
    ) -> OutboundRequestId {
        self.swarm
            .behaviour_mut()
            .mailbox
            .send_request(peer, crate::relay::codec::Inbound::Request(request))
    }

    /// Answers a [`NetEvent::MailboxRequest`].
    pub fn respond_mailbox(
        &mut self,
        channel: ResponseChannel<crate::relay::proto::Response>,
        response: crate::relay::proto::Response,
    ) -> Result<(), NetError> {
        self.swarm
            .behaviour_mut()
            .mailbox
            .send_response(channel, response)
            .map_err(|_| NetError::ResponseChannelClosed)
    }

    /// Adds an address of `peer` to the Kademlia routing table, which
    /// keeps at most [`super::events::MAX_KAD_ADDRS`] per peer (the oldest
    /// goes first).
    /// Kademlia's own list has no bound, and a peer can send identify
    /// pushes with new addresses without end.
    pub fn add_address(&mut self, peer: &PeerId, addr: Multiaddr) {
        let Ok(full) = addr.clone().with_p2p(*peer) else {
            return;
        };
        let held = self.known_addresses(peer);
        if !held.contains(&full) && held.len() >= super::events::MAX_KAD_ADDRS {
            for old in &held[..=held.len() - super::events::MAX_KAD_ADDRS] {
                self.swarm.behaviour_mut().kad.remove_address(peer, old);
            }
        }
        self.swarm.behaviour_mut().kad.add_address(peer, addr);
    }

    /// Announces in the DHT that this node is a relay (re-announced by
    /// Kademlia's provider record republishing).
    pub fn advertise_relay(&mut self) -> Result<(), NetError> {
        self.swarm
            .behaviour_mut()
            .kad
            .start_providing(kad::RecordKey::new(&super::RELAY_PROVIDER_KEY))
            .map(|_| ())
            .map_err(|e| NetError::Dht(e.to_string()))
    }

    /// Addresses the DHT's routing table holds for `peer` (empty if none).
    pub fn known_addresses(&mut self, peer: &PeerId) -> Vec<Multiaddr> {
        let Some(bucket) = self.swarm.behaviour_mut().kad.kbucket(*peer) else {
            return Vec::new();
        };
        bucket
            .iter()
            .find(|e| e.node.key.preimage() == peer)
            .map(|e| e.node.value.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Looks for relays in the DHT; answered by [`NetEvent::RelaysFound`].
    pub fn find_relays(&mut self) {
        self.swarm
            .behaviour_mut()
            .kad
            .get_providers(kad::RecordKey::new(&super::RELAY_PROVIDER_KEY));
    }

    /// Declares an address others can reach us at (a relay server needs
    /// one before it accepts reservations).
    pub fn add_external_address(&mut self, addr: Multiaddr) {
        self.swarm.add_external_address(addr);
    }

    /// Starts a Kademlia bootstrap (the result arrives as
    /// [`NetEvent::Bootstrapped`]).
    pub fn bootstrap(&mut self) -> Result<kad::QueryId, NetError> {
        self.swarm
            .behaviour_mut()
            .kad
            .bootstrap()
            .map_err(|_| NetError::NoKnownPeers)
    }

    /// Looks `peer` up in the DHT; answered by [`NetEvent::PeerFound`] or
    /// [`NetEvent::PeerNotFound`].
    pub fn find_peer(&mut self, peer: PeerId) -> kad::QueryId {
        self.swarm.behaviour_mut().kad.get_closest_peers(peer)
    }

    /// Waits for the next event the node should see, handling the rest
    /// (identify → Kademlia, mDNS → dial) on the way. Cancel-safe: the
    /// only await point is the swarm's own `next`, so it can sit in a
    /// `select!` beside the command channel.
    pub async fn next_event(&mut self) -> NetEvent {
        loop {
            let event = self.swarm.select_next_some().await;
            if let Some(event) = self.on_swarm_event(event) {
                return event;
            }
        }
    }

    /// Reports a received message we cannot even attribute to a topic.
    pub(super) fn reject_unknown(&mut self, id: &MessageId, source: &PeerId) {
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(id, source, gossipsub::MessageAcceptance::Reject);
    }
}
