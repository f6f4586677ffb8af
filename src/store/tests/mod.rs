//! Store tests: opening and keys, encryption at rest, history, conversations.

mod at_rest;
mod backup;
mod blocks;
mod conversations;
mod damage;
mod expiry;
mod files;
mod handle;
mod history;
mod open;
mod outbox;
mod records;
mod spool;

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

/// A new store in a fresh temporary directory (keep the directory alive).
fn fresh() -> (tempfile::TempDir, super::Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = super::Store::open(dir.path(), &data_key(1)).unwrap();
    (dir, store)
}

/// Opens a just-closed store directory with plain sled.
fn raw_sled(path: &std::path::Path) -> sled::Db {
    super::open_sled(path).unwrap()
}
