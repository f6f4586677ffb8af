//! What one durable write costs on the disk the nodes' stores are on, in
//! the same run as everything else: a small append followed by
//! `fdatasync`, the least a store does before it acknowledges anything
//! (sled's flush is such an append and sync, and more).
//!
//! With the raw stream round trip beside it, this gives a floor for the
//! end-to-end latency: a message and its ack cross the network once each
//! way, and the recipient syncs before it acks, so no node that keeps
//! its acknowledgements honest gets below `stream RTT + one sync`, even
//! with encryption, storage and every hand-off between tasks free.

use std::io::Write;
use std::time::Instant;

use serde_json::{Value, json};

use crate::stats::latency;

/// Bytes appended before each sync: about what one store round of a
/// single message writes.
const APPEND: usize = 2048;

/// `n` appends of [`APPEND`] bytes to a new file in the stores' directory
/// (`MESH_BENCH_DIR`, or the system's temporary directory), each followed
/// by `fdatasync`; the latency of each append and sync.
pub(crate) fn sync_probe(n: usize) -> Value {
    let dir = crate::ours::store_dir();
    let mut file = tempfile::tempfile_in(dir.path()).expect("a probe file");
    let block = [0x5au8; APPEND];
    let mut samples = Vec::with_capacity(n);
    // The first few appends allocate the file's first blocks: warm up.
    for i in 0..n + 20 {
        let t = Instant::now();
        file.write_all(&block).expect("probe write");
        file.sync_data().expect("probe sync");
        if i >= 20 {
            samples.push(t.elapsed());
        }
    }
    json!({
        "what": "append 2,048 bytes + fdatasync to a new file in the stores' directory, sequential",
        "latency": latency(samples),
    })
}
