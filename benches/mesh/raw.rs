//! The references: libp2p request-response and gossipsub with nothing of
//! ours on top.
//!
//! - Request-response: two swarms of the network layer (`node::net`, the
//!   same transports and connection), one 200-byte frame per request,
//!   answered at once by the other side — no encryption of ours, no store.
//! - Gossipsub: two plain swarms (TCP, Noise, Yamux) with gossipsub in its
//!   default configuration and libp2p author signing, as in rust-libp2p's
//!   chat example.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use libp2p::futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, ValidationMode};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, noise, tcp, yamux};
use meshchat::node::net::direct::{Ack, Batch, FrameStatus};
use meshchat::node::net::{Net, NetConfig, NetEvent};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::stats::{latency, rate};

const BODY: usize = 200;

fn tcp_loopback() -> NetConfig {
    let mut cfg = NetConfig::loopback();
    cfg.listen.retain(|a| {
        a.iter()
            .any(|p| matches!(p, libp2p::multiaddr::Protocol::Tcp(_)))
    });
    cfg
}

async fn until<T>(net: &mut Net, mut pick: impl FnMut(NetEvent) -> Option<T>) -> T {
    loop {
        if let Some(t) = pick(net.next_event().await) {
            return t;
        }
    }
}

/// Two swarms of the network layer on loopback, the client connected to
/// the server: (server, client, the server's peer id).
async fn connected_pair() -> (Net, Net, PeerId) {
    let key = || libp2p::identity::Keypair::generate_ed25519();
    let mut server = Net::start(key(), &tcp_loopback()).unwrap();
    let addr = until(&mut server, |e| match e {
        NetEvent::Listening { addr } => Some(addr),
        _ => None,
    })
    .await;
    let server_id = server.local_peer_id();
    let mut client = Net::start(key(), &tcp_loopback()).unwrap();
    client
        .dial(addr.with(libp2p::multiaddr::Protocol::P2p(server_id)))
        .unwrap();
    // Both sides must run for the handshake.
    loop {
        tokio::select! {
            e = client.next_event() => {
                if matches!(e, NetEvent::Connected { peer, .. } if peer == server_id) {
                    return (server, client, server_id);
                }
            }
            _ = server.next_event() => {}
        }
    }
}

/// Request-response RTT (sequential) and throughput, one message per
/// request: sequential, and with `window` requests in flight.
pub(crate) async fn request_response(rtts: usize, total: usize, window: usize) -> Value {
    let (mut server, mut client, server_id) = connected_pair().await;
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stop_rx => return,
                e = server.next_event() => {
                    if let NetEvent::DirectRequest { batch, channel, .. } = e {
                        let _ = server.respond_direct(channel, Ack::all(FrameStatus::Accepted, batch.frames.len()));
                    }
                }
            }
        }
    });
    let frame = vec![7u8; BODY];
    let one = |client: &mut Net| {
        client
            .send_direct(&server_id, Batch::new(vec![frame.clone()]))
            .unwrap()
    };
    // Warm up.
    for _ in 0..200 {
        let id = one(&mut client);
        wait_ack(&mut client, id).await;
    }
    let mut samples = Vec::with_capacity(rtts);
    let started = Instant::now();
    for _ in 0..rtts {
        let t = Instant::now();
        let id = one(&mut client);
        wait_ack(&mut client, id).await;
        samples.push(t.elapsed());
    }
    let sequential = rate(rtts, started.elapsed());
    // Pipelined: keep `window` requests in flight.
    let started = Instant::now();
    let mut in_flight = HashSet::new();
    let (mut sent, mut done) = (0, 0);
    while done < total {
        while sent < total && in_flight.len() < window {
            in_flight.insert(one(&mut client));
            sent += 1;
        }
        let id = until(&mut client, |e| match e {
            NetEvent::DirectAck { request, .. } => Some(request),
            NetEvent::DirectFailed { request, error, .. } => {
                panic!("request {request} failed: {error}")
            }
            _ => None,
        })
        .await;
        if in_flight.remove(&id) {
            done += 1;
        }
    }
    let pipelined = rate(total, started.elapsed());
    let _ = stop_tx.send(());
    let _ = task.await;
    json!({
        "what": "libp2p request-response on the node's swarm (TCP, Noise, Yamux), one 200-byte message per request, answered at once",
        "rtt": latency(samples),
        "throughput_sequential_msgs_per_s": sequential,
        "throughput_pipelined_msgs_per_s": pipelined,
        "pipelined_window": window,
    })
}

async fn wait_ack(client: &mut Net, id: libp2p::request_response::OutboundRequestId) {
    until(client, |e| match e {
        NetEvent::DirectAck { request, .. } if request == id => Some(()),
        NetEvent::DirectFailed { request, error, .. } if request == id => {
            panic!("request failed: {error}")
        }
        _ => None,
    })
    .await
}

type Gossip = Swarm<gossipsub::Behaviour>;

fn gossip_swarm() -> Gossip {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|key| {
            let cfg = gossipsub::ConfigBuilder::default()
                .validation_mode(ValidationMode::Strict)
                .build()
                .unwrap();
            gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), cfg).unwrap()
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// Polls both swarms until `done` says so or `limit` passes.
async fn drive(
    a: &mut Gossip,
    b: &mut Gossip,
    limit: Duration,
    mut on_b: impl FnMut(gossipsub::Event) -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return false,
            _ = a.select_next_some() => {}
            e = b.select_next_some() => {
                if let SwarmEvent::Behaviour(ev) = e && on_b(ev) {
                    return true;
                }
            }
        }
    }
}

/// Raw gossipsub between two nodes: latency of one message at a time, and
/// what arrives of a burst published at once.
pub(crate) async fn gossipsub(samples_n: usize, burst: usize) -> Value {
    let topic = IdentTopic::new("bench");
    let mut a = gossip_swarm();
    let mut b = gossip_swarm();
    a.behaviour_mut().subscribe(&topic).unwrap();
    b.behaviour_mut().subscribe(&topic).unwrap();
    b.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let addr: Multiaddr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = b.select_next_some().await {
            break address;
        }
    };
    a.dial(addr).unwrap();
    let a_id: PeerId = *a.local_peer_id();
    // Wait until b knows a subscribed (a's subscriptions reach b).
    drive(
        &mut a,
        &mut b,
        Duration::from_secs(30),
        |e| matches!(e, gossipsub::Event::Subscribed { peer_id, .. } if peer_id == a_id),
    )
    .await;
    // a must also see b's subscription before it can publish.
    while a.behaviour().all_peers().all(|(_, t)| t.is_empty()) {
        tokio::select! {
            _ = a.select_next_some() => {}
            _ = b.select_next_some() => {}
        }
    }
    let mut n: u64 = 0;
    let body = |n: &mut u64| {
        *n += 1;
        let mut v = vec![0u8; BODY];
        v[..8].copy_from_slice(&n.to_be_bytes());
        v
    };
    let mut samples = Vec::with_capacity(samples_n);
    for i in 0..samples_n + 100 {
        let data = body(&mut n);
        let t = Instant::now();
        a.behaviour_mut()
            .publish(topic.clone(), data.clone())
            .unwrap();
        let got = drive(
            &mut a,
            &mut b,
            Duration::from_secs(10),
            |e| matches!(e, gossipsub::Event::Message { message, .. } if message.data == data),
        )
        .await;
        assert!(got, "raw gossipsub lost a single message");
        if i >= 100 {
            samples.push(t.elapsed());
        }
    }
    // The burst: publish everything at once, then count what arrives.
    let first = n + 1;
    let mut refused = 0usize;
    let started = Instant::now();
    for _ in 0..burst {
        let data = body(&mut n);
        if a.behaviour_mut().publish(topic.clone(), data).is_err() {
            refused += 1;
        }
    }
    let published = started.elapsed();
    let mut seen = HashSet::new();
    let mut last = Instant::now();
    // Count until nothing new for two seconds.
    loop {
        let got = drive(&mut a, &mut b, Duration::from_secs(2), |e| {
            if let gossipsub::Event::Message { message, .. } = e {
                let k = u64::from_be_bytes(message.data[..8].try_into().unwrap());
                if k >= first {
                    seen.insert(k);
                }
                return true;
            }
            false
        })
        .await;
        if !got {
            break;
        }
        last = Instant::now();
    }
    let took = last.duration_since(started);
    json!({
        "what": "rust-libp2p gossipsub, default config, author signing (MessageAuthenticity::Signed, ValidationMode::Strict), two nodes, 200-byte messages",
        "latency_one_at_a_time": latency(samples),
        "burst": {
            "messages": burst,
            "refused_at_publish": refused,
            "delivered": seen.len(),
            "delivered_ratio": seen.len() as f64 / burst as f64,
            "publish_loop_ms": published.as_millis(),
            "delivered_per_s": rate(seen.len(), took),
        },
    })
}

/// A diagnostic for the direct path's next step: the round trip of one
/// 200-byte frame echoed on a long-lived libp2p stream (libp2p-stream, the
/// same swarm and connection as request-response), next to a fresh
/// request-response exchange per message. `MESH_BENCH_ONLY=rtt`.
pub(crate) async fn stream_rtt(rtts: usize) -> Value {
    use libp2p::StreamProtocol;
    use libp2p::futures::{AsyncReadExt, AsyncWriteExt};
    const ECHO: StreamProtocol = StreamProtocol::new("/meshchat/bench-echo/1");
    let (mut server, mut client, server_id) = connected_pair().await;
    let mut incoming = server.stream_control().accept(ECHO).unwrap();
    let echo = tokio::spawn(async move {
        if let Some((_, mut s)) = incoming.next().await {
            let mut buf = [0u8; BODY];
            while s.read_exact(&mut buf).await.is_ok() {
                if s.write_all(&buf).await.is_err() || s.flush().await.is_err() {
                    return;
                }
            }
        }
    });
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let drive_server = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stop_rx => return,
                _ = server.next_event() => {}
            }
        }
    });
    let mut control = client.stream_control();
    let (cstop_tx, mut cstop_rx) = oneshot::channel::<()>();
    let drive_client = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut cstop_rx => return,
                _ = client.next_event() => {}
            }
        }
    });
    let mut s = control.open_stream(server_id, ECHO).await.unwrap();
    let frame = [7u8; BODY];
    let mut back = [0u8; BODY];
    for _ in 0..200 {
        s.write_all(&frame).await.unwrap();
        s.flush().await.unwrap();
        s.read_exact(&mut back).await.unwrap();
    }
    let mut samples = Vec::with_capacity(rtts);
    for _ in 0..rtts {
        let t = Instant::now();
        s.write_all(&frame).await.unwrap();
        s.flush().await.unwrap();
        s.read_exact(&mut back).await.unwrap();
        samples.push(t.elapsed());
    }
    drop(s);
    let _ = cstop_tx.send(());
    let _ = stop_tx.send(());
    let _ = drive_client.await;
    let _ = drive_server.await;
    echo.abort();
    json!({
        "what": "one 200-byte frame echoed on a long-lived libp2p stream (same transports), sequential",
        "rtt": latency(samples),
    })
}

/// The reference for the group: `members` swarms of the network layer
/// (the node's transports and gossipsub configuration), each in its own
/// task like a node's swarm, every one connected to every other (as a
/// group's members end up) and subscribed to one group topic, each
/// accepting what it receives at once (no crypto, no store, no receipts).
/// One publishes `n` messages one at a time; for each, the time until the
/// last of the others has it.
pub(crate) async fn group_fanout(members: usize, n: usize) -> Value {
    use meshchat::node::net::{Topic, Verdict};
    use tokio::sync::mpsc;

    let topic = Topic::Group([7; 32]);
    let setup = Instant::now();
    let key = || libp2p::identity::Keypair::generate_ed25519();
    let mut nets = Vec::with_capacity(members);
    let mut addrs = Vec::with_capacity(members);
    for _ in 0..members {
        let mut net = Net::start(key(), &tcp_loopback()).unwrap();
        let addr = until(&mut net, |e| match e {
            NetEvent::Listening { addr } => Some(addr),
            _ => None,
        })
        .await;
        net.subscribe(&topic).unwrap();
        addrs.push(addr.with(libp2p::multiaddr::Protocol::P2p(net.local_peer_id())));
        nets.push(net);
    }
    for (i, net) in nets.iter_mut().enumerate() {
        for addr in &addrs[..i] {
            net.dial(addr.clone()).unwrap();
        }
    }
    // Arrivals: (message, node, when).
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel::<(u64, usize, Instant)>();
    let peers: std::sync::Arc<Vec<std::sync::atomic::AtomicUsize>> = std::sync::Arc::new(
        (0..members)
            .map(|_| std::sync::atomic::AtomicUsize::new(0))
            .collect(),
    );
    let mut publish = None;
    let mut stops = Vec::with_capacity(members);
    for (i, mut net) in nets.into_iter().enumerate() {
        let (tx, mut rx) = mpsc::unbounded_channel::<Option<Vec<u8>>>();
        if i == 0 {
            publish = Some(tx.clone());
        }
        stops.push(tx);
        let arrived_tx = arrived_tx.clone();
        let peers = peers.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    cmd = rx.recv() => match cmd {
                        Some(Some(data)) => {
                            net.publish(&topic, data).unwrap();
                        }
                        _ => return,
                    },
                    e = net.next_event() => {
                        if let NetEvent::Gossip(m) = e {
                            net.report_gossip(&m.id, &m.source, Verdict::Accept);
                            let k = u64::from_be_bytes(m.data[..8].try_into().unwrap());
                            let _ = arrived_tx.send((k, i, Instant::now()));
                        }
                        peers[i].store(
                            net.topic_peers(&topic).len(),
                            std::sync::atomic::Ordering::Relaxed,
                        );
                    }
                }
            }
        });
    }
    // Every node sees every other on the topic, or after a minute at least
    // a full mesh's worth (some of 4,950 dials at once can fail); then the
    // meshes settle.
    let count = |i: usize| peers[i].load(std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    loop {
        let least = (0..members).map(count).min().unwrap_or(0);
        if least >= members - 1 || (started.elapsed() > Duration::from_secs(60) && least >= 6) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the swarms did not connect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let topic_peers: Vec<usize> = (0..members).map(count).collect();
    let formed = setup.elapsed();
    let publish = publish.unwrap();
    let cpu = crate::stats::cpu_by_kind();
    let mut last = Vec::with_capacity(n);
    let mut delivered = 0usize;
    for k in 0..n as u64 {
        let mut data = vec![0u8; 300];
        data[..8].copy_from_slice(&k.to_be_bytes());
        let t = Instant::now();
        publish.send(Some(data)).unwrap();
        let mut have = HashSet::new();
        let mut latest = Duration::ZERO;
        let end = t + Duration::from_secs(10);
        while have.len() < members - 1 {
            match tokio::time::timeout_at(end.into(), arrived.recv()).await {
                Ok(Some((m, node, at))) if m == k => {
                    if have.insert(node) {
                        latest = latest.max(at - t);
                    }
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        delivered += have.len();
        last.push(latest);
    }
    let cpu = crate::stats::cpu_per_message(cpu, n);
    for s in stops {
        let _ = s.send(None);
    }
    json!({
        "what": "the node's network layer only: every member a swarm in its own task, all connected, subscribed to one group topic, accepting at once; one message of 300 bytes at a time",
        "members": members,
        "formed_s": (formed.as_secs_f64() * 10.0).round() / 10.0,
        "topic_peers_least_and_publisher": [topic_peers.iter().min(), topic_peers[0]],
        "delivery_ratio": delivered as f64 / (n * (members - 1)) as f64,
        "time_until_last_member": latency(last),
        "cpu_ms_per_message": cpu,
    })
}
