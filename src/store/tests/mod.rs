//! Store tests: opening and keys, encryption at rest, history, conversations.

mod at_rest;
mod conversations;
mod history;
mod open;

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::{DeliveryState, StoredMessage};
use crate::crypto::{DataKey, KdfParams, Keystore};

/// A database key from a throwaway keystore, deterministic per `seed`.
fn data_key(seed: u64) -> DataKey {
    let mut rng = StdRng::seed_from_u64(seed);
    Keystore::create(b"pw", KdfParams::INSECURE_FAST, &mut rng)
        .unwrap()
        .1
}

fn msg(conv: u8, lamport: u64, sender: u8, id: u8, body: &[u8]) -> StoredMessage {
    StoredMessage {
        msg_id: [id; 16],
        conv_id: [conv; 32],
        sender: [sender; 32],
        lamport,
        sent_at: 1_700_000_000 + lamport,
        body: body.to_vec(),
        state: DeliveryState::Pending,
        expires_at: None,
    }
}

/// Whether `e` is sled's "another handle still holds the directory lock".
fn is_lock_error(e: &sled::Error) -> bool {
    e.to_string().contains("could not acquire lock")
}

/// Reopens a store that this process just closed. sled's background threads
/// can hold the directory lock for a moment after the last handle drops, so
/// a lock error is retried for up to five seconds.
fn reopen(path: &std::path::Path, key: &DataKey) -> Result<super::Store, super::Error> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match super::Store::open(path, key) {
            Err(super::Error::Open { source, .. })
                if is_lock_error(&source) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Opens a just-closed store directory with plain sled, retrying lock errors
/// as [`reopen`] does.
fn raw_sled(path: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match sled::open(path) {
            Err(e) if is_lock_error(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other.unwrap(),
        }
    }
}
