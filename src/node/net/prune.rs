//! Making room among incoming connections.
//!
//! A connection to a peer that speaks gossipsub never goes idle, so
//! without pruning, peers that dial in and stay hold the incoming slots
//! for good and a contact that dials in later is refused. When the
//! established incoming connections reach the high mark (⅞ of the cap),
//! the newest ones older than a grace period are closed down to the low
//! mark (¾), skipping protected peers (the node's contacts and relays)
//! and peers in one of our gossipsub meshes (the mesh needs them; it has
//! a dozen per topic at most).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::swarm::ConnectionId;

/// Incoming connections and which of them may be closed; see the module
/// docs.
#[derive(Debug)]
pub(super) struct Pruner {
    /// Incoming connections: peer and when it came.
    inbound: HashMap<ConnectionId, (PeerId, Instant)>,
    /// Peers never pruned.
    protected: HashSet<PeerId>,
    /// Newer connections are left alone.
    grace: Duration,
    /// Pruning starts at this many incoming connections…
    high: usize,
    /// …and stops at this many.
    low: usize,
}

impl Pruner {
    /// For a cap of `max` established incoming connections.
    pub(super) fn new(max: u32, grace: Duration) -> Self {
        let max = max as usize;
        Self {
            inbound: HashMap::new(),
            protected: HashSet::new(),
            grace,
            high: max - max / 8,
            low: (max - max / 4).min(max.saturating_sub(1)),
        }
    }

    pub(super) fn established(&mut self, id: ConnectionId, peer: PeerId, now: Instant) {
        self.inbound.insert(id, (peer, now));
    }

    pub(super) fn closed(&mut self, id: ConnectionId) {
        self.inbound.remove(&id);
    }

    /// Never prunes `peer` (until [`Self::unprotect`]).
    pub(super) fn protect(&mut self, peer: PeerId) {
        self.protected.insert(peer);
    }

    pub(super) fn unprotect(&mut self, peer: &PeerId) {
        self.protected.remove(peer);
    }

    /// Whether the high mark is reached (so [`Self::pick`] may close some).
    pub(super) fn over(&self) -> bool {
        self.inbound.len() >= self.high.max(1)
    }

    /// The connections to close now, if the high mark is reached; they are
    /// no longer counted.
    pub(super) fn pick(&mut self, in_mesh: &HashSet<PeerId>, now: Instant) -> Vec<ConnectionId> {
        if !self.over() {
            return Vec::new();
        }
        let mut candidates: Vec<(Instant, ConnectionId)> = self
            .inbound
            .iter()
            .filter(|(_, (peer, since))| {
                !self.protected.contains(peer)
                    && !in_mesh.contains(peer)
                    && now.saturating_duration_since(*since) >= self.grace
            })
            .map(|(id, (_, since))| (*since, *id))
            .collect();
        // Newest first: long-standing peers are kept.
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        let excess = self.inbound.len() - self.low;
        let picked: Vec<ConnectionId> = candidates
            .into_iter()
            .take(excess)
            .map(|(_, id)| id)
            .collect();
        for id in &picked {
            self.inbound.remove(id);
        }
        picked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prunes_the_newest_unprotected_past_their_grace_down_to_the_low_mark() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(60);
        // 16: high mark 14, low mark 12.
        let mut p = Pruner::new(16, grace);
        let peers: Vec<PeerId> = (0..16).map(|_| PeerId::random()).collect();
        let ids: Vec<ConnectionId> = (0..16).map(ConnectionId::new_unchecked).collect();
        let at = |i: usize| t0 + Duration::from_secs(i as u64);
        for i in 0..13 {
            p.established(ids[i], peers[i], at(i));
        }
        let none = HashSet::new();
        let later = t0 + Duration::from_secs(1000);
        assert!(p.pick(&none, later).is_empty(), "below the high mark");
        p.established(ids[13], peers[13], at(13));
        p.protect(peers[13]);
        let mesh: HashSet<PeerId> = [peers[12]].into();
        // 14 = high: two go (to 12), the newest unprotected outside the mesh.
        assert_eq!(p.pick(&mesh, later), vec![ids[11], ids[10]]);
        assert!(p.pick(&mesh, later).is_empty(), "at the low mark");
        // Connections within their grace stay: older ones go instead.
        p.established(ids[14], peers[14], later);
        p.established(ids[15], peers[15], later);
        assert_eq!(p.pick(&mesh, later + grace / 2), vec![ids[9], ids[8]]);
        p.unprotect(&peers[13]);
        p.closed(ids[0]);
        p.closed(ids[0]);
        // 11 now; three more within their grace make 14.
        for i in [8, 9, 10] {
            p.established(ids[i], peers[i], later);
        }
        // 13 is no longer protected, and newer than 1…7.
        assert_eq!(p.pick(&mesh, later + grace / 2), vec![ids[13], ids[7]]);
    }

    #[test]
    fn a_tiny_cap_still_leaves_room() {
        let now = Instant::now();
        let mut p = Pruner::new(1, Duration::ZERO);
        let peer = PeerId::random();
        p.established(ConnectionId::new_unchecked(1), peer, now);
        assert_eq!(
            p.pick(&HashSet::new(), now),
            vec![ConnectionId::new_unchecked(1)]
        );
        let mut p = Pruner::new(0, Duration::ZERO);
        assert!(p.pick(&HashSet::new(), now).is_empty());
    }
}
