//! The mesh benchmark: prints one JSON document comparing, in the same run,
//! our end-to-end 1:1 path with raw libp2p request-response and raw
//! gossipsub, plus the three-node line and a 100,000-message burst, and
//! the relay (its release binary) beside Redis.
//!
//! ```sh
//! scripts/bench-mesh.sh               # installs redis-server, full run
//! MESH_BENCH_QUICK=1 cargo bench --bench mesh
//! MESH_BENCH_ONLY=relay cargo bench --bench mesh
//! MESH_BENCH_ONLY=rtt cargo bench --bench mesh
//! MESH_BENCH_ONLY=line cargo bench --bench mesh
//! MESH_BENCH_ONLY=deposit MESH_BENCH_DEPOSITS=200000 cargo bench --bench mesh
//! ```
//!
//! Everything runs on 127.0.0.1 with mDNS off; stores live in temporary
//! directories on the disk. See docs/benchmarks.md for how to read it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod disk;
mod group;
mod ours;
mod raw;
mod relay;
mod stats;

use serde_json::json;

use stats::p50;

/// Swaps the log filter for another.
pub(crate) type SetFilter = Box<dyn Fn(&str) + Send + Sync>;

/// Changes the log filter (MESH_BENCH_LOG_AFTER, once the group formed).
pub(crate) static LOG_AFTER: std::sync::OnceLock<SetFilter> = std::sync::OnceLock::new();

fn main() {
    // MESH_BENCH_LOG=FILE: the nodes' logs (RUST_LOG filter, thread names
    // tell the nodes apart) to FILE, for a run that needs explaining.
    if let Some(path) = std::env::var_os("MESH_BENCH_LOG") {
        use tracing_subscriber::prelude::*;
        let file = std::fs::File::create(path).unwrap();
        let (filter, handle) = tracing_subscriber::reload::Layer::new(
            tracing_subscriber::EnvFilter::from_default_env(),
        );
        tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_thread_names(true)
                    .with_ansi(false)
                    .with_writer(std::sync::Mutex::new(file)),
            )
            .init();
        let _ = LOG_AFTER.set(Box::new(move |f: &str| {
            let _ = handle.reload(tracing_subscriber::EnvFilter::new(f));
        }));
    }
    let quick = std::env::var_os("MESH_BENCH_QUICK").is_some();
    let (lat, total, burst, line_n) = if quick {
        (200, 5_000, 10_000, 50)
    } else {
        (1_000, 20_000, 100_000, 200)
    };
    // Relay: deposits, concurrency, drained mailbox, envelopes queued.
    let (deposits, window, drain, queued) = if quick {
        (5_000, 32, 20_000, 100_000)
    } else {
        (20_000, 32, 100_000, 1_000_000)
    };
    // MESH_BENCH_DEPOSITS=N: deposits per phase (to profile the deposit).
    let deposits = std::env::var("MESH_BENCH_DEPOSITS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(deposits);
    // MESH_BENCH_WINDOW=N: envelopes in flight in the relay part (a
    // diagnostic: Redis gets the same).
    let window = std::env::var("MESH_BENCH_WINDOW")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(window);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // MESH_BENCH_ONLY=direct: only our two-node part (for profiling).
    if std::env::var("MESH_BENCH_ONLY").as_deref() == Ok("direct") {
        let ours = rt.block_on(ours::direct(lat, total, 256));
        println!("{}", serde_json::to_string_pretty(&ours).unwrap());
        return;
    }
    // MESH_BENCH_ONLY=line: only the 3-node line.
    if std::env::var("MESH_BENCH_ONLY").as_deref() == Ok("line") {
        let line = rt.block_on(ours::line(if quick { 50 } else { 200 }));
        println!("{}", serde_json::to_string_pretty(&line).unwrap());
        return;
    }
    // MESH_BENCH_ONLY=rtt: request-response and a long-lived stream's
    // round trips and the disk's sync, side by side (a diagnostic for the
    // direct path).
    if std::env::var("MESH_BENCH_ONLY").as_deref() == Ok("rtt") {
        let r = rt.block_on(async {
            let rr = raw::request_response(lat, 1000, 32).await;
            let stream = raw::stream_rtt(lat).await;
            let sync = disk::sync_probe(lat);
            json!({ "raw_request_response": rr["rtt"], "raw_stream": stream, "disk_sync": sync })
        });
        println!("{}", serde_json::to_string_pretty(&r).unwrap());
        return;
    }
    // MESH_BENCH_ONLY=group: only the group of 100 (20 when quick).
    // MESH_BENCH_MEMBERS=N sets another group size (for profiling).
    let (members, group_n) = if quick { (20, 20) } else { (100, 200) };
    let members = std::env::var("MESH_BENCH_MEMBERS")
        .ok()
        .and_then(|m| m.parse().ok())
        .filter(|&m: &usize| m >= 2)
        .unwrap_or(members);
    if std::env::var("MESH_BENCH_ONLY").as_deref() == Ok("group") {
        let r = rt.block_on(group::group(members, group_n));
        println!("{}", serde_json::to_string_pretty(&r).unwrap());
        return;
    }
    // MESH_BENCH_ONLY=relay: only the relay and Redis (=deposit: only the
    // relay's deposit on the mailbox stream).
    if matches!(
        std::env::var("MESH_BENCH_ONLY").as_deref(),
        Ok("relay" | "deposit")
    ) {
        let r = rt.block_on(relay::relay(deposits, window, drain, queued));
        println!("{}", serde_json::to_string_pretty(&r).unwrap());
        return;
    }
    let report = rt.block_on(async {
        let rr = raw::request_response(lat, total, 32).await;
        let stream = raw::stream_rtt(lat).await;
        let sync = disk::sync_probe(lat);
        let gs = raw::gossipsub(lat, burst).await;
        let ours = ours::direct(lat, total, 256).await;
        let line = ours::line(line_n).await;
        let burst = ours::burst(burst).await;
        let relay = relay::relay(deposits, window, drain, queued).await;
        let group = group::group(members, group_n).await;
        let e2e_p50 = p50(&ours["latency_to_delivered_receipt"]);
        let rr_p50 = p50(&rr["rtt"]);
        // The least any node that syncs before it acks could reach here
        // (see disk.rs): the message and its ack cross the stream once each
        // way, and the recipient syncs before it acks. Ours reports
        // "delivered" before its own sync of that state, so this is its
        // floor too.
        let (stream_p50, sync_p50) = (p50(&stream["rtt"]), p50(&sync["latency"]));
        let floor = ((stream_p50 + sync_p50) / rr_p50 * 100.0).round() / 100.0;
        let ours_rate = ours["throughput"]["all_acknowledged_msgs_per_s"]
            .as_f64()
            .unwrap_or(0.0);
        let rr_rate = rr["throughput_sequential_msgs_per_s"]
            .as_f64()
            .unwrap_or(f64::NAN);
        let rr_piped = rr["throughput_pipelined_msgs_per_s"]
            .as_f64()
            .unwrap_or(f64::NAN);
        json!({
            "benchmark": "mesh",
            "quick": quick,
            "message_bytes": 200,
            "ours_direct": ours,
            "raw_request_response": rr,
            "raw_stream": stream,
            "disk_sync": sync,
            "raw_gossipsub_signed": gs,
            "ours_line_3_nodes": line,
            "ours_burst": burst,
            "relay": relay,
            "group": group,
            "targets": {
                "e2e_p50_over_rr_rtt_p50": (e2e_p50 / rr_p50 * 100.0).round() / 100.0,
                "e2e_p50_target_max": 1.5,
                "e2e_floor_one_sync_over_rr_rtt": floor,
                "throughput_over_rr_sequential": (ours_rate / rr_rate * 100.0).round() / 100.0,
                "throughput_over_rr_pipelined": (ours_rate / rr_piped * 100.0).round() / 100.0,
                "throughput_target_min": 3.0,
            },
        })
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}
