//! Waiting for a child process to exit, bounded: a thread blocks in the
//! child's `wait` and the test waits on its answer with a timeout (nothing
//! polls).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::time::Duration;

/// What `wait` returns once the process `pid` exits, or `None` if it has
/// not exited within `limit` (it is then killed, so nothing outlives the
/// test, and `wait` returns).
pub(crate) fn wait_for<T: Send>(
    pid: Option<u32>,
    wait: impl FnOnce() -> T + Send,
    limit: Duration,
) -> Option<T> {
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel();
        s.spawn(move || {
            let _ = tx.send(wait());
        });
        match rx.recv_timeout(limit) {
            Ok(done) => Some(done),
            Err(_) => {
                // The waiting thread holds the child: kill it by its pid.
                let pid = pid.expect("a process id to kill").to_string();
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
                None
            }
        }
    })
}

/// The exit status of `child`, or `None` if it has not exited within
/// `limit` (it is then killed).
pub(crate) fn wait_for_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let pid = child.id();
    wait_for(
        Some(pid),
        || child.wait().expect("waiting for the child"),
        limit,
    )
}
