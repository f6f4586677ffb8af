//! A group on an in-process mesh: one message to every member, timed until
//! the last member has it.

use std::time::{Duration, Instant};

use meshchat::node::proto::{Payload, ReceiptKind};
use serde_json::{Value, json};

use crate::ours::{Bench, befriend, body};
use crate::stats::latency;

/// Longest the group may take to form (every member in it, every sender
/// key everywhere).
const FORM_LIMIT: Duration = Duration::from_secs(600);
/// Longest one message may take to reach every member before it counts as
/// not delivered to those without it.
const MESSAGE_LIMIT: Duration = Duration::from_secs(10);

/// `members` nodes, the first befriends the others and creates the group;
/// then `n` messages, one at a time, from the creator and `n` from another
/// member.
pub(crate) async fn group(members: usize, n: usize) -> Value {
    let setup = Instant::now();
    let mut nodes = Vec::with_capacity(members);
    for i in 0..members {
        nodes.push(Bench::start(5_000 + i as u64, true).await);
    }
    eprintln!("{members} nodes started after {:?}", setup.elapsed());
    for other in &nodes[1..] {
        befriend(&nodes[0], other, true).await;
    }
    eprintln!("befriended after {:?}", setup.elapsed());
    let keys: Vec<[u8; 32]> = nodes[1..].iter().map(Bench::key).collect();
    let group = nodes[0]
        .handle
        .create_group("bench", "n0", keys, None)
        .await
        .unwrap();
    let deadline = Instant::now() + FORM_LIMIT;
    for node in &nodes {
        loop {
            let gs = node.handle.groups().await.unwrap();
            if gs
                .iter()
                .any(|g| g.id == group && g.joined && g.members.len() == members)
            {
                break;
            }
            assert!(Instant::now() < deadline, "the group did not form");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eprintln!("every member joined after {:?}", setup.elapsed());
    // Every member writes once and every other member reads it: sessions
    // and sender keys are in place everywhere.
    for (i, node) in nodes.iter().enumerate() {
        node.handle.send_group(group, body(i as u64)).await.unwrap();
    }
    let warm = Instant::now();
    for (i, node) in nodes.iter().enumerate() {
        let all = tokio::time::timeout(
            (MESSAGE_LIMIT * 30).saturating_sub(warm.elapsed()),
            node.until(|s| {
                (0..members as u64)
                    .filter(|k| s.messages.contains_key(k))
                    .count()
                    >= members - 1
            }),
        )
        .await;
        if !matches!(all, Ok(true)) {
            let seen = node.seen.lock().unwrap();
            let missing: Vec<u64> = (0..members as u64)
                .filter(|k| *k != i as u64 && !seen.messages.contains_key(k))
                .collect();
            let keys: Vec<String> = missing
                .iter()
                .map(|&k| short(&nodes[k as usize].key()))
                .collect();
            panic!(
                "member {i} ({}) lacks the warm-up messages of {missing:?} ({keys:?})",
                short(&node.key())
            );
        }
        if warm.elapsed() > MESSAGE_LIMIT {
            eprintln!(
                "member {i} has every warm-up message after {:?}",
                warm.elapsed()
            );
        }
    }
    let formed = setup.elapsed();
    eprintln!("group of {members} formed in {formed:?}");
    // The warm-up's receipts (every member answers every other member's
    // message, about 300-600 ms after it, all at once here) are part of
    // formation too: the series start once every author has counted them,
    // or the first messages would queue behind thousands of them.
    for node in &nodes {
        let _ = tokio::time::timeout(
            MESSAGE_LIMIT * 10,
            node.until(|s| s.group_receipts >= members - 1),
        )
        .await;
    }
    let settled = setup.elapsed();
    eprintln!("warm-up receipts counted after {settled:?}");

    if let (Ok(f), Some(set)) = (
        std::env::var("MESH_BENCH_LOG_AFTER"),
        crate::LOG_AFTER.get(),
    ) {
        set(&f);
    }
    // A pause before the series (seconds, `MESH_BENCH_SETTLE`): to tell
    // what formation leaves running from what a message costs.
    let settle = std::env::var("MESH_BENCH_SETTLE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if settle > 0 {
        tokio::time::sleep(Duration::from_secs(settle)).await;
    }
    let mut first = 1_000_000u64;
    let mut series = serde_json::Map::new();
    for (label, from) in [("from_creator", 0usize), ("from_a_member", members / 2)] {
        let receipts_before = nodes[from].seen.lock().unwrap().group_receipts;
        let cpu = crate::stats::cpu_by_kind();
        let mut last = Vec::with_capacity(n);
        let mut delivered = 0usize;
        for k in first..first + n as u64 {
            let t = Instant::now();
            tracing::trace!(target: "mesh_bench", k, "group message sent");
            nodes[from].handle.send_group(group, body(k)).await.unwrap();
            let mut latest = Duration::ZERO;
            for (i, node) in nodes.iter().enumerate() {
                if i == from {
                    continue;
                }
                let got = tokio::time::timeout(
                    MESSAGE_LIMIT,
                    node.until(|s| s.messages.contains_key(&k)),
                )
                .await
                .is_ok_and(|ok| ok);
                if got {
                    delivered += 1;
                    let at = node.seen.lock().unwrap().messages[&k];
                    latest = latest.max(at - t);
                }
            }
            last.push(latest);
        }
        // Receipts: every member answers each message once (batched with
        // whatever else it received meanwhile), end-to-end encrypted 1:1.
        // Receipts go out together a little after the messages (see
        // GROUP_RECEIPT_DELAY): the last ones are waited for, briefly.
        let expected = receipts_before + n * (members - 1);
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            nodes[from].until(|s| s.group_receipts >= expected),
        )
        .await;
        let cpu = crate::stats::cpu_per_message(cpu, n);
        let receipts = nodes[from].seen.lock().unwrap().group_receipts - receipts_before;
        series.insert(
            label.into(),
            json!({
                "messages": n,
                "delivery_ratio": delivered as f64 / (n * (members - 1)) as f64,
                "time_until_last_member": latency(last),
                "receipts_per_message_counted_by_author": receipts as f64 / n as f64,
                "cpu_ms_per_message_with_its_receipts": cpu,
            }),
        );
        first += n as u64;
    }
    let receipt_payload = Payload::GroupReceipts {
        group,
        kind: ReceiptKind::Delivered,
        messages: vec![(1, [0; 16])],
    }
    .to_bytes()
    .len();
    for node in nodes {
        node.stop().await;
    }
    // The reference, in the same run: the same fan-out on the network
    // layer alone.
    let raw = crate::raw::group_fanout(members, n).await;
    json!({
        "what": "one group, every member a real node on 127.0.0.1 (TCP); the creator befriends the others, members meet through the group; each message sent once, encrypted with the sender key, published on the group topic (flooded to every member the author is connected to; not forwarded when that is all of them), stored and flushed by every member; each member's delivered receipts gather for 300-600 ms and go to the author as one 1:1 payload; CPU per message counts its receipts",
        "members": members,
        "formed_s": (formed.as_secs_f64() * 10.0).round() / 10.0,
        "warm_up_receipts_counted_s": (settled.as_secs_f64() * 10.0).round() / 10.0,
        "series": series,
        "receipt_payload_bytes_before_encryption": receipt_payload,
        "reference_network_layer_only": raw,
    })
}

/// The first bytes of a key in hex, as the nodes' store threads are named.
fn short(key: &[u8; 32]) -> String {
    key[..4].iter().map(|b| format!("{b:02x}")).collect()
}
