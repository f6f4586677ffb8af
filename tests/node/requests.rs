//! Contact requests: a device that added our invite, and that we have not
//! added, is a request until we accept or decline it.

use meshchat::node::{NodeError, NodeEvent};
use meshchat::store::DeliveryState;

use crate::common::{TestNode, befriend, contact_request, message, receipt};

/// Alice adds Bob's invite and writes to him; Bob has not added hers. He
/// sees a request with her fingerprint, not her message; once he accepts,
/// her message arrives once and is delivered, and they talk both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_added_our_invite_waits_as_a_request_until_accepted() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = TestNode::start_in("alice", da.path(), 61).await;
    let mut b = TestNode::start_in("bob", db.path(), 62).await;
    let code_b = b.handle.invite().await.unwrap();
    a.handle.add_contact(&code_b, "bob").await.unwrap();
    let sent = a
        .handle
        .send(b.key(), b"hello bob, it is alice".to_vec())
        .await
        .unwrap();

    let fingerprint = contact_request(&mut b, a.key()).await;
    let waiting = b.handle.requests().await.unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].identity, a.key());
    assert_eq!(waiting[0].peer_id, Some(a.peer()));
    assert_eq!(waiting[0].fingerprint, fingerprint);
    // Not a contact yet, and nothing of hers in a conversation.
    assert!(b.handle.contacts().await.unwrap().is_empty());
    assert!(b.handle.conversations().await.unwrap().is_empty());
    assert_eq!(a.handle.queued().await.unwrap(), 1);

    b.handle.accept_request(a.key(), "alice").await.unwrap();
    let got = message(&mut b, b"hello bob, it is alice").await;
    assert_eq!(got.sender, a.key());
    receipt(&mut a, sent, DeliveryState::Delivered).await;
    assert!(b.handle.requests().await.unwrap().is_empty());
    let contacts = b.handle.contacts().await.unwrap();
    assert_eq!(contacts.len(), 1);
    assert_eq!(
        (contacts[0].identity, contacts[0].name.as_str()),
        (a.key(), "alice")
    );
    assert_eq!(contacts[0].fingerprint, fingerprint);

    let reply = b.handle.send(a.key(), b"hi alice".to_vec()).await.unwrap();
    message(&mut a, b"hi alice").await;
    receipt(&mut b, reply, DeliveryState::Delivered).await;
    // Her message is in his history once.
    let page = b.handle.history(a.key(), None, 10).await.unwrap();
    let bodies: Vec<&[u8]> = page.messages.iter().map(|m| m.body.as_slice()).collect();
    assert_eq!(
        bodies,
        vec![&b"hi alice"[..], &b"hello bob, it is alice"[..]]
    );
}

/// Bob declines Carol's request: it is gone, cannot be accepted after,
/// and what she sent is not read. Accepting or declining a device that
/// sent no request is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_request_is_gone_and_what_it_sent_is_not_read() {
    let (dc, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let c = TestNode::start_in("carol", dc.path(), 63).await;
    let mut b = TestNode::start_in("bob", db.path(), 64).await;
    assert!(matches!(
        b.handle.accept_request(c.key(), "carol").await,
        Err(NodeError::UnknownContact)
    ));
    let code_b = b.handle.invite().await.unwrap();
    c.handle.add_contact(&code_b, "bob").await.unwrap();
    c.handle.send(b.key(), b"buy now".to_vec()).await.unwrap();
    contact_request(&mut b, c.key()).await;

    b.handle.decline_request(c.key()).await.unwrap();
    assert!(b.handle.requests().await.unwrap().is_empty());
    assert!(matches!(
        b.handle.decline_request(c.key()).await,
        Err(NodeError::UnknownContact)
    ));
    assert!(matches!(
        b.handle.accept_request(c.key(), "carol").await,
        Err(NodeError::UnknownContact)
    ));
    assert!(b.handle.contacts().await.unwrap().is_empty());
    assert!(b.handle.conversations().await.unwrap().is_empty());
    assert_eq!(c.handle.queued().await.unwrap(), 1);
}

/// Bob removes Alice, who still writes to him (in the session she has):
/// her message is a request, not dropped unseen; across a restart too.
/// Accepting it reads her message and she learns it was delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_contact_who_writes_again_is_a_request() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = TestNode::start_in("alice", da.path(), 71).await;
    let mut b = TestNode::start_in("bob", db.path(), 72).await;
    befriend(&mut a, &mut b).await;
    let first = a.handle.send(b.key(), b"one".to_vec()).await.unwrap();
    message(&mut b, b"one").await;
    receipt(&mut a, first, DeliveryState::Delivered).await;

    b.handle.remove_contact(a.key()).await.unwrap();
    // Remembered on disk: the same after a restart.
    b.handle
        .shutdown(std::time::Duration::from_secs(10))
        .await
        .unwrap();
    drop(b);
    let mut b = TestNode::start_in("bob", db.path(), 72).await;
    // Bob no longer dials her: she finds him at his new address.
    a.handle.dial(b.addr.clone()).await.unwrap();
    a.connected_to(b.peer()).await;
    let sent = a
        .handle
        .send(b.key(), b"are you there?".to_vec())
        .await
        .unwrap();
    // A frame she sent between the removal and the restart may have made
    // the request already: its event went to the node that stopped, and
    // the request waits in the store.
    let made = b.handle.requests().await.unwrap();
    if !made.iter().any(|r| r.identity == a.key()) {
        contact_request(&mut b, a.key()).await;
    }
    let waiting = b.handle.requests().await.unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].identity, a.key());
    assert!(b.handle.contacts().await.unwrap().is_empty());

    b.handle.accept_request(a.key(), "alice").await.unwrap();
    message(&mut b, b"are you there?").await;
    receipt(&mut a, sent, DeliveryState::Delivered).await;
    assert!(b.handle.requests().await.unwrap().is_empty());
}

/// Alice writes to Bob, who has not added her: a request. Then Carol, a
/// contact of both, puts them in a group, which makes Alice a contact of
/// Bob's. Her request still waits for him: it is his to accept, and
/// accepting makes her his own contact (not one the group made).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waits_still_when_a_group_makes_its_sender_a_contact() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut a = TestNode::start_in("alice", dirs[0].path(), 71).await;
    let mut b = TestNode::start_in("bob", dirs[1].path(), 72).await;
    let mut c = TestNode::start_in("carol", dirs[2].path(), 73).await;
    befriend(&mut c, &mut a).await;
    befriend(&mut c, &mut b).await;
    let code_b = b.handle.invite().await.unwrap();
    a.handle.add_contact(&code_b, "bob").await.unwrap();
    a.handle
        .send(b.key(), b"hello bob, it is alice".to_vec())
        .await
        .unwrap();
    contact_request(&mut b, a.key()).await;

    let group = c
        .handle
        .create_group("team", "carol", vec![a.key(), b.key()], None)
        .await
        .unwrap();
    b.wait("the group", |e| match e {
        NodeEvent::GroupChanged { group: g } if *g == group => Some(()),
        _ => None,
    })
    .await;
    loop {
        if b.handle
            .contacts()
            .await
            .unwrap()
            .iter()
            .any(|c| c.identity == a.key())
        {
            break;
        }
        b.wait("a change", |e| {
            matches!(e, NodeEvent::GroupChanged { .. }).then_some(())
        })
        .await;
    }
    let waiting = b.handle.requests().await.unwrap();
    assert_eq!(waiting.len(), 1, "the request still waits");
    assert_eq!(waiting[0].identity, a.key());
    let from_group = |contacts: &[meshchat::node::ContactInfo]| {
        contacts
            .iter()
            .find(|c| c.identity == a.key())
            .map(|c| c.from_group)
    };
    assert_eq!(from_group(&b.handle.contacts().await.unwrap()), Some(true));
    b.handle.accept_request(a.key(), "alice").await.unwrap();
    assert!(b.handle.requests().await.unwrap().is_empty());
    assert_eq!(from_group(&b.handle.contacts().await.unwrap()), Some(false));
    // Her message is in his history once (held, or sent again once she
    // was a contact).
    loop {
        let page = b.handle.history(a.key(), None, 10).await.unwrap();
        let hers: Vec<&[u8]> = page
            .messages
            .iter()
            .filter(|m| m.sender == a.key())
            .map(|m| m.body.as_slice())
            .collect();
        if !hers.is_empty() {
            assert_eq!(hers, vec![&b"hello bob, it is alice"[..]]);
            break;
        }
        message(&mut b, b"hello bob, it is alice").await;
    }
}

/// Alice links her laptop; Bob hears of it (her account's new list). Her
/// contacts come to the laptop from her phone; the laptop introduces
/// itself to Bob, who is not asked: the list of a contact's account names
/// it, so it is a contact at once, named after Alice and the device, and
/// what it writes is read and delivered, in Bob's one conversation with
/// Alice; her phone gets a copy of it in its own conversation with Bob;
/// and what Bob writes to Alice reaches both of her devices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_device_gets_the_accounts_contacts_who_take_it_in_at_once() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let Linked {
        mut a,
        mut b,
        mut l,
    } = linked(&dirs).await;
    let (bk, lk) = (b.key(), l.key());
    let sent = l
        .handle
        .send(bk, b"from the laptop".to_vec())
        .await
        .unwrap();
    let got = message(&mut b, b"from the laptop").await;
    assert_eq!(got.sender, lk);
    receipt(&mut l, sent, DeliveryState::Delivered).await;
    // One conversation with Alice, whichever of her devices writes.
    let with_alice = b.handle.history(a.key(), None, 10).await.unwrap();
    assert!(
        with_alice
            .messages
            .iter()
            .any(|m| m.sender == lk && m.body == b"from the laptop")
    );
    // Her phone files a copy of what her laptop wrote to Bob, as hers.
    let copy = message(&mut a, b"from the laptop").await;
    assert_eq!(copy.sender, lk);
    let with_bob = a.handle.history(bk, None, 10).await.unwrap();
    assert!(with_bob.messages.iter().any(|m| m.msg_id == copy.msg_id));
    // And what Bob writes to her reaches both of her devices.
    let sent = b
        .handle
        .send(a.key(), b"to both of alice's devices".to_vec())
        .await
        .unwrap();
    message(&mut a, b"to both of alice's devices").await;
    let got = message(&mut l, b"to both of alice's devices").await;
    assert_eq!(got.sender, bk);
    receipt(&mut b, sent, DeliveryState::Delivered).await;
}

/// Alice, Bob, and Alice's laptop linked to her account, which Bob took
/// in as a contact ("alice laptop") without a request.
struct Linked {
    a: TestNode,
    b: TestNode,
    l: TestNode,
}

async fn linked(dirs: &[tempfile::TempDir]) -> Linked {
    let mut a = TestNode::start_in("alice", dirs[0].path(), 81).await;
    let mut b = TestNode::start_in("bob", dirs[1].path(), 82).await;
    let mut l = TestNode::start_in("laptop", dirs[2].path(), 83).await;
    befriend(&mut a, &mut b).await;
    let (ak, bk, lk) = (a.key(), b.key(), l.key());
    let code = a.handle.link_device().await.unwrap();
    assert_eq!(l.handle.join_account(&code, "laptop").await.unwrap(), ak);
    l.wait("the account", |e| match e {
        NodeEvent::AccountJoined { account, .. } if *account == ak => Some(()),
        _ => None,
    })
    .await;
    assert_eq!(l.handle.devices().await.unwrap().account, ak);
    l.wait("alice's contacts", |e| match e {
        NodeEvent::AccountContacts { added } if added.contains(&bk) => Some(()),
        _ => None,
    })
    .await;
    let contacts = l.handle.contacts().await.unwrap();
    assert!(contacts.iter().any(|c| c.identity == bk && c.name == "bob"));

    let name = b
        .wait("the laptop as a contact", |e| match e {
            NodeEvent::ContactDevice {
                contact,
                account,
                name,
            } if *contact == lk && *account == ak => Some(name.clone()),
            _ => None,
        })
        .await;
    assert_eq!(name, "alice laptop");
    assert!(b.handle.requests().await.unwrap().is_empty());
    Linked { a, b, l }
}

/// Alice removes her laptop from her account (lost, say). Bob gets the
/// list without it and drops the laptop as a contact; the laptop is told
/// and is an account of its own again; Alice forgets it once it has the
/// list. What the laptop writes to Bob from then on is a contact request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_removed_from_its_account_is_dropped_by_its_contacts_and_told() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let Linked {
        mut a,
        mut b,
        mut l,
    } = linked(&dirs).await;
    let (ak, bk, lk) = (a.key(), b.key(), l.key());
    let list = a.handle.remove_device(lk).await.unwrap();
    assert_eq!(list.devices.len(), 1);
    a.wait("the laptop removed", |e| match e {
        NodeEvent::DeviceUnlinked { device, .. } if *device == lk => Some(()),
        _ => None,
    })
    .await;
    b.wait("the laptop gone from the contacts", |e| match e {
        NodeEvent::ContactDeviceRemoved {
            contact, account, ..
        } if *contact == lk && *account == ak => Some(()),
        _ => None,
    })
    .await;
    assert!(
        !b.handle
            .contacts()
            .await
            .unwrap()
            .iter()
            .any(|c| c.identity == lk)
    );
    l.wait("told", |e| match e {
        NodeEvent::AccountLeft { account, .. } if *account == ak => Some(()),
        _ => None,
    })
    .await;
    assert_eq!(l.handle.devices().await.unwrap().account, lk);
    a.wait("the laptop forgotten once told", |e| match e {
        NodeEvent::ContactDeviceRemoved { contact, .. } if *contact == lk => Some(()),
        _ => None,
    })
    .await;
    assert!(
        !a.handle
            .contacts()
            .await
            .unwrap()
            .iter()
            .any(|c| c.identity == lk)
    );

    l.handle
        .send(bk, b"still the laptop".to_vec())
        .await
        .unwrap();
    contact_request(&mut b, lk).await;
    assert!(
        b.handle
            .requests()
            .await
            .unwrap()
            .iter()
            .any(|r| r.identity == lk)
    );
}

/// Waits until `node` sees `group` as `holds` says (its groups are read
/// again at each change of that group).
async fn group_until(
    node: &mut TestNode,
    group: [u8; 32],
    what: &str,
    holds: impl Fn(&meshchat::node::engine::GroupInfo) -> bool,
) {
    loop {
        let groups = node.handle.groups().await.unwrap();
        if groups.iter().any(|g| g.id == group && holds(g)) {
            return;
        }
        node.wait(what, |e| match e {
            NodeEvent::GroupChanged { group: g } if *g == group => Some(()),
            _ => None,
        })
        .await;
    }
}

/// Groups follow accounts: Bob's group has Alice. When her laptop joins
/// her account and Bob takes it in, Bob, the group's admin, adds it to
/// the group; when Alice removes the laptop from her account, Bob removes
/// it from the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_follows_the_devices_of_a_members_account() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut a = TestNode::start_in("alice", dirs[0].path(), 91).await;
    let mut b = TestNode::start_in("bob", dirs[1].path(), 92).await;
    let mut l = TestNode::start_in("laptop", dirs[2].path(), 93).await;
    befriend(&mut a, &mut b).await;
    let (ak, lk) = (a.key(), l.key());
    let group = b
        .handle
        .create_group("team", "bob", vec![ak], None)
        .await
        .unwrap();
    group_until(&mut a, group, "alice in the group", |g| g.joined).await;

    let code = a.handle.link_device().await.unwrap();
    l.handle.join_account(&code, "laptop").await.unwrap();
    b.wait("the laptop as a contact", |e| match e {
        NodeEvent::ContactDevice { contact, .. } if *contact == lk => Some(()),
        _ => None,
    })
    .await;
    group_until(&mut l, group, "the laptop in the group", |g| {
        g.joined && g.members.iter().any(|m| m.0 == ak)
    })
    .await;
    group_until(&mut a, group, "alice hears of it", |g| {
        g.members.iter().any(|m| m.0 == lk)
    })
    .await;

    a.handle.remove_device(lk).await.unwrap();
    group_until(&mut b, group, "the laptop out of the group", |g| {
        !g.members.iter().any(|m| m.0 == lk)
    })
    .await;
    group_until(&mut l, group, "the laptop told", |g| !g.joined).await;
}
