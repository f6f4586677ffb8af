//! The store from async code: every call runs on tokio's blocking pool, so
//! sled's disk I/O and the record decryption never stall an executor thread
//! (in particular not the node's swarm task).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Error, Store};

/// A cheap, cloneable handle to an open [`Store`] for async code.
#[derive(Debug, Clone)]
pub struct StoreHandle {
    store: Arc<Store>,
}

/// A clock giving Unix seconds; injected so tests can move time.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

impl StoreHandle {
    /// Wraps an open store.
    pub fn new(store: Store) -> Self {
        Self {
            store: Arc::new(store),
        }
    }

    /// Runs `f` with the store on the blocking pool and returns its result.
    pub async fn call<R, F>(&self, f: F) -> Result<R, Error>
    where
        R: Send + 'static,
        F: FnOnce(&Store) -> Result<R, Error> + Send + 'static,
    {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
    }

    /// Starts the background purge of expired messages: every `every`, purge
    /// what expired by `clock()`, flushing after each purge that removed
    /// something. The task stops when the returned [`PurgeTask`] is dropped.
    pub fn spawn_purge(&self, every: Duration, clock: Clock) -> PurgeTask {
        let (tx, rx) = watch::channel(0u64);
        let handle = self.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut total = 0u64;
            loop {
                tick.tick().await;
                let now = clock();
                let purged = handle
                    .call(move |s| {
                        let n = s.history().purge_expired(now)?;
                        if n > 0 {
                            s.flush()?;
                        }
                        Ok(n)
                    })
                    .await;
                match purged {
                    Ok(0) => {}
                    Ok(n) => {
                        total += n as u64;
                        tracing::debug!(purged = n, "expired messages purged");
                        tx.send_replace(total);
                    }
                    Err(e) => tracing::warn!(error = %e, "purging expired messages failed"),
                }
            }
        });
        PurgeTask { task, purged: rx }
    }
}

/// The running purge timer; dropping it stops the timer.
#[derive(Debug)]
pub struct PurgeTask {
    task: JoinHandle<()>,
    purged: watch::Receiver<u64>,
}

impl PurgeTask {
    /// Total messages purged so far, updated after each purge that removed
    /// something (wait on `changed()`).
    pub fn purged(&self) -> watch::Receiver<u64> {
        self.purged.clone()
    }
}

impl Drop for PurgeTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}
