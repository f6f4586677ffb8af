//! Bad input to a relay: garbage, huge length prefixes, cut streams and a
//! deposit flood from one peer, while an honest client keeps depositing
//! and fetching. The relay stays up, refuses each with its reason, and
//! the honest client's latency is printed beside its quiet baseline.

use std::io;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libp2p::futures::{AsyncRead, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{StreamProtocol, SwarmBuilder, noise, tcp, yamux};
use meshchat::crypto::{Envelope, MailboxKey};
use meshchat::node::net::RateLimit;
use meshchat::relay::codec::read_message;
use meshchat::relay::metrics::Metrics;
use meshchat::relay::proto::{Fetch, MAX_RESPONSE, Owner, Refusal, Request, Response, Signed};
use meshchat::relay::stream;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::common::{WAIT, logs};
use crate::{Client, TestRelay, relay_config};

/// Writes whatever bytes it is given on `/meshchat/mailbox/1`.
#[derive(Clone, Default)]
struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        Err(io::Error::other("this client serves nothing"))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_message(io, 1 << 20, "response").await?;
        Response::from_bytes(&bytes).map_err(|e| io::Error::other(e.to_string()))
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&req).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        Err(io::Error::other("this client serves nothing"))
    }
}

/// Requests the hostile peer keeps in flight.
const WINDOW: usize = 64;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

/// What the hostile peer got back.
#[derive(Debug, Default)]
struct Outcome {
    malformed: usize,
    rate_limited: usize,
    custody: usize,
    other: usize,
    failed: usize,
}

/// Sends every request in `requests` from a fresh peer, [`WINDOW`] at a
/// time (below the relay's limit of concurrent streams, so that each is
/// read and answered), and collects the answers.
async fn hostile(relay: libp2p::Multiaddr, requests: Vec<Vec<u8>>) -> Outcome {
    let mut swarm = SwarmBuilder::with_existing_identity(
        libp2p::identity::Keypair::ed25519_from_bytes([66; 32]).unwrap(),
    )
    .with_tokio()
    .with_tcp(
        tcp::Config::default(),
        noise::Config::new,
        yamux::Config::default,
    )
    .unwrap()
    .with_behaviour(|_| {
        request_response::Behaviour::with_codec(
            RawCodec,
            [(
                StreamProtocol::new("/meshchat/mailbox/1"),
                ProtocolSupport::Outbound,
            )],
            request_response::Config::default()
                .with_request_timeout(Duration::from_secs(20))
                .with_max_concurrent_streams(10_000),
        )
    })
    .unwrap()
    .build();
    let Some(libp2p::multiaddr::Protocol::P2p(relay_id)) = relay.iter().last() else {
        panic!("relay address without peer id")
    };
    swarm.dial(relay).unwrap();
    let mut left = requests.len();
    let mut out = Outcome::default();
    let mut pending: std::collections::VecDeque<Vec<u8>> = requests.into();
    let next = |swarm: &mut libp2p::Swarm<request_response::Behaviour<RawCodec>>,
                pending: &mut std::collections::VecDeque<Vec<u8>>| {
        if let Some(r) = pending.pop_front() {
            swarm.behaviour_mut().send_request(&relay_id, r);
        }
    };
    tokio::time::timeout(WAIT * 2, async {
        while left > 0 {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { .. } => {
                    for _ in 0..WINDOW {
                        next(&mut swarm, &mut pending);
                    }
                }
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Response { response, .. },
                    ..
                }) => {
                    left -= 1;
                    next(&mut swarm, &mut pending);
                    match response {
                        Response::Refused(Refusal::Malformed) => out.malformed += 1,
                        Response::Refused(Refusal::RateLimited) => out.rate_limited += 1,
                        Response::Custody(_) => out.custody += 1,
                        _ => out.other += 1,
                    }
                }
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure { .. }) => {
                    left -= 1;
                    next(&mut swarm, &mut pending);
                    out.failed += 1;
                }
                _ => {}
            }
        }
    })
    .await
    .expect("every hostile request answered or failed");
    out
}

/// One honest deposit to `owner`'s mailbox; returns how long the custody
/// receipt took.
async fn honest_deposit(
    client: &mut Client,
    r: &TestRelay,
    owner: &MailboxKey,
    n: u32,
) -> Duration {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&n.to_be_bytes());
    let env = Envelope::new(owner.id().0, id, now() + 3_600, vec![1; 200]).to_bytes();
    let t = Instant::now();
    let answer = client
        .ask(
            r.handle.peer_id(),
            Request::Deposit(vec![serde_bytes::ByteBuf::from(env.clone())]),
        )
        .await;
    let took = t.elapsed();
    let Response::Custody(receipt) = answer else {
        panic!("honest deposit {n} refused: {answer:?}")
    };
    receipt.verify(&r.handle.identity(), &[env]).unwrap();
    took
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_huge_prefixes_and_a_flood_from_one_peer_leave_other_mailboxes_served() {
    let dr = tempfile::tempdir().unwrap();
    let mut cfg = relay_config(dr.path(), 161);
    cfg.limits.deposit_rate = RateLimit {
        burst: 100,
        per_second: 1,
    };
    let r = TestRelay::start(cfg).await;
    let mut client = Client::connect(&r, 162).await;
    let mut rng = StdRng::seed_from_u64(163);
    let owner = MailboxKey::generate(&mut rng);

    let mut quiet = Vec::new();
    for n in 0..20 {
        quiet.push(honest_deposit(&mut client, &r, &owner, n).await);
    }

    // The hostile mix: undecodable frames, length prefixes of up to 4 GiB
    // with a few bytes behind them, trailing bytes, a stream cut short,
    // and 2,000 well-formed deposits back to back.
    let victim = MailboxKey::generate(&mut rng);
    let mut requests = Vec::new();
    for i in 0..100u32 {
        requests.push(framed(&i.to_be_bytes()));
        requests.push(
            [u32::MAX - i, 7]
                .iter()
                .flat_map(|x| x.to_be_bytes())
                .collect(),
        );
    }
    let mut trailing = framed(b"junk");
    trailing.extend_from_slice(b"more");
    requests.push(trailing);
    requests.push(vec![0, 0, 1]);
    let flood = 2_000u32;
    for i in 0..flood {
        let mut id = [9u8; 16];
        id[..4].copy_from_slice(&i.to_be_bytes());
        let env = Envelope::new(victim.id().0, id, now() + 3_600, vec![2; 100]).to_bytes();
        let req = Request::Deposit(vec![serde_bytes::ByteBuf::from(env)]);
        requests.push(framed(&req.to_bytes()));
    }
    let total = requests.len();
    let attack = tokio::spawn(hostile(r.addr.clone(), requests));

    let mut loaded = Vec::new();
    let mut during = 0;
    for n in 100..160 {
        loaded.push(honest_deposit(&mut client, &r, &owner, n).await);
        if !attack.is_finished() {
            during += 1;
        }
    }
    let outcome = attack.await.unwrap();

    // The honest owner still gets all of its mail.
    let fetch = Request::Fetch(Signed::new(
        &owner,
        Fetch {
            owner: Owner::new(&owner, r.handle.identity(), now(), &mut rng),
            after: None,
            limit: 256,
            wait_secs: 0,
        },
    ));
    let Response::Mail { items, .. } = client.ask(r.handle.peer_id(), fetch).await else {
        panic!("honest fetch refused")
    };
    assert_eq!(items.len(), 80);

    println!(
        "relay under attack: honest deposit->custody p50 {:?} quiet (20), {:?} with the flood \
         ({} of 60 while it ran); hostile: {} requests, {outcome:?}",
        p50(quiet.clone()),
        p50(loaded.clone()),
        during,
        total
    );
    // Every garbage frame and huge prefix got a reason, not a silence.
    assert!(outcome.malformed >= 201, "{outcome:?}");
    // The flood hit the per-peer rate: most refused, some held.
    assert!(outcome.rate_limited > 0, "{outcome:?}");
    assert!(outcome.custody >= 100, "{outcome:?}");
    assert_eq!(
        outcome.malformed + outcome.rate_limited + outcome.custody + outcome.other + outcome.failed,
        total
    );
    let m = r.handle.metrics();
    assert!(m.refusals(Refusal::RateLimited) > 0);
    assert!(Metrics::get(&m.bad_requests) >= 201);
    // Still up and serving.
    assert!(!r.handle.listen_addrs().await.unwrap().is_empty());
    // The log names the hostile peer, without a line per bad request.
    let hostile_id = libp2p::identity::Keypair::ed25519_from_bytes([66; 32])
        .unwrap()
        .public()
        .to_peer_id()
        .to_string();
    let text = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    let lines = text
        .lines()
        .filter(|l| l.contains(&hostile_id) && l.contains("WARN"))
        .count();
    assert!(
        (1..50).contains(&lines),
        "{lines} warning lines about the hostile peer"
    );
}

/// A connected client's swarm, polled by a task of its own, and a handle
/// to open mailbox streams through it.
fn stream_client(client: Client) -> (libp2p_stream::Control, tokio::task::JoinHandle<()>) {
    let Client { mut net } = client;
    let control = net.stream_control();
    let polling = tokio::spawn(async move {
        loop {
            net.next_event().await;
        }
    });
    (control, polling)
}

async fn open(control: &mut libp2p_stream::Control, relay: libp2p::PeerId) -> libp2p::Stream {
    tokio::time::timeout(WAIT, control.open_stream(relay, stream::PROTOCOL))
        .await
        .expect("stream opened in time")
        .expect("relay takes mailbox streams")
}

async fn answer(s: &mut libp2p::Stream) -> Option<(u64, Response)> {
    let frame = tokio::time::timeout(WAIT, stream::read_frame(s, MAX_RESPONSE))
        .await
        .expect("an answer or the end in time");
    match frame {
        Ok(Some((id, bytes))) => Some((id, Response::from_bytes(&bytes).unwrap())),
        Ok(None) | Err(_) => None,
    }
}

fn deposit_frame(id: u64, owner: &MailboxKey, n: u8) -> (Vec<u8>, Vec<u8>) {
    let env = Envelope::new(owner.id().0, [n; 16], now() + 3_600, vec![n; 200]).to_bytes();
    let request = Request::Deposit(vec![serde_bytes::ByteBuf::from(env.clone())]);
    let mut frame = Vec::new();
    stream::push_frame(&mut frame, id, &request.to_bytes()).unwrap();
    (frame, env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_stream_refuses_bad_frames_with_a_reason_and_drops_a_broken_one() {
    let dr = tempfile::tempdir().unwrap();
    let r = TestRelay::start(relay_config(dr.path(), 171)).await;
    let relay = r.handle.peer_id();
    let mut rng = StdRng::seed_from_u64(172);
    let owner = MailboxKey::generate(&mut rng);
    let (mut control, polling) = stream_client(Client::connect(&r, 173).await);

    // An undecodable request and a deposit, back to back: the first is
    // refused with its reason, the second gets its custody receipt.
    let mut s = open(&mut control, relay).await;
    let mut frames = Vec::new();
    stream::push_frame(&mut frames, 1, b"\xffnot a request").unwrap();
    let (deposit, env) = deposit_frame(2, &owner, 1);
    frames.extend_from_slice(&deposit);
    s.write_all(&frames).await.unwrap();
    s.flush().await.unwrap();
    let mut got = [answer(&mut s).await, answer(&mut s).await];
    got.sort_by_key(|a| a.as_ref().map(|(id, _)| *id));
    let [Some((1, first)), Some((2, second))] = got else {
        panic!("two answers, to requests 1 and 2: {got:?}")
    };
    assert_eq!(first, Response::Refused(Refusal::Malformed));
    let Response::Custody(receipt) = second else {
        panic!("custody receipt, got {second:?}")
    };
    receipt.verify(&r.handle.identity(), &[env]).unwrap();

    // A length prefix of almost 4 GiB: the relay closes the stream
    // without reading (or allocating) it.
    s.write_all(&[0xff, 0xff, 0xff, 0xf0, 0, 1, 2, 3])
        .await
        .unwrap();
    s.flush().await.unwrap();
    assert!(answer(&mut s).await.is_none(), "stream closed by the relay");
    assert!(Metrics::get(&r.handle.metrics().bad_requests) >= 2);

    // At most four streams per peer: a fifth is closed unanswered; the
    // four keep working.
    // Each of the four carries a deposit first, so that the relay holds
    // all four before the fifth comes (a stream reaches the relay with its
    // first bytes).
    let (mut control, polling2) = stream_client(Client::connect(&r, 174).await);
    let mut four = Vec::new();
    for i in 0..4u8 {
        let mut s = open(&mut control, relay).await;
        let (frame, _) = deposit_frame(100 + u64::from(i), &owner, 20 + i);
        s.write_all(&frame).await.unwrap();
        s.flush().await.unwrap();
        let Some((_, Response::Custody(_))) = answer(&mut s).await else {
            panic!("stream {i} serves deposits")
        };
        four.push(s);
    }
    let mut fifth = open(&mut control, relay).await;
    let (frame, _) = deposit_frame(9, &owner, 9);
    // The relay may have dropped it already: writing can fail too.
    if fifth.write_all(&frame).await.is_ok() {
        let _ = fifth.flush().await;
    }
    assert!(answer(&mut fifth).await.is_none(), "fifth stream refused");
    for (i, s) in four.iter_mut().enumerate() {
        let (frame, env) = deposit_frame(i as u64, &owner, 10 + i as u8);
        s.write_all(&frame).await.unwrap();
        s.flush().await.unwrap();
        let Some((id, Response::Custody(receipt))) = answer(s).await else {
            panic!("stream {i} still serves deposits")
        };
        assert_eq!(id, i as u64);
        receipt.verify(&r.handle.identity(), &[env]).unwrap();
    }
    polling.abort();
    polling2.abort();
}
