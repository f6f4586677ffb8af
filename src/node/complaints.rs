//! Logging a misbehaving peer without letting it flood the log: the first
//! complaint of each kind about a peer is logged at once, later ones at most once per
//! [`EVERY`] with the number left out in between.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// Shortest time between two log lines about the same peer.
pub(crate) const EVERY: Duration = Duration::from_secs(5);
/// Most peers remembered; the memory is cleared when it is full.
const CAPACITY: usize = 4096;

/// Per-peer log throttle.
#[derive(Debug, Default)]
pub(crate) struct Complaints {
    peers: HashMap<(PeerId, &'static str), (u64, Instant)>,
}

impl Complaints {
    /// Counts one complaint of kind `what` about `peer`. Returns `Some(n)`
    /// when a line should be logged now, `n` being how many were left out
    /// before it.
    pub(crate) fn note(&mut self, peer: &PeerId, what: &'static str, now: Instant) -> Option<u64> {
        let key = (*peer, what);
        if self.peers.len() >= CAPACITY && !self.peers.contains_key(&key) {
            self.peers.clear();
        }
        match self.peers.get_mut(&key) {
            None => {
                self.peers.insert(key, (0, now));
                Some(0)
            }
            Some((skipped, last)) if now.saturating_duration_since(*last) >= EVERY => {
                let n = *skipped;
                *skipped = 0;
                *last = now;
                Some(n)
            }
            Some((skipped, _)) => {
                *skipped += 1;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_complaint_is_logged_then_one_per_period_with_a_count() {
        let mut c = Complaints::default();
        let p = PeerId::random();
        let t = Instant::now();
        assert_eq!(c.note(&p, "x", t), Some(0));
        assert_eq!(c.note(&p, "x", t), None);
        assert_eq!(c.note(&p, "x", t + Duration::from_secs(1)), None);
        assert_eq!(c.note(&p, "x", t + EVERY), Some(2));
        assert_eq!(c.note(&PeerId::random(), "x", t), Some(0));
        assert_eq!(c.note(&p, "y", t), Some(0));
    }
}
