//! Groups: many real nodes in one group.

use std::collections::HashMap;

use meshchat::node::NodeEvent;
use meshchat::node::engine::{GroupChange, GroupInfo};
use meshchat::node::groups::Role;
use meshchat::store::DeliveryState;

use crate::common::{TestNode, befriend};

/// Starts `n` nodes; the first befriends every other one (the others know
/// only it) and creates a group of all of them. Returns the nodes and the
/// group once every node sees every member.
pub(crate) async fn group_of(
    n: usize,
    seed: u64,
) -> (Vec<tempfile::TempDir>, Vec<TestNode>, [u8; 32]) {
    group_of_ordered(n, seed, None).await
}

/// [`group_of`], with the nodes first put in the order of their identity
/// keys (`Some(false)`: ascending, `Some(true)`: descending), so that a
/// test whose outcome depends on that order always takes the same case.
async fn group_of_ordered(
    n: usize,
    seed: u64,
    descending: Option<bool>,
) -> (Vec<tempfile::TempDir>, Vec<TestNode>, [u8; 32]) {
    let names: Vec<&'static str> = (0..n)
        .map(|i| &*Box::leak(format!("m{i}").into_boxed_str()))
        .collect();
    let mut started = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let node = TestNode::start_in(name, dir.path(), seed + i as u64).await;
        started.push((dir, node));
    }
    if let Some(descending) = descending {
        started.sort_by_key(|(_, node)| node.key());
        if descending {
            started.reverse();
        }
    }
    let (dirs, mut nodes): (Vec<_>, Vec<_>) = started.into_iter().unzip();
    let (first, rest) = nodes.split_at_mut(1);
    for other in rest.iter_mut() {
        befriend(&mut first[0], other).await;
    }
    let members: Vec<[u8; 32]> = nodes[1..].iter().map(TestNode::key).collect();
    let group = nodes[0]
        .handle
        .create_group("team", "m0", members, None)
        .await
        .unwrap();
    for node in nodes.iter_mut() {
        loop {
            let gs = node.handle.groups().await.unwrap();
            if gs
                .iter()
                .any(|g| g.id == group && g.joined && g.members.len() == n)
            {
                break;
            }
            node.wait("the group", |e| match e {
                NodeEvent::GroupChanged { group: g } if *g == group => Some(()),
                _ => None,
            })
            .await;
        }
    }
    (dirs, nodes, group)
}

async fn every_member_sends_and_every_member_receives_everything_once(n: usize, seed: u64) {
    const EACH: usize = 3;
    let (_dirs, mut nodes, group) = group_of(n, seed).await;
    for (i, node) in nodes.iter().enumerate() {
        for k in 0..EACH {
            node.handle
                .send_group(group, format!("{i}:{k}").into_bytes())
                .await
                .unwrap();
        }
    }
    for (i, node) in nodes.iter_mut().enumerate() {
        let mut want: Vec<Vec<u8>> = (0..n)
            .filter(|j| *j != i)
            .flat_map(|j| (0..EACH).map(move |k| format!("{j}:{k}").into_bytes()))
            .collect();
        node.wait("every group message", |e| match e {
            NodeEvent::Message { message, .. } if message.conv_id == group => {
                assert!(
                    want.contains(&message.body),
                    "unexpected or repeated {:?}",
                    String::from_utf8_lossy(&message.body)
                );
                want.retain(|b| *b != message.body);
                want.is_empty().then_some(())
            }
            _ => None,
        })
        .await;
    }
    // Every history holds every message once, each sender's in the order
    // they were written.
    for (i, node) in nodes.iter().enumerate() {
        let page = node.handle.history(group, None, 500).await.unwrap();
        assert_eq!(page.messages.len(), n * EACH, "node {i}");
        let mut per_sender: HashMap<[u8; 32], Vec<String>> = HashMap::new();
        for m in page.messages.iter().rev() {
            per_sender
                .entry(m.sender)
                .or_default()
                .push(String::from_utf8(m.body.clone()).unwrap());
        }
        assert_eq!(per_sender.len(), n);
        for (j, sender) in nodes.iter().enumerate() {
            let want: Vec<String> = (0..EACH).map(|k| format!("{j}:{k}")).collect();
            assert_eq!(per_sender[&sender.key()], want, "node {i}, sender {j}");
        }
    }
    // The first node's messages reach "delivered" (every member's device
    // has them). Events seen while waiting above are gone, so the history
    // says where they are; each receipt event is a reason to look again.
    let first = &mut nodes[0];
    loop {
        let page = first.handle.history(group, None, 500).await.unwrap();
        let mine: Vec<_> = page
            .messages
            .iter()
            .filter(|m| m.sender == first.key())
            .collect();
        assert_eq!(mine.len(), EACH);
        if mine.iter().all(|m| m.state == DeliveryState::Delivered) {
            break;
        }
        first
            .wait("a receipt", |e| match e {
                NodeEvent::GroupReceipt { .. } | NodeEvent::Receipt { .. } => Some(()),
                _ => None,
            })
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_five_every_member_sends_and_receives_everything_once() {
    every_member_sends_and_every_member_receives_everything_once(5, 500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_twenty_every_member_sends_and_receives_everything_once() {
    every_member_sends_and_every_member_receives_everything_once(20, 600).await;
}

/// Waits until `node` sees `group` with exactly these members (in any
/// order) and says whether it is in it.
async fn sees(node: &mut TestNode, group: [u8; 32], members: &[[u8; 32]]) -> GroupInfo {
    let mut want = members.to_vec();
    want.sort_unstable();
    loop {
        let gs = node.handle.groups().await.unwrap();
        if let Some(g) = gs.iter().find(|g| g.id == group) {
            let mut have: Vec<[u8; 32]> = g.members.iter().map(|m| m.0).collect();
            have.sort_unstable();
            if have == want {
                return g.clone();
            }
        }
        node.wait("a group change", |e| match e {
            NodeEvent::GroupChanged { group: g } if *g == group => Some(()),
            _ => None,
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_admins_changing_the_group_at_once_converge_everywhere_the_lower_key_first() {
    two_admins_changing_the_group_at_once_converge_everywhere(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_admins_changing_the_group_at_once_converge_everywhere_the_higher_key_first() {
    two_admins_changing_the_group_at_once_converge_everywhere(true).await;
}

/// `descending`: the group's creator a has a higher identity key than the
/// second admin b (else a lower one).
async fn two_admins_changing_the_group_at_once_converge_everywhere(descending: bool) {
    // a created the group with b, c and y; x is a's contact, not yet in it.
    let (_dirs, mut nodes, group) = group_of_ordered(4, 700, Some(descending)).await;
    let dx = tempfile::tempdir().unwrap();
    let mut x = TestNode::start_in("x", dx.path(), 710).await;
    befriend(&mut nodes[0], &mut x).await;
    let [a, b, c, y] = [0, 1, 2, 3].map(|i| nodes[i].key());
    assert_eq!(a < b, !descending);
    let xk = x.key();
    nodes[0]
        .handle
        .change_group(
            group,
            GroupChange::SetRole {
                member: b,
                role: Role::Admin,
            },
        )
        .await
        .unwrap();
    loop {
        let gs = nodes[1].handle.groups().await.unwrap();
        if gs[0].members.iter().any(|m| m.0 == b && m.2 == Role::Admin) {
            break;
        }
        nodes[1]
            .wait("admin", |e| {
                matches!(e, NodeEvent::GroupChanged { .. }).then_some(())
            })
            .await;
    }
    // At the same time: a removes b and adds x; b removes c.
    let (ha, hb) = (nodes[0].handle.clone(), nodes[1].handle.clone());
    let (ra, rb) = tokio::join!(
        async move {
            ha.change_group(group, GroupChange::Remove { member: b })
                .await?;
            ha.change_group(
                group,
                GroupChange::Add {
                    contact: xk,
                    role: Role::Member,
                },
            )
            .await
        },
        hb.change_group(group, GroupChange::Remove { member: c })
    );
    ra.unwrap();
    rb.unwrap();
    // The rule: both removals carry the same clock, so the lower author key
    // goes first. If a's removal of b comes first, b's removal of c does
    // not count.
    let expected: Vec<[u8; 32]> = if a < b {
        vec![a, c, y, xk]
    } else {
        vec![a, y, xk]
    };
    let view_a = sees(&mut nodes[0], group, &expected).await;
    let view_x = sees(&mut x, group, &expected).await;
    let view_y = sees(&mut nodes[3], group, &expected).await;
    assert_eq!(view_a, view_x);
    assert_eq!(view_a, view_y);
    assert!(view_x.joined);
    if a < b {
        assert_eq!(sees(&mut nodes[2], group, &expected).await, view_a);
    } else {
        // c is out, and knows it.
        loop {
            let gs = nodes[2].handle.groups().await.unwrap();
            if !gs[0].joined {
                break;
            }
            nodes[2]
                .wait("removal", |e| {
                    matches!(e, NodeEvent::GroupChanged { .. }).then_some(())
                })
                .await;
        }
    }
    // b is out, and knows it.
    loop {
        let gs = nodes[1].handle.groups().await.unwrap();
        if !gs[0].joined {
            break;
        }
        nodes[1]
            .wait("removal", |e| {
                matches!(e, NodeEvent::GroupChanged { .. }).then_some(())
            })
            .await;
    }
}

/// Copies a stopped node's data directory (its store, keys and all).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_gets_later_messages_on_the_wire_but_cannot_read_them() {
    use meshchat::node::net::{Net, NetConfig, NetEvent, Topic, Verdict};

    let (dirs, mut nodes, group) = group_of(3, 900).await;
    let [a, b, c] = [0, 1, 2].map(|i| nodes[i].key());
    // Everyone's sender key reaches c.
    nodes[0]
        .handle
        .send_group(group, b"one".to_vec())
        .await
        .unwrap();
    nodes[1]
        .handle
        .send_group(group, b"two".to_vec())
        .await
        .unwrap();
    crate::common::messages(&mut nodes[2], &[b"one".to_vec(), b"two".to_vec()]).await;
    // What c knows when it is removed, kept aside: a removed member that
    // kept its keys.
    let c_node = nodes.pop().unwrap();
    c_node
        .handle
        .shutdown(std::time::Duration::from_secs(10))
        .await
        .unwrap();
    drop(c_node);
    let kept = tempfile::tempdir().unwrap();
    copy_dir(dirs[2].path(), kept.path());
    let mut c_node = TestNode::start_in("m2", dirs[2].path(), 902).await;

    nodes[0]
        .handle
        .change_group(group, GroupChange::Remove { member: c })
        .await
        .unwrap();
    for n in nodes.iter_mut() {
        sees(n, group, &[a, b]).await;
    }
    loop {
        let gs = c_node.handle.groups().await.unwrap();
        if !gs[0].joined {
            break;
        }
        c_node
            .wait("removal", |e| {
                matches!(e, NodeEvent::GroupChanged { .. }).then_some(())
            })
            .await;
    }

    // On the wire: a peer on the group's topic, connected to b.
    let topic = Topic::Group(meshchat::node::groups::topic_id(&group));
    let keypair = libp2p::identity::Keypair::ed25519_from_bytes([91; 32]).unwrap();
    let mut cfg = NetConfig::loopback();
    cfg.listen.clear();
    let mut wire = Net::start(keypair, &cfg).unwrap();
    wire.subscribe(&topic).unwrap();
    wire.dial(nodes[1].addr.clone()).unwrap();
    let b_peer = nodes[1].peer();
    tokio::time::timeout(crate::common::WAIT, async {
        loop {
            if let NetEvent::Subscribed { peer, topic: t } = wire.next_event().await
                && peer == b_peer
                && t == topic
            {
                return;
            }
        }
    })
    .await
    .expect("b's subscription");
    // b writes until a message is seen on the wire (at most five tries,
    // each waiting up to five seconds).
    let mut seen = None;
    for k in 0..5 {
        let body = format!("after {k}").into_bytes();
        nodes[1].handle.send_group(group, body).await.unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                if let NetEvent::Gossip(msg) = wire.next_event().await {
                    wire.report_gossip(
                        &msg.id,
                        &msg.source,
                        Verdict::Ignore(meshchat::node::net::Reason::Application("observer")),
                    );
                    if msg.topic == topic {
                        return msg.data;
                    }
                }
            }
        })
        .await;
        if let Ok(data) = got {
            seen = Some(data);
            break;
        }
    }
    let data = seen.expect("a group message on the wire");
    // The topic carries it behind its header (version, flags).
    let (_, message) =
        meshchat::node::groups::gossip_unframe(&data).expect("a group topic's header");
    let data = message.to_vec();
    crate::common::message(&mut nodes[0], b"after 0").await;
    // c's keys as they were at its removal do not open it (every member
    // rotated its key).
    drop(c_node);
    let store = std::sync::Arc::new(
        meshchat::store::Store::open(kept.path(), &crate::common::key(902)).unwrap(),
    );
    let mut old = meshchat::node::engine::Engine::open(store, 0).unwrap();
    // It was a member then, with the others' keys of that time.
    assert!(old.groups()[0].joined);
    let (taken, fx) = old.group_messages(&[(data, None)], 0).unwrap();
    assert_eq!(taken, vec![true], "held as waiting for a key it never gets");
    assert!(fx.events.is_empty());
    let page = old.store().history().page(&group, None, 10).unwrap();
    assert!(page.messages.iter().all(|m| !m.body.starts_with(b"after")));
}

/// A member gets a group message, writes `last` (if any) to its author,
/// and stops at once; the author counts the member's delivered receipt
/// while the member stays stopped.
async fn stopped_member_acknowledges(seed: u64, last: Option<&[u8]>) {
    let (_dirs, mut nodes, group) = group_of(2, seed).await;
    let sent = nodes[0]
        .handle
        .send_group(group, b"last words".to_vec())
        .await
        .unwrap();
    crate::common::messages(&mut nodes[1], &[b"last words".to_vec()]).await;
    if let Some(last) = last {
        let author = nodes[0].key();
        nodes[1].handle.send(author, last.to_vec()).await.unwrap();
    }
    nodes[1]
        .handle
        .shutdown(std::time::Duration::from_secs(10))
        .await
        .unwrap();
    nodes[0]
        .wait("the stopped member's receipt", |e| match e {
            NodeEvent::GroupReceipt {
                message,
                delivered: 1,
                ..
            } if message.msg_id == sent.msg_id => Some(()),
            _ => None,
        })
        .await;
}

/// A member that stops right after a group message came still sends its
/// delivered receipt (held back to go with others, it leaves in the stop
/// round).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stops_right_after_a_message_still_acknowledges_it() {
    stopped_member_acknowledges(950, None).await;
}

/// The same when the member writes to the author just before it stops: the
/// receipt waits behind that message's batch, whose answer comes while the
/// member is stopping, and still leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_writes_then_stops_still_acknowledges_the_group_message() {
    stopped_member_acknowledges(960, Some(b"bye")).await;
}

/// A group message under a member's key whose signature does not hold is
/// not forwarded by a member that has the key; one under a key it does
/// not know (yet) still is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_group_message_under_a_known_key_is_not_forwarded() {
    use meshchat::crypto::SenderKeyMessage;
    use meshchat::node::groups::{gossip_frame, gossip_unframe, topic_id};
    use meshchat::node::net::{Net, NetConfig, NetEvent, Reason, Topic, Verdict};

    let (_dirs, mut nodes, group) = group_of(2, 940).await;
    let topic = Topic::Group(topic_id(&group));
    // Two peers of the network layer on the group's topic, listening
    // nowhere (so never connected to each other): `wire` next to b, to
    // catch one of b's messages, and next to a, to see what a forwards;
    // `mallory` next to a only.
    let start = |seed: u8| {
        let keypair = libp2p::identity::Keypair::ed25519_from_bytes([seed; 32]).unwrap();
        let mut cfg = NetConfig::loopback();
        cfg.listen.clear();
        let mut net = Net::start(keypair, &cfg).unwrap();
        net.subscribe(&topic).unwrap();
        net
    };
    let mut wire = start(93);
    let mut mallory = start(94);
    async fn subscribed(net: &mut Net, node: &TestNode, topic: &Topic) {
        let peer = node.peer();
        // Its subscription may be in already: Kademlia dials the peers it
        // learns of, and the event came while another wait dropped it.
        if net.topic_peers(topic).contains(&peer) {
            return;
        }
        net.dial(node.addr.clone()).unwrap();
        tokio::time::timeout(crate::common::WAIT, async {
            loop {
                let _ = net.next_event().await;
                if net.topic_peers(topic).contains(&peer) {
                    return;
                }
            }
        })
        .await
        .expect("the node's subscription");
    }
    /// The next group message `net` gets on `topic` within `secs`, with
    /// `other` (if any) kept running meanwhile.
    async fn next_on(
        net: &mut Net,
        mut other: Option<&mut Net>,
        topic: &Topic,
        secs: u64,
    ) -> Option<Vec<u8>> {
        tokio::time::timeout(std::time::Duration::from_secs(secs), async {
            loop {
                let event = match other.as_mut() {
                    Some(o) => tokio::select! {
                        e = net.next_event() => e,
                        _ = o.next_event() => continue,
                    },
                    None => net.next_event().await,
                };
                if let NetEvent::Gossip(msg) = event {
                    net.report_gossip(
                        &msg.id,
                        &msg.source,
                        Verdict::Ignore(Reason::Application("observer")),
                    );
                    if msg.topic == *topic {
                        return msg.data;
                    }
                }
            }
        })
        .await
        .ok()
    }
    subscribed(&mut wire, &nodes[1], &topic).await;
    // b writes until one of its messages is caught (a has its key then).
    let mut caught = None;
    for k in 0..5 {
        let body = format!("from b {k}").into_bytes();
        nodes[1].handle.send_group(group, body).await.unwrap();
        if let Some(data) = next_on(&mut wire, None, &topic, 5).await {
            caught = Some(data);
            break;
        }
    }
    let data = caught.expect("one of b's messages on the wire");
    let (_, message) = gossip_unframe(&data).unwrap();
    let real = SenderKeyMessage::from_bytes(message).unwrap();
    crate::common::message(&mut nodes[0], b"from b 0").await;

    subscribed(&mut wire, &nodes[0], &topic).await;
    subscribed(&mut mallory, &nodes[0], &topic).await;
    // Under a key a does not know: forwarded. Sent until wire sees one
    // come from a (a's mesh for the topic takes it in at a heartbeat).
    let unknown = |n: u32| {
        let mut m = real.clone();
        m.key_id = real.key_id ^ 0x5a5a_5a5a;
        m.iteration = n;
        gossip_frame(&m.to_bytes(), false)
    };
    let mut n = 0;
    loop {
        assert!(n < 10, "nothing from mallory forwarded by a");
        let marker = unknown(n);
        mallory.publish(&topic, marker.clone()).unwrap();
        n += 1;
        if next_on(&mut wire, Some(&mut mallory), &topic, 3).await == Some(marker) {
            break;
        }
    }
    // Under b's key, the ciphertext changed: its signature fails at a.
    // Then one more under the unknown key: the next thing wire gets from
    // a, since a forwards in the order it validates.
    let mut forged = real.clone();
    forged.ciphertext[0] ^= 1;
    let forged = gossip_frame(&forged.to_bytes(), false);
    mallory.publish(&topic, forged.clone()).unwrap();
    let marker = unknown(n);
    mallory.publish(&topic, marker.clone()).unwrap();
    let next = next_on(&mut wire, Some(&mut mallory), &topic, 10).await;
    assert!(next != Some(forged), "the forged message was forwarded");
    assert_eq!(next, Some(marker), "the message after it was forwarded");
    // Under a's own key: a does not forward that forgery either.
    nodes[0]
        .handle
        .send_group(group, b"from a".to_vec())
        .await
        .unwrap();
    let own = loop {
        let data = next_on(&mut wire, Some(&mut mallory), &topic, 10)
            .await
            .expect("a's message on the wire");
        let (_, m) = gossip_unframe(&data).unwrap();
        let m = SenderKeyMessage::from_bytes(m).unwrap();
        // Not b's, nor one of mallory's made-up ones coming late.
        if m.key_id != real.key_id && m.key_id != real.key_id ^ 0x5a5a_5a5a {
            break m;
        }
    };
    let mut forged_own = own.clone();
    forged_own.ciphertext[0] ^= 1;
    let forged_own = gossip_frame(&forged_own.to_bytes(), false);
    mallory.publish(&topic, forged_own.clone()).unwrap();
    let marker = unknown(n + 1000);
    mallory.publish(&topic, marker.clone()).unwrap();
    let next = next_on(&mut wire, Some(&mut mallory), &topic, 10).await;
    assert!(
        next != Some(forged_own),
        "a forgery under a's own key was forwarded"
    );
    assert_eq!(next, Some(marker));
    // A flood under unknown keys: a forwards a peer's only as far as its
    // budget for them (64 at once, 16 a second after), not all 200.
    for k in 1..=200 {
        mallory.publish(&topic, unknown(n + k)).unwrap();
    }
    let mut forwarded = 0;
    while next_on(&mut wire, Some(&mut mallory), &topic, 2)
        .await
        .is_some()
    {
        forwarded += 1;
        assert!(forwarded < 200, "the whole flood was forwarded");
    }
    assert!(
        (1..=120).contains(&forwarded),
        "{forwarded} of 200 forwarded"
    );
    // And a is still a member that reads b.
    nodes[1]
        .handle
        .send_group(group, b"still here".to_vec())
        .await
        .unwrap();
    crate::common::message(&mut nodes[0], b"still here").await;
}

/// A member another member knows only through the group is removed: that
/// other member forgets it as a contact and says so; the creator, who
/// added it by its invite, keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_known_only_through_the_group_is_forgotten_when_removed() {
    let (_dirs, mut nodes, group) = group_of(3, 960).await;
    let (one, two) = (nodes[1].key(), nodes[2].key());
    let listed = |contacts: &[meshchat::node::ContactInfo], key: [u8; 32]| {
        contacts
            .iter()
            .find(|c| c.identity == key)
            .map(|c| c.from_group)
    };
    assert_eq!(
        listed(&nodes[1].handle.contacts().await.unwrap(), two),
        Some(true)
    );
    let hello = nodes[2].handle.send(one, b"hello".to_vec()).await.unwrap();
    nodes[2]
        .wait("hello delivered", |e| match e {
            NodeEvent::Receipt { message, state }
                if *message == hello && *state >= DeliveryState::Delivered =>
            {
                Some(())
            }
            _ => None,
        })
        .await;
    nodes[0]
        .handle
        .change_group(group, GroupChange::Remove { member: two })
        .await
        .unwrap();
    let name = nodes[1]
        .wait("the removed member forgotten", |e| match e {
            NodeEvent::ContactForgotten { contact, name } if *contact == two => Some(name.clone()),
            _ => None,
        })
        .await;
    assert_eq!(name, "m2");
    assert_eq!(
        listed(&nodes[1].handle.contacts().await.unwrap(), two),
        None
    );
    let creator = nodes[0].handle.contacts().await.unwrap();
    assert_eq!(listed(&creator, two), Some(false));
    assert_eq!(listed(&creator, one), Some(false));
    // What it writes later (it took device 1 up as a contact before) is a
    // contact request, as from any contact removed, not dropped.
    nodes[2]
        .handle
        .send(one, b"still there?".to_vec())
        .await
        .unwrap();
    nodes[1]
        .wait("a request from the forgotten member", |e| match e {
            NodeEvent::ContactRequest { identity, .. } if *identity == two => Some(()),
            _ => None,
        })
        .await;
}
