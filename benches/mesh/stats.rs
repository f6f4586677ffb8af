//! Percentiles and rates for the report.

use std::time::Duration;

use serde_json::{Value, json};

/// p50 / p99 / mean / max of a set of latencies, in microseconds.
pub(crate) fn latency(mut samples: Vec<Duration>) -> Value {
    if samples.is_empty() {
        return json!(null);
    }
    samples.sort_unstable();
    let pick = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        micros(samples[i])
    };
    let mean = samples.iter().map(|d| d.as_secs_f64()).sum::<f64>() / samples.len() as f64;
    json!({
        "n": samples.len(),
        "p50_us": pick(0.50),
        "p99_us": pick(0.99),
        "mean_us": (mean * 1e7).round() / 10.0,
        "max_us": pick(1.0),
    })
}

/// Microseconds with one decimal.
pub(crate) fn micros(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e7).round() / 10.0
}

/// Messages per second, rounded.
pub(crate) fn rate(n: usize, took: Duration) -> f64 {
    (n as f64 / took.as_secs_f64()).round()
}

/// The p50 of a latency value made by [`latency`].
pub(crate) fn p50(v: &Value) -> f64 {
    v["p50_us"].as_f64().unwrap_or(f64::NAN)
}

/// CPU time used since `before` (from [`cpu_by_kind`]) per message, in
/// milliseconds, by kind of thread (Linux; zeros elsewhere). Threads that
/// ended meanwhile are not counted.
pub(crate) fn cpu_per_message(before: [f64; 3], n: usize) -> Value {
    let after = cpu_by_kind();
    let per =
        |i: usize| ((after[i] - before[i]).max(0.0) * 1e3 / n.max(1) as f64 * 10.0).round() / 10.0;
    json!({ "async_runtime": per(0), "store_threads": per(1), "other": per(2) })
}

/// CPU seconds process `pid` has used so far, all its threads (Linux; 0
/// elsewhere).
pub(crate) fn cpu_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    cpu_ticks(&stat).map_or(0.0, |(_, ticks)| ticks as f64 / 100.0)
}

/// The name and the CPU time (user and system, in clock ticks) of a
/// `/proc/…/stat` line.
fn cpu_ticks(stat: &str) -> Option<(&str, u64)> {
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let fields: Vec<&str> = stat.get(close + 2..)?.split(' ').collect();
    // utime and stime are fields 14 and 15 of stat(5).
    let ticks = fields
        .get(11..13)?
        .iter()
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    Some((stat.get(open + 1..close)?, ticks))
}

/// CPU seconds this process's threads have used so far, by kind: the
/// async runtime's workers, the nodes' store threads, the rest.
pub(crate) fn cpu_by_kind() -> [f64; 3] {
    let mut out = [0.0; 3];
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let Some((name, ticks)) = cpu_ticks(&stat) else {
            continue;
        };
        let kind = if name.starts_with("tokio") {
            0
        } else if name.starts_with("store-") {
            1
        } else {
            2
        };
        out[kind] += ticks as f64 / 100.0;
    }
    out
}
