//! Mail for a device that is away: held at its relays, delivered when it
//! returns.

use std::time::Duration;

use meshchat::node::NodeEvent;
use meshchat::store::DeliveryState;

use crate::common::{
    TestNode, befriend, befriend_unconnected, config, contact_request, dir_contains, media_ready,
    message, messages, receipt, receipts,
};
use crate::{TestRelay, relay_config};

/// A device whose relays are `relays` (addresses ending in `/p2p/<id>`).
fn with_relays(
    dir: &std::path::Path,
    seed: u64,
    relays: Vec<libp2p::Multiaddr>,
) -> meshchat::node::NodeConfig {
    let mut cfg = config(dir, seed);
    cfg.relays = relays;
    cfg
}

/// Two devices behind NAT that reach only the relay `r`, contacts of each
/// other, both connected to it.
async fn mail_only_pair(
    r: &TestRelay,
    (da, dc): (&std::path::Path, &std::path::Path),
    (sa, sc): (u64, u64),
) -> (TestNode, TestNode) {
    let mut a = TestNode::start_with("alice", mail_only(da, sa, r)).await;
    let mut c = TestNode::start_with("carol", mail_only(dc, sc, r)).await;
    befriend_unconnected(&a, &c).await;
    a.connected_to(r.handle.peer_id()).await;
    c.connected_to(r.handle.peer_id()).await;
    (a, c)
}

/// A device behind NAT (listening nowhere) that reaches only the relay
/// `r`, which holds its mail but relays no connection for it.
fn mail_only(dir: &std::path::Path, seed: u64, r: &TestRelay) -> meshchat::node::NodeConfig {
    let mut cfg = config(dir, seed);
    cfg.net.listen.clear();
    cfg.relays = vec![r.addr.clone()];
    cfg.reserve_circuits = false;
    cfg
}

/// Alice adds the invite of Carol, who is away, and writes; Carol never
/// added Alice's. The message waits at Carol's relay with Alice's invite
/// inside its envelope (one envelope, no plaintext). When Carol is back
/// she sees a request holding it, which outlives a restart of hers while
/// Alice is away; once she accepts, the message is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_who_wrote_while_we_were_away_is_a_request_when_we_are_back() {
    let dr = tempfile::tempdir().unwrap();
    let r = TestRelay::start(relay_config(dr.path(), 131)).await;
    let (da, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = TestNode::start_in("alice", da.path(), 132).await;
    let c_config = || with_relays(dc.path(), 133, vec![r.addr.clone()]);
    let c = TestNode::start_with("carol", c_config()).await;
    let (code_c, c_key) = (c.handle.invite().await.unwrap(), c.key());
    c.handle.shutdown(Duration::from_secs(10)).await.unwrap();
    drop(c);

    a.handle.add_contact(&code_c, "carol").await.unwrap();
    let body = b"we met at the conference; this is alice".to_vec();
    let sent = a.handle.send(c_key, body.clone()).await.unwrap();
    receipt(&mut a, sent, DeliveryState::StoredAtRelay).await;
    r.holds(1).await;
    assert!(!dir_contains(dr.path(), &body));

    let mut c = TestNode::start_with("carol", c_config()).await;
    contact_request(&mut c, a.key()).await;
    let waiting = c.handle.requests().await.unwrap();
    assert_eq!((waiting.len(), waiting[0].held), (1, 1));
    assert!(c.handle.conversations().await.unwrap().is_empty());
    // The relay deleted it once Carol had it on disk: the request keeps
    // the only copy Carol can get while Alice is away, across a restart.
    r.holds(0).await;
    let a_key = a.key();
    a.handle.shutdown(Duration::from_secs(10)).await.unwrap();
    drop(a);
    c.handle.shutdown(Duration::from_secs(10)).await.unwrap();
    drop(c);
    let mut c = TestNode::start_with("carol", c_config()).await;
    let waiting = c.handle.requests().await.unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!((waiting[0].identity, waiting[0].held), (a_key, 1));
    c.handle.accept_request(a_key, "alice").await.unwrap();
    let got = message(&mut c, &body).await;
    assert_eq!(got.sender, a_key);
    assert!(c.handle.requests().await.unwrap().is_empty());
    // Accepted is accepted: after another restart no request is back.
    c.handle.shutdown(Duration::from_secs(10)).await.unwrap();
    drop(c);
    let c = TestNode::start_with("carol", c_config()).await;
    assert!(c.handle.requests().await.unwrap().is_empty());
    assert_eq!(c.handle.contacts().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_for_an_offline_device_waits_at_its_relays_one_of_them_down() {
    let (dr1, dr2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let r1 = TestRelay::start(relay_config(dr1.path(), 101)).await;
    let r2 = TestRelay::start(relay_config(dr2.path(), 102)).await;
    let (da, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = TestNode::start_in("alice", da.path(), 103).await;
    let c_config = || with_relays(dc.path(), 104, vec![r1.addr.clone(), r2.addr.clone()]);
    let mut c = TestNode::start_with("carol", c_config()).await;
    befriend(&mut a, &mut c).await;
    let c_key = c.key();
    c.handle.shutdown(Duration::from_secs(10)).await.unwrap();
    drop(c);

    let body = b"meet me at the usual place, 7pm".to_vec();
    let sent = a.handle.send(c_key, body.clone()).await.unwrap();
    receipt(&mut a, sent, DeliveryState::StoredAtRelay).await;
    // Both relays hold it (custody receipts come from each), and neither
    // has its text anywhere on disk.
    r1.holds(1).await;
    r2.holds(1).await;
    assert!(!dir_contains(dr1.path(), &body));
    assert!(!dir_contains(dr2.path(), &body));
    // The deposits came on alice's mailbox stream to each relay.
    for r in [&r1, &r2] {
        let streams = &r.handle.metrics().mailbox_streams;
        assert!(meshchat::relay::metrics::Metrics::get(streams) >= 1);
    }

    // One relay goes away for good; the other is enough.
    r2.handle.kill();
    r2.handle.wait_stopped().await;

    let mut c = TestNode::start_with("carol", c_config()).await;
    let got = message(&mut c, &body).await;
    assert_eq!(got.sender, a.key());
    c.wait("mail drained from the relay", |e| match e {
        NodeEvent::Drained { relay, envelopes } if *relay == r1.handle.peer_id() => {
            Some(*envelopes)
        }
        _ => None,
    })
    .await;
    receipt(&mut a, sent, DeliveryState::Delivered).await;
    // Acknowledged after carol stored it: the relay let it go.
    r1.holds(0).await;
    let page = c.handle.history(a.key(), None, 10).await.unwrap();
    assert_eq!(page.messages.len(), 1, "stored exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_restarted_with_mail_waiting_loses_none() {
    let dr = tempfile::tempdir().unwrap();
    let r = TestRelay::start(relay_config(dr.path(), 111)).await;
    let (da, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = TestNode::start_in("alice", da.path(), 112).await;
    let relay_addr = r.addr.clone();
    let c_config = || with_relays(dc.path(), 113, vec![relay_addr.clone()]);
    let mut c = TestNode::start_with("carol", c_config()).await;
    befriend(&mut a, &mut c).await;
    let c_key = c.key();
    c.handle.shutdown(Duration::from_secs(10)).await.unwrap();
    drop(c);

    let bodies: Vec<Vec<u8>> = (0..3).map(|i| format!("note {i}").into_bytes()).collect();
    let mut sent = Vec::new();
    for b in &bodies {
        sent.push(a.handle.send(c_key, b.clone()).await.unwrap());
    }
    receipts(&mut a, &sent, DeliveryState::StoredAtRelay).await;
    r.holds(3).await;

    // A crash: no shutdown, nothing flushed beyond what custody promised.
    let listen = r.bare_addr();
    r.handle.kill();
    r.handle.wait_stopped().await;
    drop(r);
    let mut cfg = relay_config(dr.path(), 111);
    // The same port again (the address the devices were given must still
    // name it): the OS handed it to this relay a moment ago and has no
    // reason to give it to anyone else in between.
    cfg.net.listen = vec![listen];
    let r = TestRelay::start(cfg).await;
    assert_eq!(r.addr, relay_addr, "restarted on the same address");
    r.holds(3).await;

    let mut c = TestNode::start_with("carol", c_config()).await;
    messages(&mut c, &bodies).await;
    receipts(&mut a, &sent, DeliveryState::Delivered).await;
    r.holds(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_that_never_connect_chat_through_their_relay() {
    let dr = tempfile::tempdir().unwrap();
    let r = TestRelay::start(relay_config(dr.path(), 151)).await;
    let (da, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut a, mut c) = mail_only_pair(&r, (da.path(), dc.path()), (152, 153)).await;

    let sent = a
        .handle
        .send(c.key(), b"through the relay".to_vec())
        .await
        .unwrap();
    // Carol is online with a fetch waiting at the relay: the deposit
    // answers it at once, no polling.
    let got = message(&mut c, b"through the relay").await;
    assert_eq!(got.sender, a.key());
    // Her delivered receipt takes the same way back.
    receipt(&mut a, sent, DeliveryState::Delivered).await;
    let reply = c.handle.send(a.key(), b"got it".to_vec()).await.unwrap();
    message(&mut a, b"got it").await;
    receipt(&mut c, reply, DeliveryState::Delivered).await;
    r.holds(0).await;
    let status = a.handle.status().await.unwrap();
    assert!(!status.connected.contains(&c.peer()), "never connected");
}

/// A relay's copy can go without reaching its device: fetched while its
/// sender was not yet a contact there (so not readable), and acknowledged
/// at the relay all the same. The sender, still without a receipt, deposits
/// the message again once the custody is old enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_relay_copy_was_not_read_is_deposited_again() {
    let dr = tempfile::tempdir().unwrap();
    let r = TestRelay::start(relay_config(dr.path(), 191)).await;
    let relay = r.handle.peer_id();
    let (da, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Mail only: connected through a circuit, alice would send directly,
    // and carol refuse a device she does not know yet.
    let start = |dir: &std::path::Path, seed: u64| {
        let mut cfg = mail_only(dir, seed, &r);
        cfg.redeposit_after = Duration::from_secs(1);
        cfg
    };
    let mut a = TestNode::start_with("alice", start(da.path(), 192)).await;
    let mut c = TestNode::start_with("carol", start(dc.path(), 193)).await;
    a.connected_to(relay).await;
    c.connected_to(relay).await;
    // Only alice knows carol, for now.
    let code_c = c.invite_without_addrs().await;
    a.handle.add_contact(&code_c, "carol").await.unwrap();

    let body = b"are you there?".to_vec();
    let sent = a.handle.send(c.key(), body.clone()).await.unwrap();
    receipt(&mut a, sent, DeliveryState::StoredAtRelay).await;
    // Carol takes it from the relay and cannot read it: the relay lets
    // it go.
    c.wait("mail fetched from the relay", |e| match e {
        NodeEvent::Drained { relay: at, .. } if *at == relay => Some(()),
        _ => None,
    })
    .await;
    r.holds(0).await;

    // Now she knows alice: the message comes again through the relay.
    let code_a = a.invite_without_addrs().await;
    c.handle.add_contact(&code_a, "alice").await.unwrap();
    let got = message(&mut c, &body).await;
    assert_eq!(got.sender, a.key());
    receipt(&mut a, sent, DeliveryState::Delivered).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_with_no_relay_configured_finds_one_in_the_dht() {
    let dr = tempfile::tempdir().unwrap();
    let mut r_cfg = relay_config(dr.path(), 181);
    r_cfg.advertise = true;
    let r = TestRelay::start(r_cfg).await;
    let relay = r.handle.peer_id();
    let (da, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = TestNode::start_in("alice", da.path(), 182).await;
    // Carol knows the relay only as a DHT bootstrap peer.
    let c_config = || {
        let mut cfg = config(dc.path(), 183);
        cfg.net.bootstrap = vec![(relay, r.bare_addr())];
        cfg
    };
    let mut c = TestNode::start_with("carol", c_config()).await;
    c.wait("a relay found in the DHT", |e| match e {
        NodeEvent::RelayFound { relay: found } if *found == relay => Some(()),
        _ => None,
    })
    .await;
    // Her invite names it, so Alice deposits there while she is away.
    befriend(&mut a, &mut c).await;
    let c_key = c.key();
    c.handle.shutdown(Duration::from_secs(10)).await.unwrap();
    drop(c);
    let sent = a.handle.send(c_key, b"found you".to_vec()).await.unwrap();
    receipt(&mut a, sent, DeliveryState::StoredAtRelay).await;
    r.holds(1).await;
    let mut c = TestNode::start_with("carol", c_config()).await;
    message(&mut c, b"found you").await;
    receipt(&mut a, sent, DeliveryState::Delivered).await;
    r.holds(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_added_while_the_device_is_away_gets_a_one_time_prekey_from_its_relay() {
    let dr = tempfile::tempdir().unwrap();
    let r = TestRelay::start(relay_config(dr.path(), 161)).await;
    let relay = r.handle.peer_id();
    let (da, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let c_config = || with_relays(dc.path(), 163, vec![r.addr.clone()]);
    let a = TestNode::start_in("alice", da.path(), 162).await;
    let mut c = TestNode::start_with("carol", c_config()).await;
    // Carol's relay holds her bundle and a batch of one-time prekeys
    // (the first publish finds none there and tops them up).
    c.wait("prekeys published with one-time prekeys", |e| match e {
        NodeEvent::PrekeysPublished { relay: x, one_time } if *x == relay && *one_time > 0 => {
            Some(())
        }
        _ => None,
    })
    .await;
    // Carol knows alice, and goes away before alice has her invite.
    let code_c = c.invite_without_addrs().await;
    c.handle
        .add_contact(&a.invite_without_addrs().await, "alice")
        .await
        .unwrap();
    let c_key = c.key();
    c.handle.shutdown(Duration::from_secs(10)).await.unwrap();
    drop(c);

    let mut a = a;
    a.handle.add_contact(&code_c, "carol").await.unwrap();
    let one_time = a
        .wait("carol's prekeys from her relay", |e| match e {
            NodeEvent::ContactPrekeys {
                contact,
                relay: x,
                one_time,
            } if *contact == c_key && *x == relay => Some(*one_time),
            _ => None,
        })
        .await;
    assert!(one_time, "a one-time prekey came with the bundle");
    assert_eq!(
        r.handle
            .metrics()
            .one_time_prekeys_handed_out
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The session alice starts uses it; carol, back, opens the message
    // with the secret she kept when she published it.
    let body = b"first words, while you were away".to_vec();
    let sent = a.handle.send(c_key, body.clone()).await.unwrap();
    receipt(&mut a, sent, DeliveryState::StoredAtRelay).await;
    let mut c = TestNode::start_with("carol", c_config()).await;
    let got = message(&mut c, &body).await;
    assert_eq!(got.sender, a.key());
    receipt(&mut a, sent, DeliveryState::Delivered).await;
}

/// A read receipt for a contact that is away reaches it through its relay,
/// also when the mesh took it: a peer on the inbox topic that is not the
/// contact publishes nothing onward to anyone who keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_receipt_for_a_contact_away_waits_at_its_relay() {
    let dr = tempfile::tempdir().unwrap();
    let r = TestRelay::start(relay_config(dr.path(), 171)).await;
    let (da, db, dc) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let mut a = TestNode::start_in("alice", da.path(), 172).await;
    let mut b = TestNode::start_in("bob", db.path(), 173).await;
    let c_config = || with_relays(dc.path(), 174, vec![r.addr.clone()]);
    let mut c = TestNode::start_with("carol", c_config()).await;
    befriend(&mut a, &mut c).await;
    // Bob: alice's peer on the mesh.
    befriend(&mut a, &mut b).await;
    let sent = c.handle.send(a.key(), b"read me".to_vec()).await.unwrap();
    message(&mut a, b"read me").await;
    receipt(&mut c, sent, DeliveryState::Delivered).await;
    let c_peer = c.peer();
    c.handle.shutdown(Duration::from_secs(10)).await.unwrap();
    drop(c);
    a.wait("carol gone", |e| match e {
        NodeEvent::Disconnected { peer } if *peer == c_peer => Some(()),
        _ => None,
    })
    .await;

    assert!(a.handle.mark_read(sent.sender).await.unwrap());
    let mut c = TestNode::start_with("carol", c_config()).await;
    receipt(&mut c, sent, DeliveryState::Read).await;
}

/// Mail drained from a relay is answered by one delivered receipt per
/// contact and fetch, not one per message: twenty messages waiting for
/// carol come back to alice as one receipt envelope (two at most, if the
/// fetch was split).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_drained_at_once_is_answered_by_one_receipt() {
    let dr = tempfile::tempdir().unwrap();
    let r = TestRelay::start(relay_config(dr.path(), 181)).await;
    let (da, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = TestNode::start_with("alice", mail_only(da.path(), 182, &r)).await;
    let c = TestNode::start_with("carol", mail_only(dc.path(), 183, &r)).await;
    befriend_unconnected(&a, &c).await;
    a.connected_to(r.handle.peer_id()).await;
    let c_key = c.key();
    c.handle.shutdown(Duration::from_secs(10)).await.unwrap();
    drop(c);

    let mut sent = Vec::new();
    for i in 0..20 {
        let body = format!("while you were out {i}").into_bytes();
        sent.push(a.handle.send(c_key, body).await.unwrap());
    }
    receipts(&mut a, &sent, DeliveryState::StoredAtRelay).await;

    let mut c = TestNode::start_with("carol", mail_only(dc.path(), 183, &r)).await;
    let bodies: Vec<Vec<u8>> = (0..20)
        .map(|i| format!("while you were out {i}").into_bytes())
        .collect();
    messages(&mut c, &bodies).await;
    let mut left = sent.clone();
    let mut drained = 0;
    a.wait("every delivered receipt", |e| {
        match e {
            NodeEvent::Drained { envelopes, .. } => drained += envelopes,
            NodeEvent::Receipt {
                message,
                state: DeliveryState::Delivered,
            } => left.retain(|m| m != message),
            _ => {}
        }
        // The fetch's `Drained` comes after the receipts it carried.
        (left.is_empty() && drained > 0).then_some(())
    })
    .await;
    assert!(
        (1..=2).contains(&drained),
        "{drained} receipt envelopes for 20 messages"
    );
}

/// A file for a device that is away, whose relay has no room for the
/// file: the author hears why, and the message waits at the relay alone.
/// The device reads it while the author is away too, so the chunks cannot
/// come yet; it stops, starts again, and fetches them from the author once
/// the author is back (the wanted media survives the restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_whose_author_was_away_is_fetched_after_both_return() {
    use meshchat::node::media::MediaFile;
    use meshchat::relay::proto::Refusal;

    let dr = tempfile::tempdir().unwrap();
    let mut rc = relay_config(dr.path(), 171);
    rc.limits.max_bytes = 100_000;
    let r = TestRelay::start(rc).await;
    let (da, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = TestNode::start_in("alice", da.path(), 172).await;
    let c_config = || with_relays(dc.path(), 173, vec![r.addr.clone()]);
    let mut c = TestNode::start_with("carol", c_config()).await;
    befriend(&mut a, &mut c).await;
    let c_key = c.key();
    c.handle.shutdown(Duration::from_secs(10)).await.unwrap();
    drop(c);

    let file = MediaFile {
        name: "x-ray.dcm".into(),
        mime: "application/dicom".into(),
        data: (0..200_000u32).map(|i| (i % 253) as u8).collect(),
    };
    let sent = a.handle.send_media(c_key, file.clone()).await.unwrap();
    let why = a
        .wait("the relay's refusal of the file", |e| match e {
            NodeEvent::RelayRefused {
                message, reason, ..
            } if *message == sent => Some(*reason),
            NodeEvent::Receipt { message, state }
                if *message == sent && *state >= DeliveryState::StoredAtRelay =>
            {
                panic!("a file the relay could not hold shows {state:?}")
            }
            _ => None,
        })
        .await;
    assert_eq!(why, Refusal::QuotaFull);
    // Alice goes away; she comes back later on the same address.
    let a_listen: libp2p::Multiaddr = a
        .addr
        .iter()
        .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
        .collect();
    a.handle.shutdown(Duration::from_secs(10)).await.unwrap();
    drop(a);

    // Carol reads the message from her relay; its chunks cannot come.
    let mut c = TestNode::start_with("carol", c_config()).await;
    c.wait("the media message", |e| match e {
        NodeEvent::Message { message, .. } if message.msg_id == sent.msg_id => Some(()),
        _ => None,
    })
    .await;
    // The same conversation id on both sides: her reference names it.
    let early = c.handle.media(sent).await;
    assert!(early.is_err(), "read before its chunks came");
    c.handle.shutdown(Duration::from_secs(10)).await.unwrap();
    drop(c);

    let mut cfg = config(da.path(), 172);
    cfg.net.listen = vec![a_listen];
    let _a = TestNode::start_with("alice", cfg).await;
    let mut c = TestNode::start_with("carol", c_config()).await;
    let ready = media_ready(&mut c, sent.msg_id).await;
    assert_eq!(c.handle.media(ready).await.unwrap(), file);
}

/// A file for a device that is away, from an author that goes away too:
/// its chunks wait at the device's relay with the message, "stored at
/// relay" is said once they are all there, and the device gets the file
/// whole from its mailbox. The relay holds no byte of it in the clear and
/// nothing once the device has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_for_a_device_that_is_away_comes_from_its_relay() {
    use meshchat::node::media::MediaFile;

    let dr = tempfile::tempdir().unwrap();
    let r = TestRelay::start(relay_config(dr.path(), 181)).await;
    let (da, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = TestNode::start_in("alice", da.path(), 182).await;
    let c_config = || with_relays(dc.path(), 183, vec![r.addr.clone()]);
    let mut c = TestNode::start_with("carol", c_config()).await;
    befriend(&mut a, &mut c).await;
    let c_key = c.key();
    c.handle.shutdown(Duration::from_secs(10)).await.unwrap();
    drop(c);

    // Nine chunks: more than one deposit request, the last one short.
    let data: Vec<u8> = (0..530_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let file = MediaFile {
        name: "scan.pdf".into(),
        mime: "application/pdf".into(),
        data,
    };
    let sent = a.handle.send_media(c_key, file.clone()).await.unwrap();
    receipt(&mut a, sent, DeliveryState::StoredAtRelay).await;
    // The message and its nine chunks.
    r.holds(10).await;
    a.handle.shutdown(Duration::from_secs(10)).await.unwrap();
    drop(a);
    assert!(!dir_contains(dr.path(), &file.data[1000..1048]));

    let mut c = TestNode::start_with("carol", c_config()).await;
    let ready = media_ready(&mut c, sent.msg_id).await;
    assert_eq!(c.handle.media(ready).await.unwrap(), file);
    r.holds(0).await;
}

/// Two devices that reach only their relay (no connection between them):
/// a file's message comes through the relay and is acknowledged at once,
/// and its chunks follow it there all the same, so the file comes whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_between_devices_that_reach_only_a_relay_comes_whole() {
    use meshchat::node::media::MediaFile;

    let dr = tempfile::tempdir().unwrap();
    let r = TestRelay::start(relay_config(dr.path(), 201)).await;
    let (da, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, mut c) = mail_only_pair(&r, (da.path(), dc.path()), (202, 203)).await;

    let file = MediaFile {
        name: "results.csv".into(),
        mime: "text/csv".into(),
        data: (0..600_000u32).map(|i| (i * 13 % 241) as u8).collect(),
    };
    let sent = a.handle.send_media(c.key(), file.clone()).await.unwrap();
    let ready = media_ready(&mut c, sent.msg_id).await;
    assert_eq!(c.handle.media(ready).await.unwrap(), file);
    r.holds(0).await;
    let status = a.handle.status().await.unwrap();
    assert!(!status.connected.contains(&c.peer()), "never connected");
}

/// A file that comes from a device's relay while the files it keeps leave
/// no room for all of it (even with the slack allowed for files a relay
/// held): what does not fit stays at the relay (not acknowledged, so not
/// lost while its author is away), and the user hears that the file
/// waits. Once another file is deleted, the mailbox is read again from
/// its start, which brings the rest, and the relay is emptied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_past_the_media_budget_waits_at_the_relay_until_room_is_made() {
    use meshchat::node::media::MediaFile;

    let dr = tempfile::tempdir().unwrap();
    let r = TestRelay::start(relay_config(dr.path(), 211)).await;
    let (da, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = TestNode::start_in("alice", da.path(), 212).await;
    let c_config = || {
        let mut cfg = with_relays(dc.path(), 213, vec![r.addr.clone()]);
        // Room for ten chunks (and a slack of about one more): a file of
        // two and one of eleven do not fit together.
        cfg.media_budget = 10 * 66_000;
        cfg
    };
    let mut c = TestNode::start_with("carol", c_config()).await;
    befriend(&mut a, &mut c).await;
    let c_key = c.key();
    let small = MediaFile {
        name: "note.txt".into(),
        mime: "text/plain".into(),
        data: vec![7; 100_000],
    };
    let first = a.handle.send_media(c_key, small.clone()).await.unwrap();
    let first = media_ready(&mut c, first.msg_id).await;
    c.handle.shutdown(Duration::from_secs(10)).await.unwrap();
    drop(c);

    let file = MediaFile {
        name: "scan.pdf".into(),
        mime: "application/pdf".into(),
        data: (0..680_000u32).map(|i| (i * 7 % 251) as u8).collect(),
    };
    let sent = a.handle.send_media(c_key, file.clone()).await.unwrap();
    receipt(&mut a, sent, DeliveryState::StoredAtRelay).await;
    // The message and its eleven chunks.
    r.holds(12).await;
    a.handle.shutdown(Duration::from_secs(10)).await.unwrap();
    drop(a);

    let mut c = TestNode::start_with("carol", c_config()).await;
    c.wait("the file held", |e| match e {
        NodeEvent::MediaHeld { message, .. } if message.msg_id == sent.msg_id => Some(()),
        NodeEvent::MediaReady { message } if message.msg_id == sent.msg_id => {
            panic!("a file past the budget was kept whole")
        }
        _ => None,
    })
    .await;
    // What did not fit waits at the relay (the rest is acknowledged);
    // the author is gone.
    let mut held = r.handle.held();
    let left = *tokio::time::timeout(crate::common::WAIT, held.wait_for(|h| *h < 12))
        .await
        .expect("nothing acknowledged")
        .unwrap();
    assert!(left >= 1, "every chunk taken past the budget");
    assert!(c.handle.delete_message(first.sender, first).await.unwrap());
    // The mailbox is read from its start by the fetch after the waiting
    // one (which the relay answers within its 20 s wait).
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match c.events.recv().await.expect("the node stopped") {
                NodeEvent::MediaReady { message } if message.msg_id == sent.msg_id => {
                    break message;
                }
                _ => {}
            }
        }
    })
    .await
    .expect("the rest of the file never came from the relay");
    assert_eq!(c.handle.media(ready).await.unwrap(), file);
    r.holds(0).await;
}
