//! Three nodes in a line: A–B–C, A and C not connected.

use meshchat::node::NodeEvent;
use meshchat::store::DeliveryState;

use crate::common::{TestNode, befriend_unconnected, connect, contains, dir_contains, logs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_crosses_the_middle_node_which_keeps_and_logs_no_plaintext() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // A and C listen nowhere (as behind NATs): each can reach B, they
    // cannot reach each other, whatever they learn about one another.
    let mut a = TestNode::start_unreachable("a", dirs[0].path(), 11).await;
    let mut b = TestNode::start_in("b", dirs[1].path(), 12).await;
    let mut c = TestNode::start_unreachable("c", dirs[2].path(), 13).await;
    befriend_unconnected(&a, &c).await;
    connect(&mut a, &mut b).await;
    connect(&mut c, &mut b).await;

    let secret = b"the line's secret: 7f3a9c1e".to_vec();
    let sent = a.handle.send(c.key(), secret.clone()).await.unwrap();
    let got = c
        .wait("the message through b", |e| match e {
            NodeEvent::Message { from, message } if message.body == secret => {
                Some((*from, message.clone()))
            }
            _ => None,
        })
        .await;
    assert_eq!(got.0, a.key());
    // C's delivered receipt goes back the same way.
    a.wait("c's delivered receipt", |e| match e {
        NodeEvent::Receipt { message, state } if *message == sent => {
            (*state == DeliveryState::Delivered).then_some(())
        }
        _ => None,
    })
    .await;

    // A and C never connected: the message went through B.
    let a_status = a.handle.status().await.unwrap();
    assert!(!a_status.connected.contains(&c.peer()));
    assert!(a_status.connected.contains(&b.peer()));

    // B has no conversation, no trace of the text on disk or in any log.
    assert!(b.handle.conversations().await.unwrap().is_empty());
    b.handle.shutdown(crate::common::WAIT).await.unwrap();
    assert!(!dir_contains(dirs[1].path(), &secret));
    let logs = logs();
    let logs = logs.lock().unwrap();
    assert!(!logs.is_empty());
    assert!(!contains(&logs, &secret));
}
