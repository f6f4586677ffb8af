//! The parent side: runs a writing child and kills it at a chosen moment.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};

use super::*;

/// The event after which the parent kills the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KillAt {
    /// Just after the store opened, as the first batch starts.
    Ready,
    /// After the n-th `appended` line: in the middle of a batch.
    Appended(u64),
    /// After the n-th `flushing` line: during a flush.
    Flushing(u64),
    /// After the n-th `flushed` line: just after a flush.
    Flushed(u64),
}

impl KillAt {
    pub(super) fn random(rng: &mut StdRng, batch: u64) -> Self {
        // Now and then a longer run, so one child writes a larger share of
        // the log.
        let flushes = if rng.random_range(0..10) == 0 { 60 } else { 12 };
        match rng.random_range(0..20) {
            0 => Self::Ready,
            1..=6 => Self::Appended(rng.random_range(1..=batch * flushes)),
            7..=12 => Self::Flushing(rng.random_range(1..=flushes)),
            _ => Self::Flushed(rng.random_range(1..=flushes)),
        }
    }

    pub(super) fn kind(self) -> usize {
        match self {
            Self::Ready => 0,
            Self::Appended(_) => 1,
            Self::Flushing(_) => 2,
            Self::Flushed(_) => 3,
        }
    }
}

/// One progress line of the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Event {
    Ready,
    Appended(u64),
    Flushing(u64),
    Flushed(u64),
}

pub(super) fn parse_event(line: &str) -> Option<Event> {
    let line = line.strip_suffix('\n')?;
    if line == "ready" {
        return Some(Event::Ready);
    }
    let (word, n) = line.split_once(' ')?;
    let n = n.parse().ok()?;
    match word {
        "appended" => Some(Event::Appended(n)),
        "flushing" => Some(Event::Flushing(n)),
        "flushed" => Some(Event::Flushed(n)),
        _ => None,
    }
}

/// What the parent learned from one child.
#[derive(Debug, Default)]
pub(super) struct ChildRun {
    /// Messages `0..flushed` of the round were reported as flushed
    /// (including lines that reached the pipe after the kill was decided).
    pub(super) flushed: u64,
    /// The highest `appended` count seen.
    pub(super) appended: u64,
    pub(super) flushing_lines: u64,
    pub(super) flushed_lines: u64,
    pub(super) appended_lines: u64,
    pub(super) ready: bool,
    /// `flushed` lines read after the kill was decided.
    pub(super) flushed_after_kill: u64,
}

impl ChildRun {
    pub(super) fn apply(&mut self, event: Event, after_kill: bool) {
        match event {
            Event::Ready => self.ready = true,
            Event::Appended(n) => {
                self.appended_lines += 1;
                self.appended = self.appended.max(n);
            }
            Event::Flushing(_) => self.flushing_lines += 1,
            Event::Flushed(n) => {
                self.flushed_lines += 1;
                self.flushed = self.flushed.max(n);
                if after_kill {
                    self.flushed_after_kill += 1;
                }
            }
        }
    }

    pub(super) fn reached(&self, target: KillAt) -> bool {
        match target {
            KillAt::Ready => self.ready,
            KillAt::Appended(n) => self.appended_lines >= n,
            KillAt::Flushing(n) => self.flushing_lines >= n,
            KillAt::Flushed(n) => self.flushed_lines >= n,
        }
    }
}

pub(super) fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        (None, None) => format!("{status:?}"),
    }
}

/// Runs the child for `round` until `target`, kills it with SIGKILL and
/// collects every line it wrote before dying.
pub(super) fn run_child(dir: &Path, round: u32, batch: u64, target: KillAt) -> ChildRun {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_ROUND_ENV, round.to_string())
        .env(CHILD_BATCH_ENV, batch.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        loop {
            let mut line = Vec::new();
            match stdout.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&line).into_owned();
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            }
        }
    });

    let mut run = ChildRun::default();
    let mut killed = false;
    loop {
        match rx.recv_timeout(LINE_TIMEOUT) {
            Ok(line) => {
                if let Some(event) = parse_event(&line) {
                    run.apply(event, false);
                    if run.reached(target) {
                        child.kill().unwrap();
                        killed = true;
                        break;
                    }
                }
            }
            // End of output: the child exited by itself.
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                child.kill().unwrap();
                let status = child.wait().unwrap();
                panic!(
                    "round {round}: child silent for {LINE_TIMEOUT:?} (progress {run:?}); \
                     killed, {}",
                    describe(status)
                );
            }
        }
    }
    let status = child.wait().unwrap();
    // Lines already in the pipe when the kill landed are reports too.
    loop {
        match rx.recv_timeout(LINE_TIMEOUT) {
            Ok(line) => {
                if let Some(event) = parse_event(&line) {
                    run.apply(event, true);
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                panic!("round {round}: child's stdout still open {LINE_TIMEOUT:?} after it died")
            }
        }
    }
    reader.join().unwrap();

    // A child that ends by itself either failed (its stderr is above) or
    // never reached the kill point: both would leave the round untested.
    assert!(
        killed && status.signal() == Some(SIGKILL),
        "round {round}: child ended by itself ({}) before the kill point {target:?}, \
         progress {run:?}",
        describe(status)
    );
    run
}
