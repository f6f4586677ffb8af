//! What a relay counts, for its operator: gauges and counters kept in
//! atomics (the store thread and the swarm's task update them without
//! locks) and rendered in Prometheus' text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::proto::Refusal;

/// Counters and gauges of one relay.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Mailboxes holding mail.
    pub mailboxes: AtomicU64,
    /// Envelopes held.
    pub envelopes: AtomicU64,
    /// Bytes of envelopes held.
    pub bytes: AtomicU64,
    /// Deposits taken into custody (requests).
    pub deposits: AtomicU64,
    /// Envelopes taken into custody.
    pub deposited_envelopes: AtomicU64,
    /// Fetches answered with mail or an empty list.
    pub fetches: AtomicU64,
    /// Envelopes handed to their owners.
    pub fetched_envelopes: AtomicU64,
    /// Envelopes deleted on their owner's ack.
    pub acked_envelopes: AtomicU64,
    /// Envelopes dropped at their expiry or the retention limit.
    pub expired_envelopes: AtomicU64,
    /// Fetches waiting for mail right now.
    pub waiting_fetches: AtomicU64,
    /// Mailboxes whose prekey bundle is held.
    pub prekey_bundles: AtomicU64,
    /// Prekey bundles served.
    pub prekey_fetches: AtomicU64,
    /// One-time prekeys handed out (each once).
    pub one_time_prekeys_handed_out: AtomicU64,
    /// Circuits relayed since start.
    pub circuits: AtomicU64,
    /// Circuits open right now.
    pub circuits_open: AtomicU64,
    /// Reservations accepted since start.
    pub reservations: AtomicU64,
    /// Peers connected right now.
    pub peers: AtomicU64,
    /// Mailbox streams taken since start.
    pub mailbox_streams: AtomicU64,
    /// Mailbox streams open right now.
    pub mailbox_streams_open: AtomicU64,
    /// Mailbox requests that failed below the protocol (undecodable or
    /// over a size limit, the stream reset).
    pub bad_requests: AtomicU64,
    refusals: [AtomicU64; Refusal::ALL.len()],
}

impl Metrics {
    /// Counts one refusal.
    pub fn refused(&self, reason: Refusal) {
        if let Some(c) = self.refusals.get(reason.index()) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Refusals so far for `reason`.
    pub fn refusals(&self, reason: Refusal) -> u64 {
        self.refusals
            .get(reason.index())
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Adds to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Subtracts from a gauge (never below zero).
    pub fn sub(gauge: &AtomicU64, n: u64) {
        let _ = gauge.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(n))
        });
    }

    /// Reads a counter or gauge.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Everything, in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut one = |name: &str, kind: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(out, "# HELP meshchat_relay_{name} {help}");
            let _ = writeln!(out, "# TYPE meshchat_relay_{name} {kind}");
            let _ = writeln!(out, "meshchat_relay_{name} {}", Self::get(v));
        };
        one(
            "mailboxes",
            "gauge",
            "Mailboxes holding mail.",
            &self.mailboxes,
        );
        one("envelopes", "gauge", "Envelopes held.", &self.envelopes);
        one(
            "envelope_bytes",
            "gauge",
            "Bytes of envelopes held.",
            &self.bytes,
        );
        one(
            "deposits_total",
            "counter",
            "Deposits taken into custody.",
            &self.deposits,
        );
        one(
            "deposited_envelopes_total",
            "counter",
            "Envelopes taken into custody.",
            &self.deposited_envelopes,
        );
        one(
            "fetches_total",
            "counter",
            "Fetches answered.",
            &self.fetches,
        );
        one(
            "fetched_envelopes_total",
            "counter",
            "Envelopes handed to their owners.",
            &self.fetched_envelopes,
        );
        one(
            "acked_envelopes_total",
            "counter",
            "Envelopes deleted on their owner's ack.",
            &self.acked_envelopes,
        );
        one(
            "expired_envelopes_total",
            "counter",
            "Envelopes dropped at their expiry or the retention limit.",
            &self.expired_envelopes,
        );
        one(
            "prekey_bundles",
            "gauge",
            "Mailboxes whose prekey bundle is held.",
            &self.prekey_bundles,
        );
        one(
            "prekey_fetches_total",
            "counter",
            "Prekey bundles served.",
            &self.prekey_fetches,
        );
        one(
            "one_time_prekeys_handed_out_total",
            "counter",
            "One-time prekeys handed out.",
            &self.one_time_prekeys_handed_out,
        );
        one(
            "waiting_fetches",
            "gauge",
            "Fetches waiting for mail.",
            &self.waiting_fetches,
        );
        one(
            "circuits_total",
            "counter",
            "Circuits relayed.",
            &self.circuits,
        );
        one(
            "circuits_open",
            "gauge",
            "Circuits open now.",
            &self.circuits_open,
        );
        one(
            "reservations_total",
            "counter",
            "Circuit reservations accepted.",
            &self.reservations,
        );
        one("peers", "gauge", "Connected peers.", &self.peers);
        one(
            "mailbox_streams_total",
            "counter",
            "Mailbox streams taken.",
            &self.mailbox_streams,
        );
        one(
            "mailbox_streams_open",
            "gauge",
            "Mailbox streams open now.",
            &self.mailbox_streams_open,
        );
        one(
            "bad_requests_total",
            "counter",
            "Mailbox requests that did not decode or broke a size limit.",
            &self.bad_requests,
        );
        let _ = writeln!(
            out,
            "# HELP meshchat_relay_refusals_total Requests refused, by reason."
        );
        let _ = writeln!(out, "# TYPE meshchat_relay_refusals_total counter");
        for r in Refusal::ALL {
            let _ = writeln!(
                out,
                "meshchat_relay_refusals_total{{reason=\"{}\"}} {}",
                r.label(),
                self.refusals(r)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric_with_its_value() {
        let m = Metrics::default();
        Metrics::add(&m.envelopes, 5);
        Metrics::sub(&m.envelopes, 7);
        Metrics::add(&m.deposits, 2);
        m.refused(Refusal::QuotaFull);
        m.refused(Refusal::QuotaFull);
        let text = m.render();
        assert!(text.contains("meshchat_relay_envelopes 0\n"), "{text}");
        assert!(text.contains("meshchat_relay_deposits_total 2\n"));
        assert!(text.contains("meshchat_relay_refusals_total{reason=\"quota_full\"} 2\n"));
        assert!(text.contains("meshchat_relay_refusals_total{reason=\"too_large\"} 0\n"));
        // Every line is a comment or `name[{labels}] value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').unwrap();
            v.parse::<u64>().unwrap();
        }
    }
}
