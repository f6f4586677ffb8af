//! The composed [`Behaviour`] and [`build_swarm`]: transports, protocols and
//! their parameters.

use std::time::Duration;

use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, Swarm, SwarmBuilder, autonat, connection_limits, dcutr, gossipsub, identify,
    identity, kad, mdns, noise, ping, relay, request_response, tcp, yamux,
};
use sha2::{Digest, Sha256};

use super::{NetConfig, NetError, direct};

/// Identify's protocol family string.
pub const IDENTIFY_PROTOCOL: &str = "/meshchat/1";
/// Our own Kademlia DHT, kept apart from the public IPFS one.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/meshchat/kad/1");
/// The DHT key relays provide, so that devices find relays without config.
pub const RELAY_PROVIDER_KEY: &[u8] = b"/meshchat/relay/1";
/// Largest mailbox request a node that is not a relay reads.
const NOT_RELAY_MAX_REQUEST: usize = 4 * 1024;
/// Room on top of the largest payload for gossipsub's own framing (topic
/// string, protobuf tags); control messages have their own limit.
const GOSSIP_FRAMING: usize = 4 * 1024;
/// Room for what a gossipsub receiver holds beyond the message it reads:
/// gossipsub 0.50 reads 8 KiB at a time and checks everything it has
/// buffered, part of the next message included, against
/// `max_transmit_size`. Without this room a largest message followed
/// closely by another was refused and its stream closed.
const GOSSIP_READ_SLACK: usize = 8 * 1024;
/// Incoming connections still in their handshake.
const MAX_PENDING_INCOMING: u32 = 64;
/// Established connections to one peer.
const MAX_CONNECTIONS_PER_PEER: u32 = 4;
/// Connections this node dialled (contacts, relays, a group's members,
/// peers found by mDNS or Kademlia): a LAN full of announced peers cannot
/// make it dial without end.
const MAX_ESTABLISHED_OUTGOING: u32 = 512;

pub use derived::{Behaviour, BehaviourEvent};

mod derived {
    // The derive generates `BehaviourEvent`, one undocumented variant per
    // field (named after it); the fields' docs below say what each carries.
    #![allow(missing_docs)]

    use libp2p::swarm::NetworkBehaviour;
    use libp2p::swarm::behaviour::toggle::Toggle;
    use libp2p::{
        autonat, connection_limits, dcutr, gossipsub, identify, kad, mdns, ping, relay,
        request_response,
    };

    #[cfg(doc)]
    use super::NetConfig;
    use super::direct;

    /// Every protocol a meshchat node speaks.
    #[derive(NetworkBehaviour)]
    pub struct Behaviour {
        /// Caps on pending and established connections (first, so that it
        /// can deny a connection before the others set anything up).
        pub limits: connection_limits::Behaviour,
        /// Cap on incoming connections from one IP address.
        pub per_ip: super::super::per_ip::Behaviour,
        /// Presence, inbox and group topics (anonymous, application-validated).
        pub gossipsub: gossipsub::Behaviour,
        /// `/meshchat/direct/1` batches and acks.
        pub direct: request_response::Behaviour<direct::Codec>,
        /// `/meshchat/media/1`: encrypted media chunks by name.
        pub media: request_response::Behaviour<crate::node::net::media::Codec>,
        /// `/meshchat/mailbox/1`: deposits, fetches and acks with relays.
        pub mailbox: request_response::Behaviour<crate::relay::codec::Codec>,
        /// Exchanges listen addresses and protocols with every peer.
        pub identify: identify::Behaviour,
        /// `/meshchat/mailbox-stream/1`: long-lived pipelined mailbox
        /// streams (opened and accepted through its `Control`).
        pub stream: libp2p_stream::Behaviour,
        /// Liveness.
        pub ping: ping::Behaviour,
        /// Peer routing across networks.
        pub kad: kad::Behaviour<kad::store::MemoryStore>,
        /// Learns whether we are publicly reachable (v1; global addresses only).
        pub autonat: autonat::Behaviour,
        /// Reservations on circuit relays and dialling through them.
        pub relay_client: relay::client::Behaviour,
        /// The circuit-relay v2 server (relay mode only).
        pub relay_server: Toggle<relay::Behaviour>,
        /// Hole punching over relayed connections.
        pub dcutr: dcutr::Behaviour,
        /// LAN discovery; disabled unless [`NetConfig::mdns`] is set.
        pub mdns: Toggle<mdns::tokio::Behaviour>,
    }
}

/// Most message ids in one IHAVE we send (and in the IWANTs we send a peer
/// per heartbeat; gossipsub's `max_control_messages_sent`): 400 × (32 + 2
/// bytes of framing) stays under the 16 KiB of control data receivers take
/// by default.
pub const MAX_IHAVE_IDS: usize = 400;
/// Most control data (subscriptions, IHAVE, IWANT, GRAFT, PRUNE, IDONTWANT)
/// we take in one RPC: 5 000 ids of 34 bytes, with room to spare.
pub const MAX_CONTROL_BYTES: usize = 256 * 1024;

/// The gossipsub configuration used by every node.
///
/// - Anonymous: no author, sequence number or signature on the wire (our
///   envelopes authenticate inside), so incoming messages carrying any of
///   them are refused (`ValidationMode::Anonymous`).
/// - Message id = SHA-256 of the data, the same id the node dedups by.
/// - `validate_messages`: nothing is forwarded before the node's verdict.
/// - Mesh degree 6 (low 4, high 12, outbound min 2): the gossipsub v1.1
///   defaults, right for ~100 nodes. Smaller meshes need nothing special:
///   a node below `mesh_n_low` grafts every subscribed peer at once, and
///   flood publishing sends our own messages to all subscribed peers.
/// - `max_transmit_size` fits the largest payload allowed on any topic,
///   with room for gossipsub's framing and its 8 KiB reads
///   ([`GOSSIP_READ_SLACK`]). Each topic's own limit is checked by us.
/// - IHAVE lists of at most [`MAX_IHAVE_IDS`] ids, so that one fits the
///   16 KiB of control data a receiver takes by default; and we take up
///   to [`MAX_CONTROL_BYTES`], what the specification's 5 000 ids need. A
///   receiver that gets more closes its side of the stream, and the sender
///   does not notice: what it publishes to that peer next is lost (seen on
///   a 100-member group, where IHAVEs list thousands of envelopes).
pub fn gossipsub_config(cfg: &NetConfig) -> Result<gossipsub::Config, NetError> {
    gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .validate_messages()
        .message_id_fn(|message: &gossipsub::Message| {
            gossipsub::MessageId::from(Sha256::digest(&message.data).to_vec())
        })
        .mesh_n(6)
        .mesh_n_low(4)
        .mesh_n_high(12)
        .mesh_outbound_min(2)
        .gossip_lazy(6)
        .flood_publish(true)
        .heartbeat_interval(Duration::from_secs(1))
        .heartbeat_initial_delay(Duration::from_millis(500))
        // Long enough to cover the mesh's propagation time plus retries by
        // the outbox, so a republished envelope is recognised.
        .duplicate_cache_time(Duration::from_secs(120))
        .max_transmit_size(cfg.gossip_limits.max_any() + GOSSIP_FRAMING + GOSSIP_READ_SLACK)
        .max_control_messages_sent(MAX_IHAVE_IDS)
        .max_control_message_size(MAX_CONTROL_BYTES)
        .build()
        .map_err(|e| NetError::GossipConfig(e.to_string()))
}

impl Behaviour {
    fn new(
        key: &identity::Keypair,
        relay_client: relay::client::Behaviour,
        cfg: &NetConfig,
    ) -> Result<Self, NetError> {
        let peer_id = key.public().to_peer_id();

        let gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Anonymous,
            gossipsub_config(cfg)?,
        )
        .map_err(|e| NetError::GossipConfig(e.to_string()))?;

        let direct = request_response::Behaviour::with_codec(
            direct::Codec::new(cfg.direct_limits),
            [(direct::PROTOCOL, request_response::ProtocolSupport::Full)],
            // The default 100 streams per connection: a read holds no more
            // than `direct::PREALLOCATE_FRAME` before its bytes come.
            request_response::Config::default().with_request_timeout(cfg.direct_timeout),
        );

        let media = request_response::Behaviour::with_codec(
            super::media::Codec,
            [(
                super::media::PROTOCOL,
                request_response::ProtocolSupport::Full,
            )],
            request_response::Config::default().with_request_timeout(cfg.direct_timeout),
        );

        let mailbox = request_response::Behaviour::with_codec(
            crate::relay::codec::Codec {
                // A node that holds no mail reads no more than a fetch
                // needs before it answers `NotRelay`.
                max_request: if cfg.serve_mailboxes {
                    crate::relay::proto::MAX_REQUEST
                } else {
                    NOT_RELAY_MAX_REQUEST
                },
            },
            [(
                crate::relay::codec::PROTOCOL,
                request_response::ProtocolSupport::Full,
            )],
            request_response::Config::default().with_request_timeout(cfg.mailbox_timeout),
        );

        let relay_server = cfg.relay_server.map(|r| {
            relay::Behaviour::new(
                peer_id,
                relay::Config {
                    max_reservations: r.max_reservations,
                    max_reservations_per_peer: r.max_reservations_per_peer,
                    max_circuits: r.max_circuits,
                    max_circuits_per_peer: r.max_circuits_per_peer,
                    max_circuit_duration: r.max_circuit_duration,
                    max_circuit_bytes: r.max_circuit_bytes,
                    ..relay::Config::default()
                },
            )
        });

        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), key.public())
                .with_agent_version(format!("meshchat/{}", env!("CARGO_PKG_VERSION"))),
        );

        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        kad_config.set_query_timeout(Duration::from_secs(30));
        // Nothing a peer sends is stored by itself: the node keeps
        // provider records of the relay key only, and no values (it uses
        // none), so peers cannot fill the store or push the relays'
        // announcements out of it (see `Net::on_behaviour_event`).
        kad_config.set_record_filtering(kad::StoreInserts::FilterBoth);
        let mut kad =
            kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
        if cfg.kad_server {
            kad.set_mode(Some(kad::Mode::Server));
        }

        // v1 with its defaults: probes only peers seen at global addresses
        // and serves only such peers, so it stays silent on loopback and LANs.
        let autonat = autonat::Behaviour::new(peer_id, autonat::Config::default());

        let mdns = if cfg.mdns {
            Some(
                mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)
                    .map_err(NetError::Mdns)?,
            )
        } else {
            None
        };

        let limits = connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
                .with_max_established_incoming(Some(cfg.max_inbound_connections))
                .with_max_established_outgoing(Some(MAX_ESTABLISHED_OUTGOING))
                // A direct and a relayed connection, plus a dial race each way.
                .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER)),
        );

        Ok(Self {
            limits,
            per_ip: super::per_ip::Behaviour::new(cfg.max_inbound_per_ip),
            gossipsub,
            direct,
            media,
            mailbox,
            identify,
            stream: libp2p_stream::Behaviour::new(),
            ping: ping::Behaviour::default(),
            kad,
            autonat,
            relay_client,
            relay_server: Toggle::from(relay_server),
            dcutr: dcutr::Behaviour::new(peer_id),
            mdns: Toggle::from(mdns),
        })
    }
}

/// Builds the swarm: TCP and QUIC (v1), Noise + Yamux on TCP, DNS, and the
/// circuit-relay client transport, with `keypair` (the device identity) as
/// the peer id. It does not listen or dial; see [`super::Net::start`].
pub fn build_swarm(
    keypair: identity::Keypair,
    cfg: &NetConfig,
) -> Result<Swarm<Behaviour>, NetError> {
    let noise_err = |e: noise::Error| NetError::Noise(e.to_string());
    // The builder boxes behaviour errors into strings; keep ours typed.
    let mut behaviour_error = None;
    let swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(noise_err)?
        .with_quic()
        .with_dns()
        .map_err(NetError::Dns)?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(noise_err)?
        .with_behaviour(|key, relay_client| {
            let built = Behaviour::new(key, relay_client, cfg);
            match built {
                Ok(b) => Ok(b),
                Err(e) => {
                    let msg = e.to_string();
                    behaviour_error = Some(e);
                    Err(msg.into())
                }
            }
        })
        .map_err(|e| NetError::Behaviour(e.to_string()));
    match (swarm, behaviour_error) {
        (_, Some(e)) => Err(e),
        (Err(e), None) => Err(e),
        (Ok(builder), None) => Ok(builder
            .with_swarm_config(|c| c.with_idle_connection_timeout(cfg.idle_connection_timeout))
            .build()),
    }
}
