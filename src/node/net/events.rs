//! [`NetEvent`]: what the network layer hands to the node, and the
//! translation from raw swarm events (housekeeping is done here: identify
//! feeds Kademlia, mDNS discoveries are dialled).

use std::collections::BTreeMap;
use std::time::Instant;

use libp2p::gossipsub::{self, MessageId};
use libp2p::request_response::{self, OutboundFailure, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, identify, kad, mdns, relay};
use tracing::{debug, trace};

use super::behaviour::{BehaviourEvent, KAD_PROTOCOL};
use super::direct;
use super::driver::Net;
use super::topic::Topic;
use crate::relay::codec::Inbound;
use crate::relay::proto::Response;

/// Most listen addresses taken from one identify message into Kademlia.
const MAX_IDENTIFY_ADDRS: usize = 16;
/// Most addresses the DHT's routing table keeps for one peer.
pub(super) const MAX_KAD_ADDRS: usize = 16;

/// How far an address reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Reach {
    /// This host only.
    Loopback,
    /// A private network (RFC 1918, shared address space, link-local,
    /// unique local).
    Private,
    /// Anywhere (a public address, or a DNS name).
    Global,
}

/// The reach of an address, by its first IP (or DNS) part; `None` for one
/// with neither, or an unspecified IP.
pub(crate) fn reach(addr: &Multiaddr) -> Option<Reach> {
    use libp2p::multiaddr::Protocol;
    let first = addr.iter().find(|p| {
        matches!(
            p,
            Protocol::Ip4(_)
                | Protocol::Ip6(_)
                | Protocol::Dns(_)
                | Protocol::Dns4(_)
                | Protocol::Dns6(_)
                | Protocol::Dnsaddr(_)
        )
    })?;
    Some(match first {
        Protocol::Ip4(ip) if ip.is_unspecified() => return None,
        Protocol::Ip4(ip) if ip.is_loopback() => Reach::Loopback,
        // RFC 1918, link-local and the shared address space 100.64.0.0/10.
        Protocol::Ip4(ip)
            if ip.is_private()
                || ip.is_link_local()
                || (ip.octets()[0] == 100 && ip.octets()[1] & 0xc0 == 64) =>
        {
            Reach::Private
        }
        Protocol::Ip6(ip) if ip.is_unspecified() => return None,
        Protocol::Ip6(ip) if ip.is_loopback() => Reach::Loopback,
        Protocol::Ip6(ip) if ip.is_unique_local() || ip.is_unicast_link_local() => Reach::Private,
        _ => Reach::Global,
    })
}

/// Whether a peer's listen address `addr` is on a network we share with
/// it, when it sees us at an address of reach `seen`: a public address
/// always; a private one if it sees us on a private network or this host;
/// a loopback one only if it is on this host.
pub(crate) fn shared(addr: &Multiaddr, seen: Reach) -> bool {
    reach(addr).is_some_and(|r| r >= seen)
}
/// Most peers taken from one mDNS discovery event.
const MAX_MDNS_PEERS: usize = 64;

/// A gossip message waiting for the node's verdict.
#[derive(Debug, Clone)]
pub struct GossipMessage {
    /// The peer that forwarded it to us (not its author: gossip is anonymous).
    pub source: PeerId,
    /// SHA-256 of `data`.
    pub id: MessageId,
    /// Where it was published.
    pub topic: Topic,
    /// The payload.
    pub data: Vec<u8>,
}

/// Something the node should know about.
#[derive(Debug)]
#[non_exhaustive]
pub enum NetEvent {
    /// We listen on a new address.
    Listening {
        /// The address.
        addr: Multiaddr,
    },
    /// The first connection to a peer is up.
    Connected {
        /// The peer.
        peer: PeerId,
        /// Its address on that connection.
        addr: Multiaddr,
    },
    /// The last connection to a peer closed.
    Disconnected {
        /// The peer.
        peer: PeerId,
    },
    /// mDNS found peers on the LAN (already being dialled).
    Discovered {
        /// The peers, each once.
        peers: Vec<PeerId>,
    },
    /// A peer subscribed to one of our topics' names.
    Subscribed {
        /// The peer.
        peer: PeerId,
        /// The topic.
        topic: Topic,
    },
    /// A peer unsubscribed.
    Unsubscribed {
        /// The peer.
        peer: PeerId,
        /// The topic.
        topic: Topic,
    },
    /// A gossip message: pass it to [`Net::validate_gossip`].
    Gossip(GossipMessage),
    /// A peer sent a direct batch: answer with [`Net::respond_direct`].
    DirectRequest {
        /// The sender (authenticated by the connection).
        peer: PeerId,
        /// The frames.
        batch: direct::Batch,
        /// Where the ack goes.
        channel: ResponseChannel<direct::Ack>,
    },
    /// A peer acknowledged one of our batches.
    DirectAck {
        /// The peer.
        peer: PeerId,
        /// Which request.
        request: OutboundRequestId,
        /// Its answer.
        ack: direct::Ack,
    },
    /// A batch of ours was not acknowledged (dial failure, timeout, the
    /// peer does not speak the protocol, or its ack was malformed).
    DirectFailed {
        /// The peer.
        peer: PeerId,
        /// Which request.
        request: OutboundRequestId,
        /// Why.
        error: OutboundFailure,
    },
    /// A peer asks for a media chunk: answer with [`Net::respond_media`].
    MediaRequest {
        /// The peer (authenticated by the connection).
        peer: PeerId,
        /// The chunk's name.
        name: [u8; 32],
        /// Where the answer goes.
        channel: ResponseChannel<super::media::ChunkAnswer>,
    },
    /// A peer answered one of our media requests.
    MediaAnswer {
        /// The peer.
        peer: PeerId,
        /// Which request.
        request: OutboundRequestId,
        /// The chunk, or why not.
        answer: super::media::ChunkAnswer,
    },
    /// A media request of ours got no answer.
    MediaFailed {
        /// The peer.
        peer: PeerId,
        /// Which request.
        request: OutboundRequestId,
    },
    /// A peer sent a mailbox request: answer with [`Net::respond_mailbox`].
    MailboxRequest {
        /// The peer (authenticated by the connection).
        peer: PeerId,
        /// The request.
        request: Inbound,
        /// Where the answer goes.
        channel: ResponseChannel<Response>,
    },
    /// A relay answered one of our mailbox requests.
    MailboxResponse {
        /// The relay.
        peer: PeerId,
        /// Which request.
        request: OutboundRequestId,
        /// Its answer.
        response: Response,
    },
    /// A mailbox request of ours got no answer.
    MailboxFailed {
        /// The relay.
        peer: PeerId,
        /// Which request.
        request: OutboundRequestId,
        /// Why.
        error: OutboundFailure,
    },
    /// A Kademlia bootstrap finished.
    Bootstrapped {
        /// Whether it reached at least one peer.
        ok: bool,
    },
    /// A DHT lookup found the peer.
    PeerFound {
        /// The peer.
        peer: PeerId,
        /// Its addresses.
        addrs: Vec<Multiaddr>,
    },
    /// A DHT lookup ended without finding the peer.
    PeerNotFound {
        /// The peer.
        peer: PeerId,
    },
    /// A circuit relay accepted our reservation.
    RelayReserved {
        /// The relay.
        relay: PeerId,
    },
    /// A listener closed (for a circuit: the relay refused the
    /// reservation, or the connection to it closed).
    ListenerClosed {
        /// The listener.
        listener: libp2p::core::transport::ListenerId,
    },
    /// A peer's mailbox request failed before it could be answered (it
    /// did not decode, broke a size limit, or the stream closed).
    MailboxInboundFailed {
        /// The peer.
        peer: PeerId,
        /// Whether the connection closed first (a device that went away
        /// while its fetch waited: not the peer's fault).
        closed: bool,
    },
    /// Our circuit-relay server did something (relay mode).
    RelayServer(RelayServerEvent),
    /// A DHT lookup found peers providing the relay key.
    RelaysFound {
        /// The relays.
        relays: Vec<PeerId>,
    },
}

/// What the circuit-relay server reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayServerEvent {
    /// A peer reserved a slot (new, not a renewal).
    ReservationAccepted {
        /// The peer behind NAT.
        peer: PeerId,
    },
    /// A circuit opened between two peers.
    CircuitOpened {
        /// Who dialled through us.
        src: PeerId,
        /// Who was dialled.
        dst: PeerId,
    },
    /// A circuit closed.
    CircuitClosed {
        /// Who dialled through us.
        src: PeerId,
        /// Who was dialled.
        dst: PeerId,
    },
}

impl Net {
    /// Handles one raw swarm event; returns what the node should see.
    pub fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) -> Option<NetEvent> {
        match event {
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            SwarmEvent::NewListenAddr { address, .. } => {
                Some(NetEvent::Listening { addr: address })
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                if endpoint.is_listener()
                    && let Some(pruner) = &mut self.pruner
                {
                    pruner.established(connection_id, peer_id, Instant::now());
                    self.prune();
                }
                (num_established.get() == 1).then(|| NetEvent::Connected {
                    peer: peer_id,
                    addr: endpoint.get_remote_address().clone(),
                })
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                if let Some(pruner) = &mut self.pruner {
                    pruner.closed(connection_id);
                }
                (num_established == 0).then_some(NetEvent::Disconnected { peer: peer_id })
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                debug!(peer = ?peer_id, %error, "dial failed");
                None
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                debug!(from = %send_back_addr, ?error, "incoming connection refused or failed");
                // Refused for want of room, perhaps: make some for the
                // next attempt.
                self.prune();
                None
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                reason,
            } => {
                debug!(?addresses, ?reason, "listener closed");
                Some(NetEvent::ListenerClosed {
                    listener: listener_id,
                })
            }
            other => {
                trace!(event = ?other, "swarm event");
                None
            }
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) -> Option<NetEvent> {
        match event {
            BehaviourEvent::Gossipsub(event) => self.on_gossip(event),
            BehaviourEvent::Direct(event) => on_direct(event),
            BehaviourEvent::Media(event) => on_media(event),
            BehaviourEvent::Mailbox(event) => on_mailbox(event),
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                if info.protocols.contains(&KAD_PROTOCOL) {
                    // Kademlia does not take identify's addresses by itself.
                    // Only those of the peer's networks we share go in (it
                    // hands them on to others): where it sees us tells.
                    let seen = reach(&info.observed_addr).unwrap_or(Reach::Global);
                    for addr in info
                        .listen_addrs
                        .into_iter()
                        .take(MAX_IDENTIFY_ADDRS)
                        .filter(|a| shared(a, seen))
                    {
                        self.add_address(&peer_id, addr);
                    }
                }
                None
            }
            BehaviourEvent::Kad(kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::AddProvider {
                        record: Some(record),
                    },
            }) => {
                // (Kademlia checked that the record names its sender.)
                if record.key.as_ref() == super::behaviour::RELAY_PROVIDER_KEY {
                    use libp2p::kad::store::RecordStore as _;
                    if let Err(e) = self
                        .swarm
                        .behaviour_mut()
                        .kad
                        .store_mut()
                        .add_provider(record)
                    {
                        debug!(error = %e, "relay announcement not stored");
                    }
                } else {
                    trace!(key = ?record.key, "provider record of a key we do not serve; dropped");
                }
                None
            }
            BehaviourEvent::Kad(event) => on_kad(event),
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => self.on_mdns(found),
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            }) => (!renewal).then_some(NetEvent::RelayReserved {
                relay: relay_peer_id,
            }),
            BehaviourEvent::RelayServer(event) => on_relay_server(event),
            other => {
                trace!(event = ?other, "behaviour event");
                None
            }
        }
    }

    fn on_gossip(&mut self, event: gossipsub::Event) -> Option<NetEvent> {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => match Topic::from_hash(&message.topic) {
                Some(topic) => Some(NetEvent::Gossip(GossipMessage {
                    source: propagation_source,
                    id: message_id,
                    topic,
                    data: message.data,
                })),
                None => {
                    self.reject_unknown(&message_id, &propagation_source);
                    None
                }
            },
            gossipsub::Event::Subscribed { peer_id, topic, .. } => {
                Topic::from_hash(&topic).map(|topic| NetEvent::Subscribed {
                    peer: peer_id,
                    topic,
                })
            }
            gossipsub::Event::Unsubscribed { peer_id, topic } => {
                Topic::from_hash(&topic).map(|topic| NetEvent::Unsubscribed {
                    peer: peer_id,
                    topic,
                })
            }
            other => {
                debug!(event = ?other, "gossipsub");
                None
            }
        }
    }

    fn on_mdns(&mut self, found: Vec<(PeerId, Multiaddr)>) -> Option<NetEvent> {
        let mut by_peer: BTreeMap<PeerId, Vec<Multiaddr>> = BTreeMap::new();
        for (peer, addr) in found.into_iter().take(MAX_MDNS_PEERS) {
            by_peer.entry(peer).or_default().push(addr);
        }
        for (peer, addrs) in &by_peer {
            for addr in addrs {
                self.add_address(peer, addr.clone());
            }
            if let Err(error) = self.dial_discovered(*peer, addrs.clone()) {
                debug!(peer = %peer, %error, "mDNS peer not dialled");
            }
        }
        Some(NetEvent::Discovered {
            peers: by_peer.into_keys().collect(),
        })
    }
}

fn on_direct(event: request_response::Event<direct::Batch, direct::Ack>) -> Option<NetEvent> {
    match event {
        request_response::Event::Message { peer, message, .. } => match message {
            request_response::Message::Request {
                request, channel, ..
            } => Some(NetEvent::DirectRequest {
                peer,
                batch: request,
                channel,
            }),
            request_response::Message::Response {
                request_id,
                response,
            } => Some(NetEvent::DirectAck {
                peer,
                request: request_id,
                ack: response,
            }),
        },
        request_response::Event::OutboundFailure {
            peer,
            request_id,
            error,
            ..
        } => Some(NetEvent::DirectFailed {
            peer,
            request: request_id,
            error,
        }),
        request_response::Event::InboundFailure { peer, error, .. } => {
            debug!(peer = %peer, %error, "inbound direct request failed");
            None
        }
        request_response::Event::ResponseSent { .. } => None,
    }
}

fn on_media(
    event: request_response::Event<super::media::ChunkRequest, super::media::ChunkAnswer>,
) -> Option<NetEvent> {
    match event {
        request_response::Event::Message { peer, message, .. } => match message {
            request_response::Message::Request {
                request, channel, ..
            } => Some(NetEvent::MediaRequest {
                peer,
                name: request.0,
                channel,
            }),
            request_response::Message::Response {
                request_id,
                response,
            } => Some(NetEvent::MediaAnswer {
                peer,
                request: request_id,
                answer: response,
            }),
        },
        request_response::Event::OutboundFailure {
            peer,
            request_id,
            error,
            ..
        } => {
            debug!(peer = %peer, %error, "media request failed");
            Some(NetEvent::MediaFailed {
                peer,
                request: request_id,
            })
        }
        request_response::Event::InboundFailure { peer, error, .. } => {
            debug!(peer = %peer, %error, "inbound media request failed");
            None
        }
        request_response::Event::ResponseSent { .. } => None,
    }
}

fn on_mailbox(event: request_response::Event<Inbound, Response>) -> Option<NetEvent> {
    match event {
        request_response::Event::Message { peer, message, .. } => match message {
            request_response::Message::Request {
                request, channel, ..
            } => Some(NetEvent::MailboxRequest {
                peer,
                request,
                channel,
            }),
            request_response::Message::Response {
                request_id,
                response,
            } => Some(NetEvent::MailboxResponse {
                peer,
                request: request_id,
                response,
            }),
        },
        request_response::Event::OutboundFailure {
            peer,
            request_id,
            error,
            ..
        } => Some(NetEvent::MailboxFailed {
            peer,
            request: request_id,
            error,
        }),
        request_response::Event::InboundFailure { peer, error, .. } => {
            debug!(peer = %peer, %error, "inbound mailbox request failed");
            let closed = matches!(
                error,
                request_response::InboundFailure::ConnectionClosed
                    | request_response::InboundFailure::ResponseOmission
            );
            Some(NetEvent::MailboxInboundFailed { peer, closed })
        }
        request_response::Event::ResponseSent { .. } => None,
    }
}

/// Most relays taken from one DHT answer.
const MAX_RELAYS_FOUND: usize = 16;

fn on_relay_server(event: relay::Event) -> Option<NetEvent> {
    let e = match event {
        relay::Event::ReservationReqAccepted {
            src_peer_id,
            renewed: false,
        } => RelayServerEvent::ReservationAccepted { peer: src_peer_id },
        relay::Event::CircuitReqAccepted {
            src_peer_id,
            dst_peer_id,
        } => RelayServerEvent::CircuitOpened {
            src: src_peer_id,
            dst: dst_peer_id,
        },
        relay::Event::CircuitClosed {
            src_peer_id,
            dst_peer_id,
            ..
        } => RelayServerEvent::CircuitClosed {
            src: src_peer_id,
            dst: dst_peer_id,
        },
        other => {
            debug!(event = ?other, "relay server");
            return None;
        }
    };
    Some(NetEvent::RelayServer(e))
}

fn on_kad(event: kad::Event) -> Option<NetEvent> {
    let kad::Event::OutboundQueryProgressed { result, step, .. } = event else {
        trace!(event = ?event, "kad");
        return None;
    };
    match result {
        kad::QueryResult::Bootstrap(result) => {
            if !step.last {
                return None;
            }
            Some(NetEvent::Bootstrapped { ok: result.is_ok() })
        }
        kad::QueryResult::GetClosestPeers(result) => {
            let (key, peers) = match result {
                Ok(kad::GetClosestPeersOk { key, peers }) => (key, peers),
                Err(kad::GetClosestPeersError::Timeout { key, peers }) => (key, peers),
            };
            let target = PeerId::from_bytes(&key).ok()?;
            match peers.into_iter().find(|p| p.peer_id == target) {
                Some(info) if !info.addrs.is_empty() => Some(NetEvent::PeerFound {
                    peer: target,
                    addrs: info.addrs,
                }),
                _ => Some(NetEvent::PeerNotFound { peer: target }),
            }
        }
        kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
            key,
            providers,
        })) if key.as_ref() == super::behaviour::RELAY_PROVIDER_KEY => {
            Some(NetEvent::RelaysFound {
                relays: providers.into_iter().take(MAX_RELAYS_FOUND).collect(),
            })
        }
        other => {
            trace!(result = ?other, "kad query");
            None
        }
    }
}
