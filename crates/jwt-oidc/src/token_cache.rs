//! The verified-token cache: a fixed array of 2-way sets of `ArcSwapOption` slots. The set is
//! chosen by a seeded 64-bit hash of the whole token and an entry matches only when the whole
//! token is byte-for-byte equal (so a hash collision can at worst evict an entry, never return
//! someone else's claims). Lookups take no lock and write nothing shared; inserts replace a
//! slot atomically. Entries never outlive the token's `exp` and are dropped when the key that
//! verified them leaves its issuer's key set.
//!
//! A SHA-256 of a typical 800-byte token costs about as much as everything else on a hit
//! together, which is why the set index uses a cheap hash and equality uses the token itself.

use std::sync::Arc;

use arc_swap::ArcSwapOption;

use crate::Claims;
use crate::jwks::VerifyingKey;

pub(crate) struct Entry {
    pub(crate) hash: u64,
    pub(crate) token: Box<str>,
    pub(crate) claims: Arc<Claims>,
    pub(crate) key: Arc<VerifyingKey>,
    pub(crate) issuer: usize,
}

pub(crate) struct TokenCache {
    slots: Box<[ArcSwapOption<Entry>]>,
    mask: usize,
    seed: u64,
}

const K: u64 = 0x9E37_79B9_7F4A_7C15;

/// A seeded multiply-rotate hash over 8-byte words (not cryptographic: it only spreads
/// tokens over sets; the seed is random per cache so sets cannot be targeted).
fn hash(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed ^ (bytes.len() as u64).wrapping_mul(K);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(31);
    }
    let mut w = [0u8; 8];
    let rest = chunks.remainder();
    w[..rest.len()].copy_from_slice(rest);
    h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K);
    h ^= h >> 32;
    h = h.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    h ^ (h >> 29)
}

impl TokenCache {
    /// A cache with at least `capacity` slots (rounded up to a power of two, at least 2).
    pub(crate) fn new(capacity: usize) -> Self {
        let n = capacity.max(2).next_power_of_two();
        let slots = (0..n)
            .map(|_| ArcSwapOption::empty())
            .collect::<Vec<_>>()
            .into_boxed_slice();
        let mut seed = [0u8; 8];
        let _ =
            aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut seed);
        Self {
            slots,
            mask: n - 1,
            seed: u64::from_le_bytes(seed),
        }
    }

    /// The hash that picks `token`'s set.
    pub(crate) fn hash(&self, token: &str) -> u64 {
        hash(self.seed, token.as_bytes())
    }

    #[allow(clippy::cast_possible_truncation)]
    fn index(&self, hash: u64) -> usize {
        (hash as usize) & self.mask
    }

    /// Runs `f` on the entry for exactly `token` (whose hash is `hash`), if present.
    pub(crate) fn with_hit<R>(
        &self,
        token: &str,
        hash: u64,
        f: impl FnOnce(&Entry) -> R,
    ) -> Option<R> {
        let i = self.index(hash);
        for j in [i, i ^ 1] {
            let guard = self.slots.get(j)?.load();
            if let Some(entry) = guard.as_deref()
                && entry.hash == hash
                && *entry.token == *token
            {
                return Some(f(entry));
            }
        }
        None
    }

    pub(crate) fn insert(&self, entry: Entry, now: u64) {
        let i = self.index(entry.hash);
        let free = |j: usize| {
            self.slots.get(j).is_some_and(|s| {
                s.load().as_deref().is_none_or(|e| {
                    (e.hash == entry.hash && e.token == entry.token)
                        || e.claims.expires_at <= now
                        || e.key.is_retired()
                })
            })
        };
        let j = if free(i) {
            i
        } else if free(i ^ 1) {
            i ^ 1
        } else {
            i ^ ((entry.hash >> 63) as usize)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Jwks;

    fn entry(token: &str, hash: u64, key: &Arc<VerifyingKey>) -> Entry {
        let claims = Claims::for_tests("i", u64::MAX);
        Entry {
            hash,
            token: token.into(),
            claims: Arc::new(claims),
            key: Arc::clone(key),
            issuer: 0,
        }
    }

    fn key() -> Arc<VerifyingKey> {
        let jwk = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        Arc::clone(&Jwks::parse(jwk.as_bytes()).unwrap().keys()[0])
    }

    #[test]
    fn a_colliding_hash_never_returns_another_tokens_entry() {
        let cache = TokenCache::new(16);
        let key = key();
        cache.insert(entry("token-a", 42, &key), 0);
        assert!(cache.with_hit("token-a", 42, |_| ()).is_some());
        assert!(cache.with_hit("token-b", 42, |_| ()).is_none());
        assert!(cache.with_hit("token-a", 43, |_| ()).is_none());
    }

    #[test]
    fn retired_keys_are_swept_and_sets_hold_two() {
        let cache = TokenCache::new(4);
        let key = key();
        for (i, t) in ["a", "b", "c"].into_iter().enumerate() {
            cache.insert(entry(t, 8 + i as u64 % 2, &key), 0);
        }
        assert_eq!(cache.len(), 2);
        key.retire();
        cache.sweep(0);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn hash_depends_on_every_byte_and_the_seed() {
        let a = hash(1, b"0123456789abcdef0123");
        assert_ne!(a, hash(1, b"0123456789abcdef0124"));
        assert_ne!(a, hash(1, b"1123456789abcdef0123"));
        assert_ne!(a, hash(2, b"0123456789abcdef0123"));
    }
}
