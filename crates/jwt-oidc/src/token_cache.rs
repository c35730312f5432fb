//! The verified-token cache: a fixed array of 2-way sets of `ArcSwapOption` slots, keyed by
//! the SHA-256 of the whole token. Lookups take no lock and write nothing shared; inserts
//! replace a slot atomically. Entries never outlive the token's `exp` and are dropped when
//! the key that verified them leaves its issuer's key set.

use std::sync::Arc;

use arc_swap::ArcSwapOption;

use crate::Claims;
use crate::jwks::VerifyingKey;

pub(crate) struct Entry {
    pub(crate) digest: [u8; 32],
    pub(crate) claims: Arc<Claims>,
    pub(crate) key: Arc<VerifyingKey>,
    pub(crate) issuer: usize,
}

pub(crate) struct TokenCache {
    slots: Box<[ArcSwapOption<Entry>]>,
    mask: usize,
}

pub(crate) fn digest(token: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl TokenCache {
    /// A cache with at least `capacity` slots (rounded up to a power of two, at least 2).
    pub(crate) fn new(capacity: usize) -> Self {
        let n = capacity.max(2).next_power_of_two();
        let slots = (0..n)
            .map(|_| ArcSwapOption::empty())
            .collect::<Vec<_>>()
            .into_boxed_slice();
        Self { slots, mask: n - 1 }
    }

    fn index(&self, digest: &[u8; 32]) -> usize {
        let mut b = [0u8; 8];
        b.copy_from_slice(&digest[..8]);
        (u64::from_le_bytes(b) as usize) & self.mask
    }

    /// Runs `f` on the entry for `digest`, if present.
    pub(crate) fn with_hit<R>(&self, digest: &[u8; 32], f: impl FnOnce(&Entry) -> R) -> Option<R> {
        let i = self.index(digest);
        for j in [i, i ^ 1] {
            let guard = self.slots.get(j)?.load();
            if let Some(entry) = guard.as_deref()
                && entry.digest == *digest
            {
                return Some(f(entry));
            }
        }
        None
    }

    pub(crate) fn insert(&self, entry: Entry, now: u64) {
        let i = self.index(&entry.digest);
        let free = |j: usize| {
            self.slots.get(j).is_some_and(|s| {
                s.load().as_deref().is_none_or(|e| {
                    e.digest == entry.digest || e.claims.expires_at <= now || e.key.is_retired()
                })
            })
        };
        let j = if free(i) {
            i
        } else if free(i ^ 1) {
            i ^ 1
        } else {
            i ^ usize::from(entry.digest[31] & 1)
        };
        if let Some(slot) = self.slots.get(j) {
            slot.store(Some(Arc::new(entry)));
        }
    }

    /// Drops entries whose key has been retired or whose token has expired.
    pub(crate) fn sweep(&self, now: u64) {
        for slot in self.slots.iter() {
            let current = slot.load_full();
            if let Some(e) = current.as_deref()
                && (e.key.is_retired() || e.claims.expires_at <= now)
            {
                slot.compare_and_swap(&current, None);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.load().is_some()).count()
    }
}
