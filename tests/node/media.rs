//! Media: a file sent to a contact or a group is fetched by the recipients
//! from its author's device and reads back whole.

use meshchat::node::NodeEvent;
use meshchat::node::media::MediaFile;
use rand::{RngExt, SeedableRng};

use crate::common::{TestNode, befriend, media_ready};

/// A file of `len` seeded random bytes (three and a bit chunks by default
/// below, so the last chunk is short).
fn file(len: usize, seed: u64) -> MediaFile {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; len];
    rng.fill(&mut data[..]);
    MediaFile {
        name: "scan.png".into(),
        mime: "image/png".into(),
        data,
    }
}

/// Every file under `dir`, read whole.
fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_reaches_a_contact_whole_and_nothing_of_it_is_in_the_clear_on_disk() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = TestNode::start_in("a", da.path(), 1100).await;
    let mut b = TestNode::start_in("b", db.path(), 1101).await;
    befriend(&mut a, &mut b).await;
    let sent_file = file(3 * 64 * 1024 + 1234, 7);
    let sent = a
        .handle
        .send_media(b.key(), sent_file.clone())
        .await
        .unwrap();
    // The author reads its own file at once.
    assert_eq!(a.handle.media(sent).await.unwrap(), sent_file);

    let got = media_ready(&mut b, sent.msg_id).await;
    assert_eq!(got.sender, a.key());
    let read = b.handle.media(got).await.unwrap();
    assert_eq!(read, sent_file);

    // The message shows in history like any other, and is delivered.
    let page = b.handle.history(a.key(), None, 10).await.unwrap();
    assert_eq!(page.messages.len(), 1);
    crate::common::receipt(&mut a, sent, meshchat::store::DeliveryState::Delivered).await;

    // Neither store holds a piece of the file in the clear.
    a.handle
        .shutdown(std::time::Duration::from_secs(5))
        .await
        .unwrap();
    b.handle
        .shutdown(std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let probe = &sent_file.data[70_000..70_048];
    for dir in [da.path(), db.path()] {
        for (path, bytes) in files_under(dir) {
            assert!(
                !bytes.windows(probe.len()).any(|w| w == probe),
                "{} holds the file in the clear",
                path.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_sent_while_the_recipient_was_away_comes_when_it_is_back() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = TestNode::start_in("a", da.path(), 1300).await;
    let mut b = TestNode::start_in("b", db.path(), 1301).await;
    befriend(&mut a, &mut b).await;
    let sent_file = file(5 * 64 * 1024, 9);
    // Written while b is stopped: b reads it after both restart.
    b.handle
        .shutdown(std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let sent = a
        .handle
        .send_media(b.key(), sent_file.clone())
        .await
        .unwrap();
    let mut b = TestNode::start_in("b", db.path(), 1301).await;
    let got = media_ready(&mut b, sent.msg_id).await;
    assert_eq!(b.handle.media(got).await.unwrap(), sent_file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_name_or_a_file_too_large_is_refused_before_anything_is_sent() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = TestNode::start_in("a", da.path(), 1400).await;
    let mut b = TestNode::start_in("b", db.path(), 1401).await;
    befriend(&mut a, &mut b).await;
    let mut bad = file(10, 1);
    bad.name = "../../etc/passwd".into();
    assert!(a.handle.send_media(b.key(), bad).await.is_err());
    let big = MediaFile {
        name: "big".into(),
        mime: String::new(),
        data: vec![0; meshchat::crypto::media::MAX_MEDIA as usize + 1],
    };
    assert!(a.handle.send_media(b.key(), big).await.is_err());
    assert_eq!(a.handle.queued().await.unwrap(), 0);
}

/// A device that is not a contact, and knows a chunk's name (as it might
/// from a manifest it saw), is told "not here"; the contact gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_who_knows_a_chunks_name_gets_nothing() {
    use meshchat::crypto::media::Manifest;
    use meshchat::node::net::media::ChunkAnswer;
    use meshchat::node::net::{Net, NetConfig, NetEvent};

    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = TestNode::start_in("a", da.path(), 1500).await;
    let mut b = TestNode::start_in("b", db.path(), 1501).await;
    befriend(&mut a, &mut b).await;
    let sent = a.handle.send_media(b.key(), file(70_000, 3)).await.unwrap();
    let got = media_ready(&mut b, sent.msg_id).await;
    let page = b.handle.history(a.key(), None, 1).await.unwrap();
    assert_eq!(page.messages[0].msg_id, got.msg_id);
    let manifest = Manifest::from_body(&page.messages[0].body)
        .unwrap()
        .unwrap();
    let name = manifest.chunks[0];

    let mut stranger = Net::start(
        libp2p::identity::Keypair::generate_ed25519(),
        &NetConfig::loopback(),
    )
    .unwrap();
    stranger.add_address(&a.peer(), a.addr.clone());
    let asked = stranger.send_media(&a.peer(), name);
    let answer = tokio::time::timeout(crate::common::WAIT, async {
        loop {
            match stranger.next_event().await {
                NetEvent::MediaAnswer {
                    request, answer, ..
                } if request == asked => return Some(answer),
                NetEvent::MediaFailed { request, .. } if request == asked => return None,
                _ => {}
            }
        }
    })
    .await
    .expect("an answer in time");
    assert_eq!(answer, Some(ChunkAnswer::NotHere));
    // The chunk is there: the contact fetched it from the same device.
    let file = b.handle.media(got).await.unwrap();
    assert_eq!(file.data.len(), 70_000);
}

/// A file in a temporary chat disappears with its message on both devices,
/// pieces and all, whether or not the recipient had fetched all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_in_a_temporary_chat_leaves_no_piece_behind() {
    use meshchat::store::{Kind, Store};

    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = TestNode::start_in("a", da.path(), 1600).await;
    let mut b = TestNode::start_in("b", db.path(), 1601).await;
    befriend(&mut a, &mut b).await;
    a.handle.set_retention(b.key(), Some(2)).await.unwrap();
    let a_key = a.key();
    b.wait("the chat made temporary", |e| match e {
        NodeEvent::RetentionChanged { contact, secs, .. } if *contact == a_key => secs.map(|_| ()),
        _ => None,
    })
    .await;
    let sent = a
        .handle
        .send_media(b.key(), file(200_000, 4))
        .await
        .unwrap();
    b.wait("the file's message", |e| match e {
        NodeEvent::Message { message, .. } if message.msg_id == sent.msg_id => Some(()),
        _ => None,
    })
    .await;
    for node in [&mut a, &mut b] {
        node.wait("the file gone", |e| {
            matches!(e, NodeEvent::Disappeared { .. }).then_some(())
        })
        .await;
    }
    assert!(b.handle.media(sent).await.is_err());
    for (node, dir, seed) in [(a, &da, 1600), (b, &db, 1601)] {
        node.handle
            .shutdown(std::time::Duration::from_secs(5))
            .await
            .unwrap();
        drop(node);
        let store = Store::open(dir.path(), &crate::common::key(seed)).unwrap();
        assert_eq!(
            store.records(Kind::Media).unwrap().len(),
            0,
            "a piece stayed"
        );
        assert_eq!(store.records(Kind::MediaWanted).unwrap().len(), 0);
    }
}

/// A file sent to a group reaches every member: six fetch it from its
/// author at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_sent_to_a_group_reaches_every_member_six_at_once() {
    let (_dirs, mut nodes, group) = crate::group::group_of(7, 1700).await;
    let sent_file = file(1_000_000, 10);
    let sent = nodes[0]
        .handle
        .send_group_media(group, sent_file.clone())
        .await
        .unwrap();
    for node in nodes[1..].iter_mut() {
        let got = media_ready(node, sent.msg_id).await;
        assert_eq!(got.conv_id, group);
        assert_eq!(node.handle.media(got).await.unwrap(), sent_file);
    }
}

/// Files from a contact stop being fetched when the media a device keeps
/// would pass its budget: the user hears that the file waits, nothing of
/// it is kept, and it comes once deleting another file makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_past_the_media_budget_waits_until_a_deletion_makes_room() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = TestNode::start_in("a", da.path(), 1900).await;
    let mut cfg = crate::common::config(db.path(), 1901);
    // Room for one file of three chunks, not for two.
    cfg.media_budget = 5 * 66_000;
    let mut b = TestNode::start_with("b", cfg).await;
    befriend(&mut a, &mut b).await;

    let first_file = file(3 * 64 * 1024 - 10, 11);
    let first = a
        .handle
        .send_media(b.key(), first_file.clone())
        .await
        .unwrap();
    let first = media_ready(&mut b, first.msg_id).await;
    assert_eq!(b.handle.media(first).await.unwrap(), first_file);

    let second_file = file(3 * 64 * 1024 - 20, 12);
    let second = a
        .handle
        .send_media(b.key(), second_file.clone())
        .await
        .unwrap();
    let (needs, free) = b
        .wait("the second file held", |e| match e {
            NodeEvent::MediaHeld {
                message,
                needs,
                free,
            } if message.msg_id == second.msg_id => Some((*needs, *free)),
            NodeEvent::MediaReady { message } if message.msg_id == second.msg_id => {
                panic!("a file past the budget was fetched")
            }
            _ => None,
        })
        .await;
    assert!(needs > free, "held with {needs} needed and {free} free");
    let err = b.handle.media(second).await.unwrap_err().to_string();
    assert!(err.contains("3 of its 3 pieces"), "{err}");

    // Deleting the first file makes room: the second comes whole.
    assert!(b.handle.delete_message(a.key(), first).await.unwrap());
    let second = media_ready(&mut b, second.msg_id).await;
    assert_eq!(b.handle.media(second).await.unwrap(), second_file);
}
