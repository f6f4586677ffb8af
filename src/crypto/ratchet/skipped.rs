//! Message keys kept for messages that have not arrived yet.
//!
//! Bounded twice: a single header may ask to skip at most [`MAX_SKIP`] keys
//! (checked before any key is derived), and all chains together keep at most
//! [`MAX_SKIPPED_TOTAL`] keys, the oldest evicted first.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::crypto::MessageKey;

/// Most keys one header may make us derive and keep.
pub const MAX_SKIP: u32 = 1000;
/// Most skipped keys kept across all chains of a session.
pub const MAX_SKIPPED_TOTAL: usize = 2000;

#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Skipped {
    pub(crate) dh: [u8; 32],
    pub(crate) n: u32,
    pub(crate) key: MessageKey,
}

/// Skipped message keys in arrival order.
#[derive(Clone, Default, Serialize, Deserialize)]
pub(crate) struct SkippedKeys {
    keys: VecDeque<Skipped>,
}

impl SkippedKeys {
    pub(crate) fn find(&self, dh: &[u8; 32], n: u32) -> Option<usize> {
        self.keys.iter().position(|k| k.n == n && &k.dh == dh)
    }

    pub(crate) fn get(&self, idx: usize) -> Option<&MessageKey> {
        self.keys.get(idx).map(|k| &k.key)
    }

    pub(crate) fn remove(&mut self, idx: usize) {
        self.keys.remove(idx);
    }

    pub(crate) fn extend(&mut self, new: Vec<Skipped>) {
        self.keys.extend(new);
        while self.keys.len() > MAX_SKIPPED_TOTAL {
            self.keys.pop_front();
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}
