//! `/meshchat/mailbox/1` between two real swarms: one deposits, fetches
//! and acks; the other answers from a real spool through the relay's
//! mailbox service, flushing before it answers.

use meshchat::crypto::{DeviceIdentity, Envelope, KdfParams, Keystore, MailboxKey};
use meshchat::node::net::NetEvent;
use meshchat::relay::proto::{Ack, Fetch, Owner, Refusal, Request, Response, Signed};
use meshchat::relay::service::{Limits, Service};
use meshchat::store::Spool;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::harness::{Nodes, tcp_only};

/// Sends `request` from node 1 to node 0, which answers with `service`
/// (flushing first when the service says so); returns the answer.
async fn ask(nodes: &mut Nodes, service: &mut Service, request: Request) -> Response {
    let relay = nodes.id(0);
    let sent = nodes.nets[1].send_mailbox(&relay, request);
    nodes
        .until("mailbox answer", |i, net, event| match event {
            NetEvent::MailboxRequest {
                peer,
                request,
                channel,
            } if i == 0 => {
                let meshchat::relay::codec::Inbound::Request(request) = request else {
                    panic!("malformed request")
                };
                let answer = service.handle(&peer, request, 1_000).unwrap();
                if answer.flush {
                    service.sync().unwrap();
                }
                net.respond_mailbox(channel, answer.response).unwrap();
                None
            }
            NetEvent::MailboxResponse {
                request, response, ..
            } if i == 1 && request == sent => Some(response),
            NetEvent::MailboxFailed { error, .. } => panic!("mailbox request failed: {error}"),
            _ => None,
        })
        .await
}

#[tokio::test]
async fn deposit_custody_fetch_and_ack_over_the_wire() {
    let mut nodes = Nodes::start(vec![(31, tcp_only()), (32, tcp_only())]).await;
    let addr = nodes.addr(0, |_| true);
    nodes.connect(1, 0, addr).await;

    let mut rng = StdRng::seed_from_u64(33);
    let dir = tempfile::tempdir().unwrap();
    let key = Keystore::create(b"relay", KdfParams::INSECURE_FAST, &mut rng)
        .unwrap()
        .1;
    let store = std::sync::Arc::new(meshchat::store::Store::open(dir.path(), &key).unwrap());
    let spool = Spool::open(dir.path().join("spool"), &key).unwrap();
    // The relay signs with the identity behind its peer id (seed 31).
    let relay_identity = DeviceIdentity::generate(&mut StdRng::seed_from_u64(31));
    let relay_key = relay_identity.public().signing;
    let mut service = Service::new(
        spool,
        store,
        relay_identity,
        Limits::default(),
        Default::default(),
    )
    .unwrap();

    let owner = MailboxKey::generate(&mut rng);
    let mail: Vec<Vec<u8>> = (1..=2u8)
        .map(|n| Envelope::new(owner.id().0, [n; 16], 5_000, vec![n; 400]).to_bytes())
        .collect();
    let deposit = Request::Deposit(
        mail.iter()
            .cloned()
            .map(serde_bytes::ByteBuf::from)
            .collect(),
    );
    let Response::Custody(receipt) = ask(&mut nodes, &mut service, deposit).await else {
        panic!("no custody receipt")
    };
    receipt.verify(&relay_key, &mail).unwrap();

    let fetch = |rng: &mut StdRng, key: &MailboxKey, signer: &MailboxKey| {
        let owner = Owner::new(key, relay_key, 1_000, rng);
        Request::Fetch(Signed::new(
            signer,
            Fetch {
                owner,
                after: None,
                limit: 10,
                wait_secs: 0,
            },
        ))
    };
    // Someone else's key cannot read it.
    let thief = MailboxKey::generate(&mut rng);
    let stolen = fetch(&mut rng, &owner, &thief);
    assert_eq!(
        ask(&mut nodes, &mut service, stolen).await,
        Response::Refused(Refusal::BadSignature)
    );
    let own = fetch(&mut rng, &owner, &owner);
    let Response::Mail { items, more } = ask(&mut nodes, &mut service, own).await else {
        panic!("no mail")
    };
    assert!(!more);
    assert_eq!(
        items.iter().map(|m| m.envelope.clone()).collect::<Vec<_>>(),
        mail
    );
    let ack = Request::Ack(Signed::new(
        &owner,
        Ack {
            owner: Owner::new(&owner, relay_key, 1_000, &mut rng),
            seqs: items.iter().map(|m| m.seq).collect(),
        },
    ));
    assert_eq!(ask(&mut nodes, &mut service, ack).await, Response::Acked(2));
    assert_eq!(service.spool().stats(&owner.id().0).count, 0);
}
