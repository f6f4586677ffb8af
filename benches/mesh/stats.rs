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
