//! Group traffic for members who are away: through their relays.

use std::time::Duration;

use meshchat::node::NodeEvent;
use meshchat::relay::metrics::Metrics;
use meshchat::store::DeliveryState;

use crate::common::{TestNode, WAIT, befriend, config, dir_contains, media_ready, messages};
use crate::{TestRelay, relay_config};

/// Waits until `node` sees `group` with `n` members, itself among them.
async fn joined(node: &mut TestNode, group: [u8; 32], n: usize) {
    loop {
        let gs = node.handle.groups().await.unwrap();
        if gs
            .iter()
            .any(|g| g.id == group && g.joined && g.members.len() == n)
        {
            return;
        }
        node.wait("the group", |e| match e {
            NodeEvent::GroupChanged { group: g } if *g == group => Some(()),
            _ => None,
        })
        .await;
    }
}

/// Alice, bob and carol (whose relays are `relays`) in a group alice made
/// (temporary if `retention` says so), each of them seeing all three.
struct Team {
    a: TestNode,
    b: TestNode,
    c: TestNode,
    group: [u8; 32],
    /// Carol's directory, seed and relays, to start her again.
    carol: (tempfile::TempDir, u64, Vec<libp2p::Multiaddr>),
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Team {
    /// Alice and bob each write to the group, and carol reads both: she
    /// has every member's sender key.
    async fn write_to_carol(a: &mut TestNode, b: &mut TestNode, c: &mut TestNode, group: [u8; 32]) {
        let bodies = [b"from alice".to_vec(), b"from bob".to_vec()];
        for (n, body) in [a, b].into_iter().zip(&bodies) {
            n.handle.send_group(group, body.clone()).await.unwrap();
        }
        messages(c, &bodies).await;
    }

    /// Alice and bob from seeds `seed` and `seed + 1`, carol from `seed + 2`.
    async fn start(seed: u64, relays: Vec<libp2p::Multiaddr>, retention: Option<u64>) -> Self {
        let (da, db, dc) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let mut a = TestNode::start_in("alice", da.path(), seed).await;
        let mut b = TestNode::start_in("bob", db.path(), seed + 1).await;
        let carol = (dc, seed + 2, relays);
        let mut c = TestNode::start_with("carol", carol_config(&carol)).await;
        befriend(&mut a, &mut b).await;
        befriend(&mut a, &mut c).await;
        let group = a
            .handle
            .create_group("team", "alice", vec![b.key(), c.key()], retention)
            .await
            .unwrap();
        for n in [&mut a, &mut b, &mut c] {
            joined(n, group, 3).await;
        }
        Self {
            a,
            b,
            c,
            group,
            carol,
            _dirs: (da, db),
        }
    }
}

/// Alice sends `file` to the group, and bob has it whole: its message,
/// and `r`'s count of envelopes held, with the count from just before.
async fn file_at_bob(
    (a, b): (&TestNode, &mut TestNode),
    group: [u8; 32],
    r: &TestRelay,
    file: &meshchat::node::media::MediaFile,
) -> (
    meshchat::store::MessageRef,
    tokio::sync::watch::Receiver<u64>,
    u64,
) {
    let held = r.handle.held();
    let before = *held.borrow();
    let sent = a
        .handle
        .send_group_media(group, file.clone())
        .await
        .unwrap();
    media_ready(b, sent.msg_id).await;
    (sent, held, before)
}

/// Carol's configuration: her directory and seed, with her relays.
fn carol_config(
    (dir, seed, relays): &(tempfile::TempDir, u64, Vec<libp2p::Multiaddr>),
) -> meshchat::node::NodeConfig {
    let mut cfg = config(dir.path(), *seed);
    cfg.relays = relays.clone();
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_away_during_fifty_group_messages_gets_all_fifty_from_its_relays() {
    const N: usize = 50;
    let (dr1, dr2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let r1 = TestRelay::start(relay_config(dr1.path(), 801)).await;
    let r2 = TestRelay::start(relay_config(dr2.path(), 802)).await;
    let Team {
        mut a,
        mut b,
        mut c,
        group,
        carol,
        _dirs,
    } = Team::start(803, vec![r1.addr.clone(), r2.addr.clone()], None).await;
    // Carol has everyone's sender key before she goes.
    Team::write_to_carol(&mut a, &mut b, &mut c, group).await;
    c.handle.shutdown(Duration::from_secs(10)).await.unwrap();
    drop(c);

    let bodies: Vec<Vec<u8>> = (0..N)
        .map(|i| format!("while carol is away {i}").into_bytes())
        .collect();
    let mut sent = Vec::new();
    for body in &bodies {
        sent.push(a.handle.send_group(group, body.clone()).await.unwrap());
    }
    messages(&mut b, &bodies).await;
    // Carol's copies wait at both her relays, unreadable there.
    // (A copy of the two messages before may join them: carol's receipts
    // for those may not have left before she stopped.)
    for r in [&r1, &r2] {
        let mut held = r.handle.held();
        tokio::time::timeout(WAIT, held.wait_for(|h| *h >= N as u64))
            .await
            .expect("the relay holds carol's copies")
            .unwrap();
    }
    assert!(!dir_contains(dr1.path(), &bodies[0]));

    let mut c = TestNode::start_with("carol", carol_config(&carol)).await;
    messages(&mut c, &bodies).await;
    let page = c.handle.history(group, None, 500).await.unwrap();
    assert_eq!(page.messages.len(), N + 2, "each message stored once");
    // Alice sees every one delivered to both members.
    loop {
        let page = a.handle.history(group, None, 500).await.unwrap();
        if page
            .messages
            .iter()
            .filter(|m| m.sender == a.key())
            .all(|m| m.state == DeliveryState::Delivered)
        {
            break;
        }
        a.wait("receipts", |e| {
            matches!(e, NodeEvent::GroupReceipt { .. }).then_some(())
        })
        .await;
    }
    assert_eq!(a.handle.queued().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_group_message_disappears_on_every_device_and_relay() {
    // Long enough for carol's copy to reach her relay (a few seconds after
    // sending) on a busy machine, and to be seen there.
    const RETENTION: u64 = 15;
    let dr = tempfile::tempdir().unwrap();
    let r = TestRelay::start(relay_config(dr.path(), 811)).await;
    let Team {
        mut a,
        mut b,
        mut c,
        group,
        carol,
        _dirs,
    } = Team::start(812, vec![r.addr.clone()], Some(RETENTION)).await;
    // Carol has everyone's sender key before she goes.
    Team::write_to_carol(&mut a, &mut b, &mut c, group).await;
    c.handle.shutdown(Duration::from_secs(10)).await.unwrap();
    drop(c);

    let body = b"this message self-destructs".to_vec();
    let sent = a.handle.send_group(group, body.clone()).await.unwrap();
    let got = crate::common::message(&mut b, &body).await;
    assert_eq!(got.expires_at, Some(got.sent_at + RETENTION));
    // Carol's copy waits at her relay, with the message's own expiry (with
    // copies of the two before, if her receipts for them did not leave
    // before she stopped: they expire as well).
    let mut held = r.handle.held();
    tokio::time::timeout(WAIT, held.wait_for(|h| *h >= 1))
        .await
        .expect("the relay holds carol's copy")
        .unwrap();
    // Then it is gone everywhere: from both histories and from the relay.
    // (The two messages before disappear a little earlier.)
    for n in [&mut a, &mut b] {
        loop {
            n.wait("messages to disappear", |e| {
                matches!(e, NodeEvent::Disappeared { .. }).then_some(())
            })
            .await;
            let page = n.handle.history(group, None, 10).await.unwrap();
            if page.messages.iter().all(|m| m.msg_id != sent.msg_id) {
                break;
            }
        }
    }
    // The relay drops its copy at the same time: its purge counts an
    // expired envelope (it may hold others for carol, such as a sender
    // key whose acknowledgement did not reach its sender before she left).
    tokio::time::timeout(WAIT, async {
        while Metrics::get(&r.handle.metrics().expired_envelopes) == 0 {
            held.changed().await.unwrap();
        }
    })
    .await
    .expect("the relay purged carol's copy");
    // Carol, back, finds nothing of it; what is sent now reaches her.
    let mut c = TestNode::start_with("carol", carol_config(&carol)).await;
    a.handle.send_group(group, b"after".to_vec()).await.unwrap();
    crate::common::message(&mut c, b"after").await;
    let page = c.handle.history(group, None, 10).await.unwrap();
    assert!(page.messages.iter().any(|m| m.body == b"after"));
    assert!(page.messages.iter().all(|m| m.body != body));
}

/// A file sent to a group while one member is away, to a relay with no
/// room for the file (it refuses the chunks): that member reads the
/// message from its relay after the author has gone too, and fetches the
/// file's pieces from another member that has them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_file_whose_author_is_away_comes_from_another_member() {
    use meshchat::node::media::MediaFile;

    let dr = tempfile::tempdir().unwrap();
    let mut rc = relay_config(dr.path(), 811);
    rc.limits.max_bytes = 100_000;
    let r = TestRelay::start(rc).await;
    let Team {
        mut a,
        mut b,
        mut c,
        group,
        carol,
        _dirs,
    } = Team::start(812, vec![r.addr.clone()], None).await;
    let hello = b"hello before carol goes".to_vec();
    a.handle.send_group(group, hello.clone()).await.unwrap();
    messages(&mut c, &[hello]).await;
    c.handle.shutdown(Duration::from_secs(10)).await.unwrap();
    drop(c);

    let file = MediaFile {
        name: "minutes.pdf".into(),
        mime: "application/pdf".into(),
        data: (0..180_000u32).map(|i| (i % 241) as u8).collect(),
    };
    // What the relay holds already (a receipt for carol, say): the file's
    // message for her is one more.
    let (sent, mut held, before) = file_at_bob((&a, &mut b), group, &r, &file).await;
    tokio::time::timeout(WAIT, held.wait_for(|h| *h > before))
        .await
        .expect("the relay holds carol's copy")
        .unwrap();
    let why = a
        .wait("the relay's refusal of the file", |e| match e {
            NodeEvent::RelayRefused {
                message, reason, ..
            } if *message == sent => Some(*reason),
            _ => None,
        })
        .await;
    assert_eq!(why, meshchat::relay::proto::Refusal::QuotaFull);
    a.handle.shutdown(Duration::from_secs(10)).await.unwrap();
    drop(a);

    let mut c = TestNode::start_with("carol", carol_config(&carol)).await;
    let ready = media_ready(&mut c, sent.msg_id).await;
    assert_eq!(c.handle.media(ready).await.unwrap(), file);
}

/// A file sent to a group while one member is away: the author deposits
/// its chunks in that member's mailbox at the relay that took the
/// member's copy of the message, and the member gets the file whole from its relay after every other
/// member has gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_file_for_a_member_who_is_away_comes_from_its_relay() {
    use meshchat::node::media::MediaFile;

    let dr = tempfile::tempdir().unwrap();
    let r = TestRelay::start(relay_config(dr.path(), 821)).await;
    let Team {
        a,
        mut b,
        c,
        group,
        carol,
        _dirs,
    } = Team::start(822, vec![r.addr.clone()], None).await;
    c.handle.shutdown(Duration::from_secs(10)).await.unwrap();
    drop(c);

    // Four chunks.
    let file = MediaFile {
        name: "chart.png".into(),
        mime: "image/png".into(),
        data: (0..250_000u32).map(|i| (i * 11 % 239) as u8).collect(),
    };
    let (sent, mut held, before) = file_at_bob((&a, &mut b), group, &r, &file).await;
    // Carol's copy of the message and the four chunks (a group message
    // has no "stored at relay" of its own: its state counts members).
    tokio::time::timeout(WAIT, held.wait_for(|h| *h >= before + 5))
        .await
        .expect("the relay holds carol's copy and the file")
        .unwrap();
    for n in [a, b] {
        n.handle.shutdown(Duration::from_secs(10)).await.unwrap();
    }
    assert!(!dir_contains(dr.path(), &file.data[1000..1048]));

    let mut c = TestNode::start_with("carol", carol_config(&carol)).await;
    let ready = media_ready(&mut c, sent.msg_id).await;
    assert_eq!(c.handle.media(ready).await.unwrap(), file);
}
