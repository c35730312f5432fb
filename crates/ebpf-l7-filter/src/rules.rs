//! The rule file: its YAML shape, validation, and the validated [`RuleSet`].
//!
//! ```yaml
//! default: deny              # allow | deny: the verdict when no rule matches (default: deny)
//! strict_paths: true         # the default: non-canonical, split, overlong requests are denied
//! rules:
//!   - id: health
//!     action: allow          # allow | deny | audit
//!     methods: [GET]         # optional; absent means any method
//!     path: { exact: "/health" }
//!   - id: orders-read
//!     action: allow
//!     methods: [GET, HEAD]
//!     path: { prefix: "/api/orders" }
//! ```
//!
//! Validation refuses, naming the rule: an invalid or duplicate id, a path that is not
//! canonical (no leading `/`, `//`, dot segments, percent-encoded unreserved characters, …),
//! a path longer than [`MAX_PATH`], an unknown or empty `methods`, two rules that tie
//! completely, more than [`MAX_RULES`] rules, and any unknown key (a typo such as `method:`
//! must not silently widen a rule).

mod matcher;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::FilterError;
use crate::path::check_canonical;
use crate::verdict::{FLOOR_ANY, MAX_PATH, MAX_RULE_ID, MAX_RULES, Method, Verdict};

pub(crate) use matcher::Matcher;

/// How a rule's path is compared with a request's path (the query is never part of it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathMatch {
    /// The request's path is exactly this.
    Exact(String),
    /// The request's path is this or continues it at a segment boundary: `/api/orders`
    /// matches `/api/orders` and `/api/orders/7`, never `/api/orders-internal`. A prefix
    /// ending in `/` (including `/`) matches every path that starts with it.
    Prefix(String),
}

impl PathMatch {
    /// The rule's path.
    pub fn path(&self) -> &str {
        match self {
            PathMatch::Exact(p) | PathMatch::Prefix(p) => p,
        }
    }

    /// Whether this is [`PathMatch::Exact`].
    pub fn is_exact(&self) -> bool {
        matches!(self, PathMatch::Exact(_))
    }

    /// `exact` or `prefix`.
    pub fn kind(&self) -> &'static str {
        if self.is_exact() { "exact" } else { "prefix" }
    }

    /// Whether a request path matches, by the spec's definition.
    ///
    /// ```
    /// use ebpf_l7_filter::PathMatch;
    /// let p = PathMatch::Prefix("/api/orders".into());
    /// assert!(p.matches(b"/api/orders") && p.matches(b"/api/orders/7"));
    /// assert!(!p.matches(b"/api/orders-internal"));
    /// ```
    pub fn matches(&self, path: &[u8]) -> bool {
        match self {
            PathMatch::Exact(p) => path == p.as_bytes(),
            PathMatch::Prefix(p) => {
                let p = p.as_bytes();
                match path.strip_prefix(p) {
                    None => false,
                    Some(rest) => p.ends_with(b"/") || rest.is_empty() || rest[0] == b'/',
                }
            }
        }
    }
}

/// A set of the nine known methods (a bit per method id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MethodSet(u16);

impl MethodSet {
    /// Whether `method` is in the set.
    pub fn contains(self, method: Method) -> bool {
        self.0 & (1 << method.id()) != 0
    }

    /// The methods in the set, in id order.
    pub fn iter(self) -> impl Iterator<Item = Method> {
        Method::ALL.into_iter().filter(move |m| self.contains(*m))
    }

    /// The set as a bitmask, bit `id` set for each method id (what the kernel stores).
    pub fn bits(self) -> u16 {
        self.0
    }

    fn insert(&mut self, method: Method) {
        self.0 |= 1 << method.id();
    }

    fn intersects(self, other: MethodSet) -> bool {
        self.0 & other.0 != 0
    }
}

impl FromIterator<Method> for MethodSet {
    fn from_iter<I: IntoIterator<Item = Method>>(iter: I) -> MethodSet {
        let mut set = MethodSet::default();
        for m in iter {
            set.insert(m);
        }
        set
    }
}

/// One validated rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    id: String,
    action: Verdict,
    methods: Option<MethodSet>,
    path: PathMatch,
}

impl Rule {
    /// The rule's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its action: allow, deny or audit.
    pub fn action(&self) -> Verdict {
        self.action
    }

    /// The methods it applies to; `None` is any method (also methods other than the nine).
    pub fn methods(&self) -> Option<MethodSet> {
        self.methods
    }

    /// Its path and how it is compared.
    pub fn path(&self) -> &PathMatch {
        &self.path
    }

    /// Whether the rule applies to a request with this method (`None` = other).
    pub fn applies_to(&self, method: Option<Method>) -> bool {
        match (self.methods, method) {
            (None, _) => true,
            (Some(set), Some(m)) => set.contains(m),
            (Some(_), None) => false,
        }
    }
}

// === the YAML shape ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default = "default_deny")]
    default: DefaultAction,
    #[serde(default = "yes")]
    strict_paths: bool,
    #[serde(default)]
    rules: Vec<RuleEntry>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum DefaultAction {
    Allow,
    Deny,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Action {
    Allow,
    Deny,
    Audit,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleEntry {
    id: String,
    action: Action,
    #[serde(default)]
    methods: Option<Vec<String>>,
    path: PathEntry,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
enum PathEntry {
    Exact(String),
    Prefix(String),
}

fn default_deny() -> DefaultAction {
    DefaultAction::Deny
}

fn yes() -> bool {
    true
}

// === impl RuleSet ===

/// A validated rule file, ready to match: the one rule set both enforcement points use.
///
/// Cheap to share (`Arc` inside, `Clone` copies a pointer).
///
/// ```
/// use ebpf_l7_filter::{Reason, RuleSet, Verdict};
///
/// let rules = RuleSet::from_yaml(r#"
/// default: deny
/// rules:
///   - id: orders-read
///     action: allow
///     methods: [GET, HEAD]
///     path: { prefix: "/api/orders" }
/// "#)?;
/// let d = rules.decide(&http::Method::GET, "/api/orders/7?x=1");
/// assert_eq!((d.verdict(), d.reason()), (Verdict::Allow, Reason::Rule));
/// assert_eq!(rules.decide(&http::Method::GET, "/api/orders-internal").verdict(), Verdict::Deny);
/// assert_eq!(rules.decide(&http::Method::GET, "/api//orders").reason(), Reason::NonCanonical);
/// # Ok::<(), ebpf_l7_filter::FilterError>(())
/// ```
#[derive(Debug, Clone)]
pub struct RuleSet {
    inner: Arc<Inner>,
}

/// Two rule sets are equal when their files say the same (default, mode, rules in order).
impl PartialEq for RuleSet {
    fn eq(&self, other: &RuleSet) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
            || (self.inner.default == other.inner.default
                && self.inner.strict_paths == other.inner.strict_paths
                && self.inner.rules == other.inner.rules)
    }
}

impl Eq for RuleSet {}

#[derive(Debug)]
struct Inner {
    default: Verdict,
    strict_paths: bool,
    rules: Vec<Rule>,
    matcher: Matcher,
    floors: [Verdict; FLOOR_ANY + 1],
}

impl RuleSet {
    /// Parses and validates a rule file's text.
    ///
    /// # Errors
    ///
    /// [`FilterError::Syntax`] when the YAML is malformed or has the wrong shape; the
    /// validation errors (naming the rule) listed in the [module docs](crate::rules).
    pub fn from_yaml(text: &str) -> Result<RuleSet, FilterError> {
        let file: RuleFile =
            serde_saphyr::from_str(text).map_err(|e| FilterError::Syntax(e.to_string()))?;
        RuleSet::validate(file)
    }

    /// Reads, parses and validates a rule file.
    ///
    /// # Errors
    ///
    /// [`FilterError::Io`] when the file cannot be read (or is not UTF-8), and those of
    /// [`RuleSet::from_yaml`].
    pub fn load(path: impl AsRef<Path>) -> Result<RuleSet, FilterError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| FilterError::Io {
            path: path.to_path_buf(),
            source: Arc::new(e),
        })?;
        RuleSet::from_yaml(&text)
    }

    fn validate(file: RuleFile) -> Result<RuleSet, FilterError> {
        if file.rules.len() > MAX_RULES {
            return Err(FilterError::TooManyRules {
                count: file.rules.len(),
                max: MAX_RULES,
            });
        }
        let mut rules = Vec::with_capacity(file.rules.len());
        let mut ids: HashMap<String, usize> = HashMap::new();
        for (i, entry) in file.rules.into_iter().enumerate() {
            let position = i + 1;
            check_id(&entry.id, position)?;
            if let Some(first) = ids.insert(entry.id.clone(), position) {
                return Err(FilterError::DuplicateId {
                    id: entry.id,
                    first,
                    second: position,
                });
            }
            rules.push(validate_rule(entry)?);
        }
        check_ties(&rules)?;
        let default = match file.default {
            DefaultAction::Allow => Verdict::Allow,
            DefaultAction::Deny => Verdict::Deny,
        };
        let floors = floors(default, &rules);
        let matcher = Matcher::new(&rules);
        Ok(RuleSet {
            inner: Arc::new(Inner {
                default,
                strict_paths: file.strict_paths,
                rules,
                matcher,
                floors,
            }),
        })
    }

    /// The verdict when no rule matches (allow or deny).
    pub fn default_verdict(&self) -> Verdict {
        self.inner.default
    }

    /// Whether split, overlong and non-canonical requests are denied (`true`, the default)
    /// or given the floor verdict of their method ([`RuleSet::floors`]).
    pub fn strict_paths(&self) -> bool {
        self.inner.strict_paths
    }

    /// The rules in file order (a rule's kernel id is its index + 1).
    pub fn rules(&self) -> &[Rule] {
        &self.inner.rules
    }

    /// The floor verdicts used in non-strict mode, indexed by method id (0 = other,
    /// 1..=9 the known methods) and [`FLOOR_ANY`]: the least permissive of `default` and
    /// the actions of every rule that can match that method (every rule for `FLOOR_ANY`).
    /// Whatever a non-canonical request's canonical form is, its verdict is one of those,
    /// so the floor is never more permissive than it.
    pub fn floors(&self) -> [Verdict; FLOOR_ANY + 1] {
        self.inner.floors
    }

    /// The verdict for a request whose path could not be read with confidence.
    pub(crate) fn refusal(&self, floor_index: usize) -> Verdict {
        if self.inner.strict_paths {
            Verdict::Deny
        } else {
            self.inner
                .floors
                .get(floor_index)
                .copied()
                .unwrap_or(Verdict::Deny)
        }
    }

    /// The winning rule for a canonical path, as an index into [`RuleSet::rules`].
    pub(crate) fn winner(&self, method: Option<Method>, path: &[u8]) -> Option<u32> {
        self.inner.matcher.best(method, path)
    }
}

fn check_id(id: &str, position: usize) -> Result<(), FilterError> {
    let reason = if id.is_empty() {
        Some("empty")
    } else if id.len() > MAX_RULE_ID {
        Some("longer than 64 bytes")
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("only A-Z a-z 0-9 . _ - are allowed")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(FilterError::InvalidId {
            position,
            id: truncate(id, 80),
            reason,
        }),
    }
}

fn validate_rule(entry: RuleEntry) -> Result<Rule, FilterError> {
    let RuleEntry {
        id,
        action,
        methods,
        path,
    } = entry;
    let path = match path {
        PathEntry::Exact(p) => PathMatch::Exact(p),
        PathEntry::Prefix(p) => PathMatch::Prefix(p),
    };
    let text = path.path();
    if text.len() > MAX_PATH {
        return Err(FilterError::PathTooLong {
            id,
            len: text.len(),
            max: MAX_PATH,
        });
    }
    // A request's path stops at the first `?`, so a rule path with one could never match.
    let canonical = match text.contains('?') {
        true => Err("has a '?' (paths are matched without the query)"),
        false => check_canonical(text.as_bytes()),
    };
    if let Err(reason) = canonical {
        return Err(FilterError::InvalidPath {
            path: truncate(text, 200),
            id,
            reason,
        });
    }
    let methods = match methods {
        None => None,
        Some(names) if names.is_empty() => return Err(FilterError::EmptyMethods { id }),
        Some(names) => {
            let mut set = MethodSet::default();
            for name in names {
                match Method::from_token(name.as_bytes()) {
                    Some(m) => set.insert(m),
                    None => {
                        return Err(FilterError::UnknownMethod {
                            id,
                            method: truncate(&name, 32),
                        });
                    }
                }
            }
            Some(set)
        }
    };
    let action = match action {
        Action::Allow => Verdict::Allow,
        Action::Deny => Verdict::Deny,
        Action::Audit => Verdict::Audit,
    };
    Ok(Rule {
        id,
        action,
        methods,
        path,
    })
}

/// Two rules tie completely when they have the same kind and path and could both apply to
/// one method.
fn check_ties(rules: &[Rule]) -> Result<(), FilterError> {
    let mut by_path: HashMap<&PathMatch, Vec<&Rule>> = HashMap::new();
    for rule in rules {
        let same = by_path.entry(&rule.path).or_default();
        for earlier in same.iter() {
            let overlap = match (earlier.methods, rule.methods) {
                (None, None) => Some(", any method".to_owned()),
                (Some(a), Some(b)) if a.intersects(b) => {
                    let common = MethodSet(a.0 & b.0);
                    let names: Vec<&str> = common.iter().map(Method::as_str).collect();
                    Some(format!(", method {}", names.join(" ")))
                }
                _ => None,
            };
            if let Some(methods) = overlap {
                return Err(FilterError::Tie {
                    first: earlier.id.clone(),
                    second: rule.id.clone(),
                    kind: rule.path.kind(),
                    path: rule.path.path().to_owned(),
                    methods,
                });
            }
        }
        same.push(rule);
    }
    Ok(())
}

fn floors(default: Verdict, rules: &[Rule]) -> [Verdict; FLOOR_ANY + 1] {
    let mut floors = [default; FLOOR_ANY + 1];
    for rule in rules {
        floors[FLOOR_ANY] = floors[FLOOR_ANY].least_permissive(rule.action);
        for (id, floor) in floors.iter_mut().enumerate().take(FLOOR_ANY) {
            // id 0 ("other") has no entry in ALL: only rules without methods apply to it.
            let method = id.checked_sub(1).and_then(|i| Method::ALL.get(i)).copied();
            if rule.applies_to(method) {
                *floor = floor.least_permissive(rule.action);
            }
        }
    }
    floors
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
