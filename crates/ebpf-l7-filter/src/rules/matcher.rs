//! The fast matcher: one hash lookup per segment boundary of the request path, longest
//! candidate first, instead of scanning every rule.
//!
//! The candidates that can match a path `p` are few: an exact rule for `p`, and prefix rules
//! for `p` itself and for `p[..L]` where `p[L] == '/'` (a prefix without trailing slash) or
//! `p[L-1] == '/'` (a prefix ending in `/`). Trying those lengths from the longest down, and at
//! one length exact before prefix, method-specific before any-method, finds the spec's winner
//! at the first hit. The unit tests compare it with a scan of all rules on generated sets.

use std::collections::HashMap;

use super::{PathMatch, Rule};
use crate::verdict::Method;

#[derive(Debug, Default)]
pub(crate) struct Matcher {
    by_path: HashMap<Box<[u8]>, Entry>,
}

#[derive(Debug, Default)]
struct Entry {
    exact: Slot,
    prefix: Slot,
}

/// The rules of one kind and path: at most one without methods and at most one per method
/// (validation refuses complete ties).
#[derive(Debug, Default)]
struct Slot {
    any: Option<u32>,
    by_method: [Option<u32>; 10],
}

impl Slot {
    fn pick(&self, method: Option<Method>) -> Option<u32> {
        method
            .and_then(|m| self.by_method.get(usize::from(m.id())).copied().flatten())
            .or(self.any)
    }
}

impl Matcher {
    pub(crate) fn new(rules: &[Rule]) -> Matcher {
        let mut by_path: HashMap<Box<[u8]>, Entry> = HashMap::new();
        for (index, rule) in rules.iter().enumerate() {
            let Ok(index) = u32::try_from(index) else {
                break; // unreachable: MAX_RULES is far below u32::MAX
            };
            let entry = by_path
                .entry(rule.path.path().as_bytes().into())
                .or_default();
            let slot = match rule.path {
                PathMatch::Exact(_) => &mut entry.exact,
                PathMatch::Prefix(_) => &mut entry.prefix,
            };
            match rule.methods {
                None => slot.any = Some(index),
                Some(set) => {
                    for m in set.iter() {
                        if let Some(s) = slot.by_method.get_mut(usize::from(m.id())) {
                            *s = Some(index);
                        }
                    }
                }
            }
        }
        Matcher { by_path }
    }

    /// The index of the winning rule for `path` and `method` (`None` = other method).
    pub(crate) fn best(&self, method: Option<Method>, path: &[u8]) -> Option<u32> {
        if self.by_path.is_empty() {
            return None;
        }
        if let Some(entry) = self.by_path.get(path) {
            // A prefix rule for the whole path matches it whatever its last byte.
            if let Some(i) = entry
                .exact
                .pick(method)
                .or_else(|| entry.prefix.pick(method))
            {
                return Some(i);
            }
        }
        for len in (1..path.len()).rev() {
            let at_boundary = path.get(len) == Some(&b'/') || path.get(len - 1) == Some(&b'/');
            if !at_boundary {
                continue;
            }
            if let Some(i) = path
                .get(..len)
                .and_then(|p| self.by_path.get(p))
                .and_then(|e| e.prefix.pick(method))
            {
                return Some(i);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{Rng, canonical_path, rule_set_yaml, tricky_path};
    use crate::{Method, Rule, RuleSet};

    /// The spec read literally: every rule scanned, the longest rule path wins, then exact,
    /// then a rule with methods.
    fn scan_all(rules: &[Rule], method: Option<Method>, path: &[u8]) -> Option<u32> {
        let key = |r: &Rule| {
            (
                r.path().path().len(),
                r.path().is_exact(),
                r.methods().is_some(),
            )
        };
        let mut best: Option<(usize, &Rule)> = None;
        for (i, rule) in rules.iter().enumerate() {
            if !rule.applies_to(method) || !rule.path().matches(path) {
                continue;
            }
            if let Some((_, b)) = best {
                assert_ne!(key(b), key(rule), "a complete tie passed validation");
                if key(b) > key(rule) {
                    continue;
                }
            }
            best = Some((i, rule));
        }
        best.map(|(i, _)| i as u32)
    }

    #[test]
    fn equals_a_scan_of_all_rules_on_generated_sets() {
        let mut rng = Rng::new(1);
        let mut hits = 0;
        for seed in 0..400 {
            let rules = RuleSet::from_yaml(&rule_set_yaml(seed)).unwrap();
            for _ in 0..200 {
                let path = if rng.chance(80) {
                    canonical_path(&mut rng).into_bytes()
                } else {
                    tricky_path(&mut rng)
                };
                let method = if rng.chance(10) {
                    None
                } else {
                    rng.pick(&Method::ALL).copied()
                };
                let want = scan_all(rules.rules(), method, &path);
                assert_eq!(
                    rules.winner(method, &path),
                    want,
                    "seed {seed}, {method:?} {:?}",
                    String::from_utf8_lossy(&path)
                );
                hits += usize::from(want.is_some());
            }
        }
        // The generated input class exercises matching, not only misses.
        assert!(hits > 12_000, "only {hits} matches of 80000");
    }

    #[test]
    fn longest_then_exact_then_methods() {
        let rules = RuleSet::from_yaml(
            r#"
rules:
  - { id: root, action: allow, path: { prefix: "/" } }
  - { id: api, action: deny, path: { prefix: "/api" } }
  - { id: api-slash, action: audit, path: { prefix: "/api/" } }
  - { id: orders-any, action: deny, path: { prefix: "/api/orders" } }
  - { id: orders-get, action: allow, methods: [GET], path: { prefix: "/api/orders" } }
  - { id: orders-exact, action: audit, path: { exact: "/api/orders" } }
"#,
        )
        .unwrap();
        let id = |m, p: &str| {
            rules
                .winner(m, p.as_bytes())
                .map(|i| rules.rules()[i as usize].id().to_owned())
        };
        assert_eq!(
            id(Some(Method::Get), "/api/orders").as_deref(),
            Some("orders-exact")
        );
        assert_eq!(
            id(Some(Method::Get), "/api/orders/7").as_deref(),
            Some("orders-get")
        );
        assert_eq!(
            id(Some(Method::Post), "/api/orders/7").as_deref(),
            Some("orders-any")
        );
        assert_eq!(id(None, "/api/orders/7").as_deref(), Some("orders-any"));
        assert_eq!(
            id(Some(Method::Get), "/api/orders-internal").as_deref(),
            Some("api-slash")
        );
        assert_eq!(id(Some(Method::Get), "/api").as_deref(), Some("api"));
        assert_eq!(id(Some(Method::Get), "/apix").as_deref(), Some("root"));
        assert_eq!(id(Some(Method::Get), "/").as_deref(), Some("root"));
    }
}
