use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{fresh, msg};
use crate::store::{Direction, StoreHandle};

#[tokio::test(start_paused = true)]
async fn the_purge_timer_removes_expired_messages_and_stops_on_drop() {
    let (_dir, store) = fresh();
    let handle = StoreHandle::new(store);
    let mut m = msg(1, 1, 2, 1, b"short-lived");
    m.expires_at = Some(1_100);
    let id = m.reference();
    handle
        .call(move |s| s.history().append(&m, Direction::Incoming))
        .await
        .unwrap();

    let now = Arc::new(AtomicU64::new(1_000));
    let clock = {
        let now = Arc::clone(&now);
        Arc::new(move || now.load(Ordering::SeqCst))
    };
    let task = handle.spawn_purge(Duration::from_secs(60), clock);
    let mut purged = task.purged();
    // Not yet expired: the first ticks purge nothing.
    tokio::time::advance(Duration::from_secs(61)).await;
    assert!(
        handle
            .call(move |s| s.history().get(&id))
            .await
            .unwrap()
            .is_some()
    );
    // The wall clock passes the expiry; the next tick purges it.
    now.store(1_200, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(300), purged.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*purged.borrow(), 1);
    assert!(
        handle
            .call(move |s| s.history().get(&id))
            .await
            .unwrap()
            .is_none()
    );
    drop(task);
    assert!(
        purged.changed().await.is_err(),
        "timer stopped with its handle"
    );
}
