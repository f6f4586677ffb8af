//! The printed table and the ratios in the JSON line.

use super::*;

pub(super) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) fn f(v: &Value, path: &str) -> f64 {
    path.split('.')
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_f64)
        .unwrap_or(f64::NAN)
}

pub(super) fn size_label(n: usize) -> String {
    if n >= 1_000_000 {
        format!("{}M", n / 1_000_000)
    } else {
        format!("{}k", n / 1_000)
    }
}

pub(super) fn report(sc: &Scale, sled: &Value, sqlite: &Value, reopen: &Value) {
    println!();
    println!("meshchat store (sled, every record encrypted) vs SQLite (WAL, plaintext)");
    println!(
        "ratio column: ours/sqlite (rates: above 1 is faster; latencies and sizes: below 1 is better)"
    );
    println!(
        "{:<44} {:>12} {:>12} {:>10}",
        "", "ours", "sqlite", "ours/sqlite"
    );
    let row = |label: &str, a: f64, b: f64| {
        println!("{label:<44} {a:>12.1} {b:>12.1} {:>10.2}", a / b);
    };
    for (k, &n) in sc.stages.iter().enumerate() {
        let a = &sled["stages"][k];
        let b = &sqlite["stages"][k];
        println!("--- {} messages in the conversation ---", size_label(n));
        for (label, path) in [
            ("insert, batched fill (msg/s)", "fill_batched.per_s"),
            (
                "insert, single, not durable (msg/s)",
                "single_not_durable_rate.per_s",
            ),
            (
                "insert, single, durable (msg/s)",
                "single_durable_rate.per_s",
            ),
            (
                "insert, batch of 100, durable (msg/s)",
                "batch_durable_rate.per_s",
            ),
            ("single not durable p50 (µs)", "single_not_durable.p50_us"),
            ("single not durable p99 (µs)", "single_not_durable.p99_us"),
            ("single durable p50 (µs)", "single_durable.p50_us"),
            ("page of 50, newest, p50 (µs)", "page_newest.p50_us"),
            ("page of 50, random, p50 (µs)", "page_random.p50_us"),
            ("page of 50, random, p99 (µs)", "page_random.p99_us"),
            ("page of 50, walk mean (µs)", "walk.mean_us"),
            ("conversation list (202), p50 (µs)", "list.p50_us"),
            ("conversation list (202), p99 (µs)", "list.p99_us"),
            ("list with newest message, p50 (µs)", "summaries.p50_us"),
            ("list with newest message, p99 (µs)", "summaries.p99_us"),
            ("RSS after fill (MiB)", "memory_after_fill.rss_mib"),
            ("peak RSS so far (MiB)", "memory_after_reads.hwm_mib"),
            ("on disk (MiB)", "disk_mib"),
        ] {
            row(label, f(a, path), f(b, path));
        }
        let same = a["walk_hash"] == b["walk_hash"]
            && a["list_hash"] == b["list_hash"]
            && a["summaries_hash"] == b["summaries_hash"];
        println!("same history and list in both engines: {same}");
    }
    let big = size_label(sc.stages[2]);
    println!("--- store reopened in a fresh process at {big} ---");
    println!(
        "open {:.1} ms, first list {:.1} µs, first page {:.1} µs, walk {:.2} s",
        f(reopen, "open_ms"),
        f(reopen, "first_list_us"),
        f(reopen, "first_page_us"),
        f(reopen, "walk.seconds"),
    );
    println!(
        "page random p50 {:.1} µs p99 {:.1} µs; list p50 {:.1} µs; RSS after walk {:.1} MiB, peak {:.1} MiB",
        f(reopen, "page_random.p50_us"),
        f(reopen, "page_random.p99_us"),
        f(reopen, "list.p50_us"),
        f(reopen, "memory_after_walk.rss_mib"),
        f(reopen, "memory_end.hwm_mib"),
    );
    println!(
        "sled run {:.0} s, SQLite run {:.0} s",
        f(sled, "total_seconds"),
        f(sqlite, "total_seconds")
    );
}

pub(super) fn ratios(sc: &Scale, sled: &Value, sqlite: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for (k, &n) in sc.stages.iter().enumerate() {
        let a = &sled["stages"][k];
        let b = &sqlite["stages"][k];
        let mut m = serde_json::Map::new();
        for path in [
            "fill_batched.per_s",
            "single_not_durable_rate.per_s",
            "single_durable_rate.per_s",
            "batch_durable_rate.per_s",
            "page_newest.p50_us",
            "page_random.p50_us",
            "page_random.p99_us",
            "list.p50_us",
            "summaries.p50_us",
        ] {
            m.insert(path.into(), json!(round(f(a, path) / f(b, path), 3)));
        }
        out.insert(size_label(n), Value::Object(m));
    }
    Value::Object(out)
}
