//! Presence of contacts, from signed beacons on the presence topic.
//!
//! Only contacts are tracked (a beacon from anyone else is checked and
//! forwarded, never remembered). A contact is offline when it says so or
//! when no beacon came for the configured expiry, measured on our own
//! clock; "last seen" is the time its newest beacon carries.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::events::NodeEvent;
use super::proto::{Beacon, PresenceState};

/// Beacons stamped further than this in the future are refused.
pub const MAX_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;

/// What we last heard from one contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// The state shown to the user.
    pub state: PresenceState,
    /// Time of its newest beacon (Unix milliseconds).
    pub at_ms: u64,
    received: Instant,
}

/// The presence of every contact.
#[derive(Debug)]
pub struct Tracker {
    expiry: Duration,
    contacts: HashMap<[u8; 32], Option<Seen>>,
}

/// Wall-clock Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Tracker {
    /// A tracker showing a contact offline after `expiry` without a beacon.
    pub fn new(expiry: Duration) -> Self {
        Self {
            expiry,
            contacts: HashMap::new(),
        }
    }

    /// Starts tracking a contact.
    pub fn watch(&mut self, key: [u8; 32]) {
        self.contacts.entry(key).or_insert(None);
    }

    /// Stops tracking a contact.
    pub fn unwatch(&mut self, key: &[u8; 32]) {
        self.contacts.remove(key);
    }

    /// What we know of a contact.
    pub fn get(&self, key: &[u8; 32]) -> Option<Seen> {
        self.contacts.get(key).copied().flatten()
    }

    /// Takes a verified beacon; returns the event to show if the
    /// contact's state changed. Older or replayed beacons change nothing.
    pub fn on_beacon(&mut self, b: &Beacon, now: Instant) -> Option<NodeEvent> {
        let slot = self.contacts.get_mut(&b.device)?;
        let before = *slot;
        if before.is_some_and(|s| b.at_ms <= s.at_ms) {
            return None;
        }
        *slot = Some(Seen {
            state: b.state,
            at_ms: b.at_ms,
            received: now,
        });
        if before.is_some_and(|s| s.state == b.state) {
            return None;
        }
        Some(NodeEvent::Presence {
            contact: b.device,
            state: b.state,
            last_seen_ms: b.at_ms,
        })
    }

    /// Shows offline every contact whose beacons stopped.
    pub fn expire(&mut self, now: Instant) -> Vec<NodeEvent> {
        let mut out = Vec::new();
        for (key, slot) in &mut self.contacts {
            if let Some(s) = slot
                && s.state != PresenceState::Offline
                && now.saturating_duration_since(s.received) >= self.expiry
            {
                s.state = PresenceState::Offline;
                out.push(NodeEvent::Presence {
                    contact: *key,
                    state: PresenceState::Offline,
                    last_seen_ms: s.at_ms,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::DeviceIdentity;

    #[test]
    fn online_away_then_offline_when_beacons_stop() {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(3);
        let id = DeviceIdentity::generate(&mut rng);
        let key = id.public().signing;
        let mut t = Tracker::new(Duration::from_secs(3));
        let t0 = Instant::now();
        // Not a contact: ignored.
        let stranger = DeviceIdentity::generate(&mut rng);
        assert!(
            t.on_beacon(&Beacon::new(&stranger, PresenceState::Online, 1), t0)
                .is_none()
        );
        t.watch(key);
        let on = Beacon::new(&id, PresenceState::Online, 1000);
        assert!(matches!(
            t.on_beacon(&on, t0),
            Some(NodeEvent::Presence {
                state: PresenceState::Online,
                last_seen_ms: 1000,
                ..
            })
        ));
        // The same beacon again, or an older one: nothing.
        assert!(t.on_beacon(&on, t0).is_none());
        // A heartbeat with the same state: nothing shown, last seen moves.
        assert!(
            t.on_beacon(&Beacon::new(&id, PresenceState::Online, 1500), t0)
                .is_none()
        );
        assert_eq!(t.get(&key).unwrap().at_ms, 1500);
        let away = Beacon::new(&id, PresenceState::Away, 2000);
        assert!(matches!(
            t.on_beacon(&away, t0 + Duration::from_secs(1)),
            Some(NodeEvent::Presence {
                state: PresenceState::Away,
                ..
            })
        ));
        assert!(t.expire(t0 + Duration::from_secs(2)).is_empty());
        let gone = t.expire(t0 + Duration::from_secs(4));
        assert_eq!(
            gone,
            vec![NodeEvent::Presence {
                contact: key,
                state: PresenceState::Offline,
                last_seen_ms: 2000
            }]
        );
        assert!(t.expire(t0 + Duration::from_secs(9)).is_empty());
    }
}
