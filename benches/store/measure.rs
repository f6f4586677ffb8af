//! Measurement helpers: latencies, rates, memory, walks and random pages.

use super::*;

pub(super) fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

pub(super) fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

pub(super) fn latency(mut v: Vec<Duration>) -> Value {
    v.sort_unstable();
    let n = v.len();
    let at = |q: usize| v[(n * q / 100).min(n - 1)];
    let total: Duration = v.iter().sum();
    json!({
        "n": n,
        "p50_us": round(us(at(50)), 1),
        "p99_us": round(us(at(99)), 1),
        "mean_us": round(us(total) / n as f64, 1),
        "max_us": round(us(v[n - 1]), 1),
    })
}

pub(super) fn rate(n: usize, d: Duration) -> Value {
    json!({
        "n": n,
        "seconds": round(d.as_secs_f64(), 3),
        "per_s": round(n as f64 / d.as_secs_f64(), 0),
        "us_per_msg": round(us(d) / n as f64, 2),
    })
}

/// (VmRSS, VmHWM) in MiB.
pub(super) fn memory() -> Value {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .map_or(-1.0, |kb| round(kb / 1024.0, 1))
    };
    json!({ "rss_mib": field("VmRSS:"), "hwm_mib": field("VmHWM:") })
}

pub(super) fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return std::fs::metadata(path).map_or(0, |m| m.len());
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                dir_size(&p)
            } else {
                e.metadata().map_or(0, |m| m.len())
            }
        })
        .sum()
}

pub(super) fn mib(bytes: u64) -> f64 {
    round(bytes as f64 / (1024.0 * 1024.0), 1)
}

/// FNV-1a over message ids, to check both engines hold the same history.
pub(super) fn fnv(hash: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *hash ^= u64::from(*b);
        *hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
}

pub(super) const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

pub(super) fn progress(role: &str, what: &str, t0: Instant) {
    eprintln!(
        "[store bench {role} +{:6.1}s] {what}",
        t0.elapsed().as_secs_f64()
    );
}

/// Pages through a whole conversation, newest first; returns every `next`
/// cursor handed out, the total time in `page`, the message count and a
/// hash of the ids in order.
pub(super) fn walk<E: Engine>(
    e: &mut E,
    conv: &[u8; 32],
    expect: usize,
) -> (Vec<E::Cursor>, Value, u64) {
    let mut cursors = Vec::with_capacity(expect / PAGE + 1);
    let mut hash = FNV_START;
    let mut seen = 0usize;
    let mut spent = Duration::ZERO;
    let mut before: Option<E::Cursor> = None;
    let mut last_lamport = u64::MAX;
    for _ in 0..=expect / PAGE + 1 {
        let t = Instant::now();
        let (msgs, next) = e.page(conv, before.as_ref());
        spent += t.elapsed();
        for m in &msgs {
            assert!(m.lamport < last_lamport, "pages out of order");
            last_lamport = m.lamport;
            fnv(&mut hash, &m.msg_id);
        }
        seen += msgs.len();
        match next {
            Some(c) => {
                cursors.push(c.clone());
                before = Some(c);
            }
            None => break,
        }
    }
    assert_eq!(seen, expect, "walk saw every message once");
    let pages = cursors.len() + 1;
    let stats = json!({
        "pages": pages,
        "seconds": round(spent.as_secs_f64(), 3),
        "mean_us": round(us(spent) / pages as f64, 1),
    });
    (cursors, stats, hash)
}

/// The random-position page measurement shared by every reader: a warm-up,
/// then `n` pages from cursors picked with a seed fixed per stage size, so
/// every reader measures the same positions; `set` picks another set of
/// positions from the same distribution (for a second measurement on the
/// same files that must not find the first one's pages cached).
pub(super) fn random_pages<C>(
    cursors: &[C],
    stage: usize,
    set: u64,
    sc: &Scale,
    mut page: impl FnMut(&C) -> usize,
) -> Value {
    let seed = SEED ^ stage as u64 ^ (set << 40);
    let mut warm = StdRng::seed_from_u64(seed ^ 0xfeed);
    for _ in 0..sc.warmup_pages {
        black_box(page(&cursors[warm.random_range(0..cursors.len())]));
    }
    let mut pick = StdRng::seed_from_u64(seed);
    let lat = (0..sc.random_pages)
        .map(|_| {
            let c = &cursors[pick.random_range(0..cursors.len())];
            let t = Instant::now();
            let n = page(c);
            let d = t.elapsed();
            assert!(n > 0);
            d
        })
        .collect();
    latency(lat)
}
