//! Presence between two contacts.

use meshchat::node::{NodeEvent, PresenceState};

use crate::common::{TestNode, befriend};

async fn presence(node: &mut TestNode, of: [u8; 32], want: PresenceState) -> u64 {
    let what = format!("{want:?} presence");
    node.wait(&what, |e| match e {
        NodeEvent::Presence {
            contact,
            state,
            last_seen_ms,
        } if *contact == of && *state == want => Some(*last_seen_ms),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_goes_online_away_then_offline_when_heartbeats_stop() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = TestNode::start_in("alice", da.path(), 21).await;
    let mut b = TestNode::start_in("bob", db.path(), 22).await;
    befriend(&mut a, &mut b).await;
    let ak = a.key();
    let online = presence(&mut b, ak, PresenceState::Online).await;
    a.handle.set_presence(PresenceState::Away).await.unwrap();
    let away = presence(&mut b, ak, PresenceState::Away).await;
    assert!(away >= online);
    // Alice vanishes without a goodbye: her heartbeats stop.
    a.handle.kill();
    let last_seen = presence(&mut b, ak, PresenceState::Offline).await;
    assert!(last_seen >= away);
    let (state, seen) = b.handle.presence(ak).await.unwrap().unwrap();
    assert_eq!((state, seen), (PresenceState::Offline, last_seen));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_says_offline_and_hidden_presence_sends_nothing() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut a = TestNode::start_in("alice", dirs[0].path(), 23).await;
    // Bob never times anyone out here: offline can only come from a beacon.
    let mut cfg = crate::common::config(dirs[1].path(), 24);
    cfg.presence.expiry = std::time::Duration::from_secs(3600);
    let mut b = TestNode::start_with("bob", cfg).await;
    befriend(&mut a, &mut b).await;
    let ak = a.key();
    presence(&mut b, ak, PresenceState::Online).await;
    // Hiding says offline once, then nothing: while carol comes and goes
    // below (many of alice's heartbeat periods), alice stays offline.
    a.handle.hide_presence(true).await.unwrap();
    presence(&mut b, ak, PresenceState::Offline).await;
    let mut c = TestNode::start_in("carol", dirs[2].path(), 25).await;
    befriend(&mut c, &mut b).await;
    let ck = c.key();
    presence(&mut b, ck, PresenceState::Online).await;
    c.handle.shutdown(crate::common::WAIT).await.unwrap();
    presence(&mut b, ck, PresenceState::Offline).await;
    assert_eq!(
        b.handle.presence(ak).await.unwrap().map(|p| p.0),
        Some(PresenceState::Offline)
    );
}
