//! [`PolicyInputCache`]: the parts of the policy input that do not change between requests
//! (the peer identity of a connection, the claims of a verified token), converted once and
//! kept here, with their only user, instead of inside `TlsConnectInfo` or `jwt_oidc::Claims`.
//!
//! An entry is keyed by the address of the `Arc` it was converted from and holds a clone of
//! that `Arc`, so the address cannot be reused by another value while the entry lives. The
//! acceptor makes one `Arc<PeerIdentity>` per connection and the verified-token cache hands
//! out the same `Arc<Claims>` for the same token, so requests on one connection (with one
//! token) find their conversion here. Entries that only the cache still holds (the connection
//! closed, the token left jwt-oidc's cache) are dropped when the cache is full; if it is still
//! full, the new conversion is used for its request and not kept.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use policy_rego::InputDocument;

/// How many connections (and, separately, verified tokens) a [`PolicyInputCache`] keeps by
/// default.
const DEFAULT_CAPACITY: usize = 4096;

/// Policy-input documents converted once per connection and once per verified token, shared
/// by the [`PolicyLayer`](crate::PolicyLayer) it belongs to and every service it wraps.
///
/// [`PolicyInputCache::policy_input`] builds the same input as [`crate::policy_input`],
/// reusing the conversions.
///
/// ```
/// use http::Request;
/// use policy_rego::InputOptions;
/// use zt_tower::PolicyInputCache;
///
/// let cache = PolicyInputCache::new();
/// let req = Request::get("/orders").body(()).unwrap();
/// let input = cache.policy_input(&req, &InputOptions::default()).to_json();
/// assert_eq!(input["attributes"]["request"]["http"]["method"], "GET");
/// ```
#[derive(Clone, Debug, Default)]
pub struct PolicyInputCache {
    identities: Arc<Slots<mtls_verify::PeerIdentity>>,
    #[cfg(feature = "jwt")]
    tokens: Arc<Slots<jwt_oidc::Claims>>,
}

impl PolicyInputCache {
    /// An empty cache keeping up to 4096 connections and 4096 verified tokens.
    pub fn new() -> Self {
        Self::default()
    }

    /// The policy input for `req`, as [`crate::policy_input`] builds it, with the peer
    /// identity and the token claims converted once per connection and per verified token.
    pub fn policy_input<B>(
        &self,
        req: &http::Request<B>,
        options: &policy_rego::InputOptions,
    ) -> policy_rego::PolicyInput {
        super::build_input(req, options, Some(self))
    }

    pub(super) fn identity(
        &self,
        peer: &Arc<mtls_verify::PeerIdentity>,
        convert: impl FnOnce(&mtls_verify::PeerIdentity) -> Option<InputDocument>,
    ) -> Option<InputDocument> {
        self.identities.get_or_convert(peer, convert)
    }

    #[cfg(feature = "jwt")]
    pub(super) fn token(
        &self,
        claims: &Arc<jwt_oidc::Claims>,
        convert: impl FnOnce(&jwt_oidc::Claims) -> Option<InputDocument>,
    ) -> Option<InputDocument> {
        self.tokens.get_or_convert(claims, convert)
    }
}

/// One kind of converted document, keyed by the address of the `Arc` it came from.
struct Slots<T> {
    map: RwLock<HashMap<usize, Slot<T>>>,
    capacity: usize,
}

struct Slot<T> {
    /// Keeps the source alive, so its address names it while the slot exists.
    source: Arc<T>,
    document: Option<InputDocument>,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            map: RwLock::new(HashMap::new()),
            capacity: DEFAULT_CAPACITY,
        }
    }
}

impl<T> std::fmt::Debug for Slots<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl<T> Slots<T> {
    fn key(source: &Arc<T>) -> usize {
        Arc::as_ptr(source).cast::<()>() as usize
    }

    fn get_or_convert(
        &self,
        source: &Arc<T>,
        convert: impl FnOnce(&T) -> Option<InputDocument>,
    ) -> Option<InputDocument> {
        let key = Self::key(source);
        {
            let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(slot) = map.get(&key)
                && Arc::ptr_eq(&slot.source, source)
            {
                return slot.document.clone();
            }
        }
        let document = convert(source);
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= self.capacity {
            // Sources nobody else holds any more: their connection or token is gone.
            map.retain(|_, slot| Arc::strong_count(&slot.source) > 1);
        }
        if map.len() < self.capacity {
            // A concurrent request may have converted it too: either document is right.
            map.entry(key).or_insert_with(|| Slot {
                source: Arc::clone(source),
                document: document.clone(),
            });
        }
        document
    }

    fn len(&self) -> usize {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(n: u64) -> Option<InputDocument> {
        Some(InputDocument::from(
            serde_json::json!({"spiffe_id": n.to_string()}),
        ))
    }

    fn id(d: Option<InputDocument>) -> Option<String> {
        d.and_then(|d| d.spiffe_id().map(str::to_owned))
    }

    fn n(v: u64) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn one_conversion_per_source_while_it_lives() {
        let slots = Slots::<String>::default();
        let a = Arc::new("a".to_owned());
        assert_eq!(id(slots.get_or_convert(&a, |_| doc(1))), n(1));
        let again = slots.get_or_convert(&Arc::clone(&a), |_| unreachable!("converted once"));
        assert_eq!(id(again), n(1));
        // An equal value in another allocation is another source.
        let b = Arc::new("a".to_owned());
        assert_eq!(id(slots.get_or_convert(&b, |_| doc(2))), n(2));
        assert_eq!(slots.len(), 2);
    }

    #[test]
    fn a_full_cache_drops_sources_only_it_holds_and_never_grows_past_capacity() {
        let slots = Slots::<u32> {
            map: RwLock::new(HashMap::new()),
            capacity: 2,
        };
        let live = Arc::new(1);
        slots.get_or_convert(&live, |_| doc(1));
        slots.get_or_convert(&Arc::new(2), |_| doc(2)); // nobody holds it after this call
        let third = Arc::new(3);
        slots.get_or_convert(&third, |_| doc(3));
        assert_eq!(slots.len(), 2, "the released source made room");
        assert_eq!(id(slots.get_or_convert(&live, |_| unreachable!())), n(1));
        // Both kept sources are alive: a fourth is converted but not kept.
        let fourth = Arc::new(4);
        assert_eq!(id(slots.get_or_convert(&fourth, |_| doc(4))), n(4));
        assert_eq!(slots.len(), 2);
        assert_eq!(id(slots.get_or_convert(&fourth, |_| doc(5))), n(5));
    }
}
